"""The Airflow Assets that connect driftloop's DAGs: landing, bronze, features, drift, challenger.

Assets are identified by stable names only — the contract other systems post events to — so
their identity never changes with where the lake lives; events carry table URIs and versions.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetWatcher

from driftloop.airflow.asset_names import (
    BRONZE_EVENTS,
    CHALLENGER,
    CHAMPION,
    DRIFT,
    FEATURES,
    FEEDBACK,
    LANDING,
    PREDICTION_LOG,
)
from driftloop.airflow.monitoring import PredictionLogTrigger
from driftloop.airflow.triggers import LandingFilesTrigger
from driftloop.config import get_settings


def landing_asset() -> Asset:
    """New files in the landing area, announced by a watcher in the triggerer."""
    trigger = LandingFilesTrigger(poll_seconds=get_settings().landing_poll_seconds)
    return Asset(name=LANDING, watchers=[AssetWatcher(name="landing_files", trigger=trigger)])


def bronze_events_asset() -> Asset:
    """The validated bronze events table; events carry batch ids, row counts and the Delta version."""
    return Asset(name=BRONZE_EVENTS)


def features_asset() -> Asset:
    """The per-event features table; events carry its Delta version."""
    return Asset(name=FEATURES)


def drift_asset() -> Asset:
    """Monitoring found drift; events carry drifted features, scores, report and serving version."""
    return Asset(name=DRIFT)


def challenger_asset() -> Asset:
    """A registered version passed the gate and awaits its canary; events carry version and metrics."""
    return Asset(name=CHALLENGER)


def champion_asset() -> Asset:
    """The champion alias moved (first model, promotion or rollback)."""
    return Asset(name=CHAMPION)


def feedback_asset() -> Asset:
    """People's false-positive/false-negative feedback was recorded; events carry the counts."""
    return Asset(name=FEEDBACK)


def prediction_log_asset() -> Asset:
    """The prediction log received new predictions, announced by a watcher in the triggerer."""
    trigger = PredictionLogTrigger(poll_seconds=get_settings().monitoring.watch_poll_seconds)
    return Asset(name=PREDICTION_LOG, watchers=[AssetWatcher(name="prediction_log", trigger=trigger)])
