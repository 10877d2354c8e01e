"""The commands the docs mark runnable run, and the command-line help lists every command.

Convention (README.md, "Tests and CI"): a fenced ```bash block in README.md or docs/*.md whose
previous line is ``<!-- runnable -->`` holds commands this test runs, one per line (``\\``
continues a line, ``#`` starts a comment). So that each runs in seconds, on a small case:

- ``python -m conformance run``: ``--np`` becomes ``2``; ``-k``/``-m`` are replaced by
  ``-k test_size_agreed``; reports go to a scratch directory (``--report-dir``).
- ``python -m pytest`` (also under ``mpiexec -n N``): ``-k test_size_agreed`` is added.
- A command runs from a scratch directory that holds ``mypackage/mybackend.py`` (the
  reference's API under that name, the README's example of a backend of one's own), or from the
  checkout when it names one of the checkout's paths (``conformance/specs``).
- It must exit 0, or 2 saying that something "is not installed" (an optional extra such as MLX).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.__main__ import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = "<!-- runnable -->"
SMALL = "test_size_agreed"
BACKEND_MODULE = (
    "from reference import *  # noqa: F403\nfrom reference import __all__  # noqa: F401\n"
)


def runnable_commands(path: Path) -> list[str]:
    """The commands of every block marked runnable in ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        assert lines[i + 1].strip() == "```bash", (
            f"{path.name}:{i + 2}: {MARKER} before a non-bash block"
        )
        block: list[str] = []
        for text in lines[i + 2 :]:
            if text.strip() == "```":
                break
            block.append(text)
        joined = "\n".join(block).replace("\\\n", " ")
        for command in joined.splitlines():
            words = shlex.split(command, comments=True)
            if words:
                out.append(shlex.join(words))
    return out


def small_case(command: str, scratch: Path) -> tuple[dict[str, str], list[str]]:
    """The variables ``command`` sets, and its words as the rules of the module docstring run
    it."""
    words = shlex.split(command)
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    is_run = words[:4] == ["python", "-m", "conformance", "run"]
    out: list[str] = words[:4] if is_run else []
    skip = False
    for word in words[len(out) :]:
        if skip:
            skip = False
            continue
        if is_run and word in ("-k", "-m", "--np", "--report-dir"):
            skip = True
            if word == "--np":
                out += ["--np", "2"]
            continue
        out.append(word)
    if is_run:
        out += ["-k", SMALL, "--report-dir", str(scratch / "reports")]
    elif "pytest" in words:
        out += ["-k", SMALL, "-p", "no:cacheprovider"]
    return env, out


COMMANDS_OF_DOCS = [(path.name, cmd) for path in DOCS for cmd in runnable_commands(path)]


def test_the_docs_mark_commands_runnable() -> None:
    # The convention is in use: a README without marked blocks would make this test vacuous.
    assert any(name == "README.md" for name, _ in COMMANDS_OF_DOCS)


@pytest.mark.slow
@pytest.mark.parametrize(("doc", "command"), COMMANDS_OF_DOCS, ids=[c for _, c in COMMANDS_OF_DOCS])
def test_documented_command_runs(doc: str, command: str, tmp_path: Path) -> None:
    package = tmp_path / "mypackage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mybackend.py").write_text(BACKEND_MODULE)
    settings, argv = small_case(command, tmp_path)
    in_checkout = any("/" in w and not w.startswith("-") and (ROOT / w).exists() for w in argv)
    env = {**os.environ, **settings}
    # The environment's python (the one running this test), whatever PATH says.
    launcher = Path(sys.executable).parent / "mpiexec"
    names = {"python": sys.executable, "mpiexec": str(launcher) if launcher.exists() else "mpiexec"}
    argv = [names.get(w, w) for w in argv]
    done = subprocess.run(
        argv,
        cwd=ROOT if in_checkout else tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    text = done.stdout + done.stderr
    missing_extra = done.returncode == 2 and "is not installed" in done.stderr
    assert done.returncode == 0 or missing_extra, f"{doc}: {shlex.join(argv)}\n{text[-3000:]}"


def conformance_help(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_help_lists_every_command_of_the_dispatcher() -> None:
    done = conformance_help("--help")
    assert done.returncode == 0
    listed = re.findall(r"^  (\S+)  ", done.stdout, flags=re.MULTILINE)
    assert listed == list(COMMANDS)
    assert {"run", "selftest", "bench", "preflight"} <= set(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    done = conformance_help(name, "--help")
    assert done.returncode == 0, done.stderr
    assert f"python -m conformance {name}" in done.stdout


def test_ci_help_is_the_whole_header_and_names_every_step() -> None:
    script = (ROOT / "ci" / "test.sh").read_text(encoding="utf-8")
    done = subprocess.run(
        ["bash", str(ROOT / "ci" / "test.sh"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    header: list[str] = []
    for line in script.splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(line.removeprefix("#").removeprefix(" "))
    assert done.stdout.strip() == "\n".join(header).strip()
    steps = re.findall(r"^step_(\w+)\(\)", script, flags=re.MULTILINE)
    assert steps, "no step functions found"
    for step in steps:
        assert step in done.stdout, f"--help does not name the step {step!r}"
    assert "77" in done.stdout


def test_deviations_format_names_tests_that_exist() -> None:
    from conformance.run import deviations

    ids = re.findall(r'"(conformance/specs/[^"]+::[^"]+)"', deviations.__doc__ or "")
    assert ids
    for nodeid in ids:
        file_part, _, test = nodeid.partition("::")
        source = (ROOT / file_part).read_text(encoding="utf-8")
        assert f"def {test.split('[')[0]}(" in source, nodeid
