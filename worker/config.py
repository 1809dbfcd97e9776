"""Settings read from the environment, in one place.

Every knob the worker, beat, Flower, the CLI and the demo use is here with its default. Durations
accept seconds (``90``) or a number with ``s``/``m``/``h``/``d`` (``7d``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REAL_BLUEPAY_URL = "https://secure.bluepay.com/interfaces/"
# Demo credentials shared with the sandbox's defaults (worker/sandbox): TEST mode only.
SANDBOX_ACCOUNT_ID = "100000000001"
SANDBOX_SECRET_KEY = "SANDBOXSECRETKEY0000000000000000"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# The shortest PAYMENTS_RETENTION: longer than any redelivery of a payment message (visibility timeout, outbox
# re-publication) and than RECONCILE_GIVE_UP's default, so no record leaves Redis while its message may come back.
MIN_RETENTION = 86400.0
# How long an idempotency key is honoured after its record's last change, once the record has left Redis (its key
# index entry: fingerprint and outcome, worker/store/retention.py). At least BluePay's lookback as the client uses it
# (stq is asked 30 days back: past that, reconciliation could not find the key's transaction at the gateway either)
# and at least PAYMENTS_RETENTION (the entry is written when the record leaves).
MIN_KEY_RETENTION = 30 * 86400.0
DEFAULT_KEY_RETENTION = 90 * 86400.0


#: BLUEPAY_HASH_TYPE's values: the TAMPER_PROOF_SEAL algorithms worker/gateway/seal.py computes (config imports
#: nothing of ours; tests/unit/test_config.py holds the two lists equal).
HASH_TYPES = ("MD5", "SHA256", "SHA512", "HMAC_SHA256", "HMAC_SHA512")
#: The default archive's file in PAYMENTS_DATA_DIR (an SQLite database).
ARCHIVE_FILE = "archive.sqlite3"


# ---- the gateway guard's settings (worker/guard/, docs/resilience.md) -------------------------------------------
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.IGNORECASE)
_UNIT = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(text: str, *, name: str = "GATEWAY_RATE_LIMIT") -> float:
    """Requests per second of ``20/s``, ``600/m``, ``5/2s``; "" or "0" or "off": 0.0 (no limit)."""
    if text.strip().lower() in ("", "0", "off", "none"):
        return 0.0
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"{name}: {text!r} is not a rate (e.g. 20/s, 600/m, or off)")
    count, per, unit = float(match.group(1)), int(match.group(2) or 1), _UNIT[match.group(3).lower()]
    if count <= 0 or per <= 0:
        raise ValueError(f"{name}: {text!r} must allow at least some requests (or say off)")
    return count / (per * unit)


@dataclass(frozen=True)
class GuardSettings:
    #: bp10emu requests (charges, follow-ups) per second for one merchant, all workers together; 0: no limit
    rate: float = 0.0
    #: stq and daily-report requests per second (a bucket of their own, so reconciliation is never starved)
    look_rate: float = 0.0
    #: requests a bucket may hold up after an idle moment (the burst over the rate in any one-second window)
    burst: int = 1
    #: consecutive failures proving the gateway down that open the breaker; 0: no breaker (on by default: issue 31)
    breaker_failures: int = 5
    #: seconds the breaker stays open before one probe may go (short, so a recovered gateway is used again soon)
    cooldown: float = 10.0
    #: seconds a process trusts a "closed, no failures" answer without asking Redis again (breaker only, lanes
    #: without a rate limit); a failure of its own drops it at once. 0: ask on every attempt
    recheck: float = 1.0
    #: how long the probe's place is kept if its process never settles it (dies): one attempt's timeouts
    #: (worker/services.py sets it from GATEWAY_CONNECT_TIMEOUT + GATEWAY_READ_TIMEOUT)
    probe_lease: float = 20.0
    #: the longest one attempt waits in process for a token before it is re-queued instead (holds a worker slot)
    max_wait: float = 0.5
    #: the bulkhead: requests of one merchant in flight at once, all workers together; 0: no cap
    max_in_flight: int = 0
    #: the longest one attempt waits in process for a place under the cap before it is re-queued instead
    busy_wait: float = 0.1

    @property
    def on(self) -> bool:
        return self.rate > 0 or self.look_rate > 0 or self.breaker_failures > 0 or self.max_in_flight > 0

    def check(self) -> GuardSettings:
        if self.rate < 0 or self.look_rate < 0:
            raise ValueError("GATEWAY_RATE_LIMIT / GATEWAY_STQ_RATE_LIMIT must be a rate or off")
        if self.burst < 1:
            raise ValueError(f"GATEWAY_RATE_BURST ({self.burst}) must be at least 1")
        if self.breaker_failures < 0:
            raise ValueError(f"GATEWAY_BREAKER_FAILURES ({self.breaker_failures}) must be 0 (off) or more")
        if self.breaker_failures and self.cooldown <= 0:
            raise ValueError(f"GATEWAY_BREAKER_COOLDOWN ({self.cooldown:g}s) must be more than 0")
        if self.recheck < 0:
            raise ValueError(f"GATEWAY_BREAKER_RECHECK ({self.recheck:g}s) must be 0 or more")
        if self.max_wait < 0:
            raise ValueError(f"GATEWAY_THROTTLE_WAIT ({self.max_wait:g}s) must be 0 or more")
        if self.max_in_flight < 0 or self.busy_wait < 0:
            raise ValueError(f"GATEWAY_MAX_IN_FLIGHT ({self.max_in_flight}) and GATEWAY_BUSY_WAIT "
                             f"({self.busy_wait:g}s) must be 0 (off / no wait) or more")
        return self


class ConfigError(ValueError):
    """A setting in the environment cannot be used."""


def parse_sentinels(text: str) -> list[tuple[str, int]]:
    """``"h1:26379, h2:26380"`` -> ``[("h1", 26379), ("h2", 26380)]``; ValueError naming a bad entry."""
    out: list[tuple[str, int]] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"REDIS_SENTINELS: {entry!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    return out


def parse_duration(value: str | float | int, *, name: str = "duration") -> float:
    """``"90"`` -> 90.0, ``"5m"`` -> 300.0, ``"7d"`` -> 604800.0."""
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"{name}: {value!r} is not a duration (seconds, or a number with s/m/h/d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value if value.strip() else default


def _flag(name: str) -> bool:
    """An on/off setting, off by default: 1/true/yes/on, or 0/false/no/off (anything else names the variable)."""
    text = _env(name, "0").strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: {text!r} is not on or off (1/0, true/false, yes/no)")


def _int(name: str, default: int) -> int:
    """An integer setting; the error names the variable (``GATEWAY_RETRY_ATTEMPTS: 'four' is not a whole number``)."""
    text = _env(name, str(default))
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a whole number") from None


def _hash_type_error(value: str) -> str | None:
    if value in HASH_TYPES:
        return None
    squeezed = re.sub(r"[-_ ]", "", value.upper())
    guesses = [t for t in HASH_TYPES if t.replace("_", "") == squeezed]
    hint = f" (did you mean {guesses[0]}?)" if guesses else ""
    return f"BLUEPAY_HASH_TYPE: {value!r} is not one of {', '.join(HASH_TYPES)}{hint}"


def _url_error(name: str, url: str, schemes: tuple[str, ...]) -> str | None:
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in schemes or (not parts.hostname and parts.scheme != "unix"):
        return f"{name}: {url!r} is not a URL ({' or '.join(s + '://' for s in schemes)} and a host)"
    return None


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: TRANS_SUBMIT_TIMESTAMP's time zone (US Central, worker/gateway/expiry.py): checked at start.
SUBMIT_TIME_ZONE = "America/Chicago"


# ---- merchant accounts (worker/merchants.py, docs/merchants.md) ------------------------------------------------
DEFAULT = "default"
#: not an account's name: the metrics' merchant label says these for the BLUEPAY_* account, a message naming an
#: account the workers do not know, and anything else (worker/ops/metrics.py)
_RESERVED_NAMES = frozenset({DEFAULT, "unknown", "other"})
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_FIELDS = frozenset({"account_id", "secret_key", "mode", "url", "hash_type", "platform_merchant_id", "rate_limit",
                     "stq_rate_limit", "breaker_failures", "breaker_cooldown", "max_in_flight"})


@dataclass(frozen=True)
class MerchantAccount:
    """One merchant account: its credentials, gateway and guard (``default``: the BLUEPAY_* one)."""

    name: str
    account_id: str
    secret_key: str = field(repr=False)
    mode: str = "TEST"
    url: str = ""
    hash_type: str = "HMAC_SHA512"
    platform_merchant_id: str = ""
    guard: GuardSettings = field(default_factory=GuardSettings)


def valid_name(name: object) -> bool:
    return isinstance(name, str) and bool(_NAME.fullmatch(name))


def parse_accounts(text: str, *, base: MerchantAccount,
                   duration: Callable[[object, str], float]) -> tuple[MerchantAccount, ...]:
    """The accounts ``BLUEPAY_ACCOUNTS`` names (``base``: the ``default`` one, whose settings the others inherit).
    Raises ValueError naming the account and the field."""
    text = text.strip()
    if not text:
        return ()
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise ValueError(f"BLUEPAY_ACCOUNTS: cannot read {text[1:]!r} ({type(exc).__name__})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"BLUEPAY_ACCOUNTS: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise ValueError("BLUEPAY_ACCOUNTS: must be a JSON object of accounts by name")
    return tuple(_account(name, spec, base, duration) for name, spec in raw.items())


def _account(name: object, spec: object, base: MerchantAccount,
             duration: Callable[[object, str], float]) -> MerchantAccount:
    where = f"BLUEPAY_ACCOUNTS[{name!r}]"
    if not valid_name(name) or name in _RESERVED_NAMES:
        raise ValueError(f"{where}: a name is lower-case letters, digits, - and _ (at most 32), not 'default', "
                         "'unknown' or 'other' (metric labels: the BLUEPAY_* account, a refused name, anything else)")
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: must be an object")
    unknown = sorted(set(spec) - _FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for required in ("account_id", "secret_key"):
        if not isinstance(spec.get(required), str) or not spec[required]:
            raise ValueError(f"{where}.{required}: required")
    text: dict[str, str] = {}
    for key in ("mode", "url", "hash_type", "platform_merchant_id"):
        value = spec.get(key, getattr(base, key))
        if not isinstance(value, str):
            raise ValueError(f"{where}.{key}: must be a string")
        text[key] = value
    return MerchantAccount(str(name), spec["account_id"], spec["secret_key"], text["mode"].upper(), text["url"],
                           text["hash_type"].upper(), text["platform_merchant_id"],
                           _guard(where, spec, base.guard, duration))


def _guard(where: str, spec: Mapping[str, Any], base: GuardSettings,
           duration: Callable[[object, str], float]) -> GuardSettings:
    guard = base
    if "rate_limit" in spec or "stq_rate_limit" in spec:
        total = parse_rate(str(spec.get("rate_limit", "")), name=f"{where}.rate_limit")
        look = (parse_rate(str(spec["stq_rate_limit"]), name=f"{where}.stq_rate_limit") if "stq_rate_limit" in spec
                else total / 5)
        if total and look >= total:
            raise ValueError(f"{where}.stq_rate_limit must be less than its rate_limit")
        guard = dataclasses.replace(guard, rate=total - look if total else 0.0, look_rate=look)
    if "breaker_failures" in spec:
        failures = spec["breaker_failures"]
        if type(failures) is not int or failures < 0:
            raise ValueError(f"{where}.breaker_failures: must be 0 (off) or more")
        guard = dataclasses.replace(guard, breaker_failures=failures)
    if "breaker_cooldown" in spec:
        guard = dataclasses.replace(guard, cooldown=duration(spec["breaker_cooldown"], f"{where}.breaker_cooldown"))
    return _bulkhead(where, spec, guard)


def _bulkhead(where: str, spec: Mapping[str, Any], guard: GuardSettings) -> GuardSettings:
    """An account's own ``max_in_flight`` (its requests in flight at once, all workers together; 0: no cap)."""
    if "max_in_flight" not in spec:
        return guard
    cap = spec["max_in_flight"]
    if type(cap) is not int or cap < 0:
        raise ValueError(f"{where}.max_in_flight: must be 0 (no cap) or more")
    return dataclasses.replace(guard, max_in_flight=cap)


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    # Redis Sentinel (worker/redis_connections.py): when set, the master found through these sentinels replaces
    # REDIS_URL's host and port (its database number is kept) for the broker, results and store.
    redis_sentinels: str = ""
    redis_master_name: str = "mymaster"
    redis_sentinel_password: str = field(default="", repr=False)
    redis_password: str = field(default="", repr=False)
    # WAIT after the writes money depends on (claim, attempt journal, outbox): None = 1 under Sentinel, else 0.
    min_replicas_ack_setting: int | None = None
    replica_ack_timeout: float = 1.0
    key_prefix: str = "payments:"
    bluepay_account_id: str = SANDBOX_ACCOUNT_ID
    bluepay_secret_key: str = field(default=SANDBOX_SECRET_KEY, repr=False)
    bluepay_mode: str = "TEST"
    bluepay_url: str = REAL_BLUEPAY_URL
    bluepay_hash_type: str = "HMAC_SHA512"
    # A platform charging for a sub-merchant: its PLATFORM_MERCHANT_ID, sent and sealed after the account id (BluePay's
    # C# library 3.0.8); "": none (docs/bluepay.md).
    bluepay_platform_merchant_id: str = ""
    card_key: str = field(default="", repr=False)
    # Gateway budgets: one HTTP attempt, and the in-process retry of "not sent" errors.
    connect_timeout: float = 3.05
    read_timeout: float = 15.0
    retry_attempts: int = 4
    retry_seconds: float = 10.0
    # Broker-level retries when the gateway stays unreachable longer than the in-process budget.
    outage_retries: int = 5
    outage_backoff: float = 5.0
    outage_backoff_max: float = 60.0
    visibility_timeout: float = 300.0
    stale_auth_age: float = 7 * 86400.0
    # AVS_POLICY / CVV2_POLICY: result codes that void an approved sale or auth at once (worker/payments/policy.py)
    avs_policy: frozenset[str] = frozenset()
    # PAYMENTS_ENABLE_CREDIT: payments.credit (money out to a card with no original) runs only when set
    enable_credit: bool = False
    cvv2_policy: frozenset[str] = frozenset()
    sweep_interval: float = 300.0
    reconcile_after: float = 600.0
    # After this long an operation whose outcome stayed unknown is given a final state for a human.
    reconcile_give_up: float = 86400.0
    # How long a request the client gave up on may still commit inside the gateway (None: derived).
    commit_horizon_setting: float | None = None
    # An operation's lease; renewed every third of it while a call is in flight (heartbeat).
    lease_seconds: float = 30.0
    # Every money-moving attempt carries TRANS_SUBMIT_TIMESTAMP (Redis time of its lease check) and this
    # TRANS_EXPIRE_PERIOD (whole minutes): the gateway refuses it once older (TRANSACTION TOO OLD, not saved).
    submit_expiry: float = 180.0
    # How far the gateway's clock may differ from Redis's: a takeover waits this much longer than the expiry.
    clock_skew_margin: float = 60.0
    flower_basic_auth: str = field(default="", repr=False)
    # The gateway's guard shared by every worker (worker/guard/, docs/resilience.md): rate limit and circuit breaker.
    guard: GuardSettings = field(default_factory=GuardSettings)
    # The merchant accounts BLUEPAY_ACCOUNTS names besides ``default`` (the BLUEPAY_* one): worker/merchants.py.
    accounts: tuple[MerchantAccount, ...] = ()
    # Daily settlement reconciliation of the previous day (UTC), "HH:MM" (worker/payments/reconciliation.py; beat).
    reconcile_report_at: str = "02:00"
    # The worker's Prometheus endpoint (worker/ops/metrics.py): 0 = off; one port per worker process on a host.
    worker_metrics_port: int = 0
    worker_metrics_addr: str = "0.0.0.0"
    # Retention: final records older than this move from Redis to the archive (0: keep them in Redis for good).
    retention: float = 30 * 86400.0
    # Idempotency keys of records that left Redis are honoured this long after the record's last change (key index);
    # None: the default (see key_retention).
    key_retention_setting: float | None = None
    # Where the default archive (an SQLite file) and other local data live.
    data_dir: str = ".data"
    # The archive's SQLAlchemy URL ("": SQLite in data_dir); PostgreSQL in production (postgresql+psycopg://...).
    archive_url_setting: str = field(default="", repr=False)
    # Records a sweep archives at most per batch, and per run (the rest waits for the next sweep).
    archive_batch: int = 500
    archive_per_sweep: int = 20_000
    # Celery results (a convenience for result.get(): the store keeps the outcome) expire after this.
    result_expires: float = 86400.0
    # How often beat drains the webhook schedule (the rest of the webhook settings: worker/webhooks/settings.py).
    webhook_drain_interval: float = 1.0

    @property
    def soft_time_limit(self) -> float:
        """Worst case of one payment: send, reconcile with stq, send again; each with its retries."""
        one_call = self.connect_timeout + self.read_timeout + self.retry_seconds
        return round(3 * one_call + 5, 1)

    @property
    def hard_time_limit(self) -> float:
        return round(self.soft_time_limit + 15, 1)

    @property
    def call_budget(self) -> float:
        """The longest one gateway call takes, in-process retries of "not sent" errors included."""
        return self.connect_timeout + self.read_timeout + self.retry_seconds

    @property
    def operation_budget(self) -> float:
        """Wall time after which one delivery starts no gateway call (so the last ends before the soft limit)."""
        return round(self.soft_time_limit - self.call_budget - 5, 1)

    @property
    def commit_horizon(self) -> float:
        """GATEWAY_COMMIT_HORIZON: stq "absent" proves nothing until every attempt that may have been sent is
        older than this. Default: 2 x the read timeout + 30 s."""
        if self.commit_horizon_setting is not None:
            return self.commit_horizon_setting
        return 2 * self.read_timeout + 30

    @property
    def key_retention(self) -> float:
        """PAYMENTS_KEY_RETENTION: how long after its record's last change an idempotency key is still honoured once
        the record has left Redis. Default: 90 days, or PAYMENTS_RETENTION when that is longer."""
        if self.key_retention_setting is not None:
            return self.key_retention_setting
        return max(DEFAULT_KEY_RETENTION, self.retention)

    @property
    def submit_expiry_minutes(self) -> int:
        """GATEWAY_SUBMIT_EXPIRY in the whole minutes TRANS_EXPIRE_PERIOD takes."""
        return int(self.submit_expiry // 60)

    @property
    def min_replicas_ack(self) -> int:
        """REDIS_MIN_REPLICAS_ACK: replicas that must acknowledge a claim, journal or outbox write before a send."""
        if self.min_replicas_ack_setting is not None:
            return self.min_replicas_ack_setting
        return 1 if self.redis_sentinels.strip() else 0

    @property
    def archive_url(self) -> str:
        """PAYMENTS_ARCHIVE_URL, or the SQLite file ``archive.sqlite3`` in PAYMENTS_DATA_DIR."""
        return self.archive_url_setting or f"sqlite:///{os.path.join(self.data_dir, ARCHIVE_FILE)}"

    @property
    def reconcile_report_time(self) -> tuple[int, int]:
        """RECONCILE_REPORT_AT as (hour, minute), UTC."""
        match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", self.reconcile_report_at)
        if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
            raise ConfigError(f"RECONCILE_REPORT_AT: {self.reconcile_report_at!r} is not a time of day (HH:MM, UTC)")
        return int(match.group(1)), int(match.group(2))

    def check(self) -> Settings:
        self.reconcile_report_time  # noqa: B018  (raises ConfigError when malformed)
        self._check_shapes()
        self._check_gateway()
        self._check_redis()
        if self.commit_horizon <= self.connect_timeout + self.read_timeout:
            raise ConfigError(
                f"GATEWAY_COMMIT_HORIZON ({self.commit_horizon:g}s) must exceed the connect + read timeouts "
                f"({self.connect_timeout + self.read_timeout:g}s): a request the client gave up on can commit later"
            )
        self._check_submit_expiry()
        self._check_guards()
        if not 0 <= self.worker_metrics_port <= 65535:
            raise ConfigError(f"WORKER_METRICS_PORT ({self.worker_metrics_port}) must be 0 (off) or a TCP port")
        if self.lease_seconds < 3:
            raise ConfigError(f"LEASE_SECONDS ({self.lease_seconds:g}s) must be at least 3 s (renewed every third)")
        if self.visibility_timeout <= self.hard_time_limit:
            raise ConfigError(
                f"BROKER_VISIBILITY_TIMEOUT ({self.visibility_timeout:g}s) must exceed the task hard time "
                f"limit ({self.hard_time_limit:g}s), or running payments would be delivered twice"
            )
        if self.retention and self.retention < MIN_RETENTION:
            raise ConfigError(
                f"PAYMENTS_RETENTION ({self.retention:g}s) must be at least {MIN_RETENTION:g}s (or 0: off): a message "
                "delivered again after its record left Redis would be taken for a new operation"
            )
        if self.retention and self.key_retention < max(self.retention, MIN_KEY_RETENTION):
            raise ConfigError(
                f"PAYMENTS_KEY_RETENTION ({self.key_retention:g}s) must be at least PAYMENTS_RETENTION and "
                f"{MIN_KEY_RETENTION:g}s (stq's lookback): a key sent again after its record left Redis would be "
                "charged again"
            )
        if self.archive_batch < 1 or self.archive_per_sweep < 1:
            raise ConfigError("PAYMENTS_ARCHIVE_BATCH and PAYMENTS_ARCHIVE_PER_SWEEP must be at least 1")
        return self

    def _check_shapes(self) -> None:
        """Each setting on its own: the error names the variable and says what is expected."""
        error = _url_error("REDIS_URL", self.redis_url, ("redis", "rediss", "unix"))
        if error:
            raise ConfigError(error)
        positive = {"GATEWAY_CONNECT_TIMEOUT": self.connect_timeout, "GATEWAY_READ_TIMEOUT": self.read_timeout,
                    "SWEEP_INTERVAL": self.sweep_interval, "OUTAGE_BACKOFF_MAX": self.outage_backoff_max,
                    "WEBHOOK_DRAIN_INTERVAL": self.webhook_drain_interval}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} ({value:g}s) must be more than 0")
        if self.retry_attempts < 1:
            raise ConfigError(f"GATEWAY_RETRY_ATTEMPTS ({self.retry_attempts}) must be at least 1")
        if self.outage_retries < 0:
            raise ConfigError(f"OUTAGE_RETRIES ({self.outage_retries}) must be 0 or more")
        if self.flower_basic_auth and not all(
                user.strip() and password for user, _, password in
                (pair.partition(":") for pair in self.flower_basic_auth.split(","))):
            raise ConfigError("FLOWER_BASIC_AUTH must be user:password (comma-separated for several)")

    def _check_redis(self) -> None:
        """Sentinel and replica settings (worker/redis_connections.py uses them)."""
        try:
            sentinels = parse_sentinels(self.redis_sentinels)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if sentinels and not self.redis_master_name.strip():
            raise ConfigError("REDIS_MASTER_NAME must name the master the sentinels monitor")
        if self.min_replicas_ack < 0:
            raise ConfigError("REDIS_MIN_REPLICAS_ACK must be 0 or more")
        if self.min_replicas_ack and not 0 < self.replica_ack_timeout <= 60:
            raise ConfigError("REDIS_REPLICA_ACK_TIMEOUT must be more than 0 and at most 60 s")

    def _check_gateway(self) -> None:
        """BluePay's settings: their shape, and LIVE mode never with the sandbox's demo account or over plain HTTP."""
        if self.bluepay_mode not in ("TEST", "LIVE"):
            raise ConfigError(f"BLUEPAY_MODE: {self.bluepay_mode!r} must be TEST or LIVE")
        error = _url_error("BLUEPAY_URL", self.bluepay_url, ("https", "http")) or _hash_type_error(
            self.bluepay_hash_type)
        if error:
            raise ConfigError(error)
        if not re.fullmatch(r"[A-Za-z0-9]+", self.bluepay_account_id):
            raise ConfigError(f"BLUEPAY_ACCOUNT_ID: {self.bluepay_account_id!r} is not an account id (letters and "
                              "digits; BluePay's are 12 digits)")
        if self.bluepay_platform_merchant_id and not re.fullmatch(r"[A-Za-z0-9]{1,64}",
                                                                  self.bluepay_platform_merchant_id):
            raise ConfigError(f"BLUEPAY_PLATFORM_MERCHANT_ID: {self.bluepay_platform_merchant_id!r} is not a merchant "
                              "id (letters and digits)")
        if not self.bluepay_secret_key or self.bluepay_secret_key != self.bluepay_secret_key.strip() or any(
                c.isspace() for c in self.bluepay_secret_key):
            raise ConfigError("BLUEPAY_SECRET_KEY must not be empty nor hold spaces or line breaks (a pasted "
                              "newline makes every seal fail with SECURITY ERROR)")
        if self.bluepay_mode != "LIVE":
            return
        if self.bluepay_account_id == SANDBOX_ACCOUNT_ID or self.bluepay_secret_key == SANDBOX_SECRET_KEY:
            raise ConfigError("BLUEPAY_MODE=LIVE with the sandbox's demo BLUEPAY_ACCOUNT_ID / BLUEPAY_SECRET_KEY "
                              "(the defaults): set the merchant account's own")
        if not re.fullmatch(r"\d{12}", self.bluepay_account_id):
            raise ConfigError(f"BLUEPAY_ACCOUNT_ID: {self.bluepay_account_id!r} is not a 12-digit BluePay account id "
                              "(BLUEPAY_MODE=LIVE)")
        url = urlsplit(self.bluepay_url.strip())
        if url.scheme.lower() != "https" and url.hostname not in _LOOPBACK_HOSTS:
            raise ConfigError(f"BLUEPAY_URL: {self.bluepay_url!r} must be https:// in LIVE mode (card data travels "
                              "in the request)")

    def _check_guards(self) -> None:
        """The guard of every merchant account, and the BLUEPAY_ACCOUNTS accounts themselves."""
        try:
            self.guard.check()
            for account in self.accounts:
                account.guard.check()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for account in self.accounts:
            self._check_account(account)

    @property
    def merchant_names(self) -> tuple[str, ...]:
        """``default`` (the BLUEPAY_* account), then BLUEPAY_ACCOUNTS's names."""
        return (DEFAULT, *(a.name for a in self.accounts))

    def account(self, name: str = DEFAULT) -> MerchantAccount:
        """A merchant account by name (KeyError: none such)."""
        if name == DEFAULT:
            return MerchantAccount(DEFAULT, self.bluepay_account_id, self.bluepay_secret_key, self.bluepay_mode,
                                   self.bluepay_url, self.bluepay_hash_type, self.bluepay_platform_merchant_id,
                                   self.guard)
        for account in self.accounts:
            if account.name == name:
                return account
        raise KeyError(name)

    def _check_account(self, a: MerchantAccount) -> None:
        """A BLUEPAY_ACCOUNTS account, as :meth:`_check_gateway` checks the BLUEPAY_* one."""
        where = f"BLUEPAY_ACCOUNTS[{a.name!r}]"
        if a.mode not in ("TEST", "LIVE"):
            raise ConfigError(f"{where}.mode: {a.mode!r} must be TEST or LIVE")
        error = _url_error(f"{where}.url", a.url, ("https", "http")) or _hash_type_error(a.hash_type)
        if error:
            raise ConfigError(error)
        if not re.fullmatch(r"[A-Za-z0-9]+", a.account_id):
            raise ConfigError(f"{where}.account_id: {a.account_id!r} is not an account id (letters and digits)")
        if a.platform_merchant_id and not re.fullmatch(r"[A-Za-z0-9]{1,64}", a.platform_merchant_id):
            raise ConfigError(f"{where}.platform_merchant_id: {a.platform_merchant_id!r} is not a merchant id")
        if a.secret_key != a.secret_key.strip() or any(c.isspace() for c in a.secret_key):
            raise ConfigError(f"{where}.secret_key must not hold spaces or line breaks")
        if a.mode != "LIVE":
            return
        if a.account_id == SANDBOX_ACCOUNT_ID or a.secret_key == SANDBOX_SECRET_KEY or not re.fullmatch(
                r"\d{12}", a.account_id):
            raise ConfigError(f"{where}: LIVE mode needs the merchant's own 12-digit account id and secret")
        url = urlsplit(a.url.strip())
        if url.scheme.lower() != "https" and url.hostname not in _LOOPBACK_HOSTS:
            raise ConfigError(f"{where}.url must be https:// in LIVE mode (card data travels in the request)")

    def _check_submit_expiry(self) -> None:
        if self.submit_expiry < 60 or self.submit_expiry % 60:
            raise ConfigError(f"GATEWAY_SUBMIT_EXPIRY ({self.submit_expiry:g}s) must be a whole number of minutes, "
                              "at least 1 (BluePay's TRANS_EXPIRE_PERIOD is \"N MINUTES\")")
        if self.clock_skew_margin < 0:
            raise ConfigError(f"GATEWAY_CLOCK_SKEW_MARGIN ({self.clock_skew_margin:g}s) must be >= 0")
        one_attempt = self.connect_timeout + self.read_timeout
        if self.submit_expiry <= one_attempt + self.clock_skew_margin:
            raise ConfigError(
                f"GATEWAY_SUBMIT_EXPIRY ({self.submit_expiry:g}s) must exceed one attempt ({one_attempt:g}s) plus "
                f"GATEWAY_CLOCK_SKEW_MARGIN ({self.clock_skew_margin:g}s), or a gateway clock that far ahead would "
                "refuse every attempt as TRANSACTION TOO OLD")
        try:
            ZoneInfo(SUBMIT_TIME_ZONE)
        except Exception as exc:  # no time zone database: the stamps cannot be written in US Central time
            raise ConfigError(f"the America/Chicago time zone is needed for TRANS_SUBMIT_TIMESTAMP: {exc}") from None

    @classmethod
    def from_env(cls) -> Settings:
        d = cls()

        def dur(name: str, default: object) -> float:  # default: seconds, or a duration as text ("5m")
            return parse_duration(_env(name, str(default)), name=name)

        try:
            settings = cls(
                redis_url=_env("REDIS_URL", d.redis_url),
                redis_sentinels=_env("REDIS_SENTINELS", ""),
                redis_master_name=_env("REDIS_MASTER_NAME", d.redis_master_name),
                redis_sentinel_password=_env("REDIS_SENTINEL_PASSWORD", ""),
                redis_password=_env("REDIS_PASSWORD", ""),
                min_replicas_ack_setting=(_int("REDIS_MIN_REPLICAS_ACK", 0)
                                          if _env("REDIS_MIN_REPLICAS_ACK", "") else None),
                replica_ack_timeout=dur("REDIS_REPLICA_ACK_TIMEOUT", d.replica_ack_timeout),
                key_prefix=_env("PAYMENTS_KEY_PREFIX", d.key_prefix),
                bluepay_account_id=_env("BLUEPAY_ACCOUNT_ID", d.bluepay_account_id),
                bluepay_secret_key=_env("BLUEPAY_SECRET_KEY", d.bluepay_secret_key),
                bluepay_mode=_env("BLUEPAY_MODE", d.bluepay_mode).upper(),
                bluepay_url=_env("BLUEPAY_URL", d.bluepay_url),
                bluepay_hash_type=_env("BLUEPAY_HASH_TYPE", d.bluepay_hash_type).upper(),
                bluepay_platform_merchant_id=_env("BLUEPAY_PLATFORM_MERCHANT_ID", ""),
                card_key=_env("PAYMENTS_CARD_KEY", ""),
                connect_timeout=dur("GATEWAY_CONNECT_TIMEOUT", d.connect_timeout),
                read_timeout=dur("GATEWAY_READ_TIMEOUT", d.read_timeout),
                retry_attempts=_int("GATEWAY_RETRY_ATTEMPTS", d.retry_attempts),
                retry_seconds=dur("GATEWAY_RETRY_SECONDS", d.retry_seconds),
                outage_retries=_int("OUTAGE_RETRIES", d.outage_retries),
                outage_backoff=dur("OUTAGE_BACKOFF", d.outage_backoff),
                outage_backoff_max=dur("OUTAGE_BACKOFF_MAX", d.outage_backoff_max),
                visibility_timeout=dur("BROKER_VISIBILITY_TIMEOUT", d.visibility_timeout),
                stale_auth_age=dur("STALE_AUTH_AGE", d.stale_auth_age),
                avs_policy=parse_codes(_env("AVS_POLICY", ""), "AVS_POLICY"),
                enable_credit=_flag("PAYMENTS_ENABLE_CREDIT"),
                cvv2_policy=parse_codes(_env("CVV2_POLICY", ""), "CVV2_POLICY"),
                sweep_interval=dur("SWEEP_INTERVAL", d.sweep_interval),
                reconcile_after=dur("RECONCILE_AFTER", d.reconcile_after),
                reconcile_give_up=dur("RECONCILE_GIVE_UP", d.reconcile_give_up),
                commit_horizon_setting=(dur("GATEWAY_COMMIT_HORIZON", 0)
                                        if _env("GATEWAY_COMMIT_HORIZON", "") else None),
                lease_seconds=dur("LEASE_SECONDS", d.lease_seconds),
                submit_expiry=dur("GATEWAY_SUBMIT_EXPIRY", "3m"),
                clock_skew_margin=dur("GATEWAY_CLOCK_SKEW_MARGIN", "60s"),
                flower_basic_auth=_env("FLOWER_BASIC_AUTH", ""),
                reconcile_report_at=_env("RECONCILE_REPORT_AT", d.reconcile_report_at),
                worker_metrics_port=_int("WORKER_METRICS_PORT", 0),
                worker_metrics_addr=_env("WORKER_METRICS_ADDR", d.worker_metrics_addr),
                retention=dur("PAYMENTS_RETENTION", "30d"),
                key_retention_setting=(dur("PAYMENTS_KEY_RETENTION", 0)
                                       if _env("PAYMENTS_KEY_RETENTION", "") else None),
                data_dir=_env("PAYMENTS_DATA_DIR", d.data_dir),
                archive_url_setting=_env("PAYMENTS_ARCHIVE_URL", ""),
                archive_batch=_int("PAYMENTS_ARCHIVE_BATCH", d.archive_batch),
                archive_per_sweep=_int("PAYMENTS_ARCHIVE_PER_SWEEP", d.archive_per_sweep),
                result_expires=dur("RESULT_EXPIRES", "1d"),
                webhook_drain_interval=dur("WEBHOOK_DRAIN_INTERVAL", "1s"),
                guard=_guard_settings(dur),
            )
            settings = dataclasses.replace(settings, accounts=parse_accounts(
                _env("BLUEPAY_ACCOUNTS", ""), base=settings.account(DEFAULT),
                duration=lambda value, name: parse_duration(value if isinstance(value, int | float) else str(value),
                                                            name=name)))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return settings.check()


