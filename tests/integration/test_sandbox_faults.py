"""Fault injection, outage and concurrency of the sandbox, observed from the client side."""

from __future__ import annotations

import errno
import http.client
import socket
import threading
import time
import urllib.parse

import pytest
import requests

from tests.support.sandbox import running_sandbox

from .test_sandbox_protocol import bp_fields, post_raw, reply_of, stamp_ok, stq_fields


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox() as s:
        yield s


@pytest.fixture
def sb(sandbox):
    sandbox.reset()
    yield sandbox
    sandbox.set_faults({})


def sale(sb, amount="3.00", **kw):
    f = bp_fields(sb, "SALE", amount, **kw)
    return f, post_raw(sb, f)


def test_refuse_is_a_connection_error_and_records_nothing(sb):
    sb.set_faults({"sequence": ["refuse"]})
    f = bp_fields(sb, "SALE", "3.00")
    with pytest.raises(requests.ConnectionError):
        post_raw(sb, f)
    assert sb.ledger(order_id=f["ORDER_ID"]) == []
    assert sb.stats()["faults_injected"] == {"refuse": 1}
    assert reply_of(post_raw(sb, f))["MESSAGE"] == "Approved Sale"  # sequence consumed


@pytest.mark.parametrize("kind,code", [("http_502", 502), ("http_503", 503)])
def test_5xx_before_processing_records_nothing(sb, kind, code):
    sb.set_faults({"sequence": [kind]})
    f = bp_fields(sb, "SALE", "3.00")
    assert post_raw(sb, f).status_code == code
    assert sb.ledger(order_id=f["ORDER_ID"]) == []
    assert sb.stats()["faults_injected"] == {kind: 1}


def test_drop_after_commit_records_the_charge(sb):
    sb.set_faults({"sequence": ["drop_after_commit"]})
    f = bp_fields(sb, "SALE", "3.00")
    with pytest.raises(requests.ConnectionError):
        post_raw(sb, f)
    (row,) = sb.ledger(order_id=f["ORDER_ID"])
    assert row["status"] == "1" and row["trans_type"] == "SALE"
    # the client's retry without override is scrubbed as a duplicate; stq finds the charge
    assert reply_of(post_raw(sb, f))["MESSAGE"] == "DUPLICATE"
    found = requests.post(sb.interfaces_url + "stq", data=stq_fields(sb, order_id=f["ORDER_ID"]), timeout=5)
    assert urllib.parse.parse_qs(found.text)["id"] == [row["id"]]


def test_slow_after_commit_is_a_read_timeout_and_records(sb):
    sb.set_faults({"sequence": ["slow_after_commit"], "slow_seconds": 1.5})
    f = bp_fields(sb, "SALE", "3.00")
    t0 = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        post_raw(sb, f, timeout=(2, 0.4))
    assert time.monotonic() - t0 < 1.4
    assert len(sb.ledger(order_id=f["ORDER_ID"])) == 1


def test_http_500_after_commit_records(sb):
    sb.set_faults({"sequence": ["http_500_after_commit"]})
    f = bp_fields(sb, "SALE", "3.00")
    assert post_raw(sb, f).status_code == 500
    assert len(sb.ledger(order_id=f["ORDER_ID"])) == 1


def test_garbled_reply(sb):
    sb.set_faults({"sequence": ["garbled"]})
    f = bp_fields(sb, "SALE", "3.00")
    resp = post_raw(sb, f)
    assert resp.status_code == 200 and "Location" not in resp.headers
    assert "Result" not in dict(urllib.parse.parse_qsl(resp.content.decode("latin-1")))
    assert len(sb.ledger(order_id=f["ORDER_ID"])) == 1


def test_bad_stamp(sb):
    sb.set_faults({"sequence": ["bad_stamp", "ok"]})
    f = bp_fields(sb, "SALE", "3.00")
    r = reply_of(post_raw(sb, f))
    assert r["Result"] == "APPROVED" and not stamp_ok(sb.secret_key, r)
    assert len(sb.ledger(order_id=f["ORDER_ID"])) == 1
    assert stamp_ok(sb.secret_key, reply_of(post_raw(sb, bp_fields(sb, "SALE", "3.00"))))


def test_sequence_then_probabilities_and_stats(sb):
    cfg = sb.set_faults({"sequence": ["http_503", "ok", "http_502"], "probabilities": {"http_503": 1.0}})
    assert cfg["sequence_remaining"] == ["http_503", "ok", "http_502"]
    codes = [post_raw(sb, bp_fields(sb, "SALE", "3.00")).status_code for _ in range(5)]
    assert codes == [503, 302, 502, 503, 503]
    assert sb.stats()["faults_injected"] == {"http_503": 3, "http_502": 1}
    assert sb.faults()["injected"] == {"http_503": 3, "http_502": 1}


