"""BluePayClient: the public verbs. Each verb validates and fills a payload (protocol.py),
one private ``_commit`` does the I/O through the transport wrapped in the retry policy,
and one parser interprets the reply. Declines are returned, not raised.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from typing import Any, Protocol, TypeVar, cast

from . import expiry, protocol, scrub, validation
from .errors import Expired, InvalidInput, Rejected
from .guarding import AnyGuard, verdict_of
from .observe import NULL_OBSERVER, GatewayObserver, error_class_of, result_of
from .protocol import Response
from .report import ByteStream, Report, ReportRow, StreamingTransport, report_request, start_report
from .retry import RetryPolicy, call_with_retry
from .seal import normalize_hash_type
from .tokens import StoredCredential
from .transport import HttpReply, HttpTransport

__all__ = ["BluePayClient", "Transport", "DEFAULT_BASE_URL"]

DEFAULT_BASE_URL = "https://secure.bluepay.com/interfaces/"
DEFAULT_RETRY_POLICY = RetryPolicy()
logger = logging.getLogger("payments.gateway")
#: what a reply parser gives: a Response, None (stq proved absence), or every row stq returned
_Parsed = TypeVar("_Parsed", Response, Response | None, list[Response])
#: The caller's check before each money-moving attempt: returns the Redis server time at which it found the
#: operation still its own (the attempt's TRANS_SUBMIT_TIMESTAMP) and the attempt's TRANS_EXPIRE_PERIOD in minutes,
#: or raises FenceLost (nothing is sent).
Fence = Callable[[], tuple[float, int]]
#: BluePay keeps its day in US Central time. A fixed UTC-6 (CST) is at most an hour off in summer (CDT), far inside
#: the day either side that :func:`gateway_window` adds.
GATEWAY_TZ = timezone(timedelta(hours=-6), "US Central (CST)")


def gateway_day(epoch_seconds: float) -> date:
    """The gateway's calendar day at a Unix time."""
    return datetime.fromtimestamp(epoch_seconds, GATEWAY_TZ).date()


def gateway_window(first: float, last: float) -> tuple[date, date]:
    """stq's REPORT_START_DATE and REPORT_END_DATE (exclusive) for a transaction made between Unix times ``first``
    and ``last`` (the attempt journal's Redis times, never this process's clock): from the gateway's day before
    ``first`` to the day after ``last``, both included, for clocks and time zones a day off."""
    return gateway_day(min(first, last)) - timedelta(days=1), gateway_day(max(first, last)) + timedelta(days=2)


class Transport(Protocol):
    def post(self, url: str, data: Mapping[str, str]) -> HttpReply: ...


