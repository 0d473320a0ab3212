"""API tokens in the browser (the user's page, the admin console) and in the CLI."""

from __future__ import annotations

import re

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from flask_aaa.models import ApiToken, AuditEvent, User
from tests.conftest import PASSWORD, form_token, fresh, login

TOKEN_RE = re.compile(r"aaa_pat_[0-9A-Za-z]{46}")


def mint_form(client, **fields):
    token = form_token(client.get("/account/tokens").get_data(as_text=True))
    data = {"name": "script", "expires_in_days": "30", "csrf_token": token, **fields}
    return client.post("/account/tokens", data=data)


@pytest.fixture
def reader(make_user):
    return make_user("rita", roles=["reader"], perms={"reader": ["notes:read"]})


def test_a_user_mints_a_token_sees_it_once_and_it_works(client, reader, db):
    login(client, "rita")
    response = mint_form(client, scopes=["notes:read", "account:read"])
    assert response.status_code == 201
    html = response.get_data(as_text=True)
    secret = TOKEN_RE.search(html).group(0)
    assert response.headers["Cache-Control"] == "no-store"
    listing = client.get("/account/tokens").get_data(as_text=True)
    assert secret not in listing
    assert secret[:12] in listing  # the hint
    api = client.application.test_client()
    ok = api.get("/api/notes", headers={"Authorization": f"Bearer {secret}"})
    assert ok.status_code == 200
    listing = client.get("/account/tokens").get_data(as_text=True)
    assert "never" not in listing.split("<tbody>")[1].split("</tbody>")[0]  # last use shown


def test_the_form_offers_the_self_scopes_and_what_the_user_holds(client, reader):
    login(client, "rita")
    html = client.get("/account/tokens").get_data(as_text=True)
    for scope in ("account:read", "account:write", "notes:read"):
        assert f'value="{scope}"' in html
    assert 'value="notes:write"' not in html


def test_t02_a_scope_beyond_the_users_rights_is_refused(client, reader, db):
    login(client, "rita")
    response = mint_form(client, scopes=["notes:read"], extra_scopes="notes:write")
    assert response.status_code == 403
    assert fresh(db).scalars(select(ApiToken)).all() == []


def test_bad_input_re_renders_the_form_with_errors(client, reader, db):
    login(client, "rita")
    response = mint_form(client, name="", scopes=[])
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "Give the token a name" in html or "printable" in html
    response = mint_form(client, scopes=["notes:read"], expires_in_days="9999")
    assert response.status_code == 400
    assert "between 1 and" in response.get_data(as_text=True)
    assert fresh(db).scalars(select(ApiToken)).all() == []


def test_z05_minting_needs_a_csrf_token(client, reader, db):
    login(client, "rita")
    response = client.post("/account/tokens", data={"name": "x", "scopes": "notes:read"})
    assert response.status_code == 400
    assert client.get("/account/tokens").status_code == 200
    assert fresh(db).scalars(select(ApiToken)).all() == []


def test_minting_needs_a_recent_password(client, reader, db):
    with freeze_time("2030-01-01 10:00") as clock:
        login(client, "rita")
        clock.tick(600)  # past the re-authentication window, within the idle timeout
        client.get("/account/tokens")
        response = mint_form(client, scopes=["notes:read"])
        assert response.status_code == 303
        assert "/account/reauth" in response.headers["Location"]
    assert fresh(db).scalars(select(ApiToken)).all() == []


def test_m04_a_pending_second_factor_cannot_mint(client, make_user, db):
    import pyotp

    from flask_aaa.db import writing

    user = make_user("moe", roles=["reader"], perms={"reader": ["notes:read"]})
    with writing():
        row = fresh(db).get(User, user.id)
        from flask_aaa.db import utcnow

        row.totp_secret = pyotp.random_base32()
        row.mfa_enabled_at = utcnow()
        db.commit()
    login(client, "moe")  # password step passed; the code is still due
    response = client.post("/account/tokens", data={"name": "x", "scopes": "notes:read"})
    assert response.status_code in (302, 303, 400, 401)
    assert fresh(db).scalars(select(ApiToken)).all() == []


def test_a_user_revokes_their_token_but_not_someone_elses(client, reader, make_user, db):
    make_user("other", roles=["reader"])
    login(client, "rita")
    mint_form(client, scopes=["notes:read"])
    token = fresh(db).scalars(select(ApiToken)).one()
    other = client.application.test_client()
    login(other, "other")
    page = other.get("/account/tokens").get_data(as_text=True)
    response = other.post(
        f"/account/tokens/{token.id}/revoke", data={"csrf_token": form_token(page)}
    )
    assert response.status_code == 404
    assert fresh(db).get(ApiToken, token.id).revoked_at is None
    page = client.get("/account/tokens").get_data(as_text=True)
    response = client.post(
        f"/account/tokens/{token.id}/revoke", data={"csrf_token": form_token(page)}
    )
    assert response.status_code == 303
    assert fresh(db).get(ApiToken, token.id).revoked_at is not None
    assert [e.action for e in db.scalars(select(AuditEvent)) if e.action.startswith("token.")] == [
        "token.created",
        "token.revoked",
    ]


