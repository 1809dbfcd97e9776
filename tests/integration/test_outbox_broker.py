"""The outbox's look into the broker (issue 24, item 7): which due entries' messages are still in a queue list (each
priority's) or in kombu's unacked hash, found inside Redis in slices (``scripts/outbox_queued.lua``). Messages are
written as kombu's Redis transport writes them."""
from __future__ import annotations

import json
import uuid

from worker.store import ResultsStore
from worker.store.outbox import PRIORITY_SEP, SCAN_BATCH, UNACKED


def kombu_message(task_id: str) -> str:
    return json.dumps({"body": "W10=", "content-encoding": "utf-8", "content-type": "application/json",
                       "headers": {"lang": "py", "task": "payments.sale", "id": task_id, "root_id": "r-" + task_id},
                       "properties": {"delivery_tag": uuid.uuid4().hex, "priority": 0}})


def entry(queue: str) -> dict:
    return {"message": {"name": "payments.sale", "routing_key": queue}, "republished": 0}


def test_found_in_a_long_queue_a_priority_list_and_the_unacked_hash_and_nowhere_else(client, prefix):
    store = ResultsStore(client, prefix=prefix)
    queue = prefix + "q"
    backlog = [f"t-{i}" for i in range(2 * SCAN_BATCH + 7)]  # three slices
    client.lpush(queue, *[kombu_message(t) for t in backlog], "not json", json.dumps([1, 2]))
    client.lpush(f"{queue}{PRIORITY_SEP}6", kombu_message("t-priority"))
    tag = "tag-" + uuid.uuid4().hex
    client.hset(UNACKED, tag, json.dumps([json.loads(kombu_message("t-held")), "", queue]))
    try:
        wanted = ["t-0", f"t-{SCAN_BATCH}", backlog[-1], "t-priority", "t-held", "t-lost", "r-t-1"]
        found = store.outbox.still_in_broker([(t, entry(queue)) for t in wanted])
        # a root_id naming another task is not its id: only headers.id counts
        assert found == {"t-0", f"t-{SCAN_BATCH}", backlog[-1], "t-priority", "t-held"}
    finally:
        client.hdel(UNACKED, tag)


def test_a_message_published_without_a_routing_key_is_looked_for_in_the_default_queue(client, prefix):
    store = ResultsStore(client, prefix=prefix)
    assert store.outbox.still_in_broker([]) == set()
    assert store.outbox.still_in_broker([("t-none", {"message": {"routing_key": ""}})]) == set()


def test_restamp_restarts_only_existing_stamps_and_counts_them(client, prefix):
    store = ResultsStore(client, prefix=prefix)
    store.outbox.put("kept", {"name": "payments.sale"})
    store.outbox.stale(-1)  # stamped
    client.zadd(store.keys.outbox_ts, {"kept": 1})
    store.outbox.restamp({"kept", "claimed-meanwhile"})
    assert client.zscore(store.keys.outbox_ts, "kept") > 1
    assert client.zscore(store.keys.outbox_ts, "claimed-meanwhile") is None  # XX: no stamp for a gone entry
    assert int(client.hget(store.keys.stats, "outbox_still_queued")) == 2
