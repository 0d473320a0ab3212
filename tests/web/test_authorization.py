"""Black-box tests of the view decorators: who gets in, who is refused, and what is audited.

Covers anonymous handling (login redirect / 401), permission and role checks with their
audited denials, wildcard grants, T03-like staleness (grants change on the very next
request), Z06 deny-by-default, ``@audited`` and L08 (the audit trail failing closes the door).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask, url_for
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

import flask_aaa.services.audit as audit_service
from flask_aaa.db import writing
from flask_aaa.extension import unguarded_endpoints
from flask_aaa.models import AuditEvent, User
from flask_aaa.services import rbac
from flask_aaa.web.decorators import GUARD_ATTR
from tests.conftest import SYSTEM, csrf_token, ensure_role, fresh, login, post, post_json

JSON = {"Accept": "application/json"}

#: The test app's guarded GET views and the requirement a denial names.
GUARDED_GETS = {
    "/notes": "notes:read",
    "/notes-any": "notes:read or notes:write",
    "/editors": "role editor",
    "/editors-or-readers": "role editor or role reader",
}


def events(db: Any, action: str | None = None) -> list[AuditEvent]:
    stmt = select(AuditEvent).order_by(AuditEvent.seq)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    return list(fresh(db).scalars(stmt))


def event_count(db: Any) -> int:
    return int(fresh(db).scalar(select(func.count()).select_from(AuditEvent)) or 0)


def signed_in(client: Any, make_user: Any, name: str = "alice", **kwargs: Any) -> User:
    user = make_user(name, **kwargs)
    assert login(client, name).status_code == 303
    return user


def assert_login_redirect(response: Any, expected_next: str | None) -> None:
    assert response.status_code == 303
    location = urlsplit(response.headers["Location"])
    assert location.path == "/auth/login"
    assert not location.netloc or location.netloc == "localhost"
    query = parse_qs(location.query)
    if expected_next is None:
        assert "next" not in query
    else:
        assert query.get("next") == [expected_next]


# -- anonymous callers --


@pytest.mark.parametrize("path", ["/private", *GUARDED_GETS])
def test_anonymous_browser_is_redirected_to_login_with_next(client, path):
    assert_login_redirect(client.get(path), path)


def test_anonymous_redirect_keeps_the_query_string_in_next(client):
    assert_login_redirect(client.get("/notes?page=2&q=x"), "/notes?page=2&q=x")


@pytest.mark.parametrize("path", ["/private", *GUARDED_GETS])
def test_anonymous_json_gets_401_login_required(client, path):
    response = client.get(path, headers=JSON)
    assert response.status_code == 401
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == "login_required"


def test_anonymous_post_with_csrf_is_refused_without_audit_of_the_action(client, db):
    before = event_count(db)
    response = post_json(client, "/notes", {})
    assert response.status_code == 401
    assert response.get_json()["error"] == "login_required"
    assert events(db, "notes.created") == []
    assert event_count(db) == before


def test_anonymous_denial_is_not_a_permission_denied_event(client, db):
    """Anonymous callers are asked to sign in; only signed-in denials are authz events."""
    client.get("/notes", headers=JSON)
    assert events(db, "authz.denied") == []


def test_public_view_is_open_to_anonymous(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "home"


# -- signed in, without the right --


def test_login_required_lets_any_signed_in_user_in(client, make_user):
    signed_in(client, make_user)
    response = client.get("/private")
    assert response.status_code == 200
    assert response.get_json() == {"user": "alice"}


@pytest.mark.parametrize("path", list(GUARDED_GETS))
def test_signed_in_without_right_gets_403_html_page(client, make_user, path):
    signed_in(client, make_user)
    response = client.get(path)
    assert response.status_code == 403
    assert response.mimetype == "text/html"
    body = response.get_data(as_text=True)
    assert "Not allowed" in body
    assert "Traceback" not in body


@pytest.mark.parametrize("path", list(GUARDED_GETS))
def test_signed_in_without_right_gets_403_json(client, make_user, path):
    signed_in(client, make_user)
    response = client.get(path, headers=JSON)
    assert response.status_code == 403
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == "permission_denied"


@pytest.mark.parametrize(("path", "requirement"), list(GUARDED_GETS.items()))
def test_denial_writes_one_authz_denied_event_naming_the_requirement(
    client, make_user, db, path, requirement
):
    user = signed_in(client, make_user)
    before = event_count(db)
    assert client.get(path, headers=JSON).status_code == 403
    assert event_count(db) == before + 1
    (denied,) = events(db, "authz.denied")
    assert denied.outcome == "denied"
    assert denied.actor_id == user.id
    assert denied.actor_type == "user"
    assert denied.ip == "127.0.0.1"
    assert '"requirement"' in denied.details
    assert requirement in denied.details


def test_denied_post_does_not_record_the_audited_action(client, make_user, db):
    signed_in(client, make_user, roles=["reader"], perms={"reader": ["notes:read"]})
    assert post(client, "/notes").status_code == 403
    assert events(db, "notes.created") == []
    (denied,) = events(db, "authz.denied")
    assert "notes:write" in denied.details


# -- wildcards, roles and "any of" --


@pytest.mark.parametrize("grant", ["notes:*", "*"])
def test_wildcard_grant_passes_every_matching_permission(client, make_user, grant):
    signed_in(client, make_user, roles=["wild"], perms={"wild": [grant]})
    assert client.get("/notes").status_code == 200
    assert client.get("/notes-any").status_code == 200
    assert post(client, "/notes").status_code == 201


def test_resource_wildcard_does_not_cover_another_resource(client, make_user):
    signed_in(client, make_user, roles=["wild"], perms={"wild": ["notes:*"]})
    assert client.get("/admin/", headers=JSON).status_code == 403
    assert client.get("/admin/audit", headers=JSON).status_code == 403


def test_wildcard_prefix_must_match_whole_segments(client, make_user):
    """``note:*`` must not cover ``notes:read``."""
    signed_in(client, make_user, roles=["wild"], perms={"wild": ["note:*"]})
    assert client.get("/notes", headers=JSON).status_code == 403


def test_superuser_wildcard_passes_admin_pages(client, make_user):
    signed_in(client, make_user, roles=["boss"], perms={"boss": ["*"]})
    assert client.get("/admin/", headers=JSON).status_code == 200


def test_exact_permission_does_not_imply_a_sibling(client, make_user):
    signed_in(client, make_user, roles=["reader"], perms={"reader": ["notes:read"]})
    assert client.get("/notes").status_code == 200
    assert post(client, "/notes").status_code == 403


def test_permissions_accepted_one_of_them_is_enough(client, make_user):
    signed_in(client, make_user, roles=["writer"], perms={"writer": ["notes:write"]})
    assert client.get("/notes-any").status_code == 200
    assert client.get("/notes").status_code == 403


def test_roles_required_needs_the_role(client, make_user):
    signed_in(client, make_user, roles=["reader"])
    assert client.get("/editors").status_code == 403


def test_roles_accepted_any_listed_role_is_enough(client, make_user):
    signed_in(client, make_user, roles=["reader"])
    assert client.get("/editors-or-readers").status_code == 200


def test_editor_passes_roles_required_and_roles_accepted(client, make_user):
    signed_in(client, make_user, roles=["editor"])
    assert client.get("/editors").status_code == 200
    assert client.get("/editors-or-readers").status_code == 200


def test_role_name_is_not_a_permission(client, make_user):
    """Holding the role ``editor`` grants no permission named like it, and vice versa."""
    signed_in(client, make_user, roles=["notes"], perms={"notes": ["editor:read"]})
    assert client.get("/editors", headers=JSON).status_code == 403
    assert client.get("/notes", headers=JSON).status_code == 403


def test_superuser_permission_does_not_imply_roles(client, make_user):
    """``roles_required`` checks role membership, not permissions: ``*`` is not a role."""
    signed_in(client, make_user, roles=["boss"], perms={"boss": ["*"]})
    assert client.get("/editors", headers=JSON).status_code == 403


# -- T03-like staleness: changes apply on the very next request --


def _grant(db: Any, username: str, role: str, perms: list[str]) -> None:
    with writing():
        session = fresh(db)
        role_obj = ensure_role(session, role, perms)
        user = session.scalar(select(User).where(User.username == username))
        rbac.grant_role(session, actor=SYSTEM, user=user, role=role_obj)
        session.commit()


def _revoke(db: Any, username: str, role: str) -> None:
    with writing():
        session = fresh(db)
        role_obj = rbac.find_role(session, role)
        user = session.scalar(select(User).where(User.username == username))
        rbac.revoke_role(session, actor=SYSTEM, user=user, role=role_obj)
        session.commit()


def test_T03_role_granted_in_db_applies_to_the_next_request(client, make_user, db):
    signed_in(client, make_user)
    assert client.get("/notes").status_code == 403  # grants are now cached for this user
    _grant(db, "alice", "reader", ["notes:read"])
    assert client.get("/notes").status_code == 200


def test_T03_role_revoked_in_db_is_denied_on_the_next_request(client, make_user, db):
    signed_in(client, make_user, roles=["reader"], perms={"reader": ["notes:read"]})
    assert client.get("/notes").status_code == 200  # grants are now cached for this user
    _revoke(db, "alice", "reader")
    assert client.get("/notes").status_code == 403


def test_T03_permission_removed_from_role_is_denied_on_the_next_request(client, make_user, db):
    signed_in(client, make_user, roles=["reader"], perms={"reader": ["notes:read"]})
    assert client.get("/notes").status_code == 200
    with writing():
        session = fresh(db)
        role = rbac.find_role(session, "reader")
        rbac.remove_permission(session, actor=SYSTEM, role=role, permission="notes:read")
        session.commit()
    assert client.get("/notes").status_code == 403


def test_T03_revoked_role_is_denied_for_roles_required(client, make_user, db):
    signed_in(client, make_user, roles=["editor"])
    assert client.get("/editors").status_code == 200
    _revoke(db, "alice", "editor")
    assert client.get("/editors").status_code == 403


# -- Z06: deny by default --


@pytest.fixture
def deny_app(config: dict[str, Any], request: pytest.FixtureRequest) -> Flask:
    """The test app with ``AAA_DENY_BY_DEFAULT`` on (set before the app is built)."""
    config["AAA_DENY_BY_DEFAULT"] = True
    return request.getfixturevalue("app")


def _is_static(endpoint: str) -> bool:
    return endpoint == "static" or endpoint.endswith(".static")


def _walk(app: Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, url) for every non-static rule; arguments are filled with 1."""
    out = []
    with app.test_request_context():
        for rule in app.url_map.iter_rules():
            if _is_static(rule.endpoint):
                continue
            methods = (rule.methods or set()) - {"HEAD", "OPTIONS"}
            method = "GET" if "GET" in methods else "POST" if "POST" in methods else min(methods)
            url = url_for(rule.endpoint, **dict.fromkeys(rule.arguments, 1))
            out.append((rule.endpoint, method, url))
    return out


