"""The approval gate in Airflow: a deferrable wait for a person's decision before a canary.

The worker slot is released while the trigger polls the approvals table in the triggerer; the
request (and its deadline) is persisted first, so a retried task waits no longer than the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator

from driftloop.airflow.triggers import ApprovalTrigger

# beyond the approval deadline, how long a silent trigger may take before the task fails (its
# retry then finds the deadline passed and records the timeout itself)
TRIGGER_GRACE = timedelta(minutes=5)


class AwaitApprovalOperator(BaseOperator):
    """Hold the canary of ``version`` until a person approves it; skip what follows otherwise.

    Passes at once when ``DRIFTLOOP_APPROVAL__REQUIRE_APPROVAL`` is off or the version was
    approved before. Otherwise records an approval request and defers to :class:`ApprovalTrigger`.
    Approve → returns; reject or timeout (``approval timed out``) → the version is tagged rejected
    and the task is skipped with the reason, so no canary starts.

    :param version: registry version awaiting its canary (templated).
    :param request_id: stable id of the request, e.g. the DAG run id (templated).
    """

    template_fields: Sequence[str] = ("version", "request_id")

    def __init__(self, *, version: str, request_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.request_id = request_id

    def execute(self, context: Any) -> dict[str, Any]:
        from driftloop.approval import request_approval
        from driftloop.config import get_settings

        settings = get_settings()
        version = str(self.version)
        if not settings.approval.require_approval:
            self.log.info(
                "approval not required (DRIFTLOOP_APPROVAL__REQUIRE_APPROVAL off): version %s", version
            )
            return {"version": version, "approval": "not required"}
        status = request_approval(settings, version, self.request_id)
        if status.decision is not None:
            return self._settle(status.decision.kind, status.decision.actor, status.decision.reason)
        deadline = status.request.deadline
        self.log.info(
            "version %s awaits approval until %s: trigger review_challenger with "
            '{"version": "%s", "decision": "approve" | "reject", "reason": "..."}',
            version,
            deadline.isoformat(timespec="seconds"),
            version,
        )
        self.defer(
            trigger=ApprovalTrigger(
                version=version,
                deadline=deadline.isoformat(),
                poll_seconds=settings.approval.poll_seconds,
            ),
            method_name="execute_complete",
            timeout=max(deadline - datetime.now(UTC), timedelta(0)) + TRIGGER_GRACE,
        )
        raise AssertionError("defer() raises")  # pragma: no cover

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        from driftloop.approval import expire
        from driftloop.config import get_settings
        from driftloop.registry import Registry

        if event["decision"] == "timed_out":
            settings = get_settings()
            record = expire(settings, Registry(settings), str(self.version), self.request_id)
            return self._settle(record.kind, record.actor, record.reason)
        return self._settle(event["decision"], event.get("actor"), event.get("reason"))

    def _settle(self, kind: str, actor: str | None, reason: str | None) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if kind != "approved":
            raise AirflowSkipException(
                f"version {self.version} rejected by {actor}: {reason} — no canary; "
                "the version is tagged driftloop.status=rejected"
            )
        self.log.info("version %s approved by %s: %s", self.version, actor, reason)
        return {"version": str(self.version), "approval": "approved", "actor": actor, "reason": reason}
