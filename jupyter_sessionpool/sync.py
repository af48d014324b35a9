"""KernelPool: the blocking face of AsyncKernelPool, for scripts and notebooks.

The async pool lives on one private event-loop thread; each method hands its coroutine
to that loop and blocks for the answer. The caller's own event loop, if any (a running
Jupyter kernel, a coroutine calling sync code), is never touched or patched.
Callbacks (``on_output``, ``subscribe``) run on callback threads, never the pool's thread
(see :mod:`._handoff`); a blocking call returns once subscribers have seen what it changed.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Coroutine, TypeVar

from traitlets import observe

from .comms import CommCallback
from .config import PoolSettings, check_session, check_timeout
from ._handoff import call_soon, on_callback_thread
from .errors import PoolClosed
from .results import ExecutionResult, OutputCallback
from .pool import _UNSET, AsyncKernelPool, Lease, _comm_message, _named
from .stats import PoolStats

if TYPE_CHECKING:
    from .notebook.widget import PoolWidget

T = TypeVar("T")
_KILL_WAIT = 5.0  # seconds a shutdown waits for kernels it has killed, and for the loop thread to end
_SUBSCRIBER_WAIT = 5.0  # seconds a blocking call waits at most for slow subscribers to catch up
_live: weakref.WeakSet[KernelPool] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for pool in list(_live):
        pool.shutdown()


class _LoopThread:
    """The private event-loop thread of one KernelPool, and every call in flight on it.

    Calls are handed to the loop under the same lock that marks the pool closing and the
    loop stopped, so a call is either refused with PoolClosed or reaches a loop that answers
    it (a result, or PoolClosed once the pool is shut down): no caller can be left waiting
    on a loop that will never run its call. Holds no reference to the KernelPool, so a
    pool dropped without ``shutdown()`` can be collected and its kernels stopped.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.closing = False  # shutdown has begun: new work is refused, bookkeeping calls still run
        self.stopped = False  # the loop has stopped for good
        self.closed: concurrent.futures.Future[None] | None = None  # the shutdown work, once begun

    def submit(self, coro: Coroutine[Any, Any, T], while_closing: bool = False) -> concurrent.futures.Future[T]:
        """Hand ``coro`` to the loop (starting it on first use) and return its Future."""
        with self.lock:
            if self.stopped or (self.closing and not while_closing):
                coro.close()
                raise PoolClosed()
            if threading.current_thread() is self.thread:
                coro.close()
                raise RuntimeError("a blocking KernelPool call was made from the pool's own thread "
                                   "(inside on_output or a subscriber); use the AsyncKernelPool there")
            if self.loop is None:
                self._start()
            return asyncio.run_coroutine_threadsafe(self._answer(coro), self.loop)

    async def _answer(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return await coro
        except asyncio.CancelledError:
            if self.closing:  # cancelled by the shutdown, not by its caller
                raise PoolClosed("the kernel pool was shut down before this call finished") from None
            raise

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                with self.lock:
                    self.stopped = True  # nothing reaches the loop from here on ...
                loop.run_until_complete(_finish_calls())  # ... and what just did is answered
                loop.close()

        self.thread = threading.Thread(target=main, name="jupyter-sessionpool", daemon=True)
        self.thread.start()
        ready.wait()
        self.loop = loop

    def close(self, pool: AsyncKernelPool) -> concurrent.futures.Future[None] | None:
        """Begin the shutdown once (refusing new work) and return its Future; None if the loop never ran."""
        with self.lock:
            self.closing = True
            if self.loop is None or self.stopped:
                return self.closed
            if self.closed is None:
                loop = self.loop
                self.closed = asyncio.run_coroutine_threadsafe(_close(pool), loop)
                self.closed.add_done_callback(lambda _: loop.call_soon_threadsafe(loop.stop))
            return self.closed

    def abandon(self, pool: AsyncKernelPool) -> None:
        """The KernelPool was garbage-collected without ``shutdown()``: stop its kernels, wait for nothing."""
        if not self.closing and self.loop is not None:
            pool.log.warning("a KernelPool was dropped without shutdown(); stopping its kernels")
        self.close(pool)


async def _finish_calls() -> None:
    """As the loop stops: run the calls handed over just before (the closed pool answers them
    at once), then cancel whatever is left, so no caller waits on a loop that is gone."""
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)


