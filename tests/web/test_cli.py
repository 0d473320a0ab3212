"""``flask aaa ...`` through Click's runner: every command, its errors, and its audit events."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, text

from flask_aaa.models import AuditEvent, Role, User
from tests.conftest import PASSWORD, fresh


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(args=["aaa", *args], input=input)

    return invoke


def events(db, action_prefix: str = "") -> list[AuditEvent]:
    stmt = select(AuditEvent).order_by(AuditEvent.seq)
    return [e for e in fresh(db).scalars(stmt) if e.action.startswith(action_prefix)]


def test_create_role_with_permissions_and_list(cli, db):
    result = cli("create-role", "editor", "--description", "Edits notes", "--permission", "notes:*")
    assert result.exit_code == 0, result.output
    assert "Created role editor." in result.output
    listed = cli("list-roles")
    assert "editor\tnotes:*" in listed.output
    role = fresh(db).scalar(select(Role).where(Role.name == "editor"))
    assert role is not None and role.description == "Edits notes"


def test_create_user_with_role_and_list(cli, db):
    cli("create-role", "admin", "--permission", "*")
    result = cli(
        "create-user",
        "boss",
        "--email",
        "boss@example.org",
        "--password",
        PASSWORD,
        "--role",
        "admin",
    )
    assert result.exit_code == 0, result.output
    assert "Created user boss" in result.output
    listed = cli("list-users").output
    assert "boss\tboss@example.org\tadmin" in listed
    user = fresh(db).scalar(select(User).where(User.username == "boss"))
    assert user.password_hash.startswith("$argon2id$")


def test_create_user_prompts_for_password(cli, db):
    result = cli(
        "create-user", "quiet", "--email", "q@example.org", input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert fresh(db).scalar(select(User.id).where(User.username == "quiet")) is not None


def test_create_user_refuses_weak_password_cleanly(cli, db):
    result = cli("create-user", "weak", "--email", "w@example.org", "--password", "password")
    assert result.exit_code == 1
    assert "password" in result.output and "Traceback" not in result.output
    assert fresh(db).scalar(select(User.id).where(User.username == "weak")) is None


def test_grant_and_revoke_role_are_audited_with_the_cli_actor(cli, make_user, db):
    make_user("alice")
    cli("create-role", "reader", "--permission", "notes:read")
    assert cli("grant-role", "alice", "reader").output.strip() == "Granted reader to alice."
    assert "already has" in cli("grant-role", "ALICE", "reader").output
    assert cli("revoke-role", "alice@example.org", "reader").exit_code == 0
    granted = events(db, "role.granted")[-1]
    assert granted.actor_type == "system" and granted.actor_name.startswith("cli:")
    assert json.loads(granted.details)["role"] == "reader"
    assert events(db, "role.revoked")[-1].target_label == "alice"


def test_unknown_user_or_role_is_a_clean_error(cli, make_user):
    make_user("alice")
    for args in (("grant-role", "nobody", "reader"), ("grant-role", "alice", "no-such-role")):
        result = cli(*args)
        assert result.exit_code == 1
        assert "Error:" in result.output and "Traceback" not in result.output


def test_grant_and_revoke_permission(cli, db):
    cli("create-role", "reader")
    assert cli("grant-permission", "reader", "notes:read").exit_code == 0
    assert "already has" in cli("grant-permission", "reader", "notes:read").output
    bad = cli("grant-permission", "reader", "Notes Read; DROP")
    assert bad.exit_code == 1
    assert cli("revoke-permission", "reader", "notes:read").exit_code == 0
    role = fresh(db).scalar(select(Role).where(Role.name == "reader"))
    assert role.permissions == []
    assert [e.action for e in events(db, "role.permission")] == [
        "role.permission_added",
        "role.permission_removed",
    ]


def test_disable_and_enable(cli, make_user, admin, db):
    make_user("alice")
    assert cli("disable", "alice").exit_code == 0
    assert fresh(db).scalar(select(User.active).where(User.username == "alice")) is False
    assert cli("enable", "#" + str(admin.id + 1)).exit_code == 0
    assert fresh(db).scalar(select(User.active).where(User.username == "alice")) is True


def test_last_admin_cannot_be_disabled_or_lose_the_role(cli, admin, db):
    result = cli("disable", "root")
    assert result.exit_code == 1 and "full administration" in result.output
    result = cli("revoke-role", "root", "admin")
    assert result.exit_code == 1 and "full administration" in result.output
    assert fresh(db).scalar(select(User.active).where(User.username == "root")) is True


def test_audit_verify_ok_then_broken_L05(cli, make_user, db):
    make_user("alice")
    make_user("bob")
    ok = cli("audit", "verify")
    assert ok.exit_code == 0 and ok.output.startswith("OK:")
    fresh(db).execute(text("UPDATE aaa_audit_events SET actor_name = 'mallory' WHERE seq = 2"))
    db.commit()
    broken = cli("audit", "verify")
    assert broken.exit_code == 1
    assert "BROKEN at seq 2" in broken.output


def test_audit_export_json_lines_with_filters(cli, make_user, tmp_path):
    make_user("alice")
    out = cli("audit", "export")
    lines = [json.loads(line) for line in out.output.splitlines() if line.startswith("{")]
    assert [e["seq"] for e in lines] == sorted(e["seq"] for e in lines)
    assert {"seq", "ts", "action", "outcome", "hash", "prev_hash"} <= set(lines[0])
    target = tmp_path / "users.jsonl"
    result = cli("audit", "export", "--action", "user.*", "--output", str(target))
    assert result.exit_code == 0
    exported = [json.loads(line) for line in target.read_text().splitlines()]
    assert exported and all(e["action"].startswith("user.") for e in exported)
    assert cli("audit", "export", "--since", "yesterday").exit_code == 1


def test_routes_lists_guards(cli):
    output = cli("routes").output
    assert "public" in output and "/auth/login" in output
    assert "permissions /admin/" in output.replace("  ", " ")


def test_no_secret_reaches_the_trail_L04(cli, make_user, db):
    make_user("alice")
    cli("create-user", "bob", "--email", "bob@example.org", "--password", PASSWORD)
    dump = "\n".join(e.details + (e.target_label or "") for e in events(db))
    assert PASSWORD not in dump
