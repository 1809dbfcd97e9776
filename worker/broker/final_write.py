"""What a payment task hands the store for its final write (worker/store/final_write.py): Celery's result key and
meta, kombu's unacked keys and the message's delivery tag, when the store may write them in the same call as the
outcome. None (Celery stores and acks as usual) whenever the store cannot write exactly what Celery would:

* a task with anything after it (chain, callbacks, errbacks, chord, group): Celery applies those before it stores
  the result, and records them in the result's ``children``;
* ``ignore_result``, a result backend that is not the lean Redis one, a serializer other than JSON, or
  ``result_extended`` (the meta would carry the request);
* a message that did not come through kombu's Redis transport on the store's Redis (eager runs, another broker).
"""
from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from celery import Task

from worker.broker.result_backend import LeanResults
from worker.store.final_write import OUTCOME_PLACEHOLDER, FinalWrite

__all__ = ["final_write_for"]


def final_write_for(task: Task, store_broker_url: str) -> FinalWrite | None:
    """``store_broker_url``: the broker URL of the store's Redis (``celery_settings(settings)["broker_url"]``)."""
    request = task.request
    if request.is_eager or task.ignore_result or getattr(request, "ignore_result", False):
        return None
    if request.chain or request.callbacks or request.errbacks or request.chord or request.group:
        return None
    app = task.app
    backend: Any = app.backend  # Celery's is per thread: looked at on every call
    keys = _unacked_keys(app, store_broker_url)
    if keys is None or not isinstance(app.backend, LeanResults):
        return None
    tag = (getattr(request, "properties", None) or {}).get("delivery_tag")  # kombu's, set when it was published
    if not isinstance(tag, str) or not tag:
        return None
    task_id = _text(request.id)
    meta = backend._get_result_meta(result=OUTCOME_PLACEHOLDER, state="SUCCESS", traceback=None, request=request)
    meta["task_id"] = task_id
    expires = backend.expires
    return FinalWrite(task_id=task_id, result_key=_text(backend.get_key_for_task(task_id)),
                      meta=backend.encode(meta), expires=int(expires) if expires else 0,
                      unacked_key=keys[0], unacked_index_key=keys[1], delivery_tag=tag)


# Per app and store URL, once per process: the app's configuration does not change once the worker runs, and reading
# it (Celery's ConfigurationView, six settings) cost ~2 % of a payment's worker CPU when done on every payment.
_UNACKED_KEYS: WeakKeyDictionary[Any, dict[str, tuple[str, str] | None]] = WeakKeyDictionary()


def _unacked_keys(app: Any, store_broker_url: str) -> tuple[str, str] | None:
    """kombu's unacked hash and index keys when the app's settings allow the final write, else None."""
    per_url = _UNACKED_KEYS.setdefault(app, {})
    if store_broker_url not in per_url:
        per_url[store_broker_url] = _unacked_keys_of(app.conf, store_broker_url)
    return per_url[store_broker_url]


def _unacked_keys_of(conf: Any, store_broker_url: str) -> tuple[str, str] | None:
    if conf.result_serializer != "json" or conf.result_extended:
        return None
    if conf.broker_url != store_broker_url or not _same_redis(conf.broker_url, conf.result_backend):
        return None
    options = dict(conf.broker_transport_options or {})
    prefix = options.get("global_keyprefix") or ""
    return prefix + options.get("unacked_key", "unacked"), prefix + options.get("unacked_index_key", "unacked_index")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _same_redis(broker_url: Any, result_backend: Any) -> bool:
    """The broker and the result backend on one Redis database (worker/broker/celeryconfig.py celery_settings: both
    REDIS_URL, or the same sentinels), the one the store uses."""
    if not isinstance(broker_url, str) or not isinstance(result_backend, str):
        return False
    backend_url = result_backend.split("+", 1)[1] if result_backend.startswith("worker.broker.sentinel:") \
        else result_backend
    return backend_url == broker_url and broker_url.startswith(("redis://", "rediss://", "sentinel://"))
