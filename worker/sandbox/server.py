"""A BluePay 2.0-compatible sandbox gateway (HTTP server + CLI).

Run it::

    python -m worker.sandbox --host 127.0.0.1 --port 8001
    # prints: sandbox listening on http://127.0.0.1:8001

Point a client at ``http://127.0.0.1:8001/interfaces/`` instead of
``https://secure.bluepay.com/interfaces/``; BluePay's own client libraries work
unchanged apart from the host. It is an independent implementation of the gateway
side (it imports nothing from ``worker.gateway``) so that a protocol mistake in our
client shows up against it rather than being mirrored.

What it serves
--------------
* ``POST /interfaces/bp10emu``: SALE, AUTH, CAPTURE, REFUND, VOID. Replies ``302`` with a
  relative ``Location: /interfaces/wlcatch?Result=...`` (or APPROVED_URL / DECLINED_URL /
  MISSING_URL when sent), or, with ``RESPONSETYPE=DIRECT``, a ``200`` body of the same pairs.
  The seal is checked for MD5, SHA256, SHA512, HMAC_SHA256, HMAC_SHA512 (unknown/empty type =
  HMAC_SHA512; hex compared case-insensitively; ``TPS_DEF`` honoured). Every reply carries
  ``TPS_HASH_TYPE`` (the type actually used: the request's, or HMAC_SHA512 when the request's was
  unknown or empty), ``BP_STAMP_DEF`` and ``BP_STAMP``. The stamp definition is the request's
  ``BP_STAMP_DEF`` if it sent one, else the dialect's ``bp10emu_stamp_def`` (default
  ``RRNO ISSUE_DATE Result``, as live TEST replies carried it in 2023; absent = ""), hashed like the
  seal with the secret key, upper-case hex. ``MISSING`` appears only when Result=MISSING.
* ``POST /interfaces/stq``: Single Transaction Query (seal = ACCOUNT_ID + REPORT_START_DATE +
  REPORT_END_DATE; dates YYYY-MM-DD or YYYY-MM-DD HH:MM:SS). Filters: ``id``, ``order_id``, ``invoice_id``,
  ``custom_id``, ``custom_id2``, ``trans_type``, ``amount``, ``payment_type``, ``name1``, ``name2`` (names
  case-insensitive, empty values ignored), within [start, end) by issue date in the server's local time,
  and ``MODE`` (default LIVE). Reply: 200 with the match as pairs named as BluePay's stq text names its
  output fields (``STQ_FIELDS`` in engine.py), no stamp; 200 with an empty body when nothing matches;
  400 ``STATUS=E&MESSAGE=...`` on a bad seal, malformed dates, or an end date not after the start date.
  What the texts leave open (which of several matches, the no-match answer, a stamp, the names' case)
  is the dialect (dialect.py): ``--dialect`` / ``SANDBOX_DIALECT`` / ``POST /sandbox/dialect``.
* ``POST /interfaces/bpdailyreport2``: the daily report (seal as stq). 200 ``text/csv``, chunked: a header of
  lower-case column names (``REPORT_COLUMNS`` in engine.py), then one quoted CSV line per ledger entry issued in
  [start, end) (``QUERY_BY_SETTLEMENT=1``: settled in it), of ``MODE`` (default LIVE); ``DO_NOT_ESCAPE=1``: no
  quoting, commas dropped. ``master_id`` is the transaction a follow-up refers to; ``f_void`` 1 when voided.
  400 ``STATUS=E&MESSAGE=...`` on a bad seal or dates. No stamp (BluePay documents none for reports; the
  dialect's stq_stamp=on stamps the error).
* ``GET /interfaces/wlcatch``: 200 with a tiny HTML page, for redirect-following clients.
* ``/sandbox/...``: a JSON control API (health, ledger, orders, reset, settle, faults, duplicates,
  stats, outage); see ``README_TEXT`` below or ``python -m worker.sandbox --help``.

Rules (TEST mode, docs/bluepay.md; LIVE mode is accepted and behaves the same, FLAGS empty)
------------------------------------------------------------------------------------
Odd dollars approve, even decline (0.50 declines); 0.00 AUTH approves with INFORMATION STORED;
zero elsewhere ``Amount may not be zero.``. Declines and approvals are ledger entries with a
12-digit id (unique, never reused in a process); ERROR/MISSING replies create nothing.
Validation order for SALE/AUTH: seal/merchant -> type -> amount (MISSING ``Missing AMOUNT``,
ERROR ``INVALID AMOUNT FORMAT``) -> CC_NUM (MISSING ``Missing CC_NUM``; ERROR
``CARD ACCOUNT NOT VALID`` on non-digits, bad length or Luhn) -> CC_EXPIRES (MISSING
``Expiration date required for CREDIT``; ERROR ``Card Expired``; valid through the end of the
month) -> CVCCVV2 (ERROR ``Invalid CVV2`` unless 3-4 digits; optional) -> duplicate scrubbing.
Follow-ups need RRNO (MISSING ``Master ID required for <TYPE>``), a known RRNO of the same
account and MODE (else ERROR ``COULD NOT LOCATE ORIGINAL TRANSACTION``), and obey the void,
capture and refund rules of docs/bluepay.md. A full REFUND of an unsettled SALE/CAPTURE is turned
into a VOID (``Approved Void``, TRANS_TYPE=VOID, the original marked voided); a partial refund
of an unsettled one, or any refund of a settled one, is ``Approved Return`` (cumulative refunds
may not exceed the original). AUTHs never settle; ``POST /sandbox/settle`` or
``--settle-after`` settle approved SALE/CAPTURE/REFUND entries.

Duplicate scrubbing (BluePay does not publish its rule; this is ours)
---------------------------------------------------------------------
A SALE or AUTH is a duplicate when an earlier SALE/AUTH ledger entry (approved OR declined) has
the same account, MODE, transaction type, card number, amount and ORDER_ID (an empty ORDER_ID
matches an empty one) and was created at most ``--duplicate-window`` seconds ago (env
``SANDBOX_DUPLICATE_WINDOW``; default 120; 0 disables scrubbing; ``POST /sandbox/duplicates
{"window": N}`` changes it at run time and ``POST /sandbox/reset`` restores the start value).
``DUPLICATE_OVERRIDE=1`` skips the check. A duplicate is NOT processed and NOT recorded: the
reply carries the EARLIER attempt's Result and STATUS, ``MESSAGE=DUPLICATE`` and NO
TRANS_ID/RRNO/ID; look the outcome up with stq by ORDER_ID.
The window counts from the earlier attempt, which is not refreshed by duplicates.

Late commits (fault kind ``late_commit``)
-----------------------------------------
A real gateway may queue a request and commit it seconds after the client gave up on it. The
``late_commit`` fault reads the request, holds it ``late_commit_seconds`` (fault config; default 5)
in its connection's own thread (other requests are served meanwhile), then processes it exactly as
if it had just arrived (validation, duplicate scrubbing and ISSUE_DATE are judged at the commit),
whether or not the client is still connected, and writes the reply if the connection still takes
it. Until then neither ``stq`` nor ``/sandbox/ledger`` sees it (``/sandbox/stats`` counts it under
``late_commits.held``, ``/sandbox/orders`` per ORDER_ID). ``POST /sandbox/reset`` drops every held
commit: it never commits, and a client still waiting gets a connection reset. A held commit survives
an outage (it commits on schedule; its connection is gone), not a process exit.

Transaction timestamp (bp10emu text, TRANSACTION TIMESTAMP)
-----------------------------------------------------------
A request carrying ``TRANS_SUBMIT_TIMESTAMP`` (``YYYY-MM-DD HH:MM:SS``, US Central time: America/Chicago) and
``TRANS_EXPIRE_PERIOD`` (``N MINUTES``) is answered ``Result=ERROR``, ``MESSAGE=TRANSACTION TOO OLD`` and not
recorded when the sandbox's clock (plus ``--clock-offset`` / ``SANDBOX_CLOCK_OFFSET`` seconds: a gateway clock
ahead of the client's) is past the stamp plus the period. Judged when the request is processed (a late commit: at
its commit). Neither field is in the seal. Ours where the text is silent: a stamp without a period never expires;
a malformed one is ERROR ``INVALID TRANS_SUBMIT_TIMESTAMP`` / ``INVALID TRANS_EXPIRE_PERIOD``; a stamp in the hour
repeated when daylight saving ends is read as the earlier instant; the age is compared to the second.

What it does NOT imitate
------------------------
No card networks, issuers or real authorisations: the amount decides. No ``bp20post``,
``bp20rebadmin``, rebilling, customer tokens, level 2/3 data, swipe/track
data or hosted payment forms; UPDATE answers ERROR ``UPDATE not supported by the sandbox``;
ACH SALE/AUTH answer ERROR ``ACH not supported by the sandbox``. AVS is always ``_``; CVV2 is
``M`` when a well-formed CVV2 was sent, else ``_``; BANK_NAME is empty; AUTH_CODE is random.
One merchant account per process. The ledger is in memory only: a restart loses it (ids are
clock-seeded so a restart does not reuse them). Messages for cases docs/bluepay.md does not list
(e.g. ``CAPTURE amount cannot exceed AUTH amount``,
``INVALID EXPIRATION DATE``) are our wording. Not TLS: plain HTTP only.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .dialect import Dialect, DialectError, parse_dialect
from .engine import DEFAULT_ACCOUNT_ID, DEFAULT_DUPLICATE_WINDOW, DEFAULT_SECRET_KEY, REPORT_COLUMNS, Engine, report_row
from .faults import FaultConfigError, Faults

README_TEXT = """\
Control API (JSON, never subject to faults; unavailable during an outage):
  GET  /sandbox/health                      {"ok": true, "account_id", "ledger_size", "uptime_s"}
  GET  /sandbox/ledger[?order_id=X]         list of entries (id, trans_type, amount, status, result,
                                            message, order_id, rrno/origin, payment_account, card_type,
                                            mode, created_at, settled, voided, captured, refunded, ...)
  GET  /sandbox/orders[?order_id=X]         per ORDER_ID: {"entries": n, "approved": {TYPE: n},
                                            "declined": {TYPE: n}, "voided": {TYPE: n}, "held": n}
                                            (held = late commits not yet committed)
  POST /sandbox/reset                       clear ledger, faults and counters, drop held late commits,
                                            restore the start duplicate window; {"ok", "held_dropped"}
  POST /sandbox/settle {"ids": [...]}|{}    settle those (or all) approved SALE/CAPTURE/REFUND entries
  POST /sandbox/book {"amount": "3.00", ...} book a SALE/AUTH directly, as in BluePay's console (no card, no
                                            seal, no duplicate rule): trans_type, order_id, invoice_id, status
                                            "1"/"0", mode, payment_account (masked), card_type, created_at
                                            (epoch), settled; or {"transactions": [...]} for many
  POST /sandbox/void {"id": "..."}          void a transaction in the console (void rules apply; the VOID
                                            carries no ORDER_ID)
  GET  /sandbox/faults                      current fault config (+ sequence_remaining, injected)
  POST /sandbox/faults {...}                replace the fault config ({} = none); 400 if invalid
  GET  /sandbox/dialect                     how it answers where BluePay's texts are silent (dialect.py)
  POST /sandbox/dialect {"stq_stamp": "on"} change some of those answers (reset restores the start ones)
  GET  /sandbox/duplicates                  {"window": seconds, "enabled": bool}
  POST /sandbox/duplicates {"window": N}    set the duplicate window at run time (0 = scrubbing off)
  GET  /sandbox/stats                       requests by endpoint, faults injected by kind, connections,
                                            ledger_size, duplicate_window,
                                            late_commits {"held", "committed"}
  POST /sandbox/outage {"seconds": N}       close the LISTENING socket (and open connections) for N s:
                                            new connections get ECONNREFUSED; then reopen same port
