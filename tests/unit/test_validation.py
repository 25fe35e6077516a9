"""Validation rules on tiny frames: every bad value is caught with a reason, nothing is lost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from driftloop.validation import event_columns, label_columns, validate_frame

NOW = pd.Timestamp("2026-06-01T00:00:00Z")


def _row(**overrides) -> dict:
    row = {
        "event_id": "e1",
        "user_id": "u1",
        "merchant_id": "m1",
        "device_id": "d1",
        "amount": 12.5,
        "category": "grocery",
        "country": "DE",
        "channel": "web",
        "event_time": "2026-05-31T12:00:00Z",
    }
    return row | overrides


def _validate(spec, rows: list[dict]):
    return validate_frame(pd.DataFrame(rows), event_columns(spec), [spec.event_id], NOW)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"user_id": None}, "user_id: null value"),
        ({"amount": np.nan}, "amount: null value"),
        ({"amount": np.inf}, "amount: not finite"),
        ({"amount": -1.0}, "amount: in_range"),
        ({"amount": "twelve"}, "amount: wrong type"),
        ({"channel": "fax"}, "channel: isin"),
        ({"country": "Germany"}, "country: str_matches"),
        ({"event_time": "2026-07-01T00:00:00Z"}, "event_time: in the future"),
        ({"event_time": "yesterday-ish"}, "event_time: null value"),
        ({"event_id": None}, "event_id: null value"),
    ],
)
def test_each_rule_rejects_its_row_with_a_reason_and_keeps_the_good_one(spec, overrides, reason):
    outcome = _validate(spec, [_row(event_id="good"), _row(**{"event_id": "bad", **overrides})])
    assert outcome.valid["event_id"].tolist() == ["good"]
    assert len(outcome.invalid) == 1
    assert reason in outcome.reasons.iloc[0]


def test_a_row_with_several_problems_lists_them_all(spec):
    outcome = _validate(spec, [_row(), _row(event_id="x", amount=-5.0, channel="fax", user_id=None)])
    reasons = outcome.reasons.iloc[0]
    for part in ("amount: in_range", "channel: isin", "user_id: null value"):
        assert part in reasons


def test_uncoercible_values_do_not_hide_other_rows_problems(spec):
    rows = [_row(event_id="a", amount="abc"), _row(event_id="b", amount=-1.0), _row(event_id="c")]
    outcome = _validate(spec, rows)
    assert outcome.valid["event_id"].tolist() == ["c"]
    assert "wrong type" in outcome.reasons.loc[0]
    assert "in_range" in outcome.reasons.loc[1]


def test_duplicates_keep_the_first_occurrence(spec):
    outcome = _validate(spec, [_row(event_id="a"), _row(event_id="a", amount=99.0)])
    assert outcome.valid["amount"].tolist() == [12.5]
    assert outcome.reasons.tolist() == ["event_id: duplicate in batch"]


def test_unseen_categories_pass_but_values_outside_a_closed_set_do_not(spec):
    outcome = _validate(spec, [_row(event_id="a", category="crypto"), _row(event_id="b", channel="ussd")])
    assert outcome.valid["category"].tolist() == ["crypto"]
    assert outcome.invalid["event_id"].tolist() == ["b"]


def test_empty_batch_is_valid_and_typed(spec):
    outcome = _validate(spec, [])
    assert outcome.rows_in == 0
    assert str(outcome.valid["event_time"].dtype) == "datetime64[ns, UTC]"


def test_missing_column_quarantines_every_row(spec):
    frame = pd.DataFrame([_row(), _row(event_id="e2")]).drop(columns=["channel"])
    outcome = validate_frame(frame, event_columns(spec), [spec.event_id], NOW)
    assert outcome.valid.empty
    assert outcome.reasons.tolist() == ["missing column(s): channel"] * 2


def test_timestamps_are_normalised_to_utc(spec):
    outcome = _validate(spec, [_row(event_time="2026-05-31T14:00:00+02:00")])
    assert outcome.valid["event_time"].iloc[0] == pd.Timestamp("2026-05-31T12:00:00Z")


def test_label_rows_need_a_binary_label(spec):
    frame = pd.DataFrame(
        {
            "event_id": ["a", "b", "c"],
            "is_fraud": [0, 1, 2],
            "label_time": ["2026-05-31T00:00:00Z"] * 3,
        }
    )
    outcome = validate_frame(frame, label_columns(spec), [spec.event_id], NOW)
    assert outcome.valid["event_id"].tolist() == ["a", "b"]
    assert "is_fraud: in_range" in outcome.reasons.iloc[0]
