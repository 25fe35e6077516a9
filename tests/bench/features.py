"""Feature-job benchmark: the Spark job over Delta at 1M and 10M events on local[2], and the same
aggregation done by polars in one process as the baseline, in the same run.

Both sides read the same bronze Delta table (the same columns) and write a Delta table; data
generation is untimed. Spark is measured after one warm-up build on a small lake (a cold JVM
compiles its hot paths first; that cost is reported separately), both as the real job
(``build_features``: bronze in, features table out) and as ``compute_features`` alone into a
no-op sink. On the first volume the two engines' outputs are compared on every event and feature,
so the baseline computes exactly what the job computes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from driftloop.config import Settings
from driftloop.dataset import DatasetSpec, load_dataset_spec, parse_window
from driftloop.features import build_features, compute_features
from driftloop.lake import tables
from driftloop.lake.spark import get_spark
from tests.bench.data import EventVolume, write_bronze
from tests.bench.timing import timed

RESULTS = Path(__file__).parent / "results"
VOLUMES = (1_000_000, 10_000_000)
WARM_UP = 200_000
SPARK = {"spark_master": "local[2]", "spark_driver_memory": "8g"}
TOLERANCE = 1e-9
"""Largest relative difference allowed between the engines' floating features (counts: none)."""


def polars_features(bronze: pl.DataFrame, spec: DatasetSpec) -> pl.DataFrame:
    """The job's features in polars: per entity, the events in [t - w, t) (closed on the left)."""
    windows = []
    for window_spec in spec.features.windows:
        value = pl.col(window_spec.column)
        for name, agg, window in window_spec.feature_names():
            rolling = {
                "by": spec.event_time,
                "window_size": f"{int(parse_window(window).total_seconds())}s",
                "closed": "left",
            }
            expression = {
                "count": value.is_not_null().cast(pl.Int64).rolling_sum_by(**rolling).fill_null(0),
                "sum": value.rolling_sum_by(**rolling).fill_null(0.0),
                "mean": value.rolling_mean_by(**rolling),
                "min": value.rolling_min_by(**rolling),
                "max": value.rolling_max_by(**rolling),
            }[agg]
            windows.append(expression.over(window_spec.entity).alias(name))
    ratios = [
        pl.when(pl.col(r.denominator).is_null() | (pl.col(r.denominator) == 0))
        .then(None)
        .otherwise(pl.col(r.numerator) / pl.col(r.denominator))
        .alias(r.name)
        for r in spec.features.ratios
    ]
    keys = [spec.event_id, spec.event_time, *spec.entities]
    passthrough = [c for c in spec.features.passthrough if c not in keys]
    return (
        bronze.with_columns(windows)
        .with_columns(ratios)
        .select(*keys, *passthrough, *spec.window_feature_names, *(r.name for r in spec.features.ratios))
    )


def compare(spark_out: pl.DataFrame, polars_out: pl.DataFrame, spec: DatasetSpec) -> float:
    """Largest relative difference over every event and feature; raises if the engines disagree.

    Counts must be identical and nulls in the same places; floating values may differ by
    rounding only (the engines add in different orders).
    """
    if spark_out.height != polars_out.height:
        raise AssertionError(f"row counts differ: Spark {spark_out.height}, polars {polars_out.height}")
    joined = spark_out.join(polars_out, on=spec.event_id, how="inner", suffix="__polars")
    if joined.height != spark_out.height:
        raise AssertionError(f"{spark_out.height - joined.height} event ids are not in both outputs")
    worst = 0.0
    for column in (*spec.window_feature_names, *(r.name for r in spec.features.ratios)):
        ours, theirs = pl.col(column), pl.col(f"{column}__polars")
        nulls = joined.select((ours.is_null() != theirs.is_null()).sum()).item()
        if nulls:
            raise AssertionError(f"{column}: nulls differ on {nulls} events")
        if joined.schema[column].is_integer():
            unequal = joined.select((ours != theirs).sum()).item()
            if unequal:
                raise AssertionError(f"{column}: counts differ on {unequal} events")
            continue
        relative = joined.select(
            ((ours - theirs).abs() / pl.max_horizontal(theirs.abs(), pl.lit(1.0))).max()
        ).item()
        worst = max(worst, relative or 0.0)
    if worst > TOLERANCE:
        raise AssertionError(f"features differ by up to {worst:.2e} (relative), more than {TOLERANCE}")
    return worst


