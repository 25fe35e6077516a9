"""The approval step on a real Delta ``approvals`` table and a real MLflow registry.

Requests, decisions, refusals and timeouts through the library, and the approval trigger's run
loop driven with asyncio as the triggerer drives it.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest

from driftloop.approval import (
    TIMED_OUT,
    ApprovalError,
    ApprovalStore,
    expire,
    request_approval,
    review,
)
from driftloop.config import Settings, get_settings
from driftloop.registry import CHALLENGER, Registry
from tests.models import register_model

_models = itertools.count()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """One lake and MLflow store for the module (creating an MLflow store costs ~8 s)."""
    return tmp_path_factory.mktemp("approval") / "data"


@pytest.fixture
def approval_env(store_dir, monkeypatch) -> Settings:
    """A registered model of its own (champion + challenger) and settings the trigger also reads."""
    monkeypatch.setenv("DRIFTLOOP_DATA_DIR", str(store_dir))
    monkeypatch.setenv("DRIFTLOOP_REGISTERED_MODEL", f"approval-test-{next(_models)}")
    get_settings.cache_clear()
    settings = get_settings()
    register_model(settings, "good", alias="champion", seed=0)
    register_model(settings, "good", alias=CHALLENGER, seed=5)
    yield settings
    get_settings.cache_clear()


def _challenger(settings: Settings) -> str:
    return str(Registry(settings).alias_version(CHALLENGER).version)


def _rows(settings: Settings) -> int:
    """Rows of this test's model in the (module-wide) approvals table."""
    return len(ApprovalStore(settings).records())


def test_a_request_waits_until_approved_and_records_who_and_why(approval_env):
    settings = approval_env
    version = _challenger(settings)
    registry = Registry(settings)

    asked = request_approval(settings, version, "deploy-run-1")
    assert asked.awaiting
    assert asked.request.deadline - asked.request.at == timedelta(
        minutes=settings.approval.approval_timeout_minutes
    )
    # a retried task keeps the first deadline and writes no second request
    again = request_approval(settings, version, "deploy-run-1", now=asked.request.at + timedelta(hours=1))
    assert again.request.deadline == asked.request.deadline
    assert _rows(settings) == 1

    record = review(
        settings, registry, version, "approve", "airflow-user:ana", "holdout report ok", "review-1"
    )
    assert (record.kind, record.actor, record.reason) == ("approved", "airflow-user:ana", "holdout report ok")
    status = ApprovalStore(settings).status(version)
    assert status.decision == record
    assert not status.awaiting
    tags = registry.client.get_model_version(registry.name, version).tags
    assert tags["driftloop.approved_by"] == "airflow-user:ana: holdout report ok"
    assert _challenger(settings) == version
    # a later deploy run of the same version needs no second approval
    assert request_approval(settings, version, "deploy-run-2").decision == record


def test_a_rejection_tags_the_version_and_a_retry_writes_nothing_twice(approval_env):
    settings = approval_env
    version = _challenger(settings)
    registry = Registry(settings)
    request_approval(settings, version, "deploy-run-1")

    first = review(settings, registry, version, "reject", "airflow-user:ana", "trained on a bad week", "r-1")
    rows = _rows(settings)
    retried = review(
        settings, registry, version, "reject", "airflow-user:ana", "trained on a bad week", "r-1"
    )
    assert retried == first
    ApprovalStore(settings).append(first)  # a task that died after its commit, retried
    assert _rows(settings) == rows == 2  # the request and one decision

    tags = registry.client.get_model_version(registry.name, version).tags
    assert tags["driftloop.status"] == "rejected"
    assert tags["driftloop.rejected_by"] == "approval"
    assert "trained on a bad week" in tags["driftloop.rejection"]
    assert registry.alias_version(CHALLENGER) is None
    (move,) = [m for m in registry.history() if m.alias == CHALLENGER and m.version is None]
    assert (move.previous_version, move.actor) == (version, "airflow-user:ana")


