"""Canary rollouts: stepping traffic to a challenger, judging each step, promoting or rolling back.

A rollout's state is an append-only log in the lake's ``rollouts`` Delta table (one row per
transition), so a retried task, a restarted scheduler and an operator's REST call all see the
same rollout; every action is idempotent, so resuming from the last row is always safe.
"""

from __future__ import annotations

import json
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from driftloop.config import RolloutSettings, Settings
from driftloop.deploy.base import MetricsSnapshot, Variant
from driftloop.lake import tables
from driftloop.lake.names import ROLLOUTS
from driftloop.log import get_logger
from driftloop.monitoring import psi  # the one PSI rule for canary scores and feature drift

if TYPE_CHECKING:
    from driftloop.deploy.base import DeployTarget
    from driftloop.registry import Registry

log = get_logger(__name__)

Phase = Literal[
    "started",  # canary deployed at weight 0
    "step",  # canary weight set for a step; analysis under way
    "window",  # one analysis window judged (outcome in the row)
    "promote_requested",  # operator command
    "abort_requested",  # operator command
    "promoting",  # promotion under way (resumable)
    "promoted",  # terminal: the challenger is champion and serves all traffic
    "rolling_back",  # rollback under way (resumable)
    "rolled_back",  # terminal: canary at 0 and stopped, version tagged rejected
]
TERMINAL: frozenset[str] = frozenset({"promoted", "rolled_back"})
COMMANDS: frozenset[str] = frozenset({"promote_requested", "abort_requested"})
Outcome = Literal["pass", "fail", "wait"]

