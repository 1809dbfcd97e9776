"""kombu's Redis fetch, one round trip when work is waiting: take a message and record it unacknowledged in one script.

kombu fetches with ``BRPOP`` and then, in a second round trip, records the message as unacknowledged (``ZADD`` to
``unacked_index``, ``HSET`` to ``unacked``). While a queue has messages waiting, the worker here takes the next one
with a small script that pops it *and* writes those two entries, atomically: one round trip instead of two, and the
message never exists only in a worker's memory (kombu's own gap between the pop and the record, which the outbox
covers for payments, docs/safety.md 8, is closed for every task). When a queue is empty the script answers nothing
and the channel goes back to kombu's blocking ``BRPOP`` (and its own two-step record), so an idle worker still waits
in Redis, not in a polling loop.

When it pops: after a fetch that delivered a message (kombu's ``BRPOP`` or the script) and while the script's last
answer said another message was waiting. Only on a channel whose every consumer acknowledges (a ``no_ack`` consumer
never calls ``QoS.append``, so a recorded entry would be restored later: a duplicate), and never with kombu's
``global_keyprefix``. The entries are what kombu's ``QoS.append`` writes: ``unacked_index`` scored with this worker's
``time()`` (kombu's restore compares it with its own clock), rounded up to a whole second (a whole-number score is
kept as an integer in a small sorted set, so an insert among ~100 unacked messages compares integers instead of
parsing each score: ~60k fewer instructions in Redis per insert and removal; a restore may come up to 1 s later,
never earlier), ``unacked`` holding ``[message, exchange, routing key]`` as JSON; ``QoS.restore_visible``,
``restore_by_tag``, acks and the outbox's look into ``unacked`` read them as theirs.
A message the script cannot read as kombu's JSON is popped unrecorded and handed over as ``BRPOP`` would (kombu's
append records it).

Failure cases: the reply lost after the pop (connection or Redis down): the message is in ``unacked`` and kombu
restores it after the visibility timeout (with ``BRPOP`` it was lost); the script missing (a restarted Redis, a new
primary): ``NOSCRIPT``, nothing ran, it is loaded and the next fetch uses it.

:func:`install` (with ``worker.broker.lean_transport.install``, a worker step) replaces kombu's
``Channel._brpop_start`` / ``_brpop_read`` and wraps ``basic_consume`` (to know which queues acknowledge); listed in
``worker/broker/patches.py`` with fingerprints of the kombu methods they follow.
"""
from __future__ import annotations

import hashlib
import math
from time import monotonic, time
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str as _bytes_to_str
from kombu.utils.json import loads as _loads

__all__ = ["POP_SCRIPT", "install", "recorded_by_fetch"]

#: KEYS: the queue lists in BRPOP's order, then ``unacked`` and ``unacked_index``. ARGV: 1 the score (the worker's
#: time(), rounded up to a whole second). Returns false (all empty) or {list, message, recorded 1/0, another waiting
#: 1/0}.
POP_SCRIPT = """
local n = #KEYS - 2
for i = 1, n do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local more = 0
    for j = i, n do
      if redis.call('LLEN', KEYS[j]) > 0 then more = 1 break end
    end
    -- kombu's message ends with its properties object: decode that only (plain finds; a pattern or a decode of the
    -- whole message costs more than the round trip saved). A message of another shape is kombu's to record.
    local at, from = nil, 1
    while true do
      local found = string.find(item, '"properties": {', from, true)
      if not found then break end
      at, from = found, found + 1
    end
    local ok, p = false, nil
    if at and string.byte(item, #item) == 125 then  -- '}'
      ok, p = pcall(cjson.decode, string.sub(item, at + 14, #item - 1))
    end
    p = ok and p
    local tag = type(p) == 'table' and p.delivery_tag
    local info = type(p) == 'table' and p.delivery_info
    if type(tag) ~= 'string' or type(info) ~= 'table' or info.exchange == nil or info.routing_key == nil then
      return {KEYS[i], item, 0, more}
    end
    redis.call('ZADD', KEYS[n + 2], ARGV[1], tag)
    redis.call('HSET', KEYS[n + 1], tag,
      '[' .. item .. ', ' .. cjson.encode(info.exchange) .. ', ' .. cjson.encode(info.routing_key) .. ']')
    return {KEYS[i], item, 1, more}
  end
end
return false
"""
POP_SHA = hashlib.sha1(POP_SCRIPT.encode()).hexdigest()