class BluePayClient:
    def __init__(
        self,
        *,
        account_id: str,
        secret_key: str,
        mode: str = "TEST",
        base_url: str = DEFAULT_BASE_URL,
        hash_type: str = "HMAC_SHA512",
        transport: Transport | None = None,
        retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        connect_timeout: float = 3.05,
        read_timeout: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        today: Callable[[], date] = date.today,
        observer: GatewayObserver = NULL_OBSERVER,
        on_failure: Callable[[BaseException], None] | None = None,
        guard: AnyGuard | None = None,
        platform_merchant_id: str = "",
    ) -> None:
        if not isinstance(account_id, str) or not account_id.strip():
            raise InvalidInput("account_id", "required")
        if not isinstance(secret_key, str) or not secret_key:
            raise InvalidInput("secret_key", "required")
        mode_ = (mode or "").strip().upper()
        if mode_ not in protocol.MODES:
            raise InvalidInput("mode", "must be TEST or LIVE")
        scrub.register_secret(secret_key)
        self.account_id = account_id.strip()
        # a platform charging for a sub-merchant (C# library 3.0.8): sent, and sealed after the account id
        protocol.platform_fields(platform_merchant_id)  # InvalidInput now rather than on every request
        self.platform_merchant_id = platform_merchant_id
        self._secret_key = secret_key
        self.mode = mode_
        self.hash_type = normalize_hash_type(hash_type)
        base = base_url if base_url.endswith("/") else base_url + "/"
        self.base_url = base
        self.bp10emu_url = base + "bp10emu"
        self.stq_url = base + "stq"
        self.report_url = base + "bpdailyreport2"
        self.transport: Transport = transport or HttpTransport(
            connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self.retry_policy = retry_policy
        self._sleep = sleep
        self._clock = clock
        self._today = today
        self.observer = observer
        # told of every call that failed after its retries (worker/ops/preflight.py names a misconfiguration)
        self._on_failure = on_failure
        # shared by every worker (worker/guard/): asked before each HTTP attempt, told how it went
        self.guard = guard

    def __repr__(self) -> str:
        return f"BluePayClient(account_id={self.account_id!r}, mode={self.mode!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ verbs

    def sale(
        self,
        amount: Any,
        card: Any = None,
        customer: Mapping[str, Any] | None = None,
        order_id: str | None = None,
        duplicate_override: bool = False,
        invoice_id: str | None = None,
        fence: Fence | None = None,
        *,
        token: Any = None,
        customer_token: str | None = None,
        new_customer_token: str | None = None,
        stored: StoredCredential | None = None,
    ) -> Response:
        return self._transaction(
            "SALE", fence, amount=amount, card=card, customer=customer, order_id=order_id,
            duplicate_override=duplicate_override, invoice_id=invoice_id, token=token, customer_token=customer_token,
            new_customer_token=new_customer_token, stored=stored,
        )

    def auth(
        self,
        amount: Any,
        card: Any = None,
        customer: Mapping[str, Any] | None = None,
        order_id: str | None = None,
        duplicate_override: bool = False,
        invoice_id: str | None = None,
        fence: Fence | None = None,
        *,
        token: Any = None,
        customer_token: str | None = None,
        new_customer_token: str | None = None,
        stored: StoredCredential | None = None,
    ) -> Response:
        """AUTH; ``amount`` may be "0.00" (card verification, TEST: INFORMATION STORED)."""
        return self._transaction(
            "AUTH", fence, amount=amount, card=card, customer=customer, order_id=order_id,
            duplicate_override=duplicate_override, invoice_id=invoice_id, token=token, customer_token=customer_token,
            new_customer_token=new_customer_token, stored=stored,
        )

    def credit(self, amount: Any, card: Any, customer: Mapping[str, Any] | None = None, order_id: str | None = None,
               duplicate_override: bool = False, invoice_id: str | None = None,
               fence: Fence | None = None) -> Response:
        """CREDIT: money to ``card`` with no original transaction (BluePay_MESSAGE_values.txt: "Expiration date
        required for CREDIT", "Cannot REFUND a CREDIT"; ActiveMerchant's ``credit``: "an unmatched credit")."""
        return self._transaction("CREDIT", fence, amount=amount, card=card, customer=customer, order_id=order_id,
                                 duplicate_override=duplicate_override, invoice_id=invoice_id)

    def capture(self, trans_id: Any, amount: Any = None, order_id: str | None = None,
                fence: Fence | None = None) -> Response:
        return self._transaction("CAPTURE", fence, rrno=trans_id, amount=amount, order_id=order_id)

    def refund(self, trans_id: Any, amount: Any = None, order_id: str | None = None,
               fence: Fence | None = None) -> Response:
        return self._transaction("REFUND", fence, rrno=trans_id, amount=amount, order_id=order_id)

    def update(self, trans_id: Any, amount: Any, order_id: str | None = None, fence: Fence | None = None) -> Response:
        """UPDATE: the new amount of an unsettled transaction (BluePay's ``update(transaction_id, amount)``); the
        reply's id is the update's, which later voids and refunds name ("... the update instead")."""
        return self._transaction("UPDATE", fence, rrno=trans_id, amount=amount, order_id=order_id)

    def void(self, trans_id: Any, order_id: str | None = None, fence: Fence | None = None) -> Response:
        return self._transaction("VOID", fence, rrno=trans_id, order_id=order_id)

    def query(self, *, trans_id: Any = None, order_id: str | None = None, days_back: int = 30,
              between: tuple[float, float] | None = None) -> Response | None:
        """stq lookup by exactly one of ``trans_id`` / ``order_id``: the one transaction the rows prove
        (:func:`protocol.choose_query_row`: only rows answering the question asked; the approval if there is exactly
        one; OutcomeUnknown for two approvals or only others' rows), or None only when the gateway proves absence.
        Callers that weigh every row themselves use :meth:`query_all`.

        Window: ``between`` (Unix times: see :func:`gateway_window`); without it, today - days_back .. tomorrow + 1
        (end exclusive) by this process's calendar, which only a caller that knows no better may rely on.
        """
        rows = self.query_all(trans_id=trans_id, order_id=order_id, days_back=days_back, between=between)
        asked_id = validation.trans_id(trans_id) if trans_id is not None else None
        asked_order = validation.order_id(order_id) if order_id is not None else None
        return protocol.choose_query_row(rows, trans_id=asked_id, order_id=asked_order)

    def query_all(self, *, trans_id: Any = None, order_id: str | None = None, days_back: int = 30,
                  between: tuple[float, float] | None = None) -> list[Response]:
        """Every row stq returns (``[]``: provably absent), in its order. Same arguments as :meth:`query`."""
        if (trans_id is None) == (order_id is None):
            raise InvalidInput("query", "give exactly one of trans_id and order_id")
        start, end = self._window(days_back, between)
        fields = protocol.query_request(
            account_id=self.account_id,
            platform_merchant_id=self.platform_merchant_id,
            secret_key=self._secret_key,
            mode=self.mode,
            hash_type=self.hash_type,
            trans_id=trans_id,
            order_id=order_id,
            start=start,
            end=end,
        )
        secret = self._secret_key

        def parse(reply: HttpReply) -> list[Response]:
            return protocol.parse_query_rows(reply.status_code, reply.body, secret_key=secret)

        return self._commit("QUERY", self.stq_url, fields, parse, read_only=True, endpoint="stq")

    def _window(self, days_back: int, between: tuple[float, float] | None) -> tuple[date, date]:
        if between is not None:
            first, last = between
            if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (first, last)):
                raise InvalidInput("between", "must be two Unix times")
            return gateway_window(float(first), float(last))
        if isinstance(days_back, bool) or not isinstance(days_back, int) or days_back < 0:
            raise InvalidInput("days_back", "must be a non-negative int")
        today = self._today()
        return today - timedelta(days=days_back), today + timedelta(days=2)

    def report(self, start: date, end: date, settled: bool = False) -> Report:
        """The daily report (bpdailyreport2) of ``start`` .. ``end`` (exclusive: one day is D, D+1), by issue
        date, or by settlement date when ``settled``. Rows stream: a day of 100,000 rows is never held whole.

        The request and the header line go through the same retry policy as stq (read-only); a report whose
        header is refused raises :class:`MalformedReport`, a seal the gateway refuses :class:`Rejected`."""
        fields = report_request(account_id=self.account_id, platform_merchant_id=self.platform_merchant_id,
                                secret_key=self._secret_key, mode=self.mode,
                                hash_type=self.hash_type, start=start, end=end, settled=settled)
        transport = self.transport
        if not isinstance(transport, StreamingTransport):
            raise InvalidInput("transport", "the daily report needs a transport that streams (HttpTransport)")
        url = self.report_url

        def once() -> tuple[ByteStream, Iterator[ReportRow]]:
            with self._guarded("look"):
                stream = transport.stream(url, fields)
                return stream, start_report(stream)

        try:
            (stream, rows), attempts = call_with_retry(once, policy=self.retry_policy, read_only=True,
                                                       operation="REPORT", sleep=self._sleep, clock=self._clock)
        except Exception as exc:
            logger.info("gateway REPORT %s..%s failed: %s", start, end, type(exc).__name__)
            raise
        return Report(stream, rows, start=start, end=end, settled=settled, attempts=attempts)

    # ------------------------------------------------------------------ plumbing

    def _transaction(self, transaction_type: str, fence: Fence | None, **kwargs: Any) -> Response:
        """A money-moving bp10emu call. With a ``fence``, every attempt (the first and each retry) is preceded by
        it and carries TRANS_SUBMIT_TIMESTAMP (the fence's Redis time) + TRANS_EXPIRE_PERIOD, outside the seal
        (docs/bluepay.md): a stalled process cannot send a retry after losing its lease, and an attempt sent
        after any pause is refused by the gateway once expired (``Expired``: not saved, retried freshly
        stamped)."""
        fields = protocol.transaction_request(
            account_id=self.account_id,
            platform_merchant_id=self.platform_merchant_id,
            secret_key=self._secret_key,
            mode=self.mode,
            hash_type=self.hash_type,
            transaction_type=transaction_type,
            **kwargs,
        )
        secret = self._secret_key

        def parse(reply: HttpReply) -> Response:
            try:
                return protocol.parse_transaction_reply(
                    reply.status_code, reply.location, reply.body, secret_key=secret
                )
            except Rejected as exc:  # a verified reply (the parser checked BP_STAMP before raising Rejected)
                if fence is not None and exc.gateway_message.strip().upper() in expiry.TOO_OLD_MESSAGES:
                    raise Expired(f"gateway refused the attempt as {expiry.TOO_OLD} (not saved)") from None
                raise

        return self._commit(transaction_type, self.bp10emu_url, fields, parse, read_only=False, endpoint="bp10emu",
                            fields_now=None if fence is None else self._stamped(fields, fence))

    @contextmanager
    def _guarded(self, lane: str) -> Iterator[None]:
        """One HTTP attempt under the shared guard: admitted first (Held: nothing is sent, the fence not even asked),
        then told whether it proved the gateway up, down, or neither."""
        if self.guard is None:
            yield
            return
        ticket = self.guard.admit(lane)
        try:
            yield
        except BaseException as exc:
            self.guard.settle(ticket, verdict_of(exc))
            raise
        self.guard.settle(ticket, verdict_of(None))

    def _stamped(self, fields: Mapping[str, str], fence: Fence) -> Callable[[], Mapping[str, str]]:
        """Each attempt's fields: the fence runs first (FenceLost: nothing is sent); its Redis time is the stamp."""

        def now() -> Mapping[str, str]:
            return {**fields, **expiry.submit_fields(*fence())}

        return now

    def _commit(
        self,
        operation: str,
        url: str,
        fields: Mapping[str, str],
        parse: Callable[[HttpReply], _Parsed],
        *,
        read_only: bool,
        endpoint: str,
        fields_now: Callable[[], Mapping[str, str]] | None = None,
    ) -> _Parsed:
        """``fields_now``: the fields of each attempt, asked for just before it is sent (the fence and stamp)."""
        observer, clock = self.observer, self._clock

        def once() -> _Parsed:
            with self._guarded("look" if read_only else "pay"):
                attempt_fields = fields_now() if fields_now is not None else fields
                started = clock()
                try:
                    parsed = parse(self.transport.post(url, attempt_fields))
                except BaseException as exc:
                    observer.request(endpoint, result_of(exc=exc), clock() - started)
                    raise
                observer.request(endpoint, result_of(parsed), clock() - started)
                return parsed

        def retried(exc: BaseException) -> None:
            observer.retry(error_class_of(exc))

        try:
            result, attempts = call_with_retry(
                once,
                policy=self.retry_policy,
                read_only=read_only,
                operation=operation,
                sleep=self._sleep,
                clock=self._clock,
                on_retry=retried,
            )
        except Exception as exc:
            logger.info(
                "gateway %s order_id=%s failed: %s",
                operation, fields.get("ORDER_ID") or fields.get("order_id") or "-", type(exc).__name__,
            )
            if self._on_failure is not None:
                self._on_failure(exc)
            raise
        if isinstance(result, list):
            logger.info("gateway %s order_id=%s -> %d row(s) attempts=%d", operation,
                        fields.get("ORDER_ID") or fields.get("order_id") or "-", len(result), attempts)
            return cast(_Parsed, [dataclasses.replace(row, attempts=attempts) for row in result])
        elif result is not None:
            logger.info(
                "gateway %s order_id=%s -> %s %s trans_id=%s attempts=%d",
                operation, result.order_id or fields.get("ORDER_ID") or fields.get("order_id") or "-",
                result.status, result.message, result.trans_id, attempts,
            )
            result = dataclasses.replace(result, attempts=attempts)
        return result
