"""Case 1: a protected GET (signed in, one permission check, ``notes:read``), in-process
through the test client (the server is not measured), with a cookie session and with a
bearer token.

- bare Flask (the floor): Flask's signed cookie session holds the user id; the permissions
  are a set in memory.
- bare Flask + one session query (the floor of server-side sessions): the cookie holds a
  random token, looked up by its SHA-256 with one query per request through
  Flask-SQLAlchemy's session; what any library that checks the session in the database on
  every request pays at least.
- Flask-Login: the tutorial pattern: the user loaded from the database on each request, the
  permission found through ``user.roles`` and ``role.permissions``.
- Flask-Security-Too: ``@auth_required`` and ``@permissions_required`` (fsqla_v3 models); its
  own auth token (``Authentication-Token``) for the bearer case.
- Flask-AAA: server-side sessions (the session row and the authz version read in one query,
  the grants from the per-process cache) and ``@permissions_required``; a personal access
  token for the bearer case. Redis is not configured here (rate limits in memory).

Each table has every contender's tables on the database it names (the floor needs none).
"""

from __future__ import annotations

from typing import Any

from ..apps import Built, aaa_app, bare_app, check, fs_app, session_floor_app, tutorial_app
from ..peers import available
from ..runner import Case, Contender, at_most, faster_by, repeated, throughput_at_least

FLOOR = "bare Flask (floor)"
SESSION_FLOOR = "bare Flask + one session query (server-side floor)"
FLASK_LOGIN = "Flask-Login (tutorial pattern)"
FS_TOO = "Flask-Security-Too"


def getter(built: Built, path: str, headers: dict[str, str] | None = None) -> Any:
    client = built.client
    check(client.get(path, headers=headers or {}))

    def get() -> None:
        check(client.get(path, headers=headers or {}))

    return repeated(get)


def closer(*built: Built | None) -> Any:
    def close() -> None:
        for one in built:
            if one is not None:
                one.close()

    return close


def build(options: Any) -> list[Case]:
    fs_missing = available("flask_security")
    floor = bare_app()
    cases = []
    for db_name, fresh in options.databases():
        url = fresh()
        ours_name = f"Flask-AAA, server-side sessions on {db_name}"
        ours = aaa_app(url)
        session_floor = session_floor_app(url)
        tutorial = tutorial_app(url)
        fs = None if fs_missing else fs_app(url)
        contenders = [
            Contender(FLOOR, getter(floor, "/protected")),
            Contender(SESSION_FLOOR, getter(session_floor, "/protected")),
            Contender(FLASK_LOGIN, getter(tutorial, "/protected")),
            Contender(ours_name, getter(ours, "/protected")),
        ]
        targets = [
            throughput_at_least(ours_name, FLOOR, 0.5, "at least 0.5x bare Flask's throughput"),
        ]
        if fs is not None:
            contenders.insert(3, Contender(FS_TOO, getter(fs, "/protected")))
            targets.insert(0, faster_by(ours_name, FS_TOO, 1.5, "at least 1.5x Flask-Security-Too"))
        notes = [
            "The HTTP targets of issue 8 (gunicorn, 2 workers) are stated for a server; "
            "in-process figures leave the server out, so the ratios to the floor are harsher.",
            f"Flask-Login and Flask-Security-Too have their tables on {db_name} too.",
        ]
        if fs_missing:
            notes.append(f"Flask-Security-Too skipped ({fs_missing}).")
        cases.append(
            Case(
                title=f"Protected GET, cookie session, Flask-AAA on {db_name} (per request)",
                contenders=contenders,
                ours=ours_name,
                floor=FLOOR,
                targets=targets,
                notes=notes,
            )
        )
        token_name = f"Flask-AAA personal access token on {db_name}"
        token_contenders = [
            Contender(FLOOR, getter(floor, "/protected")),
            Contender(token_name, getter(ours, "/api/protected", ours.token_headers)),
        ]
        token_targets = [at_most(token_name, FLOOR, 2.0, "at most 2x the floor's time")]
        if fs is not None:
            token_contenders.insert(
                1, Contender(f"{FS_TOO} auth token", getter(fs, "/api/protected", fs.token_headers))
            )
            token_targets.insert(
                0, faster_by(token_name, f"{FS_TOO} auth token", 1.5, "at least 1.5x FS-Too")
            )
        cases.append(
            Case(
                title=f"Protected GET, bearer token, Flask-AAA on {db_name} (per request)",
                contenders=token_contenders,
                ours=token_name,
                floor=FLOOR,
                targets=token_targets,
                close=closer(ours, session_floor, tutorial, fs),
            )
        )
    return cases
