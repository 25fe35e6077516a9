"""
### control_rollout

An operator's hand on the rollout, through the UI's *Trigger* form or the REST API
(`POST /api/v2/dags/control_rollout/dagRuns` with `conf`):

- **promote** — the running canary skips its remaining steps and becomes champion;
- **abort** — the running canary is rolled back now (weight 0, stopped, tagged rejected);
- **revert** — after a promotion, the `previous` version serves again and becomes champion.

`promote` and `abort` are recorded in the rollout's state and carried out by the running
`deploy_model` analysis within a few seconds; `revert` acts directly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag, task

from driftloop.config import get_settings


@dag(
    dag_id="control_rollout",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
    tags=["driftloop", "serving", "operator"],
    doc_md=__doc__,
    params={
        "action": Param(
            "abort", type="string", enum=["promote", "abort", "revert"], description="What to do."
        ),
        "reason": Param(
            "", type="string", minLength=3, maxLength=500, description="Why (recorded with the action)."
        ),
    },
)
def control_rollout():
    @task
    def act(params=None, dag_run=None) -> dict:
        """Carry out the operator's action, recording who asked and why."""
        from airflow.sdk.exceptions import AirflowFailException

        from driftloop.deploy import get_target
        from driftloop.registry import Registry
        from driftloop.rollout import RolloutError, request_command, revert_champion

        settings = get_settings()
        actor = f"airflow-user:{getattr(dag_run, 'triggering_user_name', None) or 'unknown'}"
        try:
            if params["action"] == "revert":
                version = revert_champion(
                    settings,
                    get_target(settings),
                    Registry(settings),
                    actor,
                    params["reason"],
                    dag_run.run_id,
                )
                return {"action": "revert", "champion": version}
            record = request_command(settings, params["action"], actor, params["reason"])
        except RolloutError as refused:  # nothing to act on: retrying will not change that
            raise AirflowFailException(str(refused)) from refused
        return {"action": params["action"], "rollout_id": record.rollout_id, "version": record.version}

    act()


control_rollout()
