"""deploy_model end to end with ``dag.test()``: the deferrable canary rollout on the real local target."""

from __future__ import annotations

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
