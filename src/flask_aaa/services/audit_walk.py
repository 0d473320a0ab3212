"""One range of a parallel audit verification, run as ``python -m flask_aaa.services.audit_walk``.

:func:`flask_aaa.services.audit.verify_chain` starts one such process per range (``jobs``):
the task comes as JSON on standard input, the result goes as JSON to standard output (null
for any finding), and the process exits. Not meant to be run by hand.
"""

from __future__ import annotations

import json
import sys

from .audit import walk_range


def main() -> int:
    task = json.loads(sys.stdin.read())
    sys.stdout.write(json.dumps(walk_range(task)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
