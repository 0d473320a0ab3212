"""Passkey (WebAuthn) endpoints and pages, registered only with ``AAA_PASSKEYS``.

Three ceremonies, each an *options* POST then a *verify* POST, all JSON and CSRF-protected
(the page's script sends ``X-CSRFToken`` from the ``csrf-token`` meta tag):

* sign in with a passkey, as the only step (``/auth/passkey``);
* the second step of a password sign-in (``/auth/2fa/passkey``), for a pending sign-in;
* add a passkey to the signed-in account (``/account/passkeys``), after a recent sign-in.

Plus the account's list of passkeys, where they are renamed and removed. The logic is in
:mod:`flask_aaa.services.passkeys`; a view parses, calls it, commits, answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from flask import Blueprint, Response, flash, jsonify, redirect, render_template, request, url_for
from flask_limiter.util import get_remote_address

from ..errors import AuthenticationFailed, Conflict, InvalidInput, PasskeyRejected
from ..models import Passkey, User
from ..services import accounts, passkeys, sessions
from ..services.actors import Actor
from .context import db_session, login_session, request_facts, signed_in_user, state
from .decorators import fresh_login_required, login_required, public
from .forms import MAX_JSON_DEPTH, json_depth, read_fields
from .mfa import pending_required
from .security import error_response, safe_next, wants_json
from .signin import browser_id, count_pending_failure, finish_login, home, pending, pending_user

#: A view decorator (the rate limits).
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def read_body() -> dict[str, Any]:
    """The request's JSON object (the ceremonies speak JSON only); 400 for anything else."""
    if not request.is_json:
        raise InvalidInput({"body": "Send a JSON object (Content-Type: application/json)."})
    if json_depth(request.get_data(cache=True)) > MAX_JSON_DEPTH:
        raise InvalidInput({"body": "Send a JSON object."})
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
    if not isinstance(body, dict):
        raise InvalidInput({"body": "Send a JSON object."})
    return body


def passkey_json(passkey: Passkey) -> dict[str, Any]:
    return {
        "id": passkey.id,
        "name": passkey.name,
        "created_at": passkey.created_at.isoformat(),
        "last_used_at": passkey.last_used_at.isoformat() if passkey.last_used_at else None,
        "backed_up": passkey.backed_up,
        "transports": passkey.transports.split(),
    }


def with_redirect(response: Response, nxt: str | None) -> Response:
    """A JSON sign-in answer also says where the page should go next."""
    if response.is_json:
        data = response.get_json()
        data["redirect"] = safe_next(nxt) or home()
        response.set_data(json.dumps(data))
    return response


