"""The payment tasks: each decodes its arguments, calls the flow (worker/payments/flow.py) and returns the outcome.

The broker-level policies (bad arguments, re-queue while the gateway is away or another worker holds the
operation, time limits, Redis hiccups) live in :class:`PaymentTask`, the tasks' base class.
"""
from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from worker.broker.celeryconfig import celery_settings
from worker.broker.final_write import final_write_for
from worker.broker.outbox import AppPublisher
from worker.cards.messages import unencrypted_card_in
from worker.cards.numbers import is_card_like_identifier, mask_number
from worker.cards.vault import CardDecryptError
from worker.catalogue import PAYMENT_TASKS
from worker.gateway import InvalidInput, validation
from worker.merchants import DEFAULT
from worker.payments.flow import GatewayOutage, GatewayThrottled, LeaseBusy, PaymentFlow
from worker.payments.repeat import RepeatCharge
from worker.payments.requests import (
    CHARGES,
    FOLLOW_UPS,
    Delivery,
    charge_request,
    follow_up_request,
    refusal_fingerprints,
)
from worker.services import Services, services_of
from worker.store.final_write import finishing
from worker.tasks.registry import TaskTable

log = logging.getLogger("payments.tasks")

#: The payment tasks and the sweep, made on an app by ``worker.broker.app.create_app`` (``TASKS.register(app)``).
TASKS = TaskTable()

# How often a delivery may be re-queued because another worker holds the operation's lease.
MAX_BUSY_RETRIES = 60
# How often the shared rate limit may re-queue one delivery before the re-queues count as outage re-queues (a limit
# far below the load must not keep a payment waiting forever).
MAX_THROTTLED_REQUEUES = 200


def outage_countdown(retries: int, *, backoff: float, backoff_max: float, visibility_timeout: float,
                     at_least: float | None = None, jitter: float | None = None) -> float:
    """Seconds before an outage re-queue: jittered exponential backoff, at least ``at_least`` (a commit
    horizon still running), and always well under the visibility timeout (ETA messages are redelivered
    after it)."""
    ceiling = visibility_timeout / 4
    wait = min(backoff_max, backoff * 2.0 ** retries) * (random.uniform(0.5, 1.0) if jitter is None else jitter)
    if at_least is not None:
        wait = max(wait, at_least)
    return min(ceiling, wait)


