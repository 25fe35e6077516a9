"""`make bench`: run every benchmark (or the ones named) and print the Markdown summaries.

    python -m tests.bench                 # all
    python -m tests.bench ingest tuning   # some

Each benchmark writes its JSON under tests/bench/results/; the summaries go to summary.md.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

BENCHMARKS = {
    "ingest": "tests.bench.ingest",
    "features": "tests.bench.features",
    "tuning": "tests.bench.tuning",
}


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
        return 2
    sections = []
    for name in names or list(BENCHMARKS):
        module = importlib.import_module(BENCHMARKS[name])
        print(f"==> benchmark {name}", flush=True)
        began = time.perf_counter()
        rows = module.run()
        sections.append(f"### {name}\n\n{module.summary(rows)}\n")
        print(f"==> {name} done in {time.perf_counter() - began:.0f}s", flush=True)
    text = "\n".join(sections)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
