"""``python -m conformance <command>``: run (the suite), selftest, bench.

Each command lives in its own module, imported only when chosen, so a command whose module (or
whose optional dependencies) is missing fails with a message instead of breaking the others.
Every module provides ``main(argv) -> int``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "run": ("conformance.run.runner", "run the spec at several rank counts and write reports"),
    "selftest": ("conformance.run.selftest", "check that the suite catches known-broken backends"),
    "bench": ("conformance.bench", "measure bandwidth and latency of a backend"),
    "check": (
        "conformance.check.command",
        "run a program with its distributed calls checked across ranks",
    ),
    "matrix": (
        "conformance.run.matrix",
        "run the suite against several MLX releases and merge the reports",
    ),
    "preflight": (
        "conformance.run.preflight",
        "check that ranks on several hosts reach each other",
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m conformance <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "python -m conformance <command> --help shows a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the chosen command's ``main``; 2 for usage errors and missing commands."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(
                f"error: the {name!r} command is not available in this installation "
                f"({module_name} is missing)",
                file=sys.stderr,
            )
        else:
            print(
                f"error: the {name!r} command needs {exc.name!r}, which is not installed. "
                "Install the project's extras, e.g. pip install "
                "'mlx-distributed-conformance[test]' (bench: [bench]).",
                file=sys.stderr,
            )
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
