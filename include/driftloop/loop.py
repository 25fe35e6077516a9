"""Closing the loop: which drift breach of the serving version starts a retrain, under guard rails.

A breach is a judged window whose dataset verdict (share of drifted features) or score verdict
is drift, or whose labelled predictions lost precision or recall (concept drift: same inputs,
a different label relationship). Every breach the drift sensor acts on is decided once —
retrain or suppressed, with the reason — and recorded in the ``retrain_triggers`` table; the
guard rails (cooldown after a retrain, a cap on retrains per 24 hours) read that record, so a
retrain storm cannot happen however often monitoring finds drift, and a retried task decides
nothing twice.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pyarrow as pa

from driftloop.config import Settings
from driftloop.lake import tables
from driftloop.lake.names import DRIFT_METRICS, RETRAIN_TRIGGERS
from driftloop.log import get_logger
from driftloop.monitoring import DATASET, PERFORMANCE, PERFORMANCE_FIGURES, SCORE, report_uri

log = get_logger(__name__)

Outcome = Literal["retrain", "suppressed"]
_DAY = timedelta(days=1)

TRIGGERS_SCHEMA = pa.schema(
    [
        ("breach_id", pa.string()),
        ("model_version", pa.string()),
        ("window_start", pa.timestamp("us", tz="UTC")),
        ("window_end", pa.timestamp("us", tz="UTC")),
        ("outcome", pa.string()),
        ("reason", pa.string()),
        ("decided_at", pa.timestamp("us", tz="UTC")),
        ("run_id", pa.string()),
        ("breach", pa.string()),
    ]
)


class LoopError(RuntimeError):
    """The loop cannot decide as asked; the message says what to fix."""


@dataclass(frozen=True)
class Breach:
    """A judged window of the serving version that drifted or lost performance, with what the
    drift Asset event carries."""

    model_version: str
    window_start: datetime
    window_end: datetime
    rows: int
    dataset_share: float | None
    dataset_drifted: bool
    score_drifted: bool
    score_psi: float | None
    drifted_features: list[str]
    feature_scores: dict[str, float]
    report_uri: str
    performance_dropped: bool = False
    """Precision or recall of the labelled predictions fell beyond its allowed drop."""
    performance: dict[str, float | None] = field(default_factory=dict)
    """Observed precision, recall and PR-AUC of the performance window ending with this one."""
    expected_performance: dict[str, float | None] = field(default_factory=dict)
    """The version's holdout figures they were held to."""
    dropped_metrics: list[str] = field(default_factory=list)
    labelled: int = 0
    """Labelled predictions the performance figures come from."""

    @property
    def breach_id(self) -> str:
        return f"v{self.model_version}/{self.window_start:%Y%m%dT%H%M%S}-{self.window_end:%Y%m%dT%H%M%S}"

    @property
    def data_drifted(self) -> bool:
        return self.dataset_drifted or self.score_drifted

    @property
    def reason(self) -> str:
        parts = []
        if self.data_drifted:
            what = ", ".join(self.drifted_features[:8]) or "no single feature"
            score = " and the score distribution" if self.score_drifted else ""
            parts.append(
                f"drift on serving version {self.model_version}: {what}{score} ({self.rows} predictions)"
            )
        if self.performance_dropped:
            figures = ", ".join(
                f"{name} {_figure(self.performance.get(name))} "
                f"(holdout {_figure(self.expected_performance.get(name))})"
                for name in self.dropped_metrics
            )
            parts.append(
                f"performance drop on serving version {self.model_version}: {figures} "
                f"({self.labelled} labelled predictions)"
            )
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "breach_id": self.breach_id,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Breach:
        fields = {k: v for k, v in body.items() if k in cls.__dataclass_fields__}
        for moment in ("window_start", "window_end"):
            fields[moment] = datetime.fromisoformat(fields[moment])
        return cls(**fields)


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@dataclass(frozen=True)
class Decision:
    """Whether a breach starts a retrain; when suppressed, why and from when one could."""

    outcome: Outcome
    reason: str
    not_before: datetime | None = None

    @property
    def retrain(self) -> bool:
        return self.outcome == "retrain"


