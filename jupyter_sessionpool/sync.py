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

from .config import PoolSettings, check_session, check_timeout
from ._handoff import on_callback_thread
from .errors import PoolClosed
from .results import ExecutionResult, OutputCallback
from .pool import _UNSET, AsyncKernelPool, Lease
from .stats import PoolStats

if TYPE_CHECKING:
    from .notebook.widget import PoolWidget

T = TypeVar("T")
_SUBSCRIBER_WAIT = 5.0  # seconds a blocking call waits at most for slow subscribers to catch up
_live: weakref.WeakSet[KernelPool] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for pool in list(_live):
        pool.shutdown()


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
            self._client = BlockingKernelClient(session=source.session)  # its requests are announced too
            self._client.load_connection_info(source.get_connection_info())
            self._client.start_channels(stdin=False, hb=False)
        return self._client

    def execute(
        self,
        code: str,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        store_history: bool = True,
    ) -> ExecutionResult:
        """Run ``code`` on this kernel and block for the result; see :meth:`Lease.execute`."""
        return self._pool._run(self._lease.execute(code, timeout, on_output, store_history))

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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        _live.add(self)

    # ---- the private loop ------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()
                    loop.close()

                self._thread = threading.Thread(target=main, name="jupyter-sessionpool", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
        return self._loop

    def _run(self, coro: Coroutine[Any, Any, T], blocking: bool = True) -> T:
        if self._stopped:
            coro.close()
            raise PoolClosed()
        loop = self._ensure_loop()
        if threading.current_thread() is self._thread or (blocking and on_callback_thread()):
            coro.close()
            raise RuntimeError("a blocking KernelPool call was made from inside on_output or a subscriber, "
                               "which can wait on the very call that runs the callback; hand the work to "
                               "another thread, or use the AsyncKernelPool")
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            result = fut.result()
        except KeyboardInterrupt:
            fut.cancel()
            raise
        if not on_callback_thread():  # subscribers see this call's changes before it returns
            self._async._wait_subscribers(_SUBSCRIBER_WAIT)
        return result

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a plain (non-blocking) function on the pool's thread and return its value."""
        if self._loop is None or self._stopped or threading.current_thread() is self._thread:
            return fn(*args)  # no loop thread to race with

        async def call() -> T:
            return fn(*args)

        return self._run(call(), blocking=False)

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
    ) -> ExecutionResult:
        """Run ``code`` on ``session``'s kernel and block for the result; see :meth:`AsyncKernelPool.execute`."""
        return self._run(self._async.execute(code, session, timeout, on_output, store_history))

    def submit(
        self,
        code: str,
        session: str | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        store_history: bool = True,
    ) -> concurrent.futures.Future[ExecutionResult]:
        """Start ``code`` on ``session``'s kernel and return at once with a Future of the result.

        Submissions reach the pool in the order made, so cells submitted to one session run
        in that order. Cancelling the Future interrupts the cell like a cancelled caller.
        """
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        check_session(session)
        check_timeout(timeout)
        if self._stopped:
            raise PoolClosed()
        coro = self._async.execute(code, session, timeout, on_output, store_history)
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())

    def checkout(self, session: str | None = None, timeout: float | None = _UNSET) -> SyncLease:
        """``with pool.checkout("b") as lease``: hold session b's kernel for the block."""
        return SyncLease(self, session, timeout)

    def stats(self) -> PoolStats:
        """A snapshot of every kernel, the waiting checkouts and the counters."""
        return self._call(self._async.stats)

    def subscribe(self, callback: Callable[[PoolStats], Any]) -> Callable[[], None]:
        """Call ``callback(stats)`` on the pool's thread after every change; returns the unsubscribe."""
        unsubscribe = self._call(self._async.subscribe, callback)
        return lambda: self._call(unsubscribe)

    def sessions(self) -> list[str]:
        """Names of the sessions that hold a kernel now."""
        return self._call(self._async.sessions)

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
        """Stop every kernel and the pool's thread. Idempotent."""
        if self._stopped:
            return
        if threading.current_thread() is self._thread:
            raise RuntimeError("KernelPool.shutdown() cannot run on the pool's own thread")
        if self._loop is not None:
            self._run(self._async.shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._async._books.closed = True
        self._stopped = True
        _live.discard(self)
