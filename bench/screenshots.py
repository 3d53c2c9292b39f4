"""Screenshots of the demo's pages in a real browser, for docs/screenshots/.

    .venv/bin/python -m bench.screenshots [--prefix demo] [--pages clusters,seed_terms,...]

Starts `streamlit run app.py` on the current cache, opens each page on the view the README's walkthrough
describes (test split, predicted negative, 3 clusters) and saves a full-page PNG to
docs/screenshots/<prefix>_<page>.png. Needs the demo run (`make demo-data`) and Debian's chromium.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
WIDTH = 1500
SLICE = "split=test&pred=negative&clusters=3"
PAGES = {
    "clusters": f"Clusters?{SLICE}",
    "seed_terms": "Seed_terms?target=negative",
    "map": f"Map?{SLICE}&colour=cluster",
    "examples": f"Examples?{SLICE}",
    "neighbours": f"Neighbours?{SLICE}",
    "summary": f"?{SLICE}",
    "compare": "Compare?",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settle(page, timeout_s: float = 600) -> None:
    page.wait_for_selector("[data-testid=stApp]", timeout=timeout_s * 1000)
    time.sleep(1.0)
    page.wait_for_selector('[data-testid=stApp][data-test-script-state="notRunning"]', timeout=timeout_s * 1000)
    page.wait_for_timeout(1500)


def main(argv: list[str] | None = None) -> int:
    """Take the screenshots; return the exit code."""
    from playwright.sync_api import sync_playwright

    from core.demo import find_demo_run

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default="demo")
    parser.add_argument("--pages", default="clusters,seed_terms")
    parser.add_argument("--run", default=None, help="a run folder under the cache (default: the demo run)")
    parser.add_argument("--query", default=None, help="query string for every page instead of the demo's view")
    args = parser.parse_args(argv)
    from core.store import runs_dir

    run = runs_dir() / args.run if args.run else find_demo_run()
    if run is None:
        print("no demo run: run `make demo-data` first", file=sys.stderr)
        return 2
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--browser.gatherUsageStats", "false",
                             "--server.fileWatcherType", "none"], cwd=REPO, env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"])
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            OUT.mkdir(parents=True, exist_ok=True)
            for name in args.pages.split(","):
                target = PAGES[name].split("?")[0] + f"?{args.query}" if args.query else PAGES[name]
                page.goto(f"{base}/{target}&run={run.name}")
                _settle(page)
                height = page.evaluate(
                    "() => Math.max(...['[data-testid=stMain]', '[data-testid=stMainBlockContainer]',"
                    " '[data-testid=stSidebarContent]'].map(s => document.querySelector(s)?.scrollHeight || 0))")
                page.set_viewport_size({"width": WIDTH, "height": max(1000, int(height) + 80)})
                page.wait_for_timeout(1500)
                path = OUT / f"{args.prefix}_{name}.png"
                page.screenshot(path=str(path), full_page=True)
                page.set_viewport_size({"width": WIDTH, "height": 1000})
                print(path)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
