"""Ingest on real Delta tables: the rows-in invariant, quarantine, idempotent retries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from driftloop.ingest import KINDS, ingest_landing, list_landing_files
from driftloop.lake import tables
from driftloop.simulator import (
    CORRUPTION_KINDS,
    SimulationConfig,
    batch_window,
    simulate_batch,
    write_landing_batches,
)

SMALL = {"n_users": 300, "n_merchants": 20, "events_per_batch": 400, "seed": 7}


def _table(settings, name: str) -> pd.DataFrame:
    table = tables.read_table(settings, name)
    return pd.DataFrame() if table is None else table.to_pandas()


def _reference_time(config: SimulationConfig, batches: int):
    return batch_window(config, batches - 1)[1].to_pydatetime()


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_every_row_lands_in_bronze_or_quarantine_with_each_bad_kind_caught(settings, spec, fmt):
    config = SimulationConfig(**SMALL, n_batches=2, bad_row_fraction=0.05)
    write_landing_batches(config, Path(settings.landing), fmt=fmt)

    summary = ingest_landing(settings, spec, reference_time=_reference_time(config, 2))

    bronze, quarantine = _table(settings, tables.BRONZE_EVENTS), _table(settings, tables.QUARANTINE)
    events = [b for b in summary.batches if b.kind == "events"]
    assert len(events) == 2
    for report in events:
        in_bronze = int((bronze["_batch_id"] == report.batch_id).sum())
        in_quarantine = int(
            ((quarantine["batch_id"] == report.batch_id) & (quarantine["kind"] == "events")).sum()
        )
        assert report.rows_in == config.events_per_batch == in_bronze + in_quarantine

    for index in range(2):
        batch = simulate_batch(config, index)
        caught = quarantine[(quarantine["batch_id"] == batch.batch_id) & (quarantine["kind"] == "events")]
        assert {c.kind for c in batch.corruptions} == set(CORRUPTION_KINDS)
        expected_reason = {
            "null_user_id": "user_id: null value",
            "negative_amount": "amount: in_range",
            "unknown_channel": "channel: isin",
            "future_event_time": "event_time: in the future",
            "duplicate_event_id": "event_id: duplicate in batch",
            "nan_amount": "amount: null value",
        }
        for corruption in batch.corruptions:
            row = caught[caught["row_number"] == corruption.row]
            assert len(row) == 1, f"{corruption.kind} at row {corruption.row} not quarantined"
            assert expected_reason[corruption.kind] in row["reason"].iloc[0]
        # nothing clean was quarantined
        assert len(caught) == len(batch.corruptions)
    assert bronze["event_id"].is_unique
    assert not list_landing_files(settings), "ingested files must leave the landing area"


def test_a_retried_batch_writes_nothing_twice(settings, spec, tmp_path):
    config = SimulationConfig(**SMALL, n_batches=1, bad_row_fraction=0.05)
    (landed,) = [f for f in write_landing_batches(config, Path(settings.landing)) if f.kind == "events"]
    keep = tmp_path / "kept.parquet"
    shutil.copy(landed.path, keep)
    first = ingest_landing(settings, spec, reference_time=_reference_time(config, 1))
    versions = {
        name: tables.open_table(settings, name).version()
        for name in (tables.BRONZE_EVENTS, tables.QUARANTINE)
    }

    # the task died after writing but before moving the file: Airflow retries with the file still there
    shutil.copy(keep, landed.path)
    keep.unlink()
    second = ingest_landing(settings, spec, reference_time=_reference_time(config, 1))

    (again,) = second.batches
    assert again.already_ingested
    assert (again.rows_valid, again.rows_quarantined) == (
        first.batches[0].rows_valid,
        first.batches[0].rows_quarantined,
    )
    for name, version in versions.items():
        assert tables.open_table(settings, name).version() == version
    assert len(_table(settings, tables.BRONZE_EVENTS)) == first.batches[0].rows_valid


def test_an_event_id_seen_in_an_earlier_batch_is_quarantined(settings, spec):
    config = SimulationConfig(**SMALL, n_batches=2)
    write_landing_batches(config, Path(settings.landing), batches=[0])
    ingest_landing(settings, spec, reference_time=_reference_time(config, 2))
    replay = simulate_batch(config, 1).events
    replay.loc[3, "event_id"] = simulate_batch(config, 0).events.loc[5, "event_id"]
    events_dir = Path(settings.landing) / "events"
    replay.to_parquet(events_dir / "replayed.parquet")

    (report,) = ingest_landing(settings, spec, reference_time=_reference_time(config, 2)).batches

    assert (report.rows_valid, report.rows_quarantined) == (len(replay) - 1, 1)
    quarantine = _table(settings, tables.QUARANTINE)
    assert quarantine.loc[quarantine["batch_id"] == "replayed", "reason"].tolist() == [
        "event_id: already ingested by an earlier batch"
    ]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("truncated.parquet", "parquet-truncated", "parquet reader failed"),
        ("garbage.jsonl", b"{not json at all\n", "jsonl reader failed"),
        ("export.csv", b"a,b\n1,2\n", "unsupported file type .csv"),
    ],
)
def test_an_unreadable_file_is_moved_to_quarantine_with_a_reason(
    settings, spec, tmp_path, name, content, reason
):
    events_dir = Path(settings.landing) / "events"
    events_dir.mkdir(parents=True)
    if content == "parquet-truncated":
        simulate_batch(SimulationConfig(**SMALL), 0).events.to_parquet(tmp_path / "whole.parquet")
        content = (tmp_path / "whole.parquet").read_bytes()[:-200]
    (events_dir / name).write_bytes(content)

    summary = ingest_landing(settings, spec)

    assert summary.batches == []
    (unreadable,) = summary.unreadable
    assert reason in unreadable.reason
    moved = Path(unreadable.quarantined_to)
    assert moved.read_bytes() == content, "the file must be kept intact, not deleted"
    assert reason in Path(f"{moved}.reason.json").read_text()
    assert not (events_dir / name).exists()
    assert tables.open_table(settings, tables.BRONZE_EVENTS) is None


def test_empty_batch_and_label_batches(settings, spec):
    config = SimulationConfig(**SMALL, n_batches=1)
    write_landing_batches(config, Path(settings.landing), fmt="jsonl")
    (Path(settings.landing) / "events" / "empty.jsonl").write_text("")

    summary = ingest_landing(settings, spec, reference_time=pd.Timestamp("2030-01-01", tz="UTC"))

    by_id = {(b.kind, b.batch_id): b for b in summary.batches}
    assert by_id[("events", "empty")].rows_in == 0
    labels = by_id[("labels", "batch-00000")]
    assert labels.rows_valid == labels.rows_in == len(simulate_batch(config, 0).labels)
    assert set(KINDS) == {k for k, _ in by_id}


def test_spark_reads_what_ingest_wrote(settings, spec, spark):
    config = SimulationConfig(**SMALL, n_batches=1)
    write_landing_batches(config, Path(settings.landing))
    ingest_landing(settings, spec, reference_time=_reference_time(config, 1))

    read = spark.read.format("delta").load(settings.table_uri(tables.BRONZE_EVENTS)).toPandas()
    source = simulate_batch(config, 0).events
    read = read.sort_values("event_id").reset_index(drop=True)[source.columns]
    source = source.sort_values("event_id").reset_index(drop=True)
    read["event_time"] = (
        pd.to_datetime(read["event_time"]).dt.tz_localize("UTC")
        if read["event_time"].dt.tz is None
        else read["event_time"]
    )
    pd.testing.assert_frame_equal(read, source, check_dtype=False)
