"""Deterministic, seeded simulator of card-transaction events and their late fraud labels.

Owns the landing-file schema, the drift scenarios, bad-row injection and atomic landing writes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "BASELINE_CATEGORIES",
    "CHANNELS",
    "CORRUPTION_KINDS",
    "COUNTRIES",
    "EVENTS_ARROW_SCHEMA",
    "EVENT_COLUMNS",
    "LABELS_ARROW_SCHEMA",
    "LABEL_COLUMNS",
    "RISKY_CATEGORIES",
    "SCENARIOS",
    "Corruption",
    "CorruptionKind",
    "LandingFile",
    "SimulatedBatch",
    "SimulationConfig",
    "batch_id_for",
    "batch_index_at",
    "batch_window",
    "simulate_batch",
    "write_landing_batches",
]

# --------------------------------------------------------------------------------------
# Schema contract (other modules validate landing data against these)
# --------------------------------------------------------------------------------------

BASELINE_CATEGORIES: tuple[str, ...] = (
    "grocery",
    "restaurants",
    "fuel",
    "fashion",
    "electronics",
    "travel",
    "gaming",
    "digital_goods",
)
RISKY_CATEGORIES: tuple[str, ...] = ("electronics", "digital_goods", "gaming")
CHANNELS: tuple[str, ...] = ("web", "app", "pos")
COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "BR", "IN")

EVENT_COLUMNS: dict[str, str] = {
    "event_id": "object",
    "user_id": "object",
    "merchant_id": "object",
    "device_id": "object",
    "amount": "float64",
    "category": "object",
    "country": "object",
    "channel": "object",
    "event_time": "datetime64[ns, UTC]",
}
"""Events columns in order, with their pandas dtypes (string columns hold ``str``)."""

LABEL_COLUMNS: dict[str, str] = {
    "event_id": "object",
    "is_fraud": "int64",
    "label_time": "datetime64[ns, UTC]",
}
"""Labels columns in order, with their pandas dtypes."""

EVENTS_ARROW_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("merchant_id", pa.string()),
        pa.field("device_id", pa.string()),
        pa.field("amount", pa.float64()),
        pa.field("category", pa.string()),
        pa.field("country", pa.string()),
        pa.field("channel", pa.string()),
        pa.field("event_time", pa.timestamp("ns", tz="UTC")),
    ]
)
LABELS_ARROW_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string()),
        pa.field("is_fraud", pa.int64()),
        pa.field("label_time", pa.timestamp("ns", tz="UTC")),
    ]
)

SCENARIOS: tuple[str, ...] = (
    "baseline",
    "covariate_shift",
    "new_category",
    "concept_drift",
    "label_delay",
)

FraudPattern = Literal["account_takeover", "card_testing"]
CorruptionKind = Literal[
    "null_user_id",
    "negative_amount",
    "unknown_channel",
    "future_event_time",
    "duplicate_event_id",
    "nan_amount",
]
CORRUPTION_KINDS: tuple[str, ...] = get_args(CorruptionKind)
UNKNOWN_CHANNEL = "ussd"
FUTURE_EVENT_OFFSET = timedelta(days=30)

# --------------------------------------------------------------------------------------
# Generative constants: tuned so history features (bursts, amount vs. the user's norm,
# new device, foreign country, risky merchants) separate fraud from legitimate traffic.
# --------------------------------------------------------------------------------------

_CATEGORY_MEDIAN_AMOUNT: dict[str, float] = {
    "grocery": 35.0,
    "restaurants": 28.0,
    "fuel": 45.0,
    "fashion": 60.0,
    "electronics": 180.0,
    "travel": 320.0,
    "gaming": 25.0,
    "digital_goods": 15.0,
}
_NEW_CATEGORY_MEDIAN_AMOUNT = 150.0
_CATEGORY_SIGMA = 0.6
_CATEGORY_POPULARITY = np.array([0.28, 0.18, 0.12, 0.12, 0.08, 0.06, 0.08, 0.08])
# Rows: categories; columns: web, app, pos. Physical spending happens mostly at the till.
_LEGIT_CHANNEL_PROBS = np.array(
    [
        [0.05, 0.15, 0.80],
        [0.10, 0.20, 0.70],
        [0.02, 0.18, 0.80],
        [0.40, 0.25, 0.35],
        [0.45, 0.20, 0.35],
        [0.60, 0.30, 0.10],
        [0.50, 0.45, 0.05],
        [0.50, 0.48, 0.02],
    ]
)
_FRAUD_CHANNEL_PROBS = np.array([0.70, 0.20, 0.10])
_COUNTRY_POPULARITY = np.array([0.30, 0.14, 0.12, 0.10, 0.08, 0.07, 0.05, 0.06, 0.04, 0.04])
_LEGIT_FOREIGN_PROB = 0.04
_LEGIT_SECOND_DEVICE_PROB = 0.2
_TWO_DEVICE_USER_FRACTION = 0.45

_FRAUD_BURST_EXTRA_MEAN = 3.0  # burst size = 1 + Poisson(3): several charges in minutes
_FRAUD_BURST_GAP_SECONDS = 90.0
_FRAUD_RISKY_CATEGORY_PROB = 0.8
_FRAUD_FOREIGN_PROB = 0.6
_FRAUD_NEW_DEVICE_PROB = 0.7
_FRAUD_AMOUNT_LOG_MEAN = 1.0  # ~2.7x the category median
_FRAUD_AMOUNT_LOG_SIGMA = 0.4
_FRAUD_PRONE_MERCHANT_FRACTION = 0.05
_FRAUD_PRONE_MERCHANT_WEIGHT = 25.0
_HIGH_RISK_USER_FRACTION = 0.05
_HIGH_RISK_USER_WEIGHT = 20.0

_CARD_TESTING_CATEGORIES: tuple[str, ...] = ("grocery", "fuel")
_CARD_TESTING_MERCHANT_FRACTION = 0.1
_CARD_TESTING_MERCHANT_WEIGHT = 10.0

# Independent RNG streams per batch so that e.g. a new label rule or corruption does not
# reshuffle the generated inputs: scenarios then differ only in what they claim to change.
_STREAM_POPULATION = 0
_STREAM_EVENTS = 1
_STREAM_DRIFT = 2
_STREAM_LABELS = 3
_STREAM_CORRUPTION = 4

_NS_PER_MS = 1_000_000


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationConfig:
    """Every knob of the simulator; build presets with :meth:`for_scenario`.

    ``scenario`` names the preset the knobs came from; the knobs alone decide behaviour.
    Scenario knobs (amount shift, new category, fraud pattern, label delay and loss) apply
    to batches with ``batch_index >= drift_start_batch``; earlier batches use baseline values.
    """

    scenario: str = "baseline"
    """Name of the preset, one of SCENARIOS."""
    seed: int = 42
    """Root seed; the user/merchant population and every batch derive from it."""
    start_time: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    """Start of batch 0 (timezone-aware, normalised to UTC)."""
    n_users: int = 50_000
    """Size of the user population (keep events per user per day realistic: a few)."""
    n_merchants: int = 500
    """Size of the merchant population (at least one per baseline category)."""
    events_per_batch: int = 5_000
    """Events per batch; injected bad rows replace clean rows rather than adding to them."""
    n_batches: int = 24
    """Batches written by default by write_landing_batches."""
    batch_interval: timedelta = timedelta(hours=1)
    """Event-time span covered by one batch."""
    fraud_rate: float = 0.02
    """Fraction of events labelled fraud."""
    bad_row_fraction: float = 0.0
    """Fraction of rows corrupted for validation tests; if > 0, every kind appears at least once."""
    drift_start_batch: int = 0
    """First batch index the scenario knobs below apply to."""
    amount_multiplier: float = 1.0
    """Covariate shift: multiplies every amount."""
    amount_sigma_scale: float = 1.0
    """Covariate shift: widens (>1) or narrows (<1) the log-amount spread."""
    new_category: str | None = None
    """A category outside BASELINE_CATEGORIES that starts to appear (e.g. 'crypto')."""
    new_category_fraction: float = 0.0
    """Fraction of events moved to ``new_category``."""
    fraud_pattern: FraudPattern = "account_takeover"
    """'account_takeover' (bursts, high amounts, risky categories, foreign, new device, web)
    or 'card_testing' (concept drift: low-amount grocery/fuel at home via app)."""
    label_delay: timedelta = timedelta(hours=6)
    """Fixed part of the delay between an event and its label."""
    label_delay_jitter: timedelta = timedelta(hours=2)
    """Uniform extra delay in [0, jitter) added to label_delay."""
    missing_label_fraction: float = 0.0
    """Fraction of labels that never arrive."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_time", _as_utc_datetime(self.start_time))
        self._validate()

    def _validate(self) -> None:
        problems: list[str] = []
        if self.scenario not in SCENARIOS:
            problems.append(f"scenario {self.scenario!r} is unknown; use one of {list(SCENARIOS)}")
        if self.seed < 0:
            problems.append("seed must be >= 0")
        if self.n_users < 1:
            problems.append("n_users must be >= 1")
        if self.n_merchants < len(BASELINE_CATEGORIES):
            problems.append(f"n_merchants must be >= {len(BASELINE_CATEGORIES)} (one per category)")
        if self.events_per_batch < 1:
            problems.append("events_per_batch must be >= 1")
        if self.n_batches < 0:
            problems.append("n_batches must be >= 0")
        if self.batch_interval <= timedelta(0):
            problems.append("batch_interval must be positive")
        if not 0.0 <= self.fraud_rate < 0.5:
            problems.append("fraud_rate must be in [0, 0.5)")
        if not 0.0 <= self.bad_row_fraction <= 0.5:
            problems.append("bad_row_fraction must be in [0, 0.5]")
        if self.drift_start_batch < 0:
            problems.append("drift_start_batch must be >= 0")
        if self.amount_multiplier <= 0.0:
            problems.append("amount_multiplier must be > 0")
        if self.amount_sigma_scale <= 0.0:
            problems.append("amount_sigma_scale must be > 0")
        if self.new_category is not None and self.new_category in BASELINE_CATEGORIES:
            problems.append(f"new_category {self.new_category!r} is already a baseline category")
        if not 0.0 <= self.new_category_fraction <= 1.0:
            problems.append("new_category_fraction must be in [0, 1]")
        if self.new_category_fraction > 0.0 and not self.new_category:
            problems.append("new_category_fraction > 0 needs new_category to be set")
        if self.fraud_pattern not in get_args(FraudPattern):
            problems.append(f"fraud_pattern must be one of {list(get_args(FraudPattern))}")
        if self.label_delay < timedelta(0) or self.label_delay_jitter < timedelta(0):
            problems.append("label_delay and label_delay_jitter must be >= 0")
        if not 0.0 <= self.missing_label_fraction <= 1.0:
            problems.append("missing_label_fraction must be in [0, 1]")
        if problems:
            raise ValueError("invalid SimulationConfig: " + "; ".join(problems))

    @classmethod
    def for_scenario(cls, name: str, **overrides: Any) -> SimulationConfig:
        """Preset for scenario ``name`` with explicit field ``overrides`` applied on top."""
        if name not in _SCENARIO_PRESETS:
            raise ValueError(f"unknown scenario {name!r}; valid scenarios: {list(SCENARIOS)}")
        valid_fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - valid_fields)
        if unknown:
            raise ValueError(
                f"unknown SimulationConfig field(s) {unknown}; valid fields: {sorted(valid_fields)}"
            )
        return cls(**{"scenario": name, **_SCENARIO_PRESETS[name], **overrides})

    def drift_active(self, batch_index: int) -> bool:
        """Whether the scenario knobs apply to batch ``batch_index``."""
        return batch_index >= self.drift_start_batch


