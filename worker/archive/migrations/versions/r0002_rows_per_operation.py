"""Every archived operation is a row of its own: operations keyed by (payment_id, operation, created_ts), and
their history by the same key plus its position. Until now a second record archived under one payment id (an
idempotency key used again once its first record had left Redis) replaced the first one's row and history.

Existing rows keep their values; their history rows get the operation and created_ts of the one operation row
their payment id had. The downgrade refuses when a payment id holds more than one operation: going back would lose
rows, and the archive is the record of every payment.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_KEY = ["payment_id", "operation", "created_ts"]


def upgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.drop_constraint("pk_operations", type_="primary")
        batch.create_primary_key("pk_operations", _KEY)
    with op.batch_alter_table("operation_history") as batch:
        batch.add_column(sa.Column("operation", sa.String(), nullable=False, server_default=""))
        batch.add_column(sa.Column("created_ts", sa.Float(), nullable=False, server_default="0"))
    # Each history row belonged to the single operation row of its payment id (0001's key).
    op.execute("UPDATE operation_history SET "
               "operation = (SELECT o.operation FROM operations o WHERE o.payment_id = operation_history.payment_id), "
               "created_ts = (SELECT o.created_ts FROM operations o WHERE o.payment_id = operation_history.payment_id) "
               "WHERE EXISTS (SELECT 1 FROM operations o WHERE o.payment_id = operation_history.payment_id)")
    with op.batch_alter_table("operation_history") as batch:
        batch.alter_column("operation", server_default=None)
        batch.alter_column("created_ts", server_default=None)
        batch.drop_constraint("pk_operation_history", type_="primary")
        batch.create_primary_key("pk_operation_history", [*_KEY, "seq"])


def downgrade() -> None:
    shared = op.get_bind().execute(sa.text(
        "SELECT payment_id FROM operations GROUP BY payment_id HAVING COUNT(*) > 1 LIMIT 1")).first()
    if shared is not None:
        raise RuntimeError(f"cannot downgrade the archive below 0002: payment id {shared[0]!r} holds more than one "
                           "operation, and revision 0001 keeps one row per payment id (rows would be lost)")
    with op.batch_alter_table("operation_history") as batch:
        batch.drop_constraint("pk_operation_history", type_="primary")
        batch.create_primary_key("pk_operation_history", ["payment_id", "seq"])
        batch.drop_column("created_ts")
        batch.drop_column("operation")
    with op.batch_alter_table("operations") as batch:
        batch.drop_constraint("pk_operations", type_="primary")
        batch.create_primary_key("pk_operations", ["payment_id"])
