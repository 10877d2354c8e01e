"""What a call looks like to the check: its fingerprint and the user's line that made it.

A fingerprint is a plain dict (it travels as JSON): ``op``, ``group`` (the group's identity:
``world`` or ``<parent>/split<n>:<color>``), ``seq`` (the call's number on that group, counted
per rank from 0), ``shape``, ``dtype``, ``site`` (``file:line`` of the user's frame) and, for
send and recv, ``peer`` (the world rank at the other end) and ``n`` (the message's number on
that ordered pair). The rule text of what must agree lives here, once.
"""

from __future__ import annotations

import os
import sys
from typing import Any

COLLECTIVES = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter")
P2P = ("send", "recv", "recv_like")

# Frames in these directories are the check's own or the backend's; the call site is the first
# frame outside them, so a report names the user's line, not the wrapper's.
_OWN_DIRS: list[str] = [os.path.dirname(os.path.abspath(__file__)) + os.sep]

STACK_DEPTH = 8


def skip_frames_in(directory: str) -> None:
    """Treat frames under ``directory`` (a backend's package) as not the user's."""
    _OWN_DIRS.append(os.path.abspath(directory) + os.sep)


def user_stack() -> list[tuple[str, int, str]]:
    """The caller's frames outside the check and the backend, innermost first, as
    (file, line, function); cheap (no source lines are read)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(tuple(_OWN_DIRS)):
        frame = frame.f_back
    out: list[tuple[str, int, str]] = []
    while frame is not None and len(out) < STACK_DEPTH:
        code = frame.f_code
        out.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return out


def site_of(stack: list[tuple[str, int, str]]) -> str:
    """``file:line`` of the innermost user frame (the file's base name keeps reports short)."""
    if not stack:
        return "?"
    filename, line, _ = stack[0]
    return f"{os.path.basename(filename)}:{line}"


def dtype_name(dtype: Any) -> str:
    """A backend-neutral dtype name: ``float32`` for mlx.core.float32 and numpy's float32."""
    text = str(dtype)
    return text.rsplit(".", 1)[-1] if text.startswith("mlx.") else getattr(dtype, "name", text)


def describe_array(x: Any) -> tuple[list[int] | None, str | None]:
    """(shape, dtype) of an array argument; (None, type name) for something that is not one."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None:
        return None, type(x).__name__
    return [int(d) for d in shape], dtype_name(dtype)


def text(fp: dict[str, Any]) -> str:
    """One line for a report: ``all_sum #3 on world: float32 (4, 2) at train.py:12``."""
    op = fp.get("op", "?")
    if op in P2P:
        direction = "to" if op == "send" else "from"
        what = f"{op} #{fp.get('n')} {direction} rank {fp.get('peer')}"
    else:
        what = f"{op} #{fp.get('seq')}"
    shape = fp.get("shape")
    data = f"{fp.get('dtype')} {tuple(shape)}" if shape is not None else ""
    if op == "split":
        data = f"color {fp.get('color')} key {fp.get('key')}"
    return f"{what} on {fp.get('group')}: {data} at {fp.get('site')}".replace(":  at", ": at")


def agree(fps: dict[int, dict[str, Any]]) -> bool:
    """Whether the ranks' fingerprints of one collective call agree: the same op, and for the
    data-moving ones the same shape and dtype (SEMANTICS.md: every rank passes the same shape
    and dtype; split's colour and key may differ)."""
    first = next(iter(fps.values()))
    for fp in fps.values():
        if fp["op"] != first["op"]:
            return False
        if fp["op"] != "split" and (fp["shape"], fp["dtype"]) != (first["shape"], first["dtype"]):
            return False
    return True


def pair_agrees(sent: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a recv asks for what the matching send sends: the same shape and dtype."""
    return (sent["shape"], sent["dtype"]) == (wanted["shape"], wanted["dtype"])
