"""Alembic's environment for the archive (run by :func:`worker.archive.migrate.upgrade`, or by the ``alembic``
command with ``-x url=...``). The caller may hand over an open connection (``config.attributes["connection"]``)."""
from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from worker.archive.schema import metadata

config = context.config


def _url() -> str:
    return context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url") or ""


def _run(connection: Connection) -> None:
    # SQLite alters tables by copying them ("batch" mode); PostgreSQL alters in place.
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
    else:
        engine = create_engine(_url())
        try:
            with engine.begin() as conn:
                _run(conn)
        finally:
            engine.dispose()
