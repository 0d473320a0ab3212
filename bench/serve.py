"""The request case's apps under a real server: ``gunicorn 'bench.serve:create()'``.

The bench process builds each app first (tables, the signed-in user, the token) and then
starts gunicorn with the same database and secret in the environment; a worker only builds
the app on that database (``serve=True``), so the cookie and the token made by the bench
process are valid in every worker.
"""

from __future__ import annotations

import json
import os

from flask import Flask

from .apps import BUILDERS


def create() -> Flask:
    kind = os.environ["BENCH_APP"]
    url = os.environ.get("BENCH_DATABASE_URL", "")
    config = json.loads(os.environ.get("BENCH_CONFIG", "{}"))
    return BUILDERS[kind](url, serve=True, **config).app
