"""What the operator view reads, written through the library as the DAGs write it: a canary
mid-rollout, monitored drift windows (one with an HTML report) and analysts' feedback."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from driftloop.config import Settings
from driftloop.feedback import ItemVerdict, LoggedDecision, feedback_rows
from driftloop.lake import tables
from driftloop.lake.names import FEEDBACK
from driftloop.monitoring import DATASET, SCORE, DriftReport, DriftResult, report_uri, write_drift
from driftloop.rollout import RolloutRecord, RolloutStore

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
ROLLOUT_ID = "rollout-ui-test"
# share of drifted features per window, oldest first; the last two breach the 0.3 threshold
DRIFT_SHARES = (0.0, 0.1, 0.1, 0.2, 0.45, 0.6)
WINDOW = timedelta(minutes=15)


def seed_rollout(settings: Settings, stable: str, canary: str, now: datetime = NOW) -> list[RolloutRecord]:
    """A canary of ``canary`` against ``stable`` that passed 10 % and is being judged at 50 %."""
    store = RolloutStore(settings)
    model = settings.registered_model
    at = now - timedelta(minutes=30)

    def record(phase: str, step: int, weight: int, minutes: int, detail: dict) -> RolloutRecord:
        return store.append(
            RolloutRecord(
                ROLLOUT_ID,
                model,
                canary,
                stable,
                phase,
                step,
                weight,
                at + timedelta(minutes=minutes),
                "deploy_model",
                json.dumps(detail),
            )
        )

    pass_verdict = {
        "outcome": "pass",
        "reasons": [],
        "metrics": {
            "canary_requests": 240,
            "canary_error_rate": 0.0,
            "canary_p99_ms": 8.5,
            "score_psi": 0.04,
        },
    }
    wait_verdict = {
        "outcome": "wait",
        "reasons": ["120 of 200 canary requests so far"],
        "metrics": {"canary_requests": 120, "canary_error_rate": 0.0, "canary_p99_ms": 9.1},
    }
    return [
        record("started", 0, 0, 0, {}),
        record("step", 0, 10, 1, {"window": 0}),
        record("window", 0, 10, 11, {"verdict": pass_verdict, "window": 1}),
        record("step", 1, 50, 12, {"window": 0}),
        record("window", 1, 50, 22, {"verdict": wait_verdict, "window": 1}),
    ]


def seed_drift(settings: Settings, version: str, now: datetime = NOW) -> list[DriftReport]:
    """One drift_metrics window per ``DRIFT_SHARES`` entry ending at ``now``; the last has a report."""
    threshold = settings.monitoring.share_of_drifted_features
    reports = []
    for index, share in enumerate(DRIFT_SHARES):
        end = now - WINDOW * (len(DRIFT_SHARES) - 1 - index)
        start = end - WINDOW
        drifted = ["amount", "channel"] if share >= threshold else []
        common = {"window_start": start, "window_end": end, "model_version": version, "rows": 500}
        results = (
            DriftResult(
                feature=DATASET,
                kind="dataset",
                method="share_of_drifted_features",
                score=share,
                threshold=threshold,
                drifted=share >= threshold,
                decisive=True,
                status="ok",
                detail={"drifted": drifted, "features": 10, "undecided": []},
                **common,
            ),
            DriftResult(
                feature=SCORE,
                kind="numeric",
                method="psi",
                score=share / 2,
                threshold=settings.monitoring.psi_threshold,
                drifted=share / 2 >= settings.monitoring.psi_threshold,
                decisive=True,
                status="ok",
                **common,
            ),
        )
        report = DriftReport(start, end, version, 500, "ok", results)
        write_drift(settings, report)
        reports.append(report)
    last = reports[-1]
    path = Path(report_uri(settings, version, last.window_start, last.window_end))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<html><body><h1>Data drift report</h1><p>stand-in for Evidently's HTML</p></body></html>"
    )
    return reports


def seed_feedback(settings: Settings, now: datetime = NOW) -> None:
    """Two accepted false positives, one accepted false negative and one rejected item, today."""
    verdicts = [
        ItemVerdict(0, {}, "req-1", "false_positive", "known customer", "accepted",
                    logged=LoggedDecision("evt-1", True, "1", 0.91)),
        ItemVerdict(1, {}, "req-2", "false_positive", "refund, not fraud", "accepted",
                    logged=LoggedDecision("evt-2", True, "1", 0.77)),
        ItemVerdict(2, {}, "req-3", "false_negative", "chargeback filed", "accepted",
                    logged=LoggedDecision("evt-3", False, "1", 0.12)),
        ItemVerdict(3, {}, "req-404", "false_positive", "typo in the id", "rejected",
                    rejection="unknown request_id"),
    ]  # fmt: skip
    rows = feedback_rows(
        verdicts, submission_id="ui-test", submitted_by="analyst", received_at=now, note=None
    )
    tables.idempotent_append(settings, FEEDBACK, rows, "feedback/ui-test")
