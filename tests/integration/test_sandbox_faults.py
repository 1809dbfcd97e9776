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
            for j in range(per_conn):
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
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
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
