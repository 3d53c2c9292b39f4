"""One real-browser pass: start the app on the fixture run, open every page, use one control on each,
save full-page screenshots to tests/screenshots/<page>.png and check the key text.

Uses Debian's chromium (apt-get install chromium) through the playwright package; skipped without it.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import plotly
import pytest

CHROMIUM = Path("/usr/bin/chromium")
# the version of the plotly.js the plotly package ships (core/live_chart.py serves it to the browser)
PLOTLY_JS = re.search(r"plotly\.js v([\d.]+)", (Path(plotly.__file__).parent / "package_data" / "plotly.min.js")
                      .read_text(encoding="utf-8")[:300]).group(1)
REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "tests" / "screenshots"
WIDTH = 1400

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium "
                                                             "(apt-get install -y chromium)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tiny_run_path, tmp_path) -> Iterator[tuple[str, str]]:
    """Start `streamlit run app.py` on a cache holding a copy of the fixture run; yield (base URL, run id)."""
    cache = tmp_path / "browser_cache"
    shutil.copytree(tiny_run_path, cache / "runs" / Path(tiny_run_path).name)
    port = _free_port()
    env = {**os.environ, "SALIENCY_ATLAS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield base, Path(tiny_run_path).name
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def settle(page, timeout: float = 90) -> None:
    """Wait until the script run triggered by the last action has finished and the page stopped moving."""
    page.wait_for_selector("[data-testid=stApp]", timeout=timeout * 1000)
    time.sleep(0.5)  # let a rerun request reach the server
    page.wait_for_selector('[data-testid=stApp][data-test-script-state="notRunning"]', timeout=timeout * 1000)
    page.wait_for_timeout(800)


def shoot(page, name: str) -> Path:
    """Save a screenshot of the whole page (Streamlit scrolls inside its main block, so grow the viewport)."""
    height = page.evaluate(
        "() => Math.max(...['[data-testid=stMain]', '[data-testid=stMainBlockContainer]',"
        " '[data-testid=stSidebarContent]'].map(s => document.querySelector(s)?.scrollHeight || 0))")
    page.set_viewport_size({"width": WIDTH, "height": max(900, int(height) + 80)})
    page.wait_for_timeout(800)
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": 900})
    return path


def main_text(page) -> str:
    return page.locator("[data-testid=stMain]").inner_text()


def commit(page, label: str, value: str) -> None:
    """Type `value` into the input labelled `label` and press Enter, then wait for the rerun."""
    field = page.locator(f'input[aria-label="{label}"]').first
    field.fill(value)
    field.press("Enter")
    settle(page)


def test_every_page_in_a_browser(server):
    from playwright.sync_api import sync_playwright

    base, run_id = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # the dashboard works offline: nothing is fetched from another host (a Material page icon was fetched from
        # fonts.gstatic.com on every rerun)
        elsewhere: list[str] = []
        page.on("request", lambda request: None if request.url.startswith((base, "data:", "blob:", "about:"))
                else elsewhere.append(request.url))

        # Summary: open the settings expander.
        page.goto(base)
        settle(page)
        assert "Saliency Atlas" in main_text(page)
        assert f"run={run_id}" in page.url  # the chosen run is in the link
        page.get_by_text("Run settings, versions and timings").click()
        settle(page)
        assert "fingerprint" in main_text(page)
        shoot(page, "summary")

        # Clusters: 3 clusters from the count input above the table (a fragment rerun).
        page.get_by_role("link", name="Clusters").first.click()
        settle(page)
        sizes = ".saliency-atlas-chart[data-chart=cluster_sizes]"
        page.locator(f"{sizes} .bars").first.wait_for(timeout=60_000)
        page.evaluate(f"() => {{ document.querySelector('{sizes}').mountedBeforeRecluster = true; }}")
        assert page.evaluate(f"() => document.querySelector('{sizes}').saliencyAtlas.plotly.version") == PLOTLY_JS
        commit(page, "Number of k-means clusters", "3")
        text = main_text(page)
        assert "3 clusters of 16 examples" in text and "Word clouds" in text
        page.wait_for_function(f"() => document.querySelector('{sizes}').data[0].x.length === 3", timeout=60_000)
        assert page.evaluate(f"() => document.querySelector('{sizes}').mountedBeforeRecluster === true")
        assert "clusters=3" in page.url
        assert page.locator("[data-testid=stHtml] img[alt^='Word cloud of cluster']").count() >= 1
        shoot(page, "clusters")

        # Map: t-SNE, then a lasso around the whole plot lists the examples.
        page.get_by_role("link", name="Map").first.click()
        settle(page)
        page.locator("[data-testid=stButtonGroup] button", has_text="t-SNE").click()
        settle(page)
        assert "proj=tsne" in page.url
        assert "clusters=3" in page.url  # the count set on Clusters stays in the link on the next page
        # the map is a custom component (core/live_chart.py) that stays mounted across reruns
        chart = ".saliency-atlas-chart[data-chart=map_chart]"
        page.locator(f"{chart} .legendtitletext").first.wait_for(timeout=60_000)
        plot = page.locator(f"{chart} .nsewdrag").first
        box = plot.bounding_box()
        x0, y0, x1, y1 = box["x"] + 4, box["y"] + 4, box["x"] + box["width"] - 4, box["y"] + box["height"] - 4
        page.mouse.move(x0, y0)
        page.mouse.down()
        for x, y in [(x1, y0), (x1, y1), (x0, y1), (x0, y0 + 2)]:
            page.mouse.move(x, y, steps=8)
        page.mouse.up()
        settle(page)
        text = main_text(page)
        assert "selected examples" in text and "Aggregate top terms" in text
        shoot(page, "map")
        # a recolour redraws the same chart in place (Plotly.react): the chart's element survives, its legend
        # changes and the lasso's selection is still listed
        page.evaluate(f"() => {{ document.querySelector('{chart}').mountedBeforeRecolour = true; }}")
        revision = page.evaluate(f"() => document.querySelector('{chart}').getAttribute('data-revision')")
        page.locator("[data-testid=stSelectbox]").filter(has_text="Colour by").first.click()
        page.get_by_role("option", name="prediction", exact=True).click()
        settle(page)
        page.wait_for_function(f"() => document.querySelector('{chart}').getAttribute('data-revision') !== "
                               f"'{revision}'", timeout=60_000)
        # (a one-trace map draws no legend: the tiny model may predict one class, so read the layout)
        assert page.evaluate(f"() => document.querySelector('{chart}').layout.legend.title.text") == "prediction"
        assert page.evaluate(f"() => document.querySelector('{chart}').mountedBeforeRecolour === true")
        assert "selected examples" in main_text(page)

        # Examples: search, read the detail, then follow the link to its neighbours.
        page.get_by_role("link", name="Examples").first.click()
        settle(page)
        commit(page, "Search the texts", "awful")
        text = main_text(page)
        assert "Example " in text and "awful" in text and "Top terms" in text
        shoot(page, "examples")
        page.get_by_role("button", name="Find its neighbours").click()
        page.wait_for_url(re.compile(r".*/neighbours.*", re.IGNORECASE), timeout=90_000)
        settle(page)
        assert "/neighbours" in page.url.lower() and "nearest neighbours" in main_text(page)

        # Neighbours: ask for 3 neighbours.
        commit(page, "Neighbours", "3")
        assert "3 nearest neighbours" in main_text(page)
        shoot(page, "neighbours")

        # Seed terms: lower the minimum count so the tiny data yields lists, with download buttons.
        page.get_by_role("link", name="Seed terms").first.click()
        settle(page)
        commit(page, "Minimum count", "2")
        text = main_text(page)
        assert "Distinctive salient terms" in text and "Log-odds terms" in text
        assert page.locator("[data-testid=stDownloadButton]").count() == 6
        shoot(page, "seed_terms")

        # Sensitivity: type two terms and run the counterfactual test on the tiny model.
        page.get_by_role("link", name="Sensitivity").first.click()
        settle(page)
        terms = page.get_by_role("textbox", name="Your terms")
        terms.fill("good awful")
        terms.press("Control+Enter")
        settle(page)
        page.get_by_role("button", name="Run test").click()
        settle(page, timeout=180)
        text = main_text(page)
        assert "Results for class" in text and "awful" in text
        shoot(page, "sensitivity")

        # Checks: compute faithfulness (AOPC against the random baseline) on the tiny run.
        page.get_by_role("link", name="Checks").first.click()
        settle(page)
        page.get_by_role("button", name="Compute faithfulness").click()
        settle(page, timeout=180)
        text = main_text(page)
        assert "removal: mask · computed in" in text  # the stored result is drawn (table, curves, caption)
        shoot(page, "checks")

        # Compare (one run: two of its attribution methods), one tab at a time: a tab's click computes and draws
        # that tab alone, in the tabs' fragment, and the open tab is in the link.
        page.get_by_role("link", name="Compare").first.click()
        settle(page)
        text = main_text(page)
        assert "Accuracy over the slice" in text and "least-agreeing examples" not in text
        page.get_by_role("tab", name="Map agreement").click()
        settle(page)
        text = main_text(page)
        assert "least-agreeing examples" in text and "Accuracy over the slice" not in text
        assert "section=Map" in page.url
        page.get_by_role("tab", name="Cluster flow").click()
        settle(page)
        assert "adjusted Rand index" in main_text(page)
        shoot(page, "compare")

        # Back on the Summary page after pages that drew st.plotly_chart, whose code sets window.Plotly to the
        # plotly.js Streamlit bundles: the live charts are still drawn by the package's, which wrote the figures.
        page.get_by_role("link", name="Summary").first.click()
        settle(page)
        confusion = ".saliency-atlas-chart[data-chart=confusion]"
        page.locator(f"{confusion} .main-svg").first.wait_for(timeout=60_000)
        assert page.evaluate("() => Boolean(window.Plotly)")  # Streamlit's, loaded by the Examples page
        assert page.evaluate(f"() => document.querySelector('{confusion}').saliencyAtlas.plotly.version") == PLOTLY_JS

        # A shared link opens on the same page, slice and settings.
        fresh = browser.new_page(viewport={"width": WIDTH, "height": 900})
        fresh.goto(f"{base}/Clusters?run={run_id}&split=test&clusters=2")
        settle(fresh)
        assert "2 clusters of 4 examples" in main_text(fresh)
        assert "4 of 16 examples" in fresh.locator("[data-testid=stSidebar]").inner_text()

        for candidate in (page, fresh):
            assert candidate.locator("[data-testid=stException]").count() == 0
        assert not errors, errors
        assert not elsewhere, elsewhere
        browser.close()
