

def demo_source_run(source: str | None):
    """Return the run folder a bench starts from: `source` when given, else the demo run in the cache; exit with
    a message naming the fix when there is none."""
    from pathlib import Path

    if source:
        return Path(source)
    from core.demo import find_demo_run

    found = find_demo_run()
    if found is None:
        raise SystemExit("error: no demo run in the cache; build it with `make demo` or pass --source.")
    return found