def _check_version(model_version: str) -> str:
    if not re.fullmatch(r"[\w.-]+", str(model_version)):
        raise LoopError(f"model version {model_version!r} is not a version name")
    return str(model_version)


def _sql_time(moment: datetime) -> str:
    return f"TIMESTAMP '{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}'"


def find_breach(settings: Settings, model_version: str, after: datetime | None = None) -> Breach | None:
    """The latest breach of ``model_version`` whose window ended after ``after`` (None: any).

    A breach is a decisive drifted row: the dataset or score verdict of a drift window, or the
    ``__performance__`` verdict of a performance window. monitor_drift ends both windows at the
    run's moment, so a breach carries the drift and the performance findings of that moment.
    """
    version = _check_version(model_version)
    table = tables.open_table(settings, DRIFT_METRICS)
    if table is None:
        return None
    since = f"AND window_end > {_sql_time(after)}" if after is not None else ""
    latest = tables.query(
        table,
        f"""SELECT window_end FROM t
            WHERE model_version = '{version}' AND decisive AND drifted
              AND feature IN ('{DATASET}', '{SCORE}', '{PERFORMANCE}') {since}
            ORDER BY window_end DESC LIMIT 1""",
    ).to_pylist()
    if not latest:
        return None
    end = latest[0]["window_end"]
    rows = tables.query(
        table,
        f"""SELECT window_start, feature, kind, score, drifted, rows, detail FROM t
            WHERE model_version = '{version}' AND window_end = {_sql_time(end)}
              AND (decisive OR kind = 'performance')""",
    ).to_pylist()
    drift = [r for r in rows if r["kind"] != "performance"]
    performance = [r for r in rows if r["kind"] == "performance"]
    drift_start = _window_start(drift, (DATASET, SCORE))
    performance_start = _window_start(performance, (PERFORMANCE,))
    by_feature = {r["feature"]: r for r in drift if r["window_start"] == drift_start}
    dataset, score = by_feature.get(DATASET, {}), by_feature.get(SCORE, {})
    features = {name: r for name, r in by_feature.items() if name not in (DATASET, SCORE)}
    data_drifted = bool(dataset.get("drifted")) or bool(score.get("drifted"))
    judged = {r["feature"]: r for r in performance if r["window_start"] == performance_start}
    summary = judged.get(PERFORMANCE, {})
    figures = {name: judged[feature] for feature, name in PERFORMANCE_FIGURES.items() if feature in judged}
    start = drift_start if data_drifted or performance_start is None else performance_start
    report_start = drift_start or end - timedelta(minutes=settings.monitoring.window_minutes)
    return Breach(
        model_version=version,
        window_start=start,
        window_end=end,
        rows=int(dataset.get("rows") or score.get("rows") or 0),
        dataset_share=dataset.get("score"),
        dataset_drifted=bool(dataset.get("drifted")),
        score_drifted=bool(score.get("drifted")),
        score_psi=score.get("score"),
        drifted_features=sorted(name for name, r in features.items() if r["drifted"]),
        feature_scores={name: r["score"] for name, r in sorted(features.items()) if r["score"] is not None},
        report_uri=report_uri(settings, version, report_start, end),
        performance_dropped=bool(summary.get("drifted")),
        performance={name: r["score"] for name, r in sorted(figures.items())},
        expected_performance={
            name: json.loads(r["detail"] or "{}").get("expected") for name, r in sorted(figures.items())
        },
        dropped_metrics=list(json.loads(summary.get("detail") or "{}").get("dropped", [])),
        labelled=int(summary.get("rows") or 0),
    )


def _window_start(rows: list[dict[str, Any]], verdicts: tuple[str, ...]) -> datetime | None:
    """Start of the window these rows judge: the latest that breached, else the latest at all."""
    breached = [r["window_start"] for r in rows if r["feature"] in verdicts and r["drifted"]]
    return max(breached or [r["window_start"] for r in rows], default=None)