def _is_public(app: Flask, endpoint: str) -> bool:
    return getattr(app.view_functions[endpoint], GUARD_ATTR, None) == "public"


def test_Z06_every_view_of_the_app_and_library_is_guarded(deny_app):
    assert unguarded_endpoints(deny_app) == []


def test_Z06_anonymous_walk_of_url_map_only_public_endpoints_answer(deny_app):
    """Every rule, called anonymously as a JSON client (POSTs with a valid CSRF header):
    @public ones answer 2xx, all others 401 login_required."""
    client = deny_app.test_client()
    token = csrf_token(client)
    walked = _walk(deny_app)
    assert len(walked) > 15
    public_seen = []
    for endpoint, method, url in walked:
        if method == "GET":
            response = client.get(url, headers=JSON)
        else:
            response = client.open(
                url, method=method, json={}, headers={**JSON, "X-CSRFToken": token}
            )
        if _is_public(deny_app, endpoint):
            public_seen.append(endpoint)
            assert 200 <= response.status_code < 300, (endpoint, response.status_code)
        else:
            assert response.status_code == 401, (endpoint, method, url, response.status_code)
            assert response.get_json()["error"] == "login_required", endpoint
    assert "index" in public_seen
    assert "aaa_auth.login" in public_seen


def test_Z06_anonymous_browser_walk_redirects_to_login(deny_app):
    client = deny_app.test_client()
    for endpoint, method, url in _walk(deny_app):
        if method != "GET" or _is_public(deny_app, endpoint):
            continue
        response = client.get(url)
        view = deny_app.view_functions[endpoint]
        token_only = "session" not in getattr(view, "_aaa_auth_methods", {"session"})
        # The JSON API, and views only scripts may call, answer JSON even to browsers.
        if endpoint.startswith("aaa_api.") or token_only:
            assert response.status_code == 401, endpoint
            assert response.get_json()["error"] == "login_required", endpoint
            continue
        assert response.status_code == 303, (endpoint, response.status_code)
        assert urlsplit(response.headers["Location"]).path == "/auth/login", endpoint


