"""Drop-in names of Flask-User 1.0: change ``from flask_user import ...`` to
``from flask_aaa.compat.flask_user import ...`` and the app runs on Flask-AAA.

See docs/flask-user.md for what carries over, what deliberately does not, and how to
migrate an existing database."""

from .decorators import (
    allow_unconfirmed_email,
    current_user,
    login_required,
    roles_accepted,
    roles_required,
)
from .manager import UserManager
from .models import UserMixin
from .signals import (
    user_changed_password,
    user_changed_username,
    user_confirmed_email,
    user_forgot_password,
    user_logged_in,
    user_logged_out,
    user_registered,
    user_reset_password,
    user_sent_invitation,
)

__all__ = [
    "UserManager",
    "UserMixin",
    "allow_unconfirmed_email",
    "current_user",
    "login_required",
    "roles_accepted",
    "roles_required",
    "user_changed_password",
    "user_changed_username",
    "user_confirmed_email",
    "user_forgot_password",
    "user_logged_in",
    "user_logged_out",
    "user_registered",
    "user_reset_password",
    "user_sent_invitation",
]
