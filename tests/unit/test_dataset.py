"""The dataset contract and the typed settings."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

from driftloop.config import Settings
from driftloop.dataset import DatasetSpecError, load_dataset_spec, parse_window


def test_embedded_spec_declares_the_model_features(spec):
    assert spec.model_features[:4] == ["amount", "category", "country", "channel"]
    assert "user_id_amount_mean_7d" in spec.model_features
    assert "amount_to_user_mean_7d" in spec.model_features
    assert spec.max_window == timedelta(days=7)


@pytest.mark.parametrize(("text", "expected"), [("15m", 900), ("1h", 3600), ("7d", 604800)])
def test_windows_parse(text, expected):
    assert parse_window(text).total_seconds() == expected


@pytest.mark.parametrize("text", ["1w", "h", "-1h", "1.5h"])
def test_bad_windows_are_rejected(text):
    with pytest.raises(DatasetSpecError, match="must look like"):
        parse_window(text)


def test_another_source_can_be_declared_and_inconsistencies_are_named(tmp_path, spec):
    raw = yaml.safe_load(spec.model_dump_json())
    raw["name"] = "loans"
    raw["columns"] = [c for c in raw["columns"] if c["name"] != "channel"]
    raw["features"]["passthrough"] = ["amount", "category", "country", "channel"]
    path = tmp_path / "loans.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DatasetSpecError, match="feature column 'channel' is not in columns"):
        load_dataset_spec(path)


def test_missing_spec_file_says_which_setting(tmp_path):
    with pytest.raises(DatasetSpecError, match="DRIFTLOOP_DATASET_FILE"):
        load_dataset_spec(tmp_path / "nope.yaml")


def test_settings_default_to_a_local_lake(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert settings.profile == "local"
    assert settings.lake_uri == str(tmp_path / "lake")
    assert settings.table_uri("features") == f"{tmp_path}/lake/tables/features"


def test_kubernetes_profile_needs_an_object_store_lake(tmp_path):
    with pytest.raises(ValueError, match="DRIFTLOOP_LAKE_ROOT=s3a://"):
        Settings(profile="kubernetes", data_dir=tmp_path)
    assert Settings(profile="kubernetes", lake_root="s3a://lake/prod").lake_uri == "s3a://lake/prod"


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DRIFTLOOP_SPARK_MASTER", "local[1]")
    monkeypatch.setenv("DRIFTLOOP_FUTURE_EVENT_TOLERANCE", "PT10M")
    settings = Settings()
    assert settings.spark_master == "local[1]"
    assert settings.future_event_tolerance == timedelta(minutes=10)
