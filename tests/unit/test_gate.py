"""The champion/challenger gate's decision table."""

from __future__ import annotations

import pytest

from driftloop.config import GateSettings
from driftloop.gate import Evaluation, decide

GATE = GateSettings(
    min_pr_auc=0.3,
    min_recall_at_fpr=0.2,
    margin=0.01,
    recent_tolerance=0.02,
    max_calibration_error=0.05,
    latency_budget_ms=20.0,
)


def _evaluation(pr_auc=0.6, recall=0.5, ece=0.01, latency=2.0, recent=0.6) -> Evaluation:
    holdout = {"pr_auc": pr_auc, "recall_at_fpr": recall, "calibration_error": ece}
    return Evaluation(holdout=holdout, recent={"pr_auc": recent}, latency_p99_ms=latency)


@pytest.mark.parametrize(
    ("candidate", "champion", "outcome", "reason"),
    [
        (_evaluation(), None, "champion", None),
        (_evaluation(pr_auc=0.25), None, "rejected", "below the floor 0.3"),
        (_evaluation(recall=0.1), None, "rejected", "recall at 1.0% FPR"),
        (_evaluation(pr_auc=0.7), _evaluation(pr_auc=0.6), "challenger", None),
        (_evaluation(pr_auc=0.605), _evaluation(pr_auc=0.6), "rejected", "does not beat the champion"),
        (_evaluation(pr_auc=0.7, recent=0.5), _evaluation(pr_auc=0.6, recent=0.6), "rejected", "most recent"),
        (_evaluation(pr_auc=0.7, ece=0.2), _evaluation(pr_auc=0.6), "rejected", "guardrail: calibration"),
        (_evaluation(pr_auc=0.7, ece=0.2), _evaluation(pr_auc=0.6, ece=0.2), "rejected", "not below"),
        (_evaluation(pr_auc=0.7, ece=0.1), _evaluation(pr_auc=0.6, ece=0.14), "challenger", None),
        (_evaluation(ece=0.2), None, "rejected", "guardrail: calibration"),
        (_evaluation(pr_auc=0.7, latency=50.0), _evaluation(pr_auc=0.6), "rejected", "guardrail: p99"),
        (_evaluation(pr_auc=float("nan")), None, "rejected", "single class"),
    ],
    ids=[
        "first-model-passes",
        "first-model-below-floor",
        "recall-floor",
        "beats-champion",
        "within-margin",
        "worse-on-recent-window",
        "calibration-guardrail",
        "calibration-no-better-than-champion",
        "calibration-above-ceiling-but-better-than-champion",
        "first-model-calibration-guardrail",
        "latency-guardrail",
        "undefined-metric",
    ],
)
def test_gate_decision_table(candidate, champion, outcome, reason):
    decision = decide(candidate, champion, GATE)
    assert decision.outcome == outcome
    if reason is None:
        assert decision.reasons == []
    else:
        assert any(reason in r for r in decision.reasons), decision.reasons


def test_every_failing_reason_is_reported():
    decision = decide(_evaluation(pr_auc=0.2, ece=0.3, latency=99.0), _evaluation(pr_auc=0.6), GATE)
    assert len(decision.reasons) == 4
