"""Backends reached through factories: ``fake_factory:make`` (zero-argument factory) and
``fake_factory:backend`` (a ready Backend)."""

import reference
from conformance.backend import Backend

backend = Backend("fake-ready", reference, version="1.2.3")


def make() -> Backend:
    return Backend("fake-made", reference, version="4.5.6")