def create_blueprint() -> Blueprint:
    st = state()
    settings = st.settings
    limiter = st.limiter
    rp = passkeys.RelyingParty.from_settings(settings)
    auth_prefix = settings.auth_url_prefix.rstrip("/")
    account_prefix = settings.account_url_prefix.rstrip("/")
    bp = Blueprint("aaa_passkeys", __name__)

    def user_key() -> str:
        return f"user:{signed_in_user().id}"

    def per_ip() -> Decorator:
        limit: Decorator = limiter.limit(
            lambda: settings.login_limit_per_ip, key_func=get_remote_address
        )
        return limit

    def per_user() -> Decorator:
        limit: Decorator = limiter.limit(lambda: settings.change_password_limit, key_func=user_key)
        return limit

    # -- signing in with a passkey alone --

    @bp.post(f"{auth_prefix}/passkey/options", endpoint="login_options")
    @public
    @per_ip()
    def login_options() -> Any:
        """A challenge for a discoverable-passkey sign-in (no username asked)."""
        db = db_session()
        options = passkeys.authentication_options(db, rp=rp, browser=browser_id())
        db.commit()
        return jsonify({"publicKey": options})

    @bp.post(f"{auth_prefix}/passkey", endpoint="login")
    @public
    @per_ip()
    def login() -> Any:
        """The authenticator's answer signs the user in (``auth.login.succeeded``, method
        ``passkey``). The account policy of every sign-in applies: disabled, locked,
        unconfirmed and service accounts are refused."""
        body = read_body()
        credential = passkeys.credential_of(body)
        nxt = safe_next(read_fields(["next"]).get("next"))
        remember = body.get("remember") is True
        db = db_session()
        facts = request_facts()
        taken = passkeys.spend_challenge(
            db,
            credential,
            purpose=passkeys.LOGIN,
            browser=browser_id(),
            actor=Actor.anonymous(),
            target=None,
            facts=facts,
        )
        db.commit()  # the challenge is spent whatever the answer turns out to be
        user, passkey = passkeys.authenticate(db, credential, taken=taken, rp=rp, facts=facts)
        try:
            accounts.check_may_sign_in(db, user, settings=settings, facts=facts, method="passkey")
        except AuthenticationFailed as exc:
            raise PasskeyRejected(exc.reason) from None
        response = finish_login(
            user, remember=remember, nxt=nxt, details={"method": "passkey", "passkey": passkey.id}
        )
        return with_redirect(response, nxt)

    # -- a passkey as the second step of a password sign-in --

    @bp.post(f"{auth_prefix}/2fa/passkey/options", endpoint="mfa_options")
    @pending_required
    @per_ip()
    def mfa_options() -> Any:
        """A challenge for the pending user's own passkeys."""
        user = cast("User", pending_user())
        db = db_session()
        options = passkeys.authentication_options(db, rp=rp, browser=browser_id(), user=user)
        db.commit()
        return jsonify({"publicKey": options})

    @bp.post(f"{auth_prefix}/2fa/passkey", endpoint="mfa")
    @pending_required
    @per_ip()
    def mfa() -> Any:
        """One of the pending user's passkeys completes the sign-in (``mfa``: ``passkey``).
        Failures count towards the pending sign-in's attempts, as wrong codes do."""
        user = cast("User", pending_user())
        data = pending() or {}
        body = read_body()
        credential = passkeys.credential_of(body)
        db = db_session()
        facts = request_facts()
        taken = passkeys.spend_challenge(
            db,
            credential,
            purpose=passkeys.MFA,
            browser=browser_id(),
            actor=Actor.anonymous(),
            target=user,
            facts=facts,
        )
        db.commit()
        try:
            _, passkey = passkeys.authenticate(
                db, credential, taken=taken, rp=rp, facts=facts, expected_user=user
            )
        except PasskeyRejected:
            if not count_pending_failure():
                return error_response(
                    401, "login_required", "Too many failed attempts. Please sign in again."
                )
            raise
        nxt = data.get("next")
        response = finish_login(
            user,
            remember=bool(data.get("remember")),
            nxt=nxt,
            details={"mfa": "passkey", "passkey": passkey.id},
        )
        return with_redirect(response, nxt)

    # -- the account's passkeys --

    @bp.get(f"{account_prefix}/passkeys", endpoint="index")
    @login_required
    def index() -> Any:
        """The user's passkeys, with forms to add, rename and remove them."""
        user = signed_in_user()
        own = passkeys.list_for(db_session(), user)
        record = login_session()
        fresh = record is not None and sessions.is_fresh(record, settings=settings)
        if wants_json():
            return jsonify({"passkeys": [passkey_json(p) for p in own], "fresh": fresh})
        return render_template(
            "aaa/passkeys.html",
            passkeys=own,
            fresh=fresh,
            limit=passkeys.MAX_PER_USER,
            origin=rp.origin,
            errors={},
        )

    @bp.post(f"{account_prefix}/passkeys/options", endpoint="register_options")
    @fresh_login_required
    @per_user()
    def register_options() -> Any:
        """A challenge to create a passkey for the signed-in user."""
        user = signed_in_user()
        db = db_session()
        options = passkeys.registration_options(db, user, rp=rp, browser=browser_id())
        db.commit()
        return jsonify({"publicKey": options})

    @bp.post(f"{account_prefix}/passkeys", endpoint="register")
    @fresh_login_required
    @per_user()
    def register() -> Any:
        """The authenticator's answer adds the passkey (``account.passkey.added``)."""
        user = signed_in_user()
        body = read_body()
        credential = passkeys.credential_of(body)
        db = db_session()
        fallback = f"Passkey {passkeys.count_for(db, user) + 1}"
        name = passkeys.clean_name(read_fields(["name"]).get("name"), fallback=fallback)
        facts = request_facts()
        taken = passkeys.spend_challenge(
            db,
            credential,
            purpose=passkeys.REGISTER,
            browser=browser_id(),
            actor=Actor.of(user),
            target=user,
            facts=facts,
        )
        db.commit()
        passkey = passkeys.register(
            db, user, credential, taken=taken, rp=rp, name=name, facts=facts
        )
        db.commit()
        flash(f"Passkey {passkey.name!r} added.", "success")
        return jsonify({"passkey": passkey_json(passkey)}), 201

    @bp.post(
        f"{account_prefix}/passkeys/<int(max=2147483647):passkey_id>/rename", endpoint="rename"
    )
    @login_required
    @per_user()
    def rename(passkey_id: int) -> Any:
        user = signed_in_user()
        db = db_session()
        try:
            fields = read_fields(["name"], required=["name"])
            passkey = passkeys.rename(
                db, user, passkey_id, name=fields["name"], facts=request_facts()
            )
        except InvalidInput as exc:
            db.rollback()
            if wants_json():
                raise
            return _page_error(user, exc.errors.get("name") or exc.message, status=400)
        db.commit()
        if wants_json():
            return jsonify({"passkey": passkey_json(passkey)})
        flash("Passkey renamed.", "success")
        return redirect(url_for("aaa_passkeys.index"), 303)

    @bp.post(
        f"{account_prefix}/passkeys/<int(max=2147483647):passkey_id>/remove", endpoint="remove"
    )
    @fresh_login_required
    @per_user()
    def remove(passkey_id: int) -> Any:
        """Remove a passkey: needs a recent sign-in, and is refused for the account's only
        way in."""
        user = signed_in_user()
        db = db_session()
        try:
            passkey = passkeys.remove(db, user, passkey_id, facts=request_facts())
        except Conflict as exc:
            if wants_json():
                raise
            return _page_error(user, exc.message, status=409)
        db.commit()
        if wants_json():
            return jsonify({"ok": True})
        flash(f"Passkey {passkey.name!r} removed.", "success")
        return redirect(url_for("aaa_passkeys.index"), 303)

    def _page_error(user: User, message: str, *, status: int) -> Response:
        record = login_session()
        page = render_template(
            "aaa/passkeys.html",
            passkeys=passkeys.list_for(db_session(), user),
            fresh=record is not None and sessions.is_fresh(record, settings=settings),
            limit=passkeys.MAX_PER_USER,
            origin=rp.origin,
            errors={"passkeys": message},
        )
        return Response(page, status=status)

    return bp