def test_seeded_probabilities_are_reproducible(sb):
    def run():
        sb.set_faults({"probabilities": {"http_502": 0.3, "http_503": 0.3}, "seed": 7})
        return [post_raw(sb, bp_fields(sb, "SALE", "3.00")).status_code for _ in range(20)]
    a, b = run(), run()
    assert a == b and {502, 503, 302} <= set(a)


def test_faults_apply_to_configured_endpoints_only(sb):
    sb.set_faults({"probabilities": {"http_503": 1.0}, "endpoints": ["stq"]})
    f, resp = sale(sb)
    assert resp.status_code == 302
    r = requests.post(sb.interfaces_url + "stq", data=stq_fields(sb, order_id=f["ORDER_ID"]), timeout=5)
    assert r.status_code == 503
    assert sb.health()["ok"]  # the control API is never faulted


def test_latency(sb):
    sb.set_faults({"latency_ms": 300})
    t0 = time.monotonic()
    sale(sb)
    assert time.monotonic() - t0 >= 0.3


def test_faults_at_startup():
    with running_sandbox(faults={"sequence": ["http_503"]}) as s:
        assert post_raw(s, bp_fields(s, "SALE", "3.00")).status_code == 503
        assert post_raw(s, bp_fields(s, "SALE", "3.00")).status_code == 302


def test_outage_refuses_connections_then_recovers(sb):
    f = bp_fields(sb, "SALE", "3.00")
    assert reply_of(post_raw(sb, f))["Result"] == "APPROVED"
    assert sb.outage(1.0)["outage_seconds"] == 1.0
    time.sleep(0.3)
    s = socket.socket()
    try:
        with pytest.raises(ConnectionRefusedError):
            s.connect((sb.host, sb.port))
    finally:
        s.close()
    with pytest.raises(requests.ConnectionError) as info:
        post_raw(sb, bp_fields(sb, "SALE", "3.00"), timeout=2)
    assert "refused" in str(info.value).lower() or errno.ECONNREFUSED in (getattr(info.value, "errno", None),)
    sb.wait_ready(timeout=10)
    assert reply_of(post_raw(sb, bp_fields(sb, "SALE", "3.00")))["Result"] == "APPROVED"
    assert sb.ledger(order_id=f["ORDER_ID"])  # the ledger survived the outage
    assert sb.stats()["outages"] == 1


def test_200_concurrent_keepalive_connections(sb):
    n, per_conn = 200, 5
    barrier = threading.Barrier(n)
    done = threading.Event()
    results: list = []
    errors: list = []
    host, port = sb.host, sb.port

    def client(i):
        try:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.connect()
            barrier.wait(timeout=30)
            for _ in range(per_conn):
                body = urllib.parse.urlencode(bp_fields(sb, "SALE", "3.00", DUPLICATE_OVERRIDE="1"))
                conn.request("POST", "/interfaces/bp10emu", body,
                             {"Content-Type": "application/x-www-form-urlencoded"})
                resp = conn.getresponse()
                resp.read()
                loc = resp.getheader("Location", "")
                results.append((resp.status, "Result=APPROVED" in loc))
            done.wait(timeout=60)  # every client holds its connection open until checked
            conn.close()
        except threading.BrokenBarrierError:
            errors.append("barrier")
        except Exception as exc:  # collected and asserted below
            errors.append(repr(exc))

    before = sb.stats()["connections"]["total"]
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(results) + len(errors) < n * per_conn and time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    stats = sb.stats()
    done.set()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert len(results) == n * per_conn and all(r == (302, True) for r in results)
    # all 200 open at once, and keep-alive: one server connection per client connection
    assert stats["connections"]["current"] >= n
    assert stats["connections"]["total"] - before <= n + 5
    assert len(sb.ledger()) == n * per_conn


# ----------------------------------------------------------------- late commits
def stq_row(sb, order_id: str) -> dict:
    """The stq row for ``order_id``; {} when stq says "no such transaction" (200, empty body)."""
    r = requests.post(sb.interfaces_url + "stq", data=stq_fields(sb, order_id=order_id), timeout=5)
    assert r.status_code == 200, r.text
    return dict(urllib.parse.parse_qsl(r.text, keep_blank_values=True))