Fault JSON: {"latency_ms": 0, "jitter_ms": 0, "probabilities": {"refuse": 0.05, ...},
             "sequence": ["ok", "drop_after_commit", ...], "endpoints": ["bp10emu"],
             "slow_seconds": 5, "late_commit_seconds": 5, "seed": 1}
Fault kinds: refuse, http_502, http_503 (before processing: nothing recorded);
             drop_after_commit, slow_after_commit, http_500_after_commit, garbled, bad_stamp,
             truncated (about half the reply, then RST) (the transaction is recorded first);
             late_commit (held late_commit_seconds, invisible to stq, then committed whatever the
             client did meanwhile; a reset drops it).
Env: SANDBOX_FAULTS (= --faults), SANDBOX_DUPLICATE_WINDOW (= --duplicate-window), SANDBOX_DIALECT (= --dialect),
     SANDBOX_CLOCK_OFFSET (= --clock-offset),
     BLUEPAY_ACCOUNT_ID, BLUEPAY_SECRET_KEY.
"""

_REASONS = {200: "OK", 302: "Found", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_GARBLED = b"\x00\xff\xfe<html><body>gateway hiccup \x01\x02 %%% ;;; </bod"
_WLCATCH_PAGE = b"<html><head><title>BluePay sandbox</title></head><body>Transaction result received.</body></html>"


_REPORT_CHUNK = 64 * 1024

#: A reply as the handler sends it: status, body (bytes, or chunks rendered as they are sent), content type, headers.
Headers = tuple[tuple[str, str], ...]
Body = bytes | Iterable[bytes]
Reply = tuple[int, Body, str, Headers]
#: What an interface's processing gives: the reply, and how to give it with a stamp that cannot verify (bad_stamp).
Processed = tuple[int, Body, str, Headers, Callable[[], Reply] | None]
Process = Callable[[bytes, str], Processed]


def _render_report(entries: Iterable[Any], plain: bool, quoting: str = "backslash") -> Iterator[bytes]:
    """The report's CSV, rendered as it is sent, about 64 KiB at a time. ``plain`` (DO_NOT_ESCAPE=1): no
    quoting; commas and quotes inside values are dropped (bpdailyreport2 text). Otherwise each comma in a value
    is escaped with a backslash, as the text says (``quoting="csv"``, the dialect's other answer: quoted CSV)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    rows = [list(REPORT_COLUMNS)]

    def flush() -> bytes:
        for row in rows:
            if plain:
                buffer.write(",".join(v.replace(",", "").replace('"', "") for v in row) + "\n")
            elif quoting == "backslash":
                buffer.write(",".join(v.replace("\\", "\\\\").replace(",", "\\,") for v in row) + "\n")
            else:
                writer.writerow(row)
        rows.clear()
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text.encode("utf-8")

    size = 0
    for e in entries:
        rows.append(report_row(e))
        size += 200
        if size >= _REPORT_CHUNK:
            yield flush()
            size = 0
    yield flush()


class _HTTPServer(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    app: SandboxServer

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet on client disconnects
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        traceback.print_exc(file=sys.stderr)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "BluePaySandbox/1.0"
    sys_version = ""
    timeout = 300  # idle keep-alive connections are dropped after this
    server: _HTTPServer  # what socketserver passes in: the sandbox's own server, holding ``app``

    # ------------------------------------------------------------ connection
    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server.app._conn_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.app._conn_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # `format`: the stdlib signature
        if self.server.app.access_log:
            sys.stderr.write(f"{self.address_string()} - - [{self.log_date_time_string()}] {format % args}\n")

    def _reset_connection(self) -> None:
        """Close with an RST (SO_LINGER 0), without answering."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.rfile.close()
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "text/plain; charset=utf-8",
              headers: Headers = ()) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}", "Server: BluePaySandbox/1.0",
                 f"Content-Type: {ctype}", f"Content-Length: {len(body)}"]
        lines.extend(f"{k}: {v}" for k, v in headers)
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        if self.server.app.access_log:
            self.log_request(status, len(body))

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            n = 0
        return self.rfile.read(n) if n > 0 else b""

    def _form(self, body: bytes, query: str) -> dict[str, str]:
        fields: dict[str, str] = {}
        for source in (query, body.decode("utf-8", "replace")):
            for k, v in parse_qsl(source, keep_blank_values=True):
                fields[k] = v
        return fields

    # ------------------------------------------------------------ routing
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        app = self.server.app
        try:
            if path.startswith("/interfaces/"):
                name = path[len("/interfaces/"):].rstrip("/")
                app._count(name if name in ("bp10emu", "stq", "wlcatch", "bpdailyreport2") else "other")
                if name == "wlcatch":
                    return self._faulted("wlcatch", query, self._wlcatch)
                if name in ("bp10emu", "stq", "bpdailyreport2"):
                    if method != "POST":
                        self._body()
                        return self._send(405, b"POST only\n", headers=(("Allow", "POST"),))
                    process = {"bp10emu": self._bp10emu, "stq": self._stq, "bpdailyreport2": self._report}[name]
                    return self._faulted(name, query, process)
                self._body()
                return self._send(404, b"no such interface\n")
            if path.startswith("/sandbox/"):
                app._count("control")
                return self._control(method, path[len("/sandbox/"):].rstrip("/"), query)
            app._count("other")
            self._body()
            self._send(404, b"not found\n")
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # a sandbox bug: answer 500 and say why on stderr
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            try:
                self._send(500, b"sandbox internal error\n")
            except OSError:
                pass

    # ------------------------------------------------------------ interfaces
    def _faulted(self, endpoint: str, query: str, process: Process) -> None:
        app = self.server.app
        kind, delay, seconds = app.faults.decide(endpoint)
        if delay:
            time.sleep(delay)
        if kind == "refuse":
            return self._reset_connection()
        body = self._body()
        if kind in ("http_502", "http_503"):
            code = 502 if kind == "http_502" else 503
            return self._send(code, f"{code} {_REASONS[code]}\n".encode(), "text/html")
        if kind == "late_commit":
            return self._late_commit(endpoint, body, query, process, seconds)
        return self._after_commit(kind, seconds, process(body, query))

    def _after_commit(self, kind: str | None, seconds: float, processed: Processed) -> None:
        """The reply to a committed request, spoilt as ``kind`` says (None: as it is)."""
        status, payload, ctype, headers, stamp_holder = processed
        if kind == "drop_after_commit":
            return self._reset_connection()
        if kind == "slow_after_commit":
            time.sleep(seconds)
        if kind == "http_500_after_commit":
            return self._send(500, b"500 Internal Server Error\n", "text/html")
        if kind == "garbled":
            return self._send(200, _GARBLED, "text/plain")
        if kind == "bad_stamp" and stamp_holder is not None:
            status, payload, ctype, headers = stamp_holder()
        if kind == "truncated":
            return self._truncated(status, payload, ctype, headers)
        if not isinstance(payload, bytes):
            return self._send_chunked(status, payload, ctype)
        self._send(status, payload, ctype, headers)

    def _send_chunked(self, status: int, chunks: Iterable[bytes], ctype: str, *, cut: bool = False) -> None:
        """A body of unknown length (the report), chunked as it is rendered. ``cut``: stop about half-way
        through, mid-chunk, and reset the connection (the chunked body never ends)."""
        self.close_connection = True
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}", "Server: BluePaySandbox/1.0",
                f"Content-Type: {ctype}", "Transfer-Encoding: chunked", "Connection: close"]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        parts = list(chunks) if cut else chunks
        half = max(1, sum(len(c) for c in parts) // 2) if cut else 0
        written = 0
        for chunk in parts:
            if cut and written + len(chunk) >= half:
                keep = max(1, half - written)
                self.wfile.write(b"%x\r\n" % len(chunk) + chunk[:keep])
                return self._reset_connection()
            self.wfile.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            written += len(chunk)
        if cut:
            return self._reset_connection()
        self.wfile.write(b"0\r\n\r\n")
        return None

    def _truncated(self, status: int, payload: Body, ctype: str, headers: Headers) -> None:
        """About half of the reply, then an RST."""
        if not isinstance(payload, bytes):
            return self._send_chunked(status, payload, ctype, cut=True)
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}", f"Content-Type: {ctype}",
                 f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in headers)]
        whole = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
        self.wfile.write(whole[: max(1, len(whole) // 2)])
        return self._reset_connection()

    def _late_commit(self, endpoint: str, body: bytes, query: str, process: Process, seconds: float) -> None:
        """Hold the request ``seconds`` in this connection's thread (the server is threaded:
        nothing else waits), then commit it whatever the client did; reply if still possible."""
        order_id = self._form(body, query).get("ORDER_ID", "") if endpoint == "bp10emu" else ""
        result = self.server.app.hold_then_commit(seconds, order_id, lambda: process(body, query))
        if result is None:  # dropped by a reset (or the server is stopping): never committed
            return self._reset_connection()
        status, payload, ctype, headers, _ = result
        self.close_connection = True
        try:
            if isinstance(payload, bytes):
                self._send(status, payload, ctype, headers)
            else:
                self._send_chunked(status, payload, ctype)
        except OSError:  # the client gave up long ago: the commit stands
            pass
        return None

    def _bp10emu(self, body: bytes, query: str) -> Processed:
        fields = self._form(body, query)
        reply = self.server.app.engine.bp10emu(fields)

        def render(pairs: dict[str, str]) -> Reply:
            encoded = urlencode(pairs)
            if (fields.get("RESPONSETYPE") or "").strip().upper() == "DIRECT":
                return 200, encoded.encode(), "application/x-www-form-urlencoded", ()
            target = ""
            if pairs.get("MESSAGE") != "SECURITY ERROR":
                key = {"APPROVED": "APPROVED_URL", "DECLINED": "DECLINED_URL"}.get(pairs["Result"], "MISSING_URL")
                target = (fields.get(key) or "").strip()
            target = target or "/interfaces/wlcatch"
            sep = "&" if "?" in target else "?"
            return 302, b"", "text/html", (("Location", target + sep + encoded),)

        def tampered() -> Reply:
            bad = dict(reply)
            bad["BP_STAMP"] = ("0" if reply["BP_STAMP"][:1] != "0" else "1") + reply["BP_STAMP"][1:]
            return render(bad)

        return (*render(reply), tampered)

    def _stq(self, body: bytes, query: str) -> Processed:
        fields = self._form(body, query)
        status, text = self.server.app.engine.stq(fields)
        ctype = "application/x-www-form-urlencoded"
        if text is None:
            return 200, b"", ctype, (), None

        def tampered() -> Reply:
            """Every row with a stamp that cannot verify (a stamped row's stamp altered; an unstamped row given
            one), so that a client is seen to refuse a stamp it cannot verify."""
            rows = []
            for line in text.split("\n"):
                pairs = dict(parse_qsl(line, keep_blank_values=True))
                names = {k.upper(): k for k in pairs}
                stamp_name = names.get("BP_STAMP", "BP_STAMP")
                stamp = pairs.get(stamp_name, "")
                pairs.setdefault(names.get("BP_STAMP_DEF", "BP_STAMP_DEF"), "id status")
                pairs[stamp_name] = ("0" if stamp[:1] != "0" else "1") + (stamp[1:] or "0" * 127)
                rows.append(urlencode(pairs))
            return status, "\n".join(rows).encode(), ctype, ()

        return status, text.encode(), ctype, (), tampered

    def _report(self, body: bytes, query: str) -> Processed:
        fields = self._form(body, query)
        engine = self.server.app.engine
        status, error, entries = engine.report(fields)
        if error is not None:
            if engine.dialect.report_errors == "line":  # the text: "only a single line, containing a message"
                return status, (error["MESSAGE"] + "\n").encode(), "text/plain; charset=utf-8", (), None
            return status, urlencode(error).encode(), "application/x-www-form-urlencoded", (), None
        plain = (fields.get("DO_NOT_ESCAPE") or "").strip() == "1"
        rendered = _render_report(entries, plain, engine.dialect.report_quoting)
        return 200, rendered, "text/csv; charset=utf-8", (), None

    def _wlcatch(self, body: bytes, query: str) -> Processed:
        return 200, _WLCATCH_PAGE, "text/html; charset=utf-8", (), None

    # ------------------------------------------------------------ control API
    def _control(self, method: str, name: str, query: str) -> None:
        raw = self._body()
        data: Any = {}
        if method == "POST" and raw.strip():
            try:
                data = json.loads(raw)
            except ValueError:
                return self._json(400, {"error": "body is not JSON"})
        if name in _READ_WRITE and method not in ("GET", "POST"):
            return self._json(405, {"error": "GET or POST"})
        handler = _CONTROL.get((method, name))
        if handler is None:
            return self._json(404, {"error": f"no control endpoint {method} /sandbox/{name}"})
        return handler(self, data, dict(parse_qsl(query, keep_blank_values=True)))

    # ---- the control endpoints (the table _CONTROL below): (JSON body, query parameters) -> the reply
    def _c_health(self, data: Any, params: dict[str, str]) -> None:
        app = self.server.app
        return self._json(200, {"ok": True, "account_id": app.engine.account_id,
                                "ledger_size": app.engine.count(), "uptime_s": app.uptime()})

    def _c_ledger(self, data: Any, params: dict[str, str]) -> None:
        return self._json(200, self.server.app.engine.ledger(params.get("order_id")))

    def _c_orders(self, data: Any, params: dict[str, str]) -> None:
        return self._json(200, self.server.app.orders(params.get("order_id")))

    def _c_reset(self, data: Any, params: dict[str, str]) -> None:
        return self._json(200, {"ok": True, "held_dropped": self.server.app.reset()})

    def _c_duplicates(self, data: Any, params: dict[str, str]) -> None:
        return self._json(200, self.server.app.duplicates())

    def _c_set_duplicates(self, data: Any, params: dict[str, str]) -> None:
        window = data.get("window") if isinstance(data, dict) else None
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not math.isfinite(window) or window < 0:
            return self._json(400, {"error": "window must be a number of seconds >= 0 (0 = off)"})
        self.server.app.engine.set_duplicate_window(window)
        return self._c_duplicates(data, params)

    def _c_dialect(self, data: Any, params: dict[str, str]) -> None:
        return self._json(200, self.server.app.engine.dialect.to_json())

    def _c_set_dialect(self, data: Any, params: dict[str, str]) -> None:
        engine = self.server.app.engine
        try:
            engine.set_dialect(engine.dialect.changed(data))
        except DialectError as exc:
            return self._json(400, {"error": str(exc)})
        return self._c_dialect(data, params)

    def _c_book(self, data: Any, params: dict[str, str]) -> None:
        many = data.get("transactions") if isinstance(data, dict) and "transactions" in data else None
        specs = many if isinstance(many, list) else [data]
        try:
            booked = [self.server.app.engine.book(spec) for spec in specs]
        except ValueError as exc:
            return self._json(400, {"error": str(exc)})
        if many is None:
            return self._json(200, booked[0].to_json())
        return self._json(200, {"booked": len(booked), "ids": [e.id for e in booked]})

    def _c_void(self, data: Any, params: dict[str, str]) -> None:
        trans_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(trans_id, str) or not trans_id:
            return self._json(400, {"error": "id (the transaction to void) is required"})
        try:
            return self._json(200, self.server.app.engine.console_void(trans_id).to_json())
        except ValueError as exc:
            return self._json(400, {"error": str(exc)})

    def _c_settle(self, data: Any, params: dict[str, str]) -> None:
        ids = data.get("ids") if isinstance(data, dict) else None
        if ids is not None and not isinstance(ids, list):
            return self._json(400, {"error": "ids must be a list"})
        return self._json(200, {"settled": self.server.app.engine.settle(ids)})

    def _c_faults(self, data: Any, params: dict[str, str]) -> None:
        faults = self.server.app.faults
        return self._json(200, dict(faults.snapshot(), injected=faults.counts()))

    def _c_set_faults(self, data: Any, params: dict[str, str]) -> None:
        try:
            self.server.app.faults.configure(data)
        except FaultConfigError as exc:
            return self._json(400, {"error": str(exc)})
        return self._c_faults(data, params)

    def _c_stats(self, data: Any, params: dict[str, str]) -> None:
        return self._json(200, self.server.app.stats())

    def _c_outage(self, data: Any, params: dict[str, str]) -> None:
        app = self.server.app
        seconds = data.get("seconds") if isinstance(data, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 3600:
            return self._json(400, {"error": "seconds must be a number in (0, 3600]"})
        self.close_connection = True
        self._json(200, {"outage_seconds": seconds, "port": app.port})
        app.start_outage(float(seconds))
        return None


#: (method, name) of /sandbox/<name> -> its handler; the names in _READ_WRITE answer 405 to other methods.
_CONTROL: dict[tuple[str, str], Callable[[_Handler, Any, dict[str, str]], None]] = {
    ("GET", "health"): _Handler._c_health,
    ("GET", "ledger"): _Handler._c_ledger,
    ("GET", "orders"): _Handler._c_orders,
    ("POST", "reset"): _Handler._c_reset,
    ("GET", "duplicates"): _Handler._c_duplicates,
    ("POST", "duplicates"): _Handler._c_set_duplicates,
    ("GET", "dialect"): _Handler._c_dialect,
    ("POST", "dialect"): _Handler._c_set_dialect,
    ("POST", "book"): _Handler._c_book,
    ("POST", "void"): _Handler._c_void,
    ("POST", "settle"): _Handler._c_settle,
    ("GET", "faults"): _Handler._c_faults,
    ("POST", "faults"): _Handler._c_set_faults,
    ("GET", "stats"): _Handler._c_stats,
    ("POST", "outage"): _Handler._c_outage,
}
_READ_WRITE = frozenset({"duplicates", "dialect", "faults"})


class _Held:
    """One late commit waiting in its handler thread."""

    __slots__ = ("dropped", "event", "order_id")

    def __init__(self, order_id: str):
        self.event = threading.Event()
        self.dropped = False
        self.order_id = order_id


class SandboxServer:
    """A running sandbox: ``.url``, ``.port``, ``.engine``, ``.faults``, ``.shutdown()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8001, *,
                 account_id: str | None = None, secret_key: str | None = None,
                 faults: Any = None, duplicate_window: float | None = None,
                 settle_after: float | None = None, access_log: bool = False, dialect: Dialect | None = None,
                 clock_offset: float = 0.0, platform_merchant_ids: tuple[str, ...] = (),
                 accounts: dict[str, str] | None = None):
        self.host = host
        self.start_dialect = dialect or Dialect()
        self.start_duplicate_window = float(DEFAULT_DUPLICATE_WINDOW if duplicate_window is None
                                            else duplicate_window)
        self.engine = Engine(
            account_id or os.environ.get("BLUEPAY_ACCOUNT_ID") or DEFAULT_ACCOUNT_ID,
            secret_key or os.environ.get("BLUEPAY_SECRET_KEY") or DEFAULT_SECRET_KEY,
            self.start_duplicate_window,
            dialect=self.start_dialect,
            clock_offset=clock_offset,
            platform_merchant_ids=platform_merchant_ids,
            accounts=accounts,
        )
        self.faults = Faults(faults)
        self.access_log = access_log
        self.settle_after = settle_after
        self.started = time.time()
        self._stats_lock = threading.Lock()
        self._requests: dict[str, int] = {}
        self._conns: set[socket.socket] = set()
        self._conn_total = 0
        self._conn_peak = 0
        self._stopping = False
        self._stop_event = threading.Event()
        self._outage_until = 0.0
        self._outage_count = 0
        self._outage_lock = threading.Lock()
        self._in_outage = False
        # late commits: held requests, and how many were committed since the last reset.
        # _held_lock also covers a late commit's processing, so a reset never races one.
        self._held_lock = threading.Lock()
        self._held: set[_Held] = set()
        self._late_committed = 0
        server_cls = _HTTPServer6 if ":" in host else _HTTPServer
        self.httpd = server_cls((host, port), _Handler)
        self.httpd.app = self
        self.port = self.httpd.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        self.interfaces_url = self.url + "/interfaces/"
        self._thread = threading.Thread(target=self._serve_loop, name="sandbox-serve", daemon=True)
        self._thread.start()
        if settle_after:
            threading.Thread(target=self._auto_settle, args=(settle_after,), name="sandbox-settle",
                             daemon=True).start()

    # ------------------------------------------------------------ bookkeeping
    def uptime(self) -> float:
        return round(time.time() - self.started, 3)

    def _count(self, endpoint: str) -> None:
        with self._stats_lock:
            self._requests[endpoint] = self._requests.get(endpoint, 0) + 1

    def _conn_opened(self, sock: socket.socket) -> None:
        with self._stats_lock:
            self._conns.add(sock)
            self._conn_total += 1
            self._conn_peak = max(self._conn_peak, len(self._conns))

    def _conn_closed(self, sock: socket.socket) -> None:
        with self._stats_lock:
            self._conns.discard(sock)

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            requests = dict(self._requests)
            conns = {"current": len(self._conns), "total": self._conn_total, "peak": self._conn_peak}
        with self._held_lock:
            late = {"held": len(self._held), "committed": self._late_committed}
        return {"requests": requests, "faults_injected": self.faults.counts(),
                "faults": self.faults.snapshot(), "connections": conns,
                "outages": self._outage_count, "ledger_size": self.engine.count(),
                "duplicate_window": self.engine.duplicate_window, "late_commits": late,
                "dialect": self.engine.dialect.to_json(),
                "uptime_s": self.uptime()}

    def duplicates(self) -> dict[str, Any]:
        window = self.engine.duplicate_window
        return {"window": window, "enabled": window > 0}

    def orders(self, order_id: str | None = None) -> dict[str, dict[str, Any]]:
        """``Engine.orders`` plus ``held``: late commits of that ORDER_ID not yet committed."""
        with self._held_lock:
            held: dict[str, int] = {}
            for h in self._held:
                if order_id is None or h.order_id == order_id:
                    held[h.order_id] = held.get(h.order_id, 0) + 1
            out = self.engine.orders(order_id)
        for oid, row in out.items():
            row["held"] = held.pop(oid, 0)
        for oid, n in held.items():
            out[oid] = {"entries": 0, "approved": {}, "declined": {}, "voided": {}, "held": n}
        return out

    def hold_then_commit(self, seconds: float, order_id: str,
                         commit: Callable[[], Processed]) -> Processed | None:
        """Wait ``seconds`` (a reset or shutdown cuts it short), then run ``commit()`` unless
        the hold was dropped meanwhile. Returns commit()'s result, or None if dropped."""
        h = _Held(order_id)
        with self._held_lock:
            if self._stopping:
                return None
            self._held.add(h)
        h.event.wait(seconds)
        with self._held_lock:
            self._held.discard(h)
            if h.dropped:
                return None
            result = commit()
            self._late_committed += 1
            return result

    def _drop_held(self) -> int:
        """Drop every held late commit (caller holds ``_held_lock``); returns how many."""
        n = len(self._held)
        for h in self._held:
            h.dropped = True
            h.event.set()
        self._held.clear()
        return n

    def reset(self) -> int:
        """Clear ledger, faults and counters; drop held late commits (returns how many);
        restore the duplicate window the sandbox started with."""
        with self._held_lock:
            dropped = self._drop_held()
            self._late_committed = 0
            self.engine.reset()
            self.engine.set_duplicate_window(self.start_duplicate_window)
            self.engine.set_dialect(self.start_dialect)
        self.faults.reset()
        with self._stats_lock:
            self._requests.clear()
            self._conn_total = len(self._conns)
            self._conn_peak = len(self._conns)
        return dropped

    # ------------------------------------------------------------ serving, outage
    def _serve_loop(self) -> None:
        while not self._stopping:
            self.httpd.serve_forever(poll_interval=0.05)
            if self._stopping:
                break
            # an outage was requested: stop listening and drop open connections
            try:
                self.httpd.socket.close()
            except OSError:
                pass
            with self._stats_lock:
                conns = list(self._conns)
            for sock in conns:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            while not self._stopping:
                left = self._outage_until - time.time()
                if left <= 0:
                    break
                self._stop_event.wait(min(left, 0.2))
            while not self._stopping:
                try:
                    sock = socket.socket(self.httpd.address_family, self.httpd.socket_type)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((self.host, self.port))
                    sock.listen(self.httpd.request_queue_size)
                    self.httpd.socket = sock
                    break
                except OSError:
                    sock.close()
                    self._stop_event.wait(0.1)
            with self._outage_lock:
                self._in_outage = False

    def start_outage(self, seconds: float) -> None:
        with self._outage_lock:
            if self._in_outage:
                self._outage_until = max(self._outage_until, time.time() + seconds)
                return
            self._in_outage = True
            self._outage_count += 1
            self._outage_until = time.time() + seconds
        # shutdown() waits for serve_forever to return: do it off the handler thread
        threading.Thread(target=self.httpd.shutdown, daemon=True).start()

    def _auto_settle(self, older_than: float) -> None:
        interval = max(0.05, min(1.0, older_than / 2))
        while not self._stop_event.wait(interval):
            self.engine.settle(older_than=older_than)

    def shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._stop_event.set()
        with self._held_lock:
            self._drop_held()
        self.httpd.shutdown()
        self._thread.join(timeout=5)
        try:
            self.httpd.server_close()
        except OSError:
            pass

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop_event.wait(timeout)

    def __enter__(self) -> SandboxServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def serve(host: str = "127.0.0.1", port: int = 8001, **options: Any) -> SandboxServer:
    """Start a sandbox in this process (a daemon thread); returns the running server."""
    return SandboxServer(host, port, **options)


