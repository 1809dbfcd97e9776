"""The baseline: the Celery worker a team would write in an afternoon, for the benchmark to beat.

    celery -A bench.baseline worker --pool gevent --concurrency 50

One bare Celery app and one task that sends a signed bp10emu SALE (HMAC_SHA512 seal computed
inline, docs/bluepay.md) through one pooled ``requests.Session`` per process and returns the gateway's
result fields. Nothing else: no results store, no idempotency claim, no card sealing, no
validation, no retries, no task events. Card data travels in clear: bench use only, TEST card.

Deliberately NOT handicapped: the result backend is Redis with ``result_backend_thread_safe=True``
(the default ``False`` opens one Redis connection per task under threads/gevent and roughly halves
throughput, docs/design.md), JSON serialisation like ours; everything else is Celery's default
(early acks, prefetch multiplier 4).

Environment (set by ``bench.run``): ``BENCH_REDIS_URL``, ``BENCH_BLUEPAY_URL`` (the base of the
interfaces, ending in ``/interfaces/``), ``BENCH_ACCOUNT_ID``, ``BENCH_SECRET_KEY``,
``BENCH_BASELINE_QUEUE``.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from urllib.parse import parse_qsl, urlsplit

import requests
from celery import Celery
from requests.adapters import HTTPAdapter

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
BLUEPAY_URL = os.environ.get("BENCH_BLUEPAY_URL", "http://127.0.0.1:8001/interfaces/")
ACCOUNT_ID = os.environ.get("BENCH_ACCOUNT_ID", "100000000001")
SECRET_KEY = os.environ.get("BENCH_SECRET_KEY", "SANDBOXSECRETKEY0000000000000000")
QUEUE = os.environ.get("BENCH_BASELINE_QUEUE", "bench-baseline")
TASK_NAME = "bench.baseline.sale"

app = Celery("bench_baseline", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_backend_thread_safe=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)

_session: requests.Session | None = None
_session_pid: int | None = None


def session() -> requests.Session:
    """One keep-alive session per process (prefork children build their own after the fork)."""
    global _session, _session_pid
    if _session is None or _session_pid != os.getpid():
        s = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=100, max_retries=0)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        _session, _session_pid = s, os.getpid()
    return _session


def seal(transaction_type: str, amount: str, mode: str = "TEST", rrno: str = "") -> str:
    # bp10emu: MERCHANT + TRANSACTION_TYPE + AMOUNT + REBILLING + REB_FIRST_DATE + REB_EXPR
    #          + REB_CYCLES + REB_AMOUNT + RRNO + MODE (rebilling fields sent empty)
    message = ACCOUNT_ID + transaction_type + amount + "" + "" + "" + "" + "" + rrno + mode
    return hmac.new(SECRET_KEY.encode(), message.encode(), hashlib.sha512).hexdigest()


@app.task(name=TASK_NAME)
def sale(amount, card, customer=None, order_id=None):
    customer = customer or {}
    data = {
        "MERCHANT": ACCOUNT_ID,
        "TRANSACTION_TYPE": "SALE",
        "PAYMENT_TYPE": "CREDIT",
        "MODE": "TEST",
        "AMOUNT": amount,
        "CC_NUM": card["number"],
        "CC_EXPIRES": card["expire"],
        "CVCCVV2": card.get("cvv2", ""),
        "NAME1": customer.get("name1", ""),
        "NAME2": customer.get("name2", ""),
        "ADDR1": customer.get("addr1", ""),
        "ADDR2": customer.get("addr2", ""),
        "CITY": customer.get("city", ""),
        "STATE": customer.get("state", ""),
        "ZIPCODE": customer.get("zipcode", ""),
        "COUNTRY": customer.get("country", ""),
        "ORDER_ID": order_id or "",
        "RESPONSEVERSION": "20",
        "TPS_HASH_TYPE": "HMAC_SHA512",
        "TAMPER_PROOF_SEAL": seal("SALE", amount),
    }
    # stream=False (the default): the body is read and the connection goes back to the pool.
    resp = session().post(BLUEPAY_URL + "bp10emu", data=data, allow_redirects=False, timeout=(3.05, 15))
    location = resp.headers.get("Location") or ""
    if location:
        return dict(parse_qsl(urlsplit(location).query))
    return dict(parse_qsl(resp.text))
