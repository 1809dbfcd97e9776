"""The archive's SQL side against SQLite and PostgreSQL (each test runs on both; PostgreSQL is skipped when none
answers): the schema comes from the Alembic migrations shipped in the package, writes are idempotent, reads give
back what the store gave."""
from __future__ import annotations

import json

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from tests.support.archive_db import KINDS, archive_url
from worker.archive import Archive, ArchiveUnavailable
from worker.archive.migrate import alembic_config, head_revision
from worker.archive.schema import metadata


@pytest.fixture(params=KINDS)
def url(request, tmp_path):
    with archive_url(request.param, tmp_path) as made:
        yield made


def record(pid, *, status="APPROVED", trans_id="", created=1_750_000_000.0, **fields):
    rec = {"payment_id": pid, "operation": "sale", "status": status, "trans_id": trans_id, "amount": "3.00",
           "order_id": pid, "attempts": 1, "created_ts": f"{created:.3f}", "updated_ts": f"{created + 1:.3f}",
           "created_at": "2025-06-15T15:06:40.000Z", "updated_at": "2025-06-15T15:06:41.000Z", **fields}
    rec["history"] = [{"at": rec["created_at"], "status": "PENDING", "note": "claimed by w1"},
                      {"at": rec["updated_at"], "status": status, "note": "gateway said so"}]
    return rec


def test_the_first_use_creates_the_schema_from_the_migrations_with_its_indexes(url):
    archive = Archive(url)
    archive.put([record("p0")])  # first use: migrated
    engine = create_engine(url)
    try:
        found = inspect(engine)
        assert {"operations", "operation_history", "audit_entries", "alembic_version"} <= set(found.get_table_names())
        indexed = {tuple(ix["column_names"]) for ix in found.get_indexes("operations")}
        assert {("trans_id",), ("order_id",), ("invoice_id",), ("created_ts",), ("updated_ts",)} <= indexed
        assert {("at_ms",), ("payment_id",), ("trans_id",)} <= {tuple(ix["column_names"])
                                                               for ix in found.get_indexes("audit_entries")}
    finally:
        engine.dispose()
    assert archive.migrate() == head_revision() == "0002"
    archive.close()


def test_the_migrations_give_exactly_the_tables_the_code_reads_and_writes(url):
    archive = Archive(url)
    archive.migrate()
    archive.close()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        engine.dispose()


def test_migrations_go_down_and_up_again(url):
    archive = Archive(url)
    archive.migrate()
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "base")
        assert "operations" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    archive.close()
    assert Archive(url).migrate() == "0002"


def test_every_operation_under_one_key_keeps_its_own_row_and_history(url):
    """A key used for a sale, then (once its record had left Redis) for a void, then for a refund: three rows, each
    with its own history; copying any of them again replaces only that one."""
    archive = Archive(url)
    sale = record("k1", trans_id="100000000001")
    void = record("k1", trans_id="100000000002", created=1_750_100_000.0, operation="void", target="100000000001",
                  message="Approved Void")
    refund = record("k1", trans_id="100000000003", created=1_750_200_000.0, operation="refund",
                    target="100000000001", message="Approved Return")
    for rec in (sale, void, refund):
        archive.put([rec])
    archive.put([void])  # a batch copied again (crash between copy and delete)
    assert archive.counts() == {"operations": 3, "operation_history": 6, "audit_entries": 0}
    assert archive.operations_of("k1") == [sale, void, refund]
    assert archive.get("k1") == refund  # the newest
    assert archive.find_by_trans_id("100000000001") == sale and archive.find_by_trans_id("100000000002") == void
    assert [r["operation"] for r in archive.list()] == ["refund", "void", "sale"]
    archive.close()


def test_the_migration_to_rows_per_operation_keeps_every_row_of_a_0001_archive(url):
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0001")
            conn.exec_driver_sql(
                "INSERT INTO operations (payment_id, operation, status, amount, created_ts, updated_ts, record, "
                "archived_ts) VALUES ('p1', 'sale', 'APPROVED', '3.00', 1750000000.5, 1750000001.5, "
                "'{\"payment_id\":\"p1\",\"operation\":\"sale\",\"status\":\"APPROVED\"}', 1750000002.0)")
            conn.exec_driver_sql("INSERT INTO operation_history (payment_id, seq, at, status, note) VALUES "
                                 "('p1', 0, 'a', 'PENDING', 'claimed'), ('p1', 1, 'b', 'APPROVED', 'ok')")
    finally:
        engine.dispose()
    archive = Archive(url)
    assert archive.migrate() == "0002"
    assert archive.get("p1") == {"payment_id": "p1", "operation": "sale", "status": "APPROVED", "attempts": 0,
                                 "history": [{"at": "a", "status": "PENDING", "note": "claimed"},
                                             {"at": "b", "status": "APPROVED", "note": "ok"}]}
    later = record("p1", created=1_750_300_000.0, operation="void")
    archive.put([later])
    assert [r["operation"] for r in archive.operations_of("p1")] == ["sale", "void"]
    # going back would lose a row: refused, nothing changed
    engine = create_engine(url)
    try:
        with engine.connect() as conn, pytest.raises(RuntimeError, match="more than one operation"):
            command.downgrade(alembic_config(conn), "0001")
    finally:
        engine.dispose()
    assert archive.counts()["operations"] == 2
    archive.close()


