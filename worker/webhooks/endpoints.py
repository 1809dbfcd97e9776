"""Webhook endpoints: the static one (PAYMENTS_WEBHOOK_URL + PAYMENTS_WEBHOOK_SECRET) and those added with
``payments webhooks add``, kept in Redis (``<prefix>wh:endpoints``, id -> JSON), with their delivery state
(``<prefix>wh:state:<id>``: disabled, why, failing since, last error, last success).

A secret rotation (``payments webhooks rotate ID``) puts a new secret first and keeps the old one signing for a
while (``--keep``, default 24 h): both sign every delivery meanwhile, so a receiver may switch whenever it likes.

Secrets kept in Redis are encrypted with PAYMENTS_CARD_KEY (Fernet; the first key encrypts, any opens): a copy of
Redis does not let anyone sign webhooks. A secret no key opens signs nothing (its deliveries fail, saying so).
"""
from __future__ import annotations

import json
import secrets as random_ids
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
from cryptography.fernet import InvalidToken, MultiFernet

from worker.config import ConfigError
from worker.webhooks.events import EVENT_TYPES
from worker.webhooks.keys import WebhookKeys
from worker.webhooks.signing import new_secret

STATIC_ID = "static"
SEALED = "fernet:"


def check_url(url: str, name: str = "URL") -> str:
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: {url!r} is not an http(s) URL")
    return url.strip()


def check_events(events: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(e.strip() for e in events if e.strip())
    unknown = [e for e in chosen if e not in EVENT_TYPES]
    if unknown:
        raise ConfigError(f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}")
    return chosen


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    #: (secret, signing until: epoch seconds, 0 = for good); the newest first
    secrets: tuple[tuple[str, float], ...] = field(repr=False)
    events: tuple[str, ...] = ()
    disabled: bool = False
    disabled_reason: str = ""
    failing_since: float = 0.0
    last_error: str = ""
    last_success: float = 0.0
    created_at: float = 0.0

    @property
    def static(self) -> bool:
        return self.id == STATIC_ID

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type in self.events

    def signing_secrets(self, now: float) -> list[str]:
        return [s for s, until in self.secrets if not until or until > now]

    def shown(self) -> dict[str, Any]:
        """What ``list`` prints: no secret."""
        return {"id": self.id, "url": self.url, "events": list(self.events) or ["*"], "enabled": not self.disabled,
                "disabled_reason": self.disabled_reason, "failing_since": self.failing_since,
                "last_error": self.last_error, "last_success": self.last_success, "secrets": len(self.secrets)}


def _state(raw: dict[str, str]) -> dict[str, Any]:
    return {"disabled": raw.get("disabled") == "1", "disabled_reason": raw.get("disabled_reason", ""),
            "failing_since": float(raw.get("failing_since") or 0), "last_error": raw.get("last_error", ""),
            "last_success": float(raw.get("last_success") or 0)}


class Endpoints:
    """The endpoints of one store prefix."""

    def __init__(self, client: redis.Redis, keys: WebhookKeys, *, static_url: str = "",
                 static_secrets: tuple[str, ...] = (), static_events: tuple[str, ...] = (),
                 cipher: MultiFernet | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.cipher = cipher
        self.static_url = static_url
        self.static_secrets = static_secrets
        self.static_events = static_events

    def all(self) -> list[Endpoint]:
        """Every endpoint, with its state (two round trips however many)."""
        configs = {str(k): json.loads(v) for k, v in self.redis.hgetall(self.keys.endpoints).items()}
        ids = sorted(configs)
        if self.static_url:
            ids.insert(0, STATIC_ID)
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys.state(i))
        states = pipe.execute()
        found = []
        for i, raw in zip(ids, states, strict=True):
            if i == STATIC_ID:
                cfg: dict[str, Any] = {"url": self.static_url, "secrets": [[s, 0] for s in self.static_secrets],
                                       "events": list(self.static_events), "created_at": 0}
            else:
                cfg = configs[i]
            opened = ((self._open(s), float(u)) for s, u in cfg["secrets"])
            found.append(Endpoint(id=i, url=cfg["url"], secrets=tuple((s, u) for s, u in opened if s),
                                  events=tuple(cfg.get("events") or ()), created_at=float(cfg.get("created_at") or 0),
                                  **_state(raw)))
        return found

    def _seal(self, secret: str) -> str:
        return SEALED + self.cipher.encrypt(secret.encode()).decode() if self.cipher is not None else secret

    def _open(self, stored: str) -> str:
        """The secret, or "" when no key opens it."""
        if not stored.startswith(SEALED):
            return stored
        if self.cipher is None:
            return ""
        try:
            return self.cipher.decrypt(stored[len(SEALED):].encode()).decode()
        except InvalidToken:
            return ""

    def get(self, endpoint_id: str) -> Endpoint | None:
        return next((e for e in self.all() if e.id == endpoint_id), None)

    def add(self, url: str, events: Iterable[str] = (), *, now: float) -> tuple[Endpoint, str]:
        """A new endpoint and its secret (shown once)."""
        url = check_url(url)
        chosen = check_events(events)
        endpoint_id = "ep_" + random_ids.token_hex(8)
        secret = new_secret()
        cfg = {"url": url, "secrets": [[self._seal(secret), 0]], "events": list(chosen), "created_at": now}
        self.redis.hset(self.keys.endpoints, endpoint_id, json.dumps(cfg))
        found = self.get(endpoint_id)
        assert found is not None
        return found, secret

    def _config(self, endpoint_id: str) -> dict[str, Any]:
        if endpoint_id == STATIC_ID:
            raise ConfigError("the static endpoint is configured by PAYMENTS_WEBHOOK_URL/PAYMENTS_WEBHOOK_SECRET")
        raw = self.redis.hget(self.keys.endpoints, endpoint_id)
        if raw is None:
            raise ConfigError(f"no webhook endpoint {endpoint_id!r}")
        return dict(json.loads(raw))

    def remove(self, endpoint_id: str) -> None:
        self._config(endpoint_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.keys.endpoints, endpoint_id)
        pipe.delete(self.keys.state(endpoint_id))
        pipe.execute()

    def set_enabled(self, endpoint_id: str, enabled: bool, reason: str = "") -> None:
        """``enable`` also forgets the failure streak (a fresh WEBHOOK_DISABLE_AFTER)."""
        if endpoint_id != STATIC_ID:
            self._config(endpoint_id)
        key = self.keys.state(endpoint_id)
        if enabled:
            self.redis.hdel(key, "disabled", "disabled_reason", "failing_since")
        else:
            self.redis.hset(key, mapping={"disabled": "1", "disabled_reason": reason or "disabled by an operator"})

    def rotate(self, endpoint_id: str, *, now: float, keep_seconds: float) -> str:
        """A new secret, first; the current ones keep signing ``keep_seconds`` more (0: drop them now)."""
        cfg = self._config(endpoint_id)
        secret = new_secret()
        until = now + keep_seconds
        kept = [[s, min(float(u), until) if float(u) else until] for s, u in cfg["secrets"]
                if keep_seconds > 0 and (not float(u) or float(u) > now)]
        cfg["secrets"] = [[self._seal(secret), 0], *kept]
        self.redis.hset(self.keys.endpoints, endpoint_id, json.dumps(cfg))
        return secret