class PaymentTask(Task):
    """Base of the payment tasks: binds arguments, applies the broker policies, never loses a job.

    A missing, extra or mistyped argument is a recorded ERROR outcome (``typing = False``: the producer's
    ``delay`` does not check, as before), not a task failure without a record.
    """

    typing = False
    max_retries = None  # every kind of re-queue is bounded below
    #: the operation this task runs (the store's and the gateway's word)
    operation: str = ""
    #: whether messages of this task carry a card (encrypted on publish)
    carries_card: bool = False

    @property
    def services(self) -> Services:
        """This task's app's services in this process (``worker.broker.app.create_app``)."""
        return services_of(self.app)

    @property
    def flow(self) -> PaymentFlow:
        """The payment flow of this message's merchant account (``Services.flow_for``; ``default`` unless named)."""
        flow: PaymentFlow = self.services.flow_for(self.merchant)
        return flow

    @property
    def merchant(self) -> str:
        """The merchant account this message runs under: ``merchant=`` as given (when configured), else ``default``."""
        named = getattr(self.request, "merchant", None)
        return named if isinstance(named, str) and named in self.services.settings.merchant_names else DEFAULT

    def infer_merchant(self, record: Mapping[str, object] | None) -> None:
        """A follow-up or a chained void named no merchant: it runs under its original's (from its record)."""
        if getattr(self.request, "merchant", None) is None and record:
            self.request.merchant = str(record.get("merchant") or DEFAULT)

    @cached_property
    def _store_broker_url(self) -> str:
        return str(celery_settings(self.services.settings)["broker_url"])

    @cached_property
    def _run_signature(self) -> inspect.Signature:
        # Once per task per process: inspect.signature costs ~10x the bind, on every payment.
        return inspect.signature(self.run)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        request.payment_id = request.id
        # retry_failed=True (any payment task): the producer's choice to run again an ERROR of its key that provably
        # charged nothing (worker/payments/flow.py); an option of the message, not an argument of the operation.
        request.retry_failed = kwargs.pop("retry_failed", False)
        # merchant=NAME (any payment task): the merchant account to run under (worker/merchants.py); also an option of
        # the message. A follow-up without one runs under its original's.
        request.merchant = kwargs.pop("merchant", None)
        bad = self._bad_arguments(args, kwargs)
        if bad is not None:
            return self._refuse(bad)
        try:
            with finishing(final_write_for(self, self._store_broker_url)):  # outcome, result and ack in one call
                return self.run(*args, **kwargs)
        except InvalidInput as exc:
            return self._refuse(exc)
        except GatewayOutage as parked:
            return self._on_outage(parked)
        except LeaseBusy as busy:
            if request.retries >= MAX_BUSY_RETRIES:
                return self.flow.current_outcome(request.payment_id)
            raise self.retry(countdown=busy.countdown) from busy
        except SoftTimeLimitExceeded:
            # the flow parked the operation (UNKNOWN if an attempt may be out): the sweep reconciles it
            return self.flow.current_outcome(request.payment_id)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The message stays unacknowledged if even the re-queue fails: the broker redelivers it.
            log.warning("%s %s: Redis unavailable (%s); re-queued", self.operation, request.payment_id,
                        type(exc).__name__)
            raise self.retry(countdown=5, max_retries=None if request.retries < 20 else 0) from exc
        except Exception as exc:  # a bug must not lose the job: parked by the flow, or an ERROR record
            log.error("%s %s failed: %s", self.operation, request.payment_id, type(exc).__name__, exc_info=True)
            outcome = self.flow.current_outcome(request.payment_id)
            if outcome.get("operation"):
                return outcome
            return self.flow.refuse(self.operation, request.payment_id,
                                             f"internal error: {type(exc).__name__}", error_class="InternalError",
                                             message_id=request.id)

    def _bad_arguments(self, args: tuple[Any, ...], kwargs: dict[str, object]) -> InvalidInput | None:
        """What is wrong with the message's arguments as such (their values are the request builder's)."""
        if not isinstance(self.request.retry_failed, bool):
            return InvalidInput("retry_failed", "retry_failed must be True or False")
        merchant = self.request.merchant
        if merchant is not None and merchant not in self.services.settings.merchant_names:
            return InvalidInput("merchant", f"{str(merchant)[:40]!r} is not a configured merchant account "
                                            f"({', '.join(self.services.settings.merchant_names)})")
        try:
            self._run_signature.bind(*args, **kwargs)
        except TypeError as exc:
            return InvalidInput("arguments", f"bad arguments: {exc}")
        return None

    def _refuse(self, exc: InvalidInput) -> dict[str, object]:
        request = self.request
        named = request.merchant
        # an account the workers do not know: refused under default's, counted as merchant "unknown" (not its name)
        unknown = named is not None and named not in self.services.settings.merchant_names
        flow = self.services.unknown_merchant_flow if unknown else self.flow
        # The key is bound to this request as given (its card encrypted or not): another request under it is an
        # IdempotencyMismatch, this one again the stored refusal.
        given = {"args": list(request.args or ()), "kwargs": dict(request.kwargs or {})}
        return flow.refuse(self.operation, request.payment_id, f"invalid input: {exc}", message_id=request.id,
                           fingerprints=refusal_fingerprints(self.operation, given, flow.card_keys))

    def _on_outage(self, parked: GatewayOutage) -> dict[str, object]:
        request, settings = self.request, self.services.settings
        # Re-queues by the shared rate limit travel in a header: they are not outage re-queues (worker/guard/).
        throttled = _count(getattr(request, "payments_throttled", 0))
        if isinstance(parked, GatewayThrottled) and throttled < MAX_THROTTLED_REQUEUES:
            countdown = (parked.check_in or 0.0) + random.uniform(0.0, 1.0)  # spread: the backlog drains at the rate
            # the message's other custom headers go on, as Celery's own retry carries them (and this one, after)
            headers = {**(request.headers or {}), "payments_throttled": throttled + 1}
            raise self.retry(countdown=countdown, headers=headers)
        outages = request.retries - throttled
        if outages >= settings.outage_retries:
            return self.flow.give_up_retrying(self.operation, request.payment_id,
                                              f"gateway unreachable after {outages} re-queues: {parked.reason}")
        countdown = outage_countdown(outages, backoff=settings.outage_backoff,
                                     backoff_max=settings.outage_backoff_max,
                                     visibility_timeout=settings.visibility_timeout, at_least=parked.check_in)
        raise self.retry(countdown=countdown)

    # ---- helpers for the task bodies -------------------------------------------------------------
    def bind_payment_id(self, idempotency_key: object) -> tuple[str, str | None]:
        """The operation id (ours) and the producer's key as the record shows it: the producer's idempotency key
        (opened when it travelled encrypted; a card-like key's keyed id, never the key, shown masked), else the task
        id. The id is kept on the request for the policies of :meth:`__call__` (outage, busy, time limit)."""
        shown_key = None
        if idempotency_key is not None:
            key = _checked_key(decrypt_identifier(self, "idempotency_key", idempotency_key))
            if is_card_like_identifier(key):
                shown_key = mask_number(key)
                self.request.payment_id = self.flow.payment_id_for(key)
            else:
                self.request.payment_id = key
        else:  # the task id stands for the key: sent as ORDER_ID all the same
            validation.idempotency_key(self.request.payment_id, "task_id")
        return str(self.request.payment_id), shown_key

    def delivery(self) -> Delivery:
        """This run of the message: its id, whether it may have run before, the producer's retry_failed."""
        return Delivery(self.request.id, self.redelivered, self.request.retry_failed)

    @property
    def redelivered(self) -> bool:
        """Whether this message may have run before (stq is asked before the first send)."""
        request = self.request
        info = request.delivery_info or {}
        return bool(info.get("redelivered") or getattr(request, "redelivered", False) or request.retries
                    or getattr(request, "payments_republished", None))

    def follows_with_void(self) -> bool:
        following = list(self.request.chain or []) + list(self.request.callbacks or [])
        return any(isinstance(sig, dict) and sig.get("task") == "payments.void" for sig in following)


