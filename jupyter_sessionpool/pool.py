"""AsyncKernelPool: kernels handed out by session, and the Lease a caller holds.

The pool object only keeps books (``_state.Books``) and applies their effects by
spawning tasks: starting, stopping and recovering kernels happen in those tasks, and a
cell's round trip happens in the caller's own task through its :class:`Lease`. So a slow
cell never delays another session's checkout, execution or check-in.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any, Callable

from traitlets import observe

from . import execution
from ._handoff import Handoff
from ._state import Books, Effects, KernelState, Slot, Waiter
from .comms import CommCallback, KernelComms, empty_widget_state
from .config import PoolSettings, check_session, check_timeout
from .errors import (
    CheckoutTimeout, CommNotFound, ExecutionTimeout, KernelDied, PoolClosed, PoolError, ProtocolError, SessionLost,
)
from .results import ExecutionResult, OutputCallback, _Outputs
from .stats import PoolStats, snapshot
from . import workers
from .workers.base import KernelWorker, Workers

Subscriber = Callable[[PoolStats], Any]
_UNSET: Any = object()
_SUBSCRIBER_BACKLOG = 1000  # snapshots kept for a subscriber slower than the pool's changes (oldest dropped)
# A prewarm start (one nobody waits for) lets the first cells running when it is due finish
# before it spawns a kernel, for up to this many seconds: a kernel's start takes a core for a
# second, and on a small machine it was half of a new session's first result.
_PREWARM_YIELD = 0.5


class Lease:
    """A kernel held by one caller until the ``async with`` block ends.

    The holder runs code with :meth:`execute` (or talks to :attr:`client` directly) and
    waits for replies itself. On exit the kernel is checked in; if the block was left
    mid-cell (cancelled, or an exception from ``on_output``) the cell is followed on by a
    recovery task, given a moment to end and interrupted if it does not; a kernel the
    holder drove through :attr:`client` is probed the same way before anyone else gets it.
    A kernel that died, timed out past its interrupt or broke protocol is discarded.
    """

    def __init__(self, pool: AsyncKernelPool, slot: Slot) -> None:
        self._pool = pool
        self._slot = slot
        self._worker: KernelWorker = slot.handle
        self._inflight: execution.Execution | None = None
        self._discard: str | None = None
        self._returned = False
        self._raw = False  # the holder was given the client and may have sent requests itself

    @property
    def kernel_id(self) -> str:
        return self._slot.kernel_id

    @property
    def session(self) -> str | None:
        return self._slot.session

    @property
    def pid(self) -> int | None:
        return self._worker.pid

    @property
    def kernel_info(self) -> dict[str, Any] | None:
        """The content of the kernel's ``kernel_info`` reply (``language_info``, ``implementation``...),
        for local and remote kernels alike; recorded at its health check, no request made."""
        return self._worker.kernel_info

    @property
    def client(self) -> Any:
        """The kernel's ``jupyter_client`` AsyncKernelClient (use it on the pool's event loop).

        None for kernels without one (remote kernels). Whatever you send through it is
        yours to wait for; on check-in the pool probes the kernel and interrupts a cell
        you left running, so the next holder gets a free kernel.
        """
        self._raw = True
        return self._worker.client

    async def execute(
        self,
        code: str,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        store_history: bool = True,
        on_comm: CommCallback | None = None,
    ) -> ExecutionResult:
        """Run ``code`` on this kernel and wait for the whole result.

        ``timeout`` (seconds; default ``execution_timeout``) interrupts the cell, then
        replaces the kernel if it does not stop within ``interrupt_timeout``. With
        ``store_history=False`` the code leaves no trace in ``In``/``_i`` and does not
        advance the kernel's execution count. Every cell sent counts as one of the kernel's
        runs (``KernelStats.executions``), however it ends. ``on_comm`` gets the cell's comm events (see
        :mod:`jupyter_sessionpool.comms`), on the thread ``on_output`` runs on, in order
        with its outputs. Raises ExecutionTimeout, KernelDied or ProtocolError; user
        exceptions are results.
        """
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        timeout = self._ready_to_send(timeout, on_output, on_comm)
        run = execution.Execution.cell(
            self._worker, code, on_output, self._pool.max_output_size, store_history, on_comm
        )
        if self._slot.executions == 0:
            self._pool._first_cell_began(self._slot)
        self._slot.executions += 1  # sent: it runs, however it ends (a timeout is a run too)
        try:
            return await self._follow(run, timeout)
        finally:
            if store_history:  # a hidden set-up cell (a session's cwd) keeps waiting for the caller's first
                self._pool._first_cell_ended(self._slot)

    async def send_comm(
        self,
        comm_id: str,
        data: dict[str, Any] | None = None,
        *,
        buffers: list[bytes] | None = None,
        close: bool = False,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        on_comm: CommCallback | None = None,
    ) -> ExecutionResult:
        """Send ``data`` to comm ``comm_id`` on this kernel (``comm_close`` with ``close``), as a
        front end would, and wait until the kernel has handled it (its ``idle``).

        Whatever the kernel's handlers print or display comes back like a cell's output
        (``on_output``, the result's ``outputs``; a comm message has no reply, so ``status``
        is "ok" once handled), and the comm traffic they cause goes to ``on_comm``.
        ``timeout`` works as in :meth:`execute`. Raises CommNotFound if the kernel has no
        such comm open, and what :meth:`execute` raises.
        """
        content, buffers = _comm_message(comm_id, data, buffers)
        if not isinstance(close, bool):
            raise TypeError(f"close must be True or False, not {close!r}")
        timeout = self._ready_to_send(timeout, on_output, on_comm)
        if not KernelComms.of(self._worker).state.is_open(comm_id):
            raise CommNotFound(self.session, comm_id, "this kernel has no such comm open (it closed it, or never opened it)")
        run = execution.Execution(self._worker, "comm_close" if close else "comm_msg", content, on_output,
                                  self._pool.max_output_size, on_comm, buffers)
        return await self._follow(run, timeout)

    def widget_state(self) -> dict[str, Any]:
        """This kernel's widgets as ``application/vnd.jupyter.widget-state+json`` (see :meth:`AsyncKernelPool.widget_state`)."""
        return KernelComms.of(self._worker).state.to_dict()

    def _ready_to_send(self, timeout: float | None, on_output: Any, on_comm: Any) -> float | None:
        """Check a request's arguments and this lease's state; the timeout to use."""
        timeout = check_timeout(timeout)
        for name, callback in (("on_output", on_output), ("on_comm", on_comm)):
            if callback is not None and not callable(callback):
                raise TypeError(f"{name} must be callable, not {type(callback).__name__}")
        if self._returned:
            raise PoolError("this lease was already returned to the pool; check out a kernel again")
        if self._inflight is not None:
            raise PoolError("this lease is already running a cell; wait for it or use another session")
        if self._discard is None and not self._worker.alive and self.session is not None:
            self._discard = "its kernel died"  # while idle, before this call: the session's loss, said once
            raise self._pool._session_lost(self._slot)
        if self._discard is not None or not self._worker.alive:
            raise KernelDied(self.kernel_id, self.session)
        return self._pool.execution_timeout if timeout is None else timeout

    async def _follow(self, run: execution.Execution, timeout: float | None) -> ExecutionResult:
        """Follow a sent request to its end as the lease's one request in flight."""
        self._inflight = run
        try:
            result = await execution.run(run, self.session, timeout, self._pool.interrupt_timeout)
        except ExecutionTimeout as exc:
            self._pool._count("timeouts")
            self._pool.log.warning("cell on kernel %s (session %s) timed out after %g s; %s", self.kernel_id,
                                   self.session, exc.timeout, "replacing it" if exc.restarted else "interrupted")
            if exc.restarted:
                self._discard = "its cell timed out and ignored the interrupt"
            self._inflight = None
            raise
        except KernelDied as exc:
            self._discard, self._inflight = "its kernel died", None
            if self._pool._books.closed:
                raise PoolClosed("the pool was shut down while this cell ran") from exc
            if exc.result is None and self.session is not None:
                # the kernel was lost before this request reached it (a remote kernel restarted while
                # its connection was down): that is the session's loss, reported once, here
                raise self._pool._session_lost(self._slot) from None
            raise
        except ProtocolError:
            self._discard, self._inflight = "its kernel broke the messaging protocol", None
            raise
        self._inflight = None
        return result

    async def interrupt(self) -> None:
        """Interrupt the cell running on this kernel."""
        await self._worker.interrupt()

    def _return(self) -> None:
        """Give the kernel back (sync: runs even while the holder is being cancelled)."""
        if self._returned:
            return
        self._returned = True
        self._pool._first_cells_pause(self._slot)
        driven = self._raw or self._worker.router.execution_state == "busy"
        if self._discard is None and (self._inflight is not None or driven):
            self._pool._recover(self._slot, self._inflight)
        else:
            self._pool._checkin(self._slot, self._discard)

    def __repr__(self) -> str:
        state = "returned" if self._returned else "busy" if self._inflight is not None else "idle"
        return f"<Lease session={self.session!r} kernel={self.kernel_id!r} {state}>"


