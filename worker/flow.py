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

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

from worker.carddata import card_fingerprints, mask_number
from worker.gateway import (
    Expired,
    FenceLost,
    InvalidInput,
    NotSent,
    OutcomeUnknown,
    Rejected,
    Response,
    expiry,
    validation,
)
from worker.gateway.scrub import scrub
from worker.leases import LeaseKeeper, new_owner, owner_is_dead
from worker.redis_connections import ReplicaAckTimeout
from worker.states import ABSENT, FOLLOW_UPS, NON_FINAL, Absent, CannotTell, Status
from worker.store import Claim, public_outcome, task_outcome

log = logging.getLogger("payments.flow")

# How many times one delivery may send a money-moving request (first send + resends after a DUPLICATE
# that the gateway proved was not ours).
MAX_SENDS = 3
TRANS_ID = re.compile(r"\d{12}")
ALREADY_VOIDED = "Already Voided"
SETTLED_REFUSAL = "cannot void a settled transaction"
#: The check before each money-moving attempt (the client calls it): (Redis time, TRANS_EXPIRE_PERIOD minutes).
Fence = Callable[[], tuple[float, int]]
_STQ_TYPE = {"sale": "SALE", "auth": "AUTH", "capture": "CAPTURE", "refund": "REFUND", "void": "VOID"}


class Gateway(Protocol):
    """The verbs the flow uses: ``worker.gateway.BluePayClient`` and the test fakes satisfy it. ``fence``: called
    before each attempt of a money-moving call (the first and every retry); it returns the attempt's stamp (Redis
    time) and TRANS_EXPIRE_PERIOD (minutes), or raises FenceLost, and then nothing is sent."""

    def sale(self, amount: str, card: Any, customer: Mapping[str, Any] | None = None, order_id: str | None = None,
             duplicate_override: bool = False, invoice_id: str | None = None,
             fence: Fence | None = None) -> Response: ...

    def auth(self, amount: str, card: Any, customer: Mapping[str, Any] | None = None, order_id: str | None = None,
             duplicate_override: bool = False, invoice_id: str | None = None,
             fence: Fence | None = None) -> Response: ...

    def capture(self, trans_id: str, amount: str | None = None, order_id: str | None = None,
                fence: Fence | None = None) -> Response: ...

    def refund(self, trans_id: str, amount: str | None = None, order_id: str | None = None,
               fence: Fence | None = None) -> Response: ...

    def void(self, trans_id: str, order_id: str | None = None, fence: Fence | None = None) -> Response: ...

    def query(self, *, trans_id: Any = None, order_id: str | None = None, days_back: int = 30) -> Response | None: ...


class Store(Protocol):
    """What the flow needs of the results store: ``worker.store.ResultsStore`` (Redis + Lua) and the in-memory
    fake the unit tests use (tests/support/fake_store.py) both satisfy it (checked by mypy)."""

    def now(self) -> float: ...

    def claim(self, payment_id: str, operation: str, *, fields: Mapping[str, Any] | None = None,
              owner: str, lease_seconds: float, dead_owner: str = "", message_id: str = "",
              mode: str = "run", journal: bool | str = False, fingerprints: Iterable[str] = ()) -> Claim: ...

    def journal(self, payment_id: str, owner: str, lease_seconds: float) -> float | None: ...

    def fence(self, payment_id: str, owner: str, lease_seconds: float, accepted_for: float) -> float | None: ...

    def transition(self, payment_id: str, status: str, *, fields: Mapping[str, Any] | None = None,
                   expect: Iterable[str] | str | None = None, owner: str | None = None, note: str = "",
                   sent: bool | None = None, check_in: float | None = None,
                   reflect: bool = False) -> dict[str, Any] | None: ...

    def renew(self, payment_id: str, owner: str, lease_seconds: float) -> bool: ...

    def reflect(self, payment_id: str) -> str: ...

    def get(self, payment_id: str) -> dict[str, Any] | None: ...


