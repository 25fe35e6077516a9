"""The canary rollout in Airflow: a deferrable operator that steps traffic and a trigger that analyses.

The worker slot is released during every analysis window: the trigger waits in the triggerer,
watches for operator commands (promote/abort), judges the window and wakes the operator, which
records the verdict and takes the next step. State lives in the lake (``driftloop.rollout``), so
a killed task resumes on retry and a killed scheduler leaves the trigger running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

# how often the trigger looks for operator commands while a window runs
COMMAND_POLL_SECONDS = 2.0


def _rollout(rollout_id: str):
    from driftloop.config import get_settings
    from driftloop.deploy import get_target
    from driftloop.registry import Registry
    from driftloop.rollout import Rollout

    settings = get_settings()
    return Rollout(settings, rollout_id, get_target(settings), Registry(settings))


class CanaryAnalysisTrigger(BaseTrigger):
    """Wait one analysis window (or until an operator command), then judge the canary.

    :param rollout_id: the rollout being analysed.
    :param step: index of the step in the ladder.
    :param window: how many windows of this step were judged before.
    :param baselines: metric snapshots of both variants when the step began.
    :param since: ISO time labelled predictions are counted from.
    :param interval_s: length of the window in seconds.
    """

    def __init__(
        self,
        rollout_id: str,
        step: int,
        window: int,
        baselines: dict[str, Any],
        since: str,
        interval_s: float,
    ) -> None:
        super().__init__()
        self.rollout_id = rollout_id
        self.step = step
        self.window = window
        self.baselines = baselines
        self.since = since
        self.interval_s = interval_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "driftloop.airflow.rollout.CanaryAnalysisTrigger",
            {
                "rollout_id": self.rollout_id,
                "step": self.step,
                "window": self.window,
                "baselines": self.baselines,
                "since": self.since,
                "interval_s": self.interval_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from driftloop.rollout import RolloutStore

        rollout = await asyncio.to_thread(_rollout, self.rollout_id)
        store: RolloutStore = rollout.store
        deadline = asyncio.get_running_loop().time() + self.interval_s
        while True:
            command = await asyncio.to_thread(store.command, self.rollout_id)
            if command is not None:
                self.log.info("rollout %s: operator command %s", self.rollout_id, command.phase)
                yield TriggerEvent(
                    {
                        "command": command.phase,
                        "actor": command.actor,
                        "reason": command.details.get("reason"),
                    }
                )
                return
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(COMMAND_POLL_SECONDS, remaining))
        verdict = await asyncio.to_thread(rollout.analyse, self.baselines, datetime.fromisoformat(self.since))
        self.log.info(
            "rollout %s step %d window %d: %s %s",
            self.rollout_id,
            self.step,
            self.window,
            verdict.outcome,
            "; ".join(verdict.reasons),
        )
        yield TriggerEvent({"verdict": verdict.as_dict(), "window": self.window})


class CanaryRolloutOperator(BaseOperator):
    """Roll ``version`` out as a canary through the configured weight ladder; promote or roll back.

    Returns ``{"outcome": "promoted" | "rolled_back", ...}``. A rolled-back rollout ends the task
    successfully (rolling back *is* the safe outcome); the DAG reports it in a later task.

    :param version: registry version to roll out (templated).
    :param rollout_id: stable id of this rollout, e.g. the DAG run id (templated).
    """

    template_fields: Sequence[str] = ("version", "rollout_id")

    def __init__(self, *, version: str, rollout_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.rollout_id = rollout_id

    @property
    def actor(self) -> str:
        return f"airflow:{self.dag_id}.{self.task_id}"

    def execute(self, context: Any) -> dict[str, Any]:
        rollout = _rollout(self.rollout_id)
        state = rollout.start(str(self.version), self.actor)
        self.log.info(
            "rollout %s of version %s: resuming from phase %s", self.rollout_id, state.version, state.phase
        )
        return self._continue(rollout, rollout.resume(self.actor))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        from driftloop.rollout import Verdict

        rollout = _rollout(self.rollout_id)
        if event.get("command"):
            return self._continue(
                rollout, rollout.handle_command(event["command"], event.get("actor"), event.get("reason"))
            )
        verdict = Verdict(**{**event["verdict"], "reasons": tuple(event["verdict"]["reasons"])})
        window = int(event.get("window", 0))
        self.log.info(
            "window %d: %s — %s | %s",
            window,
            verdict.outcome.upper(),
            "; ".join(verdict.reasons) or "all checks passed",
            {k: v for k, v in verdict.metrics.items() if k != "stable_window"},
        )
        return self._continue(rollout, rollout.handle_window(verdict, window, self.actor))

    def _continue(self, rollout: Any, plan: Any) -> dict[str, Any]:
        if plan.done:
            return self._result(plan.record)
        interval = rollout.rules.analysis_interval_s
        self.log.info(
            "step %d: canary at %d%%, analysing %.0f s (window %d)",
            plan.record.step,
            plan.record.weight,
            interval,
            plan.window,
        )
        self.defer(
            trigger=CanaryAnalysisTrigger(
                rollout_id=self.rollout_id,
                step=plan.record.step,
                window=plan.window,
                baselines=plan.baselines or plan.record.details["baselines"],
                since=plan.since.isoformat(),
                interval_s=interval,
            ),
            method_name="execute_complete",
            # a trigger that never reports fails the task, whose retry resumes the rollout
            timeout=timedelta(seconds=interval * 3 + 300),
        )
        raise AssertionError("defer() raises")  # pragma: no cover

    def _result(self, record: Any) -> dict[str, Any]:
        details = record.details
        return {
            "rollout_id": record.rollout_id,
            "version": record.version,
            "stable_version": record.stable_version,
            "outcome": record.phase,
            "reasons": details.get("reasons") or [details.get("reason")],
            "metrics": details.get("metrics", {}),
        }


def roll_back_on_failure(context: Any) -> None:
    """Task failure callback: a rollout nobody watches any more is rolled back, never left split."""
    rollout_id = context["dag_run"].run_id
    rollout = _rollout(rollout_id)
    state = rollout.store.state(rollout_id)
    if state is not None and not state.terminal:
        exception = context.get("exception")
        rollout.roll_back("airflow:on_failure", [f"rollout task failed: {exception!r}"[:500]])
