"""Celery's loader imports the top-level ``celeryconfig`` while gevent is still monkey-patching (``celery worker -P
gevent``): nothing it imports may load kombu's Redis transport, whose event loop keeps the ``select()`` it found at
import. With the unpatched one, a gevent worker's loop blocks every greenlet: no ping answered (the bench could not
start a gevent worker), no task run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_environment_settings_module_loads_no_kombu_transport():
    code = ("import sys, celeryconfig; "
            "print(sorted(m for m in ('kombu.utils.eventio', 'kombu.transport.redis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
