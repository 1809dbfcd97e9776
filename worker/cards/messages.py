"""Card data in task messages: encrypted wherever a message carries a card, refused everywhere else.

Every task message this app publishes is built by ``ProtectingAMQP.as_task_v2`` (``worker/broker/app.py``):
``delay``, ``apply_async``, signatures, chains, groups, chords, ``retry`` and plain ``app.send_task`` (Flower's
too); the outbox re-publish (``celery_app.republish``) runs the same code over the stored body. Before the
message exists, :func:`protect_publish`:

* **encrypts** the card of every ``payments.sale``/``payments.auth`` in the message with the card vault: the
  task's own (positional argument 1 or keyword ``card``) *and* every signature embedded in the message,
  recursively: the chain tail (``chain``), ``link`` (``callbacks``), ``link_error`` (``errbacks``), the chord
  body (``chord``), and the members of ``celery.group``/``celery.chord``/``celery.chain`` signatures found in
  any of those, in their arguments or in their options (``link``, ``link_error``, ``chord``). A card that is
  not a dict with a number is replaced by ``{"invalid": reason}``: a value that cannot be a card never travels
  (the worker records an ERROR naming ``card``). Signatures are copied, never changed in place;
* **encrypts** every card-like identifier (``idempotency_key``, ``order_id`` of a payment task, ``str`` or ``int``,
  in the message's own call and in every embedded signature) as ``{"sealed_id": token, "masked": ...}``
  (:meth:`worker.cards.vault.CardVault.encrypt_identifier`): identifiers are never refused for looking like a card;
* **refuses** card data in free text (:class:`worker.cards.numbers.CardDataRefused`, a ``ValueError``, raised to
  the producer before anything reaches Redis): every other argument (``amount``, ``customer.*``, ``trans_id``,
  extra ones), every other argument and option of every embedded signature, the task id and the other ids,
  ``apply_async(headers=...)``, stamped headers and any extra publish option (:func:`refuse_in_options`). One
  rule decides what is card-like (:mod:`worker.cards.numbers`);
* **checks amounts** on a first publish (:mod:`worker.payments.amounts`): an ``int`` or ``float`` ``amount`` is
  refused with
  :class:`worker.payments.amounts.AmountRefused` (dollars or cents?), ``amount_cents=300`` becomes ``amount="3.00"``;
* **masks** ``argsrepr``/``kwargsrepr`` (what task events, Flower, ``inspect`` and logs show): the card as
  ``{'number': 'xxxxxxxxxxxx1111', 'expire': '**'}``, any other card-like digits masked too.

Field names in refusals are paths: ``idempotency_key``, ``customer.name1`` (positional arguments of the payment
tasks are named by their parameter), ``args[5]``, ``task_id``; inside embedded signatures ``chain[0]`` is the
first task to run after this one, ``callbacks[0]``/``errbacks[0]`` the first ``link``/``link_error``, followed by
``.args[i]``, ``.kwargs.<name>`` or ``.options.<name>`` (``chain[0].kwargs.order_id``,
``callbacks[0].kwargs.tasks[1].kwargs.customer.addr1``).

On the worker side :func:`unencrypted_card_in` tells a task whether its own message holds a card that is not
encrypted (or card data in clear anywhere in its arguments or embedded signatures), so LIVE mode can refuse it.

Imports: the card vault and worker.cards.numbers (cryptography, stdlib) and Celery's ``saferepr``; no Redis.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery.utils.saferepr import saferepr

from worker.cards.numbers import (
    IDENTIFIER_NAMES,
    CardDataRefused,
    card_data_field,
    contains_card_number,
    is_card_like_identifier,
    mask_text,
    refuse_card_data,
)
from worker.cards.vault import CardVault, mask_card
from worker.catalogue import CARD_ARGUMENT, PARAMETERS
from worker.gateway import InvalidInput, validation
from worker.payments.amounts import publish_amounts

__all__ = ["CARD_ARGUMENT", "PARAMETERS", "EMBEDDED", "protect_publish", "protect_body", "masked_reprs",
           "unencrypted_card_in", "CardDataRefused"]

#: Where Celery embeds signatures in a message body's third element (and in ``as_task_v2``'s arguments).
EMBEDDED = ("chain", "callbacks", "errbacks", "chord")
#: Option names of a signature that hold other signatures.
_SIGNATURE_OPTIONS = ("link", "link_error", "chord", "chain")
#: Message ids a producer may choose (the task id becomes the payment id when there is no idempotency key).
_ID_OPTIONS = ("task_id", "group_id", "root_id", "parent_id", "shadow")

_INVALID = "invalid"
#: The argument of every payment task that becomes its operation id (store key and ORDER_ID).
KEY_ARGUMENT = "idempotency_key"


def _is_signature(value: Any) -> bool:
    return (isinstance(value, Mapping) and isinstance(value.get("task"), str)
            and any(k in value for k in ("args", "kwargs", "options", "subtask_type")))


def _is_invalid_marker(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {_INVALID}


def encrypt_card(card: Any, vault: CardVault) -> Any:
    """The encrypted card; a value that cannot be a card never travels at all (the worker records why). No card (a
    repeat charge by token, docs/tokens.md) stays None: there is nothing to encrypt."""
    if card is None or vault.is_encrypted(card) or _is_invalid_marker(card):
        return card
    if isinstance(card, Mapping) and card.get("number"):
        return vault.encrypt(dict(card))
    return {_INVALID: f"card must be a dict with a number, got {type(card).__name__}"}


def _is_identifier(task: str | None, name: object) -> bool:
    """An identifier argument of a payment task (encrypted when card-like; other tasks' arguments are free text:
    encrypting would change what they receive)."""
    return name in IDENTIFIER_NAMES and name in PARAMETERS.get(task or "", ())


def _check_key(value: Any, field: str) -> None:
    """An idempotency key is refused at the door, as the worker would refuse it (validation.idempotency_key):
    ``InvalidInput`` (a ``ValueError``) naming the field; nothing is published."""
    if value is not None and not CardVault.is_encrypted_identifier(value):  # a encrypted one was checked when encrypted
        try:
            validation.idempotency_key(str(value) if type(value) is int else value)
        except InvalidInput as exc:
            raise InvalidInput(field, exc.message) from None


def _param_name(task: str | None, index: int) -> str | None:
    params = PARAMETERS.get(task or "")
    return params[index] if params and index < len(params) else None


# ---- walking a message ------------------------------------------------------------------------------

class _Walk:
    """One message: encrypts cards in place of copies, refuses card data elsewhere."""

    def __init__(self, vault: CardVault, *, check_amounts: bool = False) -> None:
        self.vault = vault
        #: a first publish: amounts are checked and amount_cents turned into amount (worker/payments/amounts.py)
        self.check_amounts = check_amounts

    def call(self, task: str | None, args: Any, kwargs: Any, prefix: str) -> tuple[list[Any], dict[str, Any]]:
        """Seal/refuse one task call's arguments. ``prefix``: "" for the message's own task (fields named
        by parameter), else the signature's path (fields named ``<prefix>.args[i]`` / ``.kwargs.<name>``)."""
        args = list(args or ())
        kwargs = dict(kwargs or {})
        if self.check_amounts:
            args, kwargs = publish_amounts(task, args, kwargs, prefix)
        position = CARD_ARGUMENT.get(task or "")
        return self._positional(task, args, prefix, position), self._keywords(task, kwargs, prefix, position)

    def _positional(self, task: str | None, args: list[Any], prefix: str, position: int | None) -> list[Any]:
        for i, value in enumerate(args):
            if position is not None and i == position:
                args[i] = encrypt_card(value, self.vault)
                continue
            name = _param_name(task, i)
            if prefix:
                field = f"{prefix}.args[{i}]"
                check_as = f"{field}.{name}" if name else field  # named by its parameter
            else:
                field = check_as = name or f"args[{i}]"
            if name == KEY_ARGUMENT:
                _check_key(value, field)
            if _is_identifier(task, name) and is_card_like_identifier(value):
                args[i] = self.vault.encrypt_identifier(value)
                continue
            args[i] = self.value(value, field, check_as)
        return args

    def _keywords(self, task: str | None, kwargs: dict[str, Any], prefix: str,
                  position: int | None) -> dict[str, Any]:
        for key in list(kwargs):
            if position is not None and key == "card":
                kwargs[key] = encrypt_card(kwargs[key], self.vault)
                continue
            field = f"{prefix}.kwargs.{key}" if prefix else str(key)
            if contains_card_number(str(key)):
                raise CardDataRefused(field)
            if key == KEY_ARGUMENT and task in PARAMETERS:
                _check_key(kwargs[key], field)
            if _is_identifier(task, key) and is_card_like_identifier(kwargs[key]):
                kwargs[key] = self.vault.encrypt_identifier(kwargs[key])
                continue
            kwargs[key] = self.value(kwargs[key], field, field)
        return kwargs

    def value(self, value: Any, field: str, check_as: str | None = None) -> Any:
        """``value`` with every embedded signature encrypted; raises if card data sits anywhere else."""
        if _is_signature(value):
            return self.signature(value, field)
        if isinstance(value, Mapping):
            if not any(_holds_signature(v) for v in value.values()):
                _refuse(check_as or field, value, field)
                return value
            out = {}
            for key, item in value.items():
                if contains_card_number(str(key)):
                    raise CardDataRefused(f"{field}.{key}")
                out[key] = self.value(item, f"{field}.{key}")
            return out
        if isinstance(value, (list, tuple)):
            if not any(_holds_signature(v) for v in value):
                _refuse(check_as or field, value, field)
                return value
            return type(value)(self.value(item, f"{field}[{i}]") for i, item in enumerate(value))
        _refuse(check_as or field, value, field)
        return value

    def signature(self, sig: Mapping[str, Any], path: str) -> dict[str, Any]:
        task = sig.get("task")
        out = dict(sig)
        raw_args = sig.get("args")
        args, kwargs = self.call(task, raw_args, sig.get("kwargs"), path)
        out["args"] = type(raw_args)(args) if isinstance(raw_args, (list, tuple)) else args
        out["kwargs"] = kwargs
        options = sig.get("options")
        if isinstance(options, Mapping):
            new_options = {}
            for key, item in options.items():
                field = f"{path}.options.{key}"
                if contains_card_number(str(key)):
                    raise CardDataRefused(field)
                new_options[key] = self.value(item, field)
            out["options"] = new_options
        for key, item in sig.items():  # anything else a signature carries (immutable, subtask_type, ...)
            if key not in ("task", "args", "kwargs", "options"):
                _refuse(f"{path}.{key}", item)
        return out

    def embedded(self, key: str, value: Any) -> Any:
        """One of the body's embedded entries: a list of signatures (chain, callbacks, errbacks) or one (chord)."""
        if value is None:
            return None
        if key == "chord" or _is_signature(value):
            return self.value(value, key)
        items = list(value)
        if key == "chain":  # Celery keeps the chain reversed (the next task last): name links in run order
            n = len(items)
            encrypted = [self.value(item, f"chain[{n - 1 - i}]") for i, item in enumerate(items)]
        else:
            encrypted = [self.value(item, f"{key}[{i}]") for i, item in enumerate(items)]
        return type(value)(encrypted) if isinstance(value, (list, tuple)) else encrypted