_SCENARIO_PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "covariate_shift": {"amount_multiplier": 2.5, "amount_sigma_scale": 1.3},
    "new_category": {"new_category": "crypto", "new_category_fraction": 0.15},
    "concept_drift": {"fraud_pattern": "card_testing"},
    "label_delay": {
        "label_delay": timedelta(hours=72),
        "label_delay_jitter": timedelta(hours=24),
        "missing_label_fraction": 0.15,
    },
}


def _as_utc_datetime(value: datetime | str) -> datetime:
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        raise ValueError(
            f"invalid SimulationConfig: start_time {value!r} must be timezone-aware, e.g. '2024-01-01T00:00Z'"
        )
    return ts.tz_convert("UTC").to_pydatetime()


_BASELINE_LABELLING = SimulationConfig()


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corruption:
    """One injected bad row: where it is, what was done, and which ids it carries."""

    kind: CorruptionKind
    row: int
    """Position of the row in ``SimulatedBatch.events``."""
    event_id: str
    """event_id the corrupted row carries now (for duplicates: the copied id)."""
    original_event_id: str
    """event_id the row had before corruption (its label, if any, uses this id)."""


@dataclass
class SimulatedBatch:
    """Events and labels of one batch, plus the record of injected bad rows."""

    batch_id: str
    batch_index: int
    window_start: pd.Timestamp
    window_end: pd.Timestamp
    events: pd.DataFrame
    labels: pd.DataFrame
    corruptions: list[Corruption] = field(default_factory=list)


