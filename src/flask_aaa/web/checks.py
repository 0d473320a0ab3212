"""The start-up check: every rule a view names is registered, and every endpoint declares
``@public`` or a requirement.

Routes are known only once the app is fully set up, so the check runs when the first request
comes in (Flask refuses new routes from then on), and on demand with ``flask aaa check``:

- a view that names an unknown rule is a programming error: every request fails with a 500
  (``ConfigurationError``, logged with the view and the name) until it is fixed, so no
  request ever reaches a view whose rule cannot be evaluated;
- with ``AAA_DENY_BY_DEFAULT`` on, the endpoints with neither ``@public`` nor a requirement
  are logged once as a WARNING: they answer 401/403, and the log says which they are.
"""

from __future__ import annotations

import dataclasses
import logging

from flask import Flask, current_app

from ..errors import ConfigurationError
from .context import state
from .rules import RULES_ATTR

_log = logging.getLogger("flask_aaa")


@dataclasses.dataclass(frozen=True, slots=True)
class AppReport:
    """What the start-up check found."""

    #: Endpoints with neither ``@public`` nor a requirement (static files excepted).
    unguarded: list[str]
    #: ``(endpoint, rule name)`` for every rule a view names that is not registered.
    unknown_rules: list[tuple[str, str]]


def check_app(app: Flask) -> AppReport:
    """Check the app's views against its Flask-AAA rules and guards."""
    from ..extension import unguarded_endpoints  # the extension module imports this one

    registry = app.extensions["aaa"].rules
    unknown = sorted(
        (endpoint, name)
        for endpoint, view in app.view_functions.items()
        for name in getattr(view, RULES_ATTR, ())
        if name not in registry
    )
    return AppReport(unguarded_endpoints(app), unknown)


def check_on_first_request() -> None:
    """``before_request``: run :func:`check_app` until it passes once (per app)."""
    st = state()
    if st.checked:
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    report = check_app(app)
    if report.unknown_rules:
        listed = ", ".join(f"{name!r} (view {endpoint})" for endpoint, name in report.unknown_rules)
        _log.error("Flask-AAA: views name rules that are not registered: %s", listed)
        raise ConfigurationError(f"unknown object-level rules: {listed}")
    if st.settings.deny_by_default and report.unguarded:
        _log.warning(
            "Flask-AAA: AAA_DENY_BY_DEFAULT closes %d endpoint(s) that declare neither @public "
            "nor a requirement: %s",
            len(report.unguarded),
            ", ".join(report.unguarded),
        )
    st.checked = True
