"""The payment tasks. Each decodes its arguments, calls the flow and returns the outcome dict.

Arguments are bound by hand (``*args, **kwargs``) so that a missing, extra or mistyped argument
becomes a recorded ERROR outcome instead of a TypeError that fails the task without a record.
"""
from __future__ import annotations

import inspect
import logging
import random

import redis
from celery.exceptions import SoftTimeLimitExceeded

from worker.celery_app import PaymentTask, app
from worker.flow import RetryLater
from worker.gateway import InvalidInput
from worker.gateway import validation
from worker.services import services
from worker.store import looks_like_card_number
from worker.vault import CardSealError

log = logging.getLogger("payments.tasks")

# How often a delivery may be re-queued because another worker holds the operation's lease.
MAX_BUSY_RETRIES = 60


def _charge_signature(amount, card, customer=None, order_id=None, idempotency_key=None): ...
def _follow_up_signature(trans_id, amount=None, idempotency_key=None): ...
def _void_signature(trans_id, idempotency_key=None): ...


def _bind(signature_of, args, kwargs) -> dict:
    try:
        bound = inspect.signature(signature_of).bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidInput("arguments", f"bad arguments: {exc}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _payment_id(task, idempotency_key) -> str:
    if idempotency_key is None:
        return task.request.id
    if not isinstance(idempotency_key, str) or not idempotency_key.strip():
        raise InvalidInput("idempotency_key", "idempotency_key must be a non-empty string")
    if len(idempotency_key) > 100:
        raise InvalidInput("idempotency_key", "idempotency_key is longer than 100 characters")
    try:
        key = validation.order_id(idempotency_key)
    except InvalidInput as exc:  # name the argument the producer passed, not the gateway field
        raise InvalidInput("idempotency_key", exc.message) from None
    if looks_like_card_number(key):  # the store refuses to keep it (it becomes the record's id)
        raise InvalidInput("idempotency_key", "looks like a card number")
    return key


def _then_void(task) -> bool:
    following = list(task.request.chain or []) + list(task.request.callbacks or [])
    return any(isinstance(sig, dict) and sig.get("task") == "payments.void" for sig in following)


def _outage_countdown(retries: int) -> float:
    s = services().settings
    ceiling = min(s.outage_backoff_max, s.visibility_timeout / 4)
    return min(ceiling, s.outage_backoff * 2 ** retries) * random.uniform(0.5, 1.0)


def _run(task, operation, work, current_id):
    # Every path below claims the operation with message_id=task.request.id, which also clears this
    # message's outbox entry in the same round trip. A path that never reaches Redis leaves the entry:
    # the sweep delivers the message again, which is what a job nobody ran needs.
    return _apply_policies(task, operation, work, current_id)


def _apply_policies(task, operation, work, current_id):
    """Run one flow step with the broker-level policies: bad input, retry later, time limit, Redis hiccups.

    ``current_id()`` gives the payment id known so far (the task id until the arguments are bound).
    """
    flow = services().flow
    try:
        return work()
    except InvalidInput as exc:
        return flow.record_error(operation, current_id(), f"invalid input: {exc}",
                                 fields={"error_class": "InvalidInput"}, message_id=task.request.id)
    except RetryLater as later:
        retries = task.request.retries
        if later.outage:
            if retries >= services().settings.outage_retries:
                if later.parked_as == "UNKNOWN":  # maybe charged: only stq may decide, so the sweep will
                    return flow.current_outcome(current_id())
                return flow.record_error(operation, current_id(),
                                         f"gateway unreachable after {retries} re-queues: {later.reason}",
                                         message_id=task.request.id)
            countdown = _outage_countdown(retries)
        else:
            if retries >= MAX_BUSY_RETRIES:
                return flow.current_outcome(current_id())
            countdown = later.countdown
        raise task.retry(countdown=countdown)
    except SoftTimeLimitExceeded:
        outcome = flow.give_up_unknown(current_id(), None, "soft time limit reached mid-call; the sweep reconciles")
        return outcome or flow.current_outcome(current_id())
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # The message stays unacknowledged if even the re-queue fails: the broker redelivers it.
        log.warning("%s %s: Redis unavailable (%s); re-queued", operation, current_id(), type(exc).__name__)
        raise task.retry(countdown=5, max_retries=None if task.request.retries < 20 else 0)
    except Exception as exc:  # a bug must not lose the job: in flight -> UNKNOWN for the sweep, else ERROR
        log.error("%s %s failed: %s", operation, current_id(), type(exc).__name__, exc_info=True)
        outcome = flow.give_up_unknown(current_id(), None, f"internal error: {type(exc).__name__}")
        return outcome or flow.record_error(operation, current_id(), f"internal error: {type(exc).__name__}",
                                            message_id=task.request.id)


def _charge(task, operation, args, kwargs):
    flow = services().flow
    payment_id = task.request.id

    def work():
        nonlocal payment_id
        bound = _bind(_charge_signature, args, kwargs)
        payment_id = _payment_id(task, bound["idempotency_key"])
        card = bound["card"]
        vault = services().vault
        if isinstance(card, dict) and "invalid" in card and len(card) == 1:
            raise InvalidInput("card", str(card["invalid"]))
        if not vault.is_sealed(card) and services().settings.bluepay_mode == "LIVE":
            # Only sealed card data may cross the broker in production (PCI DSS); in TEST it is accepted.
            raise InvalidInput("card", "card data arrived unsealed; publish through tasks.sale/auth")
        if vault.is_sealed(card):
            try:
                card = vault.open(card)
            except CardSealError:
                raise InvalidInput("card", "sealed card data cannot be opened with this PAYMENTS_CARD_KEY") from None
        return flow.charge(operation, payment_id, amount=bound["amount"], card=card, customer=bound["customer"],
                           invoice_id=bound["order_id"], then_void=_then_void(task), message_id=task.request.id)

    return _run(task, operation, work, lambda: payment_id)


@app.task(base=PaymentTask, bind=True, name="payments.sale")
def sale(self, *args, **kwargs):
    """SALE: sale(amount, card, customer=None, order_id=None, idempotency_key=None)."""
    return _charge(self, "sale", args, kwargs)


@app.task(base=PaymentTask, bind=True, name="payments.auth")
def auth(self, *args, **kwargs):
    """AUTH: same arguments as sale; amount may be 0.00 (card verification)."""
    return _charge(self, "auth", args, kwargs)


def _follow_up(task, operation, signature_of, args, kwargs):
    flow = services().flow
    payment_id = task.request.id

    def work():
        nonlocal payment_id
        bound = _bind(signature_of, args, kwargs)
        payment_id = _payment_id(task, bound.get("idempotency_key"))
        return flow.follow_up(operation, payment_id, trans_id=bound["trans_id"], amount=bound.get("amount"),
                              message_id=task.request.id)

    return _run(task, operation, work, lambda: payment_id)


@app.task(base=PaymentTask, bind=True, name="payments.capture")
def capture(self, *args, **kwargs):
    """CAPTURE an approved AUTH: capture(trans_id, amount=None, idempotency_key=None)."""
    return _follow_up(self, "capture", _follow_up_signature, args, kwargs)


@app.task(base=PaymentTask, bind=True, name="payments.refund")
def refund(self, *args, **kwargs):
    """REFUND a sale: refund(trans_id, amount=None, idempotency_key=None)."""
    return _follow_up(self, "refund", _follow_up_signature, args, kwargs)


@app.task(base=PaymentTask, bind=True, name="payments.void")
def void(self, *args, **kwargs):
    """VOID: void(trans_id) or, as a chain link, void(sale_outcome): voids only an APPROVED sale."""
    if args and isinstance(args[0], dict):
        flow = services().flow
        outcome = args[0]
        payment_id = f"{outcome.get('payment_id') or self.request.id}:void"
        return _run(self, "void", lambda: flow.void_after(outcome, payment_id, message_id=self.request.id),
                    lambda: payment_id)
    return _follow_up(self, "void", _void_signature, args, kwargs)


@app.task(bind=True, name="payments.sweep")
def sweep(self):
    """Void stale authorizations, reconcile unknown outcomes, finish chains whose void never ran."""
    from worker.sweep import run_sweep

    return run_sweep(services())
