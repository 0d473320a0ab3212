"""``flask aaa ...``: the same services as the web pages, for operators with a shell.

Every change is audited with the actor ``cli:<os user>``. Errors print a one-line message
and exit with status 1; nothing is half-done (each command is one transaction).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import getpass
import json
import secrets
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click
from flask.cli import AppGroup
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from . import migrations
from .compat.cli import migrate_flask_user
from .db import writing
from .errors import AAAError, NotFound
from .models import Role, User
from .services import accounts, audit, lockout, mfa, rbac, sessions, tokens
from .services.actors import Actor, RequestFacts
from .web.context import state
from .web.forms import parse_time

F = TypeVar("F", bound=Callable[..., Any])

aaa_cli = AppGroup(
    "aaa", help="Flask-AAA: users, roles, permissions, the audit trail and the database."
)
aaa_cli.add_command(migrate_flask_user)


def _actor() -> Actor:
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Actor.system(f"cli:{who}")


def _facts() -> RequestFacts:
    return RequestFacts.for_cli(request_id=f"cli-{secrets.token_hex(6)}")


def _db() -> Session:
    return state().db.session()


def _guarded(command: F, *, write: bool) -> F:
    """Run a command (as one write transaction when ``write``); turn library and database
    errors into a one-line message and exit status 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        db = _db()
        try:
            with writing() if write else contextlib.nullcontext():
                result = command(*args, **kwargs)
                if write:
                    db.commit()
        except SQLAlchemyError as exc:
            db.rollback()
            outcome = "nothing was changed" if write else "is the database up to date?"
            raise click.ClickException(
                f"database error ({type(exc).__name__}); {outcome}"
            ) from None
        except AAAError as exc:
            db.rollback()
            detail = ""
            errors = getattr(exc, "errors", None)
            if errors:
                detail = " (" + "; ".join(f"{k}: {v}" for k, v in errors.items()) + ")"
            raise click.ClickException(f"{exc.message}{detail}") from None
        return result

    return cast("F", wrapper)


def transactional(command: F) -> F:
    """A command that changes state: one transaction, committed at the end."""
    return _guarded(command, write=True)


def reading(command: F) -> F:
    """A command that only reads."""
    return _guarded(command, write=False)


def _user(name: str) -> User:
    user = accounts.find_user(_db(), state().settings, name)
    if user is None:
        raise NotFound(f"no user {name!r}")
    return user


# -- database --


@aaa_cli.group("db")
def db_group() -> None:
    """Create or upgrade Flask-AAA's tables (Alembic, own version table)."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@transactional
def db_upgrade(revision: str) -> None:
    """Apply the shipped migrations to the app's database."""
    engine = state().db.engine
    migrations.upgrade(engine, revision)
    click.echo(f"Flask-AAA tables are at revision {migrations.current(engine)}.")


@db_group.command("current")
@reading
def db_current() -> None:
    """Show the revision the database is at, and the newest one shipped."""
    engine = state().db.engine
    click.echo(
        f"current: {migrations.current(engine) or '(none)'}  head: {migrations.head(engine)}"
    )


# -- users --


@aaa_cli.command("create-user")
@click.argument("login")
@click.option("--email", help="Email address (required when email login is enabled).")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Prompted when omitted.",
)
@click.option("--role", "roles", multiple=True, help="Role to grant (repeatable).")
@transactional
def create_user(login: str, email: str | None, password: str, roles: tuple[str, ...]) -> None:
    """Create an account LOGIN (a username; an email address when usernames are disabled)."""
    st = state()
    db = _db()
    if st.settings.enable_username:
        username = login
    else:
        username, email = None, email or login
    role_objs = [rbac.find_role(db, name) for name in roles]
    user = accounts.create_user(
        db,
        actor=_actor(),
        settings=st.settings,
        passwords=st.passwords,
        username=username,
        email=email,
        password=password,
        roles=role_objs,
        facts=_facts(),
    )
    click.echo(f"Created user {user.label} (#{user.id}).")


@aaa_cli.command("list-users")
@reading
def list_users() -> None:
    """List every account with its roles and state."""
    rows = _db().scalars(select(User).order_by(User.id).options(selectinload(User.roles)))
    for user in rows:
        flag = "" if user.active else "  [disabled]"
        roles = ",".join(r.name for r in user.roles) or "-"
        click.echo(f"#{user.id}\t{user.username or '-'}\t{user.email or '-'}\t{roles}{flag}")


