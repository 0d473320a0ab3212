"""``python -m flask_aaa.demo``: create the database, seed it once, print how to sign in, serve."""

from __future__ import annotations

import argparse
import os
import secrets

from sqlalchemy import select, update

from ..db import utcnow
from ..migrations import upgrade
from ..models import User
from ..services import accounts, rbac
from ..services.actors import Actor, RequestFacts
from . import Note, create_app, db, demo_dir

ROLES = {
    "admin": ("Full administration", ["*"]),
    "editor": ("Reads, writes and deletes notes", ["notes:*"]),
    "reader": ("Reads notes", ["notes:read"]),
    # Without notes:edit:any / notes:delete:any, the "owner" rule applies: their own notes only.
    "author": (
        "Reads notes, writes them, edits and deletes their own",
        ["notes:read", "notes:write", "notes:edit", "notes:delete"],
    ),
}
USERS = [
    ("admin", "admin"),
    ("alice", "editor"),
    ("bob", "reader"),
    ("carol", None),
    ("dave", "author"),
]
NOTES = [
    ("Welcome", "Every change you make here is recorded in the audit trail."),
    (
        "Try this",
        "Sign in as carol: she has no role, so /notes is refused. Grant her one from the CLI.",
    ),
]


def seed() -> dict[str, str]:
    """Create the schema and, on a new database, the demo roles, users and notes."""
    upgrade(db.engine)
    Note.__table__.create(db.engine, checkfirst=True)
    credentials_file = demo_dir() / "credentials.txt"
    if db.session.scalar(select(User.id).limit(1)) is None:
        from flask import current_app

        st = current_app.extensions["aaa"]
        actor = Actor.system("demo-seed")
        facts = RequestFacts.for_cli("demo-seed")
        session = db.session()
        roles = {}
        for name, (description, permissions) in ROLES.items():
            roles[name] = rbac.create_role(
                session, actor=actor, name=name, description=description, facts=facts
            )
            for permission in permissions:
                rbac.add_permission(
                    session, actor=actor, role=roles[name], permission=permission, facts=facts
                )
        lines = []
        for username, role in USERS:
            password = "-".join(secrets.token_hex(3) for _ in range(4))
            user = accounts.create_user(
                session,
                actor=actor,
                settings=st.settings,
                passwords=st.passwords,
                username=username,
                email=f"{username}@example.org",
                password=password,
                roles=[roles[role]] if role else [],
                facts=facts,
            )
            user.email_confirmed_at = utcnow()  # the demo's own accounts need no confirming
            lines.append(f"{username}\t{password}\t{role or '(no role)'}")
            if username == "alice":
                for title, body in NOTES:
                    session.add(Note(owner_id=user.id, title=title, body=body))
        session.commit()
        credentials_file.write_text("\n".join(lines) + "\n")
        credentials_file.chmod(0o600)
    else:
        # A demo database seeded before email confirmation was on: its seeded accounts
        # must still be able to sign in.
        db.session.execute(
            update(User)
            .where(User.username_key.in_([name for name, _ in USERS]))
            .where(User.email_confirmed_at.is_(None))
            .values(email_confirmed_at=utcnow())
        )
        db.session.commit()
    return dict(line.split("\t", 1) for line in credentials_file.read_text().splitlines() if line)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Flask-AAA demo application.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5000")))
    parser.add_argument(
        "--setup-only", action="store_true", help="Create and seed the database, then exit."
    )
    parser.add_argument(
        "--no-idp",
        action="store_true",
        help="Do not run the development identity provider (on the next port) beside the demo.",
    )
    args = parser.parse_args()
    # Links in the demo's mail point where the demo listens.
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # noqa: S104
    base_url = os.environ.get("FLASK_AAA_DEMO_BASE_URL") or f"http://{host}:{args.port}"
    overrides: dict[str, object] = {"AAA_BASE_URL": base_url}
    idp_issuer = None
    if not (args.no_idp or args.setup_only):
        idp_issuer = _start_devidp(base_url, port=args.port + 1, overrides=overrides)
    app = create_app(overrides)
    with app.app_context():
        credentials = seed()
    folder = demo_dir()
    print(f"\nFlask-AAA demo: http://{args.host}:{args.port}/\n")
    print("Sign in as (username, password, role):")
    for username, rest in credentials.items():
        password, role = rest.split("\t")
        print(f"  {username:8} {password}   {role}")
    print(f"\nMail: {base_url}/mail  (the demo writes its mail to files instead of sending it)")
    print(f"Data: {folder}  (delete the folder to start over)")
    print("CLI:  python3 run.py flask --app flask_aaa.demo aaa grant-role carol reader")
    if idp_issuer:
        print(f"IdP:  {idp_issuer}  (DEVELOPMENT ONLY identity provider: 'Sign in with Dev IdP')")
    print()
    if not args.setup_only:
        app.run(host=args.host, port=args.port, threaded=True)


def _start_devidp(base_url: str, *, port: int, overrides: dict[str, object]) -> str | None:
    """Run the development-only identity provider on 127.0.0.1:``port`` and configure the
    demo's provider ``devidp`` for it. Without the ``oidc`` extra the demo runs without it."""
    try:
        from ..devidp import DevClient, DevIdP
    except ImportError:
        print("(Third-party sign-in is off: pip install flask-aaa[oidc] to try it.)")
        return None
    secret = secrets.token_urlsafe(24)
    callback = f"{base_url}/auth/oidc/devidp/callback"
    idp = DevIdP(clients=[DevClient("notes-demo", secret, (callback,))], allow=True)
    idp.start("127.0.0.1", port)
    overrides["AAA_OIDC_PROVIDERS"] = {
        "devidp": {
            "issuer": idp.issuer,
            "client_id": "notes-demo",
            "client_secret": secret,
            "label": "Dev IdP",
        }
    }
    overrides["AAA_OIDC_REGISTRATION"] = True
    return idp.issuer


if __name__ == "__main__":
    main()
