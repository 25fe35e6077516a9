"""What a served prediction is: the request/response schema, fast row scoring, the metrics and
the batched writer that appends every prediction to the lake's ``prediction_log`` table.

The serving process (serving/service.py) and the load generator share these definitions, so a
request that validates here is one the service accepts.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from driftloop.deploy.base import (
    LATENCY_BUCKETS,
    LATENCY_SECONDS,
    LOG_DROPPED_TOTAL,
    LOG_FAILURES_TOTAL,
    PREDICTIONS_TOTAL,
    REQUESTS_TOTAL,
    SCORE,
    SCORE_BUCKETS,
)
from driftloop.lake.names import PREDICTION_LOG
from driftloop.log import get_logger

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from driftloop.config import Settings
    from driftloop.dataset import DatasetSpec
    from driftloop.training import ModelScorer

log = get_logger(__name__)

LOG_COLUMNS_BEFORE = ("request_id", "event_id")
LOG_COLUMNS_AFTER = ("score", "decision", "model_version", "variant", "predicted_at")

# A feature value: strict (a JSON string is not a number), finite; null means "missing", which
# LightGBM routes like in training. The key itself is still required.
NumericFeature = Annotated[float | None, Field(strict=True, allow_inf_nan=False)]
CategoricalFeature = Annotated[str | None, Field(strict=True, max_length=200)]


class _RowBase(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Annotated[str, Field(strict=True, min_length=1, max_length=200)]
    request_id: Annotated[str | None, Field(strict=True, min_length=1, max_length=200)] = None


class Prediction(BaseModel):
    """One scored row, as the service returns it."""

    request_id: str
    event_id: str
    score: float
    decision: bool
    model_version: str
    variant: str


class BatchPrediction(BaseModel):
    """The answer to a batch: one prediction per row, in request order."""

    predictions: list[Prediction]


def categorical_features(spec: DatasetSpec) -> list[str]:
    return [f for f in spec.model_features if f in spec.features.categorical]


def row_model(spec: DatasetSpec) -> type[BaseModel]:
    """The typed request row: event_id, optional request_id and every model feature (required)."""
    categorical = set(spec.features.categorical)
    fields: dict[str, Any] = {
        name: (CategoricalFeature if name in categorical else NumericFeature, ...)
        for name in spec.model_features
    }
    return create_model("PredictionRow", __base__=_RowBase, **fields)


def batch_model(row: type[BaseModel], max_rows: int) -> type[BaseModel]:
    """A batch request: ``{"rows": [row, ...]}`` with 1..max_rows rows."""
    return create_model(
        "PredictionBatch",
        __config__=ConfigDict(extra="forbid", frozen=True),
        rows=(Annotated[list[row], Field(min_length=1, max_length=max_rows)], ...),
    )


def validation_message(errors: Sequence[dict[str, Any]]) -> str:
    """Pydantic's error list as one sentence a client can act on."""
    parts = []
    for err in errors[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "invalid prediction request: " + "; ".join(parts) + more


@dataclass(frozen=True)
class RowScorer:
    """Scores validated rows with the booster directly: no pandas on the request path.

    Same encoding as :class:`driftloop.training.FeatureEncoder` (unseen or null categories are
    missing), ~10x cheaper per row than building a DataFrame.
    """

    scorer: ModelScorer
    codes: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_scorer(cls, scorer: ModelScorer) -> RowScorer:
        codes = {
            feature: {value: float(i) for i, value in enumerate(values)}
            for feature, values in scorer.encoder.categories.items()
        }
        return cls(scorer, codes)

    @property
    def features(self) -> tuple[str, ...]:
        return self.scorer.encoder.features

    def matrix(self, rows: Sequence[Any]) -> np.ndarray:
        """Rows (pydantic rows or dicts) as the model's float64 matrix; KeyError on an unknown feature."""
        import numpy as np

        nan = math.nan
        out = np.empty((len(rows), len(self.features)), dtype=np.float64)
        for i, row in enumerate(rows):
            values = row if isinstance(row, dict) else row.__dict__
            for j, feature in enumerate(self.features):
                value = values[feature]
                codes = self.codes.get(feature)
                if codes is not None:
                    out[i, j] = nan if value is None else codes.get(str(value), nan)
                else:
                    out[i, j] = nan if value is None else value
        return out

    def score(self, rows: Sequence[Any]) -> list[float]:
        matrix = self.matrix(rows)
        return self.scorer.booster.predict(matrix, num_threads=1).tolist()


def log_schema(spec: DatasetSpec) -> pa.Schema:
    """The prediction_log table: ids, every model feature as a typed column, the outcome."""
    import pyarrow as pa

    categorical = set(spec.features.categorical)
    return pa.schema(
        [
            ("request_id", pa.string()),
            ("event_id", pa.string()),
            *((f, pa.string() if f in categorical else pa.float64()) for f in spec.model_features),
            ("score", pa.float64()),
            ("decision", pa.bool_()),
            ("model_version", pa.string()),
            ("variant", pa.string()),
            ("predicted_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def new_request_id() -> str:
    return uuid.uuid4().hex


# --- metrics ---------------------------------------------------------------------------------


class ServingMetrics:
    """The Prometheus series of deploy/base.py, bound to this server's version and variant.

    Labelled children are resolved once: ``labels()`` costs more than the increment itself,
    and it would run several times per request.
    """

    def __init__(
        self,
        requests: Any,
        predictions: Any,
        latency: Any,
        score: Any,
        log_failures: Any,
        log_dropped: Any,
        *,
        model_version: str,
        variant: str,
    ) -> None:
        self.requests = requests
        self.model_version = model_version
        self.variant = variant
        by_model = (model_version, variant)
        self.predictions = predictions.labels(*by_model)
        self.latency = latency.labels(*by_model)
        self.score = score.labels(*by_model)
        self.log_failures = log_failures.labels(*by_model)
        self.log_dropped = log_dropped.labels(*by_model)
        self._requests_by: dict[tuple[str, int], Any] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        counter = self._requests_by.get((endpoint, status))
        if counter is None:
            counter = self.requests.labels(self.model_version, self.variant, endpoint, str(status))
            self._requests_by[(endpoint, status)] = counter
        counter.inc()
        self.latency.observe(seconds)

    def observe_scores(self, scores: Sequence[float]) -> None:
        for value in scores:
            self.score.observe(value)
        self.predictions.inc(len(scores))


@lru_cache(maxsize=1)
def _collectors() -> tuple[Any, ...]:
    # prometheus_client is imported late on purpose: BentoML sets PROMETHEUS_MULTIPROC_DIR in
    # each worker after the service module is imported, and the metric objects must be created
    # after that or /metrics (a multiprocess collector) never sees them.
    from prometheus_client import Counter, Histogram

    by_model = ["model_version", "variant"]
    return (
        Counter(REQUESTS_TOTAL, "Prediction requests by outcome.", [*by_model, "endpoint", "status"]),
        Counter(PREDICTIONS_TOTAL, "Rows scored.", by_model),
        Histogram(LATENCY_SECONDS, "Prediction request latency.", by_model, buckets=LATENCY_BUCKETS),
        Histogram(SCORE, "Model scores.", by_model, buckets=SCORE_BUCKETS),
        Counter(LOG_FAILURES_TOTAL, "Prediction-log writes to the lake that failed.", by_model),
        Counter(
            LOG_DROPPED_TOTAL,
            "Prediction-log rows dropped: the buffer was full, or a row the log schema cannot hold.",
            by_model,
        ),
    )


def serving_metrics(model_version: str, variant: str) -> ServingMetrics:
    """The process's metric objects (created once), labelled for one served model."""
    return ServingMetrics(*_collectors(), model_version=model_version, variant=variant)


def metrics_exposition() -> tuple[bytes, str]:
    """The Prometheus text of every worker of this server, and its content type.

    Under several workers each one writes its series to ``PROMETHEUS_MULTIPROC_DIR`` (BentoML
    sets it for every worker), so any worker answering a scrape reports them all; a process
    without it (one worker, tests) reports its own registry.
    """
    import os

    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return generate_latest(registry), CONTENT_TYPE_LATEST


# --- the prediction-log writer ---------------------------------------------------------------


def append_to_lake(settings: Settings) -> Callable[[pa.Table], None]:
    """A sink appending Arrow batches to the prediction_log Delta table through delta-rs.

    The table handle stays open between writes: delta-rs then reads only the commits made
    since (by this and other servers) instead of replaying the log on every flush, which
    halved the CPU of a write here. A failed write drops the handle; the next one reopens.
    """
    from deltalake import DeltaTable, write_deltalake
    from deltalake.exceptions import TableNotFoundError

    from driftloop.lake import tables

    uri = tables.delta_rs_uri(settings.table_uri(PREDICTION_LOG))
    options = tables.storage_options(settings)
    handle: list[DeltaTable] = []

    def write(batch: pa.Table) -> None:
        try:
            if not handle:
                try:
                    handle.append(DeltaTable(uri, storage_options=options))
                except TableNotFoundError:
                    write_deltalake(uri, batch, mode="append", storage_options=options)
                    return
            write_deltalake(handle[0], batch, mode="append")
        except Exception:
            handle.clear()
            raise

    return write


# The writer thread shares the GIL with the server's event loop. A thread waiting for the GIL
# takes it only when the holder lets go or after the 5 ms switch interval, so converting a whole
# flush (5,000 rows: ~4 ms of Arrow conversion, and 16 ms more when the rows were gathered into
# columns here) held requests up to 14 ms. The columns are built as rows arrive (~2 µs a row on
# the request path) and converted a slice at a time, letting go of the GIL between slices.
CONVERT_SLICE_ROWS = 1000
YIELD_AFTER_S = 0.0005  # of conversion, then the GIL is let go
YIELD_FOR_S = 0.0001  # long enough for the event loop's thread to take it
# what pyarrow raises for a value its column's type cannot hold (ArrowInvalid is a ValueError)
NOT_CONVERTIBLE = (TypeError, ValueError, ArithmeticError)


class PredictionLogWriter:
    """Buffers logged predictions in memory and appends them to the lake off the request path.

    ``add`` only appends the rows' values to in-memory columns (no I/O). A daemon thread writes
    every ``flush_seconds`` or as soon as ``flush_rows`` are waiting. A failed write keeps the rows
    (as the Arrow table it built) for the next attempt (with backoff), counts and logs the
    failure; rows beyond ``buffer_limit`` are dropped and counted. ``close`` flushes what is left.
    """

    def __init__(
        self,
        schema: pa.Schema,
        sink: Callable[[pa.Table], None],
        *,
        flush_rows: int,
        flush_seconds: float,
        buffer_limit: int,
        on_failure: Callable[[], None] = lambda: None,
        on_dropped: Callable[[int], None] = lambda n: None,
        context: dict[str, str] | None = None,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.schema = schema
        self.sink = sink
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.buffer_limit = buffer_limit
        self.on_failure = on_failure
        self.on_dropped = on_dropped
        self.context = context or {}
        self.max_backoff_s = max_backoff_s
        self._names = tuple(schema.names)
        self._columns: list[list[Any]] = [[] for _ in self._names]
        self._buffered = 0  # rows in _columns
        self._unwritten: deque[pa.Table] = deque()  # converted, a write of them failed
        self._unwritten_rows = 0
        self._buffer_lock = threading.Lock()  # add() against the flush taking the columns
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.failures = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return self._buffered + self._unwritten_rows

    def start(self) -> PredictionLogWriter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
            self._thread.start()
        return self

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Queue rows for the lake; never blocks on I/O, never raises for a full buffer."""
        dropped = 0
        with self._buffer_lock:
            room = self.buffer_limit - self._buffered - self._unwritten_rows
            for row in rows:
                if room <= 0:
                    dropped += 1
                    continue
                for column, name in zip(self._columns, self._names, strict=True):
                    column.append(row.get(name))
                self._buffered += 1
                room -= 1
            full = self._buffered >= self.flush_rows
        if dropped:
            self.dropped += dropped
            self.on_dropped(dropped)
        if full:
            self._wake.set()

    def _take(self) -> tuple[list[list[Any]], int]:
        with self._buffer_lock:
            columns, rows = self._columns, self._buffered
            self._columns, self._buffered = [[] for _ in self._names], 0
            self._unwritten_rows += rows  # counted as pending until written
        return columns, rows

    def flush(self) -> bool:
        """Write the rows buffered when called; True when they were written (or there were none).

        Rows arriving meanwhile wait for the next flush: draining until empty would, under
        steady traffic, turn one flush into a stream of tiny commits (each costing a commit).
        Rows of earlier failed writes go in the same commit.
        """
        import pyarrow as pa

        with self._write_lock:
            columns, rows = self._take()
            if rows:
                table, refused = self._to_table(columns, rows)
                if refused:
                    self._refuse(refused, columns)
                with self._buffer_lock:
                    self._unwritten_rows -= len(refused)
                if table.num_rows:
                    self._unwritten.append(table)
            if not self._unwritten:
                return True
            tables = list(self._unwritten)
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            try:
                self.sink(table)
            except Exception as exc:
                self.failures += 1
                self.on_failure()
                log.warning(
                    "prediction_log.write_failed",
                    rows=table.num_rows,
                    pending=self.pending,
                    error=f"{type(exc).__name__}: {exc}"[:500],
                    **self.context,
                )
                return False
            self._unwritten.clear()
            with self._buffer_lock:
                self._unwritten_rows -= table.num_rows
            self.written += table.num_rows
            return True

    def _to_table(self, columns: list[list[Any]], rows: int) -> tuple[pa.Table, dict[int, str]]:
        """The columns as an Arrow table of the log's schema, a slice at a time (see CONVERT_SLICE_ROWS).

        Values the schema cannot hold never fail the rest: a slice pyarrow refuses is converted
        value by value, and the rows with a refused value are left out of the table and returned
        (row index -> reason) so they are counted and logged, not written.
        """
        import pyarrow as pa

        arrays = []
        refused: dict[int, str] = {}
        held_since = time.perf_counter()
        for column, values in zip(self.schema, columns, strict=True):
            chunks = []
            for start in range(0, rows, CONVERT_SLICE_ROWS):
                part = values[start : start + CONVERT_SLICE_ROWS]
                try:
                    chunks.append(pa.array(part, type=column.type))
                except NOT_CONVERTIBLE:
                    chunks.append(self._convert_each(column, part, start, refused))
                if time.perf_counter() - held_since > YIELD_AFTER_S:
                    time.sleep(YIELD_FOR_S)
                    held_since = time.perf_counter()
            arrays.append(pa.chunked_array(chunks, type=column.type))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        if refused:
            keep = [i not in refused for i in range(rows)]
            table = table.filter(pa.array(keep, type=pa.bool_()))
        return table, refused

    @staticmethod
    def _convert_each(column: pa.Field, values: list[Any], start: int, refused: dict[int, str]) -> pa.Array:
        """One value at a time; a refused value becomes null (its row is filtered out) and is recorded."""
        import pyarrow as pa

        kept = []
        for offset, value in enumerate(values):
            try:
                pa.array([value], type=column.type)
            except NOT_CONVERTIBLE as exc:
                refused.setdefault(start + offset, f"{column.name}: {type(exc).__name__}: {exc}"[:300])
                value = None
            kept.append(value)
        return pa.array(kept, type=column.type)

    def _refuse(self, refused: dict[int, str], columns: list[list[Any]]) -> None:
        """Count rows the log's schema cannot hold as dropped and say which and why (they never will fit)."""
        ids = columns[self._names.index("request_id")] if "request_id" in self._names else None
        self.failures += 1
        self.on_failure()
        self.dropped += len(refused)
        self.on_dropped(len(refused))
        log.error(
            "prediction_log.rows_not_convertible",
            rows=len(refused),
            request_ids=[ids[i] for i in sorted(refused)[:5]] if ids else None,
            reasons=sorted(set(refused.values()))[:5],
            **self.context,
        )

    def _run(self) -> None:
        backoff = self.flush_seconds
        while not self._stop.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            if self._stop.is_set():
                break
            ok = self.flush()
            backoff = (
                self.flush_seconds if ok else min(backoff * 2, max(self.max_backoff_s, self.flush_seconds))
            )

    def close(self, attempts: int = 3) -> None:
        """Stop the thread and flush what is left (a few attempts, then the rows are counted lost)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for attempt in range(attempts):
            if self.flush():  # nothing is added any more: one flush empties the buffer
                return
            time.sleep(0.2 * (attempt + 1))
        lost = self.pending
        if lost:
            with self._buffer_lock:
                self._columns, self._buffered = [[] for _ in self._names], 0
                self._unwritten.clear()
                self._unwritten_rows = 0
            self.dropped += lost
            self.on_dropped(lost)
            log.error("prediction_log.lost_on_shutdown", rows=lost, **self.context)


def log_rows(
    rows: Sequence[BaseModel],
    request_ids: Sequence[str],
    scores: Sequence[float],
    decisions: Sequence[bool],
    features: Sequence[str],
    model_version: str,
    variant: str,
) -> list[dict[str, Any]]:
    """The prediction_log rows of one scored request."""
    now = datetime.now(UTC)
    out = []
    for row, request_id, score, decision in zip(rows, request_ids, scores, decisions, strict=True):
        values = row.__dict__
        record = {"request_id": request_id, "event_id": values["event_id"]}
        for feature in features:
            record[feature] = values.get(feature)
        record.update(
            score=score, decision=decision, model_version=model_version, variant=variant, predicted_at=now
        )
        out.append(record)
    return out
