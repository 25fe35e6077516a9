"""People's verdicts on served decisions and the one place labels meet predictions.

A fraud analyst marks a logged decision wrong (false positive / false negative); every item of
a submission is validated and recorded in the ``feedback`` Delta table, accepted or rejected
with the reason. ``labelled_predictions`` joins the prediction log with late labels and
accepted feedback: everything that judges served decisions against the truth reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from driftloop.config import Settings
from driftloop.dataset import DatasetSpec
from driftloop.lake import tables
from driftloop.lake.names import BRONZE_LABELS, FEEDBACK, PREDICTION_LOG
from driftloop.log import get_logger

log = get_logger(__name__)

Kind = Literal["false_positive", "false_negative"]
Status = Literal["accepted", "rejected"]
LabelSource = Literal["late_label", "feedback"]

# a false positive was flagged but is legitimate (label 0); a false negative was let through
# but is fraud (label 1). Each only makes sense against the decision it corrects.
LABEL_OF_KIND: Mapping[str, int] = {"false_positive": 0, "false_negative": 1}
DECISION_OF_KIND: Mapping[str, bool] = {"false_positive": True, "false_negative": False}

_ID_CHUNK = 500  # ids per IN (...) list: keeps each query's SQL small
_RAW_ITEM_CHARS = 10_000  # a submitted item is kept verbatim up to this size


class FeedbackError(ValueError):
    """A submission as a whole cannot be recorded; the message says what to change."""


class FeedbackItem(BaseModel):
    """One decision marked wrong: which request, which way it was wrong, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: Annotated[str, Field(strict=True, min_length=1, max_length=200)]
    kind: Kind
    reason: Annotated[str, Field(strict=True, min_length=3, max_length=500)]


FEEDBACK_SCHEMA = pa.schema(
    [
        ("submission_id", pa.string()),
        ("item", pa.int32()),  # position in the submission, from 0
        ("request_id", pa.string()),  # as submitted when it was a string, else null
        ("event_id", pa.string()),  # from the prediction log; null when the request is unknown
        ("kind", pa.string()),  # null when the item was malformed
        ("reason", pa.string()),  # the submitter's why
        ("status", pa.string()),  # accepted | rejected
        ("rejection", pa.string()),  # why it was rejected; null when accepted
        ("label", pa.int32()),  # the label it gives the event; null when rejected
        ("decision", pa.bool_()),  # the logged decision it corrects, when known
        ("model_version", pa.string()),  # the version that made that decision, when known
        ("submitted_by", pa.string()),
        ("note", pa.string()),  # the submission's optional note
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("payload", pa.string()),  # the item exactly as submitted (JSON): nothing is lost
    ]
)

LABELLED_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("event_id", pa.string()),
        ("model_version", pa.string()),
        ("variant", pa.string()),
        ("score", pa.float64()),
        ("decision", pa.bool_()),
        ("predicted_at", pa.timestamp("us", tz="UTC")),
        ("label", pa.int32()),
        ("label_source", pa.string()),
        ("labelled_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class LoggedDecision:
    """What the prediction log says was decided for one request."""

    event_id: str
    decision: bool
    model_version: str
    score: float | None = None


@dataclass(frozen=True)
class ItemVerdict:
    """One submitted item, judged: accepted with its label, or rejected with the reason."""

    item: int
    payload: Any
    request_id: str | None
    kind: str | None
    reason: str | None
    status: Status
    rejection: str | None = None
    logged: LoggedDecision | None = None

    @property
    def label(self) -> int | None:
        return LABEL_OF_KIND[self.kind] if self.status == "accepted" and self.kind else None


@dataclass(frozen=True)
class FeedbackResult:
    """What recording one submission did (``written`` False: a retry found it already recorded)."""

    submission_id: str
    submitted_by: str
    accepted: int
    rejected: int
    rejections: tuple[dict[str, Any], ...]
    feedback_version: int
    written: bool

    def counts(self) -> dict[str, Any]:
        """Who, how many accepted and rejected, and the table version: for logs and Asset events."""
        return {
            "submission_id": self.submission_id,
            "submitted_by": self.submitted_by,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "feedback_version": self.feedback_version,
            "written": self.written,
        }

    def summary(self, max_rejections: int = 100) -> dict[str, Any]:
        """For XCom: the counts and (the first ``max_rejections``) rejections with their reasons."""
        return self.counts() | {
            "rejections": list(self.rejections[:max_rejections]),
            "rejections_not_listed": max(0, len(self.rejections) - max_rejections),
        }


# --- validation: pure functions --------------------------------------------------------------


def _malformed(payload: Any, errors: Sequence[Mapping[str, Any]]) -> str:
    if not isinstance(payload, Mapping):
        kind = type(payload).__name__
        return f"malformed: an item must be an object with request_id, kind and reason, not {kind}"
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors]
    return "malformed: " + "; ".join(parts)