# kombu's own methods (and helpers), kept to call; kombu has no annotations, hence the Any.
_KOMBU_BRPOP_START: Any = kombu_redis.Channel._brpop_start
_KOMBU_BRPOP_READ: Any = kombu_redis.Channel._brpop_read
_KOMBU_BASIC_CONSUME: Any = kombu_redis.Channel.basic_consume
bytes_to_str: Any = _bytes_to_str
loads: Any = _loads
#: Tags the script recorded, per channel, until QoS.append sees them (bounded: a message whose consumer vanished
#: between the fetch and its delivery never reaches append).
_RECORDED_CAP = 10_000


def recorded_by_fetch(channel: Any, delivery_tag: Any) -> bool:
    """Whether the fetch already wrote this message's unacked entries (then QoS.append writes nothing); forgets it."""
    recorded: set[Any] | None = channel.__dict__.get("_payments_recorded")
    if not recorded or delivery_tag not in recorded:
        return False
    recorded.discard(delivery_tag)
    return True


def _may_pop(channel: Any) -> bool:
    state = channel.__dict__
    return (state.get("_payments_hot", False) and not channel.global_keyprefix
            and not state.get("_payments_no_ack_queues"))


def _brpop_start(self: Any, timeout: Any = None) -> None:
    """``Channel._brpop_start``: the pop script while messages are waiting, else kombu's ``BRPOP``."""
    if not _may_pop(self):
        _KOMBU_BRPOP_START(self, timeout)
        return
    queues = self._queue_cycle.consume(len(self.active_queues))
    if not queues:
        return
    keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
    self._in_poll = self.client.connection
    self._brpop_sent_at = monotonic()
    self.__dict__["_payments_popping"] = True
    self.client.connection.send_command("EVALSHA", POP_SHA, len(keys) + 2, *keys, self.unacked_key,
                                        self.unacked_index_key, str(math.ceil(time())))


def _brpop_read(self: Any, **options: Any) -> Any:
    """``Channel._brpop_read``: reads the pop script's answer when one is in flight, else kombu's ``BRPOP`` reply."""
    if not self.__dict__.pop("_payments_popping", False):
        delivered = _KOMBU_BRPOP_READ(self, **options)  # raises Empty when nothing came
        self.__dict__["_payments_hot"] = True  # work may be waiting: try the script next
        return delivered
    try:
        try:
            reply = self.client.parse_response(self.client.connection, "EVALSHA", **options)
        except self.connection_errors:
            self.client.connection.disconnect()  # as kombu: the next fetch reconnects
            raise
        except redis.exceptions.NoScriptError as exc:  # nothing ran: loaded for the next fetch
            self._in_poll = None
            self.client.script_load(POP_SCRIPT)
            raise kombu_redis.Empty() from exc
        except redis.ResponseError:
            self.__dict__["_payments_hot"] = False  # BRPOP next: kombu's own handling of whatever this is
            raise
        if not reply:
            self.__dict__["_payments_hot"] = False  # all empty: BRPOP waits for the next one
            raise kombu_redis.Empty()
        queue_key, item, recorded, more = reply
        self.__dict__["_payments_hot"] = bool(more)
        message = loads(bytes_to_str(item))
        if recorded:
            tags = self.__dict__.setdefault("_payments_recorded", set())
            if len(tags) >= _RECORDED_CAP:
                tags.clear()
            tags.add(message["properties"]["delivery_tag"])
        dest = bytes_to_str(queue_key).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(dest)
        self.connection._deliver(message, dest)
        return True
    finally:
        self._in_poll = None
        self._flush_brpop_reauth()


def _basic_consume(self: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
    """``Channel.basic_consume``, noting the queues consumed without acknowledgements (no pop script for them)."""
    no_ack = kwargs.get("no_ack", args[0] if args else False)
    if no_ack:
        self.__dict__.setdefault("_payments_no_ack_queues", set()).add(queue)
    return _KOMBU_BASIC_CONSUME(self, queue, *args, **kwargs)


def install() -> None:
    """The pop script for every kombu Redis channel of this process (Sentinel's subclass too)."""
    kombu_redis.Channel._brpop_start = _brpop_start  # type: ignore[method-assign]  # (patches.py)
    kombu_redis.Channel._brpop_read = _brpop_read  # type: ignore[method-assign]
    kombu_redis.Channel.basic_consume = _basic_consume  # type: ignore[method-assign]
