"""Every place the worker overrides or replaces a private (or internal) method of Celery or kombu, in one table.

Each entry names the library method, where we change it, why, and what it saves; ``pins`` are the library methods
whose code our change relies on, each with a fingerprint of its source at the locked version (requirements/*.txt).
``tests/unit/test_library_patches.py`` fails when an upgrade changes any of them (or the locked version itself), so
that the patch is looked at again before it silently does the wrong thing. docs/performance.md ("Patches") lists the
same table for readers. Public hooks (bootsteps, signals, ``Producer.batch``, ``task_cls``) are not listed here.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Patch", "PATCHES", "fingerprint"]


@dataclass(frozen=True)
class Patch:
    target: str  # the library method we override or replace: "module:Class.method"
    ours: str  # where
    reason: str
    saving: str
    pins: tuple[tuple[str, str], ...]  # ("module:Class.method", fingerprint) our change relies on


def fingerprint(qualified: str) -> str:
    """sha256 (first 16 hex digits) of the method's source as ``ast.unparse`` prints it (comments and layout do not
    count), read from the installed library's file, not from the (possibly patched) class in memory."""
    module, _, path = qualified.partition(":")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LookupError(f"{module}: not installed")
    node: ast.AST = ast.parse(Path(spec.origin).read_text())
    for name in path.split("."):
        found = next((n for n in ast.iter_child_nodes(node)
                      if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name), None)
        if found is None:
            raise LookupError(f"{qualified}: {name} not found")
        node = found
    return hashlib.sha256(ast.unparse(node).encode()).hexdigest()[:16]


_KOMBU_REDIS = "kombu.transport.redis"
_CELERY_REDIS = "celery.backends.redis"

