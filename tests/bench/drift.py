"""Drift benchmark: one window of N rows × 20 features (16 numeric, 4 categorical, 3 shifted) against
a reference of N rows, by Evidently 0.7's DataDriftPreset as used by default and by the
precomputed-statistics path (driftloop.monitoring), in one run.

The precomputed path's reference statistics are built once per model version, so that cost is
shown apart from the per-window drift. Data generation is untimed. Targets (issue 5): the
precomputed path within 5 s at 1M rows and at least 10× faster than default Evidently.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.config import Settings
from driftloop.monitoring import ColumnKind, compute_drift, compute_reference, evidently_report
from tests.bench.timing import timed

RESULTS = Path(__file__).parent / "results"
VOLUMES = (100_000, 1_000_000)
N_NUMERIC, N_CATEGORICAL = 16, 4
SHIFTED = ("num_00", "num_05", "cat_00")
"""Columns whose distribution the current window moves; every other column is a fresh sample."""
TARGET_SECONDS, TARGET_SPEEDUP = 5.0, 10.0
START = datetime(2025, 1, 1, tzinfo=UTC)
END = START + timedelta(hours=1)


def kinds() -> dict[str, ColumnKind]:
    return {
        **{f"num_{i:02d}": "numeric" for i in range(N_NUMERIC)},
        **{f"cat_{i:02d}": "categorical" for i in range(N_CATEGORICAL)},
    }


def synthetic(n: int, seed: int, shifted: bool) -> pd.DataFrame:
    """Numeric columns of several shapes (normal, skewed, heavy-tailed, tied counts, 5 % nulls) and
    categorical ones of 3 to 200 categories, as a prediction log's feature columns look."""
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    for i in range(N_NUMERIC):
        name = f"num_{i:02d}"
        shape = i % 4
        if shape == 0:
            values = rng.normal(0.5 if shifted and name in SHIFTED else 0.0, 1.0, n)
        elif shape == 1:
            values = rng.gamma(2.0, 30.0 if shifted and name in SHIFTED else 20.0, n)
        elif shape == 2:
            values = rng.lognormal(3.0, 1.0, n)
        else:
            values = rng.poisson(3.0, n).astype(np.float64)
        if i % 5 == 4:
            values[rng.random(n) < 0.05] = np.nan
        columns[name] = values
    for i, cardinality in enumerate((3, 10, 30, 200)):
        name = f"cat_{i:02d}"
        weights = 1.0 / np.arange(1, cardinality + 1)
        if shifted and name in SHIFTED:
            weights = weights[::-1]
        values = np.array([f"{name}_v{j}" for j in range(cardinality)], dtype=object)
        columns[name] = values[rng.choice(cardinality, n, p=weights / weights.sum())]
    return pd.DataFrame(columns)


def bench_volume(n: int, echo: Callable[[str], None], scratch: Path, with_html: bool) -> dict:
    tag = f"[drift {n:,} × {N_NUMERIC + N_CATEGORICAL}]"
    settings = Settings(data_dir=scratch / "data")
    echo(f"{tag} generating reference and current windows (untimed)")
    reference, current = synthetic(n, seed=1, shifted=False), synthetic(n, seed=2, shifted=True)
    column_kinds = kinds()

    with timed() as build:
        stats = compute_reference(reference, column_kinds, settings.monitoring, model_version="bench")
    echo(f"{tag} reference statistics (once per model version): {build.describe()}")
    timings = {}
    for workers in (1, 2):
        monitoring = settings.monitoring.model_copy(update={"workers": workers})
        with timed() as timing:
            report = compute_drift(stats, current, monitoring, START, END)
        timings[workers] = timing
        echo(
            f"{tag} precomputed, {workers} thread(s): {timing.describe()}; drifted {report.drifted_features}"
        )
    fast = timings[settings.monitoring.workers]

    echo(f"{tag} Evidently DataDriftPreset (default methods) ...")
    with timed() as evidently:
        result = evidently_report(reference, current, column_kinds, settings)
    echo(f"{tag} Evidently default: {evidently.describe()}; drifted {result.drifted}")
    row = {
        "rows": n,
        "features": len(column_kinds),
        "shifted": list(SHIFTED),
        "workers": settings.monitoring.workers,
        **build.as_dict("reference_build"),
        **timings[1].as_dict("precomputed_1_thread"),
        **timings[2].as_dict("precomputed_2_threads"),
        **fast.as_dict("precomputed"),
        **evidently.as_dict("evidently"),
        "speedup": round(evidently.wall_s / fast.wall_s, 1),
        "drifted_precomputed": sorted(report.drifted_features),
        "drifted_evidently": result.drifted,
        "evidently_methods": sorted({c["method"] for c in result.columns.values()}),
    }
    if with_html:
        uri = str(scratch / "report.html")
        with timed() as html:
            evidently_report(reference, current, column_kinds, settings, uri)
        row |= html.as_dict("evidently_with_html")
        row["html_bytes"] = Path(uri).stat().st_size
        echo(f"{tag} Evidently default + HTML report: {html.describe()} ({row['html_bytes']:,} bytes)")
    echo(f"{tag} precomputed {row['precomputed_s']} s vs Evidently {row['evidently_s']} s: {row['speedup']}x")
    return row


def run(echo: Callable[[str], None] = print, volumes: tuple[int, ...] = VOLUMES) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-drift-") as scratch:
        for index, n in enumerate(volumes):
            rows.append(bench_volume(n, echo, Path(scratch), with_html=index == 0))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "drift.json").write_text(json.dumps(rows, indent=2))
    return rows


def summary(rows: list[dict]) -> str:
    lines = [
        "| rows × features | reference stats (once per version) | precomputed, 1 thread | "
        "precomputed, 2 threads | Evidently default | speedup (default settings) | "
        "drifted (precomputed / Evidently) | "
        f"≤ {TARGET_SECONDS:.0f} s and ≥ {TARGET_SPEEDUP:.0f}x |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        met = r["precomputed_s"] <= TARGET_SECONDS and r["speedup"] >= TARGET_SPEEDUP
        lines.append(
            f"| {r['rows']:,} × {r['features']} | {r['reference_build_s']:.2f} s | "
            f"{r['precomputed_1_thread_s']:.2f} s | {r['precomputed_2_threads_s']:.2f} s | "
            f"{r['evidently_s']:.1f} s | {r['speedup']:.0f}x (load {r['evidently_load_before']:.1f}) | "
            f"{', '.join(r['drifted_precomputed'])} / {', '.join(r['drifted_evidently'])} | "
            f"{'met' if met else 'not met'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(run()))
