"""
### record_feedback

A fraud analyst marks served decisions wrong, from the UI's *Trigger* form or the REST API
(`POST /api/v2/dags/record_feedback/dagRuns` with `conf`):

```json
{"items": [{"request_id": "632a…", "kind": "false_positive", "reason": "customer confirmed"}],
 "note": "weekly review"}
```

`kind` is `false_positive` (flagged, but legitimate: label 0) or `false_negative` (let through,
but fraud: label 1). A conf that does not match this schema (missing field, unknown kind, more
than `DRIFTLOOP_FEEDBACK__MAX_ITEMS` items) is refused by Airflow when the run is created (400).

Every item lands in the `feedback` Delta table with the triggering user, the run id as the
submission id, and `accepted` or `rejected` with the reason: unknown request id, a kind that
contradicts the logged decision, a request that already has accepted feedback, or a repeat in
the same submission. Rejections are recorded data, not a failure: the run succeeds and logs
each one. A retried task writes nothing twice. Accepted feedback labels its event for the
canary analysis and the performance check; a `driftloop.feedback` Asset event carries the counts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag, task

from driftloop.airflow.assets import feedback_asset
from driftloop.config import get_settings

FEEDBACK = feedback_asset()

# the REST contract of one item; tests/unit/test_feedback.py keeps it equal to FeedbackItem's
ITEM_SCHEMA = {
    "type": "object",
    "required": ["request_id", "kind", "reason"],
    "additionalProperties": False,
    "properties": {
        "request_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "kind": {"type": "string", "enum": ["false_positive", "false_negative"]},
        "reason": {"type": "string", "minLength": 3, "maxLength": 500},
    },
}


@dag(
    dag_id="record_feedback",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    # one submission at a time: each one's duplicate check sees every earlier one
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
    tags=["driftloop", "monitoring", "operator"],
    doc_md=__doc__,
    params={
        "items": Param(
            type="array",
            minItems=1,
            maxItems=get_settings().feedback.max_items,
            items=ITEM_SCHEMA,
            description="Decisions marked wrong: request_id, kind (false_positive | false_negative), reason.",
        ),
        "note": Param(
            None, type=["null", "string"], maxLength=500, description="Optional note on the whole submission."
        ),
    },
)
def record_feedback():
    @task(outlets=[FEEDBACK])
    def record_submission(params=None, dag_run=None, outlet_events=None) -> dict:
        """Validate and record every item with who sent it; rejected items are kept with the reason."""
        from airflow.sdk.exceptions import AirflowFailException

        from driftloop.feedback import FeedbackError
        from driftloop.feedback import record_feedback as record
        from driftloop.lake.names import FEEDBACK as FEEDBACK_TABLE

        settings = get_settings()
        try:
            result = record(
                settings,
                params["items"],
                submission_id=dag_run.run_id,
                submitted_by=f"airflow-user:{getattr(dag_run, 'triggering_user_name', None) or 'unknown'}",
                received_at=dag_run.run_after,
                note=params["note"],
            )
        except FeedbackError as refused:  # the submission as a whole is unusable: a retry cannot help
            raise AirflowFailException(str(refused)) from refused
        outlet_events[FEEDBACK].extra = result.counts() | {"table_uri": settings.table_uri(FEEDBACK_TABLE)}
        return result.summary()

    record_submission()


record_feedback()
