"""The Celery/kombu methods we override or replace (worker/broker/patches.py) are still the code we patched: a
kombu or Celery upgrade that changes any of them, or the locked version, fails here and names the patch to look at
again. Every patch is listed in docs/performance.md, and our override is where the table says."""
from __future__ import annotations

import importlib
import importlib.metadata
import re
from pathlib import Path

import pytest

from worker.broker import atomic_fetch, one_trip
from worker.broker.app import PaymentsCelery, ProtectingAMQP
from worker.broker.lean_transport import LeanQoS, pooled_conn_or_acquire
from worker.broker.patches import PATCHES, fingerprint
from worker.broker.result_backend import LeanResults

ROOT = Path(__file__).resolve().parents[2]
PINS = [(patch.target, name, expected) for patch in PATCHES for name, expected in patch.pins]


@pytest.mark.parametrize("target,name,expected", PINS, ids=[p[1] for p in PINS])
def test_the_patched_library_code_is_what_we_patched(target, name, expected):
    assert fingerprint(name) == expected, (
        f"{name} changed (an upgrade?): re-check the patch of {target} (worker/broker/patches.py says where and "
        f"why), then record the new fingerprint")


@pytest.mark.parametrize("package", ["celery", "kombu", "redis"])
def test_the_installed_libraries_are_the_locked_ones(package):
    lock = (ROOT / "requirements" / "runtime.txt").read_text()
    pinned = re.search(rf"^{package}==(\S+)", lock, re.MULTILINE)
    assert pinned, f"{package} is not pinned in requirements/runtime.txt"
    assert importlib.metadata.version(package) == pinned.group(1)


def test_every_patch_is_listed_in_docs_performance():
    docs = (ROOT / "docs" / "performance.md").read_text()
    for patch in PATCHES:
        module, _, method = patch.target.partition(":")
        assert f"{module}.{method}" in docs, f"docs/performance.md does not list {patch.target}"


def _library_attr(qualified: str):
    module, _, path = qualified.partition(":")
    obj = importlib.import_module(module)
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def test_our_overrides_are_where_the_table_says():
    ours = {
        "kombu.transport.redis:QoS.pipe_or_acquire": LeanQoS.__dict__.get("pipe_or_acquire"),
        "kombu.transport.redis:QoS.ack": LeanQoS.__dict__.get("ack"),
        "kombu.transport.redis:Channel.conn_or_acquire": pooled_conn_or_acquire,
        "celery.backends.base:BaseKeyValueStoreBackend._store_result": LeanResults.__dict__.get("_store_result"),
        "celery.backends.redis:RedisBackend._set": LeanResults.__dict__.get("_set"),
        "celery.app.base:Celery._get_backend": PaymentsCelery.__dict__.get("_get_backend"),
        "celery.app.amqp:AMQP._create_task_sender": ProtectingAMQP.__dict__.get("_create_task_sender"),
        "kombu.messaging:_ProducerBatchState._get_session": one_trip.keep_in_batch,  # read, not overridden
        "kombu.transport.redis:Channel._brpop_start": atomic_fetch._brpop_start,
        "kombu.transport.redis:Channel._brpop_read": atomic_fetch._brpop_read,
        "kombu.transport.redis:Channel.basic_consume": atomic_fetch._basic_consume,
    }
    assert set(ours) == {patch.target for patch in PATCHES}
    for target, override in ours.items():
        assert override is not None, target
        assert callable(_library_attr(target)) or isinstance(_library_attr(target), property), target
