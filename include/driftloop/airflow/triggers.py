"""Triggers that run in Airflow's triggerer: the landing-area watcher behind event-driven ingest.

The watcher only announces files; ingestion is idempotent, so a repeated announcement (after
a triggerer restart) costs a no-op run, never a double write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


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
