"""
### ingest_events

Validates landed batches (`<landing>/events/*.parquet|jsonl`, `<landing>/labels/...`) against the
declared dataset contract and appends good rows to the **bronze** Delta tables; invalid rows go
to the **quarantine** table with a reason, unreadable files to `<landing>/_quarantine/` with a
reason file. Every batch is written exactly once, however often the task is retried.

Runs when files land (the `driftloop.landing` Asset's watcher) and every 30 minutes as a backstop.
Emits a `driftloop.bronze_events` Asset event with batch ids, row counts and the Delta version.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from driftloop.airflow.assets import bronze_events_asset, landing_asset

BRONZE_EVENTS = bronze_events_asset()


@dag(
    dag_id="ingest_events",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("*/30 * * * *", timezone="UTC"), assets=landing_asset()
    ),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    tags=["driftloop", "data"],
    doc_md=__doc__,
)
def ingest_events():
    @task(outlets=[BRONZE_EVENTS])
    def ingest_landed_batches(*, outlet_events=None) -> dict:
        """Ingest every landed file; skip (no Asset event) when nothing new was written."""
        from airflow.sdk.exceptions import AirflowSkipException

        from driftloop.config import get_settings
        from driftloop.dataset import get_dataset_spec
        from driftloop.ingest import ingest_landing
        from driftloop.lake import tables

        settings = get_settings()
        summary = ingest_landing(settings, get_dataset_spec())
        extra = summary.bronze_event_extra(settings.table_uri(tables.BRONZE_EVENTS))
        if extra is None:
            raise AirflowSkipException(f"no new event batches: {summary.describe()}")
        outlet_events[BRONZE_EVENTS].extra = extra
        return summary.as_dict()

    ingest_landed_batches()


ingest_events()
