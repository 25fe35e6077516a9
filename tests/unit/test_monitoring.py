"""Drift computation on tiny frames: identical data passes, shifts drift (only where they are), and
empty, single-row, all-null and unseen-category windows give explicit statuses, never a pass."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats

from driftloop.config import MonitoringSettings
from driftloop.lake import tables
from driftloop.lake.names import DRIFT_METRICS, PREDICTION_LOG
from driftloop.monitoring import (
    DATASET,
    OTHER,
    SCORE,
    DriftReport,
    MonitoringError,
    ReferenceStats,
    chi2_p_value,
    column_kinds,
    compute_drift,
    compute_reference,
    ks_2samp_sorted,
    prune_reports,
    psi,
    read_window,
    report_uri,
    write_drift,
)

KINDS = {"x": "numeric", "y": "numeric", "c": "categorical", SCORE: "numeric"}
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
END = START + timedelta(minutes=5)
SETTINGS = MonitoringSettings(min_rows=50)


def frame(n: int, seed: int = 0, shift: frozenset[str] = frozenset()) -> pd.DataFrame:
    """x ~ N(0, 1), y ~ Gamma(2, 10), c over a/b/c, score ~ Beta(2, 5); ``shift`` moves the named columns."""
    rng = np.random.default_rng(seed)
    out = pd.DataFrame(
        {
            "x": rng.normal(1.5 if "x" in shift else 0.0, 1.0, n),
            "y": rng.gamma(2.0, 25.0 if "y" in shift else 10.0, n),
            "c": rng.choice(["a", "b", "c"], n, p=[0.1, 0.3, 0.6] if "c" in shift else [0.6, 0.3, 0.1]),
            SCORE: rng.beta(5 if SCORE in shift else 2, 2 if SCORE in shift else 5, n),
        }
    )
    out["c"] = out["c"].astype(object)
    return out


@pytest.fixture(scope="module")
def reference() -> ReferenceStats:
    return compute_reference(frame(4000), KINDS, SETTINGS, model_version="7")


def drift(reference: ReferenceStats, current: pd.DataFrame, settings=SETTINGS) -> DriftReport:
    return compute_drift(reference, current, settings, START, END)


def decisive(report: DriftReport, feature: str):
    return next(r for r in report.results if r.feature == feature and r.decisive)


# --- reference -------------------------------------------------------------------------------------


def test_reference_round_trips_through_json(reference):
    text = reference.to_json()
    assert ReferenceStats.from_json(text) == reference
    body = json.loads(text)
    assert body["model_version"] == "7"
    assert [c["name"] for c in body["columns"]] == list(KINDS)


def test_reference_refuses_an_unknown_format(reference):
    body = json.loads(reference.to_json()) | {"format": 99}
    with pytest.raises(MonitoringError, match="recompute them with save_reference"):
        ReferenceStats.from_json(json.dumps(body))


def test_reference_is_bounded_and_deterministic():
    settings = MonitoringSettings(reference_sample_size=100, reference_bins=10)
    data = frame(5000)
    ref = compute_reference(data, KINDS, settings, "1")
    x = ref.columns["x"]
    assert len(x.sample) == 100
    assert list(x.sample) == sorted(x.sample)
    assert len(x.edges) == 9
    assert len(x.bin_counts) == 10
    assert sum(x.bin_counts) == 5000
    assert ref == compute_reference(data, KINDS, settings, "1")


def test_reference_keeps_top_categories_and_counts_the_rest_as_other():
    data = pd.DataFrame({"c": ["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5 + [None] * 10})
    ref = compute_reference(data, {"c": "categorical"}, MonitoringSettings(max_categories=2), "1")
    col = ref.columns["c"]
    assert col.categories == ("a", "b")
    assert col.category_counts == (50, 30)
    assert col.other == 20
    assert col.missing == 10


def test_reference_of_tied_values_has_fewer_bins():
    data = pd.DataFrame({"n": [0.0] * 900 + list(np.arange(100.0))})
    col = compute_reference(data, {"n": "numeric"}, SETTINGS, "1").columns["n"]
    assert len(col.edges) == len(set(col.edges))
    assert sum(col.bin_counts) == 1000


@pytest.mark.parametrize(
    ("data", "message"),
    [(frame(10).drop(columns="x"), "lacks monitored columns"), (frame(0), "reference frame is empty")],
)
def test_reference_refuses_bad_frames(data, message):
    with pytest.raises(MonitoringError, match=message):
        compute_reference(data, KINDS, SETTINGS, "1")


def test_column_kinds_follow_the_dataset_contract(spec):
    kinds = column_kinds(spec, [*spec.model_features])
    assert SCORE not in kinds
    assert kinds["category"] == "categorical"
    assert kinds["amount"] == "numeric"
    assert column_kinds(spec)[SCORE] == "numeric"


# --- the tests themselves -------------------------------------------------------------------------


def test_psi_of_identical_counts_is_zero_and_grows_with_shift():
    assert psi([10, 20, 30], [10, 20, 30]) == 0.0
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=0.05)
    assert psi([10, 20, 30], [30, 20, 10]) > 0.5
    with pytest.raises(ValueError, match="empty"):
        psi([1, 2], [0, 0])


@pytest.mark.parametrize(("m", "n"), [(50, 30), (5000, 8000), (5000, 200_000), (20_000, 20_000)])
def test_ks_matches_scipy(m, n):
    rng = np.random.default_rng(m + n)
    a = np.sort(rng.normal(size=m))
    b = np.sort(rng.normal(0.05, 1.0, size=n).round(2))  # ties on one side too
    statistic, p_value = ks_2samp_sorted(a, b)
    expected = stats.ks_2samp(a, b)
    assert statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_chi2_of_one_occupied_bin_is_no_difference():
    assert chi2_p_value([10, 0], [3, 0]) == 1.0
    assert chi2_p_value([500, 500], [900, 100]) < 1e-6


# --- drift of a window ------------------------------------------------------------------------------


def test_identical_data_does_not_drift(reference):
    report = drift(reference, frame(4000))
    assert report.status == "ok"
    assert report.dataset_drifted is False
    assert report.score_drifted is False
    assert report.drifted_features == []
    for result in report.results:
        if result.method == "psi":
            assert result.score == pytest.approx(0.0, abs=1e-12)
        assert result.drifted is False, result


def test_a_fresh_sample_of_the_same_distribution_does_not_drift(reference):
    # (a 1 % KS test flags about one same-distribution column in a hundred: seed 11 is one of those)
    report = drift(reference, frame(3000, seed=12))
    assert report.dataset_drifted is False
    assert not any(r.drifted for r in report.results), [r for r in report.results if r.drifted]


def test_a_clear_shift_drifts_everywhere(reference):
    report = drift(reference, frame(3000, seed=3, shift=frozenset(KINDS)))
    assert sorted(report.drifted_features) == ["c", "x", "y"]
    assert report.score_drifted is True
    assert report.dataset_drifted is True
    assert report.dataset.score == 1.0
    assert all(r.drifted for r in report.results)


@pytest.mark.parametrize("column", ["x", "y", "c", SCORE])
def test_a_shift_in_one_column_drifts_that_column_only(reference, column):
    report = drift(reference, frame(3000, seed=5, shift=frozenset({column})))
    verdicts = report.verdicts()
    assert verdicts.pop(column) is True
    assert not any(verdicts.values()), verdicts
    assert all(r.drifted for r in report.results if r.feature == column), "both methods see it"


def test_an_empty_window_says_no_data(reference):
    report = drift(reference, frame(0))
    assert report.status == "no_data"
    assert report.rows == 0
    assert {r.status for r in report.results} == {"no_data"}
    assert all(r.drifted is None and r.score is None for r in report.results)
    assert report.dataset_drifted is None
    assert report.to_arrow().num_rows == 2 * len(KINDS) + 1


def test_a_single_row_is_insufficient_data_not_a_pass(reference):
    report = drift(reference, frame(1, seed=2))
    assert report.status == "insufficient_data"
    assert {r.status for r in report.results} == {"insufficient_data"}
    assert all(r.drifted is None for r in report.results)
    assert decisive(report, "x").score is not None, "the score is still shown"


@pytest.mark.parametrize("column", ["x", "c"])
def test_a_column_gone_all_null_drifts(reference, column):
    current = frame(500, seed=4)
    current[column] = np.nan if column == "x" else None
    report = drift(reference, current)
    assert {r.status for r in report.results if r.feature == column} == {"all_missing"}
    assert all(r.drifted is True for r in report.results if r.feature == column)
    assert report.drifted_features == [column]


def test_a_column_null_in_the_reference_too_is_all_missing_without_drift():
    data = frame(1000)
    data["x"] = np.nan
    ref = compute_reference(data, KINDS, SETTINGS, "1")
    report = drift(ref, data.sample(500, random_state=1))
    x = [r for r in report.results if r.feature == "x"]
    assert {r.status for r in x} == {"all_missing"}
    assert all(r.drifted is False for r in x)


def test_more_nulls_is_drift(reference):
    current = frame(2000, seed=6)
    current.loc[current.index[:1000], "y"] = np.nan
    report = drift(reference, current)
    y_psi = next(r for r in report.results if r.feature == "y" and r.method == "psi")
    y_ks = next(r for r in report.results if r.feature == "y" and r.method == "ks")
    assert y_psi.drifted is True
    assert y_psi.detail["missing_fraction"] == 0.5
    assert y_ks.drifted is False, "the values that are there did not move"


def test_unseen_categories_are_their_own_bin(reference):
    current = frame(2000, seed=7)
    current.loc[current.index[:600], "c"] = "never-seen"
    report = drift(reference, current)
    c = decisive(report, "c")
    assert c.drifted is True
    assert c.detail["unseen_rows"] == 600
    assert c.detail["unseen_categories"] == ["never-seen"]


def test_a_few_unseen_categories_are_not_drift(reference):
    current = frame(2000, seed=8)
    current.loc[current.index[:4], "c"] = "rare-new"
    c = decisive(drift(reference, current), "c")
    assert c.drifted is False
    assert c.detail["unseen_rows"] == 4


def test_with_a_tail_values_outside_the_top_categories_count_as_other():
    settings = MonitoringSettings(min_rows=50, max_categories=2)
    data = frame(3000)
    ref = compute_reference(data, KINDS, settings, "1")
    assert ref.columns["c"].other > 0
    current = frame(3000, seed=2)
    current.loc[current.index[:1500], "c"] = "new"
    c = decisive(compute_drift(ref, current, settings, START, END), "c")
    assert c.drifted is True
    assert c.detail["unseen_rows"] == 0, "cannot be told from the tail"
    assert OTHER == "__other__"


@pytest.mark.parametrize(("numeric", "categorical"), [("ks", "chi2"), ("psi", "psi")])
def test_the_decisive_method_follows_the_settings(reference, numeric, categorical):
    settings = MonitoringSettings(min_rows=50, numeric_method=numeric, categorical_method=categorical)
    report = drift(reference, frame(2000, seed=9, shift=frozenset({"x"})), settings)
    assert decisive(report, "x").method == numeric
    assert decisive(report, "c").method == categorical
    assert report.drifted_features == ["x"]


def test_dataset_drift_needs_the_share_of_drifted_features(reference):
    shifted = frame(2000, seed=10, shift=frozenset({"x"}))
    assert drift(
        reference, shifted, MonitoringSettings(min_rows=50, share_of_drifted_features=0.3)
    ).dataset_drifted
    strict = MonitoringSettings(min_rows=50, share_of_drifted_features=0.5)
    report = drift(reference, shifted, strict)
    assert report.dataset_drifted is False
    assert report.dataset.score == pytest.approx(1 / 3)
    assert report.dataset.detail["drifted"] == ["x"]


def test_parallel_and_sequential_give_the_same_results(reference):
    current = frame(40_000, seed=12, shift=frozenset({"y"}))
    one = drift(reference, current, MonitoringSettings(min_rows=50, workers=1))
    two = drift(reference, current, MonitoringSettings(min_rows=50, workers=2))
    assert one.results == two.results


@pytest.mark.parametrize(
    ("current", "start", "message"),
    [
        (frame(10).drop(columns="y"), START, "lacks monitored columns"),
        (frame(10), START.replace(tzinfo=None), "no time zone"),
        (frame(10), END, "inverted window"),
    ],
)
def test_bad_windows_raise(reference, current, start, message):
    with pytest.raises(MonitoringError, match=message):
        compute_drift(reference, current, SETTINGS, start, END)


def test_a_numeric_column_of_text_is_refused(reference):
    current = frame(100)
    current["x"] = "text"
    with pytest.raises(MonitoringError, match="monitored as numeric"):
        drift(reference, current)


def test_rows_match_the_table_schema(reference):
    table = drift(reference, frame(300, seed=1)).to_arrow()
    assert table.num_rows == 2 * len(KINDS) + 1
    row = table.to_pylist()[-1]
    assert row["feature"] == DATASET
    assert row["window_start"] == START
    assert json.loads(row["detail"])["features"] == 3


# --- the lake -------------------------------------------------------------------------------------------


def test_writing_a_window_twice_writes_it_once(settings, reference):
    report = drift(reference, frame(500, seed=1))
    first = write_drift(settings, report)
    again = write_drift(settings, report)
    assert first.written
    assert not again.written
    assert again.version == first.version
    later = compute_drift(reference, frame(500, seed=2), SETTINGS, END, END + timedelta(minutes=5))
    assert write_drift(settings, later).written
    stored = tables.read_table(settings, DRIFT_METRICS)
    assert stored.num_rows == 2 * len(report.results)
    assert sorted(set(stored.column("window_start").to_pylist())) == [START, END]


def _log_rows(n: int, at: datetime, version: str, seed: int) -> pa.Table:
    data = frame(n, seed=seed)
    data["model_version"] = version
    data["predicted_at"] = pd.Timestamp(at)
    return pa.Table.from_pandas(data, preserve_index=False)


def test_read_window_takes_one_version_in_the_half_open_window(settings):
    from deltalake import write_deltalake

    uri = tables.delta_rs_uri(settings.table_uri(PREDICTION_LOG))
    assert read_window(settings, KINDS, START, END).empty, "no log yet is an empty window"
    for rows, at, version in [
        (30, START, "7"),
        (20, START, "8"),
        (10, END, "7"),
        (5, START - timedelta(1), "7"),
    ]:
        write_deltalake(uri, _log_rows(rows, at, version, rows), mode="append")
    window = read_window(settings, KINDS, START, END, model_version="7")
    assert len(window) == 30
    assert list(window.columns) == list(KINDS)
    assert len(read_window(settings, KINDS, START, END)) == 50
    with pytest.raises(MonitoringError, match="not a version"):
        read_window(settings, KINDS, START, END, model_version="7' OR 1=1")


def test_prune_reports_deletes_by_window_age_only(settings):
    from pathlib import Path

    now = START + timedelta(days=100)
    old = Path(report_uri(settings, "3", START, END))
    recent = Path(report_uri(settings, "3", now - timedelta(days=1), now))
    stray = old.parent / "notes.html"
    for path in (old, recent, stray):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("<html></html>")
    deleted = prune_reports(settings, now)
    assert deleted == [str(old)]
    assert not old.exists()
    assert recent.exists()
    assert stray.exists()
    assert prune_reports(settings, now) == []


# --- classification performance ---------------------------------------------------------------------


def _performance_settings(**monitoring):
    from driftloop.config import Settings

    return Settings(monitoring=MonitoringSettings(**({"min_labelled": 20} | monitoring)))


def test_reference_keeps_expected_performance_and_reads_references_saved_before_it(reference):
    from dataclasses import replace

    from driftloop.monitoring import ExpectedPerformance

    expected = ExpectedPerformance(
        precision=0.5, recall=None, pr_auc=0.4, decision_threshold=0.5, rows=100, positives=0
    )
    with_figures = replace(reference, performance=expected)
    assert ReferenceStats.from_json(with_figures.to_json()) == with_figures
    assert "performance" not in json.loads(reference.to_json()), "older readers see the same document"
    assert ReferenceStats.from_json(reference.to_json()).performance is None


def test_performance_figures_are_the_confusion_counts_and_sklearn_pr_auc():
    from sklearn.metrics import average_precision_score, precision_score, recall_score

    from driftloop.monitoring import classification_figures

    rng = np.random.default_rng(3)
    labels = (rng.random(500) < 0.2).astype(int)
    scores = np.clip(0.35 * labels + rng.random(500) * 0.7, 0, 1)
    scores[:5] = 0.5  # exactly at the threshold: a positive decision, as served
    figures = classification_figures(labels, scores, 0.5)
    assert figures.precision == precision_score(labels, scores >= 0.5)
    assert figures.recall == recall_score(labels, scores >= 0.5)
    assert figures.pr_auc == average_precision_score(labels, scores)
    nobody_flagged = classification_figures(labels, np.zeros(500), 0.5)
    assert (nobody_flagged.precision, nobody_flagged.recall) == (None, 0.0)


@pytest.mark.parametrize(
    ("labels", "status", "why"),
    [
        ([], "no_data", None),
        ([1, 0] * 5, "insufficient_data", "10 labelled predictions, 20 needed"),
        ([0] * 40, "insufficient_data", "every label is of one class"),
    ],
)
def test_a_performance_window_without_enough_evidence_is_never_a_pass(labels, status, why):
    from driftloop.monitoring import PERFORMANCE, ExpectedPerformance, compute_performance

    expected = ExpectedPerformance(
        precision=0.9, recall=0.9, pr_auc=0.9, decision_threshold=0.5, rows=100, positives=30
    )
    scores = np.full(len(labels), 0.1)  # nothing flagged: a real window would have dropped
    report = compute_performance(expected, np.array(labels), scores, _performance_settings(), "7", START, END)
    assert report.status == status
    assert report.dropped is None
    assert {r.drifted for r in report.results} == {None}
    assert [r.feature for r in report.results][-1] == PERFORMANCE
    assert why is None or report.summary.detail["why"].startswith(why)
