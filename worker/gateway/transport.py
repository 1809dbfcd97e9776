"""HTTP transport: POSTs on one pooled ``urllib3.PoolManager``; transport exceptions mapped to what they say
about the charge (``classify``).

urllib3 directly rather than through ``requests``: a gateway call needs none of requests' session, hooks, cookie
jar or ``Response`` model, which cost ~40 % of a POST's client CPU on loopback (docs/performance.md). What requests
gave is kept: the same headers (``requests.utils.default_headers``), proxies from the environment (``no_proxy``
honoured), the CA bundle of ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` or requests' own (certifi's), connect and
read timeouts, pooled keep-alive connections, no retries, and the body decoded as requests would (its charset).

Nothing here follows redirects: bp10emu answers 302 and the result is in ``Location``.
Exceptions raised from here never carry the request (its body holds card data): the
original exception is not chained, only its class name is kept in ``.cause_name``.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import requests
import requests.utils
import urllib3
import urllib3.exceptions as u3

from .errors import GatewayError, NotSent, OutcomeUnknown

__all__ = ["HttpReply", "HttpStream", "HttpTransport", "classify", "DEFAULT_USER_AGENT", "POOL_MAXSIZE"]

#: What a transport call may raise (urllib3's own errors, the socket's, http.client's; requests' from older callers).
_TRANSPORT_ERRORS = (requests.exceptions.RequestException, OSError, u3.HTTPError, http.client.HTTPException)

DEFAULT_USER_AGENT = "payments-worker/0.1 (+bluepay client)"
#: Connections kept per host: shared by all gevent greenlets / threads of one process.
POOL_MAXSIZE = 100


@dataclass(frozen=True)
class HttpReply:
    status_code: int
    location: str | None
    body: str


class HttpStream:
    """A reply whose body is read as it arrives (the daily report): ``status_code``, ``chunks()``, ``close()``.

    A transport failure while the body is read raises the class :func:`classify` gives it (never chained)."""

    CHUNK = 64 * 1024

    def __init__(self, response: urllib3.BaseHTTPResponse, url: str) -> None:
        self.status_code = response.status
        self._response = response
        self._url = url

    def chunks(self) -> Iterator[bytes]:
        failure: type[GatewayError] | None = None
        cause = ""
        try:
            for chunk in self._response.stream(self.CHUNK, decode_content=True):
                if chunk:
                    yield chunk
            return
        except _TRANSPORT_ERRORS as exc:
            failure = classify(exc)
            cause = _describe(exc)
        finally:
            self.close()
        err = failure(f"{cause} reading from {_safe_url(self._url)}")
        err.cause_name = cause
        raise err

    def read(self, limit: int = 64 * 1024) -> bytes:
        """At most ``limit`` bytes of the body (an error reply), then closed."""
        out = b""
        for chunk in self.chunks():
            out += chunk
            if len(out) >= limit:
                break
        self.close()
        return out[:limit]

    def close(self) -> None:
        # as requests' Response.close(): a body left unread closes its connection rather than going back to the pool
        self._response.close()
        self._response.release_conn()


# Evidence, found anywhere in the exception chain, that the request was (or may have been)
# written to the socket: the outcome is unknown.
_AFTER_SEND = (
    u3.ReadTimeoutError,
    u3.ProtocolError,
    u3.IncompleteRead,
    u3.InvalidChunkLength,
    u3.DecodeError,
    http.client.RemoteDisconnected,
    http.client.IncompleteRead,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)
# Evidence that no connection was ever established: nothing was sent.
_BEFORE_SEND = (
    u3.ConnectTimeoutError,  # NewConnectionError and NameResolutionError derive from it
    u3.LocationValueError,  # LocationParseError, URLSchemeUnknown: nothing was even attempted
    ConnectionRefusedError,
    socket.gaierror,
    ssl.SSLCertVerificationError,
)


def _chain(exc: BaseException, limit: int = 12) -> Iterator[BaseException]:
    """The exception, what it wraps (args, MaxRetryError.reason, __cause__, __context__)."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < limit:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for nxt in (getattr(e, "reason", None), e.__cause__, e.__context__, *getattr(e, "args", ())):
            if isinstance(nxt, BaseException) and id(nxt) not in seen:
                todo.append(nxt)


def classify(exc: BaseException) -> type[GatewayError]:
    """What a transport exception says about the charge.

    ======================================================  ==============
    exception                                               class
    ======================================================  ==============
    already a GatewayError                                  its own class
    requests ConnectTimeout                                 NotSent
    requests ReadTimeout                                    OutcomeUnknown
    ChunkedEncodingError / ContentDecodingError             OutcomeUnknown
    ConnectionError caused by reset/abort/RemoteDisconnected OutcomeUnknown
       /read timeout/protocol error (request went out)
    ConnectionError caused by refused/DNS/NewConnectionError NotSent
       /certificate verification
    InvalidURL / MissingSchema / InvalidSchema (local)      NotSent
    urllib3 / socket / http.client errors (urllib3 direct,  as above, by the chain: after-send
       no retries): ConnectTimeoutError/NewConnectionError   evidence first (OutcomeUnknown),
       /refused/DNS/bad URL NotSent; ReadTimeoutError,        then before-send (NotSent), else
       ProtocolError/reset/RemoteDisconnected unknown         OutcomeUnknown
    anything else                                           OutcomeUnknown
    ======================================================  ==============
    """
    if isinstance(exc, GatewayError):
        return type(exc)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return NotSent
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return OutcomeUnknown
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return OutcomeUnknown
    if isinstance(
        exc,
        (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema),
    ):
        return NotSent
    if isinstance(exc, (requests.exceptions.ConnectionError, u3.HTTPError, OSError, http.client.HTTPException)):
        chain = list(_chain(exc))
        if any(isinstance(e, _AFTER_SEND) for e in chain):
            return OutcomeUnknown
        if any(isinstance(e, _BEFORE_SEND) for e in chain):
            return NotSent
        return OutcomeUnknown
    return OutcomeUnknown


