"""Unit tests of the transaction-event simulator.

Determinism, schema contract, scenarios, bad-row injection and landing files.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop import simulator
from driftloop.simulator import (
    BASELINE_CATEGORIES,
    CHANNELS,
    CORRUPTION_KINDS,
    EVENT_COLUMNS,
    LABEL_COLUMNS,
    RISKY_CATEGORIES,
    SCENARIOS,
    SimulationConfig,
    batch_id_for,
    batch_index_at,
    batch_window,
    simulate_batch,
    write_landing_batches,
)

SMALL = {"n_users": 5_000, "n_merchants": 60, "events_per_batch": 4_000, "n_batches": 3}


def small(scenario: str = "baseline", **overrides: object) -> SimulationConfig:
    return SimulationConfig.for_scenario(scenario, **{**SMALL, **overrides})


def with_labels(batch: simulator.SimulatedBatch) -> pd.DataFrame:
    return batch.events.merge(batch.labels, on="event_id", how="inner", validate="one_to_one")


# ------------------------------------------------------------------ configuration


def test_unknown_scenario_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid scenarios") as excinfo:
        SimulationConfig.for_scenario("meteor_strike")
    for name in SCENARIOS:
        assert name in str(excinfo.value)


def test_unknown_override_field_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown SimulationConfig field"):
        SimulationConfig.for_scenario("baseline", n_userz=10)


@pytest.mark.parametrize(
    "overrides",
    [
        {"fraud_rate": -0.1},
        {"events_per_batch": 0},
        {"n_merchants": 3},
        {"batch_interval": timedelta(0)},
        {"new_category": "grocery", "new_category_fraction": 0.1},
        {"new_category_fraction": 0.1},
        {"missing_label_fraction": 1.5},
        {"start_time": datetime(2024, 1, 1)},  # naive: ambiguous
    ],
)
def test_invalid_config_is_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid SimulationConfig"):
        SimulationConfig.for_scenario("baseline", **overrides)


def test_start_time_is_normalised_to_utc() -> None:
    cet = timezone(timedelta(hours=1))
    config = small(start_time=datetime(2024, 1, 1, 1, tzinfo=cet))
    assert config.start_time == datetime(2024, 1, 1, tzinfo=UTC)
    assert config.start_time.utcoffset() == timedelta(0)


def test_batch_window_and_index_agree() -> None:
    config = small(batch_interval=timedelta(minutes=30))
    start, end = batch_window(config, 3)
    assert end - start == pd.Timedelta(minutes=30)
    assert batch_index_at(config, start) == 3
    assert batch_index_at(config, end - pd.Timedelta(milliseconds=1)) == 3
    assert batch_index_at(config, end) == 4


# ------------------------------------------------------------------ determinism and schema


def test_same_config_and_index_give_identical_batches() -> None:
    config = small(bad_row_fraction=0.01)
    first, second = simulate_batch(config, 1), simulate_batch(config, 1)
    pd.testing.assert_frame_equal(first.events, second.events)
    pd.testing.assert_frame_equal(first.labels, second.labels)
    assert first.corruptions == second.corruptions
    assert first.batch_id == second.batch_id == batch_id_for(1)


@pytest.mark.parametrize("change", [{"seed": 7}, {"batch_index": 2}])
def test_different_seed_or_index_give_different_batches(change: dict[str, int]) -> None:
    reference = simulate_batch(small(), 1).events
    other = simulate_batch(small(seed=change.get("seed", 42)), change.get("batch_index", 1)).events
    assert not reference["user_id"].equals(other["user_id"])
    assert not reference["amount"].equals(other["amount"])


def test_user_population_is_consistent_across_batches() -> None:
    config = small(events_per_batch=8_000)

    def home_and_devices(batch_index: int) -> pd.DataFrame:
        legit = with_labels(simulate_batch(config, batch_index)).query("is_fraud == 0")
        return legit.groupby("user_id").agg(
            home=("country", lambda c: c.mode().iloc[0]),
            devices=("device_id", lambda d: frozenset(d)),
            n=("event_id", "size"),
        )

    a, b = home_and_devices(0), home_and_devices(2)
    both = a.join(b, lsuffix="_a", rsuffix="_b", how="inner")
    both = both[(both.n_a >= 5) & (both.n_b >= 5)]
    assert len(both) > 50
    assert (both.home_a == both.home_b).mean() > 0.95
    # Users reuse the same one or two devices for their own purchases.
    union = [x | y for x, y in zip(both.devices_a, both.devices_b, strict=True)]
    assert max(len(devices) for devices in union) <= 2


def test_events_and_labels_follow_the_schema_contract() -> None:
    batch = simulate_batch(small(), 0)
    assert list(batch.events.columns) == list(EVENT_COLUMNS)
    assert {c: str(t) for c, t in batch.events.dtypes.items()} == EVENT_COLUMNS
    assert list(batch.labels.columns) == list(LABEL_COLUMNS)
    assert {c: str(t) for c, t in batch.labels.dtypes.items()} == LABEL_COLUMNS
    assert str(batch.events["event_time"].dt.tz) == "UTC"
    assert str(batch.labels["label_time"].dt.tz) == "UTC"
    for column in ("event_id", "user_id", "merchant_id", "device_id", "category", "country"):
        assert batch.events[column].map(type).eq(str).all(), column


def test_clean_batch_is_valid() -> None:
    config = small()
    batch = simulate_batch(config, 2)
    events = batch.events
    start, end = batch_window(config, 2)
    assert events["event_id"].is_unique
    assert events["event_id"].str.fullmatch(r"evt-42-00002-\d{7}").all()
    assert events["user_id"].str.fullmatch(r"u\d{6}").all()
    assert events["merchant_id"].str.fullmatch(r"m\d{5}").all()
    assert events["device_id"].str.fullmatch(r"d\d{7}").all()
    assert events["amount"].notna().all()
    assert (events["amount"] >= 0).all()
    assert set(events["category"]) <= set(BASELINE_CATEGORIES)
    assert set(events["channel"]) <= set(CHANNELS)
    assert events["country"].str.fullmatch(r"[A-Z]{2}").all()
    assert events["event_time"].between(start, end, inclusive="left").all()
    assert events["event_time"].is_monotonic_increasing
    assert batch.corruptions == []
    assert set(batch.labels["event_id"]) == set(events["event_id"])


@pytest.mark.parametrize("fraud_rate", [0.01, 0.03])
def test_label_rate_matches_fraud_rate(fraud_rate: float) -> None:
    labels = simulate_batch(small(fraud_rate=fraud_rate), 0).labels
    assert labels["is_fraud"].isin([0, 1]).all()
    assert labels["is_fraud"].mean() == pytest.approx(fraud_rate, abs=0.002)


def test_fraud_is_visible_in_history_features() -> None:
    config = small(n_users=20_000, events_per_batch=10_000)
    frame = with_labels(simulate_batch(config, 0)).sort_values(["user_id", "event_time"])
    # Earlier same-user transactions in the trailing 10 minutes (capped at 5), like the
    # rolling-window count features the model uses.
    frame["recent"] = sum(
        (
            (frame["user_id"].shift(lag) == frame["user_id"])
            & (frame["event_time"] - frame["event_time"].shift(lag) <= pd.Timedelta(minutes=10))
        ).astype(int)
        for lag in range(1, 6)
    )
    fraud, legit = frame[frame.is_fraud == 1], frame[frame.is_fraud == 0]
    assert fraud["recent"].mean() > 1.0
    assert fraud["recent"].mean() > 4 * legit["recent"].mean()
    assert fraud["amount"].median() > 1.5 * legit["amount"].median()
    assert fraud["category"].isin(RISKY_CATEGORIES).mean() > 0.6
    assert (fraud["channel"] == "web").mean() > (legit["channel"] == "web").mean() + 0.3
    legit_devices = legit.groupby("user_id")["device_id"].agg(set)
    fraud_unseen = [
        d not in legit_devices.get(u, set())
        for u, d in zip(fraud["user_id"], fraud["device_id"], strict=True)
    ]
    assert np.mean(fraud_unseen) > 0.5


# ------------------------------------------------------------------ scenarios


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_generates_a_schema_valid_batch(scenario: str) -> None:
    batch = simulate_batch(small(scenario), 0)
    assert {c: str(t) for c, t in batch.events.dtypes.items()} == EVENT_COLUMNS
    assert {c: str(t) for c, t in batch.labels.dtypes.items()} == LABEL_COLUMNS
    assert batch.events["event_id"].is_unique


def test_covariate_shift_moves_only_amounts() -> None:
    base = simulate_batch(small(), 0).events
    shifted = simulate_batch(small("covariate_shift"), 0).events
    ratio = shifted["amount"].median() / base["amount"].median()
    assert ratio == pytest.approx(2.5, rel=0.15)
    assert np.log1p(shifted["amount"]).std() > np.log1p(base["amount"]).std()
    others = [c for c in EVENT_COLUMNS if c != "amount"]
    pd.testing.assert_frame_equal(base[others], shifted[others])


def test_new_category_appears_only_from_drift_start() -> None:
    config = small("new_category", drift_start_batch=1)
    before, after = simulate_batch(config, 0).events, simulate_batch(config, 1).events
    assert set(before["category"]) <= set(BASELINE_CATEGORIES)
    share = (after["category"] == "crypto").mean()
    assert share == pytest.approx(config.new_category_fraction, abs=0.03)
    crypto_merchants = set(after.loc[after["category"] == "crypto", "merchant_id"])
    assert crypto_merchants.isdisjoint(after.loc[after["category"] != "crypto", "merchant_id"])


def test_concept_drift_keeps_inputs_but_changes_labels() -> None:
    base = simulate_batch(small(), 0)
    drifted = simulate_batch(small("concept_drift"), 0)
    pd.testing.assert_frame_equal(base.events, drifted.events)
    base_rate = base.labels["is_fraud"].mean()
    assert drifted.labels["is_fraud"].mean() == pytest.approx(base_rate, abs=0.005)

    def fraud_rate_by_pattern(batch: simulator.SimulatedBatch) -> tuple[float, float]:
        frame = with_labels(batch)
        everyday_app = frame["category"].isin(["grocery", "fuel"]) & (frame["channel"] == "app")
        risky_web = frame["category"].isin(RISKY_CATEGORIES) & (frame["channel"] == "web")
        return frame.loc[everyday_app, "is_fraud"].mean(), frame.loc[risky_web, "is_fraud"].mean()

    base_everyday, base_risky = fraud_rate_by_pattern(base)
    drift_everyday, drift_risky = fraud_rate_by_pattern(drifted)
    assert base_risky > 5 * base_everyday
    assert drift_everyday > 5 * drift_risky
    drift_fraud = with_labels(drifted).query("is_fraud == 1")
    assert drift_fraud["category"].isin(["grocery", "fuel"]).all()
    assert (drift_fraud["channel"] == "app").all()


@pytest.mark.parametrize("scenario", ["baseline", "label_delay"])
def test_label_delay_and_missing_labels_are_respected(scenario: str) -> None:
    config = small(scenario)
    batch = simulate_batch(config, 0)
    frame = with_labels(batch)
    delay = frame["label_time"] - frame["event_time"]
    assert delay.min() >= pd.Timedelta(config.label_delay)
    assert delay.max() < pd.Timedelta(config.label_delay + config.label_delay_jitter)
    missing = 1 - len(batch.labels) / len(batch.events)
    assert missing == pytest.approx(config.missing_label_fraction, abs=0.03)


def test_label_delay_scenario_delays_more_than_baseline() -> None:
    base = with_labels(simulate_batch(small(), 0))
    late = with_labels(simulate_batch(small("label_delay"), 0))
    base_delay = (base["label_time"] - base["event_time"]).median()
    late_delay = (late["label_time"] - late["event_time"]).median()
    assert late_delay > 5 * base_delay


def test_scenarios_start_at_drift_start_batch() -> None:
    config = small("label_delay", drift_start_batch=1, fraud_pattern="card_testing")
    before, after = simulate_batch(config, 0), simulate_batch(config, 1)
    baseline = simulate_batch(small(), 0)
    pd.testing.assert_frame_equal(before.labels, baseline.labels)
    assert len(after.labels) < len(after.events)
    assert with_labels(after).query("is_fraud == 1")["channel"].eq("app").all()


# ------------------------------------------------------------------ bad rows


def invalid_rows(events: pd.DataFrame, window_end: pd.Timestamp) -> dict[str, set[int]]:
    """Reference validation rules, one per corruption kind, as a quarantine would apply them."""
    positions = pd.RangeIndex(len(events))
    return {
        "null_user_id": set(positions[events["user_id"].isna()]),
        "negative_amount": set(positions[events["amount"] < 0]),
        "unknown_channel": set(positions[~events["channel"].isin(CHANNELS)]),
        "future_event_time": set(positions[events["event_time"] >= window_end]),
        "duplicate_event_id": set(positions[events["event_id"].duplicated(keep="first")]),
        "nan_amount": set(positions[events["amount"].isna()]),
    }


@pytest.mark.parametrize("bad_row_fraction", [0.0005, 0.02])
def test_bad_rows_cover_every_kind_and_match_the_record(bad_row_fraction: float) -> None:
    config = small(bad_row_fraction=bad_row_fraction)
    batch = simulate_batch(config, 1)
    recorded: dict[str, set[int]] = {kind: set() for kind in CORRUPTION_KINDS}
    for corruption in batch.corruptions:
        recorded[corruption.kind].add(corruption.row)
        assert batch.events["event_id"].iloc[corruption.row] == corruption.event_id
    assert all(recorded.values()), "every corruption kind must be injected"
    assert len(batch.corruptions) == max(
        len(CORRUPTION_KINDS), round(bad_row_fraction * config.events_per_batch)
    )
    assert invalid_rows(batch.events, batch.window_end) == recorded


def test_duplicate_rows_copy_an_earlier_id_and_keep_their_label_id() -> None:
    batch = simulate_batch(small(bad_row_fraction=0.01), 0)
    duplicates = [c for c in batch.corruptions if c.kind == "duplicate_event_id"]
    assert duplicates
    ids = batch.events["event_id"]
    for corruption in duplicates:
        first = ids[ids == corruption.event_id].index.min()
        assert first < corruption.row
        assert corruption.original_event_id != corruption.event_id
        assert corruption.original_event_id in set(batch.labels["event_id"])


def test_bad_rows_do_not_change_clean_rows() -> None:
    clean = simulate_batch(small(), 0).events
    dirty = simulate_batch(small(bad_row_fraction=0.02), 0)
    untouched = np.setdiff1d(np.arange(len(clean)), [c.row for c in dirty.corruptions])
    pd.testing.assert_frame_equal(clean.iloc[untouched], dirty.events.iloc[untouched])


# ------------------------------------------------------------------ landing files


def read_back(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_json(path, lines=True)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_landing_files_round_trip(tmp_path: Path, fmt: str) -> None:
    config = small(bad_row_fraction=0.01, n_batches=2)
    files = write_landing_batches(config, tmp_path, fmt=fmt)  # type: ignore[arg-type]
    assert [(f.kind, f.path.relative_to(tmp_path).as_posix()) for f in files] == [
        ("events", f"events/batch-00000.{fmt}"),
        ("labels", f"labels/batch-00000.{fmt}"),
        ("events", f"events/batch-00001.{fmt}"),
        ("labels", f"labels/batch-00001.{fmt}"),
    ]
    for landing in files:
        expected = getattr(simulate_batch(config, int(landing.batch_id[-5:])), landing.kind)
        actual = read_back(landing.path)
        assert landing.rows == len(expected)
        pd.testing.assert_frame_equal(actual, expected)


def test_jsonl_timestamps_are_iso_utc(tmp_path: Path) -> None:
    files = write_landing_batches(small(), tmp_path, fmt="jsonl", batches=range(1))
    first_line = files[0].path.read_text().splitlines()[0]
    assert '"event_time":"2024-01-01T00:' in first_line
    assert first_line.count('Z"') == 1


def test_landing_writes_are_atomic_and_idempotent(tmp_path: Path) -> None:
    config = small()
    first = write_landing_batches(config, tmp_path, batches=range(1, 3))
    contents = {f.path: read_back(f.path) for f in first}
    second = write_landing_batches(config, tmp_path, batches=range(1, 3))
    assert first == second
    for landing in second:
        pd.testing.assert_frame_equal(read_back(landing.path), contents[landing.path])
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert names == [
        "events/batch-00001.parquet",
        "events/batch-00002.parquet",
        "labels/batch-00001.parquet",
        "labels/batch-00002.parquet",
    ]


def test_failed_write_leaves_no_partial_or_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_write(table: object, where: object, **kwargs: object) -> None:
        where.write(b"PAR1 half a file")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(simulator.pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_landing_batches(small(), tmp_path, batches=range(1))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_unknown_landing_format_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="landing format"):
        write_landing_batches(small(), tmp_path, fmt="csv")  # type: ignore[arg-type]
