"""The closed loop end to end against the real Airflow scheduler, with compressed windows.

Data lands, and the scheduler runs everything from there: ingest, features, the first champion
(triggered through the REST API with the official Python client), serving behind HAProxy,
monitoring, the drift sensor, the drift-triggered retrain, its canary and promotion, and a
forced slow candidate that must be rolled back.
"""

from __future__ import annotations

from pathlib import Path

import airflow_client.client as airflow_client
import pytest
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

from driftloop.closed_loop import ClosedLoop, loop_settings, loop_stack
from driftloop.config import Settings
from driftloop.dataset import load_dataset_spec
from driftloop.processes import free_port

# the module's first test sets the whole loop up (about 11 minutes here): pytest-timeout counts
# fixture setup against that test, so the suite-wide 15 minutes would leave no headroom
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
    """One run of the loop; the tests below read what it left behind."""
    base = Settings(data_dir=tmp_path_factory.mktemp("closed-loop") / "data")
    settings = loop_settings(base, analysis_interval_s=6.0)
    settings = settings.model_copy(
        update={
            "training": settings.training.model_copy(update={"n_trials": 4, "max_boost_rounds": 80}),
            # loose floors and latency budget, over the loop's gate: the gate's logic is unit-tested;
            # here tasks share 2 cores
            "gate": settings.gate.model_copy(
                update={"latency_budget_ms": 500.0, "min_pr_auc": 0.05, "min_recall_at_fpr": 0.0}
            ),
            # its own splitter port: a demo or `make up` may hold the default one
            "serving": settings.serving.model_copy(update={"splitter_port": free_port()}),
        }
    )
    with loop_stack(settings) as stack:

        def client() -> airflow_client.ApiClient:
            config = airflow_client.Configuration(host=stack.base_url, access_token=stack.token("admin"))
            return airflow_client.ApiClient(config)

        def trigger(dag_id: str, conf: dict) -> str:
            with client() as api:
                body = TriggerDAGRunPostBody(logical_date=None, conf=dict(conf))
                return DagRunApi(api).trigger_dag_run(dag_id, body).dag_run_id

        report = ClosedLoop(settings, load_dataset_spec(), stack, trigger=trigger, echo=print).run()
        with client() as api:
            drift_retrains = DagRunApi(api).get_dag_runs("train_model", run_type=["asset_triggered"])
        yield settings, report, drift_retrains


def test_drift_from_the_injected_batch_was_detected_and_not_before(loop_run):
    _, report, _ = loop_run
    assert report.facts["calm_window_drifted"] is False, "baseline traffic must not look drifted"
    event = report.facts["drift_event"]
    assert event["drifted_features"] or event["score_drifted"]
    assert "amount" in event["drifted_features"], event
    assert report.marks["drift_event"] > report.marks["drift_traffic"]
    assert Path(event["report_uri"]).is_file(), "the drift event points at the rendered report"


def test_exactly_one_retrain_was_triggered(loop_run):
    from driftloop.loop import decisions

    settings, _, drift_retrains = loop_run
    assert drift_retrains.total_entries == 1, [r.dag_run_id for r in drift_retrains.dag_runs]
    retrains = [d for d in decisions(settings) if d["outcome"] == "retrain"]
    assert len(retrains) == 1, retrains


def test_the_new_version_went_through_every_step_and_the_champion_alias_moved(loop_run):
    from driftloop.registry import CHAMPION, Registry
    from driftloop.rollout import RolloutStore

    settings, report, _ = loop_run
    version = report.facts["retrained_version"]
    records = [r for r in RolloutStore(settings).records() if r.version == version]
    weights = [r.weight for r in records if r.phase == "step"]
    assert sorted(set(weights)) == list(settings.rollout.steps), [(r.phase, r.weight) for r in records]
    assert records[-1].phase == "promoted"
    registry = Registry(settings)
    assert str(registry.alias_version(CHAMPION).version) == version
    assert any(m.alias == CHAMPION and m.version == version for m in registry.history())
    assert report.facts["traffic"]["failed"] == 0


def test_the_deployed_version_leads_back_to_the_delta_version_of_its_training_set(loop_run):
    from deltalake import DeltaTable

    from driftloop.lake import tables
    from driftloop.registry import CHAMPION, Registry

    settings, report, _ = loop_run
    registry = Registry(settings)
    champion = registry.alias_version(CHAMPION)
    assert champion.tags["trigger"] == "drift"
    features_version = int(champion.tags["lineage.features_version"])
    pinned = DeltaTable(tables.delta_rs_uri(settings.table_uri("features")), version=features_version)
    assert pinned.version() == features_version
    # the pinned training data already holds the drifted events the retrain was meant to learn
    newest = tables.query(pinned, 'SELECT MAX("event_time") AS t FROM t')["t"][0].as_py()
    assert newest >= report.facts["drift_starts"]
    run = registry.client.get_run(champion.run_id)
    assert run.data.tags["driftloop.lineage.features_version"] == str(features_version)


def test_a_forced_slow_candidate_was_rolled_back(loop_run):
    _, report, _ = loop_run
    drill = report.facts["drill"]
    assert drill["phases"][-1] == "rolled_back", drill
    assert drill["run_state"] == "failed"
