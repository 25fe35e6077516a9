"""A retrain on real Spark, Delta, Optuna (SQLite storage) and an MLflow store: lineage,
resumable tuning, one challenger under concurrency, bad data refused, model behaviour."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.config import Settings
from driftloop.features import build_training_set
from driftloop.registry import CHALLENGER, CHAMPION, Registry
from driftloop.retraining import (
    PreparedData,
    RetrainRequest,
    gate_candidate,
    load_prepared,
    load_scorer,
    parent_run_id,
    prepare_training_data,
    register_candidate,
    run_study,
)
from driftloop.simulator import SimulationConfig
from driftloop.training import TrainingDataError, TuningResult
from tests.lakes import TRAINING_LAKE, build_lake

FAST = {"DRIFTLOOP_TRAINING__MAX_BOOST_ROUNDS": "80", "DRIFTLOOP_TRAINING__MIN_ROWS": "500"}


def _settings(data_dir: Path, lake: Path, gate: dict | None = None, **overrides) -> Settings:
    return Settings(
        data_dir=data_dir,
        lake_root=str(lake),
        training={"max_boost_rounds": 80, "min_rows": 500, "min_positives": 10},
        # loose floors and latency budget: the gate's logic is unit-tested, these runs share 2 busy cores
        gate={"latency_budget_ms": 200.0, "min_pr_auc": 0.05, "min_recall_at_fpr": 0.0} | (gate or {}),
        **overrides,
    )


def _request(key: str, n_trials: int = 3, **overrides) -> RetrainRequest:
    return RetrainRequest.parse(
        run_key=key,
        trigger="cli",
        reason="integration test",
        n_trials=n_trials,
        timeout_minutes=5,
        metric="pr_auc",
        **overrides,
    )


def _build_lake(spark, lake: Path, spec, config: SimulationConfig, data_dir: Path) -> Settings:
    settings = _settings(data_dir, lake)
    build_lake(spark, settings, spec, config)
    return settings


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    from driftloop.dataset import load_dataset_spec

    root = tmp_path_factory.mktemp("training-lake")
    _build_lake(spark, root / "lake", load_dataset_spec(), TRAINING_LAKE, root / "data")
    return root / "lake"


@pytest.fixture(scope="module")
def trained(spark, lake, tmp_path_factory):
    """One full retrain: the first model, which becomes champion."""
    from driftloop.dataset import load_dataset_spec

    spec = load_dataset_spec()
    settings = _settings(tmp_path_factory.mktemp("first-retrain"), lake)
    request = _request("manual__first")
    data = prepare_training_data(spark, settings, spec, request)
    parent, tuning = run_study(settings, spec, request, data)
    version = register_candidate(settings, spec, request, data, parent, tuning)
    result = gate_candidate(settings, spec, request, data, version)
    return settings, spec, request, data, parent, tuning, version, result


def test_a_retrain_registers_a_version_whose_lineage_rebuilds_its_training_set(spark, trained):
    import mlflow

    settings, spec, _, data, parent, tuning, version, result = trained
    registry = Registry(settings)
    tags = registry.client.get_model_version(registry.name, version).tags
    assert tags["lineage.features_version"] == data.lineage["features_version"]
    assert tags["lineage.labels_version"] == data.lineage["labels_version"]
    assert tags["optuna.study"] == tuning.study_name
    assert json.loads(tags["params"]) == tuning.best_params
    assert tags["mlflow.run_id"] == parent

    rebuilt = build_training_set(
        spark,
        settings,
        spec,
        features_version=int(tags["lineage.features_version"]),
        labels_version=int(tags["lineage.labels_version"]),
    ).to_pandas()
    frozen = load_prepared(settings, data)
    key = spec.event_id
    pd.testing.assert_frame_equal(
        rebuilt.sort_values(key).reset_index(drop=True)[frozen.columns],
        frozen.sort_values(key).reset_index(drop=True),
    )

    # every trial is a nested run of the parent, and the first passing model became champion
    children = mlflow.MlflowClient(settings.tracking_uri).search_runs(
        [mlflow.get_run(parent).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    assert len(children) == tuning.trials_complete + tuning.trials_pruned == 3
    assert result.decision.outcome == "champion"
    assert str(registry.alias_version(CHAMPION).version) == version
    (move,) = registry.history()
    assert (move.alias, move.version, move.previous_version) == (CHAMPION, version, None)


def test_a_registered_version_carries_its_holdout_performance_for_monitoring(trained):
    from driftloop.monitoring import expected_performance, load_reference
    from driftloop.retraining import _split

    settings, spec, _, data, _, _, version, _ = trained
    holdout = _split(load_prepared(settings, data), spec, settings).holdout
    scorer = load_scorer(settings, f"models:/{Registry(settings).name}/{version}")
    performance = load_reference(settings, version).performance
    assert performance == expected_performance(
        holdout[spec.label].to_numpy(), scorer.score(holdout), settings.serving.decision_threshold
    )
    assert performance.rows == len(holdout)
    assert performance.pr_auc is not None


def test_the_model_behaves_invariance_and_direction(trained):
    settings, spec, _, data, *_, version, _ = trained
    scorer = load_scorer(settings, f"models:/{settings.registered_model}/{version}")
    rows = load_prepared(settings, data)
    legit = rows[rows[spec.label] == 0].head(300).copy()
    base = scorer.score(legit)

    # invariance: identifiers are not features, and a 1% amount change barely moves the score
    renamed = legit.assign(user_id="u-other", merchant_id="m-other", device_id="d-other", event_id="x")
    np.testing.assert_allclose(scorer.score(renamed), base)
    nudged = scorer.score(legit.assign(amount=legit["amount"] * 1.01))
    assert np.median(np.abs(nudged - base)) < 0.02

    # direction: a burst of web purchases of electronics at five times the usual amount is riskier
    risky = legit.assign(
        amount=legit["amount"] * 5,
        category="electronics",
        channel="web",
        user_id_count_1h=legit["user_id_count_1h"] + 4,
        amount_to_user_mean_7d=legit["amount_to_user_mean_7d"].fillna(1.0) * 5,
    )
    raised = scorer.score(risky) > base
    assert raised.mean() > 0.8


def _run_study_in_subprocess(
    settings: Settings, data: PreparedData, key: str, n_trials: int
) -> subprocess.Popen:
    code = (
        "import json, os\n"
        "from driftloop.config import Settings\n"
        "from driftloop.dataset import load_dataset_spec\n"
        "from driftloop.retraining import PreparedData, RetrainRequest, run_study\n"
        "s = Settings.model_validate_json(os.environ['T_SETTINGS'])\n"
        "r = RetrainRequest.model_validate_json(os.environ['T_REQUEST'])\n"
        "run_study(s, load_dataset_spec(), r, PreparedData(**json.loads(os.environ['T_DATA'])))\n"
    )
    env = os.environ | {
        "T_SETTINGS": settings.model_dump_json(),
        "T_REQUEST": _request(key, n_trials).model_dump_json(),
        "T_DATA": json.dumps(data.as_dict()),
    }
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)


def test_a_killed_tuning_task_resumes_its_study(trained, tmp_path):
    import optuna

    settings, spec, _, data, *_ = trained
    settings = _settings(tmp_path, Path(settings.lake_uri))
    key, n_trials = "manual__killed", 8
    process = _run_study_in_subprocess(settings, data, key, n_trials)
    study_name = f"{spec.name}-{key.replace(':', '_')}"
    deadline = time.monotonic() + 240
    done = 0
    while time.monotonic() < deadline and done < 2:
        time.sleep(1)
        try:
            study = optuna.load_study(study_name=study_name, storage=settings.optuna_storage_url)
            done = len([t for t in study.trials if t.state.is_finished()])
        except KeyError:
            continue
    assert done >= 2, "the tuning subprocess never finished two trials"
    os.killpg(process.pid, signal.SIGKILL)  # as a lost worker would die: no cleanup at all
    process.wait()

    _, result = run_study(settings, spec, _request(key, n_trials), data)

    assert result.trials_resumed >= 2
    study = optuna.load_study(study_name=study_name, storage=settings.optuna_storage_url)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= n_trials
    assert len({t.number for t in finished}) == len(finished)


def _gate_in_process(settings_json: str, request_json: str, data: dict, version: str, queue) -> None:
    from driftloop.dataset import load_dataset_spec

    settings = Settings.model_validate_json(settings_json)
    result = gate_candidate(
        settings,
        load_dataset_spec(),
        RetrainRequest.model_validate_json(request_json),
        PreparedData(**data),
        version,
    )
    queue.put((version, result.decision.outcome, result.decision.reasons))


def test_concurrent_retrains_produce_exactly_one_challenger(trained, tmp_path):
    settings, spec, _, data, _parent, tuning, *_ = trained
    settings = _settings(
        tmp_path,
        Path(settings.lake_uri),
        gate={"latency_budget_ms": 500.0, "margin": -1.0, "min_pr_auc": 0.0, "min_recall_at_fpr": 0.0},
    )
    # a champion first, then two candidates that both beat it (margin -1) gated at the same moment
    versions = []
    for key in ("manual__champ", "manual__a", "manual__b"):
        request = _request(key)
        run = parent_run_id(settings, spec, request, data)
        versions.append(register_candidate(settings, spec, request, data, run, tuning))
    gate_candidate(settings, spec, _request("manual__champ"), data, versions[0])

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [
        context.Process(
            target=_gate_in_process,
            args=(settings.model_dump_json(), _request(key).model_dump_json(), data.as_dict(), v, queue),
        )
        for key, v in zip(("manual__a", "manual__b"), versions[1:], strict=True)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    outcomes = sorted(queue.get(timeout=5)[1] for _ in workers)

    assert outcomes == ["challenger", "rejected"]
    registry = Registry(settings)
    challenger = str(registry.alias_version(CHALLENGER).version)
    assert challenger in versions[1:]
    assert [m.version for m in registry.history() if m.alias == CHALLENGER] == [challenger]
    listed = registry.client.search_model_versions(f"name = '{registry.name}'")
    assert sorted(int(v.version) for v in listed) == [1, 2, 3]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            SimulationConfig(n_users=50, n_merchants=10, events_per_batch=100, n_batches=2, seed=3),
            "only 200 labelled",
        ),
        (
            SimulationConfig(
                n_users=300, n_merchants=10, events_per_batch=400, n_batches=2, seed=3, fraud_rate=0.0
            ),
            "needs both classes",
        ),
    ],
    ids=["too-few-rows", "single-class"],
)
def test_unusable_training_data_fails_before_tuning_and_registers_nothing(
    spark, spec, tmp_path, config, message
):
    settings = _build_lake(spark, tmp_path / "lake", spec, config, tmp_path / "data")
    with pytest.raises(TrainingDataError, match=message):
        prepare_training_data(spark, settings, spec, _request("manual__bad"))
    assert Registry(settings).find_version("manual__bad") is None


def test_tuning_result_survives_xcom_serialisation(trained):
    tuning: TuningResult = trained[5]
    assert TuningResult(**json.loads(json.dumps(asdict(tuning)))) == tuning


@pytest.mark.slow
def test_registry_path_on_an_mlflow_server_with_postgres_and_s3(trained, tmp_path, mlflow_tracking, pg, s3):
    """The production shape: MLflow server (PostgreSQL store, S3 artifacts), advisory-lock gate."""
    settings, spec, _, data, _, tuning, *_ = trained
    remote = _settings(
        tmp_path,
        Path(settings.lake_uri),
        mlflow_tracking_uri=mlflow_tracking.tracking_uri,
        registry_lock_dsn=pg.sqlalchemy_url,
    )
    request = _request("manual__remote")
    parent = parent_run_id(remote, spec, request, data)
    version = register_candidate(remote, spec, request, data, parent, tuning)
    again = register_candidate(remote, spec, request, data, parent, tuning)
    result = gate_candidate(remote, spec, request, data, version)

    assert again == version, "a retried registration must not create a second version"
    assert result.decision.outcome == "champion"
    registry = Registry(remote)
    assert str(registry.alias_version(CHAMPION).version) == version
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("MLmodel") for k in keys), "the model's files must live in the object store"
    assert mlflow_tracking.store.query(
        f"SELECT version FROM model_versions WHERE name = '{registry.name}'"
    ) == [(version,)]
    scorer = load_scorer(remote, f"models:/{remote.registered_model}@champion")
    assert len(scorer.score(load_prepared(remote, data).head(10))) == 10
