"""Archive databases for tests: an SQLite file in a temporary directory, or a private schema in the PostgreSQL that
answers at TEST_ARCHIVE_PG_URL (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``; skipped when none
answers). The schema is dropped afterwards."""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

PG_URL = os.environ.get("TEST_ARCHIVE_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
KINDS = ("sqlite", "postgresql")


@contextlib.contextmanager
def archive_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/archive.sqlite3"
        return
    engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    schema = f"test_archive_{uuid.uuid4().hex[:12]}"
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        engine.dispose()
        pytest.skip(f"no PostgreSQL at {PG_URL}: {str(exc).splitlines()[0]}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()
