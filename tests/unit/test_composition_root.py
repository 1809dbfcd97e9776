"""The composition root (worker/broker/app.py): importing builds nothing; create_app registers the tasks on the app
it makes (and on no other) and connects the signal handlers once per process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from celery import Celery, signals

from worker.broker.app import create_app
from worker.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PAYMENT_TASK_NAMES = {"payments.sale", "payments.auth", "payments.capture", "payments.refund", "payments.void",
                      "payments.sweep", "payments.reconcile_report"}


def test_importing_every_module_of_ours_builds_no_app_and_connects_no_signal():
    code = """
import importlib, pkgutil, celery, worker
from celery import signals
before = {s: len(s.receivers) for s in (signals.after_task_publish, signals.worker_init, signals.after_setup_logger)}
names = ["tasks", "celeryconfig", "worker.tasks"] + [m.name for m in pkgutil.walk_packages(worker.__path__, "worker.")
                                                    if ".migrations" not in m.name and not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
from worker.broker import app as root
from tasks import sale  # a name, not a task yet
assert root._build_default_app.cache_info().currsize == 0, "an app was built at import"
assert getattr(celery.current_app, "payments_services", None) is None, "a payments app is current"
assert {s: len(s.receivers) for s in before} == before, "a signal handler was connected at import"
assert sale.name == "payments.sale" and root._build_default_app.cache_info().currsize == 1  # built on first use
print("ok", len(names))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]


def test_create_app_registers_the_payment_tasks_on_its_app_only():
    app = create_app(Settings())
    assert set(app.tasks) >= PAYMENT_TASK_NAMES
    assert app.tasks["payments.sale"].app is app
    other = Celery("someone-else", set_as_current=False)
    assert not PAYMENT_TASK_NAMES & set(other.tasks)  # not shared tasks: another program's app gets none


def test_the_signal_handlers_are_connected_once_whatever_the_number_of_apps():
    create_app(Settings())
    counts = {s: len(s.receivers) for s in (signals.after_task_publish, signals.worker_init, signals.beat_init)}
    create_app(Settings())
    create_app(Settings())
    assert {s: len(s.receivers) for s in counts} == counts
    assert any("_keep_in_outbox" in repr(r) for r in signals.after_task_publish.receivers)


def test_the_settings_configure_the_app():
    app = create_app(Settings(redis_url="redis://127.0.0.1:6399/7", result_expires=120))
    assert app.conf.broker_url == "redis://127.0.0.1:6399/7" and app.conf.result_expires == 120
    assert app.conf.task_acks_late is True