class HttpTransport:
    """POSTs form data over pooled keep-alive connections (one ``urllib3.PoolManager``, one ``ProxyManager`` per
    proxy the environment names); never follows redirects, never retries (the client decides what may be sent
    again)."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.user_agent = user_agent
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        # The headers a requests Session would send (Accept, Accept-Encoding, Connection), ours on top.
        self._headers = dict(requests.utils.default_headers(), **{
            "User-Agent": user_agent, "Content-Type": "application/x-www-form-urlencoded"})
        # The CA bundle as requests finds it: the environment's, else certifi's.
        bundle = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                  or requests.utils.DEFAULT_CA_BUNDLE_PATH)
        self._pool_kw: dict[str, Any] = {"num_pools": 4, "maxsize": POOL_MAXSIZE, "block": False,
                                         "cert_reqs": "CERT_REQUIRED", "ca_certs": bundle}
        self.pool = urllib3.PoolManager(**self._pool_kw)
        self._proxy_pools: dict[str, urllib3.ProxyManager] = {}
        self._proxies: dict[str, dict[str, str]] = {}

    def _proxies_for(self, url: str) -> dict[str, str]:
        proxies = self._proxies.get(url)
        if proxies is None:  # per URL, honouring no_proxy; the client posts to a few URLs
            proxies = self._proxies[url] = requests.utils.get_environ_proxies(url)
        return proxies

    def _pool_for(self, url: str) -> urllib3.PoolManager:
        proxy = requests.utils.select_proxy(url, self._proxies_for(url)) if self._proxies_for(url) else None
        if not proxy:
            return self.pool
        manager = self._proxy_pools.get(proxy)
        if manager is None:
            manager = self._proxy_pools[proxy] = urllib3.ProxyManager(proxy, **self._pool_kw)
        return manager

    def _send(self, url: str, data: Mapping[str, str | None], *, stream: bool) -> urllib3.BaseHTTPResponse:
        body = form_body(data)
        return self._pool_for(url).request(
            "POST", url, body=body, headers=self._headers, timeout=self._timeout, retries=False, redirect=False,
            preload_content=not stream, decode_content=True)

    def stream(self, url: str, data: Mapping[str, str | None]) -> HttpStream:
        """POST and return as soon as the reply's headers are in; the body is read by the caller (the read
        timeout applies to each read, so a long body never times out as a whole)."""
        failure: type[GatewayError] | None = None
        cause = ""
        try:
            return HttpStream(self._send(url, data, stream=True), url)
        except _TRANSPORT_ERRORS as exc:
            failure = classify(exc)
            cause = _describe(exc)
        err = failure(f"{cause} posting to {_safe_url(url)}")
        err.cause_name = cause
        raise err

    def post(self, url: str, data: Mapping[str, str | None]) -> HttpReply:
        failure: type[GatewayError] | None = None
        cause = ""
        try:
            resp = self._send(url, data, stream=False)  # the body read, the connection back in the pool
            return HttpReply(resp.status, resp.headers.get("Location"), _text(resp))
        except _TRANSPORT_ERRORS as exc:
            failure = classify(exc)
            cause = _describe(exc)
        # Raised outside the except block: the exception (which may hold the request
        # body, i.e. card data) is neither chained nor kept as context.
        err = failure(f"{cause} posting to {_safe_url(url)}")
        err.cause_name = cause
        raise err

    def close(self) -> None:
        self.pool.clear()
        for manager in self._proxy_pools.values():
            manager.clear()


# What quote_plus leaves as it is: such a name or value is its own encoding.
_FORM_SAFE = re.compile(r"[A-Za-z0-9_.~-]*")


def _form_quote(value: object) -> str:
    if type(value) is str and _FORM_SAFE.fullmatch(value):
        return value
    return quote_plus(value if isinstance(value, str | bytes) else str(value))


def form_body(data: Mapping[str, str | None]) -> str:
    """``urlencode`` of the pairs whose value is not None (as requests would: None is left out), byte for byte, at
    about half its CPU: most of BluePay's names and values need no quoting (~40 us per POST)."""
    return "&".join(f"{_form_quote(k)}={_form_quote(v)}" for k, v in data.items() if v is not None)


def _text(resp: urllib3.BaseHTTPResponse) -> str:
    """The body as text, as requests decodes it: the reply's charset (ISO-8859-1 for text/* without one), else
    UTF-8; an unknown charset name (gateway garbage) is read as UTF-8, never an exception."""
    encoding = requests.utils.get_encoding_from_headers(resp.headers) or "utf-8"
    try:
        return resp.data.decode(encoding, "replace")
    except LookupError:
        return resp.data.decode("utf-8", "replace")


def _describe(exc: BaseException) -> str:
    """Class names along the chain (never messages: they could echo request data)."""
    names: list[str] = []
    for e in _chain(exc):
        name = type(e).__name__
        if name not in names and not isinstance(e, u3.MaxRetryError):
            names.append(name)
    return names[0] + (f" ({', '.join(names[1:4])})" if len(names) > 1 else "")


def _safe_url(url: str) -> str:
    return url.split("?", 1)[0]
