"""`make bench`: run every benchmark (or the ones named) and print the Markdown summaries.

    python -m tests.bench                         # all
    python -m tests.bench ingest tuning           # some
    python -m tests.bench features --events 1M    # the feature job at chosen volumes only
    python -m tests.bench serving --rounds 5      # the serving targets, median of 5 rounds

A benchmark is a module with ``run(echo) -> list[dict]`` (it also writes its rows to
tests/bench/results/<name>.json) and ``summary(rows) -> str`` (its Markdown table); add one to
BENCHMARKS. Progress lines carry the time since the start. summary.md is rendered from every
result present, so rerunning one benchmark keeps the others' last figures.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = {
    "ingest": "tests.bench.ingest",
    "features": "tests.bench.features",
    "tuning": "tests.bench.tuning",
    "serving": "tests.bench.serving",
    "drift": "tests.bench.drift",
    "loop": "tests.bench.loop",
}
RESULTS = Path(__file__).parent / "results"


def event_count(text: str) -> int:
    """'1M', '250k' or '2000000' as a number of events."""
    match = re.fullmatch(r"(\d+)([kKmM]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an event count like 1M, 250k or 2000000")
    return int(match[1]) * {"": 1, "k": 1_000, "m": 1_000_000}[match[2].lower()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="name", help=f"any of {list(BENCHMARKS)}; none: all")
    parser.add_argument(
        "--events",
        type=lambda text: tuple(event_count(part) for part in text.split(",")),
        help="comma-separated volumes (e.g. 1M or 1M,10M) for benchmarks that take them (features)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds per configuration, reported as their median, for benchmarks that take them "
        "(serving, loop)",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    names = args.names
    began = time.perf_counter()

    def echo(message: str) -> None:
        print(f"[{time.perf_counter() - began:7.1f}s] {message}", flush=True)

    for name in names or list(BENCHMARKS):
        module = importlib.import_module(BENCHMARKS[name])
        echo(f"==> benchmark {name}")
        started = time.perf_counter()
        options = {}
        if args.events and "volumes" in inspect.signature(module.run).parameters:
            options["volumes"] = args.events
        if args.rounds and "rounds" in inspect.signature(module.run).parameters:
            options["rounds"] = args.rounds
        module.run(echo=echo, **options)
        echo(f"==> {name} done in {time.perf_counter() - started:.0f} s")
    text = summaries()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "summary.md").write_text(text)
    print(f"\n{text}")
    echo(f"make bench finished in {time.perf_counter() - began:.0f} s")
    return 0


def summaries() -> str:
    """Every benchmark's table from its latest results, with when it was measured."""
    sections = []
    for name, module_name in BENCHMARKS.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        module = importlib.import_module(module_name)
        measured = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")
        rows = json.loads(path.read_text())
        sections.append(f"### {name} (measured {measured})\n\n{module.summary(rows)}\n")
    return "\n".join(sections)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
