"""Turn the check on in this process: join the job's check and wrap ``mlx.core.distributed`` and
``reference`` — now if already imported, else the moment the program imports them."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from typing import Any

from conformance.check import fingerprint, settings, wrap
from conformance.check.session import Session

_session: Session | None = None
TARGETS = ("mlx.core", "reference")


def session() -> Session | None:
    """This process's check, once :func:`activate` ran."""
    return _session


def activate() -> Session:
    """Join the check (rank 0 starts the coordinator) and wrap the backends; idempotent."""
    global _session
    if _session is not None:
        return _session
    _session = Session(settings.read())
    os.environ[settings.ENV_ACTIVE_PID] = str(os.getpid())
    for name in TARGETS:
        if name in sys.modules:
            _wrap(name, sys.modules[name])
    sys.meta_path.insert(0, _WrapOnImport())
    return _session


def launched_rank() -> bool:
    """Whether this process is a rank a launcher started (and not a child of one)."""
    inherited = os.environ.get(settings.ENV_ACTIVE_PID)
    if inherited and inherited != str(os.getpid()):
        return False
    return settings.launcher_rank() is not None


def _wrap(name: str, module: Any) -> None:
    assert _session is not None
    if name == "mlx.core":
        fingerprint.skip_frames_in(os.path.dirname(os.path.dirname(module.__file__)))
        wrap.install(module.distributed, _session)
    else:
        fingerprint.skip_frames_in(os.path.dirname(module.__file__))
        wrap.install(module, _session)


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Wraps a target module right after it has been executed, before the importer sees it."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in TARGETS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            _wrap(fullname, module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
