"""The archive of final payment records: SQL through SQLAlchemy Core (SQLite file by default, PostgreSQL in
production), written by the sweep's retention step and read by ``payments show`` / ``payments list``.

Every operation is a row of its own, keyed by (payment id, operation, created_ts): a key used again for a later
operation adds a row, it never replaces the earlier one (the archive is the record of every payment). Writes are
idempotent: a batch replaces whatever the archive held for the very records it holds (same key) or audit entry ids,
in one transaction, so a batch copied again after a crash between copy and delete leaves the same rows. Any failure to
reach or write the database is raised as :class:`ArchiveUnavailable`: the caller deletes nothing from Redis.
"""
from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, delete, event, func, insert, select, tuple_
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from worker.archive import migrate
from worker.archive.schema import audit, history, operations
from worker.config import Settings
from worker.merchants import DEFAULT as DEFAULT_MERCHANT

__all__ = ["Archive", "ArchiveUnavailable", "sqlite_url_in"]

# Statements stay below SQLite's bound-parameter limit (32,766) whatever the batch size.
_CHUNK = 500


class ArchiveUnavailable(RuntimeError):
    """The archive cannot be reached, migrated or written (the message says which, and where)."""


def sqlite_url_in(data_dir: str) -> str:
    """The default archive: an SQLite file in the data directory."""
    return Settings(data_dir=data_dir).archive_url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL: `payments show` reads while the sweep writes; synchronous FULL: a commit is on disk before Redis
    # forgets the records it holds (the one promise the archive makes).
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def _num(value: Any) -> float:
    """A record's epoch time as a number (0.0 when it is not one: a malformed record is archived, not a crash)."""
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def _text(value: Any) -> str:
    """A text column's value: PostgreSQL refuses NUL in text, so it is replaced (the record's JSON keeps it)."""
    return str(value).replace("\x00", "\ufffd")


def _typed(record: dict[str, Any]) -> dict[str, Any]:
    try:
        record["attempts"] = int(record.get("attempts") or 0)
    except (TypeError, ValueError):
        record["attempts"] = 0
    return record


