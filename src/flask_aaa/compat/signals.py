"""Flask-User's signals, under the same names. Each is sent with the app as sender and
the app's own user as ``user`` (``user_registered`` also with ``user_invitation=None``)."""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

user_changed_password = _signals.signal("flask_user:user_changed_password")
user_changed_username = _signals.signal("flask_user:user_changed_username")
user_confirmed_email = _signals.signal("flask_user:user_confirmed_email")
user_forgot_password = _signals.signal("flask_user:forgot_password")
user_logged_in = _signals.signal("flask_user:user_logged_in")
user_logged_out = _signals.signal("flask_user:user_logged_out")
user_registered = _signals.signal("flask_user:user_registered")
user_reset_password = _signals.signal("flask_user:user_reset_password")
user_sent_invitation = _signals.signal("flask_user:user_sent_invitation")
