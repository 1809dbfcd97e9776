"""Card vault: encrypt card data with Fernet so it never travels or rests in clear.

The publish path encrypts the producer's ``card`` argument; the worker opens it only to build the
gateway request. The encrypted form is a small JSON-safe dict::

    {"sealed": "<fernet token>", "masked": "xxxxxxxxxxxx1111"}

(The field names ``sealed`` / ``sealed_id`` are the message format's, kept so that messages already in a broker or an
outbox still open; everything else says encrypt/decrypt: "seal" is BluePay's TAMPER_PROOF_SEAL only.)

``PAYMENTS_CARD_KEY`` holds one or more comma-separated Fernet keys (32 url-safe base64 bytes,
``Fernet.generate_key()``). The FIRST key encrypts; every key opens (MultiFernet), so keys rotate by
prepending a new key, waiting until no message encrypted with the old one can still be in flight
(broker retries included), then removing the old key.

Without a key, TEST mode falls back to :data:`DEVELOPMENT_KEY` (with a WARNING); LIVE mode refuses
to start, and also refuses the development key.

Nothing raised or logged here contains a key, a token, a card number or a CVV2.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

# Masking is decided in worker.cards.numbers, for every guard and scanner alike (mask_number is re-exported).
from worker.cards.numbers import MASK_PREFIX as _MASK_PREFIX
from worker.cards.numbers import mask_number
from worker.config import ConfigError  # the one configuration error: a missing or invalid card key is one too

__all__ = [
    "DEVELOPMENT_KEY", "ConfigError", "CardDecryptError", "CardVault", "load_card_key",
    "mask_card", "mask_number",
]

log = logging.getLogger(__name__)

#: Fixed, public Fernet key for TEST-mode demos ONLY: base64url of the 32 ASCII bytes
#: ``payments-dev-key-TEST-mode-only!``. Anything encrypted with it is readable by anyone who reads
#: this file; LIVE mode refuses it.
DEVELOPMENT_KEY = "cGF5bWVudHMtZGV2LWtleS1URVNULW1vZGUtb25seSE="


class CardDecryptError(Exception):
    """An encrypted card could not be decrypted (wrong key, tampered or malformed token)."""


class CardVault:
    """Seals and opens card dicts. ``keys``: Fernet keys, the first one encrypts, all of them open."""

    def __init__(self, keys: Iterable[str | bytes]):
        fernets = []
        for i, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key))
            except Exception:
                raise ConfigError(
                    f"card key #{i} is not a valid Fernet key (expected 32 url-safe base64-encoded bytes)"
                ) from None
        if not fernets:
            raise ConfigError("no card key given")
        self._fernet = MultiFernet(fernets)
        self.key_count = len(fernets)

    def __repr__(self) -> str:
        return f"<CardVault keys={self.key_count}>"

    def encrypt(self, card: dict[str, Any]) -> dict[str, Any]:
        """Seal a clear card ``{"number", "expire", "cvv2"?}``; an already encrypted dict is returned as is."""
        if self.is_encrypted(card):
            return card
        if not isinstance(card, dict) or not card.get("number"):
            raise ValueError("card must be a dict with a 'number'")
        # Every key travels encrypted, unknown ones too: the worker's validation must see a misspelt
        # "cvv" and refuse the card, rather than charge it without its CVV2.
        payload = json.dumps({str(k): v for k, v in card.items()}, separators=(",", ":"), default=str).encode()
        token = self._fernet.encrypt(payload).decode("ascii")
        return {"sealed": token, "masked": mask_number(str(card["number"]))}

    def decrypt(self, encrypted: dict[str, Any], *, ttl: int | None = None) -> dict[str, Any]:
        """Return the clear card dict. ``ttl`` (seconds) optionally rejects older encrypts."""
        if not self.is_encrypted(encrypted):
            raise CardDecryptError("not a encrypted card")
        try:
            if ttl is None:
                payload = self._fernet.decrypt(encrypted["sealed"].encode("ascii"))
            else:
                payload = self._fernet.decrypt(encrypted["sealed"].encode("ascii"), ttl=ttl)
            card = json.loads(payload)
        except (InvalidToken, UnicodeError, ValueError, TypeError):
            raise CardDecryptError(
                "encrypted card could not be decrypted (wrong key, expired or tampered token)") from None
        if not isinstance(card, dict) or "number" not in card:
            raise CardDecryptError("encrypted card payload is malformed")
        return card

    def rotate(self, encrypted: dict[str, Any]) -> dict[str, Any]:
        """Re-encrypt with the current first key (for draining old keys)."""
        if not self.is_encrypted(encrypted):
            raise CardDecryptError("not a encrypted card")
        try:
            token = self._fernet.rotate(encrypted["sealed"].encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError, ValueError, TypeError):
            raise CardDecryptError("encrypted card could not be decrypted (wrong key or tampered token)") from None
        return {**encrypted, "sealed": token}

    def encrypt_identifier(self, value: Any) -> dict[str, Any]:
        """Seal a card-like identifier (``idempotency_key``, ``order_id``: a ``str`` or an ``int``) as ``{"sealed_id":
        token, "masked": ...}``; an already encrypted one is returned as it is. The token keeps the value's type (an
        ``int`` opens as an ``int``)."""
        if self.is_encrypted_identifier(value):
            encrypted: dict[str, Any] = value  # (is_encrypted_identifier: already the encrypted dict)
            return encrypted
        payload = json.dumps({"id": value}, separators=(",", ":")).encode()
        return {"sealed_id": self._fernet.encrypt(payload).decode("ascii"), "masked": mask_number(value)}

    def decrypt_identifier(self, encrypted: Any) -> Any:
        """The identifier inside a :meth:`encrypt_identifier` dict; anything else is returned as it is."""
        if not self.is_encrypted_identifier(encrypted):
            return encrypted
        try:
            value = json.loads(self._fernet.decrypt(encrypted["sealed_id"].encode("ascii")))["id"]
        except (InvalidToken, UnicodeError, ValueError, TypeError, KeyError):
            raise CardDecryptError(
                "encrypted identifier could not be decrypted (wrong key or tampered token)") from None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise CardDecryptError("encrypted identifier payload is malformed")
        return value

    @staticmethod
    def is_encrypted_identifier(value: Any) -> bool:
        return isinstance(value, dict) and isinstance(value.get("sealed_id"), str) and set(value) <= {
            "sealed_id", "masked"}

    @staticmethod
    def is_encrypted(value: Any) -> bool:
        return (isinstance(value, dict) and isinstance(value.get("sealed"), str)
                and "number" not in value and "cvv2" not in value)


def load_card_key(env_value: str | None, mode: str) -> CardVault:
    """Build the vault from ``PAYMENTS_CARD_KEY`` for ``BLUEPAY_MODE`` (TEST or LIVE)."""
    mode_u = (mode or "").strip().upper()
    if mode_u not in ("TEST", "LIVE"):
        raise ConfigError(f"BLUEPAY_MODE must be TEST or LIVE, got {mode!r}")
    keys = [k.strip() for k in (env_value or "").split(",") if k.strip()]
    if not keys:
        if mode_u == "LIVE":
            raise ConfigError("PAYMENTS_CARD_KEY is required in LIVE mode")
        log.warning("PAYMENTS_CARD_KEY is not set: encrypting card data with the public DEVELOPMENT_KEY "
                    "(TEST mode only; set PAYMENTS_CARD_KEY to a Fernet key)")
        return CardVault([DEVELOPMENT_KEY])
    if mode_u == "LIVE" and DEVELOPMENT_KEY in keys:
        raise ConfigError("the public development card key must not be used in LIVE mode")
    try:
        return CardVault(keys)
    except ConfigError as exc:
        raise ConfigError(f"PAYMENTS_CARD_KEY: {exc}") from None


def mask_card(card: Any) -> dict[str, Any]:
    """Masked view of a clear or encrypted card, safe for logs, argsrepr and Flower."""
    if CardVault.is_encrypted(card):
        return {"number": mask_number(card.get("masked")), "expire": "**"}
    if not isinstance(card, dict):
        return {"number": _MASK_PREFIX}
    out = {"number": mask_number(card.get("number")), "expire": str(card.get("expire") or "")}
    if card.get("cvv2") not in (None, ""):
        out["cvv2"] = "***"
    return out
