"""Tuning benchmark: seconds per trial and trials per minute at 100k and 1M labelled rows, with
pruning and without in the same run, and the time from a retrain trigger to a registered version.

The lake is built the real way (bronze + labels in Delta, the Spark feature job, the
point-in-time training set); only data generation and feature building are untimed.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from driftloop.config import Settings
from driftloop.dataset import DatasetSpec, load_dataset_spec
from driftloop.features import build_features
from driftloop.ingest import arrow_schema
from driftloop.lake import tables
from driftloop.lake.spark import get_spark
from driftloop.retraining import RetrainRequest, prepare_training_data, register_candidate, run_study
from driftloop.simulator import simulate_batch
from driftloop.validation import label_columns
from tests.bench.data import EventVolume, write_bronze

RESULTS = Path(__file__).parent / "results"
N_TRIALS = 8


def _write_labels(settings: Settings, spec: DatasetSpec, volume: EventVolume) -> None:
    config = volume.simulation()
    uri = tables.delta_rs_uri(settings.table_uri(tables.BRONZE_LABELS))
    columns = label_columns(spec)
    for batch_index in range(volume.n_batches):
        labels = simulate_batch(config, batch_index).labels
        rows = pa.Table.from_pandas(
            labels[[c.name for c in columns]], schema=arrow_schema(columns), preserve_index=False
        )
        n = rows.num_rows
        rows = (
            rows.append_column("_batch_id", pa.array([f"batch-{batch_index:05d}"] * n, pa.string()))
            .append_column("_source_file", pa.array(["bench"] * n, pa.string()))
            .append_column("_ingested_at", rows.column(spec.label_time))
        )
        write_deltalake(uri, rows, mode="append", configuration={"delta.enableChangeDataFeed": "true"})


def _request(key: str) -> RetrainRequest:
    return RetrainRequest.parse(
        run_key=key, trigger="cli", reason="benchmark", n_trials=N_TRIALS, timeout_minutes=60, metric="pr_auc"
    )


def bench_volume(root: Path, n_events: int, echo=print) -> list[dict]:
    spec = load_dataset_spec()
    volume = EventVolume(n_events)
    settings = Settings(data_dir=root / volume.label, spark_master="local[2]", spark_driver_memory="6g")
    echo(f"[tuning {volume.label}] writing bronze events and labels (untimed)")
    write_bronze(settings, spec, volume)
    _write_labels(settings, spec, volume)
    echo(f"[tuning {volume.label}] building features with Spark (untimed)")
    spark = get_spark(settings)
    build_features(spark, settings, spec)

    started = time.perf_counter()
    data = prepare_training_data(spark, settings, spec, _request(f"bench-{volume.label}-pruned"))
    prepare_s = time.perf_counter() - started
    rows = []
    for pruning in (True, False):
        mode = "pruning" if pruning else "no pruning"
        echo(f"[tuning {volume.label}] study with {mode}: {N_TRIALS} trials on {data.rows:,} rows")
        run_settings = settings.model_copy(
            update={"training": settings.training.model_copy(update={"pruning": pruning})}
        )
        request = _request(f"bench-{volume.label}-{'pruned' if pruning else 'full'}")
        began = time.perf_counter()
        parent, result = run_study(run_settings, spec, request, data)
        study_s = time.perf_counter() - began
        row = {
            "rows": data.rows,
            "volume": volume.label,
            "pruning": pruning,
            "trials": result.trials_complete + result.trials_pruned,
            "trials_pruned": result.trials_pruned,
            "study_s": round(study_s, 2),
            "seconds_per_trial": round(study_s / max(1, result.trials_complete + result.trials_pruned), 2),
            "trials_per_minute": round(60 * (result.trials_complete + result.trials_pruned) / study_s, 2),
            "best_validation_pr_auc": round(result.best_value, 4),
        }
        if pruning:
            began = time.perf_counter()
            register_candidate(run_settings, spec, request, data, parent, result)
            register_s = time.perf_counter() - began
            row["prepare_s"] = round(prepare_s, 2)
            row["register_s"] = round(register_s, 2)
            row["trigger_to_registered_s"] = round(prepare_s + study_s + register_s, 2)
        echo(f"[tuning {volume.label}] {row}")
        rows.append(row)
    return rows


def run(volumes: tuple[int, ...] = (100_000, 1_000_000), echo=print) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-tuning-") as scratch:
        rows = [row for n in volumes for row in bench_volume(Path(scratch), n, echo)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tuning.json").write_text(json.dumps(rows, indent=2))
    return rows


def summary(rows: list[dict]) -> str:
    lines = [
        "| rows | pruning | trials (pruned) | s/trial | trials/min | best val PR-AUC "
        "| trigger → registered |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        registered = f"{r['trigger_to_registered_s']:.0f} s" if "trigger_to_registered_s" in r else "—"
        lines.append(
            f"| {r['rows']:,} | {'on' if r['pruning'] else 'off'} | {r['trials']} ({r['trials_pruned']}) | "
            f"{r['seconds_per_trial']:.1f} | {r['trials_per_minute']:.1f} | "
            f"{r['best_validation_pr_auc']:.3f} | {registered} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(run()))
