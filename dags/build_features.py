"""
### build_features

A Spark job over Delta Lake: per-entity trailing-window features (counts, sums, means over
1 h / 24 h / 7 d per user; merchant and device activity) for every new bronze event, MERGEd
into the **features** table on the event id. Idempotent: the bronze version it has consumed is
committed with the MERGE, so a rerun for the same data writes nothing.

Where the job runs is configuration, not code: in the task's process on the local Spark session,
or as Spark on Kubernetes (a driver pod and its executors) — `DRIFTLOOP_SPARK_JOB__RUNNER`,
following the profile by default.

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
    def update_features_table(*, outlet_events=None, dag_run=None) -> dict:
        """Run the feature job where the settings say; skip (no Asset event) when bronze has nothing new."""
        from airflow.sdk.exceptions import AirflowSkipException

        from driftloop.config import get_settings
        from driftloop.feature_jobs import get_feature_runner
        from driftloop.lake import tables

        settings = get_settings()
        report = get_feature_runner(settings).run(run_key=f"{dag_run.dag_id}/{dag_run.run_id}")
        if report.skipped:
            raise AirflowSkipException(f"features already built from bronze version {report.bronze_version}")
        outlet_events[FEATURES].extra = report.asset_extra(settings.table_uri(tables.FEATURES))
        return report.as_dict()

    update_features_table()


build_features()
