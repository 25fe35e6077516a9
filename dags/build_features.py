"""
### build_features

A Spark job over Delta Lake: per-entity trailing-window features (counts, sums, means over
1 h / 24 h / 7 d per user; merchant and device activity) for every new bronze event, MERGEd
into the **features** table on the event id. Idempotent: the bronze version it has consumed is
committed with the MERGE, so a rerun for the same data writes nothing.

Runs on every `driftloop.bronze_events` Asset event and hourly as a backstop.
Emits a `driftloop.features` Asset event with the new Delta version.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from driftloop.airflow.assets import bronze_events_asset, features_asset

FEATURES = features_asset()


@dag(
    dag_id="build_features",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("15 * * * *", timezone="UTC"), assets=bronze_events_asset()
    ),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    tags=["driftloop", "data", "spark"],
    doc_md=__doc__,
)
def build_features():
    @task(outlets=[FEATURES])
    def update_features_table(*, outlet_events=None) -> dict:
        """Run the feature job; skip (no Asset event) when bronze has nothing new."""
        from airflow.sdk.exceptions import AirflowSkipException

        from driftloop.config import get_settings
        from driftloop.dataset import get_dataset_spec
        from driftloop.features import build_features as run_feature_job
        from driftloop.lake import tables
        from driftloop.lake.spark import get_spark

        settings = get_settings()
        report = run_feature_job(get_spark(settings), settings, get_dataset_spec())
        if report.skipped:
            raise AirflowSkipException(f"features already built from bronze version {report.bronze_version}")
        outlet_events[FEATURES].extra = report.asset_extra(settings.table_uri(tables.FEATURES))
        return report.as_dict()

    update_features_table()


build_features()
