"""Apps written the way Flask-User 1.0's documentation writes them. The only change is the
import line: ``from flask_aaa.compat.flask_user import ...`` instead of ``from flask_user``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Flask, render_template_string
from flask_sqlalchemy import SQLAlchemy

from flask_aaa.compat.flask_user import (
    UserManager,
    UserMixin,
    allow_unconfirmed_email,
    current_user,
    login_required,
    roles_accepted,
    roles_required,
)

TEST_CONFIG = {
    "TESTING": True,
    "SECRET_KEY": "test-secret-key-0123456789abcdef-0123456789",
    "AAA_PASSWORD_HASH_PRESET": "fast",
    "AAA_SECURE_COOKIES": False,
}

PAGE = """{% extends "flask_user_layout.html" %}
{% block content %}<p id="who">{{ current_user.username or current_user.email or 'anonymous' }}</p>
<a href="{{ url_for('user.register') }}">Register</a>
<a href="{{ url_for('user.login') }}">Sign in</a>
<a href="{{ url_for('user.change_password') }}">Change</a>
<a href="{{ url_for('user.logout') }}">Out</a>
{% if current_user.has_roles('Admin') %}<p id="admin-link">Admin</p>{% endif %}
{% endblock %}"""


def basic_app(database_uri: str, **config: Any) -> tuple[Flask, SQLAlchemy, Any]:
    """Flask-User's basic app: username sign-in, no email, an Admin role."""

    class ConfigClass:
        SQLALCHEMY_DATABASE_URI = database_uri
        SQLALCHEMY_TRACK_MODIFICATIONS = False
        USER_APP_NAME = "Flask-User Basic App"
        USER_ENABLE_EMAIL = False
        USER_ENABLE_USERNAME = True
        USER_REQUIRE_RETYPE_PASSWORD = False

    app = Flask(__name__)
    app.config.from_object(ConfigClass)
    app.config.update(TEST_CONFIG, **config)
    db = SQLAlchemy(app)

    class User(db.Model, UserMixin):  # type: ignore[name-defined,misc]
        __tablename__ = "users"
        id = db.Column(db.Integer, primary_key=True)
        active = db.Column("is_active", db.Boolean(), nullable=False, server_default="1")
        username = db.Column(db.String(100), nullable=False, unique=True)
        password = db.Column(db.String(255), nullable=False, server_default="")
        email_confirmed_at = db.Column(db.DateTime())
        first_name = db.Column(db.String(100), nullable=False, server_default="")
        last_name = db.Column(db.String(100), nullable=False, server_default="")
        roles = db.relationship("Role", secondary="user_roles")

    class Role(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "roles"
        id = db.Column(db.Integer(), primary_key=True)
        name = db.Column(db.String(50), unique=True)

    class UserRoles(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "user_roles"
        id = db.Column(db.Integer(), primary_key=True)
        user_id = db.Column(db.Integer(), db.ForeignKey("users.id", ondelete="CASCADE"))
        role_id = db.Column(db.Integer(), db.ForeignKey("roles.id", ondelete="CASCADE"))

    user_manager = UserManager(app, db, User)

    with app.app_context():
        db.create_all()
        if not User.query.filter(User.username == "member").first():
            user = User(username="member", password=user_manager.hash_password("Password1"))
            db.session.add(user)
            db.session.commit()
        if not User.query.filter(User.username == "admin").first():
            user = User(username="admin", password=user_manager.hash_password("Password1"))
            user.roles.append(Role(name="Admin"))
            user.roles.append(Role(name="Agent"))
            db.session.add(user)
            db.session.commit()

    @app.route("/")
    def home_page() -> str:
        return render_template_string(PAGE)

    @app.route("/members")
    @login_required
    def member_page() -> str:
        return render_template_string("members: {{ current_user.username }}")

    @app.route("/admin")
    @roles_required("Admin")
    def admin_page() -> str:
        return "admin page"

    @app.route("/special")
    @roles_required("Admin", ["Writer", "Agent"])
    def special_page() -> str:
        return "special page"

    @app.route("/staff")
    @roles_accepted("Writer", "Agent")
    def staff_page() -> str:
        return "staff page"

    app.User = User  # type: ignore[attr-defined]
    app.Role = Role  # type: ignore[attr-defined]
    return app, db, user_manager


def email_app(database_uri: str, **config: Any) -> tuple[Flask, SQLAlchemy, Any]:
    """Flask-User's quickstart with email: sign in by address, confirmation required."""
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_uri,
        USER_APP_NAME="Flask-User QuickStart App",
        USER_ENABLE_EMAIL=True,
        USER_ENABLE_USERNAME=False,
        USER_EMAIL_SENDER_NAME="Flask-User QuickStart App",
        USER_EMAIL_SENDER_EMAIL="noreply@example.com",
        MAIL_BACKEND="locmem",
    )
    app.config.update(TEST_CONFIG, **config)
    db = SQLAlchemy(app)

    class User(db.Model, UserMixin):  # type: ignore[name-defined,misc]
        __tablename__ = "users"
        id = db.Column(db.Integer, primary_key=True)
        active = db.Column("is_active", db.Boolean(), nullable=False, server_default="1")
        email = db.Column(db.String(255), nullable=False, unique=True)
        email_confirmed_at = db.Column(db.DateTime())
        password = db.Column(db.String(255), nullable=False, server_default="")

    user_manager = UserManager(app, db, User)
    with app.app_context():
        db.create_all()

    @app.route("/")
    def home_page() -> str:
        return render_template_string(PAGE)

    @app.route("/members")
    @login_required
    def member_page() -> str:
        return "members"

    @app.route("/promotion")
    @allow_unconfirmed_email
    def promotion() -> str:
        return "promotion"

    app.User = User  # type: ignore[attr-defined]
    return app, db, user_manager


def tutorial_app(database_uri: str, **config: Any) -> tuple[Flask, SQLAlchemy, Any]:
    """The tutorial's app: roles, permissions (role_permissions) and an activity log."""
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_uri,
        USER_ENABLE_USERNAME=True,
        USER_ENABLE_EMAIL=False,
        USER_APP_NAME="Your App Name",
    )
    app.config.update(TEST_CONFIG, **config)
    db = SQLAlchemy(app)

    class User(db.Model, UserMixin):  # type: ignore[name-defined,misc]
        id = db.Column(db.Integer, primary_key=True)
        username = db.Column(db.String(50), nullable=False, unique=True)
        password = db.Column(db.String(255), nullable=False)
        active = db.Column(db.Boolean(), nullable=False, default=True)
        roles = db.relationship("Role", secondary="user_roles")

    class Role(db.Model):  # type: ignore[name-defined,misc]
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(50), unique=True)
        permissions = db.relationship("Permission", secondary="role_permissions")

    class UserRoles(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "user_roles"
        id = db.Column(db.Integer, primary_key=True)
        user_id = db.Column(db.Integer, db.ForeignKey("user.id", ondelete="CASCADE"))
        role_id = db.Column(db.Integer, db.ForeignKey("role.id", ondelete="CASCADE"))

    class Permission(db.Model):  # type: ignore[name-defined,misc]
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(50), unique=True)

    role_permissions = db.Table(
        "role_permissions",
        db.Column("role_id", db.Integer, db.ForeignKey("role.id"), primary_key=True),
        db.Column("permission_id", db.Integer, db.ForeignKey("permission.id"), primary_key=True),
    )

    class Activity(db.Model):  # type: ignore[name-defined,misc]
        id = db.Column(db.Integer, primary_key=True)
        user_id = db.Column(db.Integer, db.ForeignKey("user.id"))
        user = db.relationship("User")
        action = db.Column(db.String(100))
        at = db.Column(db.DateTime(), default=datetime.utcnow)

    user_manager = UserManager(app, db, User)
    with app.app_context():
        db.create_all()

    @app.route("/some-action")
    @login_required
    def some_action() -> str:
        db.session.add(Activity(user=current_user, action="some action"))
        db.session.commit()
        return "done"

    @app.route("/activity-log")
    @login_required
    def activity_log() -> str:
        activities = Activity.query.filter_by(user=current_user).all()
        return ",".join(a.action for a in activities)

    @app.route("/admin")
    @roles_required("admin")
    def admin_dashboard() -> str:
        return "dashboard"

    app.models = {  # type: ignore[attr-defined]
        "User": User,
        "Role": Role,
        "Permission": Permission,
        "Activity": Activity,
        "role_permissions": role_permissions,
    }
    return app, db, user_manager
