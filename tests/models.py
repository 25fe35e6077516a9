"""Real, small LightGBM model versions in a throwaway MLflow store, for serving and rollout tests.

Three kinds, all registered like a retrain registers them (native LightGBM flavour, encoder in
the metadata): ``good`` learns a real signal; ``garbage`` is trained on shuffled labels, so its
scores carry no information; ``broken``'s encoder names a feature requests never carry, so every
prediction errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import pytest

from driftloop.config import Settings
from driftloop.dataset import DatasetSpec, load_dataset_spec
from driftloop.training import FeatureEncoder

ModelKind = Literal["good", "garbage", "broken", "slow"]
MISSING_FEATURE = "feature_requests_never_carry"
CATEGORY_VALUES = {"category": ["grocery", "travel", "electronics"], "channel": ["web", "app", "pos"]}


def feature_rows(spec: DatasetSpec, n: int, seed: int = 0) -> pd.DataFrame:
    """Model-feature rows with a learnable label: big amounts far above the user's mean are fraud."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({name: rng.gamma(2.0, 20.0, n) for name in spec.model_features})
    for column in spec.features.categorical:
        values = CATEGORY_VALUES.get(column, ["FR", "DE", "US", "GB"])
        frame[column] = rng.choice(values, n)
    logit = 0.04 * (frame["amount"] - 60) + 1.5 * (frame["amount_to_user_mean_7d"] > 2) - 2.5
    frame["is_fraud"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame["event_id"] = [f"evt-{seed}-{i}" for i in range(n)]
    return frame


def request_rows(spec: DatasetSpec, n: int, seed: int = 1) -> list[dict]:
    """JSON-ready request rows (event_id + every model feature)."""
    frame = feature_rows(spec, n, seed)
    return frame[["event_id", *spec.model_features]].to_dict("records")


def register_model(settings: Settings, kind: ModelKind, alias: str | None = None, seed: int = 0) -> str:
    """Train a small booster of ``kind``, register it and (optionally) point ``alias`` at it."""
    import lightgbm as lgb
    import mlflow

    from driftloop.registry import Registry

    spec = load_dataset_spec()
    frame = feature_rows(spec, 2000, seed)
    labels = frame["is_fraud"].to_numpy()
    if kind == "garbage":
        labels = np.random.default_rng(seed + 99).permutation(labels)
    encoder = FeatureEncoder.fit(frame, spec)
    matrix = encoder.transform(frame)
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_threads": 1, "seed": seed, "num_leaves": 15},
        lgb.Dataset(matrix, labels, categorical_feature=encoder.categorical_features),
        num_boost_round=30,
    )
    if kind == "broken":
        encoder = FeatureEncoder(features=(*encoder.features, MISSING_FEATURE), categories=encoder.categories)
    mlflow.set_tracking_uri(settings.tracking_uri)
    experiment = mlflow.get_experiment_by_name("driftloop-test-models")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else mlflow.create_experiment("driftloop-test-models", artifact_location=settings.artifact_location)
    )
    # an explicit experiment, not set_experiment(): the fluent API's active experiment is global
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{kind}-{seed}") as run:
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            pip_requirements=[f"lightgbm=={lgb.__version__}"],
            metadata={
                "driftloop": {"encoder": encoder.to_metadata(), "dataset": spec.name, "label": spec.label}
            },
        )
    registry = Registry(settings)
    version = registry.register(
        info.model_uri,
        run.info.run_id,
        f"test-{kind}-{seed}-{run.info.run_id}",
        {"kind": kind},
        info.model_id,
    )
    if kind == "slow":  # a good model whose servers answer 80 ms late (the service's rollout drill)
        registry.client.set_model_version_tag(
            registry.name, str(version.version), "driftloop.drill.latency_ms", "80"
        )
    if alias:
        registry.client.set_registered_model_alias(registry.name, alias, str(version.version))
    return str(version.version)


@dataclass(frozen=True)
class ModelVersions:
    """The registered versions by kind; ``champion`` points at ``good``."""

    settings: Settings
    good: str
    garbage: str
    broken: str


@pytest.fixture(scope="session")
def model_versions(tmp_path_factory: pytest.TempPathFactory) -> ModelVersions:
    """One MLflow store (SQLite under tmp) with a good, a garbage and a broken version."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("models") / "data")
    good = register_model(settings, "good", alias="champion")
    garbage = register_model(settings, "garbage", seed=1)
    broken = register_model(settings, "broken", alias="challenger", seed=2)
    return ModelVersions(settings, good, garbage, broken)
