"""Small simulated lakes for tests: land batches, ingest them, build features — via the library."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

from driftloop.config import Settings
from driftloop.dataset import DatasetSpec
from driftloop.features import build_features
from driftloop.ingest import ingest_landing
from driftloop.simulator import SimulationConfig, batch_window, write_landing_batches

# the default small lake of the training, REST and end-to-end tests: enough rows and positives
# for a time split, small enough to tune in seconds
TRAINING_LAKE = SimulationConfig(
    n_users=1500,
    n_merchants=60,
    events_per_batch=1500,
    n_batches=6,
    batch_interval=timedelta(hours=8),
    seed=21,
)


def land_and_ingest(
    settings: Settings, spec: DatasetSpec, config: SimulationConfig, batches: Iterable[int] | None = None
) -> None:
    """Land ``batches`` (default: all) and ingest them, judged from after every label is due."""
    batches = list(range(config.n_batches) if batches is None else batches)
    write_landing_batches(config, Path(settings.landing), batches=batches)
    horizon = batch_window(config, max(batches))[1] + timedelta(days=3)
    ingest_landing(settings, spec, reference_time=horizon)


def build_lake(
    spark, settings: Settings, spec: DatasetSpec, config: SimulationConfig = TRAINING_LAKE
) -> None:
    """A lake with bronze, labels and an up-to-date features table."""
    land_and_ingest(settings, spec, config)
    build_features(spark, settings, spec)
