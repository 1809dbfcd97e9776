"""classify() as a table, and the real HttpTransport against servers started here on 127.0.0.1."""

import http.client
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlencode

import pytest
import requests
import urllib3
import urllib3.exceptions as u3
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from tests.support.ports import closed_port
from worker.gateway import BluePayClient
from worker.gateway.errors import NotSent, OutcomeUnknown
from worker.gateway.transport import POOL_MAXSIZE, HttpReply, HttpTransport, classify, form_body

from . import gateway_replies as R

POOL = HTTPConnectionPool("secure.example", 443)
CONN = HTTPConnection("secure.example", 443)
URL = "/interfaces/bp10emu"


def _mre(reason):
    return u3.MaxRetryError(POOL, URL, reason=reason)


RE = requests.exceptions
CASES = [
    # urllib3 directly (worker/gateway/transport.py posts with retries=False: the error itself, unwrapped)
    ("u3 refused", u3.NewConnectionError(CONN, "[Errno 111] Connection refused"), NotSent),
    ("u3 connect timeout", u3.ConnectTimeoutError(CONN, "timed out"), NotSent),
    ("u3 bad url", u3.LocationParseError("http://[::1"), NotSent),
    ("u3 unknown scheme", u3.URLSchemeUnknown("ftp"), NotSent),
    ("u3 read timeout", u3.ReadTimeoutError(POOL, URL, "read timed out"), OutcomeUnknown),
    ("u3 aborted", u3.ProtocolError("Connection aborted.", http.client.RemoteDisconnected("closed")), OutcomeUnknown),
    ("u3 reset", u3.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")), OutcomeUnknown),
    ("socket refused", ConnectionRefusedError(111, "refused"), NotSent),
    ("socket reset", ConnectionResetError(104, "reset"), OutcomeUnknown),
    ("connect timeout", RE.ConnectTimeout(_mre(u3.ConnectTimeoutError(CONN, "timed out"))), NotSent),
    ("refused", RE.ConnectionError(_mre(u3.NewConnectionError(CONN, "[Errno 111] Connection refused"))), NotSent),
    ("dns", RE.ConnectionError(_mre(u3.NameResolutionError(
        "secure.example", CONN, socket.gaierror(-2, "Name or service not known")))), NotSent),
    ("bare refused", RE.ConnectionError(ConnectionRefusedError(111, "refused")), NotSent),
    ("cert verify", RE.SSLError(_mre(u3.SSLError(ssl.SSLCertVerificationError(1, "certificate verify failed")))),
     NotSent),
    ("missing schema", RE.MissingSchema("no scheme"), NotSent),
    ("invalid url", RE.InvalidURL("bad"), NotSent),
    ("read timeout", RE.ReadTimeout(u3.ReadTimeoutError(POOL, URL, "Read timed out.")), OutcomeUnknown),
    ("read timeout in body", RE.ConnectionError(u3.ReadTimeoutError(POOL, URL, "Read timed out.")), OutcomeUnknown),
    ("remote disconnected", RE.ConnectionError(u3.ProtocolError(
        "Connection aborted.", http.client.RemoteDisconnected("Remote end closed connection without response"))),
     OutcomeUnknown),
    ("reset", RE.ConnectionError(u3.ProtocolError(
        "Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))), OutcomeUnknown),
    ("aborted", RE.ConnectionError(u3.ProtocolError("Connection aborted.", ConnectionAbortedError(103, "aborted"))),
     OutcomeUnknown),
    ("chunked", RE.ChunkedEncodingError(u3.ProtocolError("Response ended prematurely")), OutcomeUnknown),
    ("decode", RE.ContentDecodingError("bad gzip"), OutcomeUnknown),
    ("other ssl", RE.SSLError(_mre(u3.SSLError("decryption failed"))), OutcomeUnknown),
    ("unknown connection error", RE.ConnectionError("???"), OutcomeUnknown),
    ("unrelated", ValueError("x"), OutcomeUnknown),
    ("already NotSent", NotSent("x"), NotSent),
    ("already OutcomeUnknown", OutcomeUnknown("x"), OutcomeUnknown),
]


@pytest.mark.parametrize("name,exc,expected", CASES, ids=[c[0] for c in CASES])
def test_classify_table(name, exc, expected):
    assert classify(exc) is expected


def test_one_pool_manager_with_keep_alive_pools():
    t = HttpTransport(connect_timeout=1, read_timeout=1)
    manager = t._pool_for("https://secure.bluepay.com/interfaces/bp10emu")
    assert manager is t.pool and manager.connection_pool_kw["maxsize"] == POOL_MAXSIZE >= 50
    assert t._pool_for("http://127.0.0.1/") is manager
    assert manager.connection_pool_kw["cert_reqs"] == "CERT_REQUIRED" and manager.connection_pool_kw["ca_certs"]
    t.close()


def test_a_connection_is_reused_between_posts(http_server):
    srv, seen = http_server
    t = HttpTransport(connect_timeout=2, read_timeout=2)
    url = f"http://127.0.0.1:{srv.server_port}/interfaces/bp10emu"
    t.post(url, {"A": "1"})
    t.post(url, {"A": "2"})
    assert len(seen) == 2 and len(_Handler.peers) == 1  # both POSTs on one kept-alive connection
    t.close()


def test_a_proxied_url_goes_through_a_proxy_manager(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    t = HttpTransport(connect_timeout=1, read_timeout=1)
    proxied = t._pool_for("https://secure.bluepay.com/interfaces/bp10emu")
    assert isinstance(proxied, urllib3.ProxyManager) and proxied.proxy is not None
    assert proxied.proxy.host == "proxy.example" and proxied.proxy.port == 3128
    assert t._pool_for("https://internal.example/interfaces/bp10emu") is t.pool
    t.close()


def test_garbage_charset_is_read_as_utf8(http_server):
    srv, _seen = http_server
    t = HttpTransport(connect_timeout=2, read_timeout=2)
    reply = t.post(f"http://127.0.0.1:{srv.server_port}/interfaces/charset", {"A": "1"})
    assert reply.status_code == 200 and reply.body == "STATUS=1"
    t.close()


# ------------------------------------------------------------------ real local servers

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a gateway answers
    seen: ClassVar[list[tuple[Any, ...]]] = []
    headers_seen: ClassVar[list[dict[str, str]]] = []
    peers: ClassVar[set[Any]] = set()

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        self.seen.append(("POST", self.path, self.headers.get("User-Agent"), form))
        self.headers_seen.append(dict(self.headers))
        self.peers.add(self.client_address)
        if self.path.endswith("/charset"):
            body = b"STATUS=1"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=no-such-charset")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.endswith("/stq"):
            body = R.body(R.stq_stamped()).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(302)
        self.send_header("Location", R.location(R.approved()))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        self.seen.append(("GET", self.path, None, None))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def http_server():
    _Handler.seen = []
    _Handler.headers_seen = []
    _Handler.peers = set()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv, _Handler.seen
    srv.shutdown()
    srv.server_close()


def test_302_is_not_followed(http_server):
    srv, seen = http_server
    t = HttpTransport(connect_timeout=2, read_timeout=2)
    reply = t.post(f"http://127.0.0.1:{srv.server_port}/interfaces/bp10emu", {"A": "1", "B": "x y"})
    assert isinstance(reply, HttpReply)
    assert reply.status_code == 302 and reply.location is not None
    assert reply.location.startswith("/interfaces/wlcatch?Result=APPROVED")
    assert [s[0] for s in seen] == ["POST"]  # no GET of wlcatch
    assert seen[0][2] == "payments-worker/0.1 (+bluepay client)"
    assert seen[0][3] == {"A": ["1"], "B": ["x y"]}
    t.close()


def test_client_end_to_end_against_local_server(http_server):
    srv, seen = http_server
    c = BluePayClient(account_id=R.ACCOUNT, secret_key=R.SECRET, base_url=f"http://127.0.0.1:{srv.server_port}/interfaces")
    r = c.sale("3.00", {"number": "4111111111111111", "expire": "1299", "cvv2": "123"}, order_id="order-1")
    assert r.approved and r.trans_id == R.TRANS_ID and r.attempts == 1
    assert seen[0][1] == "/interfaces/bp10emu"
    assert seen[0][3]["CC_NUM"] == ["4111111111111111"]
    found = c.query(order_id="order-1")
    assert found is not None and found.trans_id == R.TRANS_ID
    assert seen[1][1] == "/interfaces/stq" and seen[1][3]["MODE"] == ["TEST"]
    assert isinstance(c.transport, HttpTransport)
    c.transport.close()


def test_connect_refused_is_not_sent():
    t = HttpTransport(connect_timeout=1, read_timeout=1)
    with pytest.raises(NotSent) as ei:
        t.post(f"http://127.0.0.1:{closed_port()}/interfaces/bp10emu", {"CC_NUM": "4111111111111111"})
    assert "4111111111111111" not in str(ei.value)
    assert ei.value.__cause__ is None and ei.value.__context__ is None
    t.close()


@pytest.fixture
def silent_server():
    """Accepts connections (kernel backlog + accept) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    accepted = []
    stop = threading.Event()

    def run():
        s.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = s.accept()
                accepted.append(conn)
            except (TimeoutError, OSError):
                continue

    th = threading.Thread(target=run, daemon=True)
    th.start()
    yield s.getsockname()[1], accepted
    stop.set()
    th.join(1)
    for conn in accepted:
        conn.close()
    s.close()


def test_no_answer_is_outcome_unknown_after_read_timeout(silent_server):
    port, _accepted = silent_server
    t = HttpTransport(connect_timeout=1, read_timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        t.post(f"http://127.0.0.1:{port}/interfaces/bp10emu", {"A": "1"})
    assert 0.25 <= time.monotonic() - t0 < 3
    t.close()


def test_sale_with_no_answer_is_sent_once(silent_server):
    port, accepted = silent_server
    c = BluePayClient(account_id=R.ACCOUNT, secret_key=R.SECRET, base_url=f"http://127.0.0.1:{port}/interfaces/",
                      read_timeout=0.2, sleep=lambda s: None)
    with pytest.raises(OutcomeUnknown) as ei:
        c.sale("3.00", {"number": "4111111111111111", "expire": "1299"})
    assert ei.value.attempts == 1
    time.sleep(0.2)
    assert len(accepted) == 1


def test_reset_after_send_is_outcome_unknown():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)

    def run():
        conn, _ = s.accept()
        conn.recv(65536)
        conn.close()  # drop the connection without answering

    th = threading.Thread(target=run, daemon=True)
    th.start()
    t = HttpTransport(connect_timeout=1, read_timeout=2)
    with pytest.raises(OutcomeUnknown):
        t.post(f"http://127.0.0.1:{s.getsockname()[1]}/interfaces/bp10emu", {"A": "1"})
    th.join(2)
    s.close()
    t.close()


def test_form_fields_are_url_encoded_and_none_is_left_out(http_server):
    srv, seen = http_server
    t = HttpTransport(connect_timeout=2, read_timeout=2)
    t.post(f"http://127.0.0.1:{srv.server_port}/interfaces/bp10emu",
           {"NAME1": "Zoë & Co", "MEMO": "a=b+c", "EMPTY": "", "GONE": None})
    assert seen[0][3] == {"NAME1": ["Zoë & Co"], "MEMO": ["a=b+c"]}  # parse_qs drops the blank EMPTY
    t.close()


def test_proxies_come_from_the_environment_and_honour_no_proxy(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    t = HttpTransport(connect_timeout=1, read_timeout=1)
    assert t._proxies_for("https://secure.bluepay.com/interfaces/bp10emu")["https"] == "http://proxy.example:3128"
    assert t._proxies_for("https://internal.example/interfaces/bp10emu") == {}
    t.close()


def test_a_post_carries_the_headers_a_requests_session_would(http_server):
    srv, _seen = http_server
    t = HttpTransport(connect_timeout=2, read_timeout=2)
    t.post(f"http://127.0.0.1:{srv.server_port}/interfaces/bp10emu", {"A": "1"})
    headers = {k.lower(): v for k, v in _Handler.headers_seen[0].items()}
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert headers["content-length"] == "3"
    assert headers["accept"] == "*/*" and "gzip" in headers["accept-encoding"]
    assert headers["user-agent"] == "payments-worker/0.1 (+bluepay client)"
    t.close()


@given(st.dictionaries(st.text(max_size=12), st.none() | st.text(max_size=30) | st.integers(), max_size=8))
@settings(max_examples=300, deadline=None)
def test_the_form_body_is_urlencode_s_byte_for_byte(data):
    assert form_body(data) == urlencode([(k, v) for k, v in data.items() if v is not None])


def test_the_form_body_quotes_what_needs_it_and_leaves_none_out():
    data = {"AMOUNT": "10.00", "NAME1": "Zoë & Co=1+2", "MASTER_ID": None, "TPS_DEF": "A B", "X~_.-": "~_.-"}
    assert form_body(data) == "AMOUNT=10.00&NAME1=Zo%C3%AB+%26+Co%3D1%2B2&TPS_DEF=A+B&X~_.-=~_.-"
