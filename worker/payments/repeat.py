"""Repeat charges without card data (docs/tokens.md): what a sale/auth sends when it charges a stored card (a token:
an earlier transaction id; a customer token) or stores one (a $0 auth, a new customer token). Pure: no I/O.

The plan is a function of the request and the operation id only, so every delivery of one operation sends the same
fields (a generated customer token name comes from the operation id) and binds its key to the same request.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from worker.gateway import InvalidInput, validation
from worker.gateway.tokens import (
    StoredCredential,
    customer_token,
    generated_customer_token,
    stored_credential,
)

__all__ = ["RepeatCharge", "RepeatPlan", "plan_repeat"]


@dataclass(frozen=True)
class RepeatCharge:
    """The producer's repeat-charge arguments of one sale/auth, as given (checked by :func:`plan_repeat`)."""

    token: Any = None
    customer_token: Any = None
    new_customer_token: Any = None
    initiator: Any = None
    scheduled: Any = False

    @property
    def names_stored_card(self) -> bool:
        return self.token is not None or self.customer_token is not None

    def as_request(self) -> dict[str, Any]:
        """The arguments given (for a refusal's fingerprint): only those the producer set."""
        given = {"token": self.token, "customer_token": self.customer_token,
                 "new_customer_token": self.new_customer_token, "initiator": self.initiator}
        out = {k: v for k, v in given.items() if v is not None}
        if self.scheduled is not False:
            out["scheduled"] = self.scheduled
        return out


@dataclass(frozen=True)
class RepeatPlan:
    #: what the idempotency key is bound to beside operation, amount and card ("" for a plain card charge)
    target: str = ""
    #: kept on the record from the claim on (token, customer_token, initiator)
    record_fields: dict[str, str] = field(default_factory=dict)
    #: the gateway verb's repeat-charge arguments (none for a plain card charge)
    gateway_kwargs: dict[str, Any] = field(default_factory=dict)


def plan_repeat(operation: str, payment_id: str, repeat: RepeatCharge, *, card_given: bool, amount: str,
                stored_id: str = "") -> RepeatPlan:
    """The plan of one sale/auth; raises InvalidInput naming the argument that is wrong.

    * exactly one of card, ``token``, ``customer_token``;
    * ``new_customer_token`` (a name, or True for one derived from the operation id) only on an auth of a card;
    * stored-credential flags: a storing charge (a $0 auth, or a new customer token) sends F with the initiator
      (customer unless said otherwise); a charge of a stored card sends S with the initiator (merchant unless
      said otherwise) and the STORED_ID its card was stored with (``stored_id``, when known); a plain card
      charge sends none (as before issue 29). ``scheduled`` only with a stored card or a storing charge.
    """
    sources = [name for name, given in (("card", card_given), ("token", repeat.token is not None),
                                        ("customer_token", repeat.customer_token is not None)) if given]
    if len(sources) != 1:
        raise InvalidInput("card", "give exactly one of card, token and customer_token"
                           + (f" (got {', '.join(sources)})" if sources else ""))
    kwargs: dict[str, Any] = {}
    record: dict[str, str] = {}
    parts: list[str] = []
    if repeat.token is not None:
        kwargs["token"] = record["token"] = validation.trans_id(repeat.token, field="token")
        parts.append(f"token:{kwargs['token']}")
    if repeat.customer_token is not None:
        kwargs["customer_token"] = record["customer_token"] = customer_token(repeat.customer_token)
        parts.append(f"customer:{kwargs['customer_token']}")
    if repeat.new_customer_token is not None and repeat.new_customer_token is not False:
        if operation != "auth" or not card_given:
            raise InvalidInput("new_customer_token", "stores a card: an auth with a card (amount 0.00 to only store)")
        name = (generated_customer_token(payment_id) if repeat.new_customer_token is True
                else customer_token(repeat.new_customer_token, "new_customer_token"))
        kwargs["new_customer_token"] = record["customer_token"] = name
        parts.append(f"new-customer:{name}")
    storing = card_given and (kwargs.get("new_customer_token") is not None
                              or (operation == "auth" and Decimal(amount) == 0))
    flags: StoredCredential | None = None
    if repeat.names_stored_card:
        flags = stored_credential(first=False, initiator=repeat.initiator or "merchant", scheduled=repeat.scheduled,
                                  stored_id=stored_id or None)
    elif storing:
        flags = stored_credential(first=True, initiator=repeat.initiator, scheduled=repeat.scheduled)
    elif repeat.initiator is not None or repeat.scheduled is not False:
        raise InvalidInput("initiator", "stored-credential flags go with a token, a customer token or a card being "
                                        "stored (a $0 auth or new_customer_token)")
    if flags is not None:
        kwargs["stored"] = flags
        record["initiator"] = {"C": "customer", "M": "merchant", "R": "merchant"}[flags.type]
        parts.append(f"stored:{flags.indicator}{flags.type}")
    return RepeatPlan(target="|".join(parts), record_fields=record, gateway_kwargs=kwargs)