async def _close(pool: AsyncKernelPool) -> None:
    """On the loop: shut the pool, then let the calls still in flight finish (each gets its
    result or PoolClosed); any still running after ``shutdown_timeout`` is cancelled."""
    await pool.shutdown()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:
        _, late = await asyncio.wait(others, timeout=pool.shutdown_timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=pool.shutdown_timeout)


class CallFuture(concurrent.futures.Future[T]):
    """The Future of a call handed to the pool's loop, whose done-callbacks never run on that loop.

    A plain ``run_coroutine_threadsafe`` Future runs its callbacks on the thread that
    completes it, the pool's loop: a slow callback there (a 2 s one) stalled every session's
    round trips for that long. This one completes on a callback thread (see :mod:`._handoff`),
    so its callbacks run there; one added after it completed runs at once in the thread that
    adds it. :meth:`cancel` cancels the call itself (a running cell is interrupted).
    """

    def __init__(self, call: concurrent.futures.Future[T]) -> None:
        super().__init__()
        self._call = call
        call.add_done_callback(lambda done: call_soon(self._settle, done))

    def cancel(self) -> bool:
        """Cancel the call; False if it has already completed."""
        return self._call.cancel() and super().cancel()

    def _settle(self, call: concurrent.futures.Future[T]) -> None:
        """On a callback thread: take over the call's outcome, which runs this Future's callbacks here."""
        try:
            if call.cancelled():
                super().cancel()
            elif call.exception() is not None:
                self.set_exception(call.exception())
            else:
                self.set_result(call.result())
        except concurrent.futures.InvalidStateError:  # cancelled by its holder meanwhile
            pass