def _raw_field(payload: Any, name: str) -> str | None:
    value = payload.get(name) if isinstance(payload, Mapping) else None
    return value[:200] if isinstance(value, str) else None


def judge_items(
    items: Sequence[Any],
    logged: Mapping[str, LoggedDecision],
    already_accepted: Mapping[str, str],
) -> list[ItemVerdict]:
    """Accept or reject every item, in order, each with the first reason that applies.

    ``logged`` maps the items' request ids to their logged decisions (a missing id is unknown);
    ``already_accepted`` maps request ids with accepted feedback to the submission that gave
    it. Rejected: malformed, repeated within this submission, unknown request, a kind that
    contradicts the logged decision (a false positive of a negative decision), or a request
    whose feedback was already accepted.
    """
    verdicts: list[ItemVerdict] = []
    first_seen: dict[str, int] = {}
    for index, payload in enumerate(items):
        request_id, kind, reason = (_raw_field(payload, f) for f in ("request_id", "kind", "reason"))
        try:
            item = FeedbackItem.model_validate(payload)
        except ValidationError as exc:
            rejection = _malformed(payload, exc.errors())
            verdicts.append(ItemVerdict(index, payload, request_id, None, reason, "rejected", rejection))
            continue
        request_id, kind, reason = item.request_id, item.kind, item.reason
        found = logged.get(request_id)
        rejection = None
        if request_id in first_seen:
            rejection = (
                f"duplicate: request {request_id} is item {first_seen[request_id]} of this submission too"
            )
        elif found is None:
            rejection = f"unknown request id {request_id!r}: no prediction with this id in the prediction log"
        elif found.decision != DECISION_OF_KIND[kind]:
            decided = "positive (flagged)" if found.decision else "negative (let through)"
            rejection = (
                f"inconsistent: {kind} needs a {'positive' if DECISION_OF_KIND[kind] else 'negative'} "
                f"decision, but request {request_id} was decided {decided} by model version "
                f"{found.model_version}"
            )
        elif request_id in already_accepted:
            rejection = (
                f"duplicate: request {request_id} already has accepted feedback "
                f"(submission {already_accepted[request_id]})"
            )
        first_seen.setdefault(request_id, index)
        status: Status = "rejected" if rejection else "accepted"
        verdicts.append(ItemVerdict(index, payload, request_id, kind, reason, status, rejection, found))
    return verdicts


def feedback_rows(
    verdicts: Sequence[ItemVerdict],
    *,
    submission_id: str,
    submitted_by: str,
    received_at: datetime,
    note: str | None,
) -> pa.Table:
    """The ``feedback`` table rows of one judged submission, one per submitted item."""
    rows = []
    for v in verdicts:
        rows.append(
            {
                "submission_id": submission_id,
                "item": v.item,
                "request_id": v.request_id,
                "event_id": v.logged.event_id if v.logged else None,
                "kind": v.kind,
                "reason": v.reason,
                "status": v.status,
                "rejection": v.rejection,
                "label": v.label,
                "decision": v.logged.decision if v.logged else None,
                "model_version": v.logged.model_version if v.logged else None,
                "submitted_by": submitted_by,
                "note": note,
                "received_at": received_at,
                "payload": json.dumps(v.payload, default=str, sort_keys=True)[:_RAW_ITEM_CHARS],
            }
        )
    return pa.Table.from_pylist(rows, schema=FEEDBACK_SCHEMA)


# --- the lake ------------------------------------------------------------------------------------


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _rows_by_request(
    settings: Settings, name: str, columns: str, request_ids: Iterable[str], where: str, order_by: str
) -> list[dict[str, Any]]:
    """Rows of table ``name`` for ``request_ids`` (in bounded IN lists), each id's rows in order."""
    table = tables.open_table(settings, name)
    if table is None:
        return []
    unique = sorted(set(request_ids))
    rows: list[dict[str, Any]] = []
    for start in range(0, len(unique), _ID_CHUNK):
        chunk = ", ".join(_sql_string(v) for v in unique[start : start + _ID_CHUNK])
        sql = f"SELECT {columns} FROM t WHERE {where} AND request_id IN ({chunk}) ORDER BY {order_by}"
        rows += tables.query(table, sql).to_pylist()
    return rows


