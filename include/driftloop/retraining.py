"""One retrain, stage by stage: pinned training data → Optuna study → registered version → gate.

Each stage is idempotent under a run key (the Airflow run id), so a retried task resumes the
study, reuses the parent MLflow run, registers nothing twice and never re-moves an alias.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from driftloop.config import Metric, Settings
from driftloop.dataset import DatasetSpec
from driftloop.gate import Evaluation, GateDecision, decide
from driftloop.log import get_logger
from driftloop.registry import CHALLENGER, CHAMPION, STATUS_TAG, Registry, registry_lock
from driftloop.training import (
    FeatureEncoder,
    ModelScorer,
    TimeSplit,
    TrainingDataError,
    TuningResult,
    check_training_data,
    fit_final,
    score_metrics,
    split_by_time,
    tune,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = get_logger(__name__)

Trigger = Literal["schedule", "features", "drift", "rest", "cli"]
_SAFE_KEY = str.maketrans({c: "_" for c in ":+/ "})


class RetrainRequest(BaseModel):
    """A validated retrain: who asked, why, and with which budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_key: str = Field(min_length=1, description="Stable id of the retrain (the Airflow run id).")
    trigger: Trigger
    reason: str = Field(min_length=3, max_length=500)
    n_trials: int = Field(ge=1, le=500)
    timeout_minutes: float = Field(gt=0, le=240)
    metric: Metric
    window_days: int | None = Field(None, ge=1, le=365, description="Train on the last N days only.")

    @classmethod
    def parse(cls, **values) -> RetrainRequest:
        """Validate, turning pydantic's report into one actionable message."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"invalid retrain request: {problems}") from None

    @property
    def safe_key(self) -> str:
        return self.run_key.translate(_SAFE_KEY)


def resolve_trigger(
    run_type: object, triggering_assets: list[str], reason: str | None
) -> tuple[Trigger, str]:
    """Which of the four triggers started this run, and a reason to record for it.

    ``run_type`` is Airflow's DagRunType (or its value); manual runs come through the REST API,
    which the UI uses too.
    """
    from driftloop.airflow.asset_names import DRIFT

    run_type = str(getattr(run_type, "value", run_type)).lower()
    if run_type == "asset_triggered" or triggering_assets:
        trigger: Trigger = "drift" if DRIFT in triggering_assets else "features"
        default = "drift detected by monitoring" if trigger == "drift" else "new features landed"
    elif run_type == "manual":
        trigger, default = "rest", "manual retrain"
    else:
        trigger, default = "schedule", "scheduled retrain"
    return trigger, (reason or default)


def code_revision() -> str:
    """The code revision for lineage: DRIFTLOOP_CODE_REVISION (images set it), else git, else unknown."""
    if revision := os.environ.get("DRIFTLOOP_CODE_REVISION"):
        return revision
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def schema_fingerprint(spec: DatasetSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PreparedData:
    """A pinned training set written once per run, plus the lineage that rebuilds it."""

    uri: str
    lineage: dict[str, str]
    rows: int
    positives: int

    def as_dict(self) -> dict:
        return asdict(self)


def prepare_training_data(
    spark: SparkSession, settings: Settings, spec: DatasetSpec, request: RetrainRequest
) -> PreparedData:
    """Build the point-in-time training set at the current Delta versions and freeze it."""
    from pyspark.sql import functions as F

    from driftloop.features import build_training_set

    event_time_from = None
    if request.window_days:
        latest = build_training_set(spark, settings, spec).frame.agg(F.max(spec.event_time)).first()[0]
        if latest is None:
            raise TrainingDataError("no labelled events at all yet: wait for labels to land")
        event_time_from = latest - timedelta(days=request.window_days)
    training = build_training_set(spark, settings, spec, event_time_from=event_time_from)
    frame = training.to_pandas()
    check_training_data(frame, spec, settings.training)
    uri = f"{settings.lake_uri}/training_sets/{spec.name}/{request.safe_key}.parquet"
    _write_parquet(settings, frame, uri)
    lineage = {
        **training.lineage,
        "event_time_from": event_time_from.isoformat() if event_time_from else "",
        "dataset": spec.name,
        "schema_fingerprint": schema_fingerprint(spec),
        "code_revision": code_revision(),
    }
    log.info("retrain.data_prepared", rows=len(frame), uri=uri, **lineage)
    return PreparedData(uri, lineage, len(frame), int(frame[spec.label].sum()))


def _write_parquet(settings: Settings, frame: pd.DataFrame, uri: str) -> None:
    from driftloop.lake.tables import delta_rs_uri, storage_options

    target = delta_rs_uri(uri)
    if "://" not in target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(target, index=False, storage_options=_fsspec_options(storage_options(settings)))


def _fsspec_options(options: dict[str, str] | None) -> dict | None:
    if not options:
        return None
    return (
        {"client_kwargs": {"endpoint_url": options["AWS_ENDPOINT_URL"]}}
        if "AWS_ENDPOINT_URL" in options
        else {}
    )


def load_prepared(settings: Settings, data: PreparedData) -> pd.DataFrame:
    from driftloop.lake.tables import delta_rs_uri, storage_options

    return pd.read_parquet(delta_rs_uri(data.uri), storage_options=_fsspec_options(storage_options(settings)))


def _split(frame: pd.DataFrame, spec: DatasetSpec, settings: Settings) -> TimeSplit:
    t = settings.training
    return split_by_time(frame, spec.event_time, spec.label, t.train_fraction, t.validation_fraction)


def _experiment(settings: Settings, spec: DatasetSpec) -> str:
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    name = f"driftloop/{spec.name}"
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        from mlflow.exceptions import MlflowException

        try:
            return mlflow.create_experiment(name, artifact_location=settings.artifact_location)
        except MlflowException:  # created concurrently
            experiment = mlflow.get_experiment_by_name(name)
    return experiment.experiment_id


def parent_run_id(settings: Settings, spec: DatasetSpec, request: RetrainRequest, data: PreparedData) -> str:
    """The retrain's parent MLflow run: found by run key on a retry, created otherwise."""
    import mlflow

    experiment_id = _experiment(settings, spec)
    found = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.`driftloop.run_key` = '{request.run_key}'", output_format="list"
    )
    if found:
        return found[0].info.run_id
    tags = {
        "driftloop.run_key": request.run_key,
        "driftloop.trigger": request.trigger,
        "driftloop.reason": request.reason,
        "driftloop.study": f"{spec.name}-{request.safe_key}",
        **{f"driftloop.lineage.{k}": v for k, v in data.lineage.items()},
    }
    run = mlflow.MlflowClient().create_run(experiment_id, run_name=f"retrain {request.run_key}", tags=tags)
    return run.info.run_id


