"""Benchmark data: simulated event volumes written straight into a bronze Delta table.

Generating data is never part of a timed section; the volumes keep the per-entity density
(events per user, per merchant, per day) constant, so 10M is 1M scaled out, not made denser.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from deltalake import write_deltalake

from driftloop.config import Settings
from driftloop.dataset import DatasetSpec
from driftloop.ingest import arrow_schema
from driftloop.lake import tables
from driftloop.simulator import SimulationConfig, batch_window, simulate_batch
from driftloop.validation import event_columns

EVENTS_PER_BATCH = 100_000
SPAN = timedelta(days=21)
"""Event-time span of every volume: three 7-day windows deep, so long windows fill up."""
EVENTS_PER_USER = 60
"""About three events per user per day over SPAN (activity is heavy-tailed around that)."""
USERS_PER_MERCHANT = 100


@dataclass(frozen=True)
class EventVolume:
    """A simulated event volume: how many events, in how many landing-sized batches."""

    n_events: int

    @property
    def label(self) -> str:
        """1M, 10M, 250k: how the volume is named in tables and file names."""
        if self.n_events % 1_000_000 == 0:
            return f"{self.n_events // 1_000_000}M"
        return f"{self.n_events // 1_000}k"

    @property
    def n_batches(self) -> int:
        return max(1, self.n_events // EVENTS_PER_BATCH)

    def simulation(self, bad_row_fraction: float = 0.0) -> SimulationConfig:
        """Simulator knobs for this volume: entities scale with events, the span stays fixed."""
        n_users = max(100, self.n_events // EVENTS_PER_USER)
        return SimulationConfig(
            seed=7,
            start_time=datetime(2026, 1, 1, tzinfo=UTC),
            n_users=n_users,
            n_merchants=max(50, n_users // USERS_PER_MERCHANT),
            events_per_batch=min(self.n_events, EVENTS_PER_BATCH),
            n_batches=self.n_batches,
            batch_interval=SPAN / self.n_batches,
            bad_row_fraction=bad_row_fraction,
        )


def bronze_rows(spec: DatasetSpec, config: SimulationConfig, batch_index: int) -> pa.Table:
    """One simulated batch as ingest would append it to bronze (declared columns + lineage)."""
    batch = simulate_batch(config, batch_index)
    columns = event_columns(spec)
    rows = pa.Table.from_pandas(
        batch.events[[c.name for c in columns]], schema=arrow_schema(columns), preserve_index=False
    )
    n = rows.num_rows
    landed_at = batch_window(config, batch_index)[1].to_pydatetime()
    return (
        rows.append_column("_batch_id", pa.array([batch.batch_id] * n, pa.string()))
        .append_column("_source_file", pa.array([f"bench/{batch.batch_id}.parquet"] * n, pa.string()))
        .append_column("_ingested_at", pa.array([landed_at] * n, pa.timestamp("us", tz="UTC")))
    )


def write_bronze(settings: Settings, spec: DatasetSpec, volume: EventVolume) -> int:
    """Write ``volume`` to the lake's bronze table, one Delta commit per batch as ingest does."""
    config = volume.simulation()
    uri = tables.delta_rs_uri(settings.table_uri(tables.BRONZE_EVENTS))
    written = 0
    for batch_index in range(volume.n_batches):
        rows = bronze_rows(spec, config, batch_index)
        write_deltalake(
            uri,
            rows,
            mode="append",
            configuration={"delta.enableChangeDataFeed": "true"},
            storage_options=tables.storage_options(settings),
        )
        written += rows.num_rows
    return written
