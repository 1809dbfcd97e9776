"""The archive's first tables: operations, their state history, the audit stream's entries.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operations",
        sa.Column("payment_id", sa.String(), nullable=False),
        sa.Column("operation", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("trans_id", sa.String(), nullable=True),
        sa.Column("order_id", sa.String(), nullable=True),
        sa.Column("invoice_id", sa.String(), nullable=True),
        sa.Column("amount", sa.String(), nullable=True),
        sa.Column("created_ts", sa.Float(), nullable=False),
        sa.Column("updated_ts", sa.Float(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("archived_ts", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("payment_id", name="pk_operations"),
    )
    for column in ("trans_id", "order_id", "invoice_id", "created_ts", "updated_ts"):
        op.create_index(f"ix_operations_{column}", "operations", [column])
    op.create_table(
        "operation_history",
        sa.Column("payment_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("payment_id", "seq", name="pk_operation_history"),
    )
    op.create_table(
        "audit_entries",
        sa.Column("stream_id", sa.String(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("payment_id", sa.String(), nullable=False),
        sa.Column("operation", sa.String(), nullable=False),
        sa.Column("from_status", sa.String(), nullable=False),
        sa.Column("to_status", sa.String(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("at", sa.String(), nullable=False),
        sa.Column("trans_id", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("stream_id", name="pk_audit_entries"),
    )
    for column in ("at_ms", "payment_id", "trans_id"):
        op.create_index(f"ix_audit_entries_{column}", "audit_entries", [column])


def downgrade() -> None:
    op.drop_table("audit_entries")
    op.drop_table("operation_history")
    op.drop_table("operations")