@aaa_cli.command("disable")
@click.argument("user")
@transactional
def disable(user: str) -> None:
    """Disable USER and end all of their sessions."""
    subject = _user(user)
    changed = accounts.set_active(_db(), actor=_actor(), user=subject, active=False, facts=_facts())
    click.echo(
        f"Disabled {subject.label}." if changed else f"{subject.label} was already disabled."
    )


@aaa_cli.command("enable")
@click.argument("user")
@transactional
def enable(user: str) -> None:
    """Enable USER again."""
    subject = _user(user)
    changed = accounts.set_active(_db(), actor=_actor(), user=subject, active=True, facts=_facts())
    click.echo(f"Enabled {subject.label}." if changed else f"{subject.label} was already enabled.")


@aaa_cli.command("unlock")
@click.argument("user")
@transactional
def unlock(user: str) -> None:
    """Lift USER's lockout (and reset their count of failed passwords)."""
    subject = _user(user)
    changed = lockout.unlock(_db(), actor=_actor(), user=subject, facts=_facts())
    click.echo(f"Unlocked {subject.label}." if changed else f"{subject.label} was not locked.")


@aaa_cli.command("reset-2fa")
@click.argument("user")
@transactional
def reset_2fa(user: str) -> None:
    """Turn USER's two-factor authentication off (lost device) and sign them out everywhere."""
    subject = _user(user)
    changed = mfa.reset_by_admin(_db(), actor=_actor(), user=subject, facts=_facts())
    click.echo(
        f"Two-factor authentication of {subject.label} is off."
        if changed
        else f"{subject.label} had no two-factor authentication."
    )


@aaa_cli.command("revoke-sessions")
@click.argument("user", required=False)
@click.option("--all", "everyone", is_flag=True, help="Sign every user out, everywhere.")
@transactional
def revoke_sessions(user: str | None, everyone: bool) -> None:
    """Sign USER (or, with --all, every user) out everywhere: sessions and remember-me
    cookies."""
    if everyone == (user is not None):
        raise click.UsageError("name one USER, or give --all")
    if everyone:
        ended = sessions.revoke_everyone(_db(), actor=_actor(), facts=_facts())
        click.echo(f"Signed everyone out of {ended} session(s).")
        return
    subject = _user(cast(str, user))
    ended = sessions.revoke_all_by_admin(_db(), actor=_actor(), user=subject, facts=_facts())
    click.echo(f"Signed {subject.label} out of {ended} session(s).")


# -- service accounts and API tokens --


@aaa_cli.command("create-service-account")
@click.argument("name")
@click.option("--role", "roles", multiple=True, help="Role to grant (repeatable).")
@transactional
def create_service_account(name: str, roles: tuple[str, ...]) -> None:
    """Create NAME, a non-human account that acts only through API tokens."""
    db = _db()
    user = accounts.create_service_account(
        db,
        actor=_actor(),
        name=name,
        roles=[rbac.find_role(db, role) for role in roles],
        facts=_facts(),
    )
    click.echo(f"Created service account {user.label} (id {user.id}).")


@aaa_cli.command("create-token")
@click.argument("user")
@click.option("--name", required=True, help="What the token is for.")
@click.option(
    "--scope", "scopes", multiple=True, required=True, help="Permission it may use (repeatable)."
)
@click.option("--days", type=int, default=None, help="Lifetime in days (default: the setting).")
@transactional
def create_token(user: str, name: str, scopes: tuple[str, ...], days: int | None) -> None:
    """Mint an API token for USER and print it once: it is stored only as a hash."""
    subject = _user(user)
    minted = tokens.mint(
        _db(),
        subject,
        actor=_actor(),
        name=name,
        scopes=scopes,
        days=days,
        settings=state().settings,
        facts=_facts(),
    )
    click.echo(
        f"Token {minted.token.name!r} for {subject.label} (id {minted.token.id}, expires "
        f"{minted.token.expires_at:%Y-%m-%d}). It is shown only now:",
        err=True,
    )
    click.echo(minted.secret)


@aaa_cli.command("list-tokens")
@click.argument("user")
@reading
def list_tokens(user: str) -> None:
    """USER's API tokens: id, state, name, scopes, expiry, last use (never the secrets)."""
    for token in tokens.tokens_of(_db(), _user(user)):
        used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
        click.echo(
            f"{token.id}\t{tokens.status(token)}\t{token.name}\t{' '.join(token.scope_list)}"
            f"\texpires {token.expires_at:%Y-%m-%d}\tlast used {used}"
        )


