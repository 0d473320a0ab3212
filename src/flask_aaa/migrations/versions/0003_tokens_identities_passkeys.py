"""Tokens, identities, passkeys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Personal access tokens, service accounts (``aaa_users.kind``), links to third-party
identities, passkeys (WebAuthn credentials and the user handle), and the single-use
challenges of OAuth and WebAuthn ceremonies.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aaa_api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("hint", sa.String(length=32), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("last_used_ip", sa.String(length=45), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["aaa_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("aaa_api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_aaa_api_tokens_user_id"), ["user_id"], unique=False)

    op.create_table(
        "aaa_challenges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("value_hash", sa.String(length=64), nullable=False),
        sa.Column("browser_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["aaa_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("value_hash"),
    )
    with op.batch_alter_table("aaa_challenges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_aaa_challenges_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_aaa_challenges_user_id"), ["user_id"], unique=False)

    op.create_table(
        "aaa_identities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=255), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["aaa_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("issuer", "subject", name="uq_aaa_identities_iss_sub"),
    )
    with op.batch_alter_table("aaa_identities", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_aaa_identities_user_id"), ["user_id"], unique=False)

    op.create_table(
        "aaa_passkeys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("credential_id", sa.String(length=1400), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("sign_count", sa.BigInteger(), nullable=False),
        sa.Column("transports", sa.String(length=255), nullable=False),
        sa.Column("aaguid", sa.String(length=36), nullable=True),
        sa.Column("backed_up", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["aaa_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("credential_id"),
    )
    with op.batch_alter_table("aaa_passkeys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_aaa_passkeys_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("aaa_users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="person", nullable=False)
        )
        batch_op.add_column(sa.Column("passkey_handle", sa.String(length=88), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_aaa_users_passkey_handle"), ["passkey_handle"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("aaa_users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_users_passkey_handle"))
        batch_op.drop_column("passkey_handle")
        batch_op.drop_column("kind")

    with op.batch_alter_table("aaa_passkeys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_passkeys_user_id"))

    op.drop_table("aaa_passkeys")
    with op.batch_alter_table("aaa_identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_identities_user_id"))

    op.drop_table("aaa_identities")
    with op.batch_alter_table("aaa_challenges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_challenges_user_id"))
        batch_op.drop_index(batch_op.f("ix_aaa_challenges_expires_at"))

    op.drop_table("aaa_challenges")
    with op.batch_alter_table("aaa_api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aaa_api_tokens_user_id"))

    op.drop_table("aaa_api_tokens")
