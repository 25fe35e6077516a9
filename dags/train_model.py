"""
### train_model

Retrains the fraud model and decides whether it may replace the champion.

1. **prepare_training_data** — point-in-time training set pinned to Delta versions (Spark), checked
   (empty window, one class, too few rows, schema mismatch fail here with the reason) and frozen.
2. **tune_model** — an Optuna study (persistent: a retried task resumes it) with pruning; every
   trial is a nested MLflow run under a parent run carrying the lineage.
3. **register_model** — refit of the best trial, logged as a native LightGBM model with signature,
   registered once as a new version of the use case's model with the lineage tags.
4. **gate_model** — new version vs. `champion` on the same holdout and the most recent window;
   pass → alias `challenger` (and a `driftloop.challenger` Asset event) or `champion` for the
   very first model; fail → tagged rejected with reasons.

Triggers: the `driftloop.features` or `driftloop.drift` Asset, a daily backstop, or a REST call
with parameters (`n_trials`, `timeout_minutes`, `metric`, `reason`, `window_days`), validated
before anything runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task

from driftloop.airflow.assets import challenger_asset, champion_asset, drift_asset, features_asset
from driftloop.config import get_settings

CHALLENGER, CHAMPION, DRIFT = challenger_asset(), champion_asset(), drift_asset()
_defaults = get_settings().training


def _schedule():
    """Drift, new features (unless DRIFTLOOP_TRAINING__RETRAIN_ON_FEATURES=false) and the cron backstop."""
    assets = features_asset() | DRIFT if _defaults.retrain_on_features else DRIFT
    if _defaults.backstop_cron is None:
        return assets
    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(_defaults.backstop_cron, timezone="UTC"), assets=assets
    )


@dag(
    dag_id="train_model",
    schedule=_schedule(),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    tags=["driftloop", "training"],
    doc_md=__doc__,
    params={
        "n_trials": Param(
            _defaults.n_trials,
            type="integer",
            minimum=1,
            maximum=500,
            description="Optuna trials in the study.",
        ),
        "timeout_minutes": Param(
            _defaults.timeout_minutes,
            type="number",
            exclusiveMinimum=0,
            maximum=240,
            description="Wall-clock budget of the study.",
        ),
        "metric": Param(
            _defaults.metric,
            type="string",
            enum=["pr_auc", "recall_at_fpr"],
            description="What the study maximises.",
        ),
        "reason": Param(
            None,
            type=["null", "string"],
            minLength=3,
            maxLength=500,
            description="Why this retrain was asked for (recorded in lineage).",
        ),
        "window_days": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=365,
            description="Train on the last N days of labelled events only.",
        ),
    },
)
def train_model():
    @task
    def prepare_training_data(params=None, dag_run=None, triggering_asset_events=None) -> dict:
        """Validate the request, then build and freeze the pinned training set."""
        from driftloop.dataset import get_dataset_spec
        from driftloop.lake.spark import get_spark
        from driftloop.retraining import RetrainRequest, prepare_training_data, resolve_trigger

        settings = get_settings()
        events = triggering_asset_events or {}
        assets = [getattr(a, "name", str(a)) for a in events]
        # a drift event says what drifted: that is the reason recorded in the lineage
        drift_reasons = [
            str(e.extra["reason"])
            for a, evs in events.items()
            if getattr(a, "name", str(a)) == DRIFT.name
            for e in evs
            if (e.extra or {}).get("reason")
        ]
        reason = params.get("reason") or (drift_reasons[-1][:500] if drift_reasons else None)
        trigger, reason = resolve_trigger(dag_run.run_type, assets, reason)
        request = RetrainRequest.parse(
            run_key=dag_run.run_id,
            trigger=trigger,
            reason=reason,
            n_trials=params["n_trials"],
            timeout_minutes=params["timeout_minutes"],
            metric=params["metric"],
            window_days=params["window_days"],
        )
        data = prepare_training_data(get_spark(settings), settings, get_dataset_spec(), request)
        return {"request": request.model_dump(), "data": data.as_dict()}

    @task
    def tune_model(prepared: dict) -> dict:
        """Run or resume the Optuna study; trials are nested MLflow runs."""
        from dataclasses import asdict

        from driftloop.dataset import get_dataset_spec
        from driftloop.retraining import PreparedData, RetrainRequest, run_study

        parent, result = run_study(
            get_settings(),
            get_dataset_spec(),
            RetrainRequest(**prepared["request"]),
            PreparedData(**prepared["data"]),
        )
        return {**prepared, "parent_run_id": parent, "tuning": asdict(result)}

    @task
    def register_model(tuned: dict) -> dict:
        """Refit the best trial and register it (once per run)."""
        from driftloop.dataset import get_dataset_spec
        from driftloop.retraining import PreparedData, RetrainRequest, register_candidate
        from driftloop.training import TuningResult

        version = register_candidate(
            get_settings(),
            get_dataset_spec(),
            RetrainRequest(**tuned["request"]),
            PreparedData(**tuned["data"]),
            tuned["parent_run_id"],
            TuningResult(**tuned["tuning"]),
        )
        return {**tuned, "version": version}

    @task(outlets=[CHALLENGER, CHAMPION])
    def gate_model(registered: dict, outlet_events=None) -> dict:
        """Champion/challenger gate; emits the Asset of the alias it moved, nothing when rejected."""
        from airflow.sdk.exceptions import AirflowSkipException

        from driftloop.dataset import get_dataset_spec
        from driftloop.retraining import PreparedData, RetrainRequest, gate_candidate

        result = gate_candidate(
            get_settings(),
            get_dataset_spec(),
            RetrainRequest(**registered["request"]),
            PreparedData(**registered["data"]),
            registered["version"],
        )
        summary = result.as_dict()
        if not result.decision.passed:
            get_current_context()["ti"].xcom_push(key="gate", value=summary)
            raise AirflowSkipException(
                f"version {result.version} rejected: {'; '.join(result.decision.reasons)}"
            )
        asset = CHAMPION if result.decision.outcome == "champion" else CHALLENGER
        outlet_events[asset].extra = {
            "version": result.version,
            "run_key": registered["request"]["run_key"],
            "holdout": result.candidate.holdout,
        }
        return summary

    gate_model(register_model(tune_model(prepare_training_data())))


train_model()
