"""``UserManager``: a Flask-User app's one line of set-up, wired to Flask-AAA.

The app's models stay the source of truth (see docs/flask-user.md, "Design"): each app user
is linked to a Flask-AAA account with the same id, and the link is kept in step three ways:

- at every flush, in the same transaction: a Flask-AAA account made by any of Flask-AAA's
  paths (its registration page, an accepted invitation, the console, ``flask aaa
  create-user``, a third-party sign-in) gets its row in the app's ``User`` table, with an id
  free in both tables; a user the app deletes loses its account's credentials; password
  hashes, identifiers, the enabled state and confirmation are mirrored both ways;
- on each signed-in request (one comparison, a write only on a difference): what the app
  changed behind the ORM's back (SQL, another process) and its roles and permissions;
- at sign-in and registration.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, current_app, g, has_app_context, has_request_context, request
from flask_login import logout_user
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Table, event, func, inspect, or_, select, text
from sqlalchemy.orm import Session

from ..db import writing
from ..errors import Conflict
from ..extension import AAA, AAAState
from ..models import GENESIS_HASH, Base, LoginSession
from ..models import User as AAAUser
from ..services import audit, sessions
from ..web.context import current_user as aaa_current_user
from ..web.context import login_session, request_facts
from ..web.signin import record_grants
from . import signals, views
from . import sync as link_service
from .decorators import CURRENT, current_user
from .models import ANONYMOUS, read_account, role_class
from .settings import FlaskUserSettings

EXTENSION_KEY = "flask_user_compat"


class UserManager:
    """Flask-User's ``UserManager(app, db, UserClass, RoleClass=None, ...)``.

    Reads the ``USER_*`` settings, sets up Flask-AAA on the app (or uses the one there),
    adds Flask-AAA's tables to ``db``'s metadata (so ``db.create_all()`` creates them), and
    registers the ``user.*`` endpoints. ``user_manager.USER_APP_NAME`` and the other
    settings read as attributes, as in Flask-User."""

    def __init__(
        self,
        app: Flask | None = None,
        db: SQLAlchemy | None = None,
        UserClass: type[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.app = app
        if app is not None:
            if db is None or UserClass is None:
                raise TypeError("UserManager(app, db, UserClass) needs db and UserClass")
            self.init_app(app, db, UserClass, **kwargs)

    def init_app(
        self,
        app: Flask,
        db: SQLAlchemy,
        UserClass: type[Any],
        RoleClass: type[Any] | None = None,
        UserEmailClass: type[Any] | None = None,
        UserInvitationClass: type[Any] | None = None,
    ) -> None:
        if UserEmailClass is not None:
            raise NotImplementedError(
                "UserEmailClass (several addresses per user) is not supported: "
                "see docs/flask-user.md"
            )
        self.settings = FlaskUserSettings.from_config(app.config)
        self.db = db
        self.UserClass = UserClass
        self.RoleClass = RoleClass or role_class(UserClass)
        self.UserInvitationClass = UserInvitationClass
        self.settings.apply_to(app.config)
        if "aaa" not in app.extensions:
            AAA(app, db)
        _share_tables(db)
        app.user_manager = self  # type: ignore[attr-defined]
        app.extensions[EXTENSION_KEY] = self
        layout = Blueprint(
            "flask_user",
            __name__,
            template_folder=str(
                importlib.resources.files("flask_aaa") / "templates" / "flask_user" / "layout"
            ),
        )
        app.register_blueprint(layout)
        with app.app_context():
            views.register(app, self)
        verify = app.view_functions.get("aaa_mfa.verify")
        if verify is not None:
            app.view_functions["aaa_mfa.verify"] = _announce_sign_in(verify, self)
        app.before_request(_sync_signed_in_user)
        app.context_processor(_template_context)
        _listen_once()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("USER_") and "settings" in self.__dict__:
            try:
                return self.settings[name]
            except KeyError:
                pass
        raise AttributeError(name)

    # -- passwords --

    @property
    def _state(self) -> AAAState:
        app = current_app if has_app_context() else self.app
        if app is None:
            raise RuntimeError("use the UserManager inside an app context")
        return app.extensions["aaa"]  # type: ignore[no-any-return]

    def hash_password(self, password: str) -> str:
        """An argon2id hash of ``password`` (Flask-AAA's preset), for the app's
        ``password`` column."""
        return self._state.passwords.hash(password)

    def verify_password(self, password: str, password_hash: Any) -> bool:
        """Does ``password`` match ``password_hash`` (argon2id, or Flask-User's bcrypt)?
        A user object is accepted too, as in Flask-User 0.x."""
        if not isinstance(password_hash, str | None):
            password_hash = getattr(password_hash, "password", None)
        ok, _ = self._state.passwords.verify(password, password_hash or None)
        return ok

    # -- the app's users --

    def session(self) -> Session:
        return self.db.session()

    def load_app_user(self, user_id: int) -> Any:
        return self.session().get(self.UserClass, user_id)

    def find_app_user(self, login: str) -> Any:
        """The app's user whose username or email is ``login`` (ignoring case)."""
        login = login.strip().lower()
        clauses = []
        if self.settings["USER_ENABLE_USERNAME"] and hasattr(self.UserClass, "username"):
            clauses.append(func.lower(self.UserClass.username) == login)
        if self.settings["USER_ENABLE_EMAIL"] and hasattr(self.UserClass, "email"):
            clauses.append(func.lower(self.UserClass.email) == login)
        if not login or not clauses:
            return None
        return self.session().scalars(select(self.UserClass).where(or_(*clauses))).first()

    def may_sign_in(self, user_id: int) -> bool:
        """Does the app have this user, enabled? (Flask-AAA's own checks come first.)"""
        app_user = self.load_app_user(user_id)
        return app_user is not None and bool(getattr(app_user, "active", True))

    def sync_user(self, app_user: Any) -> AAAUser:
        """Link and sync one app user (the caller commits)."""
        user, _ = link_service.sync(self.session(), read_account(app_user), facts=request_facts())
        return user

    def in_sync(self, app_user: Any) -> bool:
        """Is the app user linked, with nothing for :meth:`sync_user` to change?"""
        user = self.session().get(AAAUser, app_user.id)
        return user is not None and link_service.is_in_sync(user, read_account(app_user))


# -- Flask-AAA's tables beside the app's --


def _share_tables(db: SQLAlchemy) -> None:
    """Copy Flask-AAA's tables into the app's metadata (when it is not ``flask_aaa.Base``'s),
    so that the app's ``db.create_all()`` creates them, seeded as the migration seeds them."""
    metadata = db.metadata
    if metadata is Base.metadata:
        return
    for table in Base.metadata.sorted_tables:
        if table.name in metadata.tables:
            continue
        copy = table.to_metadata(metadata)
        if table.name in ("aaa_authz_state", "aaa_audit_head"):
            event.listen(copy, "after_create", _seed)


def _seed(target: Any, connection: Any, **_: Any) -> None:
    if target.name == "aaa_authz_state":
        connection.execute(target.insert().values(id=1, version=1))
    else:
        connection.execute(target.insert().values(id=1, seq=0, hash=GENESIS_HASH))


# -- keeping the link in step --


def _announce_sign_in(view: Callable[..., Any], um: UserManager) -> Callable[..., Any]:
    """Flask-AAA's second sign-in step (``aaa_mfa.verify``), which completes the sign-ins
    of users with two-factor authentication, sends ``user_logged_in`` as the compatibility
    sign-in does."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        response = view(*args, **kwargs)
        if request.method == "POST" and aaa_current_user.is_authenticated:
            app_user = um.load_app_user(aaa_current_user.id)
            if app_user is not None:
                signals.user_logged_in.send(current_app._get_current_object(), user=app_user)  # type: ignore[attr-defined]
        return response

    return wrapper


def _sync_signed_in_user() -> None:
    """Before each request of a signed-in user: load the app's user (``current_user``);
    when the app's row differs from Flask-AAA's account (roles, permissions, enabled state,
    password, identifiers), sync it; when the app disabled or deleted its user, end the
    session."""
    if request.endpoint is None or request.endpoint.endswith("static"):
        return
    if not aaa_current_user.is_authenticated:
        return
    um: UserManager = current_app.extensions[EXTENSION_KEY]
    user = aaa_current_user._get_current_object()
    record = login_session()
    app_user = um.load_app_user(user.id)
    if app_user is None:
        # The app deleted its user behind the ORM's back (SQL, another process).
        _end_signed_in(
            um,
            lambda db, facts: link_service.forget(
                db, db.get(AAAUser, user.id) or user, facts=facts
            ),
        )
        return
    account = read_account(app_user)
    if account.active and link_service.is_in_sync(user, account):
        setattr(g, CURRENT, app_user)
        return
    if not account.active:
        _end_signed_in(um, lambda db, facts: link_service.sync(db, account, facts=facts))
        return
    db = um.session()
    facts = request_facts()
    db.rollback()
    with writing():
        aaa_user, _ = link_service.sync(db, account, facts=facts)
        fresh = db.get(LoginSession, record.id) if record is not None else None
        db.commit()
    if fresh is not None:
        db.refresh(fresh)
    if not aaa_user.active or (fresh is not None and fresh.revoked_at is not None):
        # The app changed the password behind the ORM's back: every session ended.
        setattr(g, CURRENT, ANONYMOUS)
        logout_user()
        return
    setattr(g, CURRENT, um.load_app_user(user.id) or ANONYMOUS)
    if fresh is not None:
        record_grants(aaa_user, fresh)


def _end_signed_in(um: UserManager, change: Callable[[Session, Any], object]) -> None:
    """Apply ``change`` (which disables the account, or forgets it), end this browser's
    session whatever Flask-AAA decided, and sign the request out."""
    db = um.session()
    record = login_session()
    facts = request_facts()
    db.rollback()
    with writing():
        change(db, facts)
        fresh = db.get(LoginSession, record.id) if record is not None else None
        if fresh is not None:
            sessions.revoke(db, fresh, reason="account_disabled")
        db.commit()
    setattr(g, CURRENT, ANONYMOUS)
    logout_user()


def _template_context() -> dict[str, Any]:
    return {
        "user_manager": current_app.extensions[EXTENSION_KEY],
        "call_or_get": lambda value: value() if callable(value) else value,
        "current_user": current_user,
    }


_LISTENING: list[bool] = []


def _listen_once() -> None:
    if not _LISTENING:
        # The events this records (``flask_user.synced``, ``user.disabled``, ...) are sealed
        # with the commit: the audit trail flushes before it seals.
        event.listen(Session, "before_flush", _mirror)
        _LISTENING.append(True)


#: (Flask-AAA attribute, app attribute) pairs mirrored from Flask-AAA to the app on each
#: flush: what Flask-AAA's own flows change (a rehash, a reset, a confirmation, an
#: administrator disabling the account).
_AAA_TO_APP = (
    ("password_hash", "password"),
    ("email_confirmed_at", "email_confirmed_at"),
    ("active", "active"),
)

#: Flask-AAA identifiers mirrored to the app (an email change, a rename by an administrator).
_IDENTIFIERS = ("username", "email")


def _changed(obj: Any, attribute: str) -> bool:
    state = inspect(obj)
    if attribute not in state.attrs:
        return False
    return bool(state.attrs[attribute].history.added)


def _mirror(session: Session, _context: Any, _instances: Any) -> None:
    """Before a flush, in its transaction: give each new Flask-AAA account its app row;
    forget the account of an app user being deleted; mirror what either side changed."""
    if not has_app_context():
        return
    um: UserManager | None = current_app.extensions.get(EXTENSION_KEY)
    if um is None:
        return
    with session.no_autoflush:
        for obj in list(session.deleted):
            if isinstance(obj, um.UserClass) and getattr(obj, "id", None) is not None:
                user = session.get(AAAUser, obj.id)
                if user is not None:
                    link_service.forget(session, user, facts=request_facts())
        unnumbered = [o for o in session.new if isinstance(o, AAAUser) and o.id is None]
        for obj in list(session.new) + list(session.dirty):
            if isinstance(obj, AAAUser) and obj.id is not None:
                _to_app(session, um, obj)
            elif isinstance(obj, um.UserClass) and getattr(obj, "id", None) is not None:
                _to_aaa(session, obj)
        for user in unnumbered:
            _give_app_row(session, um, user)


def _to_app(session: Session, um: UserManager, user: AAAUser) -> None:
    app_user = session.get(um.UserClass, user.id)
    if app_user is None or app_user in session.deleted:
        return
    for aaa_name, app_name in _AAA_TO_APP:
        if not _changed(user, aaa_name) or not hasattr(um.UserClass, app_name):
            continue
        value = getattr(user, aaa_name)
        if value is None and app_name != "email_confirmed_at":
            continue  # a forgotten account's credentials are not the app's business
        if app_name == "email_confirmed_at" and value is not None:
            value = value.replace(tzinfo=None)  # Flask-User apps keep naive UTC
        if getattr(app_user, app_name) != value:
            setattr(app_user, app_name, value)
    account = read_account(app_user, roles=False)
    for name in _IDENTIFIERS:
        if not hasattr(um.UserClass, name) or not _changed(user, f"{name}_key"):
            continue
        value = getattr(user, name)
        if value is not None and not link_service.same_identifier(name, account, value):
            setattr(app_user, name, value)


def _to_aaa(session: Session, app_user: Any) -> None:
    """The app changed its user (its own code, in this transaction): the password, the
    username or email, the enabled state reach Flask-AAA's account now, audited."""
    watched = ("password", *_IDENTIFIERS, "active")
    if not any(_changed(app_user, name) for name in watched):
        return
    user = session.get(AAAUser, app_user.id)
    if user is None:
        return  # not linked yet: linked at its first sign-in
    account = read_account(app_user, roles=False)
    facts = request_facts()
    fields: list[str] = []
    details: dict[str, object] = {}
    new_hash = account.password if _changed(app_user, "password") else None
    if new_hash and user.password_hash != new_hash:
        user.password_hash = new_hash
        fields.append("password")
        # The browser that made the change keeps its session (as in Flask-User).
        keep = g.get("_aaa_login_session") if has_request_context() else None
        if keep is not None and keep.user_id != user.id:
            keep = None
        details["sessions_ended"] = sessions.revoke_all(
            session, user, reason="password_changed", keep=keep
        )
    if any(_changed(app_user, name) for name in _IDENTIFIERS) and not (
        link_service.same_identifiers(user, account)
    ):
        idents = link_service.identifiers(session, account)
        for name in _IDENTIFIERS:
            if idents[f"{name}_key"] != getattr(user, f"{name}_key"):
                setattr(user, name, idents[name])
                setattr(user, f"{name}_key", idents[f"{name}_key"])
                fields.append(name)
    if fields:
        audit.record(
            session,
            action="flask_user.synced",
            actor=link_service.SYNC_ACTOR,
            target=user,
            facts=facts,
            details={"fields": fields, **details},
        )
    if _changed(app_user, "active") and user.active != account.active:
        link_service.set_active(session, user, account.active, facts=facts)


# -- one id space --

#: PostgreSQL advisory lock taken while an id is chosen for a new account.
_ID_LOCK = 0x466C61736B414141  # "FlaskAAA"


def _give_app_row(session: Session, um: UserManager, user: AAAUser) -> None:
    """A new Flask-AAA account (any path but the link itself) gets an id free in both
    tables and its row in the app's ``User`` table, so that no app user can ever be linked
    to an account that is someone else's."""
    values = _app_row_values(um, user)
    _check_app_row(um, values)
    user.id = values["id"] = _allocate_id(session, um)
    session.add(um.UserClass(**values))


def _app_row_values(um: UserManager, user: AAAUser) -> dict[str, Any]:
    values: dict[str, Any] = {}
    attrs = {a.key: a for a in inspect(um.UserClass).column_attrs}
    for name in _IDENTIFIERS:
        if name in attrs and getattr(user, name) is not None:
            values[name] = getattr(user, name)
    if "password" in attrs:
        nullable = attrs["password"].columns[0].nullable
        values["password"] = user.password_hash or (None if nullable else "")
    if "active" in attrs:
        values["active"] = bool(user.active if user.active is not None else True)
    if "email_confirmed_at" in attrs and user.email_confirmed_at is not None:
        values["email_confirmed_at"] = user.email_confirmed_at.replace(tzinfo=None)
    return values


def _check_app_row(um: UserManager, values: dict[str, Any]) -> None:
    """Refuse (409) an account the app's table cannot hold: a required column without a
    value (an email-only account where the app requires a username, say)."""
    for attr in inspect(um.UserClass).column_attrs:
        column = attr.columns[0]
        if column.primary_key or column.nullable or values.get(attr.key) is not None:
            continue
        if column.default is None and column.server_default is None:
            raise Conflict(
                f"the app's {um.UserClass.__table__.name!s} table needs {attr.key!r}, which "
                "this account does not have"
            )


def _allocate_id(session: Session, um: UserManager) -> int:
    """One more than any id of either table (and, on PostgreSQL, than either table's
    sequence, both of which are moved past it: the app's own inserts and Flask-AAA's never
    pick it)."""
    app_table: Table = um.UserClass.__table__
    app_pk = next(iter(app_table.primary_key.columns))
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ID_LOCK})
    top = max(
        session.scalar(select(func.max(AAAUser.id))) or 0,
        session.scalar(select(func.max(app_pk))) or 0,
    )
    new_id = int(top) + 1
    if not postgres:
        return new_id
    found = [
        _sequence(session, AAAUser.__table__, "id"),  # type: ignore[arg-type]
        _sequence(session, app_table, app_pk.name),
    ]
    sequences = [seq for seq in found if seq is not None]
    for seq in sequences:
        new_id = max(
            new_id, int(session.scalar(text("SELECT nextval(CAST(:s AS regclass))"), {"s": seq}))
        )
    for seq in sequences:
        session.execute(text("SELECT setval(CAST(:s AS regclass), :v)"), {"s": seq, "v": new_id})
    return new_id


def _sequence(session: Session, table: Table, column: str) -> str | None:
    """The PostgreSQL sequence behind ``table.column`` (serial or identity), if any."""
    name = '"' + table.name.replace('"', '""') + '"'
    if table.schema:
        name = '"' + table.schema.replace('"', '""') + '".' + name
    seq = session.scalar(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": name, "c": column})
    return str(seq) if seq else None
