"""The demo application: the tutorial's notes app, secured with Flask-AAA.

Run it with ``python -m flask_aaa.demo`` (or the README's first command). Its data lives in
``.demo/`` below the current directory (``FLASK_AAA_DEMO_DIR`` to change it). The CLI works on
the same database: ``flask --app flask_aaa.demo aaa list-users``.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import importlib.util
import os
import re
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, flash, g, jsonify, redirect, render_template, request, url_for
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ForeignKey, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .. import (
    AAA,
    Base,
    InvalidInput,
    Target,
    User,
    audited,
    auth_required,
    current_user,
    filter_allowed,
    permissions_required,
    public,
)
from ..db import utcnow

db = SQLAlchemy(model_class=Base)
aaa = AAA(db=db)


class Note(db.Model):  # type: ignore[name-defined,misc]
    """A note, owned by the user who wrote it (a foreign key to Flask-AAA's users)."""

    __tablename__ = "demo_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(
        ForeignKey("aaa_users.id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str] = mapped_column(String(120))
    body: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    owner: Mapped[User] = relationship()


def demo_dir() -> Path:
    return Path(os.environ.get("FLASK_AAA_DEMO_DIR", ".demo")).resolve()


def _secret_key(folder: Path) -> str:
    path = folder / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the demo app; ``config`` overrides (tests pass their own database)."""
    folder = demo_dir()
    folder.mkdir(parents=True, exist_ok=True)
    app = Flask(__name__, instance_path=str(folder))
    app.config.update(
        SECRET_KEY=_secret_key(folder),
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{folder / 'demo.db'}",
        AAA_APP_NAME="Notes",
        AAA_HOME_ENDPOINT="index",
        AAA_DENY_BY_DEFAULT=True,
        # The demo is served over plain HTTP on 127.0.0.1; a real deployment keeps the default
        # (Secure, __Host- cookies) behind HTTPS.
        AAA_SECURE_COOKIES=False,
        # New accounts confirm their address, so every mail flow can be seen. The mail is not
        # sent anywhere: it is written to files that the /mail page shows.
        AAA_CONFIRM_EMAIL=True,
        AAA_BASE_URL=os.environ.get("FLASK_AAA_DEMO_BASE_URL", "http://127.0.0.1:5000"),
        AAA_MAIL_SENDER="notes@demo.invalid",
        MAIL_BACKEND="file",
        MAIL_FILE_PATH=str(folder / "mail"),
    )
    if importlib.util.find_spec("webauthn") is not None:
        # Passkeys when the extra is installed. Their relying party must be a domain name,
        # never an IP address: open the demo at http://localhost:5000 to use them.
        app.config.update(
            AAA_PASSKEYS=True,
            AAA_PASSKEY_RP_ID="localhost",
            AAA_PASSKEY_ORIGIN=os.environ.get(
                "FLASK_AAA_DEMO_PASSKEY_ORIGIN", "http://localhost:5000"
            ),
        )
    if os.environ.get("AAA_RATELIMIT_STORAGE_URI"):
        app.config["AAA_RATELIMIT_STORAGE_URI"] = os.environ["AAA_RATELIMIT_STORAGE_URI"]
    if os.environ.get("FLASK_AAA_DEMO_DATABASE_URL"):
        app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["FLASK_AAA_DEMO_DATABASE_URL"]
    app.config.update(config or {})
    aaa.init_app(app)
    _register_views(app)
    return app


#: Separator the file mail backend writes after each message.
_MAIL_SEPARATOR = b"\n" + b"-" * 79 + b"\n"
_LINK_RE = re.compile(r"https?://[^\s<>\"']+")


def sent_mail(folder: Path, limit: int = 50) -> list[dict[str, Any]]:
    """The newest messages the file backend wrote to ``folder``, newest first."""
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.log"), key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
    messages: list[dict[str, Any]] = []
    for path in files:
        parts = [part for part in path.read_bytes().split(_MAIL_SEPARATOR) if part.strip()]
        for raw in reversed(parts):
            message = email.message_from_bytes(raw, policy=email.policy.default)
            body = message.get_body(preferencelist=("plain",))
            text = body.get_content() if body is not None else ""
            messages.append(
                {
                    "subject": str(message.get("Subject", "")),
                    "to": str(message.get("To", "")),
                    "date": str(message.get("Date", "")),
                    "text": text,
                    "links": list(dict.fromkeys(_LINK_RE.findall(text))),
                }
            )
            if len(messages) >= limit:
                return messages
    return messages


def _find_note(note_id: int) -> Note | None:
    """The loader of the notes views guarded by a rule (None answers 404)."""
    return db.session.get(Note, note_id)


def _allowed_ids(permission: str) -> set[int]:
    """Ids of the notes the current user may use ``permission`` on: the notes they own, or
    all of them with ``<permission>:any`` (editors hold it through ``notes:*``)."""
    stmt = filter_allowed(select(Note.id), current_user, permission, rule="owner")
    return set(db.session.scalars(stmt))


def _checked(title: str, body: str) -> tuple[str, str]:
    title, body = title.strip(), body.strip()
    if not title or len(title) > 120 or len(body) > 10_000 or "\x00" in title + body:
        raise InvalidInput(
            {"title": "A title of 1 to 120 characters (and a body under 10,000) please."}
        )
    return title, body


def _new_note(title: str, body: str) -> Note:
    title, body = _checked(title, body)
    note = Note(owner_id=current_user.id, title=title, body=body)
    db.session.add(note)
    db.session.flush()
    return note


def _note_json(note: Note) -> dict[str, Any]:
    return {
        "id": note.id,
        "title": note.title,
        "body": note.body,
        "owner": note.owner.label if note.owner else None,
        "created_at": note.created_at.isoformat(),
    }


def _register_views(app: Flask) -> None:
    @app.get("/")
    @public
    def index() -> str:
        return render_template("demo/index.html")

    @app.get("/mail")
    @public
    def mail() -> str:
        """The demo's outbox: every message it "sent", with its links (demo only: a real app
        never shows anyone's mail)."""
        folder = Path(app.config["MAIL_FILE_PATH"])
        return render_template("demo/mail.html", messages=sent_mail(folder))

    @app.get("/notes")
    @permissions_required("notes:read")
    def notes() -> str:
        rows = db.session.scalars(select(Note).order_by(Note.id.desc()).limit(100)).all()
        return render_template(
            "demo/notes.html",
            notes=rows,
            editable=_allowed_ids("notes:edit"),
            deletable=_allowed_ids("notes:delete"),
            errors={},
        )

    @app.post("/notes")
    @permissions_required("notes:write")
    @audited("notes.created")
    def create_note() -> Any:
        note = _new_note(request.form.get("title", ""), request.form.get("body", ""))
        flash(f"Saved note {note.title!r}.", "success")
        return redirect(url_for("notes"), 303)

    @app.get("/api/notes")
    @auth_required("session", "token")
    @permissions_required("notes:read")
    def api_notes() -> Any:
        """The notes as JSON, for a browser session or a script with an API token."""
        rows = db.session.scalars(select(Note).order_by(Note.id.desc()).limit(100)).all()
        return jsonify(notes=[_note_json(n) for n in rows])

    @app.post("/api/notes")
    @auth_required("token")
    @permissions_required("notes:write")
    @audited("notes.created")
    def api_create_note() -> Any:
        """Create a note from a script: ``{"title": ..., "body": ...}`` with a bearer token."""
        data = request.get_json(silent=True)
        if not isinstance(data, dict) or set(data) - {"title", "body"}:
            raise InvalidInput({"body": 'Send a JSON object {"title": ..., "body": ...}.'})
        title, body = data.get("title"), data.get("body", "")
        if not isinstance(title, str) or not isinstance(body, str):
            raise InvalidInput({"title": "title and body are strings."})
        note = _new_note(title, body)
        return jsonify(note=_note_json(note)), 201

    @app.get("/notes/<int(max=2147483647):note_id>/edit")
    @permissions_required("notes:edit", on=_find_note, rule="owner")
    def edit_note(note_id: int) -> str:
        """Authors edit their own notes; editors (``notes:*``) anyone's."""
        return render_template("demo/edit.html", note=g.aaa_object)

    @app.post("/notes/<int(max=2147483647):note_id>/edit")
    @permissions_required("notes:edit", on=_find_note, rule="owner")
    @audited("notes.updated", target=lambda note_id: Target("note", str(note_id)))
    def update_note(note_id: int) -> Any:
        note: Note = g.aaa_object
        note.title, note.body = _checked(
            request.form.get("title", ""), request.form.get("body", "")
        )
        flash(f"Saved note {note.title!r}.", "success")
        return redirect(url_for("notes"), 303)

    @app.post("/notes/<int(max=2147483647):note_id>/delete")
    @permissions_required("notes:delete", on=_find_note, rule="owner")
    @audited("notes.deleted", target=lambda note_id: Target("note", str(note_id)))
    def delete_note(note_id: int) -> Any:
        note: Note = g.aaa_object
        db.session.delete(note)
        flash(f"Deleted note {note.title!r}.", "success")
        return redirect(url_for("notes"), 303)