def _count(value: object) -> int:
    """A counter from a message header (absent or malformed: 0)."""
    return value if type(value) is int and value >= 0 else 0


def task_options(name: str) -> dict[str, object]:
    """A payment task's name and attributes, from the one table of them (worker/catalogue.py)."""
    spec = PAYMENT_TASKS[name]
    return {"name": spec.name, "operation": spec.operation, "carries_card": spec.card_parameter is not None}


def decrypt_identifier(task: PaymentTask, name: str, value: object) -> object:
    """An identifier as the producer gave it: a card-like one travels encrypted (worker/cards/messages.py)."""
    try:
        return task.services.vault.decrypt_identifier(value)
    except CardDecryptError:
        raise InvalidInput(name, "encrypted identifier cannot be decrypted with this PAYMENTS_CARD_KEY") from None


def _checked_key(idempotency_key: object) -> str:
    """The producer's key as the operation id: the rule ``delay()`` already applied (worker/cards/messages.py), for a
    message that did not come through it. An ``int`` is its decimal digits (not a bool: True is no key)."""
    if type(idempotency_key) is int:
        idempotency_key = str(idempotency_key)
    key = validation.idempotency_key(idempotency_key)
    return key


def _open_card(task: PaymentTask, card: object) -> object:
    vault = task.services.vault
    if isinstance(card, dict) and "invalid" in card and len(card) == 1:
        raise InvalidInput("card", str(card["invalid"]))
    if isinstance(card, dict) and vault.is_encrypted(card):
        try:
            return vault.decrypt(card)
        except CardDecryptError:
            raise InvalidInput("card", "encrypted card data cannot be decrypted with this PAYMENTS_CARD_KEY") from None
    if task.services.settings.bluepay_mode == "LIVE":
        # Only encrypted card data may cross the broker in production (PCI DSS); in TEST it is accepted.
        raise InvalidInput("card", "card data arrived unencrypted; publish through tasks.sale/auth")
    return card


