"""Human approval before a canary: requests, decisions (who, when, why) and their consequences.

deploy_model asks, a person answers through review_challenger (REST or UI); both are rows of the
lake's append-only ``approvals`` Delta table, so a retried task, the triggerer and the REST call
see one state. A version is decided once, under the registry lock; a rejection is final.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

from driftloop.config import Settings
from driftloop.lake import tables
from driftloop.lake.names import APPROVALS
from driftloop.log import get_logger
from driftloop.registry import CHALLENGER, registry_lock

if TYPE_CHECKING:
    from driftloop.registry import Registry

log = get_logger(__name__)

Kind = Literal["requested", "approved", "rejected"]
Decision = Literal["approve", "reject"]
DECIDED: frozenset[str] = frozenset({"approved", "rejected"})
TIMED_OUT = "approval timed out"
TIMEOUT_ACTOR = "airflow:deploy_model.await_approval"

APPROVAL_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("version", pa.string()),
        ("kind", pa.string()),  # requested | approved | rejected
        ("at", pa.timestamp("us", tz="UTC")),
        ("deadline", pa.timestamp("us", tz="UTC")),  # requests: when the wait times out
        ("actor", pa.string()),
        ("reason", pa.string()),
        ("run_id", pa.string()),  # the Airflow run that wrote the row (one row per run and kind)
    ]
)


class ApprovalError(RuntimeError):
    """A decision cannot be taken; the message says why and what to do instead."""


@dataclass(frozen=True)
class ApprovalRecord:
    """One request for, or decision about, one version."""

    model: str
    version: str
    kind: str
    at: datetime
    deadline: datetime | None
    actor: str
    reason: str
    run_id: str

    @property
    def decided(self) -> bool:
        return self.kind in DECIDED

    def describe(self) -> str:
        return f"{self.kind} by {self.actor} at {self.at.isoformat(timespec='seconds')}: {self.reason}"


@dataclass(frozen=True)
class ApprovalStatus:
    """Where a version stands: its latest request and its decision, if any."""

    version: str
    request: ApprovalRecord | None
    decision: ApprovalRecord | None

    @property
    def awaiting(self) -> bool:
        return self.request is not None and self.decision is None


class ApprovalStore:
    """The ``approvals`` table: requests and decisions of this model's versions, oldest first."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = settings.registered_model

    def records(self, version: str | None = None) -> list[ApprovalRecord]:
        table = tables.open_table(self.settings, APPROVALS)
        if table is None:
            return []
        where = f"model = '{_quote(self.model)}'"
        if version is not None:
            where += f" AND version = '{_quote(str(version))}'"
        rows = tables.query(table, f"SELECT * FROM t WHERE {where}").to_pylist()
        rows.sort(key=lambda r: r["at"])
        return [ApprovalRecord(**r) for r in rows]

    def status(self, version: str) -> ApprovalStatus:
        records = self.records(version)
        requests = [r for r in records if r.kind == "requested"]
        decisions = [r for r in records if r.decided]
        return ApprovalStatus(
            str(version), requests[-1] if requests else None, decisions[0] if decisions else None
        )

    def append(self, record: ApprovalRecord) -> ApprovalRecord:
        """Write ``record`` once per (run, kind, version): a retried task writes nothing twice."""
        rows = pa.Table.from_pylist([asdict(record)], schema=APPROVAL_SCHEMA)
        app_id = f"approval:{record.run_id}:{record.kind}:{record.model}:{record.version}"
        result = tables.idempotent_append(self.settings, APPROVALS, rows, app_id)
        if result.written:
            log.info(
                "approval.recorded",
                version=record.version,
                kind=record.kind,
                actor=record.actor,
                reason=record.reason,
                run_id=record.run_id,
            )
        return record


def _quote(value: str) -> str:
    return value.replace("'", "''")