def _holds_signature(value: Any) -> bool:
    if _is_signature(value):
        return True
    if isinstance(value, Mapping):
        return any(_holds_signature(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_signature(v) for v in value)
    return False


def _refuse(check_as: str, value: Any, shown_as: str | None = None) -> None:
    found = card_data_field(value, check_as)
    if found:
        if shown_as and shown_as != check_as and found.startswith(check_as):
            found = shown_as + found[len(check_as):]
        raise CardDataRefused(found)


# ---- masked reprs -------------------------------------------------------------------------------------

def _shown(value: Any, is_card: bool) -> Any:
    if CardVault.is_encrypted_identifier(value):
        return value["masked"]
    return mask_card(value) if is_card or CardVault.is_encrypted(value) else value


def masked_reprs(name: str, args: Any, kwargs: Any, *, argsrepr_maxsize: int = 1024,
                 kwargsrepr_maxsize: int = 1024) -> tuple[str, str]:
    """``argsrepr``/``kwargsrepr``: the card as ``{'number': 'xxxxxxxxxxxx1111', 'expire': '**'}``, a encrypted
    identifier as its mask, everything card-like in the text masked too (a repr is text)."""
    position = CARD_ARGUMENT.get(name)
    shown_args = tuple(_shown(v, i == position) for i, v in enumerate(args or ()))
    shown_kwargs = {k: _shown(v, position is not None and k == "card") for k, v in (kwargs or {}).items()}
    return (mask_text(saferepr(shown_args, argsrepr_maxsize)),
            mask_text(saferepr(shown_kwargs, kwargsrepr_maxsize)))


# ---- the entry points -----------------------------------------------------------------------------------

#: ``as_task_v2`` arguments that are walked (embedded signatures) or made here (the reprs), not checked as values.
_NOT_OPTION_VALUES = frozenset({*EMBEDDED, "argsrepr", "kwargsrepr"})


def refuse_in_options(options: Mapping[str, Any]) -> None:
    """Every other part of a message: the ids (``task_id``, ``group_id``, ``root_id``, ``parent_id``,
    ``shadow``), ``apply_async(headers=...)`` (``headers.<name>``), stamped headers (their values are options
    named by ``stamped_headers``) and any extra publish option (which kombu sends as a message property): free text,
    so a card-like value there is refused (:class:`CardDataRefused` naming ``task_id``, ``headers.x``,
    ``stamps.x``, ``x``)."""
    for key in _ID_OPTIONS:
        if options.get(key) is not None:
            refuse_card_data(key, options[key])
    stamped = options.get("stamped_headers") or ()
    for key, value in options.items():
        if key in _NOT_OPTION_VALUES or key in _ID_OPTIONS:
            continue
        field = f"stamps.{key}" if key in stamped else str(key)
        if contains_card_number(str(key)):
            raise CardDataRefused(field)
        refuse_card_data(field, value)


def protect_publish(name: str, args: Any, kwargs: Any, options: dict[str, Any], *, vault: CardVault,
                 argsrepr_maxsize: int = 1024,
                 kwargsrepr_maxsize: int = 1024) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """Seal and check one message about to be built. ``options``: ``as_task_v2``'s other arguments by name
    (``chain``, ``callbacks``, ``errbacks``, ``chord``, ``task_id``, ...). Returns new ``(args, kwargs,
    options)`` with ``argsrepr``/``kwargsrepr`` set; raises :class:`CardDataRefused` naming the field."""
    # A worker's retry publishes again what was accepted once (perhaps before amounts were checked): kept as is.
    walk = _Walk(vault, check_amounts=not options.get("retries"))
    refuse_in_options(options)
    if name in PARAMETERS and options.get("task_id") is not None:  # a payment's task id stands for its key
        validation.idempotency_key(options["task_id"], "task_id")
    args, kwargs = walk.call(name, args, kwargs, "")
    options = dict(options)
    for key in EMBEDDED:
        if options.get(key):
            options[key] = walk.embedded(key, options[key])
    options["argsrepr"], options["kwargsrepr"] = masked_reprs(
        name, args, kwargs, argsrepr_maxsize=argsrepr_maxsize, kwargsrepr_maxsize=kwargsrepr_maxsize)
    return args, kwargs, options


#: Headers Celery makes itself, not checked on the re-publish: the reprs (made again from the encrypted body) and the
#: publishing host's name (``origin``: ``gen<pid>@<hostname>``, whose digits are no one's data).
_MADE_HEADERS = frozenset({"argsrepr", "kwargsrepr", "origin"})


def protect_body(name: str, body: Any, *, vault: CardVault, headers: Mapping[str, Any] | None = None) -> list[Any]:
    """A stored message body ``[args, kwargs, embed]`` encrypted and checked the same way (the outbox re-publish);
    ``headers``: the stored message's headers, refused when one holds card data (an entry kept by older code)."""
    args, kwargs, embed = [*body, None, None, None][:3]
    walk = _Walk(vault)
    if headers is not None:
        refuse_in_options({key: value for key, value in headers.items() if key not in _MADE_HEADERS})
    args, kwargs = walk.call(name, args, kwargs, "")
    embed = dict(embed or {})
    for key in EMBEDDED:
        if embed.get(key):
            embed[key] = walk.embedded(key, embed[key])
    return [args, kwargs, embed]


# ---- the worker's check ---------------------------------------------------------------------------------

def _get(request_like: Any, name: str, default: Any = None) -> Any:
    if isinstance(request_like, Mapping):
        return request_like.get(name, default)
    return getattr(request_like, name, default)


def _unencrypted(card: Any) -> bool:
    return card is not None and not CardVault.is_encrypted(card) and not _is_invalid_marker(card)


def _clear_in_call(task: str | None, args: Any, kwargs: Any, prefix: str) -> str | None:
    position = CARD_ARGUMENT.get(task or "")
    args = list(args) if isinstance(args, (list, tuple)) else []
    kwargs = dict(kwargs) if isinstance(kwargs, Mapping) else {}
    return _clear_in_args(task, args, prefix, position) or _clear_in_kwargs(kwargs, prefix, position)


def _clear_in_args(task: str | None, args: list[Any], prefix: str, position: int | None) -> str | None:
    for i, value in enumerate(args):
        name = _param_name(task, i)
        if prefix:
            field = f"{prefix}.args[{i}]"
            check_as = f"{field}.{name}" if name else field
        else:
            field = check_as = name or f"args[{i}]"
        if position is not None and i == position:
            if _unencrypted(value):
                return field
            continue
        found = _clear_in_value(value, check_as)
        if found:
            return field + found[len(check_as):] if found.startswith(check_as) else found
    return None


def _clear_in_kwargs(kwargs: dict[str, Any], prefix: str, position: int | None) -> str | None:
    for key, value in kwargs.items():
        field = f"{prefix}.kwargs.{key}" if prefix else str(key)
        if position is not None and key == "card":
            if _unencrypted(value):
                return field
            continue
        if contains_card_number(str(key)):
            return mask_text(field)
        found = _clear_in_value(value, field)
        if found:
            return found
    return None


def _clear_in_value(value: Any, field: str) -> str | None:
    if _is_signature(value):
        return _clear_in_signature(value, field)
    if _holds_signature(value):
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            found = _clear_in_value(item, f"{field}.{key}" if isinstance(value, Mapping) else f"{field}[{key}]")
            if found:
                return found
        return None
    return card_data_field(value, field)


def _clear_in_signature(sig: Mapping[str, Any], path: str) -> str | None:
    found = _clear_in_call(sig.get("task"), sig.get("args"), sig.get("kwargs"), path)
    if found:
        return found
    options = sig.get("options")
    if isinstance(options, Mapping):
        for key, item in options.items():
            found = _clear_in_value(item, f"{path}.options.{key}")
            if found:
                return found
    return None


def unencrypted_card_in(request_like: Any) -> str | None:
    """Where a task's own message holds card data in clear, or None.

    ``request_like``: the task's ``self.request`` (Celery's Context: ``task``, ``args``, ``kwargs``, ``chain``,
    ``callbacks``, ``errbacks``, ``chord``, ``headers``, ``stamps``, the ids) or a dict with those keys. Finds a
    ``card`` of ``payments.sale`` / ``payments.auth`` that is not encrypted (the task's own, or in any embedded
    signature, recursively), and a card number anywhere else: the arguments (a card-like identifier that was not
    encrypted included), embedded signatures, custom headers (``headers.<name>``), stamps (``stamps.<name>``) and the
    message ids. Returns the field's path (``card``, ``chain[0].kwargs.card``, ``customer.name1``,
    ``headers.x``, ...), never the value.
    """
    task = _get(request_like, "task") or _get(request_like, "name")
    found = _clear_in_call(task, _get(request_like, "args"), _get(request_like, "kwargs"), "")
    if found:
        return found
    for key in ("headers", "stamps", "id", "group", "root_id", "parent_id", "shadow"):
        found = card_data_field(_get(request_like, key), key)
        if found:
            return found
    for key in EMBEDDED:
        value = _get(request_like, key)
        if not value:
            continue
        if key == "chord" or _is_signature(value):
            found = _clear_in_value(value, key)
        else:
            items = list(value)
            n = len(items)
            for i, item in enumerate(items):
                found = _clear_in_value(item, f"chain[{n - 1 - i}]" if key == "chain" else f"{key}[{i}]")
                if found:
                    break
        if found:
            return found
    return None
