"""Fail fast on a misconfigured gateway: one sealed stq probe proves BLUEPAY_URL, the account, the secret and the
hash type before a worker takes a payment (and in ``payments status``).

The probe asks stq for an order id no operation can have (``preflight-`` + a random UUID): nothing is created at
the gateway, and any answer but a refusal proves the settings. Only *definite* misconfiguration answers count:

* HTTP 404: nothing serves the interfaces at BLUEPAY_URL (a path typo);
* ``SECURITY ERROR``: the gateway refused our seal (BLUEPAY_SECRET_KEY, BLUEPAY_ACCOUNT_ID or BLUEPAY_HASH_TYPE).

A gateway that cannot be reached (connection refused, DNS, a timeout, a 5xx) is an outage, not a mistake in the
settings: a worker starts anyway and says so in a warning (its payments wait as RETRYING; the sweep catches up).

During payments the same causes are logged at ERROR once per distinct cause per process
(:class:`MisconfigurationReporter`, the gateway client's ``on_failure`` in ``worker/services.py``): the worker log names
the setting instead of only "OutcomeUnknown" on every payment.
"""
from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass

from worker.config import DEFAULT, Settings
from worker.gateway import BluePayClient, GatewayError, OutcomeUnknown, Rejected, RetryPolicy

log = logging.getLogger("payments.preflight")

#: The longest the probe waits for the gateway (the worker's start must not hang on a black hole).
PROBE_TIMEOUT = 5.0
PROBE_ORDER_PREFIX = "preflight-"


@dataclass(frozen=True)
class Misconfiguration:
    """A definite misconfiguration answer: ``key`` (one per kind of cause) and the message naming the settings."""

    key: str
    message: str


@dataclass(frozen=True)
class ProbeResult:
    #: a definite misconfiguration (the worker must not start; ``payments status`` exits 1)
    misconfigured: Misconfiguration | None = None
    #: why the gateway could not tell now (outage, an unreadable answer): not a reason to refuse to start
    unreachable: str | None = None

    @property
    def ok(self) -> bool:
        return self.misconfigured is None and self.unreachable is None


def diagnose(exc: BaseException, settings: Settings, merchant: str = DEFAULT) -> Misconfiguration | None:
    """The misconfiguration a gateway error proves, naming the settings (of ``merchant``'s account: BLUEPAY_* for
    ``default``, BLUEPAY_ACCOUNTS's fields for another); None when it proves none."""
    if merchant != DEFAULT:
        return _diagnose_account(exc, settings, merchant)
    if isinstance(exc, OutcomeUnknown) and exc.status_code == 404:
        return Misconfiguration("http-404", (
            f"the gateway answered HTTP 404 at {settings.bluepay_url!r}: check BLUEPAY_URL (the base of BluePay's "
            "interfaces, e.g. https://secure.bluepay.com/interfaces/; bp10emu and stq are appended to it)"))
    if isinstance(exc, (Rejected, OutcomeUnknown)) and "SECURITY ERROR" in _gateway_text(exc).upper():
        return Misconfiguration("security-error", (
            f"the gateway answered SECURITY ERROR for account {settings.bluepay_account_id!r}: check "
            f"BLUEPAY_SECRET_KEY (and BLUEPAY_ACCOUNT_ID, BLUEPAY_PLATFORM_MERCHANT_ID, "
            f"BLUEPAY_HASH_TYPE={settings.bluepay_hash_type}, "
            f"BLUEPAY_MODE={settings.bluepay_mode}): the gateway could not verify our seal"))
    return None


