"""The feature job (Spark over Delta) and the point-in-time-correct training-set builder.

Features of an event use only events of the same entity strictly before it in event time, so
a feature row can never leak the future; training sets pin the Delta versions they read.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from driftloop.config import Settings
from driftloop.dataset import DatasetSpec, WindowFeatureSpec, parse_window
from driftloop.lake import tables
from driftloop.log import get_logger

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import Column, DataFrame, SparkSession

log = get_logger(__name__)

_WATERMARK_KEY = "driftloop.bronze_version"


class TrainingSetError(ValueError):
    """The requested training set cannot be built; the message says why and what to change."""


def compute_features(events: DataFrame, spec: DatasetSpec) -> DataFrame:
    """Per-event features: passthrough columns, trailing windows per entity, and ratios.

    A window ``w`` of an event at time ``t`` holds the same entity's events in ``[t - w, t)``
    (microseconds), so simultaneous and later events are excluded. One shuffle and sort per
    entity; the entity with the most features comes last, so the fewest computed columns
    ride through the other shuffles.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import TimestampType

    ts = "__ts_us"
    frame = events.withColumn(ts, F.unix_micros(F.col(spec.event_time)))
    # the event time rides through every shuffle once, as the microseconds the windows order by
    restore_time = isinstance(events.schema[spec.event_time].dataType, TimestampType)
    if restore_time:
        frame = frame.drop(spec.event_time)
    by_entity: dict[str, list[WindowFeatureSpec]] = {}
    for window_spec in spec.features.windows:
        by_entity.setdefault(window_spec.entity, []).append(window_spec)
    size = {entity: sum(len(s.feature_names()) for s in specs) for entity, specs in by_entity.items()}
    for entity in sorted(by_entity, key=size.__getitem__):
        frame = _with_entity_features(frame, by_entity[entity], ts)
    if restore_time:
        frame = frame.withColumn(spec.event_time, F.timestamp_micros(F.col(ts)))
    for ratio in spec.features.ratios:
        denominator = F.col(ratio.denominator)
        frame = frame.withColumn(
            ratio.name,
            F.when(denominator.isNull() | (denominator == 0), F.lit(None)).otherwise(
                F.col(ratio.numerator) / denominator
            ),
        )
    keys = [spec.event_id, spec.event_time, *spec.entities]
    passthrough = [c for c in spec.features.passthrough if c not in keys]
    return frame.select(
        *keys, *passthrough, *spec.window_feature_names, *(r.name for r in spec.features.ratios)
    )


def _with_entity_features(frame: DataFrame, window_specs: list[WindowFeatureSpec], ts: str) -> DataFrame:
    """Add the window features of one entity's specs to ``frame`` (one partitioning and sort).

    Counts, sums and means are differences of running aggregates over the entity's history:
    everything before ``t`` minus everything before ``t - w``. Spark keeps a frame that starts
    at UNBOUNDED PRECEDING up to date incrementally, while a sliding range frame re-aggregates
    its whole content for every row: O(rows × frame size), which took minutes for the busy
    merchants of a 10M-event history. Min and max cannot be differenced: they keep the
    sliding frame.

    Values must be finite (ingest quarantines NaN and ±inf): one would poison every later
    running total of its entity. Integral columns are summed exactly, as longs; a floating
    window sum carries the rounding of the running total over the window's own events (about
    ``events × 2⁻⁵³ × running total``), not over the entity's whole history.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, IntegralType

    by_entity = Window.partitionBy(window_specs[0].entity).orderBy(ts)
    # Spark does not deduplicate identical window expressions: each aggregate is computed once
    # as a column here, however many features use it
    aggregates: dict[str, Column] = {}

    def over(name: str, aggregate: Column, end: int, start: int | None = None) -> Column:
        """``aggregate`` over the entity's events in [t + start, t + end] µs (start None: all before)."""
        key = f"__{name}_{start}_{end}"
        if key not in aggregates:
            bounds = (Window.unboundedPreceding if start is None else start, end)
            aggregates[key] = aggregate.over(by_entity.rangeBetween(*bounds)).alias(key)
        return F.col(key)

    features = []
    for window_spec in window_specs:
        column_type = frame.schema[window_spec.column].dataType
        integral = isinstance(column_type, IntegralType)
        value = F.col(window_spec.column)
        if not (integral or isinstance(column_type, DoubleType)):
            # only when needed: a cast makes Spark materialise a copy of the column before the
            # shuffle, one more value per row to move
            value = value.cast("double")
        zero = F.lit(0 if integral else 0.0)
        prefix = f"{window_spec.column}_"
        for name, agg, window in window_spec.feature_names():
            width = int(parse_window(window).total_seconds() * 1_000_000)
            if agg in ("min", "max"):
                extreme = (F.min if agg == "min" else F.max)(value)
                features.append(over(prefix + agg, extreme, -1, -width).cast("double").alias(name))
                continue
            # [t - w, t) = everything up to t - 1 µs minus everything up to t - w - 1 µs
            n_values = F.count(value)
            count = over(prefix + "count", n_values, -1) - over(prefix + "count", n_values, -width - 1)
            if agg == "count":
                features.append(count.cast("long").alias(name))
                continue
            # both running totals add the same rows in the same order up to t - w - 1 µs, so an
            # empty window is exactly 0 - and a sum over no non-null value is 0, not null
            total = F.coalesce(over(prefix + "sum", F.sum(value), -1), zero) - F.coalesce(
                over(prefix + "sum", F.sum(value), -width - 1), zero
            )
            total = total.cast("double")
            features.append((total if agg == "sum" else F.when(count > 0, total / count)).alias(name))
    carried = [F.col(c) for c in frame.columns]
    return frame.select(*carried, *aggregates.values()).select(*carried, *features)


