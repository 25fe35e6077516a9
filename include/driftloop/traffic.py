"""Clients of the model servers: a small prediction client and a load generator.

The load generator replays feature rows at a rate and concurrency and reports what came back
(status counts, latencies, which model version and variant answered), for tests, benchmarks
and the demo alike.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

TRANSPORT_ERROR = 0
"""Status recorded when no HTTP response came back (connection refused, reset, timeout)."""


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class PredictionClient:
    """Synchronous client of one server (or the splitter in front of several)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers=_headers(token), timeout=timeout)

    def __enter__(self) -> PredictionClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def predict(self, row: dict[str, Any]) -> dict[str, Any]:
        """Score one row; raises httpx.HTTPStatusError with the server's message on a 4xx/5xx."""
        response = self._client.post("/predict", json=row)
        _raise_with_body(response)
        return response.json()

    def predict_batch(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        response = self._client.post("/predict_batch", json={"rows": list(rows)})
        _raise_with_body(response)
        return response.json()["predictions"]

    def ready(self) -> bool:
        try:
            return self._client.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def metrics_text(self) -> str:
        response = self._client.get("/metrics")
        response.raise_for_status()
        return response.text


def _raise_with_body(response: httpx.Response) -> None:
    if response.is_error:
        raise httpx.HTTPStatusError(
            f"{response.status_code} from {response.request.url}: {response.text[:500]}",
            request=response.request,
            response=response,
        )


@dataclass
class LoadReport:
    """What a load run saw. ``statuses`` counts HTTP codes (0: no response)."""

    requests: int = 0
    elapsed_s: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    answered_by: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    concurrency: int = 1

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def failed(self) -> int:
        return self.requests - self.ok

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, q: float) -> float:
        """Latency percentile over every request (nearest rank), in milliseconds."""
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "elapsed_s": round(self.elapsed_s, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "answered_by": dict(self.answered_by),
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | self.summary()


async def replay_async(
    url: str,
    rows: Sequence[dict[str, Any]],
    *,
    concurrency: int = 8,
    requests: int | None = None,
    duration_s: float | None = None,
    rate: float | None = None,
    path: str = "/predict",
    batch_size: int = 1,
    token: str | None = None,
    timeout: float = 10.0,
) -> LoadReport:
    """Send rows to ``url + path`` from ``concurrency`` workers until ``requests`` were sent or
    ``duration_s`` passed, at most ``rate`` requests per second overall (None: as fast as answered).

    Rows are cycled; ``batch_size`` > 1 posts ``{"rows": [...]}`` (use path="/predict_batch").
    Each request's event_id is made unique so the prediction log can be matched to requests.
    """
    if requests is None and duration_s is None:
        raise ValueError("give requests=, duration_s= or both, or the load never ends")
    if not rows:
        raise ValueError("no rows to replay")
    report = LoadReport(concurrency=concurrency)
    counter = itertools.count()
    source = itertools.cycle(rows)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    deadline = None if duration_s is None else started + duration_s

    def next_body(i: int) -> dict[str, Any]:
        picked = [dict(next(source)) for _ in range(batch_size)]
        for j, row in enumerate(picked):
            row["event_id"] = f"{row.get('event_id', 'evt')}#{i}.{j}"
        return picked[0] if batch_size == 1 else {"rows": picked}

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            i = next(counter)
            if requests is not None and i >= requests:
                return
            if rate:
                wait = started + i / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            if deadline is not None and time.perf_counter() >= deadline:
                return
            body = next_body(i)
            sent = time.perf_counter()
            try:
                response = await client.post(path, json=body)
                status = response.status_code
                answered = (
                    f"{response.headers.get('x-variant', '?')}:{response.headers.get('x-model-version', '?')}"
                )
            except httpx.HTTPError:
                status, answered = TRANSPORT_ERROR, "none"
            report.latencies_ms.append((time.perf_counter() - sent) * 1000)
            report.statuses[status] += 1
            report.answered_by[answered] += 1
            report.requests += 1

    async with httpx.AsyncClient(
        base_url=url.rstrip("/"), headers=_headers(token), timeout=timeout, limits=limits
    ) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    report.elapsed_s = time.perf_counter() - started
    return report


def replay(url: str, rows: Sequence[dict[str, Any]], **options: Any) -> LoadReport:
    """:func:`replay_async` from synchronous code (tests, the demo, benchmarks)."""
    return asyncio.run(replay_async(url, rows, **options))


@dataclass
class BackgroundLoad:
    """Steady traffic from a background thread until stopped, counted by status and by who answered.

    Rows are replayed in a fresh random order every second, so a weighted splitter that sends
    every n-th request to the canary still hands it a fair sample, not the same few rows.
    """

    url: str
    rows: Sequence[dict[str, Any]]
    concurrency: int = 4
    rate: float = 200.0
    seed: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    answered_by: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> BackgroundLoad:
        shuffler = random.Random(self.seed)

        def loop() -> None:
            while not self._stop.is_set():
                order = shuffler.sample(list(self.rows), len(self.rows))
                report = replay(self.url, order, concurrency=self.concurrency, duration_s=1.0, rate=self.rate)
                self.statuses.update(report.statuses)
                self.answered_by.update(report.answered_by)

        self._thread = threading.Thread(target=loop, name="background-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)
