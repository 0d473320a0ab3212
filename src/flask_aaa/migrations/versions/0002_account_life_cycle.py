"""Account life cycle

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Email confirmation, password reset and invitation tokens, remember-me series, account
lockout counters, two-factor secrets and recovery codes, re-authentication and session
rotation markers.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aaa_recovery_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["aaa_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("aaa_recovery_codes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_aaa_recovery_codes_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "aaa_remember",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("series", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["aaa_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series"),
    )
    with op.batch_alter_table("aaa_remember", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_aaa_remember_user_id"), ["user_id"], unique=False)

    op.create_table(
        "aaa_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("binding", sa.String(length=64), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["aaa_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("aaa_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_aaa_tokens_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("aaa_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reauthenticated_at", sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("rotate_pending", sa.Boolean(), server_default=sa.false(), nullable=False)
        )

    with op.batch_alter_table("aaa_users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_confirmed_at", sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("failed_logins", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("lockouts", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("locked_until", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("totp_secret", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("mfa_enabled_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("aaa_users", schema=None) as batch_op:
        batch_op.drop_column("mfa_enabled_at")
        batch_op.drop_column("totp_last_step")
        batch_op.drop_column("totp_secret")
        batch_op.drop_column("locked_until")
        batch_op.drop_column("lockouts")
        batch_op.drop_column("failed_logins")
        batch_op.drop_column("email_confirmed_at")

    with op.batch_alter_table("aaa_sessions", schema=None) as batch_op:
        batch_op.drop_column("rotate_pending")
        batch_op.drop_column("reauthenticated_at")

    with op.batch_alter_table("aaa_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_tokens_user_id"))

    op.drop_table("aaa_tokens")
    with op.batch_alter_table("aaa_remember", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_remember_user_id"))

    op.drop_table("aaa_remember")
    with op.batch_alter_table("aaa_recovery_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_recovery_codes_user_id"))

    op.drop_table("aaa_recovery_codes")
