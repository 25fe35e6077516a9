"""
### watch_drift

Closes the loop: waits for a drift breach of the serving version and starts a retrain —
unless a guard rail holds it back.

1. **wait_for_breach** — a deferrable sensor; its trigger polls the `drift_metrics` results in the
   triggerer (no worker slot is held) until the `champion` has a drifted window (dataset share or
   score) that no decision covers yet and the guard rails allow a retrain. Nothing within
   `DRIFTLOOP_LOOP__SENSOR_TIMEOUT_MINUTES` → skipped; the next run starts at once (`@continuous`).
2. **start_retrain** — decides the breach once (recorded in the `retrain_triggers` table with the
   reason) and emits the `driftloop.drift` Asset event — drifted features, their scores, the
   score's verdict, the report's location and the serving version — which starts `train_model`.

Guard rails (settings): a cooldown after each automatic retrain (`DRIFTLOOP_LOOP__COOLDOWN_MINUTES`)
and a cap on automatic retrains per 24 hours (`DRIFTLOOP_LOOP__MAX_RETRAINS_PER_DAY`, 0 turns
automatic retraining off). Human approval before a canary is a setting of `deploy_model`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from driftloop.airflow.assets import drift_asset
from driftloop.airflow.monitoring import DriftBreachSensor
from driftloop.config import get_settings

DRIFT = drift_asset()
_loop = get_settings().loop


@dag(
    dag_id="watch_drift",
    schedule="@continuous",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
    tags=["driftloop", "monitoring"],
    doc_md=__doc__,
)
def watch_drift():
    breach = DriftBreachSensor(
        task_id="wait_for_breach",
        poll_seconds=_loop.breach_poll_seconds,
        timeout_seconds=_loop.sensor_timeout_minutes * 60,
    )

    @task(outlets=[DRIFT])
    def start_retrain(breach: dict, dag_run=None, outlet_events=None) -> dict:
        """Decide the breach under the guard rails; on retrain, emit the drift Asset event."""
        from airflow.sdk.exceptions import AirflowSkipException

        from driftloop.loop import Breach, decide_breach

        found = Breach.from_dict(breach)
        decision = decide_breach(get_settings(), found, dag_run.run_id, datetime.now(UTC))
        if not decision.retrain:
            raise AirflowSkipException(f"breach {found.breach_id} recorded, no retrain: {decision.reason}")
        outlet_events[DRIFT].extra = found.as_dict()
        return {"breach_id": found.breach_id, "outcome": decision.outcome, "reason": found.reason}

    start_retrain(breach.output)


watch_drift()
