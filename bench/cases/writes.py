"""Case 2: an audited write, a POST that inserts a row and records an audit event, through the
test client (in-process: the server is not measured), on each database.

- Flask-AAA, no audit event (the floor): ``@permissions_required("notes:write")``, the insert
  and ``db.session.commit()``: the same write without an event.
- Flask-AAA audited: the same view under ``@audited("notes.created")``: the event is numbered,
  hash-chained and written in the write's own transaction.
- the tutorial pattern: Flask-Login with a signed cookie session, the user loaded on each
  request, the permission found through ``user.roles`` and ``role.permissions`` (lazy
  loads), the insert committed, then an ``AuditLog`` row (no chain) committed on its own.

Flask-AAA's requests also pass its CSRF check (``X-CSRFToken``) and resolve its server-side
session; the tutorial's have neither.
"""

from __future__ import annotations

from typing import Any

from ..apps import aaa_app, check, tutorial_app
from ..runner import Case, Contender, at_most, faster_by, repeated

FLOOR = "Flask-AAA write, no audit event (floor)"
OURS = "Flask-AAA audited write"
TUTORIAL = "tutorial pattern (write, then audit row)"


def build(options: Any) -> list[Case]:
    cases = []
    for db_name, fresh in options.databases():
        url = fresh()
        ours = aaa_app(url)
        tutorial = tutorial_app(url)
        headers = ours.write_headers

        def plain(c: Any = ours.client, h: dict[str, str] = headers) -> None:
            check(c.post("/notes-plain", data={"title": "note"}, headers=h), 201)

        def audited(c: Any = ours.client, h: dict[str, str] = headers) -> None:
            check(c.post("/notes", data={"title": "note"}, headers=h), 201)

        def tut(c: Any = tutorial.client) -> None:
            check(c.post("/notes", data={"title": "note"}), 201)

        def close(built: tuple[Any, ...] = (ours, tutorial)) -> None:
            for b in built:
                b.close()

        cases.append(
            Case(
                title=f"Audited write on {db_name} (per request)",
                contenders=[
                    Contender(FLOOR, repeated(plain)),
                    Contender(OURS, repeated(audited)),
                    Contender(TUTORIAL, repeated(tut)),
                ],
                ours=OURS,
                floor=FLOOR,
                targets=[
                    faster_by(OURS, TUTORIAL, 3, "at least 3x the tutorial pattern's throughput"),
                    at_most(OURS, FLOOR, 1.25, "auditing adds at most 25% to the same write"),
                ],
                close=close,
            )
        )
    return cases
