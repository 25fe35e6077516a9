"""The closed loop's monitoring side on real parts: a registered MLflow version with its saved
reference, a real prediction_log Delta table, the drift_metrics and retrain_triggers tables, and
the triggers' run loops as the triggerer drives them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest

from driftloop.lake import tables
from driftloop.lake.names import DRIFT_METRICS, RETRAIN_TRIGGERS
from driftloop.loop import (
    Breach,
    decide_breach,
    decisions,
    find_breach,
    guard,
    last_decided_window,
    pending_breach,
)
from driftloop.monitoring import (
    PERFORMANCE,
    SCORE,
    classification_figures,
    expected_performance,
    monitor_performance,
    monitor_window,
    render_window_report,
    save_reference,
)
from tests.models import feature_rows, register_model

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _champion_with_reference(settings, spec, with_performance: bool = False) -> str:
    """A good champion and its reference; ``with_performance`` adds its holdout figures, as
    registration does (without: a reference saved before references carried them)."""
    from driftloop.retraining import load_scorer

    version = register_model(settings, "good", alias="champion")
    scorer = load_scorer(settings, f"models:/{settings.registered_model}/{version}")
    holdout = feature_rows(spec, 3000, seed=11)
    scores = scorer.score(holdout)
    reference = holdout[list(spec.model_features)].assign(**{SCORE: scores})
    performance = (
        expected_performance(holdout[spec.label], scores, settings.serving.decision_threshold)
        if with_performance
        else None
    )
    save_reference(settings, version, reference, performance=performance)
    return version


def _log_predictions(settings, spec, version: str, frame: pd.DataFrame, at: datetime) -> None:
    """Rows in the prediction log as the service writes them, stamped over the minute before ``at``."""
    from driftloop.predictions import append_to_lake, log_schema
    from driftloop.retraining import load_scorer

    scorer = load_scorer(settings, f"models:/{settings.registered_model}/{version}")
    scores = scorer.score(frame)
    n = len(frame)
    rows = frame[list(spec.model_features)].assign(
        request_id=[f"req-{at:%H%M%S}-{i}" for i in range(n)],
        event_id=frame["event_id"].to_numpy(),
        score=scores,
        decision=scores >= settings.serving.decision_threshold,
        model_version=version,
        variant="stable",
        predicted_at=[at - timedelta(seconds=60 * (i + 1) / (n + 1)) for i in range(n)],
    )
    append_to_lake(settings)(pa.Table.from_pandas(rows, schema=log_schema(spec), preserve_index=False))


def _land_labels(settings, spec, frame: pd.DataFrame, flipped: bool = False) -> None:
    """Late labels of ``frame``'s events as ingest lands them (event id, 0/1 label, label time);
    ``flipped``: the concept drifted — the same inputs now mean the opposite."""
    from deltalake import write_deltalake

    from driftloop.lake.names import BRONZE_LABELS

    labels = frame[spec.label].to_numpy()
    labels = 1 - labels if flipped else labels
    table = pa.table(
        {
            spec.event_id: frame[spec.event_id].to_numpy(),
            spec.label: pa.array(labels, pa.int64()),
            spec.label_time: pa.array([NOW] * len(frame), pa.timestamp("us", tz="UTC")),
        }
    )
    write_deltalake(tables.delta_rs_uri(settings.table_uri(BRONZE_LABELS)), table, mode="append")


def _performance_rows(settings, window_end: datetime) -> dict[str, dict]:
    rows = tables.read_table(settings, DRIFT_METRICS).to_pylist()
    return {r["feature"]: r for r in rows if r["kind"] == "performance" and r["window_end"] == window_end}


def _drifted(frame: pd.DataFrame) -> pd.DataFrame:
    shifted = frame.copy()
    numeric = shifted.select_dtypes("number").columns.difference(["is_fraud"])
    shifted[numeric] = shifted[numeric] * 4
    shifted["channel"] = "web"
    return shifted


@pytest.fixture
def loop_settings(settings, monkeypatch):
    """Settings with a 2-minute monitoring window, as the tasks would read them."""
    from driftloop.config import get_settings

    monkeypatch.setenv("DRIFTLOOP_MONITORING__WINDOW_MINUTES", "2")
    monkeypatch.setenv("DRIFTLOOP_LOOP__COOLDOWN_MINUTES", "30")
    monkeypatch.setenv("DRIFTLOOP_LOOP__MAX_RETRAINS_PER_DAY", "2")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_same_traffic_is_no_drift_and_shifted_traffic_is_a_breach_written_once(loop_settings, spec):
    settings = loop_settings
    version = _champion_with_reference(settings, spec)
    calm_end, drift_end = NOW, NOW + timedelta(minutes=5)
    _log_predictions(settings, spec, version, feature_rows(spec, 1500, seed=21), calm_end)
    _log_predictions(settings, spec, version, _drifted(feature_rows(spec, 1500, seed=22)), drift_end)

    calm = monitor_window(settings, version, calm_end)
    assert (calm.status, calm.rows, calm.dataset_drifted) == ("ok", 1500, False)
    assert find_breach(settings, version) is None, "same traffic as the reference must not breach"

    drifted = monitor_window(settings, version, drift_end)
    assert drifted.dataset_drifted is True
    assert {"amount", "channel"} <= set(drifted.drifted_features)
    again = monitor_window(settings, version, drift_end)
    assert again.written is False
    assert again.table_version == drifted.table_version, "a rerun writes nothing"

    breach = find_breach(settings, version)
    assert breach is not None
    assert breach.window_end == drift_end
    assert "amount" in breach.drifted_features
    assert breach.feature_scores["amount"] >= 0.2
    assert breach.report_uri.endswith(".html")
    assert f"v{version}" in breach.report_uri
    assert find_breach(settings, version, after=drift_end) is None

    empty = monitor_window(settings, version, NOW + timedelta(hours=3))
    assert (empty.status, empty.rows, empty.dataset_drifted) == ("no_data", 0, None)
    rows = tables.read_table(settings, DRIFT_METRICS).to_pylist()
    assert {r["status"] for r in rows if r["window_end"] == NOW + timedelta(hours=3)} == {"no_data"}


def test_the_report_of_a_breach_is_rendered_where_the_breach_points(loop_settings, spec):
    from pathlib import Path

    settings = loop_settings
    version = _champion_with_reference(settings, spec)
    _log_predictions(settings, spec, version, _drifted(feature_rows(spec, 800, seed=3)), NOW)
    monitor_window(settings, version, NOW)
    breach = find_breach(settings, version)

    uri = render_window_report(settings, version, breach.window_start, breach.window_end)
    assert uri == breach.report_uri
    html = Path(uri).read_text()
    assert "amount" in html
    assert len(html) > 10_000
    stamp = Path(uri).stat().st_mtime_ns
    assert render_window_report(settings, version, breach.window_start, breach.window_end) == uri
    assert Path(uri).stat().st_mtime_ns == stamp, "a retry does not render again"
    assert render_window_report(settings, version, NOW + timedelta(hours=1), NOW + timedelta(hours=2)) is None


def test_guard_rails_allow_one_retrain_then_cool_down_and_cap_the_day(loop_settings, spec):
    settings = loop_settings
    version = _champion_with_reference(settings, spec)
    outcomes, breaches = [], []
    # drifted windows at these minutes, each met by the sensor as it is written
    for minute in (0, 5, 40, 80):
        end = NOW + timedelta(minutes=minute)
        _log_predictions(settings, spec, version, _drifted(feature_rows(spec, 400, seed=minute)), end)
        monitor_window(settings, version, end)
        breach = find_breach(settings, version, last_decided_window(settings, version))
        assert breach is not None
        assert breach.window_end == end
        breaches.append(breach)
        decision = decide_breach(settings, breach, f"run-{minute}", end + timedelta(seconds=30))
        outcomes.append((decision.outcome, decision.reason))
        assert find_breach(settings, version, last_decided_window(settings, version)) is None

    assert [o for o, _ in outcomes] == ["retrain", "suppressed", "retrain", "suppressed"], outcomes
    assert "cooling down" in outcomes[1][1]
    assert "cap of 2" in outcomes[3][1]
    assert guard(settings, NOW + timedelta(days=1, minutes=1)).retrain, "the cap is per 24 hours"
    assert [r["outcome"] for r in decisions(settings)] == [o for o, _ in outcomes]

    # a retried decision task gets the recorded decision back and writes nothing
    before = tables.open_table(settings, RETRAIN_TRIGGERS).version()
    replay = decide_breach(settings, breaches[0], "run-0-retry", NOW + timedelta(hours=5))
    assert replay.outcome == "retrain"
    assert tables.open_table(settings, RETRAIN_TRIGGERS).version() == before


def test_no_retrain_at_all_when_the_daily_cap_is_zero(loop_settings, monkeypatch):
    from driftloop.config import get_settings

    monkeypatch.setenv("DRIFTLOOP_LOOP__MAX_RETRAINS_PER_DAY", "0")
    get_settings.cache_clear()
    decision = guard(get_settings(), NOW)
    assert not decision.retrain
    assert "off" in decision.reason


def test_the_drift_sensor_trigger_fires_on_a_breach_and_holds_during_a_cooldown(loop_settings, spec):
    from driftloop.airflow.monitoring import DriftBreachTrigger

    settings = loop_settings
    version = _champion_with_reference(settings, spec)
    assert pending_breach(settings, datetime.now(UTC)) == (None, None)
    end = datetime.now(UTC).replace(microsecond=0)
    _log_predictions(settings, spec, version, _drifted(feature_rows(spec, 600, seed=9)), end)
    monitor_window(settings, version, end)

    trigger = DriftBreachTrigger(poll_seconds=0.2, timeout_seconds=20)
    classpath, kwargs = trigger.serialize()
    assert classpath == "driftloop.airflow.monitoring.DriftBreachTrigger"
    event = asyncio.run(_first_event(DriftBreachTrigger(**kwargs)))
    assert event.payload["status"] == "breach"
    assert event.payload["breach"]["model_version"] == version
    assert "amount" in event.payload["breach"]["drifted_features"]

    decide_breach(
        settings, find_breach(settings, version), "run-1", datetime.now(UTC)
    )  # a retrain started: the next breach is held by the cooldown
    later = end + timedelta(seconds=30)
    _log_predictions(settings, spec, version, _drifted(feature_rows(spec, 600, seed=10)), later)
    monitor_window(settings, version, later)
    breach, decision = pending_breach(settings, datetime.now(UTC))
    assert breach is not None
    assert not decision.retrain
    held = asyncio.run(_first_event(DriftBreachTrigger(poll_seconds=0.2, timeout_seconds=1.5)))
    assert held.payload["status"] == "timeout"


def test_the_prediction_log_watcher_announces_new_predictions(loop_settings, spec):
    from driftloop.airflow.monitoring import PredictionLogTrigger

    settings = loop_settings
    version = _champion_with_reference(settings, spec)

    async def watch():
        trigger = PredictionLogTrigger(poll_seconds=0.2)
        events = trigger.run()
        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.5)
        assert not waiting.done(), "nothing new was logged: no announcement"
        await asyncio.to_thread(
            _log_predictions, settings, spec, version, feature_rows(spec, 50, seed=1), NOW
        )
        return await asyncio.wait_for(waiting, 30)

    event = asyncio.run(watch())
    assert event.payload["to_version"] is not None


async def _first_event(trigger):
    return await asyncio.wait_for(anext(trigger.run()), 60)


# --- classification performance: concept drift closes the loop too --------------------------------


def test_labels_that_agree_with_the_model_are_no_performance_breach_and_a_rerun_writes_nothing(
    loop_settings, spec
):
    from driftloop.retraining import load_scorer

    settings = loop_settings
    version = _champion_with_reference(settings, spec, with_performance=True)
    served = feature_rows(spec, 1500, seed=21)
    _log_predictions(settings, spec, version, served, NOW)
    _land_labels(settings, spec, served)

    verdict = monitor_performance(settings, spec, version, NOW)
    assert (verdict.status, verdict.labelled, verdict.performance_dropped) == ("ok", 1500, False)
    # the figures are the confusion counts' of what was served, exactly
    scorer = load_scorer(settings, f"models:/{settings.registered_model}/{version}")
    truth = classification_figures(
        served[spec.label], scorer.score(served), settings.serving.decision_threshold
    )
    assert verdict.figures == {"precision": truth.precision, "recall": truth.recall, "pr_auc": truth.pr_auc}
    rows = _performance_rows(settings, NOW)
    assert set(rows) == {"__precision__", "__recall__", "__pr_auc__", PERFORMANCE}
    assert rows[PERFORMANCE]["decisive"]
    assert rows[PERFORMANCE]["drifted"] is False
    assert rows["__recall__"]["threshold"] == pytest.approx(verdict.expected["recall"] - 0.1)
    assert all(r["method"] == "evidently_classification" for r in rows.values())
    assert find_breach(settings, version) is None, "a model as good as on its holdout must not breach"

    again = monitor_performance(settings, spec, version, NOW)
    assert again.written is False
    assert again.table_version == verdict.table_version, "a rerun writes nothing"
    assert len(_performance_rows(settings, NOW)) == 4


def test_flipped_labels_are_a_performance_breach_the_loop_retrains_on(loop_settings, spec):
    settings = loop_settings
    version = _champion_with_reference(settings, spec, with_performance=True)
    served = feature_rows(spec, 1500, seed=21)
    _log_predictions(settings, spec, version, served, NOW)
    _land_labels(settings, spec, served, flipped=True)

    inputs = monitor_window(settings, version, NOW)
    assert inputs.dataset_drifted is False, "concept drift leaves the inputs alone"
    assert inputs.score_drifted is False
    verdict = monitor_performance(settings, spec, version, NOW)
    assert (verdict.status, verdict.performance_dropped) == ("ok", True)

    breach = find_breach(settings, version)
    assert breach is not None
    assert breach.performance_dropped
    assert (breach.dataset_drifted, breach.score_drifted, breach.drifted_features) == (False, False, [])
    assert breach.window_end == NOW
    assert breach.labelled == 1500
    assert {"precision", "recall"} <= set(breach.dropped_metrics)
    assert breach.performance["recall"] < breach.expected_performance["recall"] - 0.1
    assert breach.reason.startswith(f"performance drop on serving version {version}: precision")
    assert breach.report_uri.endswith(".html")
    assert Breach.from_dict(breach.as_dict()) == breach, "the Asset event's extra rebuilds the breach"

    decision = decide_breach(settings, breach, "run-concept", NOW + timedelta(seconds=30))
    assert decision.retrain
    assert find_breach(settings, version, last_decided_window(settings, version)) is None


def test_too_few_labels_or_no_expected_figures_is_never_a_pass(loop_settings, spec):
    settings = loop_settings
    version = _champion_with_reference(settings, spec, with_performance=True)
    served = feature_rows(spec, 1500, seed=21)
    _log_predictions(settings, spec, version, served, NOW)
    _land_labels(settings, spec, served.head(50), flipped=True)  # bad, but only 50 of 200 labels

    few = monitor_performance(settings, spec, version, NOW)
    assert (few.status, few.labelled, few.performance_dropped) == ("insufficient_data", 50, None)
    assert {r["status"] for r in _performance_rows(settings, NOW).values()} == {"insufficient_data"}
    assert {r["drifted"] for r in _performance_rows(settings, NOW).values()} == {None}
    assert find_breach(settings, version) is None

    # a version whose reference predates expected figures: explicit no_reference
    older = _champion_with_reference(settings, spec)
    other = feature_rows(spec, 400, seed=5).assign(event_id=lambda f: "older-" + f["event_id"])
    later = NOW + timedelta(minutes=5)
    _log_predictions(settings, spec, older, other, later)
    _land_labels(settings, spec, other)
    unjudged = monitor_performance(settings, spec, older, later)
    assert (unjudged.status, unjudged.labelled, unjudged.performance_dropped) == ("no_reference", 400, None)
    assert unjudged.expected is None

    empty = monitor_performance(settings, spec, version, NOW + timedelta(days=3))
    assert (empty.status, empty.labelled, empty.performance_dropped) == ("no_data", 0, None)