PATCHES: tuple[Patch, ...] = (
    Patch(
        target=f"{_KOMBU_REDIS}:QoS.pipe_or_acquire",
        ours="worker/broker/lean_transport.py: LeanQoS (set as Channel.QoS by a worker step)",
        reason="the unacked record (ZADD+HSET) and its removal at the ack (ZREM+HDEL) need no MULTI/EXEC",
        saving="4 Redis commands per payment",
        pins=((f"{_KOMBU_REDIS}:QoS.pipe_or_acquire", "fd1e43f6b2da13b8"),
              (f"{_KOMBU_REDIS}:QoS.append", "62a64dc288defbbc"),
              (f"{_KOMBU_REDIS}:QoS.ack", "e327206e27ae8803"),
              (f"{_KOMBU_REDIS}:QoS._remove_from_indices", "a84efd1d1c57bb2b"),
              (f"{_KOMBU_REDIS}:QoS.restore_by_tag", "d80dd8c69a82390e")),
    ),
    Patch(
        target=f"{_KOMBU_REDIS}:Channel.conn_or_acquire",
        ours="worker/broker/lean_transport.py: pooled_conn_or_acquire (a worker step)",
        reason="kombu builds a new redis-py client for every ack, unacked record and publish; one per channel will do",
        saving="~0.1 ms of worker CPU per client built (2-3 per payment; bench/: 107 -> 1.7 us per acquire)",
        pins=((f"{_KOMBU_REDIS}:Channel.conn_or_acquire", "73c0765b5280564e"),
              (f"{_KOMBU_REDIS}:Channel._create_client", "b7d6e78154d3478e"),
              (f"{_KOMBU_REDIS}:Channel._disconnect_pools", "bd0c8c67e4f44805"),
              (f"{_KOMBU_REDIS}:Channel.pool", "318bc2756073cc97")),
    ),
    Patch(
        target="celery.backends.base:BaseKeyValueStoreBackend._store_result",
        ours="worker/broker/result_backend.py: LeanResults._store_result (every payments app)",
        reason="a SUCCESS is written without Celery's GET of the previous state, and not at all when the results "
               "store wrote it with the payment's outcome (worker/store/final_write.py)",
        saving="1 Redis command per payment",
        pins=(("celery.backends.base:BaseKeyValueStoreBackend._store_result", "a2ca8e5d57fc57ff"),
              ("celery.backends.base:Backend._get_result_meta", "724b16a14c01b4d4"),
              (f"{_CELERY_REDIS}:RedisBackend._set_with_state", "37db08ec94802d6e")),
    ),
    Patch(
        target=f"{_CELERY_REDIS}:RedisBackend._set",
        ours="worker/broker/result_backend.py: LeanResults._set",
        reason="SET and PUBLISH of a result need no MULTI/EXEC (one pipeline either way)",
        saving="2 Redis commands per payment",
        pins=((f"{_CELERY_REDIS}:RedisBackend._set", "d3ba6a8c150b90f0"),
              (f"{_CELERY_REDIS}:RedisBackend.set", "5fdfd46dc2342b50")),
    ),
    Patch(
        target="celery.app.base:Celery._get_backend",
        ours="worker/broker/app.py: PaymentsCelery._get_backend",
        reason="installs the leaner result backend above for the backend named by result_backend",
        saving="(the two entries above)",
        pins=(("celery.app.base:Celery._get_backend", "9fd28f08b5663608"),),
    ),
    Patch(
        target="kombu.messaging:_ProducerBatchState._get_session",
        ours="worker/broker/one_trip.py: keep_in_batch (reads batch.state.session.pipeline; nothing overridden)",
        reason="the outbox HSET joins the pipeline of kombu's public Producer.batch() with the message and event",
        saving="2 Redis round trips per payment at the producer (3 -> 1)",
        pins=(("kombu.messaging:_ProducerBatchState._get_session", "5fb0e74068f91627"),
              ("kombu.messaging:_ProducerBatch.__enter__", "7426b245904d994d"),
              ("kombu.messaging:_ProducerBatch.__exit__", "d468f92ae200efee"),
              ("kombu.messaging:Producer._publish", "16f7e1572e4f346a"),
              (f"{_KOMBU_REDIS}:PublishBatch.__init__", "652b3e37ab3f3f4f"),
              (f"{_KOMBU_REDIS}:PublishBatch.flush", "f35745664b53c566")),
    ),
    Patch(
        target=f"{_KOMBU_REDIS}:QoS.ack",
        ours="worker/broker/lean_transport.py: LeanQoS.ack; worker/broker/final_write.py (what the store writes)",
        reason="the payment's final write (worker/store/final_write.py) already ran the ack's HDEL+ZREM in the same "
               "Redis function call as the outcome and Celery's result; only kombu's in-memory bookkeeping is left. "
               "The delivery tag is the message's (properties, set at publish), the keys kombu's unacked ones",
        saving="2 Redis round trips per payment (the result's SET+PUBLISH and the ack's HDEL+ZREM ride in the "
               "outcome's FCALL)",
        pins=((f"{_KOMBU_REDIS}:QoS.ack", "e327206e27ae8803"),
              ("kombu.transport.virtual.base:QoS.ack", "10a753d3357edafb"),
              (f"{_KOMBU_REDIS}:QoS._remove_from_indices", "a84efd1d1c57bb2b"),
              ("kombu.transport.virtual.base:Channel._inplace_augment_message", "c98540a255764e02"),
              ("celery.worker.request:Request.__init__", "bfd21c43be62f7bc"),
              ("celery.backends.base:Backend._get_result_meta", "724b16a14c01b4d4")),
    ),
    Patch(
        target=f"{_KOMBU_REDIS}:Channel._brpop_start",
        ours="worker/broker/atomic_fetch.py: _brpop_start (a worker step)",
        reason="while messages wait, fetch with a script that pops one and records it unacknowledged (kombu's "
               "QoS.append entries) in the same call; an empty queue goes back to kombu's BRPOP",
        saving="1 Redis round trip per task under load (the unacked ZADD+HSET ride in the fetch)",
        pins=((f"{_KOMBU_REDIS}:Channel._brpop_start", "5e42aad2a4741b91"),
              (f"{_KOMBU_REDIS}:Channel._q_for_pri", "ccb20428b15ae0bd"),
              (f"{_KOMBU_REDIS}:QoS.append", "62a64dc288defbbc"),
              (f"{_KOMBU_REDIS}:QoS.restore_by_tag", "d80dd8c69a82390e"),
              (f"{_KOMBU_REDIS}:QoS.restore_visible", "cc129f40c0a30d9f"),
              (f"{_KOMBU_REDIS}:MultiChannelPoller._register_BRPOP", "76468996b8e6c78d"),
              (f"{_KOMBU_REDIS}:MultiChannelPoller.on_readable", "18f007f02eb9e62a")),
    ),
    Patch(
        target=f"{_KOMBU_REDIS}:Channel._brpop_read",
        ours="worker/broker/atomic_fetch.py: _brpop_read",
        reason="reads the pop script's answer (kombu's own BRPOP reply otherwise) and tells QoS.append that the "
               "message is recorded already (LeanQoS.append)",
        saving="(the entry above)",
        pins=((f"{_KOMBU_REDIS}:Channel._brpop_read", "61a2bfc9294c1c8c"),
              ("kombu.transport.virtual.base:Message.__init__", "ff6e49619a1c6a4f")),
    ),
    Patch(
        target=f"{_KOMBU_REDIS}:Channel.basic_consume",
        ours="worker/broker/atomic_fetch.py: _basic_consume",
        reason="notes the queues consumed without acknowledgements: the pop script never serves them (their "
               "messages never reach QoS.append, so a recorded entry would be restored later: a duplicate)",
        saving="(correctness of the entries above)",
        pins=((f"{_KOMBU_REDIS}:Channel.basic_consume", "fc3ea75911e38eea"),
              ("kombu.transport.virtual.base:Channel.basic_consume", "fa05efb18746888a")),
    ),
    Patch(
        target="celery.app.amqp:AMQP._create_task_sender",
        ours="worker/broker/app.py: ProtectingAMQP._create_task_sender",
        reason="after_task_publish does not say which app published: the outbox needs the app (not a saving)",
        saving="-",
        pins=(("celery.app.amqp:AMQP._create_task_sender", "645957242f6c2190"),),
    ),
)
