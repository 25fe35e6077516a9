"""review_challenger with ``dag.test()``: a recorded decision, and refusals that say why."""

from __future__ import annotations

import pytest

from tests.dags.test_dag_runs import airflow_db, dagbag  # noqa: F401 (fixtures)
from tests.models import register_model

pytestmark = pytest.mark.slow


def _review(dagbag, capfd, version: str, decision: str, reason: str = "dag test"):  # noqa: F811
    """Run review_challenger; its state, task states and the task log (printed by dag.test)."""
    capfd.readouterr()
    run = dagbag.get_dag("review_challenger").test(
        run_conf={"version": version, "decision": decision, "reason": reason}
    )
    captured = capfd.readouterr()
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}, captured.out + captured.err


def test_a_reviewer_approves_the_waiting_challenger_and_a_second_decision_is_refused(
    settings,
    dagbag,  # noqa: F811
    capfd,
):
    from airflow.utils.state import DagRunState

    from driftloop.approval import ApprovalStore, request_approval

    champion = register_model(settings, "good", alias="champion", seed=0)
    challenger = register_model(settings, "good", alias="challenger", seed=5)
    store = ApprovalStore(settings)

    # nobody asked yet: refused, nothing recorded
    run, states, log = _review(dagbag, capfd, challenger, "approve")
    assert run.state == DagRunState.FAILED, states
    assert "not awaiting approval" in log
    assert store.records() == []

    request_approval(settings, challenger, "deploy-run-1")
    run, states, log = _review(dagbag, capfd, champion, "approve")
    assert run.state == DagRunState.FAILED, states
    assert f"version {champion} is not the current challenger" in log

    run, states, log = _review(dagbag, capfd, challenger, "approve", "holdout and recent window look right")
    assert run.state == DagRunState.SUCCESS, states
    decision = store.status(challenger).decision
    assert decision.kind == "approved"
    assert decision.actor.startswith("airflow-user:")
    assert (decision.reason, decision.run_id) == ("holdout and recent window look right", run.run_id)

    run, states, log = _review(dagbag, capfd, challenger, "reject", "second thoughts")
    assert run.state == DagRunState.FAILED, states
    assert states["record_decision"] == "failed"  # AirflowFailException: no retry
    assert f"version {challenger} was already approved" in log
    assert [r.kind for r in store.records(challenger)] == ["requested", "approved"]


@pytest.mark.parametrize(
    "conf",
    [
        {"version": "v7", "decision": "approve", "reason": "ok then"},
        {"version": "7", "decision": "maybe", "reason": "ok then"},
        {"version": "7", "decision": "reject", "reason": ""},
    ],
)
def test_a_malformed_decision_is_refused_before_a_run_starts(dagbag, conf):  # noqa: F811
    from airflow.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        dagbag.get_dag("review_challenger").test(run_conf=conf)