class SyncLease:
    """A kernel held by a blocking caller for the ``with`` block; see :class:`Lease`."""

    def __init__(self, pool: KernelPool, session: str | None, timeout: Any) -> None:
        self._pool = pool
        self._checkout = pool._async.checkout(session, timeout)
        self._lease: Lease | None = None
        self._client: Any = None

    def __enter__(self) -> SyncLease:
        self._lease = self._pool._run(self._checkout.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            _close_flushed(self._client)
        self._pool._call(self._lease._return)

    @property
    def kernel_id(self) -> str:
        return self._lease.kernel_id

    @property
    def session(self) -> str | None:
        return self._lease.session

    @property
    def pid(self) -> int | None:
        return self._lease.pid

    @property
    def kernel_info(self) -> dict[str, Any] | None:
        """The content of the kernel's ``kernel_info`` reply; see :attr:`Lease.kernel_info`."""
        return self._lease.kernel_info

    @property
    def client(self) -> Any:
        """A ``jupyter_client`` BlockingKernelClient on this kernel, made on first use (None if remote).

        What you send through it before the block ends still reaches the kernel; on exit
        the pool waits for (or interrupts) what you left running, see :attr:`Lease.client`.
        """
        if self._client is None:
            from jupyter_client.blocking import BlockingKernelClient

            source = self._pool._call(lambda: self._lease.client)
            if source is None:
                return None
            self._client = BlockingKernelClient(session=source.session.sibling())  # its requests are announced too
            self._client.load_connection_info(source.get_connection_info())
            self._client.start_channels(stdin=False, hb=False)
        return self._client

    def execute(
        self,
        code: str,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        store_history: bool = True,
        on_comm: CommCallback | None = None,
    ) -> ExecutionResult:
        """Run ``code`` on this kernel and block for the result; see :meth:`Lease.execute`."""
        return self._pool._run(self._lease.execute(code, timeout, on_output, store_history, on_comm))

    def send_comm(
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
        """Send a comm message to this kernel and block until it is handled; see :meth:`Lease.send_comm`."""
        return self._pool._run(self._lease.send_comm(
            comm_id, data, buffers=buffers, close=close, timeout=timeout, on_output=on_output, on_comm=on_comm
        ))

    def widget_state(self) -> dict[str, Any]:
        """This kernel's widgets as ``application/vnd.jupyter.widget-state+json``; see :meth:`Lease.widget_state`."""
        return self._pool._call(self._lease.widget_state)

    def interrupt(self) -> None:
        """Interrupt the cell running on this kernel."""
        self._pool._run(self._lease.interrupt())

    def __repr__(self) -> str:
        return repr(self._lease).replace("<Lease", "<SyncLease", 1) if self._lease else "<SyncLease unentered>"


_FLUSH_LINGER_MS = 1000


def _close_flushed(client: Any) -> None:
    """Stop a blocking client's channels without dropping what was just sent.

    jupyter_client closes channel sockets with ``linger=0``, which discards a request still
    queued in zmq (one sent just before the ``with`` block ended); closing them first with a
    linger lets the request go out.
    """
    for channel in (client._shell_channel, client._control_channel):  # the properties would open new ones
        if channel is not None and channel.socket is not None and not channel.socket.closed:
            channel.socket.close(linger=_FLUSH_LINGER_MS)
    client.stop_channels()


class KernelPool(PoolSettings):
    """A pool of Jupyter kernels handed out by session, for blocking code.

    Same settings and methods as :class:`AsyncKernelPool`, minus ``await``::

        with KernelPool(max_kernels=4) as pool:
            pool.execute("x = 41", session="a")
            assert pool.execute("x + 1", session="a").result == "42"

    A ``KeyboardInterrupt`` while a call blocks cancels it the way asyncio cancellation
    does (the remote cell is interrupted) and is re-raised.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._async = AsyncKernelPool(parent=self.parent, **self.settings())
        self._loop_thread = _LoopThread()
        # a pool dropped without shutdown() stops its kernels when collected, not at process exit
        self._finalizer = weakref.finalize(self, self._loop_thread.abandon, self._async)
        self._finalizer.atexit = False  # at exit, _shutdown_all shuts live pools down properly
        _live.add(self)

    # ---- the private loop ------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if on_callback_thread():
            coro.close()
            raise RuntimeError("a blocking KernelPool call was made from inside on_output, a subscriber or a "
                               "submit() Future's done-callback, which can wait on the very call that runs the "
                               "callback; use submit(), hand the work to another thread, or use the AsyncKernelPool")
        fut = self._loop_thread.submit(coro)
        try:
            result = fut.result()
        except KeyboardInterrupt:
            fut.cancel()
            raise
        if not on_callback_thread():  # subscribers see this call's changes before it returns
            self._async._wait_subscribers(_SUBSCRIBER_WAIT)
        return result

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a plain (non-blocking) function on the pool's thread and return its value.

        Still works while the pool shuts down; once its loop has stopped (or before it ever
        ran) there is no thread to race with, and ``fn`` runs right here.
        """
        lt = self._loop_thread
        if lt.loop is None or lt.stopped or threading.current_thread() is lt.thread:
            return fn(*args)

        async def call() -> T:
            return fn(*args)

        try:
            result = lt.submit(call(), while_closing=True).result()
        except PoolClosed:
            if lt.stopped:
                return fn(*args)  # the loop stopped meanwhile
            raise
        if not on_callback_thread():  # as in _run: subscribers see this call's changes before it returns
            self._async._wait_subscribers(_SUBSCRIBER_WAIT)
        return result

    @observe(*PoolSettings.class_trait_names(config=True))
    def _forward(self, change: dict[str, Any]) -> None:
        if "_async" in self.__dict__:
            self._call(setattr, self._async, change["name"], change["new"])

    # ---- the API ------------------------------------------------------------------------------

    def start(self) -> KernelPool:
        """Start the pool's thread and begin prewarming ``min_idle`` kernels."""
        self._run(self._async.start())
        return self

    def __enter__(self) -> KernelPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ``min_idle`` fresh kernels are idle."""
        self._run(self._async.wait_ready(timeout))

    def execute(
        self,
        code: str,
        session: str | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        store_history: bool = True,
        on_comm: CommCallback | None = None,
    ) -> ExecutionResult:
        """Run ``code`` on ``session``'s kernel and block for the result; see :meth:`AsyncKernelPool.execute`."""
        return self._run(self._async.execute(code, session, timeout, on_output, store_history, on_comm))

    def submit(
        self,
        code: str,
        session: str | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        store_history: bool = True,
        on_comm: CommCallback | None = None,
    ) -> concurrent.futures.Future[ExecutionResult]:
        """Start ``code`` on ``session``'s kernel and return at once with a Future of the result.

        Submissions reach the pool in the order made, so cells submitted to one session run
        in that order. Cancelling the Future interrupts the cell like a cancelled caller. Its
        done-callbacks run on a callback thread, never the pool's own (a slow one delays no
        session); like ``on_output``, they may not make blocking calls on this pool (use
        ``submit`` there).
        """
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        check_session(session)
        check_timeout(timeout)
        return CallFuture(
            self._loop_thread.submit(self._async.execute(code, session, timeout, on_output, store_history, on_comm))
        )

    def checkout(self, session: str | None = None, timeout: float | None = _UNSET) -> SyncLease:
        """``with pool.checkout("b") as lease``: hold session b's kernel for the block."""
        return SyncLease(self, session, timeout)

    def stats(self) -> PoolStats:
        """A snapshot of every kernel, the waiting checkouts and the counters."""
        return self._call(self._async.stats)

    def subscribe(self, callback: Callable[[PoolStats], Any]) -> Callable[[], None]:
        """Call ``callback(stats)`` on a callback thread (in order, never the pool's own) after every change; returns the unsubscribe."""
        unsubscribe = self._call(self._async.subscribe, callback)
        return lambda: self._call(unsubscribe)

    def sessions(self) -> list[str]:
        """Names of the sessions that hold a kernel now."""
        return self._call(self._async.sessions)

    def stray_output(self, session: str) -> list[dict[str, Any]]:
        """Output ``session``'s kernel produced while none of its cells ran; see :meth:`AsyncKernelPool.stray_output`."""
        return self._call(self._async.stray_output, session)

    def widget_state(self, session: str) -> dict[str, Any]:
        """The widgets of ``session``'s kernel, as ``application/vnd.jupyter.widget-state+json``;
        see :meth:`AsyncKernelPool.widget_state`."""
        return self._call(self._async.widget_state, session)

    def watch_comms(self, session: str, callback: CommCallback) -> Callable[[], None]:
        """Call ``callback(event)`` on a callback thread with ``session``'s comm traffic; returns the
        unwatch. See :meth:`AsyncKernelPool.watch_comms`."""
        unwatch = self._call(self._async.watch_comms, session, callback)
        return lambda: self._call(unwatch)

    def send_comm(
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
    ) -> concurrent.futures.Future[ExecutionResult]:
        """Send a comm message to ``session``'s kernel and return at once, as a front end does.

        The Future resolves once the kernel has handled the message (``.result()`` waits):
        messages to one session are handled in the order sent, each after the cell running
        before it. Cancelling the Future before it is handled withdraws the message; see
        :meth:`AsyncKernelPool.send_comm` for the rest.
        """
        _named(session, "send_comm")
        _comm_message(comm_id, data, buffers)
        check_timeout(timeout)
        return CallFuture(self._loop_thread.submit(self._async.send_comm(
            session, comm_id, data, buffers=buffers, close=close, timeout=timeout, on_output=on_output, on_comm=on_comm
        )))

    def widget(self) -> PoolWidget:
        """A live ipywidgets view of this pool with per-session actions (what ``%pool status`` shows)."""
        from .notebook.widget import PoolWidget  # lazy: ipywidgets is only needed by those who ask for it

        return PoolWidget(self)

    def release(self, session: str) -> bool:
        """Shut down ``session``'s kernel; False if it held none."""
        return self._run(self._async.release(session))

    def restart(self, session: str) -> bool:
        """Give ``session`` a fresh kernel on its next call; False if it held none."""
        return self._run(self._async.restart(session))

    def interrupt(self, session: str) -> bool:
        """Interrupt the cell running on ``session``'s kernel; False if it holds none."""
        return self._run(self._async.interrupt(session))

    def shutdown(self) -> None:
        """Stop every kernel and the pool's thread. Idempotent, and safe from any thread.

        Calls made meanwhile from other threads get their result or PoolClosed. A
        KeyboardInterrupt (Ctrl-C) during the shutdown kills the kernels still stopping
        instead of waiting up to ``shutdown_timeout`` for them, then is re-raised.
        """
        lt = self._loop_thread
        if threading.current_thread() is lt.thread:
            raise RuntimeError("KernelPool.shutdown() cannot run on the pool's own thread")
        self._finalizer.detach()
        closed = lt.close(self._async)
        try:
            if closed is None:  # never started: no kernel, no thread
                self._async._books.closed = True
                return
            try:
                closed.result()
            except KeyboardInterrupt:  # Ctrl-C: stop asking kernels to exit, kill them, and go
                self.log.warning("shutdown interrupted: killing the pool's kernels")
                lt.loop.call_soon_threadsafe(self._async._hurry)
                concurrent.futures.wait([closed], timeout=_KILL_WAIT)
                raise
            lt.thread.join(_KILL_WAIT)
        finally:
            _live.discard(self)
