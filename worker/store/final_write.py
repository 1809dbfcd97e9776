"""The final write of a payment in one round trip: the outcome, Celery's result and the broker message's ack.

A task that finishes its payment normally (no chain, callback or group after it; a JSON result in the Redis result
backend on the store's Redis; a message delivered by kombu's Redis transport) hands the store a :class:`FinalWrite`
through :func:`finishing` (the task edge, ``worker.broker.final_write``). The store's transition then writes, in the
same function call, only if the record itself was written (lease holder, expected status):

* the record, its history, indexes and audit entry (as every transition);
* Celery's result: ``SET <result key> <meta> EX <expires>`` and ``PUBLISH`` of it, the meta Celery's backend would
  have stored with the task's outcome in it (``common.lua`` task_outcome: the same rule as
  :func:`worker.store.outcomes.task_outcome`, from the same field lists);
* the ack: ``HDEL unacked <tag>`` and ``ZREM unacked_index <tag>``, what kombu's ack runs.

Then the backend skips its own store of that SUCCESS and kombu's ack skips its Redis commands
(:func:`written`, :func:`acked`): 2 round trips and 4-6 commands fewer per payment. A refused transition writes
neither: Celery stores and acks as before. Should the process die right after the call, everything is written; before
it, nothing is, and the message is delivered again (the record answers it).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["FinalWrite", "OUTCOME_PLACEHOLDER", "finishing", "current", "mark_written", "written", "acked"]

#: What the meta holds in place of the outcome (common.lua puts the outcome's JSON there).
OUTCOME_PLACEHOLDER = "__PAYMENTS_OUTCOME__"


@dataclass(frozen=True)
class FinalWrite:
    task_id: str
    #: Celery's result key, the meta encoded with OUTCOME_PLACEHOLDER as its result, expiry in seconds (0: none);
    #: result_key "": no result to write
    result_key: str
    meta: str
    expires: int
    #: kombu's unacked hash and index and the message's delivery tag ("": no ack)
    unacked_key: str
    unacked_index_key: str
    delivery_tag: str

    def keys(self) -> list[str]:
        return [self.result_key or "-", self.unacked_key or "-", self.unacked_index_key or "-"]

    def args(self) -> list[str]:
        return [self.meta if self.result_key else "", str(self.expires), self.delivery_tag]


_current: ContextVar[FinalWrite | None] = ContextVar("payments_final_write", default=None)


@contextmanager
def finishing(final: FinalWrite | None) -> Iterator[None]:
    """While a task runs: its final transition also writes ``final`` (greenlets and threads each have their own)."""
    token = _current.set(final)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> FinalWrite | None:
    return _current.get()


class _Recent:
    """Task ids / delivery tags written by the store, until the backend or kombu looks (bounded: a prefork child
    writes what its parent acks, so its tags are never looked up; the oldest are dropped)."""

    def __init__(self, cap: int = 10_000) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._cap = cap

    def add(self, item: str) -> None:
        with self._lock:
            self._items[item] = None
            while len(self._items) > self._cap:
                self._items.popitem(last=False)

    def take(self, item: str) -> bool:
        with self._lock:
            if item not in self._items:
                return False
            del self._items[item]
            return True


_results, _acks = _Recent(), _Recent()


def mark_written(final: FinalWrite) -> None:
    """The store wrote ``final`` with the outcome."""
    if final.result_key:
        _results.add(final.task_id)
    if final.delivery_tag:
        _acks.add(final.delivery_tag)


def written(task_id: str) -> bool:
    """Whether the store wrote this task's result (once: the backend asks as it stores the SUCCESS)."""
    return _results.take(task_id)


def acked(delivery_tag: str) -> bool:
    """Whether the store acked this message (once: kombu's QoS asks as it acks)."""
    return _acks.take(delivery_tag)
