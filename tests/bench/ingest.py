"""Ingest benchmark: rows per second validated (pandera) and written (delta-rs) per batch size.

Batches of events and their labels are landed as Parquet with 1 % corrupted event rows, so
quarantine writes are part of it; landing is untimed. Ingestion runs as of the moment the last
labels have landed, so no label is rejected as coming from the future.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from driftloop.config import Settings
from driftloop.dataset import load_dataset_spec
from driftloop.ingest import ingest_landing
from driftloop.simulator import SimulationConfig, batch_window, write_landing_batches
from tests.bench.timing import timed

RESULTS = Path(__file__).parent / "results"
BATCHES = ((10_000, 10), (100_000, 10))
"""(events per batch, batches) per measured batch size."""


def bench_batch_size(root: Path, events_per_batch: int, n_batches: int, echo: Callable[[str], None]) -> dict:
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
    tag = f"[ingest {events_per_batch:,}/batch]"
    echo(f"{tag} landing {n_batches} batches of events and labels (untimed)")
    write_landing_batches(config, Path(settings.landing))
    last_label = batch_window(config, n_batches - 1)[1] + config.label_delay + config.label_delay_jitter
    echo(f"{tag} ingest_landing ...")
    with timed() as timing:
        summary = ingest_landing(settings, spec, reference_time=last_label)
    by_kind = {kind: [b for b in summary.batches if b.kind == kind] for kind in ("events", "labels")}
    rows_in = summary.rows_in
    row = {
        "events_per_batch": events_per_batch,
        "batches": n_batches,
        "rows_in": rows_in,
        "events_in": sum(b.rows_in for b in by_kind["events"]),
        "labels_in": sum(b.rows_in for b in by_kind["labels"]),
        "rows_quarantined": sum(b.rows_quarantined for b in summary.batches),
        "unreadable_files": len(summary.unreadable),
        **timing.as_dict("ingest"),
        "seconds": round(timing.wall_s, 2),
        "rows_per_s": round(rows_in / timing.wall_s),
    }
    invariant = all(b.rows_in == b.rows_valid + b.rows_quarantined for b in summary.batches)
    if not invariant or row["unreadable_files"]:
        raise AssertionError(f"{tag} rows in != bronze + quarantine, or unreadable: {summary.describe()}")
    echo(
        f"{tag} {rows_in:,} rows ({row['rows_quarantined']:,} quarantined) in {timing.describe()}: "
        f"{row['rows_per_s']:,} rows/s"
    )
    return row


def run(echo: Callable[[str], None] = print) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-ingest-") as scratch:
        rows = [bench_batch_size(Path(scratch), size, count, echo) for size, count in BATCHES]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(rows, indent=2))
    return rows


def summary(rows: list[dict]) -> str:
    lines = [
        "| batch size (events) | batches | rows in (events + labels) | quarantined | seconds | rows/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['events_per_batch']:,} | {r['batches']} | {r['rows_in']:,} | "
            f"{r.get('rows_quarantined', 0):,} | {r['seconds']:.1f} | {r['rows_per_s']:,} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(run()))
