"""The administration console through the test client: the pages added for issue 5 (search
and create users, direct permissions, one session ended, a role's page and hierarchy, the
permission catalogue, explain, an audit event in detail, the dashboard), each guarded by its
permission, each change audited, each page also answering JSON."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from freezegun import freeze_time
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from flask_aaa.db import utcnow, writing
from flask_aaa.models import AuditEvent, LoginSession, Role, User
from flask_aaa.services import audit
from flask_aaa.services.actors import RequestFacts
from flask_aaa.web import charts
from tests.conftest import PASSWORD, SYSTEM, app_engine, fresh, login, post, post_json
from tests.web.test_admin import JSON, details, events, last_seq

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"

#: The pages this console added, with the permission each needs.
NEW_PAGES = {
    "/admin/dashboard": "aaa:audit:read",
    "/admin/roles/editor": "aaa:users:read",
    "/admin/permissions": "aaa:users:read",
    "/admin/explain?user=bob&permission=notes:read": "aaa:users:read",
    "/admin/audit/1": "aaa:audit:read",
}


@pytest.fixture
def world(make_user: Any, admin: User) -> dict[str, User]:
    return {
        "root": admin,
        "mallory": make_user("mallory"),
        "bob": make_user("bob", roles=["editor"], perms={"editor": ["notes:read", "notes:write"]}),
        "svc": make_user("carol", active=False),
    }


@pytest.fixture
def as_admin(client: Any, world: dict[str, User]) -> Any:
    assert login(client, "root").status_code == 303
    return client


def body(response: Any) -> str:
    return str(response.get_data(as_text=True))


def role(db: Session, name: str) -> Role | None:
    return fresh(db).scalar(select(Role).where(Role.name == name))


# -- every new page needs its permission --


def test_plain_user_gets_403_and_an_audited_denial_on_each_new_page(client, db, world):
    assert login(client, "mallory").status_code == 303
    for url, permission in NEW_PAGES.items():
        mark = last_seq(db)
        assert client.get(url).status_code == 403, url
        assert client.get(url, headers=JSON).get_json()["error"] == "permission_denied"
        denied = events(db, "authz.denied", after=mark)
        assert [details(e)["requirement"] for e in denied] == [permission, permission], url


def test_anonymous_is_sent_to_sign_in_from_each_new_page(client, world):
    for url in NEW_PAGES:
        response = client.get(url)
        assert response.status_code == 303, url
        assert urlsplit(response.headers["Location"]).path == "/auth/login"


def test_one_permission_opens_its_pages_and_shows_only_its_sections(client, make_user, world):
    make_user("auditor", roles=["auditors"], perms={"auditors": ["aaa:audit:read"]})
    assert login(client, "auditor").status_code == 303
    page = client.get("/admin/dashboard")
    assert page.status_code == 200
    assert client.get("/admin/audit/1").status_code == 200
    assert client.get("/admin/permissions").status_code == 403
    nav = re.search(r'<nav class="aaa-subnav".*?</nav>', body(page), re.S)
    assert nav is not None
    labels = re.findall(r">([A-Za-z]+)</a>", nav.group(0))
    assert labels == ["Dashboard", "Audit"]


def test_the_console_navigation_lists_every_section_in_order_for_an_administrator(as_admin):
    page = body(as_admin.get("/admin/roles"))
    nav = re.search(r'<nav class="aaa-subnav".*?</nav>', page, re.S)
    assert nav is not None
    assert re.findall(r">([A-Za-z]+)</a>", nav.group(0)) == [
        "Dashboard",
        "Users",
        "Roles",
        "Permissions",
        "Explain",
        "Audit",
    ]
    assert 'aria-current="page">Roles<' in nav.group(0)


# -- users: search, filters, create --


def users_json(client: Any, **query: str) -> list[str]:
    response = client.get("/admin/", query_string=query, headers=JSON)
    assert response.status_code == 200, response.get_json()
    return [u["username"] for u in response.get_json()["users"]]


def test_users_search_and_filters(as_admin, db, world):
    assert users_json(as_admin, q="BO") == ["bob"]
    assert users_json(as_admin, q="example.org") == ["root", "mallory", "bob", "carol"]
    assert users_json(as_admin, active="0") == ["carol"]
    assert users_json(as_admin, active="1") == ["root", "mallory", "bob"]
    assert users_json(as_admin, role="editor") == ["bob"]
    assert users_json(as_admin, role="editor", q="mal") == []
    assert users_json(as_admin, kind="person", active="0") == ["carol"]
    assert users_json(as_admin, q="%") == []  # a wildcard is matched literally
    page = body(as_admin.get("/admin/?q=bo"))
    assert ">bob</a>" in page
    assert ">mallory</a>" not in page
    assert 'value="bo"' in page


@pytest.mark.parametrize(
    ("query", "field"),
    [({"active": "maybe"}, "active"), ({"kind": "robot"}, "kind"), ({"q": "x" * 400}, "q")],
)
def test_users_bad_filters_are_400(as_admin, query, field):
    response = as_admin.get("/admin/", query_string=query, headers=JSON)
    assert response.status_code == 400
    assert field in response.get_json()["fields"]
    assert as_admin.get("/admin/", query_string=query).status_code == 400


class TestSmallPages:
    @pytest.fixture
    def config(self, config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "AAA_PAGE_SIZE": 2}

    def test_users_pages_keep_the_filter(self, as_admin, make_user):
        for n in range(3):
            make_user(f"zed{n}")
        first = as_admin.get("/admin/", query_string={"q": "zed"}, headers=JSON).get_json()
        assert [u["username"] for u in first["users"]] == ["zed0", "zed1"]
        page = body(as_admin.get("/admin/?q=zed"))
        link = re.search(r'href="(/admin/\?[^"]*after=[^"]*)">Next page', page)
        assert link is not None
        assert "q=zed" in link.group(1)
        second = as_admin.get(link.group(1).replace("&amp;", "&"), headers=JSON).get_json()
        assert [u["username"] for u in second["users"]] == ["zed2"]
        assert second["next_after"] is None


def test_admin_creates_a_user_with_a_role_and_both_are_audited(as_admin, db, world):
    mark = last_seq(db)
    response = post(
        as_admin,
        "/admin/users",
        {"username": "dave", "email": "dave@example.org", "password": PASSWORD, "role": "editor"},
    )
    assert response.status_code == 303
    dave = fresh(db).scalar(select(User).where(User.username == "dave"))
    assert dave is not None
    assert urlsplit(response.headers["Location"]).path == f"/admin/users/{dave.id}"
    assert [r.name for r in dave.roles] == ["editor"]
    got = events(db, after=mark)
    assert [e.action for e in got] == ["user.created", "role.granted"]
    assert {e.actor_id for e in got} == {world["root"].id}
    assert login(as_admin.application.test_client(), "dave").status_code == 303


def test_a_weak_password_shows_the_form_again_with_the_error(as_admin, db, world):
    mark = last_seq(db)
    response = post(
        as_admin,
        "/admin/users",
        {"username": "erin", "email": "erin@example.org", "password": "short"},
    )
    assert response.status_code == 400
    page = body(response)
    assert 'id="e-nu-password"' in page
    assert 'value="erin"' in page  # what was typed is kept, but never the password
    assert 'value="short"' not in page
    response = post_json(
        as_admin,
        "/admin/users",
        {"username": "erin", "email": "erin@example.org", "password": "short"},
    )
    assert response.status_code == 400
    assert "password" in response.get_json()["fields"]
    assert fresh(db).scalar(select(User).where(User.username == "erin")) is None
    assert events(db, "user.created", after=mark) == []


def test_creating_a_user_with_a_role_needs_the_right_to_assign_it(client, db, make_user, world):
    make_user(
        "hrdesk", roles=["hr"], perms={"hr": ["aaa:users:write", "aaa:users:read"]}
    )  # may create accounts, may not assign roles
    assert login(client, "hrdesk").status_code == 303
    response = post(
        client,
        "/admin/users",
        {"username": "fay", "email": "fay@example.org", "password": PASSWORD, "role": "editor"},
    )
    assert response.status_code == 403
    assert fresh(db).scalar(select(User).where(User.username == "fay")) is None
    response = post(
        client,
        "/admin/users",
        {"username": "fay", "email": "fay@example.org", "password": PASSWORD},
    )
    assert response.status_code == 303


# -- a user's page: effective roles, direct permissions, sessions --


def test_user_page_marks_inherited_roles_and_lists_direct_permissions(as_admin, db, world):
    assert post(as_admin, "/admin/roles", {"name": "reader"}).status_code == 303
    assert post(as_admin, "/admin/roles/editor/parents", {"parent": "reader"}).status_code == 303
    bob = world["bob"].id
    mark = last_seq(db)
    assert (
        post(
            as_admin, f"/admin/users/{bob}/permissions", {"permission": "reports:read"}
        ).status_code
        == 303
    )
    (granted,) = events(db, "user.permission_granted", after=mark)
    assert granted.actor_id == world["root"].id
    assert details(granted)["permission"] == "reports:read"
    data = as_admin.get(f"/admin/users/{bob}", headers=JSON).get_json()
    assert data["effective_roles"] == [
        {"name": "editor", "inherited_via": None},
        {"name": "reader", "inherited_via": "editor"},
    ]
    assert data["direct_permissions"] == ["reports:read"]
    assert "reports:read" in data["effective_permissions"]
    page = body(as_admin.get(f"/admin/users/{bob}"))
    assert "inherited through editor" in page
    assert "Revoke reports:read" in page
    mark = last_seq(db)
    response = post(
        as_admin, f"/admin/users/{bob}/permissions/revoke", {"permission": "reports:read"}
    )
    assert response.status_code == 303
    assert [e.action for e in events(db, after=mark)] == ["user.permission_revoked"]
    assert as_admin.get(f"/admin/users/{bob}", headers=JSON).get_json()["direct_permissions"] == []


def test_admin_ends_one_session_and_only_that_browser_is_signed_out(app, as_admin, db, world):
    phone, laptop = app.test_client(), app.test_client()
    phone.environ_base["HTTP_USER_AGENT"] = "Phone"
    laptop.environ_base["HTTP_USER_AGENT"] = "Laptop"
    assert login(phone, "bob").status_code == 303
    assert login(laptop, "bob").status_code == 303
    bob = world["bob"].id
    sessions = as_admin.get(f"/admin/users/{bob}", headers=JSON).get_json()["sessions"]
    (target,) = [s for s in sessions if s["user_agent"] == "Phone"]
    page = body(as_admin.get(f"/admin/users/{bob}"))
    assert f"/admin/users/{bob}/sessions/{target['id']}/revoke" in page
    mark = last_seq(db)
    response = post(as_admin, f"/admin/users/{bob}/sessions/{target['id']}/revoke")
    assert response.status_code == 303
    assert phone.get("/notes", headers=JSON).status_code == 401
    assert laptop.get("/notes").status_code == 200
    (ended,) = events(db, "session.revoked", after=mark)
    assert ended.actor_id == world["root"].id
    assert ended.target_type == "session"
    assert ended.target_id == str(target["id"])
    assert details(ended)["user"] == {"id": bob, "name": "bob"}
    record = fresh(db).get(LoginSession, target["id"])
    assert record is not None and record.revoked_reason == "revoked_by_admin"
    # ended already, or someone else's: not found, and nothing recorded
    mark = last_seq(db)
    assert (
        post_json(as_admin, f"/admin/users/{bob}/sessions/{target['id']}/revoke").status_code == 404
    )
    mallory = world["mallory"].id
    laptop_id = next(s["id"] for s in sessions if s["user_agent"] == "Laptop")
    assert (
        post_json(as_admin, f"/admin/users/{mallory}/sessions/{laptop_id}/revoke").status_code
        == 404
    )
    assert events(db, "session.revoked", after=mark) == []
    assert laptop.get("/notes").status_code == 200


# -- roles: a page per role, the hierarchy, cycles, deletion --


def build_hierarchy(client: Any) -> None:
    """reader (notes:read) ← editor (notes:write) ← chief (notes:delete)."""
    assert post(client, "/admin/roles", {"name": "reader"}).status_code == 303
    assert (
        post(client, "/admin/roles/reader/permissions", {"permission": "notes:read"}).status_code
        == 303
    )
    assert post(client, "/admin/roles", {"name": "chief", "parent": "editor"}).status_code == 303
    assert (
        post(client, "/admin/roles/chief/permissions", {"permission": "notes:delete"}).status_code
        == 303
    )
    assert (
        post(
            client, "/admin/roles/editor/permissions/remove", {"permission": "notes:read"}
        ).status_code
        == 303
    )
    assert post(client, "/admin/roles/editor/parents", {"parent": "reader"}).status_code == 303


def test_role_page_shows_own_and_inherited_permissions_parents_children_and_holders(
    as_admin, db, world
):
    mark = last_seq(db)
    build_hierarchy(as_admin)
    actions = [e.action for e in events(db, after=mark)]
    assert actions.count("role.parent_added") == 2
    assert actions.count("role.created") == 2
    data = as_admin.get("/admin/roles/chief", headers=JSON).get_json()
    assert data["permissions"] == ["notes:delete"]
    assert data["parents"] == ["editor"]
    assert data["inherited"] == [
        {"permission": "notes:read", "via": ["chief", "editor", "reader"]},
        {"permission": "notes:write", "via": ["chief", "editor"]},
    ]
    assert data["effective_permissions"] == ["notes:delete", "notes:read", "notes:write"]
    editor = as_admin.get("/admin/roles/editor", headers=JSON).get_json()
    assert editor["children"] == ["chief"]
    assert editor["holders"] == ["bob"] and editor["holder_count"] == 1
    page = body(as_admin.get("/admin/roles/chief"))
    assert "chief → editor → reader" in page
    assert "from reader" in page
    listing = body(as_admin.get("/admin/roles"))
    assert re.search(r"chief</strong>.*?<td>.*?>editor</a>", listing, re.S)


def test_a_cycle_is_refused_with_its_path_as_a_400_on_the_page(as_admin, db, world):
    build_hierarchy(as_admin)
    mark = last_seq(db)
    response = post(as_admin, "/admin/roles/reader/parents", {"parent": "chief"})
    assert response.status_code == 400
    page = body(response)
    assert "reader cannot inherit from chief: a cycle (chief → editor → reader)" in page
    assert 'role="alert"' in page
    response = post_json(as_admin, "/admin/roles/reader/parents", {"parent": "reader"})
    assert response.status_code == 400
    assert "cycle" in response.get_json()["fields"]["parent"]
    assert events(db, "role.parent_added", after=mark) == []
    assert as_admin.get("/admin/roles/reader", headers=JSON).get_json()["parents"] == []


def test_removing_a_parent_is_audited_and_takes_its_permissions(as_admin, db, world):
    build_hierarchy(as_admin)
    mark = last_seq(db)
    response = post(as_admin, "/admin/roles/editor/parents/remove", {"parent": "reader"})
    assert response.status_code == 303
    (removed,) = events(db, "role.parent_removed", after=mark)
    assert details(removed)["parent"] == "reader"
    assert as_admin.get("/admin/roles/editor", headers=JSON).get_json()["inherited"] == []


def test_deleting_a_role_needs_its_name_typed_again(as_admin, db, world):
    build_hierarchy(as_admin)
    mark = last_seq(db)
    response = post(as_admin, "/admin/roles/reader/delete", {"confirm": "read"})
    assert response.status_code == 400
    assert "Type the role&#39;s name, reader, to confirm." in body(response)
    assert post_json(as_admin, "/admin/roles/reader/delete", {}).status_code == 400
    assert role(db, "reader") is not None
    response = post(as_admin, "/admin/roles/reader/delete", {"confirm": "reader"})
    assert response.status_code == 303
    assert urlsplit(response.headers["Location"]).path == "/admin/roles"
    assert role(db, "reader") is None
    (deleted,) = events(db, "role.deleted", after=mark)
    assert details(deleted)["children"] == ["editor"]
    assert as_admin.get("/admin/roles/reader", headers=JSON).status_code == 404


def test_the_last_administrator_role_cannot_be_deleted(as_admin, db):
    response = post(as_admin, "/admin/roles/admin/delete", {"confirm": "admin"})
    assert response.status_code == 409
    assert role(db, "admin") is not None


# -- the permission catalogue --


def test_permission_catalogue_lists_holders_and_describes_the_library_permissions(as_admin, world):
    data = as_admin.get("/admin/permissions", headers=JSON).get_json()
    found = {p["name"]: p["roles"] for p in data["permissions"]}
    assert found["notes:read"] == ["editor"]
    assert found["*"] == ["admin"]
    assert set(data["library"]) >= {
        "aaa:users:read",
        "aaa:users:write",
        "aaa:roles:assign",
        "aaa:roles:write",
        "aaa:audit:read",
        "aaa:users:impersonate",
    }
    page = body(as_admin.get("/admin/permissions"))
    assert "<code>aaa:audit:read</code>" in page
    assert data["library"]["aaa:audit:read"] in page.replace("&#39;", "'")


# -- explain --


def test_explain_shows_the_inheritance_path_of_an_allowed_permission(as_admin, world):
    build_hierarchy(as_admin)
    data = as_admin.get(
        "/admin/explain", query_string={"user": "bob", "permission": "notes:read"}, headers=JSON
    ).get_json()
    assert data["allowed"] is True
    assert data["grants"] == [{"via": ["editor", "reader"], "grant": "notes:read"}]
    page = body(as_admin.get("/admin/explain?user=bob&permission=notes:read"))
    assert "Allowed" in page
    assert re.search(
        r">editor</a> <span aria-label=\"inherits from\">→</span> <a[^>]*>reader</a>", page
    )


def test_explain_a_denial_says_what_is_missing_and_what_is_held(as_admin, world):
    build_hierarchy(as_admin)
    data = as_admin.get(
        "/admin/explain", query_string={"user": "bob", "permission": "notes:delete"}, headers=JSON
    ).get_json()
    assert data["allowed"] is False
    assert data["near"] == ["notes:read", "notes:write"]
    assert data["roles_that_would_grant"] == ["admin", "chief"]
    page = body(as_admin.get("/admin/explain?user=bob&permission=notes:delete"))
    assert "Denied" in page
    assert "aaa-verdict-denied" in page
    assert "Roles that would grant it" in page


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ({"user": "nobody", "permission": "notes:read"}, 404, None),
        ({"user": "bob", "permission": "Notes:READ"}, 400, "permission"),
        ({"user": "bob"}, 400, "permission"),
    ],
)
def test_explain_bad_questions(as_admin, query, status, field):
    response = as_admin.get("/admin/explain", query_string=query, headers=JSON)
    assert response.status_code == status
    if field:
        assert field in response.get_json()["fields"]
    assert as_admin.get("/admin/explain", query_string=query).status_code == status


def test_explain_form_alone_is_200(as_admin):
    response = as_admin.get("/admin/explain")
    assert response.status_code == 200
    assert 'for="x-permission"' in body(response)


# -- the audit trail: one event in detail --


def record_event(app: Any, **kwargs: Any) -> int:
    with writing(), Session(app_engine(app)) as session:
        audit.record(session, actor=SYSTEM, facts=RequestFacts.for_cli("tests"), **kwargs)
        session.commit()
    with Session(app_engine(app)) as session:
        return int(session.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc())) or 0)


def test_event_detail_shows_every_field_escaped_with_its_neighbours(app, as_admin, db):
    hostile = app.test_client()
    hostile.environ_base["HTTP_USER_AGENT"] = SCRIPT
    login(hostile, "mallory", "wrong password, surely")
    seq = record_event(app, action="notes.flagged", details={"note": SCRIPT, "n": 3})
    response = as_admin.get(f"/admin/audit/{seq}")
    assert response.status_code == 200
    page = body(response)
    assert SCRIPT not in page
    assert ESCAPED in page
    assert "&#34;n&#34;: 3" in page  # pretty-printed, one key a line
    assert f'href="/admin/audit/{seq - 1}"' in page
    assert "Intact" in page
    assert "Latest event" in page
    failed = events(db, "auth.login.failed")[-1]
    page = body(as_admin.get(f"/admin/audit/{failed.seq}"))
    assert SCRIPT not in page and ESCAPED in page
    data = as_admin.get(f"/admin/audit/{seq}", headers=JSON).get_json()
    assert data["event"]["details"] == {"note": SCRIPT, "n": 3}
    assert data["check"] == {"hash_ok": True, "link_ok": True}
    assert data["previous"] == seq - 1
    assert data["next"] is None  # the newest event: reading pages records nothing
    assert as_admin.get("/admin/audit/999999", headers=JSON).status_code == 404


def test_event_detail_names_an_edited_event(app, as_admin, db):
    seq = record_event(app, action="notes.flagged", details={"n": 1})
    with writing():
        session = fresh(db)
        session.execute(
            text("UPDATE aaa_audit_events SET outcome='denied' WHERE seq=:s"), {"s": seq}
        )
        session.commit()
    data = as_admin.get(f"/admin/audit/{seq}", headers=JSON).get_json()
    assert data["check"] == {"hash_ok": False, "link_ok": True}
    assert "Tampered" in body(as_admin.get(f"/admin/audit/{seq}"))


def test_audit_list_links_each_event_to_its_page_and_verify_names_the_last_seq(as_admin, db):
    page = body(as_admin.get("/admin/audit"))
    newest = last_seq(db)
    assert f'href="/admin/audit/{newest}"' in page
    response = post(as_admin, "/admin/audit/verify")
    flashed = body(as_admin.get(response.headers["Location"]))
    assert f"Chain verified from event 1 to {newest}" in flashed
    assert "head signature valid" in flashed


# -- the dashboard --


def bars(page: str, chart: str) -> dict[tuple[str, str], int]:
    """``(series, day) -> value`` of every bar or point of one chart on the page."""
    svg = re.search(rf'<svg[^>]*data-chart="{chart}".*?</svg>', page, re.S)
    assert svg is not None, chart
    return {
        (series, day): int(value)
        for series, day, value in re.findall(
            r'data-series="([^"]+)" data-label="([^"]+)" data-value="(\d+)"', svg.group(0)
        )
    }


def test_dashboard_draws_the_seeded_trail(app, make_user, db):
    today = utcnow().date()
    three_days_ago = today - dt.timedelta(days=3)
    with freeze_time(f"{three_days_ago.isoformat()} 09:00"):
        make_user("root", roles=["admin"], perms={"admin": ["*"]})  # user.created: new user
        for _ in range(2):
            assert login(app.test_client(), "root").status_code == 303
        assert login(app.test_client(), "root", "not the password").status_code == 401
    with freeze_time(f"{(today - dt.timedelta(days=20)).isoformat()} 09:00"):
        assert login(app.test_client(), "root").status_code == 303  # outside the window
    make_user("mallory")
    intruder = app.test_client()
    assert login(intruder, "mallory").status_code == 303
    assert intruder.get("/admin/roles").status_code == 403
    assert intruder.get("/admin/audit").status_code == 403
    admin = app.test_client()
    assert login(admin, "root").status_code == 303

    page = body(admin.get("/admin/dashboard"))
    day, now = three_days_ago.isoformat(), today.isoformat()
    sign_ins = bars(page, "chart-sign-ins")
    assert len(sign_ins) == 2 * 14
    assert sign_ins[("ok", day)] == 2
    assert sign_ins[("bad", day)] == 1
    assert sign_ins[("ok", now)] == 2  # mallory and root today
    assert sum(sign_ins.values()) == 5
    denials = bars(page, "chart-denials")
    assert denials[("denied", now)] == 2
    assert sum(denials.values()) == 2
    new_users = bars(page, "chart-new-users")
    assert new_users[("users", day)] == 1
    assert new_users[("users", now)] == 1
    sessions = bars(page, "chart-sessions")
    assert sessions[("sessions", day)] == 2  # root's two sign-ins that day
    assert sessions[("sessions", now)] == 2  # mallory's and root's of today
    assert "<title" in page and 'role="img"' in page
    assert f"{now}: 2 denials" in page
    assert "<script" not in page
    data = admin.get("/admin/dashboard", headers=JSON).get_json()
    assert data["days"][-1] == now and len(data["days"]) == 14
    assert data["sign_ins"]["succeeded"][-4] == 2
    assert data["denials"][-1] == 2
    assert data["active_sessions"] == 2  # mallory's and root's sessions of today


# -- the chart helper on its own --


def test_chart_axis_tops_are_round_numbers():
    assert charts.nice_ceiling(0) == (4, 1)
    assert charts.nice_ceiling(3) == (4, 1)
    assert charts.nice_ceiling(7) == (8, 2)
    assert charts.nice_ceiling(37) == (40, 10)
    assert charts.nice_ceiling(1234) == (1500, 500)


def test_chart_renders_a_bar_per_value_with_escaped_text():
    chart = charts.Chart(
        id="c1",
        title=SCRIPT,
        description="d & d",
        labels=("2026-01-01", "2026-01-02"),
        series=(charts.Series("ok", "Good", (1, 0)), charts.Series("bad", "Bad", (5, 2))),
    )
    svg = str(charts.render(chart))
    assert svg.count("<rect") == 4
    assert SCRIPT not in svg and ESCAPED in svg
    assert "d &amp; d" in svg
    assert "<title>2026-01-02: 2 bad</title>" in svg
    assert chart.rows() == [("2026-01-01", [1, 5]), ("2026-01-02", [0, 2])]
    line = charts.render(
        charts.Chart("c2", "t", "d", ("a", "b"), (charts.Series("s", "S", (1, 2)),), "line")
    )
    assert str(line).count("<circle") == 2 and "<polyline" in str(line)
    with pytest.raises(ValueError, match="one value per label"):
        charts.Chart("c3", "t", "d", ("a",), (charts.Series("s", "S", (1, 2)),))


def test_each_new_page_answers_json(as_admin):
    """Every new page answers JSON (no 500s for API clients)."""
    for url in NEW_PAGES:
        response = as_admin.get(url, headers=JSON)
        assert response.status_code == 200, url
        assert response.mimetype == "application/json"
        json.dumps(response.get_json())


# -- the trail's target filter --


def test_audit_trail_filters_by_target_and_keeps_it_in_the_export_links(as_admin, world, db):
    bob = world["bob"]
    data = as_admin.get(
        f"/admin/audit?target_type=user&target_id={bob.id}", headers=JSON
    ).get_json()
    assert data["events"]
    assert {(e["target_type"], e["target_id"]) for e in data["events"]} == {("user", str(bob.id))}
    page = body(as_admin.get(f"/admin/audit?target_type=user&target_id={bob.id}"))
    assert f"target_type=user&amp;target_id={bob.id}" in page  # export links keep the filter
    lines = as_admin.get(f"/admin/audit.jsonl?target_type=user&target_id={bob.id}").get_data(
        as_text=True
    )
    assert {json.loads(line)["target_id"] for line in lines.splitlines()} == {str(bob.id)}


@pytest.mark.parametrize(
    "query", ["target_type=User", "target_type=a%20b", "target_type=x'--", "target_id=" + "9" * 65]
)
def test_L01_bad_target_filter_is_a_400(as_admin, query):
    assert as_admin.get(f"/admin/audit?{query}", headers=JSON).status_code == 400