@aaa_cli.command("revoke-token")
@click.argument("token_id", type=click.IntRange(1, 2_147_483_647))
@transactional
def revoke_token(token_id: int) -> None:
    """Revoke the API token TOKEN_ID (see list-tokens)."""
    token = tokens.get(_db(), token_id)
    if tokens.revoke(_db(), token, actor=_actor(), facts=_facts()):
        click.echo(f"Revoked token {token_id} ({token.name}).")
    else:
        click.echo(f"Token {token_id} was already revoked.")


# -- roles and permissions --


@aaa_cli.command("create-role")
@click.argument("name")
@click.option("--description", default="", help="What the role is for.")
@click.option(
    "--permission", "permissions", multiple=True, help="Permission to give the role (repeatable)."
)
@transactional
def create_role(name: str, description: str, permissions: tuple[str, ...]) -> None:
    """Create role NAME, optionally with permissions."""
    db = _db()
    role = rbac.create_role(db, actor=_actor(), name=name, description=description, facts=_facts())
    for permission in permissions:
        rbac.add_permission(db, actor=_actor(), role=role, permission=permission, facts=_facts())
    click.echo(f"Created role {role.name}.")


@aaa_cli.command("list-roles")
@reading
def list_roles() -> None:
    """List roles: name, own permissions, and the roles each inherits from."""
    rows = _db().scalars(
        select(Role)
        .order_by(Role.name)
        .options(selectinload(Role.permissions), selectinload(Role.parents))
    )
    for role in rows:
        line = f"{role.name}\t{' '.join(p.name for p in role.permissions) or '-'}"
        if role.parents:
            line += f"\tinherits {' '.join(r.name for r in role.parents)}"
        click.echo(line)


@aaa_cli.command("grant-role")
@click.argument("user")
@click.argument("role")
@transactional
def grant_role(user: str, role: str) -> None:
    """Give ROLE to USER (username, email or #id)."""
    subject = _user(user)
    changed = rbac.grant_role(
        _db(), actor=_actor(), user=subject, role=rbac.find_role(_db(), role), facts=_facts()
    )
    click.echo(
        f"Granted {role} to {subject.label}." if changed else f"{subject.label} already has {role}."
    )


@aaa_cli.command("revoke-role")
@click.argument("user")
@click.argument("role")
@transactional
def revoke_role(user: str, role: str) -> None:
    """Take ROLE from USER."""
    subject = _user(user)
    changed = rbac.revoke_role(
        _db(), actor=_actor(), user=subject, role=rbac.find_role(_db(), role), facts=_facts()
    )
    click.echo(
        f"Revoked {role} from {subject.label}."
        if changed
        else f"{subject.label} does not have {role}."
    )


@aaa_cli.command("grant-permission")
@click.argument("role")
@click.argument("permission")
@transactional
def grant_permission(role: str, permission: str) -> None:
    """Give PERMISSION (resource:action) to ROLE."""
    changed = rbac.add_permission(
        _db(),
        actor=_actor(),
        role=rbac.find_role(_db(), role),
        permission=permission,
        facts=_facts(),
    )
    click.echo(f"Added {permission} to {role}." if changed else f"{role} already has {permission}.")


@aaa_cli.command("revoke-permission")
@click.argument("role")
@click.argument("permission")
@transactional
def revoke_permission(role: str, permission: str) -> None:
    """Take PERMISSION from ROLE."""
    changed = rbac.remove_permission(
        _db(),
        actor=_actor(),
        role=rbac.find_role(_db(), role),
        permission=permission,
        facts=_facts(),
    )
    click.echo(
        f"Removed {permission} from {role}." if changed else f"{role} does not have {permission}."
    )


@aaa_cli.command("inherit")
@click.argument("role")
@click.argument("parent")
@click.option("--remove", is_flag=True, help="Stop inheriting instead.")
@transactional
def inherit(role: str, parent: str, remove: bool) -> None:
    """Make ROLE inherit every permission of PARENT (or, with --remove, stop)."""
    db = _db()
    child, ancestor = rbac.find_role(db, role), rbac.find_role(db, parent)
    change = rbac.remove_parent if remove else rbac.add_parent
    changed = change(db, actor=_actor(), role=child, parent=ancestor, facts=_facts())
    if remove:
        click.echo(f"{role} no longer inherits from {parent}." if changed else "Nothing to do.")
    else:
        click.echo(f"{role} now inherits from {parent}." if changed else "Nothing to do.")


