"""What the operator view shows at a glance: champion and challenger with their lineage, the rollout,
drift over time, feedback, alias history, and where the HTML drift reports may be served from.

Plain functions over the lake and the registry (no Airflow): the UI plugin calls them and turns
the result into JSON; tests call them on small lakes.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from driftloop.config import Settings
from driftloop.lake import tables
from driftloop.lake.names import DRIFT_METRICS
from driftloop.log import get_logger
from driftloop.monitoring import DATASET, REPORTS_DIR, SCORE, report_uri
from driftloop.registry import CHALLENGER, CHAMPION, STATUS_TAG
from driftloop.rollout import COMMANDS, RolloutStore

log = get_logger(__name__)

REPORTS_ROOT = REPORTS_DIR.split("/", 1)[0]
"""The lake folder the view serves HTML reports from; nothing outside it is ever served."""
# tags of a registered version that say where it came from (see retraining.register_version)
_LINEAGE_TAGS = ("optuna.study", "optuna.trial", "trigger", "reason", "params")
_LINEAGE_PREFIX = "lineage."


class ReportNotFound(LookupError):
    """The asked report is not an HTML file under the lake's reports folder."""


@dataclass(frozen=True)
class VersionView:
    """A version an alias points at, with its lineage and where its MLflow run is."""

    alias: str
    version: str
    run_id: str | None
    run_url: str | None
    """The run in the MLflow UI; None when the tracking store has no UI (a local SQLite store)."""
    created_at: str | None
    status: str | None
    lineage: dict[str, str]


@dataclass(frozen=True)
class RolloutView:
    """The latest rollout of the model: where it is, and what its last analysis said."""

    rollout_id: str
    version: str
    stable_version: str | None
    phase: str
    active: bool
    step: int
    steps: list[int]
    canary_weight: int
    stable_weight: int
    at: str
    actor: str
    pending_command: str | None
    last_analysis: dict[str, Any] | None
    transitions: list[dict[str, Any]]


@dataclass(frozen=True)
class DriftPoint:
    """One monitored window: the share of drifted features, the score's drift, the report."""

    window_start: str
    window_end: str
    model_version: str
    share: float | None
    threshold: float
    drifted: bool | None
    status: str
    rows: int
    drifted_features: list[str]
    score_method: str | None = None
    score_value: float | None = None
    score_drifted: bool | None = None
    report_uri: str | None = None
    report_path: str | None = None
    """Path of the report below the lake's reports folder, when the view can serve it."""


@dataclass(frozen=True)
class FeedbackView:
    """Recent feedback counts (``available`` False while there is none in the period)."""

    available: bool
    since: str
    counts: dict[str, int] = field(default_factory=dict)
    """Accepted items per kind, and ``rejected`` (unknown request, inconsistent, malformed...)."""
    days: list[dict[str, Any]] = field(default_factory=list)
    """Per UTC day, kind and status, as ``driftloop.feedback.feedback_counts`` gives them."""
    note: str = ""


@dataclass(frozen=True)
class Overview:
    """Everything the view shows."""

    model: str
    generated_at: str
    tracking_ui: str | None
    versions: dict[str, VersionView | None]
    rollout: RolloutView | None
    drift: list[DriftPoint]
    feedback: FeedbackView
    alias_history: list[dict[str, Any]]
    problems: list[str]
    """Sections that could not be read, with why (the rest of the view still shows)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- MLflow links ----------------------------------------------------------------------------------


def tracking_ui_url(tracking_uri: str) -> str | None:
    """The MLflow UI's base URL when the tracking store is a server (http/https), else None."""
    if re.match(r"^https?://", tracking_uri):
        return tracking_uri.rstrip("/")
    return None


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    base = tracking_ui_url(tracking_uri)
    if base is None:
        return None
    return f"{base}/#/experiments/{quote(experiment_id, safe='')}/runs/{quote(run_id, safe='')}"


def lineage_of(tags: dict[str, str]) -> dict[str, str]:
    """The lineage tags of a version: training-set Delta version, code revision, study, trial, params."""
    lineage = {k.removeprefix(_LINEAGE_PREFIX): v for k, v in tags.items() if k.startswith(_LINEAGE_PREFIX)}
    lineage |= {k: tags[k] for k in _LINEAGE_TAGS if tags.get(k)}
    return dict(sorted(lineage.items()))


