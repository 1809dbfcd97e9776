"""The archive's tables (SQLAlchemy Core): one per concern, indexed the way operators look payments up.

The Alembic migrations (``migrations/versions``) create and change these tables; this module is what the code
reads and writes through, and what ``alembic revision --autogenerate`` compares against.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
})

#: One row per archived payment operation: the record as Redis held it (``record``: every field, JSON) and the
#: columns it is looked up by. A row is one record's life, (payment id, operation, created_ts): an idempotency key
#: used again for a later operation (after its key index entry expired, or for another operation kept by hand) is a
#: row of its own, never a replacement of the earlier one (migration 0002).
operations = Table(
    "operations", metadata,
    Column("payment_id", String(), primary_key=True),
    Column("operation", String(), primary_key=True),
    Column("status", String(), nullable=False),
    Column("trans_id", String(), nullable=True),
    Column("order_id", String(), nullable=True),
    Column("invoice_id", String(), nullable=True),
    Column("amount", String(), nullable=True),
    Column("created_ts", Float, primary_key=True, autoincrement=False),
    Column("updated_ts", Float, nullable=False),
    Column("record", Text, nullable=False),
    Column("archived_ts", Float, nullable=False),
    Index(None, "trans_id"),
    Index(None, "order_id"),
    Index(None, "invoice_id"),
    Index(None, "created_ts"),
    Index(None, "updated_ts"),
)

#: A record's state history, oldest first (``seq`` from 0), as its ``history`` field (``hist:<payment_id>`` before
#: 2026-12-08) held it; a row of
#: ``operations`` by its whole key.
history = Table(
    "operation_history", metadata,
    Column("payment_id", String(), primary_key=True),
    Column("operation", String(), primary_key=True),
    Column("created_ts", Float, primary_key=True, autoincrement=False),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", String(), nullable=False),
    Column("status", String(), nullable=False),
    Column("note", Text, nullable=False),
)

#: The audit stream's entries, by stream id (``<ms>-<seq>``; ``at_ms`` its time part, for ranges).
audit = Table(
    "audit_entries", metadata,
    Column("stream_id", String(), primary_key=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("payment_id", String(), nullable=False),
    Column("operation", String(), nullable=False),
    Column("from_status", String(), nullable=False),
    Column("to_status", String(), nullable=False),
    Column("note", Text, nullable=False),
    Column("at", String(), nullable=False),
    Column("trans_id", String(), nullable=True),
    Index(None, "at_ms"),
    Index(None, "payment_id"),
    Index(None, "trans_id"),
)
