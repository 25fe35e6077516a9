"""The `make demo` job: the data plane, training and a canary rollout on the embedded defaults, narrated.

It lands simulated batches (with some bad rows and one unreadable file), ingests them, builds
features with Spark and a point-in-time training set, trains and gates a first champion, serves
it behind the nginx splitter under simulated traffic, and canaries a second version step by step.
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
    _serve_and_canary(settings, spec, spark, timeline)

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


# the demo's canary: short windows so the whole ladder takes about a minute
DEMO_ROLLOUT = {
    "steps": (10, 50, 100),
    "analysis_interval_s": 8.0,
    "min_requests": 80,
    "latency_slack_ms": 25.0,
}
# a retrain on the same data rarely beats the champion by a margin: let the canary judge instead
DEMO_GATE = {"margin": -0.05, "recent_tolerance": 0.05}


def _traffic_rows(settings: Settings, spec: DatasetSpec, limit: int = 5000) -> list[dict]:
    """Recent events' feature rows as prediction requests (their event ids join late labels)."""
    from driftloop.lake import tables

    features = tables.open_table(settings, tables.FEATURES)
    columns = ", ".join(f'"{c}"' for c in [spec.event_id, *spec.model_features])
    sql = f'SELECT {columns} FROM t ORDER BY "{spec.event_time}" DESC LIMIT {limit}'
    rows = tables.query(features, sql).to_pylist()
    return [{k: (v if v == v else None) for k, v in row.items()} for row in rows]  # NaN → missing


def _serve_and_canary(settings: Settings, spec: DatasetSpec, spark, timeline: Timeline) -> None:
    """deploy_model's stages on one machine: stable behind nginx, traffic, a second version canaried."""
    from driftloop.deploy.local import LocalTarget
    from driftloop.registry import Registry
    from driftloop.retraining import (
        RetrainRequest,
        gate_candidate,
        prepare_training_data,
        register_candidate,
        run_study,
    )
    from driftloop.rollout import Rollout
    from driftloop.traffic import BackgroundLoad

    registry = Registry(settings)
    champion = registry.alias_version("champion")
    if champion is None:
        timeline.note("no champion to serve: the gate rejected the first model")
        return
    target = LocalTarget(settings)
    try:
        with timeline.stage(f"deploy_model: champion v{champion.version} as stable behind nginx"):
            target.deploy("stable", str(champion.version))
            status = target.status()
            timeline.note(
                f"splitter {target.endpoint} → stable v{status.variants['stable'].model_version} "
                f"at {status.variants['stable'].endpoint} (logs under {settings.data_dir / 'serving'})"
            )
        rows = _traffic_rows(settings, spec)
        with BackgroundLoad(target.endpoint, rows, concurrency=4, rate=150) as load:
            timeline.note(f"simulated traffic: {len(rows):,} recent events replayed at ~150 req/s")
            demo = settings.model_copy(
                update={
                    "gate": settings.gate.model_copy(update=DEMO_GATE),
                    "rollout": settings.rollout.model_copy(update=DEMO_ROLLOUT),
                    "training": settings.training.model_copy(update={"seed": 7}),
                }
            )
            request = RetrainRequest.parse(
                run_key="demo__second-model",
                trigger="cli",
                reason="make demo: a second model for the canary",
                n_trials=6,
                timeout_minutes=5,
                metric="pr_auc",
            )
            with timeline.stage("train_model: a second version (another study) and its gate"):
                data = prepare_training_data(spark, demo, spec, request)
                parent, tuning = run_study(demo, spec, request, data)
                version = register_candidate(demo, spec, request, data, parent, tuning)
                result = gate_candidate(demo, spec, request, data, version)
                champion_auc = result.champion.holdout["pr_auc"] if result.champion else float("nan")
                timeline.note(
                    f"v{version}: holdout PR-AUC {result.candidate.holdout['pr_auc']:.3f} "
                    f"(champion {champion_auc:.3f}); "
                    f"gate margin {DEMO_GATE['margin']} → {result.decision.outcome}"
                )
            if result.decision.outcome != "challenger":
                timeline.note(f"not canaried: {'; '.join(result.decision.reasons)}")
                return
            steps = " → ".join(f"{w}%" for w in demo.rollout.steps)
            every = DEMO_ROLLOUT["analysis_interval_s"]
            with timeline.stage(f"deploy_model: canary v{version} at {steps}, analysed every {every:.0f}s"):

                def show(record, verdict, window) -> None:
                    m = {"canary_p99_ms": None, "stable_p99_ms": None} | verdict.metrics
                    nan = float("nan")
                    timeline.note(
                        f"step {record.step + 1} ({record.weight:>3}% canary) window {window}: "
                        f"{verdict.outcome.upper():4}  canary {m.get('canary_requests', 0):.0f} req, "
                        f"errors {m.get('canary_error_rate', 0):.1%}, p99 {m['canary_p99_ms'] or nan:.1f} ms "
                        f"(stable {m['stable_p99_ms'] or nan:.1f}), score PSI {m.get('score_psi', nan):.3f}"
                        + (
                            f" — {'; '.join(verdict.reasons)}"
                            if verdict.reasons and verdict.outcome != "pass"
                            else ""
                        )
                    )

                final = Rollout(demo, "demo__canary", target, registry).drive(version, "demo", on_window=show)
                reasons = final.details.get("reasons") or [final.details.get("reason")]
                timeline.note(f"outcome: {final.phase} — {'; '.join(r for r in reasons if r)}")
        timeline.note(
            f"traffic: {load.total:,} requests, {load.failed} failed; answered by "
            + ", ".join(f"{k} ×{n:,}" for k, n in sorted(load.answered_by.items()))
        )
        for move in registry.history(4):
            timeline.note(
                f"alias history: {move.alias} → v{move.version} (was {move.previous_version}) {move.reason}"
            )
    finally:
        target.stop_all()
        timeline.note("stopped the model servers and nginx")
