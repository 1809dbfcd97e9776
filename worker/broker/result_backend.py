"""Celery's Redis result backend with two fewer commands per task, and one fewer for a success.

Celery's Redis backend stores a task's result with a GET (is a SUCCESS there already? then keep it), then MULTI,
SETEX, PUBLISH, EXEC: five Redis commands per payment. Here:

* a SUCCESS is written without the GET: the guard keeps a late duplicate's RETRY or FAILURE from replacing a
  SUCCESS, and every other state still goes through it; a SUCCESS over a SUCCESS is the same outcome again (the
  results store holds the operation's one outcome, and a redelivered payment returns that record);
* a SUCCESS the results store already wrote with the payment's outcome (worker/store/final_write.py) is not
  written again;
* SET (with its expiry) and PUBLISH go out in one pipeline without MULTI/EXEC: one round trip either way, and
  nothing needs the two to be atomic (a reader polling the key and a subscriber of the channel get the same value).

Keys, values, expiry and the pub/sub message are Celery's own, so ``AsyncResult.get()`` works as before (by polling
or by pub/sub). :func:`lean_backend` applies it to Celery's ``RedisBackend`` and its subclasses (the Sentinel one
too, worker/broker/sentinel.py); ``worker.broker.app.create_app`` uses it for every payments app.
"""
from __future__ import annotations

import functools
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from worker.store import final_write

__all__ = ["LeanResults", "lean_backend"]


class LeanResults:
    """Mixin for a ``celery.backends.redis.RedisBackend`` (before it in the bases)."""

    def _store_result(self, task_id: Any, result: Any, state: str, traceback: Any = None, request: Any = None,
                      **kwargs: Any) -> Any:
        if state == states.SUCCESS and final_write.written(bytes_to_str(task_id)):
            return result  # the store wrote it with the outcome, in the same call (worker/store/final_write.py)
        if state != states.SUCCESS:
            return super()._store_result(task_id, result, state, traceback=traceback,  # type: ignore[misc]
                                         request=request, **kwargs)
        backend: Any = self
        meta = backend._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        try:
            backend._set_with_state(backend.get_key_for_task(task_id), backend.encode(meta), state)
        except BackendStoreError as exc:
            raise BackendStoreError(str(exc), state=state, task_id=task_id) from exc
        return result

    def _set(self, key: Any, value: Any, expires: Any = None) -> None:
        backend: Any = self
        if expires is None:
            expires = backend.expires
        with backend.client.pipeline(transaction=False) as pipe:
            pipe.set(key, value, ex=expires or None)
            pipe.publish(key, value)
            pipe.execute()


@functools.cache
def lean_backend(cls: type) -> type:
    """``cls`` with :class:`LeanResults` when it is a Redis result backend; any other backend as it is."""
    if not (isinstance(cls, type) and issubclass(cls, RedisBackend)) or issubclass(cls, LeanResults):
        return cls
    return type(f"Lean{cls.__name__}", (LeanResults, cls), {"__module__": __name__})
