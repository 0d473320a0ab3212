"""``flask aaa migrate-flask-user``: link a Flask-User database to Flask-AAA."""

from __future__ import annotations

import secrets

import click
from flask import current_app
from flask.cli import with_appcontext

from ..services.actors import RequestFacts
from . import migrate


@click.command("migrate-flask-user")
@click.option("--apply", "do_apply", is_flag=True, help="Carry the steps out (default: print).")
@with_appcontext
def migrate_flask_user(do_apply: bool) -> None:
    """Print (with --apply: take) the steps that add Flask-AAA's tables beside a Flask-User
    app's own and link its users, roles and permissions. The app's rows are not changed."""
    engine = current_app.extensions["aaa"].db.engine
    try:
        plan = migrate.inspect_database(engine)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    layout = plan.layout
    click.echo(
        f"Flask-User tables: users={layout.users} roles={layout.roles} "
        f"user_roles={layout.user_roles} permissions={layout.permissions} "
        f"role_permissions={layout.role_permissions}"
    )
    for number, step in enumerate(plan.steps(), 1):
        click.echo(f"{number}. {step}")
    if not do_apply:
        click.echo("Nothing changed. Run again with --apply to carry these steps out.")
        return
    facts = RequestFacts.for_cli(request_id=f"cli-{secrets.token_hex(6)}")
    changed = migrate.apply(engine, plan, facts=facts)
    click.echo(f"Done: {changed} user(s) linked or updated.")
