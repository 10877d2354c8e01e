"""The wrapped API: ``mlx.core.distributed`` (or ``reference``) with every collective, send, recv
and split checked before the real call runs; the program itself is unchanged.

``init`` returns a :class:`CheckedGroup` that carries the group's identity and its members' world
ranks; pass it (or nothing, for the world) to the wrapped functions. A call is checked when it is
made: with MLX that is when the graph is built, before ``mx.eval`` moves any data.
"""

from __future__ import annotations

import functools
from typing import Any

from conformance.check import fingerprint
from conformance.check.session import Session

WRAPPED = "__conformance_checked__"


class CheckedGroup:
    """A backend group with the identity the check knows it by (``world``, ``world/split0:1``)."""

    def __init__(self, real: Any, key: str, members: list[int]) -> None:
        self._real = real
        self.key = key
        self.members = members  # world ranks, in this group's rank order
        self.collectives = 0  # calls made on this group: the next one's number
        self.messages: dict[tuple[str, int], int] = {}  # (send|recv, peer) -> next message number
        self._session: Session | None = None

    def rank(self) -> int:
        return self._real.rank()

    def size(self) -> int:
        return self._real.size()

    def split(self, color: int, key: int = -1) -> CheckedGroup:
        """Checked like a collective on this group (every member must call it), then split."""
        assert self._session is not None
        fp = self._fingerprint("split", None, None)
        fp.update(color=int(color), key=int(key))
        stack = fingerprint.user_stack()
        fp["site"] = fingerprint.site_of(stack)
        record = self._session.check(fp, stack)
        real = self._real.split(color, key)
        record["state"] = "returned"
        child = CheckedGroup(real, f"{self.key}/split{fp['seq']}:{int(color)}", record["members"])
        child._session = self._session
        return child

    def _fingerprint(self, op: str, shape: Any, dtype: Any) -> dict[str, Any]:
        fp = {"op": op, "group": self.key, "seq": self.collectives, "shape": shape, "dtype": dtype}
        self.collectives += 1
        return fp

    def __repr__(self) -> str:
        return f"CheckedGroup({self.key}, rank {self.rank()} of {self.size()})"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def install(dist: Any, session: Session) -> None:
    """Replace the API functions of the module ``dist`` by checked ones (once)."""
    if getattr(dist, WRAPPED, False):
        return
    real = {
        name: getattr(dist, name)
        for name in ("init", *fingerprint.COLLECTIVES, *fingerprint.P2P)
        if hasattr(dist, name)
    }
    worlds: list[CheckedGroup] = []

    def world() -> CheckedGroup:
        if not worlds:
            init()
        return worlds[0]

    @functools.wraps(real["init"])
    def init(*args: Any, **kwargs: Any) -> CheckedGroup:
        group = real["init"](*args, **kwargs)
        if worlds:
            return worlds[0]
        if group.size() == session.settings.size:
            checked = CheckedGroup(group, "world", list(range(group.size())))
        else:
            # The backend made a singleton (no distributed backend): a group of this rank alone.
            checked = CheckedGroup(group, f"single{session.rank}", [session.rank])
        checked._session = session
        worlds.append(checked)
        return checked

    def resolve(group: Any) -> CheckedGroup:
        if group is None:
            return world()
        if isinstance(group, CheckedGroup):
            return group
        raise TypeError(
            f"the checked API needs the group returned by init() or split(), got {group!r}"
        )

    def collective(op: str) -> Any:
        fn = real[op]

        @functools.wraps(fn)
        def checked(x: Any, *args: Any, group: Any = None, **kwargs: Any) -> Any:
            g = resolve(group)
            shape, dtype = fingerprint.describe_array(x)
            fp = g._fingerprint(op, shape, dtype)
            stack = fingerprint.user_stack()
            fp["site"] = fingerprint.site_of(stack)
            record = session.check(fp, stack)
            out = fn(x, *args, group=g._real, **kwargs)
            record["state"] = "returned"
            return out

        return checked

    def point_to_point(op: str) -> Any:
        fn = real[op]

        @functools.wraps(fn)
        def checked(*args: Any, group: Any = None, **kwargs: Any) -> Any:
            g = resolve(group)
            if op == "recv":
                shape_arg, dtype_arg, peer = ([*list(args), None, None, None])[:3]
                shape = [int(d) for d in shape_arg] if shape_arg is not None else None
                dtype = fingerprint.dtype_name(dtype_arg)
            else:
                x, peer = ([*list(args), None, None])[:2]
                shape, dtype = fingerprint.describe_array(x)
            if isinstance(peer, int) and 0 <= peer < len(g.members):
                direction = "send" if op == "send" else "recv"
                number = g.messages.get((direction, peer), 0)
                g.messages[(direction, peer)] = number + 1
                fp = {
                    "op": op,
                    "group": g.key,
                    "seq": None,
                    "peer": g.members[peer],
                    "n": number,
                    "shape": shape,
                    "dtype": dtype,
                }
                stack = fingerprint.user_stack()
                fp["site"] = fingerprint.site_of(stack)
                record = session.check(fp, stack)
            else:
                record = None  # an invalid peer: the backend's own error is the diagnosis
            out = fn(*args, group=g._real, **kwargs)
            if record is not None:
                record["state"] = "returned"
            return out

        return checked

    for op in fingerprint.COLLECTIVES:
        if op in real:
            setattr(dist, op, collective(op))
    for op in fingerprint.P2P:
        if op in real:
            setattr(dist, op, point_to_point(op))
    dist.init = init
    setattr(dist, WRAPPED, True)
