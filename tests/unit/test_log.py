"""driftloop's loggers inside a host that owns structlog (Airflow's task runner) and on their own."""

from __future__ import annotations

import json
import sys

import structlog

from driftloop import log


def test_inside_a_host_the_host_renderer_stays_and_secrets_are_still_redacted(capsys, monkeypatch):
    monkeypatch.setattr(log, "_configured", False)
    structlog.reset_defaults()
    structlog.configure(
        processors=[structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )
    try:
        log.get_logger("driftloop.test").info("rollout.transition", api_token="s3cr3t", step=1)
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            structlog.get_logger("airflow.task").error("Task failed with exception", exc_info=True)
    finally:
        structlog.reset_defaults()
        log.configure_logging()  # back to driftloop's own set-up for the tests that follow
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"event": "rollout.transition", "api_token": "***", "step": 1}
    # the host's own exception rendering still works: failed tasks keep their tracebacks
    assert "ZeroDivisionError: boom" in lines[1]["exception"]