def send_in_background(sb, fields: dict, timeout) -> tuple[threading.Thread, list]:
    """POST bp10emu from a thread; the list receives the response or the exception."""
    out: list = []

    def run():
        try:
            out.append(post_raw(sb, fields, timeout=timeout))
        except Exception as exc:  # inspected by the test
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def wait_held(sb, n: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while sb.stats()["late_commits"]["held"] != n:
        assert time.monotonic() < deadline, sb.stats()["late_commits"]
        time.sleep(0.02)


def test_late_commit_config_is_validated(sb):
    cfg = sb.set_faults({"sequence": ["late_commit"], "late_commit_seconds": 2})
    assert cfg["late_commit_seconds"] == 2.0 and cfg["sequence_remaining"] == ["late_commit"]
    assert sb.set_faults({})["late_commit_seconds"] == 5.0  # the default
    for bad in ({"late_commit_seconds": -1}, {"late_commit_seconds": "2"}, {"late_commit_seconds": True}):
        assert requests.post(sb.url + "/sandbox/faults", json=bad, timeout=5).status_code == 400


def test_late_commit_is_invisible_to_stq_until_it_commits(sb):
    sb.set_faults({"sequence": ["late_commit"], "late_commit_seconds": 2})
    f = bp_fields(sb, "SALE", "3.00")
    t0 = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        post_raw(sb, f, timeout=(2, 1))
    # the client gave up; the gateway still holds the request: absent everywhere but "held"
    assert time.monotonic() - t0 < 1.8
    assert stq_row(sb, f["ORDER_ID"]) == {}
    assert sb.ledger(order_id=f["ORDER_ID"]) == []
    assert sb.orders(f["ORDER_ID"]) == {f["ORDER_ID"]: {"entries": 0, "approved": {}, "declined": {},
                                                        "voided": {}, "held": 1}}
    assert sb.stats()["late_commits"] == {"held": 1, "committed": 0}
    # the hold does not block anyone else
    t1 = time.monotonic()
    other = bp_fields(sb, "SALE", "3.00")
    assert reply_of(post_raw(sb, other))["MESSAGE"] == "Approved Sale"
    assert time.monotonic() - t1 < 0.5
    # after the hold it commits, although nobody is listening any more
    row: dict = {}
    while not row:
        assert time.monotonic() - t0 < 3.5, "the held request never committed"
        row = stq_row(sb, f["ORDER_ID"])
        if not row:
            time.sleep(0.05)
    assert time.monotonic() - t0 >= 1.95
    assert row["status"] == "1" and row["trans_type"] == "SALE" and row["amount"] == "3.00"
    (entry,) = sb.ledger(order_id=f["ORDER_ID"])
    assert entry["id"] == row["id"]
    assert sb.charges(f["ORDER_ID"]) == 1 and sb.orders(f["ORDER_ID"])[f["ORDER_ID"]]["held"] == 0
    assert sb.stats()["late_commits"] == {"held": 0, "committed": 1}
    assert sb.stats()["faults_injected"] == {"late_commit": 1}


def test_late_commit_in_a_sequence_then_ok(sb):
    sb.set_faults({"sequence": ["late_commit", "ok"], "late_commit_seconds": 1})
    f = bp_fields(sb, "SALE", "3.00")
    t0 = time.monotonic()
    r = reply_of(post_raw(sb, f, timeout=5))  # a patient client gets the real reply after the hold
    assert time.monotonic() - t0 >= 0.95
    assert r["MESSAGE"] == "Approved Sale" and stamp_ok(sb.secret_key, r)
    assert sb.ledger(order_id=f["ORDER_ID"])[0]["id"] == r["TRANS_ID"]
    t1 = time.monotonic()
    g = bp_fields(sb, "SALE", "3.00")
    assert reply_of(post_raw(sb, g))["MESSAGE"] == "Approved Sale"
    assert time.monotonic() - t1 < 0.5
    assert sb.faults()["sequence_remaining"] == []
    assert sb.stats()["late_commits"] == {"held": 0, "committed": 1}


def test_late_commits_by_probability_hold_concurrently(sb):
    sb.set_faults({"probabilities": {"late_commit": 1.0}, "late_commit_seconds": 1})
    orders = []
    t0 = time.monotonic()
    for _ in range(20):
        f = bp_fields(sb, "SALE", "3.00")
        orders.append(f["ORDER_ID"])
        send_in_background(sb, f, timeout=(2, 0.3))
    wait_held(sb, 20)
    assert sb.ledger() == []
    sb.wait_no_held(timeout=3)
    assert time.monotonic() - t0 < 2.5  # held side by side, not one after another
    assert all(sb.charges(o) == 1 for o in orders)
    assert sb.stats()["late_commits"] == {"held": 0, "committed": 20}


def test_resend_during_the_hold_is_scrubbed_at_commit_time(sb):
    """Duplicate rule on (the default): the late request is judged when it commits, after the resend."""
    sb.set_faults({"sequence": ["late_commit"], "late_commit_seconds": 1})
    f = bp_fields(sb, "SALE", "3.00")
    with pytest.raises(requests.ReadTimeout):
        post_raw(sb, f, timeout=(2, 0.3))
    assert stq_row(sb, f["ORDER_ID"]) == {}
    assert reply_of(post_raw(sb, f))["MESSAGE"] == "Approved Sale"  # the resend commits first
    sb.wait_no_held(timeout=3)
    assert sb.charges(f["ORDER_ID"]) == 1  # the late one came out as DUPLICATE: not recorded
    assert sb.stats()["late_commits"]["committed"] == 1


def test_duplicate_rule_switched_off_at_runtime(sb):
    assert sb.duplicates() == {"window": 120.0, "enabled": True}
    assert sb.set_duplicate_window(0) == {"window": 0.0, "enabled": False}
    assert sb.stats()["duplicate_window"] == 0.0
    f = bp_fields(sb, "SALE", "3.00")
    first, second = reply_of(post_raw(sb, f)), reply_of(post_raw(sb, f))
    assert first["MESSAGE"] == second["MESSAGE"] == "Approved Sale"
    assert first["TRANS_ID"] != second["TRANS_ID"]
    assert sb.charges(f["ORDER_ID"]) == 2 and len(sb.ledger(order_id=f["ORDER_ID"])) == 2
    # the double charge: a late commit plus the resend the client made after "absent"
    sb.set_faults({"sequence": ["late_commit"], "late_commit_seconds": 1})
    g = bp_fields(sb, "SALE", "3.00")
    with pytest.raises(requests.ReadTimeout):
        post_raw(sb, g, timeout=(2, 0.3))
    assert stq_row(sb, g["ORDER_ID"]) == {}
    assert reply_of(post_raw(sb, g))["MESSAGE"] == "Approved Sale"
    sb.wait_no_held(timeout=3)
    assert sb.charges(g["ORDER_ID"]) == 2
    # on again at run time: the earlier entries count (judged per request)
    assert sb.set_duplicate_window(60)["enabled"] is True
    assert reply_of(post_raw(sb, f))["MESSAGE"] == "DUPLICATE"
    for bad in (-1, "0", True, None):
        r = requests.post(sb.url + "/sandbox/duplicates", json={"window": bad}, timeout=5)
        assert r.status_code == 400, bad
    assert requests.delete(sb.url + "/sandbox/duplicates", timeout=5).status_code in (404, 405, 501)
    # a reset restores the window the sandbox started with
    sb.set_duplicate_window(0)
    sb.reset()
    assert sb.duplicates() == {"window": 120.0, "enabled": True}


def test_reset_drops_held_commits(sb):
    sb.set_faults({"sequence": ["late_commit", "late_commit"], "late_commit_seconds": 1})
    gone = bp_fields(sb, "SALE", "3.00")
    with pytest.raises(requests.ReadTimeout):
        post_raw(sb, gone, timeout=(2, 0.2))  # this client has given up
    waiting = bp_fields(sb, "SALE", "3.00")
    t, out = send_in_background(sb, waiting, timeout=5)  # this one is still connected
    wait_held(sb, 2)
    t0 = time.monotonic()
    assert sb.reset() == {"ok": True, "held_dropped": 2}
    t.join(3)
    assert isinstance(out[0], requests.ConnectionError), out  # cut off at once, not after the hold
    assert time.monotonic() - t0 < 0.8
    assert sb.stats()["late_commits"] == {"held": 0, "committed": 0}
    time.sleep(1.2 - (time.monotonic() - t0) + 0.2)  # past the original hold: nothing commits late
    assert sb.ledger() == [] and sb.orders() == {}
    assert stq_row(sb, gone["ORDER_ID"]) == {} and stq_row(sb, waiting["ORDER_ID"]) == {}
    assert sb.health()["ok"]
    assert reply_of(post_raw(sb, bp_fields(sb, "SALE", "3.00")))["MESSAGE"] == "Approved Sale"


def test_late_commit_on_stq_is_a_hold(sb):
    f, resp = sale(sb)
    sb.set_faults({"sequence": ["late_commit"], "late_commit_seconds": 0.5, "endpoints": ["stq"]})
    t0 = time.monotonic()
    row = stq_row(sb, f["ORDER_ID"])
    assert time.monotonic() - t0 >= 0.45 and row["id"] == reply_of(resp)["TRANS_ID"]
