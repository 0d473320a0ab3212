"""``UserManager``: a Flask-User app's one line of set-up, wired to Flask-AAA.

The app's models stay the source of truth (see docs/flask-user.md, "Design"): each app user
is linked to a Flask-AAA account with the same id, and the link is kept in step three ways:
at sign-in and registration, on each signed-in request (roles, permissions, enabled state;
one comparison, a write only on a difference), and at every flush (password hashes,
confirmation and Flask-AAA's enabled state, in the same transaction).
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from flask import Blueprint, Flask, current_app, g, has_app_context, has_request_context, request
from flask_login import logout_user
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event, func, inspect, or_, select
from sqlalchemy.orm import Session

from ..db import writing
from ..extension import AAA, AAAState
from ..models import GENESIS_HASH, Base
from ..models import User as AAAUser
from ..services import audit, sessions
from ..web.context import current_user as aaa_current_user
from ..web.context import login_session, request_facts
from ..web.signin import record_grants
from . import sync as link_service
from . import views
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
        views.register(app, self)
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

    def catalogue(self) -> list[str]:
        """Every role name the app defines."""
        if self.RoleClass is None:
            return []
        return [str(n) for n in self.session().scalars(select(self.RoleClass.name))]

    def unlinked_accounts(self) -> list[link_service.AppAccount]:
        """The app's users that have no Flask-AAA account yet."""
        linked = select(AAAUser.id)
        rows = self.session().scalars(
            select(self.UserClass).where(self.UserClass.id.not_in(linked))
        )
        return [read_account(u) for u in rows]

    def new_app_user(self, user: AAAUser) -> Any:
        """The app's row for a Flask-AAA account made at registration: same id."""
        values: dict[str, Any] = {"id": user.id, "password": user.password_hash}
        for name in ("username", "email"):
            if hasattr(self.UserClass, name):
                values[name] = getattr(user, name)
        if hasattr(self.UserClass, "active"):
            values["active"] = True
        if hasattr(self.UserClass, "email_confirmed_at") and user.email_confirmed_at:
            values["email_confirmed_at"] = user.email_confirmed_at.replace(tzinfo=None)
        app_user = self.UserClass(**{k: v for k, v in values.items() if hasattr(self.UserClass, k)})
        self.session().add(app_user)
        return app_user

    def sync_user(self, app_user: Any) -> AAAUser:
        """Link and sync one app user (the caller commits)."""
        user, _ = link_service.sync(
            self.session(),
            read_account(app_user),
            catalogue=self.catalogue(),
            facts=request_facts(),
        )
        return user


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


def _sync_signed_in_user() -> None:
    """Before each request of a signed-in user: load the app's user (``current_user``) and,
    when its roles, permissions or enabled state differ from Flask-AAA's, sync them."""
    if request.endpoint is None or request.endpoint.endswith("static"):
        return
    if not aaa_current_user.is_authenticated:
        return
    um: UserManager = current_app.extensions[EXTENSION_KEY]
    user = aaa_current_user._get_current_object()
    app_user = um.load_app_user(user.id)
    if app_user is None:
        # The app deleted its user: nobody is signed in as them any more.
        setattr(g, CURRENT, ANONYMOUS)
        logout_user()
        return
    setattr(g, CURRENT, app_user)
    account = read_account(app_user)
    catalogue = um.catalogue()
    if link_service.is_in_sync(user, account, catalogue):
        return
    db = um.session()
    facts = request_facts()
    record = login_session()
    db.rollback()
    with writing():
        aaa_user, _ = link_service.sync(db, account, catalogue=catalogue, facts=facts)
        db.commit()
    if not aaa_user.active:
        setattr(g, CURRENT, ANONYMOUS)
        logout_user()
        return
    if record is not None:
        record_grants(aaa_user, db.get(type(record), record.id) or record)


def _template_context() -> dict[str, Any]:
    return {
        "user_manager": current_app.extensions[EXTENSION_KEY],
        "call_or_get": lambda value: value() if callable(value) else value,
        "current_user": current_user,
    }


_LISTENING: list[bool] = []


def _listen_once() -> None:
    if not _LISTENING:
        event.listen(Session, "before_flush", _mirror)
        _LISTENING.append(True)


#: (Flask-AAA attribute, app attribute) pairs mirrored on each flush.
_AAA_TO_APP = (
    ("password_hash", "password"),
    ("email_confirmed_at", "email_confirmed_at"),
    ("active", "active"),
)


def _changed(obj: Any, attribute: str) -> bool:
    state = inspect(obj)
    if attribute not in state.attrs:
        return False
    return bool(state.attrs[attribute].history.added)


def _mirror(session: Session, _context: Any, _instances: Any) -> None:
    """Before a flush: a password hash, confirmation or enabled state that Flask-AAA
    changed goes to the app's row; a password hash the app set goes to Flask-AAA's account,
    whose other sessions then end (as they did in Flask-User), audited."""
    if not has_app_context():
        return
    um: UserManager | None = current_app.extensions.get(EXTENSION_KEY)
    if um is None:
        return
    with session.no_autoflush:
        for obj in list(session.new) + list(session.dirty):
            if isinstance(obj, AAAUser) and obj.id is not None:
                _to_app(session, um, obj)
            elif isinstance(obj, um.UserClass) and getattr(obj, "id", None) is not None:
                _to_aaa(session, obj)


def _to_app(session: Session, um: UserManager, user: AAAUser) -> None:
    app_user = None
    for aaa_name, app_name in _AAA_TO_APP:
        if not _changed(user, aaa_name) or not hasattr(um.UserClass, app_name):
            continue
        app_user = app_user or session.get(um.UserClass, user.id)
        if app_user is None:
            return
        value = getattr(user, aaa_name)
        if app_name == "email_confirmed_at" and value is not None:
            value = value.replace(tzinfo=None)  # Flask-User apps keep naive UTC
        if getattr(app_user, app_name) != value:
            setattr(app_user, app_name, value)


def _to_aaa(session: Session, app_user: Any) -> None:
    if not _changed(app_user, "password"):
        return
    user = session.get(AAAUser, app_user.id)
    if user is None or not app_user.password or user.password_hash == app_user.password:
        return
    user.password_hash = app_user.password
    keep = login_session() if has_request_context() else None
    ended = sessions.revoke_all(session, user, reason="password_changed", keep=keep)
    audit.record(
        session,
        action="flask_user.synced",
        actor=link_service.SYNC_ACTOR,
        target=user,
        facts=request_facts(),
        details={"fields": ["password"], "sessions_ended": ended},
    )
