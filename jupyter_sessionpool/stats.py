"""Immutable snapshots of the pool, for ``stats()``, ``subscribe()`` and every UI.

Times are wall-clock (``time.time()`` seconds) so a snapshot means the same thing in
another process, e.g. the JupyterLab panel.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ._state import Books, KernelState, Slot


@dataclass(frozen=True)
class KernelStats:
    """One kernel: ``state`` is starting, idle, busy, dead or stopping; ``pid`` is None for remote
    kernels; ``memory`` is the bytes its local process holds (resident, read at most once a
    second), None where there is no such figure (remote kernels, a kernel not started yet)."""

    kernel_id: str
    pid: int | None
    state: str
    session: str | None
    executions: int
    busy_since: float | None
    last_used: float | None
    location: str | None = None  # where it runs: "local", or the gateway's host:port
    memory: int | None = None


@dataclass(frozen=True)
class WaitingCheckout:
    """A caller waiting for a kernel (``session`` None: anonymous)."""

    session: str | None
    since: float


@dataclass(frozen=True)
class PoolStats:
    """The whole pool at one instant; ``to_dict()`` is JSON-ready."""

    kernel_name: str
    max_kernels: int
    min_idle: int
    closed: bool
    kernels: tuple[KernelStats, ...]
    waiting: tuple[WaitingCheckout, ...]
    counters: dict[str, int]

    def count(self, state: str) -> int:
        """How many kernels are in ``state``."""
        return sum(1 for k in self.kernels if k.state == state)

    @property
    def sessions(self) -> list[str]:
        """Named sessions that hold a kernel."""
        return [k.session for k in self.kernels if k.session and k.state in ("idle", "busy")]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        now = time.time()
        head = (
            f"{self.kernel_name} pool: {self.count('busy')}/{self.max_kernels} busy, "
            f"{self.count('idle')} idle, {self.count('starting')} starting, {len(self.waiting)} waiting"
            + (" (closed)" if self.closed else "")
        )
        rows = [f"  {'kernel':<20}{'pid':>8}  {'state':<9}{'session':<16}{'runs':>5}  busy for"]
        for k in self.kernels:
            busy = f"{now - k.busy_since:.1f} s" if k.busy_since else ""
            rows.append(
                f"  {k.kernel_id:<20}{k.pid or '':>8}  {k.state:<9}{(k.session or '-')[:15]:<16}{k.executions:>5}  {busy}"
            )
        counters = ", ".join(f"{k} {v}" for k, v in self.counters.items())
        return "\n".join([head, *rows, f"  counters: {counters}"])


def snapshot(books: Books, kernel_name: str) -> PoolStats:
    """Copy the books into a PoolStats; O(kernels + waiters), no I/O."""
    offset = time.time() - books.clock()

    def wall(t: float | None) -> float | None:
        return None if t is None else t + offset

    return PoolStats(
        kernel_name=kernel_name,
        max_kernels=books.max_kernels,
        min_idle=books.min_idle,
        closed=books.closed,
        kernels=tuple(_kernel(s, wall) for s in books.slots.values()),
        waiting=tuple(WaitingCheckout(w.session, wall(w.since) or 0.0) for w in books.waiters),
        counters=dict(books.counters),
    )


def _kernel(slot: Slot, wall: Any) -> KernelStats:
    return KernelStats(
        kernel_id=slot.kernel_id,
        pid=getattr(slot.handle, "pid", None),
        state=slot.state.value,
        session=slot.session,
        executions=slot.executions,
        busy_since=wall(slot.busy_since) if slot.state is KernelState.BUSY else None,
        last_used=wall(slot.last_used),
        location=getattr(slot.handle, "location", None),
        memory=slot.handle.memory() if slot.handle is not None else None,
    )
