"""The driftloop operator view inside Airflow's API server: a FastAPI app behind Airflow's own login.

Every route needs a logged-in Airflow user (the UI's JWT cookie or a bearer token, resolved by
Airflow's security dependency). The page reads :mod:`driftloop.overview` as JSON and acts through
Airflow's REST API with the user's own session, so the user's role decides what may be done;
the per-action permissions this app reports only decide which buttons are enabled.
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations, which name
# Airflow types imported inside create_app()
import html
import math
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

URL_PREFIX = "/driftloop"
# each action of the page and the DAG it triggers (conf shapes in static/view.js)
ACTIONS: dict[str, str] = {
    "retrain": "train_model",
    "review": "review_challenger",
    "control": "control_rollout",
}
# the report is our own output rendering prediction data: it runs in an opaque origin, so its
# scripts (Evidently's) can draw but can never call Airflow's API with the viewer's session
REPORT_HEADERS = {
    "Content-Security-Policy": "sandbox allow-scripts; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
PAGE_HEADERS = {
    # no CDN, no inline script: the page loads only its own files
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def create_app(static_dir: Path, url_prefix: str = URL_PREFIX):
    """The view's FastAPI app; ``static_dir`` holds view.html, view.js and view.css."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import GetUserDep, get_user
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles

    from driftloop import overview
    from driftloop.config import get_settings

    page = (static_dir / "view.html").read_text()
    app = FastAPI(title="driftloop view", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=static_dir), name="static")

    def airflow_root(request: Request) -> str:
        """Airflow's root path as the browser sees it (the API server may live below a base path)."""
        return request.scope.get("root_path", "").removesuffix(url_prefix) or ""

    def permissions(user) -> dict[str, bool]:
        manager = get_auth_manager()
        return {
            action: manager.is_authorized_dag(
                method="POST", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
            )
            for action, dag_id in ACTIONS.items()
        }

    @app.get("/", response_class=HTMLResponse)
    async def view(request: Request):
        try:
            user = await get_user(request, None, None)
        except HTTPException:
            login = get_auth_manager().get_url_login(next_url=str(request.url))
            return RedirectResponse(login, status_code=303)
        body = page.replace("{{ api_root }}", html.escape(airflow_root(request), quote=True)).replace(
            "{{ user }}", html.escape(user.get_name())
        )
        return HTMLResponse(body, headers=PAGE_HEADERS)

    @app.get("/api/overview")
    def overview_json(user: GetUserDep) -> JSONResponse:
        data = overview.gather(get_settings()).as_dict()
        data["user"] = {"name": user.get_name(), "can": permissions(user)}
        data["dags"] = ACTIONS
        return JSONResponse(_json_safe(data))

    @app.get("/reports/{relative:path}")
    def report(relative: str, user: GetUserDep) -> FileResponse:
        try:
            path = overview.resolve_report(get_settings(), relative)
        except overview.ReportNotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=REPORT_HEADERS)

    return app


def _json_safe(value: Any) -> Any:
    """``value`` with NaN/infinity as None and other odd types as strings (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


class LazyApp:
    """An ASGI app built on its first request.

    Every Airflow process loads plugins (scheduler, dag-processor, task runners); only the API
    server serves this app, so only it pays for importing FastAPI routes and Airflow's security.
    """

    def __init__(self, factory: Callable[[], ASGIApp]) -> None:
        self._factory = factory
        self._app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive, send) -> None:
        if self._app is None:
            self._app = self._factory()
        await self._app(scope, receive, send)

    def __repr__(self) -> str:
        return "driftloop.airflow.view.LazyApp"
