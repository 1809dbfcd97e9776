"""The payment flow: claim the operation, call the gateway, record the outcome, decide what follows.

Plain Python, no Celery: the tasks in ``tasks/`` are a few lines around these methods, and tests call
them directly with a real store and a fake or real gateway.

Exactly-once rules (design.md):

* The operation id (``payment_id``) is sent as ``ORDER_ID`` and claimed in the store before any call.
* A final record is returned as it is: no gateway call.
* A record left in flight (its worker died) or ``UNKNOWN`` is reconciled through ``stq`` by
  ``ORDER_ID``: found -> adopt it; provably absent -> send again with the same ``ORDER_ID``;
  cannot tell -> ``UNKNOWN``, for the sweep. An *outcome unknown* error is reconciled the same way.
* *Not sent* errors that outlast the client's retry budget become ``RETRYING`` and the task is
  re-queued by the broker (``RetryLater``); *rejected* requests and invalid input are final ``ERROR``s.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from dataclasses import dataclass

from worker.gateway import InvalidInput, NotSent, OutcomeUnknown, Rejected, Response
from worker.gateway import validation
from worker.gateway.scrub import scrub
from worker.store import ResultsStore, public_outcome
from worker.vault import mask_number

log = logging.getLogger("payments.flow")

TRANS_ID = re.compile(r"\d{12}")
ABSENT = "ABSENT"  # stq proved the gateway has no such transaction
CANNOT_TELL = "CANNOT_TELL"  # stq did not answer usefully
# How many times one delivery may send a money-moving request (first send + resends after
# stq proved the earlier one absent, or after a DUPLICATE that was not ours).
MAX_SENDS = 3
ALREADY_VOIDED = "Already Voided"
SETTLED = "settled"


class RetryLater(Exception):
    """The task should be re-queued by the broker after ``countdown`` seconds."""

    def __init__(self, reason: str, countdown: float, *, outage: bool, parked_as: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.countdown = countdown
        self.outage = outage  # True: gateway unreachable (bounded retries); False: another worker holds it
        self.parked_as = parked_as  # the record's state while it waits: RETRYING or UNKNOWN


_HOST = socket.gethostname()


def _owner() -> str:
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True when the lease holder ran on this host and its process is gone (a killed prefork child,
    whose job Celery requeues at once): its lease need not be waited out."""
    host, _, rest = (owner or "").partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _short(text, limit=200) -> str:
    """What we record of a caller's value: scrubbed of anything card-like, and bounded."""
    text = scrub(str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def response_fields(response: Response) -> dict:
    fields = {
        "message": response.message or "",
        "trans_id": response.trans_id or "",
        "avs": response.avs or "",
        "cvv2": response.cvv2 or "",
        "auth_code": response.auth_code or "",
        "card_type": response.card_type or "",
        "bank_name": response.bank_name or "",
    }
    if response.masked_account:
        fields["masked_account"] = response.masked_account
    return fields


def status_of(response: Response) -> str:
    if response.approved:
        return "APPROVED"
    if response.status == "DECLINED":
        return "DECLINED"
    return "ERROR"


def interpret(operation: str, response: Response) -> tuple[str, dict]:
    """The recorded status and fields for a gateway answer to ``operation``."""
    fields = response_fields(response)
    status = status_of(response)
    message = response.message or ""
    if operation == "void" and status == "ERROR" and message.startswith(ALREADY_VOIDED):
        # Our void (or an earlier delivery of it) already went through: the sale is voided.
        return "APPROVED", dict(fields, message=f"{ALREADY_VOIDED} (counted as done)")
    if operation == "void" and status == "ERROR" and SETTLED in message.lower():
        return "ERROR", dict(fields, message=f"refund needed: the sale settled ({message})", refund_needed="1")
    return status, fields


@dataclass
class PaymentFlow:
    store: ResultsStore
    gateway: object  # worker.gateway.BluePayClient or a fake with the same verbs
    lease_seconds: float = 120.0

    # ----------------------------------------------------------------- public operations
    def charge(self, operation: str, payment_id: str, *, amount, card, customer=None,
               invoice_id=None, then_void=False, message_id: str = "") -> dict:
        """SALE or AUTH. ``card`` is the clear card dict (opened by the task just before).

        ``message_id`` (every public operation): the broker message being run, whose outbox entry the
        claim removes."""
        number = card.get("number") if isinstance(card, dict) else None
        fields = {
            "amount": _short(amount, 32) if amount is not None else "",
            "order_id": payment_id,
            "masked_account": mask_number(str(number)) if number else "",
        }
        if invoice_id is not None:
            fields["invoice_id"] = _short(invoice_id, 64)
        if then_void:
            fields["then_void"] = "1"

        def validate():
            checked_card = validation.card(card)
            return {
                "amount": validation.amount(amount, allow_zero=(operation == "auth")),
                "card": checked_card,
                "customer": validation.customer(customer),
                "invoice_id": validation.invoice_id(invoice_id) if invoice_id is not None else None,
            }

        def send(args, duplicate_override):
            verb = getattr(self.gateway, operation)
            return verb(args["amount"], args["card"], args["customer"], order_id=payment_id,
                        duplicate_override=duplicate_override, invoice_id=args["invoice_id"])

        return self._run(operation, payment_id, fields, validate, send, None, message_id)

    def follow_up(self, operation: str, payment_id: str, *, trans_id, amount=None, parent=None,
                  reason=None, message_id: str = "") -> dict:
        """CAPTURE, REFUND or VOID of an earlier transaction ``trans_id``; ``reason`` is kept on the record."""
        # A well-formed trans id is kept as it is (12 digits can pass Luhn, and the scrubber would mask it).
        target = trans_id if isinstance(trans_id, str) and TRANS_ID.fullmatch(trans_id) else _short(trans_id, 32)
        fields = {"target": target, "order_id": payment_id}
        if amount is not None:
            fields["amount"] = _short(amount, 32)
        if parent:
            fields["parent"] = parent
        if reason:
            fields["reason"] = _short(reason)

        def validate():
            args = {"trans_id": validation.trans_id(trans_id)}
            if operation != "void":
                args["amount"] = None if amount is None else validation.amount(amount)
            return args

        def send(args, duplicate_override):
            verb = getattr(self.gateway, operation)
            if operation == "void":
                return verb(args["trans_id"], order_id=payment_id)
            return verb(args["trans_id"], args["amount"], order_id=payment_id)

        return self._run(operation, payment_id, fields, validate, send, self._follow_up_done, message_id)

    def void_after(self, sale_outcome, payment_id: str | None = None, *, message_id: str = "") -> dict:
        """The chain link: void a sale outcome only when it was approved, otherwise SKIPPED."""
        if not isinstance(sale_outcome, dict) or not sale_outcome.get("payment_id"):
            raise InvalidInput("sale_outcome", "void after a sale needs the sale's outcome dict")
        parent = str(sale_outcome["payment_id"])
        payment_id = payment_id or f"{parent}:void"
        current = self.store.get(parent) or sale_outcome
        status = current.get("status")
        if status == "VOIDED":
            return self.skip("void", payment_id, parent, f"sale {parent} is already voided", sale=current,
                             message_id=message_id)
        if status in self.store.NON_FINAL:
            return self.skip("void", payment_id, parent,
                             f"sale {parent} is {status}: not voided now; the sweep voids it if it was approved",
                             sale=current, message_id=message_id)
        if status != "APPROVED" or not current.get("trans_id"):
            return self.skip("void", payment_id, parent, f"sale {parent} was {status}: nothing to void", sale=current,
                             message_id=message_id)
        return self.follow_up("void", payment_id, trans_id=current["trans_id"], parent=parent, message_id=message_id)

    def skip(self, operation, payment_id, parent, reason, *, sale: dict | None = None, message_id: str = "") -> dict:
        fields = {"parent": parent, "order_id": payment_id}
        for key in ("masked_account", "card_type", "amount", "target"):
            if sale and sale.get(key):
                fields[key] = sale[key]
        claim = self.store.claim(payment_id, operation, fields=fields, owner=_owner(),
                                 lease_seconds=self.lease_seconds, message_id=message_id)
        if claim.kind == "final":
            return public_outcome(claim.record)
        record = self.store.transition(payment_id, "SKIPPED", fields={"message": reason}, note=reason)
        return public_outcome(record or self.store.get(payment_id))

    def record_error(self, operation: str, payment_id: str, message: str, fields=None, *,
                     message_id: str = "") -> dict:
        """A final ERROR for a job that cannot run (bad arguments, retries exhausted)."""
        owner = _owner()
        claim = self.store.claim(payment_id, operation, fields=dict(fields or {}, order_id=payment_id),
                                 owner=owner, lease_seconds=self.lease_seconds, message_id=message_id)
        if claim.kind == "final":
            return public_outcome(claim.record)
        record = self.store.transition(payment_id, "ERROR", fields={"message": _short(message)}, note=message)
        return public_outcome(record or self.store.get(payment_id))

    def current_outcome(self, payment_id: str) -> dict:
        record = self.store.get(payment_id)
        return public_outcome(record) if record else {"payment_id": payment_id, "status": "UNKNOWN"}

    def give_up_unknown(self, payment_id: str, owner: str | None, reason: str) -> dict | None:
        """Leave an in-flight operation UNKNOWN (time limit hit): the sweep reconciles it later."""
        record = self.store.transition(payment_id, "UNKNOWN", expect=("PENDING",), owner=owner,
                                       fields={"message": _short(reason)}, note=reason)
        return public_outcome(record) if record else None

    # ----------------------------------------------------------------- the engine
    def _run(self, operation, payment_id, fields, validate, send, on_done, message_id="") -> dict:
        owner = _owner()
        claim = self.store.claim(payment_id, operation, fields=fields, owner=owner,
                                 lease_seconds=self.lease_seconds, message_id=message_id)
        if claim.kind == "busy" and owner_is_dead(claim.record.get("lease_owner", "")):
            claim = self.store.claim(payment_id, operation, fields=fields, owner=owner,
                                     lease_seconds=self.lease_seconds, dead_owner=claim.record["lease_owner"])
        if claim.kind == "final":
            return public_outcome(claim.record)
        if claim.kind == "busy":
            remaining = float(claim.record.get("lease_until") or 0) - self.store.clock()
            raise RetryLater(f"{payment_id} is being processed by another worker",
                             countdown=max(0.5, min(remaining + 0.5, 10.0)), outage=False)
        try:
            args = validate()
        except InvalidInput as exc:
            # scrubbed: the message can quote the caller's value (a customer key), which may be card-like
            return self._finish(payment_id, owner, "ERROR", {"message": _short(f"invalid input: {exc}"),
                                                               "error_class": "InvalidInput"}, on_done)

        if claim.kind == "resumed" and claim.previous_status in ("PENDING", "UNKNOWN"):
            found = self._lookup(operation, payment_id)
            if isinstance(found, Response):
                return self._adopt(payment_id, owner, found, on_done, operation=operation)
            if found == CANNOT_TELL:
                self._wait_for_gateway(payment_id, owner, "UNKNOWN", "redelivered while in flight; stq cannot tell yet")
        return self._send(operation, payment_id, owner, args, send, on_done)

    def _send(self, operation, payment_id, owner, args, send, on_done) -> dict:
        duplicate_override = False
        for _ in range(MAX_SENDS):
            try:
                response = send(args, duplicate_override)
            except NotSent as exc:
                self._wait_for_gateway(payment_id, owner, "RETRYING", f"gateway not reached: {type(exc).__name__}")
            except Rejected as exc:
                return self._answer(operation, payment_id, owner, exc.response, on_done, error_class="Rejected")
            except OutcomeUnknown as exc:
                found = self._lookup(operation, payment_id)
                if isinstance(found, Response):
                    return self._adopt(payment_id, owner, found, on_done, operation=operation)
                if found == CANNOT_TELL:
                    self._wait_for_gateway(payment_id, owner, "UNKNOWN",
                                           f"outcome unknown ({_short(exc, 120)}) and stq cannot tell yet")
                # Provably absent: the request never landed. A DUPLICATE that is not ours (another
                # operation with the same card and amount) may be sent again with the override.
                duplicate_override = duplicate_override or bool(getattr(exc, "duplicate", False))
                continue
            return self._answer(operation, payment_id, owner, response, on_done)
        # Every send failed before the gateway recorded it (stq proved each absent): safe to try later.
        self._wait_for_gateway(payment_id, owner, "RETRYING", f"{MAX_SENDS} sends did not reach the gateway")

    def _answer(self, operation, payment_id, owner, response: Response, on_done, **extra) -> dict:
        """Record the gateway's answer to our request."""
        if operation == "void" and (response.message or "").startswith(ALREADY_VOIDED):
            # An earlier delivery of this very void may have gone through while stq could not see it yet
            # (its request still in flight when we asked): if stq now finds our ORDER_ID, record that VOID
            # with its trans id instead of the bare refusal.
            found = self._lookup(operation, payment_id)
            if isinstance(found, Response) and found.approved:
                return self._adopt(payment_id, owner, found, on_done, operation=operation)
        status, fields = interpret(operation, response)
        return self._finish(payment_id, owner, status, dict(fields, **extra), on_done, response=response)

    def _wait_for_gateway(self, payment_id, owner, status, note):
        """Park the operation (RETRYING: known not sent; UNKNOWN: to reconcile) and re-queue the task."""
        self.store.transition(payment_id, status, expect=("PENDING",), owner=owner,
                              fields={"message": _short(note)}, note=note)
        raise RetryLater(note, countdown=0, outage=True, parked_as=status)

    def _lookup(self, operation, payment_id):
        """stq by ORDER_ID: a Response of the same type, ABSENT, or CANNOT_TELL."""
        try:
            found = self.gateway.query(order_id=payment_id)
        except Exception as exc:  # any failure of a read-only query means "cannot tell", never "absent"
            log.warning("reconcile %s: stq failed: %s", payment_id, type(exc).__name__)
            return CANNOT_TELL
        if found is None:
            return ABSENT
        expected = {"sale": "SALE", "auth": "AUTH", "capture": "CAPTURE", "refund": "REFUND", "void": "VOID"}
        trans_type = (found.trans_type or "").upper()
        if trans_type and trans_type != expected[operation] and not (operation == "refund" and trans_type == "VOID"):
            log.warning("reconcile %s: stq found a %s for a %s", payment_id, trans_type, operation)
            return CANNOT_TELL
        return found

    def reconcile(self, record: dict, *, give_up_after: float, retry_base: float = 60.0) -> str:
        """The sweep's look at an operation left non-final: adopt, close as not charged, or wait.

        Returns what happened: adopted, not_charged, still_unknown, gave_up, or skipped (taken/final).
        """
        payment_id, operation = record["payment_id"], record["operation"]
        now = self.store.clock()
        if float(record.get("next_check_ts") or 0) > now:
            return "skipped"
        owner = _owner()
        claim = self.store.claim(payment_id, operation, fields={}, owner=owner, lease_seconds=self.lease_seconds)
        if claim.kind in ("final", "busy"):
            return "skipped"
        on_done = self._follow_up_done if operation in ("capture", "refund", "void") else None
        found = self._lookup(operation, payment_id)
        if isinstance(found, Response):
            self._adopt(payment_id, owner, found, on_done, operation=operation)
            return "adopted"
        if found == ABSENT:
            # Older than RECONCILE_AFTER and unknown to the gateway: the request never landed.
            self._finish(payment_id, owner, "ERROR",
                         {"message": "not processed by the gateway: nothing was charged", "not_charged": "1"}, None)
            return "not_charged"
        tries = int(record.get("reconcile_tries") or 0) + 1
        age = now - float(record.get("created_ts") or now)
        if age >= give_up_after:
            message = f"outcome still unknown after {age / 3600:.1f} h: check the gateway by hand"
            log.error("reconcile %s: %s", payment_id, message)
            self._finish(payment_id, owner, "ERROR", {"message": message, "needs_human": "1"}, None)
            return "gave_up"
        delay = min(retry_base * 2 ** (tries - 1), 3600.0)
        self._finish(payment_id, owner, "UNKNOWN",
                     {"message": "outcome unknown; the gateway could not tell yet",
                      "reconcile_tries": str(tries), "next_check_ts": f"{now + delay:.3f}"}, None)
        return "still_unknown"

    def _adopt(self, payment_id, owner, found: Response, on_done, *, operation: str) -> dict:
        status, fields = interpret(operation, found)
        fields["reconciled"] = "stq"
        return self._finish(payment_id, owner, status, fields, on_done, response=found, note="adopted from stq")

    def _finish(self, payment_id, owner, status, fields, on_done, *, response=None, note="") -> dict:
        record = self.store.transition(payment_id, status, fields=fields, expect=("PENDING",), owner=owner,
                                       note=note or fields.get("message", ""))
        if record is None:  # someone else finished it (lease lost): their record stands
            current = self.store.get(payment_id)
            return public_outcome(current) if current else {}
        if on_done is not None and response is not None:
            record = on_done(record, response) or record
        return public_outcome(record)

    # ----------------------------------------------------------------- what follows an outcome
    def _follow_up_done(self, record, response):
        """Reflect an approved capture/refund/void on the original operation's record."""
        original = self._original(record)
        if record["status"] != "APPROVED" or original is None:
            return record
        operation, op_id = record.get("operation"), record["payment_id"]
        if operation == "void" or (operation == "refund" and "void" in (response.message or "").lower()):
            self.store.transition(original["payment_id"], "VOIDED", expect=("APPROVED", "CAPTURED"),
                                  fields={"voided_by": op_id}, note=f"voided by {op_id}")
        elif operation == "capture":
            self.store.transition(original["payment_id"], "CAPTURED", expect=("APPROVED",),
                                  fields={"captured_by": op_id}, note=f"captured by {op_id}")
        elif operation == "refund":
            self.store.transition(original["payment_id"], "REFUNDED", expect=("APPROVED", "CAPTURED"),
                                  fields={"refunded_by": op_id, "refunded_amount": record.get("amount", "")},
                                  note=f"refunded by {op_id}")
        return record

    def _original(self, record):
        if record.get("parent"):
            found = self.store.get(record["parent"])
            if found:
                return found
        target = record.get("target")
        return self.store.find_by_trans_id(target) if target else None