def decisions(settings: Settings) -> list[dict[str, Any]]:
    """Every recorded decision, oldest first."""
    table = tables.read_table(settings, RETRAIN_TRIGGERS)
    if table is None:
        return []
    return sorted(table.to_pylist(), key=lambda row: row["decided_at"])


def last_decided_window(
    settings: Settings, model_version: str, history: list[dict[str, Any]] | None = None
) -> datetime | None:
    """End of the latest window of ``model_version`` decided on (breaches up to it are handled)."""
    history = decisions(settings) if history is None else history
    ends = [r["window_end"] for r in history if r["model_version"] == str(model_version)]
    return max(ends, default=None)


def guard(settings: Settings, now: datetime, history: list[dict[str, Any]] | None = None) -> Decision:
    """May a breach start a retrain at ``now``? The guard rails, from the recorded decisions."""
    rules = settings.loop
    if rules.max_retrains_per_day == 0:
        return Decision("suppressed", "automatic retraining is off (DRIFTLOOP_LOOP__MAX_RETRAINS_PER_DAY=0)")
    history = decisions(settings) if history is None else history
    retrains = sorted(r["decided_at"] for r in history if r["outcome"] == "retrain")
    in_last_day = [moment for moment in retrains if moment > now - _DAY]
    if len(in_last_day) >= rules.max_retrains_per_day:
        return Decision(
            "suppressed",
            f"{len(in_last_day)} automatic retrains in the last 24 h reach the cap of "
            f"{rules.max_retrains_per_day} (DRIFTLOOP_LOOP__MAX_RETRAINS_PER_DAY)",
            in_last_day[-rules.max_retrains_per_day] + _DAY,
        )
    cooldown = timedelta(minutes=rules.cooldown_minutes)
    if retrains and now < retrains[-1] + cooldown:
        return Decision(
            "suppressed",
            f"cooling down after the retrain started at {retrains[-1]:%H:%M:%S} UTC "
            f"({rules.cooldown_minutes:g} min, DRIFTLOOP_LOOP__COOLDOWN_MINUTES)",
            retrains[-1] + cooldown,
        )
    return Decision("retrain", "guard rails allow a retrain")


def decide_breach(settings: Settings, breach: Breach, run_id: str, now: datetime) -> Decision:
    """Decide ``breach`` once and record it; a retried task gets the recorded decision back."""
    history = decisions(settings)
    for row in history:
        if row["breach_id"] == breach.breach_id:
            return Decision(row["outcome"], row["reason"])
    decision = guard(settings, now, history)
    row = {
        "breach_id": breach.breach_id,
        "model_version": breach.model_version,
        "window_start": breach.window_start,
        "window_end": breach.window_end,
        "outcome": decision.outcome,
        "reason": decision.reason,
        "decided_at": now.astimezone(UTC),
        "run_id": run_id,
        "breach": json.dumps(breach.as_dict(), sort_keys=True, default=str),
    }
    table = pa.Table.from_pylist([row], schema=TRIGGERS_SCHEMA)
    tables.idempotent_append(settings, RETRAIN_TRIGGERS, table, f"retrain-trigger/{breach.breach_id}")
    log.info(
        "loop.breach_decided",
        breach_id=breach.breach_id,
        outcome=decision.outcome,
        reason=decision.reason,
        drifted=breach.drifted_features,
        score_drifted=breach.score_drifted,
        performance_dropped=breach.performance_dropped,
    )
    return decision


def pending_breach(settings: Settings, now: datetime) -> tuple[Breach | None, Decision | None]:
    """The serving version's undecided breach, and the guard rails' verdict on it right now.

    The drift sensor's trigger calls this on every poll; it fires only when the verdict is a
    retrain, so while a cooldown holds no run is started for every drifted window.
    """
    from driftloop.registry import CHAMPION, Registry

    champion = Registry(settings).alias_version(CHAMPION)
    if champion is None:
        return None, None
    version = str(champion.version)
    history = decisions(settings)  # read once per poll, for both questions
    breach = find_breach(settings, version, last_decided_window(settings, version, history))
    if breach is None:
        return None, None
    return breach, guard(settings, now, history)
