"""The payment flow: claim the operation, call the gateway, record the outcome, decide what follows.

Plain Python, no Celery: the tasks in ``tasks/`` are a few lines around these methods, and tests call
them directly with a store and a fake or real gateway.

Exactly-once rules (docs/design.md, "Payment state and exactly-once charging"):

* The operation id (``payment_id``) is sent as ``ORDER_ID`` and claimed in the store before any call. The
  claim binds the key to its request (:func:`request_fingerprints`): the same key with another request is
  an ``IdempotencyMismatch`` ERROR that touches neither the record nor the gateway.
* A final record is returned as it is: no gateway call.
* Every money-moving send is first noted in the attempt journal (the claim notes attempt 1 in the same round
  trip). Every attempt, each in-process retry included, is fenced just before it goes out: the lease is checked in
  Redis and the attempt is stamped with that Redis time (TRANS_SUBMIT_TIMESTAMP, expiring after
  ``expire_minutes``), so a holder stalled past its lease sends nothing more, and an attempt already past its
  check when the process froze is refused by the gateway (TRANSACTION TOO OLD) once a takeover could send.
  ``stq`` "absent" proves nothing until the commit horizon has passed since the last attempt that may have been
  sent (``sent_ts``; for a holder that stopped answering, when its last stamp expires at the gateway): before that
  the operation is parked ``UNKNOWN`` with a next-check time.
* Wherever the outcome is ambiguous (a lease taken over, ``UNKNOWN``, a message delivered before, an outcome
  unknown error, ``DUPLICATE``): stq by ORDER_ID; found -> adopt; absent past the horizon -> send again with
  the same ORDER_ID; otherwise -> ``UNKNOWN``.
* ``RETRYING`` only while no attempt may have been sent (the store enforces it).
* Only the lease holder writes; a delivery that cannot run while another holds the operation returns its
  own error without touching the record.
* One operation never runs past its wall-time budget: no gateway call starts once the budget is spent,
  and the lease is renewed (heartbeat) only until then.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NoReturn, Protocol

from worker.cards.numbers import is_card_like_identifier, keyed_ids
from worker.cards.vault import DEVELOPMENT_KEY
from worker.gateway import (
    Expired,
    FenceLost,
    Held,
    InvalidInput,
    NotSent,
    OutcomeUnknown,
    Rejected,
    Response,
    Throttled,
    expiry,
    validation,
)
from worker.gateway.tokens import StoredCredential
from worker.gateway.validation import Card, Money
from worker.merchants import DEFAULT as DEFAULT_MERCHANT
from worker.payments.leases import LeaseKeeper, new_owner, owner_is_dead
from worker.payments.policy import ChargePolicy
from worker.payments.record import PaymentRecord, decode, decode_or_none
from worker.payments.repeat import RepeatCharge
from worker.payments.requests import (
    ChargeOperation,
    ChargeRequest,
    Delivery,
    FollowUpOperation,
    PaymentRequest,
    Refusal,
    charge_request,
    follow_up_request,
)
from worker.payments.requests import short as _short
from worker.redis_connections import ReplicaAckTimeout
from worker.states import ABSENT, FOLLOW_UPS, NON_FINAL, Absent, CannotTell, Status
from worker.store import Claim, final_write, public_outcome, task_outcome
from worker.store.final_write import FinalWrite

log = logging.getLogger("payments.flow")

# How many times one delivery may send a money-moving request (first send + resends after a DUPLICATE
# that the gateway proved was not ours).
MAX_SENDS = 3
#: The claim's fence of attempt 1 stands for the attempt only if it goes out this soon after (seconds, this process's
#: monotonic clock): the lease the claim took is then certainly still held (no takeover before it lapses).
PREFENCE_FRESH = 1.0
ALREADY_VOIDED = "Already Voided"
SETTLED_REFUSAL = "cannot void a settled transaction"
#: The check before each money-moving attempt (the client calls it): (Redis time, TRANS_EXPIRE_PERIOD minutes).
Fence = Callable[[], tuple[float, int]]
#: a delivery of a message that never ran before (the sweep's own requests; tests)
FIRST_DELIVERY = Delivery()
_STQ_TYPE = {"sale": "SALE", "auth": "AUTH", "credit": "CREDIT", "capture": "CAPTURE", "refund": "REFUND",
             "void": "VOID", "update": "UPDATE"}


class Gateway(Protocol):
    """The verbs the flow uses: ``worker.gateway.BluePayClient`` and the test fakes satisfy it. ``fence``: called
    before each attempt of a money-moving call (the first and every retry); it returns the attempt's stamp (Redis
    time) and TRANS_EXPIRE_PERIOD (minutes), or raises FenceLost, and then nothing is sent."""

    def sale(self, amount: Money, card: Card, customer: Mapping[str, object] | None = None, order_id: str | None = None,
             duplicate_override: bool = False, invoice_id: str | None = None,
             fence: Fence | None = None) -> Response: ...

    def auth(self, amount: Money, card: Card, customer: Mapping[str, object] | None = None, order_id: str | None = None,
             duplicate_override: bool = False, invoice_id: str | None = None,
             fence: Fence | None = None) -> Response: ...

    def credit(self, amount: Money, card: Card, customer: Mapping[str, Any] | None = None, order_id: str | None = None,
               duplicate_override: bool = False, invoice_id: str | None = None,
               fence: Fence | None = None) -> Response: ...

    def capture(self, trans_id: str, amount: Money | None = None, order_id: str | None = None,
                fence: Fence | None = None) -> Response: ...

    def refund(self, trans_id: str, amount: Money | None = None, order_id: str | None = None,
               fence: Fence | None = None) -> Response: ...

    def update(self, trans_id: str, amount: Money | None, order_id: str | None = None,
               fence: Fence | None = None) -> Response: ...

    def void(self, trans_id: str, order_id: str | None = None, fence: Fence | None = None) -> Response: ...

    def query_all(self, *, trans_id: Any = None, order_id: str | None = None, days_back: int = 30,
                  between: tuple[float, float] | None = None) -> list[Response]: ...


class Store(Protocol):
    """What the flow needs of the results store: ``worker.store.ResultsStore`` (Redis + Lua) satisfies it (checked
    by mypy: tests/unit/test_flow.py)."""

    def now(self) -> float: ...

    def claim(self, payment_id: str, operation: str, *, fields: Mapping[str, object] | None = None,
              owner: str, lease_seconds: float, dead_owner: str = "", message_id: str = "",
              mode: str = "run", journal: bool | str = False, fingerprints: Iterable[str] = (),
              fence_for: float | None = None) -> Claim: ...

    def journal(self, payment_id: str, owner: str, lease_seconds: float) -> float | None: ...

    def fence(self, payment_id: str, owner: str, lease_seconds: float, accepted_for: float) -> float | None: ...

    def transition(self, payment_id: str, status: str, *, fields: Mapping[str, object] | None = None,
                   expect: Iterable[str] | str | None = None, owner: str | None = None, note: str = "",
                   sent: bool | None = None, check_in: float | None = None,
                   reflect: bool = False, then: FinalWrite | None = None) -> dict[str, object] | None: ...

    def renew(self, payment_id: str, owner: str, lease_seconds: float) -> bool: ...

    def reflect(self, payment_id: str) -> str: ...

    def get(self, payment_id: str) -> dict[str, object] | None: ...

    def find_by_trans_id(self, trans_id: str) -> dict[str, object] | None: ...

    def find_by_customer_token(self, name: str) -> dict[str, object] | None: ...

    def remember_customer_token(self, name: str, payment_id: str) -> None: ...


class FlowObserver(Protocol):
    """What the flow tells an observer (metrics, ``worker/ops/metrics.py``): outcomes it wrote, parkings, stq answers,
    deliveries holding an operation. Bounded words only: operation, status, result; the amount as a string."""

    def outcome(self, operation: str, status: str, amount: str) -> None: ...

    def parked(self, operation: str, status: str) -> None: ...

    def reconciliation(self, result: str) -> None: ...

    def in_flight(self, operation: str, delta: int) -> None: ...


class NullFlowObserver:
    def outcome(self, operation: str, status: str, amount: str) -> None:
        pass

    def parked(self, operation: str, status: str) -> None:
        pass

    def reconciliation(self, result: str) -> None:
        pass

    def in_flight(self, operation: str, delta: int) -> None:
        pass


class GatewayOutage(Exception):
    """The operation is parked (``parked_as``: RETRYING or UNKNOWN) and its task should be re-queued.

    ``check_in``: seconds until a look makes sense (the commit horizon); None: the task's outage backoff."""

    def __init__(self, reason: str, *, parked_as: str, check_in: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.parked_as = parked_as
        self.check_in = check_in


class GatewayThrottled(GatewayOutage):
    """The shared rate limit held the attempt back (nothing sent; parked RETRYING): re-queued after ``check_in``
    seconds, and never counted as an outage re-queue (the gateway is fine)."""


class ReplicasBehind(GatewayOutage):
    """Too few Redis replicas acknowledged the claim or the attempt journal in time (REDIS_MIN_REPLICAS_ACK): a
    failover could lose it after the gateway was called, so nothing was sent. Parked (RETRYING, or UNKNOWN when an
    earlier attempt may be out) and re-queued like a gateway outage."""


class LeaseBusy(Exception):
    """Another live worker holds the operation: look again after ``countdown`` seconds."""

    def __init__(self, reason: str, countdown: float):
        super().__init__(reason)
        self.reason = reason
        self.countdown = countdown


class _LeaseLost(Exception):
    """This delivery no longer holds the operation: whoever does owns the record now."""


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def response_fields(response: Response) -> dict[str, str]:
    fields = {
        "message": response.message or "",
        "trans_id": response.trans_id or "",
        "avs": response.avs or "",
        "cvv2": response.cvv2 or "",
        "auth_code": response.auth_code or "",
        "card_type": response.card_type or "",
        "bank_name": response.bank_name or "",
        "trans_type": response.trans_type or "",
    }
    if response.masked_account:
        fields["masked_account"] = response.masked_account
    for name in ("customer_token", "stored_id"):  # a repeat charge's (docs/tokens.md), when the reply has them
        if getattr(response, name):
            fields[name] = getattr(response, name)
    return fields


def status_of(response: Response) -> Status:
    if response.approved:
        return Status.APPROVED
    if response.status == "DECLINED":
        return Status.DECLINED
    return Status.ERROR


def interpret(operation: str, response: Response) -> tuple[Status, dict[str, str]]:
    """The recorded status and fields for a gateway answer to ``operation``."""
    fields = response_fields(response)
    status = status_of(response)
    message = response.message or ""
    if operation == "void" and status == Status.ERROR and message.startswith(ALREADY_VOIDED):
        # Our void (or an earlier delivery of it) already went through: the sale is voided.
        return Status.APPROVED, dict(fields, message=f"{ALREADY_VOIDED} (counted as done)")
    if operation == "void" and status == Status.ERROR and message.strip().lower().startswith(SETTLED_REFUSAL):
        return Status.ERROR, dict(fields, message=f"refund needed: the sale settled ({message})", refund_needed="1")
    return status, fields


def error_outcome(operation: str, payment_id: str, message: str, error_class: str, **extra: str) -> dict[str, object]:
    """An ERROR outcome for this delivery only: nothing is stored (the key belongs to another request, or
    another worker holds it)."""
    now = _iso_now()
    return public_outcome({"payment_id": payment_id, "operation": operation, "status": Status.ERROR,
                           "message": message, "order_id": payment_id, "error_class": error_class,
                           "created_at": now, "updated_at": now, **extra})


@dataclass
class _Run:
    """One delivery's hold on one operation."""

    operation: str
    payment_id: str
    owner: str
    send: Callable[[bool, Fence], Response]
    follow_up: bool
    deadline: float  # monotonic: no gateway call starts after this
    amount: str = ""  # the amount we asked for ("" for a void, or a capture/refund of the whole or the rest)
    created_ts: float = 0.0  # Redis time the record was created: no attempt of it is older (stq's window)
    masked_account: str = ""  # the card we charged (sale, auth)
    target: str = ""  # the trans id a follow-up refers to
    parent: str = ""  # the payment id of a follow-up's original, when known
    #: the claim fenced the first attempt: (its Redis stamp, this process's monotonic clock then); used once
    prefenced: tuple[float, float] | None = None


@dataclass
class PaymentFlow:
    store: Store
    gateway: Gateway
    card_keys: Sequence[str] = ()
    lease_seconds: float = 30.0
    commit_horizon: float = 60.0
    #: wall time one delivery may spend on an operation before it parks it (no call starts after that)
    operation_budget: float = 60.0
    #: the longest one gateway call (with its in-process retries) can take
    call_budget: float = 30.0
    keeper: LeaseKeeper | None = None
    clock: Callable[[], float] = field(default=time.monotonic)
    #: told of every outcome this process writes (each final outcome is written once, by one process)
    observer: FlowObserver = field(default_factory=NullFlowObserver)
    #: TRANS_EXPIRE_PERIOD of every attempt (GATEWAY_SUBMIT_EXPIRY, whole minutes)
    expire_minutes: int = 3
    #: how far the gateway's clock may lag Redis's (GATEWAY_CLOCK_SKEW_MARGIN): added to a stamp's expiry
    skew_margin: float = 60.0
    #: AVS_POLICY / CVV2_POLICY: approvals with these results are voided at once (worker/payments/policy.py)
    policy: ChargePolicy = field(default_factory=ChargePolicy)
    #: the merchant account this flow's gateway is (worker/merchants.py): records it writes carry it, and a key is
    #: bound to it (the same key under another merchant is an IdempotencyMismatch)
    merchant: str = DEFAULT_MERCHANT

    def __post_init__(self) -> None:
        if self.keeper is None:
            self.keeper = LeaseKeeper(self.store, self.lease_seconds)

    # ----------------------------------------------------------------- public operations
    def payment_id_for(self, key: str) -> str:
        """The operation id of an idempotency key: the key itself, but a card-like key's keyed id (``kh-`` + an
        HMAC under a key derived from ``PAYMENTS_CARD_KEY``, worker.cards.numbers.keyed_ids): the record's name, its
        ORDER_ID at the gateway and reconciliation's lookup, so the key is never kept or sent in clear. While keys
        rotate (several keys), a record made under an older key's id is found and kept: one GET per older key,
        only then and only for card-like keys; a UUID key costs nothing here."""
        if not is_card_like_identifier(key):
            return key
        ids = keyed_ids(key, self.card_keys or [DEVELOPMENT_KEY])
        for older in ids[1:]:
            if self.store.get(older) is not None:
                return older
        return ids[0]

    def charge(self, operation: ChargeOperation, payment_id: str, *, amount: object, card: object,
               customer: object = None, invoice_id: object = None, then_void: bool = False, message_id: str = "",
               redelivered: bool = False, shown_key: str | None = None,
               retry_failed: bool = False, repeat: RepeatCharge | None = None) -> dict[str, object]:
        """SALE or AUTH as given (:func:`worker.payments.requests.charge_request` checks it), then :meth:`submit`.
        ``card`` is the clear card dict (opened by the task just before).

        ``invoice_id``: the producer's ``order_id`` (str or int), in clear: sent as INVOICE_ID, recorded masked
        when card-like. ``message_id``: the broker message being run, whose outbox entry the claim removes.
        ``redelivered``: the message was delivered before (stq is asked before the first send). ``shown_key``: the
        masked idempotency key of a card-like key (recorded as ``idempotency_key``). ``retry_failed``: the
        producer's choice to run again a final ERROR of this key that provably charged nothing (not_charged, or
        refused as invalid input); the key stays bound to its request."""
        request = charge_request(operation, payment_id, amount=amount, card=card, customer=customer,
                                 invoice_id=invoice_id, then_void=then_void, shown_key=shown_key,
                                 card_keys=self.card_keys, repeat=repeat)
        return self.submit(request, Delivery(message_id, redelivered, retry_failed))

    def follow_up(self, operation: FollowUpOperation, payment_id: str, *, trans_id: object, amount: object = None,
                  parent: str | None = None, reason: str | None = None, message_id: str = "",
                  redelivered: bool = False, shown_key: str | None = None,
                  retry_failed: bool = False) -> dict[str, object]:
        """CAPTURE, REFUND or VOID of an earlier transaction ``trans_id`` (checked by
        :func:`worker.payments.requests.follow_up_request`), then :meth:`submit`; ``reason`` is kept on the record."""
        request = follow_up_request(operation, payment_id, trans_id=trans_id, amount=amount, parent=parent,
                                    reason=reason, shown_key=shown_key, card_keys=self.card_keys)
        return self.submit(request, Delivery(message_id, redelivered, retry_failed))

    def submit(self, request: PaymentRequest | Refusal, delivery: Delivery = FIRST_DELIVERY) -> dict[str, object]:
        """Run a checked request (built once at the task edge), or record its refusal."""
        if isinstance(request, Refusal):
            return self.refuse(request.operation, request.payment_id, request.message, fields=request.fields,
                               message_id=delivery.message_id, fingerprints=request.fingerprints)
        return self._run(request.operation, request.payment_id, self._merchant_fields(request.fields),
                         self._bound(request.fingerprints(self.card_keys)), self._sender(request),
                         delivery.message_id, delivery.redelivered, retry_failed=delivery.retry_failed)

    def _merchant_fields(self, fields: Mapping[str, object]) -> dict[str, object]:
        """A new record's fields, with its merchant account when it is not ``default`` (whose records are as ever)."""
        return dict(fields, merchant=self.merchant) if self.merchant != DEFAULT_MERCHANT else dict(fields)

    def _bound(self, fingerprints: Sequence[str]) -> list[str]:
        """Fingerprints binding a key to this merchant too (``default``: as ever, so existing keys still match)."""
        if self.merchant == DEFAULT_MERCHANT:
            return list(fingerprints)
        return [hashlib.sha256(f"{fp}|merchant={self.merchant}".encode()).hexdigest() for fp in fingerprints]

    def _sender(self, request: PaymentRequest) -> Callable[[bool, Fence], Response]:
        """The gateway verb of ``request``, called by name, with our ORDER_ID and the attempt's fence."""
        gateway, order_id = self.gateway, request.payment_id
        if isinstance(request, ChargeRequest):
            # Callable[..., Response]: a repeat charge also passes token/customer_token/stored (BluePayClient's
            # keywords, docs/tokens.md) and no card; the Gateway protocol keeps the card charge's shape for the fakes
            verb: Callable[..., Response] = {"auth": gateway.auth, "sale": gateway.sale,
                                             "credit": gateway.credit}[request.operation]
            charge = request

            repeat = self._repeat_arguments(charge)

            def send_charge(duplicate_override: bool, fence: Fence) -> Response:
                # the repeat-charge arguments only when there are some: a card charge calls the verb as before
                return verb(charge.amount, charge.card, charge.customer, order_id=order_id,
                            duplicate_override=duplicate_override, invoice_id=charge.invoice_id, fence=fence,
                            **repeat)

            return send_charge
        follow_up = request

        def send_follow_up(duplicate_override: bool, fence: Fence) -> Response:
            if follow_up.operation == "void":
                return gateway.void(follow_up.trans_id, order_id=order_id, fence=fence)
            verb = {"capture": gateway.capture, "refund": gateway.refund, "update": gateway.update}[follow_up.operation]
            return verb(follow_up.trans_id, follow_up.amount, order_id=order_id, fence=fence)

        return send_follow_up

    def _repeat_arguments(self, charge: ChargeRequest) -> dict[str, object]:
        """The gateway verb's repeat-charge arguments; a later charge by token carries the STORED_ID BluePay gave the
        transaction it names, a charge by customer token the one its card was stored with (their records, when this
        store has them: docs/tokens.md)."""
        kwargs = dict(charge.repeat.gateway_kwargs)
        stored, token, name = kwargs.get("stored"), kwargs.get("token"), kwargs.get("customer_token")
        later = isinstance(stored, StoredCredential) and stored.indicator == "S" and not stored.stored_id
        if later and isinstance(stored, StoredCredential) and (token or name):
            try:
                record = (self.store.find_by_trans_id(str(token)) if token
                          else self.store.find_by_customer_token(str(name)))
            except Exception as exc:  # a look only: without it the charge goes without STORED_ID
                log.warning("%s: stored id of its token not read: %s", charge.payment_id, type(exc).__name__)
                record = None
            stored_id = str((record or {}).get("stored_id") or "")
            if stored_id:
                kwargs["stored"] = dataclasses.replace(stored, stored_id=stored_id)
        return kwargs

    def void_after(self, sale_outcome: object, payment_id: str | None = None, *, message_id: str = "",
                   redelivered: bool = False) -> dict[str, object]:
        """The chain link: void a sale outcome only when it was approved, otherwise SKIPPED."""
        if not isinstance(sale_outcome, dict) or not sale_outcome.get("payment_id"):
            raise InvalidInput("sale_outcome", "void after a sale needs the sale's outcome dict")
        parent = str(sale_outcome["payment_id"])
        payment_id = payment_id or f"{parent}:void"
        current = self.store.get(parent) or sale_outcome
        sale = decode(current)
        status = sale.status
        if status == Status.VOIDED:
            return self.skip("void", payment_id, parent, f"sale {parent} is already voided", sale=current,
                             message_id=message_id)
        if status in NON_FINAL:
            return self.skip("void", payment_id, parent,
                             f"sale {parent} is {status}: not voided now; the sweep voids it if it was approved",
                             sale=current, message_id=message_id)
        if status != Status.APPROVED or not sale.trans_id:
            return self.skip("void", payment_id, parent, f"sale {parent} was {status}: nothing to void", sale=current,
                             message_id=message_id)
        return self.follow_up("void", payment_id, trans_id=sale.trans_id, parent=parent, message_id=message_id,
                              redelivered=redelivered)

    def skip(self, operation: str, payment_id: str, parent: str, reason: str, *,
             sale: dict[str, object] | None = None, message_id: str = "") -> dict[str, object]:
        fields: dict[str, object] = {"parent": parent, "order_id": payment_id}
        for key in ("masked_account", "card_type", "amount", "target"):
            if sale and sale.get(key):
                fields[key] = sale[key]
        owner = new_owner()
        claim = self.store.claim(payment_id, operation, fields=self._merchant_fields(fields), owner=owner,
                                 lease_seconds=self.lease_seconds, message_id=message_id, mode="create_only")
        if claim.kind == "exists" and decode(claim.record).status in NON_FINAL:
            claim = self._skip_left_open(payment_id, operation, owner, decode(claim.record))
        if claim.kind not in ("claimed", "resumed"):
            return task_outcome(claim.record)
        record = self.store.transition(payment_id, Status.SKIPPED, fields={"message": reason}, owner=owner,
                                       note=reason, sent=False)
        self._observe_outcome(operation, record)
        return task_outcome(record or self.store.get(payment_id))

    def _skip_left_open(self, payment_id: str, operation: str, owner: str, seen: PaymentRecord) -> Claim:
        """A skip's record left PENDING: an earlier delivery claimed it and died (or is still working) before writing
        SKIPPED. Taken over once its holder's lease lapsed or its process is known dead (else LeaseBusy: re-queued),
        and skipped, unless an attempt may have left under it: then only stq may settle it (UNKNOWN, the sweep)."""
        claim = self.store.claim(payment_id, operation, owner=owner, lease_seconds=self.lease_seconds,
                                 mode="reconcile", dead_owner=_holder_if_dead(seen))
        if claim.kind == "busy":
            remaining = (seen.lease_until or 0.0) - claim.now
            raise LeaseBusy(f"{payment_id} is being skipped by another worker",
                            countdown=max(0.5, min(remaining + 0.5, 10.0)))
        if claim.kind == "resumed" and decode(claim.record).sent_ts is not None:
            parked = self.store.transition(payment_id, Status.UNKNOWN, owner=owner, expect=(Status.PENDING,),
                                           sent=None, note="not skipped: an attempt may have been sent",
                                           fields={"message": "outcome unknown: an attempt may have been sent; "
                                                              "the sweep asks stq"})
            self._observe_parked(operation, parked)
            return dataclasses.replace(claim, kind="parked", record=parked or claim.record)
        return claim

    def refuse(self, operation: str, payment_id: str, message: str, *, fields: Mapping[str, object] | None = None,
               error_class: str = "InvalidInput", message_id: str = "",
               fingerprints: Sequence[str] = ()) -> dict[str, object]:
        """A delivery that cannot run (bad arguments, a encrypt that does not open): a final ERROR record when the
        operation has none; when it has one, this delivery's own ERROR, and the record is left alone.

        ``fingerprints`` (:func:`refusal_fingerprints`) bind the key to the refused request, as any claim does:
        a later, different request under it is an ``IdempotencyMismatch``, not this refusal."""
        owner = new_owner()
        claim = self.store.claim(payment_id, operation,
                                 fields=self._merchant_fields(dict(fields or {}, order_id=payment_id,
                                                                   error_class=error_class)),
                                 owner=owner, lease_seconds=self.lease_seconds, message_id=message_id,
                                 mode="create_only", fingerprints=self._bound(fingerprints))
        if claim.kind == "claimed":
            record = self.store.transition(payment_id, Status.ERROR, fields={"message": _short(message)},
                                           owner=owner, note=_short(message), sent=False)
            self._observe_outcome(operation, record)
            return task_outcome(record or self.store.get(payment_id))
        existing = decode(claim.record)
        if claim.kind == "exists" and existing.status == Status.ERROR and existing.error_class == error_class:
            return existing.outcome()  # this very refusal, delivered again
        return error_outcome(operation, payment_id, _short(message), error_class)

    def current_outcome(self, payment_id: str) -> dict[str, object]:
        record = self.store.get(payment_id)
        return task_outcome(record) if record else {"payment_id": payment_id, "status": Status.UNKNOWN.value}

    def give_up_retrying(self, operation: str, payment_id: str, reason: str) -> dict[str, object]:
        """Outage re-queues ran out. A provably unsent operation ends ERROR (``not_charged``); one that may have
        been sent stays UNKNOWN for the sweep (only stq may settle it)."""
        owner = new_owner()
        claim = self.store.claim(payment_id, operation, owner=owner, lease_seconds=self.lease_seconds,
                                 mode="reconcile")
        if claim.kind != "resumed":
            return task_outcome(claim.record) if claim.record else self.current_outcome(payment_id)
        if claim.previous_status == Status.RETRYING and decode(claim.record).sent_ts is None:
            done = self.store.transition(payment_id, Status.ERROR, owner=owner, sent=False, note=reason,
                                         fields={"message": _short(reason), "not_charged": "1"})
            self._observe_outcome(operation, done)
            return task_outcome(done or self.store.get(payment_id))
        parked = self.store.transition(payment_id, Status.UNKNOWN, owner=owner, note=reason,
                                       fields={"message": _short(f"{reason}; outcome unknown: the sweep asks stq")})
        self._observe_parked(operation, parked)
        return task_outcome(parked or self.store.get(payment_id))

    # ----------------------------------------------------------------- the engine
    def _run(self, operation: str, payment_id: str, fields: dict[str, object], fingerprints: list[str],
             send: Callable[[bool, Fence], Response], message_id: str, redelivered: bool, *,
             retry_failed: bool = False) -> dict[str, object]:
        owner = new_owner()
        claimed_at = self.clock()  # before the claim's Redis time: the fence's freshness is not overstated
        try:
            claim = self.store.claim(payment_id, operation, fields=fields, owner=owner,
                                     lease_seconds=self.lease_seconds, message_id=message_id,
                                     mode="retry_failed" if retry_failed else "run",
                                     fingerprints=fingerprints, journal="prior" if redelivered else True,
                                     dead_owner=self._dead_holder(payment_id) if redelivered else "",
                                     fence_for=self._fence_window())
            holder = decode(claim.record).lease_owner if claim.kind == "busy" else ""
            if holder and owner_is_dead(holder):
                claim = self.store.claim(payment_id, operation, fields=fields, owner=owner,
                                         lease_seconds=self.lease_seconds, fingerprints=fingerprints,
                                         dead_owner=holder)
        except ReplicaAckTimeout as exc:  # we hold the lease, but a failover could undo the claim: send nothing
            self._park(_Run(operation, payment_id, owner, send, operation in FOLLOW_UPS, deadline=0.0),
                       Status.RETRYING, f"not sent: {exc}", sent=False, outage=ReplicasBehind)
        held = decode(claim.record)
        if claim.kind == "mismatch":
            return error_outcome(operation, payment_id,
                                 f"idempotency key {payment_id!r} is already bound to another request "
                                 f"({held.operation}, amount {held.amount or '-'}); nothing was sent",
                                 "IdempotencyMismatch")
        if claim.kind == "final":
            return held.outcome()
        if claim.kind == "busy":
            remaining = (held.lease_until or 0.0) - claim.now
            raise LeaseBusy(f"{payment_id} is being processed by another worker",
                            countdown=max(0.5, min(remaining + 0.5, 10.0)))
        run = _run_of(operation, payment_id, owner, send, self.clock() + self.operation_budget,
                      decode({**fields, **claim.record}))
        run.prefenced = _prefence_of(claim, claimed_at)
        assert self.keeper is not None
        with _in_flight(self.observer, operation), \
                self.keeper.holding(payment_id, owner, run.deadline + self.call_budget):
            try:
                return self._drive(run, held, claim.now, journaled=claim.kind == "claimed" and not redelivered)
            except _LeaseLost:
                return self.current_outcome(payment_id)
            except (GatewayOutage, LeaseBusy):
                raise
            except BaseException as exc:
                # A time limit or a bug mid-operation: park it (UNKNOWN if an attempt may be out) for the
                # next delivery or the sweep, then let the task decide.
                try:
                    self.store.transition(payment_id, Status.RETRYING, owner=owner, sent=None,
                                          expect=(Status.PENDING,), note=f"interrupted: {type(exc).__name__}",
                                          fields={"message": f"interrupted ({type(exc).__name__}); reconciled later"})
                except Exception as park_exc:  # Redis away too: the lease lapses and the journal speaks
                    log.warning("%s: not parked after %s: %s", payment_id, type(exc).__name__,
                                type(park_exc).__name__)
                raise

    def _drive(self, run: _Run, record: PaymentRecord, now: float, *, journaled: bool) -> dict[str, object]:
        sent_ts = record.sent_ts
        if sent_ts is not None:
            # An attempt (ours earlier, or an earlier delivery's) may have reached the gateway.
            found = self._lookup(run, now)
            if isinstance(found, Response):
                return self._adopt(run, found)
            if isinstance(found, CannotTell):
                # held back by the guard (breaker open): look again when it lets us, not at the outage backoff, which
                # would spend every re-queue within one outage (held_for None: the backoff, as for a failed stq)
                self._park(run, Status.UNKNOWN, f"stq cannot tell yet ({found.reason})", sent=None,
                           check_in=found.held_for)
            wait = sent_ts + self.commit_horizon - now
            if wait > 0:
                self._park(run, Status.UNKNOWN, f"absent at the gateway, but an attempt may still commit for "
                                                f"{wait:.0f} s (commit horizon)", sent=None, check_in=wait + 1)
            # Absent, and every attempt that may have been sent is older than the horizon: never landed.
        return self._send(run, journaled=journaled, sent_before=sent_ts)

    def _send(self, run: _Run, *, journaled: bool, sent_before: float | None) -> dict[str, object]:
        duplicate_override = False
        for _ in range(MAX_SENDS):
            self._before_attempt(run, journaled=journaled)
            journaled = False
            try:
                response = run.send(duplicate_override, self._fence_for(run))
            except NotSent as exc:  # nothing was sent, or the gateway did not save it
                self._park_unsent(run, exc)
            except Rejected as exc:
                return self._answer(run, exc.response, error_class="Rejected")
            except OutcomeUnknown as exc:
                adopted = self._after_unknown(run, exc, sent_before)
                if adopted is not None:
                    return adopted
                duplicate_override = True  # a DUPLICATE of another operation: ours never landed
            else:
                return self._answer(run, response)
        self._park(run, Status.UNKNOWN, f"{MAX_SENDS} sends answered DUPLICATE", sent=False)
        raise AssertionError("unreachable")  # _park raises

    def _park_unsent(self, run: _Run, exc: NotSent) -> NoReturn:
        """RETRYING: the attempt provably left nothing at the gateway (re-queued; a throttle is no outage)."""
        if isinstance(exc, (FenceLost, Expired)):  # our fence stopped it, or the gateway refused it unsaved
            self._park(run, Status.RETRYING, f"not sent: {_short(exc, 120)}", sent=False)
        if isinstance(exc, Held):  # the shared guard (rate limit, breaker) held it back
            self._park(run, Status.RETRYING, f"not sent: {_short(exc, 120)}", sent=False, check_in=exc.retry_after,
                       outage=GatewayThrottled if isinstance(exc, Throttled) else GatewayOutage)
        self._park(run, Status.RETRYING, f"gateway not reached: {type(exc).__name__}", sent=False)

    def _before_attempt(self, run: _Run, *, journaled: bool) -> None:
        """Within the wall-time budget, and the attempt noted in the journal (the claim may have noted it)."""
        if self.clock() >= run.deadline:
            # Nothing was sent since the last journal entry (the claim's attempt 1, or none): provably unsent.
            self._park(run, Status.RETRYING, "wall-time budget spent before sending", sent=False)
        if not journaled:
            self._journal(run)

    def _journal(self, run: _Run) -> None:
        """Note the next attempt in the journal before it may leave (or park, or give the operation up)."""
        try:
            noted = self.store.journal(run.payment_id, run.owner, self.lease_seconds)
        except ReplicaAckTimeout as exc:  # a failover could undo the journal entry: send nothing
            self._park(run, Status.RETRYING, f"not sent: {exc}", sent=False, outage=ReplicasBehind)
        if noted is None:
            raise _LeaseLost()

    def _after_unknown(self, run: _Run, exc: OutcomeUnknown, sent_before: float | None) -> dict[str, object] | None:
        """An attempt whose outcome is unknown: stq's row of ours adopted, or the operation parked UNKNOWN (raises),
        or None: the gateway refused it as a DUPLICATE of another operation and ours never landed, so it is sent
        again with DUPLICATE_OVERRIDE."""
        refused = bool(getattr(exc, "duplicate", False))  # the gateway said it did not process this one
        now = self.store.now()
        found = self._lookup(run, now)
        if isinstance(found, Response):
            return self._adopt(run, found)
        if isinstance(found, CannotTell):
            self._park(run, Status.UNKNOWN, f"outcome unknown ({_short(exc, 120)}); stq cannot tell yet",
                       sent=not refused, check_in=found.held_for)  # held back by the guard: when it lets us
        if refused and (sent_before is None or now >= sent_before + self.commit_horizon):
            self.store.transition(run.payment_id, Status.PENDING, owner=run.owner, sent=False,
                                  expect=(Status.PENDING,), note="DUPLICATE of another operation; "
                                  "sending again with DUPLICATE_OVERRIDE")
            return None
        wait = self.commit_horizon if not refused else (sent_before or now) + self.commit_horizon - now
        self._park(run, Status.UNKNOWN, f"outcome unknown ({_short(exc, 120)}); absent at the gateway so "
                                        f"far: looked at again after the commit horizon",
                   sent=not refused, check_in=wait + 1)

    def _dead_holder(self, payment_id: str) -> str:
        """The holder of ``payment_id``'s unreported attempt when its process is known dead (this host, pid gone),
        else "". Asked only for a message delivered before (a worker died with it): a dead holder sends nothing
        later, so its takeover need not wait for its attempt's stamp to expire, only for the commit horizon."""
        try:
            return _dead(decode_or_none(self.store.get(payment_id)))
        except Exception as exc:  # a look only: without it the takeover waits for the stamp (the safe side)
            log.warning("%s: holder not looked at: %s", payment_id, type(exc).__name__)
            return ""

    def _fence_for(self, run: _Run) -> Fence:
        """The check the client runs before each attempt of ``run``: the Redis time of a live lease (the attempt's
        stamp), or FenceLost. The store keeps how long an attempt stamped then may be accepted (fence_until), which
        a takeover of an attempt that never reported waits out (claim.lua)."""
        window = self._fence_window()

        def fence() -> tuple[float, int]:
            now = self._prefenced(run)
            if now is None:
                now = self._fenced(run, window)
            longer = expiry.accepted_until(now, self.expire_minutes, self.skew_margin) - now
            if longer > window:  # a stamp in the hour repeated when daylight saving ends: the later reading counts
                self._fenced(run, longer)
            return now, self.expire_minutes

        return fence

    def _fence_window(self) -> float:
        """How long an attempt stamped now may be accepted by the gateway (fence_until = stamp + this)."""
        return self.expire_minutes * 60 + expiry.MINUTE + self.skew_margin

    def _prefenced(self, run: _Run) -> float | None:
        """The first attempt's stamp when the claim fenced it (same checks and fence_until as :meth:`_fenced`, one
        round trip fewer) and the attempt goes out right after: within PREFENCE_FRESH of the claim by this process's
        clock, well inside the lease it took. Later (the guard held it) or for any other attempt: None."""
        pre, run.prefenced = run.prefenced, None
        if pre is None or self.clock() - pre[1] >= min(PREFENCE_FRESH, self.lease_seconds / 2):
            return None
        return pre[0]

    def _fenced(self, run: _Run, accepted_for: float) -> float:
        try:
            now = self.store.fence(run.payment_id, run.owner, self.lease_seconds, accepted_for)
        except ReplicaAckTimeout as exc:  # a failover could lose fence_until: a takeover would not wait for it
            raise FenceLost(f"fence not replicated ({exc})") from None
        if now is None:
            raise FenceLost("lease lost before the attempt")
        return now

    def _answer(self, run: _Run, response: Response, **extra: str) -> dict[str, object]:
        """Record the gateway's answer to our request."""
        if run.operation == "void" and (response.message or "").startswith(ALREADY_VOIDED):
            # An earlier delivery of this very void may have gone through: record that VOID with its trans id.
            found = self._lookup(run, self.store.now())
            if isinstance(found, Response) and found.approved:
                return self._adopt(run, found)
        status, fields = interpret(run.operation, response)
        return self._finish(run, status, dict(fields, **extra, **_amount_taken(run, status, response)))

    def _adopt(self, run: _Run, found: Response) -> dict[str, object]:
        status, fields = interpret(run.operation, found)
        fields.update(_amount_taken(run, status, found))
        fields["reconciled"] = "stq"
        return self._finish(run, status, fields, note="adopted from stq")

    def _finish(self, run: _Run, status: Status, fields: Mapping[str, object], *,
                note: str = "") -> dict[str, object]:
        refused = (self.policy.refuses(str(fields.get("avs") or ""), str(fields.get("cvv2") or ""))
                   if run.operation in ("sale", "auth") and status == Status.APPROVED else "")
        if refused:
            return self._void_by_policy(run, fields, refused)
        # The task's final write: its Celery result and ack go in the same call (worker/store/final_write.py).
        record = self.store.transition(run.payment_id, status, fields=fields, expect=(Status.PENDING,),
                                       owner=run.owner, sent=True, reflect=run.follow_up,
                                       note=note or str(fields.get("message", "")), then=final_write.current())
        if record is None:  # someone else holds it now (lease lost): their record stands
            raise _LeaseLost()
        self._remember_stored_card(run, record)
        self._observe_outcome(run.operation, record)
        return task_outcome(record)

    def _remember_stored_card(self, run: _Run, record: Mapping[str, object]) -> None:
        """A card stored under a new customer token (approved, with a STORED_ID): noted for its later charges."""
        name, stored_id = str(record.get("customer_token") or ""), str(record.get("stored_id") or "")
        if not (name and stored_id and record.get("status") == Status.APPROVED.value and run.operation == "auth"):
            return
        try:
            self.store.remember_customer_token(name, run.payment_id)
        except Exception as exc:  # a look-up aid only (docs/tokens.md): never fails the recorded outcome
            log.warning("%s: customer token not noted: %s", run.payment_id, type(exc).__name__)

    def _void_by_policy(self, run: _Run, fields: Mapping[str, object], refused: str) -> dict[str, object]:
        """An approval the AVS/CVV2 policy does not accept (worker/payments/policy.py): recorded APPROVED with
        ``declined_by_policy`` and ``then_void`` (a sale the sweep voids if this process dies now; an auth, the
        stale-auth sweep), then voided at once as ``<payment_id>:void``. Neither write is the task's final one
        (its Celery result is the record after the void, stored by Celery as before)."""
        fields = dict(fields, declined_by_policy=refused, then_void="1")
        with final_write.finishing(None):
            record = self.store.transition(run.payment_id, Status.APPROVED, fields=fields, expect=(Status.PENDING,),
                                           owner=run.owner, sent=True, note=f"approved; declined by policy ({refused})")
            if record is None:
                raise _LeaseLost()
            self._observe_outcome(run.operation, record)
            try:
                self.follow_up("void", f"{run.payment_id}:void", trans_id=str(fields.get("trans_id") or ""),
                               parent=run.payment_id, reason=f"declined by policy: {refused}")
            except Exception as exc:  # the gateway away, a bug: the sweep voids it (then_void / stale auth)
                log.warning("%s: void by policy deferred to the sweep: %s", run.payment_id, type(exc).__name__)
        return task_outcome(self.store.get(run.payment_id) or record)

    def _park(self, run: _Run, status: Status, note: str, *, sent: bool | None,
              check_in: float | None = None, outage: type[GatewayOutage] = GatewayOutage) -> NoReturn:
        """Park the operation (RETRYING: known not sent; UNKNOWN: to reconcile) and re-queue the task."""
        record = self.store.transition(run.payment_id, status, expect=(Status.PENDING,), owner=run.owner,
                                       fields={"message": _short(note)}, note=note, sent=sent, check_in=check_in)
        if record is None:
            raise _LeaseLost()
        parked_as = decode(record).status or status
        self.observer.parked(run.operation, parked_as)
        raise outage(note, parked_as=parked_as, check_in=check_in)

    def _lookup(self, run: _Run, now: float) -> Response | Absent | CannotTell:
        """stq by ORDER_ID over the gateway days of this operation's attempts (the record's Redis times: its creation
        up to ``now``, never this process's calendar): the row that is provably ours, ABSENT (stq has no row at all,
        as of now), or CannotTell (stq failed; rows, none provably ours; or several approved rows of ours)."""
        try:
            # (a record without its creation time, which the claim always writes: the last 30 days by Redis time)
            rows = self.gateway.query_all(order_id=run.payment_id, between=(run.created_ts or now - 30 * 86400, now))
        except Held as exc:  # the shared guard sent nothing: not even a try
            log.info("reconcile %s: stq held back: %s", run.payment_id, type(exc).__name__)
            return CannotTell(type(exc).__name__, held_for=exc.retry_after)
        except Exception as exc:  # any failure of a read-only query means "cannot tell", never "absent"
            log.warning("reconcile %s: stq failed: %s", run.payment_id, type(exc).__name__)
            self.observer.reconciliation("cannot_tell")
            return CannotTell(type(exc).__name__)
        if not rows:
            self.observer.reconciliation("absent")
            return ABSENT
        found = self._ours(run, rows)
        self.observer.reconciliation("found" if isinstance(found, Response) else "cannot_tell")
        return found

    def _ours(self, run: _Run, rows: Sequence[Response]) -> Response | CannotTell:
        """The row to adopt among what stq returned. BluePay does not say how many rows stq returns (our sandbox: the
        newest), so every row is judged: rows that are not provably ours are never adopted; among ours, the approved
        one; two approved rows of ours are a human's to look at (a charge may have been made twice)."""
        expected = self._expected(run)
        ours, reasons = [], []
        for row in rows:
            reason = why_not_ours(row, expected)
            if reason is None:
                ours.append(row)
            else:
                reasons.append(reason)
        if not ours:
            log.warning("reconcile %s: stq returned %d row(s), none provably ours: %s", run.payment_id, len(rows),
                        "; ".join(reasons))
            return CannotTell(f"stq found no row provably ours ({_short(reasons[0], 120)})")
        approved = [row for row in ours if row.approved]
        if len(approved) > 1:
            log.error("reconcile %s: stq shows %d approved %s rows under this ORDER_ID (%s): check by hand",
                      run.payment_id, len(approved), expected.trans_types, ", ".join(r.trans_id for r in approved))
            return CannotTell(f"stq shows {len(approved)} approved rows under this ORDER_ID")
        return approved[0] if approved else ours[0]

    def _expected(self, run: _Run) -> Expected:
        """What a row of ours shows: our ORDER_ID and type, the amount we sent (or, without one, no more than the
        original's), the card's last four (ours, or the original's), the trans id a follow-up referred to."""
        types = frozenset({_STQ_TYPE[run.operation]} | ({"VOID"} if run.operation == "refund" else set()))
        if run.operation in ("sale", "auth", "credit"):
            return Expected(run.payment_id, types, amount=_money(run.amount), last_four=_last_four(run.masked_account))
        original = self._original(run)
        last_four = _last_four(original.masked_account) if original else ""
        if run.operation == "void" or run.amount:
            return Expected(run.payment_id, types, amount=_money(run.amount) if run.amount else None,
                            last_four=last_four, target=run.target)
        ceiling = original.amount_value if original else None
        return Expected(run.payment_id, types, at_most=ceiling, amount_required=True, last_four=last_four,
                        target=run.target)

    def _original(self, run: _Run) -> PaymentRecord | None:
        """The record a follow-up refers to, when this store knows it."""
        try:
            original = self.store.get(run.parent) if run.parent else None
            return decode_or_none(original or (self.store.find_by_trans_id(run.target) if run.target else None))
        except Exception as exc:  # without it, only the rules that need no original apply
            log.warning("reconcile %s: original not read: %s", run.payment_id, type(exc).__name__)
            return None

    # ----------------------------------------------------------------- the sweep's reconciliation
    def reconcile(self, record: Mapping[str, object], *, give_up_after: float, retry_base: float = 60.0) -> str:
        """The sweep's look at an operation left non-final: adopt, close as not charged, or wait.

        Returns what happened: adopted, not_charged, still_unknown, gave_up, or skipped (taken/final/not due).
        """
        seen = decode(record)
        payment_id, operation = seen.payment_id, seen.operation
        now = self.store.now()
        if (seen.next_check_ts or 0.0) > now:
            return "skipped"
        owner = new_owner()
        claim = self.store.claim(payment_id, operation, owner=owner, lease_seconds=self.lease_seconds,
                                 mode="reconcile", dead_owner=_dead(seen))
        if claim.kind != "resumed":
            return "skipped"
        current, now = decode(claim.record), claim.now
        run = _run_of(operation, payment_id, owner, _no_send, self.clock() + self.operation_budget, current)
        sent_ts = current.sent_ts
        assert self.keeper is not None
        with _in_flight(self.observer, operation), \
                self.keeper.holding(payment_id, owner, run.deadline + self.call_budget):
            found = self._lookup(run, now)
            try:
                if isinstance(found, Response):
                    self._adopt(run, found)
                    return "adopted"
                if isinstance(found, Absent) and (sent_ts is None or now >= sent_ts + self.commit_horizon):
                    self._finish(run, Status.ERROR, {"message": "not processed by the gateway: nothing was charged",
                                                     "not_charged": "1"})
                    return "not_charged"
                tries = current.reconcile_tries + 1
                age = now - (current.created_ts or now)
                if age >= give_up_after:
                    message = f"outcome still unknown after {age / 3600:.1f} h: check the gateway by hand"
                    log.error("reconcile %s: %s", payment_id, message)
                    self._finish(run, Status.ERROR, {"message": message, "needs_human": "1"})
                    return "gave_up"
                if isinstance(found, CannotTell) and found.held_for is not None:
                    # the guard held stq back (breaker open, rate limit): no try spent, look again once it lets us
                    parked = self.store.transition(payment_id, Status.UNKNOWN, owner=owner, expect=(Status.PENDING,),
                                                   sent=None, check_in=found.held_for + 1.0,
                                                   note=f"outcome unknown; stq held back ({found.reason})",
                                                   fields={"message": "outcome unknown; the gateway is unavailable "
                                                                      "(circuit breaker) or busy (rate limit)"})
                    self._observe_parked(operation, parked)
                    return "still_unknown"
                delay = min(retry_base * 2 ** (tries - 1), 3600.0)
                if isinstance(found, Absent) and sent_ts is not None:
                    delay = min(delay, sent_ts + self.commit_horizon - now + 1)
                parked = self.store.transition(payment_id, Status.UNKNOWN, owner=owner, expect=(Status.PENDING,),
                                               sent=None, check_in=delay,
                                               note="outcome unknown; the gateway could not tell yet",
                                               fields={"message": "outcome unknown; the gateway could not tell yet",
                                                       "reconcile_tries": str(tries)})
                self._observe_parked(operation, parked)
                return "still_unknown"
            except _LeaseLost:
                return "skipped"

    def _observe_outcome(self, operation: str, record: Mapping[str, object] | None) -> None:
        if record is not None:
            written = decode(record)
            self.observer.outcome(operation, written.status or "", written.amount)

    def _observe_parked(self, operation: str, record: Mapping[str, object] | None) -> None:
        if record is not None:
            self.observer.parked(operation, decode(record).status or "")

    def repair(self, payment_id: str) -> str:
        """Reflect an APPROVED follow-up on its original if a crash left that undone (the sweep)."""
        return self.store.reflect(payment_id)


@dataclass(frozen=True)
class Expected:
    """What an stq row must show to be provably ours (:func:`why_not_ours`)."""

    order_id: str
    trans_types: frozenset[str]
    amount: Decimal | None = None  # exactly this amount (we sent it)
    at_most: Decimal | None = None  # an amount-less capture/refund: no more than its original
    amount_required: bool = False  # some positive amount (an amount-less capture/refund)
    last_four: str = ""  # the card's last four, when known
    target: str = ""  # the trans id a follow-up referred to (compared with the row's master_id/origin)


def why_not_ours(row: Response, expected: Expected) -> str | None:
    """Why an stq row is not provably ours, or None when it is: exact ORDER_ID, transaction type, amount, card last
    four (when both sides know it), the original a follow-up referred to (when the row names it)."""
    if row.order_id != expected.order_id:
        return "its ORDER_ID is another" if row.order_id else "it shows no ORDER_ID"
    trans_type = (row.trans_type or "").upper()
    if trans_type not in expected.trans_types:
        return f"it is a {_short(trans_type, 16)}" if trans_type else "it shows no transaction type"
    amount = _money(row.amount)
    if expected.amount is not None and amount != expected.amount:
        return f"its amount {_short(row.amount, 16)!r} is not ours"
    if expected.amount_required and (amount is None or amount <= 0):
        return "it shows no amount"
    if expected.at_most is not None and amount is not None and amount > expected.at_most:
        return "its amount is more than the original's"
    row_four = _last_four(row.masked_account)
    if expected.last_four and row_four and row_four != expected.last_four:
        return "it is another card"
    origin = (row.raw.get("master_id") or row.raw.get("origin") or "").strip()
    if expected.target and origin and origin != expected.target:
        return "it refers to another transaction"
    return None


def _money(text: str) -> Decimal | None:
    try:
        return Decimal(validation.amount(text, allow_zero=True))
    except InvalidInput:
        return None


def _last_four(masked: str) -> str:
    digits = re.sub(r"\D", "", masked or "")
    return digits[-4:] if len(digits) >= 4 else ""


def _run_of(operation: str, payment_id: str, owner: str, send: Callable[[bool, Fence], Response], deadline: float,
            record: PaymentRecord) -> _Run:
    """One delivery's run of the operation whose record (or claim fields) is ``record``."""
    return _Run(operation, payment_id, owner, send, operation in FOLLOW_UPS, deadline=deadline,
                amount=record.amount, created_ts=record.created_ts or 0.0, masked_account=record.masked_account,
                target=record.target, parent=record.parent)


def _prefence_of(claim: Claim, claimed_at: float) -> tuple[float, float] | None:
    """A new record's claim that fenced its first attempt: (the stamp, the monotonic clock before the claim)."""
    return (claim.fenced_at, claimed_at) if claim.kind == "claimed" and claim.fenced_at is not None else None


def _amount_taken(run: _Run, status: Status, answer: Response) -> dict[str, str]:
    """A capture or refund sent without an amount took what the gateway says it took (the AMOUNT of its reply or of
    the stq row): recorded as the operation's amount, which is what its original counts. The store's own figure
    (the total minus what it has counted) is only the fallback for an answer without a usable AMOUNT: refunds
    recorded in another order than the gateway processed them would otherwise count more than was charged."""
    if run.operation not in ("capture", "refund") or run.amount or status != Status.APPROVED:
        return {}
    try:
        return {"amount": validation.amount(answer.amount)}
    except InvalidInput:
        return {}


def _holder_if_dead(record: PaymentRecord) -> str:
    """``record``'s lease holder if its process is known dead (this host, pid gone), in flight or not, else ""."""
    holder = record.lease_owner
    return holder if holder and owner_is_dead(holder) else ""


def _dead(record: PaymentRecord | None) -> str:
    """``record``'s lease holder if it left an attempt in flight and its process is known dead, else ""."""
    holder = record.lease_owner if record is not None else ""
    return holder if record is not None and record.in_flight and holder and owner_is_dead(holder) else ""


@contextmanager
def _in_flight(observer: FlowObserver, operation: str) -> Iterator[None]:
    """One delivery (or sweep) holding ``operation``: +1 now, -1 however the block ends."""
    observer.in_flight(operation, 1)
    try:
        yield
    finally:
        observer.in_flight(operation, -1)


def _no_send(duplicate_override: bool, fence: Fence) -> Response:
    raise AssertionError("the sweep's reconciliation never sends")
