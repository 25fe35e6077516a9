"""Serving benchmark: p50/p99 latency and requests/s at concurrency 1, 8 and 32, all in one run.

Targets, same model and same load generator: the model in-process; a bare async FastAPI
endpoint under uvicorn (same validation and scorer, no logging or metrics); the same endpoint
doing the service's work per request (scoring, prediction log to the lake, driftloop metrics);
the BentoML service directly; and the BentoML service behind the splitter at 90/10 (by default
the real local deploy target: one HAProxy -> stable or canary server). Every
HTTP target is up for the whole run and the rounds interleave them, so a change in the
machine's load moves all of them; each figure is the median over the rounds. The load generator
runs in its own process. Issue targets: BentoML >= 0.6x bare FastAPI requests/s at concurrency 8
(held against the minimal endpoint: the issue counts logging and metrics among what BentoML's
side must tune; the same-work ratio is reported beside it); the splitter adds at most 1.2x to p99
over the BentoML service directly (reported too: each variant's answers through it on their own).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import httpx
import psutil

from driftloop.config import Settings
from driftloop.dataset import load_dataset_spec
from driftloop.processes import LOOPBACK, free_port, log_tail, stop_process_tree
from driftloop.servers import ServerHandle, child_env, start_server, stop_server
from driftloop.traffic import TRANSPORT_ERROR, LoadReport

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[2]
CONCURRENCY = (1, 8, 32)
WARMUP_S = 1.5
DURATION_S = 8.0
IN_PROCESS_CALLS = 3000
ROUNDS = 3
CANARY_WEIGHT = 10  # the 90/10 split
BENCH_TARGET_RATIO = 0.6  # BentoML / minimal bare FastAPI req/s at concurrency 8, at least
SAME_WORK_ENV = "DRIFTLOOP_BENCH_SAME_WORK"  # set: the bare endpoint logs and counts like the service
SPLITTER_P99_RATIO = 1.2  # splitter / direct p99, at most
MEDIAN_FIELDS = (
    "rps",
    "p50_ms",
    "p99_ms",
    "server_cpu_ms_per_request",
    "client_cpu_ms_per_request",
    "load_1m",
)

# a splitter gives its URL, optionally with the pids of its processes and the URLs of the
# servers behind it in the proportion of its weights (e.g. stable nine times, canary once)
Splitter = Callable[
    [Settings, ServerHandle],
    AbstractContextManager["str | tuple[str, list[int]] | tuple[str, list[int], list[str]]"],
]
"""Given the settings and the running stable server, run the splitter at a 90/10 split and yield
its URL, or the URL and the pids of every process on that path (for server CPU per request);
torn down on exit."""


# --- the bare FastAPI baseline (imported by uvicorn in a child process) --------------------------


def bare_app() -> Any:
    """uvicorn --factory target: the same row model and scorer as the service, nothing else.

    With $DRIFTLOOP_BENCH_SAME_WORK set it also does what the service does per prediction:
    times and counts the request, observes the score and queues the row for the prediction log
    (the same ServingMetrics and PredictionLogWriter, writing to the lake off the request path).
    The service's request guard (auth, content type, body size) and BentoML are what it lacks."""
    import time

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
    same_work = bool(os.environ.get(SAME_WORK_ENV))
    variant = "bare-same-work" if same_work else "bare"
    if same_work:
        serving = settings.serving
        metrics = predictions.serving_metrics(version, variant)
        writer = predictions.PredictionLogWriter(
            predictions.log_schema(spec),
            predictions.append_to_lake(settings),
            flush_rows=serving.log_flush_rows,
            flush_seconds=serving.log_flush_seconds,
            buffer_limit=serving.log_buffer_limit,
            on_failure=metrics.log_failures.inc,
            on_dropped=metrics.log_dropped.inc,
        ).start()
        features = tuple(spec.model_features)

    async def predict(row: row_model) -> dict:  # type: ignore[valid-type]
        started = time.perf_counter()
        score = scorer.score([row])[0]
        request_id = row.request_id or predictions.new_request_id()
        decision = score >= threshold
        if same_work:
            metrics.observe_scores([score])
            writer.add(
                predictions.log_rows([row], [request_id], [score], [decision], features, version, variant)
            )
            metrics.observe_request("predict", 200, time.perf_counter() - started)
        return {
            "request_id": request_id,
            "event_id": row.event_id,
            "score": score,
            "decision": decision,
            "model_version": version,
            "variant": variant,
        }

    predict.__annotations__["row"] = row_model  # this module's annotations are strings
    app.post("/predict")(predict)
    return app


