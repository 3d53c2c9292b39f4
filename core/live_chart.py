"""Plotly charts in a Streamlit custom component that stays mounted while the page reruns (the Map page's map, the
Clusters page's size chart).

``st.plotly_chart`` hashes the figure into its element id, so every new figure mounts a new chart: the browser runs
``Plotly.newPlot`` (for the map also a new WebGL context: 0.5-0.6 s of a 1,000,000-row map's redraw in chromium on
a 2-core machine, against 0.14 s for ``Plotly.react``) and Streamlit's own chart wrapper (about 0.27 s of browser
time for the cluster size chart of a recluster, against 0.03-0.07 s for ``Plotly.react`` of the new bars). This
component (Streamlit's components v2, in the app's own page) keeps one id per key; its module
(``live_chart_frontend/live_chart.js``, no build step) applies each new figure with ``Plotly.react``, which also
keeps the zoom and a drawn lasso while only the colouring changes, and sends back the drawn box or lasso in the
shape ``st.plotly_chart``'s selection event has.

plotly.js is the copy the plotly package ships (so chart and figure JSON always match), kept by the browser as
``window.saliencyAtlasPlotly``, apart from the other plotly.js Streamlit bundles for ``st.plotly_chart`` (which takes
``window.Plotly``). The browser loads it once per tab from a folder served through Streamlit's component file route
(a components v1 declaration, never drawn), assembled once per plotly version under the system's temporary
directory.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

FRONTEND_MODULE = Path(__file__).resolve().parent / "live_chart_frontend" / "live_chart.js"
COMPONENT_NAME = "saliency_atlas_live_chart"
ASSETS_NAME = "saliency_atlas_plotly_js"  # the v1 declaration that serves plotly.min.js

_components: dict[str, Any] = {}


def plotly_js_path() -> Path:
    """Return the path of the plotly.js bundle the installed plotly package ships (what its figures are made for)."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"plotly.js is missing from the plotly package at {path}; reinstall plotly "
                                "(pip install --force-reinstall plotly).")
    return path


def assets_folder(root: Path | None = None) -> Path:
    """Return the folder that serves plotly.min.js to the browser, creating it if needed.

    The folder is named by the plotly version and bundle size, so an upgrade gets a new folder; it is assembled in
    a sibling folder and renamed into place, so a server never serves half of it, and rebuilt when a temp cleaner
    removed part of it. (Streamlit's file route resolves links and refuses those that leave the folder: a copy.)
    """
    import plotly

    bundle = plotly_js_path()
    size = bundle.stat().st_size
    if root is None:  # one folder per user: a shared /tmp may hold another user's, which this one cannot write
        root = Path(tempfile.gettempdir()) / f"saliency-atlas-components-{getpass.getuser()}"
    folder = root / f"plotly-{plotly.__version__}-{size}"

    def complete() -> bool:
        try:
            return (folder / "plotly.min.js").stat().st_size == size
        except OSError:
            return False

    if complete():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=root))
    try:
        shutil.copyfile(bundle, staging / "plotly.min.js")
        try:
            os.replace(staging, folder)
        except OSError:  # the folder exists: assembled by another server meanwhile, or incomplete
            if not complete():
                stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}-stale-", dir=root))
                os.replace(folder, stale / "old")
                os.replace(staging, folder)
                shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _declared() -> tuple[Any, str]:
    """Return (the v2 component's mounting command, the URL path the browser loads plotly.js from)."""
    folder = assets_folder()  # a stat per chart: puts plotly.js back if a temp cleaner removed it meanwhile
    if not _components:
        import streamlit as st
        import streamlit.components.v1 as components_v1

        assets = components_v1.declare_component(ASSETS_NAME, path=str(folder))
        base = (st.get_option("server.baseUrlPath") or "").strip("/")
        _components["plotly_url"] = "/" + (f"{base}/" if base else "") + f"component/{assets.name}/plotly.min.js"
        _components["chart"] = st.components.v2.component(
            COMPONENT_NAME, js=FRONTEND_MODULE.read_text(encoding="utf-8"), isolate_styles=False)
    return _components["chart"], _components["plotly_url"]


DEFAULT_HEIGHT = 450  # pixels: st.plotly_chart's default for a figure without a height


def chart_payload(figure: Any, *, name: str, scope: str, height: int, selectable: bool, send_points: bool,
                  plotly_url: str) -> tuple[bytes, str]:
    """Return (the component's data: UTF-8 JSON of the settings and the figure, the figure's revision).

    `figure` is a plotly figure or its JSON already written (``plotly.io.to_json``: a figure kept in a cache). The
    revision is the first 16 hex digits of the SHA-256 of the figure's JSON: the browser redraws only when it
    changes. The figure's JSON is spliced in as plotly wrote it, not parsed and written again.
    """
    import plotly.io as pio

    figure_json = figure if isinstance(figure, str) else pio.to_json(figure, validate=False)
    revision = hashlib.sha256(figure_json.encode("utf-8")).hexdigest()[:16]
    settings = json.dumps({"name": name, "revision": revision, "scope": scope, "height": int(height),
                           "selectable": selectable, "send_points": send_points, "plotly_url": plotly_url})
    return (settings[:-1] + ', "figure": ' + figure_json + "}").encode("utf-8"), revision


def live_chart(figure: Any, *, key: str, height: int = DEFAULT_HEIGHT, scope: str = "", selectable: bool = False,
               send_points: bool = False) -> dict | None:
    """Draw `figure` (a plotly figure or its JSON) in the component (its element in the page carries
    ``data-chart=<key>``) and return the user's
    last box or lasso selection on it, or None (always None unless `selectable`, which also shows the chart's tools
    all the time instead of on hover).

    The selection is ``{"selection": {"points": [{"customdata": row}, ...], "box": [{"x": [x0, x1], "y": [y0,
    y1]}], "lasso": [{"x": [...], "y": [...]}]}}`` (points only when `send_points`), as ``st.plotly_chart``'s
    event has it. `scope` names what the chart shows apart from its colours (for the map: slice, representation,
    projection): a selection drawn under another scope is stale and returns None, and a new scope resets the zoom.
    """
    mount, plotly_url = _declared()
    scope = hashlib.sha256(scope.encode("utf-8")).hexdigest()[:16]  # what the browser sees of it
    data, _ = chart_payload(figure, name=key, scope=scope, height=height, selectable=selectable,
                            send_points=send_points, plotly_url=plotly_url)
    result = mount(key=key, data=data, default={"selection": None}, on_selection_change=lambda: None,
                   height=height)
    value = result.get("selection") if selectable and hasattr(result, "get") else None
    if not isinstance(value, dict) or value.get("scope") != scope:
        return None
    return {"selection": value.get("selection") or {}}