ROLLOUT_SCHEMA = pa.schema(
    [
        ("rollout_id", pa.string()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("stable_version", pa.string()),
        ("phase", pa.string()),
        ("step", pa.int32()),
        ("weight", pa.int32()),
        ("at", pa.timestamp("us", tz="UTC")),
        ("actor", pa.string()),
        ("detail", pa.string()),  # JSON: verdict, reasons, metrics, baselines
    ]
)


class RolloutError(RuntimeError):
    """A rollout cannot proceed; the message says why and what an operator can do."""


# --- analysis: pure functions over metric deltas -------------------------------------------------


@dataclass(frozen=True)
class WindowStats:
    """What one variant served during an analysis window."""

    requests: float
    errors: float
    p99_ms: float | None
    score_counts: tuple[float, ...]  # per score bucket (not cumulative), last bucket is (b, 1]
    # cumulative (upper bound in s, count) pairs; not kept in a rollout's recorded stable reference
    latency_buckets: tuple[tuple[float, float], ...] = field(default=(), repr=False, compare=False)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def scored(self) -> float:
        return sum(self.score_counts)

    def slower_than(self, limit_ms: float) -> float:
        """Requests slower than ``limit_ms``, interpolated within its bucket as the p99 is.

        So the two agree: the p99 is over the limit exactly when this is over 1 % of the requests.
        """
        limit_s, lower, below = limit_ms / 1000, 0.0, 0.0
        for bound, cumulative in self.latency_buckets:
            if bound >= limit_s:
                if math.isinf(bound):  # no finite bound above the limit: only what is surely over it
                    return self.requests - below
                share = (limit_s - lower) / (bound - lower) if bound > lower else 1.0
                return self.requests - (below + (cumulative - below) * share)
            lower, below = bound, cumulative
        return self.requests - below

    def summary(self) -> dict[str, Any]:
        """What a rollout records of stable's window: enough to judge a later canary against it."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "p99_ms": self.p99_ms,
            "score_counts": list(self.score_counts),
        }

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> WindowStats:
        """The window :meth:`summary` recorded."""
        return cls(summary["requests"], summary["errors"], summary["p99_ms"], tuple(summary["score_counts"]))


def _per_bucket(cumulative: Mapping[float, float]) -> tuple[float, ...]:
    """Prometheus cumulative ``le`` buckets → counts per bucket, ordered by bound."""
    counts, previous = [], 0.0
    for bound in sorted(cumulative):
        counts.append(max(0.0, cumulative[bound] - previous))
        previous = cumulative[bound]
    return tuple(counts)


def histogram_quantile(cumulative: Mapping[float, float], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated within its bucket (as PromQL does).

    None when empty; the highest finite bound when the quantile falls in the ``+Inf`` bucket.
    """
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    total = cumulative[bounds[-1]]
    rank = q * total
    index = bisect_left([cumulative[b] for b in bounds], rank)
    index = min(index, len(bounds) - 1)
    upper = bounds[index]
    if math.isinf(upper):
        finite = [b for b in bounds if not math.isinf(b)]
        return finite[-1] if finite else None
    lower = bounds[index - 1] if index > 0 else 0.0
    below = cumulative[bounds[index - 1]] if index > 0 else 0.0
    in_bucket = cumulative[upper] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


P99_SHARE = 0.01  # of requests slower than a p99


def slow_requests_to_fail(requests: float, significance: float) -> int:
    """The fewest requests over the p99 limit that fail a step, out of ``requests``.

    A canary whose true p99 is exactly the limit has 1 % of its requests over it; the count in a
    sample is then binomial, and this is the smallest count it reaches with probability at most
    ``significance`` (e.g. 9 of 224 at 0.001, where a 1 % share is 2.2).
    """
    from scipy.stats import binom

    n = max(round(requests), 1)
    return int(binom.isf(significance, n, P99_SHARE)) + 1


def window_stats(delta: MetricsSnapshot) -> WindowStats:
    p99 = histogram_quantile(delta.latency_buckets, 0.99)
    return WindowStats(
        requests=delta.requests,
        errors=delta.errors,
        p99_ms=None if p99 is None else p99 * 1000,
        score_counts=_per_bucket(delta.score_buckets),
        latency_buckets=tuple(sorted(delta.latency_buckets.items())),
    )


def psi_noise(expected: tuple[float, ...], actual: tuple[float, ...]) -> float:
    """PSI two samples of the *same* distribution show on average: (k - 1)(1/n₁ + 1/n₂).

    PSI is a symmetrised chi-square divided by the sample size, so with k occupied bins its
    expectation under no change is about this. A 10 % canary sees a few dozen requests per
    window, where raw PSI over 20 bins is ~0.5 by chance alone; subtracting it keeps good
    canaries from failing on sample noise while garbage scores still stand out.
    """
    occupied = sum(1 for e, a in zip(expected, actual, strict=True) if e or a)
    n_e, n_a = sum(expected), sum(actual)
    if occupied < 2 or not n_e or not n_a:
        return 0.0
    return (occupied - 1) * (1 / n_e + 1 / n_a)


@dataclass(frozen=True)
class LabelledStats:
    """Online precision/recall of one variant's decisions whose labels have arrived."""

    labelled: int
    precision: float | None
    recall: float | None


@dataclass(frozen=True)
class Verdict:
    """The judgement of one analysis window."""

    outcome: Outcome
    reasons: tuple[str, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reasons": list(self.reasons), "metrics": self.metrics}


def judge(
    canary: WindowStats,
    stable: WindowStats | None,
    rules: RolloutSettings,
    labelled: Mapping[str, LabelledStats] | None = None,
) -> Verdict:
    """Compare the canary's window with stable's (or with stable's last baseline at 100 %).

    ``fail`` as soon as the evidence is conclusive — errors so many that even a clean rest of
    the window could not pass, or more requests over the p99 limit than a canary whose p99 is
    the limit shows by chance (see :func:`slow_requests_to_fail`; judged over at least
    ``min_latency_requests``) — even before the minimum traffic arrives; ``wait`` while there is
    too little traffic for a check; ``pass`` otherwise. A small sample's p99 is its two or three
    slowest requests, and a cold or descheduled one must not decide the step.
    """
    metrics: dict[str, Any] = {
        "canary_requests": canary.requests,
        "canary_error_rate": round(canary.error_rate, 5),
        "canary_p99_ms": canary.p99_ms,
        "stable_requests": stable.requests if stable else None,
        "stable_p99_ms": stable.p99_ms if stable else None,
    }
    reasons: list[str] = []
    # errors already beyond the budget of a full window: no amount of clean traffic can save it
    if canary.errors > rules.max_error_rate * max(canary.requests, rules.min_requests):
        reasons.append(
            f"error rate {canary.error_rate:.2%} over {canary.requests:.0f} requests "
            f"exceeds {rules.max_error_rate:.2%}"
        )
        return Verdict("fail", tuple(reasons), metrics)
    latency_pending = None
    if stable is not None and stable.p99_ms is not None and canary.p99_ms is not None:
        limit = max(stable.p99_ms * rules.max_latency_ratio, stable.p99_ms + rules.latency_slack_ms)
        slow = canary.slower_than(limit)
        # the canary's p99 is over the limit when more than 1 % of its requests are; a few slow
        # requests (cold, descheduled, a GC) put a small sample's p99 there by chance, so the step
        # fails only on more slow requests than a canary exactly at the limit shows by chance
        enough_to_fail = slow_requests_to_fail(
            max(canary.requests, rules.min_latency_requests), rules.latency_significance
        )
        metrics["p99_limit_ms"] = round(limit, 3)
        metrics["canary_slower_than_limit"] = round(slow, 1)
        metrics["slower_than_limit_to_fail"] = enough_to_fail
        if slow >= enough_to_fail:
            reasons.append(
                f"p99 latency {canary.p99_ms:.1f} ms exceeds {limit:.1f} ms (stable "
                f"{stable.p99_ms:.1f}): {slow:.0f} of {canary.requests:.0f} canary requests slower, "
                f"{enough_to_fail} fail a step"
            )
            return Verdict("fail", tuple(reasons), metrics)
        if canary.requests < rules.min_latency_requests:
            latency_pending = (
                f"{canary.requests:.0f} of {rules.min_latency_requests} canary requests before its p99 "
                f"({canary.p99_ms:.1f} ms, limit {limit:.1f}) is judged"
            )
    if canary.requests < rules.min_requests:
        return Verdict(
            "wait",
            (f"{canary.requests:.0f} of {rules.min_requests} canary requests so far",),
            metrics,
        )
    if stable is not None and stable.scored and canary.scored:
        raw = psi(stable.score_counts, canary.score_counts)
        score_psi = max(0.0, raw - psi_noise(stable.score_counts, canary.score_counts))
        metrics["score_psi_raw"] = round(raw, 4)
        metrics["score_psi"] = round(score_psi, 4)
        if score_psi > rules.max_score_psi:
            reasons.append(f"score distribution PSI {score_psi:.3f} exceeds {rules.max_score_psi}")
    if labelled:
        c, s = labelled.get("canary"), labelled.get("stable")
        if c and s and min(c.labelled, s.labelled) >= rules.min_labelled:
            metrics |= {
                "canary_precision": c.precision,
                "stable_precision": s.precision,
                "canary_recall": c.recall,
                "stable_recall": s.recall,
            }
            for name, drop in (("precision", rules.max_precision_drop), ("recall", rules.max_recall_drop)):
                cv, sv = getattr(c, name), getattr(s, name)
                if cv is not None and sv is not None and sv - cv > drop:
                    reasons.append(f"online {name} {cv:.3f} trails stable's {sv:.3f} by more than {drop}")
    if reasons:
        return Verdict("fail", tuple(reasons), metrics)
    if latency_pending:
        return Verdict("wait", (latency_pending,), metrics)
    return Verdict("pass", (), metrics)


def labelled_stats(
    settings: Settings, versions: Mapping[str, str], since: datetime
) -> dict[str, LabelledStats]:
    """Precision/recall per variant of its predictions since ``since`` whose labels have arrived.

    Labels are late labels and accepted feedback, as :func:`driftloop.feedback.labelled_predictions`
    joins them (the most recent label of an event wins).
    """
    import pyarrow.compute as pc

    from driftloop.dataset import get_dataset_spec
    from driftloop.feedback import labelled_predictions

    rows = labelled_predictions(settings, get_dataset_spec(), since=since, model_versions=versions.values())
    positive = pc.equal(rows["label"], 1)
    counts = (
        rows.select(["variant", "model_version", "decision"])
        .append_column("tp", pc.and_(rows["decision"], positive))
        .append_column("actual_pos", positive)
        .group_by(["variant", "model_version"])
        .aggregate([("decision", "count"), ("decision", "sum"), ("tp", "sum"), ("actual_pos", "sum")])
    )
    out: dict[str, LabelledStats] = {}
    for row in counts.to_pylist():
        if versions.get(row["variant"]) != row["model_version"]:
            continue
        tp, pp, ap = row["tp_sum"] or 0, row["decision_sum"] or 0, row["actual_pos_sum"] or 0
        out[row["variant"]] = LabelledStats(
            labelled=int(row["decision_count"]),
            precision=tp / pp if pp else None,
            recall=tp / ap if ap else None,
        )
    return out


# --- state: an append-only log in the lake --------------------------------------------------------


@dataclass(frozen=True)
class RolloutRecord:
    """One transition of one rollout."""

    rollout_id: str
    model: str
    version: str
    stable_version: str | None
    phase: str
    step: int
    weight: int
    at: datetime
    actor: str
    detail: str = "{}"

    @property
    def details(self) -> dict[str, Any]:
        return json.loads(self.detail or "{}")

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL


class RolloutStore:
    """The ``rollouts`` table: every transition of every rollout, newest last."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def append(self, record: RolloutRecord) -> RolloutRecord:
        from deltalake import write_deltalake

        write_deltalake(
            tables.delta_rs_uri(self.settings.table_uri(ROLLOUTS)),
            pa.Table.from_pylist([asdict(record)], schema=ROLLOUT_SCHEMA),
            mode="append",
            storage_options=tables.storage_options(self.settings),
        )
        log.info(
            "rollout.transition",
            rollout_id=record.rollout_id,
            phase=record.phase,
            version=record.version,
            step=record.step,
            weight=record.weight,
            actor=record.actor,
        )
        return record

    def records(self, rollout_id: str | None = None) -> list[RolloutRecord]:
        table = tables.open_table(self.settings, ROLLOUTS)
        if table is None:
            return []
        where = f"WHERE rollout_id = '{_quote(rollout_id)}'" if rollout_id else ""
        rows = tables.query(table, f"SELECT * FROM t {where}").to_pylist()
        rows.sort(key=lambda r: r["at"])
        return [RolloutRecord(**r) for r in rows]

    def state(self, rollout_id: str) -> RolloutRecord | None:
        """The last transition that is not an operator command."""
        states = [r for r in self.records(rollout_id) if r.phase not in COMMANDS]
        return states[-1] if states else None

    def command(self, rollout_id: str) -> RolloutRecord | None:
        """An operator command issued after the rollout's last transition, if any."""
        records = self.records(rollout_id)
        last_state = max((r.at for r in records if r.phase not in COMMANDS), default=None)
        commands = [r for r in records if r.phase in COMMANDS and (last_state is None or r.at >= last_state)]
        return commands[0] if commands else None

    def active(self) -> RolloutRecord | None:
        """The rollout of this model that has not ended, if one is under way."""
        latest: dict[str, RolloutRecord] = {}
        for record in self.records():
            if record.model == self.settings.registered_model and record.phase not in COMMANDS:
                latest[record.rollout_id] = record
        running = [r for r in latest.values() if not r.terminal]
        return max(running, key=lambda r: r.at) if running else None


def _quote(value: str) -> str:
    return value.replace("'", "''")


# --- the controller ------------------------------------------------------------------------------


@dataclass
class StepPlan:
    """What the caller should do next: wait for analysis of ``step``, or nothing (terminal)."""

    record: RolloutRecord
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    window: int = 0

    @property
    def done(self) -> bool:
        return self.record.terminal

    @property
    def since(self) -> datetime:
        """Labelled predictions count from the rollout's start."""
        return datetime.fromisoformat(self.record.details.get("since") or self.record.at.isoformat())


def snapshot_to_dict(snapshot: MetricsSnapshot) -> dict[str, Any]:
    data = asdict(snapshot)
    data["latency_buckets"] = {repr(k): v for k, v in snapshot.latency_buckets.items()}
    data["score_buckets"] = {repr(k): v for k, v in snapshot.score_buckets.items()}
    return data


def snapshot_from_dict(data: Mapping[str, Any]) -> MetricsSnapshot:
    return MetricsSnapshot(
        variant=data["variant"],
        model_version=data["model_version"],
        requests=data["requests"],
        errors=data["errors"],
        predictions=data.get("predictions", 0.0),
        latency_buckets={float(k): v for k, v in data["latency_buckets"].items()},
        score_buckets={float(k): v for k, v in data["score_buckets"].items()},
    )


class Rollout:
    """Drives one canary rollout of ``version`` through the step ladder on a deploy target.

    Every method reads the persisted state first and is safe to call again after a crash.
    """

    def __init__(
        self,
        settings: Settings,
        rollout_id: str,
        target: DeployTarget,
        registry: Registry,
        store: RolloutStore | None = None,
    ) -> None:
        self.settings = settings
        self.rules = settings.rollout
        self.rollout_id = rollout_id
        self.target = target
        self.registry = registry
        self.store = store or RolloutStore(settings)

    # -- transitions

    def _record(self, base: RolloutRecord, phase: str, actor: str, **changes: Any) -> RolloutRecord:
        detail = changes.pop("detail", None)
        record = replace(
            base,
            phase=phase,
            actor=actor,
            at=datetime.now(UTC),
            detail=json.dumps(detail or {}, default=str),
            **changes,
        )
        return self.store.append(record)

    def start(self, version: str, actor: str) -> RolloutRecord:
        """Deploy ``version`` as the canary (weight 0); a second call resumes instead."""
        existing = self.store.state(self.rollout_id)
        if existing is not None:
            return existing
        other = self.store.active()
        if other is not None and other.rollout_id != self.rollout_id:
            raise RolloutError(
                f"rollout {other.rollout_id} of version {other.version} is still under way "
                f"(phase {other.phase}); abort it through the control_rollout DAG or wait for it"
            )
        champion = self.registry.alias_version("champion")
        stable_version = str(champion.version) if champion else None
        if stable_version is None:
            raise RolloutError("no champion to canary against: register and deploy a first model")
        if stable_version == str(version):
            raise RolloutError(f"version {version} is already the champion; nothing to roll out")
        self.ensure_stable(stable_version)
        self.target.set_canary_weight(0)
        self.target.deploy("canary", str(version))
        base = RolloutRecord(
            self.rollout_id,
            self.settings.registered_model,
            str(version),
            stable_version,
            "started",
            0,
            0,
            datetime.now(UTC),
            actor,
        )
        return self.store.append(base)

    def ensure_stable(self, version: str) -> None:
        """Serve ``version`` as stable if the target does not already."""
        status = self.target.status().variants.get("stable")
        if status is None or status.model_version != str(version) or not status.ready:
            self.target.deploy("stable", str(version))

    def begin_step(self, state: RolloutRecord, step: int, actor: str) -> StepPlan:
        """Set the canary weight of ``step`` and take the metric baselines of its analysis."""
        weight = self.rules.steps[step]
        self.target.set_canary_weight(weight)
        baselines = {v: snapshot_to_dict(self.target.metrics(v)) for v in ("stable", "canary")}
        reference = state.details.get("stable_reference")
        record = self._record(
            state,
            "step",
            actor,
            step=step,
            weight=weight,
            detail={
                "baselines": baselines,
                "window": 0,
                "stable_reference": reference,
                "since": state.details.get("since") or state.at.isoformat(),
            },
        )
        return StepPlan(record, baselines)

    def resume(self, actor: str) -> StepPlan:
        """Carry on from the persisted state: re-apply the step, or finish a promotion/rollback."""
        state = self.store.state(self.rollout_id)
        if state is None:
            raise RolloutError(f"rollout {self.rollout_id} was never started")
        if state.terminal:
            return StepPlan(state)
        if state.phase == "promoting":
            return StepPlan(self.promote(actor, state.details.get("reason", "resumed promotion")))
        if state.phase == "rolling_back":
            return StepPlan(self.roll_back(actor, state.details.get("reasons", ["resumed rollback"])))
        if state.phase == "window":
            verdict = state.details.get("verdict", {})
            if verdict.get("outcome") == "fail":
                return StepPlan(self.roll_back(actor, verdict.get("reasons", []), verdict.get("metrics")))
            if verdict.get("outcome") == "pass":
                return self.after_pass(state, actor)
        step = state.step if state.phase in ("step", "window") else 0
        return self.begin_step(state, step, actor)

    def after_pass(self, state: RolloutRecord, actor: str) -> StepPlan:
        """A step passed: the next step, or promotion after the last."""
        if state.step + 1 >= len(self.rules.steps):
            return StepPlan(self.promote(actor, f"passed all {len(self.rules.steps)} canary steps"))
        return self.begin_step(state, state.step + 1, actor)

    def analyse(self, baselines: Mapping[str, Mapping[str, Any]], since: datetime) -> Verdict:
        """Judge the canary from the counters since ``baselines`` (and labels since ``since``)."""
        deltas = {
            variant: self.target.metrics(variant).minus(snapshot_from_dict(baselines[variant]))
            for variant in ("stable", "canary")
        }
        canary = window_stats(deltas["canary"])
        stable = window_stats(deltas["stable"])
        state = self.store.state(self.rollout_id)
        reference = (state.details.get("stable_reference") if state else None) or None
        if stable.requests < self.rules.min_requests and reference:
            # at 100 % stable serves nothing: judge against its last well-fed window
            stable = WindowStats.from_summary(reference)
        versions = {v: deltas[v].model_version for v in ("stable", "canary") if deltas[v].model_version}
        labelled = labelled_stats(self.settings, versions, since)
        verdict = judge(canary, stable if stable.requests else None, self.rules, labelled)
        verdict.metrics["stable_window"] = stable.summary()
        return verdict

    def record_window(self, state: RolloutRecord, verdict: Verdict, window: int, actor: str) -> RolloutRecord:
        detail = state.details | {"verdict": verdict.as_dict(), "window": window}
        if verdict.outcome == "pass" and verdict.metrics.get("stable_window", {}).get("requests", 0) >= (
            self.rules.min_requests
        ):
            detail["stable_reference"] = verdict.metrics["stable_window"]
        return self._record(state, "window", actor, detail=detail)

    def handle_command(self, command: str, actor: str, reason: str | None) -> StepPlan:
        """Carry out an operator's promote/abort recorded for this rollout."""
        if command == "abort_requested":
            return StepPlan(self.roll_back(actor, [f"aborted by {actor}: {reason or 'no reason given'}"]))
        if command == "promote_requested":
            return StepPlan(self.promote(actor, f"promoted by {actor}: {reason or 'no reason given'}"))
        raise RolloutError(f"unknown rollout command {command!r}")

    def handle_window(self, verdict: Verdict, window: int, actor: str) -> StepPlan:
        """Record a window's verdict and take the consequence: next window, next step, promote, roll back."""
        state = self.store.state(self.rollout_id)
        if state is None:
            raise RolloutError(f"rollout {self.rollout_id} has no recorded state")
        if state.terminal:
            return StepPlan(state)
        state = self.record_window(state, verdict, window, actor)
        log.info(
            "rollout.window",
            rollout_id=self.rollout_id,
            step=state.step,
            weight=state.weight,
            window=window,
            outcome=verdict.outcome,
            reasons=list(verdict.reasons),
            metrics={k: v for k, v in verdict.metrics.items() if k != "stable_window"},
        )
        if verdict.outcome == "fail":
            return StepPlan(self.roll_back(actor, list(verdict.reasons), verdict.metrics))
        if verdict.outcome == "wait":
            if window + 1 >= self.rules.max_windows_per_step:
                reason = (
                    f"step {state.step} ({state.weight}%) saw too little canary traffic in "
                    f"{window + 1} windows: {'; '.join(verdict.reasons)}"
                )
                return StepPlan(self.roll_back(actor, [reason], verdict.metrics))
            return StepPlan(state, state.details["baselines"], window + 1)
        return self.after_pass(state, actor)

    def drive(
        self,
        version: str,
        actor: str,
        *,
        on_window: Callable[[RolloutRecord, Verdict, int], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        poll_s: float = 1.0,
    ) -> RolloutRecord:
        """Run the whole rollout in this process (the CLI and demo; Airflow defers between windows)."""
        self.start(version, actor)
        plan = self.resume(actor)
        while not plan.done:
            deadline = time.monotonic() + self.rules.analysis_interval_s
            command = None
            while (remaining := deadline - time.monotonic()) > 0:
                command = self.store.command(self.rollout_id)
                if command is not None:
                    break
                sleep(min(poll_s, remaining))
            if command is not None:
                plan = self.handle_command(command.phase, command.actor, command.details.get("reason"))
                break
            verdict = self.analyse(plan.baselines, plan.since)
            if on_window is not None:
                on_window(plan.record, verdict, plan.window)
            plan = self.handle_window(verdict, plan.window, actor)
        return plan.record

    def promote(self, actor: str, reason: str) -> RolloutRecord:
        """The canary becomes stable and champion; the old champion stays addressable as ``previous``."""
        state = self.store.state(self.rollout_id)
        if state is None or state.phase == "promoted":
            return state  # type: ignore[return-value]
        if state.phase == "rolled_back":
            raise RolloutError(f"rollout {self.rollout_id} was rolled back; start a new one to retry")
        if state.phase != "promoting":
            state = self._record(state, "promoting", actor, detail={"reason": reason})
        version = state.version
        # new stable first (with all traffic still on the canary), then weights back, then the canary goes
        self.target.set_canary_weight(100)
        self.ensure_stable(version)
        self.target.set_canary_weight(0)
        self.target.remove("canary")
        current = self.registry.alias_version("champion")
        if current is None or str(current.version) != version:
            if current is not None:
                self.registry.move_alias(
                    "previous", str(current.version), actor=actor, run_key=self.rollout_id, reason="replaced"
                )
            self.registry.move_alias("champion", version, actor=actor, run_key=self.rollout_id, reason=reason)
        if self.registry.alias_version("challenger") is not None:
            self.registry.move_alias(
                "challenger", None, actor=actor, run_key=self.rollout_id, reason="promoted"
            )
        self.registry.tag_version(version, {"driftloop.status": "champion"})
        return self._record(state, "promoted", actor, weight=100, detail={"reason": reason})

    def roll_back(
        self, actor: str, reasons: list[str] | tuple[str, ...], metrics: dict | None = None
    ) -> RolloutRecord:
        """Canary weight 0, canary stopped, version tagged rejected with the failing metrics."""
        state = self.store.state(self.rollout_id)
        if state is None or state.phase == "rolled_back":
            return state  # type: ignore[return-value]
        if state.phase == "promoted":
            raise RolloutError(
                f"rollout {self.rollout_id} already promoted version {state.version}; "
                "use `driftloop rollout revert` to return to the previous champion"
            )
        if state.phase != "rolling_back":
            state = self._record(
                state, "rolling_back", actor, detail={"reasons": list(reasons), "metrics": metrics or {}}
            )
        self.target.set_canary_weight(0)
        self.target.remove("canary")
        self.registry.reject_version(
            state.version,
            by="canary",
            reasons=reasons,
            actor=actor,
            run_key=self.rollout_id,
            metrics=metrics,
            alias_reason="rolled back",
        )
        return self._record(
            state, "rolled_back", actor, weight=0, detail={"reasons": list(reasons), "metrics": metrics or {}}
        )


def request_command(
    settings: Settings, action: Literal["promote", "abort"], actor: str, reason: str
) -> RolloutRecord:
    """Record an operator's promote/abort for the active rollout; its analysis acts on it."""
    store = RolloutStore(settings)
    active = store.active()
    if active is None:
        raise RolloutError("no rollout is under way: nothing to promote or abort")
    record = replace(
        active,
        phase=f"{action}_requested",
        actor=actor,
        at=datetime.now(UTC),
        detail=json.dumps({"reason": reason}),
    )
    return store.append(record)


def revert_champion(
    settings: Settings, target: DeployTarget, registry: Registry, actor: str, reason: str, run_key: str
) -> str:
    """One-command rollback after a promotion: ``previous`` serves again and becomes champion.

    Idempotent per ``run_key``: a retried revert does not flip the aliases back again.
    """
    done = [m for m in registry.history(limit=50) if m.run_key == run_key and m.alias == "champion"]
    if done:
        version = str(done[0].version)
        target.set_canary_weight(0)
        target.deploy("stable", version)
        return version
    previous = registry.alias_version("previous")
    champion = registry.alias_version("champion")
    if previous is None:
        raise RolloutError("no `previous` version to return to")
    if RolloutStore(settings).active() is not None:
        raise RolloutError("a canary rollout is under way: abort it first, then revert")
    version = str(previous.version)
    target.set_canary_weight(0)
    target.deploy("stable", version)
    if champion is not None and str(champion.version) != version:
        registry.move_alias("previous", str(champion.version), actor=actor, run_key=run_key, reason=reason)
        registry.tag_version(str(champion.version), {"driftloop.status": "reverted"})
    registry.move_alias("champion", version, actor=actor, run_key=run_key, reason=reason)
    return version


@dataclass(frozen=True)
class Release:
    """What deploy_model should roll out: ``version`` None means nothing (``note`` says why)."""

    version: str | None
    stable_version: str | None
    note: str


def resolve_release(
    settings: Settings,
    registry: Registry,
    target: DeployTarget,
    requested: str | None,
    events: Mapping[str, list[dict[str, Any]]],
) -> Release:
    """Pick the version to canary and make sure stable serves the champion first.

    Precedence: an explicit ``requested`` version (REST), the newest ``driftloop.challenger``
    event, the ``challenger`` alias. A run triggered only by a ``driftloop.champion`` event (the
    first model, or a promotion) just deploys the champion as stable.
    """
    from driftloop.airflow.asset_names import CHALLENGER

    champion = registry.alias_version("champion")
    if champion is None:
        raise RolloutError("no champion registered yet: run train_model first")
    stable_version = str(champion.version)
    if RolloutStore(settings).active() is None:
        status = target.status().variants.get("stable")
        if status is None or status.model_version != stable_version or not status.ready:
            log.info("rollout.deploy_stable", version=stable_version)
            target.deploy("stable", stable_version)
    version = requested
    if version is None and events.get(CHALLENGER):
        version = str(events[CHALLENGER][-1].get("version") or "") or None
    if version is None and not events:
        challenger = registry.alias_version("challenger")
        version = str(challenger.version) if challenger else None
    if version is None:
        return Release(
            None, stable_version, f"stable serves champion version {stable_version}; no challenger"
        )
    if version == stable_version:
        return Release(None, stable_version, f"version {version} is already the champion")
    tags = registry.client.get_model_version(registry.name, version).tags
    if tags.get("driftloop.status") == "rejected":
        return Release(
            None, stable_version, f"version {version} was rejected: {tags.get('driftloop.rejection')}"
        )
    return Release(version, stable_version, f"canary of version {version} against champion {stable_version}")


__all__ = [
    "LabelledStats",
    "Release",
    "Rollout",
    "RolloutError",
    "RolloutRecord",
    "RolloutStore",
    "Variant",
    "Verdict",
    "WindowStats",
    "histogram_quantile",
    "judge",
    "psi",
    "request_command",
    "resolve_release",
    "revert_champion",
    "window_stats",
]
