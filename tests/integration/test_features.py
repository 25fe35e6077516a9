"""The feature job on real Spark + Delta: point-in-time correctness, idempotence, time travel."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.dataset import parse_window
from driftloop.features import build_features, build_training_set, compute_features
from driftloop.ingest import ingest_landing
from driftloop.lake import tables
from driftloop.simulator import SimulationConfig, batch_window, write_landing_batches

SMALL = {"n_users": 60, "n_merchants": 10, "events_per_batch": 250, "seed": 11}
T0 = pd.Timestamp("2026-03-01T00:00:00Z")


def _events(spec, rows: list[tuple[str, str, float, pd.Timestamp]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["event_id", "user_id", "amount", "event_time"])
    frame["merchant_id"], frame["device_id"] = "m1", "d1"
    frame["category"], frame["country"], frame["channel"] = "grocery", "DE", "web"
    return frame[spec.column_names]


def _reference(events: pd.DataFrame, spec) -> pd.DataFrame:
    """Brute force: for every event, aggregate the same entity's events in [t - w, t).

    Nulls (NaN here) are left out as SQL aggregates leave them out: a count counts values, a sum
    over none is 0 and a mean over none is null.
    """
    out = events[[spec.event_id]].copy()
    for window_spec in spec.features.windows:
        for name, agg, window in window_spec.feature_names():
            width = pd.Timedelta(parse_window(window))
            values = []
            for _, row in events.iterrows():
                t = row[spec.event_time]
                same = events[window_spec.entity] == row[window_spec.entity]
                before = events.loc[
                    same & (events[spec.event_time] >= t - width) & (events[spec.event_time] < t)
                ]
                column = before[window_spec.column]
                values.append(
                    {
                        "count": column.count(),
                        "sum": column.sum(),
                        "mean": column.mean() if len(column) else np.nan,
                    }[agg]
                )
            out[name] = values
    return out.set_index(spec.event_id).sort_index()


def _computed(spark, events: pd.DataFrame, spec) -> pd.DataFrame:
    from pyspark.sql import functions as F

    # pandas hands a missing amount over as NaN: make it the null a nullable column would hold
    frame = spark.createDataFrame(events).withColumn("amount", F.nanvl("amount", F.lit(None)))
    result = compute_features(frame, spec).toPandas()
    return result.set_index(spec.event_id).sort_index()


def _assert_matches_reference(computed: pd.DataFrame, expected: pd.DataFrame) -> None:
    for column in expected.columns:
        np.testing.assert_allclose(
            computed[column].astype(float), expected[column].astype(float), rtol=1e-12, err_msg=column
        )


def test_window_features_use_exactly_the_earlier_events_of_the_same_entity(spark, spec):
    rows = [
        ("e1", "u1", 10.0, T0),
        ("e2", "u1", 20.0, T0 + timedelta(minutes=30)),
        ("e3", "u1", 40.0, T0 + timedelta(minutes=30)),  # simultaneous: neither sees the other
        ("e4", "u1", 80.0, T0 + timedelta(hours=1, minutes=30)),  # e1 is exactly 90 min back
        ("e5", "u2", 5.0, T0 + timedelta(minutes=45)),  # another user: never mixed in
        ("e6", "u1", 160.0, T0 + timedelta(days=2)),
        ("e7", "u1", 320.0, T0 + timedelta(days=7, minutes=30)),  # e1..e4 are > 7 d back, e6 is not
    ]
    events = _events(spec, rows)
    computed = _computed(spark, events, spec)
    _assert_matches_reference(computed, _reference(events, spec))
    assert computed.loc["e1", "user_id_count_1h"] == 0
    assert computed.loc["e4", "user_id_amount_sum_24h"] == 70.0
    assert np.isnan(computed.loc["e1", "amount_to_user_mean_7d"])
    assert computed.loc["e2", "amount_to_user_mean_7d"] == pytest.approx(2.0)


def test_window_edges_ties_and_lone_events_are_exact_to_the_microsecond(spark, spec):
    us = timedelta(microseconds=1)
    hour = T0 + timedelta(hours=1)
    rows = [
        ("start", "u1", 1.0, T0),
        ("almost", "u1", 2.0, hour - us),
        ("edge", "u1", 4.0, hour),  # "start" is exactly t - 1h back: inside [t - w, t)
        ("past_edge", "u1", 8.0, hour + us),  # "start" is 1 µs beyond t - 1h: outside
        ("tie_a", "u1", 16.0, T0 + timedelta(hours=1, minutes=30)),
        ("tie_b", "u1", 32.0, T0 + timedelta(hours=1, minutes=30)),
        ("tie_c", "u1", 64.0, T0 + timedelta(hours=1, minutes=30)),
        ("after_ties", "u1", 128.0, T0 + timedelta(hours=1, minutes=30) + us),
        ("alone", "u2", 5.0, hour),  # the only event of its user
    ]
    events = _events(spec, rows)
    computed = _computed(spark, events, spec)
    _assert_matches_reference(computed, _reference(events, spec))

    assert computed.loc["edge", ["user_id_count_1h", "user_id_amount_sum_1h"]].tolist() == [2, 3.0]
    assert computed.loc["past_edge", ["user_id_count_1h", "user_id_amount_sum_1h"]].tolist() == [2, 6.0]
    for tie in ("tie_a", "tie_b", "tie_c"):  # simultaneous events never see one another
        assert computed.loc[tie, ["user_id_count_1h", "user_id_amount_sum_1h"]].tolist() == [3, 14.0]
    assert computed.loc["after_ties", ["user_id_count_1h", "user_id_amount_sum_1h"]].tolist() == [
        6,
        126.0,
    ]
    alone = computed.loc["alone"]
    assert (alone["user_id_count_7d"], alone["user_id_amount_sum_7d"]) == (0, 0.0)
    assert alone[["user_id_amount_mean_7d", "amount_to_user_mean_7d"]].isna().all()
    assert computed["user_id_count_1h"].dtype == np.int64
    # merchant and device windows span both users: every earlier event of m1/d1 counts
    assert computed.loc["after_ties", "merchant_id_count_1h"] == 7  # all but "start" and itself
    assert computed.loc["after_ties", "device_id_count_24h"] == 8


def test_null_values_are_left_out_of_counts_sums_and_means(spark, spec):
    rows = [
        ("n1", "u1", None, T0),
        ("v1", "u1", 10.0, T0 + timedelta(minutes=1)),
        ("n2", "u1", None, T0 + timedelta(minutes=2)),
        ("v2", "u1", 30.0, T0 + timedelta(minutes=3)),
        ("only_null_before", "u2", 1.0, T0 + timedelta(minutes=1)),
        ("n3", "u2", None, T0),
    ]
    events = _events(spec, rows)
    computed = _computed(spark, events, spec)
    _assert_matches_reference(computed, _reference(events, spec))

    assert computed.loc["v2", ["user_id_count_1h", "user_id_amount_sum_1h"]].tolist() == [1, 10.0]
    assert computed.loc["v2", "user_id_amount_mean_1h"] == 10.0
    lone = computed.loc["only_null_before"]
    assert (lone["user_id_count_1h"], lone["user_id_amount_sum_1h"]) == (0, 0.0)
    assert pd.isna(lone["user_id_amount_mean_1h"])


def test_a_later_event_never_changes_an_earlier_events_features(spark, spec):
    base = [("e1", "u1", 10.0, T0), ("e2", "u1", 20.0, T0 + timedelta(minutes=10))]
    before = _computed(spark, _events(spec, base), spec)
    after = _computed(spark, _events(spec, [*base, ("e3", "u1", 99999.0, T0 + timedelta(minutes=20))]), spec)
    pd.testing.assert_frame_equal(before, after.loc[before.index])


def test_empty_input_gives_an_empty_typed_result(spark, spec):
    empty = spark.createDataFrame(_events(spec, [("e1", "u1", 1.0, T0)])).limit(0)
    result = compute_features(empty, spec)
    assert result.count() == 0
    assert set(spec.model_features) <= set(result.columns)


def _land_and_ingest(settings, spec, config, batches):
    write_landing_batches(config, Path(settings.landing), batches=batches)
    ingest_landing(settings, spec, reference_time=batch_window(config, max(batches))[1] + timedelta(days=1))


def test_incremental_runs_match_a_full_recompute_and_reruns_write_nothing(spark, settings, spec):
    config = SimulationConfig(**SMALL, batch_interval=timedelta(hours=6))
    _land_and_ingest(settings, spec, config, [0, 1])
    first = build_features(spark, settings, spec)
    assert (first.skipped, first.new_events) == (False, 2 * SMALL["events_per_batch"])

    rerun = build_features(spark, settings, spec)
    assert rerun.skipped
    assert tables.open_table(settings, tables.FEATURES).version() == first.features_version

    _land_and_ingest(settings, spec, config, [2])
    incremental = build_features(spark, settings, spec)
    assert incremental.new_events == SMALL["events_per_batch"]

    stored = (
        spark.read.format("delta")
        .load(settings.table_uri(tables.FEATURES))
        .drop("_bronze_version")
        .toPandas()
    )
    full = compute_features(spark.read.format("delta").load(settings.table_uri(tables.BRONZE_EVENTS)), spec)
    full = full.toPandas()
    assert len(stored) == len(full) == 3 * SMALL["events_per_batch"]
    key = spec.event_id
    pd.testing.assert_frame_equal(
        stored.sort_values(key).reset_index(drop=True)[full.columns],
        full.sort_values(key).reset_index(drop=True),
    )


def test_pinned_versions_rebuild_the_same_training_set_after_new_data(spark, settings, spec):
    config = SimulationConfig(**SMALL, batch_interval=timedelta(hours=6), label_delay=timedelta(hours=1))
    _land_and_ingest(settings, spec, config, [0, 1])
    build_features(spark, settings, spec)
    original = build_training_set(spark, settings, spec)
    snapshot = original.to_pandas().sort_values(spec.event_id).reset_index(drop=True)
    assert len(snapshot) > 0
    assert set(spec.model_features) <= set(snapshot.columns)

    _land_and_ingest(settings, spec, config, [2, 3])
    build_features(spark, settings, spec)
    latest = build_training_set(spark, settings, spec).frame.count()
    rebuilt = build_training_set(
        spark,
        settings,
        spec,
        features_version=int(original.lineage["features_version"]),
        labels_version=int(original.lineage["labels_version"]),
    )

    assert latest > len(snapshot)
    pd.testing.assert_frame_equal(
        rebuilt.to_pandas().sort_values(spec.event_id).reset_index(drop=True), snapshot
    )


def test_labels_known_only_after_the_cutoff_are_left_out(spark, settings, spec):
    config = SimulationConfig(**SMALL, label_delay=timedelta(hours=5), label_delay_jitter=timedelta(0))
    _land_and_ingest(settings, spec, config, [0])
    build_features(spark, settings, spec)
    start, _ = batch_window(config, 0)
    cutoff = (start + timedelta(hours=5, minutes=30)).to_pydatetime()  # labels of the first 30 min only

    frame = build_training_set(spark, settings, spec, label_cutoff=cutoff).to_pandas()

    assert len(frame) > 0
    assert (frame[spec.label_time] <= cutoff).all()
    assert (frame[spec.event_time] <= start + timedelta(minutes=30)).all()
