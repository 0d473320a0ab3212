"""Forms with Flask-User's field names, so that an app's own ``flask_user/*.html``
templates (``form.username``, ``form.retype_password``, ``form.hidden_tag()``) render."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (  # type: ignore[import-untyped]
    BooleanField,
    HiddenField,
    PasswordField,
    StringField,
    SubmitField,
)


class LoginForm(FlaskForm):  # type: ignore[misc]
    next = HiddenField()
    reg_next = HiddenField()
    username = StringField("Username or Email")
    email = StringField("Email")
    password = PasswordField("Password")
    remember_me = BooleanField("Remember me")
    submit = SubmitField("Sign in")


class RegisterForm(FlaskForm):  # type: ignore[misc]
    next = HiddenField()
    reg_next = HiddenField()
    invite_token = HiddenField()
    username = StringField("Username")
    email = StringField("Email")
    password = PasswordField("Password")
    retype_password = PasswordField("Retype Password")
    submit = SubmitField("Register")


class ChangePasswordForm(FlaskForm):  # type: ignore[misc]
    next = HiddenField()
    old_password = PasswordField("Old Password")
    new_password = PasswordField("New Password")
    retype_password = PasswordField("Retype New Password")
    submit = SubmitField("Change password")


class LogoutForm(FlaskForm):  # type: ignore[misc]
    next = HiddenField()
    submit = SubmitField("Sign out")
