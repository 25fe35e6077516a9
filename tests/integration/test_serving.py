"""Real BentoML model servers on 127.0.0.1: predictions, metrics, the prediction log, hardening.

Servers are started with ``start_server`` (as the deploy target does) against a throwaway MLflow
store holding real LightGBM versions, and stopped by their fixtures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftloop.config import ServingSettings, Settings
from driftloop.dataset import load_dataset_spec
from driftloop.deploy import base
from driftloop.lake import names, tables
from driftloop.processes import free_port
from driftloop.servers import ServerHandle, start_server, stop_server
from driftloop.traffic import PredictionClient, replay
from tests.models import ModelVersions, model_versions, request_rows  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

SPEC = load_dataset_spec()
ROWS = request_rows(SPEC, 40)
TOKEN = "test-token-0123456789"
RESPONSE_KEYS = {"request_id", "event_id", "score", "decision", "model_version", "variant"}


def _settings(versions: ModelVersions, root: Path, **serving: object) -> Settings:
    defaults: dict[str, object] = {"log_flush_seconds": 0.3, "max_body_bytes": 20_000, "max_batch_rows": 20}
    return Settings(
        data_dir=root,
        mlflow_tracking_uri=versions.settings.tracking_uri,
        serving=ServingSettings(**(defaults | serving)),
    )


@pytest.fixture(scope="module")
def served(model_versions: ModelVersions, tmp_path_factory) -> Iterator[tuple[Settings, ServerHandle]]:  # noqa: F811
    """The champion (the good version) as the canary, with default hardening limits."""
    settings = _settings(model_versions, tmp_path_factory.mktemp("served"))
    handle = start_server(settings, variant="canary", model_ref="champion", port=free_port())
    yield settings, handle
    stop_server(handle)


def _metrics(handle: ServerHandle) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{handle.url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("driftloop_")
    }


def _value(metrics: dict, name: str, **labels: str) -> float:
    wanted = tuple(sorted(labels.items()))
    return metrics.get((name, wanted), 0.0)


def _log_rows(settings: Settings, event_prefix: str) -> list[dict]:
    table = tables.open_table(settings, names.PREDICTION_LOG)
    if table is None:
        return []
    found = tables.query(table, f"SELECT * FROM t WHERE starts_with(event_id, '{event_prefix}')")
    return found.to_pylist()


def _wait_for(predicate, timeout: float = 20.0, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# --- predictions --------------------------------------------------------------------------------


def test_single_prediction_reports_the_resolved_version_and_variant(served, model_versions):  # noqa: F811
    _, handle = served
    assert handle.model_version == model_versions.good
    assert json.loads(json.dumps(handle.as_dict())) == handle.as_dict()  # persisted by the deploy target

    row = ROWS[0] | {"request_id": "req-given"}
    response = httpx.post(f"{handle.url}/predict", json=row)

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == RESPONSE_KEYS
    assert body["request_id"] == "req-given"
    assert body["event_id"] == row["event_id"]
    assert body["model_version"] == model_versions.good
    assert body["variant"] == "canary"
    assert 0.0 <= body["score"] <= 1.0
    assert body["decision"] == (body["score"] >= 0.5)
    assert response.headers["x-model-version"] == model_versions.good


def test_batch_prediction_answers_every_row_in_order(served, model_versions):  # noqa: F811
    _, handle = served
    with PredictionClient(handle.url) as client:
        predictions = client.predict_batch(ROWS[:15])
        single = client.predict(ROWS[3])

    assert [p["event_id"] for p in predictions] == [r["event_id"] for r in ROWS[:15]]
    assert all(set(p) == RESPONSE_KEYS and p["model_version"] == model_versions.good for p in predictions)
    assert len({p["request_id"] for p in predictions}) == 15  # generated, one per row
    assert predictions[3]["score"] == pytest.approx(single["score"])


def test_metrics_count_requests_predictions_latency_and_scores(served, model_versions):  # noqa: F811
    _, handle = served
    labels = {"model_version": model_versions.good, "variant": "canary"}
    before = _metrics(handle)

    report = replay(handle.url, ROWS, concurrency=4, requests=30)
    httpx.post(f"{handle.url}/predict_batch", json={"rows": ROWS[:10]})
    httpx.post(f"{handle.url}/predict", json={"event_id": "x"})  # 422

    after = _metrics(handle)
    assert report.statuses == {200: 30}

    def delta(name: str, **extra: str) -> float:
        return _value(after, name, **labels, **extra) - _value(before, name, **labels, **extra)

    assert delta(base.REQUESTS_TOTAL, endpoint="predict", status="200") == 30
    assert delta(base.REQUESTS_TOTAL, endpoint="predict_batch", status="200") == 1
    assert delta(base.REQUESTS_TOTAL, endpoint="predict", status="422") == 1
    assert delta(base.PREDICTIONS_TOTAL) == 40
    assert delta(f"{base.LATENCY_SECONDS}_count") == 32
    assert delta(f"{base.SCORE}_count") == 40
    for bound in base.LATENCY_BUCKETS:
        assert (
            f"{base.LATENCY_SECONDS}_bucket",
            tuple(sorted((labels | {"le": str(bound)}).items())),
        ) in after
    for bound in base.SCORE_BUCKETS:
        assert (f"{base.SCORE}_bucket", tuple(sorted((labels | {"le": str(bound)}).items()))) in after


def test_every_prediction_lands_in_the_prediction_log(served, model_versions):  # noqa: F811
    settings, handle = served
    rows = [r | {"event_id": f"logcheck-{i}"} for i, r in enumerate(ROWS[:20])]
    for row in rows[:8]:
        assert httpx.post(f"{handle.url}/predict", json=row).status_code == 200
    answers = httpx.post(f"{handle.url}/predict_batch", json={"rows": rows[8:]}).json()["predictions"]

    logged = _wait_for(lambda: len(found := _log_rows(settings, "logcheck-")) >= 20 and found)

    assert len(logged) == 20
    by_event = {r["event_id"]: r for r in logged}
    assert set(by_event) == {r["event_id"] for r in rows}
    sample = by_event[answers[0]["event_id"]]
    assert sample["request_id"] == answers[0]["request_id"]
    assert sample["score"] == pytest.approx(answers[0]["score"])
    assert sample["decision"] == answers[0]["decision"]
    assert (sample["model_version"], sample["variant"]) == (model_versions.good, "canary")
    assert sample["amount"] == pytest.approx(rows[8]["amount"])
    assert sample["channel"] == rows[8]["channel"]
    assert sample["predicted_at"].tzinfo is not None


# --- hardening ----------------------------------------------------------------------------------

_VALID = json.dumps(ROWS[0]).encode()


def _without(field: str) -> bytes:
    return json.dumps({k: v for k, v in ROWS[0].items() if k != field}).encode()


def _with(**values: object) -> bytes:
    return json.dumps(ROWS[0] | values).encode()


BAD_REQUESTS = {
    "pickle": ("/predict", "application/vnd.bentoml+pickle", b"\x80\x04\x95\x00", 415),
    "python-pickle": ("/predict", "application/python-pickle", b"\x80\x04\x95\x00", 415),
    "form": ("/predict", "application/x-www-form-urlencoded", b"a=1", 415),
    "text": ("/predict", "text/plain", _VALID, 415),
    "no-content-type": ("/predict", None, _VALID, 415),
    "too-large": ("/predict", "application/json", b" " * 30_000 + _VALID, 413),
    "malformed-json": ("/predict", "application/json", b'{"event_id": ', 422),
    "missing-feature": ("/predict", "application/json", _without("amount"), 422),
    "missing-event-id": ("/predict", "application/json", _without("event_id"), 422),
    "nan": ("/predict", "application/json", _VALID.replace(b'"amount": ', b'"amount": NaN, "x": '), 422),
    "infinity": (
        "/predict",
        "application/json",
        _VALID.replace(b'"amount": ', b'"amount": 1e999, "x": '),
        422,
    ),
    "string-for-number": ("/predict", "application/json", _with(amount="12.5"), 422),
    "bool-for-number": ("/predict", "application/json", _with(amount=True), 422),
    "number-for-category": ("/predict", "application/json", _with(channel=3), 422),
    "not-an-object": ("/predict", "application/json", b"[1, 2, 3]", 422),
    "empty-batch": ("/predict_batch", "application/json", b'{"rows": []}', 422),
    "batch-too-large": (
        "/predict_batch",
        "application/json",
        json.dumps({"rows": [ROWS[0]] * 21}).encode(),
        422,
    ),
    "batch-with-bad-row": (
        "/predict_batch",
        "application/json",
        b'{"rows": [' + _without("channel") + b"]}",
        422,
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_their_status_and_the_server_keeps_serving(served, case):
    _, handle = served
    path, content_type, body, expected = BAD_REQUESTS[case]
    headers = {"content-type": content_type} if content_type else {}
    workers = psutil.Process(handle.pid).children(recursive=True)

    response = httpx.post(f"{handle.url}{path}", content=body, headers=headers)

    assert response.status_code == expected, response.text
    assert response.json()["error"]  # a message the client can act on
    if expected == 422:
        assert response.json()["error"].startswith("invalid prediction request")
    assert httpx.post(f"{handle.url}/predict", json=ROWS[1]).status_code == 200
    assert all(w.is_running() for w in workers)


def test_validation_messages_name_the_offending_fields(served):
    _, handle = served
    response = httpx.post(
        f"{handle.url}/predict",
        content=_with(amount="x", channel=None) + b"",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "amount" in response.json()["error"]


@pytest.fixture
def auth_server(model_versions: ModelVersions, tmp_path: Path) -> Iterator[tuple[Settings, ServerHandle]]:  # noqa: F811
    # long flush interval: rows only reach the lake at shutdown, which the test checks
    settings = _settings(
        model_versions, tmp_path, auth_token=TOKEN, log_flush_seconds=300, log_flush_rows=10_000
    )
    handle = start_server(settings, variant="stable", model_ref=model_versions.good, port=free_port())
    yield settings, handle
    stop_server(handle)


def test_bearer_token_guards_prediction_endpoints_only_and_the_log_flushes_on_shutdown(auth_server):
    settings, handle = auth_server
    row = ROWS[0] | {"event_id": "authed-1"}

    assert httpx.post(f"{handle.url}/predict", json=row).status_code == 401
    assert (
        httpx.post(f"{handle.url}/predict", json=row, headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    assert httpx.post(f"{handle.url}/predict_batch", json={"rows": [row]}).status_code == 401
    assert httpx.get(f"{handle.url}/readyz").status_code == 200
    assert httpx.get(f"{handle.url}/metrics").status_code == 200
    with PredictionClient(handle.url, token=TOKEN) as client:
        assert client.predict(row)["variant"] == "stable"
    assert TOKEN not in Path(handle.log_path).read_text()

    assert _log_rows(settings, "authed-") == []  # still buffered
    stop_server(handle)
    assert [r["event_id"] for r in _log_rows(settings, "authed-")] == ["authed-1"]


@pytest.fixture
def unwritable_lake_server(model_versions: ModelVersions, tmp_path: Path) -> Iterator[ServerHandle]:  # noqa: F811
    blocker = tmp_path / "a-file"
    blocker.write_text("the lake cannot live under a file")
    settings = _settings(model_versions, tmp_path / "data", log_buffer_limit=10, log_flush_seconds=0.2)
    settings = settings.model_copy(update={"lake_root": str(blocker / "lake")})
    handle = start_server(settings, variant="canary", model_ref=model_versions.good, port=free_port())
    yield handle
    stop_server(handle)


def test_a_failing_lake_never_fails_requests_and_is_counted(unwritable_lake_server, model_versions):  # noqa: F811
    handle = unwritable_lake_server
    labels = {"model_version": model_versions.good, "variant": "canary"}

    report = replay(handle.url, ROWS, concurrency=4, requests=40)

    assert report.statuses == {200: 40}
    failures = _wait_for(lambda: _value(_metrics(handle), base.LOG_FAILURES_TOTAL, **labels) >= 2)
    assert failures, "failed writes are retried and each failure is counted"
    assert _value(_metrics(handle), base.LOG_DROPPED_TOTAL, **labels) >= 30  # beyond the 10-row buffer
    assert "prediction_log.write_failed" in Path(handle.log_path).read_text()
    assert httpx.post(f"{handle.url}/predict", json=ROWS[0]).status_code == 200


def test_a_model_that_errors_answers_500_and_keeps_serving(model_versions, tmp_path):  # noqa: F811
    settings = _settings(model_versions, tmp_path)
    handle = start_server(settings, variant="canary", model_ref="challenger", port=free_port())
    try:
        assert handle.model_version == model_versions.broken
        response = httpx.post(f"{handle.url}/predict", json=ROWS[0])
        assert response.status_code == 500
        assert "feature_requests_never_carry" in response.json()["error"]
        assert httpx.get(f"{handle.url}/readyz").status_code == 200
        labels = {"model_version": model_versions.broken, "variant": "canary"}
        assert _value(_metrics(handle), base.REQUESTS_TOTAL, endpoint="predict", status="500", **labels) == 1
    finally:
        stop_server(handle)
    assert not handle.is_running()


def test_a_request_past_the_timeout_gets_a_504_that_is_counted_and_the_server_keeps_serving(
    model_versions,  # noqa: F811
    tmp_path,
):
    from tests.models import register_model

    slow = register_model(model_versions.settings, "slow", seed=3)  # answers 80 ms late
    settings = _settings(model_versions, tmp_path, request_timeout_s=0.02)
    handle = start_server(settings, variant="canary", model_ref=slow, port=free_port())
    try:
        response = httpx.post(f"{handle.url}/predict", json=ROWS[0])
        assert response.status_code == 504
        assert response.json() == {"error": "the request took longer than 0.02 s"}
        assert response.headers["x-model-version"] == slow
        assert httpx.get(f"{handle.url}/readyz").status_code == 200
        labels = {"model_version": slow, "variant": "canary"}
        assert _value(_metrics(handle), base.REQUESTS_TOTAL, endpoint="predict", status="504", **labels) == 1
    finally:
        stop_server(handle)


def test_an_unknown_model_ref_fails_start_with_a_clear_error(model_versions, tmp_path):  # noqa: F811
    from driftloop.deploy.base import DeployError

    settings = _settings(model_versions, tmp_path)
    with pytest.raises(DeployError, match="no alias 'nonexistent'"):
        start_server(settings, variant="canary", model_ref="nonexistent", port=free_port())
    with pytest.raises(DeployError, match=r"could not load its model|exited"):
        start_server(settings, variant="canary", model_ref="999", port=free_port(), ready_timeout=90)


def test_a_built_bento_serves_like_the_source_service(model_versions, tmp_path):  # noqa: F811
    from driftloop.servers import bentoml_home, build_bento

    settings = _settings(model_versions, tmp_path)
    tag = build_bento(settings)

    assert tag.startswith("driftloop_model:")
    assert (bentoml_home(settings) / "bentos" / "driftloop_model").is_dir()
    handle = start_server(
        settings, variant="stable", model_ref=model_versions.good, port=free_port(), bento=tag
    )
    try:
        assert handle.bento == tag
        body = httpx.post(f"{handle.url}/predict", json=ROWS[0]).json()
        assert (body["model_version"], body["variant"]) == (model_versions.good, "stable")
    finally:
        stop_server(handle)
