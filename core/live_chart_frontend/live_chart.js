// A plotly chart that stays mounted (core/live_chart.py): a Streamlit v2 custom component, in the app's own page (no
// iframe), that stays mounted while the page reruns. Streamlit calls this module's default export again with
// each new `data`; a new figure is applied to the same chart with Plotly.react, which reuses the WebGL context
// and keeps the zoom and the drawn lasso, where st.plotly_chart mounts a new chart (Plotly.newPlot) for every new
// figure. plotly.js (the copy the plotly Python package ships, which wrote the figures) is loaded once per browser
// tab and kept as window.saliencyAtlasPlotly, so a later chart, on any page, costs no new download or compile.
// Not as window.Plotly: Streamlit's st.plotly_chart code sets that global to the plotly.js it bundles (another
// version) once a page draws one, before or after these charts.

function loadPlotly(url) {
  if (!window.saliencyAtlasPlotly) {
    window.saliencyAtlasPlotly = new Promise((resolve, reject) => {
      const before = Object.getOwnPropertyDescriptor(window, "Plotly");
      const restore = () => {  // plotly.js's bundle sets window.Plotly: put back what was there
        if (before) Object.defineProperty(window, "Plotly", before);
        else delete window.Plotly;
      };
      const script = document.createElement("script");
      script.src = url;
      script.async = true;
      script.onload = () => {
        const ours = window.Plotly;
        restore();
        if (ours && ours !== (before && before.value)) resolve(ours);
        else reject(new Error(`${url} loaded but defined no Plotly`));
      };
      script.onerror = () => {
        restore();
        window.saliencyAtlasPlotly = null;  // the next render tries again
        reject(new Error(`could not load plotly.js from ${url}`));
      };
      document.head.appendChild(script);
    });
  }
  return window.saliencyAtlasPlotly;
}

function themed(layout, element) {
  const style = getComputedStyle(element);
  const text = style.getPropertyValue("--st-text-color").trim();
  const font = style.getPropertyValue("--st-font").trim();
  const dark = style.getPropertyValue("--st-base").trim() === "dark";
  layout.paper_bgcolor = "rgba(0,0,0,0)";
  if (dark) {
    layout.plot_bgcolor = "rgba(0,0,0,0)";
    for (const axis of ["xaxis", "yaxis"]) {
      layout[axis] = Object.assign({}, layout[axis], {gridcolor: "rgba(250,250,250,0.12)"});
    }
  }
  layout.font = Object.assign({}, layout.font, text ? {color: text} : {}, font ? {family: font} : {});
  // titles on the left, as st.plotly_chart's theme draws them: a centred one runs under the mode bar
  if (layout.title) {
    const title = typeof layout.title === "string" ? {text: layout.title} : layout.title;
    layout.title = Object.assign({x: 0, xref: "paper", xanchor: "left"}, title);
  }
  // room for tick labels and axis titles (the figures keep narrow margins, as st.plotly_chart's theme widens them);
  // not for an axis that shows neither (the map's): automargin costs the first draw a second layout pass
  for (const axis of new Set(["xaxis", "yaxis", ...Object.keys(layout).filter((k) => /^[xy]axis\d*$/.test(k))])) {
    const spec = layout[axis] || {};
    const title = spec.title && (typeof spec.title === "string" ? spec.title : spec.title.text);
    layout[axis] = Object.assign(spec.showticklabels === false && !title ? {} : {automargin: true}, spec);
  }
  return layout;
}

// The selection in the shape st.plotly_chart's event has (ui.selection_region and ui.selected_rows read it),
// with the scope of the figure it was drawn on: Python ignores a selection drawn before a slice change.
function selectionOf(event, chart) {
  const selection = {points: [], box: [], lasso: []};
  if (event) {
    if (event.range && event.range.x) selection.box.push({x: event.range.x, y: event.range.y});
    if (event.lassoPoints && event.lassoPoints.x) {
      selection.lasso.push({x: event.lassoPoints.x, y: event.lassoPoints.y});
    }
    if (chart.saliencyAtlas.sendPoints && event.points) {
      for (const point of event.points) {
        if (point.customdata !== undefined) selection.points.push({customdata: point.customdata});
      }
    }
  }
  return {scope: chart.saliencyAtlas.scope, selection: selection};
}

async function draw(chart, Plotly, payload) {
  const state = chart.saliencyAtlas;
  state.sendPoints = payload.send_points;
  if (state.revision === payload.revision) return;
  const layout = themed(payload.figure.layout || {}, chart);
  layout.height = payload.height;
  layout.autosize = true;
  layout.uirevision = payload.scope;  // the same scope (a recolour): Plotly keeps the zoom and the drawn lasso
  // the map's tools (lasso, box) are always shown; other charts show them on hover, as Plotly does by default
  await Plotly.react(chart, payload.figure.data || [], layout,
                     {displayModeBar: payload.selectable ? true : "hover",
                      responsive: true, displaylogo: false});
  if (payload.selectable && !state.listening) {
    chart.on("plotly_selected", (event) => state.send(selectionOf(event, chart)));
    chart.on("plotly_deselect", () => state.send(selectionOf(null, chart)));
    state.listening = true;
  }
  state.revision = payload.revision;
  state.scope = payload.scope;
  chart.setAttribute("data-revision", payload.revision);
}

export default function ({data, parentElement, setStateValue}) {
  const payload = JSON.parse(new TextDecoder().decode(data));
  let chart = parentElement.querySelector("div.saliency-atlas-chart");
  if (!chart) {
    chart = document.createElement("div");
    chart.className = "saliency-atlas-chart";
    chart.setAttribute("data-chart", payload.name);
    chart.style.width = "100%";
    chart.style.minHeight = `${payload.height}px`;
    chart.saliencyAtlas = {revision: null, scope: null, listening: false, queue: Promise.resolve()};
    parentElement.appendChild(chart);
  }
  const state = chart.saliencyAtlas;
  state.send = (value) => setStateValue("selection", value);
  // renders arrive faster than a redraw at times: draw them in order, each after the previous one
  state.queue = state.queue
    .then(() => loadPlotly(payload.plotly_url))
    .then((Plotly) => { state.plotly = Plotly; return draw(chart, Plotly, payload); })
    .catch((error) => {
      chart.textContent = `The map could not be drawn: ${error.message}`;
      state.revision = null;
    });
  // Streamlit calls the cleanup of the latest render when the chart unmounts (the page is left), and that of a
  // render superseded before it started right away: purge (freeing the WebGL context) only a chart that has left
  // the page
  return () => {
    const purge = () => { if (!chart.isConnected && state.plotly) state.plotly.purge(chart); };
    purge();
    setTimeout(purge, 0);
  };
}