@aaa_cli.command("delete-role")
@click.argument("role")
@transactional
def delete_role(role: str) -> None:
    """Delete ROLE: its users lose it, roles inheriting from it stop doing so."""
    rbac.delete_role(_db(), actor=_actor(), role=rbac.find_role(_db(), role), facts=_facts())
    click.echo(f"Deleted role {role}.")


@aaa_cli.command("grant-user-permission")
@click.argument("user")
@click.argument("permission")
@transactional
def grant_user_permission(user: str, permission: str) -> None:
    """Give PERMISSION to USER directly, outside any role."""
    subject = _user(user)
    changed = rbac.grant_permission(
        _db(), actor=_actor(), user=subject, permission=permission, facts=_facts()
    )
    click.echo(
        f"Granted {permission} to {subject.label}."
        if changed
        else f"{subject.label} already has {permission} directly."
    )


@aaa_cli.command("revoke-user-permission")
@click.argument("user")
@click.argument("permission")
@transactional
def revoke_user_permission(user: str, permission: str) -> None:
    """Take a directly granted PERMISSION from USER (their roles are not touched)."""
    subject = _user(user)
    changed = rbac.revoke_permission(
        _db(), actor=_actor(), user=subject, permission=permission, facts=_facts()
    )
    click.echo(
        f"Revoked {permission} from {subject.label}."
        if changed
        else f"{subject.label} has no direct {permission}."
    )


@aaa_cli.command("explain")
@click.argument("user")
@click.argument("permission")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@reading
def explain(user: str, permission: str, as_json: bool) -> None:
    """Say whether USER may use PERMISSION, through which role and inheritance path, or
    what is missing. Exits with status 3 when denied."""
    answer = rbac.explain(_db(), _user(user), permission)
    if as_json:
        click.echo(json.dumps(answer.as_dict(), indent=2))
    else:
        click.echo(f"{'ALLOWED' if answer.allowed else 'DENIED'}: {answer.user} {permission}")
        click.echo(f"  {answer.reason}")
        for grant in answer.grants[1:]:
            click.echo(f"  also: {grant.describe()}")
    if not answer.allowed:
        sys.exit(3)


@aaa_cli.command("routes")
def routes() -> None:
    """List endpoints and how each is guarded (deny-by-default closes the unguarded ones)."""
    from flask import current_app

    from .web.decorators import GUARD_ATTR

    for rule in sorted(current_app.url_map.iter_rules(), key=lambda r: r.rule):
        view = current_app.view_functions.get(rule.endpoint)
        static = rule.endpoint == "static" or rule.endpoint.endswith(".static")
        guard = "static" if static else getattr(view, GUARD_ATTR, None) or "UNGUARDED"
        click.echo(f"{guard:12}{rule.rule}  ({rule.endpoint})")


@aaa_cli.command("check")
def check_app() -> None:
    """Check the views: every rule they name is registered, every endpoint declares @public
    or a requirement. Exit 1 and list what is wrong (for CI)."""
    from flask import current_app

    from .web.checks import check_app as run_check

    report = run_check(current_app)
    for endpoint, name in report.unknown_rules:
        click.echo(f"UNKNOWN RULE  {name!r} named by view {endpoint}")
    mode = "closed (deny by default)" if state().settings.deny_by_default else "OPEN"
    for endpoint in report.unguarded:
        click.echo(f"UNGUARDED     {endpoint}: {mode}")
    if report.unknown_rules or report.unguarded:
        sys.exit(1)
    click.echo("OK: every endpoint declares @public or a requirement; every rule is known.")


# -- audit --


@aaa_cli.group("audit")
def audit_group() -> None:
    """Verify, sign, export and purge the audit trail."""