def versions(settings: Settings) -> dict[str, VersionView | None]:
    """Champion and challenger with their lineage (None where the alias is unset)."""
    from driftloop.registry import Registry

    registry = Registry(settings)
    out: dict[str, VersionView | None] = {}
    for alias in (CHAMPION, CHALLENGER):
        mv = registry.alias_version(alias)
        if mv is None:
            out[alias] = None
            continue
        url = None
        if mv.run_id and tracking_ui_url(settings.tracking_uri):
            experiment_id = registry.client.get_run(mv.run_id).info.experiment_id
            url = run_url(settings.tracking_uri, experiment_id, mv.run_id)
        created = (
            datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat()
            if mv.creation_timestamp
            else None
        )
        out[alias] = VersionView(
            alias,
            str(mv.version),
            mv.run_id or None,
            url,
            created,
            mv.tags.get(STATUS_TAG),
            lineage_of(dict(mv.tags)),
        )
    return out


# --- the rollout ------------------------------------------------------------------------------------


def rollout(settings: Settings, transitions: int = 12) -> RolloutView | None:
    """The model's rollout under way, or its most recent one; None if there never was one."""
    records = [r for r in RolloutStore(settings).records() if r.model == settings.registered_model]
    if not records:
        return None
    latest_id = max(records, key=lambda r: r.at).rollout_id
    mine = [r for r in records if r.rollout_id == latest_id]
    states = [r for r in mine if r.phase not in COMMANDS]
    state = states[-1] if states else mine[-1]
    commands = [r for r in mine if r.phase in COMMANDS and r.at >= state.at]
    windows = [r for r in mine if r.phase == "window"]
    last_analysis = None
    if windows:
        details = windows[-1].details
        verdict = details.get("verdict", {})
        metrics = {k: v for k, v in verdict.get("metrics", {}).items() if not isinstance(v, dict)}
        last_analysis = {
            "at": windows[-1].at.isoformat(),
            "step": windows[-1].step,
            "window": details.get("window"),
            "outcome": verdict.get("outcome"),
            "reasons": verdict.get("reasons", []),
            "metrics": metrics,
        }
    return RolloutView(
        rollout_id=state.rollout_id,
        version=state.version,
        stable_version=state.stable_version,
        phase=state.phase,
        active=not state.terminal,
        step=state.step,
        steps=list(settings.rollout.steps),
        canary_weight=state.weight,
        stable_weight=100 - state.weight,
        at=state.at.isoformat(),
        actor=state.actor,
        pending_command=commands[0].phase if commands else None,
        last_analysis=last_analysis,
        transitions=[
            {
                "phase": r.phase,
                "step": r.step,
                "weight": r.weight,
                "at": r.at.isoformat(),
                "actor": r.actor,
                "reason": _reason(r.details),
            }
            for r in mine[-transitions:]
        ],
    )


def _reason(details: dict[str, Any]) -> str | None:
    if details.get("reason"):
        return str(details["reason"])
    reasons = details.get("reasons") or details.get("verdict", {}).get("reasons")
    return "; ".join(map(str, reasons)) if reasons else None


# --- drift history ------------------------------------------------------------------------------------


def drift_history(settings: Settings, limit: int = 200) -> list[DriftPoint]:
    """The latest ``limit`` monitored windows, oldest first: dataset verdict, score drift, report."""
    table = tables.open_table(settings, DRIFT_METRICS)
    if table is None:
        return []
    rows = tables.query(
        table,
        f"""
        SELECT * FROM t
        WHERE feature = '{DATASET}' OR (feature = '{SCORE}' AND decisive)
        ORDER BY window_end DESC
        """,
    ).to_pylist()
    score_rows = {
        (r["model_version"], r["window_start"], r["window_end"]): r for r in rows if r["feature"] == SCORE
    }
    points = []
    for row in (r for r in rows if r["feature"] == DATASET):
        if len(points) >= limit:
            break
        detail = json.loads(row["detail"] or "{}")
        score = score_rows.get((row["model_version"], row["window_start"], row["window_end"]))
        uri = detail.get("report_uri") or _existing_report(settings, row)
        points.append(
            DriftPoint(
                window_start=row["window_start"].isoformat(),
                window_end=row["window_end"].isoformat(),
                model_version=row["model_version"],
                share=row["score"],
                threshold=row["threshold"],
                drifted=row["drifted"],
                status=row["status"],
                rows=row["rows"],
                drifted_features=list(detail.get("drifted", [])),
                score_method=score["method"] if score else None,
                score_value=score["score"] if score else None,
                score_drifted=score["drifted"] if score else None,
                report_uri=uri,
                report_path=report_path(settings, uri) if uri else None,
            )
        )
    points.reverse()
    return points


