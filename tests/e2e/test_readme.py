"""Every Python block of the README and of docs/producer.md (the producer API in full) runs as written: each in a
producer process of its own (a fresh interpreter in a web app's directory that has its own tasks.py and
celeryconfig.py, with only what the README says a producer needs: the workers' REDIS_URL and PAYMENTS_CARD_KEY),
against a real worker and the sandbox (the session's, tests/e2e/conftest.py). The blocks assert their own outcomes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import E2E_REDIS_URL, TEST_CARD_KEY

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), flags=re.M | re.S)


README_BLOCKS = python_blocks(README)
#: each block once: the README's snippet is also the first of docs/producer.md
BLOCKS = list(dict.fromkeys(README_BLOCKS + python_blocks(ROOT / "docs" / "producer.md")))


def producer_env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    return {**keep, "REDIS_URL": E2E_REDIS_URL, "PAYMENTS_CARD_KEY": TEST_CARD_KEY, "BLUEPAY_MODE": "TEST"}


def test_the_readme_has_its_producer_blocks():
    assert len(BLOCKS) >= 3
    assert any("from tasks import sale" in b or "from worker.tasks import sale" in b for b in README_BLOCKS)


def test_the_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for command in ("./dev demo", "./dev test"):
        assert command in text
    for link in re.findall(r"\]\((docs/[^)#]+)", text):  # every doc it links to exists
        assert (ROOT / link).is_file(), link


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_python_block_compiles(index):
    compile(BLOCKS[index], f"README.md python block {index + 1}", "exec")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_python_block_runs_in_a_producer_against_a_worker(celery_worker, tmp_path, index):
    for name in ("tasks", "celeryconfig"):  # a web app's own modules (Celery's default layout), first on the path
        (tmp_path / f"{name}.py").write_text(f"raise RuntimeError('the application\'s own {name}.py')\n")
    done = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, env=producer_env(),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"block {index + 1}:\n{BLOCKS[index]}\n--- stderr:\n{done.stderr[-3000:]}"
