"""The archive's schema, migrated with Alembic from the migrations shipped inside this package.

``payments archive --migrate`` runs :func:`upgrade`; an :class:`worker.archive.Archive` runs it on first use
when the database is behind. A developer adds one (from the source tree: the template ``script.py.mako`` is not
installed) with ``python -c "from alembic import command; from worker.archive.migrate import alembic_config;
command.revision(alembic_config(), message='what changes', rev_id='0002')"``, names the file ``r0002_...py``
(a module name mypy accepts) and writes its ``upgrade``/``downgrade``.
"""
from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

# Two processes migrating one PostgreSQL database at once (a sweep and `payments archive`) take turns.
_PG_LOCK_KEY = 0x7061796D  # "paym"


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("worker.archive") / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection) -> str | None:
    """Bring the schema to the newest revision (nothing when it is there already); the revision now."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    if current_revision(connection) != head_revision():
        command.upgrade(alembic_config(connection), "head")
    return current_revision(connection)
