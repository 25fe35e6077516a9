"""Serving benchmark: p50/p99 latency and requests/s at concurrency 1, 8 and 32, all in one run.

Targets, same model and same load generator: the model in-process; a bare async FastAPI
endpoint under uvicorn (same validation and scorer, no logging or metrics); the BentoML service
directly; and, when a splitter hook is given, the BentoML service behind the splitter at 90/10.
Issue target: BentoML >= 0.6x bare FastAPI requests/s at concurrency 8.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import psutil

from driftloop.config import ServingSettings, Settings
from driftloop.dataset import load_dataset_spec
from driftloop.processes import LOOPBACK, free_port, log_tail, stop_process_tree
from driftloop.servers import ServerHandle, child_env, start_server, stop_server
from driftloop.traffic import replay

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[2]
CONCURRENCY = (1, 8, 32)
WARMUP_S = 1.5
DURATION_S = 8.0
IN_PROCESS_CALLS = 3000

Splitter = Callable[[Settings, ServerHandle], AbstractContextManager[str]]
"""Hook for the lead: given the settings and the running stable server, run the splitter at a
90/10 split (e.g. a canary on the same version) and yield its URL; torn down on exit."""


# --- the bare FastAPI baseline (imported by uvicorn in a child process) --------------------------


def bare_app() -> Any:
    """uvicorn --factory target: the same row model and scorer as the service, nothing else."""
    from fastapi import FastAPI

    from driftloop import predictions
    from driftloop.config import get_settings
    from driftloop.retraining import load_scorer

    settings = get_settings()
    spec = load_dataset_spec(settings.dataset_file)
    row_model = predictions.row_model(spec)
    version = settings.serving.model_ref
    scorer = predictions.RowScorer.from_scorer(
        load_scorer(settings, f"models:/{settings.registered_model}/{version}")
    )
    threshold = settings.serving.decision_threshold
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    async def predict(row: row_model) -> dict:  # type: ignore[valid-type]
        score = scorer.score([row])[0]
        return {
            "request_id": row.request_id or predictions.new_request_id(),
            "event_id": row.event_id,
            "score": score,
            "decision": score >= threshold,
            "model_version": version,
            "variant": "bare",
        }

    predict.__annotations__["row"] = row_model  # this module's annotations are strings
    app.post("/predict")(predict)
    return app


@contextlib.contextmanager
def bare_fastapi(settings: Settings, version: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    log_path = settings.data_dir / "bare-fastapi.log"
    env = child_env(settings, DRIFTLOOP_SERVING__MODEL_REF=version, PYTHONPATH=str(REPO))
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "tests.bench.serving:bare_app",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        str(settings.serving.workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bare FastAPI did not start:\n{log_tail(log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{url}/", timeout=1)
                break
            time.sleep(0.2)
        yield url, process.pid
    finally:
        stop_process_tree(process)


# --- measurement ---------------------------------------------------------------------------------


def server_cpu_s(pid: int | None) -> float:
    """CPU seconds used so far by a server's whole process tree (all workers and threads)."""
    if pid is None:
        return math.nan
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return math.nan
    total = 0.0
    for process in tree:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def measure_http(
    target: str, url: str, rows: list[dict], echo: Callable[[str], None], pid: int | None = None
) -> list[dict]:
    """Each concurrency level after a warm-up. Server CPU per request is reported too: on a
    shared machine it is steadier than req/s, which the other tenants' load moves a lot."""
    out = []
    for concurrency in CONCURRENCY:
        replay(url, rows, concurrency=concurrency, duration_s=WARMUP_S)
        cpu_before = server_cpu_s(pid)
        report = replay(url, rows, concurrency=concurrency, duration_s=DURATION_S)
        cpu_ms = (server_cpu_s(pid) - cpu_before) * 1000 / max(report.requests, 1)
        row = {"target": target, **report.summary(), "server_cpu_ms_per_request": round(cpu_ms, 3)}
        row["errors"] = report.failed
        if report.failed > report.requests // 100:
            raise RuntimeError(
                f"{target} failed {report.failed} of {report.requests} requests: {report.statuses}"
            )
        echo(
            f"[serving] {target:<16} c={concurrency:<3} {row['rps']:>8.0f} req/s  "
            f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
            f"server cpu {cpu_ms:.2f} ms/req  errors {report.failed}"
        )
        out.append(row)
    return out


