"""Loaded by Python at start-up when ``python -m conformance check`` puts this directory on
``PYTHONPATH``: checks the program without changing it. A rank that cannot join the check ends
at once (status 2) rather than run unchecked while the others wait for it."""

import os
import sys

if os.environ.get("CONFORMANCE_CHECK") == "1":
    try:
        import conformance.check  # noqa: F401
    except Exception as exc:
        print(f"conformance check: cannot start: {exc}", file=sys.stderr, flush=True)
        os._exit(2)
