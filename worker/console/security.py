"""The console's guards: who is logged in (session, or a trusted proxy's header when that mode is on), roles,
security headers, and rate limits (the ``limits`` library, in this process's memory).
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

#: No inline script or style anywhere, nothing from elsewhere, never in a frame.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


@dataclass(frozen=True)
class ConsoleConfig:
    """The console's settings (environment variables; docs/console.md)."""

    secret_key: str
    #: ``CONSOLE_TRUSTED_HEADER``: the header an authenticating reverse proxy names the user in ("": off).
    trusted_header: str = ""
    #: ``CONSOLE_TRUSTED_PROXIES``: addresses (or networks) that header is believed from.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    #: ``CONSOLE_SECURE_COOKIES``: the session cookie only over HTTPS (on behind TLS).
    secure_cookies: bool = False
    action_rate: str = "10/minute"
    login_rate: str = "10/minute"
    session_hours: float = 8.0
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConsoleConfig:
        env = dict(os.environ if env is None else env)
        proxies = tuple(p.strip() for p in env.get("CONSOLE_TRUSTED_PROXIES", "127.0.0.1,::1").split(",") if p.strip())
        for p in proxies:
            ipaddress.ip_network(p, strict=False)  # a typo fails at start, not at the first request
        for name in ("CONSOLE_ACTION_RATE", "CONSOLE_LOGIN_RATE"):
            if env.get(name):
                parse(env[name])
        return cls(secret_key=env.get("CONSOLE_SECRET_KEY") or secrets.token_hex(32),
                   trusted_header=env.get("CONSOLE_TRUSTED_HEADER", "").strip(),
                   trusted_proxies=proxies,
                   secure_cookies=env.get("CONSOLE_SECURE_COOKIES", "").strip().lower() in ("1", "true", "yes", "on"),
                   action_rate=env.get("CONSOLE_ACTION_RATE") or "10/minute",
                   login_rate=env.get("CONSOLE_LOGIN_RATE") or "10/minute",
                   env=env)

    def proxy_trusted(self, remote_addr: str | None) -> bool:
        if not self.trusted_header or not remote_addr:
            return False
        try:
            addr = ipaddress.ip_address(remote_addr)
        except ValueError:
            return False
        return any(addr in ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)


class RateLimits:
    """Moving-window limits per key (a user's actions; failed logins per address and per name)."""

    def __init__(self, action_rate: str, login_rate: str) -> None:
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.action: RateLimitItem = parse(action_rate)
        self.login: RateLimitItem = parse(login_rate)

    def allow_action(self, who: str) -> bool:
        return self.limiter.hit(self.action, "action", who)

    def login_allowed(self, address: str, name: str) -> bool:
        """Whether a login may be tried: fewer failures than the limit, from this address and for this name."""
        return (self.limiter.test(self.login, "login-address", address)
                and self.limiter.test(self.login, "login-name", name.lower()))

    def login_failed(self, address: str, name: str) -> None:
        self.limiter.hit(self.login, "login-address", address)
        self.limiter.hit(self.login, "login-name", name.lower())
