"""The per-request cost: a warm authorized request makes one database round trip."""

from __future__ import annotations

from tests.conftest import count_statements, login


def test_warm_permission_check_is_one_round_trip(app, client, make_user):
    make_user("alice", roles=["reader"], perms={"reader": ["notes:read"]})
    login(client, "alice")
    assert client.get("/notes").status_code == 200  # warms the grants cache
    with count_statements(app) as statements:
        assert client.get("/notes").status_code == 200
        assert client.get("/notes-any").status_code == 200
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2, statements  # one per request: session + user + authz version
    assert not [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]


def test_a_grant_is_seen_at_once_then_costs_nothing(app, client, make_user, db):
    """S02 too: the next request after a grant gets a new session id (and the new grants);
    the one after that is back to a single round trip."""
    from flask_aaa.db import writing
    from flask_aaa.models import User
    from flask_aaa.services import rbac
    from tests.conftest import SYSTEM, ensure_role, fresh

    user = make_user("alice")
    login(client, "alice")
    client.get("/private")
    with writing():
        role = ensure_role(fresh(db), "reader", ["notes:read"])
        rbac.grant_role(db, actor=SYSTEM, user=db.get(User, user.id), role=role)
        db.commit()
    before = client.get_cookie("aaa_session").value
    assert client.get("/notes").status_code == 200
    assert client.get_cookie("aaa_session").value != before
    with count_statements(app) as statements:
        assert client.get("/notes").status_code == 200
    assert len(statements) == 1


def test_static_files_cost_no_query_even_when_signed_in(app, client, make_user):
    make_user("alice")
    login(client, "alice")
    client.get("/private")
    with count_statements(app) as statements:
        assert client.get("/aaa-static/aaa/aaa.css").status_code == 200
    assert statements == []


def test_a_write_after_the_touch_interval_does_not_wait_on_its_own_lock(client, make_user, db):
    """The first POST of a session after the touch interval records the activity inside its
    own transaction: on SQLite a second connection would wait on the request's write lock
    for the whole busy timeout (and then fail)."""
    import time

    from freezegun import freeze_time

    from flask_aaa.models import LoginSession
    from tests.conftest import csrf_token, fresh, login

    make_user("alice", roles=["writer"], perms={"writer": ["notes:write"]})
    with freeze_time("2030-01-01 10:00", tick=True) as clock:
        login(client, "alice")
        token = csrf_token(client)
        clock.tick(120)
        began = time.monotonic()
        response = client.post("/notes", data={"csrf_token": token})
        elapsed = time.monotonic() - began
        assert response.status_code == 201
    assert elapsed < 2, elapsed
    record = fresh(db).query(LoginSession).one()
    assert record.last_seen_at.year == 2030
    assert (record.last_seen_at - record.created_at).total_seconds() > 100
