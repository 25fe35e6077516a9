"""Drift of the prediction log against a model version's reference: statistics computed once per
version, PSI / KS / chi-square per column, and the rows of the lake's ``drift_metrics`` table.

The fast path (numpy/scipy over precomputed reference statistics) makes the loop's decisions;
Evidently renders the human-readable HTML report of the same window.

Never a silent pass: an empty window gives ``no_data`` rows, a window below ``min_rows`` gives
``insufficient_data`` rows (scores shown, no verdict), a column that went all-null gives
``all_missing`` (drift unless the reference was all-null too). Missing values are a bin of their
own in PSI and chi-square, so a rise in nulls is drift too; KS compares the non-null values.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from driftloop.config import MonitoringSettings, Settings
from driftloop.lake import tables
from driftloop.lake.names import DRIFT_METRICS, PREDICTION_LOG
from driftloop.log import get_logger

if TYPE_CHECKING:
    import pyarrow.fs as pafs

    from driftloop.dataset import DatasetSpec

log = get_logger(__name__)

ColumnKind = Literal["numeric", "categorical"]
Status = Literal["ok", "no_data", "insufficient_data", "all_missing", "no_reference"]

SCORE = "score"
DATASET = "__dataset__"
"""The ``feature`` of the row carrying the dataset-level verdict (share of drifted features)."""
OTHER, UNSEEN, MISSING = "__other__", "__unseen__", "__missing__"
REFERENCE_TAG = "driftloop.reference"
REFERENCE_SAMPLE_TAG = "driftloop.reference_sample"
REFERENCE_FORMAT = 1
REPORTS_DIR = "reports/drift"
# scipy's own cut-over: below it ks_2samp computes exact p-values, above it the asymptotic one
_KS_EXACT_MAX_N = 10_000
# below this many rows, threads cost more than the columns they compute
_PARALLEL_MIN_ROWS = 20_000
_STAMP = "%Y%m%dT%H%M%SZ"
_REPORT_NAME = re.compile(r"^(\d{8}T\d{6}Z)-(\d{8}T\d{6}Z)\.html$")

DRIFT_SCHEMA = pa.schema(
    [
        ("window_start", pa.timestamp("us", tz="UTC")),
        ("window_end", pa.timestamp("us", tz="UTC")),
        ("model_version", pa.string()),
        ("feature", pa.string()),
        ("kind", pa.string()),
        ("method", pa.string()),
        ("score", pa.float64()),
        ("threshold", pa.float64()),
        ("drifted", pa.bool_()),
        ("decisive", pa.bool_()),
        ("status", pa.string()),
        ("rows", pa.int64()),
        ("detail", pa.string()),
    ]
)


class MonitoringError(RuntimeError):
    """Drift could not be computed as asked; the message says what to fix."""


class ReferenceNotFound(MonitoringError):
    """A model version has no reference statistics."""


# --- reference statistics --------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnReference:
    """What a monitored column looked like in the reference: enough to bin, test and compare it.

    Numeric: quantile edges (bins are ``(e[i-1], e[i]]``, open at both ends), the non-null count
    per bin and a bounded sorted sample for KS. Categorical: the most frequent categories with
    their counts and the count of the rest (``other``). Both: rows and missing (null) rows.
    """

    name: str
    kind: ColumnKind
    rows: int
    missing: int
    edges: tuple[float, ...] = ()
    bin_counts: tuple[int, ...] = ()
    sample: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    category_counts: tuple[int, ...] = ()
    other: int = 0

    @property
    def missing_fraction(self) -> float:
        return self.missing / self.rows if self.rows else 0.0

    @property
    def all_missing(self) -> bool:
        return self.missing == self.rows


@dataclass(frozen=True)
class ReferenceStats:
    """Reference statistics of one model version, computed once (at registration) and reused."""

    model_version: str
    rows: int
    columns: dict[str, ColumnReference]
    performance: ExpectedPerformance | None = None
    """The version's holdout precision, recall and PR-AUC; None in references saved before them."""

    def kinds(self) -> dict[str, ColumnKind]:
        return {name: col.kind for name, col in self.columns.items()}

    def to_json(self) -> str:
        body = {
            "format": REFERENCE_FORMAT,
            "model_version": self.model_version,
            "rows": self.rows,
            "columns": [asdict(col) for col in self.columns.values()],
        }
        if self.performance is not None:  # absent, not null: older readers see the same document
            body["performance"] = asdict(self.performance)
        return json.dumps(body, allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ReferenceStats:
        body = json.loads(text)
        if body.get("format") != REFERENCE_FORMAT:
            raise MonitoringError(
                f"reference statistics in format {body.get('format')!r}, this code reads "
                f"{REFERENCE_FORMAT}: recompute them with save_reference()"
            )
        columns = {}
        for raw in body["columns"]:
            raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
            columns[raw["name"]] = ColumnReference(**raw)
        performance = body.get("performance")
        return cls(
            model_version=body["model_version"],
            rows=body["rows"],
            columns=columns,
            performance=ExpectedPerformance(**performance) if performance else None,
        )


def column_kinds(spec: DatasetSpec, columns: Sequence[str] | None = None) -> dict[str, ColumnKind]:
    """Monitored columns of the dataset: every model feature, plus the score when ``columns`` has it.

    ``columns`` (a frame's columns) limits the score to frames that carry one; None includes it.
    """
    categorical = set(spec.features.categorical)
    kinds: dict[str, ColumnKind] = {
        name: "categorical" if name in categorical else "numeric" for name in spec.model_features
    }
    if columns is None or SCORE in columns:
        kinds[SCORE] = "numeric"
    return kinds


def compute_reference(
    frame: pd.DataFrame,
    kinds: Mapping[str, ColumnKind],
    settings: MonitoringSettings,
    model_version: str,
    seed: int = 0,
) -> ReferenceStats:
    """Reference statistics of ``frame`` (a training-set sample, or any frame) for ``kinds``' columns."""
    missing = [name for name in kinds if name not in frame.columns]
    if missing:
        raise MonitoringError(f"the reference frame lacks monitored columns {missing}")
    if frame.empty:
        raise MonitoringError("the reference frame is empty: drift needs a reference sample with rows")
    columns = {}
    for index, (name, kind) in enumerate(kinds.items()):
        if kind == "numeric":
            rng = np.random.default_rng([seed, index])
            columns[name] = _numeric_reference(name, frame[name], settings, rng)
        else:
            columns[name] = _categorical_reference(name, frame[name], settings)
    return ReferenceStats(model_version=str(model_version), rows=len(frame), columns=columns)


def _as_float(series: pd.Series) -> np.ndarray:
    try:
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise MonitoringError(
            f"column {series.name!r} is monitored as numeric but holds {series.dtype}"
        ) from exc


def _numeric_reference(
    name: str, series: pd.Series, settings: MonitoringSettings, rng: np.random.Generator
) -> ColumnReference:
    values = _as_float(series)
    present = np.sort(values[~np.isnan(values)])
    if present.size == 0:
        return ColumnReference(name, "numeric", rows=len(values), missing=len(values))
    quantiles = np.linspace(0, 1, settings.reference_bins + 1)[1:-1]
    # ties (counts, zeros) merge quantiles: unique edges give fewer, still well-defined bins
    edges = np.unique(np.quantile(present, quantiles))
    counts = _bin_counts(present, edges)
    if present.size > settings.reference_sample_size:
        sample = np.sort(rng.choice(present, settings.reference_sample_size, replace=False))
    else:
        sample = present
    return ColumnReference(
        name,
        "numeric",
        rows=len(values),
        missing=len(values) - present.size,
        edges=tuple(edges.tolist()),
        bin_counts=tuple(counts.tolist()),
        sample=tuple(sample.tolist()),
    )


def _bin_counts(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin ``(-inf, e0], (e0, e1], ..., (e_k, inf)`` of already sorted values."""
    at_or_below = np.searchsorted(sorted_values, edges, side="right")
    return np.diff(np.concatenate(([0], at_or_below, [sorted_values.size])))


def _category_counts(series: pd.Series) -> pd.Series:
    counts = series.value_counts(dropna=True, sort=False)
    counts.index = counts.index.map(str)
    counts = counts.groupby(level=0).sum()  # 1 and "1" are one category once stringified
    # most frequent first, ties by name: the same data gives the same reference
    order = sorted(zip(counts.index, counts.to_numpy(), strict=True), key=lambda kv: (-kv[1], kv[0]))
    return pd.Series([c for _, c in order], index=[k for k, _ in order], dtype="int64")


def _categorical_reference(name: str, series: pd.Series, settings: MonitoringSettings) -> ColumnReference:
    counts = _category_counts(series)
    top = counts.iloc[: settings.max_categories]
    return ColumnReference(
        name,
        "categorical",
        rows=len(series),
        missing=len(series) - int(counts.sum()),
        categories=tuple(top.index.tolist()),
        category_counts=tuple(int(c) for c in top.to_numpy()),
        other=int(counts.iloc[settings.max_categories :].sum()),
    )


# --- the tests ---------------------------------------------------------------------------------


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, smoothing: float = 0.5):
    """Population stability index of two binned counts (same bins, any totals).

    Bins empty on both sides are left out; the others get ``smoothing`` pseudo-counts (Jeffreys),
    so a bin empty on one side costs a bounded amount rather than log(1/ε) — the same rule as the
    canary's score PSI.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        raise ValueError(f"PSI needs the same bins: {e.shape} vs {a.shape}")
    if not e.sum() or not a.sum():
        raise ValueError("PSI of an empty distribution is undefined")
    keep = (e > 0) | (a > 0)
    e, a = e[keep] + smoothing, a[keep] + smoothing
    p, q = a / a.sum(), e / e.sum()
    return float(np.sum((p - q) * np.log(p / q)))


def ks_2samp_sorted(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample KS (statistic, p-value) of two *sorted* samples, as scipy computes it.

    Small samples go to ``scipy.stats.ks_2samp`` (exact p-values). Large ones use the fact that
    sup|F_ref - F_cur| is reached at a reference point or just below one (between two reference
    points F_ref is flat and F_cur monotone), so only the small reference sample is searched in
    the sorted window — O(m log n) instead of scipy's O((n + m) log(n + m)) — and the p-value is
    Smirnov's asymptotic one, exactly scipy's ``method='asymp'``.
    """
    m, n = reference.size, current.size
    if max(m, n) <= _KS_EXACT_MAX_N:
        result = stats.ks_2samp(reference, current)
        return float(result.statistic), float(result.pvalue)
    points = np.unique(reference)
    ref_at = np.searchsorted(reference, points, side="right") / m
    ref_below = np.searchsorted(reference, points, side="left") / m
    cur_at = np.searchsorted(current, points, side="right") / n
    cur_below = np.searchsorted(current, points, side="left") / n
    d = float(max(np.abs(ref_at - cur_at).max(), np.abs(ref_below - cur_below).max()))
    big, small = max(m, n), min(m, n)
    p = float(np.clip(stats.distributions.kstwo.sf(d, np.round(big * small / (big + small))), 0, 1))
    return d, p


def chi2_p_value(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Chi-square test of homogeneity of two binned counts (bins empty on both sides left out)."""
    table = np.vstack([np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:  # everything in one bin on both sides: nothing differs
        return 1.0
    return float(stats.chi2_contingency(table, correction=False).pvalue)


# --- drift of a window ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftResult:
    """One row of the drift_metrics table: one method's verdict on one column of one window."""

    window_start: datetime
    window_end: datetime
    model_version: str
    feature: str
    kind: str
    method: str
    score: float | None
    threshold: float
    drifted: bool | None
    """None: no verdict (no data, too few rows, or the method cannot apply); see ``status``."""
    decisive: bool
    """Whether this method's verdict is the feature's (settings' numeric/categorical method)."""
    status: Status
    rows: int
    detail: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        return asdict(self) | {"detail": json.dumps(self.detail, sort_keys=True, allow_nan=False)}


@dataclass(frozen=True)
class DriftReport:
    """Every result of one window against one version's reference, and the verdicts they add up to."""

    window_start: datetime
    window_end: datetime
    model_version: str
    rows: int
    status: Status
    results: tuple[DriftResult, ...]

    @property
    def dataset(self) -> DriftResult:
        return next(r for r in self.results if r.feature == DATASET)

    @property
    def dataset_drifted(self) -> bool | None:
        """At least ``share_of_drifted_features`` of the model features drifted (None: no verdict)."""
        return self.dataset.drifted

    @property
    def drifted_features(self) -> list[str]:
        return [
            r.feature for r in self.results if r.decisive and r.drifted and r.feature not in (DATASET, SCORE)
        ]

    @property
    def score_drifted(self) -> bool | None:
        """The prediction (score) distribution drifted; None without a verdict or a score reference."""
        for r in self.results:
            if r.feature == SCORE and r.decisive:
                return r.drifted
        return None

    def verdicts(self) -> dict[str, bool | None]:
        """Each monitored column's verdict (its decisive method's)."""
        return {r.feature: r.drifted for r in self.results if r.decisive and r.feature != DATASET}

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pylist([r.as_row() for r in self.results], schema=DRIFT_SCHEMA)


@dataclass(frozen=True)
class _Window:
    start: datetime
    end: datetime
    version: str
    rows: int
    settings: MonitoringSettings

    def result(
        self, feature: str, kind: str, method: str, threshold: float, decisive: bool, **kw
    ) -> DriftResult:
        return DriftResult(
            self.start,
            self.end,
            self.version,
            feature,
            kind,
            method,
            threshold=threshold,
            decisive=decisive,
            rows=self.rows,
            **kw,
        )


def compute_drift(
    reference: ReferenceStats,
    current: pd.DataFrame,
    settings: MonitoringSettings,
    window_start: datetime,
    window_end: datetime,
) -> DriftReport:
    """Drift of the ``current`` window against ``reference``: two results per column, one for the dataset.

    Numeric columns get PSI over the reference's quantile bins (plus a missing bin) and KS on the
    non-null values; categorical columns get PSI and chi-square over the reference's categories,
    ``other``, unseen categories and missing. Columns run in a thread pool on large windows
    (numpy's sorts and searches release the GIL).
    """
    start, end = _utc(window_start), _utc(window_end)
    if end <= start:
        raise MonitoringError(f"empty or inverted window: {start} .. {end}")
    absent = [name for name in reference.columns if name not in current.columns]
    if absent:
        raise MonitoringError(
            f"the current window lacks monitored columns {absent}: is the prediction log of the "
            f"same dataset contract as model version {reference.model_version}?"
        )
    rows = len(current)
    window = _Window(start, end, reference.model_version, rows, settings)
    columns = list(reference.columns.values())

    def one(col: ColumnReference) -> list[DriftResult]:
        if rows == 0:
            return _no_data(window, col)
        if col.kind == "numeric":
            return _numeric_drift(window, col, current[col.name])
        return _categorical_drift(window, col, current[col.name])

    if settings.workers > 1 and rows >= _PARALLEL_MIN_ROWS and len(columns) > 1:
        with ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="drift") as pool:
            per_column = list(pool.map(one, columns))
    else:
        per_column = [one(col) for col in columns]
    results = [r for group in per_column for r in group]
    dataset = _dataset_result(window, results)
    report = DriftReport(window.start, window.end, window.version, rows, dataset.status, (*results, dataset))
    log.info(
        "monitoring.drift",
        model_version=window.version,
        window_start=window.start.isoformat(),
        window_end=window.end.isoformat(),
        rows=rows,
        status=report.status,
        dataset_drifted=report.dataset_drifted,
        drifted=report.drifted_features,
        score_drifted=report.score_drifted,
    )
    return report


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise MonitoringError(f"window bound {moment} has no time zone: pass an aware UTC datetime")
    return moment.astimezone(UTC)


def _methods(window: _Window, kind: ColumnKind) -> list[tuple[str, float, bool]]:
    """(method, threshold, decisive) of a column kind, in the order rows are written."""
    s = window.settings
    if kind == "numeric":
        return [
            ("psi", s.psi_threshold, s.numeric_method == "psi"),
            ("ks", s.ks_p_value, s.numeric_method == "ks"),
        ]
    return [
        ("psi", s.psi_threshold, s.categorical_method == "psi"),
        ("chi2", s.chi2_p_value, s.categorical_method == "chi2"),
    ]


def _no_data(window: _Window, col: ColumnReference) -> list[DriftResult]:
    return [
        window.result(
            col.name, col.kind, method, threshold, decisive, score=None, drifted=None, status="no_data"
        )
        for method, threshold, decisive in _methods(window, col.kind)
    ]


def _verdict(
    window: _Window, col: ColumnReference, present: int, score: float | None, drifted: bool | None
) -> tuple[Status, bool | None]:
    """The status of a computed score and the verdict it may carry."""
    if window.rows < window.settings.min_rows:
        return "insufficient_data", None
    if present == 0:
        # a column gone all-null is drift, unless it never had values
        return "all_missing", not col.all_missing
    if score is None:
        return "no_reference", None
    return "ok", drifted


def _numeric_drift(window: _Window, col: ColumnReference, series: pd.Series) -> list[DriftResult]:
    values = _as_float(series)
    nan = np.isnan(values)
    missing = int(nan.sum())
    present = np.sort(values[~nan] if missing else values)
    detail = {"missing_fraction": missing / values.size, "reference_missing_fraction": col.missing_fraction}
    out = []
    for method, threshold, decisive in _methods(window, "numeric"):
        score: float | None = None
        extra: dict[str, Any] = {}
        if method == "psi":
            edges = np.asarray(col.edges, dtype=np.float64)
            expected = np.append(np.asarray(col.bin_counts or (0,), dtype=np.float64), col.missing)
            actual = np.append(_bin_counts(present, edges) if col.bin_counts else [present.size], missing)
            score = psi(expected, actual)
            drifted = score >= threshold
        elif present.size and col.sample:
            d, score = ks_2samp_sorted(np.asarray(col.sample, dtype=np.float64), present)
            extra["statistic"] = d
            drifted = score < threshold
        else:
            drifted = None
        status, verdict = _verdict(window, col, present.size, score, drifted)
        out.append(
            window.result(
                col.name,
                "numeric",
                method,
                threshold,
                decisive,
                score=score,
                drifted=verdict,
                status=status,
                detail=detail | extra,
            )
        )
    return out


def _categorical_drift(window: _Window, col: ColumnReference, series: pd.Series) -> list[DriftResult]:
    counts = _category_counts(series)
    missing = len(series) - int(counts.sum())  # value_counts leaves nulls out; no second pass
    known = dict.fromkeys(col.categories, 0)
    outside = 0
    for category, count in counts.items():
        if category in known:
            known[category] = int(count)
        else:
            outside += int(count)
    # with no tail in the reference, anything outside its categories is new; with a tail, a value
    # outside the top categories cannot be told from a rare known one and counts as "other"
    other, unseen = (outside, 0) if col.other else (0, outside)
    expected = np.array([*col.category_counts, col.other, 0, col.missing], dtype=np.float64)
    actual = np.array([*known.values(), other, unseen, missing], dtype=np.float64)
    new = [c for c in counts.index if c not in known][:20] if not col.other else []
    detail = {
        "missing_fraction": missing / len(series),
        "reference_missing_fraction": col.missing_fraction,
        "unseen_rows": unseen,
        "unseen_categories": new,
    }
    out = []
    for method, threshold, decisive in _methods(window, "categorical"):
        if method == "psi":
            score = psi(expected, actual)
            drifted = score >= threshold
        else:
            score = chi2_p_value(expected, actual)
            drifted = score < threshold
        status, verdict = _verdict(window, col, len(series) - missing, score, drifted)
        out.append(
            window.result(
                col.name,
                "categorical",
                method,
                threshold,
                decisive,
                score=score,
                drifted=verdict,
                status=status,
                detail=detail,
            )
        )
    return out


def _dataset_result(window: _Window, results: list[DriftResult]) -> DriftResult:
    """Dataset drift: the share of model features (the score excluded) whose verdict is drift."""
    verdicts = {r.feature: r for r in results if r.decisive and r.feature != SCORE}
    decided = {name: r.drifted for name, r in verdicts.items() if r.drifted is not None}
    drifted = sorted(name for name, flag in decided.items() if flag)
    threshold = window.settings.share_of_drifted_features
    if window.rows == 0:
        status, share, verdict = "no_data", None, None
    elif window.rows < window.settings.min_rows:
        status, share, verdict = "insufficient_data", None, None
    elif not decided:
        status, share, verdict = "no_reference", None, None
    else:
        share = len(drifted) / len(decided)
        status, verdict = "ok", share >= threshold
    undecided = sorted(name for name, r in verdicts.items() if r.drifted is None)
    return window.result(
        DATASET,
        "dataset",
        "share_of_drifted_features",
        threshold,
        True,
        score=share,
        drifted=verdict,
        status=status,
        detail={"drifted": drifted, "features": len(verdicts), "undecided": undecided},
    )


# --- the prediction log and the drift_metrics table ---------------------------------------------


def read_window(
    settings: Settings,
    kinds: Mapping[str, ColumnKind],
    window_start: datetime,
    window_end: datetime,
    model_version: str | None = None,
) -> pd.DataFrame:
    """The monitored columns of the prediction log in ``[window_start, window_end)``, of one version if given.

    No prediction log yet reads as an empty window, which drift reports as ``no_data``.
    """
    start, end = _utc(window_start), _utc(window_end)
    table = tables.open_table(settings, PREDICTION_LOG)
    columns = list(kinds)
    if table is None:
        return pd.DataFrame(
            {
                name: pd.Series(dtype="float64" if kind == "numeric" else "object")
                for name, kind in kinds.items()
            }
        )
    where = [
        f"predicted_at >= TIMESTAMP '{start:%Y-%m-%d %H:%M:%S.%f}'",
        f"predicted_at < TIMESTAMP '{end:%Y-%m-%d %H:%M:%S.%f}'",
    ]
    if model_version is not None:
        if not re.fullmatch(r"[\w.-]+", model_version):
            raise MonitoringError(f"model version {model_version!r} is not a version name")
        where.append(f"model_version = '{model_version}'")
    select = ", ".join(f'"{name}"' for name in columns)
    arrow = tables.query(table, f"SELECT {select} FROM t WHERE {' AND '.join(where)}")
    return arrow.to_pandas()


def write_drift(settings: Settings, report: DriftReport) -> tables.AppendResult:
    """Append the report's rows to ``drift_metrics`` once per version and window: a rerun writes nothing."""
    app_id = f"drift/{report.model_version}/{report.window_start:{_STAMP}}/{report.window_end:{_STAMP}}"
    result = tables.idempotent_append(settings, DRIFT_METRICS, report.to_arrow(), app_id)
    log.info("monitoring.drift_written", app_id=app_id, version=result.version, written=result.written)
    return result


# --- reference statistics in MLflow -----------------------------------------------------------------

_REFERENCE_CACHE: dict[tuple[str, str, str], ReferenceStats] = {}


def save_reference(
    settings: Settings,
    version: str,
    frame: pd.DataFrame,
    kinds: Mapping[str, ColumnKind] | None = None,
    performance: ExpectedPerformance | None = None,
) -> ReferenceStats:
    """Compute ``version``'s reference from ``frame`` and store it as an artifact of the version's run.

    ``frame`` is a training-set sample; give it a ``score`` column (the version's scores on it) to
    monitor prediction drift too, and ``performance`` (see :func:`expected_performance`) to judge
    classification performance once labels join the prediction log. The version is tagged with
    the artifact's path, so a retried registration overwrites the same file with the same content.
    """
    from driftloop.dataset import load_dataset_spec
    from driftloop.registry import Registry

    kinds = kinds or column_kinds(load_dataset_spec(settings.dataset_file), list(frame.columns))
    reference = compute_reference(frame, kinds, settings.monitoring, model_version=str(version))
    if performance is not None:
        reference = replace(reference, performance=performance)
    registry = Registry(settings)
    model_version = registry.client.get_model_version(registry.name, str(version))
    if not model_version.run_id:
        raise MonitoringError(
            f"model version {version} of {registry.name} has no MLflow run to hold its reference: "
            "register versions from a run (as train_model does)"
        )
    path = f"monitoring/reference_v{version}.json"
    registry.client.log_text(model_version.run_id, reference.to_json(), path)
    sample_path = _log_reference_sample(registry, model_version.run_id, str(version), frame, settings)
    registry.tag_version(str(version), {REFERENCE_TAG: path, REFERENCE_SAMPLE_TAG: sample_path})
    _REFERENCE_CACHE[(settings.tracking_uri, registry.name, str(version))] = reference
    log.info("monitoring.reference_saved", version=str(version), rows=reference.rows, path=path)
    return reference


def _log_reference_sample(
    registry: Any, run_id: str, version: str, frame: pd.DataFrame, settings: Settings
) -> str:
    """A bounded sample of the raw reference rows, the reference side of the Evidently report."""
    limit = settings.monitoring.report_sample_rows
    sample = frame.sample(n=limit, random_state=0) if len(frame) > limit else frame
    folder, name = "monitoring", f"reference_sample_v{version}.parquet"
    with tempfile.TemporaryDirectory(prefix="driftloop-reference-") as scratch:
        local = Path(scratch) / name
        sample.reset_index(drop=True).to_parquet(local, index=False)
        registry.client.log_artifact(run_id, str(local), folder)
    return f"{folder}/{name}"


def load_reference_sample(settings: Settings, version: str) -> pd.DataFrame:
    """The raw reference rows saved with ``version`` (for the HTML report, not for decisions)."""
    from driftloop.registry import Registry

    registry = Registry(settings)
    model_version = registry.client.get_model_version(registry.name, str(version))
    path = model_version.tags.get(REFERENCE_SAMPLE_TAG)
    if not path or not model_version.run_id:
        raise ReferenceNotFound(
            f"model version {version} of {registry.name} has no reference sample: it was registered "
            "before references were saved; retrain to get one"
        )
    with tempfile.TemporaryDirectory(prefix="driftloop-reference-") as scratch:
        local = registry.client.download_artifacts(model_version.run_id, path, scratch)
        return pd.read_parquet(local)


def load_reference(settings: Settings, version: str) -> ReferenceStats:
    """The reference statistics saved with ``version`` (cached per process: they never change)."""
    from driftloop.registry import Registry

    registry = Registry(settings)
    key = (settings.tracking_uri, registry.name, str(version))
    if key in _REFERENCE_CACHE:
        return _REFERENCE_CACHE[key]
    model_version = registry.client.get_model_version(registry.name, str(version))
    path = model_version.tags.get(REFERENCE_TAG)
    if not path or not model_version.run_id:
        raise ReferenceNotFound(
            f"model version {version} of {registry.name} has no reference statistics: call "
            f"driftloop.monitoring.save_reference(settings, {str(version)!r}, training_sample) "
            "when registering it"
        )
    with tempfile.TemporaryDirectory(prefix="driftloop-reference-") as scratch:
        local = registry.client.download_artifacts(model_version.run_id, path, scratch)
        reference = ReferenceStats.from_json(Path(local).read_text())
    _REFERENCE_CACHE[key] = reference
    return reference


# --- the Evidently report -------------------------------------------------------------------------


@dataclass(frozen=True)
class EvidentlyDrift:
    """Evidently's per-column verdicts of a window and where its HTML report went (None: not rendered)."""

    columns: dict[str, dict[str, Any]]
    drifted_share: float
    report_uri: str | None

    @property
    def drifted(self) -> list[str]:
        return sorted(name for name, c in self.columns.items() if c["drifted"])


def evidently_report(
    reference_frame: pd.DataFrame,
    current_frame: pd.DataFrame,
    spec: DatasetSpec | Mapping[str, ColumnKind],
    settings: Settings,
    uri: str | None = None,
) -> EvidentlyDrift:
    """Evidently 0.7's DataDriftPreset over the monitored columns, with the HTML report saved at ``uri``.

    ``uri`` is a local path or a lake URI (see :func:`report_uri`); None skips rendering. This is
    the report people read; the loop decides on :func:`compute_drift`, which is much cheaper.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    kinds = dict(spec) if isinstance(spec, Mapping) else column_kinds(spec, list(current_frame.columns))
    kinds = {name: kind for name, kind in kinds.items() if name in reference_frame.columns}
    if current_frame.empty or reference_frame.empty:
        raise MonitoringError("Evidently needs rows on both sides: the window or the reference is empty")
    absent = [name for name in kinds if name not in current_frame.columns]
    if absent:
        raise MonitoringError(f"the current window lacks monitored columns {absent}")
    definition = DataDefinition(
        numerical_columns=[n for n, k in kinds.items() if k == "numeric"],
        categorical_columns=[n for n, k in kinds.items() if k == "categorical"],
    )
    columns = list(kinds)
    preset = DataDriftPreset(columns=columns, method=settings.monitoring.report_method)
    snapshot = Report([preset], include_tests=True).run(
        current_data=Dataset.from_pandas(current_frame[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference_frame[columns], data_definition=definition),
    )
    drift = _evidently_columns(snapshot.dict())
    if uri is not None:
        _save_html(settings, snapshot, uri)
    share = sum(c["drifted"] for c in drift.values()) / len(drift) if drift else 0.0
    return EvidentlyDrift(columns=drift, drifted_share=share, report_uri=uri)


def _evidently_columns(body: dict) -> dict[str, dict[str, Any]]:
    """Per-column method, score, threshold and verdict from an Evidently 0.7 snapshot's ``dict()``."""
    verdicts = {
        test["metric_config"]["metric_id"]: test["status"]
        for test in body.get("tests", [])
        if test.get("metric_config", {}).get("params", {}).get("type", "").endswith("ValueDrift")
    }
    out = {}
    for metric in body["metrics"]:
        config = metric["config"]
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        status = verdicts.get(metric["id"])
        out[config["column"]] = {
            "method": config.get("method"),
            "score": float(metric["value"]),
            "threshold": config.get("threshold"),
            # Evidently's test fails when the column drifted, whatever the method's direction
            "drifted": None if status is None else str(status).upper().endswith("FAIL"),
        }
    return out


def report_uri(settings: Settings, model_version: str, window_start: datetime, window_end: datetime) -> str:
    """Where the HTML report of a window lives in the lake (its name carries the window, for retention)."""
    start, end = _utc(window_start), _utc(window_end)
    return f"{settings.lake_uri}/{REPORTS_DIR}/v{model_version}/{start:{_STAMP}}-{end:{_STAMP}}.html"


def _lake_filesystem(settings: Settings, uri: str) -> tuple[pafs.FileSystem, str]:
    import pyarrow.fs as pafs

    target = tables.delta_rs_uri(uri)
    if "://" not in target:
        return pafs.LocalFileSystem(), target
    if target.startswith("s3://") and settings.s3_endpoint_url:
        fs = pafs.S3FileSystem(endpoint_override=settings.s3_endpoint_url, scheme="http")
        return fs, target.removeprefix("s3://")
    return pafs.FileSystem.from_uri(target)


def _save_html(settings: Settings, snapshot: Any, uri: str) -> None:
    fs, path = _lake_filesystem(settings, uri)
    with tempfile.TemporaryDirectory(prefix="driftloop-report-") as scratch:
        local = Path(scratch) / "report.html"
        snapshot.save_html(str(local))
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        # write next to the target, then move: a reader never sees half a report (locally; on S3
        # the upload itself is atomic)
        partial = f"{path}.partial"
        with fs.open_output_stream(partial) as out:
            out.write(local.read_bytes())
        fs.move(partial, path)


def prune_reports(settings: Settings, now: datetime) -> list[str]:
    """Delete HTML reports whose window ended more than ``report_retention_days`` before ``now``.

    Age comes from the window in the file name, not the file's mtime, so a rerun for the same
    logical date deletes the same files. Returns the deleted paths; other files are left alone.
    """
    import pyarrow.fs as pafs

    cutoff = _utc(now) - timedelta(days=settings.monitoring.report_retention_days)
    fs, root = _lake_filesystem(settings, f"{settings.lake_uri}/{REPORTS_DIR}")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    deleted = []
    for info in infos:
        match = _REPORT_NAME.match(info.base_name) if info.type == pafs.FileType.File else None
        if match and datetime.strptime(match[2], _STAMP).replace(tzinfo=UTC) < cutoff:
            fs.delete_file(info.path)
            deleted.append(info.path)
    if deleted:
        log.info("monitoring.reports_pruned", deleted=len(deleted), cutoff=cutoff.isoformat())
    return deleted


# --- one monitor_drift run ------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowVerdict:
    """What one monitor_drift run found for the serving version, as XCom and Asset payloads carry it."""

    model_version: str
    window_start: datetime
    window_end: datetime
    rows: int
    status: Status
    dataset_drifted: bool | None
    score_drifted: bool | None
    drifted_features: list[str]
    table_version: int
    written: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
        }


def monitor_window(settings: Settings, model_version: str, window_end: datetime) -> WindowVerdict:
    """Judge the ``window_minutes`` of predictions before ``window_end`` and write the rows once.

    The window is a function of ``window_end`` only (the run's logical moment), so a retried or
    re-run task reads the same rows and writes nothing twice.
    """
    reference = load_reference(settings, model_version)
    end = _utc(window_end)
    start = end - timedelta(minutes=settings.monitoring.window_minutes)
    frame = read_window(settings, reference.kinds(), start, end, model_version)
    report = compute_drift(reference, frame, settings.monitoring, start, end)
    written = write_drift(settings, report)
    return WindowVerdict(
        model_version=str(model_version),
        window_start=start,
        window_end=end,
        rows=report.rows,
        status=report.status,
        dataset_drifted=report.dataset_drifted,
        score_drifted=report.score_drifted,
        drifted_features=report.drifted_features,
        table_version=written.version,
        written=written.written,
    )


def render_window_report(
    settings: Settings, model_version: str, window_start: datetime, window_end: datetime
) -> str | None:
    """The Evidently HTML report of a judged window, at :func:`report_uri`; None when too few rows.

    Already rendered (a retry) → the same URI, without rendering again.
    """
    uri = report_uri(settings, model_version, window_start, window_end)
    fs, path = _lake_filesystem(settings, uri)
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type == pafs.FileType.File:
        return uri
    reference_rows = load_reference_sample(settings, model_version)
    kinds = {
        name: kind
        for name, kind in load_reference(settings, model_version).kinds().items()
        if name in reference_rows.columns
    }
    current = read_window(settings, kinds, window_start, window_end, model_version)
    if len(current) < settings.monitoring.min_rows:
        log.info("monitoring.report_skipped", version=model_version, rows=len(current))
        return None
    evidently_report(reference_rows, current, kinds, settings, uri)
    log.info("monitoring.report_rendered", version=model_version, uri=uri, rows=len(current))
    return uri


# --- classification performance once labels have joined -------------------------------------------
#
# Concept drift leaves the inputs alone and changes what they mean: no drift test sees it, the
# labels do. Each version's reference carries its holdout precision and recall at the serving
# decision threshold and its PR-AUC; a window of the version's predictions whose labels (late
# labels and accepted feedback) have arrived is held against them. The figures come from
# Evidently 0.7's ClassificationPreset and are checked against the confusion counts; PR-AUC is
# average precision (sklearn), as training and the gate define it — Evidently 0.7 has no PR-AUC
# metric.

PERFORMANCE = "__performance__"
"""The ``feature`` of the row carrying the performance verdict (precision or recall dropped)."""
PRECISION, RECALL, PR_AUC = "__precision__", "__recall__", "__pr_auc__"
PERFORMANCE_METHOD = "evidently_classification"
PERFORMANCE_FIGURES = {PRECISION: "precision", RECALL: "recall", PR_AUC: "pr_auc"}
"""The ``feature`` of each figure's row → the figure's name."""
_EXACT = 1e-12


@dataclass(frozen=True)
class ExpectedPerformance:
    """What a version achieved on its holdout: the figures its production windows are held to.

    ``precision`` is None when no holdout row reached the threshold, ``recall`` and ``pr_auc``
    when the holdout had no positive label: such a figure cannot be judged later either.
    """

    precision: float | None
    recall: float | None
    pr_auc: float | None
    decision_threshold: float
    rows: int
    positives: int


@dataclass(frozen=True)
class ClassificationFigures:
    """Confusion counts of labelled scores at a threshold and the figures they give (None: undefined)."""

    rows: int
    positives: int
    predicted_positives: int
    true_positives: int
    precision: float | None
    recall: float | None
    pr_auc: float | None

    @property
    def both_classes(self) -> bool:
        return 0 < self.positives < self.rows


def classification_figures(labels: Any, scores: Any, threshold: float) -> ClassificationFigures:
    """Precision and recall of ``score >= threshold`` decisions (as served) and PR-AUC, with numpy."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(labels).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise MonitoringError(f"{y.size} labels for {s.size} scores")
    if np.isnan(s).any():
        raise MonitoringError("labelled predictions without a score: the prediction log lost scores")
    decided = s >= threshold
    positive = y == 1
    tp, pp, ap = int((decided & positive).sum()), int(decided.sum()), int(positive.sum())
    return ClassificationFigures(
        rows=int(y.size),
        positives=ap,
        predicted_positives=pp,
        true_positives=tp,
        precision=tp / pp if pp else None,
        recall=tp / ap if ap else None,
        pr_auc=float(average_precision_score(y, s)) if 0 < ap < y.size else None,
    )


def expected_performance(labels: Any, scores: Any, threshold: float) -> ExpectedPerformance:
    """A version's expected performance from its holdout labels and scores, for :func:`save_reference`."""
    figures = classification_figures(labels, scores, threshold)
    if figures.rows == 0:
        raise MonitoringError("expected performance needs labelled holdout rows; the holdout is empty")
    return ExpectedPerformance(
        precision=figures.precision,
        recall=figures.recall,
        pr_auc=figures.pr_auc,
        decision_threshold=float(threshold),
        rows=figures.rows,
        positives=figures.positives,
    )


def evidently_classification(labels: Any, scores: Any, threshold: float) -> dict[str, float]:
    """Evidently 0.7's ClassificationPreset over labelled scores: precision, recall and ROC-AUC.

    Needs both classes among the labels (Evidently fails otherwise); callers check first.
    """
    import warnings

    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset
    from sklearn.exceptions import UndefinedMetricWarning

    frame = pd.DataFrame(
        {"target": np.asarray(labels).astype(np.int64), SCORE: np.asarray(scores, dtype=np.float64)}
    )
    definition = DataDefinition(
        classification=[BinaryClassification(target="target", prediction_probas=SCORE, pos_label=1)]
    )
    with warnings.catch_warnings():
        # no decision at or above the threshold: Evidently's precision is sklearn's 0 with a warning;
        # the caller reads it as undefined from the confusion counts
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        snapshot = Report([ClassificationPreset(probas_threshold=threshold)]).run(
            current_data=Dataset.from_pandas(frame, data_definition=definition)
        )
    wanted = {"Precision": "precision", "Recall": "recall", "RocAuc": "roc_auc"}
    values = {}
    for metric in snapshot.dict()["metrics"]:
        name = wanted.get(metric["config"].get("type", "").rsplit(":", 1)[-1])
        if name is not None:
            values[name] = float(metric["value"])
    missing = sorted(set(wanted.values()) - set(values))
    if missing:
        raise MonitoringError(f"Evidently's ClassificationPreset gave no {missing}: has its API changed?")
    return values


@dataclass(frozen=True)
class PerformanceReport:
    """The performance rows of one window of one version, and the verdict they add up to."""

    window_start: datetime
    window_end: datetime
    model_version: str
    labelled: int
    results: tuple[DriftResult, ...]

    @property
    def summary(self) -> DriftResult:
        return next(r for r in self.results if r.feature == PERFORMANCE)

    @property
    def status(self) -> Status:
        return self.summary.status

    @property
    def dropped(self) -> bool | None:
        """Precision or recall fell beyond its allowed drop (None: no verdict, see ``status``)."""
        return self.summary.drifted

    def figures(self) -> dict[str, float | None]:
        """Observed precision, recall and PR-AUC of the window (None: undefined or not computed)."""
        return {
            PERFORMANCE_FIGURES[r.feature]: r.score for r in self.results if r.feature in PERFORMANCE_FIGURES
        }

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pylist([r.as_row() for r in self.results], schema=DRIFT_SCHEMA)


def compute_performance(
    expected: ExpectedPerformance | None,
    labels: Any,
    scores: Any,
    settings: Settings,
    model_version: str,
    window_start: datetime,
    window_end: datetime,
) -> PerformanceReport:
    """Judge a window's labelled scores against the version's expected performance.

    One row per figure (``__precision__``, ``__recall__``, ``__pr_auc__``: score = the window's
    value, threshold = expected − allowed drop, drifted = below it) and the decisive
    ``__performance__`` row (score = the smallest margin of precision and recall above their
    thresholds, drifted when negative). Never a silent pass: no labelled rows → ``no_data``;
    fewer than ``min_labelled`` or labels of one class → ``insufficient_data`` (values shown,
    no verdict); no expected figures → ``no_reference``.
    """
    start, end = _utc(window_start), _utc(window_end)
    if end <= start:
        raise MonitoringError(f"empty or inverted window: {start} .. {end}")
    rules = settings.monitoring
    threshold = settings.serving.decision_threshold
    window = _Window(start, end, str(model_version), int(np.asarray(labels).size), rules)
    figures = classification_figures(labels, scores, threshold)
    detail: dict[str, Any] = {
        "decision_threshold": threshold,
        "positives": figures.positives,
        "predicted_positives": figures.predicted_positives,
        "true_positives": figures.true_positives,
    }
    if figures.rows == 0:
        status: Status = "no_data"
    elif figures.rows < rules.min_labelled:
        status = "insufficient_data"
        detail["why"] = f"{figures.rows} labelled predictions, {rules.min_labelled} needed"
    elif not figures.both_classes:
        status = "insufficient_data"
        detail["why"] = "every label is of one class: precision and recall need both"
    elif expected is None:
        status = "no_reference"
        detail["why"] = "the version's reference has no expected performance: retrain to get one"
    else:
        status = "ok"
        evidently = evidently_classification(labels, scores, threshold)
        _cross_check(figures, evidently)
        detail["evidently"] = evidently
    if expected is not None:
        detail["reference_rows"], detail["reference_positives"] = expected.rows, expected.positives
        if expected.decision_threshold != threshold and status == "ok":
            detail["why"] = (
                f"expected precision/recall were measured at threshold {expected.decision_threshold}, "
                f"the serving threshold is {threshold}: retrain to compare like with like"
            )

    allowed = {
        PRECISION: rules.max_precision_drop,
        RECALL: rules.max_recall_drop,
        PR_AUC: rules.max_pr_auc_drop,
    }
    results, margins, undecided = [], {}, []
    for feature, name in PERFORMANCE_FIGURES.items():
        value = getattr(figures, name)
        reference = None if expected is None else getattr(expected, name)
        if feature != PR_AUC and expected is not None and expected.decision_threshold != threshold:
            reference = None  # measured at another threshold: not comparable
        row_status, verdict = status, None
        floor = np.nan if reference is None else max(reference - allowed[feature], 0.0)
        if status == "ok":
            if reference is None:
                row_status = "no_reference"
            elif value is None:
                row_status = "insufficient_data"  # e.g. precision with no positive decision
            else:
                verdict = value < floor
                if feature != PR_AUC:
                    margins[name] = value - floor
        if verdict is None and feature != PR_AUC:
            undecided.append(name)
        results.append(
            window.result(
                feature,
                "performance",
                PERFORMANCE_METHOD,
                float(floor),
                decisive=False,
                score=value,
                drifted=verdict,
                status=row_status,
                detail=detail | {"expected": reference, "allowed_drop": allowed[feature]},
            )
        )
    if status == "ok" and not margins:  # neither precision nor recall could be judged
        status = (
            "no_reference" if all(r.status == "no_reference" for r in results[:2]) else "insufficient_data"
        )
    margin = min(margins.values()) if margins else None
    dropped = sorted(name for name, m in margins.items() if m < 0)
    summary = window.result(
        PERFORMANCE,
        "performance",
        PERFORMANCE_METHOD,
        0.0,
        decisive=True,
        score=margin,
        drifted=(margin < 0) if status == "ok" else None,
        status=status,
        detail=detail
        | {
            "dropped": dropped,
            "undecided": undecided,
            "figures": {n: getattr(figures, n) for n in PERFORMANCE_FIGURES.values()},
        },
    )
    report = PerformanceReport(start, end, str(model_version), figures.rows, (*results, summary))
    log.info(
        "monitoring.performance",
        model_version=str(model_version),
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        labelled=figures.rows,
        status=status,
        dropped=dropped,
        **report.figures(),
    )
    return report


def _cross_check(figures: ClassificationFigures, evidently: Mapping[str, float]) -> None:
    """Evidently's precision and recall must be the confusion counts' exactly (same ``>=`` rule)."""
    for name in ("precision", "recall"):
        ours = getattr(figures, name)
        if ours is not None and abs(evidently[name] - ours) > _EXACT:
            raise MonitoringError(
                f"Evidently's {name} {evidently[name]!r} differs from the confusion counts' {ours!r}: "
                "the threshold rule or the positive label is not what the loop assumes"
            )


def read_labelled_window(
    settings: Settings, spec: DatasetSpec, model_version: str, window_start: datetime, window_end: datetime
) -> pd.DataFrame:
    """Labelled predictions of ``model_version`` made in ``[window_start, window_end)``: label and score."""
    from driftloop.feedback import labelled_predictions

    start, end = _utc(window_start), _utc(window_end)
    rows = labelled_predictions(settings, spec, since=start, model_versions=[str(model_version)])
    frame = rows.select(["event_id", "label", SCORE, "predicted_at"]).to_pandas()
    return frame[frame["predicted_at"] < pd.Timestamp(end)].reset_index(drop=True)


def write_performance(settings: Settings, report: PerformanceReport) -> tables.AppendResult:
    """Append the report's rows to ``drift_metrics`` once per version and window: a rerun writes nothing."""
    app_id = f"performance/{report.model_version}/{report.window_start:{_STAMP}}/{report.window_end:{_STAMP}}"
    result = tables.idempotent_append(settings, DRIFT_METRICS, report.to_arrow(), app_id)
    log.info("monitoring.performance_written", app_id=app_id, version=result.version, written=result.written)
    return result


@dataclass(frozen=True)
class PerformanceVerdict:
    """What one performance judgement found for the serving version, as XCom carries it."""

    model_version: str
    window_start: datetime
    window_end: datetime
    labelled: int
    status: Status
    performance_dropped: bool | None
    figures: dict[str, float | None]
    expected: dict[str, float | None] | None
    table_version: int
    written: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
        }


def monitor_performance(
    settings: Settings, spec: DatasetSpec, model_version: str, window_end: datetime
) -> PerformanceVerdict:
    """Judge the labelled predictions of the ``performance_window_hours`` before ``window_end``, once.

    The window is a function of ``window_end`` (the run's moment) and the rows are written once
    per window, so a retried task writes nothing twice. A version without a reference, or whose
    reference predates expected performance, gets ``no_reference`` rows.
    """
    end = _utc(window_end)
    start = end - timedelta(hours=settings.monitoring.performance_window_hours)
    try:
        expected = load_reference(settings, model_version).performance
    except ReferenceNotFound:
        expected = None
    frame = read_labelled_window(settings, spec, model_version, start, end)
    report = compute_performance(
        expected, frame["label"].to_numpy(), frame[SCORE].to_numpy(), settings, model_version, start, end
    )
    written = write_performance(settings, report)
    return PerformanceVerdict(
        model_version=str(model_version),
        window_start=start,
        window_end=end,
        labelled=report.labelled,
        status=report.status,
        performance_dropped=report.dropped,
        figures=report.figures(),
        expected=None if expected is None else asdict(expected),
        table_version=written.version,
        written=written.written,
    )
