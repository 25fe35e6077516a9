"""Feedback validation on tiny inputs: every item accepted with its label or rejected with a reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from driftloop.feedback import FEEDBACK_SCHEMA, LoggedDecision, feedback_rows, judge_items

# r-pos was flagged (positive decision), r-neg let through (negative decision)
LOGGED = {
    "r-pos": LoggedDecision(event_id="e-pos", decision=True, model_version="3", score=0.93),
    "r-neg": LoggedDecision(event_id="e-neg", decision=False, model_version="3", score=0.04),
}


def item(request_id="r-pos", kind="false_positive", reason="customer confirmed the purchase", **extra):
    return {"request_id": request_id, "kind": kind, "reason": reason, **extra}


def test_a_false_positive_of_a_flagged_decision_labels_its_event_legitimate():
    (verdict,) = judge_items([item()], LOGGED, {})
    assert (verdict.status, verdict.rejection, verdict.label) == ("accepted", None, 0)
    assert verdict.logged.event_id == "e-pos"


def test_a_false_negative_of_a_let_through_decision_labels_its_event_fraud():
    (verdict,) = judge_items([item("r-neg", "false_negative", "chargeback received")], LOGGED, {})
    assert (verdict.status, verdict.label) == ("accepted", 1)


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ({"kind": "false_positive", "reason": "no request id"}, "request_id: Field required"),
        (item(kind="fp"), "kind: Input should be 'false_positive' or 'false_negative'"),
        (item(kind=None), "kind: Input should be 'false_positive' or 'false_negative'"),
        (item(request_id=""), "request_id: String should have at least 1 character"),
        (item(request_id=12345), "request_id: Input should be a valid string"),
        (item(reason="no"), "reason: String should have at least 3 characters"),
        (item(score=0.1), "score: Extra inputs are not permitted"),
        ({"request_id": "r-pos", "kind": "false_positive"}, "reason: Field required"),
        ("r-pos false_positive", "an item must be an object with request_id, kind and reason, not str"),
        (None, "an item must be an object with request_id, kind and reason, not NoneType"),
        ({}, "request_id: Field required; kind: Field required; reason: Field required"),
    ],
)
def test_a_malformed_item_is_rejected_with_what_is_wrong(payload, says):
    (verdict,) = judge_items([payload], LOGGED, {})
    assert verdict.status == "rejected"
    assert verdict.rejection.startswith("malformed: ")
    assert says in verdict.rejection
    assert verdict.label is None


def test_an_unknown_request_id_is_rejected():
    (verdict,) = judge_items([item("r-never-served")], LOGGED, {})
    assert verdict.status == "rejected"
    assert verdict.rejection == (
        "unknown request id 'r-never-served': no prediction with this id in the prediction log"
    )


@pytest.mark.parametrize(
    ("request_id", "kind", "says"),
    [
        (
            "r-neg",
            "false_positive",
            "false_positive needs a positive decision, but request r-neg was decided",
        ),
        (
            "r-pos",
            "false_negative",
            "false_negative needs a negative decision, but request r-pos was decided",
        ),
    ],
)
def test_a_kind_that_contradicts_the_logged_decision_is_rejected(request_id, kind, says):
    (verdict,) = judge_items([item(request_id, kind)], LOGGED, {})
    assert verdict.status == "rejected"
    assert verdict.rejection.startswith("inconsistent: ")
    assert says in verdict.rejection
    assert "model version 3" in verdict.rejection


def test_a_request_repeated_in_one_submission_is_accepted_once():
    verdicts = judge_items([item(), item("r-neg", "false_negative"), item(reason="said twice")], LOGGED, {})
    assert [v.status for v in verdicts] == ["accepted", "accepted", "rejected"]
    assert verdicts[2].rejection == "duplicate: request r-pos is item 0 of this submission too"


def test_a_request_with_accepted_feedback_from_an_earlier_submission_is_rejected():
    (verdict,) = judge_items([item()], LOGGED, {"r-pos": "manual__2026-05-01"})
    assert verdict.status == "rejected"
    assert verdict.rejection == (
        "duplicate: request r-pos already has accepted feedback (submission manual__2026-05-01)"
    )


def test_every_item_becomes_a_row_and_nothing_submitted_is_lost():
    items = [item(), "garbage", item("r-unknown", "false_negative"), {"kind": "fp", "note": "é"}]
    received = datetime(2026, 5, 2, 9, 30, tzinfo=UTC)
    rows = feedback_rows(
        judge_items(items, LOGGED, {}),
        submission_id="manual__x",
        submitted_by="airflow-user:analyst",
        received_at=received,
        note="weekly review",
    )
    assert rows.schema == FEEDBACK_SCHEMA
    assert rows.num_rows == len(items)
    records = rows.to_pylist()
    assert [json.loads(r["payload"]) for r in records] == items
    assert [r["status"] for r in records] == ["accepted", "rejected", "rejected", "rejected"]
    assert [r["label"] for r in records] == [0, None, None, None]
    assert [r["event_id"] for r in records] == ["e-pos", None, None, None]
    assert [r["kind"] for r in records] == ["false_positive", None, "false_negative", None]
    assert records[0]["decision"] is True
    assert records[0]["model_version"] == "3"
    assert {(r["submitted_by"], r["note"], r["received_at"]) for r in records} == {
        ("airflow-user:analyst", "weekly review", received)
    }
