"""Shared fixtures: an isolated lake per test, one Spark session per test session, Airflow home.

Airflow and driftloop read configuration from the environment, so it is set here before
anything imports them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="driftloop-airflow-test-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "DRIFTLOOP_SPARK_SHUFFLE_PARTITIONS": "2",
        "DRIFTLOOP_SPARK_DRIVER_MEMORY": "2g",
        "DRIFTLOOP_SPARK_MASTER": "local[2]",
    }
)
# secrets must never be needed to import or run the pipeline in tests
for name in list(os.environ):
    if name.startswith(("AWS_", "AIRFLOW_CONN_")):
        del os.environ[name]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings pointing at a fresh lake under tmp_path (also visible to get_settings())."""
    from driftloop.config import Settings, get_settings

    monkeypatch.setenv("DRIFTLOOP_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield Settings()
    get_settings.cache_clear()


@pytest.fixture
def spec():
    from driftloop.dataset import load_dataset_spec

    return load_dataset_spec()


@pytest.fixture(scope="session")
def spark() -> Iterator:
    """One Spark session for the whole test run: a cold JVM costs 10-40 s."""
    from driftloop.config import Settings
    from driftloop.lake.spark import get_spark, stop_spark

    session = get_spark(Settings(data_dir=Path(tempfile.mkdtemp(prefix="driftloop-spark-"))))
    yield session
    stop_spark()
