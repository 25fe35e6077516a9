"""record_feedback: its conf contract, and ``dag.test()`` runs that record feedback in the lake."""

from __future__ import annotations

import copy
import importlib.util

import pyarrow as pa
import pytest

from driftloop.feedback import FeedbackItem
from driftloop.lake import tables
from driftloop.lake.names import FEEDBACK
from driftloop.predictions import append_to_lake, log_schema
from tests.conftest import REPO
from tests.dags.test_dag_runs import _asset_events, airflow_db, dagbag  # noqa: F401 (fixtures)

DAG_ID = "record_feedback"
GOOD = {"request_id": "r-flagged", "kind": "false_positive", "reason": "customer confirmed the purchase"}


def _dag_module():
    spec = importlib.util.spec_from_file_location("record_feedback_dag", REPO / "dags" / "record_feedback.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rest_contract_of_an_item_is_the_library_s_model():
    """The JSON schema Airflow checks at trigger time accepts exactly what FeedbackItem accepts."""
    model = FeedbackItem.model_json_schema()
    schema = _dag_module().ITEM_SCHEMA
    assert set(schema["required"]) == set(model["required"])
    assert schema["additionalProperties"] is model["additionalProperties"] is False
    for name, field in model["properties"].items():
        assert schema["properties"][name] == {k: v for k, v in field.items() if k != "title"}, name


def _trigger_params(dagbag, conf: dict) -> dict:  # noqa: F811
    """The run's params as Airflow resolves them when a run is created (REST: 400 on error)."""
    params = copy.deepcopy(dagbag.dags[DAG_ID].params)
    params.update(conf)  # a ParamsDict validates on assignment, as a run's conf is applied
    return params.validate()  # and a required param without a value fails here


@pytest.mark.parametrize(
    "conf",
    [
        {},
        {"items": []},
        {"items": [{**GOOD, "kind": "fraud"}]},
        {"items": [{k: v for k, v in GOOD.items() if k != "reason"}]},
        {"items": [{**GOOD, "score": 0.3}]},
        {"items": [{**GOOD, "request_id": ""}]},
        {"items": "r-flagged"},
        {"items": [GOOD] * 501},  # DRIFTLOOP_FEEDBACK__MAX_ITEMS defaults to 500
    ],
    ids=[
        "no-items",
        "empty",
        "unknown-kind",
        "no-reason",
        "extra-field",
        "empty-id",
        "not-a-list",
        "too-many",
    ],
)
def test_a_malformed_submission_is_refused_when_the_run_is_created(dagbag, conf):  # noqa: F811
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="param items"):
        _trigger_params(dagbag, conf)


def test_a_valid_submission_passes_the_params(dagbag):  # noqa: F811
    conf = {"items": [GOOD, {**GOOD, "kind": "false_negative"}], "note": "weekly review"}
    assert _trigger_params(dagbag, conf) == conf


@pytest.fixture
def prediction_log(settings, spec):
    """Two served decisions: one flagged, one let through."""
    rows = [
        {
            "request_id": "r-flagged",
            "event_id": "e1",
            "decision": True,
            "model_version": "4",
            "variant": "stable",
        },
        {
            "request_id": "r-passed",
            "event_id": "e2",
            "decision": False,
            "model_version": "4",
            "variant": "stable",
        },
    ]
    append_to_lake(settings)(pa.Table.from_pylist(rows, schema=log_schema(spec)))
    return settings


def _run(dagbag, conf: dict):  # noqa: F811
    from airflow.utils.state import DagRunState

    run = dagbag.get_dag(DAG_ID).test(run_conf=conf)
    assert run.state == DagRunState.SUCCESS, f"{DAG_ID} ended {run.state}"
    return run


def _rows(settings, run_id: str) -> list[dict]:
    rows = tables.read_table(settings, FEEDBACK).to_pylist()
    return sorted((r for r in rows if r["submission_id"] == run_id), key=lambda r: r["item"])


def test_a_submission_is_recorded_with_who_sent_it_and_announced(prediction_log, dagbag):  # noqa: F811
    settings = prediction_log
    conf = {
        "items": [GOOD, {"request_id": "r-unknown", "kind": "false_negative", "reason": "chargeback"}],
        "note": "weekly review",
    }
    run = _run(dagbag, conf)

    rows = _rows(settings, run.run_id)
    assert [(r["request_id"], r["status"], r["label"]) for r in rows] == [
        ("r-flagged", "accepted", 0),
        ("r-unknown", "rejected", None),
    ]
    assert {(r["submitted_by"], r["note"]) for r in rows} == {("airflow-user:dag_test", "weekly review")}
    assert rows[1]["rejection"].startswith("unknown request id 'r-unknown'")
    (event,) = [e for e in _asset_events("driftloop.feedback") if e["submission_id"] == run.run_id]
    assert event["submission_id"] == run.run_id
    assert (event["accepted"], event["rejected"]) == (1, 1)
    assert event["feedback_version"] == tables.open_table(settings, FEEDBACK).version()


def test_a_submission_rejected_entirely_still_succeeds_and_says_why(prediction_log, dagbag, capfd):  # noqa: F811
    settings = prediction_log
    conf = {
        "items": [
            {"request_id": "r-passed", "kind": "false_positive", "reason": "was never flagged"},
            {"request_id": "r-ghost", "kind": "false_positive", "reason": "typo in the id"},
        ]
    }
    run = _run(dagbag, conf)

    rows = _rows(settings, run.run_id)
    assert [r["status"] for r in rows] == ["rejected", "rejected"]
    assert rows[0]["rejection"].startswith("inconsistent: false_positive needs a positive decision")
    logged = "".join(capfd.readouterr())  # the task's log lines
    for row in rows:
        assert row["rejection"] in logged
    assert run.run_id in [e["submission_id"] for e in _asset_events("driftloop.feedback")]