def _add_unguarded_route(app: Flask) -> None:
    @app.get("/unguarded")
    def unguarded() -> Any:
        return "open?"


def test_Z06_route_without_decorator_is_listed_and_refused_anonymously(deny_app):
    _add_unguarded_route(deny_app)
    assert unguarded_endpoints(deny_app) == ["unguarded"]
    client = deny_app.test_client()
    response = client.get("/unguarded", headers=JSON)
    assert response.status_code == 401
    assert response.get_json()["error"] == "login_required"
    assert_login_redirect(client.get("/unguarded"), "/unguarded")


def test_Z06_route_without_decorator_is_refused_when_signed_in(deny_app, request):
    _add_unguarded_route(deny_app)
    make_user = request.getfixturevalue("make_user")
    db = request.getfixturevalue("db")
    client = deny_app.test_client()
    user = signed_in(client, make_user, roles=["boss"], perms={"boss": ["*"]})
    response = client.get("/unguarded", headers=JSON)
    assert response.status_code == 403
    assert response.get_json()["error"] == "permission_denied"
    assert client.get("/unguarded").status_code == 403
    denied = events(db, "authz.denied")
    assert len(denied) == 2
    assert all(e.actor_id == user.id and "unguarded" in e.details for e in denied)


def test_Z06_without_deny_by_default_an_unguarded_route_is_open(app, client):
    """The control: the refusal above comes from the setting, not from the route."""
    _add_unguarded_route(app)
    assert unguarded_endpoints(app) == ["unguarded"]
    assert client.get("/unguarded").status_code == 200


