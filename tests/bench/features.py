"""Feature-job benchmark: the Spark job over Delta at 1M and 10M events on local[2], and the same
aggregation done by polars in one process as the baseline, in the same run.

Both sides read the same bronze Delta table and write their output (Delta for Spark, Parquet for
polars); data generation is untimed. On the smallest volume the two outputs are compared value
by value, so the baseline computes exactly what the job computes.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from driftloop.config import Settings
from driftloop.dataset import DatasetSpec, load_dataset_spec, parse_window
from driftloop.features import build_features, spark_to_pandas
from driftloop.lake import tables
from driftloop.lake.spark import get_spark
from tests.bench.data import EventVolume, write_bronze

RESULTS = Path(__file__).parent / "results"


def polars_features(bronze: pl.DataFrame, spec: DatasetSpec) -> pl.DataFrame:
    """The job's window features in polars: per entity, events in [t - w, t), closed on the left."""
    frame = bronze.select(spec.column_names)
    for window_spec in spec.features.windows:
        ordered = frame.sort(window_spec.entity, spec.event_time)
        aggregations = []
        for window in window_spec.windows:
            period = f"{int(parse_window(window).total_seconds())}s"
            value = pl.col(window_spec.column)
            exprs = []
            for name, agg, w in window_spec.feature_names():
                if w != window:
                    continue
                exprs.append(
                    {
                        "count": value.count().cast(pl.Int64),
                        "sum": value.sum().fill_null(0.0),
                        "mean": value.mean(),
                        "min": value.min(),
                        "max": value.max(),
                    }[agg].alias(name)
                )
            rolled = ordered.rolling(
                index_column=spec.event_time, period=period, group_by=window_spec.entity, closed="left"
            ).agg(exprs)
            aggregations.append(rolled.drop(window_spec.entity, spec.event_time))
        frame = pl.concat([ordered, *aggregations], how="horizontal")
    for ratio in spec.features.ratios:
        denominator = pl.col(ratio.denominator)
        frame = frame.with_columns(
            pl.when(denominator.is_null() | (denominator == 0))
            .then(None)
            .otherwise(pl.col(ratio.numerator) / denominator)
            .alias(ratio.name)
        )
    return frame


def _read_bronze_polars(settings: Settings) -> pl.DataFrame:
    return pl.read_delta(tables.delta_rs_uri(settings.table_uri(tables.BRONZE_EVENTS)))


def _compare(
    spark, settings: Settings, polars_out: pl.DataFrame, spec: DatasetSpec, sample: int = 20_000
) -> float:
    """Largest absolute difference between the two engines' features on a sample of events."""
    ids = polars_out.select(spec.event_id).sample(n=min(sample, polars_out.height), seed=1)
    mine = spark_to_pandas(spark.read.format("delta").load(settings.table_uri(tables.FEATURES))).set_index(
        spec.event_id
    )
    theirs = polars_out.join(ids, on=spec.event_id).to_pandas().set_index(spec.event_id)
    mine = mine.loc[theirs.index]
    worst = 0.0
    for column in (*spec.window_feature_names, *(r.name for r in spec.features.ratios)):
        a, b = mine[column].astype(float).to_numpy(), theirs[column].astype(float).to_numpy()
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            raise AssertionError(f"{column}: null patterns differ between Spark and polars")
        both = ~np.isnan(a)
        if both.any():
            worst = max(worst, float(np.max(np.abs(a[both] - b[both]) / np.maximum(1.0, np.abs(b[both])))))
    return worst


def bench_volume(root: Path, n_events: int, echo=print, verify: bool = False) -> dict:
    spec = load_dataset_spec()
    volume = EventVolume(n_events)
    settings = Settings(data_dir=root / volume.label, spark_master="local[2]", spark_driver_memory="8g")
    echo(f"[features {volume.label}] writing bronze (untimed)")
    write_bronze(settings, spec, volume)
    spark = get_spark(settings)

    echo(
        f"[features {volume.label}] Spark feature job (build_features: Delta in, MERGE-less first build out)"
    )
    began = time.perf_counter()
    report = build_features(spark, settings, spec)
    spark_s = time.perf_counter() - began
    echo(f"[features {volume.label}] Spark {spark_s:.1f}s for {report.new_events:,} events")

    echo(f"[features {volume.label}] polars baseline (read Delta, same windows, write Parquet)")
    began = time.perf_counter()
    out = polars_features(_read_bronze_polars(settings), spec)
    out.write_parquet(root / volume.label / "polars_features.parquet")
    polars_s = time.perf_counter() - began
    echo(f"[features {volume.label}] polars {polars_s:.1f}s")

    row = {
        "events": report.new_events,
        "volume": volume.label,
        "spark_s": round(spark_s, 2),
        "spark_events_per_s": round(report.new_events / spark_s),
        "polars_s": round(polars_s, 2),
        "polars_events_per_s": round(report.new_events / polars_s),
        "ratio_spark_over_polars": round(spark_s / polars_s, 2),
        "spark_master": settings.spark_master,
    }
    if verify:
        row["max_relative_difference"] = _compare(spark, settings, out, spec)
        echo(f"[features {volume.label}] engines agree within {row['max_relative_difference']:.2e}")
    return row


def run(volumes: tuple[int, ...] = (1_000_000, 10_000_000), echo=print) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-features-") as scratch:
        for index, n in enumerate(volumes):
            rows.append(bench_volume(Path(scratch), n, echo, verify=index == 0))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "features.json").write_text(json.dumps(rows, indent=2))
    return rows


def summary(rows: list[dict]) -> str:
    lines = [
        "| events | Spark (local[2]) | events/s | polars | events/s | Spark ÷ polars |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['volume']} | {r['spark_s']:.1f} s | {r['spark_events_per_s']:,} | {r['polars_s']:.1f} s | "
            f"{r['polars_events_per_s']:,} | {r['ratio_spark_over_polars']:.2f}× |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(run()))