@contextlib.contextmanager
def bare_fastapi(settings: Settings, version: str, same_work: bool = False) -> Iterator[tuple[str, int]]:
    port = free_port()
    log_path = settings.data_dir / f"bare-fastapi{'-same-work' if same_work else ''}.log"
    env = child_env(settings, DRIFTLOOP_SERVING__MODEL_REF=version, PYTHONPATH=str(REPO))
    if same_work:
        # metric values in files, as under BentoML (which sets this for its workers): same cost
        metrics_dir = settings.data_dir / f"bare-prometheus-{port}"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        env.update({SAME_WORK_ENV: "1", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
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


# --- the splitter: the real local deploy target --------------------------------------------------


@contextlib.contextmanager
def local_splitter(settings: Settings, stable: ServerHandle) -> Iterator[tuple[str, list[int], list[str]]]:
    """The local deploy target at 90/10, as a rollout's first step runs it: stable and a canary of
    the benchmarked version, each its own BentoML server, behind one HAProxy (weights change at
    run time, without a reload). The target starts its own servers, so the direct figure and this
    one are two servers of the same version and settings."""
    from driftloop.deploy.local import LocalTarget

    target = LocalTarget(settings)
    try:
        target.deploy("stable", stable.model_version)
        target.deploy("canary", stable.model_version)
        target.set_canary_weight(CANARY_WEIGHT)
        # the state file is the target's documented record of its servers (a JSON file any process reads)
        variants = json.loads(target.state_path.read_text())["variants"]
        pids = [target.splitter.pid(), *(int(handle["pid"]) for handle in variants.values())]
        # the same two servers in the splitter's proportion, for the client to call directly
        weights = {"stable": 100 - CANARY_WEIGHT, "canary": CANARY_WEIGHT}
        gcd = math.gcd(*weights.values())
        direct = [variants[v]["url"] for v, weight in weights.items() for _ in range(weight // gcd)]
        yield target.endpoint, [pid for pid in pids if pid is not None], direct
    finally:
        target.stop_all()


# --- the load generator, in its own process ------------------------------------------------------

_bodies: list[bytes] = []


def _keep_rows(rows: list[dict]) -> None:
    """Load-process initializer: the rows arrive once, already encoded, not with every measurement."""
    _bodies[:] = [json.dumps(row).encode() for row in rows]


async def _replay_aiohttp(
    url: str | Sequence[str],
    concurrency: int,
    duration_s: float,
    by_variant: dict[str, list[float]] | None = None,
) -> LoadReport:
    """Post the rows to ``url``/predict from ``concurrency`` workers on kept-alive connections.
    With several URLs the requests go to them in turn (a URL listed nine times gets nine in ten).

    Not driftloop.traffic.replay: its httpx client spent 0.8 ms of CPU per request here, about
    twice the bare server's, and 2.4 ms at concurrency 32 (its pool contends), so on 2 shared
    cores the load generator, not the server, set the ceiling. aiohttp on uvloop costs less."""
    import aiohttp

    report = LoadReport(concurrency=concurrency)
    counter = itertools.count()
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        urls = [url] if isinstance(url, str) else list(url)
        endpoints = [f"{u.rstrip('/')}/predict" for u in urls]
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker() -> None:
            while time.perf_counter() < deadline:
                n = next(counter)
                body = _bodies[n % len(_bodies)]
                sent = time.perf_counter()
                try:
                    async with session.post(endpoints[n % len(endpoints)], data=body) as response:
                        await response.read()
                        status = response.status
                        answered = (
                            f"{response.headers.get('x-variant', '?')}:"
                            f"{response.headers.get('x-model-version', '?')}"
                        )
                except (aiohttp.ClientError, TimeoutError):
                    status, answered = TRANSPORT_ERROR, "none"
                latency_ms = (time.perf_counter() - sent) * 1000
                report.latencies_ms.append(latency_ms)
                if by_variant is not None:
                    by_variant.setdefault(answered.split(":")[0], []).append(latency_ms)
                report.statuses[status] += 1
                report.answered_by[answered] += 1
                report.requests += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.elapsed_s = time.perf_counter() - started
    return report


def generate_load(url: str | Sequence[str], concurrency: int, duration_s: float) -> dict:
    """In the load process: replay the rows and return what came back and the client's CPU cost.

    A process of its own keeps the load generator's event loop away from this process's heap
    (MLflow, LightGBM, pandas), whose garbage collection would otherwise show up as latency."""
    import uvloop

    cpu_before = time.process_time()
    by_variant: dict[str, list[float]] = {}
    report = uvloop.run(_replay_aiohttp(url, concurrency, duration_s, by_variant))
    cpu_ms = (time.process_time() - cpu_before) * 1000 / max(report.requests, 1)
    return {
        **report.summary(),
        "errors": report.failed,
        "client_cpu_ms_per_request": round(cpu_ms, 3),
        # behind the splitter: each variant's answers on their own (stable and canary)
        "p99_ms_by_variant": {
            variant: round(LoadReport(latencies_ms=values).percentile_ms(99), 3)
            for variant, values in by_variant.items()
        },
    }


# --- measurement ---------------------------------------------------------------------------------


def server_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds used so far by the servers' process trees (all workers and threads)."""
    if not pids:
        return math.nan
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return math.nan
        for process in tree:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
    return total


def measure_http(
    target: str,
    url: str | Sequence[str],
    load: ProcessPoolExecutor,
    echo: Callable[[str], None],
    pids: Sequence[int] = (),
) -> list[dict]:
    """Each concurrency level after a warm-up. Server CPU per request is reported too: on a
    shared machine it is steadier than req/s, which the other tenants' load moves a lot."""
    out = []
    for concurrency in CONCURRENCY:
        load.submit(generate_load, url, concurrency, WARMUP_S).result()
        load_1m = os.getloadavg()[0]
        cpu_before = server_cpu_s(pids)
        row = load.submit(generate_load, url, concurrency, DURATION_S).result()
        cpu_ms = (server_cpu_s(pids) - cpu_before) * 1000 / max(row["requests"], 1)
        row = {"target": target, **row, "server_cpu_ms_per_request": round(cpu_ms, 3), "load_1m": load_1m}
        if row["errors"] > row["requests"] // 100:
            raise RuntimeError(
                f"{target} failed {row['errors']} of {row['requests']} requests: {row['statuses']}"
            )
        echo(
            f"[serving] {target:<16} c={concurrency:<3} {row['rps']:>8.0f} req/s  "
            f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
            f"server cpu {cpu_ms:.2f} ms/req  client cpu {row['client_cpu_ms_per_request']:.2f} ms/req  "
            f"errors {row['errors']}  load {load_1m:.1f}"
        )
        out.append(row)
    return out


def in_process_scorer(settings: Settings, version: str) -> Callable[[dict], object]:
    """Validate + score one row, as the servers do, without HTTP."""
    from driftloop import predictions
    from driftloop.retraining import load_scorer

    row_model = predictions.row_model(load_dataset_spec())
    scorer = predictions.RowScorer.from_scorer(
        load_scorer(settings, f"models:/{settings.registered_model}/{version}")
    )
    return lambda row: scorer.score([row_model.model_validate(row)])


def measure_in_process(
    score: Callable[[dict], object], rows: list[dict], echo: Callable[[str], None]
) -> dict:
    """Score one row at a time in this process: the floor of any server."""
    load_1m = os.getloadavg()[0]
    timings = []
    for i in range(IN_PROCESS_CALLS):
        started = time.perf_counter()
        score(rows[i % len(rows)])
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
        "load_1m": load_1m,
    }
    echo(
        f"[serving] in-process       c=1   {row['rps']:>8.0f} calls/s "
        f"p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  load {load_1m:.1f}"
    )
    return row


def medians(measured: list[dict]) -> list[dict]:
    """One row per target and concurrency: the median of each figure over the rounds."""
    grouped: dict[tuple[str, int], list[dict]] = {}
    for row in measured:
        grouped.setdefault((row["target"], row["concurrency"]), []).append(row)
    out = []
    for (target, concurrency), rounds in grouped.items():
        row: dict[str, Any] = {
            "target": target,
            "concurrency": concurrency,
            "rounds": len(rounds),
            "requests": sum(r["requests"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds),
        }
        for name in MEDIAN_FIELDS:
            values = [r[name] for r in rounds if name in r and not math.isnan(r[name])]
            row[name] = round(statistics.median(values), 3) if values else math.nan
        answered: dict[str, int] = {}
        for r in rounds:
            for key, n in r.get("answered_by", {}).items():
                answered[key] = answered.get(key, 0) + n
        row["answered_by"] = answered
        by_variant = [r.get("p99_ms_by_variant", {}) for r in rounds]
        variants = sorted({v for per_round in by_variant for v in per_round})
        row["p99_ms_by_variant"] = {
            v: round(statistics.median(p[v] for p in by_variant if v in p), 3) for v in variants
        }
        row["per_round"] = [
            {name: r.get(name) for name in ("rps", "p50_ms", "p99_ms", "load_1m")} for r in rounds
        ]
        out.append(row)
    return out


def run(
    echo: Callable[[str], None] = print,
    splitter: Splitter | None = local_splitter,
    workers: int | None = None,
    rounds: int = ROUNDS,
) -> list[dict]:
    """Register a small real model, start every target, then measure them in ``rounds``
    interleaved rounds; median rows also go to results/serving.json."""
    from tests.models import register_model, request_rows

    spec = load_dataset_spec()
    rows = request_rows(spec, 500)
    measured: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-serving-") as scratch, ExitStack() as stack:
        # DRIFTLOOP_SERVING__* apply as everywhere (e.g. the prediction-log flush settings)
        serving = Settings().serving.model_copy(
            update={
                "workers": workers or int(os.environ.get("DRIFTLOOP_BENCH_SERVING_WORKERS", "1")),
                # never the shared default: others may run a deployment on it
                "splitter_port": free_port(),
            }
        )
        changed = serving.model_dump(exclude_defaults=True, exclude={"splitter_port", "auth_token"})
        if changed:
            echo(f"[serving] serving settings changed from the defaults: {changed}")
        settings = Settings(data_dir=Path(scratch) / "data", serving=serving)
        echo("[serving] registering a small LightGBM model (untimed)")
        version = register_model(settings, "good", alias="champion")
        load = stack.enter_context(
            ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_keep_rows,
                initargs=(rows,),
            )
        )
        echo("[serving] starting bare FastAPI, BentoML and the splitter (untimed)")
        bare_url, bare_pid = stack.enter_context(bare_fastapi(settings, version))
        same_url, same_pid = stack.enter_context(bare_fastapi(settings, version, same_work=True))
        handle = start_server(settings, variant="stable", model_ref=version, port=free_port())
        stack.callback(stop_server, handle)
        targets: list[tuple[str, str | list[str], list[int]]] = [
            ("fastapi-bare", bare_url, [bare_pid]),
            ("fastapi-same-work", same_url, [same_pid]),
            ("bentoml", handle.url, [handle.pid]),
        ]
        if splitter is not None:
            served = stack.enter_context(splitter(settings, handle))
            url, pids, direct = (*served, [], [])[:3] if isinstance(served, tuple) else (served, [], [])
            targets.append(("bentoml-splitter", url, list(pids)))
            if direct:
                # the splitter's own servers, called in its proportion without it: what it adds
                targets.append(("bentoml-direct-split", direct, list(pids[1:])))
        score = in_process_scorer(settings, version)
        for n in range(rounds):
            echo(f"[serving] round {n + 1} of {rounds}")
            measured.append(measure_in_process(score, rows, echo))
            # rotate the order, so no target is always the one measured right after another
            for target, url, pids in targets[n % len(targets) :] + targets[: n % len(targets)]:
                measured += measure_http(target, url, load, echo, pids)
    results = medians(measured)
    for row in results:
        row["workers"] = serving.workers
        row["serving_settings_changed"] = changed
    echo(f"[serving] {ratios_text(results)}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2))
    return results


def bentoml_ratio(
    rows: list[dict], concurrency: int = 8, baseline: str = "fastapi-same-work", figure: str = "rps"
) -> float:
    """BentoML req/s over bare FastAPI req/s (the issue's target is at concurrency 8).

    With ``figure="server_cpu_ms_per_request"`` the inverse ratio of CPU per request: the
    req/s a CPU-bound BentoML server reaches relative to the baseline, steadier on a shared
    machine than measured req/s."""
    by = {(r["target"], r["concurrency"]): r.get(figure, math.nan) for r in rows}
    if figure != "rps":
        bento, base = by.get(("bentoml", concurrency)), by.get((baseline, concurrency))
        return base / bento if bento and base else math.nan
    bare = by.get((baseline, concurrency))
    return by.get(("bentoml", concurrency), 0.0) / bare if bare else math.nan


def splitter_p99_ratio(
    rows: list[dict], concurrency: int, variant: str | None = None, baseline: str = "bentoml"
) -> float:
    """p99 through the splitter over p99 of ``baseline``: the BentoML service directly, or its
    servers called directly in the splitter's proportion ("bentoml-direct-split"); with
    ``variant``, of that variant's answers only, on both sides when the baseline has them."""
    by = {(r["target"], r["concurrency"]): r for r in rows}

    def p99(target: str) -> float | None:
        row = by.get((target, concurrency), {})
        by_variant = row.get("p99_ms_by_variant", {})
        return row.get("p99_ms") if variant is None or variant not in by_variant else by_variant[variant]

    direct, split = p99(baseline), p99("bentoml-splitter")
    return split / direct if direct and split else math.nan


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def ratios_text(rows: list[dict]) -> str:
    minimal = bentoml_ratio(rows, baseline="fastapi-bare")
    minimal_cpu = bentoml_ratio(rows, baseline="fastapi-bare", figure="server_cpu_ms_per_request")
    same = bentoml_ratio(rows)
    same_cpu = bentoml_ratio(rows, figure="server_cpu_ms_per_request")
    lines = [
        f"BentoML / minimal bare FastAPI (no prediction log, no metrics) req/s at concurrency 8: "
        f"**{minimal:.2f}x** (target >= {BENCH_TARGET_RATIO}x: {_verdict(minimal >= BENCH_TARGET_RATIO)}); "
        f"by server CPU per request {minimal_cpu:.2f}x",
        f"BentoML / bare FastAPI doing the same work at concurrency 8: {same:.2f}x req/s, "
        f"{same_cpu:.2f}x by server CPU per request",
    ]
    splits = [(c, splitter_p99_ratio(rows, c)) for c in CONCURRENCY]
    if any(not math.isnan(ratio) for _c, ratio in splits):
        shown = ", ".join(
            f"c={c} **{ratio:.2f}x** ({_verdict(ratio <= SPLITTER_P99_RATIO)})" for c, ratio in splits
        )
        lines.append(f"splitter / direct p99 (target <= {SPLITTER_P99_RATIO}x): {shown}")
        parts = []
        for variant in ("stable", "canary"):
            ratios = [f"c={c} {splitter_p99_ratio(rows, c, variant):.2f}x" for c in CONCURRENCY]
            parts.append(f"{variant} answers only {', '.join(ratios)}")
        lines.append(f"of which, through the splitter: {'; '.join(parts)}")
    same = [(c, splitter_p99_ratio(rows, c, baseline="bentoml-direct-split")) for c in CONCURRENCY]
    if any(not math.isnan(ratio) for _c, ratio in same):
        shown = ", ".join(f"c={c} **{ratio:.2f}x**" for c, ratio in same)
        lines.append(f"splitter / its own two servers called directly at the same split, p99: {shown}")
        parts = []
        for variant in ("stable", "canary"):
            ratios = [
                f"c={c} {splitter_p99_ratio(rows, c, variant, 'bentoml-direct-split'):.2f}x"
                for c in CONCURRENCY
            ]
            parts.append(f"{variant} {', '.join(ratios)}")
        lines.append(f"of which, by the variant that answered: {'; '.join(parts)}")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    lines = [
        "| target | concurrency | req/s | p50 ms | p99 ms | server CPU ms/req | client CPU ms/req "
        "| errors | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (TARGET_ORDER.index(r["target"]), r["concurrency"])):
        loads = [x["load_1m"] for x in r.get("per_round", []) if x.get("load_1m") is not None]
        load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else f"{r.get('load_1m', math.nan):.1f}"
        lines.append(
            f"| {r['target']} | {r['concurrency']} | {r['rps']:,.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r.get('server_cpu_ms_per_request', math.nan):.2f} | "
            f"{r.get('client_cpu_ms_per_request', math.nan):.2f} | {r.get('errors', 0)} | {load} |"
        )
    rounds = max((r.get("rounds", 1) for r in rows), default=1)
    workers = rows[0].get("workers", "?") if rows else "?"
    lines.append(
        f"\nMedian of {rounds} interleaved rounds; {workers} worker(s) per server; load = 1-min load "
        f"average over the rounds (2 cores)."
    )
    lines.append("\n" + ratios_text(rows).replace("\n", "  \n"))
    return "\n".join(lines)


TARGET_ORDER = [
    "in-process",
    "fastapi-bare",
    "fastapi-same-work",
    "bentoml",
    "bentoml-direct-split",
    "bentoml-splitter",
]


if __name__ == "__main__":
    print(summary(run()))
