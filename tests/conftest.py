"""Shared fixtures: an isolated lake per test, one Spark session per test session, Airflow home.

Airflow and driftloop read configuration from the environment, so it is set here before
anything imports them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="driftloop-airflow-test-"))
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "DRIFTLOOP_SPARK_SHUFFLE_PARTITIONS": "2",
        "DRIFTLOOP_SPARK_DELTA_SNAPSHOT_PARTITIONS": "2",
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

    scratch = Path(tempfile.mkdtemp(prefix="driftloop-spark-"))
    session = get_spark(Settings(data_dir=scratch))
    yield session
    stop_spark()
    shutil.rmtree(scratch, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    # a SIGTERM (CI timeout, kill) unwinds like Ctrl-C, so fixtures still stop their servers
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@pytest.fixture(scope="session")
def s3() -> Iterator:
    """A real S3-compatible server (versitygw) on 127.0.0.1 with a fresh bucket."""
    from tests.services import object_store

    with object_store() as store:
        yield store


@pytest.fixture(scope="session")
def pg() -> Iterator:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with password auth."""
    from tests.services import postgres

    with postgres() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def mlflow_tracking(pg, s3) -> Iterator:
    """An MLflow server the production way: PostgreSQL backend store, artifacts in S3."""
    from tests.services import mlflow_server

    with mlflow_server(pg, s3) as server:
        yield server
