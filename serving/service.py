"""The driftloop model server: one registered model version behind /predict and /predict_batch.

The version is resolved from DRIFTLOOP_SERVING__MODEL_REF once per worker at start-up and
reported in every response, metric and prediction-log row. Prediction requests enter through an
ASGI guard (auth, content type, body size, timeout) and are validated by pydantic (422) before
they are scored; every other path (health, metrics) is BentoML's own.
"""

# no `from __future__ import annotations`: FastAPI reads the request models from the signatures

import asyncio
import hmac
import logging
import threading
import time
from typing import Any

import bentoml
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from driftloop import predictions
from driftloop.config import get_settings
from driftloop.dataset import get_dataset_spec
from driftloop.log import get_logger

with bentoml.importing():
    from driftloop.registry import Registry
    from driftloop.retraining import load_scorer
    from driftloop.servers import resolve_model_version

SETTINGS = get_settings()
SERVING = SETTINGS.serving
SPEC = get_dataset_spec()
PredictionRow = predictions.row_model(SPEC)
PredictionBatch = predictions.batch_model(PredictionRow, SERVING.max_batch_rows)
LOGGED_FEATURES = tuple(SPEC.model_features)
PREDICTION_PATHS = {"/predict": "predict", "/predict_batch": "predict_batch"}
EXAMPLE_ROW = {
    "event_id": "evt-1",
    **{f: ("web" if f in SPEC.features.categorical else 1.0) for f in SPEC.model_features},
}

app = FastAPI(
    title="driftloop model",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,  # BentoML serves its own docs; keep the surface small
)


@app.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    detail = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors
    ]
    return JSONResponse({"error": predictions.validation_message(errors), "detail": detail}, status_code=422)


class _Served:
    """What this worker serves, shared with the request guard (one per process)."""

    service: "ModelService | None" = None
    version: str | None = None
    metrics: predictions.ServingMetrics | None = None
    # rollout drill: a version tagged `driftloop.drill.latency_ms` answers that much later, so
    # operators can prove the canary analysis catches a slow model (off unless tagged)
    drill_delay_s: float = 0.0


SERVED = _Served()
DRILL_LATENCY_TAG = "driftloop.drill.latency_ms"


def drill_delay_s(version: str) -> float:
    """The injected delay of a version tagged for a rollout drill, in seconds (0: none)."""
    tags = Registry(SETTINGS).client.get_model_version(SETTINGS.registered_model, version).tags
    return max(0.0, float(tags.get(DRILL_LATENCY_TAG, 0) or 0)) / 1000


