"""The pool's bookkeeping: kernel states, session bindings, the FIFO of waiting checkouts.

Nothing here does I/O or awaits. Each transition is a method named for the event
(``checkout``, ``started``, ``start_failed``, ``checkin``, ``died``, ``removed``,
``release``, ``expire``, ``set_min_idle``, ``close``) that changes the books and returns :class:`Effects`:
the kernels to start or stop and the waiters to wake. The pool applies those effects
outside, so no decision ever waits on a kernel.

Start failures are retried per *attempt chain*: a start that fails is retried, with
back-off, as the next attempt of the same chain, and only a chain that has spent
``start_retries`` fails a waiter (one waiter, or every caller queued on one new session),
so one flaky start never fails callers that other, healthy starts will serve.

States of a kernel slot::

    STARTING --started--> IDLE --checkout--> BUSY --checkin--> IDLE
    STARTING --start_failed--> (removed)
    IDLE/BUSY --died--> DEAD --removed--> (gone)
    IDLE/BUSY --release/expire/evict/discard/close--> STOPPING --removed--> (gone)
    STARTING/IDLE, never lent --set_min_idle (lower)/close--> STOPPING, killed at once

Session rules: a named session is bound to one kernel from its first checkout until it is
released, expires or loses its kernel; a kernel that served a named session is never
bound to another. Anonymous leases take kernels no session is bound to, and a kernel
that served one never goes to a named session. When a bound session loses its kernel
without being released, the callers queued on it get ``SessionLost``, or if none are
queued the session's next checkout does, once. With ``evict_idle`` on, a full pool makes
room for a new session by evicting the least recently used idle session that nobody is
queued on; that is such a loss too.
"""

from __future__ import annotations

import enum
import itertools
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import KernelStartError, PoolClosed, SessionLost


class KernelState(str, enum.Enum):
    """Where a kernel slot is in its life."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DEAD = "dead"
    STOPPING = "stopping"


@dataclass(eq=False)
class Slot:
    """One kernel as the books see it. ``handle`` is the pool's kernel object, opaque here."""

    kernel_id: str
    state: KernelState = KernelState.STARTING
    session: str | None = None
    anonymous: bool = False
    executions: int = 0
    busy_since: float | None = None
    last_used: float | None = None
    handle: Any = None
    attempt: int = 1  # which attempt of its start chain this slot's start is

    @property
    def lent(self) -> bool:
        """True once the kernel was lent to anyone: only then can it hold someone's state."""
        return self.session is not None or self.anonymous


@dataclass(eq=False)
class Waiter:
    """A checkout waiting for a kernel. ``future`` belongs to the pool, untouched here.

    With ``kernel_id`` it waits for that kernel only (a comm message to the kernel that
    opened the comm): it never starts one, and fails once its session loses that kernel.
    """

    session: str | None
    since: float
    future: Any = None
    kernel_id: str | None = None


@dataclass
class Effects:
    """What a transition asks the pool to do once the books are updated."""

    granted: list[tuple[Waiter, Slot]] = field(default_factory=list)
    failed: list[tuple[Waiter, BaseException]] = field(default_factory=list)
    start: list[Slot] = field(default_factory=list)
    stop: list[tuple[Slot, bool]] = field(default_factory=list)  # (slot, kill now)
    retry_at: float | None = None  # run ``settle`` again at this time (start back-off)
    evicted: list[str] = field(default_factory=list)  # idle sessions evicted to make room
    retried: list[Slot] = field(default_factory=list)  # failed starts that will be retried


@dataclass(eq=False)
class _Retry:
    """A failed start waiting out its back-off; it holds a place in the pool meanwhile."""

    due: float
    attempt: int


_BACKOFF_BASE = 0.2
_BACKOFF_MAX = 5.0
_LOST_MEMORY = 1024  # sessions remembered as lost; the oldest is forgotten past this