@audit_group.command("verify")
@click.option(
    "--resume",
    is_flag=True,
    help="Start after the newest signed checkpoint the trail still matches, not at the start.",
)
@click.option(
    "--checkpoints",
    "checkpoint_file",
    type=click.File("r", encoding="utf-8"),
    help="Also check the signed checkpoints in this file: the flask_aaa.audit log (or your "
    "SIEM's export of it), kept outside the database. Other lines are skipped.",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Check ranges of a long trail in this many processes at once (one per CPU core "
    "is the most that helps; trails under 100,000 events per process are checked in one).",
)
@reading
def audit_verify(resume: bool, checkpoint_file: Any, jobs: int) -> None:
    """Check the hash chain, the signed checkpoints and the signed head record; exit 1 and
    name the first bad event if anything does not hold."""
    external = []
    for line in checkpoint_file or ():
        found = audit.Checkpoint.from_json_line(line)
        if found is not None:
            external.append(found)
    report = audit.verify_chain(_db(), resume=resume, external=external, jobs=jobs)
    scope = (
        f"events {report.first_seq} to {report.last_seq}"
        if report.first_seq > 1
        else f"{report.checked} events"
    )
    signed = (
        f"{report.checkpoints} signed checkpoints matched, head signature valid"
        if report.signed
        else "NO signing key configured: signatures not checked"
    )
    if external:
        signed += f"; {len(external)} checkpoints read from {checkpoint_file.name}"
    if report.ok:
        click.echo(f"OK: {scope}, chain intact up to seq {report.last_seq} ({signed}).")
        return
    click.echo(
        f"BROKEN at seq {report.first_bad_seq}: {report.problem} "
        f"({report.checked} events verified before it)."
    )
    sys.exit(1)


@audit_group.command("checkpoint")
@transactional
def audit_checkpoint() -> None:
    """Sign the trail's end now (records audit.checkpoint). Run it from cron, and once after
    upgrading or rotating the signing key."""
    db = _db()
    event_ = audit.checkpoint(db, actor=_actor(), facts=_facts())
    db.commit()
    data = audit.checkpoint_at(db, event_.seq)
    click.echo(json.dumps({"checkpoint": data}, separators=(",", ":")))


@audit_group.command("purge")
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(min=1),
    help="Delete events older than this many days (default: AAA_AUDIT_RETENTION_DAYS).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@transactional
def audit_purge(days: int | None, yes: bool) -> None:
    """Delete old events, keeping a signed anchor so that the rest still verifies. The trail
    is verified first; the purge is itself recorded (audit.purged)."""
    days = days or state().settings.audit_retention_days
    if not days:
        raise click.UsageError("give --older-than DAYS or set AAA_AUDIT_RETENTION_DAYS")
    if not yes:
        click.confirm(f"Delete audit events older than {days} days?", abort=True)
    result = audit.purge(_db(), older_than=dt.timedelta(days=days), actor=_actor(), facts=_facts())
    if not result.deleted:
        click.echo(f"Nothing to purge: no event is older than {days} days.")
        return
    click.echo(
        f"Purged {result.deleted} events (up to seq {result.through}); a signed anchor "
        "keeps the rest verifiable."
    )


@audit_group.command("export")
@click.option(
    "--output",
    "-o",
    type=click.File("wb"),  # bytes: CSV's CRLF line ends stay as written on every OS
    default="-",
    help="File (default: stdout).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="JSON Lines, or CSV with text that spreadsheets would run as a formula quoted.",
)
@click.option("--user", "user_name", help="Only events by this user (username, email or #id).")
@click.option("--action", help="Exact action, or a prefix ending in '*' (e.g. auth.*).")
@click.option("--outcome", type=click.Choice(list(audit.OUTCOMES)))
@click.option("--ip", help="Only events from this client IP.")
@click.option("--target", help="Only events on this target: TYPE or TYPE:ID (e.g. user:42).")
@click.option("--since", help="ISO 8601 start (UTC if no offset).")
@click.option("--until", help="ISO 8601 end.")
@reading
def audit_export(
    output: Any,
    fmt: str,
    user_name: str | None,
    action: str | None,
    outcome: str | None,
    ip: str | None,
    target: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Write events oldest first, in constant memory."""
    target_type, _, target_id = (target or "").partition(":")
    try:
        flt = audit.AuditFilter(
            actor_id=_user(user_name).id if user_name else None,
            action=action,
            outcome=outcome,
            ip=ip,
            target_type=target_type or None,
            target_id=target_id or None,
            since=parse_time("since", since),
            until=parse_time("until", until),
        )
    except AAAError as exc:
        raise click.ClickException(exc.message) from None
    lines = audit.export_csv(_db(), flt) if fmt == "csv" else audit.export_jsonl(_db(), flt)
    count = -1 if fmt == "csv" else 0  # the CSV header is not an event
    for line in lines:
        output.write(line.encode("utf-8"))
        count += 1
    click.echo(f"Exported {count} events.", err=True)
