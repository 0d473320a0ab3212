"""Helpers for the JSON API tests: tokens minted through the service, bearer headers, and
a look at the audit trail."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from flask_aaa import User
from flask_aaa.db import writing
from flask_aaa.models import AuditEvent
from flask_aaa.services import tokens
from flask_aaa.services.actors import RequestFacts
from tests.conftest import SYSTEM, app_engine, fresh

API = "/aaa/api/v1"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def token_for(app: Flask) -> Callable[..., str]:
    """Mint a token for ``user`` through the service (as the CLI would) and return its
    secret, the only copy there is."""
    settings = app.extensions["aaa"].settings

    def mint(
        user: User,
        scopes: Iterable[str] = ("account:read",),
        *,
        name: str = "test token",
        days: int | None = None,
    ) -> str:
        with writing(), Session(app_engine(app), expire_on_commit=False) as session:
            owner = session.get(User, user.id)
            assert owner is not None
            minted = tokens.mint(
                session,
                owner,
                actor=SYSTEM,
                name=name,
                scopes=list(scopes),
                days=days,
                settings=settings,
                facts=RequestFacts.for_cli("tests"),
            )
            session.commit()
            return minted.secret

    return mint


def events(db: Session, action: str | None = None, **where: Any) -> list[AuditEvent]:
    """The audit events (oldest first), optionally of one action and matching columns."""
    stmt = select(AuditEvent).order_by(AuditEvent.seq)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    for column, value in where.items():
        stmt = stmt.where(getattr(AuditEvent, column) == value)
    return list(fresh(db).scalars(stmt))
