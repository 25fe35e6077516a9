"""The champion/challenger gate: a pure decision over evaluations, and the reasons for it.

Kept free of MLflow and Spark so the whole decision table is unit-tested.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from driftloop.config import GateSettings

Outcome = Literal["champion", "challenger", "rejected"]


@dataclass(frozen=True)
class Evaluation:
    """A model's metrics on the shared holdout and on the most recent labelled window."""

    holdout: dict[str, float]
    recent: dict[str, float]
    latency_p99_ms: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and why."""

    outcome: Outcome
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.outcome != "rejected"


def _defined(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def decide(candidate: Evaluation, champion: Evaluation | None, gate: GateSettings) -> GateDecision:
    """Pass → champion (first model) or challenger; fail → rejected, with every failing reason."""
    reasons: list[str] = []
    holdout = candidate.holdout
    if not _defined(holdout.get("pr_auc")):
        reasons.append("holdout has a single class: PR-AUC undefined")
    else:
        if holdout["pr_auc"] < gate.min_pr_auc:
            reasons.append(f"PR-AUC {holdout['pr_auc']:.4f} below the floor {gate.min_pr_auc}")
        if holdout["recall_at_fpr"] < gate.min_recall_at_fpr:
            reasons.append(
                f"recall at {gate.fpr_budget:.1%} FPR {holdout['recall_at_fpr']:.4f} below the floor "
                f"{gate.min_recall_at_fpr}"
            )
        # the ceiling guards against a regression: a candidate above it still passes when it is
        # better calibrated than the champion on the same rows (drift can push both past it)
        ece = holdout["calibration_error"]
        champion_ece = champion.holdout.get("calibration_error") if champion is not None else None
        improves = _defined(champion_ece) and ece < champion_ece
        if ece > gate.max_calibration_error and not improves:
            reasons.append(
                f"guardrail: calibration error {ece:.4f} above {gate.max_calibration_error}"
                + (f" and not below the champion's {champion_ece:.4f}" if _defined(champion_ece) else "")
            )
    if candidate.latency_p99_ms > gate.latency_budget_ms:
        reasons.append(
            f"guardrail: p99 scoring latency {candidate.latency_p99_ms:.2f} ms "
            f"above {gate.latency_budget_ms} ms"
        )
    if champion is not None and _defined(holdout.get("pr_auc")):
        needed = champion.holdout["pr_auc"] + gate.margin
        if holdout["pr_auc"] < needed:
            reasons.append(
                f"PR-AUC {holdout['pr_auc']:.4f} does not beat the champion's "
                f"{champion.holdout['pr_auc']:.4f} + margin {gate.margin}"
            )
        mine, theirs = candidate.recent.get("pr_auc"), champion.recent.get("pr_auc")
        if _defined(mine) and _defined(theirs) and mine < theirs - gate.recent_tolerance:
            reasons.append(
                f"on the most recent {gate.recent_window_days:g} days PR-AUC {mine:.4f} trails the "
                f"champion's {theirs:.4f} by more than {gate.recent_tolerance}"
            )
    if reasons:
        return GateDecision("rejected", reasons)
    return GateDecision("champion" if champion is None else "challenger")
