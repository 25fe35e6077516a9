"""Training building blocks: data checks, time split, encoder, metrics, request validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from driftloop.config import TrainingSettings
from driftloop.retraining import RetrainRequest, resolve_trigger
from driftloop.training import (
    FeatureEncoder,
    TrainingDataError,
    check_training_data,
    expected_calibration_error,
    score_metrics,
    split_by_time,
)


def _frame(spec, rows: int = 600, positives_every: int = 20, start="2026-01-01") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({name: rng.random(rows) for name in spec.model_features})
    for column in spec.features.categorical:
        frame[column] = rng.choice(["a", "b", "c"], rows)
    frame[spec.event_time] = pd.date_range(start, periods=rows, freq="min", tz="UTC")
    frame[spec.label] = (np.arange(rows) % positives_every == 0).astype(int)
    return frame


SETTINGS = TrainingSettings(min_rows=500, min_positives=10)


def test_good_data_passes_the_checks(spec):
    check_training_data(_frame(spec), spec, SETTINGS)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f, s: f.iloc[0:0], "holds no labelled events"),
        (lambda f, s: f.assign(**{s.label: 0}), "a classifier needs both classes"),
        (lambda f, s: f.head(200), "only 200 labelled events"),
        (lambda f, s: f.assign(**{s.label: (np.arange(len(f)) == 0).astype(int)}), "only 1 positive"),
        (lambda f, s: f.drop(columns=["user_id_count_1h"]), "missing column(s) user_id_count_1h"),
    ],
    ids=["empty-window", "single-class", "too-few-rows", "too-few-positives", "schema-mismatch"],
)
def test_bad_training_data_fails_with_a_clear_message(spec, mutate, message):
    with pytest.raises(TrainingDataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_training_data(mutate(_frame(spec), spec), spec, SETTINGS)


def test_split_by_time_never_mixes_past_and_future(spec):
    frame = _frame(spec).sample(frac=1.0, random_state=1)  # shuffled on purpose
    split = split_by_time(frame, spec.event_time, spec.label, 0.7, 0.15)
    t = spec.event_time
    assert split.train[t].max() < split.validation[t].min()
    assert split.validation[t].max() < split.holdout[t].min()
    assert len(split.train) + len(split.validation) + len(split.holdout) == len(frame)
    assert len(split.train) == pytest.approx(0.7 * len(frame), abs=2)


def test_split_refuses_a_split_without_both_classes(spec):
    frame = _frame(spec)
    frame.loc[frame[spec.event_time] >= frame[spec.event_time].quantile(0.85), spec.label] = 0
    with pytest.raises(TrainingDataError, match="holdout split"):
        split_by_time(frame, spec.event_time, spec.label, 0.7, 0.15)


def test_encoder_maps_unseen_categories_to_missing_and_round_trips(spec):
    frame = _frame(spec)
    encoder = FeatureEncoder.fit(frame, spec)
    unseen = frame.head(2).copy()
    unseen["category"] = ["a", "crypto"]
    matrix = encoder.transform(unseen)
    assert list(matrix.columns) == spec.model_features
    assert not np.isnan(matrix["category"].iloc[0])
    assert np.isnan(matrix["category"].iloc[1])
    assert FeatureEncoder.from_metadata(encoder.to_metadata()) == encoder


def test_metrics_on_a_perfect_and_an_undefined_ranking():
    labels = np.array([0, 0, 1, 1])
    perfect = score_metrics(labels, np.array([0.1, 0.2, 0.8, 0.9]), fpr_budget=0.01)
    assert perfect["pr_auc"] == pytest.approx(1.0)
    assert perfect["recall_at_fpr"] == pytest.approx(1.0)
    assert np.isnan(score_metrics(np.zeros(4), np.ones(4) / 2, 0.01)["pr_auc"])
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_trials": 0}, "n_trials"),
        ({"metric": "accuracy"}, "metric"),
        ({"reason": "x"}, "reason"),
        ({"window_days": -3}, "window_days"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_retrain_requests_are_rejected_with_the_field_named(overrides, message):
    values = {
        "run_key": "r1",
        "trigger": "rest",
        "reason": "because",
        "n_trials": 5,
        "timeout_minutes": 1.0,
        "metric": "pr_auc",
    } | overrides
    with pytest.raises(ValueError, match=f"invalid retrain request: .*{message}"):
        RetrainRequest.parse(**values)


@pytest.mark.parametrize(
    ("run_type", "assets", "reason", "expected"),
    [
        ("scheduled", [], None, ("schedule", "scheduled retrain")),
        ("manual", [], "analyst asked", ("rest", "analyst asked")),
        ("asset_triggered", ["driftloop.features"], None, ("features", "new features landed")),
        ("asset_triggered", ["driftloop.drift"], None, ("drift", "drift detected by monitoring")),
    ],
)
def test_the_trigger_is_recognised(run_type, assets, reason, expected):
    assert resolve_trigger(run_type, assets, reason) == expected