def _refuse_clear_card_data(task: PaymentTask) -> None:
    """LIVE mode: a message holding card data in clear anywhere (its own card, a chain link, a callback) is
    refused before anything runs; where it sits is named, never the value."""
    if task.services.settings.bluepay_mode == "LIVE":
        where = unencrypted_card_in(task.request)
        if where:
            raise InvalidInput(where, "card data arrived unencrypted in the message; publish through tasks.sale/auth")


def _charge(task: PaymentTask, amount: object, card: object, customer: object, order_id: object,
            idempotency_key: object, repeat: RepeatCharge) -> dict[str, object]:
    """SALE/AUTH: the one checked request (worker/payments/requests.py) built here, then run by the flow."""
    payment_id, shown_key = task.bind_payment_id(idempotency_key)
    _refuse_clear_card_data(task)
    flow = task.flow
    # no card: a repeat charge by token (docs/tokens.md), or a card missing (the request names it)
    opened = _open_card(task, card) if card is not None else None
    request = charge_request(CHARGES[task.operation], payment_id, amount=amount, card=opened,
                             customer=customer, invoice_id=decrypt_identifier(task, "order_id", order_id),
                             then_void=task.follows_with_void(), shown_key=shown_key, card_keys=flow.card_keys,
                             repeat=repeat)
    return flow.submit(request, task.delivery())


def _follow_up(task: PaymentTask, trans_id: object, amount: object, idempotency_key: object) -> dict[str, object]:
    """CAPTURE/REFUND/VOID: the one checked request built here, then run by the flow."""
    payment_id, shown_key = task.bind_payment_id(idempotency_key)
    _refuse_clear_card_data(task)
    if task.services.settings.accounts and getattr(task.request, "merchant", None) is None:
        try:  # a look only (several merchant accounts): the original's record names its merchant
            task.infer_merchant(task.services.store.find_by_trans_id(trans_id) if isinstance(trans_id, str) else None)
        except Exception as exc:  # without it: the default account, whose gateway refuses a trans id not its own
            log.warning("%s %s: original not read: %s", task.operation, payment_id, type(exc).__name__)
    flow = task.flow
    request = follow_up_request(FOLLOW_UPS[task.operation], payment_id, trans_id=trans_id, amount=amount,
                                shown_key=shown_key, card_keys=flow.card_keys)
    return flow.submit(request, task.delivery())


@TASKS.task(base=PaymentTask, bind=True, **task_options("payments.sale"))
def sale(self: PaymentTask, amount: object, card: object = None, customer: object = None, order_id: object = None,
         idempotency_key: object = None, token: object = None, customer_token: object = None,
         new_customer_token: object = None, initiator: object = None, scheduled: object = False) -> dict[str, object]:
    """SALE: charge ``card`` ``amount`` (a two-decimal string or Decimal), or a stored card: ``token`` (an earlier
    trans_id) or ``customer_token`` (docs/tokens.md)."""
    return _charge(self, amount, card, customer, order_id, idempotency_key,
                   RepeatCharge(token, customer_token, new_customer_token, initiator, scheduled))