def _route_library_logs() -> None:
    """BentoML configures its own loggers only; driftloop's structured lines go to the server log.

    uvicorn's access logger is cut off from the root handler BentoML installs: uvicorn then
    skips formatting an access line per request that the root's WARNING level drops anyway.
    """
    logging.getLogger("uvicorn.access").propagate = False
    library = logging.getLogger("driftloop")
    if not library.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s"))
        library.addHandler(handler)
        library.setLevel(logging.INFO)
        library.propagate = False


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class RequestGuard:
    """The server's outermost ASGI layer on the prediction paths: auth (401), JSON only (415), body
    size (413), the traffic timeout (504); every other path goes to BentoML's app unchanged.

    It also times every prediction request and counts it by status, so refused requests show
    in the metrics the rollout analysis reads. The body is read here, up to the limit, before
    the app sees any of it: an oversized or chunked body never reaches the JSON parser.
    """

    def __init__(
        self,
        app: Any,
        predictions_app: Any,
        max_body_bytes: int,
        auth_token: str | None,
        timeout_s: float,
    ) -> None:
        self.app = app
        # A prediction goes straight to the FastAPI app, past BentoML's middleware: its timeout
        # middleware wraps every request in a new task and schedules a timer it never cancels
        # (at 2,000 req/s, 60,000 pending timers of 30 s in the event loop), about 80 µs of CPU
        # a request measured in-process; its tracing excludes these paths anyway; and this
        # service reads nothing its request context, router and mount set (~0.05 ms more).
        self.predictions_app = predictions_app
        self.max_body_bytes = max_body_bytes
        self.expected_auth = f"Bearer {auth_token}".encode() if auth_token else None
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        endpoint = PREDICTION_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status: int | None = None  # set once the response starts

        async def send_counted(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if SERVED.version is not None:
                    message["headers"] = [
                        *message.get("headers", ()),
                        (b"x-model-version", SERVED.version.encode()),
                        (b"x-variant", SERVING.variant.encode()),
                    ]
            await send(message)

        try:
            refusal, receive = await self._check(scope, receive)
            if refusal is not None:
                await refusal(scope, receive, send_counted)
                return
            try:
                # one timer handle, cancelled when the request ends
                async with asyncio.timeout(self.timeout_s):
                    await self.predictions_app(scope, receive, send_counted)
            except TimeoutError:
                if status is not None:  # the response has started: nothing left to say
                    raise
                message = f"the request took longer than {self.timeout_s:g} s"
                await _json_error(504, message)(scope, receive, send_counted)
        finally:
            if SERVED.metrics is not None:
                SERVED.metrics.observe_request(endpoint, status or 500, time.perf_counter() - began)

    async def _check(self, scope: dict, receive: Any) -> tuple[JSONResponse | None, Any]:
        headers = dict(scope.get("headers") or ())
        if self.expected_auth is not None and not hmac.compare_digest(
            headers.get(b"authorization", b""), self.expected_auth
        ):
            return _json_error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}), receive
        if SERVED.metrics is None:
            return _json_error(503, "the model is still loading; retry after /readyz answers 200"), receive
        if scope.get("method") != "POST":
            return _json_error(405, "use POST with a JSON body"), receive
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            shown = media_type.decode(errors="replace") or "none"
            return _json_error(415, f"content type {shown!r} is not accepted: send application/json"), receive
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return self._too_large(), receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _json_error(400, "client disconnected"), receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return self._too_large(), receive
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay

    def _too_large(self) -> JSONResponse:
        return _json_error(413, f"request body is larger than {self.max_body_bytes} bytes")


class GuardedService(bentoml.Service):
    """A BentoML service whose ASGI app has the request guard in front of it (``service_class=``).

    BentoML inserts middleware added with ``add_asgi_middleware`` behind its own (timeout,
    tracing); built here, the guard sees a prediction first and hands it straight to the FastAPI
    routes, while BentoML keeps serving everything else: lifespan, /livez, /readyz, /metrics.
    """

    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        return RequestGuard(
            super().to_asgi(is_main),
            predictions_app=app,
            max_body_bytes=SERVING.max_body_bytes,
            auth_token=SERVING.auth_token.get_secret_value() if SERVING.auth_token else None,
            timeout_s=SERVING.request_timeout_s,
        )