def logged_decisions(settings: Settings, request_ids: Iterable[str]) -> dict[str, LoggedDecision]:
    """The prediction log's decision for each of ``request_ids`` that it holds (latest if logged twice)."""
    rows = _rows_by_request(
        settings,
        PREDICTION_LOG,
        "request_id, event_id, decision, model_version, score",
        request_ids,
        where="TRUE",
        order_by="predicted_at",
    )
    # oldest first: the latest logging of a request wins
    return {
        r["request_id"]: LoggedDecision(r["event_id"], bool(r["decision"]), r["model_version"], r["score"])
        for r in rows
    }


def accepted_feedback(
    settings: Settings, request_ids: Iterable[str], *, excluding_submission: str | None = None
) -> dict[str, str]:
    """Request id → submission id for those of ``request_ids`` that already have accepted feedback."""
    where = "status = 'accepted'"
    if excluding_submission:
        where += f" AND submission_id <> {_sql_string(excluding_submission)}"
    rows = _rows_by_request(
        settings, FEEDBACK, "request_id, submission_id", request_ids, where=where, order_by="received_at"
    )
    return {r["request_id"]: r["submission_id"] for r in rows}


def _app_id(submission_id: str) -> str:
    return f"driftloop.feedback.{submission_id}"


def _result(
    rows: pa.Table, submission_id: str, submitted_by: str, version: int, written: bool
) -> FeedbackResult:
    records = sorted(rows.to_pylist(), key=lambda r: r["item"])
    rejections = tuple(
        {"item": r["item"], "request_id": r["request_id"], "reason": r["rejection"]}
        for r in records
        if r["status"] == "rejected"
    )
    return FeedbackResult(
        submission_id=submission_id,
        submitted_by=records[0]["submitted_by"] if records else submitted_by,
        accepted=sum(r["status"] == "accepted" for r in records),
        rejected=len(rejections),
        rejections=rejections,
        feedback_version=version,
        written=written,
    )


def record_feedback(
    settings: Settings,
    items: Sequence[Any],
    *,
    submission_id: str,
    submitted_by: str,
    received_at: datetime,
    note: str | None = None,
) -> FeedbackResult:
    """Validate a submission and write every item, accepted or rejected, to the ``feedback`` table.

    Exactly once per ``submission_id``: the rows and the id commit together, and a repeat (an
    Airflow retry) returns what was recorded the first time without judging again — which
    would otherwise find the submission's own accepted items and call them duplicates.
    """
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise FeedbackError(f"feedback items must be a list of objects, got {type(items).__name__}")
    if not items:
        raise FeedbackError("a feedback submission needs at least one item")
    if len(items) > settings.feedback.max_items:
        raise FeedbackError(
            f"{len(items)} feedback items in one submission; at most {settings.feedback.max_items} "
            "(DRIFTLOOP_FEEDBACK__MAX_ITEMS): split it"
        )
    app_id = _app_id(submission_id)
    existing = tables.open_table(settings, FEEDBACK)
    if existing is not None and existing.transaction_version(app_id) is not None:
        rows = tables.query(existing, f"SELECT * FROM t WHERE submission_id = {_sql_string(submission_id)}")
        result = _result(rows, submission_id, submitted_by, existing.version(), written=False)
        log.info("feedback.already_recorded", **result.counts())
        return result

    request_ids = [_raw_field(i, "request_id") for i in items]
    known = [r for r in request_ids if r]
    verdicts = judge_items(
        items,
        logged_decisions(settings, known),
        accepted_feedback(settings, known, excluding_submission=submission_id),
    )
    rows = feedback_rows(
        verdicts, submission_id=submission_id, submitted_by=submitted_by, received_at=received_at, note=note
    )
    appended = tables.idempotent_append(settings, FEEDBACK, rows, app_id)
    result = _result(rows, submission_id, submitted_by, appended.version, written=appended.written)
    for rejection in result.rejections:
        log.warning("feedback.rejected", submission_id=submission_id, **rejection)
    log.info("feedback.recorded", **result.counts())
    return result


