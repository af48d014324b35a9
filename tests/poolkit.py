"""Helpers for tests that drive a real pool: wait on pool events, start cells and know they run."""

from __future__ import annotations

import asyncio
import os

import psutil

from jupyter_sessionpool import AsyncKernelPool

_FORK_TEMPLATE = "jupyter_sessionpool/forking/template.py"


def kernels_below(pid: int | None = None) -> list[psutil.Process]:
    """The kernels among ``pid``'s descendants (default: this process's): spawned ones (ipykernel on
    their command line) and forked ones (a fork template's children, which show its command line)."""
    try:
        below = psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:  # gone: what it left behind is the orphan check's (tests/conftest.py)
        return []
    found = []
    for p in below:
        try:
            if "ipykernel" in " ".join(p.cmdline()) or _FORK_TEMPLATE in " ".join(p.parent().cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def until(pool: AsyncKernelPool, predicate) -> asyncio.Future:
    """A future resolved by the pool's own events as soon as ``predicate(stats)`` holds.

    Subscribers run on a callback thread, so the future is resolved through the loop.
    """
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def resolve(stats) -> None:
        if not fut.done():
            fut.set_result(stats)

    def check(stats) -> None:
        if predicate(stats):
            loop.call_soon_threadsafe(resolve, stats)

    if predicate(pool.stats()):
        resolve(pool.stats())
    unsubscribe = pool.subscribe(check)
    fut.add_done_callback(lambda _: unsubscribe())
    return fut


async def started_marker(pool: AsyncKernelPool, code: str, session: str | None, marker: str = "started"):
    """Run ``code`` (which prints ``marker`` first) in a task; return the task once the marker arrived."""
    seen = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_output(out) -> None:  # runs on a callback thread
        if out.get("text", "").startswith(marker):
            loop.call_soon_threadsafe(seen.set)

    task = asyncio.ensure_future(pool.execute(code, session=session, on_output=on_output))
    await asyncio.wait_for(seen.wait(), 30)
    return task


# What the pool's start-up cell set in a kernel: IOPub's send limit (read on the IOPub
# thread, which owns the socket) and IPython's history write cache.
PREPARED = """\
import threading, zmq
_t, _box, _ev = get_ipython().kernel.iopub_thread, [], threading.Event()
_t.schedule(lambda: (_box.append(_t.socket.getsockopt(zmq.SNDHWM)), _ev.set()))
_ev.wait(10)
(_box, get_ipython().history_manager.db_cache_size)"""


async def assert_prepared(pool: AsyncKernelPool, session: str) -> None:
    """The session's first cell is In [1] and its kernel was prepared by the pool's start-up cell."""
    first = await pool.execute("pass", session=session)
    assert first.execution_count == 1, "the start-up cell must not count as an execution"
    assert (await pool.execute(PREPARED, session=session)).result == "([0], 1000)"
