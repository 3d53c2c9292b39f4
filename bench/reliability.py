"""Load and hostile-link check of the dashboard: N concurrent browser sessions on one server (issue 12).

Copies the demo run into a scratch cache next to two damaged copies of it (a manifest that is a JSON list, and an
examples table with a flipped byte), starts `streamlit run app.py` on that cache, then opens N chromium sessions at
once (separate browser contexts, so separate Streamlit sessions) on the Clusters page. One session carries a
catastrophic-backtracking regex (`(a+)+$`) and one a Markdown-injection link in the slice; the rest ordinary slices.
It reports each session's time to a drawn page, cold (first wave) and warm (the same links again), the server's
resident memory idle, with the sessions, and after they closed, whether any page showed an exception, and whether the run's stored files are byte-identical afterwards.

    python -m bench.reliability [--sessions 8] [--out bench/results/reliability_load.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from bench.dashboard import CHROMIUM, REPO, _STATE, _start_server, _stop
from core.store import MANIFEST, describe_files, open_run

HOSTILE_REGEX = "(a+)+$"
INJECTION = "[session expired, log in](http://evil.example/login)"
ORDINARY = ["", "&pred=negative", "&pred=positive", "&correct=misclassified", "&split=test", "&contains=film",
            "&clusters=8", "&label=positive&split=train"]


def _rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Streamlit serves every session from threads of one process)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _stored_files(run: Path) -> dict:
    return {rel: info for rel, info in describe_files(run).items()
            if rel.split("/")[0] not in ("analysis", "representations")}


async def _session(browser, url: str, timeout_s: float) -> dict:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    t0 = time.perf_counter()
    error = None
    try:
        await page.goto(url, timeout=timeout_s * 1000)
        await page.wait_for_selector("text=Cluster", timeout=timeout_s * 1000)
        await page.wait_for_function(f"() => ({_STATE}) === 'notRunning'", timeout=timeout_s * 1000, polling=20)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: one slow session is a finding
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    seconds = time.perf_counter() - t0
    exceptions = await page.locator("[data-testid=stException]").count()
    links = await page.locator("a[href*='evil.example']").count()
    images = await page.locator("img[src*='evil.example']").count()
    return {"url": url, "seconds": round(seconds, 2), "error": error, "exceptions": exceptions,
            "injected_links": links + images, "context": context}


async def _load(base: str, run_id: str, sessions: int, timeout_s: float, server_pid: int) -> tuple[list[dict], float]:
    """Open the sessions at once; return their results and the server's RSS while they are all open."""
    from playwright.async_api import async_playwright

    urls = []
    for i in range(sessions):
        query = ORDINARY[i % len(ORDINARY)]
        if i == 1:
            query = f"&regex={quote(HOSTILE_REGEX)}"
        elif i == 2:
            query = f"&contains={quote(INJECTION)}"
        urls.append(f"{base}/Clusters?run={run_id}{query}")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        results = await asyncio.gather(*(_session(browser, url, timeout_s) for url in urls))
        during = _rss_mb(server_pid)
        for r in results:
            await r.pop("context").close()
        await browser.close()
        return results, during


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds a session may take to draw")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "reliability_load.json"))
    args = parser.parse_args(argv)

    from core.demo import find_demo_run

    source = find_demo_run()
    if source is None:
        raise SystemExit("No demo run: run `make demo-data` first.")
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        run = runs / source.name
        shutil.copytree(source, run, ignore=shutil.ignore_patterns("analysis"))
        bad_manifest = runs / "damaged0manifest"
        shutil.copytree(run, bad_manifest)
        (bad_manifest / MANIFEST).write_text("[1, 2, 3]")
        bad_table = runs / "damaged000table"
        shutil.copytree(run, bad_table)
        raw = bytearray((bad_table / "examples.parquet").read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (bad_table / "examples.parquet").write_bytes(bytes(raw))
        before = _stored_files(run)

        proc, base, started = _start_server(REPO / "app.py", {"SALIENCY_ATLAS_CACHE": tmp})
        try:
            time.sleep(2)
            idle = _rss_mb(proc.pid)
            t0 = time.perf_counter()
            results, during = asyncio.run(_load(base, run.name, args.sessions, args.timeout, proc.pid))
            wall = time.perf_counter() - t0
            # a second wave of the same links on the now warm server (run verified, matrices and clusters cached)
            t1 = time.perf_counter()
            warm_results, warm_during = asyncio.run(_load(base, run.name, args.sessions, args.timeout, proc.pid))
            warm_wall = time.perf_counter() - t1
            time.sleep(3)
            after = _rss_mb(proc.pid)
        finally:
            _stop(proc)
        after_files = _stored_files(run)
        open_run(run, verify=True)
    report = {
        "sessions": args.sessions, "server_start_seconds": round(started, 1), "wall_seconds": round(wall, 1),
        "warm_wall_seconds": round(warm_wall, 1),
        "rss_mb": {"idle": round(idle), "with_sessions": round(during), "with_second_wave": round(warm_during),
                   "after_close": round(after)},
        "stored_files_unchanged": before == after_files,
        "results": results, "warm_results": warm_results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2), encoding="utf-8")
    for r in results + warm_results:
        print(f"{r['seconds']:7.2f} s  exceptions {r['exceptions']}  injected {r['injected_links']}  "
              f"{r['error'] or ''}  {r['url']}")
    print(json.dumps({k: v for k, v in report.items() if k != "results"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