@bentoml.service(
    name="driftloop_model",
    service_class=GuardedService,
    workers=SERVING.workers,
    traffic={"timeout": SERVING.request_timeout_s},  # the other paths'
    # BentoML's access log, HTTP metrics and OpenTelemetry spans cost CPU on every request (see
    # tests/bench/serving.py). The prediction log and the driftloop_* series already record each
    # prediction request, so the access log and BentoML's metrics are off (this app serves
    # /metrics itself) and no span is sampled; tracing also skips the prediction paths.
    logging={"access": {"enabled": False, "skip_paths": list(PREDICTION_PATHS)}},
    metrics={"enabled": False},
    tracing={"sample_rate": 0.0, "excluded_urls": list(PREDICTION_PATHS)},
)
@bentoml.asgi_app(app, path="/")
class ModelService:
    """A registered model version, resolved and loaded once per worker."""

    def __init__(self) -> None:
        _route_library_logs()
        self.variant = SERVING.variant
        self.threshold = SERVING.decision_threshold
        self.scorer: predictions.RowScorer | None = None
        self.writer: predictions.PredictionLogWriter | None = None
        self.load_error: str | None = None
        self.log = get_logger("driftloop.serving").bind(variant=self.variant, model_ref=SERVING.model_ref)
        # loading talks to the registry: do it beside the event loop so /livez answers meanwhile
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()

    def _load(self) -> None:
        try:
            version = resolve_model_version(SETTINGS, SERVING.model_ref)
            scorer = load_scorer(SETTINGS, f"models:/{SETTINGS.registered_model}/{version}")
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            self.log.error("serving.model_load_failed", error=self.load_error)
            return
        metrics = predictions.serving_metrics(version, self.variant)
        self.log = self.log.bind(model_version=version)
        SERVED.drill_delay_s = drill_delay_s(version)
        if SERVED.drill_delay_s:
            self.log.warning("serving.drill_latency_injected", delay_ms=SERVED.drill_delay_s * 1000)
        self.writer = predictions.PredictionLogWriter(
            predictions.log_schema(SPEC),
            predictions.append_to_lake(SETTINGS),
            flush_rows=SERVING.log_flush_rows,
            flush_seconds=SERVING.log_flush_seconds,
            buffer_limit=SERVING.log_buffer_limit,
            on_failure=metrics.log_failures.inc,
            on_dropped=metrics.log_dropped.inc,
            context={"model_version": version, "variant": self.variant},
        ).start()
        row_scorer = predictions.RowScorer.from_scorer(scorer)
        # the booster's first predictions allocate its buffers and thread state (a cold first
        # request took ~30 ms more here); pay that before /readyz lets traffic in, unlogged
        blank = {feature: None for feature in row_scorer.features}
        try:
            for rows in ([blank], [blank] * 8, [blank]):
                row_scorer.score(rows)
        except Exception as exc:
            # serve anyway: its requests fail with the same error, are counted, and a canary
            # of it is rolled back on its error rate; only the warm-up is lost
            self.log.warning("serving.warmup_failed", error=f"{type(exc).__name__}: {exc}")
        self.scorer = row_scorer
        SERVED.service, SERVED.version, SERVED.metrics = self, version, metrics
        self.log.info("serving.model_loaded", features=len(self.scorer.features))

    def __is_ready__(self) -> bool:
        return self.scorer is not None

    def __is_alive__(self) -> bool:
        # a model that cannot load never will: let the orchestrator restart or report it
        return self.load_error is None

    @bentoml.on_shutdown
    def flush_prediction_log(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.log.info(
                "serving.prediction_log_flushed", written=self.writer.written, dropped=self.writer.dropped
            )

    def score(self, rows: list[Any]) -> list[dict[str, Any]] | JSONResponse:
        """Score validated rows, count them and queue them for the prediction log."""
        scorer, writer, metrics, version = self.scorer, self.writer, SERVED.metrics, SERVED.version
        assert scorer is not None, "score() before the model loaded (the guard answers 503 then)"
        assert writer is not None
        assert metrics is not None
        assert version is not None
        try:
            scores = scorer.score(rows)
        except Exception as exc:
            self.log.exception("serving.scoring_failed", rows=len(rows))
            return _json_error(500, f"the model failed to score the request: {type(exc).__name__}: {exc}")
        request_ids = [row.request_id or predictions.new_request_id() for row in rows]
        decisions = [score >= self.threshold for score in scores]
        metrics.observe_scores(scores)
        writer.add(
            predictions.log_rows(rows, request_ids, scores, decisions, LOGGED_FEATURES, version, self.variant)
        )
        return [
            {
                "request_id": request_id,
                "event_id": row.event_id,
                "score": score,
                "decision": decision,
                "model_version": version,
                "variant": self.variant,
            }
            for row, request_id, score, decision in zip(rows, request_ids, scores, decisions, strict=True)
        ]


# Module-level routes, not FastAPI class views: BentoML injects a class view's `self` through
# a synchronous dependency, which FastAPI runs in its thread pool on every request (a thread
# hop costing more than the ~0.1 ms of scoring). Async and hop-free, the service comes from
# SERVED instead.
@app.get("/metrics")
async def metrics() -> Response:
    """The driftloop_* series of every worker (BentoML's own HTTP metrics are off)."""
    body, content_type = predictions.metrics_exposition()
    return Response(body, media_type=content_type)


@app.post("/predict")
async def predict(row: PredictionRow) -> Any:
    assert SERVED.service is not None
    if SERVED.drill_delay_s:
        await asyncio.sleep(SERVED.drill_delay_s)
    out = SERVED.service.score([row])
    return out if isinstance(out, JSONResponse) else JSONResponse(out[0])


@app.post("/predict_batch")
async def predict_batch(batch: PredictionBatch) -> Any:
    assert SERVED.service is not None
    if SERVED.drill_delay_s:
        await asyncio.sleep(SERVED.drill_delay_s)
    out = SERVED.service.score(batch.rows)
    return out if isinstance(out, JSONResponse) else JSONResponse({"predictions": out})
