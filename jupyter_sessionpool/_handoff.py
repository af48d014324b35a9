"""Handing user callbacks off the pool's event loop, in order, one queue per consumer.

``on_output`` and comm callbacks, ``subscribe()`` listeners and the done-callbacks of
``KernelPool.submit()`` futures are user code: a slow one (a
widget waiting on its render lock, a callback writing to a slow terminal) must never stall
the loop that reads every kernel. Each consumer gets a :class:`Handoff`: an ordered queue
the loop appends to without waiting, drained by one thread at a time from a shared pool of
threads named ``jupyter-sessionpool-callback``. So calls stay in order and never overlap,
and a slow callback delays only its own queue. One kernel's ``on_output`` and comm
callbacks share one queue (see :mod:`.comms`), so they see its messages in the order sent.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

THREAD_NAME = "jupyter-sessionpool-callback"
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _threads() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix=THREAD_NAME)
        return _executor


class Handoff:
    """Calls ``callback(item)`` for each :meth:`put` item, in order, on a callback thread.

    If the callback raises, ``on_error(exc)`` is called on that thread and the next item
    goes on. ``limit`` bounds the pending items (oldest dropped).
    """

    def __init__(
        self,
        callback: Callable[[Any], Any],
        on_error: Callable[[BaseException], Any],
        limit: int | None = None,
    ) -> None:
        self.callback = callback
        self._on_error = on_error
        self._items: deque[Any] = deque(maxlen=limit)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running = False
        self._queued = 0  # items ever queued ...
        self._handled = 0  # ... and handed to the callback (or dropped)
        self._flushes: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def put(self, item: Any) -> None:
        """Queue ``item`` for the callback (never waits; call from the loop)."""
        with self._lock:
            if len(self._items) == self._items.maxlen:
                self._handled += 1  # the oldest is dropped
            self._items.append(item)
            self._queued += 1
            if self._running:
                return
            self._running = True
        _threads().submit(self._drain)

    async def flush(self) -> None:
        """Wait until every item queued so far was handed to the callback.

        Items queued after the call are not waited for: a handoff shared by many producers
        (one kernel's outputs and comm events) never keeps a flush waiting.
        """
        with self._lock:
            if self._handled >= self._queued:
                return
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            self._flushes.append((self._queued, loop, fut))
        await fut

    def wait_idle(self, timeout: float) -> bool:
        """From any thread but a callback thread: block until the queue is drained (False on timeout)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._running, timeout)

    def _drain(self) -> None:
        while True:
            with self._lock:
                flushed = [f for f in self._flushes if f[0] <= self._handled]
                self._flushes = [f for f in self._flushes if f[0] > self._handled]
                more = bool(self._items)
                if more:
                    item = self._items.popleft()
                else:
                    self._running = False
                    self._idle.notify_all()
            for _, loop, fut in flushed:
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:  # that loop is closed: nobody waits any more
                    pass
            if not more:
                return
            try:
                self.callback(item)
            except BaseException as exc:
                self._on_error(exc)
            with self._lock:
                self._handled += 1


def call_soon(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on a callback thread (never waits; call from anywhere)."""
    _threads().submit(fn, *args)


def on_callback_thread() -> bool:
    """True when called from inside a handed-off callback."""
    return threading.current_thread().name.startswith(THREAD_NAME)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
