"""The deploy-target interface: where the stable and canary variants run and how traffic splits.

One implementation per place (``local``: processes behind HAProxy; ``kubernetes``: Deployments
behind a weighted HTTPRoute), chosen once from settings by :func:`driftloop.deploy.get_target`.
The rollout logic only ever talks to this interface.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Literal

Variant = Literal["stable", "canary"]
VARIANTS: tuple[Variant, ...] = ("stable", "canary")

# Prometheus series every serving process exports (the rollout analysis reads them)
REQUESTS_TOTAL = "driftloop_requests_total"  # labels: model_version, variant, endpoint, status
PREDICTIONS_TOTAL = "driftloop_predictions_total"  # labels: model_version, variant (rows scored)
LATENCY_SECONDS = "driftloop_request_latency_seconds"  # histogram; labels: model_version, variant
SCORE = "driftloop_score"  # histogram of scores in [0, 1]; labels: model_version, variant
LOG_FAILURES_TOTAL = "driftloop_prediction_log_failures_total"  # writes to the lake that failed
LOG_DROPPED_TOTAL = "driftloop_prediction_log_dropped_rows_total"  # rows lost: buffer full, or not storable
SCORE_BUCKETS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))  # upper bounds < 1
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.5,
)


class DeployError(RuntimeError):
    """A variant could not be started, reached or re-weighted; the message says what to check."""


@dataclass(frozen=True)
class VariantStatus:
    """One variant as the target sees it now."""

    variant: Variant
    model_version: str | None
    weight: int
    ready: bool
    endpoint: str | None = None


@dataclass(frozen=True)
class TargetStatus:
    """Both variants and where clients send traffic."""

    endpoint: str
    variants: dict[str, VariantStatus] = field(default_factory=dict)

    @property
    def canary_weight(self) -> int:
        canary = self.variants.get("canary")
        return canary.weight if canary else 0


@dataclass(frozen=True)
class MetricsSnapshot:
    """Cumulative counters of one variant at one moment; analysis uses the difference of two.

    ``latency_buckets`` and ``score_buckets`` map a bucket's upper bound to its cumulative
    count (Prometheus ``le`` semantics, ``inf`` included).
    """

    variant: Variant
    model_version: str | None
    requests: float = 0.0
    errors: float = 0.0
    predictions: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)
    score_buckets: dict[float, float] = field(default_factory=dict)

    def minus(self, earlier: MetricsSnapshot) -> MetricsSnapshot:
        """What happened between ``earlier`` and this snapshot (a restart resets to this one)."""
        if self.requests < earlier.requests or self.model_version != earlier.model_version:
            return self
        return MetricsSnapshot(
            variant=self.variant,
            model_version=self.model_version,
            requests=self.requests - earlier.requests,
            errors=self.errors - earlier.errors,
            predictions=self.predictions - earlier.predictions,
            latency_buckets={
                k: v - earlier.latency_buckets.get(k, 0.0) for k, v in self.latency_buckets.items()
            },
            score_buckets={k: v - earlier.score_buckets.get(k, 0.0) for k, v in self.score_buckets.items()},
        )


class DeployTarget(abc.ABC):
    """Runs the stable and canary variants and splits traffic between them."""

    @abc.abstractmethod
    def deploy(self, variant: Variant, model_version: str) -> None:
        """Run ``variant`` with ``model_version`` and wait until it is ready (idempotent).

        Replacing a variant's version never leaves its share of traffic without a ready server.
        """

    @abc.abstractmethod
    def set_canary_weight(self, percent: int) -> None:
        """Send ``percent`` of traffic to the canary, the rest to stable; in-flight requests complete."""

    @abc.abstractmethod
    def remove(self, variant: Variant) -> None:
        """Stop ``variant`` (its weight must already be 0); a no-op when it is not running."""

    @abc.abstractmethod
    def status(self) -> TargetStatus:
        """Versions, weights and readiness of both variants."""

    @abc.abstractmethod
    def metrics(self, variant: Variant) -> MetricsSnapshot:
        """The variant's cumulative serving counters now."""
