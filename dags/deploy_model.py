"""
### deploy_model

Rolls a gated challenger out as a canary and promotes it or rolls it back — no person needed,
though one can step in at any time (`control_rollout`).

1. **resolve_release** — which version to roll out: the triggering `driftloop.challenger` event,
   the `version` parameter of a REST-triggered run, or the `challenger` alias. When the trigger is
   a first champion (`driftloop.champion`), it only makes sure stable serves it and stops there.
2. **await_approval** — with `DRIFTLOOP_APPROVAL__REQUIRE_APPROVAL=true`, holds the canary until
   someone approves the version through `review_challenger` (REST or UI), waiting in the
   triggerer. Reject, or nobody deciding within `DRIFTLOOP_APPROVAL__APPROVAL_TIMEOUT_MINUTES`
   (`approval timed out`), tags the version rejected and skips the rest of the run with the
   reason: no canary. Off (the default): passes at once.
3. **build_bento** — builds the BentoML service (the artifact an image is made from).
4. **canary_rollout** — deploys the canary and steps its traffic weight through the configured
   ladder (`DRIFTLOOP_ROLLOUT__STEPS`, e.g. 10 → 50 → 100). At each step a deferrable analysis
   compares canary with stable over a window (error rate, p99 latency, score PSI, online
   precision/recall once labels arrive). Pass at the last step → promote (alias `champion`
   moves, the old one stays as `previous`); fail → canary weight 0, canary stopped, version
   tagged rejected with the failing metrics. State is persisted: a retry resumes, and a task
   that fails for good rolls the canary back.
5. **report_rollout** — emits the `driftloop.champion` Asset on promotion; fails the run (red in
   the UI, with the reasons) when the canary was rolled back.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag, task

from driftloop.airflow.approval import AwaitApprovalOperator
from driftloop.airflow.assets import challenger_asset, champion_asset
from driftloop.airflow.rollout import CanaryRolloutOperator, roll_back_on_failure
from driftloop.config import get_settings

CHALLENGER, CHAMPION = challenger_asset(), champion_asset()


@dag(
    dag_id="deploy_model",
    schedule=CHALLENGER | CHAMPION,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
    tags=["driftloop", "serving"],
    doc_md=__doc__,
    params={
        "version": Param(
            None,
            type=["null", "string"],
            pattern=r"^[0-9]+$",
            description="Registry version to roll out; empty: the triggering event or the challenger alias.",
        ),
        "reason": Param(
            None, type=["null", "string"], maxLength=500, description="Why this rollout was started."
        ),
    },
)
def deploy_model():
    @task
    def resolve_release(params=None, dag_run=None, triggering_asset_events=None) -> dict:
        """The version to canary, or only a stable deployment for a first champion."""
        from airflow.sdk.exceptions import AirflowSkipException

        from driftloop.deploy import get_target
        from driftloop.registry import Registry
        from driftloop.rollout import resolve_release

        settings = get_settings()
        events = {
            getattr(asset, "name", str(asset)): [event.extra for event in found]
            for asset, found in (triggering_asset_events or {}).items()
        }
        release = resolve_release(
            settings, Registry(settings), get_target(settings), params.get("version"), events
        )
        if release.version is None:
            raise AirflowSkipException(release.note)
        return {"version": release.version, "stable_version": release.stable_version, "note": release.note}

    @task
    def build_bento(release: dict) -> dict:
        """Build the BentoML service once per code revision (a no-op when the tag exists)."""
        from driftloop.servers import build_bento

        return {**release, "bento": build_bento(get_settings())}

    resolved = resolve_release()
    approval = AwaitApprovalOperator(
        task_id="await_approval",
        version="{{ ti.xcom_pull(task_ids='resolve_release')['version'] }}",
        request_id="{{ run_id }}",
    )
    release = build_bento(resolved)
    rollout = CanaryRolloutOperator(
        task_id="canary_rollout",
        version="{{ ti.xcom_pull(task_ids='build_bento')['version'] }}",
        rollout_id="{{ run_id }}",
        on_failure_callback=roll_back_on_failure,
    )

    @task(outlets=[CHAMPION])
    def report_rollout(outcome: dict, outlet_events=None) -> dict:
        """Announce a promotion; fail the run with the reasons when the canary was rolled back."""
        from airflow.sdk.exceptions import AirflowFailException

        if outcome["outcome"] != "promoted":
            raise AirflowFailException(
                f"version {outcome['version']} rolled back: {'; '.join(r for r in outcome['reasons'] if r)}"
            )
        outlet_events[CHAMPION].extra = {
            "version": outcome["version"],
            "previous": outcome["stable_version"],
            "rollout_id": outcome["rollout_id"],
        }
        return outcome

    resolved >> approval >> release >> rollout
    report_rollout(rollout.output)


deploy_model()
