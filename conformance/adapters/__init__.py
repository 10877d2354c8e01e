"""Adapters that put backends other than ``reference`` under the conformance suite.

Each adapter module exposes a module attribute ``backend`` (resolved lazily, so importing the
module never requires the backend's own package) that satisfies the backend contract of
``docs/contracts.md``.
"""
