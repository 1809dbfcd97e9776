"""Which app the outbox's re-publish goes through: this thread's payments app, never an unconfigured one."""
from __future__ import annotations

import threading

from celery import Celery

from worker.broker.app import app as worker_app
from worker.broker.app import create_app, current, current_payments_app
from worker.config import Settings


def in_a_new_thread(fn):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join(5)
    return out[0]


def test_a_thread_without_a_payments_app_gets_worker_app():
    # A new thread's current app is Celery's fallback (or another program's): not ours to publish through.
    assert in_a_new_thread(current_payments_app) is worker_app
    other = Celery("merchant", broker="memory://", set_as_current=False)
    with current(other):
        assert current_payments_app() is worker_app


def test_a_payments_app_made_current_is_used():
    mine = create_app(Settings(redis_url="redis://127.0.0.1:6379/15"), main="unit-current")
    with current(mine):
        assert current_payments_app() is mine
        assert in_a_new_thread(current_payments_app) is worker_app  # current() is this thread's only
    assert current_payments_app() is worker_app