def run_study(
    settings: Settings, spec: DatasetSpec, request: RetrainRequest, data: PreparedData
) -> tuple[str, TuningResult]:
    """Tune (resuming the run's study if it exists), each trial a nested MLflow run."""
    import mlflow
    from mlflow.entities import Metric, Param

    frame = load_prepared(settings, data)
    split = _split(frame, spec, settings)
    encoder = FeatureEncoder.fit(split.train, spec)
    parent = parent_run_id(settings, spec, request, data)
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent).info.experiment_id
    logged = {
        r.data.tags.get("driftloop.trial")
        for r in client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    }

    def log_trial(trial, metrics: dict[str, float]) -> None:
        if str(trial.number) in logged:
            return
        logged.add(str(trial.number))
        child = client.create_run(
            experiment_id,
            run_name=f"trial {trial.number}",
            tags={
                "mlflow.parentRunId": parent,
                "driftloop.trial": str(trial.number),
                "state": trial.state.name,
            },
        )
        duration = trial.user_attrs.get("duration_s")
        if duration is None and trial.datetime_complete and trial.datetime_start:
            duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
        values = {**metrics, "duration_s": duration or 0.0, "value": trial.value}
        now = int(time.time() * 1000)
        client.log_batch(  # one round trip per trial: per-call logging dominated small trials
            child.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if v is not None and v == v],
            params=[Param(k, str(v)) for k, v in trial.params.items()],
        )
        client.set_terminated(child.info.run_id, "FINISHED" if trial.state.name == "COMPLETE" else "KILLED")

    result = tune(
        split,
        encoder,
        spec,
        settings.training,
        study_name=f"{spec.name}-{request.safe_key}",
        storage_url=settings.optuna_storage_url,
        n_trials=request.n_trials,
        timeout_minutes=request.timeout_minutes,
        metric=request.metric,
        fpr_budget=settings.gate.fpr_budget,
        log_trial=log_trial,
    )
    # trials a killed worker finished but never logged: log them now, once
    import optuna

    study = optuna.load_study(study_name=result.study_name, storage=settings.optuna_storage_url)
    for trial in study.get_trials(deepcopy=False):
        if trial.state.is_finished():
            log_trial(trial, trial.user_attrs.get("metrics", {}))
    client.log_metric(parent, f"best_{request.metric}", result.best_value)
    for key in ("trials_complete", "trials_pruned", "trials_resumed", "best_trial", "best_iteration"):
        client.log_metric(parent, key, float(getattr(result, key)))
    return parent, result


