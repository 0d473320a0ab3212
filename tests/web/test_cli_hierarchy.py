"""``flask aaa inherit``, ``delete-role``, ``grant-user-permission``,
``revoke-user-permission`` and ``explain`` through Click's runner."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from flask_aaa.models import AuditEvent
from tests.conftest import fresh


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(*args: str):
        return runner.invoke(args=["aaa", *args])

    return invoke


@pytest.fixture
def chain(cli, make_user):
    cli("create-role", "reader", "--permission", "notes:read")
    cli("create-role", "editor", "--permission", "notes:write")
    assert cli("inherit", "editor", "reader").exit_code == 0
    make_user("eve", roles=["editor"])


def test_inherit_lists_and_explains_the_path(cli, chain):
    assert "editor\tnotes:write\tinherits reader" in cli("list-roles").output
    result = cli("explain", "eve", "notes:read")
    assert result.exit_code == 0
    assert result.output.startswith("ALLOWED: eve notes:read")
    assert "editor (inherited: editor → reader) holds notes:read" in result.output


def test_explain_denied_exits_3_and_says_what_is_held(cli, chain):
    result = cli("explain", "eve", "notes:delete")
    assert result.exit_code == 3
    assert "DENIED" in result.output
    assert "holds notes:read, notes:write" in result.output
    as_json = json.loads(cli("explain", "eve", "notes:delete", "--json").output)
    assert as_json["allowed"] is False


def test_a_cycle_is_refused_in_one_line(cli, chain):
    result = cli("inherit", "reader", "editor")
    assert result.exit_code == 1
    assert "cycle" in result.output
    assert "Traceback" not in result.output


def test_remove_inheritance_and_delete_a_role(cli, chain, db):
    assert "no longer inherits" in cli("inherit", "editor", "reader", "--remove").output
    assert cli("explain", "eve", "notes:read").exit_code == 3
    assert cli("delete-role", "editor").exit_code == 0
    assert "editor" not in cli("list-roles").output
    actions = [e.action for e in fresh(db).scalars(select(AuditEvent))]
    assert {"role.parent_added", "role.parent_removed", "role.deleted"} <= set(actions)


def test_direct_permissions(cli, make_user):
    make_user("dan")
    assert "Granted reports:read" in cli("grant-user-permission", "dan", "reports:read").output
    assert "granted directly" in cli("explain", "dan", "reports:read").output
    assert "Revoked" in cli("revoke-user-permission", "dan", "reports:read").output
    assert cli("explain", "dan", "reports:read").exit_code == 3


def test_the_last_admin_cannot_lose_inherited_rights_from_the_cli(cli, make_user):
    cli("create-role", "super", "--permission", "*")
    cli("create-role", "ops")
    cli("inherit", "ops", "super")
    make_user("root", roles=["ops"])
    result = cli("inherit", "ops", "super", "--remove")
    assert result.exit_code == 1
    assert "nobody with full administration" in result.output
    assert cli("explain", "root", "anything:goes").exit_code == 0
