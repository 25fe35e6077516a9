"""Feedback on real Delta tables: recorded once per submission, joined with late labels, counted.

The lake holds events and late labels ingested from the simulator and a prediction log written
by the serving writer's own sink, so the tables have exactly the shapes production gives them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from driftloop.feedback import LABELLED_SCHEMA, feedback_counts, labelled_predictions, record_feedback
from driftloop.lake import tables
from driftloop.lake.names import FEEDBACK
from driftloop.predictions import append_to_lake, log_schema
from driftloop.rollout import LabelledStats, labelled_stats
from driftloop.simulator import SimulationConfig
from tests.lakes import land_and_ingest

LAKE = SimulationConfig(n_users=60, n_merchants=12, events_per_batch=80, n_batches=1, fraud_rate=0.3, seed=11)
ANALYST = "airflow-user:analyst"


class Served:
    """The test lake: late labels by event, and one logged prediction per event (request ``r-<event>``)."""

    def __init__(self, settings, spec):
        land_and_ingest(settings, spec, LAKE)
        labels = tables.read_table(settings, tables.BRONZE_LABELS).to_pylist()
        self.labels = {r[spec.event_id]: (r[spec.label], r[spec.label_time]) for r in labels}
        self.predicted_at = min(t for _, t in self.labels.values()) - timedelta(hours=12)
        events = sorted(self.labels)
        # every third event flagged, whatever its truth: both kinds of mistake exist
        self.decisions = {e: i % 3 == 0 for i, e in enumerate(events)}
        # two live events whose labels have not arrived
        self.decisions |= {"live-flagged": True, "live-passed": False}
        rows = [
            {
                "request_id": f"r-{event}",
                "event_id": event,
                "score": 0.9 if decision else 0.1,
                "decision": decision,
                "model_version": "1",
                "variant": "stable",
                "predicted_at": self.predicted_at,
            }
            for event, decision in self.decisions.items()
        ]
        append_to_lake(settings)(pa.Table.from_pylist(rows, schema=log_schema(spec)))

    def event(self, *, decision: bool, label: int) -> str:
        """A labelled event with this logged decision and late label."""
        return next(
            e for e, (lbl, _) in sorted(self.labels.items()) if self.decisions[e] == decision and lbl == label
        )

    def stats(self) -> dict[str, int]:
        """Precision/recall counts by hand from the late labels alone (the reference without feedback)."""
        tp = sum(1 for e, (lbl, _) in self.labels.items() if self.decisions[e] and lbl == 1)
        return {
            "labelled": len(self.labels),
            "tp": tp,
            "predicted_pos": sum(1 for e in self.labels if self.decisions[e]),
            "actual_pos": sum(lbl for lbl, _ in self.labels.values()),
        }


@pytest.fixture
def served(settings, spec) -> Served:
    return Served(settings, spec)


def fp(event: str, reason: str = "customer confirmed the purchase") -> dict:
    return {"request_id": f"r-{event}", "kind": "false_positive", "reason": reason}


def fn(event: str, reason: str = "chargeback received") -> dict:
    return {"request_id": f"r-{event}", "kind": "false_negative", "reason": reason}


def _feedback_rows(settings) -> list[dict]:
    return sorted(
        tables.read_table(settings, FEEDBACK).to_pylist(), key=lambda r: (r["received_at"], r["item"])
    )


def test_a_submission_is_recorded_item_by_item_once_and_a_retry_writes_nothing(settings, served):
    wrong_flag = served.event(decision=True, label=0)
    missed = served.event(decision=False, label=1)
    right_flag = served.event(decision=True, label=1)
    items = [
        fp(wrong_flag),
        fn(missed),
        fn(right_flag),  # it was flagged: it cannot be a false negative
        fp("never-served"),
        {"request_id": f"r-{missed}", "kind": "maybe"},
    ]
    at = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)

    first = record_feedback(settings, items, submission_id="manual__1", submitted_by=ANALYST, received_at=at)
    assert (first.accepted, first.rejected, first.written) == (2, 3, True)
    assert [r["item"] for r in first.rejections] == [2, 3, 4]
    assert first.rejections[0]["reason"].startswith("inconsistent: false_negative needs a negative decision")
    assert first.rejections[1]["reason"].startswith("unknown request id 'r-never-served'")
    assert first.rejections[2]["reason"].startswith("malformed: kind: Input should be")

    rows = _feedback_rows(settings)
    assert len(rows) == len(items)
    assert {(r["submission_id"], r["submitted_by"], r["received_at"]) for r in rows} == {
        ("manual__1", ANALYST, at)
    }
    accepted = [(r["request_id"], r["event_id"], r["label"]) for r in rows if r["status"] == "accepted"]
    assert accepted == [(f"r-{wrong_flag}", wrong_flag, 0), (f"r-{missed}", missed, 1)]
    version = tables.open_table(settings, FEEDBACK).version()

    # an Airflow retry of the same submission: the recorded outcome, nothing written again
    retried = record_feedback(
        settings, items, submission_id="manual__1", submitted_by=ANALYST, received_at=at
    )
    assert (retried.accepted, retried.rejected, retried.written) == (2, 3, False)
    assert retried.rejections == first.rejections
    assert tables.open_table(settings, FEEDBACK).version() == version
    assert len(_feedback_rows(settings)) == len(items)

    # a later submission about the same decision is a duplicate; a new one is accepted
    later = record_feedback(
        settings,
        [fp(wrong_flag), fp(right_flag)],
        submission_id="manual__2",
        submitted_by=ANALYST,
        received_at=at,
    )
    assert (later.accepted, later.rejected) == (1, 1)
    assert later.rejections[0]["reason"] == (
        f"duplicate: request r-{wrong_flag} already has accepted feedback (submission manual__1)"
    )
    assert len(_feedback_rows(settings)) == len(items) + 2


def test_the_most_recent_label_of_an_event_wins_between_late_labels_and_feedback(settings, spec, served):
    overruled = served.event(decision=True, label=1)  # feedback after its late label: feedback wins
    overruled_at = served.labels[overruled][1] + timedelta(hours=1)
    superseded = next(
        e
        for e, (lbl, _) in sorted(served.labels.items())
        if served.decisions[e] and lbl == 1 and e != overruled
    )  # feedback before its late label: the late label wins
    superseded_at = served.labels[superseded][1] - timedelta(hours=1)
    record_feedback(
        settings, [fp(overruled)], submission_id="s1", submitted_by=ANALYST, received_at=overruled_at
    )
    record_feedback(
        settings, [fp(superseded)], submission_id="s2", submitted_by=ANALYST, received_at=superseded_at
    )
    live_at = served.predicted_at + timedelta(hours=2)
    record_feedback(
        settings, [fn("live-passed")], submission_id="s3", submitted_by=ANALYST, received_at=live_at
    )

    table = labelled_predictions(settings, spec)
    assert table.schema == LABELLED_SCHEMA
    rows = {r["event_id"]: r for r in table.to_pylist()}
    # every late-labelled event plus the live one labelled by feedback; the other live one has no label
    assert set(rows) == set(served.labels) | {"live-passed"}
    assert (rows[overruled]["label"], rows[overruled]["label_source"]) == (0, "feedback")
    assert rows[overruled]["labelled_at"] == overruled_at
    assert (rows[superseded]["label"], rows[superseded]["label_source"]) == (1, "late_label")
    assert rows[superseded]["labelled_at"] == served.labels[superseded][1]
    assert (rows["live-passed"]["label"], rows["live-passed"]["label_source"]) == (1, "feedback")
    untouched = sorted(set(served.labels) - {overruled, superseded})
    assert [rows[e]["label"] for e in untouched] == [served.labels[e][0] for e in untouched]
    assert rows["live-passed"]["request_id"] == "r-live-passed"
    assert rows["live-passed"]["model_version"] == "1"
    assert rows["live-passed"]["variant"] == "stable"
    assert rows["live-passed"]["decision"] is False
    assert rows["live-passed"]["predicted_at"] == served.predicted_at

    # filters: prediction time and model version
    assert (
        labelled_predictions(settings, spec, since=served.predicted_at + timedelta(seconds=1)).num_rows == 0
    )
    assert labelled_predictions(settings, spec, model_versions=["2"]).num_rows == 0
    assert labelled_predictions(settings, spec, model_versions=["1", "2"]).num_rows == table.num_rows


def test_accepted_feedback_changes_the_canary_analysis_precision_and_recall(settings, served):
    since = served.predicted_at - timedelta(minutes=1)
    ref = served.stats()
    before = labelled_stats(settings, {"stable": "1"}, since)
    assert before["stable"] == LabelledStats(
        labelled=ref["labelled"],
        precision=ref["tp"] / ref["predicted_pos"],
        recall=ref["tp"] / ref["actual_pos"],
    )

    # a flagged fraud turns out legitimate (after its late label); a live pass turns out fraud
    flagged_fraud = served.event(decision=True, label=1)
    after_label = served.labels[flagged_fraud][1] + timedelta(minutes=5)
    record_feedback(
        settings,
        [fp(flagged_fraud), fn("live-passed"), fn("live-flagged"), fp("never-served")],
        submission_id="review",
        submitted_by=ANALYST,
        received_at=after_label,
    )
    after = labelled_stats(settings, {"stable": "1"}, since)
    # tp - 1 (no longer fraud); one more labelled (live-passed), a new positive it missed
    tp, actual_pos = ref["tp"] - 1, ref["actual_pos"] - 1 + 1
    assert after["stable"] == LabelledStats(
        labelled=ref["labelled"] + 1, precision=tp / ref["predicted_pos"], recall=tp / actual_pos
    )
    assert after != before


def test_feedback_counts_per_day_kind_and_status(settings, served):
    day1 = datetime(2026, 5, 4, 23, 30, tzinfo=UTC)
    day2 = day1 + timedelta(hours=1)
    wrong_flag, other_flag = [e for e, d in sorted(served.decisions.items()) if d and e in served.labels][:2]
    record_feedback(
        settings,
        [fp(wrong_flag), fn(other_flag), "junk"],
        submission_id="a",
        submitted_by=ANALYST,
        received_at=day1,
    )
    record_feedback(
        settings, [fp(wrong_flag), fp(other_flag)], submission_id="b", submitted_by=ANALYST, received_at=day2
    )

    assert feedback_counts(settings) == [
        {"day": "2026-05-04", "kind": None, "status": "rejected", "items": 1},
        {"day": "2026-05-04", "kind": "false_negative", "status": "rejected", "items": 1},
        {"day": "2026-05-04", "kind": "false_positive", "status": "accepted", "items": 1},
        {"day": "2026-05-05", "kind": "false_positive", "status": "accepted", "items": 1},
        {"day": "2026-05-05", "kind": "false_positive", "status": "rejected", "items": 1},
    ]
    assert feedback_counts(settings, since=day2) == feedback_counts(settings)[3:]


def test_without_feedback_or_predictions_nothing_is_labelled_or_counted(settings, spec):
    assert labelled_predictions(settings, spec).num_rows == 0
    assert labelled_predictions(settings, spec).schema == LABELLED_SCHEMA
    assert feedback_counts(settings) == []
    assert labelled_stats(settings, {"stable": "1"}, datetime(2026, 1, 1, tzinfo=UTC)) == {}
