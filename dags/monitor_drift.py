"""
### monitor_drift

Judges the serving version's recent predictions against the reference saved with that version
when it was registered (the rows it was validated on, with their scores).

1. **judge_window** — the `window_minutes` of the prediction log before the run started, for the
   `champion` version: PSI / KS / chi-square per feature and for the score, a dataset verdict
   (share of drifted features), all written to the `drift_metrics` Delta table once per window.
   An empty or too small window is an explicit `no_data` / `insufficient_data` result, never a pass.
2. **render_report** — the Evidently HTML report of the same window in the lake
   (`reports/drift/v<version>/<window>.html`) when it drifted, and on every cron run; reports past
   their retention are deleted. Otherwise judge_window skips it (a short-circuit: no task runs).
3. **judge_performance** (beside 1, same moment) — the champion's predictions of the last
   `performance_window_hours` whose labels have arrived (late labels, accepted feedback):
   precision and recall at the decision threshold and PR-AUC (Evidently's ClassificationPreset)
   against the version's holdout figures, written to `drift_metrics` once per window. Too few
   labels is an explicit `insufficient_data`, a version without holdout figures `no_reference`.

Triggers: new predictions in the log (`driftloop.prediction_log`, announced by a watcher in the
triggerer) and a cron backstop (`DRIFTLOOP_MONITORING__SCHEDULE`). The `watch_drift` DAG reads the
results and decides whether a breach starts a retrain.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from driftloop.airflow.assets import prediction_log_asset
from driftloop.config import get_settings


def run_moment(dag_run) -> datetime:
    """The moment a run judges the windows up to: when it started, not when it was due.

    An Asset-triggered run waits while the previous one finishes (one at a time), and judging
    the predictions up to its due time would judge a window already seconds old. The start is
    fixed for the run, so a retried task judges the same window.
    """
    return (dag_run.start_date or dag_run.run_after).replace(microsecond=0)


def is_cron_run(dag_run) -> bool:
    return str(getattr(dag_run.run_type, "value", dag_run.run_type)) == "scheduled"


@dag(
    dag_id="monitor_drift",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(get_settings().monitoring.schedule, timezone="UTC"),
        assets=prediction_log_asset(),
    ),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
    tags=["driftloop", "monitoring"],
    doc_md=__doc__,
)
def monitor_drift():
    @task.short_circuit
    def judge_window(dag_run=None, ti=None) -> dict | None:
        """Drift of the champion's window ending at the run's moment, written to drift_metrics.

        Returns the verdict when the window gets a report (it drifted, or a cron run), None
        otherwise: then render_report is skipped without a task process of its own. The verdict
        is in XCom under ``verdict`` either way.
        """
        from airflow.sdk.exceptions import AirflowSkipException

        from driftloop.monitoring import monitor_window
        from driftloop.registry import CHAMPION, Registry

        settings = get_settings()
        champion = Registry(settings).alias_version(CHAMPION)
        if champion is None:
            raise AirflowSkipException("no champion is serving yet: nothing to monitor")
        verdict = monitor_window(settings, str(champion.version), run_moment(dag_run)).as_dict()
        ti.xcom_push(key="verdict", value=verdict)
        drifted = verdict["dataset_drifted"] or verdict["score_drifted"]
        return verdict if drifted or is_cron_run(dag_run) else None

    @task
    def render_report(verdict: dict) -> str | None:
        """The window's Evidently report (None when it has too few rows), and retention.

        Rendered for a drifted window and on every cron run; a calm window announced by new
        predictions (every few seconds under traffic) gets none, which keeps runs short.
        """
        from driftloop.monitoring import prune_reports, render_window_report

        settings = get_settings()
        window_end = datetime.fromisoformat(verdict["window_end"])
        uri = render_window_report(
            settings, verdict["model_version"], datetime.fromisoformat(verdict["window_start"]), window_end
        )
        prune_reports(settings, window_end)
        return uri

    @task
    def judge_performance(dag_run=None) -> dict:
        """Classification performance of the champion's labelled predictions up to the run's moment."""
        from airflow.sdk.exceptions import AirflowSkipException

        from driftloop.dataset import get_dataset_spec
        from driftloop.monitoring import monitor_performance
        from driftloop.registry import CHAMPION, Registry

        settings = get_settings()
        champion = Registry(settings).alias_version(CHAMPION)
        if champion is None:
            raise AirflowSkipException("no champion is serving yet: nothing to monitor")
        # the same moment as judge_window: a breach carries both findings of this run
        return monitor_performance(
            settings, get_dataset_spec(), str(champion.version), run_moment(dag_run)
        ).as_dict()

    render_report(judge_window())
    judge_performance()


monitor_drift()