# -- @audited --


def _writer(client: Any, make_user: Any) -> User:
    return signed_in(client, make_user, roles=["writer"], perms={"writer": ["notes:write"]})


def test_audited_success_records_exactly_one_success_event(client, make_user, db):
    user = _writer(client, make_user)
    before = event_count(db)
    response = post(client, "/notes")
    assert response.status_code == 201
    assert event_count(db) == before + 1
    (created,) = events(db, "notes.created")
    assert created.outcome == "success"
    assert created.actor_id == user.id
    assert created.ip == "127.0.0.1"


def test_audited_json_success_records_one_event(client, make_user, db):
    _writer(client, make_user)
    assert post_json(client, "/notes", {}).status_code == 201
    assert [e.outcome for e in events(db, "notes.created")] == ["success"]


def test_audited_error_status_records_one_failure_event_and_nothing_else(client, make_user, db):
    _writer(client, make_user)
    before = event_count(db)
    response = post(client, "/notes/fail")
    assert response.status_code == 422
    assert event_count(db) == before + 1
    (failed,) = events(db, "notes.created")
    assert failed.outcome == "failure"
    assert "422" in failed.details


@pytest.mark.parametrize("path", ["/notes", "/notes/fail"])
def test_audited_without_csrf_is_400_and_records_nothing(client, make_user, db, path):
    _writer(client, make_user)
    before = event_count(db)
    response = client.post(path, data={})
    assert response.status_code == 400
    assert client.post(path, json={}).status_code == 400
    assert client.post(path, data={"csrf_token": "forged"}).status_code == 400
    assert event_count(db) == before
    assert events(db, "notes.created") == []