class FlowObserver(Protocol):
    """What the flow tells an observer (metrics, ``worker/metrics.py``): outcomes it wrote, parkings, stq answers,
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


def _short(text: object, limit: int = 200) -> str:
    """What we record of a caller's value: scrubbed of anything card-like, and bounded."""
    cleaned = scrub(str(text))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_fingerprints(operation: str, *, amount: str | None, target: str = "", card_number: str | None = None,
                         card_keys: Sequence[str] = ()) -> list[str]:
    """What an idempotency key is bound to: operation, amount, target trans id and a keyed hash of the card
    number (never the number), one fingerprint per card key (the first is stored; the others still match a
    record stored before a key rotation)."""
    card_parts = card_fingerprints(card_number, card_keys) if card_number else [""]
    return [hashlib.sha256(f"v1|{operation}|{amount or ''}|{target}|{part}".encode()).hexdigest()
            for part in card_parts]


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


def error_outcome(operation: str, payment_id: str, message: str, error_class: str, **extra: str) -> dict[str, Any]:
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

    def __post_init__(self) -> None:
        if self.keeper is None:
            self.keeper = LeaseKeeper(self.store, self.lease_seconds)

    # ----------------------------------------------------------------- public operations
    def charge(self, operation: str, payment_id: str, *, amount: Any, card: Any, customer: Any = None,
               invoice_id: Any = None, then_void: bool = False, message_id: str = "",
               redelivered: bool = False) -> dict[str, Any]:
        """SALE or AUTH. ``card`` is the clear card dict (opened by the task just before).

        ``message_id``: the broker message being run, whose outbox entry the claim removes.
        ``redelivered``: the message was delivered before (stq is asked before the first send)."""
        number = card.get("number") if isinstance(card, dict) else None
        if isinstance(invoice_id, int) and not isinstance(invoice_id, bool):
            # An explicitly numeric order id (carddata: an int is never a card number) goes to the gateway whole;
            # the record keeps it masked when its digits look like a card (no scanner could tell them apart).
            invoice_id = str(invoice_id)
        fields: dict[str, Any] = {
            "amount": _short(amount, 32) if amount is not None else "",
            "order_id": payment_id,
            "masked_account": mask_number(str(number)) if number else "",
        }
        if invoice_id is not None:
            fields["invoice_id"] = _short(invoice_id, 64)
        if then_void:
            fields["then_void"] = "1"
        try:
            checked_card = validation.card(card)
            checked_amount = validation.amount(amount, allow_zero=(operation == "auth"))
            checked_customer = validation.customer(customer)
            checked_invoice = validation.invoice_id(invoice_id) if invoice_id is not None else None
        except InvalidInput as exc:
            return self.refuse(operation, payment_id, f"invalid input: {exc}", fields=fields, message_id=message_id)
        fields["amount"] = checked_amount
        fingerprints = request_fingerprints(operation, amount=checked_amount, card_number=checked_card.number,
                                            card_keys=self.card_keys)
        verb: Callable[..., Response] = getattr(self.gateway, operation)  # Gateway.sale or Gateway.auth

        def send(duplicate_override: bool, fence: Fence) -> Response:
            return verb(checked_amount, checked_card, checked_customer, order_id=payment_id,
                        duplicate_override=duplicate_override, invoice_id=checked_invoice, fence=fence)

        return self._run(operation, payment_id, fields, fingerprints, send, message_id, redelivered)

    def follow_up(self, operation: str, payment_id: str, *, trans_id: Any, amount: Any = None,
                  parent: str | None = None, reason: str | None = None, message_id: str = "",
                  redelivered: bool = False) -> dict[str, Any]:
        """CAPTURE, REFUND or VOID of an earlier transaction ``trans_id``; ``reason`` is kept on the record."""
        target = trans_id if isinstance(trans_id, str) and TRANS_ID.fullmatch(trans_id) else _short(trans_id, 32)
        fields: dict[str, Any] = {"target": target, "order_id": payment_id}
        if amount is not None:
            fields["amount"] = _short(amount, 32)
        if parent:
            fields["parent"] = parent
        if reason:
            fields["reason"] = _short(reason)
        try:
            checked_id = validation.trans_id(trans_id)
            checked_amount = None
            if operation != "void" and amount is not None:
                checked_amount = validation.amount(amount)
        except InvalidInput as exc:
            return self.refuse(operation, payment_id, f"invalid input: {exc}", fields=fields, message_id=message_id)
        if checked_amount is not None:
            fields["amount"] = checked_amount
        fingerprints = request_fingerprints(operation, amount=checked_amount, target=checked_id)
        verb: Callable[..., Response] = getattr(self.gateway, operation)  # Gateway.capture, .refund or .void

        def send(duplicate_override: bool, fence: Fence) -> Response:
            if operation == "void":
                return verb(checked_id, order_id=payment_id, fence=fence)
            return verb(checked_id, checked_amount, order_id=payment_id, fence=fence)

        return self._run(operation, payment_id, fields, fingerprints, send, message_id, redelivered)

    def void_after(self, sale_outcome: Any, payment_id: str | None = None, *, message_id: str = "",
                   redelivered: bool = False) -> dict[str, Any]:
        """The chain link: void a sale outcome only when it was approved, otherwise SKIPPED."""
        if not isinstance(sale_outcome, dict) or not sale_outcome.get("payment_id"):
            raise InvalidInput("sale_outcome", "void after a sale needs the sale's outcome dict")
        parent = str(sale_outcome["payment_id"])
        payment_id = payment_id or f"{parent}:void"
        current = self.store.get(parent) or sale_outcome
        status = current.get("status")
        if status == Status.VOIDED:
            return self.skip("void", payment_id, parent, f"sale {parent} is already voided", sale=current,
                             message_id=message_id)
        if status in NON_FINAL:
            return self.skip("void", payment_id, parent,
                             f"sale {parent} is {status}: not voided now; the sweep voids it if it was approved",
                             sale=current, message_id=message_id)
        if status != Status.APPROVED or not current.get("trans_id"):
            return self.skip("void", payment_id, parent, f"sale {parent} was {status}: nothing to void", sale=current,
                             message_id=message_id)
        return self.follow_up("void", payment_id, trans_id=current["trans_id"], parent=parent, message_id=message_id,
                              redelivered=redelivered)

    def skip(self, operation: str, payment_id: str, parent: str, reason: str, *,
             sale: dict[str, Any] | None = None, message_id: str = "") -> dict[str, Any]:
        fields = {"parent": parent, "order_id": payment_id}
        for key in ("masked_account", "card_type", "amount", "target"):
            if sale and sale.get(key):
                fields[key] = sale[key]
        owner = new_owner()
        claim = self.store.claim(payment_id, operation, fields=fields, owner=owner, lease_seconds=self.lease_seconds,
                                 message_id=message_id, mode="create_only")
        if claim.kind != "claimed":
            return task_outcome(claim.record)
        record = self.store.transition(payment_id, Status.SKIPPED, fields={"message": reason}, owner=owner,
                                       note=reason, sent=False)
        self._observe_outcome(operation, record)
        return task_outcome(record or self.store.get(payment_id))

    def refuse(self, operation: str, payment_id: str, message: str, *, fields: Mapping[str, Any] | None = None,
               error_class: str = "InvalidInput", message_id: str = "") -> dict[str, Any]:
        """A delivery that cannot run (bad arguments, a seal that does not open): a final ERROR record when the
        operation has none; when it has one, this delivery's own ERROR, and the record is left alone."""
        owner = new_owner()
        claim = self.store.claim(payment_id, operation, fields=dict(fields or {}, order_id=payment_id,
                                                                    error_class=error_class),
                                 owner=owner, lease_seconds=self.lease_seconds, message_id=message_id,
                                 mode="create_only")
        if claim.kind == "claimed":
            record = self.store.transition(payment_id, Status.ERROR, fields={"message": _short(message)},
                                           owner=owner, note=_short(message), sent=False)
            self._observe_outcome(operation, record)
            return task_outcome(record or self.store.get(payment_id))
        existing = claim.record
        if existing.get("status") == Status.ERROR and existing.get("error_class") == error_class:
            return task_outcome(existing)  # this very refusal, delivered again
        return error_outcome(operation, payment_id, _short(message), error_class)

    def current_outcome(self, payment_id: str) -> dict[str, Any]:
        record = self.store.get(payment_id)
        return task_outcome(record) if record else {"payment_id": payment_id, "status": Status.UNKNOWN.value}

    def give_up_retrying(self, operation: str, payment_id: str, reason: str) -> dict[str, Any]:
        """Outage re-queues ran out. A provably unsent operation ends ERROR (``not_charged``); one that may have
        been sent stays UNKNOWN for the sweep (only stq may settle it)."""
        owner = new_owner()
        claim = self.store.claim(payment_id, operation, owner=owner, lease_seconds=self.lease_seconds,
                                 mode="reconcile")
        if claim.kind != "resumed":
            return task_outcome(claim.record) if claim.record else self.current_outcome(payment_id)
        record = claim.record
        if claim.previous_status == Status.RETRYING and not record.get("sent_ts"):
            done = self.store.transition(payment_id, Status.ERROR, owner=owner, sent=False, note=reason,
                                         fields={"message": _short(reason), "not_charged": "1"})
            self._observe_outcome(operation, done)
            return task_outcome(done or self.store.get(payment_id))
        parked = self.store.transition(payment_id, Status.UNKNOWN, owner=owner, note=reason,
                                       fields={"message": _short(f"{reason}; outcome unknown: the sweep asks stq")})
        if parked is not None:
            self.observer.parked(operation, str(parked.get("status", "")))
        return task_outcome(parked or self.store.get(payment_id))

    # ----------------------------------------------------------------- the engine
    def _run(self, operation: str, payment_id: str, fields: dict[str, Any], fingerprints: list[str],
             send: Callable[[bool, Fence], Response], message_id: str, redelivered: bool) -> dict[str, Any]:
        owner = new_owner()
        try:
            claim = self.store.claim(payment_id, operation, fields=fields, owner=owner,
                                     lease_seconds=self.lease_seconds, message_id=message_id,
                                     fingerprints=fingerprints, journal="prior" if redelivered else True,
                                     dead_owner=self._dead_holder(payment_id) if redelivered else "")
            if claim.kind == "busy" and owner_is_dead(claim.record.get("lease_owner", "")):
                claim = self.store.claim(payment_id, operation, fields=fields, owner=owner,
                                         lease_seconds=self.lease_seconds, fingerprints=fingerprints,
                                         dead_owner=claim.record["lease_owner"])
        except ReplicaAckTimeout as exc:  # we hold the lease, but a failover could undo the claim: send nothing
            self._park(_Run(operation, payment_id, owner, send, operation in FOLLOW_UPS, deadline=0.0),
                       Status.RETRYING, f"not sent: {exc}", sent=False, outage=ReplicasBehind)
        if claim.kind == "mismatch":
            return error_outcome(operation, payment_id,
                                 f"idempotency key {payment_id!r} is already bound to another request "
                                 f"({claim.record.get('operation')}, amount {claim.record.get('amount') or '-'}); "
                                 "nothing was sent", "IdempotencyMismatch")
        if claim.kind == "final":
            return task_outcome(claim.record)
        if claim.kind == "busy":
            remaining = float(claim.record.get("lease_until") or 0) - claim.now
            raise LeaseBusy(f"{payment_id} is being processed by another worker",
                            countdown=max(0.5, min(remaining + 0.5, 10.0)))
        run = _Run(operation, payment_id, owner, send, operation in FOLLOW_UPS,
                   deadline=self.clock() + self.operation_budget)
        assert self.keeper is not None
        with _in_flight(self.observer, operation), \
                self.keeper.holding(payment_id, owner, run.deadline + self.call_budget):
            try:
                return self._drive(run, claim.record, claim.now, journaled=claim.kind == "claimed" and not redelivered)
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

    def _drive(self, run: _Run, record: dict[str, Any], now: float, *, journaled: bool) -> dict[str, Any]:
        sent_ts = float(record.get("sent_ts") or 0) or None
        if sent_ts is not None:
            # An attempt (ours earlier, or an earlier delivery's) may have reached the gateway.
            found = self._lookup(run.operation, run.payment_id)
            if isinstance(found, Response):
                return self._adopt(run, found)
            if isinstance(found, CannotTell):
                self._park(run, Status.UNKNOWN, f"stq cannot tell yet ({found.reason})", sent=None)
            wait = sent_ts + self.commit_horizon - now
            if wait > 0:
                self._park(run, Status.UNKNOWN, f"absent at the gateway, but an attempt may still commit for "
                                                f"{wait:.0f} s (commit horizon)", sent=None, check_in=wait + 1)
            # Absent, and every attempt that may have been sent is older than the horizon: never landed.
        return self._send(run, journaled=journaled, sent_before=sent_ts)

    def _send(self, run: _Run, *, journaled: bool, sent_before: float | None) -> dict[str, Any]:
        duplicate_override = False
        for _ in range(MAX_SENDS):
            if self.clock() >= run.deadline:
                # Nothing was sent since the last journal entry (the claim's attempt 1, or none): provably unsent.
                self._park(run, Status.RETRYING, "wall-time budget spent before sending", sent=False)
            if not journaled:
                try:
                    noted = self.store.journal(run.payment_id, run.owner, self.lease_seconds)
                except ReplicaAckTimeout as exc:  # a failover could undo the journal entry: send nothing
                    self._park(run, Status.RETRYING, f"not sent: {exc}", sent=False, outage=ReplicasBehind)
                if noted is None:
                    raise _LeaseLost()
            journaled = False
            try:
                response = run.send(duplicate_override, self._fence_for(run))
            except (FenceLost, Expired) as exc:  # nothing was sent, or the gateway did not save it
                self._park(run, Status.RETRYING, f"not sent: {_short(exc, 120)}", sent=False)
            except NotSent as exc:
                self._park(run, Status.RETRYING, f"gateway not reached: {type(exc).__name__}", sent=False)
            except Rejected as exc:
                return self._answer(run, exc.response, error_class="Rejected")
            except OutcomeUnknown as exc:
                refused = bool(getattr(exc, "duplicate", False))  # the gateway said it did not process this one
                now = self.store.now()
                found = self._lookup(run.operation, run.payment_id)
                if isinstance(found, Response):
                    return self._adopt(run, found)
                if isinstance(found, CannotTell):
                    self._park(run, Status.UNKNOWN, f"outcome unknown ({_short(exc, 120)}); stq cannot tell yet",
                               sent=not refused)
                if refused and (sent_before is None or now >= sent_before + self.commit_horizon):
                    # A DUPLICATE of another operation (same card and amount): ours never landed.
                    duplicate_override = True
                    self.store.transition(run.payment_id, Status.PENDING, owner=run.owner, sent=False,
                                          expect=(Status.PENDING,), note="DUPLICATE of another operation; "
                                          "sending again with DUPLICATE_OVERRIDE")
                    continue
                wait = self.commit_horizon if not refused else (sent_before or now) + self.commit_horizon - now
                self._park(run, Status.UNKNOWN, f"outcome unknown ({_short(exc, 120)}); absent at the gateway so "
                                                f"far: looked at again after the commit horizon",
                           sent=not refused, check_in=wait + 1)
            else:
                return self._answer(run, response)
        self._park(run, Status.UNKNOWN, f"{MAX_SENDS} sends answered DUPLICATE", sent=False)
        raise AssertionError("unreachable")  # _park raises

    def _dead_holder(self, payment_id: str) -> str:
        """The holder of ``payment_id``'s unreported attempt when its process is known dead (this host, pid gone),
        else "". Asked only for a message delivered before (a worker died with it): a dead holder sends nothing
        later, so its takeover need not wait for its attempt's stamp to expire, only for the commit horizon."""
        try:
            return _dead(self.store.get(payment_id))
        except Exception as exc:  # a look only: without it the takeover waits for the stamp (the safe side)
            log.warning("%s: holder not looked at: %s", payment_id, type(exc).__name__)
            return ""

    def _fence_for(self, run: _Run) -> Fence:
        """The check the client runs before each attempt of ``run``: the Redis time of a live lease (the attempt's
        stamp), or FenceLost. The store keeps how long an attempt stamped then may be accepted (fence_until), which
        a takeover of an attempt that never reported waits out (claim.lua)."""
        window = self.expire_minutes * 60 + expiry.MINUTE + self.skew_margin

        def fence() -> tuple[float, int]:
            now = self._fenced(run, window)
            longer = expiry.accepted_until(now, self.expire_minutes, self.skew_margin) - now
            if longer > window:  # a stamp in the hour repeated when daylight saving ends: the later reading counts
                self._fenced(run, longer)
            return now, self.expire_minutes

        return fence

    def _fenced(self, run: _Run, accepted_for: float) -> float:
        try:
            now = self.store.fence(run.payment_id, run.owner, self.lease_seconds, accepted_for)
        except ReplicaAckTimeout as exc:  # a failover could lose fence_until: a takeover would not wait for it
            raise FenceLost(f"fence not replicated ({exc})") from None
        if now is None:
            raise FenceLost("lease lost before the attempt")
        return now

    def _answer(self, run: _Run, response: Response, **extra: str) -> dict[str, Any]:
        """Record the gateway's answer to our request."""
        if run.operation == "void" and (response.message or "").startswith(ALREADY_VOIDED):
            # An earlier delivery of this very void may have gone through: record that VOID with its trans id.
            found = self._lookup(run.operation, run.payment_id)
            if isinstance(found, Response) and found.approved:
                return self._adopt(run, found)
        status, fields = interpret(run.operation, response)
        return self._finish(run, status, dict(fields, **extra))

    def _adopt(self, run: _Run, found: Response) -> dict[str, Any]:
        status, fields = interpret(run.operation, found)
        fields["reconciled"] = "stq"
        return self._finish(run, status, fields, note="adopted from stq")

    def _finish(self, run: _Run, status: Status, fields: dict[str, Any], *, note: str = "") -> dict[str, Any]:
        record = self.store.transition(run.payment_id, status, fields=fields, expect=(Status.PENDING,),
                                       owner=run.owner, sent=True, reflect=run.follow_up,
                                       note=note or fields.get("message", ""))
        if record is None:  # someone else holds it now (lease lost): their record stands
            raise _LeaseLost()
        self._observe_outcome(run.operation, record)
        return task_outcome(record)

    def _park(self, run: _Run, status: Status, note: str, *, sent: bool | None,
              check_in: float | None = None, outage: type[GatewayOutage] = GatewayOutage) -> NoReturn:
        """Park the operation (RETRYING: known not sent; UNKNOWN: to reconcile) and re-queue the task."""
        record = self.store.transition(run.payment_id, status, expect=(Status.PENDING,), owner=run.owner,
                                       fields={"message": _short(note)}, note=note, sent=sent, check_in=check_in)
        if record is None:
            raise _LeaseLost()
        self.observer.parked(run.operation, str(record.get("status", status)))
        raise outage(note, parked_as=record.get("status", status), check_in=check_in)

    def _lookup(self, operation: str, payment_id: str) -> Response | Absent | CannotTell:
        """stq by ORDER_ID: a Response of the same type, ABSENT (as of now), or CannotTell."""
        try:
            found = self.gateway.query(order_id=payment_id)
        except Exception as exc:  # any failure of a read-only query means "cannot tell", never "absent"
            log.warning("reconcile %s: stq failed: %s", payment_id, type(exc).__name__)
            self.observer.reconciliation("cannot_tell")
            return CannotTell(type(exc).__name__)
        if found is None:
            self.observer.reconciliation("absent")
            return ABSENT
        trans_type = (found.trans_type or "").upper()
        if trans_type and trans_type != _STQ_TYPE[operation] and not (operation == "refund" and trans_type == "VOID"):
            log.warning("reconcile %s: stq found a %s for a %s", payment_id, trans_type, operation)
            self.observer.reconciliation("cannot_tell")
            return CannotTell(f"stq found a {trans_type}")
        self.observer.reconciliation("found")
        return found

    # ----------------------------------------------------------------- the sweep's reconciliation
    def reconcile(self, record: dict[str, Any], *, give_up_after: float, retry_base: float = 60.0) -> str:
        """The sweep's look at an operation left non-final: adopt, close as not charged, or wait.

        Returns what happened: adopted, not_charged, still_unknown, gave_up, or skipped (taken/final/not due).
        """
        payment_id, operation = record["payment_id"], record["operation"]
        now = self.store.now()
        if float(record.get("next_check_ts") or 0) > now:
            return "skipped"
        owner = new_owner()
        claim = self.store.claim(payment_id, operation, owner=owner, lease_seconds=self.lease_seconds,
                                 mode="reconcile", dead_owner=_dead(record))
        if claim.kind != "resumed":
            return "skipped"
        run = _Run(operation, payment_id, owner, _no_send, operation in FOLLOW_UPS,
                   deadline=self.clock() + self.operation_budget)
        current, now = claim.record, claim.now
        sent_ts = float(current.get("sent_ts") or 0) or None
        assert self.keeper is not None
        with _in_flight(self.observer, operation), \
                self.keeper.holding(payment_id, owner, run.deadline + self.call_budget):
            found = self._lookup(operation, payment_id)
            try:
                if isinstance(found, Response):
                    self._adopt(run, found)
                    return "adopted"
                if isinstance(found, Absent) and (sent_ts is None or now >= sent_ts + self.commit_horizon):
                    self._finish(run, Status.ERROR, {"message": "not processed by the gateway: nothing was charged",
                                                     "not_charged": "1"})
                    return "not_charged"
                tries = int(current.get("reconcile_tries") or 0) + 1
                age = now - float(current.get("created_ts") or now)
                if age >= give_up_after:
                    message = f"outcome still unknown after {age / 3600:.1f} h: check the gateway by hand"
                    log.error("reconcile %s: %s", payment_id, message)
                    self._finish(run, Status.ERROR, {"message": message, "needs_human": "1"})
                    return "gave_up"
                delay = min(retry_base * 2 ** (tries - 1), 3600.0)
                if isinstance(found, Absent) and sent_ts is not None:
                    delay = min(delay, sent_ts + self.commit_horizon - now + 1)
                parked = self.store.transition(payment_id, Status.UNKNOWN, owner=owner, expect=(Status.PENDING,),
                                               sent=None, check_in=delay,
                                               note="outcome unknown; the gateway could not tell yet",
                                               fields={"message": "outcome unknown; the gateway could not tell yet",
                                                       "reconcile_tries": str(tries)})
                if parked is not None:
                    self.observer.parked(operation, str(parked.get("status", "")))
                return "still_unknown"
            except _LeaseLost:
                return "skipped"

    def _observe_outcome(self, operation: str, record: Mapping[str, Any] | None) -> None:
        if record is not None:
            self.observer.outcome(operation, str(record.get("status", "")), str(record.get("amount") or ""))

    def repair(self, payment_id: str) -> str:
        """Reflect an APPROVED follow-up on its original if a crash left that undone (the sweep)."""
        return self.store.reflect(payment_id)


def _dead(record: Mapping[str, Any] | None) -> str:
    """``record``'s lease holder if it left an attempt in flight and its process is known dead, else ""."""
    holder = str((record or {}).get("lease_owner") or "")
    return holder if (record or {}).get("in_flight") == "1" and holder and owner_is_dead(holder) else ""


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
