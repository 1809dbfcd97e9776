"""When a payment task hands the store its final write (worker/broker/final_write.py), and what it hands: Celery's
own result key, meta and expiry, kombu's unacked keys and the message's delivery tag. Everything else keeps Celery's
own result and ack (tests/e2e/test_final_write.py runs both through a real worker)."""
from __future__ import annotations

import json
import types

import pytest

from tests.support.env import TEST_CARD_KEY
from worker.broker.app import create_app
from worker.broker.celeryconfig import celery_settings
from worker.broker.final_write import final_write_for
from worker.config import Settings
from worker.store.final_write import OUTCOME_PLACEHOLDER

URL = "redis://127.0.0.1:6399/3"  # never connected to: nothing here talks to Redis


def task_with(app, **request):
    base = {"id": "task-1", "is_eager": False, "ignore_result": False, "chain": None, "callbacks": None,
            "errbacks": None, "chord": None, "group": None, "parent_id": None, "children": [],
            "properties": {"delivery_tag": "tag-1"}, "delivery_info": {}}
    base.update(request)
    return types.SimpleNamespace(request=types.SimpleNamespace(**base), app=app, ignore_result=False)


SETTINGS = Settings(redis_url=URL, card_key=TEST_CARD_KEY)
STORE_BROKER_URL = celery_settings(SETTINGS)["broker_url"]


@pytest.fixture(scope="module")
def app():
    return create_app(SETTINGS)


def test_a_plain_delivery_gets_celery_s_result_and_kombu_s_ack_in_the_store_s_call(app):
    final = final_write_for(task_with(app), STORE_BROKER_URL)
    assert final is not None
    assert final.result_key == "celery-task-meta-task-1" and final.delivery_tag == "tag-1"
    assert (final.unacked_key, final.unacked_index_key) == ("unacked", "unacked_index")
    assert final.expires == int(app.backend.expires)
    meta = json.loads(final.meta)
    assert meta["status"] == "SUCCESS" and meta["task_id"] == "task-1" and meta["result"] == OUTCOME_PLACEHOLDER
    assert meta["children"] == [] and meta["traceback"] is None and meta["date_done"]


@pytest.mark.parametrize("request_changes", [
    {"is_eager": True},
    {"ignore_result": True},
    {"chain": [{"task": "payments.void"}]},
    {"callbacks": [{"task": "payments.void"}]},
    {"errbacks": [{"task": "x"}]},
    {"chord": {"task": "x"}},
    {"group": "g-1"},
    {"properties": {}},  # not delivered by kombu's Redis transport
], ids=["eager", "ignore_result", "chain", "link", "link_error", "chord", "group", "no delivery tag"])
def test_anything_after_the_task_or_another_transport_keeps_celery_s_own_path(app, request_changes):
    assert final_write_for(task_with(app, **request_changes), STORE_BROKER_URL) is None


def test_a_store_on_another_redis_than_the_broker_keeps_celery_s_own_path(app):
    assert final_write_for(task_with(app), "redis://127.0.0.1:6399/4") is None


def test_the_settings_read_once_per_app_still_tell_store_urls_apart(app):
    # the app's settings are read once per store URL (worker/broker/final_write.py): a later call with another URL
    # is not answered from the first one's
    assert final_write_for(task_with(app), STORE_BROKER_URL) is not None
    assert final_write_for(task_with(app), "redis://127.0.0.1:6399/5") is None
    assert final_write_for(task_with(app), STORE_BROKER_URL) is not None