def register_candidate(
    settings: Settings,
    spec: DatasetSpec,
    request: RetrainRequest,
    data: PreparedData,
    parent: str,
    tuning: TuningResult,
) -> str:
    """Refit the best trial, log it natively (LightGBM) with signature and example, register it."""
    import lightgbm
    import mlflow
    from mlflow.models import infer_signature

    from driftloop.monitoring import REFERENCE_TAG

    registry = Registry(settings)
    existing = registry.find_version(request.run_key)
    if existing is not None and REFERENCE_TAG in existing.tags:
        return str(existing.version)
    frame = load_prepared(settings, data)
    split = _split(frame, spec, settings)
    if existing is not None:  # registered, but the attempt died before its reference was saved
        scorer = load_scorer(settings, f"models:/{registry.name}/{existing.version}")
        _save_reference(settings, spec, str(existing.version), split, scorer)
        return str(existing.version)
    encoder = FeatureEncoder.fit(split.train, spec)
    booster = fit_final(split, encoder, spec, tuning, settings.training)
    example = encoder.transform(split.holdout.head(5))
    mlflow.set_tracking_uri(settings.tracking_uri)
    # the process may hold another store's active experiment (fluent API state is global):
    # resuming a run of a different experiment would be refused
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(parent).info.experiment_id)
    with mlflow.start_run(run_id=parent):
        mlflow.log_params({f"best.{k}": v for k, v in tuning.best_params.items()})
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=infer_signature(example, booster.predict(example)),
            input_example=example,
            pip_requirements=[f"lightgbm=={lightgbm.__version__}", f"pandas=={pd.__version__}"],
            metadata={
                "driftloop": {"encoder": encoder.to_metadata(), "dataset": spec.name, "label": spec.label}
            },
        )
    tags = {
        **{f"lineage.{k}": v for k, v in data.lineage.items()},
        "optuna.study": tuning.study_name,
        "optuna.trial": str(tuning.best_trial),
        "params": json.dumps(tuning.best_params, sort_keys=True),
        "trigger": request.trigger,
        "reason": request.reason,
        "mlflow.run_id": parent,
    }
    version = registry.register(info.model_uri, parent, request.run_key, tags, model_id=info.model_id)
    _save_reference(settings, spec, str(version.version), split, ModelScorer(booster, encoder))
    return str(version.version)


def _save_reference(
    settings: Settings, spec: DatasetSpec, version: str, split: TimeSplit, scorer: ModelScorer
) -> None:
    """Monitoring's reference for the version: the validation and holdout rows with their scores,
    and its holdout precision, recall (at the serving decision threshold) and PR-AUC.

    The most recent part of the training range, the rows the version was chosen on, is what
    production traffic should look like; the oldest rows would make recent drift look smaller.
    The holdout, unseen while tuning and fitting, gives the performance labelled traffic is held to.
    """
    from driftloop.monitoring import SCORE, expected_performance, save_reference

    recent = pd.concat([split.validation, split.holdout], ignore_index=True)
    reference = recent[list(spec.model_features)].copy()
    reference[SCORE] = scorer.score(recent)
    holdout_scores = reference[SCORE].to_numpy()[len(split.validation) :]
    performance = expected_performance(
        split.holdout[spec.label].to_numpy(), holdout_scores, settings.serving.decision_threshold
    )
    save_reference(settings, version, reference, performance=performance)