def _named(session: Any, what: str) -> str:
    """``session`` checked, and a name: comms belong to a session's kernel, not to anonymous leases."""
    name = check_session(session)
    if name is None:
        raise ValueError(f"{what} needs a session name; anonymous leases have Lease.send_comm and Lease.widget_state")
    return name


def _comm_message(comm_id: Any, data: Any, buffers: Any) -> tuple[dict[str, Any], list[bytes]]:
    """The content and buffers of a comm message, checked; TypeError naming a bad argument."""
    if not isinstance(comm_id, str) or not comm_id:
        raise TypeError(f"comm_id must be a non-empty str, not {comm_id!r}")
    if data is not None and not isinstance(data, dict):
        raise TypeError(f"data must be a dict (or None), not {type(data).__name__}")
    blobs = list(buffers or ())
    if not all(isinstance(b, (bytes, bytearray, memoryview)) for b in blobs):
        raise TypeError("buffers must be bytes-like objects")
    return {"comm_id": comm_id, "data": data or {}}, [bytes(b) for b in blobs]


class _Checkout:
    def __init__(self, pool: AsyncKernelPool, session: str | None, timeout: Any, kernel_id: str | None = None) -> None:
        self._pool = pool
        self._session = check_session(session)
        self._timeout = pool.checkout_timeout if timeout is _UNSET else check_timeout(timeout, "timeout")
        self._kernel_id = kernel_id
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        self._lease = await self._pool._acquire(self._session, self._timeout, self._kernel_id)
        return self._lease

    async def __aexit__(self, *exc: object) -> None:
        if self._lease is not None:
            self._lease._return()


