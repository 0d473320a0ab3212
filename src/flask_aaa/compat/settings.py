"""Flask-User's ``USER_*`` settings, with the defaults Flask-User 1.0 documents.

Only the settings the compatibility layer honours are read. Each one that has a Flask-AAA
counterpart is handed on as a default of the ``AAA_*`` key (an explicit ``AAA_*`` key wins).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, MutableMapping
from typing import Any

DEFAULTS: dict[str, Any] = {
    #: Name shown in page titles and mail (``AAA_APP_NAME``).
    "USER_APP_NAME": "USER_APP_NAME",
    #: Sign in and register with an email address (``AAA_ENABLE_EMAIL``).
    "USER_ENABLE_EMAIL": True,
    #: Sign in and register with a username (``AAA_ENABLE_USERNAME``).
    "USER_ENABLE_USERNAME": True,
    #: Open self-service registration at ``USER_REGISTER_URL`` (``AAA_ENABLE_REGISTRATION``).
    "USER_ENABLE_REGISTER": True,
    #: Addresses must be confirmed (needs ``USER_ENABLE_EMAIL``).
    "USER_ENABLE_CONFIRM_EMAIL": True,
    #: Sign in before confirming; ``login_required`` views still need a confirmed address
    #: unless marked ``@allow_unconfirmed_email``.
    "USER_ALLOW_LOGIN_WITHOUT_CONFIRMED_EMAIL": False,
    #: The forgotten-password flow (needs ``USER_ENABLE_EMAIL``; served by Flask-AAA).
    "USER_ENABLE_FORGOT_PASSWORD": True,
    #: The change-password page.
    "USER_ENABLE_CHANGE_PASSWORD": True,
    #: Offer "remember me" at sign-in (``AAA_REMEMBER_ME``).
    "USER_ENABLE_REMEMBER_ME": True,
    #: Invitations (they need the ``aaa:users:invite`` permission; served by Flask-AAA).
    "USER_ENABLE_INVITE_USER": False,
    #: Only invited people may register (``AAA_INVITE_ONLY``).
    "USER_REQUIRE_INVITATION": False,
    #: Registration and password forms ask for the password twice (``retype_password``).
    "USER_REQUIRE_RETYPE_PASSWORD": True,
    #: Sign the new user in after registration (when no confirmation is due).
    "USER_AUTO_LOGIN_AFTER_REGISTER": True,
    #: A signed-in visitor of the sign-in page goes straight to ``next``.
    "USER_AUTO_LOGIN_AT_LOGIN": True,
    #: Lifetime of a confirmation link, in seconds (``AAA_CONFIRM_TTL``).
    "USER_CONFIRM_EMAIL_EXPIRATION": 2 * 24 * 3600,
    #: Sender of the mail (``AAA_MAIL_SENDER``); empty: ``MAIL_DEFAULT_SENDER`` if set.
    "USER_EMAIL_SENDER_EMAIL": "",
    "USER_CHANGE_PASSWORD_URL": "/user/change-password",
    "USER_CHANGE_USERNAME_URL": "/user/change-username",
    "USER_CONFIRM_EMAIL_URL": "/user/confirm-email/<token>",
    "USER_EDIT_USER_PROFILE_URL": "/user/edit_user_profile",
    "USER_FORGOT_PASSWORD_URL": "/user/forgot-password",
    "USER_INVITE_USER_URL": "/user/invite",
    "USER_LOGIN_URL": "/user/sign-in",
    "USER_LOGOUT_URL": "/user/sign-out",
    "USER_REGISTER_URL": "/user/register",
    "USER_RESEND_EMAIL_CONFIRMATION_URL": "/user/resend-email-confirmation",
    "USER_RESET_PASSWORD_URL": "/user/reset-password/<token>",
    "USER_CHANGE_PASSWORD_TEMPLATE": "flask_user/change_password.html",
    "USER_LOGIN_TEMPLATE": "flask_user/login.html",
    "USER_LOGOUT_TEMPLATE": "flask_user/logout.html",
    "USER_REGISTER_TEMPLATE": "flask_user/register.html",
    "USER_AFTER_CHANGE_PASSWORD_ENDPOINT": "",
    "USER_AFTER_CONFIRM_ENDPOINT": "",
    "USER_AFTER_LOGIN_ENDPOINT": "",
    "USER_AFTER_LOGOUT_ENDPOINT": "",
    "USER_AFTER_REGISTER_ENDPOINT": "",
    #: Where anonymous visitors of a guarded view are sent (with ``next``).
    "USER_UNAUTHENTICATED_ENDPOINT": "user.login",
    #: Where signed-in users lacking a role are sent ('' is ``/``).
    "USER_UNAUTHORIZED_ENDPOINT": "",
}


@dataclasses.dataclass(frozen=True, slots=True)
class FlaskUserSettings:
    """The ``USER_*`` settings of one app, read once, with Flask-User's dependencies
    between them applied (no email: no confirmation, no forgotten password)."""

    values: Mapping[str, Any]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FlaskUserSettings:
        values = {key: config.get(key, default) for key, default in DEFAULTS.items()}
        if not values["USER_ENABLE_USERNAME"] and not values["USER_ENABLE_EMAIL"]:
            values["USER_ENABLE_REGISTER"] = False
        if not values["USER_ENABLE_EMAIL"]:
            values["USER_ENABLE_CONFIRM_EMAIL"] = False
            values["USER_ENABLE_FORGOT_PASSWORD"] = False
        if not values["USER_EMAIL_SENDER_EMAIL"]:
            values["USER_EMAIL_SENDER_EMAIL"] = config.get("MAIL_DEFAULT_SENDER") or ""
        return cls(values)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def confirm_required(self) -> bool:
        """Must an address be confirmed (to sign in, or to pass ``login_required``)?"""
        return bool(self["USER_ENABLE_EMAIL"] and self["USER_ENABLE_CONFIRM_EMAIL"])

    def aaa_defaults(self) -> dict[str, Any]:
        """The ``AAA_*`` keys these settings imply."""
        out: dict[str, Any] = {
            "AAA_APP_NAME": self["USER_APP_NAME"],
            "AAA_ENABLE_USERNAME": bool(self["USER_ENABLE_USERNAME"]),
            "AAA_ENABLE_EMAIL": bool(self["USER_ENABLE_EMAIL"]),
            "AAA_ENABLE_REGISTRATION": bool(self["USER_ENABLE_REGISTER"]),
            "AAA_CONFIRM_EMAIL": self.confirm_required
            and not self["USER_ALLOW_LOGIN_WITHOUT_CONFIRMED_EMAIL"],
            "AAA_CONFIRM_TTL": int(self["USER_CONFIRM_EMAIL_EXPIRATION"]),
            "AAA_REMEMBER_ME": bool(self["USER_ENABLE_REMEMBER_ME"]),
            "AAA_INVITE_ONLY": bool(
                self["USER_ENABLE_INVITE_USER"] and self["USER_REQUIRE_INVITATION"]
            ),
            "AAA_HOME_ENDPOINT": self["USER_AFTER_LOGIN_ENDPOINT"] or None,
        }
        if self["USER_EMAIL_SENDER_EMAIL"]:
            out["AAA_MAIL_SENDER"] = self["USER_EMAIL_SENDER_EMAIL"]
        return out

    def apply_to(self, config: MutableMapping[str, Any]) -> None:
        """Set the implied ``AAA_*`` keys as defaults: keys the app set itself win."""
        for key, value in self.aaa_defaults().items():
            config.setdefault(key, value)