class Books:
    """The pool's state machine. Call only from one thread (the pool's event loop)."""

    def __init__(
        self,
        max_kernels: int,
        min_idle: int,
        start_retries: int,
        clock: Callable[[], float],
        evict_idle: bool = False,
    ) -> None:
        self.max_kernels = max_kernels
        self.min_idle = min_idle
        self.start_retries = start_retries
        self.evict_idle = evict_idle
        self.clock = clock
        self.slots: dict[str, Slot] = {}
        self.bound: dict[str, Slot] = {}
        self.lost: dict[str, str] = {}
        self.waiters: deque[Waiter] = deque()
        self.closed = False
        self.counters = dict.fromkeys(
            ("started", "start_failures", "died", "checkouts", "timeouts", "released", "evicted"), 0
        )
        self._retries: list[_Retry] = []
        self._prewarm_suspended = False
        self._ids = itertools.count(1)
        self._pool_tag = uuid.uuid4().hex[:6]

    # ---- transitions ------------------------------------------------------------

    def checkout(self, session: str | None, future: Any = None, kernel_id: str | None = None) -> tuple[Waiter, Effects]:
        """A caller asks for a kernel (``kernel_id``: only the one ``session`` holds now, never a
        new one). The waiter may be granted within the returned effects."""
        if self.closed:
            raise PoolClosed()
        slot = self.bound.get(session) if session is not None else None
        if kernel_id is not None and (slot is None or slot.kernel_id != kernel_id):
            raise SessionLost(session or "", "that kernel is no longer the session's")  # the loss stays recorded
        if session is not None and session in self.lost:
            raise SessionLost(session, self.lost.pop(session))
        waiter = Waiter(session, self.clock(), future, kernel_id)
        if slot is not None and slot.state is KernelState.IDLE and not self.waiters:
            self._lend(slot, session)  # the hot path: a session's own idle kernel, nobody queued
            return waiter, Effects(granted=[(waiter, slot)])
        self.waiters.append(waiter)
        self._prewarm_suspended = False
        return waiter, self.settle()

    def cancel(self, waiter: Waiter) -> Effects:
        """A waiting caller gave up (timeout or cancellation)."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass
        return self.settle()

    def started(self, slot: Slot) -> Effects:
        """A kernel answered its health check: STARTING -> IDLE."""
        if slot.state is not KernelState.STARTING:
            return self.settle()
        slot.state = KernelState.IDLE
        slot.last_used = self.clock()
        self.counters["started"] += 1
        return self.settle()

    def start_failed(self, slot: Slot, error: Exception) -> Effects:
        """A kernel failed to start: retry its chain after a back-off, or, once the chain has
        spent ``start_retries``, fail the waiter it would have served (and pause prewarming)."""
        if self.slots.pop(slot.kernel_id, None) is None:
            return self.settle()
        self.counters["start_failures"] += 1
        fx = Effects()
        if slot.attempt <= self.start_retries and not self.closed and getattr(error, "retryable", True):
            delay = min(_BACKOFF_MAX, _BACKOFF_BASE * 2 ** (slot.attempt - 1))
            self._retries.append(_Retry(self.clock() + delay, slot.attempt + 1))
            fx.retried.append(slot)
            return self.settle(fx)
        if isinstance(error, KernelStartError):
            error.attempts = slot.attempt
        self._prewarm_suspended = True
        unserved = [w for w in self.waiters if self._needs_new_kernel(w)]
        if len(self._demand(unserved)) > self._in_flight():
            last = unserved[-1]  # kernels are granted in FIFO order, so this chain would have served the last
            for w in unserved:
                if w is last or (last.session is not None and w.session == last.session):
                    self.waiters.remove(w)
                    fx.failed.append((w, error))
        return self.settle(fx)

    def checkin(self, slot: Slot, discard: str | None = None) -> Effects:
        """The lease holder is done: BUSY -> IDLE, or -> STOPPING when ``discard`` names why."""
        if slot.state is not KernelState.BUSY:
            return self.settle()  # already dead or being stopped; nothing to return
        slot.busy_since = None
        slot.last_used = self.clock()
        if discard is None:
            slot.state = KernelState.IDLE
            return self.settle()
        fx = Effects()
        self._unbind(slot, lost=discard, fx=fx)
        self._stop(slot, now=True, fx=fx)
        return self.settle(fx)

    def died(self, slot: Slot) -> Effects:
        """An idle or busy kernel's process exited on its own (a starting one fails its start instead)."""
        if slot.state not in (KernelState.IDLE, KernelState.BUSY) or slot.kernel_id not in self.slots:
            return self.settle()
        fx = Effects()
        slot.state = KernelState.DEAD
        slot.busy_since = None
        self.counters["died"] += 1
        self._unbind(slot, lost="its kernel died", fx=fx)
        return self.settle(fx)

    def removed(self, slot: Slot) -> Effects:
        """A stopped or dead kernel is fully cleaned up: forget it."""
        self.slots.pop(slot.kernel_id, None)
        return self.settle()

    def release(self, session: str, reason: str = "released") -> tuple[bool, Effects]:
        """Unbind ``session`` and stop its kernel (killing a running cell); queued callers get SessionLost."""
        fx = Effects()
        slot = self.bound.get(session)
        self.lost.pop(session, None)
        queued = [w for w in self.waiters if w.session == session]
        for w in queued:
            self.waiters.remove(w)
            fx.failed.append((w, SessionLost(session, reason)))
        if slot is None:
            return bool(queued), self.settle(fx)
        self.counters["released"] += 1
        self._unbind(slot, lost=None, fx=fx)
        self._stop(slot, now=slot.state is KernelState.BUSY, fx=fx)
        return True, self.settle(fx)

    def restart(self, session: str) -> tuple[bool, Effects]:
        """Give ``session`` a fresh kernel on its next call; callers already queued get it too."""
        slot = self.bound.get(session)
        if slot is None:
            return False, self.settle()
        fx = Effects()
        self._unbind(slot, lost=None, fx=fx)
        self._stop(slot, now=slot.state is KernelState.BUSY, fx=fx)
        return True, self.settle(fx)

    def expire(self, session: str, idle_for: float) -> Effects:
        """Release ``session`` if it has been idle for at least ``idle_for`` seconds."""
        slot = self.bound.get(session)
        if slot is None or slot.state is not KernelState.IDLE or slot.last_used is None:
            return self.settle()
        if self.clock() - slot.last_used < idle_for:
            return self.settle()
        if any(w.session == session for w in self.waiters):
            return self.settle()
        return self.release(session, reason="idle timeout")[1]

    def set_min_idle(self, min_idle: int) -> Effects:
        """``min_idle`` changed. A lower one stops the fresh kernels (starting or idle) that
        neither it nor a waiting caller needs any more, at once: they hold no state."""
        lowered, self.min_idle = min_idle < self.min_idle, min_idle
        fx = Effects()
        if lowered and not self.closed:
            fresh = [s for s in self.slots.values() if s.state is KernelState.IDLE and not s.lent]
            starting = [s for s in self.slots.values() if s.state is KernelState.STARTING]
            excess = len(fresh) + len(starting) - len(self._demand(self.waiters)) - min_idle
            for slot in (starting[::-1] + fresh)[:max(0, excess)]:  # the least advanced starts first
                self._stop(slot, now=True, fx=fx)
        return self.settle(fx)

    def close(self) -> Effects:
        """Shut everything: fail all waiters with PoolClosed and stop every kernel (kill busy,
        starting and never used ones: none has state worth a graceful exit)."""
        fx = Effects()
        self.closed = True
        self._retries.clear()
        while self.waiters:
            fx.failed.append((self.waiters.popleft(), PoolClosed()))
        for slot in list(self.slots.values()):
            if slot.state in (KernelState.IDLE, KernelState.BUSY, KernelState.STARTING):
                if slot.session is not None:
                    self.bound.pop(slot.session, None)
                # only an idle kernel that served someone is asked to exit; the rest are killed
                self._stop(slot, now=slot.state is not KernelState.IDLE, fx=fx)
        return fx

    # ---- the one place decisions are made -----------------------------------------

    def settle(self, fx: Effects | None = None) -> Effects:
        """Grant free kernels to waiters in FIFO order, then plan starts for what is missing.

        Waiters are looked at only while some kernel is free, and the look stops as soon as
        none is left, so a deep queue costs nothing while every kernel is busy.
        """
        fx = fx or Effects()
        if self.closed:
            return fx
        fresh, spent, idle_bound = self._free_slots() if self.waiters else ([], [], 0)
        if fresh or spent or idle_bound:
            granted = []
            for w in self.waiters:
                slot = self._pick(w.session, fresh, spent)
                if slot is None:
                    continue
                idle_bound -= slot.session is not None
                self._lend(slot, w.session)
                granted.append(w)
                fx.granted.append((w, slot))
                if not (fresh or spent or idle_bound):
                    break
            for w in granted:
                self.waiters.remove(w)
        self._plan(fx)
        return fx

    def _free_slots(self) -> tuple[list[Slot], list[Slot], int]:
        """Idle kernels: never used (fresh), used anonymously (spent), and bound to sessions."""
        fresh, spent, idle_bound = [], [], 0
        for slot in self.slots.values():
            if slot.state is KernelState.IDLE:
                if slot.session is not None:
                    idle_bound += 1
                else:
                    (spent if slot.anonymous else fresh).append(slot)
        return fresh, spent, idle_bound

    def _pick(self, session: str | None, fresh: list[Slot], spent: list[Slot]) -> Slot | None:
        """The kernel for ``session`` from the free ones, taking it off those lists."""
        if session is not None and session in self.bound:
            slot = self.bound[session]
            return slot if slot.state is KernelState.IDLE else None
        if session is None and spent:
            return spent.pop()  # reuse an anonymous kernel first: keep fresh ones for sessions
        return fresh.pop() if fresh else None

    def _lend(self, slot: Slot, session: str | None) -> None:
        slot.state = KernelState.BUSY
        slot.busy_since = self.clock()
        self.counters["checkouts"] += 1
        if session is None:
            slot.anonymous = True
        else:
            slot.session = session
            self.bound[session] = slot

    def _needs_new_kernel(self, w: Waiter) -> bool:
        if w.session is not None:
            return w.session not in self.bound
        return not any(
            s.anonymous and s.session is None and s.state is KernelState.BUSY for s in self.slots.values()
        )

    def _demand(self, waiters: Any) -> set[Any]:
        """One entry per kernel the given waiters need: a new session, or an anonymous caller."""
        return {w.session if w.session is not None else w for w in waiters if w.session not in self.bound}

    def _in_flight(self) -> int:
        """Starts under way: kernels starting now and failed starts waiting to retry."""
        return len(self._retries) + sum(s.state is KernelState.STARTING for s in self.slots.values())

    def _plan(self, fx: Effects) -> None:
        if not self.waiters and not self._retries and (self.min_idle == 0 or self._prewarm_suspended):
            return  # nobody waits and nothing is kept warm: checkout and check-in stay O(1)
        starting = fresh = live = stopping = evictable = 0
        for slot in self.slots.values():
            starting += slot.state is KernelState.STARTING
            stopping += slot.state is KernelState.STOPPING  # each frees a place soon: no eviction for it
            idle = slot.state is KernelState.IDLE
            fresh += idle and slot.session is None and not slot.anonymous
            evictable += idle and ((slot.anonymous and slot.session is None) or (self.evict_idle and slot.session is not None))
            live += slot.state is not KernelState.DEAD
        room = self.max_kernels - live
        if room <= 0 and not evictable:
            return  # full, nothing to evict: nothing can start until a kernel goes (a deep queue costs no scan)
        demand = len(self._demand(self.waiters))
        prewarm = 0 if self._prewarm_suspended else max(0, self.min_idle - fresh)
        wanted = max(0, demand + prewarm - starting)  # starts needed beyond those running now
        retries, self._retries = self._retries[:wanted], []  # a retry nobody needs any more is dropped
        wanted -= len(retries)
        now = self.clock()
        for retry in retries:
            if retry.due <= now and room > 0:
                self._new_slot(fx, attempt=retry.attempt)
                room -= 1
            else:
                self._retries.append(retry)
        capacity = room - len(self._retries)  # a retry waiting out its back-off keeps its place
        if any(r.due > now for r in self._retries):
            fx.retry_at = min(r.due for r in self._retries if r.due > now)
        # make room for real demand: spent anonymous kernels first, then (if allowed) idle sessions
        shortfall = min(wanted, max(0, demand - starting - len(retries))) - capacity - stopping
        if shortfall > 0:
            self._make_room(shortfall, fx)
        for _ in range(max(0, min(wanted, capacity))):
            self._new_slot(fx, attempt=1)

    def _new_slot(self, fx: Effects, attempt: int) -> None:
        slot = Slot(kernel_id=f"{self._pool_tag}-{next(self._ids)}-{uuid.uuid4().hex[:8]}", attempt=attempt)
        self.slots[slot.kernel_id] = slot
        fx.start.append(slot)

    def _make_room(self, shortfall: int, fx: Effects) -> None:
        """Stop up to ``shortfall`` idle kernels so new demand can start: spent anonymous ones,
        then, with ``evict_idle``, the least recently used idle sessions nobody is queued on."""
        victims = [s for s in self.slots.values() if s.state is KernelState.IDLE and s.anonymous and s.session is None]
        if self.evict_idle and len(victims) < shortfall:
            queued = {w.session for w in self.waiters}
            idle = [
                s
                for s in self.slots.values()
                if s.state is KernelState.IDLE and s.session is not None and s.session not in queued
            ]
            victims += sorted(idle, key=lambda s: s.last_used or 0.0)
        for slot in victims[:shortfall]:
            if slot.session is not None:
                fx.evicted.append(slot.session)
                self.counters["evicted"] += 1
                self._unbind(slot, lost="evicted: the pool was full and another session needed a kernel", fx=fx)
            self._stop(slot, now=False, fx=fx)

    @property
    def prewarm_suspended(self) -> bool:
        """True after a start failed past its retries, until the next checkout asks again."""
        return self._prewarm_suspended

    def fresh_idle(self) -> int:
        """Idle kernels no session or anonymous lease has touched."""
        return sum(
            1
            for s in self.slots.values()
            if s.state is KernelState.IDLE and s.session is None and not s.anonymous
        )

    # ---- helpers -------------------------------------------------------------------

    def _unbind(self, slot: Slot, lost: str | None, fx: Effects) -> None:
        """Detach a slot's session; with ``lost``, tell the session its state is gone."""
        session = slot.session
        if session is None or self.bound.get(session) is not slot:
            return
        del self.bound[session]
        queued = [w for w in self.waiters if w.session == session and (lost is not None or w.kernel_id is not None)]
        for w in queued:  # callers for that very kernel (comm messages) always fail; the others only on a loss
            self.waiters.remove(w)
            fx.failed.append((w, SessionLost(session, lost or "its kernel was replaced")))
        if lost is None:
            return
        if all(w.kernel_id is not None for w in queued):  # no call was told (comm messages are not calls)
            self.lost[session] = lost
            if len(self.lost) > _LOST_MEMORY:
                del self.lost[next(iter(self.lost))]  # forget the oldest loss: bounded memory

    def _stop(self, slot: Slot, now: bool, fx: Effects) -> None:
        """Stop ``slot``'s kernel: asked to exit, or killed ``now``. A kernel never lent holds
        no state, so it is always killed: waiting for a graceful exit only delays whoever waits
        for the stop (a shutdown waited ``shutdown_timeout`` for a prewarmed kernel)."""
        slot.state = KernelState.STOPPING
        slot.busy_since = None
        fx.stop.append((slot, now or not slot.lent))