def _diagnose_account(exc: BaseException, settings: Settings, merchant: str) -> Misconfiguration | None:
    account, where = settings.account(merchant), f"BLUEPAY_ACCOUNTS[{merchant!r}]"
    if isinstance(exc, OutcomeUnknown) and exc.status_code == 404:
        return Misconfiguration(f"http-404:{merchant}", (
            f"the gateway answered HTTP 404 at {account.url!r} (merchant {merchant}): check {where}.url"))
    if isinstance(exc, (Rejected, OutcomeUnknown)) and "SECURITY ERROR" in _gateway_text(exc).upper():
        return Misconfiguration(f"security-error:{merchant}", (
            f"the gateway answered SECURITY ERROR for account {account.account_id!r} (merchant {merchant}): check "
            f"{where}.secret_key (and .account_id, .platform_merchant_id, .hash_type={account.hash_type}, "
            f".mode={account.mode}): the gateway could not verify our seal"))
    return None


def _gateway_text(exc: BaseException) -> str:
    if isinstance(exc, Rejected):
        return exc.gateway_message or str(exc)
    return str(exc)


def probe(settings: Settings, *, timeout: float = PROBE_TIMEOUT, merchant: str = DEFAULT) -> ProbeResult:
    """One sealed stq query for an order id that cannot exist, one attempt, no retry, with ``merchant``'s account
    (``default``: the BLUEPAY_* one; another: BLUEPAY_ACCOUNTS's)."""
    account = settings.account(merchant)
    client = BluePayClient(
        account_id=account.account_id, secret_key=account.secret_key, mode=account.mode, base_url=account.url,
        hash_type=account.hash_type, platform_merchant_id=account.platform_merchant_id,
        connect_timeout=min(settings.connect_timeout, timeout), read_timeout=min(settings.read_timeout, timeout),
        retry_policy=RetryPolicy(max_attempts=1, max_seconds=0))
    try:
        client.query(order_id=f"{PROBE_ORDER_PREFIX}{uuid.uuid4().hex}", days_back=0)
    except GatewayError as exc:
        found = diagnose(exc, settings, merchant)
        if found is not None:
            return ProbeResult(misconfigured=found)
        return ProbeResult(unreachable=_reason(exc))
    finally:
        close = getattr(client.transport, "close", None)
        if close is not None:
            close()
    return ProbeResult()


def _reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause_name", "") or ""
    return f"{type(exc).__name__}: {cause or exc}"


class MisconfigurationReporter:
    """Logs each distinct misconfiguration cause at ERROR once per process (a forked child logs its own)."""

    def __init__(self, settings: Settings, merchant: str = DEFAULT) -> None:
        self.settings = settings
        self.merchant = merchant  # whose account's client this reporter hears (worker/merchants.py)
        self._seen: set[tuple[int, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, exc: BaseException) -> None:
        found = diagnose(exc, self.settings, self.merchant)
        if found is None:
            return
        seen = (os.getpid(), found.key)
        with self._lock:
            if seen in self._seen:
                return
            self._seen.add(seen)
        log.error("gateway misconfigured: %s (logged once per process; payments stay UNKNOWN or ERROR until it "
                  "is fixed)", found.message)


def check_at_start(settings: Settings, *, timeout: float = PROBE_TIMEOUT) -> str | None:
    """At worker start, for every merchant account (BLUEPAY_* and each of BLUEPAY_ACCOUNTS): refuse (SystemExit naming
    the setting) on a definite misconfiguration of any. On an outage, the warning to log (the caller logs it once the
    worker's logging is set up), else None."""
    unreachable: list[str] = []
    for merchant in (DEFAULT, *(account.name for account in settings.accounts)):
        result = probe(settings, timeout=timeout, merchant=merchant)
        if result.misconfigured is not None:
            # SystemExit, because Celery logs and swallows ordinary exceptions raised by signal handlers.
            raise SystemExit(f"payments: refusing to start: {result.misconfigured.message}")
        if result.unreachable is not None:
            unreachable.append(result.unreachable if merchant == DEFAULT else f"merchant {merchant}: "
                               f"{result.unreachable}")
    if unreachable:
        return (f"gateway not reachable at start ({'; '.join(unreachable)}): starting anyway (an outage, not a "
                "misconfiguration); payments wait as RETRYING until it answers, and the settings are proved by "
                "`payments status` once it does")
    return None


def log_start_warning(warning: str | None) -> None:
    if warning:
        log.warning("%s", warning)
