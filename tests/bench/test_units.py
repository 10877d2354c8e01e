"""Sizes as written on the command line."""

import pytest

from conformance.bench.units import DEFAULT_SIZES, format_size, parse_size, parse_sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8", 8), ("1K", 1024), ("1k", 1024), ("64M", 64 << 20), ("2G", 2 << 30), ("4KiB", 4096)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-8", "1.5K", "8X", "K", "1 M B"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_sizes_sorts_and_dedups():
    assert parse_sizes("64M, 8,1K,8") == [8, 1024, 64 << 20]


def test_parse_sizes_rejects_empty_and_bad_items():
    with pytest.raises(ValueError):
        parse_sizes(" , ")
    with pytest.raises(ValueError):
        parse_sizes("8,oops")


def test_default_sizes_span_latency_to_bandwidth():
    sizes = parse_sizes(DEFAULT_SIZES)
    assert sizes[0] == 8 and sizes[-1] == 64 << 20 and 1 << 20 in sizes


@pytest.mark.parametrize(
    ("nbytes", "text"), [(8, "8"), (1024, "1K"), (1536, "1536"), (64 << 20, "64M"), (1 << 30, "1G")]
)
def test_format_size_round_trips(nbytes, text):
    assert format_size(nbytes) == text
    assert parse_size(text) == nbytes