class Archive:
    def __init__(self, url: str, *, migrate_on_use: bool = True) -> None:
        self.url = url
        self.migrate_on_use = migrate_on_use
        self._engine: Engine | None = None
        self._ready = False

    def __repr__(self) -> str:
        return f"Archive({self.where!r})"

    @property
    def where(self) -> str:
        """The URL without its password, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    # ---- connection ---------------------------------------------------------------------------
    def _make_engine(self) -> Engine:
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite":
            if url.database and url.database != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        connect_args = {"connect_timeout": 5} if url.get_backend_name() == "postgresql" else {}
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)

    @contextmanager
    def _begin(self, doing: str) -> Iterator[Connection]:
        """One transaction; every failure of the database (or of creating its directory) as ArchiveUnavailable."""
        try:
            if self._engine is None:
                self._engine = self._make_engine()
            with self._engine.begin() as conn:
                if not self._ready and self.migrate_on_use:
                    migrate.upgrade(conn)
                self._ready = True
                yield conn
        except (SQLAlchemyError, OSError) as exc:
            raise ArchiveUnavailable(f"archive {self.where}: cannot {doing}: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc

    def migrate(self) -> str | None:
        """Create or upgrade the schema now; the revision it is at."""
        with self._begin("migrate the schema") as conn:
            return migrate.upgrade(conn)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
            self._ready = False

    # ---- writes -------------------------------------------------------------------------------
    def put(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Store records (each with its ``history``), replacing what the archive held for the same records (payment
        id, operation and created_ts: an earlier operation under the same key keeps its row); committed (durably)
        when this returns. Returns how many."""
        if not records:
            return 0
        now = time.time()
        rows, hist_rows = [], []
        for rec in records:
            fields = {k: v for k, v in rec.items() if k != "history"}
            key = {"payment_id": _text(fields["payment_id"]), "operation": _text(fields.get("operation") or ""),
                   "created_ts": _num(fields.get("created_ts"))}
            optional = {name: _text(fields[name]) if fields.get(name) else None
                        for name in ("trans_id", "order_id", "invoice_id", "amount")}
            rows.append({
                **key, "status": _text(fields.get("status") or ""), **optional,
                "updated_ts": _num(fields.get("updated_ts")),
                "archived_ts": now, "record": json.dumps(fields, separators=(",", ":"), sort_keys=True),
            })
            hist_rows += [{**key, "seq": i, "at": _text(h.get("at", "")),
                           "status": _text(h.get("status", "")), "note": _text(h.get("note", ""))}
                          for i, h in enumerate(rec.get("history") or [])]
        with self._begin(f"write {len(rows)} records") as conn:
            for i in range(0, len(rows), _CHUNK):
                keys = [(r["payment_id"], r["operation"], r["created_ts"]) for r in rows[i:i + _CHUNK]]
                conn.execute(delete(history).where(
                    tuple_(history.c.payment_id, history.c.operation, history.c.created_ts).in_(keys)))
                conn.execute(delete(operations).where(
                    tuple_(operations.c.payment_id, operations.c.operation, operations.c.created_ts).in_(keys)))
            conn.execute(insert(operations), rows)
            if hist_rows:
                conn.execute(insert(history), hist_rows)
        return len(rows)

    def put_audit(self, entries: Sequence[Mapping[str, Any]]) -> int:
        """Store audit stream entries (each with its stream ``id``), replacing any already held."""
        if not entries:
            return 0
        rows = [{"stream_id": str(e["id"]), "at_ms": int(str(e["id"]).partition("-")[0]),
                 "payment_id": _text(e.get("payment_id", "")), "operation": _text(e.get("operation", "")),
                 "from_status": _text(e.get("from", "")), "to_status": _text(e.get("to", "")),
                 "note": _text(e.get("note", "")), "at": _text(e.get("at", "")),
                 "trans_id": _text(e["trans_id"]) if e.get("trans_id") else None}
                for e in entries]
        with self._begin(f"write {len(rows)} audit entries") as conn:
            for i in range(0, len(rows), _CHUNK):
                conn.execute(delete(audit).where(audit.c.stream_id.in_([r["stream_id"] for r in rows[i:i + _CHUNK]])))
            conn.execute(insert(audit), rows)
        return len(rows)

    # ---- reads --------------------------------------------------------------------------------
    def _absent(self) -> bool:
        """An SQLite archive whose file does not exist holds nothing: reading it creates nothing."""
        url = make_url(self.url)
        return (url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
                and not os.path.exists(str(url.database)))

    _ROW = (operations.c.record, operations.c.payment_id, operations.c.operation, operations.c.created_ts)

    def _records(self, conn: Connection, rows: Sequence[Any], *, with_history: bool) -> list[dict[str, Any]]:
        """Rows of :attr:`_ROW` as records (each with its own history, by the row's whole key, when asked)."""
        out = [_typed(json.loads(r.record)) for r in rows]
        if with_history and out:
            keys = [(r.payment_id, r.operation, r.created_ts) for r in rows]
            by_key: dict[tuple[str, str, float], list[dict[str, str]]] = {key: [] for key in keys}
            q = (select(history.c.payment_id, history.c.operation, history.c.created_ts, history.c.at,
                        history.c.status, history.c.note)
                 .where(history.c.payment_id.in_({key[0] for key in keys}))
                 .order_by(history.c.payment_id, history.c.operation, history.c.created_ts, history.c.seq))
            for h in conn.execute(q):
                entries = by_key.get((h.payment_id, h.operation, h.created_ts))
                if entries is not None:
                    entries.append({"at": h.at, "status": h.status, "note": h.note})
            for rec, key in zip(out, keys, strict=True):
                rec["history"] = by_key[key]
        return out

    def get(self, payment_id: str) -> dict[str, Any] | None:
        """The newest record archived under ``payment_id`` as the store's ``get`` returned it (history included), or
        None. :meth:`operations_of` gives every one."""
        found = self.operations_of(payment_id)
        return found[-1] if found else None

    def operations_of(self, payment_id: str) -> list[dict[str, Any]]:
        """Every record archived under ``payment_id`` (one per operation run under that key), oldest first, each
        with its history."""
        if self._absent():
            return []
        with self._begin("read") as conn:
            rows = conn.execute(select(*self._ROW).where(operations.c.payment_id == payment_id)
                                .order_by(operations.c.created_ts, operations.c.operation)).all()
            return self._records(conn, rows, with_history=True)

    def find_by_trans_id(self, trans_id: str) -> dict[str, Any] | None:
        if not trans_id:
            return None
        if self._absent():
            return None
        with self._begin("read") as conn:
            rows = conn.execute(select(*self._ROW).where(operations.c.trans_id == trans_id)
                                .order_by(operations.c.created_ts).limit(1)).all()
            found = self._records(conn, rows, with_history=True)
        return found[0] if found else None

    def list(self, *, status: str | None = None, operation: str | None = None, limit: int = 100,
             order_id: str | None = None, invoice_id: str | None = None, merchant: str | None = None
             ) -> list[dict[str, Any]]:
        """Records newest first (by creation time), optionally filtered; without history, as the store's."""
        if limit <= 0:
            return []
        if self._absent():
            return []
        q = select(*self._ROW).order_by(operations.c.created_ts.desc(), operations.c.payment_id.desc(),
                                        operations.c.operation.desc())
        for column, value in ((operations.c.status, status), (operations.c.operation, operation),
                              (operations.c.order_id, order_id), (operations.c.invoice_id, invoice_id)):
            if value:
                q = q.where(column == value)
        with self._begin("read") as conn:
            if merchant:
                return self._of_merchant(conn, q, merchant, limit)
            return self._records(conn, conn.execute(q.limit(limit)).all(), with_history=False)

    def _of_merchant(self, conn: Connection, q: Any, merchant: str, limit: int) -> builtins.list[dict[str, Any]]:
        """The merchant is in the record (a ``default`` one names none), not a column: read pages, keep its own."""
        out: builtins.list[dict[str, Any]] = []
        page, offset = max(limit * 4, 200), 0
        while len(out) < limit:
            rows = conn.execute(q.limit(page).offset(offset)).all()
            out.extend(r for r in self._records(conn, rows, with_history=False)
                       if (r.get("merchant") or DEFAULT_MERCHANT) == merchant)
            if len(rows) < page:
                break
            offset += page
        return out[:limit]

    def changed_since(self, since: float, *, limit: int = 500, offset: int = 0) -> builtins.list[dict[str, Any]]:
        """Records last changed at or after ``since`` (epoch seconds), newest created first (the newest operation
        under a key before any earlier one), without history; a page of ``limit`` from ``offset``."""
        if limit <= 0 or self._absent():
            return []
        q = (select(*self._ROW).where(operations.c.updated_ts >= since)
             .order_by(operations.c.created_ts.desc(), operations.c.payment_id, operations.c.operation)
             .limit(limit).offset(offset))
        with self._begin("read") as conn:
            return self._records(conn, conn.execute(q).all(), with_history=False)

    def audit(self, *, payment_id: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Archived audit entries oldest first, as the store's ``audit`` shows them."""
        if self._absent():
            return []
        q = select(audit).order_by(audit.c.at_ms, audit.c.stream_id).limit(limit)
        if payment_id:
            q = q.where(audit.c.payment_id == payment_id)
        with self._begin("read") as conn:
            return [{"id": r.stream_id, "payment_id": r.payment_id, "operation": r.operation,
                     "from": r.from_status, "to": r.to_status, "note": r.note, "at": r.at,
                     "trans_id": r.trans_id or ""} for r in conn.execute(q)]

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        with self._begin("read") as conn:
            return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                    for t in (operations, history, audit)}
