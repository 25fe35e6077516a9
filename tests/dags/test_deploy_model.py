"""deploy_model end to end with ``dag.test()``: the deferrable canary rollout on the real local target."""

from __future__ import annotations

import threading

import pytest

from driftloop.processes import free_port
from tests.dags.test_dag_runs import _asset_events, airflow_db, dagbag  # noqa: F401 (fixtures)
from tests.integration.test_rollout import Traffic
from tests.models import register_model

pytestmark = pytest.mark.slow


@pytest.fixture
def rollout_env(settings, monkeypatch):
    """Compressed rollout settings in the environment, where the DAG's tasks read them."""
    from driftloop.config import get_settings

    for name, value in {
        "DRIFTLOOP_ROLLOUT__STEPS": "[25, 100]",
        "DRIFTLOOP_ROLLOUT__ANALYSIS_INTERVAL_S": "3",
        "DRIFTLOOP_ROLLOUT__MIN_REQUESTS": "60",
        "DRIFTLOOP_ROLLOUT__MAX_WINDOWS_PER_STEP": "8",
        "DRIFTLOOP_ROLLOUT__LATENCY_SLACK_MS": "40",
        "DRIFTLOOP_SERVING__SPLITTER_PORT": str(free_port()),
        "DRIFTLOOP_SERVING__LOG_FLUSH_SECONDS": "0.5",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_deploy_model_canaries_the_challenger_and_promotes_it(rollout_env, dagbag):  # noqa: F811
    from airflow.utils.state import DagRunState

    from driftloop.deploy.local import LocalTarget
    from driftloop.registry import Registry
    from driftloop.rollout import RolloutStore

    settings = rollout_env
    champion = register_model(settings, "good", alias="champion", seed=0)
    challenger = register_model(settings, "good", alias="challenger", seed=5)
    target = LocalTarget(settings)
    try:
        target.deploy("stable", champion)
        traffic = Traffic(target.endpoint).start()
        try:
            run = dagbag.get_dag("deploy_model").test(run_conf={"reason": "dag test"})
        finally:
            traffic.stop()
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert run.state == DagRunState.SUCCESS, states
        assert set(states.values()) == {"success"}, states

        registry = Registry(settings)
        assert str(registry.alias_version("champion").version) == challenger
        assert str(registry.alias_version("previous").version) == champion
        phases = [(r.phase, r.weight) for r in RolloutStore(settings).records(run.run_id)]
        assert ("step", 25) in phases
        assert ("step", 100) in phases
        assert phases[-1] == ("promoted", 100)
        assert target.status().variants["stable"].model_version == challenger
        assert traffic.failed == 0, traffic.statuses
        assert any(e.get("version") == challenger for e in _asset_events("driftloop.champion"))
    finally:
        target.stop_all()


@pytest.mark.parametrize(("action", "phase"), [("abort", "rolled_back"), ("promote", "promoted")])
def test_an_operator_aborts_or_promotes_a_running_canary_through_control_rollout(
    rollout_env,
    dagbag,  # noqa: F811
    action,
    phase,
    monkeypatch,
):
    import threading

    from airflow.utils.state import DagRunState

    from driftloop.config import get_settings
    from driftloop.deploy.local import LocalTarget
    from driftloop.registry import Registry
    from driftloop.rollout import Rollout

    # windows so long that only the operator's command can end the first step
    monkeypatch.setenv("DRIFTLOOP_ROLLOUT__ANALYSIS_INTERVAL_S", "600")
    get_settings.cache_clear()
    settings = get_settings()
    champion = register_model(settings, "good", alias="champion", seed=0)
    challenger = register_model(settings, "good", alias="challenger", seed=5)
    target = LocalTarget(settings)
    outcome: dict = {}
    try:
        target.deploy("stable", champion)
        rollout = Rollout(settings, f"operator-{action}", target, Registry(settings))
        driver = threading.Thread(
            target=lambda: outcome.update(record=rollout.drive(challenger, "test", poll_s=0.5)), daemon=True
        )
        driver.start()
        deadline = threading.Event()
        while (
            rollout.store.state(rollout.rollout_id) is None
            or rollout.store.state(rollout.rollout_id).phase != "step"
        ):
            assert driver.is_alive(), "the rollout ended before its first step"
            deadline.wait(0.3)

        run = dagbag.get_dag("control_rollout").test(run_conf={"action": action, "reason": "operator test"})
        assert run.state == DagRunState.SUCCESS
        driver.join(timeout=120)
        assert not driver.is_alive(), "the rollout did not act on the command"
        record = outcome["record"]
        assert record.phase == phase
        assert target.status().canary_weight == 0
        assert "canary" not in target.status().variants
        champion_now = str(Registry(settings).alias_version("champion").version)
        assert champion_now == (challenger if action == "promote" else champion)
        reasons = record.details.get("reasons") or [record.details.get("reason")]
        assert any("operator test" in r for r in reasons), reasons
    finally:
        target.stop_all()


def _decide_when_asked(settings, version: str, decision: str) -> threading.Thread:
    """A reviewer who waits for deploy_model's approval request, then decides as review_challenger does."""
    from driftloop.approval import ApprovalStore, review
    from driftloop.registry import Registry

    def reviewer():
        store = ApprovalStore(settings)
        while not store.status(version).awaiting:
            threading.Event().wait(0.3)
        review(
            settings, Registry(settings), version, decision, "airflow-user:reviewer", "dag test", "review-1"
        )

    thread = threading.Thread(target=reviewer, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def approval_required(rollout_env, monkeypatch):
    from driftloop.config import get_settings

    monkeypatch.setenv("DRIFTLOOP_APPROVAL__REQUIRE_APPROVAL", "true")
    monkeypatch.setenv("DRIFTLOOP_APPROVAL__POLL_SECONDS", "0.5")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_with_approval_required_an_approved_challenger_is_canaried(approval_required, dagbag):  # noqa: F811
    from airflow.utils.state import DagRunState

    from driftloop.approval import ApprovalStore
    from driftloop.deploy.local import LocalTarget
    from driftloop.registry import Registry
    from driftloop.rollout import RolloutStore

    settings = approval_required
    champion = register_model(settings, "good", alias="champion", seed=0)
    challenger = register_model(settings, "good", alias="challenger", seed=5)
    target = LocalTarget(settings)
    try:
        target.deploy("stable", champion)
        reviewer = _decide_when_asked(settings, challenger, "approve")
        traffic = Traffic(target.endpoint).start()
        try:
            run = dagbag.get_dag("deploy_model").test(run_conf={"reason": "approval dag test"})
        finally:
            traffic.stop()
        reviewer.join(timeout=60)
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert run.state == DagRunState.SUCCESS, states
        assert set(states.values()) == {"success"}, states

        records = [(r.kind, r.actor, r.run_id) for r in ApprovalStore(settings).records(challenger)]
        assert records == [
            ("requested", f"airflow:deploy_model:{run.run_id}", run.run_id),
            ("approved", "airflow-user:reviewer", "review-1"),
        ]
        assert RolloutStore(settings).records(run.run_id)[-1].phase == "promoted"
        assert str(Registry(settings).alias_version("champion").version) == challenger
    finally:
        target.stop_all()


def test_with_approval_required_a_rejected_challenger_is_never_canaried(approval_required, dagbag):  # noqa: F811
    from airflow.utils.state import DagRunState

    from driftloop.deploy.local import LocalTarget
    from driftloop.registry import Registry
    from driftloop.rollout import RolloutStore

    settings = approval_required
    champion = register_model(settings, "good", alias="champion", seed=0)
    challenger = register_model(settings, "good", alias="challenger", seed=5)
    target = LocalTarget(settings)
    try:
        target.deploy("stable", champion)
        reviewer = _decide_when_asked(settings, challenger, "reject")
        run = dagbag.get_dag("deploy_model").test(run_conf={"reason": "approval dag test"})
        reviewer.join(timeout=60)

        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert run.state == DagRunState.SUCCESS, states
        assert states["resolve_release"] == "success"
        assert {states[t] for t in ("await_approval", "build_bento", "canary_rollout", "report_rollout")} == {
            "skipped"
        }, states
        assert RolloutStore(settings).records(run.run_id) == []
        registry = Registry(settings)
        tags = registry.client.get_model_version(registry.name, challenger).tags
        assert (tags["driftloop.status"], tags["driftloop.rejected_by"]) == ("rejected", "approval")
        assert "airflow-user:reviewer: dag test" in tags["driftloop.rejection"]
        assert registry.alias_version("challenger") is None
        status = target.status()
        assert "canary" not in status.variants
        assert status.variants["stable"].model_version == champion
    finally:
        target.stop_all()
