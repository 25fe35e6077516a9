"""monitor_drift and watch_drift with ``dag.test()``: drifted predictions are judged, the deferred
drift sensor fires in the (inline) triggerer, and the drift Asset event says what drifted."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from driftloop.lake import tables
from driftloop.lake.names import DRIFT_METRICS
from driftloop.monitoring import report_uri
from tests.dags.test_dag_runs import _asset_events, airflow_db, dagbag  # noqa: F401 (fixtures)
from tests.integration.test_loop import (
    _champion_with_reference,
    _drifted,
    _land_labels,
    _log_predictions,
    _performance_rows,
)
from tests.models import feature_rows

pytestmark = pytest.mark.slow


@pytest.fixture
def loop_env(settings, monkeypatch):
    from driftloop.config import get_settings

    monkeypatch.setenv("DRIFTLOOP_MONITORING__WINDOW_MINUTES", "2")
    monkeypatch.setenv("DRIFTLOOP_LOOP__BREACH_POLL_SECONDS", "0.5")
    monkeypatch.setenv("DRIFTLOOP_LOOP__SENSOR_TIMEOUT_MINUTES", "2")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _whole_second() -> datetime:
    """Now, to the second: predictions stamped before it fall in the window monitor_drift judges,
    which ends at its run's moment truncated to the second (possibly the same second as now)."""
    return datetime.now(UTC).replace(microsecond=0)


def test_drifted_predictions_are_judged_and_the_sensor_emits_the_drift_asset(loop_env, spec, dagbag):  # noqa: F811
    from airflow.utils.state import DagRunState

    settings = loop_env
    version = _champion_with_reference(settings, spec)
    _log_predictions(settings, spec, version, _drifted(feature_rows(spec, 800, seed=4)), _whole_second())

    monitor = dagbag.get_dag("monitor_drift").test()
    states = {ti.task_id: ti.state for ti in monitor.get_task_instances()}
    assert monitor.state == DagRunState.SUCCESS, states
    judged = [
        r for r in tables.read_table(settings, DRIFT_METRICS).to_pylist() if r["feature"] == "__dataset__"
    ]
    assert len(judged) == 1
    assert judged[0]["drifted"] is True
    assert judged[0]["rows"] == 800
    assert states["render_report"] == "success"  # a drifted window gets its report at once
    # no labels yet: the performance judgement of the same moment says so explicitly
    assert states["judge_performance"] == "success"
    assert _performance_rows(settings, judged[0]["window_end"])["__performance__"]["status"] == "no_data"
    report = report_uri(settings, version, judged[0]["window_start"], judged[0]["window_end"])
    assert Path(report).is_file()

    watch = dagbag.get_dag("watch_drift").test()
    states = {ti.task_id: ti.state for ti in watch.get_task_instances()}
    assert watch.state == DagRunState.SUCCESS, states
    assert states == {"wait_for_breach": "success"}
    (event,) = _asset_events("driftloop.drift")
    assert event["model_version"] == version
    assert "amount" in event["drifted_features"]
    assert event["report_uri"] == report
    assert event["reason"].startswith(f"drift on serving version {version}")


def test_concept_drift_in_the_labels_is_judged_and_the_sensor_emits_the_drift_asset(loop_env, spec, dagbag):  # noqa: F811
    from airflow.utils.state import DagRunState

    settings = loop_env
    version = _champion_with_reference(settings, spec, with_performance=True)
    served = feature_rows(spec, 1500, seed=21)  # the inputs the reference knows ...
    _log_predictions(settings, spec, version, served, _whole_second())
    _land_labels(settings, spec, served, flipped=True)  # ... whose labels now mean the opposite

    monitor = dagbag.get_dag("monitor_drift").test()
    states = {ti.task_id: ti.state for ti in monitor.get_task_instances()}
    assert monitor.state == DagRunState.SUCCESS, states
    rows = tables.read_table(settings, DRIFT_METRICS).to_pylist()
    (dataset,) = [r for r in rows if r["feature"] == "__dataset__"]
    assert dataset["drifted"] is False
    # a calm window announced by new predictions: no report now (it waits for the cron run)
    assert states["render_report"] == "skipped"
    assert not Path(report_uri(settings, version, dataset["window_start"], dataset["window_end"])).exists()
    assert _performance_rows(settings, dataset["window_end"])["__performance__"]["drifted"] is True

    watch = dagbag.get_dag("watch_drift").test()
    states = {ti.task_id: ti.state for ti in watch.get_task_instances()}
    assert watch.state == DagRunState.SUCCESS, states
    # the module's Airflow DB keeps the earlier test's drift event: take this one's
    (event,) = [e for e in _asset_events("driftloop.drift") if e.get("performance_dropped")]
    assert event["model_version"] == version
    assert event["drifted_features"] == []
    assert {"precision", "recall"} <= set(event["dropped_metrics"])
    assert event["labelled"] == 1500
    assert event["reason"].startswith(f"performance drop on serving version {version}")
