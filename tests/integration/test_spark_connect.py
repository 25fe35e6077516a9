"""The feature job and training sets through a real Spark Connect server, as the stack's tasks run them.

The clients run in subprocesses, as Airflow tasks do: a Spark Connect session switches PySpark's
functions to Connect mode for its whole process, which would break this process's local session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from driftloop.config import Settings
from driftloop.features import build_training_set, compute_features
from driftloop.lake import tables
from driftloop.lake.spark_connect import SparkConnectServer
from driftloop.processes import free_port
from driftloop.simulator import SimulationConfig
from driftloop.stack import settings_env
from tests.integration.test_features import SMALL, _land_and_ingest

TRAINING_SET_SCRIPT = """
import sys
from driftloop.config import get_settings
from driftloop.dataset import get_dataset_spec
from driftloop.features import build_training_set
from driftloop.lake.spark import get_spark, stop_spark

settings = get_settings()
frame = build_training_set(get_spark(settings), settings, get_dataset_spec()).to_pandas()
frame.to_parquet(sys.argv[1])
stop_spark()
"""


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkConnectServer]:
    """One `driftloop spark-server` for the module, configured like the test session's Spark."""
    scratch = tmp_path_factory.mktemp("spark-connect")
    server = SparkConnectServer(Settings(data_dir=scratch), scratch / "spark-connect.log")
    server.launch(_env(Settings(data_dir=scratch)))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings_env(settings)}


def _run_client(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _features_through(server: SparkConnectServer, settings: Settings) -> dict:
    remote = settings.model_copy(update={"spark_remote": server.url})
    result = _run_client(remote, "-m", "driftloop.cli", "features")
    assert result.returncode == 0, f"driftloop features failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_feature_runs_through_the_server_match_a_local_recompute_and_reruns_write_nothing(
    connect_server, spark, settings, spec
):
    config = SimulationConfig(**SMALL, batch_interval=timedelta(hours=6))
    _land_and_ingest(settings, spec, config, [0, 1])
    first = _features_through(connect_server, settings)
    assert (first["skipped"], first["new_events"]) == (False, 2 * SMALL["events_per_batch"])

    rerun = _features_through(connect_server, settings)
    assert rerun["skipped"]
    assert tables.open_table(settings, tables.FEATURES).version() == first["features_version"]

    _land_and_ingest(settings, spec, config, [2])
    incremental = _features_through(connect_server, settings)
    assert incremental["new_events"] == SMALL["events_per_batch"]
    assert incremental["features_version"] == first["features_version"] + 1  # one MERGE commit
    history = tables.open_table(settings, tables.FEATURES).history(1)[0]
    assert history["operation"] == "MERGE"
    assert json.loads(history["userMetadata"])["new_events"] == SMALL["events_per_batch"]

    # what the server wrote equals a full recompute on this process's local session
    stored = tables.open_table(settings, tables.FEATURES).to_pandas().drop(columns="_bronze_version")
    bronze = spark.read.format("delta").load(settings.table_uri(tables.BRONZE_EVENTS))
    full = compute_features(bronze, spec).toPandas()
    assert len(stored) == len(full) == 3 * SMALL["events_per_batch"]
    key = spec.event_id
    stored = stored.sort_values(key).reset_index(drop=True)[full.columns]
    stored[spec.event_time] = stored[spec.event_time].dt.tz_convert("UTC").dt.tz_localize(None)
    full[spec.event_time] = full[spec.event_time].astype(stored[spec.event_time].dtype)
    pd.testing.assert_frame_equal(stored, full.sort_values(key).reset_index(drop=True), check_dtype=False)


def test_a_training_set_read_through_the_server_equals_the_local_one(
    connect_server, spark, settings, spec, tmp_path: Path
):
    config = SimulationConfig(**SMALL, batch_interval=timedelta(hours=6), label_delay=timedelta(hours=1))
    _land_and_ingest(settings, spec, config, [0, 1])
    _features_through(connect_server, settings)

    remote = settings.model_copy(update={"spark_remote": connect_server.url})
    out = tmp_path / "training.parquet"
    result = _run_client(remote, "-c", TRAINING_SET_SCRIPT, str(out))
    assert result.returncode == 0, result.stderr

    through_server = pd.read_parquet(out).sort_values(spec.event_id).reset_index(drop=True)
    local = build_training_set(spark, settings, spec).to_pandas().sort_values(spec.event_id)
    assert len(through_server) > 0
    # timestamps come back UTC-aware either way (the model's lineage and windows rely on it)
    assert str(through_server[spec.event_time].dt.tz) == "UTC"
    pd.testing.assert_frame_equal(through_server, local.reset_index(drop=True))


def test_a_task_pointed_at_no_server_fails_at_once_saying_what_to_do(settings, spec):
    config = SimulationConfig(**SMALL)
    _land_and_ingest(settings, spec, config, [0])
    nobody = settings.model_copy(update={"spark_remote": f"sc://127.0.0.1:{free_port()}"})

    started = time.monotonic()
    result = _run_client(nobody, "-m", "driftloop.cli", "features")

    assert result.returncode != 0
    assert "no Spark Connect server listens at sc://127.0.0.1" in result.stderr
    assert "driftloop spark-server" in result.stderr
    assert time.monotonic() - started < 60  # not the client's minutes of retries
    assert tables.open_table(settings, tables.FEATURES) is None
