"""The Airflow Assets that connect driftloop's DAGs: landing, bronze, features, drift, challenger.

Asset names are the stable contract other systems post events to; URIs point at the data.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from airflow.sdk import Asset, AssetWatcher

from driftloop.airflow.triggers import LandingFilesTrigger
from driftloop.config import get_settings
from driftloop.lake import names

LANDING = "driftloop.landing"
BRONZE_EVENTS = "driftloop.bronze_events"
FEATURES = "driftloop.features"


def _uri(location: str) -> str:
    """An Asset URI for a lake location: s3:// for object stores, file:// for folders."""
    location = names.delta_rs_uri(location)
    return location if "://" in location else PurePosixPath(location).as_uri()


def landing_asset() -> Asset:
    """New files in the landing area, announced by a watcher in the triggerer."""
    settings = get_settings()
    return Asset(
        name=LANDING,
        uri=_uri(settings.landing),
        watchers=[
            AssetWatcher(
                name="landing_files", trigger=LandingFilesTrigger(poll_seconds=settings.landing_poll_seconds)
            )
        ],
    )


def bronze_events_asset() -> Asset:
    """The validated bronze events table; events carry batch ids, row counts and the Delta version."""
    return Asset(name=BRONZE_EVENTS, uri=_uri(get_settings().table_uri(names.BRONZE_EVENTS)))


def features_asset() -> Asset:
    """The per-event features table; events carry its Delta version."""
    return Asset(name=FEATURES, uri=_uri(get_settings().table_uri(names.FEATURES)))
