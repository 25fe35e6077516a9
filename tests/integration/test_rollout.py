"""Canary rollouts on the real local target: BentoML servers behind HAProxy, real MLflow versions.

Traffic flows through the splitter the whole time; the rollout steps weights, analyses each
window from the servers' Prometheus counters and promotes or rolls back on its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from driftloop.config import RolloutSettings, ServingSettings, Settings
from driftloop.dataset import load_dataset_spec
from driftloop.deploy.local import LocalTarget
from driftloop.processes import free_port
from driftloop.registry import Registry
from driftloop.rollout import Rollout, RolloutStore
from driftloop.traffic import BackgroundLoad
from tests.models import register_model, request_rows

pytestmark = pytest.mark.slow

SPEC = load_dataset_spec()
# many distinct rows: the splitter picks every n-th request, and a short cycle would hand the
# canary the same few rows over and over (an effective sample of a dozen)
ROWS = request_rows(SPEC, 5000, seed=11)
# Compressed windows; the latency slack is wide because this 2-core machine also runs Spark,
# Airflow and the other servers, and a freshly started canary's first requests are slower.
RULES = RolloutSettings(
    steps=(10, 50, 100), analysis_interval_s=3.0, min_requests=60, max_windows_per_step=8, latency_slack_ms=40
)


def Traffic(url: str) -> BackgroundLoad:
    return BackgroundLoad(url, ROWS, concurrency=4, rate=200)


@dataclass
class Env:
    settings: Settings
    target: LocalTarget
    registry: Registry
    champion: str


def _settings(root: Path) -> Settings:
    return Settings(
        data_dir=root,
        rollout=RULES,
        serving=ServingSettings(log_flush_seconds=0.5, splitter_port=free_port()),
    )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A champion served as stable behind the splitter, in a fresh lake and registry."""
    settings = _settings(tmp_path / "data")
    champion = register_model(settings, "good", alias="champion", seed=0)
    target = LocalTarget(settings)
    try:
        target.deploy("stable", champion)
        yield Env(settings, target, Registry(settings), champion)
    finally:
        target.stop_all()


def _drive(env: Env, rollout_id: str, version: str) -> tuple[object, list[tuple[int, int, str]]]:
    windows: list[tuple[int, int, str]] = []
    rollout = Rollout(env.settings, rollout_id, env.target, env.registry)
    final = rollout.drive(
        version,
        "test",
        on_window=lambda record, verdict, _w: windows.append((record.step, record.weight, verdict.outcome)),
    )
    return final, windows


def test_a_good_challenger_goes_through_every_step_and_is_promoted(env: Env):
    candidate = register_model(env.settings, "good", alias="challenger", seed=5)
    traffic = Traffic(env.target.endpoint).start()
    try:
        final, windows = _drive(env, "rollout-good", candidate)
    finally:
        traffic.stop()

    assert final.phase == "promoted", final.details
    passed = [weight for _step, weight, outcome in windows if outcome == "pass"]
    assert passed == [10, 50, 100]
    assert str(env.registry.alias_version("champion").version) == candidate
    assert str(env.registry.alias_version("previous").version) == env.champion
    assert env.registry.alias_version("challenger") is None
    moves = [(m.alias, m.version) for m in env.registry.history() if m.run_key == "rollout-good"]
    assert ("champion", candidate) in moves
    status = env.target.status()
    assert status.variants["stable"].model_version == candidate
    assert "canary" not in status.variants
    # both versions answered, and not one request failed across three weight changes and a swap
    assert traffic.failed == 0, traffic.statuses
    versions = {key.split(":")[1] for key in traffic.answered_by}
    assert {env.champion, candidate} <= versions


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("broken", "error rate"), ("garbage", "PSI"), ("slow", "p99 latency")],
)
def test_a_bad_challenger_is_rolled_back_within_one_analysis_window(env: Env, kind: str, reason: str):
    candidate = register_model(env.settings, kind, alias="challenger", seed=7)
    traffic = Traffic(env.target.endpoint).start()
    try:
        final, windows = _drive(env, f"rollout-{kind}", candidate)
    finally:
        traffic.stop()

    assert final.phase == "rolled_back"
    assert any(reason in r for r in final.details["reasons"]), final.details
    assert windows[-1][:2] == (0, 10), "judged and stopped at the first step"
    records = RolloutStore(env.settings).records(f"rollout-{kind}")
    step_began = next(r.at for r in records if r.phase == "step")
    assert (final.at - step_began).total_seconds() < RULES.analysis_interval_s * 2 + 10
    tags = env.registry.client.get_model_version(env.registry.name, candidate).tags
    assert tags["driftloop.status"] == "rejected"
    assert reason in tags["driftloop.rejection"]
    assert str(env.registry.alias_version("champion").version) == env.champion
    assert env.registry.alias_version("challenger") is None
    status = env.target.status()
    assert "canary" not in status.variants
    assert status.variants["stable"].model_version == env.champion
    # the blast radius: only the canary's 10% share can have failed
    assert traffic.failed <= 0.2 * traffic.total, traffic.statuses


