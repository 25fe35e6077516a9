"""The operator view's data: versions with lineage, the rollout, drift history, feedback, reports."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from driftloop import overview
from driftloop.registry import CHALLENGER, CHAMPION, Registry
from tests.overview_data import DRIFT_SHARES, NOW, ROLLOUT_ID, seed_drift, seed_feedback, seed_rollout


def _register(settings, alias: str, tags: dict[str, str]) -> str:
    """A registered version with a run and lineage tags (no model trained: the view reads metadata)."""
    registry = Registry(settings)
    client = registry.client
    experiment = client.get_experiment_by_name("overview-test")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment("overview-test", artifact_location=settings.artifact_location)
    )
    run = client.create_run(experiment_id)
    registry.ensure_model()
    version = client.create_model_version(
        registry.name, f"runs:/{run.info.run_id}/model", run.info.run_id, tags
    )
    registry.move_alias(
        alias, version.version, actor="test", run_key=run.info.run_id, reason=f"{alias} for test"
    )
    return str(version.version)


def test_an_empty_lake_and_registry_show_nothing_yet_without_problems(settings):
    view = overview.gather(settings, now=NOW)

    assert view.problems == []
    assert view.versions == {CHAMPION: None, CHALLENGER: None}
    assert view.rollout is None
    assert view.drift == []
    assert view.alias_history == []
    assert view.feedback.available is False
    assert view.feedback.note == "no feedback yet"
    assert view.tracking_ui is None  # the local SQLite store has no UI to link to


def test_versions_carry_lineage_and_run_ids_and_the_alias_history_records_moves(settings):
    champion = _register(
        settings,
        CHAMPION,
        {
            "lineage.training_table_version": "7",
            "lineage.code_revision": "abc1234",
            "optuna.study": "fraud-run-1",
            "optuna.trial": "3",
            "trigger": "rest",
            "reason": "analyst request",
            "driftloop.status": "champion",
            "unrelated": "not lineage",
        },
    )
    challenger = _register(settings, CHALLENGER, {"lineage.training_table_version": "9", "trigger": "drift"})

    view = overview.gather(settings, now=NOW)

    assert view.problems == []
    shown = view.versions[CHAMPION]
    assert shown.version == champion
    assert shown.status == "champion"
    assert shown.run_id
    assert shown.run_url is None
    assert shown.lineage == {
        "code_revision": "abc1234",
        "optuna.study": "fraud-run-1",
        "optuna.trial": "3",
        "reason": "analyst request",
        "training_table_version": "7",
        "trigger": "rest",
    }
    assert view.versions[CHALLENGER].version == challenger
    assert [(m["alias"], m["version"]) for m in view.alias_history] == [
        (CHALLENGER, challenger),
        (CHAMPION, champion),
    ]


def test_mlflow_runs_are_linked_only_when_the_store_is_a_server():
    assert overview.tracking_ui_url("sqlite:////tmp/mlflow.db") is None
    assert overview.tracking_ui_url("postgresql://u:secret@db/mlflow") is None
    assert overview.tracking_ui_url("http://127.0.0.1:5000/") == "http://127.0.0.1:5000"
    assert (
        overview.run_url("https://mlflow.internal", "4", "abc")
        == "https://mlflow.internal/#/experiments/4/runs/abc"
    )


def test_the_rollout_shows_step_weights_and_the_last_analysis(settings):
    seed_rollout(settings, stable="1", canary="2")

    rollout = overview.rollout(settings)

    assert rollout.rollout_id == ROLLOUT_ID
    assert (rollout.version, rollout.stable_version) == ("2", "1")
    assert rollout.active is True
    assert rollout.phase == "window"
    assert (rollout.step, rollout.steps) == (1, [10, 50, 100])
    assert (rollout.canary_weight, rollout.stable_weight) == (50, 50)
    assert rollout.last_analysis["outcome"] == "wait"
    assert rollout.last_analysis["reasons"] == ["120 of 200 canary requests so far"]
    assert rollout.last_analysis["metrics"]["canary_requests"] == 120
    assert [t["phase"] for t in rollout.transitions] == ["started", "step", "window", "step", "window"]


def test_an_operator_command_shows_as_pending_until_the_rollout_acts(settings):
    from driftloop.rollout import RolloutRecord, RolloutStore

    records = seed_rollout(settings, stable="1", canary="2")
    last = records[-1]
    RolloutStore(settings).append(
        RolloutRecord(
            ROLLOUT_ID, last.model, "2", "1", "abort_requested", 1, 50, last.at + timedelta(seconds=5), "ops"
        )
    )

    rollout = overview.rollout(settings)

    assert rollout.phase == "window"
    assert rollout.pending_command == "abort_requested"


def test_drift_history_is_oldest_first_with_score_drift_and_the_served_report(settings):
    seed_drift(settings, "3")

    points = overview.drift_history(settings)

    assert [p.share for p in points] == list(DRIFT_SHARES)
    assert [p.drifted for p in points] == [s >= 0.3 for s in DRIFT_SHARES]
    assert points[-1].drifted_features == ["amount", "channel"]
    assert points[-1].score_method == "psi"
    assert points[-1].score_value == pytest.approx(DRIFT_SHARES[-1] / 2)
    assert all(p.report_path is None for p in points[:-1])
    assert points[-1].report_path.startswith("drift/v3/")
    served = overview.resolve_report(settings, points[-1].report_path)
    assert "Data drift report" in served.read_text()


def test_drift_history_keeps_the_latest_windows(settings):
    seed_drift(settings, "3")

    points = overview.drift_history(settings, limit=2)

    assert [p.share for p in points] == list(DRIFT_SHARES[-2:])


def test_feedback_counts_accepted_items_by_kind_and_the_rejected(settings):
    seed_feedback(settings)

    shown = overview.feedback(settings, NOW + timedelta(hours=1))

    assert shown.available is True
    assert shown.counts == {"false_positive": 2, "false_negative": 1, "rejected": 1}
    assert sum(day["items"] for day in shown.days) == 4
    assert overview.feedback(settings, NOW + timedelta(days=30)).available is False


@pytest.mark.parametrize(
    "relative",
    [
        "../lake/tables/drift_metrics/_delta_log/00000000000000000000.json",
        "drift/../../secret.html",
        "/etc/passwd",
        "drift/v3/missing.html",
        "drift",
        "",
        "drift/v3/notes.txt",
        "drift/v3/link.html",  # a symbolic link leading out of the reports folder
    ],
)
def test_only_html_files_under_the_reports_folder_are_served(settings, relative):
    seed_drift(settings, "3")
    lake = Path(settings.lake_uri)
    (lake.parent / "secret.html").write_text("<p>not a report</p>")
    (lake / "reports" / "drift" / "v3" / "notes.txt").write_text("not html")
    os.symlink(lake.parent / "secret.html", lake / "reports" / "drift" / "v3" / "link.html")

    with pytest.raises(overview.ReportNotFound):
        overview.resolve_report(settings, relative)


def test_reports_of_an_object_store_lake_are_not_served(settings):
    remote = settings.model_copy(update={"lake_root": "s3a://bucket/lake"})

    assert overview.report_path(remote, "s3a://bucket/lake/reports/drift/v1/a.html") is None
    with pytest.raises(overview.ReportNotFound, match="not a local folder"):
        overview.resolve_report(remote, "drift/v1/a.html")


def test_a_broken_section_is_reported_and_the_rest_still_shows(settings):
    seed_drift(settings, "3")
    rollouts = Path(settings.table_uri("rollouts"))
    rollouts.mkdir(parents=True)
    (rollouts / "_delta_log").mkdir()
    (rollouts / "_delta_log" / "00000000000000000000.json").write_text("{not json")

    view = overview.gather(settings, now=NOW)

    assert view.rollout is None
    assert len(view.problems) == 1
    assert view.problems[0].startswith("rollout:")
    assert len(view.drift) == len(DRIFT_SHARES)
