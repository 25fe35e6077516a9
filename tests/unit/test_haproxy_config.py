"""The splitter's nginx.conf: weighted upstreams, paths kept in the data folder, and `nginx -t` accepts it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from driftloop.deploy.base import DeployError
from driftloop.deploy.local import LocalState, parse_metrics
from driftloop.deploy.nginx import (
    Backend,
    FrontConfig,
    Splitter,
    SplitterConfig,
    SplitterPaths,
    nginx_binary,
    render_config,
    render_front_config,
)

STABLE = Backend("stable 3", 18001, 90)
CANARY = Backend("canary 4", 18002, 10)


def _config(*backends: Backend, max_body_bytes: int = 1_000_000) -> SplitterConfig:
    return SplitterConfig(
        host="127.0.0.1", port=18600, backends=backends, max_body_bytes=max_body_bytes, generation=7
    )


def _directives(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_upstream_has_one_weighted_server_per_backend(tmp_path: Path) -> None:
    text = render_config(_config(STABLE, CANARY), SplitterPaths(tmp_path))
    servers = re.findall(r"server (127\.0\.0\.1:\d+) weight=(\d+)", text)
    assert servers == [("127.0.0.1:18001", "90"), ("127.0.0.1:18002", "10")]
    assert "keepalive 32;" in _directives(text)
    assert "proxy_next_upstream error timeout http_502 http_503 non_idempotent;" in _directives(text)
    assert "proxy_next_upstream_tries 3;" in _directives(text)
    assert 'proxy_set_header Connection "";' in _directives(text)  # keep-alive to the servers


def test_binds_loopback_only_and_limits_bodies_like_the_service(tmp_path: Path) -> None:
    text = render_config(_config(STABLE, max_body_bytes=123_456), SplitterPaths(tmp_path))
    listens = [d for d in _directives(text) if d.startswith("listen ")]
    assert listens == ["listen 127.0.0.1:18600 backlog=1024;"]
    assert "client_max_body_size 123456;" in _directives(text)
    assert "request body larger than 123456 bytes" in text


def test_every_path_lives_in_the_splitter_folder(tmp_path: Path) -> None:
    paths = SplitterPaths(tmp_path / "nginx")
    text = render_config(_config(STABLE), paths)
    path_directives = (
        "pid",
        "lock_file",
        "error_log",
        "access_log",
        "client_body_temp_path",
        "proxy_temp_path",
        "fastcgi_temp_path",
        "uwsgi_temp_path",
        "scgi_temp_path",
    )
    for name in path_directives:
        (value,) = [d.split()[1] for d in _directives(text) if d.split()[0] == name]
        assert value.startswith(str(paths.root) + "/"), (name, value)
    assert "/var/" not in text
    assert "/etc/nginx" not in text


def test_without_backends_every_request_gets_a_clear_503(tmp_path: Path) -> None:
    text = render_config(_config(), SplitterPaths(tmp_path))
    assert not any(d.startswith(("upstream ", "proxy_pass ")) for d in _directives(text))
    assert "return 503" in text
    assert "deploy the stable variant first" in text


def test_the_generation_is_served_for_reload_checks(tmp_path: Path) -> None:
    text = render_config(_config(STABLE, CANARY), SplitterPaths(tmp_path))
    assert '"generation": 7' in text
    assert "generation 7" in text.splitlines()[0]


def test_a_backend_without_traffic_cannot_be_rendered() -> None:
    with pytest.raises(ValueError, match=r"weight must be 1\.\.100"):
        Backend("canary 4", 18002, 0)


@pytest.mark.parametrize(
    ("canary_weight", "expected"),
    [
        (0, [("stable 3", 100)]),  # a canary at 0 is left out of the upstream
        (10, [("stable 3", 90), ("canary 4", 10)]),
        (100, [("canary 4", 100)]),
    ],
)
def test_state_turns_weights_into_backends(canary_weight: int, expected: list[tuple[str, int]]) -> None:
    state = LocalState(
        canary_weight=canary_weight,
        variants={
            "stable": {"port": 18001, "model_version": "3", "url": "http://127.0.0.1:18001"},
            "canary": {"port": 18002, "model_version": "4", "url": "http://127.0.0.1:18002"},
        },
    )
    assert [(b.name, b.weight) for b in state.backends()] == expected


def test_without_a_canary_stable_gets_everything() -> None:
    state = LocalState(variants={"stable": {"port": 18001, "model_version": "3"}})
    assert state.weight("stable") == 100
    assert state.weight("canary") == 0


@pytest.mark.parametrize("backends", [(STABLE, CANARY), (STABLE,), ()], ids=["split", "stable-only", "empty"])
def test_nginx_accepts_the_rendered_config(tmp_path: Path, backends: tuple[Backend, ...]) -> None:
    try:
        nginx_binary()
    except DeployError as error:
        pytest.skip(str(error))
    splitter = Splitter(tmp_path / "nginx")
    splitter.test(render_config(_config(*backends), splitter.paths))  # raises DeployError on rejection


def _front(tmp_path: Path) -> str:
    config = FrontConfig(host="127.0.0.1", port=18600, weighted_port=18700, max_body_bytes=50_000)
    return render_front_config(config, SplitterPaths(tmp_path))


def test_the_front_passes_everything_to_the_weighted_nginx_and_retries_closed_connections(
    tmp_path: Path,
) -> None:
    directives = _directives(_front(tmp_path))
    assert [d for d in directives if d.startswith("server 1")] == ["server 127.0.0.1:18700 max_fails=0;"]
    assert "listen 127.0.0.1:18600 backlog=1024;" in directives
    # connection errors only: a timed-out request may still be scored, so it is never replayed
    assert "proxy_next_upstream error non_idempotent;" in directives
    assert "client_max_body_size 50000;" in directives
    assert not [d for d in directives if d.startswith("return 200")]  # status comes from behind


def test_nginx_accepts_the_front_config(tmp_path: Path) -> None:
    try:
        nginx_binary()
    except DeployError as error:
        pytest.skip(str(error))
    splitter = Splitter(tmp_path / "front")
    splitter.test(_front(tmp_path / "front"))


def test_nginx_t_rejects_a_broken_config_with_its_message(tmp_path: Path) -> None:
    try:
        nginx_binary()
    except DeployError as error:
        pytest.skip(str(error))
    splitter = Splitter(tmp_path / "nginx")
    broken = render_config(_config(STABLE), splitter.paths).replace("keepalive 32;", "keepalive;")
    with pytest.raises(DeployError, match=r"configuration test failed.*keepalive"):
        splitter.test(broken)


EXPOSITION = """\
# HELP driftloop_requests_total Requests.
# TYPE driftloop_requests_total counter
driftloop_requests_total{model_version="4",variant="canary",endpoint="/predict",status="200"} 90.0
driftloop_requests_total{model_version="4",variant="canary",endpoint="/predict",status="422"} 4.0
driftloop_requests_total{model_version="4",variant="canary",endpoint="/predict",status="500"} 6.0
driftloop_requests_total{model_version="3",variant="stable",endpoint="/predict",status="200"} 1000.0
# HELP driftloop_predictions_total Rows scored.
# TYPE driftloop_predictions_total counter
driftloop_predictions_total{model_version="4",variant="canary"} 120.0
# HELP driftloop_request_latency_seconds Latency.
# TYPE driftloop_request_latency_seconds histogram
driftloop_request_latency_seconds_bucket{model_version="4",variant="canary",le="0.01"} 50.0
driftloop_request_latency_seconds_bucket{model_version="4",variant="canary",le="0.1"} 95.0
driftloop_request_latency_seconds_bucket{model_version="4",variant="canary",le="+Inf"} 100.0
driftloop_request_latency_seconds_count{model_version="4",variant="canary"} 100.0
driftloop_request_latency_seconds_sum{model_version="4",variant="canary"} 2.5
# HELP driftloop_score Scores.
# TYPE driftloop_score histogram
driftloop_score_bucket{model_version="4",variant="canary",le="0.5"} 100.0
driftloop_score_bucket{model_version="4",variant="canary",le="+Inf"} 120.0
"""


def test_metrics_sum_the_variants_series_and_count_5xx_as_errors() -> None:
    snapshot = parse_metrics(EXPOSITION, "canary", "4")
    assert (snapshot.requests, snapshot.errors, snapshot.predictions) == (100.0, 6.0, 120.0)
    assert snapshot.latency_buckets == {0.01: 50.0, 0.1: 95.0, float("inf"): 100.0}
    assert snapshot.score_buckets == {0.5: 100.0, float("inf"): 120.0}
    assert parse_metrics(EXPOSITION, "stable", "3").requests == 1000.0
