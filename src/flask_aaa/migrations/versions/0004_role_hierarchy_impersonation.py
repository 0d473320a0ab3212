"""Role hierarchy, direct permissions, impersonation

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

Roles that inherit from other roles, permissions granted to users directly, and the
impersonation marker of a login session (who acts as its user, and why).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aaa_role_parents",
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["parent_id"], ["aaa_roles.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["role_id"], ["aaa_roles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("role_id", "parent_id"),
    )
    with op.batch_alter_table("aaa_role_parents", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_aaa_role_parents_parent_id"), ["parent_id"], unique=False
        )

    op.create_table(
        "aaa_user_permissions",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("permission_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["permission_id"], ["aaa_permissions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["aaa_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "permission_id"),
    )
    with op.batch_alter_table("aaa_user_permissions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_aaa_user_permissions_permission_id"), ["permission_id"], unique=False
        )

    with op.batch_alter_table("aaa_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("impersonator_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("impersonation_reason", sa.String(length=255), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_aaa_sessions_impersonator_id"), ["impersonator_id"], unique=False
        )
        batch_op.create_foreign_key(
            "fk_aaa_sessions_impersonator_id",
            "aaa_users",
            ["impersonator_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("aaa_sessions", schema=None) as batch_op:
        batch_op.drop_constraint("fk_aaa_sessions_impersonator_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_aaa_sessions_impersonator_id"))
        batch_op.drop_column("impersonation_reason")
        batch_op.drop_column("impersonator_id")

    with op.batch_alter_table("aaa_user_permissions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_user_permissions_permission_id"))

    op.drop_table("aaa_user_permissions")
    with op.batch_alter_table("aaa_role_parents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_role_parents_parent_id"))

    op.drop_table("aaa_role_parents")
