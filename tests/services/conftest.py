"""Fixtures shared by the service tests."""

from __future__ import annotations

import pytest

from flask_aaa.db import writing
from flask_aaa.models import Role, User
from flask_aaa.services import accounts, rbac
from tests.conftest import PASSWORD, SYSTEM


@pytest.fixture
def world(session, settings, passwords):
    """A small world, committed: helpers to make users and roles in ``session``."""

    class World:
        def user(self, name: str, *roles: Role) -> User:
            with writing():
                user = accounts.create_user(
                    session,
                    actor=SYSTEM,
                    settings=settings,
                    passwords=passwords,
                    username=name,
                    email=f"{name}@example.org",
                    password=PASSWORD,
                    roles=roles,
                )
                session.commit()
            return user

        def role(self, name: str, *permissions: str) -> Role:
            with writing():
                role = rbac.create_role(session, actor=SYSTEM, name=name)
                for permission in permissions:
                    rbac.add_permission(session, actor=SYSTEM, role=role, permission=permission)
                session.commit()
            return role

    return World()
