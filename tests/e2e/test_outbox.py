"""A payment message the broker lost after a worker popped it (kombu's fetch gap) is published again by
the sweep from the outbox, and charged once."""
import json
import uuid

from tasks import sale
from tests.support.env import E2E_REDIS_URL, TEST_CARD
from tests.support.workers import running_worker, worker_env
from worker.broker.app import current_payments_app
from worker.broker.outbox import AppPublisher
from worker.config import Settings
from worker.payments.sweep import run_sweep
from worker.services import Services, services


def test_message_lost_in_the_fetch_gap_is_published_again_and_charged_once(celery_worker, sandbox, e2e_redis):
    store = services().store
    # Published to a queue nobody reads, then taken off it as a dying worker's BRPOP would.
    key = f"gap-{uuid.uuid4().hex}"
    result = sale.apply_async(kwargs={"amount": "49.00", "card": TEST_CARD, "idempotency_key": key},
                              queue="fetch-gap")
    assert e2e_redis.rpop("fetch-gap") is not None and e2e_redis.llen("fetch-gap") == 0
    entry = json.loads(e2e_redis.hget(store.keys.outbox, result.id))
    assert entry["message"]["name"] == "payments.sale"
    assert "4111111111111111" not in json.dumps(entry)  # the outbox keeps the encrypted card only

    # Make the entry old enough and send it where the worker listens, then sweep.
    entry["message"]["routing_key"] = "celery"
    e2e_redis.hset(store.keys.outbox, result.id, json.dumps(entry))
    e2e_redis.zadd(store.keys.outbox_ts, {result.id: 1})
    sweeper = Services(Settings(redis_url=E2E_REDIS_URL, bluepay_url=sandbox.interfaces_url,
                                bluepay_account_id=sandbox.account_id, bluepay_secret_key=sandbox.secret_key,
                                reconcile_after=3600, visibility_timeout=60))
    report = run_sweep(sweeper, publisher=_publisher())
    assert report.get("outbox_republished", 0) >= 1
    outcome = result.get(timeout=30)
    assert outcome["status"] == "APPROVED" and outcome["payment_id"] == key
    sales = [e for e in sandbox.ledger(order_id=key) if e["trans_type"] == "SALE"]
    assert len(sales) == 1, (outcome, sandbox.ledger()[-3:])
    assert e2e_redis.hget(store.keys.outbox, result.id) is None  # the worker cleared it when done


def test_a_finished_payment_leaves_no_outbox_entry(celery_worker, e2e_redis):
    # (countdown: the producer keeps the entry just after publishing; a worker quicker than that leaves it behind,
    # the case the next test covers)
    result = sale.apply_async(kwargs={"amount": "51.00", "card": TEST_CARD}, countdown=1)
    result.get(timeout=30)
    assert e2e_redis.hget(services().store.keys.outbox, result.id) is None


def test_an_entry_kept_after_its_payment_ran_is_dropped_by_the_sweep_not_published_again(celery_worker, sandbox,
                                                                                          e2e_redis):
    store = services().store
    key = f"race-{uuid.uuid4().hex}"
    result = sale.apply_async(kwargs={"amount": "53.00", "card": TEST_CARD, "idempotency_key": key}, countdown=1)
    entry = e2e_redis.hget(store.keys.outbox, result.id)
    assert result.get(timeout=30)["status"] == "APPROVED"
    # The race's end state: the worker claimed the message before the producer's entry was written.
    e2e_redis.hset(store.keys.outbox, result.id, entry)
    e2e_redis.zadd(store.keys.outbox_ts, {result.id: 1})
    sweeper = Services(Settings(redis_url=E2E_REDIS_URL, bluepay_url=sandbox.interfaces_url,
                                bluepay_account_id=sandbox.account_id, bluepay_secret_key=sandbox.secret_key,
                                reconcile_after=3600, visibility_timeout=60))
    report = run_sweep(sweeper, publisher=_publisher())
    assert report.get("outbox_finished") == 1 and "outbox_republished" not in report, report
    assert e2e_redis.hget(store.keys.outbox, result.id) is None
    assert e2e_redis.zscore(store.keys.outbox_ts, result.id) is None
    assert len([e for e in sandbox.ledger(order_id=key) if e["trans_type"] == "SALE"]) == 1