_DRIVER = """
import sys
from driftloop.config import get_settings
from driftloop.deploy.local import LocalTarget
from driftloop.registry import Registry
from driftloop.rollout import Rollout
settings = get_settings()
Rollout(settings, "rollout-killed", LocalTarget(settings), Registry(settings)).drive(sys.argv[1], "driver")
"""


def _env_vars(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "DRIFTLOOP_DATA_DIR": str(settings.data_dir),
        "DRIFTLOOP_ROLLOUT__STEPS": "[10, 50, 100]",
        "DRIFTLOOP_ROLLOUT__ANALYSIS_INTERVAL_S": str(RULES.analysis_interval_s),
        "DRIFTLOOP_ROLLOUT__MIN_REQUESTS": str(RULES.min_requests),
        "DRIFTLOOP_ROLLOUT__MAX_WINDOWS_PER_STEP": str(RULES.max_windows_per_step),
        "DRIFTLOOP_ROLLOUT__LATENCY_SLACK_MS": str(RULES.latency_slack_ms),
        "DRIFTLOOP_SERVING__SPLITTER_PORT": str(settings.serving.splitter_port),
        "DRIFTLOOP_SERVING__LOG_FLUSH_SECONDS": "0.5",
    }


def _phases(store: RolloutStore) -> list[tuple[str, int, str]]:
    return [(r.phase, r.weight, r.detail[:300]) for r in store.records()]


def test_a_rollout_killed_mid_step_resumes_and_ends_consistent(env: Env):
    candidate = register_model(env.settings, "good", alias="challenger", seed=9)
    store = RolloutStore(env.settings)
    traffic = Traffic(env.target.endpoint).start()
    try:
        driver = subprocess.Popen(
            [sys.executable, "-c", _DRIVER, candidate], env=_env_vars(env.settings), start_new_session=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = store.state("rollout-killed")
            if state is not None and state.phase == "step" and state.weight == 50:
                break
            assert driver.poll() is None, f"the driver ended before the second step: {_phases(store)}"
            time.sleep(0.2)
        else:
            pytest.fail("the rollout never reached its second step")
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
        # nobody is watching now: traffic is still split until someone resumes
        assert env.target.status().canary_weight == 50

        final, windows = _drive(env, "rollout-killed", candidate)
    finally:
        traffic.stop()

    assert final.phase == "promoted"
    assert [w for _s, w, outcome in windows if outcome == "pass"] == [50, 100], (
        "resumed at the step it died in"
    )
    status = env.target.status()
    assert status.variants["stable"].model_version == candidate
    assert "canary" not in status.variants
    assert str(env.registry.alias_version("champion").version) == candidate
    assert traffic.failed == 0, traffic.statuses