@dataclass(frozen=True)
class LandingFile:
    """One file written to the landing area."""

    batch_id: str
    kind: Literal["events", "labels"]
    path: Path
    rows: int


# --------------------------------------------------------------------------------------
# Population: fixed per (seed, n_users, n_merchants), shared by every batch
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Population:
    user_ids: np.ndarray
    user_home_country: np.ndarray  # index into COUNTRIES
    user_primary_device: np.ndarray  # device number
    user_secondary_device: np.ndarray  # device number, -1 if none
    user_activity_p: np.ndarray
    user_risk_p: np.ndarray
    user_amount_scale: np.ndarray
    user_category_cdf: np.ndarray  # (n_users, n_categories)
    merchant_ids: np.ndarray
    merchant_category: np.ndarray
    merchant_popularity: np.ndarray
    merchant_fraud_prone: np.ndarray  # bool
    merchant_card_testing: np.ndarray  # bool
    fraud_device_pool: np.ndarray  # device numbers never owned by a user


def _readonly(*arrays: np.ndarray) -> None:
    for array in arrays:
        array.setflags(write=False)


@functools.lru_cache(maxsize=8)
def _population(seed: int, n_users: int, n_merchants: int) -> _Population:
    rng = np.random.default_rng([seed, _STREAM_POPULATION])
    n_cat = len(BASELINE_CATEGORIES)

    user_ids = np.array([f"u{i:06d}" for i in range(n_users)], dtype=object)
    home = rng.choice(len(COUNTRIES), size=n_users, p=_COUNTRY_POPULARITY)
    primary = 2 * np.arange(n_users, dtype=np.int64)
    has_second = rng.random(n_users) < _TWO_DEVICE_USER_FRACTION
    secondary = np.where(has_second, primary + 1, -1)
    # Heavy-tailed activity: a few users transact a lot, as in real card portfolios.
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    risk = np.where(rng.random(n_users) < _HIGH_RISK_USER_FRACTION, _HIGH_RISK_USER_WEIGHT, 1.0)
    risk = risk * activity  # active cards are the ones that get stolen and used
    amount_scale = rng.lognormal(0.0, 0.3, size=n_users)
    prefs = rng.dirichlet(_CATEGORY_POPULARITY * 8.0, size=n_users)
    cdf = np.cumsum(prefs, axis=1)
    cdf[:, -1] = 1.0

    merchant_ids = np.array([f"m{j:05d}" for j in range(n_merchants)], dtype=object)
    merchant_cat = np.concatenate(
        [np.arange(n_cat), rng.choice(n_cat, size=n_merchants - n_cat, p=_CATEGORY_POPULARITY)]
    )
    popularity = rng.lognormal(0.0, 1.0, size=n_merchants)
    fraud_prone = rng.random(n_merchants) < _FRAUD_PRONE_MERCHANT_FRACTION
    testing_cats = [BASELINE_CATEGORIES.index(c) for c in _CARD_TESTING_CATEGORIES]
    card_testing = np.isin(merchant_cat, testing_cats) & (
        rng.random(n_merchants) < _CARD_TESTING_MERCHANT_FRACTION
    )
    fraud_devices = 2 * n_users + np.arange(max(50, n_users // 50), dtype=np.int64)

    pop = _Population(
        user_ids=user_ids,
        user_home_country=home,
        user_primary_device=primary,
        user_secondary_device=secondary,
        user_activity_p=activity / activity.sum(),
        user_risk_p=risk / risk.sum(),
        user_amount_scale=amount_scale,
        user_category_cdf=cdf,
        merchant_ids=merchant_ids,
        merchant_category=merchant_cat,
        merchant_popularity=popularity,
        merchant_fraud_prone=fraud_prone,
        merchant_card_testing=card_testing,
        fraud_device_pool=fraud_devices,
    )
    _readonly(*(getattr(pop, f.name) for f in dataclasses.fields(pop)))
    return pop


# --------------------------------------------------------------------------------------
# Batch windows and ids
# --------------------------------------------------------------------------------------


def batch_id_for(batch_index: int) -> str:
    """Stable, sortable id of batch ``batch_index`` (also the landing file stem)."""
    return f"batch-{batch_index:05d}"


def batch_window(config: SimulationConfig, batch_index: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Half-open event-time window [start, end) covered by batch ``batch_index``."""
    start = pd.Timestamp(config.start_time) + batch_index * pd.Timedelta(config.batch_interval)
    return start, start + pd.Timedelta(config.batch_interval)


def batch_index_at(config: SimulationConfig, when: datetime) -> int:
    """Index of the batch whose window contains ``when`` (timezone-aware)."""
    ts = pd.Timestamp(when)
    if ts.tzinfo is None:
        raise ValueError(f"{when!r} must be timezone-aware")
    offset = ts - pd.Timestamp(config.start_time)
    if offset < pd.Timedelta(0):
        raise ValueError(f"{when!r} is before start_time {config.start_time.isoformat()}")
    return int(offset // pd.Timedelta(config.batch_interval))


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


@dataclass
class _Draft:
    """Column arrays of a batch before they become frames."""

    user: np.ndarray
    merchant: np.ndarray  # int index; >= n_merchants means a new-category merchant
    device: np.ndarray
    category: np.ndarray  # object array of names
    country: np.ndarray  # int index into COUNTRIES
    channel: np.ndarray  # int index into CHANNELS
    amount: np.ndarray
    offset_ns: np.ndarray
    burst_fraud: np.ndarray  # bool: generated by an account-takeover burst


def _sample_from_cdf(rng: np.random.Generator, cdf: np.ndarray) -> np.ndarray:
    u = rng.random(cdf.shape[0])
    return np.minimum((u[:, None] >= cdf).sum(axis=1), cdf.shape[1] - 1)


def _sample_merchants(
    rng: np.random.Generator, pop: _Population, category: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    merchant = np.empty(category.shape[0], dtype=np.int64)
    for cat in range(len(BASELINE_CATEGORIES)):
        rows = np.flatnonzero(category == cat)
        if rows.size == 0:
            continue
        candidates = np.flatnonzero(pop.merchant_category == cat)
        w = weights[candidates]
        merchant[rows] = rng.choice(candidates, size=rows.size, p=w / w.sum())
    return merchant


def _generate_draft(config: SimulationConfig, batch_index: int, pop: _Population) -> _Draft:
    rng = np.random.default_rng([config.seed, _STREAM_EVENTS, batch_index])
    n_total = config.events_per_batch
    interval_ns = int(pd.Timedelta(config.batch_interval).value)
    n_fraud = round(config.fraud_rate * n_total)
    n_legit = n_total - n_fraud
    medians = np.array([_CATEGORY_MEDIAN_AMOUNT[c] for c in BASELINE_CATEGORIES])

    # Legitimate traffic: users by activity, categories by each user's taste.
    l_user = rng.choice(pop.user_ids.shape[0], size=n_legit, p=pop.user_activity_p)
    l_cat = _sample_from_cdf(rng, pop.user_category_cdf[l_user])
    l_merchant = _sample_merchants(rng, pop, l_cat, pop.merchant_popularity)
    use_second = (pop.user_secondary_device[l_user] >= 0) & (rng.random(n_legit) < _LEGIT_SECOND_DEVICE_PROB)
    l_device = np.where(use_second, pop.user_secondary_device[l_user], pop.user_primary_device[l_user])
    l_home = pop.user_home_country[l_user]
    l_foreign = rng.random(n_legit) < _LEGIT_FOREIGN_PROB
    l_country = np.where(l_foreign, _other_country(rng, l_home), l_home)
    l_channel = _sample_from_cdf(rng, np.cumsum(_LEGIT_CHANNEL_PROBS, axis=1)[l_cat])
    l_z = rng.standard_normal(n_legit)
    l_logmu = np.log(medians[l_cat] * pop.user_amount_scale[l_user])
    l_offset = rng.integers(0, interval_ns, size=n_legit)

    # Account takeover: a stolen card is used several times within minutes, for larger
    # amounts, at risky merchants, often abroad, from a device the user never used, on web.
    sizes = 1 + rng.poisson(_FRAUD_BURST_EXTRA_MEAN, size=max(1, n_fraud))
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), n_fraud)) + 1]
    if n_fraud == 0:
        sizes = sizes[:0]
    else:
        sizes[-1] -= int(sizes.sum()) - n_fraud
    n_bursts = sizes.shape[0]
    burst_of = np.repeat(np.arange(n_bursts), sizes)
    b_user = rng.choice(pop.user_ids.shape[0], size=n_bursts, p=pop.user_risk_p)
    b_foreign = rng.random(n_bursts) < _FRAUD_FOREIGN_PROB
    b_home = pop.user_home_country[b_user]
    b_country = np.where(b_foreign, _other_country(rng, b_home), b_home)
    b_new_device = rng.random(n_bursts) < _FRAUD_NEW_DEVICE_PROB
    b_device = np.where(
        b_new_device,
        rng.choice(pop.fraud_device_pool, size=n_bursts),
        pop.user_primary_device[b_user],
    )
    b_start_fraction = rng.random(n_bursts)

    f_user = b_user[burst_of]
    risky = np.array([BASELINE_CATEGORIES.index(c) for c in RISKY_CATEGORIES])
    f_risky = rng.random(n_fraud) < _FRAUD_RISKY_CATEGORY_PROB
    f_cat = np.where(
        f_risky,
        rng.choice(risky, size=n_fraud),
        _sample_from_cdf(rng, pop.user_category_cdf[f_user]),
    )
    fraud_weights = pop.merchant_popularity * np.where(
        pop.merchant_fraud_prone, _FRAUD_PRONE_MERCHANT_WEIGHT, 1.0
    )
    f_merchant = _sample_merchants(rng, pop, f_cat, fraud_weights)
    f_channel = rng.choice(len(CHANNELS), size=n_fraud, p=_FRAUD_CHANNEL_PROBS)
    f_z = rng.standard_normal(n_fraud)
    f_logmu = np.log(medians[f_cat] * pop.user_amount_scale[f_user]) + rng.normal(
        _FRAUD_AMOUNT_LOG_MEAN, _FRAUD_AMOUNT_LOG_SIGMA, size=n_fraud
    )
    gaps = rng.exponential(_FRAUD_BURST_GAP_SECONDS * 1e9, size=n_fraud).astype(np.int64)
    first = np.cumsum(sizes) - sizes
    gaps[first] = 0
    csum = np.cumsum(gaps)
    within = csum - csum[first][burst_of]
    # Start each burst early enough to end inside the window; only bursts longer than the
    # whole window get clipped at its end.
    span = within[np.cumsum(sizes) - 1] if n_bursts else within[:0]
    room = np.maximum(interval_ns - span, 1)
    b_start = (b_start_fraction * room).astype(np.int64)
    f_offset = np.clip(b_start[burst_of] + within, 0, interval_ns - 1)

    category_idx = np.concatenate([l_cat, f_cat])
    z = np.concatenate([l_z, f_z])
    logmu = np.concatenate([l_logmu, f_logmu])
    drift = config.drift_active(batch_index)
    sigma_scale = config.amount_sigma_scale if drift else 1.0
    multiplier = config.amount_multiplier if drift else 1.0
    amount = np.exp(logmu + _CATEGORY_SIGMA * sigma_scale * z) * multiplier

    return _Draft(
        user=np.concatenate([l_user, f_user]),
        merchant=np.concatenate([l_merchant, f_merchant]),
        device=np.concatenate([l_device, b_device[burst_of]]),
        category=np.asarray(BASELINE_CATEGORIES, dtype=object)[category_idx],
        country=np.concatenate([l_country, b_country[burst_of]]),
        channel=np.concatenate([l_channel, f_channel]),
        amount=amount,
        offset_ns=np.concatenate([l_offset, f_offset]),
        burst_fraud=np.concatenate([np.zeros(n_legit, bool), np.ones(n_fraud, bool)]),
    )


def _other_country(rng: np.random.Generator, home: np.ndarray) -> np.ndarray:
    step = rng.integers(1, len(COUNTRIES), size=home.shape[0])
    return (home + step) % len(COUNTRIES)


def _apply_new_category(config: SimulationConfig, batch_index: int, pop: _Population, draft: _Draft) -> None:
    if not (config.drift_active(batch_index) and config.new_category_fraction > 0.0):
        return
    rng = np.random.default_rng([config.seed, _STREAM_DRIFT, batch_index])
    n = draft.amount.shape[0]
    rows = np.flatnonzero(rng.random(n) < config.new_category_fraction)
    # New-category merchants are new merchants too, numbered after the baseline ones.
    n_new_merchants = max(5, config.n_merchants // 50)
    draft.category[rows] = config.new_category
    draft.merchant[rows] = config.n_merchants + rng.integers(0, n_new_merchants, size=rows.size)
    fraud_uplift = np.where(draft.burst_fraud[rows], np.exp(_FRAUD_AMOUNT_LOG_MEAN), 1.0)
    multiplier = config.amount_multiplier
    draft.amount[rows] = (
        _NEW_CATEGORY_MEDIAN_AMOUNT
        * pop.user_amount_scale[draft.user[rows]]
        * fraud_uplift
        * np.exp(_CATEGORY_SIGMA * config.amount_sigma_scale * rng.standard_normal(rows.size))
        * multiplier
    )


def _fraud_labels(config: SimulationConfig, batch_index: int, pop: _Population, draft: _Draft) -> np.ndarray:
    if not (config.drift_active(batch_index) and config.fraud_pattern == "card_testing"):
        return draft.burst_fraud.astype(np.int64)
    # Concept drift: identical inputs, but fraud is now small test charges on everyday
    # categories at home through the app, clustered at a few compromised merchants.
    rng = np.random.default_rng([config.seed, _STREAM_LABELS, batch_index, 1])
    n = draft.amount.shape[0]
    target = round(config.fraud_rate * n)
    everyday = np.isin(draft.category, _CARD_TESTING_CATEGORIES)
    home = draft.country == pop.user_home_country[draft.user]
    app = draft.channel == CHANNELS.index("app")
    candidates = np.flatnonzero(everyday & home & app)
    if candidates.size:
        cat_median = pd.Series(draft.category[candidates]).map(_CATEGORY_MEDIAN_AMOUNT)
        low = draft.amount[candidates] < cat_median.to_numpy() * config.amount_multiplier
        candidates = candidates[low]
    labels = np.zeros(n, dtype=np.int64)
    if candidates.size == 0 or target == 0:
        return labels
    merchant = draft.merchant[candidates]
    in_population = merchant < config.n_merchants
    testing = np.zeros(candidates.size, dtype=bool)
    testing[in_population] = pop.merchant_card_testing[merchant[in_population]]
    weight = np.where(testing, _CARD_TESTING_MERCHANT_WEIGHT, 1.0)
    # Weighted sampling without replacement via exponential keys (Efraimidis-Spirakis).
    keys = rng.exponential(size=candidates.size) / weight
    chosen = candidates[np.argsort(keys, kind="stable")[: min(target, candidates.size)]]
    labels[chosen] = 1
    return labels


def _format_ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    return np.array([f"{prefix}{n:0{width}d}" for n in numbers.tolist()], dtype=object)


def _merchant_ids(config: SimulationConfig, pop: _Population, merchant: np.ndarray) -> np.ndarray:
    known = merchant < config.n_merchants
    if known.all():
        return pop.merchant_ids[merchant]
    out = np.empty(merchant.shape[0], dtype=object)
    out[known] = pop.merchant_ids[merchant[known]]
    new = merchant[~known]
    new_ids = _format_ids("m", np.arange(config.n_merchants, int(new.max()) + 1), 5)
    out[~known] = new_ids[new - config.n_merchants]
    return out


def _utc_times(ns: np.ndarray) -> pd.Series:
    # Millisecond precision keeps JSON Lines (ISO strings) and Parquet round-trips exact.
    floored = ns - ns % _NS_PER_MS
    return pd.Series(pd.to_datetime(floored, unit="ns", utc=True))


def simulate_batch(config: SimulationConfig, batch_index: int) -> SimulatedBatch:
    """Generate batch ``batch_index``: same config and index always give identical frames."""
    if batch_index < 0:
        raise ValueError(f"batch_index must be >= 0, got {batch_index}")
    pop = _population(config.seed, config.n_users, config.n_merchants)
    window_start, window_end = batch_window(config, batch_index)
    draft = _generate_draft(config, batch_index, pop)
    _apply_new_category(config, batch_index, pop, draft)
    is_fraud = _fraud_labels(config, batch_index, pop, draft)

    order = np.argsort(draft.offset_ns, kind="stable")
    n = order.shape[0]
    event_ids = np.array([f"evt-{config.seed}-{batch_index:05d}-{i:07d}" for i in range(n)], dtype=object)
    event_ns = window_start.value + draft.offset_ns[order]
    events = pd.DataFrame(
        {
            "event_id": event_ids,
            "user_id": pop.user_ids[draft.user[order]],
            "merchant_id": _merchant_ids(config, pop, draft.merchant[order]),
            "device_id": _format_ids("d", draft.device[order], 7),
            "amount": np.round(draft.amount[order], 2).astype(np.float64),
            "category": draft.category[order],
            "country": np.asarray(COUNTRIES, dtype=object)[draft.country[order]],
            "channel": np.asarray(CHANNELS, dtype=object)[draft.channel[order]],
            "event_time": _utc_times(event_ns),
        }
    )
    labels = _labels_frame(config, batch_index, event_ids, event_ns, is_fraud[order])
    corruptions = _inject_bad_rows(config, batch_index, events, window_end)
    return SimulatedBatch(
        batch_id=batch_id_for(batch_index),
        batch_index=batch_index,
        window_start=window_start,
        window_end=window_end,
        events=events,
        labels=labels,
        corruptions=corruptions,
    )


def _labels_frame(
    config: SimulationConfig,
    batch_index: int,
    event_ids: np.ndarray,
    event_ns: np.ndarray,
    is_fraud: np.ndarray,
) -> pd.DataFrame:
    rng = np.random.default_rng([config.seed, _STREAM_LABELS, batch_index])
    n = event_ids.shape[0]
    # Before the drift starts, labels behave as in the baseline preset.
    source = config if config.drift_active(batch_index) else _BASELINE_LABELLING
    delay, jitter = source.label_delay, source.label_delay_jitter
    missing = source.missing_label_fraction
    jitter_ns = int(pd.Timedelta(jitter).value)
    extra = rng.integers(0, jitter_ns, size=n) if jitter_ns > 0 else np.zeros(n, np.int64)
    label_ns = event_ns + int(pd.Timedelta(delay).value) + extra
    arrives = rng.random(n) >= missing
    return pd.DataFrame(
        {
            "event_id": event_ids[arrives],
            "is_fraud": is_fraud[arrives].astype(np.int64),
            "label_time": _utc_times(label_ns[arrives]),
        }
    )


def _inject_bad_rows(
    config: SimulationConfig, batch_index: int, events: pd.DataFrame, window_end: pd.Timestamp
) -> list[Corruption]:
    n = len(events)
    if config.bad_row_fraction <= 0.0 or n < 2:
        return []
    rng = np.random.default_rng([config.seed, _STREAM_CORRUPTION, batch_index])
    # Every kind at least once, so a quarantine test never passes on an empty case.
    n_bad = min(n - 1, max(len(CORRUPTION_KINDS), round(config.bad_row_fraction * n)))
    # Row 0 is never corrupted so every duplicate can copy an earlier clean row's id,
    # which makes "keep the first occurrence" the right quarantine rule.
    rows = np.sort(rng.choice(np.arange(1, n), size=n_bad, replace=False))
    kind_of_row = np.asarray(CORRUPTION_KINDS, dtype=object)[
        rng.permutation(np.arange(n_bad) % len(CORRUPTION_KINDS))
    ]
    original_ids = events["event_id"].to_numpy().copy()
    new_ids = original_ids.copy()

    def rows_of(kind: str) -> np.ndarray:
        return rows[kind_of_row == kind]

    def column(name: str) -> int:
        return events.columns.get_loc(name)  # type: ignore[return-value]

    events.iloc[rows_of("null_user_id"), column("user_id")] = None
    negative = rows_of("negative_amount")
    events.iloc[negative, column("amount")] = -np.abs(events["amount"].to_numpy()[negative]) - 0.01
    events.iloc[rows_of("unknown_channel"), column("channel")] = UNKNOWN_CHANNEL
    events.iloc[rows_of("future_event_time"), column("event_time")] = window_end + pd.Timedelta(
        FUTURE_EVENT_OFFSET
    )
    events.iloc[rows_of("nan_amount"), column("amount")] = np.nan
    duplicates = rows_of("duplicate_event_id")
    clean = np.setdiff1d(np.arange(n), rows)
    n_clean_before = np.searchsorted(clean, duplicates)
    sources = clean[(rng.random(duplicates.size) * n_clean_before).astype(np.int64)]
    new_ids[duplicates] = original_ids[sources]
    events.iloc[duplicates, column("event_id")] = new_ids[duplicates]

    return [
        Corruption(kind, row, str(new_ids[row]), str(original_ids[row]))
        for row, kind in zip(rows.tolist(), kind_of_row.tolist(), strict=True)
    ]


# --------------------------------------------------------------------------------------
# Landing files
# --------------------------------------------------------------------------------------

_EXTENSIONS: dict[str, str] = {"parquet": "parquet", "jsonl": "jsonl"}


def write_landing_batches(
    config: SimulationConfig,
    landing_dir: Path,
    fmt: Literal["parquet", "jsonl"] = "parquet",
    batches: Iterable[int] | None = None,
) -> list[LandingFile]:
    """Write events and labels of ``batches`` (default: all) under ``landing_dir``.

    Files land as ``events/<batch_id>.<ext>`` and ``labels/<batch_id>.<ext>``; each is
    written to a hidden temp file and renamed, so readers never see a partial file.
    Re-running rewrites identical content, so retries are harmless.
    """
    if fmt not in _EXTENSIONS:
        raise ValueError(f"unknown landing format {fmt!r}; use one of {list(_EXTENSIONS)}")
    landing_dir = Path(landing_dir)
    indices = range(config.n_batches) if batches is None else batches
    written: list[LandingFile] = []
    for batch_index in indices:
        batch = simulate_batch(config, batch_index)
        # Events before labels: a label should never land before the event it describes.
        for kind, frame, schema in (
            ("events", batch.events, EVENTS_ARROW_SCHEMA),
            ("labels", batch.labels, LABELS_ARROW_SCHEMA),
        ):
            target = landing_dir / kind / f"{batch.batch_id}.{_EXTENSIONS[fmt]}"
            _write_atomically(frame, target, fmt, schema)
            written.append(LandingFile(batch.batch_id, kind, target, len(frame)))  # type: ignore[arg-type]
    return written


def _write_atomically(frame: pd.DataFrame, target: Path, fmt: str, schema: pa.Schema) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            if fmt == "parquet":
                table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
                pq.write_table(table, handle)
            else:
                text = frame.to_json(orient="records", lines=True, date_format="iso", date_unit="ms")
                if text and not text.endswith("\n"):
                    text += "\n"
                handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
