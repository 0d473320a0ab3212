"""Mail: Flask-Mailman set up for the library, links from the canonical URL, and sending
after the response.

``send(template, to, **context)`` queues a mail during a request. Once the response has been
sent to the client (``response.call_on_close``, which every WSGI server calls after the last
byte), the mail is rendered from ``aaa/mail/<template>.subject.txt``, ``.txt`` and ``.html``
-- ordinary Jinja templates an app overrides by shipping its own -- and handed to
Flask-Mailman. So a request about an address that has an account answers in the same time as
one about an address that has none: the slow part, talking to the mail server, happens after.
A response with an error status sends nothing.

``after_response(job)`` goes one step further for the flows whose *work* depends on whether
an address has an account (forgot password, resend confirmation): the whole job (the lookup,
the link, the audit event, the commit) runs after the response, so the answer is ready before
anything about the account is known and its time cannot tell. A job runs in an app context
of its own (so a database session of its own); mail it queues with :func:`send` goes out
when it returns. A failing job is logged (the client has its answer already) and its
transaction rolled back, so its audit event and its action are lost together.

Links are ``AAA_BASE_URL`` + the endpoint's path, never derived from the request (``Host``,
``X-Forwarded-Host``, ``SCRIPT_NAME``): a forged header cannot send a victim a link to another
site (A20).

Backends (Flask-Mailman's ``MAIL_BACKEND``): ``locmem`` by default under ``TESTING`` (the
messages collect in ``app.extensions["mailman"].outbox``), otherwise ``smtp`` (``MAIL_SERVER``,
``MAIL_PORT``, ``MAIL_USE_TLS``, ...), or whatever the app sets: ``console``, ``file``, a
custom class. With Flask's test client, read the outbox after the response is closed:
pass ``buffered=True`` or call ``response.close()``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

from flask import Flask, current_app, g, render_template
from flask import Response as FlaskResponse
from flask_mailman import EmailMultiAlternatives, Mail  # type: ignore[import-untyped]

from ..config import Settings
from ..errors import ConfigurationError
from .context import state

_log = logging.getLogger("flask_aaa")

#: ``app.extensions`` key of the :class:`MailFlows` of an app.
EXTENSION_KEY = "aaa_mail"
_QUEUE = "_aaa_mail_queue"
_JOBS = "_aaa_after_response"
#: Mail queued with :func:`send`: (template, recipient, template context).
Queued = list[tuple[str, str, dict[str, Any]]]

#: Canonical URL used in debug and testing when ``AAA_BASE_URL`` is not set.
DEV_BASE_URL = "http://localhost"


@dataclasses.dataclass(frozen=True, slots=True)
class MailFlows:
    """Which mail-based flows an app offers (templates see it as ``aaa_mail``).

    Every flow needs to mail a link, and so a canonical URL: without ``AAA_BASE_URL``
    (outside debug and testing) password reset, invitations and email change are off.
    Invitations lead to the registration page, so they also need ``AAA_ENABLE_REGISTRATION``."""

    base_url: str | None
    confirm: bool
    reset: bool
    invite: bool
    email_change: bool

    @property
    def any(self) -> bool:
        return self.confirm or self.reset or self.invite or self.email_change


def flows_for(settings: Settings, *, debug: bool, testing: bool) -> MailFlows:
    """Decide the flows at start-up; raise :class:`ConfigurationError` when a setting that
    cannot work without mail (``AAA_CONFIRM_EMAIL``, ``AAA_INVITE_ONLY``) lacks a
    canonical URL."""
    base_url = settings.base_url or (DEV_BASE_URL if debug or testing else None)
    if base_url is None and (settings.confirm_email or settings.invite_only):
        raise ConfigurationError(
            "AAA_CONFIRM_EMAIL and AAA_INVITE_ONLY mail links: set AAA_BASE_URL to the "
            "app's canonical external URL (https://example.org); links are never built "
            "from the request's Host header"
        )
    by_mail = base_url is not None and settings.enable_email
    if settings.enable_email and base_url is None:
        _log.warning(
            "AAA_BASE_URL is not set: password reset, invitations and change of email "
            "address by mail are off"
        )
    return MailFlows(
        base_url=base_url,
        confirm=settings.confirm_email,
        reset=by_mail,
        invite=by_mail and settings.enable_registration,
        email_change=by_mail,
    )


def init_app(app: Flask, settings: Settings) -> MailFlows:
    """Set up Flask-Mailman (unless the app already did) and the after-response sending."""
    flows = flows_for(settings, debug=app.debug, testing=app.testing)
    if "mailman" not in app.extensions:
        if app.testing and not app.config.get("MAIL_BACKEND"):
            app.config["MAIL_BACKEND"] = "locmem"
        Mail().init_app(app)
    app.extensions[EXTENSION_KEY] = flows
    app.after_request(_after_response)

    @app.context_processor
    def _mail_globals() -> dict[str, Any]:
        return {"aaa_mail": flows}

    return flows


def flows() -> MailFlows:
    """The mail flows of the current app."""
    return cast("MailFlows", current_app.extensions[EXTENSION_KEY])


def link(endpoint: str, **values: Any) -> str:
    """``AAA_BASE_URL`` + the endpoint's path. The path comes from the URL map alone, not
    from the request, so no header can change where the link points."""
    base = flows().base_url
    if base is None:
        raise ConfigurationError("mail links need AAA_BASE_URL")
    path = current_app.url_map.bind("localhost").build(endpoint, values, force_external=False)
    return base + path


def send(template: str, to: str, **context: Any) -> None:
    """Queue a mail for after the response. ``context`` goes to the templates (with
    ``aaa_settings``); only this request's successful response sends it."""
    queue: Queued = g.setdefault(_QUEUE, [])
    queue.append((template, to, context))


