"""The whole closed loop on the embedded stack, driven the way operators and other systems drive it.

Data lands and Airflow's scheduler does the rest — ingest, features, training, deployment,
monitoring, the drift sensor, the retrain and its canary. The driver only lands data, plays the
clients sending traffic, makes the REST calls a person would (the first retrain, a forced
rollout) and watches, recording when each stage of the loop was reached. `make demo` runs it
with the demo's windows; the end-to-end test runs it with shorter ones.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from driftloop.config import Settings
from driftloop.dataset import DatasetSpec
from driftloop.lake import tables
from driftloop.lake.names import BRONZE_EVENTS, FEATURES, QUARANTINE

LOOP_DAGS = (
    "ingest_events",
    "build_features",
    "train_model",
    "deploy_model",
    "monitor_drift",
    "watch_drift",
)
BASELINE_BATCHES, DRIFT_BATCHES = 24, 8
BATCH_INTERVAL = timedelta(hours=2)
DRILL_LATENCY_MS = 150


class LoopError(RuntimeError):
    """A stage of the loop did not happen in time; the message says where to look."""


def loop_settings(
    base: Settings, *, analysis_interval_s: float = 8.0, window_minutes: float = 0.5
) -> Settings:
    """``base`` with the loop's compressed windows: what the demo and the end-to-end test run with.

    Only drift (and REST) starts a retrain — no features trigger, no cron backstop, which would
    also fire when the DAG is unpaused — so the retrain the loop shows is the drift's; one
    automatic retrain per run of the loop (cooldown); a short canary ladder analysis window; the
    triggerer's watchers (landing files, prediction log, drift results) look every second, as
    each look is a cheap listing or Delta log read and each is a hop of the drift path.
    """

    def section(name: str, **update: Any) -> Any:
        return getattr(base, name).model_copy(update=update)

    return base.model_copy(
        update={
            "landing_poll_seconds": 1.0,
            "training": section(
                "training",
                retrain_on_features=False,
                backstop_cron=None,
                n_trials=8,
                timeout_minutes=3,
                seed=7,
            ),
            # the canary, on real traffic, judges what the offline gate would guess here: a retrain
            # rarely beats the champion by a margin on its own holdout, latency is measured under
            # load by the analysis, and scores on freshly drifted data are less well calibrated
            "gate": section(
                "gate",
                margin=-0.05,
                recent_tolerance=0.05,
                latency_budget_ms=100.0,
                max_calibration_error=0.1,
            ),
            "rollout": section(
                "rollout",
                steps=(10, 50, 100),
                analysis_interval_s=analysis_interval_s,
                min_requests=60,
                # at ~6 canary requests a second, the 10 % step's p99 rests on its 2 slowest of 200
                min_latency_requests=200,
                latency_slack_ms=25.0,
                max_windows_per_step=10,
            ),
            "monitoring": section("monitoring", window_minutes=window_minutes, watch_poll_seconds=1.0),
            "loop": section("loop", cooldown_minutes=60, max_retrains_per_day=3, breach_poll_seconds=1.0),
            "serving": section("serving", log_flush_seconds=1.0),
        }
    )


@contextmanager
def loop_stack(settings: Settings, echo: Callable[[str], None] = print) -> Iterator[Any]:
    """The embedded Airflow stack for the loop; on exit Airflow stops first, then the model servers
    and HAProxy — in the other order a deploy_model task still running would start them again."""
    from driftloop.deploy.local import LocalTarget
    from driftloop.stack import AirflowStack

    stack = AirflowStack(settings, parallelism=4, echo=echo)
    try:
        with stack:
            stack.wait_for_dags(*LOOP_DAGS, timeout=300)
            yield stack
    finally:
        LocalTarget(settings).stop_all()


@dataclass
class LoopReport:
    """When each stage of the loop was reached (seconds since the loop started) and what it produced."""

    started: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def mark(self, stage: str) -> float:
        self.marks[stage] = time.monotonic() - self.started
        return self.marks[stage]

    def between(self, first: str, last: str) -> float:
        return self.marks[last] - self.marks[first]


class ClosedLoop:
    """Drive the loop on a running :class:`~driftloop.stack.AirflowStack` whose settings are ``settings``.

    :param trigger: makes a REST call that starts a DAG run (dag id, conf) → run id; the stack's own
        by default, the official client's in the end-to-end test.
    :param echo: where the narration goes.
    :param drill: end with the forced slow candidate that must roll back (the loop benchmark,
        which measures the drift path only, leaves it out).
    """

    def __init__(
        self,
        settings: Settings,
        spec: DatasetSpec,
        stack: Any,
        *,
        trigger: Callable[[str, Mapping[str, Any]], str] | None = None,
        echo: Callable[[str], None] = print,
        traffic_rate: float = 60.0,
        drill: bool = True,
    ) -> None:
        from driftloop.simulator import SimulationConfig

        self.settings = settings
        self.spec = spec
        self.stack = stack
        self.trigger = trigger or (lambda dag_id, conf: stack.trigger(dag_id, conf))
        self.echo = echo
        self.traffic_rate = traffic_rate
        self.drill = drill
        self.report = LoopReport()
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        batches = BASELINE_BATCHES + DRIFT_BATCHES
        # simulated time ends a day ago: every label is due and nothing is in the future
        self.simulation = SimulationConfig.for_scenario(
            "covariate_shift",
            seed=42,
            start_time=now - batches * BATCH_INTERVAL - timedelta(days=1),
            n_users=4_000,
            n_merchants=120,
            events_per_batch=2_000,
            n_batches=batches,
            batch_interval=BATCH_INTERVAL,
            drift_start_batch=BASELINE_BATCHES,
            bad_row_fraction=0.005,
        )
        self.drift_starts = self.simulation.start_time + BASELINE_BATCHES * BATCH_INTERVAL
        self._load = None

    # -- narration and waiting --------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.echo(f"[{time.monotonic() - self.report.started:6.1f}s] {text}")

    def wait(
        self,
        what: str,
        check: Callable[[], Any],
        timeout: float,
        poll: float = 2.0,
        describe: Callable[[], str] | None = None,
    ) -> Any:
        """Poll ``check`` until it returns something truthy; progress every 20 s, a clear error on timeout."""
        began = last = time.monotonic()
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() - began > timeout:
                raise LoopError(
                    f"gave up waiting {timeout:.0f}s for {what}: see the Airflow UI at {self.stack.ui_url} "
                    f"and the component logs under {self.stack.logs}"
                )
            if time.monotonic() - last >= 20:
                last = time.monotonic()
                detail = f": {describe()}" if describe else ""
                self.say(f"  … still waiting for {what} ({time.monotonic() - began:.0f}s){detail}")
            time.sleep(poll)

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> dict:
        """Wait for a DAG run to end, naming the task it is at while it runs."""
        from driftloop.stack import TERMINAL_RUN_STATES

        def ended() -> dict | None:
            run = self.stack.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            return run if run["state"] in TERMINAL_RUN_STATES else None

        return self.wait(f"{dag_id} run {run_id}", ended, timeout, describe=lambda: self.busy(dag_id, run_id))

    def busy(self, dag_id: str, run_id: str | None = None) -> str:
        """The tasks a run (by default the DAG's latest) is at, for progress lines."""
        if run_id is None:
            runs = self.stack.request(
                "GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": 1}
            )["dag_runs"]
            if not runs:
                return f"no {dag_id} run yet"
            run_id = runs[0]["dag_run_id"]
        states = self.stack.task_states(dag_id, run_id)
        busy = [
            task if state == "running" else f"{task} ({state})"
            for task, state in states.items()
            if state in ("running", "deferred", "queued", "up_for_retry", "up_for_reschedule")
        ]
        return f"{dag_id} at {', '.join(busy) or 'scheduling'}"

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> LoopReport:
        """The loop, stage by stage; the model servers keep running (see :func:`loop_stack`)."""
        from driftloop.deploy.local import LocalTarget

        target = LocalTarget(self.settings)
        try:
            for dag_id in LOOP_DAGS:
                self.stack.unpause(dag_id)
            self.say(f"unpaused {', '.join(LOOP_DAGS)}")
            self._baseline()
            champion = self._first_champion(target)
            self._calm_traffic(target, champion)
            drifted = self._inject_drift(target)
            self._drift_detected(champion)
            new_champion = self._retrain_and_canary(champion)
            if self.drill:
                self._bad_candidate(new_champion)
            self.report.facts["traffic"] = self._stop_traffic()
            self.report.facts["drifted_rows"] = drifted
            return self.report
        finally:
            self._stop_traffic()

    def _count(self, name: str) -> int:
        table = tables.open_table(self.settings, name)
        return 0 if table is None else int(tables.query(table, "SELECT COUNT(*) AS n FROM t")["n"][0].as_py())

    def _land(self, batches: range) -> None:
        from driftloop.simulator import write_landing_batches

        write_landing_batches(self.simulation, Path(self.settings.landing), batches=batches)

    def _featurized(self) -> bool:
        """Every landed batch ingested, and the features table caught up with bronze."""
        pending = list((Path(self.settings.landing) / "events").glob("*.parquet"))
        bronze = self._count(BRONZE_EVENTS)
        return not pending and bronze > 0 and self._count(FEATURES) == bronze

    def _baseline(self) -> None:
        self.say(
            f"landing {BASELINE_BATCHES} baseline batches × 2,000 events (+ late labels), "
            f"{self.simulation.bad_row_fraction:.1%} corrupted rows and one truncated upload"
        )
        self._land(range(BASELINE_BATCHES))
        (Path(self.settings.landing) / "events" / "corrupt-upload.parquet").write_bytes(b"PAR1 cut short")
        self.report.mark("baseline_landed")
        self.wait("ingest_events and build_features over the baseline", self._featurized, 600)
        self.report.mark("baseline_featurized")
        self.say(
            f"ingest_events → build_features ran on their own (landing watcher, bronze Asset): "
            f"{self._count(BRONZE_EVENTS):,} events in bronze, {self._count(FEATURES):,} feature rows"
        )
        quarantine = tables.read_table(self.settings, QUARANTINE)
        reasons = Counter(quarantine["reason"].to_pylist()) if quarantine is not None else Counter()
        for reason, count in reasons.most_common(6):
            self.say(f"  quarantined {count:>4} × {reason}")
        kept = sorted((Path(self.settings.landing) / "_quarantine").rglob("corrupt-upload*"))
        for path in kept:
            self.say(f"  unreadable upload kept (not deleted) at {path}")
        self.report.facts["quarantined_rows"] = sum(reasons.values())

    def _first_champion(self, target: Any) -> str:
        from driftloop.registry import CHAMPION, Registry

        conf = {"reason": "first model of the loop", "n_trials": self.settings.training.n_trials}
        run_id = self.trigger("train_model", conf)
        self.say(f"REST: triggered train_model ({run_id}) for the first model")
        run = self.wait_run("train_model", run_id, timeout=900)
        if run["state"] != "success":
            raise LoopError(f"the first train_model run {run_id} ended {run['state']}")
        champion = Registry(self.settings).alias_version(CHAMPION)
        if champion is None:
            raise LoopError(
                "train_model succeeded but no champion was set: the gate rejected the first model"
            )
        version = str(champion.version)
        self.report.mark("first_champion")
        self.say(f"train_model: version {version} is the first champion")

        def serving() -> bool:
            stable = target.status().variants.get("stable")
            return bool(stable and stable.model_version == version and stable.ready)

        self.wait("deploy_model to serve the champion as stable", serving, 600)
        self.report.mark("first_champion_serving")
        self.say(f"deploy_model (champion Asset): stable v{version} behind HAProxy at {target.endpoint}")
        return version

    def _rows(self, since: datetime | None = None, until: datetime | None = None, limit: int = 4000) -> list:
        spec = self.spec
        table = tables.open_table(self.settings, FEATURES)
        columns = ", ".join(f'"{c}"' for c in [spec.event_id, *spec.model_features])
        where = []
        if since is not None:
            where.append(f"\"{spec.event_time}\" >= TIMESTAMP '{since:%Y-%m-%d %H:%M:%S}'")
        if until is not None:
            where.append(f"\"{spec.event_time}\" < TIMESTAMP '{until:%Y-%m-%d %H:%M:%S}'")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f'SELECT {columns} FROM t {clause} ORDER BY "{spec.event_time}" DESC LIMIT {limit}'
        rows = tables.query(table, sql).to_pylist()
        return [{k: (v if v == v else None) for k, v in row.items()} for row in rows]  # NaN → missing

    def _start_traffic(self, target: Any, rows: list) -> None:
        from driftloop.traffic import BackgroundLoad

        self._stop_traffic()
        self._load = BackgroundLoad(target.endpoint, rows, concurrency=4, rate=self.traffic_rate).start()

    def _stop_traffic(self) -> dict[str, Any] | None:
        load, self._load = self._load, None
        if load is None:
            return None
        load.stop()
        return {"requests": load.total, "failed": load.failed, "answered_by": dict(load.answered_by)}

    def _judged(self, version: str, after: datetime, drifted: bool | None) -> list[dict]:
        from driftloop.lake.names import DRIFT_METRICS
        from driftloop.monitoring import DATASET

        table = tables.read_table(self.settings, DRIFT_METRICS)
        if table is None:
            return []
        return [
            r
            for r in table.to_pylist()
            if r["feature"] == DATASET
            and r["model_version"] == version
            and r["window_end"] > after
            and r["status"] == "ok"
            and (drifted is None or r["drifted"] == drifted)
        ]

    def _calm_traffic(self, target: Any, champion: str) -> None:
        rows = self._rows(until=self.drift_starts)
        self._start_traffic(target, rows)
        began = datetime.now(UTC)
        self.say(f"traffic: {len(rows):,} baseline events replayed at ~{self.traffic_rate:.0f} req/s")
        calm = self.wait(
            "monitor_drift to judge a full window of baseline traffic",
            lambda: self._judged(
                champion, began + timedelta(minutes=self.settings.monitoring.window_minutes), None
            ),
            300,
        )
        verdict = calm[-1]
        self.report.facts["calm_window_drifted"] = verdict["drifted"]
        self.report.mark("calm_judged")
        self.say(
            f"monitor_drift: window of {verdict['rows']} predictions, share of drifted features "
            f"{verdict['score']:.2f} → {'DRIFT' if verdict['drifted'] else 'no drift'}"
        )

    def _inject_drift(self, target: Any) -> int:
        self.say(f"landing {DRIFT_BATCHES} drifted batches (covariate shift: amounts ×2.5, wider spread)")
        self._land(range(BASELINE_BATCHES, BASELINE_BATCHES + DRIFT_BATCHES))
        self.report.mark("drift_landed")
        self.report.facts["drift_landed_at"] = datetime.now(UTC)
        self.report.facts["drift_starts"] = self.drift_starts
        # short polls on the path the loop-latency target times: the driver is one of its hops
        self.wait(
            "ingest_events and build_features over the drifted batches", self._featurized, 600, poll=0.5
        )
        self.report.mark("drift_featurized")
        rows = self._rows(since=self.drift_starts)
        self._start_traffic(target, rows)
        self.report.mark("drift_traffic")
        self.say(f"traffic: now {len(rows):,} drifted events (their features just built)")
        return len(rows)

    def _asset_events(self, name: str) -> list[dict] | None:
        """The Asset's events, oldest first; None while the API cannot list them (poll again)."""
        from driftloop.stack import ApiError

        assets = self.stack.request("GET", "/api/v2/assets", params={"name_pattern": name})["assets"]
        asset = next((a for a in assets if a["name"] == name), None)
        if asset is None:
            return []
        try:
            body = self.stack.request(
                "GET", "/api/v2/assets/events", params={"asset_id": asset["id"], "order_by": "timestamp"}
            )
        except ApiError as exc:
            # Airflow 3.3.2 answers 500 while an event's triggered run is queued and has no
            # start_date yet (its response model requires one): transient, so poll again
            if exc.status == 500:
                return None
            raise
        return body["asset_events"]

    def _listed(self, name: str) -> list[dict] | None:
        """The Asset's events as a truthy value for :meth:`wait` (a list, possibly empty, in a list)."""
        events = self._asset_events(name)
        return None if events is None else [events]

    def _drift_detected(self, champion: str) -> None:
        (listed,) = self.wait("the drift Asset's events", lambda: self._listed("driftloop.drift"), 120)
        before = len(listed)
        events = self.wait(
            "watch_drift to emit a driftloop.drift Asset event",
            lambda: (self._asset_events("driftloop.drift") or [])[before:],
            300,
            poll=0.5,
        )
        self.report.mark("drift_event")
        self.report.facts["drift_chain"] = self._task_timeline(
            self.report.facts["drift_landed_at"], datetime.fromisoformat(events[-1]["timestamp"])
        )
        extra = events[-1].get("extra") or {}
        self.report.facts["drift_event"] = extra
        drifted = extra.get("drifted_features", [])
        shown = ", ".join(drifted[:5]) + (f" … ({len(drifted)} in all)" if len(drifted) > 5 else "")
        self.say(
            f"watch_drift: drift on v{extra.get('model_version')} — features {shown or '-'}; "
            f"score drifted: {extra.get('score_drifted')} (PSI {extra.get('score_psi') or 0:.2f})"
        )
        self.say(f"  report: {extra.get('report_uri')}")

    def _task_timeline(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        """Every task that ran between ``since`` and ``until``, in seconds after ``since``: when its
        run was due, when it was queued, started and ended — where the loop's time went."""
        body = self.stack.request(
            "GET",
            "/api/v2/dags/~/dagRuns/~/taskInstances",
            params={
                "end_date_gte": since.isoformat(),
                "start_date_lte": until.isoformat(),
                "order_by": "start_date",
                "limit": 200,
            },
        )

        def offset(value: str | None) -> float | None:
            return (
                None if value is None else round((datetime.fromisoformat(value) - since).total_seconds(), 1)
            )

        return [
            {
                "dag_id": ti["dag_id"],
                "task_id": ti["task_id"],
                "run_id": ti["dag_run_id"],
                "state": ti["state"],
                "run_after": offset(ti.get("run_after")),
                "queued": offset(ti.get("queued_when")),
                "start": offset(ti.get("start_date")),
                "end": offset(ti.get("end_date")),
            }
            for ti in body["task_instances"]
            if ti["dag_id"] in LOOP_DAGS
        ]

    def _drift_runs(self) -> list[dict]:
        body = self.stack.request(
            "GET", "/api/v2/dags/train_model/dagRuns", params={"run_type": ["asset_triggered"]}
        )
        return body["dag_runs"]

    def _retrain_and_canary(self, champion: str) -> str:
        from driftloop.registry import CHAMPION, Registry
        from driftloop.rollout import RolloutStore

        retrain = self.wait("train_model triggered by the drift Asset", self._drift_runs, 120)[-1]
        self.report.mark("retrain_started")
        self.say(f"train_model started by the drift Asset ({retrain['dag_run_id']})")
        run = self.wait_run("train_model", retrain["dag_run_id"], timeout=900)
        if run["state"] != "success":
            raise LoopError(f"the drift retrain {retrain['dag_run_id']} ended {run['state']}")
        registry = Registry(self.settings)
        candidate = registry.find_version(retrain["dag_run_id"])
        if candidate is None:
            raise LoopError("the drift retrain registered no version")
        version = str(candidate.version)
        if candidate.tags.get("driftloop.status") == "rejected":
            # the gate records its reasons as a JSON list; a rollout or approval as driftloop.rejection
            reasons = candidate.tags.get("driftloop.rejection") or "; ".join(
                json.loads(candidate.tags.get("driftloop.reasons", "[]"))
            )
            raise LoopError(
                f"the gate rejected the drift retrain v{version}: {reasons or 'see the gate_model task log'}"
            )
        self.report.mark("challenger_registered")
        self.report.facts["retrained_version"] = version
        self.say(
            f"train_model: version {version} registered and gated; trained on features Delta version "
            f"{candidate.tags.get('lineage.features_version', '?')}"
        )

        shown: set[tuple[str, int, str]] = set()

        def rollout_over() -> bool:
            for record in RolloutStore(self.settings).records():
                if record.version != version:
                    continue
                key = (record.phase, record.step, record.at.isoformat())
                if key in shown:
                    continue
                shown.add(key)
                if record.phase == "step" and "canary_started" not in self.report.marks:
                    self.report.mark("canary_started")
                self.say(f"deploy_model: canary v{version} {describe_record(record)}")
                if record.terminal:
                    return True
            return False

        self.wait(
            f"deploy_model to finish the canary of v{version}",
            rollout_over,
            900,
            describe=lambda: self.busy("deploy_model"),
        )
        now_champion = registry.alias_version(CHAMPION)
        promoted = now_champion is not None and str(now_champion.version) == version
        self.report.mark("promoted" if promoted else "rolled_back")
        self.report.facts["promoted"] = promoted
        self.say(f"champion is now v{now_champion.version if now_champion else '-'} (was v{champion})")
        return str(now_champion.version) if now_champion else champion

    def _bad_candidate(self, champion: str) -> None:
        import mlflow

        from driftloop.registry import Registry
        from driftloop.rollout import RolloutStore

        # the registry resolves a models:/ source through the process's tracking URI
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        registry = Registry(self.settings)
        good = registry.client.get_model_version(registry.name, champion)
        drill = registry.register(
            good.source,
            good.run_id,
            f"demo-latency-drill-{champion}",
            {"driftloop.drill.latency_ms": str(DRILL_LATENCY_MS), "reason": "latency drill"},
            model_id=getattr(good, "model_id", None),
        )
        version = str(drill.version)
        run_id = self.trigger("deploy_model", {"version": version, "reason": "latency drill: must roll back"})
        self.say(
            f"REST: forced a rollout of v{version}, a copy of the champion that answers "
            f"{DRILL_LATENCY_MS} ms late"
        )
        run = self.wait_run("deploy_model", run_id, timeout=600)
        phases = [r.phase for r in RolloutStore(self.settings).records() if r.version == version]
        self.report.facts["drill"] = {"version": version, "run_state": run["state"], "phases": phases}
        self.report.mark("drill_over")
        last = phases[-1] if phases else "none"
        self.say(
            f"deploy_model: drill v{version} ended {last}; the run is {run['state']} (red when rolled back)"
        )


def describe_record(record: Any) -> str:
    """One rollout transition as a line a person reads: the step, and a window's verdict with its figures."""
    details = record.details
    verdict = details.get("verdict")
    if record.phase == "window" and isinstance(verdict, dict):
        m = {"canary_requests": 0.0, "canary_error_rate": 0.0} | verdict.get("metrics", {})
        nan = float("nan")
        outcome = str(verdict.get("outcome", "?")).upper()
        line = (
            f"step {record.step + 1} ({record.weight:>3}% canary) window: {outcome:4} "
            f"canary {m['canary_requests']:.0f} req, errors {m['canary_error_rate']:.1%}, "
            f"p99 {m.get('canary_p99_ms') or nan:.1f} ms (stable {m.get('stable_p99_ms') or nan:.1f}), "
            f"score PSI {m.get('score_psi', nan):.3f}"
        )
        reasons = verdict.get("reasons") or []
        return line + (f" — {'; '.join(reasons)}" if reasons and verdict.get("outcome") != "pass" else "")
    if record.phase == "step":
        return f"step {record.step + 1}: canary weight {record.weight}%"
    reasons = "; ".join(str(r) for r in details.get("reasons") or [details.get("reason")] if r)
    return f"{record.phase.upper()} — {reasons}" if reasons else record.phase.upper()