def parse_codes(text: str | None, name: str) -> frozenset[str]:
    """AVS_POLICY / CVV2_POLICY (worker/payments/policy.py): ``"N, A"`` or ``"NA"`` -> {"N", "A"}; "" -> no policy.
    One code is one letter, digit or ``_`` (BluePay's AVS codes A-Z and 1-8, CVV2 M N P S U, ``_`` in TEST)."""
    raw = (text or "").strip().upper()
    if not raw:
        return frozenset()
    parts = [p for p in re.split(r"[\s,]+", raw) if p]
    codes = list(parts[0]) if len(parts) == 1 else parts  # "NA" as AVS_ALLOWED writes it, or "N,A"
    bad = [c for c in codes if not re.fullmatch(r"[A-Z0-9_]", c)]
    if bad:
        raise ValueError(f"{name}: {bad[0]!r} is not a result code (one letter, digit or _ each; e.g. {name}=N,A)")
    return frozenset(codes)


def _guard_settings(dur: Callable[[str, object], float]) -> GuardSettings:
    """GATEWAY_RATE_LIMIT is every request's total: stq and the daily report take GATEWAY_STQ_RATE_LIMIT of it
    (default a fifth), a bucket of their own so reconciliation is never starved by a backlog of charges."""
    total = parse_rate(_env("GATEWAY_RATE_LIMIT", ""))
    look = parse_rate(_env("GATEWAY_STQ_RATE_LIMIT", ""), name="GATEWAY_STQ_RATE_LIMIT") if _env(
        "GATEWAY_STQ_RATE_LIMIT", "") else total / 5
    if total and look >= total:
        raise ValueError(f"GATEWAY_STQ_RATE_LIMIT ({look:g}/s) must be less than GATEWAY_RATE_LIMIT ({total:g}/s), "
                         "its share of it")
    return GuardSettings(rate=total - look if total else 0.0, look_rate=look, burst=_int("GATEWAY_RATE_BURST", 1),
                         breaker_failures=_int("GATEWAY_BREAKER_FAILURES", GuardSettings.breaker_failures),
                         cooldown=dur("GATEWAY_BREAKER_COOLDOWN", GuardSettings.cooldown),
                         recheck=dur("GATEWAY_BREAKER_RECHECK", GuardSettings.recheck),
                         max_wait=dur("GATEWAY_THROTTLE_WAIT", "0.5s"),
                         max_in_flight=_int("GATEWAY_MAX_IN_FLIGHT", 0),
                         busy_wait=dur("GATEWAY_BUSY_WAIT", "0.1s"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
