"""The broker snapshot against a real Redis: queue lengths, unacked and Redis's memory (INFO memory) in one round
trip; what the exporter's memory gauges and PaymentsRedisMemoryNearLimit read."""
from __future__ import annotations

from worker.ops.monitor import broker_snapshot


def test_the_broker_snapshot_reads_redis_memory_and_its_limit(client, prefix):
    queue = f"{prefix}queue"
    client.rpush(queue, "a", "b")
    found = broker_snapshot(client, [queue], unacked_key=f"{prefix}unacked")
    assert found["queues"] == {queue: 2} and found["unacked"] == 0
    memory = found["memory"]
    assert memory["used"] > 0
    assert memory["maxmemory"] == int(client.config_get("maxmemory")["maxmemory"])
    assert memory["total_system_memory"] > 0
