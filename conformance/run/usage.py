"""Usage errors of the commands that launch jobs (``run``, ``selftest``, ``preflight``), found
before any job starts.

Contract:

- Each check raises :class:`UsageError` with one line that names the value, what is wrong with it
  and the fix; :func:`command` turns it into that line on stderr (``error: ...``) and exit
  status 2 (docs/contracts.md, "Exit statuses"), the convention ``bench`` follows too.
- :func:`check_backend` loads the backend in the calling process, from the caller's working
  directory and ``PYTHONPATH`` (the directories :func:`caller_pythonpath` hands to the ranks),
  without initialising it: a name that does not resolve, a module that fails to import (also
  ``REFERENCE_DATA_PLANE=bogus``, which the reference rejects at import) or ``mlx`` without MLX
  installed is a usage error instead of one test error per test.
- Values are checked with the rules of the command line they came from: rank counts
  (:func:`rank_counts`, also ``1-4``), positive seconds, a ``-k``/``-m`` expression pytest can
  parse, files that must exist.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from conformance import backend as backend_mod

#: What to write for rank counts, in every message about them.
RANK_COUNT_FORMS = "positive integers such as 2, 1,2,3,4 or 1-4"


#: A valid expression to show beside a parse error, per option.
_EXAMPLES = {"-k": "'all_gather and not float16'", "-m": "'not robust'"}


class UsageError(ValueError):
    """A command-line value that cannot work; the message is one line naming it and the fix."""


def command(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """``main`` with every :class:`UsageError` printed as ``error: <message>``, exit status 2."""

    @functools.wraps(main)
    def guarded(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return guarded


def rank_counts(text: str, option: str = "--np") -> list[int]:
    """``"1,2,3,4"`` or ``"1-4"`` or a mix -> sorted distinct positive rank counts."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                lo, hi = (int(p) for p in part.split("-", 1))
                if hi < lo:
                    raise ValueError(part)
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
    except ValueError:
        out = set()
    if not out or min(out) < 1:
        raise UsageError(f"{option} {text!r} is not a list of rank counts; give {RANK_COUNT_FORMS}")
    return sorted(out)


def rank_count(text: str, option: str = "--np") -> int:
    """One positive rank count."""
    counts = rank_counts(text, option)
    if len(counts) != 1 or text.strip() != str(counts[0]):
        raise UsageError(f"{option} {text!r} is not a rank count; give one positive integer")
    return counts[0]


def positive_integer(text: str | int, option: str) -> int:
    """A positive whole number."""
    try:
        value = int(str(text).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{option} {text!r} is not a count; give a positive integer")
    return value


def positive_seconds(text: str | float, option: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise UsageError(f"{option} {text!r} is not a duration; give a positive number of seconds")
    return value


def check_expression(expression: str | None, option: str) -> None:
    """A ``-k`` or ``-m`` expression that pytest can parse (same grammar for both)."""
    if expression is None:
        return
    try:
        # pytest's own parser: the one the jobs apply, so nothing it accepts is refused here.
        from _pytest.mark.expression import Expression
    except ImportError:  # a pytest without it: the jobs report the error instead
        return
    try:
        Expression.compile(expression)
    except Exception as exc:  # SyntaxError from pytest 9, ParseError before
        reason = getattr(exc, "msg", None) or getattr(exc, "message", None) or str(exc)
        raise UsageError(
            f"{option} {expression!r} is not a valid pytest expression ({reason}); "
            f"write e.g. {option} {_EXAMPLES.get(option, _EXAMPLES['-k'])}"
        ) from None


def existing_file(path: Path | str | None, option: str) -> Path | None:
    """``path`` (None stays None) when it names a readable file."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UsageError(f"{option} {str(path)!r} {what}; give the path of an existing file")
    return path


def caller_pythonpath(base: str | None = None) -> str:
    """``PYTHONPATH`` for the ranks: the caller's working directory, then ``base`` (default the
    caller's ``PYTHONPATH``), so a backend ``package.module`` next to the caller imports in every
    rank although jobs run from the suite's root."""
    base = os.environ.get("PYTHONPATH", "") if base is None else base
    parts = [os.getcwd(), *(p for p in base.split(os.pathsep) if p)]
    return os.pathsep.join(dict.fromkeys(parts))


def check_backend(spec: str) -> None:
    """Load backend ``spec`` here as every rank will, without initialising it."""
    if spec.strip() == "mlx":
        # The adapter imports MLX only when its backend is made, which also asks MPI the world
        # size; importing MLX is what can fail here.
        from conformance.adapters import mlx as mlx_adapter

        try:
            importlib.import_module("mlx.core")
        except ImportError:
            raise UsageError(
                f"--backend mlx: MLX is not installed; {mlx_adapter.INSTALL_HINT}"
            ) from None
        return
    added = [p for p in caller_pythonpath().split(os.pathsep) if p not in sys.path]
    sys.path[:0] = added
    try:
        backend_mod.load_backend(spec)
    except backend_mod.BackendLoadError as exc:
        raise UsageError(
            f"--backend {spec!r} cannot be loaded (looked in this directory and PYTHONPATH): "
            f"{_one_line(str(exc))}"
        ) from None
    finally:
        for path in added:
            sys.path.remove(path)


def _one_line(text: str) -> str:
    return " ".join(text.split())