def test_a_token_cannot_open_the_token_page(client, reader, db):
    login(client, "rita")
    secret = TOKEN_RE.search(
        mint_form(client, scopes=["account:read", "account:write"]).get_data(as_text=True)
    ).group(0)
    api = client.application.test_client()
    response = api.get("/account/tokens", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 401
    assert response.get_json()["error"] == "token_not_accepted"


# -- the admin console --


def test_an_admin_creates_a_service_account_mints_and_revokes_its_token(client, admin, db):
    from flask_aaa.db import writing
    from flask_aaa.services.actors import Actor
    from tests.conftest import ensure_role

    with writing():
        ensure_role(fresh(db), "reader", ["notes:read"])
        db.commit()
    login(client, "root")
    page = client.get("/admin/").get_data(as_text=True)
    assert "New service account" in page
    response = client.post(
        "/admin/service-accounts",
        data={"name": "ci-bot", "role": "reader", "csrf_token": form_token(page)},
    )
    assert response.status_code == 303
    bot = fresh(db).scalar(select(User).where(User.username == "ci-bot"))
    assert bot.kind == "service" and bot.password_hash is None
    page = client.get(f"/admin/users/{bot.id}").get_data(as_text=True)
    response = client.post(
        f"/admin/users/{bot.id}/tokens",
        data={"name": "deploy", "scopes": "notes:read", "csrf_token": form_token(page)},
    )
    assert response.status_code == 201
    secret = TOKEN_RE.search(response.get_data(as_text=True)).group(0)
    api = client.application.test_client()
    assert api.get("/api/notes", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    # Scopes beyond the service account's roles are refused.
    page = client.get(f"/admin/users/{bot.id}").get_data(as_text=True)
    refused = client.post(
        f"/admin/users/{bot.id}/tokens",
        data={"name": "wide", "scopes": "notes:write", "csrf_token": form_token(page)},
    )
    assert refused.status_code == 400
    token = fresh(db).scalars(select(ApiToken)).one()
    response = client.post(
        f"/admin/tokens/{token.id}/revoke", data={"csrf_token": form_token(page)}
    )
    assert response.status_code == 303
    assert api.get("/api/notes", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert Actor  # imported for symmetry with the service tests


def test_admins_mint_only_for_service_accounts(client, admin, reader):
    login(client, "root")
    page = client.get(f"/admin/users/{reader.id}").get_data(as_text=True)
    response = client.post(
        f"/admin/users/{reader.id}/tokens",
        data={"name": "x", "scopes": "notes:read", "csrf_token": form_token(page)},
    )
    assert response.status_code == 400


def test_z07_a_plain_user_cannot_use_the_admin_token_pages(client, reader, admin, db):
    login(client, "rita")
    token = form_token(client.get("/account/tokens").get_data(as_text=True))
    for url in (
        "/admin/service-accounts",
        f"/admin/users/{admin.id}/tokens",
        "/admin/tokens/1/revoke",
    ):
        assert client.post(url, data={"csrf_token": token, "name": "x"}).status_code == 403


def test_service_accounts_cannot_sign_in(client, admin, db):
    from flask_aaa.db import writing
    from flask_aaa.services import accounts
    from flask_aaa.services.actors import Actor

    with writing():
        accounts.create_service_account(fresh(db), actor=Actor.system("t"), name="svc")
        db.commit()
    response = login(client, "svc", PASSWORD)
    assert response.status_code == 401


# -- the CLI --


def test_cli_mints_lists_and_revokes_tokens(app, db, reader):
    runner = app.test_cli_runner()
    made = runner.invoke(args=["aaa", "create-service-account", "bot", "--role", "reader"])
    assert made.exit_code == 0, made.output
    minted = runner.invoke(
        args=["aaa", "create-token", "bot", "--name", "deploy", "--scope", "notes:read"]
    )
    assert minted.exit_code == 0, minted.output
    secret = TOKEN_RE.search(minted.stdout).group(0)
    listed = runner.invoke(args=["aaa", "list-tokens", "bot"])
    assert "active\tdeploy\tnotes:read" in listed.output
    assert secret not in listed.output
    api = app.test_client()
    assert api.get("/api/notes", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    token_id = fresh(db).scalars(select(ApiToken)).one().id
    revoked = runner.invoke(args=["aaa", "revoke-token", str(token_id)])
    assert "Revoked" in revoked.output
    again = runner.invoke(args=["aaa", "revoke-token", str(token_id)])
    assert "already revoked" in again.output
    assert api.get("/api/notes", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    changes = {"token.created", "token.revoked"}
    actors = {e.actor_name for e in fresh(db).scalars(select(AuditEvent)) if e.action in changes}
    assert actors and all(name.startswith("cli:") for name in actors)


def test_cli_refuses_scopes_the_owner_lacks_and_unknown_tokens(app, reader):
    runner = app.test_cli_runner()
    wide = runner.invoke(
        args=["aaa", "create-token", "rita", "--name", "x", "--scope", "notes:write"]
    )
    assert wide.exit_code == 1
    assert "does not hold" in wide.output
    missing = runner.invoke(args=["aaa", "revoke-token", "999"])
    assert missing.exit_code == 1
