"""initial schema

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
        "aaa_audit_events",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.Column("actor_type", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor_name", sa.String(length=320), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("target_label", sa.String(length=320), nullable=True),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("session_hash", sa.String(length=64), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("aaa_audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_aaa_audit_action_seq", ["action", "seq"], unique=False)
        batch_op.create_index("ix_aaa_audit_actor_seq", ["actor_id", "seq"], unique=False)
        batch_op.create_index("ix_aaa_audit_outcome_seq", ["outcome", "seq"], unique=False)
        batch_op.create_index("ix_aaa_audit_ts", ["ts"], unique=False)
        batch_op.create_index(
            "ix_aaa_audit_target_seq", ["target_type", "target_id", "seq"], unique=False
        )

    op.create_table(
        "aaa_audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "aaa_authz_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "aaa_permissions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.String(length=255), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "aaa_roles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=255), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "aaa_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("username_key", sa.String(length=64), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("email_key", sa.String(length=320), nullable=True),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(), nullable=True),
        sa.Column("last_login_at", sa.DateTime(), nullable=True),
        sa.Column("last_login_ip", sa.String(length=45), nullable=True),
        sa.Column("login_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email_key"),
        sa.UniqueConstraint("username_key"),
    )
    op.create_table(
        "aaa_role_permissions",
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.Column("permission_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["permission_id"], ["aaa_permissions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["role_id"], ["aaa_roles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("role_id", "permission_id"),
    )
    with op.batch_alter_table("aaa_role_permissions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_aaa_role_permissions_permission_id"), ["permission_id"], unique=False
        )

    op.create_table(
        "aaa_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_reason", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["aaa_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("aaa_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_aaa_sessions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "aaa_user_roles",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["role_id"], ["aaa_roles.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["aaa_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "role_id"),
    )
    with op.batch_alter_table("aaa_user_roles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_aaa_user_roles_role_id"), ["role_id"], unique=False)

    # The one-row tables: the authorization version and the head of the audit chain.
    op.execute("INSERT INTO aaa_authz_state (id, version) VALUES (1, 1)")
    op.execute("INSERT INTO aaa_audit_head (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "')")


def downgrade() -> None:
    with op.batch_alter_table("aaa_user_roles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_user_roles_role_id"))

    op.drop_table("aaa_user_roles")
    with op.batch_alter_table("aaa_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_sessions_user_id"))

    op.drop_table("aaa_sessions")
    with op.batch_alter_table("aaa_role_permissions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_role_permissions_permission_id"))

    op.drop_table("aaa_role_permissions")
    op.drop_table("aaa_users")
    op.drop_table("aaa_roles")
    op.drop_table("aaa_permissions")
    op.drop_table("aaa_authz_state")
    op.drop_table("aaa_audit_head")
    with op.batch_alter_table("aaa_audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_aaa_audit_target_seq")
        batch_op.drop_index("ix_aaa_audit_ts")
        batch_op.drop_index("ix_aaa_audit_outcome_seq")
        batch_op.drop_index("ix_aaa_audit_actor_seq")
        batch_op.drop_index("ix_aaa_audit_action_seq")

    op.drop_table("aaa_audit_events")
