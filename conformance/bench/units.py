"""Message sizes as people write them ("8,1K,64M") and as tables show them.

Suffixes are binary (K = 1024 bytes), as in nccl-tests and the OSU micro-benchmarks.
"""

from __future__ import annotations

import re

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)(?:i?B)?\s*$", re.IGNORECASE)

DEFAULT_SIZES = "8,64,512,4K,32K,256K,1M,4M,16M,64M"


def parse_size(text: str) -> int:
    """Bytes named by ``text``: an integer with an optional K/M/G suffix (binary), e.g. ``64M``.

    Raises ValueError for anything else, or for zero.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected an integer with optional K, M or G")
    value = int(match.group(1)) * _SUFFIXES[match.group(2).upper()]
    if value <= 0:
        raise ValueError(f"invalid size {text!r}: must be positive")
    return value


def parse_sizes(text: str) -> list[int]:
    """Sorted, de-duplicated byte counts from a comma-separated list such as ``8,1K,64M``."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("empty size list")
    return sorted({parse_size(part) for part in parts})


def format_size(nbytes: int) -> str:
    """The shortest exact spelling of ``nbytes`` with a binary suffix: 8, 4K, 64M, 1536."""
    for suffix in ("G", "M", "K"):
        unit = _SUFFIXES[suffix]
        if nbytes >= unit and nbytes % unit == 0:
            return f"{nbytes // unit}{suffix}"
    return str(nbytes)