@dataclass(frozen=True)
class FeatureRunReport:
    """What one feature-job run did."""

    bronze_version: int
    features_version: int | None
    previous_bronze_version: int | None
    new_events: int
    rows_merged: int
    skipped: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def asset_extra(self, table_uri: str) -> dict:
        """The features Asset event's payload: which versions a consumer should pin."""
        return {
            "table_uri": table_uri,
            "features_version": self.features_version,
            "bronze_version": self.bronze_version,
            "rows_merged": self.rows_merged,
        }


def processed_bronze_version(settings: Settings) -> int | None:
    """The bronze version the features table was last built from (kept in Delta commit metadata)."""
    table = tables.open_table(settings, tables.FEATURES)
    if table is None:
        return None
    for commit in table.history():
        meta = commit.get("userMetadata")
        if meta:
            try:
                return int(json.loads(meta)[_WATERMARK_KEY])
            except (ValueError, KeyError, TypeError):
                continue
    return None


def _table_version(settings: Settings, name: str) -> int | None:
    table = tables.open_table(settings, name)
    return None if table is None else table.version()


def build_features(spark: SparkSession, settings: Settings, spec: DatasetSpec) -> FeatureRunReport:
    """Bring the features table up to date with bronze, idempotently.

    Only events appended since the last run (Delta change feed) and the later events whose
    windows they fall into are recomputed, then MERGEd on the event id. The bronze version
    is committed with the MERGE, so a rerun for the same bronze version writes nothing.
    """
    from pyspark.sql import functions as F

    bronze_uri, features_uri = settings.table_uri(tables.BRONZE_EVENTS), settings.table_uri(tables.FEATURES)
    current = _table_version(settings, tables.BRONZE_EVENTS)
    if current is None:
        raise FileNotFoundError(f"no bronze table at {bronze_uri}: run ingest_events first")
    previous = processed_bronze_version(settings)
    if previous is not None and previous >= current:
        log.info("features.up_to_date", bronze_version=current)
        return FeatureRunReport(current, _table_version(settings, tables.FEATURES), previous, 0, 0, True)

    bronze = spark.read.format("delta").option("versionAsOf", current).load(bronze_uri)
    if previous is None:
        # a full build: every event is new and needs no outside context; Delta answers the
        # count from its log's file statistics, so no pass over the data is spent on it
        new_events = bronze.count()
        affected = compute_features(bronze, spec)
    else:
        new = (
            spark.read.format("delta")
            .option("readChangeFeed", "true")
            .option("startingVersion", previous + 1)
            .option("endingVersion", current)
            .load(bronze_uri)
            .where(F.col("_change_type") == "insert")
        )
        # bounds as epoch microseconds: collected timestamps would come back in the driver's local zone
        event_us = F.unix_micros(F.col(spec.event_time))
        bounds = new.agg(
            F.count("*").alias("n"), F.min(event_us).alias("lo"), F.max(event_us).alias("hi")
        ).first()
        new_events = int(bounds["n"])
        if new_events == 0:
            # still record the watermark so the next run does not rescan these versions
            affected = compute_features(bronze.limit(0), spec)
        else:
            reach = int(spec.max_window.total_seconds() * 1_000_000)
            context = bronze.where(event_us.between(bounds["lo"] - reach, bounds["hi"] + reach))
            affected = compute_features(context, spec).where(
                event_us.between(bounds["lo"], bounds["hi"] + reach)
            )
    metadata = json.dumps({_WATERMARK_KEY: current, "new_events": new_events})
    affected = affected.withColumn("_bronze_version", F.lit(current).cast("long"))

    log.info("features.computing", bronze_version=current, since=previous, new_events=new_events)
    if _table_version(settings, tables.FEATURES) is None:
        # data-skipping statistics only on the columns readers filter and MERGE on: min/max of
        # every feature value made the write a third slower and no query prunes on them
        stats_columns = ",".join([spec.event_id, spec.event_time, *spec.entities])
        (
            affected.write.format("delta")
            .option("userMetadata", metadata)
            .option("delta.dataSkippingStatsColumns", stats_columns)
            .mode("error")  # "errorifexists" in classic Spark only
            .save(features_uri)
        )
    else:
        # MERGE in SQL rather than through delta.tables.DeltaTable: the same statement runs on a
        # local session and on a Spark Connect server (which would need Delta's Connect plugin,
        # not published on Maven Central, for the DeltaTable API)
        view = f"driftloop_features_update_{uuid.uuid4().hex}"
        affected.createOrReplaceTempView(view)
        spark.conf.set("spark.databricks.delta.commitInfo.userMetadata", metadata)
        try:
            spark.sql(
                f"MERGE INTO delta.{_quoted(features_uri)} AS t USING {view} AS s "
                f"ON t.{_quoted(spec.event_id)} = s.{_quoted(spec.event_id)} "
                "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
            ).collect()
        finally:
            spark.conf.unset("spark.databricks.delta.commitInfo.userMetadata")
            spark.catalog.dropTempView(view)
    version = _table_version(settings, tables.FEATURES)
    merged = _rows_written(settings)
    report = FeatureRunReport(current, version, previous, new_events, merged, False)
    log.info("features.done", **report.as_dict())
    return report