def bench_volume(root: Path, spark, n_events: int, echo: Callable[[str], None], verify: bool) -> dict:
    spec = load_dataset_spec()
    volume = EventVolume(n_events)
    tag = f"[features {volume.label}]"
    settings = Settings(data_dir=root / volume.label, **SPARK)
    bronze_uri = settings.table_uri(tables.BRONZE_EVENTS)
    echo(f"{tag} writing {n_events:,} simulated events to bronze (untimed)")
    write_bronze(settings, spec, volume)

    echo(f"{tag} Spark: build_features (bronze Delta → features Delta) ...")
    with timed() as job:
        report = build_features(spark, settings, spec)
    echo(f"{tag} Spark: build_features {job.describe()}")
    echo(f"{tag} Spark: compute_features alone (no-op sink) ...")
    with timed() as compute:
        bronze = spark.read.format("delta").load(bronze_uri)
        compute_features(bronze, spec).write.format("noop").mode("overwrite").save()
    echo(f"{tag} Spark: compute_features {compute.describe()}")

    echo(f"{tag} polars: read Delta, same windows, write Delta ...")
    with timed() as baseline:
        began = time.perf_counter()
        events = pl.read_delta(tables.delta_rs_uri(bronze_uri), columns=spec.column_names)
        read_s = time.perf_counter() - began
        out = polars_features(events, spec)
        compute_s = time.perf_counter() - began - read_s
        out.write_delta(str(root / volume.label / "polars_features"))
    echo(f"{tag} polars: {baseline.describe()}")

    row = {
        "volume": volume.label,
        "events": report.new_events,
        **job.as_dict("spark"),
        "spark_events_per_s": round(report.new_events / job.wall_s),
        **compute.as_dict("spark_compute"),
        **baseline.as_dict("polars"),
        "polars_read_s": round(read_s, 2),
        "polars_compute_s": round(compute_s, 2),
        "polars_events_per_s": round(report.new_events / baseline.wall_s),
        "ratio_spark_over_polars": round(job.wall_s / baseline.wall_s, 2),
        "ratio_cpu_spark_over_polars": round(job.cpu_s / baseline.cpu_s, 2),
    }
    ratio, cpu_ratio = row["ratio_spark_over_polars"], row["ratio_cpu_spark_over_polars"]
    echo(f"{tag} Spark ÷ polars = {ratio:.2f} (cpu seconds: {cpu_ratio:.2f})")
    if verify:
        echo(f"{tag} comparing every event's features between the engines ...")
        features_uri = tables.delta_rs_uri(settings.table_uri(tables.FEATURES))
        row["max_relative_difference"] = compare(pl.read_delta(features_uri), out, spec)
        echo(f"{tag} engines agree: counts identical, values within {row['max_relative_difference']:.1e}")
    del out, events
    shutil.rmtree(root / volume.label, ignore_errors=True)
    return row


def run(volumes: tuple[int, ...] = VOLUMES, echo: Callable[[str], None] = print) -> list[dict]:
    spec = load_dataset_spec()
    rows = []
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-features-") as scratch:
        root = Path(scratch)
        echo("[features] starting Spark local[2] ...")
        with timed() as start:
            spark = get_spark(Settings(data_dir=root / "spark", **SPARK))
        warm_up = EventVolume(WARM_UP)
        settings = Settings(data_dir=root / "warm-up", **SPARK)
        write_bronze(settings, spec, warm_up)
        echo(f"[features] Spark started in {start.wall_s:.1f} s; warm-up build on {warm_up.label} events ...")
        with timed() as cold:
            build_features(spark, settings, spec)
        echo(f"[features] warm-up (cold JVM) {cold.describe()}")
        shutil.rmtree(root / "warm-up", ignore_errors=True)
        for index, n in enumerate(volumes):
            row = bench_volume(root, spark, n, echo, verify=index == 0)
            row |= {"spark_session_start_s": round(start.wall_s, 1), "spark_warm_up_s": round(cold.wall_s, 1)}
            rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "features.json"
    # a run at some volumes keeps the last figures of the others
    measured = {r["volume"] for r in rows}
    kept = [r for r in json.loads(path.read_text()) if r["volume"] not in measured] if path.exists() else []
    merged = sorted([*kept, *rows], key=lambda r: r["events"])
    path.write_text(json.dumps(merged, indent=2))
    return merged


def summary(rows: list[dict]) -> str:
    lines = [
        "| events | Spark job (local[2]) | events/s | of which compute "
        "| polars | events/s | Spark ÷ polars |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['volume']} | {r['spark_s']:.1f} s | {r['spark_events_per_s']:,} | "
            f"{r['spark_compute_s']:.1f} s | {r['polars_s']:.1f} s | {r['polars_events_per_s']:,} | "
            f"{r['ratio_spark_over_polars']:.2f}× |"
        )
    first = rows[0]
    loads = ", ".join(
        f"{r['volume']} {r['spark_load_before']:.1f}→{r['spark_load_after']:.1f}"
        for r in rows
        if "spark_load_before" in r
    )
    notes = [
        f"Spark after a warm-up build of {EventVolume(WARM_UP).label} events "
        f"(cold JVM: {first['spark_warm_up_s']:.0f} s; "
        f"session start {first['spark_session_start_s']:.0f} s).",
        '"of which compute": compute_features alone into a no-op sink (no Delta write).',
        f"Machine load (1-min average) during the Spark job: {loads}; 2 cores.",
    ]
    checked = next((r for r in rows if "max_relative_difference" in r), None)
    if checked:
        first = checked
        notes.append(
            f"On {first['volume']} events the engines agree on every feature: counts and nulls identical, "
            f"values within {first['max_relative_difference']:.0e} (relative)."
        )
    return "\n".join([*lines, "", *notes])


if __name__ == "__main__":
    print(summary(run()))