def request_approval(
    settings: Settings, version: str, run_id: str, now: datetime | None = None
) -> ApprovalStatus:
    """Ask for a decision on ``version`` for deploy run ``run_id``, unless it was decided already.

    The deadline is fixed by the first request of the run, so a retried task waits no longer.
    """
    store = ApprovalStore(settings)
    status = store.status(version)
    if status.decision is not None:
        return status
    mine = [r for r in store.records(version) if r.kind == "requested" and r.run_id == run_id]
    if mine:
        return ApprovalStatus(str(version), mine[-1], None)
    at = now or datetime.now(UTC)
    timeout = timedelta(minutes=settings.approval.approval_timeout_minutes)
    request = ApprovalRecord(
        model=settings.registered_model,
        version=str(version),
        kind="requested",
        at=at,
        deadline=at + timeout,
        actor=f"airflow:deploy_model:{run_id}",
        reason=f"canary of version {version} needs approval within {timeout}",
        run_id=run_id,
    )
    store.append(request)
    return store.status(version)


def review(
    settings: Settings,
    registry: Registry,
    version: str,
    decision: Decision,
    actor: str,
    reason: str,
    run_id: str,
) -> ApprovalRecord:
    """Record a person's approve/reject of the challenger awaiting approval; reject tags it rejected.

    Refuses (ApprovalError) a version that is already decided, is not the challenger, or that no
    deploy run is waiting for. A retry of the same run returns the decision it recorded.
    """
    version = str(version)
    with registry_lock(settings):
        status = ApprovalStore(settings).status(version)
        if status.decision is not None:
            if status.decision.run_id == run_id:
                _apply(registry, status.decision)
                return status.decision
            raise ApprovalError(
                f"version {version} was already {status.decision.describe()}. A decision is final: "
                "to stop an approved canary use control_rollout (action abort); to try a rejected "
                "model again, retrain (train_model) and review the new version."
            )
        challenger = registry.alias_version(CHALLENGER)
        if challenger is None or str(challenger.version) != version:
            current = f"version {challenger.version}" if challenger is not None else "none"
            raise ApprovalError(
                f"version {version} is not the current challenger (challenger: {current}): only the "
                "challenger awaiting approval can be approved or rejected; check the version in the "
                "driftloop view or the deploy_model run that waits in await_approval."
            )
        if not status.awaiting:
            raise ApprovalError(
                f"version {version} is the challenger but is not awaiting approval: no deploy_model "
                "run has asked for it yet. Approval is asked only with "
                "DRIFTLOOP_APPROVAL__REQUIRE_APPROVAL=true, when deploy_model reaches await_approval."
            )
        record = _decide(settings, registry, version, decision, actor, reason, run_id)
    return record


def expire(settings: Settings, registry: Registry, version: str, run_id: str) -> ApprovalRecord:
    """The wait of deploy run ``run_id`` timed out: reject ``version`` — unless someone decided first."""
    version = str(version)
    with registry_lock(settings):
        status = ApprovalStore(settings).status(version)
        if status.decision is not None:
            _apply(registry, status.decision)
            return status.decision
        return _decide(settings, registry, version, "reject", TIMEOUT_ACTOR, TIMED_OUT, run_id)


def _decide(
    settings: Settings,
    registry: Registry,
    version: str,
    decision: Decision,
    actor: str,
    reason: str,
    run_id: str,
) -> ApprovalRecord:
    record = ApprovalRecord(
        model=settings.registered_model,
        version=version,
        kind="approved" if decision == "approve" else "rejected",
        at=datetime.now(UTC),
        deadline=None,
        actor=actor,
        reason=reason,
        run_id=run_id,
    )
    ApprovalStore(settings).append(record)
    _apply(registry, record)
    return record


def _apply(registry: Registry, record: ApprovalRecord) -> None:
    """A decision's mark in the registry (idempotent): rejected versions are tagged and lose challenger."""
    if record.kind == "rejected":
        registry.reject_version(
            record.version,
            by="approval",
            reasons=[f"rejected by {record.actor}: {record.reason}"],
            actor=record.actor,
            run_key=record.run_id,
            alias_reason=f"rejected before its canary: {record.reason}",
        )
    else:
        registry.tag_version(
            record.version, {"driftloop.approved_by": f"{record.actor}: {record.reason}"[:5000]}
        )


def settled(settings: Settings, version: str) -> ApprovalRecord | None:
    """The decision about ``version``, if one was taken (what the waiting trigger polls)."""
    return ApprovalStore(settings).status(version).decision


__all__ = [
    "ApprovalError",
    "ApprovalRecord",
    "ApprovalStatus",
    "ApprovalStore",
    "expire",
    "request_approval",
    "review",
    "settled",
]
