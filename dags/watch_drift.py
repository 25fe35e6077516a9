"""
### watch_drift

Closes the loop: waits for a drift breach of the serving version and starts a retrain —
unless a guard rail holds it back.

**wait_for_breach** — a deferrable sensor; its trigger polls the `drift_metrics` results in the
triggerer (no worker slot is held) until the `champion` has a drifted window (dataset share, score
or a performance drop) that no decision covers yet and the guard rails allow a retrain. Then it
decides the breach once (recorded in the `retrain_triggers` table with the reason; a retry gets
the recorded decision back) and emits the `driftloop.drift` Asset event — drifted features, their
scores, the score's verdict, the report's location and the serving version — which starts
`train_model`. A breach held back, or nothing within `DRIFTLOOP_LOOP__SENSOR_TIMEOUT_MINUTES`,
skips the run (no event); the next run starts at once (`@continuous`).

Guard rails (settings): a cooldown after each automatic retrain (`DRIFTLOOP_LOOP__COOLDOWN_MINUTES`)
and a cap on automatic retrains per 24 hours (`DRIFTLOOP_LOOP__MAX_RETRAINS_PER_DAY`, 0 turns
automatic retraining off). Human approval before a canary is a setting of `deploy_model`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag

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
    DriftBreachSensor(
        task_id="wait_for_breach",
        poll_seconds=_loop.breach_poll_seconds,
        timeout_seconds=_loop.sensor_timeout_minutes * 60,
        outlets=[DRIFT],
    )


watch_drift()
