"""The archive of final payment records (SQL, SQLAlchemy Core, schema migrated by Alembic) and the retention
that moves records older than ``PAYMENTS_RETENTION`` from Redis into it (:mod:`worker.archive.retention`)."""
from worker.archive.db import Archive, ArchiveUnavailable, sqlite_url_in

__all__ = ["Archive", "ArchiveUnavailable", "sqlite_url_in"]