def _quoted(identifier: str) -> str:
    """A Spark SQL identifier (a column, or a table path after ``delta.``) in backquotes."""
    return "`" + identifier.replace("`", "``") + "`"


def _rows_written(settings: Settings) -> int:
    """Rows the features table's latest commit inserted or updated (from Delta's metrics)."""
    table = tables.open_table(settings, tables.FEATURES)
    metrics = (table.history(1)[0].get("operationMetrics") or {}) if table else {}
    if "numTargetRowsInserted" in metrics:
        return int(metrics["numTargetRowsInserted"]) + int(metrics.get("numTargetRowsUpdated", 0))
    return int(metrics.get("numOutputRows", 0))


def spark_to_pandas(frame: DataFrame) -> pd.DataFrame:
    """Collect a Spark frame with its timestamp columns made UTC-aware again."""
    from pyspark.sql.types import TimestampType

    result = frame.toPandas()
    # Spark Connect attaches its query metrics here; pandas would try to write them as JSON
    # with the frame (to_parquet), and no caller wants them
    result.attrs.clear()
    for field in frame.schema.fields:
        if isinstance(field.dataType, TimestampType) and result[field.name].dt.tz is None:
            result[field.name] = result[field.name].dt.tz_localize("UTC")
    return result


@dataclass(frozen=True)
class TrainingSet:
    """Labelled feature rows plus everything needed to rebuild them exactly (time travel)."""

    frame: DataFrame
    features_version: int
    labels_version: int
    label_cutoff: datetime | None

    def to_pandas(self) -> pd.DataFrame:
        """The rows as pandas, timestamps as UTC-aware (Spark hands them over naive, in UTC)."""
        return spark_to_pandas(self.frame)

    @property
    def lineage(self) -> dict[str, str]:
        """Tags that pin this training set (stored with models that are trained on it)."""
        return {
            "features_table": tables.FEATURES,
            "features_version": str(self.features_version),
            "labels_table": tables.BRONZE_LABELS,
            "labels_version": str(self.labels_version),
            "label_cutoff": self.label_cutoff.isoformat() if self.label_cutoff else "",
        }


def build_training_set(
    spark: SparkSession,
    settings: Settings,
    spec: DatasetSpec,
    *,
    features_version: int | None = None,
    labels_version: int | None = None,
    label_cutoff: datetime | None = None,
    event_time_from: datetime | None = None,
    event_time_to: datetime | None = None,
) -> TrainingSet:
    """Every labelled event with its features as of its own event time.

    Labels count only if known by ``label_cutoff`` (their label_time), and a corrected label
    replaces the earlier one. Pinning both versions (as a model's lineage tags do) rebuilds
    the identical set later, whatever has been written since.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    features_version = (
        features_version if features_version is not None else _table_version(settings, tables.FEATURES)
    )
    labels_version = (
        labels_version if labels_version is not None else _table_version(settings, tables.BRONZE_LABELS)
    )
    if features_version is None:
        raise TrainingSetError("no features table yet: run build_features before training")
    if labels_version is None:
        raise TrainingSetError(
            "no labels yet: labels land under <landing>/labels and are ingested by ingest_events"
        )

    features = (
        spark.read.format("delta")
        .option("versionAsOf", features_version)
        .load(settings.table_uri(tables.FEATURES))
    )
    labels = (
        spark.read.format("delta")
        .option("versionAsOf", labels_version)
        .load(settings.table_uri(tables.BRONZE_LABELS))
    )
    if label_cutoff is not None:
        labels = labels.where(F.col(spec.label_time) <= F.lit(label_cutoff))
    latest = Window.partitionBy(spec.event_id).orderBy(
        F.col(spec.label_time).desc(), F.col("_batch_id").desc()
    )
    labels = (
        labels.withColumn("__rank", F.row_number().over(latest))
        .where("__rank = 1")
        .select(spec.event_id, F.col(spec.label).cast("int").alias(spec.label), spec.label_time)
    )
    frame = features.drop("_bronze_version").join(labels, spec.event_id, "inner")
    if event_time_from is not None:
        frame = frame.where(F.col(spec.event_time) >= F.lit(event_time_from))
    if event_time_to is not None:
        frame = frame.where(F.col(spec.event_time) < F.lit(event_time_to))
    return TrainingSet(frame, features_version, labels_version, label_cutoff)
