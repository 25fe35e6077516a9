"""The splitter's haproxy.cfg: weighted servers, paths kept in its folder, and `haproxy -c` accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from driftloop.deploy.base import DeployError
from driftloop.deploy.haproxy import (
    ADMIN_SOCKET,
    METRICS_PATH,
    STATUS_PATH,
    Server,
    Splitter,
    SplitterConfig,
    haproxy_binary,
    haproxy_env,
    render_config,
    server_name,
)
from driftloop.deploy.local import STATE_VERSION, LocalState, parse_metrics

STABLE = Server("stable-v3-18001", 18001, 90)
CANARY = Server("canary-v4-18002", 18002, 10)


def _config(*servers: Server, max_body_bytes: int = 1_000_000, server_maxconn: int = 0) -> SplitterConfig:
    return SplitterConfig(
        host="127.0.0.1",
        port=18600,
        servers=servers,
        max_body_bytes=max_body_bytes,
        server_maxconn=server_maxconn,
    )


def _directives(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


@pytest.fixture
def binary() -> Path:
    try:
        return haproxy_binary()
    except DeployError as error:
        pytest.skip(str(error))


def test_the_backend_has_one_weighted_server_per_variant() -> None:
    directives = _directives(render_config(_config(STABLE, CANARY, server_maxconn=4)))
    assert [d for d in directives if d.startswith("server ")] == [
        "server stable-v3-18001 127.0.0.1:18001 weight 90 maxconn 4 pool-max-conn -1 pool-purge-delay 1s",
        "server canary-v4-18002 127.0.0.1:18002 weight 10 maxconn 4 pool-max-conn -1 pool-purge-delay 1s",
    ]
    assert "balance roundrobin" in directives
    assert "http-reuse always" in directives
    # a server going away is never an error: retried elsewhere (scoring is safe to replay)
    assert "retry-on conn-failure empty-response 503" in directives
    assert "option redispatch 1" in directives
    assert "retries 3" in directives


def test_binds_loopback_only_and_limits_bodies_like_the_service() -> None:
    directives = _directives(render_config(_config(STABLE, max_body_bytes=123_456)))
    assert [d for d in directives if d.startswith("bind ")] == ["bind 127.0.0.1:18600"]
    (deny,) = [d for d in directives if d.startswith("http-request deny")]
    assert "deny_status 413" in deny
    assert "request body larger than 123456 bytes" in deny
    assert deny.endswith("if { req.hdr_val(content-length) gt 123456 }")


def test_every_path_lives_in_the_splitter_folder() -> None:
    text = render_config(_config(STABLE, CANARY))
    directives = _directives(text)
    # HAProxy runs in its folder: the admin socket is named relative to it, nothing else is a path
    assert f"stats socket unix@{ADMIN_SOCKET} mode 600 level admin" in directives
    assert "log stdout format raw local0" in directives  # stdout goes to the folder's log file
    assert not [d for d in directives if d.split()[0] in ("pidfile", "chroot", "daemon", "user", "group")]
    absolute = {token for d in directives for token in d.split() if token.startswith("/")}
    assert absolute == {STATUS_PATH, METRICS_PATH}  # URL paths HAProxy answers itself


def test_the_clients_request_id_is_kept_and_one_is_given_otherwise() -> None:
    directives = _directives(render_config(_config(STABLE)))
    assert (
        "http-request set-header X-Request-ID %[unique-id] unless { req.hdr(X-Request-ID) -m len gt 0 }"
        in directives
    )
    (log_format,) = [d for d in directives if d.startswith("log-format ")]
    assert "[capture.req.hdr(0)]" in log_format  # the id the server got
    assert "server=%s" in log_format  # which server answered


def test_without_servers_every_request_gets_a_clear_503() -> None:
    text = render_config(_config())
    assert not [d for d in _directives(text) if d.startswith("server ")]
    (no_server,) = [d for d in _directives(text) if d.startswith("http-request return status 503")]
    assert "deploy the stable variant first" in no_server
    assert no_server.endswith("if { nbsrv(variants) eq 0 }")


def test_weights_are_percentages_and_zero_is_allowed() -> None:
    assert Server("canary-v4-18002", 18002, 0).weight == 0  # in the backend, sent nothing
    with pytest.raises(ValueError, match=r"weight must be 0\.\.100"):
        Server("canary-v4-18002", 18002, 101)
    with pytest.raises(ValueError, match="letters, digits"):
        Server("canary 4", 18002, 10)


def test_server_names_say_variant_version_and_port() -> None:
    assert server_name("stable", "12", 18001) == "stable-v12-18001"
    assert server_name("canary", "a/b c", 18002) == "canary-va_b_c-18002"


@pytest.mark.parametrize(
    ("canary_weight", "expected"),
    [
        (0, [("stable-v3-18001", 100), ("canary-v4-18002", 0)]),  # a canary at 0 stays in the backend
        (10, [("stable-v3-18001", 90), ("canary-v4-18002", 10)]),
        (100, [("stable-v3-18001", 0), ("canary-v4-18002", 100)]),
    ],
)
def test_state_turns_weights_into_servers(canary_weight: int, expected: list[tuple[str, int]]) -> None:
    state = LocalState(
        canary_weight=canary_weight,
        variants={
            "stable": {"port": 18001, "model_version": "3", "url": "http://127.0.0.1:18001"},
            "canary": {"port": 18002, "model_version": "4", "url": "http://127.0.0.1:18002"},
        },
    )
    assert [(s.name, s.weight) for s in state.servers()] == expected


def test_without_a_canary_stable_gets_everything() -> None:
    state = LocalState(variants={"stable": {"port": 18001, "model_version": "3"}})
    assert state.weight("stable") == 100
    assert state.weight("canary") == 0


def test_a_state_file_of_another_version_is_refused_with_what_to_do() -> None:
    with pytest.raises(DeployError, match=r"has version 1, expected 2: .*stop_all\(\)"):
        LocalState.from_json({"state_version": 1, "generation": 3, "variants": {}})
    assert LocalState.from_json(LocalState(canary_weight=5).to_json()).canary_weight == 5
    assert STATE_VERSION == 2


@pytest.mark.parametrize(
    "config",
    [
        _config(STABLE, CANARY),
        _config(STABLE, server_maxconn=4),
        _config(Server("canary-v4-18002", 18002, 0)),
        _config(),
    ],
    ids=["split", "stable-only-maxconn", "weight-0", "empty"],
)
def test_haproxy_accepts_the_rendered_config_without_a_warning(
    tmp_path: Path, binary: Path, config: SplitterConfig
) -> None:
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(render_config(config))
    # -dW: zero-warning mode, a warning fails the check
    result = subprocess.run(
        [str(binary), "-c", "-dW", "-f", str(conf)],
        cwd=tmp_path,
        env=haproxy_env(binary),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    Splitter(tmp_path / "splitter").check(render_config(config))  # raises DeployError on rejection


def test_the_check_rejects_a_broken_config_with_haproxys_message(tmp_path: Path, binary: Path) -> None:
    broken = render_config(_config(STABLE)).replace("balance roundrobin", "balance sideways")
    with pytest.raises(DeployError, match=r"(?s)configuration check failed.*balance only supports"):
        Splitter(tmp_path / "splitter").check(broken)


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