def test_writes_replace_what_was_held_so_a_batch_copied_twice_leaves_the_same_rows(url):
    archive = Archive(url)
    batch = [record("p1", trans_id="100000000001", invoice_id="ORD-1"), record("p2", created=1_750_000_100.0)]
    assert archive.put(batch) == 2
    assert archive.put(batch) == 2
    assert archive.counts() == {"operations": 2, "operation_history": 4, "audit_entries": 0}
    assert archive.get("p1") == batch[0] and archive.get("p2") == batch[1]
    changed = record("p1", status="VOIDED", trans_id="100000000001", voided_by="v1")
    changed["history"].append({"at": "2025-06-15T15:07:00.000Z", "status": "VOIDED", "note": "voided by v1"})
    archive.put([changed])
    assert archive.get("p1") == changed and archive.counts()["operation_history"] == 5
    assert archive.find_by_trans_id("100000000001") == changed
    assert [r["payment_id"] for r in archive.list()] == ["p2", "p1"]  # newest first, without history
    assert "history" not in archive.list()[0]
    assert [r["payment_id"] for r in archive.list(status="VOIDED")] == ["p1"]
    assert archive.list(status="DECLINED") == [] and archive.list(limit=1)[0]["payment_id"] == "p2"
    archive.close()


def test_a_merchant_accounts_archived_records_are_listed_by_the_name_they_carry(url):
    archive = Archive(url)
    # 450 records (over two of the filter's pages of 200), every 50th another account's; default's name none
    archive.put([record(f"r{i:03}", created=1_750_000_000.0 + i, **({"merchant": "shop2"} if i % 50 == 7 else {}))
                 for i in range(450)])
    assert [r["payment_id"] for r in archive.list(merchant="shop2")] == [f"r{i:03}" for i in (407, 357, 307, 257,
                                                                                                207, 157, 107, 57, 7)]
    assert [r["payment_id"] for r in archive.list(merchant="shop2", limit=2)] == ["r407", "r357"]
    assert [r["payment_id"] for r in archive.list(merchant="default", limit=3)] == ["r449", "r448", "r447"]
    assert archive.list(merchant="shop2", status="DECLINED") == [] and archive.list(merchant="shop3") == []
    archive.close()


def test_audit_entries_are_kept_by_stream_id_idempotently(url):
    archive = Archive(url)
    entries = [{"id": "1750000000000-0", "payment_id": "p1", "operation": "sale", "from": "", "to": "PENDING",
                "note": "claimed by w1", "at": "2025-06-15T15:06:40.000Z", "trans_id": ""},
               {"id": "1750000000000-1", "payment_id": "p1", "operation": "sale", "from": "PENDING",
                "to": "APPROVED", "note": "ok", "at": "2025-06-15T15:06:40.000Z", "trans_id": "100000000001"}]
    archive.put_audit(entries)
    archive.put_audit(entries[1:])
    assert archive.audit() == entries and archive.audit(payment_id="nobody") == []
    archive.close()


def test_the_whole_record_is_kept_as_json_whatever_fields_it_has(url):
    archive = Archive(url)
    rec = record("p1", needs_human="", refund_needed="1", note_with_unicode="Zürich ✓", target="x" * 300)
    archive.put([rec])
    assert archive.get("p1") == rec
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT record FROM operations").scalar_one()
        assert json.loads(stored)["note_with_unicode"] == "Zürich ✓" and "history" not in json.loads(stored)
    finally:
        engine.dispose()
    archive.close()


def test_a_malformed_record_is_archived_not_a_crash(url):
    """Bad data must not stop retention for good: a time that is not a number, a NUL PostgreSQL refuses in text."""
    archive = Archive(url)
    rec = record("p1", trans_id="1000\x0000001", message="bad\x00byte")
    rec["created_ts"] = "not-a-time"
    rec["history"][1]["note"] = "gateway said \x00"
    archive.put([rec])
    got = archive.get("p1")
    assert got is not None and got["message"] == "bad\x00byte" and got["created_ts"] == "not-a-time"
    assert got["history"][1]["note"] == "gateway said \ufffd"
    archive.close()


def test_an_archive_that_cannot_be_reached_raises_one_clear_error_and_reading_a_missing_file_creates_nothing(
        tmp_path):
    down = Archive("postgresql+psycopg://postgres:secret@127.0.0.1:1/test")
    with pytest.raises(ArchiveUnavailable) as exc:
        down.put([record("p1")])
    assert "cannot write 1 records" in str(exc.value) and "secret" not in str(exc.value)
    missing = Archive(f"sqlite:///{tmp_path}/nowhere/archive.sqlite3")
    assert missing.get("p1") is None and missing.list() == [] and not (tmp_path / "nowhere").exists()
