"""The driftloop view in the Airflow UI: a FastAPI app in the API server and a nav entry framing it.

Thin on purpose: the app is driftloop.airflow.view, the data driftloop.overview; this file only
tells Airflow where they go. The page, its script and styles are in static/ beside this file.
"""

from __future__ import annotations

from pathlib import Path

from airflow.plugins_manager import AirflowPlugin

from driftloop.airflow.view import URL_PREFIX, LazyApp, create_app

_STATIC = Path(__file__).resolve().parent / "static"


class DriftloopViewPlugin(AirflowPlugin):
    """Champion/challenger, canary, drift history, feedback and actions on one page."""

    name = "driftloop_view"
    fastapi_apps = [  # noqa: RUF012 (AirflowPlugin declares these as class attributes)
        {"app": LazyApp(lambda: create_app(_STATIC)), "url_prefix": URL_PREFIX, "name": "driftloop view"}
    ]
    external_views = [  # noqa: RUF012
        {
            "name": "driftloop",
            # the UI frames this page at <airflow>/plugin/driftloop, same origin as the API
            "href": f"{URL_PREFIX}/",
            "url_route": "driftloop",
            "destination": "nav",
            "nav_top_level": True,
            "icon": f"{URL_PREFIX}/static/icon.svg",
        }
    ]