def after_response(job: Callable[[], None]) -> None:
    """Run ``job`` once this request's response has been sent (and only if it succeeded),
    in an app context of its own; the mail it queues goes out when it returns."""
    jobs: list[Callable[[], None]] = g.setdefault(_JOBS, [])
    jobs.append(job)


def _after_response(response: FlaskResponse) -> FlaskResponse:
    queued: Queued = g.pop(_QUEUE, None) or []
    jobs: list[Callable[[], None]] = g.pop(_JOBS, None) or []
    if not queued and not jobs:
        return response
    if response.status_code >= 400:
        if queued:
            _log.warning("%d queued mail(s) dropped: the response failed", len(queued))
        return response
    app = cast("Flask", current_app._get_current_object())  # type: ignore[attr-defined]
    sender = state().settings.mail_sender

    def afterwards() -> None:
        if queued:
            deliver(app, sender, queued)
        for job in jobs:
            run_job(app, sender, job)

    response.call_on_close(afterwards)
    return response


def run_job(app: Flask, sender: str, job: Callable[[], None]) -> int:
    """Run one :func:`after_response` job, then send the mail it queued. Nothing is raised:
    a failure is logged. Returns how many mails were sent."""
    with app.app_context():
        try:
            job()
        except Exception as exc:  # the response is gone: log and carry on
            # The type only, as for mail: a database error's text carries the statement's
            # parameters (an address, a password hash for a registration).
            _log.error("work after the response failed (%s)", type(exc).__name__)
            return 0
        queued: Queued = g.pop(_QUEUE, None) or []
    return deliver(app, sender, queued) if queued else 0


def render(template: str, context: Mapping[str, Any]) -> tuple[str, str, str]:
    """The subject (one line), text and HTML of ``aaa/mail/<template>``."""
    subject = render_template(f"aaa/mail/{template}.subject.txt", **context)
    subject = " ".join(subject.split())  # one line, whatever the template holds
    text = render_template(f"aaa/mail/{template}.txt", **context)
    html = render_template(f"aaa/mail/{template}.html", **context)
    return subject, text, html


def deliver(app: Flask, sender: str, queued: Queued) -> int:
    """Render and send queued mail (after the response). A failure is logged, never
    raised: the client has its answer already. Returns how many were sent."""
    with app.app_context():
        try:
            messages = []
            for template, to, context in queued:
                subject, text, html = render(template, context)
                message = EmailMultiAlternatives(subject, text, sender, [to])
                message.attach_alternative(html, "text/html")
                messages.append(message)
            connection = app.extensions["mailman"].get_connection()
            return int(connection.send_messages(messages) or 0)
        except Exception as exc:  # the response is gone: log and carry on
            _log.error("could not send %d mail(s) (%s)", len(queued), type(exc).__name__)
            return 0
