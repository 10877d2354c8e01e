"""The cross-rank view of a checked job's flight recorders (``rank-<r>.json`` in one directory):
which call each rank is in, which ranks have not arrived at a call others wait in, and the first
call where the ranks' records diverge."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

from conformance.check import fingerprint
from conformance.check.recorder import PROBLEM_REASONS


def load(directory: str) -> dict[int, dict[str, Any]]:
    """Every rank's recorder file in ``directory``, by rank."""
    out: dict[int, dict[str, Any]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "rank-*.json"))):
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        out[int(data["rank"])] = data
    return out


def found_problem(directory: str) -> bool:
    """Whether a rank wrote its recorder because the check found a problem (not on SIGUSR1)."""
    return any(d["reason"] in PROBLEM_REASONS for d in load(directory).values())


def render(directory: str) -> str:
    """The merged view as text (what ``python -m conformance check --merge DIR`` prints)."""
    ranks = load(directory)
    if not ranks:
        return f"no flight recorder (rank-*.json) in {directory}"
    size = max(d["size"] for d in ranks.values())
    lines = [f"flight recorders of {len(ranks)} of {size} ranks ({directory}):"]
    for rank, data in sorted(ranks.items()):
        calls = data["calls"]
        head = f"  rank {rank} ({data['host']}, pid {data['pid']}, written on {data['reason']})"
        if not calls:
            lines.append(f"{head}: no call made")
            continue
        last = calls[-1]
        verb = "in" if last["state"] == "checking" else "last call"
        lines.append(
            f"{head}: {data['calls_made']} calls; {verb} {fingerprint.text(last['fp'])} "
            f"[{last['state']}]"
        )
        lines += [f"      {frame}" for frame in last["stack"][:4]]
    missing = sorted(set(range(size)) - set(ranks))
    if missing:
        lines.append(f"  no recorder from ranks {missing}")
    lines += _not_arrived(ranks, size)
    lines += _divergence(ranks)
    return "\n".join(lines)


def _members(ranks: dict[int, dict[str, Any]], size: int) -> dict[str, list[int]]:
    groups = {"world": list(range(size))}
    for data in ranks.values():
        for record in data["calls"]:
            fp = record["fp"]
            if fp["op"] == "split" and "members" in record:
                groups[f"{fp['group']}/split{fp['seq']}:{fp['color']}"] = record["members"]
    return groups


def _not_arrived(ranks: dict[int, dict[str, Any]], size: int) -> list[str]:
    groups = _members(ranks, size)
    out = []
    for rank, data in sorted(ranks.items()):
        if not data["calls"] or data["calls"][-1]["state"] != "checking":
            continue
        fp = data["calls"][-1]["fp"]
        if fp["op"] in fingerprint.P2P:
            out.append(
                f"waiting: rank {rank} in {fingerprint.text(fp)}; rank {fp['peer']} has not sent it"
            )
            continue
        absent = []
        for other in groups.get(fp["group"], []):
            records = ranks.get(other, {}).get("calls", [])
            if not any(
                r["fp"]["group"] == fp["group"] and r["fp"].get("seq") == fp["seq"] for r in records
            ):
                last = records[-1]["fp"] if records else None
                absent.append(f"rank {other} (last: {fingerprint.text(last) if last else 'none'})")
        if absent:
            out.append(
                f"not arrived at {fingerprint.text(fp)} (rank {rank} waits): " + "; ".join(absent)
            )
    return out


def _divergence(ranks: dict[int, dict[str, Any]]) -> list[str]:
    """The first (group, call number), in the oldest rank's order, whose records disagree."""
    by_call: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    order: list[tuple[str, int]] = []
    for rank, data in sorted(ranks.items()):
        for record in data["calls"]:
            fp = record["fp"]
            if fp.get("seq") is None:
                continue
            key = (fp["group"], fp["seq"])
            if key not in by_call:
                by_call[key] = {}
                order.append(key)
            by_call[key][rank] = fp
    for key in order:
        fps = by_call[key]
        if len(fps) > 1 and not fingerprint.agree(fps):
            rows = [f"    rank {r}: {fingerprint.text(fp)}" for r, fp in sorted(fps.items())]
            return [f"diverged at call #{key[1]} on {key[0]}:", *rows]
    return ["no divergence among the recorded calls"]
