"""Monitoring against real services: reference statistics stored with a registered MLflow version and
read back, and the Evidently 0.7 report rendered into the lake, agreeing with the fast path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from driftloop.monitoring import (
    _REFERENCE_CACHE,
    REFERENCE_TAG,
    SCORE,
    MonitoringError,
    ReferenceNotFound,
    column_kinds,
    compute_drift,
    compute_reference,
    evidently_report,
    load_reference,
    report_uri,
    save_reference,
)
from tests.models import feature_rows, register_model

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
END = START + timedelta(minutes=5)


def test_reference_is_saved_with_the_version_and_loaded_back(settings, spec):
    from driftloop.registry import Registry

    version = register_model(settings, "good")
    sample = feature_rows(spec, 3000, seed=4)
    sample[SCORE] = np.random.default_rng(0).beta(2, 5, len(sample))
    with pytest.raises(ReferenceNotFound, match="save_reference"):
        load_reference(settings, version)

    saved = save_reference(settings, version, sample)
    assert set(saved.columns) == {*spec.model_features, SCORE}
    registry = Registry(settings)
    assert registry.client.get_model_version(registry.name, version).tags[REFERENCE_TAG]
    _REFERENCE_CACHE.clear()  # as a fresh monitoring process would
    loaded = load_reference(settings, version)
    assert loaded == saved
    assert save_reference(settings, version, sample) == saved, "a retried registration stores the same"

    window = feature_rows(spec, 1000, seed=5).assign(score=sample[SCORE].to_numpy()[:1000])
    report = compute_drift(loaded, window, settings.monitoring, START, END)
    assert report.status == "ok"
    assert report.dataset_drifted is False


def test_evidently_report_is_written_to_the_lake_and_agrees_on_a_clear_shift(settings, spec):
    reference = feature_rows(spec, 3000, seed=1)
    current = feature_rows(spec, 2000, seed=2)
    current["amount"] = current["amount"] * 3
    current["channel"] = "web"
    uri = report_uri(settings, "7", START, END)

    result = evidently_report(reference, current, spec, settings, uri)

    html = Path(uri)
    assert html.exists()
    assert html.stat().st_size > 10_000
    assert not list(html.parent.glob("*.partial"))
    assert set(result.columns) == set(spec.model_features)
    assert {"amount", "channel"} <= set(result.drifted)
    assert "category" not in result.drifted
    kinds = column_kinds(spec, list(reference.columns))
    fast = compute_drift(
        compute_reference(reference, kinds, settings.monitoring, "7"),
        current,
        settings.monitoring,
        START,
        END,
    )
    assert {"amount", "channel"} <= set(fast.drifted_features)
    assert "category" not in fast.drifted_features


def test_evidently_refuses_an_empty_window(settings, spec):
    reference = feature_rows(spec, 100)
    with pytest.raises(MonitoringError, match="empty"):
        evidently_report(reference, reference.iloc[:0], spec, settings)