def _existing_report(settings: Settings, row: dict[str, Any]) -> str | None:
    """The report monitoring would have written for the window, if it is there (local lakes only)."""
    uri = report_uri(settings, row["model_version"], row["window_start"], row["window_end"])
    root = _local_lake(settings)
    return uri if root is not None and Path(uri).is_file() else None


# --- serving reports ------------------------------------------------------------------------------------


def _local_lake(settings: Settings) -> Path | None:
    """The lake's folder when it is on this machine's file system (None for object stores)."""
    uri = settings.lake_uri
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None if "://" in uri else Path(uri)


def reports_root(settings: Settings) -> Path | None:
    lake = _local_lake(settings)
    return None if lake is None else (lake / REPORTS_ROOT).resolve()


def report_path(settings: Settings, uri: str) -> str | None:
    """``uri`` relative to the lake's reports folder, if the view can serve it from there."""
    root = reports_root(settings)
    if root is None or "://" in uri.removeprefix("file://"):
        return None
    target = Path(uri.removeprefix("file://")).resolve()
    if not target.is_relative_to(root) or target.suffix != ".html":
        return None
    return target.relative_to(root).as_posix()


def resolve_report(settings: Settings, relative: str) -> Path:
    """The HTML report at ``relative`` below the lake's reports folder.

    Refuses anything else — absolute paths, ``..``, symbolic links leading out of the folder,
    other file types, missing files — with :class:`ReportNotFound`.
    """
    root = reports_root(settings)
    if root is None:
        raise ReportNotFound(f"the lake {settings.lake_uri} is not a local folder: reports are served by it")
    if not relative or relative.startswith("/") or "\\" in relative or "\x00" in relative:
        raise ReportNotFound(f"not a report path: {relative!r}")
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ReportNotFound(f"{relative!r} is outside the reports folder")
    if target.suffix != ".html" or not target.is_file():
        raise ReportNotFound(f"no HTML report at {relative!r}")
    return target


# --- feedback -----------------------------------------------------------------------------------------

FEEDBACK_KINDS = ("false_positive", "false_negative")


def feedback(settings: Settings, now: datetime, days: float = 7.0) -> FeedbackView:
    """Accepted false-positive/false-negative items and rejected ones over the last ``days``."""
    from driftloop.feedback import feedback_counts

    since = now - timedelta(days=days)
    entries = feedback_counts(settings, since=since)
    if not entries:
        return FeedbackView(False, since.isoformat(), note="no feedback yet")
    counts = dict.fromkeys(FEEDBACK_KINDS, 0) | {"rejected": 0}
    for entry in entries:
        key = entry["kind"] if entry["status"] == "accepted" and entry["kind"] in counts else "rejected"
        counts[key] += entry["items"]
    return FeedbackView(True, since.isoformat(), counts, days=entries)


# --- everything -----------------------------------------------------------------------------------------


def alias_history(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    from driftloop.registry import Registry

    return [move.as_dict() for move in Registry(settings).history(limit)]


def gather(settings: Settings, now: datetime | None = None) -> Overview:
    """The whole overview. A section that fails to read is empty, with the reason in ``problems``."""
    now = now or datetime.now(UTC)
    problems: list[str] = []

    def section(name: str, read, empty):
        try:
            return read()
        except Exception as exc:  # one broken section must not blank the operator's whole view
            log.warning("overview.section_failed", section=name, error=str(exc))
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
            return empty

    return Overview(
        model=settings.registered_model,
        generated_at=now.isoformat(),
        tracking_ui=tracking_ui_url(settings.tracking_uri),
        versions=section("versions", lambda: versions(settings), {CHAMPION: None, CHALLENGER: None}),
        rollout=section("rollout", lambda: rollout(settings), None),
        drift=section("drift", lambda: drift_history(settings), []),
        feedback=section(
            "feedback",
            lambda: feedback(settings, now),
            FeedbackView(False, now.isoformat(), note="feedback could not be read"),
        ),
        alias_history=section("alias history", lambda: alias_history(settings), []),
        problems=problems,
    )
