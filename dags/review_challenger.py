"""
### review_challenger

A person's approval or rejection of the challenger awaiting its canary, when
`DRIFTLOOP_APPROVAL__REQUIRE_APPROVAL=true` makes `deploy_model` wait in `await_approval`.
Triggered from the UI's *Trigger* form or the REST API
(`POST /api/v2/dags/review_challenger/dagRuns` with
`conf = {"version": "7", "decision": "approve" | "reject", "reason": "..."}`).

- **approve** — the waiting `deploy_model` run starts the canary within a few seconds;
- **reject** — the version is tagged `driftloop.status=rejected` and loses the `challenger`
  alias; the waiting run ends without a canary.

Who decided (the triggering user) and why are appended to the lake's `approvals` table. The
run fails at once, saying why, when the version is not the challenger, nobody is waiting for
its approval, or it was already decided (a decision is final).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag, task

from driftloop.config import get_settings


@dag(
    dag_id="review_challenger",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
    tags=["driftloop", "serving", "operator"],
    doc_md=__doc__,
    params={
        "version": Param(
            "",
            type="string",
            pattern=r"^[0-9]+$",
            description="Registry version awaiting approval (the current challenger).",
        ),
        "decision": Param(
            "approve", type="string", enum=["approve", "reject"], description="Approve or reject its canary."
        ),
        "reason": Param(
            "", type="string", minLength=3, maxLength=500, description="Why (recorded with the decision)."
        ),
    },
)
def review_challenger():
    @task
    def record_decision(params=None, dag_run=None) -> dict:
        """Record the decision with who and why; a rejection tags the version rejected."""
        from airflow.sdk.exceptions import AirflowFailException

        from driftloop.approval import ApprovalError, review
        from driftloop.registry import Registry

        settings = get_settings()
        actor = f"airflow-user:{getattr(dag_run, 'triggering_user_name', None) or 'unknown'}"
        try:
            record = review(
                settings,
                Registry(settings),
                params["version"],
                params["decision"],
                actor,
                params["reason"],
                dag_run.run_id,
            )
        except ApprovalError as refused:  # nothing to decide: retrying will not change that
            raise AirflowFailException(str(refused)) from refused
        return {"version": record.version, "decision": record.kind, "actor": record.actor}

    record_decision()


review_challenger()