def _accounts(text: str) -> dict[str, str]:
    """--accounts: JSON {"account id": "secret key"}; "" none."""
    if not text.strip():
        return {}
    accounts = json.loads(text)
    if not isinstance(accounts, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in accounts.items()):
        raise SystemExit('sandbox: --accounts must be a JSON object {"account id": "secret key"}')
    return accounts


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m worker.sandbox", description="BluePay 2.0-compatible sandbox gateway.",
        epilog=README_TEXT, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001, help="0 = pick a free port (printed)")
    p.add_argument("--account-id", default=None,
                   help=f"merchant id (env BLUEPAY_ACCOUNT_ID, else {DEFAULT_ACCOUNT_ID})")
    p.add_argument("--secret-key", default=None,
                   help="secret key (env BLUEPAY_SECRET_KEY, else the documented demo key)")
    p.add_argument("--accounts", default="",
                   help='more merchant accounts this gateway serves, JSON {"account id": "secret key", ...}')
    p.add_argument("--platform-merchant-ids", default="",
                   help="comma-separated PLATFORM_MERCHANT_IDs this account charges for (a platform's sub-merchants)")
    p.add_argument("--faults", default=None, help="initial fault config JSON (env SANDBOX_FAULTS)")
    p.add_argument("--duplicate-window", type=float, default=None,
                   help="seconds; 0 disables duplicate scrubbing (env SANDBOX_DUPLICATE_WINDOW, else 120); "
                        "POST /sandbox/duplicates changes it at run time")
    p.add_argument("--dialect", default=None,
                   help="how to answer where BluePay's texts are silent: key=value,... of stq_stamp (off|on), "
                        "stq_matches (newest|oldest|all), stq_no_match (empty|error|blank_row), stq_names "
                        "(lower|upper), bp10emu_stamp_def (env SANDBOX_DIALECT; default: what the sources show); "
                        "POST /sandbox/dialect changes it at run time")
    p.add_argument("--settle-after", type=float, default=None,
                   help="auto-settle approved SALE/CAPTURE/REFUND entries older than this many seconds")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")
    p.add_argument("--clock-offset", type=float, default=None,
                   help="seconds the gateway's clock runs ahead (negative: behind) when it judges "
                        "TRANS_SUBMIT_TIMESTAMP (env SANDBOX_CLOCK_OFFSET, else 0)")
    return p


