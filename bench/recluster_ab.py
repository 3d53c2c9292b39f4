"""Typed reclusters in chromium, one version of the dashboard against another in the same window.

    .venv/bin/python -m bench.recluster_ab --rows 1000000 --base /tmp/wt-base [--passes 2] [--counts 10,20,16]

Chromium figures on this 2-core machine move by 2-3x between windows (bench/results/dashboard.md: the floor of a
three-element page), so a change is judged against the code before it in one window, alternating the two. `--base`
is a checkout of the other version (e.g. `git worktree add /tmp/wt-base HEAD~3`); both serve the runs under this
checkout's cache/bench (the scaled runs of bench/dashboard.py, built there first). Each pass starts a server from
its tree, opens the Clusters page of the `--rows` run, waits `--settle` seconds (the warm-up and the counts one step
away), then types each of `--counts` into the cluster count, back to back, each timed until the page shows the new
count's line and the script is idle, on the page's clock (bench.dashboard.page_latency: from the Enter to the first
frame after the script is idle; Playwright's own wait, which can trail by up to 0.5 s, is printed beside). Per pass it prints the times, their median and sum, and the CPU seconds of the
server and of each kind of chromium process over the typed reclusters (the two share the cores). Nothing is written.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "cache" / "bench"


def process_cpu(server_pid: int) -> dict[str, float]:
    """Return the user + system CPU seconds of the server process and of the chromium processes by kind (read from
    /proc: Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {"server": 0.0}
    for folder in Path("/proc").glob("[0-9]*"):
        try:
            stat = (folder / "stat").read_text()
            command = (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:  # the process ended meanwhile
            continue
        name_end = stat.rindex(")")
        comm, fields = stat[stat.index("(") + 1:name_end], stat[name_end + 2:].split()
        if int(folder.name) == server_pid:
            name = "server"
        elif "chrom" in comm:
            name = "chromium " + (command.split("--type=")[1].split()[0] if "--type=" in command else "browser")
        else:
            continue
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return totals


def scaled_run(rows: int) -> Path | None:
    """Return the folder of bench.dashboard's scaled run of `rows` examples (None without a demo run)."""
    from bench.scaled_run import scaled_run_folder
    from core.demo import find_demo_run

    source = find_demo_run()
    return None if source is None else scaled_run_folder(CACHE, source.name, rows)


def one_pass(tree: Path, run_id: str, rows: int, counts: list[int], settle_s: float) -> dict[str, object]:
    """Serve `tree`'s app.py on this checkout's bench cache and time typed reclusters to `counts` in chromium."""
    from playwright.sync_api import sync_playwright

    from bench.dashboard import (CHROMIUM, PAGE_CLOCK_JS, _start_server, _stop, _wait_until_drawn,
                                 arm_page_clock, page_latency)

    proc, base, _ = _start_server(tree / "app.py", {"SALIENCY_ATLAS_CACHE": str(CACHE)}, cwd=tree)

    def line(k: int) -> str:
        return f"[data-testid=stMarkdownContainer]:has-text('{k} clusters of {rows:,} examples')"

    seconds: list[float] = []
    walls: list[float] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.add_init_script(PAGE_CLOCK_JS)
            page.goto(f"{base}/Clusters?run={run_id}")
            _wait_until_drawn(page, line(5))
            time.sleep(settle_s)
            before = process_cpu(proc.pid)
            for k in counts:
                field = page.locator('input[aria-label="Number of k-means clusters"]').first
                started = time.perf_counter()
                field.fill(str(k))
                arm_page_clock(page)
                field.press("Enter")
                _wait_until_drawn(page, line(k))
                walls.append(time.perf_counter() - started)
                seconds.append(page_latency(page))
            after = process_cpu(proc.pid)
            browser.close()
    finally:
        _stop(proc)
    return {"seconds": seconds, "walls": walls, "cpu": {name: after[name] - before.get(name, 0.0) for name in after}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="the scaled run to open (built by "
                        "bench.dashboard --rows N)")
    parser.add_argument("--base", type=Path, required=True, help="a checkout of the version to compare against")
    parser.add_argument("--passes", type=int, default=2, help="passes per version, alternating")
    parser.add_argument("--counts", default="10,20,16,8,12,17,9", help="cluster counts typed, in order")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds between opening and the first count")
    args = parser.parse_args(argv)
    if not (args.base / "app.py").is_file():
        parser.error(f"--base {args.base} holds no app.py: give a checkout of the dashboard")
    run = scaled_run(args.rows)
    if run is None or not (run / "manifest.json").is_file():
        parser.error(f"{run} is missing: build it first with .venv/bin/python -m bench.dashboard --rows {args.rows}")
    counts = [int(c) for c in args.counts.split(",")]
    for _ in range(args.passes):
        for label, tree in (("base", args.base.resolve()), ("this", REPO)):
            result = one_pass(tree, run.name, args.rows, counts, args.settle)
            seconds = result["seconds"]
            cpu = ", ".join(f"{name} {value:.2f}" for name, value in sorted(result["cpu"].items()) if value > 0.05)
            print(f"{label} ({tree}): " + " ".join(f"{k}:{s:.2f}" for k, s in zip(counts, seconds))
                  + f" | median {statistics.median(seconds):.2f} s, sum {sum(seconds):.2f} s (Playwright's wait: "
                  f"median {statistics.median(result['walls']):.2f} s, sum {sum(result['walls']):.2f} s) | CPU s: {cpu}",
                  flush=True)
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