def test_audited_events_chain_verifies(client, make_user, db):
    _writer(client, make_user)
    post(client, "/notes")
    post(client, "/notes/fail")
    report = audit_service.verify_chain(fresh(db))
    assert report.ok, report


# -- L08: the audit trail failing makes the action fail closed --


def _broken_hash(_fields: Any) -> str:
    raise OperationalError("INSERT INTO aaa_audit_events", {}, Exception("disk I/O error"))


def test_L08_audited_view_fails_closed_with_503_when_the_event_cannot_be_written(
    client, make_user, db, monkeypatch
):
    _writer(client, make_user)
    before = event_count(db)
    monkeypatch.setattr(audit_service, "event_hash", _broken_hash)
    response = post_json(client, "/notes", {})
    assert response.status_code == 503
    assert response.headers.get("Retry-After")
    assert response.get_json()["error"] == "service_unavailable"
    monkeypatch.undo()
    assert event_count(db) == before
    assert audit_service.verify_chain(fresh(db)).ok


def test_L08_denial_fails_closed_with_503_when_it_cannot_be_audited(
    client, make_user, db, monkeypatch
):
    signed_in(client, make_user)
    before = event_count(db)
    monkeypatch.setattr(audit_service, "event_hash", _broken_hash)
    response = client.get("/notes", headers=JSON)
    assert response.status_code == 503
    assert response.get_json()["error"] == "service_unavailable"
    assert response.headers.get("Retry-After")
    monkeypatch.undo()
    assert event_count(db) == before


@pytest.mark.parametrize(
    "error",
    [
        ProgrammingError("INSERT INTO aaa_audit_events", {}, Exception("permission denied")),
        IntegrityError("INSERT INTO aaa_audit_events", {}, Exception("duplicate key")),
    ],
)
def test_L08_any_failure_to_write_the_event_is_a_503_not_a_500(
    client, make_user, db, monkeypatch, caplog, error
):
    """Not only an unreachable database: a revoked grant or a broken constraint on the
    trail also fails the action closed with a 503, logged, and nothing is committed."""
    _writer(client, make_user)
    before = event_count(db)

    def broken(_fields: Any) -> str:
        raise error

    monkeypatch.setattr(audit_service, "event_hash", broken)
    response = post_json(client, "/notes", {})
    assert response.status_code == 503
    assert response.headers.get("Retry-After")
    assert "audit trail unavailable" in caplog.text
    monkeypatch.undo()
    assert event_count(db) == before


def test_V01_audited_view_losing_the_database_answers_503_and_records_nothing(
    client, make_user, db, monkeypatch
):
    """A connection-level error inside an ``@audited`` view goes to the 503 handler as is:
    the decorator does not try to write a failure event to a database that is gone (under
    load that attempt met the dead connection again and answered 500)."""
    from flask_aaa.web import decorators

    _writer(client, make_user)
    before = event_count(db)

    def lost(*_args: Any, **_kwargs: Any) -> Any:
        raise OperationalError("INSERT INTO notes", {}, Exception("server closed the connection"))

    monkeypatch.setattr(decorators, "make_response", lost)
    response = post_json(client, "/notes", {})
    assert response.status_code == 503
    assert response.headers.get("Retry-After")
    monkeypatch.undo()
    assert event_count(db) == before
