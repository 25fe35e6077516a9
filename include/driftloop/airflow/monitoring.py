"""Monitoring in Airflow's triggerer: the prediction-log watcher and the deferrable drift sensor.

Both only read the lake (and the registry's champion alias); what they start — a monitor_drift
run, a retrain decision — is idempotent, so a triggerer restart costs at most a no-op run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSkipException
from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent


class PredictionLogTrigger(BaseEventTrigger):
    """Fire when the prediction log has new commits: served predictions are waiting to be judged.

    :param poll_seconds: seconds between looks at the table's version; at most one event per poll.
    """

    def __init__(self, poll_seconds: float = 10.0) -> None:
        super().__init__()
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("driftloop.airflow.monitoring.PredictionLogTrigger", {"poll_seconds": self.poll_seconds})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from driftloop.config import get_settings
        from driftloop.lake import tables
        from driftloop.lake.names import PREDICTION_LOG

        settings = get_settings()

        def version() -> int | None:
            table = tables.open_table(settings, PREDICTION_LOG)
            return None if table is None else table.version()

        seen = await asyncio.to_thread(version)
        while True:
            await asyncio.sleep(self.poll_seconds)
            current = await asyncio.to_thread(version)
            if current is not None and current != seen:
                self.log.info("prediction log: version %s -> %s", seen, current)
                yield TriggerEvent({"from_version": seen, "to_version": current})
                seen = current


class DriftBreachTrigger(BaseTrigger):
    """Poll the monitoring results until the serving version has a breach the guard rails let retrain.

    A breach held back by a guard rail (cooldown, daily cap) is logged once and waited out.

    :param poll_seconds: seconds between reads of the drift results.
    :param timeout_seconds: give up after this long with a ``timeout`` event.
    """

    def __init__(self, poll_seconds: float, timeout_seconds: float) -> None:
        super().__init__()
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "driftloop.airflow.monitoring.DriftBreachTrigger",
            {"poll_seconds": self.poll_seconds, "timeout_seconds": self.timeout_seconds},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from driftloop.config import get_settings
        from driftloop.loop import pending_breach

        settings = get_settings()
        deadline = time.monotonic() + self.timeout_seconds
        held: str | None = None
        while time.monotonic() < deadline:
            breach, decision = await asyncio.to_thread(pending_breach, settings, datetime.now(UTC))
            if breach is not None and decision is not None:
                if decision.retrain:
                    yield TriggerEvent({"status": "breach", "breach": breach.as_dict()})
                    return
                if held != breach.breach_id:
                    held = breach.breach_id
                    self.log.info(
                        "drift breach %s held back: %s (until %s)",
                        breach.breach_id,
                        decision.reason,
                        decision.not_before,
                    )
            await asyncio.sleep(self.poll_seconds)
        yield TriggerEvent({"status": "timeout", "waited_seconds": self.timeout_seconds})


class DriftBreachSensor(BaseSensorOperator):
    """Wait, deferred in the triggerer, for a drift breach of the serving version; then decide it
    under the guard rails and, on a retrain, emit this task's outlet (the drift Asset) with the breach.

    Deciding here rather than in a downstream task saves a task hand-off (a scheduler loop and a
    task process) between the breach and the retrain. A breach the guard rails hold back, or no
    breach within ``timeout_seconds``, skips the task: no Asset event, no retrain.

    :param poll_seconds: seconds between reads of the drift results.
    :param timeout_seconds: how long one run waits for a breach.
    """

    template_fields = ("poll_seconds", "timeout_seconds")

    def __init__(self, *, poll_seconds: float, timeout_seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds

    def execute(self, context: Any) -> None:
        self.defer(
            trigger=DriftBreachTrigger(float(self.poll_seconds), float(self.timeout_seconds)),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        from driftloop.config import get_settings
        from driftloop.loop import Breach, decide_breach

        if event.get("status") != "breach":
            raise AirflowSkipException(f"no drift breach in {float(self.timeout_seconds) / 60:g} min")
        found = Breach.from_dict(event["breach"])
        self.log.info("drift breach %s: %s (report %s)", found.breach_id, found.reason, found.report_uri)
        # recorded once: a retry of this task gets the same decision back
        decision = decide_breach(get_settings(), found, context["dag_run"].run_id, datetime.now(UTC))
        if not decision.retrain:
            raise AirflowSkipException(f"breach {found.breach_id} recorded, no retrain: {decision.reason}")
        for asset in self.outlets:
            context["outlet_events"][asset].extra = found.as_dict()
        return {"breach_id": found.breach_id, "outcome": decision.outcome, "reason": found.reason}
