"""The `make demo` job: the data plane end to end on the embedded defaults, narrated.

It lands simulated batches (with some bad rows and one unreadable file), ingests them,
builds features with Spark and a point-in-time training set, and prints a timeline.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from driftloop.config import Settings
from driftloop.dataset import DatasetSpec


@dataclass
class Timeline:
    """Stages with their durations, printed as they finish."""

    echo: Callable[[str], None]
    started: float = field(default_factory=time.perf_counter)
    stages: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.echo(f"[{time.perf_counter() - self.started:6.1f}s] ▶ {name} …")
        begun = time.perf_counter()
        yield
        took = time.perf_counter() - begun
        self.stages.append((name, took))
        self.echo(f"[{time.perf_counter() - self.started:6.1f}s] ✔ {name} ({took:.1f}s)")

    def note(self, text: str) -> None:
        self.echo(f"          {text}")


def run_data_plane_demo(settings: Settings, spec: DatasetSpec, echo: Callable[[str], None]) -> Timeline:
    """simulate → ingest (with quarantine and a retry) → features → training set."""
    from driftloop.features import build_features, build_training_set
    from driftloop.ingest import ingest_landing
    from driftloop.lake import tables
    from driftloop.lake.spark import get_spark
    from driftloop.simulator import SimulationConfig, write_landing_batches

    timeline = Timeline(echo)
    echo(f"driftloop demo — lake at {settings.lake_uri}")
    # the demo always starts from nothing: an empty lake, MLflow store and study storage
    for leftover in (Path(settings.lake_uri), settings.data_dir / "mlflow", settings.data_dir / "optuna.db"):
        if settings.lake_uri.startswith("/") and leftover.exists():
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()

    # anchor simulated time so the last batch ends a day ago: every label is already due,
    # and rows stamped 30 days after their batch really are in the future
    n_batches, interval = 24, timedelta(hours=2)
    start = (
        datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        - n_batches * interval
        - timedelta(days=1)
    )
    config = SimulationConfig(
        seed=42,
        start_time=start,
        n_users=4_000,
        n_merchants=120,
        events_per_batch=2_000,
        n_batches=n_batches,
        batch_interval=interval,
        bad_row_fraction=0.005,
    )
    landing = Path(settings.landing)
    with timeline.stage(f"simulate {n_batches} batches × {config.events_per_batch:,} events (+ late labels)"):
        files = write_landing_batches(config, landing)
        (landing / "events" / "corrupt-upload.parquet").write_bytes(b"PAR1 this upload was cut short")
        timeline.note(f"{len(files)} files landed under {landing} (and one truncated upload)")

    with timeline.stage("ingest_events: validate → bronze / quarantine"):
        summary = ingest_landing(settings, spec)
        timeline.note(summary.describe())
        reasons: dict[str, int] = {}
        for batch in summary.batches:
            for reason, count in batch.reasons.items():
                reasons[reason] = reasons.get(reason, 0) + count
        for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            timeline.note(f"  quarantined {count:>4} × {reason}")
        for unreadable in summary.unreadable:
            timeline.note(f"  unreadable file kept at {unreadable.quarantined_to} ({unreadable.reason[:60]})")
        bronze = tables.open_table(settings, tables.BRONZE_EVENTS)
        timeline.note(f"bronze_events at Delta version {bronze.version()}")

    with timeline.stage("retry one batch (as an Airflow retry would)"):
        processed = landing / "_processed" / "events" / "batch-00000.parquet"
        shutil.copy(processed, landing / "events" / processed.name)
        (again,) = ingest_landing(settings, spec).batches
        timeline.note(
            f"already ingested: {again.already_ingested}; bronze still at version {bronze.version()}"
        )

    with timeline.stage("start Spark (local, Delta-enabled)"):
        spark = get_spark(settings)

    with timeline.stage("build_features: Spark windows over Delta → MERGE"):
        report = build_features(spark, settings, spec)
        timeline.note(
            f"{report.new_events:,} new events → features table version {report.features_version} "
            f"({report.rows_merged:,} rows written)"
        )
        rerun = build_features(spark, settings, spec)
        timeline.note(f"rerun for the same bronze version skipped: {rerun.skipped}")

    with timeline.stage("point-in-time training set, pinned to Delta versions"):
        training = build_training_set(spark, settings, spec)
        frame = training.to_pandas()
        rate = frame[spec.label].mean() if len(frame) else float("nan")
        timeline.note(
            f"{len(frame):,} labelled events, fraud rate {rate:.2%}, {len(spec.model_features)} features"
        )
        timeline.note(f"lineage: {training.lineage}")

    _train_first_champion(settings, spec, spark, timeline)

    total = time.perf_counter() - timeline.started
    echo(f"done in {total:.1f}s — tables under {settings.lake_uri}/tables")
    return timeline


def _train_first_champion(settings: Settings, spec: DatasetSpec, spark, timeline: Timeline) -> None:
    """train_model's stages on the demo lake: study → registered version → gate → champion."""
    from driftloop.registry import Registry
    from driftloop.retraining import (
        RetrainRequest,
        gate_candidate,
        prepare_training_data,
        register_candidate,
        run_study,
    )

    request = RetrainRequest.parse(
        run_key="demo__first-model",
        trigger="cli",
        reason="make demo: first model",
        n_trials=10,
        timeout_minutes=5,
        metric="pr_auc",
    )
    with timeline.stage("train_model: pinned training set"):
        data = prepare_training_data(spark, settings, spec, request)
        timeline.note(f"{data.rows:,} rows, {data.positives} positives, frozen at {data.uri}")
    with timeline.stage(f"train_model: Optuna study ({request.n_trials} trials, pruning on)"):
        parent, tuning = run_study(settings, spec, request, data)
        timeline.note(
            f"study {tuning.study_name}: {tuning.trials_complete} complete, {tuning.trials_pruned} pruned; "
            f"best validation PR-AUC {tuning.best_value:.3f} (trial {tuning.best_trial})"
        )
    with timeline.stage("train_model: refit, log (LightGBM native) and register"):
        version = register_candidate(settings, spec, request, data, parent, tuning)
        timeline.note(f"registered {settings.registered_model} version {version} (MLflow run {parent})")
    with timeline.stage("train_model: champion/challenger gate"):
        result = gate_candidate(settings, spec, request, data, version)
        holdout = result.candidate.holdout
        timeline.note(
            f"holdout PR-AUC {holdout['pr_auc']:.3f}, recall at {settings.gate.fpr_budget:.0%} FPR "
            f"{holdout['recall_at_fpr']:.3f}, calibration error {holdout['calibration_error']:.3f}, "
            f"p99 latency {result.candidate.latency_p99_ms:.2f} ms"
        )
        timeline.note(f"decision: {result.decision.outcome} {'; '.join(result.decision.reasons)}")
        for move in Registry(settings).history(5):
            timeline.note(
                f"alias history: {move.alias} → v{move.version} (was {move.previous_version}) {move.reason}"
            )
    timeline.note(f"browse runs and the registry: mlflow ui --backend-store-uri {settings.tracking_uri}")