# --- labels joined to predictions ----------------------------------------------------------------


def _timestamp(value: datetime) -> str:
    from datetime import UTC

    return "TIMESTAMP " + _sql_string(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"))


def labelled_predictions(
    settings: Settings,
    spec: DatasetSpec,
    *,
    since: datetime | None = None,
    model_versions: Iterable[str] | None = None,
) -> pa.Table:
    """Logged predictions whose event has a label, with that label and where it came from.

    Labels are the union of late labels (``bronze_labels``: the dataset contract's event id,
    label and label time) and accepted feedback (label 0 for a false positive, 1 for a false
    negative, timed when it was received). Per event **the most recent label wins**: late
    label by its label time, feedback by its received time; a late label without a time counts
    as oldest; on an exact tie feedback beats a late label (a person looked at this very case),
    then a positive beats a negative. Every prediction of a labelled event gets its label.

    ``since`` keeps predictions made at or after it; ``model_versions`` keeps those versions.
    Columns: :data:`LABELLED_SCHEMA`, ordered by prediction time.
    """
    predictions = tables.open_table(settings, PREDICTION_LOG)
    late = tables.open_table(settings, BRONZE_LABELS)
    feedback = tables.open_table(settings, FEEDBACK)
    sources = []
    if late is not None:
        sources.append(
            f'SELECT CAST("{spec.event_id}" AS VARCHAR) AS event_id, CAST("{spec.label}" AS INT) AS label, '
            f"'late_label' AS label_source, \"{spec.label_time}\" AS labelled_at, 0 AS source_rank FROM l"
        )
    if feedback is not None:
        sources.append(
            "SELECT event_id, label, 'feedback' AS label_source, received_at AS labelled_at, "
            "1 AS source_rank FROM f WHERE status = 'accepted'"
        )
    versions = sorted(set(model_versions)) if model_versions is not None else None
    if predictions is None or not sources or versions == []:
        return LABELLED_SCHEMA.empty_table()

    where = []
    if since is not None:
        where.append(f"p.predicted_at >= {_timestamp(since)}")
    if versions is not None:
        where.append(f"p.model_version IN ({', '.join(_sql_string(v) for v in versions)})")
    sql = f"""
        WITH labels AS ({" UNION ALL ".join(sources)}),
        ranked AS (
            SELECT event_id, label, label_source, labelled_at,
                   ROW_NUMBER() OVER (
                       PARTITION BY event_id
                       ORDER BY labelled_at DESC NULLS LAST, source_rank DESC, label DESC
                   ) AS position
            FROM labels
        )
        SELECT p.request_id, p.event_id, p.model_version, p.variant, p.score, p.decision, p.predicted_at,
               r.label, r.label_source, r.labelled_at
        FROM p JOIN ranked r ON p.event_id = r.event_id AND r.position = 1
        {"WHERE " + " AND ".join(where) if where else ""}
        ORDER BY p.predicted_at, p.request_id
    """
    from deltalake import QueryBuilder

    builder = QueryBuilder().register("p", predictions)
    if late is not None:
        builder = builder.register("l", late)
    if feedback is not None:
        builder = builder.register("f", feedback)
    result = pa.table(builder.execute(sql))
    return result.select(LABELLED_SCHEMA.names).cast(LABELLED_SCHEMA)


def feedback_counts(settings: Settings, since: datetime | None = None) -> list[dict[str, Any]]:
    """Recorded feedback items per UTC day, kind and status, oldest day first.

    Each entry: ``{"day": "2026-05-01", "kind": "false_positive" | "false_negative" | None,
    "status": "accepted" | "rejected", "items": 3}`` (kind None: malformed items). Only
    combinations that occurred are listed; ``since`` keeps items received at or after it.
    """
    table = tables.open_table(settings, FEEDBACK)
    if table is None:
        return []
    where = f"WHERE received_at >= {_timestamp(since)}" if since is not None else ""
    rows = tables.query(
        table,
        "SELECT CAST(received_at AS DATE) AS day, kind, status, COUNT(*) AS items "
        f"FROM t {where} GROUP BY 1, 2, 3",
    ).to_pylist()
    out = [{**r, "day": r["day"].isoformat(), "items": int(r["items"])} for r in rows]
    return sorted(out, key=lambda r: (r["day"], r["kind"] or "", r["status"]))
