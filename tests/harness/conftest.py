"""Harness tests: the fake backends importable by module name (pytester comes from
``tests/conftest.py``)."""

import sys

from .jobs import FAKES

if str(FAKES) not in sys.path:
    sys.path.insert(0, str(FAKES))