def measure_in_process(
    settings: Settings, version: str, rows: list[dict], echo: Callable[[str], None]
) -> dict:
    """Validate + score one row at a time in this process (no HTTP): the floor of any server."""
    from driftloop import predictions
    from driftloop.retraining import load_scorer

    spec = load_dataset_spec()
    row_model = predictions.row_model(spec)
    scorer = predictions.RowScorer.from_scorer(
        load_scorer(settings, f"models:/{settings.registered_model}/{version}")
    )
    timings = []
    for i in range(IN_PROCESS_CALLS):
        started = time.perf_counter()
        scorer.score([row_model.model_validate(rows[i % len(rows)])])
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    total_s = sum(timings) / 1000
    row = {
        "target": "in-process",
        "concurrency": 1,
        "requests": IN_PROCESS_CALLS,
        "rps": round(IN_PROCESS_CALLS / total_s, 1),
        "p50_ms": round(timings[len(timings) // 2], 3),
        "p99_ms": round(timings[int(len(timings) * 0.99) - 1], 3),
        "errors": 0,
    }
    echo(
        f"[serving] in-process       c=1   {row['rps']:>8.0f} calls/s "
        f"p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms"
    )
    return row


def run(
    echo: Callable[[str], None] = print,
    splitter: Splitter | None = None,
    workers: int | None = None,
) -> list[dict]:
    """Register a small real model, then measure every target; rows also go to results/serving.json."""
    from tests.models import register_model, request_rows

    spec = load_dataset_spec()
    rows = request_rows(spec, 500)
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-serving-") as scratch:
        serving = ServingSettings(
            workers=workers or int(os.environ.get("DRIFTLOOP_BENCH_SERVING_WORKERS", "1"))
        )
        settings = Settings(data_dir=Path(scratch) / "data", serving=serving)
        echo("[serving] registering a small LightGBM model (untimed)")
        version = register_model(settings, "good", alias="champion")
        results = [measure_in_process(settings, version, rows, echo)]
        with bare_fastapi(settings, version) as (url, pid):
            results += measure_http("fastapi-bare", url, rows, echo, pid)
        handle = start_server(settings, variant="stable", model_ref=version, port=free_port())
        try:
            results += measure_http("bentoml", handle.url, rows, echo, handle.pid)
            if splitter is not None:
                with splitter(settings, handle) as url:
                    results += measure_http("bentoml-splitter", url, rows, echo)
        finally:
            stop_server(handle)
    for row in results:
        row["workers"] = serving.workers
    ratio = bentoml_ratio(results)
    echo(f"[serving] BentoML / bare FastAPI req/s at concurrency 8: {ratio:.2f}x (target >= 0.6x)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2))
    return results


def bentoml_ratio(rows: list[dict], concurrency: int = 8) -> float:
    by = {(r["target"], r["concurrency"]): r["rps"] for r in rows}
    bare = by.get(("fastapi-bare", concurrency))
    return by.get(("bentoml", concurrency), 0.0) / bare if bare else float("nan")


def summary(rows: list[dict]) -> str:
    lines = [
        "| target | concurrency | req/s | p50 ms | p99 ms | server CPU ms/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['concurrency']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r.get('server_cpu_ms_per_request', math.nan):.2f} | {r.get('errors', 0)} |"
        )
    lines.append(
        f"\nBentoML / bare FastAPI req/s at concurrency 8: **{bentoml_ratio(rows):.2f}x** (target >= 0.6x)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(run()))
