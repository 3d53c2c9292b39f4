"""Memory and server time of one session visiting every page of a run, in a fresh process (issue 15).

    .venv/bin/python -m bench.session_memory RUN_DIR [--pages summary,clusters,...] [--timeout 900]

Runs the dashboard with Streamlit's AppTest (the page scripts, their caches and the sidebar exactly as the server
runs them, without a browser) in this process, opening the run from a link (`?run=<id>`), then switching to every
page in navigation order in the same session, and on the Compare page each of its other tabs (computed when
opened). After each page it records the seconds the script took and the process's memory from /proc/self/status: VmRSS (resident now: anonymous + file pages mapped and touched),
RssAnon (the private part: what memory-mapped files do not explain) and VmHWM (the peak resident size so far),
and the peak RSS of the child processes it ran (large index builds, a large run's dataset warnings).
Prints one JSON object per page, then a summary line; `--json` writes them to a file. The cache root is the
run's grandparent folder (RUN_DIR = <cache>/runs/<id>).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PAGES = ("summary", "clusters", "map", "examples", "neighbours", "seed_terms", "sensitivity", "checks", "compare")


def memory_gb() -> dict[str, float]:
    """Return this process's VmRSS, RssAnon, RssFile and VmHWM (peak RSS) in GiB, from /proc/self/status, and
    `children_peak` (the largest peak RSS of a finished child process: the dashboard builds large neighbour
    indexes and a large run's dataset warnings in child processes)."""
    import resource

    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 2**20, 3)
    out["children_peak"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3)
    return out


def visit_pages(run_dir: Path, pages: tuple[str, ...], timeout_s: float) -> list[dict]:
    """Return one record per page (seconds, memory, exceptions) of a session visiting `pages` in order."""
    os.environ["SALIENCY_ATLAS_CACHE"] = str(run_dir.parent.parent)
    from streamlit.testing.v1 import AppTest

    from core import ui

    repo = Path(__file__).resolve().parent.parent
    records = [{"page": "start", "seconds": 0.0, **memory_gb()}]
    at = AppTest.from_file(str(repo / "app.py"), default_timeout=timeout_s)
    at.query_params["run"] = run_dir.name
    for page in pages:
        if page != "summary":
            at.switch_page(ui.PAGE_FILES[page])
        t0 = time.perf_counter()
        at.run()
        seconds = time.perf_counter() - t0
        errors = [e.message for e in at.exception]
        view = {}
        for key in ("rep", "unit"):  # what the sidebar ended up on (a page switch must keep it)
            try:
                view[key] = at.sidebar.selectbox(key=key).value
            except (KeyError, IndexError):
                pass
        records.append({"page": page, "seconds": round(seconds, 2), **memory_gb(), "exceptions": errors[:3],
                        "elements": len(list(at.main)), "view": view})
        print(json.dumps(records[-1]), flush=True)
        if page == "compare":  # its tabs are computed when opened: each other one, as a user reads them
            for section in ui.COMPARE_SECTIONS[1:]:
                at.session_state[ui.COMPARE_SECTION_KEY] = section
                t0 = time.perf_counter()
                at.run()
                records.append({"page": f"compare, {section} tab", "seconds": round(time.perf_counter() - t0, 2),
                                **memory_gb(), "exceptions": [e.message for e in at.exception][:3],
                                "elements": len(list(at.main)), "view": view})
                print(json.dumps(records[-1]), flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--pages", default=",".join(PAGES))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one page may take")
    parser.add_argument("--json", type=Path, default=None, help="write the records here")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    records = visit_pages(args.run_dir.resolve(), tuple(p for p in args.pages.split(",") if p), args.timeout)
    summary = {"peak_rss_gb": max(r["VmHWM"] for r in records), "final_rss_gb": records[-1]["VmRSS"],
               "final_anon_gb": records[-1]["RssAnon"],
               "pages": sum(1 for r in records[1:] if not r["page"].startswith("compare, ")),
               "pages_with_exceptions": [r["page"] for r in records if r.get("exceptions")]}
    print(json.dumps(summary), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"records": records, "summary": summary}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
