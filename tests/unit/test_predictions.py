"""The prediction schema, row scoring and the prediction-log writer's buffering."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from driftloop import predictions
from driftloop.training import FeatureEncoder, ModelScorer


@pytest.fixture
def row_model(spec):
    return predictions.row_model(spec)


@pytest.fixture
def good_row(spec) -> dict:
    row = {name: 1.5 for name in spec.model_features}
    row.update(category="travel", country="FR", channel="web", event_id="evt-1")
    return row


def test_a_valid_row_parses_and_request_id_is_optional(row_model, good_row):
    row = row_model.model_validate(good_row)
    assert row.event_id == "evt-1"
    assert row.request_id is None
    assert row_model.model_validate(good_row | {"request_id": "r-1", "unrelated": 3}).request_id == "r-1"


def test_null_numeric_feature_means_missing(row_model, good_row):
    assert (
        row_model.model_validate(good_row | {"amount_to_user_mean_7d": None}).amount_to_user_mean_7d is None
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"amount": math.nan}, "finite"),
        ({"amount": math.inf}, "finite"),
        ({"amount": -math.inf}, "finite"),
        ({"amount": "12.5"}, "valid number"),
        ({"amount": True}, "valid number"),
        ({"channel": 3}, "valid string"),
        ({"event_id": ""}, "at least 1 character"),
        ({"event_id": 17}, "valid string"),
        ({"request_id": 5}, "valid string"),
    ],
)
def test_invalid_values_are_rejected_with_the_field_named(row_model, good_row, change, problem):
    with pytest.raises(ValidationError) as caught:
        row_model.model_validate(good_row | change)
    message = predictions.validation_message(caught.value.errors())
    assert next(iter(change)) in message
    assert problem in message


@pytest.mark.parametrize("missing", ["event_id", "amount", "channel", "amount_to_user_mean_7d"])
def test_every_feature_and_the_event_id_are_required(row_model, good_row, missing):
    del good_row[missing]
    with pytest.raises(ValidationError, match=missing):
        row_model.model_validate(good_row)


def test_batches_hold_one_to_max_rows(row_model, good_row):
    batch = predictions.batch_model(row_model, max_rows=3)
    assert len(batch.model_validate({"rows": [good_row] * 3}).rows) == 3
    for rows in ([], [good_row] * 4):
        with pytest.raises(ValidationError, match="rows"):
            batch.model_validate({"rows": rows})
    with pytest.raises(ValidationError):
        batch.model_validate({"rows": [good_row], "extra": 1})


def test_validation_message_is_one_line_and_bounded():
    errors = [{"loc": ("body", f"f{i}"), "msg": "Field required"} for i in range(15)]
    message = predictions.validation_message(errors)
    assert message.startswith("invalid prediction request: f0: Field required")
    assert "(and 5 more)" in message


def test_row_scorer_matches_the_encoder_and_booster(spec, row_model, good_row):
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f: rng.random(300) for f in spec.model_features})
    for column in spec.features.categorical:
        frame[column] = rng.choice(["a", "b", "c"], 300)
    encoder = FeatureEncoder.fit(frame, spec)
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_threads": 1},
        lgb.Dataset(encoder.transform(frame), (frame["amount"] > 0.5).astype(int)),
        num_boost_round=5,
    )
    scorer = ModelScorer(booster, encoder)
    rows = [
        row_model.model_validate(good_row | {"category": "a", "amount": 0.9}),
        row_model.model_validate(good_row | {"category": "never-seen", "amount": None}),
    ]
    frame_of_rows = pd.DataFrame([r.model_dump() for r in rows])

    fast = predictions.RowScorer.from_scorer(scorer).score(rows)

    assert fast == pytest.approx(scorer.score(frame_of_rows).tolist())


def test_row_scorer_fails_loudly_when_the_model_needs_an_unknown_feature(spec, row_model, good_row):
    encoder = FeatureEncoder(features=("amount", "not_in_requests"))
    scorer = predictions.RowScorer.from_scorer(ModelScorer(booster=None, encoder=encoder))  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="not_in_requests"):
        scorer.matrix([row_model.model_validate(good_row)])


def test_log_schema_types_features_like_the_spec(spec):
    schema = predictions.log_schema(spec)
    assert schema.names[:2] == ["request_id", "event_id"]
    assert schema.field("channel").type == pa.string()
    assert schema.field("amount").type == pa.float64()
    assert schema.field("predicted_at").type == pa.timestamp("us", tz="UTC")


# --- the writer ---------------------------------------------------------------------------------

SCHEMA = pa.schema([("n", pa.int64())])


class Sink:
    def __init__(self, fail_times: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.fail_times = fail_times
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, table: pa.Table) -> None:
        with self.lock:
            self.calls += 1
            if self.calls <= self.fail_times:
                raise OSError("lake unreachable")
            self.batches.append(table.column("n").to_pylist())

    @property
    def rows(self) -> list[int]:
        return [n for batch in self.batches for n in batch]


def _writer(sink: Sink, **options) -> predictions.PredictionLogWriter:
    defaults = {"flush_rows": 100, "flush_seconds": 60.0, "buffer_limit": 1000}
    return predictions.PredictionLogWriter(SCHEMA, sink, **(defaults | options))


def test_add_never_writes_on_the_callers_thread():
    sink = Sink()
    writer = _writer(sink)
    writer.add({"n": i} for i in range(10))
    assert sink.calls == 0
    assert writer.pending == 10


def test_a_full_flush_batch_wakes_the_writer_thread():
    sink = Sink()
    writer = _writer(sink, flush_rows=5).start()
    writer.add({"n": i} for i in range(7))
    deadline = time.monotonic() + 5
    while len(sink.rows) < 7 and time.monotonic() < deadline:
        time.sleep(0.02)
    writer.close()
    assert sink.rows == list(range(7))


def test_the_writer_flushes_on_its_interval():
    sink = Sink()
    writer = _writer(sink, flush_seconds=0.05).start()
    writer.add([{"n": 1}])
    time.sleep(0.5)
    assert sink.rows == [1]
    writer.close()


def test_failed_writes_keep_the_rows_are_counted_and_retried():
    sink = Sink(fail_times=2)
    failures = []
    writer = _writer(sink, on_failure=lambda: failures.append(1))
    writer.add({"n": i} for i in range(3))

    assert writer.flush() is False
    assert writer.flush() is False
    assert writer.pending == 3
    assert writer.flush() is True

    assert sink.rows == [0, 1, 2]
    assert len(failures) == writer.failures == 2
    assert writer.pending == 0


def test_rows_beyond_the_buffer_limit_are_dropped_and_counted():
    dropped = []
    writer = _writer(Sink(fail_times=99), buffer_limit=5, on_dropped=dropped.append)
    writer.add({"n": i} for i in range(8))
    writer.add([{"n": 9}])
    assert writer.pending == 5
    assert sum(dropped) == writer.dropped == 4


def test_close_flushes_what_is_left_and_counts_rows_it_cannot_write():
    sink = Sink()
    writer = _writer(sink).start()
    writer.add({"n": i} for i in range(4))
    writer.close()
    assert sink.rows == [0, 1, 2, 3]

    dead = _writer(Sink(fail_times=99))
    dead.add([{"n": 1}])
    dead.close(attempts=1)
    assert dead.dropped == 1
    assert dead.pending == 0


def test_rows_of_a_failed_write_go_out_with_later_rows_in_one_commit():
    sink = Sink(fail_times=1)
    writer = _writer(sink)
    writer.add({"n": i} for i in range(3))
    assert writer.flush() is False
    writer.add({"n": i} for i in range(3, 5))
    assert writer.pending == 5
    assert writer.flush() is True
    assert sink.batches == [[0, 1, 2, 3, 4]]
    assert (writer.written, writer.pending) == (5, 0)


def test_only_the_rows_the_schema_cannot_hold_are_dropped_and_the_writer_goes_on():
    sink, failures, dropped = Sink(), [], []
    writer = _writer(sink, on_failure=lambda: failures.append(1), on_dropped=dropped.append)
    writer.add([{"n": 1}, {"n": "not a number"}, {"n": 3}])
    assert writer.flush() is True  # nothing is kept that could never be written
    assert (sink.rows, writer.pending, sum(dropped), len(failures)) == ([1, 3], 0, 1, 1)
    writer.add([{"n": 4}])
    assert writer.flush() is True
    assert sink.rows == [1, 3, 4]


def test_a_bad_value_deep_in_a_large_flush_costs_only_its_own_row(monkeypatch):
    monkeypatch.setattr(predictions, "CONVERT_SLICE_ROWS", 100)
    two = pa.schema([("request_id", pa.string()), ("n", pa.int64())])
    written: list[pa.Table] = []
    dropped: list[int] = []
    writer = predictions.PredictionLogWriter(
        two,
        written.append,
        flush_rows=10_000,
        flush_seconds=60,
        buffer_limit=10_000,
        on_dropped=dropped.append,
    )
    rows = [{"request_id": f"r-{i}", "n": i} for i in range(1_000)]
    rows[737]["n"] = float("nan")  # an int64 column cannot hold it
    rows[738]["request_id"] = object()
    writer.add(rows)
    assert writer.flush() is True
    table = pa.concat_tables(written)
    assert table.column("n").to_pylist() == [i for i in range(1_000) if i not in (737, 738)]
    assert table.column("request_id").null_count == 0
    assert (sum(dropped), writer.written, writer.pending) == (2, 998, 0)


def test_rows_added_while_the_writer_flushes_are_neither_lost_nor_torn():
    two = pa.schema([("n", pa.int64()), ("twice", pa.int64())])
    written: list[pa.Table] = []
    writer = predictions.PredictionLogWriter(
        two, written.append, flush_rows=50, flush_seconds=0.01, buffer_limit=100_000
    ).start()
    for i in range(20_000):
        writer.add([{"n": i, "twice": 2 * i}])
    writer.close()
    table = pa.concat_tables(written)
    assert sorted(table.column("n").to_pylist()) == list(range(20_000))
    pairs = zip(table.column("n").to_pylist(), table.column("twice").to_pylist(), strict=True)
    assert all(twice == 2 * n for n, twice in pairs)
    assert len(written) > 1  # the writer thread really ran beside the adds


def test_log_rows_carry_ids_features_outcome_and_utc_time(spec, row_model, good_row):
    row = row_model.model_validate(good_row)
    [record] = predictions.log_rows([row], ["r-1"], [0.7], [True], spec.model_features, "3", "canary")
    assert record["request_id"] == "r-1"
    assert record["channel"] == "web"
    assert (record["score"], record["decision"], record["model_version"], record["variant"]) == (
        0.7,
        True,
        "3",
        "canary",
    )
    assert record["predicted_at"].utcoffset().total_seconds() == 0
    assert pa.Table.from_pylist([record], schema=predictions.log_schema(spec)).num_rows == 1
