"""Names of the lake's tables and URI spellings, importable without any heavy dependency.

DAG files and Assets import this at parse time, so it must stay free of Spark, pandas and delta-rs.
"""

from __future__ import annotations

BRONZE_EVENTS = "bronze_events"
BRONZE_LABELS = "bronze_labels"
QUARANTINE = "quarantine"
FEATURES = "features"


def delta_rs_uri(uri: str) -> str:
    """delta-rs and pyarrow speak s3://, Spark's Hadoop connector s3a://: same object."""
    return "s3://" + uri.removeprefix("s3a://") if uri.startswith("s3a://") else uri


PREDICTION_LOG = "prediction_log"
ROLLOUTS = "rollouts"
DRIFT_METRICS = "drift_metrics"
RETRAIN_TRIGGERS = "retrain_triggers"
FEEDBACK = "feedback"
APPROVALS = "approvals"