@TASKS.task(base=PaymentTask, bind=True, **task_options("payments.auth"))
def auth(self: PaymentTask, amount: object, card: object = None, customer: object = None, order_id: object = None,
         idempotency_key: object = None, token: object = None, customer_token: object = None,
         new_customer_token: object = None, initiator: object = None, scheduled: object = False) -> dict[str, object]:
    """AUTH: same arguments as sale; amount may be 0.00 (stores the card: its trans_id is a token)."""
    return _charge(self, amount, card, customer, order_id, idempotency_key,
                   RepeatCharge(token, customer_token, new_customer_token, initiator, scheduled))


@TASKS.task(base=PaymentTask, bind=True, **task_options("payments.credit"))
def credit(self: PaymentTask, amount: Any, card: Any, customer: Any = None, order_id: Any = None,
           idempotency_key: Any = None) -> dict[str, Any]:
    """CREDIT: money to ``card`` with no original. It moves money out, so it runs only where the workers have
    PAYMENTS_ENABLE_CREDIT=1; otherwise a final ERROR (``CreditDisabled``), nothing sent (docs/tokens.md)."""
    if not self.services.settings.enable_credit:
        payment_id, _shown = self.bind_payment_id(idempotency_key)
        return self.flow.refuse("credit", payment_id, "CREDIT is disabled: set PAYMENTS_ENABLE_CREDIT=1 on the "
                                "workers to send money to cards with no original; nothing was sent",
                                error_class="CreditDisabled", message_id=self.request.id)
    return _charge(self, amount, card, customer, order_id, idempotency_key, RepeatCharge())


@TASKS.task(base=PaymentTask, bind=True, **task_options("payments.capture"))
def capture(self: PaymentTask, trans_id: object, amount: object = None,
            idempotency_key: object = None) -> dict[str, object]:
    """CAPTURE an approved AUTH (amount None: the full amount)."""
    return _follow_up(self, trans_id, amount, idempotency_key)


@TASKS.task(base=PaymentTask, bind=True, **task_options("payments.refund"))
def refund(self: PaymentTask, trans_id: object, amount: object = None,
           idempotency_key: object = None) -> dict[str, object]:
    """REFUND a sale (amount None: what is left of it)."""
    return _follow_up(self, trans_id, amount, idempotency_key)


@TASKS.task(base=PaymentTask, bind=True, **task_options("payments.update"))
def update(self: PaymentTask, trans_id: Any, amount: Any = None, idempotency_key: Any = None) -> dict[str, Any]:
    """UPDATE an unsettled sale to ``amount`` (its new total): the original becomes UPDATED and the update's trans_id
    is the one to void or refund from then on (docs/tokens.md)."""
    return _follow_up(self, trans_id, amount, idempotency_key)


@TASKS.task(base=PaymentTask, bind=True, **task_options("payments.void"))
def void(self: PaymentTask, trans_id: object, idempotency_key: object = None) -> dict[str, object]:
    """VOID: void(trans_id) or, as a chain link, void(sale_outcome): voids only an APPROVED sale."""
    if isinstance(trans_id, dict):
        outcome = trans_id
        self.request.payment_id = f"{outcome.get('payment_id') or self.request.id}:void"
        _refuse_clear_card_data(self)
        self.infer_merchant(outcome)  # the sale's merchant account (its outcome names it when not the default)
        return self.flow.void_after(outcome, self.request.payment_id, message_id=self.request.id,
                                             redelivered=self.redelivered)
    return _follow_up(self, trans_id, None, idempotency_key)


@TASKS.task(bind=True, name="payments.sweep")
def sweep(self: Task) -> dict[str, object]:
    """Void stale authorizations, reconcile unknown outcomes, repair originals, finish chains."""
    from worker.payments.sweep import run_sweep

    return run_sweep(services_of(self.app), publisher=AppPublisher(self.app))