def load_scorer(settings: Settings, model_uri: str) -> ModelScorer:
    """A registered model as a scorer: the native booster plus the encoder in its metadata."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    booster = mlflow.lightgbm.load_model(model_uri)
    metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    return ModelScorer(booster, FeatureEncoder.from_metadata(metadata["driftloop"]["encoder"]))


def evaluate(
    scorer: ModelScorer, split: TimeSplit, recent: pd.DataFrame, spec: DatasetSpec, settings: Settings
) -> Evaluation:
    gate = settings.gate
    holdout = score_metrics(
        split.holdout[spec.label].to_numpy(), scorer.score(split.holdout), gate.fpr_budget
    )
    recent_metrics = score_metrics(recent[spec.label].to_numpy(), scorer.score(recent), gate.fpr_budget)
    latency = scorer.latency_ms(split.holdout.head(50))
    return Evaluation(holdout, recent_metrics, latency["latency_p99_ms"])


@dataclass(frozen=True)
class GateResult:
    """The gate's decision about one version, and what it changed."""

    version: str
    decision: GateDecision
    candidate: Evaluation
    champion_version: str | None
    champion: Evaluation | None

    def as_dict(self) -> dict:
        return {
            "version": self.version,
            "outcome": self.decision.outcome,
            "reasons": self.decision.reasons,
            "candidate": self.candidate.as_dict(),
            "champion_version": self.champion_version,
            "champion": self.champion.as_dict() if self.champion else None,
        }


def gate_candidate(
    settings: Settings, spec: DatasetSpec, request: RetrainRequest, data: PreparedData, version: str
) -> GateResult:
    """Compare the candidate with the champion on the same rows and move aliases under the lock."""
    registry = Registry(settings)
    frame = load_prepared(settings, data)
    split = _split(frame, spec, settings)
    recent = frame[
        frame[spec.event_time]
        >= frame[spec.event_time].max() - timedelta(days=settings.gate.recent_window_days)
    ]
    candidate = evaluate(
        load_scorer(settings, f"models:/{registry.name}/{version}"), split, recent, spec, settings
    )
    with registry_lock(settings):
        recorded = registry.client.get_model_version(registry.name, version).tags.get(STATUS_TAG)
        champion_mv = registry.alias_version(CHAMPION)
        champion_is_candidate = champion_mv is not None and str(champion_mv.version) == version
        champion = None
        if champion_mv is not None and not champion_is_candidate:
            champion_scorer = load_scorer(settings, f"models:/{registry.name}/{champion_mv.version}")
            champion = evaluate(champion_scorer, split, recent, spec, settings)
        if recorded:  # a retried gate: report the decision already taken, move nothing
            decision = GateDecision(
                recorded,
                json.loads(
                    registry.client.get_model_version(registry.name, version).tags.get(
                        "driftloop.reasons", "[]"
                    )
                ),
            )
            return GateResult(
                version, decision, candidate, str(champion_mv.version) if champion_mv else None, champion
            )
        decision = decide(candidate, champion, settings.gate)
        challenger_mv = registry.alias_version(CHALLENGER)
        if (
            decision.outcome == "challenger"
            and challenger_mv is not None
            and str(challenger_mv.version) != version
        ):
            decision = GateDecision(
                "rejected",
                [
                    f"version {challenger_mv.version} is still in its canary rollout as challenger: "
                    "retrain again once it is promoted or rolled back"
                ],
            )
        actor = f"train_model:{request.trigger}"
        if decision.outcome in ("champion", "challenger"):
            current = registry.alias_version(decision.outcome)
            if current is None or str(current.version) != version:
                registry.move_alias(
                    decision.outcome,
                    version,
                    actor=actor,
                    run_key=request.run_key,
                    reason=f"gate passed ({request.reason})",
                )
        registry.tag_version(
            version,
            {
                STATUS_TAG: decision.outcome,
                "driftloop.reasons": json.dumps(decision.reasons),
                "driftloop.gate": json.dumps(
                    {"candidate": candidate.as_dict(), "champion": champion.as_dict() if champion else None}
                ),
            },
        )
    log.info("retrain.gated", version=version, outcome=decision.outcome, reasons=decision.reasons)
    return GateResult(
        version, decision, candidate, str(champion_mv.version) if champion_mv else None, champion
    )
