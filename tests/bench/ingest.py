"""Ingest benchmark: rows per second validated (pandera) and written (delta-rs) per batch size.

Batches are landed as Parquet with 1 % corrupted rows, so quarantine writes are part of it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from driftloop.config import Settings
from driftloop.dataset import load_dataset_spec
from driftloop.ingest import ingest_landing
from driftloop.simulator import SimulationConfig, batch_window, write_landing_batches

RESULTS = Path(__file__).parent / "results"


def bench_batch_size(root: Path, events_per_batch: int, n_batches: int, echo=print) -> dict:
    spec = load_dataset_spec()
    settings = Settings(data_dir=root / f"ingest-{events_per_batch}")
    config = SimulationConfig(
        n_users=max(1000, events_per_batch // 20),
        n_merchants=200,
        events_per_batch=events_per_batch,
        n_batches=n_batches,
        bad_row_fraction=0.01,
        seed=3,
    )
    write_landing_batches(config, Path(settings.landing))
    echo(f"[ingest] {n_batches} × {events_per_batch:,} rows landed (untimed); ingesting")
    began = time.perf_counter()
    summary = ingest_landing(settings, spec, reference_time=batch_window(config, n_batches - 1)[1])
    seconds = time.perf_counter() - began
    rows = summary.rows_in
    row = {
        "events_per_batch": events_per_batch,
        "batches": n_batches,
        "rows_in": rows,
        "rows_quarantined": sum(b.rows_quarantined for b in summary.batches),
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
    }
    echo(f"[ingest] {row}")
    return row


def run(echo=print) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-ingest-") as scratch:
        rows = [
            bench_batch_size(Path(scratch), size, count, echo)
            for size, count in ((10_000, 10), (100_000, 10))
        ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(rows, indent=2))
    return rows


def summary(rows: list[dict]) -> str:
    lines = [
        "| batch size | batches | rows in (events + labels) | seconds | rows/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['events_per_batch']:,} | {r['batches']} | {r['rows_in']:,} | {r['seconds']:.1f} | "
            f"{r['rows_per_s']:,} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(run()))