def test_refusals_say_why_and_record_nothing(approval_env):
    settings = approval_env
    version = _challenger(settings)
    champion = str(Registry(settings).alias_version("champion").version)
    registry = Registry(settings)

    with pytest.raises(ApprovalError, match="is the challenger but is not awaiting approval"):
        review(settings, registry, version, "approve", "airflow-user:ana", "looks fine", "r-1")
    with pytest.raises(ApprovalError, match=rf"version {champion} is not the current challenger"):
        review(settings, registry, champion, "approve", "airflow-user:ana", "looks fine", "r-2")
    assert _rows(settings) == 0

    request_approval(settings, version, "deploy-run-1")
    review(settings, registry, version, "approve", "airflow-user:ana", "looks fine", "r-3")
    with pytest.raises(ApprovalError, match="already approved by airflow-user:ana") as refused:
        review(settings, registry, version, "reject", "airflow-user:bob", "changed my mind", "r-4")
    assert "control_rollout" in str(refused.value)
    assert [r.kind for r in ApprovalStore(settings).records(version)] == ["requested", "approved"]


def test_a_timeout_rejects_but_a_decision_taken_first_wins(approval_env):
    settings = approval_env
    version = _challenger(settings)
    registry = Registry(settings)
    request_approval(settings, version, "deploy-run-1")

    record = expire(settings, registry, version, "deploy-run-1")
    assert (record.kind, record.reason) == ("rejected", TIMED_OUT)
    tags = registry.client.get_model_version(registry.name, version).tags
    assert tags["driftloop.status"] == "rejected"
    assert TIMED_OUT in tags["driftloop.rejection"]
    assert registry.alias_version(CHALLENGER) is None
    # a second expiry (a retried task) returns the same rejection
    assert expire(settings, registry, version, "deploy-run-1") == record
    assert _rows(settings) == 2

    approved = register_model(settings, "good", alias=CHALLENGER, seed=7)
    request_approval(settings, approved, "deploy-run-2")
    human = review(settings, registry, approved, "approve", "airflow-user:ana", "ok", "r-1")
    assert expire(settings, registry, approved, "deploy-run-2") == human


# --- the trigger, driven as the triggerer drives it ------------------------------------------------


def _trigger(version: str, deadline: datetime):
    from airflow.sdk.module_loading import import_string

    from driftloop.airflow.triggers import ApprovalTrigger

    trigger = ApprovalTrigger(version=version, deadline=deadline.isoformat(), poll_seconds=0.1)
    classpath, kwargs = trigger.serialize()
    # the triggerer rebuilds the trigger from serialize(): it must round-trip
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    return rebuilt


async def _first_event(trigger, decide=None):
    events = trigger.run()
    waiting = asyncio.ensure_future(anext(events))
    if decide is not None:
        await asyncio.sleep(0.3)  # let it poll: with no decision yet it must keep waiting
        assert not waiting.done()
        await asyncio.to_thread(decide)
    event = await asyncio.wait_for(waiting, timeout=120)
    await events.aclose()
    return event.payload


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_the_trigger_fires_when_someone_decides(approval_env, decision):
    settings = approval_env
    version = _challenger(settings)
    request = request_approval(settings, version, "deploy-run-1").request
    trigger = _trigger(version, request.deadline)

    def decide():
        review(settings, Registry(settings), version, decision, "airflow-user:ana", "reviewed", "r-1")

    payload = asyncio.run(_first_event(trigger, decide))
    assert payload == {
        "decision": "approved" if decision == "approve" else "rejected",
        "version": version,
        "actor": "airflow-user:ana",
        "reason": "reviewed",
    }


def test_the_trigger_times_out_at_the_deadline_and_leaves_the_rejection_to_the_operator(approval_env):
    settings = approval_env
    version = _challenger(settings)
    request_approval(settings, version, "deploy-run-1")
    trigger = _trigger(version, datetime.now(UTC) + timedelta(seconds=1))

    payload = asyncio.run(_first_event(trigger))
    assert payload == {"decision": "timed_out", "version": version}
    assert ApprovalStore(settings).status(version).awaiting  # nothing recorded by the trigger
