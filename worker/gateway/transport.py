"""HTTP transport: one pooled ``requests.Session``; requests exceptions mapped to what they
say about the charge (``classify``).

Nothing here follows redirects: bp10emu answers 302 and the result is in ``Location``.
Exceptions raised from here never carry the request (its body holds card data): the
original exception is not chained, only its class name is kept in ``.cause_name``.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import requests
import urllib3.exceptions as u3
from requests.adapters import HTTPAdapter

from .errors import GatewayError, NotSent, OutcomeUnknown

__all__ = ["HttpReply", "HttpStream", "HttpTransport", "classify", "DEFAULT_USER_AGENT", "POOL_MAXSIZE"]

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

    def __init__(self, response: requests.Response, url: str) -> None:
        self.status_code = response.status_code
        self._response = response
        self._url = url

    def chunks(self) -> Iterator[bytes]:
        failure: type[GatewayError] | None = None
        cause = ""
        try:
            yield from self._response.iter_content(self.CHUNK)
            return
        except (requests.exceptions.RequestException, OSError, u3.HTTPError, http.client.HTTPException) as exc:
            failure = classify(exc)
            cause = _describe(exc)
        finally:
            self._response.close()
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
        self._response.close()


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
    u3.LocationParseError,
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
    if isinstance(exc, requests.exceptions.ConnectionError):
        chain = list(_chain(exc))
        if any(isinstance(e, _AFTER_SEND) for e in chain):
            return OutcomeUnknown
        if any(isinstance(e, _BEFORE_SEND) for e in chain):
            return NotSent
        return OutcomeUnknown
    return OutcomeUnknown


class HttpTransport:
    """POSTs form data through one pooled keep-alive session; never follows redirects.

    A request is prepared and handed to the session's adapter directly: a gateway call needs none of
    ``Session.request``'s cookie, hook, redirect and environment merging, which cost a third of the
    client's CPU per call (bench/: ~370 -> ~250 us per POST on loopback). A ``session`` passed in lends
    its mounted adapters (connection pools) only; proxies and the CA bundle come from the environment.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        user_agent: str = DEFAULT_USER_AGENT,
        session: requests.Session | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.user_agent = user_agent
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_MAXSIZE, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            session.trust_env = False
        self.session = session
        # The headers Session.request would send (Accept, Accept-Encoding, Connection), ours on top.
        self._headers = dict(requests.utils.default_headers(), **{
            "User-Agent": user_agent, "Content-Type": "application/x-www-form-urlencoded"})
        # Proxy and CA-bundle settings come from the environment once, not on every request.
        self._verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self._proxies: dict[str, dict[str, str]] = {}

    def _proxies_for(self, url: str) -> dict[str, str]:
        proxies = self._proxies.get(url)
        if proxies is None:  # per URL, honouring no_proxy; the client posts to two URLs
            proxies = self._proxies[url] = requests.utils.get_environ_proxies(url)
        return proxies

    def _send(self, url: str, data: Mapping[str, str | None], *, stream: bool) -> requests.Response:
        request = requests.PreparedRequest()
        body = urlencode([(k, v) for k, v in data.items() if v is not None])  # as requests would: None is left out
        request.prepare(method="POST", url=url, headers=self._headers, data=body)
        return self.session.get_adapter(url).send(
            request,
            stream=stream,
            timeout=(self.connect_timeout, self.read_timeout),
            verify=self._verify,
            proxies=self._proxies_for(url),
        )

    def stream(self, url: str, data: Mapping[str, str | None]) -> HttpStream:
        """POST and return as soon as the reply's headers are in; the body is read by the caller (the read
        timeout applies to each read, so a long body never times out as a whole)."""
        failure: type[GatewayError] | None = None
        cause = ""
        try:
            return HttpStream(self._send(url, data, stream=True), url)
        except (requests.exceptions.RequestException, OSError, u3.HTTPError, http.client.HTTPException) as exc:
            failure = classify(exc)
            cause = _describe(exc)
        err = failure(f"{cause} posting to {_safe_url(url)}")
        err.cause_name = cause
        raise err

    def post(self, url: str, data: Mapping[str, str | None]) -> HttpReply:
        failure: type[GatewayError] | None = None
        cause = ""
        try:
            resp = self._send(url, data, stream=False)
            try:
                content = resp.content
            finally:
                resp.close()
            body = content.decode(resp.encoding or "utf-8", "replace")
            return HttpReply(resp.status_code, resp.headers.get("Location"), body)
        except (requests.exceptions.RequestException, OSError, u3.HTTPError, http.client.HTTPException) as exc:
            failure = classify(exc)
            cause = _describe(exc)
        # Raised outside the except block: the requests exception (which holds the request
        # body, i.e. card data) is neither chained nor kept as context.
        err = failure(f"{cause} posting to {_safe_url(url)}")
        err.cause_name = cause
        raise err

    def close(self) -> None:
        self.session.close()


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
