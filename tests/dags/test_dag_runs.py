"""The data-plane DAGs run end to end with ``dag.test()`` on real Spark and Delta tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from driftloop.lake import tables
from driftloop.simulator import SimulationConfig, write_landing_batches
from tests.conftest import REPO


@pytest.fixture(scope="module")
def airflow_db():
    """A migrated Airflow metadata DB (SQLite under the test AIRFLOW_HOME)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=REPO / "dags")
    # as the dag-processor would: registers the DAGs and activates their Assets, without
    # which task outlets emit no Asset events
    sync_bag_to_db(bag, bundle_name="dags-folder", bundle_version=None)
    return bag


def _run(dagbag, dag_id: str):
    from airflow.utils.state import DagRunState

    run = dagbag.get_dag(dag_id).test()
    assert run.state == DagRunState.SUCCESS, f"{dag_id} ended {run.state}"
    return {ti.task_id: ti for ti in run.get_task_instances()}


def _asset_events(name: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
        return [dict(extra) for extra in session.scalars(query.where(AssetModel.name == name))]


def test_ingest_then_build_features_end_to_end(settings, spark, dagbag):
    config = SimulationConfig(n_users=100, n_merchants=12, events_per_batch=200, n_batches=2, seed=5)
    write_landing_batches(config, Path(settings.landing))

    ingest = _run(dagbag, "ingest_events")
    assert ingest["ingest_landed_batches"].state == "success"
    bronze = tables.open_table(settings, tables.BRONZE_EVENTS)
    assert tables.read_table(settings, tables.BRONZE_EVENTS).num_rows == 400

    (event,) = _asset_events("driftloop.bronze_events")
    assert event["bronze_version"] == bronze.version()
    assert sum(b["rows_valid"] for b in event["batches"]) == 400

    features = _run(dagbag, "build_features")
    assert features["update_features_table"].state == "success"
    assert tables.read_table(settings, tables.FEATURES).num_rows == 400
    (event,) = _asset_events("driftloop.features")
    assert event["features_version"] == tables.open_table(settings, tables.FEATURES).version()

    # nothing new landed: both DAGs skip instead of writing (and emit no Asset event)
    assert _run(dagbag, "ingest_events")["ingest_landed_batches"].state == "skipped"
    assert _run(dagbag, "build_features")["update_features_table"].state == "skipped"
    assert tables.open_table(settings, tables.BRONZE_EVENTS).version() == bronze.version()
    assert len(_asset_events("driftloop.bronze_events")) == 1


def test_train_model_registers_and_gates_a_first_champion(settings, spark, dagbag, monkeypatch):
    from datetime import timedelta

    from driftloop.config import get_settings
    from driftloop.registry import CHAMPION, Registry

    for name, value in {
        "DRIFTLOOP_TRAINING__MAX_BOOST_ROUNDS": "60",
        "DRIFTLOOP_GATE__LATENCY_BUDGET_MS": "500",
        "DRIFTLOOP_GATE__MIN_PR_AUC": "0.05",
        "DRIFTLOOP_GATE__MIN_RECALL_AT_FPR": "0",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    config = SimulationConfig(
        n_users=800,
        n_merchants=40,
        events_per_batch=1000,
        n_batches=4,
        seed=8,
        batch_interval=timedelta(hours=8),
    )
    write_landing_batches(config, Path(settings.landing))
    _run(dagbag, "ingest_events")
    _run(dagbag, "build_features")

    from airflow.utils.state import DagRunState

    run = dagbag.get_dag("train_model").test(run_conf={"n_trials": 2, "reason": "dag test"})
    assert run.state == DagRunState.SUCCESS
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert set(states.values()) == {"success"}, states

    registry = Registry(get_settings())
    champion = registry.alias_version(CHAMPION)
    tags = registry.client.get_model_version(registry.name, champion.version).tags
    assert (tags["trigger"], tags["reason"]) == ("rest", "dag test")
    assert tags["lineage.features_version"] == str(tables.open_table(settings, tables.FEATURES).version())
    (event,) = _asset_events("driftloop.champion")
    assert event["version"] == str(champion.version)


def test_build_features_runs_spark_on_kubernetes_in_the_kubernetes_profile(
    settings, dagbag, tmp_path, monkeypatch
):
    """The same DAG, configured for Kubernetes: a driver pod is submitted and its report becomes
    the Asset event. The API server is the fake one; the client finds it through a kubeconfig."""
    import json

    import yaml
    from kubernetes.client import Configuration
    from kubernetes.config import kube_config

    from driftloop.config import get_settings
    from tests.unit.fake_kube_api import FakeKubeApi, PodPlan

    report = {
        "bronze_version": 3,
        "features_version": 2,
        "previous_bronze_version": 1,
        "new_events": 500,
        "rows_merged": 640,
        "skipped": False,
    }
    fake = FakeKubeApi(pod_plan=PodPlan(message=json.dumps(report))).start()
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                    "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        # the client reads KUBECONFIG once, when it is first imported
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setattr(Configuration, "_default", None)  # load_kube_config sets a process default
        monkeypatch.setenv("DRIFTLOOP_PROFILE", "kubernetes")
        monkeypatch.setenv("DRIFTLOOP_LAKE_ROOT", "s3a://acme-lake/dag-test")
        monkeypatch.setenv("DRIFTLOOP_SPARK_JOB__POLL_SECONDS", "0.01")
        get_settings.cache_clear()

        features = _run(dagbag, "build_features")
    finally:
        fake.stop()

    assert features["update_features_table"].state == "success"
    applied = [(r.body["kind"], r.body["metadata"]["name"]) for r in fake.requests if r.method == "PATCH"]
    assert [kind for kind, _ in applied] == ["ConfigMap", "Pod"]
    assert not fake.objects, "the driver pod and its ConfigMap are deleted after the run"
    events = [e for e in _asset_events("driftloop.features") if e["table_uri"].startswith("s3a://")]
    assert events == [
        {
            "table_uri": "s3a://acme-lake/dag-test/tables/features",
            "features_version": 2,
            "bronze_version": 3,
            "rows_merged": 640,
        }
    ]