def _duplicate_window(given: float | None) -> float | None:
    """--duplicate-window, else SANDBOX_DUPLICATE_WINDOW; -1.0 for an unreadable value (refused by main)."""
    if given is None and (os.environ.get("SANDBOX_DUPLICATE_WINDOW") or "").strip():
        try:
            return float(os.environ["SANDBOX_DUPLICATE_WINDOW"])
        except ValueError:
            return -1.0
    return given


def _clock_offset(given: float | None) -> float:
    """--clock-offset, else SANDBOX_CLOCK_OFFSET (default 0); NaN for an unreadable value (refused by main)."""
    if given is not None:
        return given
    try:
        return float((os.environ.get("SANDBOX_CLOCK_OFFSET") or "0").strip() or "0")
    except ValueError:
        return math.nan


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    faults = args.faults if args.faults is not None else os.environ.get("SANDBOX_FAULTS")
    window = _duplicate_window(args.duplicate_window)
    if window is not None and (not math.isfinite(window) or window < 0):
        print("sandbox: the duplicate window must be a number of seconds >= 0 (0 = off)", file=sys.stderr)
        return 2
    offset = _clock_offset(args.clock_offset)
    if not math.isfinite(offset):
        print("sandbox: the clock offset must be a number of seconds", file=sys.stderr)
        return 2
    try:
        dialect = parse_dialect(args.dialect if args.dialect is not None else os.environ.get("SANDBOX_DIALECT"))
    except DialectError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    try:
        server = serve(args.host, args.port, account_id=args.account_id, secret_key=args.secret_key,
                       faults=faults, duplicate_window=window, dialect=dialect,
                       settle_after=args.settle_after, access_log=args.access_log, clock_offset=offset,
                       platform_merchant_ids=tuple(filter(None, map(str.strip, args.platform_merchant_ids.split(",")))),
                       accounts=_accounts(args.accounts))
    except FaultConfigError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sandbox: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    import signal

    def _term(signum: int, frame: object) -> None:
        server._stop_event.set()

    try:
        signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread
        pass
    print(f"sandbox listening on {server.url}", flush=True)
    try:
        while not server.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
