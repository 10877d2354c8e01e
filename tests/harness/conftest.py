"""Harness tests: pytester, and the fake backends importable by module name."""

import sys

from .jobs import FAKES

pytest_plugins = ["pytester"]

if str(FAKES) not in sys.path:
    sys.path.insert(0, str(FAKES))