class AsyncKernelPool(PoolSettings):
    """A pool of Jupyter kernels handed out by session, for asyncio code.

    Use it as ``async with AsyncKernelPool(max_kernels=4) as pool`` (or call
    :meth:`start` and :meth:`shutdown`). All methods run on the event loop that started
    the pool; the bookkeeping ones (:meth:`stats`, :meth:`subscribe`, :meth:`sessions`)
    are plain functions.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._settings = weakref.proxy(self)  # what workers read: the loop keeps them (readers), they must not keep the pool
        self._workers: Workers | None = None  # what kernels start on now: chosen from the settings at each start
        self._backends: dict[Workers, set[Slot]] = {}  # every open Workers, and the slots whose kernels it made
        self._opening: tuple[Workers, asyncio.Future[None]] | None = None  # a new Workers being opened
        self._starting: asyncio.Future[None] | None = None  # resolved when the first start() is done
        self._books = Books(
            self.max_kernels, self.min_idle, self.start_retries, time.monotonic, self.evict_idle_sessions
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: list[Subscriber] = []
        self._listeners = Handoff(self._notify, self._notify_failed, limit=_SUBSCRIBER_BACKLOG)
        self._tasks: dict[Slot, asyncio.Task[None]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._retry: asyncio.TimerHandle | None = None
        self._ready_waiters: list[asyncio.Future[None]] = []
        self._closing: asyncio.Task[None] | None = None
        self._hurried = False  # Ctrl-C during shutdown: kill kernels instead of asking them to exit
        self._kills: set[asyncio.Task[None]] = set()
        # kernels running their first cells (a hidden set-up cell, then the caller's first): prewarm starts wait
        self._first_cells: dict[Slot, asyncio.Future[None]] = {}
        self._yielding: set[asyncio.Future[None]] = set()  # prewarm starts waiting for those to end
        self._comm_watchers: dict[str, list[CommCallback]] = {}  # session -> watch_comms callbacks

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> AsyncKernelPool:
        """Bind the pool to the running loop and begin prewarming ``min_idle`` kernels."""
        if self._books.closed:
            raise PoolClosed()
        while self._starting is not None:  # another caller is starting the pool: go on after it, in order
            await asyncio.shield(self._starting)
        if self._loop is not None:
            return self
        self._loop = asyncio.get_running_loop()
        self._starting = self._loop.create_future()
        self._finalizer = weakref.finalize(self, _dropped, self._books, self.log, repr(self))
        try:
            await self._backend()  # so that bad settings (the gateway refused our token) show here
        except BaseException:  # the next start() tries again
            self._loop = None
            self._finalizer.detach()
            raise
        finally:
            # the callers waiting resume after this one has made its request: calls keep their order
            starting, self._starting = self._starting, None
            starting.set_result(None)
        self._apply(self._books.settle())
        return self

    async def __aenter__(self) -> AsyncKernelPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until ``min_idle`` fresh kernels are idle (raises KernelStartError if they cannot start)."""
        await self.start()
        if self._books.fresh_idle() >= self.min_idle:
            return
        fut = self._loop.create_future()
        self._ready_waiters.append(fut)
        await asyncio.wait_for(fut, check_timeout(timeout))

    async def shutdown(self) -> None:
        """Stop every kernel: shutdown request, then kill after ``shutdown_timeout``. Idempotent.

        The work runs in a task of its own that the caller's cancellation does not stop: a
        cancelled ``shutdown()`` still stops every kernel, and any later call awaits the same work.
        """
        if self._loop is None:
            self._books.closed = True
            return
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._finalizer.detach()
        kernels = len(self._books.slots)
        self.log.info("shutting down the pool: stopping %d kernel(s)", kernels)
        for timer in [*self._timers.values(), self._retry]:
            if timer is not None:
                timer.cancel()
        self._timers.clear()
        for slot in self._books.slots.values():
            self._end_comms(slot, "the pool was shut down")
        self._apply(self._books.close())
        self._fail_ready(PoolClosed())
        while self._tasks or self._kills:
            await asyncio.wait([*self._tasks.values(), *self._kills])
        if self._opening is not None:  # a new backend nobody will start a kernel on now
            self._opening[1].cancel()
            await asyncio.gather(self._opening[1], return_exceptions=True)
        while self._backends:
            await self._backends.popitem()[0].close()
        self.log.info("pool shut down: %d kernel(s) stopped", kernels)

    def _hurry(self) -> None:
        """Kill every kernel still stopping, without waiting for it to exit on its own
        (what Ctrl-C during a shutdown asks for); later stops kill at once too."""
        self._hurried = True
        for slot in self._books.slots.values():
            if slot.state is KernelState.STOPPING and slot.handle is not None:
                kill = asyncio.ensure_future(slot.handle.stop(0, now=True))  # overtakes a graceful stop
                self._kills.add(kill)
                kill.add_done_callback(self._kills.discard)

    # ---- checkout and execute ------------------------------------------------------------

    def checkout(self, session: str | None = None, timeout: float | None = _UNSET) -> _Checkout:
        """``async with pool.checkout("a") as lease``: hold session a's kernel for the block.

        Waits up to ``timeout`` (default ``checkout_timeout``) for the kernel, then raises
        CheckoutTimeout naming the holders. Raises SessionLost once after the session's
        kernel was lost, KernelStartError if no kernel could start, PoolClosed after shutdown.
        """
        return _Checkout(self, session, timeout)

    async def execute(
        self,
        code: str,
        session: str | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        store_history: bool = True,
        on_comm: CommCallback | None = None,
    ) -> ExecutionResult:
        """Run ``code`` on ``session``'s kernel (any free kernel if None) and return the result.

        ``on_output`` is called on a callback thread (in order; ``execute`` returns after the last
        call) with each nbformat output as it arrives, and ``on_comm`` with the cell's comm events;
        see :meth:`Lease.execute` for ``timeout``, ``store_history`` and ``on_comm``.
        """
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        timeout = check_timeout(timeout)
        async with self.checkout(session) as lease:
            return await lease.execute(code, timeout, on_output, store_history, on_comm)

    async def _acquire(self, session: str | None, timeout: float | None, kernel_id: str | None = None) -> Lease:
        await self.start()
        fut = self._loop.create_future()
        waiter, fx = self._books.checkout(session, fut, kernel_id)
        self._apply(fx)
        if not fut.done():
            try:
                await asyncio.wait([fut], timeout=timeout)
            except BaseException:  # cancelled while waiting: give back what may just have been granted
                self._abandon(waiter, fut)
                raise
            if not fut.done():
                self._abandon(waiter, fut)
                self._count("timeouts")
                raise CheckoutTimeout(session, timeout or 0.0, *self._holders())
        return Lease(self, fut.result())

    def _abandon(self, waiter: Waiter, fut: asyncio.Future[Slot]) -> None:
        if not fut.done():
            fut.cancel()
            self._apply(self._books.cancel(waiter))
        elif not fut.cancelled() and fut.exception() is None:
            self._checkin(fut.result())

    def _holders(self) -> tuple[dict[str, str | None], dict[str, str]]:
        """Who holds each kernel (session, None for an anonymous lease) and in which state:
        busy kernels, and idle ones bound to a session, which stay taken until it is released."""
        held = [
            s
            for s in self._books.slots.values()
            if s.state is KernelState.BUSY or (s.state is KernelState.IDLE and s.session is not None)
        ]
        return {s.kernel_id: s.session for s in held}, {s.kernel_id: s.state.value for s in held}

    # ---- sessions ----------------------------------------------------------------------------

    def sessions(self) -> list[str]:
        """Names of the sessions that hold a kernel now."""
        return list(self._books.bound)

    def stray_output(self, session: str) -> list[dict[str, Any]]:
        """Output ``session``'s kernel produced while none of its cells ran, as nbformat outputs.

        A background thread printing after its cell ended answers no request: the reader keeps
        the last 200 such messages and 1,000,000 characters of them per kernel (never a
        backlog), and this hands them over, oldest first, and forgets them; if older ones were
        dropped, a stderr note first says how many. Empty for a session that holds no kernel.
        """
        slot = self._books.bound.get(check_session(session))
        if slot is None or slot.handle is None:
            return []
        outputs = _Outputs(None)
        for msg in slot.handle.router.orphans.take():
            outputs.handle(msg)
        return outputs.outputs

    # ---- widgets and other comms --------------------------------------------------------------

    def widget_state(self, session: str) -> dict[str, Any]:
        """The widgets of ``session``'s kernel, as ``application/vnd.jupyter.widget-state+json``.

        What nbclient and papermill save as ``metadata.widgets``: ``{"version_major": 2,
        "version_minor": 0, "state": {model_id: {"model_name", "model_module",
        "model_module_version", "state", ["buffers"]}}}``, every model the kernel opened with
        its latest state, an ``Output`` widget's ``outputs`` holding what it captured. A copy
        taken now; no models for a session that holds no kernel. See :mod:`.comms`.
        """
        comms = self._comms_of(_named(session, "widget_state"))
        return comms.state.to_dict() if comms is not None else empty_widget_state()

    def watch_comms(self, session: str, callback: CommCallback) -> Callable[[], None]:
        """Call ``callback(event)`` with the comm traffic of ``session``'s kernels; returns the unwatch.

        Every :class:`~jupyter_sessionpool.comms.CommEvent` that answers no call with an
        ``on_comm`` of its own: from background threads, from handlers of comm messages sent
        without ``on_comm``, from cells run without it; and ``kernel_ended`` when the
        session's kernel goes (its widgets are gone). It follows the session by name, across
        restarts. Runs on a callback thread, in order with the kernel's other callbacks.
        """
        session = _named(session, "watch_comms")
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        self._comm_watchers.setdefault(session, []).append(callback)

        def unwatch() -> None:
            watchers = self._comm_watchers.get(session, [])
            if callback in watchers:
                watchers.remove(callback)
            if not watchers:
                self._comm_watchers.pop(session, None)

        return unwatch

    async def send_comm(
        self,
        session: str,
        comm_id: str,
        data: dict[str, Any] | None = None,
        *,
        buffers: list[bytes] | None = None,
        close: bool = False,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        on_comm: CommCallback | None = None,
    ) -> ExecutionResult:
        """Send a comm message to ``session``'s kernel, as a front end would, and wait until it is handled.

        The message waits its turn behind the session's running cell (as a front end's
        message waits for a busy kernel), never starts a kernel, and delays no other
        session. ``buffers``, ``close``, ``timeout``, ``on_output`` and ``on_comm``: see
        :meth:`Lease.send_comm`. Raises CommNotFound when the session's kernel has no such
        comm open, also when the session loses that kernel while the message waits.
        """
        session = _named(session, "send_comm")
        _comm_message(comm_id, data, buffers)
        if self._books.closed:
            raise PoolClosed()
        comms = self._comms_of(session)
        if comms is None:
            raise CommNotFound(session, comm_id, "the session holds no kernel")
        if not comms.state.is_open(comm_id):
            raise CommNotFound(session, comm_id, "its kernel has no such comm open (it closed it, or never opened it)")
        try:
            async with _Checkout(self, session, None, comms.kernel_id) as lease:
                return await lease.send_comm(comm_id, data, buffers=buffers, close=close, timeout=timeout,
                                             on_output=on_output, on_comm=on_comm)
        except SessionLost as exc:
            raise CommNotFound(session, comm_id, f"the session lost the kernel that had it ({exc.reason})") from None

    def _comms_of(self, session: str | None) -> KernelComms | None:
        slot = self._books.bound.get(session) if session is not None else None
        return slot.handle.router.comms if slot is not None and slot.handle is not None else None

    @staticmethod
    def _end_comms(slot: Slot | None, reason: str) -> None:
        """Tell ``slot``'s comm watchers its kernel is gone (the first reason given wins)."""
        comms = slot.handle.router.comms if slot is not None and slot.handle is not None else None
        if comms is not None:
            comms.end(reason)

    async def release(self, session: str) -> bool:
        """Shut down ``session``'s kernel (killing a running cell); False if it held none."""
        session = check_session(session)
        self._end_comms(self._books.bound.get(session), "the session was released")
        released, fx = self._books.release(session)
        if released:
            self.log.info("session %r released", session)
        await self._apply_and_wait(fx)
        return released

    async def restart(self, session: str) -> bool:
        """Replace ``session``'s kernel with a fresh one on its next call; False if it held none."""
        session = check_session(session)
        self._end_comms(self._books.bound.get(session), "the session was restarted")
        restarted, fx = self._books.restart(session)
        if restarted:
            self.log.info("session %r restarted: its next call gets a fresh kernel", session)
        await self._apply_and_wait(fx)
        return restarted

    async def interrupt(self, session: str) -> bool:
        """Interrupt the cell running on ``session``'s kernel; False if it holds none."""
        slot = self._books.bound.get(check_session(session))
        if slot is None or slot.handle is None:
            return False
        await slot.handle.interrupt()
        return True

    # ---- observation ------------------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A snapshot of every kernel, the waiting checkouts and the counters."""
        return snapshot(self._books, self.kernel_name)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(stats)`` after every change; returns the unsubscribe.

        Subscribers run on a ``jupyter-sessionpool-callback`` thread, never on the pool's
        loop: each snapshot goes to every subscriber in the order they subscribed, one call
        at a time, snapshots in order. So a slow subscriber delays only the subscribers, never
        a kernel or a session (past 1,000 pending snapshots the oldest are dropped). An
        exception a subscriber raises is logged. A snapshot taken before the unsubscribe
        may still be delivered after it.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _notify(self, item: tuple[PoolStats, tuple[Subscriber, ...]]) -> None:
        """On the callback thread: hand one snapshot to the subscribers of its moment."""
        stats, subscribers = item
        for callback in subscribers:
            try:
                callback(stats)
            except Exception:
                self.log.exception("pool subscriber %r failed", callback)

    def _notify_failed(self, exc: BaseException) -> None:
        self.log.error("pool subscribers stopped by %r", exc)

    def _wait_subscribers(self, timeout: float) -> None:
        """Block (from a thread other than the loop's) until every subscriber has seen the changes so far."""
        self._listeners.wait_idle(timeout)

    @observe("max_kernels", "min_idle", "start_retries", "evict_idle_sessions")
    def _settings_changed(self, change: dict[str, Any]) -> None:
        if "_books" not in self.__dict__:
            return  # still in __init__: the books are built from the final values
        if change["name"] == "min_idle":
            fx = self._books.set_min_idle(change["new"])  # a lower one stops the fresh kernels it no longer needs
        else:
            name = "evict_idle" if change["name"] == "evict_idle_sessions" else change["name"]
            setattr(self._books, name, change["new"])
            fx = self._books.settle()
        if self._loop is not None and not self._books.closed:
            self._apply(fx)

    # ---- applying effects (sync: never awaits) ----------------------------------------

    def _apply(self, fx: Effects) -> None:
        for waiter, slot in fx.granted:
            if waiter.future.done():  # its caller gave up at this very moment
                self._checkin(slot)
            else:
                waiter.future.set_result(slot)
        for waiter, error in fx.failed:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        for slot in fx.start:
            self._spawn(slot, self._start(slot))
        for slot, now in fx.stop:
            evicted = slot.session in fx.evicted
            self._end_comms(slot, "the pool was full and evicted the session" if evicted else "its kernel was stopped")
            self._spawn(slot, self._stop(slot, now))
        for session in fx.evicted:
            self.log.info("session %r evicted: the pool was full and another session needed a kernel", session)
        for slot in fx.retried:
            self.log.warning(
                "kernel %s failed to start (attempt %d of %d); retrying after a back-off",
                slot.kernel_id, slot.attempt, self._books.start_retries + 1,
            )
        if fx.retry_at is not None and (self._retry is None or fx.retry_at < self._retry.when()):
            if self._retry is not None:
                self._retry.cancel()
            self._retry = self._loop.call_at(fx.retry_at - time.monotonic() + self._loop.time(), _weakly(self._retry_starts))
        if self._yielding and self._books.waiters:
            self._end_yield()  # someone waits: a held-back start may be what they need
        if self._ready_waiters and self._books.fresh_idle() >= self.min_idle:
            for fut in self._ready_waiters:
                if not fut.done():
                    fut.set_result(None)
            self._ready_waiters.clear()
        if self._subscribers:
            self._listeners.put((self.stats(), tuple(self._subscribers)))

    def _spawn(self, slot: Slot, coro: Any) -> None:
        previous = self._tasks.get(slot)
        task = asyncio.ensure_future(self._after(previous, coro) if previous else coro)
        self._tasks[slot] = task
        task.add_done_callback(lambda t, s=slot: self._tasks.get(s) is t and self._tasks.pop(s))

    @staticmethod
    async def _after(previous: asyncio.Task[None], coro: Any) -> None:
        previous.cancel()
        await asyncio.gather(previous, return_exceptions=True)
        await coro

    async def _apply_and_wait(self, fx: Effects) -> None:
        """Apply ``fx`` and wait for its kernels to stop. Cancelling the wait does not cancel
        the stops (``asyncio.wait``, not ``gather``): no kernel is left alive and untracked."""
        self._apply(fx)
        stopping = [self._tasks[slot] for slot, _ in fx.stop if slot in self._tasks]
        if stopping:
            await asyncio.wait(stopping)

    def _retry_starts(self) -> None:
        self._retry = None
        self._apply(self._books.settle())

    def _checkin(self, slot: Slot, discard: str | None = None) -> None:
        if discard is not None:
            self._end_comms(slot, f"the session lost its kernel ({discard})")
        self._apply(self._books.checkin(slot, discard))
        if slot.session and slot.state is KernelState.IDLE and self.session_idle_timeout:
            self._arm_expiry(slot.session, self.session_idle_timeout)

    def _arm_expiry(self, session: str, delay: float) -> None:
        if session not in self._timers:
            self._timers[session] = self._loop.call_later(delay, _weakly(self._expire, session))

    def _expire(self, session: str) -> None:
        """The session's idle timer fired: release it if it has really been idle that long.

        A busy session is left alone without a timer (its check-in arms the next one), so a
        long cell costs nothing; an idle one used since the timer was armed gets a new timer
        for the rest of its idle time.
        """
        del self._timers[session]
        slot = self._books.bound.get(session)
        if slot is None or slot.state is not KernelState.IDLE or self.session_idle_timeout is None:
            return
        remaining = (slot.last_used or 0.0) + self.session_idle_timeout - time.monotonic()
        if remaining > 0:
            self._arm_expiry(session, remaining)
            return
        self.log.info("session %r expired after %g s idle", session, self.session_idle_timeout)
        fx = self._books.expire(session, self.session_idle_timeout)
        if any(stopped is slot for stopped, _ in fx.stop):
            self._end_comms(slot, f"the session expired after {self.session_idle_timeout:g} s idle")
        self._apply(fx)

    def _session_lost(self, slot: Slot) -> SessionLost:
        """The SessionLost for a call whose cell never reached its session's dead kernel.

        The books hear of the death now if its exit callback has not run yet, and their own
        report of the loss is taken: the session's next call gets a fresh kernel, not a second
        SessionLost.
        """
        session = slot.session
        self._on_exit(slot)
        self._books.lost.pop(session, None)
        return SessionLost(session, slot.handle.exited.result())

    def _count(self, counter: str) -> None:
        self._books.counters[counter] += 1

    def _fail_ready(self, error: BaseException) -> None:
        for fut in self._ready_waiters:
            if not fut.done():
                fut.set_exception(error)
        self._ready_waiters.clear()

    # ---- tasks that do the kernels' I/O ---------------------------------------------------

    async def _backend(self) -> Workers:
        """The Workers to start a kernel on, as the settings are now (local, or a gateway).

        The current one while the settings it was made from are unchanged; else a new one,
        opened once however many starts ask for it at the same time. The one it replaces
        keeps serving the kernels it made (a release still DELETEs on their gateway) and is
        closed once the last of them has stopped. Raises what opening the new one raised
        (the next start tries again).
        """
        while self._workers is None or not workers.serves(self._workers, self._settings):
            if self._opening is None or not workers.serves(self._opening[0], self._settings):
                made = workers.workers_for(self._settings)
                self._opening = (made, asyncio.ensure_future(self._open_backend(made)))
            await asyncio.shield(self._opening[1])  # a cancelled start leaves the opening to the others
        return self._workers

    async def _open_backend(self, made: Workers) -> None:
        try:
            await made.open()
        except BaseException:
            await made.close()
            raise
        finally:
            if self._opening is not None and self._opening[0] is made:
                self._opening = None
        old, self._workers = self._workers, made
        self._backends[made] = set()
        if old is not None:
            self.log.info("kernels start on %s from now on (settings changed); %d running kernel(s) stay where they are",
                          made.location, len(self._backends.get(old, ())))
            self._retire_if_unused(old)

    def _retire_if_unused(self, backend: Workers) -> None:
        """Close a Workers that is no longer the current one once no kernel it made is left."""
        if backend is not self._workers and not self._backends.get(backend, True):
            del self._backends[backend]
            closing = asyncio.ensure_future(backend.close())
            self._kills.add(closing)  # the shutdown waits for it
            closing.add_done_callback(self._kills.discard)

    def _forget(self, slot: Slot) -> None:
        """``slot``'s kernel is gone for good: its Workers may be done."""
        for backend, slots in list(self._backends.items()):
            if slot in slots:
                slots.discard(slot)
                self._retire_if_unused(backend)

    def _first_cell_began(self, slot: Slot) -> None:
        if slot not in self._first_cells:
            self._first_cells[slot] = self._loop.create_future()

    def _first_cells_pause(self, slot: Slot) -> None:
        """A lease of ``slot`` that ran only hidden cells returned: its caller's first cell may come
        with the next request (a service's PUT, then its execute), but a start waits at most one
        ``_PREWARM_YIELD`` for it."""
        if slot in self._first_cells:
            self._loop.call_later(_PREWARM_YIELD, _weakly(self._first_cell_ended, slot))

    def _first_cell_ended(self, slot: Slot) -> None:
        """``slot``'s kernel ran the caller's first cell, or is gone: the prewarm starts waiting for it go on."""
        ended = self._first_cells.pop(slot, None)
        if ended is not None:
            ended.set_result(None)

    def _end_yield(self) -> None:
        for fut in self._yielding:
            if not fut.done():
                fut.set_result(None)
        self._yielding.clear()

    async def _yield_to_first_cells(self) -> None:
        """Hold a prewarm start back until the first cells running now end (up to ``_PREWARM_YIELD`` s).

        Only those: under churn new sessions begin all the time, and a start that waited for
        every first cell would wait its whole allowance every time.
        """
        released = self._loop.create_future()
        self._yielding.add(released)
        try:
            ended = asyncio.gather(*self._first_cells.values())
            await asyncio.wait([ended, released], timeout=_PREWARM_YIELD, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._yielding.discard(released)

    async def _start(self, slot: Slot) -> None:
        if self._first_cells and not self._books.waiters:
            await self._yield_to_first_cells()
        try:
            backend = await self._backend()
            worker = backend.new(slot.kernel_id)
            self._backends[backend].add(slot)
            slot.handle = worker
            worker.router.comms = KernelComms(slot.kernel_id, lambda: slot.session, self._comm_watchers, self.max_output_size)
            worker.exited.add_done_callback(_weakly(self._on_exit, slot))
            await worker.start(self.startup_timeout)
        except Exception as exc:
            error = exc if isinstance(exc, PoolError) else PoolError(str(exc))
            self.log.warning("kernel %s failed to start: %s", slot.kernel_id, error)
            self._forget(slot)
            self._apply(self._books.start_failed(slot, error))
            if self._books.prewarm_suspended:
                self._fail_ready(error)
            return
        self._apply(self._books.started(slot))

    async def _stop(self, slot: Slot, now: bool) -> None:
        try:
            if slot.handle is not None:
                await slot.handle.stop(self.shutdown_timeout, now=now or self._hurried)
        finally:
            self._forget(slot)
            self._first_cell_ended(slot)
            self._apply(self._books.removed(slot))

    def _on_exit(self, slot: Slot) -> None:
        if slot.state in (KernelState.IDLE, KernelState.BUSY):
            reason = slot.handle.exited.result()
            self.log.warning("kernel %s (session %s) %s", slot.kernel_id, slot.session, reason)
            self._end_comms(slot, f"the session lost its kernel: it died ({reason})")
            self._apply(self._books.died(slot))
            self._spawn(slot, self._stop(slot, now=True))

    def _recover(self, slot: Slot, run: execution.Execution | None) -> None:
        """Free a kernel left mid-cell (``run``) or driven directly by its holder (None), then check it in.

        Any failure on the way discards the kernel: recovery never leaves a slot busy.
        """

        async def recover() -> None:
            worker = slot.handle
            try:
                if run is not None:
                    stopped = await execution.stop(run, self.interrupt_timeout)
                else:
                    stopped = await execution.quiesce(worker, self.interrupt_timeout)
                discard = None if stopped else "its cell was abandoned and did not stop"
            except Exception as exc:
                discard = f"its recovery failed ({type(exc).__name__}: {exc})"
            if discard is not None:
                self.log.warning("discarding kernel %s (session %s): %s", slot.kernel_id, slot.session, discard)
            self._checkin(slot, discard)

        self._spawn(slot, recover())

    def __repr__(self) -> str:
        busy = sum(1 for s in self._books.slots.values() if s.state is KernelState.BUSY)
        state = "closed" if self._books.closed else "running" if self._loop is not None else "unstarted"
        return (f"<{type(self).__name__} kernel={self.kernel_name!r} kernels={len(self._books.slots)} "
                f"busy={busy} max={self.max_kernels} {state}>")


# ---- a pool dropped without shutdown() ---------------------------------------------------------
# Whatever the event loop keeps (timers, readers, a kernel's exit callback) refers to the pool
# weakly, so a pool nobody holds can be collected; its finalizer then stops its kernels.


def _weakly(method: Callable[..., Any], *args: Any) -> Callable[..., None]:
    """A callback that calls ``method(*args)`` (ignoring its own arguments) while the method's object lives."""
    ref = weakref.WeakMethod(method)

    def call(*_: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(*args)

    return call


def _dropped(books: Books, log: logging.Logger, name: str) -> None:
    """A started pool was garbage-collected without ``shutdown()``: stop its kernels, wait for nothing."""
    kernels = [slot.handle for slot in books.slots.values() if slot.handle is not None]
    if kernels:
        log.warning("%s was dropped without shutdown(); stopping its %d kernel(s)", name, len(kernels))
    for worker in kernels:
        worker.abandon()
