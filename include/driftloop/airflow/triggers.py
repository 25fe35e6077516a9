"""Triggers that run in Airflow's triggerer: the landing-area watcher behind event-driven ingest,
and the wait for a person's approval before a canary.

The watcher only announces files; ingestion is idempotent, so a repeated announcement (after
a triggerer restart) costs a no-op run, never a double write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent


class LandingFilesTrigger(BaseEventTrigger):
    """Fire when batch files appear in the landing area (events/ or labels/).

    :param poll_seconds: seconds between listings of the landing area.
    """

    def __init__(self, poll_seconds: float = 5.0) -> None:
        super().__init__()
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("driftloop.airflow.triggers.LandingFilesTrigger", {"poll_seconds": self.poll_seconds})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from driftloop.config import get_settings
        from driftloop.ingest import list_landing_files

        settings = get_settings()
        announced: set[str] = set()
        while True:
            files = await asyncio.to_thread(list_landing_files, settings)
            fresh = [f for f in files if f.path not in announced]
            if fresh:
                announced.update(f.path for f in fresh)
                self.log.info(
                    "landing: %d new file(s): %s", len(fresh), ", ".join(f.name for f in fresh[:10])
                )
                yield TriggerEvent({"files": [f.name for f in fresh], "count": len(fresh)})
            # forget files that were ingested and moved away, so a re-landed name fires again
            announced &= {f.path for f in files}
            await asyncio.sleep(self.poll_seconds)


class ApprovalTrigger(BaseTrigger):
    """Wait for the decision about ``version`` in the approvals table, or for its deadline.

    Fires once: ``{"decision": "approved" | "rejected", ...}`` when someone decided, or
    ``{"decision": "timed_out"}`` at the deadline (the operator then records the rejection, so a
    decision that lands at the last moment still wins).

    :param version: registry version awaiting approval.
    :param deadline: ISO time (with zone) after which the wait times out.
    :param poll_seconds: seconds between reads of the approvals table.
    """

    def __init__(self, version: str, deadline: str, poll_seconds: float = 5.0) -> None:
        super().__init__()
        self.version = version
        self.deadline = deadline
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "driftloop.airflow.triggers.ApprovalTrigger",
            {"version": self.version, "deadline": self.deadline, "poll_seconds": self.poll_seconds},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from driftloop.approval import settled
        from driftloop.config import get_settings

        settings = get_settings()
        deadline = datetime.fromisoformat(self.deadline)
        while True:
            decision = await asyncio.to_thread(settled, settings, self.version)
            if decision is not None:
                self.log.info("version %s %s", self.version, decision.describe())
                yield TriggerEvent(
                    {
                        "decision": decision.kind,
                        "version": self.version,
                        "actor": decision.actor,
                        "reason": decision.reason,
                    }
                )
                return
            remaining = (deadline - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                self.log.info("version %s: nobody decided by %s", self.version, self.deadline)
                yield TriggerEvent({"decision": "timed_out", "version": self.version})
                return
            await asyncio.sleep(min(self.poll_seconds, remaining))
