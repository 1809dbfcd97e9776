"""Standard Webhooks signatures (the ``standardwebhooks`` package): ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``), one signature per secret, separated
by spaces: during a rotation the old and the new secret both sign, and a receiver holding either verifies."""
from __future__ import annotations

import base64
import binascii
import secrets as random_secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

from worker.config import ConfigError

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


def new_secret() -> str:
    """A fresh ``whsec_`` secret (24 random bytes, base64)."""
    return SECRET_PREFIX + base64.b64encode(random_secrets.token_bytes(SECRET_BYTES)).decode()


def check_secret(secret: str, name: str = "secret") -> str:
    """``secret`` when it is ``whsec_`` + base64 of at least 16 bytes; else a ConfigError naming ``name`` (never the
    value)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ConfigError(f"{name}: a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX):] + "==", validate=False)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name}: not base64 after {SECRET_PREFIX!r}") from None
    if len(raw) < 16:
        raise ConfigError(f"{name}: too short (at least 16 bytes of key)")
    return secret


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,...`` per secret, space-separated (the spec's rotation form)."""
    when = datetime.fromtimestamp(timestamp, UTC)
    return " ".join(Webhook(s).sign(msg_id, when, body) for s in secrets)


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt (``timestamp``: the attempt's, whole seconds)."""
    if not secrets:
        raise ValueError("no secret to sign with")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature_header(secrets, msg_id, int(timestamp), body),
        "content-type": "application/json",
    }
