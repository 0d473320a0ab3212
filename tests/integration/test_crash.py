"""L07: a writer killed with SIGKILL mid-stream leaves no action without its event.

A child process creates roles in a loop, each ``rbac.create_role`` (the role and its
``role.created`` event) in one transaction, and is killed at a random moment. Afterwards
every role has exactly one event, every event its role, and the chain verifies.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flask_aaa.models import AuditEvent, Role
from flask_aaa.services import audit, signing

WRITER = textwrap.dedent(
    """
    import os, sys
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session
    from flask_aaa.db import configure_engine, writing
    from flask_aaa.services import rbac, signing
    from flask_aaa.services.actors import Actor

    engine = create_engine(os.environ["URL"])
    configure_engine(engine)
    signing.use(engine, signing.Signer([b"k" * 32], checkpoint_every=7))
    actor = Actor.system("crash-test")
    with Session(engine) as session:
        print("ready", flush=True)
        for i in range(100000):
            with writing():
                rbac.create_role(session, actor=actor, name=f"r{os.getpid()}-{i}")
                session.commit()
    """
)


def test_L07_sigkill_mid_write_leaves_actions_and_events_paired(engine, database_url):
    for _round in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER],
            env={**os.environ, "URL": database_url},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(random.uniform(0.2, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
    signing.use(engine, signing.Signer([b"k" * 32], checkpoint_every=7))
    with Session(engine) as session:
        roles = set(session.scalars(select(Role.name)))
        created = session.scalars(
            select(AuditEvent.target_label).where(AuditEvent.action == "role.created")
        ).all()
        assert roles, "the writer made no progress before it was killed"
        assert sorted(created) == sorted(roles)  # one event per role, none without its role
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == len(roles)
        report = audit.verify_chain(session)
        assert report.ok, report
        assert report.signed and report.checkpoints >= 1
