"""Amounts as producers pass them to ``delay()``: unambiguous, or refused before anything is published.

``amount`` is dollars and cents as a two-decimal string or a ``Decimal`` (``"3.00"``, ``Decimal("3.00")``). A Python
``int`` is refused: ``amount=300`` means 300.00 to BluePay and 3.00 to a merchant used to Stripe's cents, and a
payment must not guess. A ``float`` is refused too: binary floating point cannot hold most cents exactly. Whoever
counts in cents says so: ``amount_cents=300`` becomes ``amount="3.00"`` in the message (the worker never sees
``amount_cents``).

:func:`publish_amounts` runs on the publish path (``worker/cards/messages.py``, for the message's own task and every
signature embedded in it), so ``sale.delay(...)``, ``sale.s(...)`` in a chain and ``apply_async`` all get the same
rule. It is not applied to a message published again (the outbox, a worker's retry): what was accepted once keeps
its meaning. Plain Python: no Celery import.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from worker.cards.numbers import refuse_card_data
from worker.catalogue import PARAMETERS

__all__ = ["AmountRefused", "publish_amounts", "cents_to_amount"]

AMOUNT = "amount"
AMOUNT_CENTS = "amount_cents"


class AmountRefused(ValueError):
    """An amount that cannot be taken at its word; ``field`` names it (``amount``, ``chain[0].kwargs.amount``)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"refused: {field}: {reason}")


def cents_to_amount(cents: Any, field: str = AMOUNT_CENTS) -> str:
    """``300`` -> ``"3.00"``; only a non-negative ``int`` is a number of cents."""
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise AmountRefused(field, f"must be an int number of cents, not {type(cents).__name__}")
    if cents < 0:
        raise AmountRefused(field, "must not be negative")
    return f"{Decimal(cents).scaleb(-2):.2f}"


def _check_amount(value: Any, field: str) -> None:
    refuse_card_data(field, value)  # a card-like "amount" is card data first: refused without being echoed
    if isinstance(value, bool):
        raise AmountRefused(field, "a bool is not an amount")
    if isinstance(value, int):
        raise AmountRefused(field, (
            f"{value!r} is an int, which is ambiguous (dollars or cents?): pass dollars and cents as a string "
            f"or Decimal (amount=\"{value}.00\" charges {value}.00), or the cents explicitly "
            f"(amount_cents={value} charges {cents_to_amount(abs(value))})"))
    if isinstance(value, float):
        raise AmountRefused(field, (
            f"{value!r} is a float, which cannot hold cents exactly: pass a two-decimal string or Decimal "
            f"(amount=\"{value:.2f}\") or amount_cents=<int>"))


def publish_amounts(task: str | None, args: Sequence[Any], kwargs: Mapping[str, Any],
                    prefix: str = "") -> tuple[list[Any], dict[str, Any]]:
    """``args``/``kwargs`` of one call of a payment task with ``amount_cents`` turned into ``amount`` and every
    ``amount`` checked; raises :class:`AmountRefused` naming the field. Other tasks pass through untouched."""
    params = PARAMETERS.get(task or "")
    if not params or AMOUNT not in params:
        return list(args), dict(kwargs)
    position = params.index(AMOUNT)
    args, kwargs = list(args), dict(kwargs)  # copies: the caller's message is not changed

    def named(name: str, index: int | None = None) -> str:
        if not prefix:
            return name
        return f"{prefix}.args[{index}]" if index is not None else f"{prefix}.kwargs.{name}"

    if AMOUNT_CENTS in kwargs:
        cents = kwargs.pop(AMOUNT_CENTS)
        if AMOUNT in kwargs or len(args) > position:
            raise AmountRefused(named(AMOUNT_CENTS), "give amount or amount_cents, not both")
        if cents is not None:
            kwargs[AMOUNT] = cents_to_amount(cents, named(AMOUNT_CENTS))
    if len(args) > position:
        _check_amount(args[position], named(AMOUNT, position))
    if AMOUNT in kwargs:
        _check_amount(kwargs[AMOUNT], named(AMOUNT))
    return args, kwargs
