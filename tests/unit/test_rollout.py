"""The canary analysis: histogram quantiles, PSI and the step verdicts, on small exact inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from driftloop.config import RolloutSettings
from driftloop.deploy.base import LATENCY_BUCKETS, SCORE_BUCKETS, MetricsSnapshot
from driftloop.rollout import (
    LabelledStats,
    WindowStats,
    histogram_quantile,
    judge,
    psi,
    psi_noise,
    window_stats,
)

RULES = RolloutSettings(min_requests=100, max_error_rate=0.02, max_latency_ratio=1.5, latency_slack_ms=5)


def _cumulative(values: np.ndarray, bounds: tuple[float, ...]) -> dict[float, float]:
    return {**{b: float((values <= b).sum()) for b in bounds}, math.inf: float(len(values))}


def _window(requests=1000, errors=0, latency_s=None, scores=None) -> WindowStats:
    rng = np.random.default_rng(7)
    latency_s = rng.uniform(0.002, 0.004, int(requests)) if latency_s is None else latency_s
    scores = rng.beta(1, 20, int(requests)) if scores is None else scores
    return window_stats(
        MetricsSnapshot(
            "canary",
            "2",
            requests=requests,
            errors=errors,
            latency_buckets=_cumulative(latency_s, LATENCY_BUCKETS),
            score_buckets=_cumulative(scores, SCORE_BUCKETS),
        )
    )


def test_histogram_quantile_interpolates_within_the_bucket_like_promql():
    values = np.linspace(0.0005, 0.0195, 1000)  # uniform over (0, 20 ms)
    p99 = histogram_quantile(_cumulative(values, LATENCY_BUCKETS), 0.99)
    assert p99 == pytest.approx(np.quantile(values, 0.99), abs=0.0015)
    assert histogram_quantile({0.1: 0.0, math.inf: 0.0}, 0.99) is None
    # everything beyond the last finite bound: the bound is the honest answer
    assert histogram_quantile({0.1: 0.0, 2.5: 0.0, math.inf: 10.0}, 0.99) == 2.5


def test_psi_is_zero_for_identical_and_large_for_disjoint_distributions():
    same = (10.0, 20.0, 70.0)
    assert psi(same, same) == pytest.approx(0.0)
    assert psi(same, (70.0, 20.0, 10.0)) > 1.0
    with pytest.raises(ValueError, match="empty"):
        psi(same, (0.0, 0.0, 0.0))


def test_corrected_psi_stays_quiet_for_small_samples_of_the_same_scores_and_flags_garbage():
    rng = np.random.default_rng(0)
    edges = [0.0, *SCORE_BUCKETS, 1.0]

    def counts(values: np.ndarray) -> tuple[float, ...]:
        return tuple(np.histogram(values, edges)[0].astype(float))

    def corrected(a: tuple[float, ...], b: tuple[float, ...]) -> float:
        return max(0.0, psi(a, b) - psi_noise(a, b))

    same = [corrected(counts(rng.beta(1.2, 5, 400)), counts(rng.beta(1.2, 5, 50))) for _ in range(200)]
    garbage = [
        corrected(counts(rng.beta(1.2, 5, 400)), counts(np.clip(rng.normal(0.18, 0.05, 50), 0, 1)))
        for _ in range(200)
    ]
    # 95% of same-distribution windows stay under 0.25; 95% of garbage-like windows exceed it
    assert np.percentile(same, 95) < 0.25 < np.percentile(garbage, 5)


def test_a_step_waits_until_enough_canary_traffic_arrived():
    verdict = judge(_window(requests=40), _window(), RULES)
    assert verdict.outcome == "wait"
    assert "40 of 100" in verdict.reasons[0]


def test_errors_fail_a_step_before_the_minimum_traffic_when_the_budget_is_already_spent():
    # 3 errors in 40 requests: even 60 clean requests would leave 3% > 2%
    verdict = judge(_window(requests=40, errors=3), _window(), RULES)
    assert verdict.outcome == "fail"
    assert "error rate" in verdict.reasons[0]
    assert judge(_window(requests=1000, errors=30), _window(), RULES).outcome == "fail"
    assert judge(_window(requests=1000, errors=10), _window(), RULES).outcome == "pass"


def test_a_slow_canary_fails_on_p99_but_timer_noise_does_not():
    slow = _window(latency_s=np.full(1000, 0.04))
    verdict = judge(slow, _window(), RULES)
    assert verdict.outcome == "fail"
    assert "p99 latency" in verdict.reasons[0]
    slightly_slower = _window(latency_s=np.full(1000, 0.006))  # 2× a 3-4 ms stable, within 5 ms slack
    assert judge(slightly_slower, _window(), RULES).outcome == "pass"


def test_garbage_scores_fail_on_the_score_distribution():
    garbage = _window(scores=np.random.default_rng(1).uniform(0, 1, 1000))
    verdict = judge(garbage, _window(), RULES)
    assert verdict.outcome == "fail"
    assert "PSI" in verdict.reasons[0]
    assert verdict.metrics["score_psi"] > RULES.max_score_psi


def test_online_precision_and_recall_count_once_enough_labels_arrived():
    good = LabelledStats(labelled=500, precision=0.8, recall=0.7)
    worse = LabelledStats(labelled=500, precision=0.5, recall=0.68)
    verdict = judge(_window(), _window(), RULES, {"stable": good, "canary": worse})
    assert verdict.outcome == "fail"
    assert "precision" in verdict.reasons[0]
    too_few = LabelledStats(labelled=10, precision=0.0, recall=0.0)
    assert judge(_window(), _window(), RULES, {"stable": good, "canary": too_few}).outcome == "pass"


def test_without_a_stable_window_only_the_canary_own_checks_apply():
    assert judge(_window(), None, RULES).outcome == "pass"


def test_snapshot_difference_resets_when_a_server_restarted():
    later = MetricsSnapshot("canary", "2", requests=5, errors=0)
    earlier = MetricsSnapshot("canary", "2", requests=50, errors=1)
    assert later.minus(earlier) == later
    assert MetricsSnapshot("canary", "2", requests=80, errors=3).minus(earlier).requests == 30


@pytest.mark.parametrize("steps", [(), (10, 50), (50, 10, 100), (0, 100), (10, 10, 100)])
def test_the_weight_ladder_must_increase_and_end_at_full_traffic(steps):
    with pytest.raises(ValidationError):
        RolloutSettings(steps=steps)


def test_online_precision_and_recall_join_the_prediction_log_with_late_labels(settings):
    """Real Delta tables, labels as ingest writes them (a 0/1 long and its label time), two variants."""
    from datetime import UTC, datetime, timedelta

    import pyarrow as pa
    from deltalake import write_deltalake

    from driftloop.lake import tables
    from driftloop.lake.names import BRONZE_LABELS, PREDICTION_LOG
    from driftloop.rollout import labelled_stats

    now = datetime.now(UTC)
    # stable: 4 positive decisions, 3 right; canary: 2 positive decisions, 1 right; 4 frauds each
    predictions = [
        *[("s", f"s{i}", "1", "stable", i < 4, i in (0, 1, 2, 5, 6)) for i in range(8)],
        *[("c", f"c{i}", "2", "canary", i < 2, i in (0, 3, 4, 5)) for i in range(8)],
        ("old", "old0", "2", "canary", True, True),  # before the rollout: not counted
    ]
    log = pa.table(
        {
            "request_id": [f"r-{p[1]}" for p in predictions],
            "event_id": [p[1] for p in predictions],
            "score": [0.9 if p[4] else 0.1 for p in predictions],
            "model_version": [p[2] for p in predictions],
            "variant": [p[3] for p in predictions],
            "decision": [p[4] for p in predictions],
            "predicted_at": pa.array(
                [now - timedelta(days=1) if p[0] == "old" else now for p in predictions],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    labels = pa.table(
        {
            "event_id": [p[1] for p in predictions] + ["s0"],  # a duplicate label row counts once
            "is_fraud": pa.array([int(p[5]) for p in predictions] + [1], pa.int64()),
            "label_time": pa.array([now] * (len(predictions) + 1), pa.timestamp("us", tz="UTC")),
        }
    )
    write_deltalake(tables.delta_rs_uri(settings.table_uri(PREDICTION_LOG)), log)
    write_deltalake(tables.delta_rs_uri(settings.table_uri(BRONZE_LABELS)), labels)

    stats = labelled_stats(settings, {"stable": "1", "canary": "2"}, now - timedelta(minutes=5))
    assert stats["stable"] == LabelledStats(labelled=8, precision=3 / 4, recall=3 / 5)
    assert stats["canary"] == LabelledStats(labelled=8, precision=1 / 2, recall=1 / 4)
    # a version no longer serving its variant is not judged
    assert "canary" not in labelled_stats(
        settings, {"stable": "1", "canary": "3"}, now - timedelta(minutes=5)
    )


def _latencies(fast: int, slow: int, slow_s: float = 0.04) -> np.ndarray:
    return np.concatenate([np.random.default_rng(3).uniform(0.002, 0.004, fast), np.full(slow, slow_s)])


def test_a_p99_over_too_few_requests_waits_instead_of_failing_on_one_cold_request():
    # 150 requests, 2 slow (a cold first request, one descheduled): their p99 is those two
    few = _window(requests=152, latency_s=_latencies(150, 2))
    assert few.p99_ms > 30
    verdict = judge(few, _window(), RULES)
    assert verdict.outcome == "wait"
    assert "before its p99" in verdict.reasons[0]
    # the same two among 400: judged, and within the limit
    assert judge(_window(requests=402, latency_s=_latencies(400, 2)), _window(), RULES).outcome == "pass"


def test_a_canary_already_too_slow_for_any_full_sample_fails_before_it():
    # 12 of 40 over the limit: more than a canary at the limit shows in the 300 it is judged over
    verdict = judge(_window(requests=40, latency_s=_latencies(28, 12)), _window(), RULES)
    assert verdict.outcome == "fail"
    assert "12 of 40 canary requests slower, 11 fail a step" in verdict.reasons[0]
    assert judge(_window(requests=400, latency_s=_latencies(380, 20)), _window(), RULES).outcome == "fail"
    # 5 of 40: a bad start, or a cold one; the rest of the sample decides
    assert judge(_window(requests=40, latency_s=_latencies(35, 5)), _window(), RULES).outcome == "wait"


def test_two_slow_requests_in_a_small_judged_sample_do_not_roll_a_good_canary_back():
    # what a closed-loop run saw: 224 canary requests, a few of them over the limit, so the
    # histogram's p99 (its third slowest) is over it; a canary at the limit shows 2.2 on average
    rules = RULES.model_copy(update={"min_latency_requests": 200})
    canary = _window(requests=224, latency_s=_latencies(221, 3, slow_s=0.06))
    verdict = judge(canary, _window(), rules)
    assert canary.p99_ms > verdict.metrics["p99_limit_ms"]
    assert verdict.outcome == "pass", verdict.reasons
    assert verdict.metrics["slower_than_limit_to_fail"] == 9


def test_a_canary_a_little_slower_than_the_limit_throughout_fails_on_its_interpolated_share():
    # every request 12 ms against a ~9 ms limit: all in the 10-15 ms bucket, none surely over it
    canary = _window(requests=400, latency_s=np.full(400, 0.012))
    verdict = judge(canary, _window(), RULES)
    assert verdict.outcome == "fail"
    assert verdict.metrics["canary_slower_than_limit"] > 100


def test_a_canary_exactly_at_the_limit_fails_about_as_often_as_the_significance_says():
    rng = np.random.default_rng(11)
    rules = RULES.model_copy(update={"latency_significance": 0.01})
    failures = 0
    for _ in range(400):
        # 1 % of requests over the limit (stable's ~4 ms p99 + 5 ms slack): its p99 is the limit
        slow = rng.random(300) < 0.01
        latency = np.where(slow, 0.1, rng.uniform(0.002, 0.004, 300))
        failures += judge(_window(requests=300, latency_s=latency), _window(), rules).outcome == "fail"
    assert failures <= 12  # 1 % of 400 is 4 on average; twelve is far in the tail
    doubly_slow = 0
    for _ in range(50):  # a canary with 5 % of its requests over the limit is caught nearly always
        latency = np.where(rng.random(300) < 0.05, 0.1, rng.uniform(0.002, 0.004, 300))
        doubly_slow += judge(_window(requests=300, latency_s=latency), _window(), rules).outcome == "fail"
    assert doubly_slow >= 45


def test_a_transition_reads_as_a_line_with_its_reasons_and_none_without() -> None:
    import json
    from datetime import UTC, datetime

    from driftloop.closed_loop import describe_record
    from driftloop.rollout import RolloutRecord

    def record(phase: str, **details) -> RolloutRecord:
        return RolloutRecord(
            "r1", "fraud", "2", "1", phase, 0, 10, datetime.now(UTC), "test", json.dumps(details)
        )

    assert describe_record(record("started")) == "STARTED"
    assert describe_record(record("rolled_back", reasons=["errors 5.0% > 2.0%"])) == (
        "ROLLED_BACK — errors 5.0% > 2.0%"
    )
    assert describe_record(record("aborted", reason="by admin")) == "ABORTED — by admin"
    assert describe_record(record("step")) == "step 1: canary weight 10%"