def _publisher() -> AppPublisher:
    """The producer's app (``from tasks import sale``) publishes lost messages again, as the sweep task's does."""
    return AppPublisher(current_payments_app())


def _sweeper(sandbox) -> Services:
    return Services(Settings(redis_url=E2E_REDIS_URL, bluepay_url=sandbox.interfaces_url,
                             bluepay_account_id=sandbox.account_id, bluepay_secret_key=sandbox.secret_key,
                             reconcile_after=3600, visibility_timeout=60))


def test_a_backlog_still_in_its_queue_is_not_published_again_by_due_sweeps(sandbox, e2e_redis, tmp_path):
    """Issue 24, item 7: workers behind by more than the outbox's due age. Every queued payment is due on every
    sweep, but still in the broker: nothing is published again; then a worker drains the queue, once each."""
    store = services().store
    queue, n = f"backlog-{uuid.uuid4().hex[:8]}", 6
    keys = [f"backlog-{uuid.uuid4().hex}" for _ in range(n)]
    results = [sale.apply_async(kwargs={"amount": f"{55 + 2 * i}.00", "card": TEST_CARD, "idempotency_key": key},
                                queue=queue) for i, key in enumerate(keys)]
    assert e2e_redis.llen(queue) == n
    for _ in range(3):  # three due sweeps while no worker reads the queue
        for r in results:
            e2e_redis.zadd(store.keys.outbox_ts, {r.id: 1})  # each entry older than the due age
        report = run_sweep(_sweeper(sandbox), publisher=_publisher())
        assert report.get("outbox_still_queued") == n and "outbox_republished" not in report, report
        assert e2e_redis.llen(queue) == n  # not multiplied
    log = tmp_path / "drain.log"
    with running_worker(worker_env(sandbox), log, pool="threads", concurrency=3, queues=queue):
        outcomes = [r.get(timeout=60) for r in results]
    assert [o["status"] for o in outcomes] == ["APPROVED"] * n
    for key in keys:
        assert len([e for e in sandbox.ledger(order_id=key) if e["trans_type"] == "SALE"]) == 1
    runs = log.read_text().count("Task payments.sale[")  # one "received" and one "succeeded" line per run
    assert runs == 2 * n, log.read_text()[-2000:]
    assert e2e_redis.llen(queue) == 0


def test_a_message_held_unacknowledged_is_not_published_again(sandbox, e2e_redis):
    """A delivered message a worker has not acknowledged (kombu's unacked hash: running, or waiting for its
    countdown) is not lost either."""
    store = services().store
    queue = f"held-{uuid.uuid4().hex[:8]}"
    result = sale.apply_async(kwargs={"amount": "71.00", "card": TEST_CARD}, queue=queue)
    raw = e2e_redis.rpop(queue)  # a worker's BRPOP, then kombu's QoS.append: [message, exchange, routing_key]
    e2e_redis.hset("unacked", "tag-" + result.id, json.dumps([json.loads(raw), "", queue]))
    try:
        e2e_redis.zadd(store.keys.outbox_ts, {result.id: 1})
        report = run_sweep(_sweeper(sandbox), publisher=_publisher())
        assert report.get("outbox_still_queued") == 1 and "outbox_republished" not in report, report
        # once it is gone from the hash as well (acknowledged by a worker that then died: lost), it is published
        e2e_redis.hdel("unacked", "tag-" + result.id)
        e2e_redis.zadd(store.keys.outbox_ts, {result.id: 1})
        report = run_sweep(_sweeper(sandbox), publisher=_publisher())
        assert report.get("outbox_republished") == 1, report
    finally:
        e2e_redis.hdel("unacked", "tag-" + result.id)
        e2e_redis.delete(queue)
        store.outbox.done(result.id)
