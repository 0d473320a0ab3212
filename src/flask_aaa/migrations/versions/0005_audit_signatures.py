"""Signed audit trail: head signature, checkpoints and anchors, IP index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

The head record gets an HMAC (and the id of the key that made it); signed checkpoints and
retention anchors get a table of their own; events get an index for the console's IP filter.
Existing rows are not touched: the head is signed on the next append (or by
``flask aaa audit checkpoint``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("aaa_audit_head", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mac", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("key_id", sa.String(length=16), nullable=True))

    op.create_table(
        "aaa_audit_checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("aaa_audit_checkpoints", schema=None) as batch_op:
        batch_op.create_index("ix_aaa_audit_checkpoints_seq", ["seq"], unique=False)

    with op.batch_alter_table("aaa_audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_aaa_audit_ip_seq", ["ip", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("aaa_audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_aaa_audit_ip_seq")

    with op.batch_alter_table("aaa_audit_checkpoints", schema=None) as batch_op:
        batch_op.drop_index("ix_aaa_audit_checkpoints_seq")
    op.drop_table("aaa_audit_checkpoints")

    with op.batch_alter_table("aaa_audit_head", schema=None) as batch_op:
        batch_op.drop_column("key_id")
        batch_op.drop_column("mac")
