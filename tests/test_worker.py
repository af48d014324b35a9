"""The layer under the books: the kernel worker, its one reader, recovery, and raw client use.

Message-level scenarios run against a scripted fake kernel (tests/kernels/scripted.py);
the rest against real ipykernels.
"""

from __future__ import annotations

import asyncio
import errno
import random
import os
import signal
import time

import pytest

from jupyter_sessionpool import AsyncKernelPool, KernelPool, ProtocolError, SessionLost
from jupyter_sessionpool.workers.base import KernelWorker

from poolkit import started_marker, until


def worker_of(pool: AsyncKernelPool, session: str) -> KernelWorker:
    return pool._books.bound[session].handle


# ---- the scripted fake kernel ----------------------------------------------------------------


@pytest.mark.parametrize("script", ["malformed", "bad-signature"])
async def test_a_malformed_message_is_a_protocol_error_and_the_pool_serves_on(make_pool, kernel_dir, script):
    pool = await make_pool(kernel_name="scripted", max_kernels=1)
    assert (await pool.execute("hello", session="a", timeout=20)).stdout == "hello\n"
    with pytest.raises(ProtocolError, match="kernel .* sent"):
        await asyncio.wait_for(pool.execute(script, session="a", timeout=20), 30)
    await asyncio.wait_for(until(pool, lambda s: not s.kernels), 20)  # the slot is discarded, not wedged
    with pytest.raises(SessionLost, match="protocol"):
        await pool.execute("again", session="a")
    assert (await pool.execute("again", session="a", timeout=20)).stdout == "again\n"


async def test_a_reply_that_races_the_cancel_is_seen_and_the_kernel_kept(make_pool, kernel_dir):
    """The fake kernel sends an output, pauses 10 ms, then sends reply and idle in one burst; the
    caller is cancelled around the moment the burst lands. Whatever the reader had already taken
    for the request stays with it: the kernel is kept every time, never declared lost."""
    pool = await make_pool(kernel_name="scripted", max_kernels=1, interrupt_timeout=0.5)
    loop = asyncio.get_running_loop()
    rng = random.Random(20261201)
    for i in range(40):
        box: list[asyncio.Task] = []
        delay = rng.uniform(0.0, 0.03)  # the moment of the cancel, around the burst: not a synchronisation

        def cancel_soon(out, box=box, delay=delay) -> None:
            loop.call_soon_threadsafe(loop.call_later, delay, box[0].cancel)

        box.append(asyncio.ensure_future(pool.execute("burst", session="a", on_output=cancel_soon)))
        try:
            await box[0]
        except asyncio.CancelledError:
            pass
        r = await pool.execute(f"check {i}", session="a", timeout=20)
        assert r.stdout == f"check {i}\n"
    assert pool.stats().counters["started"] == 1, "the same kernel all along: no SessionLost"


async def test_a_failing_interrupt_during_recovery_discards_the_slot(make_pool, kernel_dir):
    pool = await make_pool(kernel_name="scripted", max_kernels=1, interrupt_timeout=0.5)
    await pool.execute("warm", session="a")
    worker = worker_of(pool, "a")

    async def broken_interrupt() -> None:
        raise RuntimeError("interrupt failed")

    worker.interrupt = broken_interrupt
    task = await started_marker(pool, "hang", "a")
    task.cancel()
    await asyncio.wait_for(until(pool, lambda s: not s.kernels), 20)
    with pytest.raises(SessionLost, match="recovery failed"):
        await pool.execute("x", session="a")


# ---- real kernels ---------------------------------------------------------------------------------


async def test_lease_client_used_directly_then_left_mid_cell(make_pool):
    """A holder sends a cell through lease.client and leaves before its reply: the pool does
    not check the kernel in busy; the next caller's cell runs, on a kernel that is free."""
    pool = await make_pool(max_kernels=1, interrupt_timeout=5)
    async with pool.checkout("a") as lease:
        lease.client.execute("import time; time.sleep(30)")
    t0 = time.monotonic()
    r = await pool.execute("1 + 1", session="a", timeout=20)
    assert r.result == "2" and time.monotonic() - t0 < 15
    assert pool.stats().counters["timeouts"] == 0


async def test_lease_client_used_directly_for_a_short_cell_keeps_its_state(make_pool):
    pool = await make_pool(max_kernels=1)
    async with pool.checkout("a") as lease:
        lease.client.execute("y = 7")
    assert (await pool.execute("y", session="a", timeout=20)).result == "7"


def test_sync_lease_raw_request_sent_just_before_exit_reaches_the_kernel():
    with KernelPool(max_kernels=1) as pool:
        with pool.checkout("a") as lease:
            lease.client.execute("reached = True")
        assert pool.execute("reached", session="a", timeout=20).result == "True"


async def test_pidfd_refused_falls_back_to_polling(make_pool, monkeypatch):
    def refused(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", refused)
    pool = await make_pool(max_kernels=1)
    await pool.execute("x = 1", session="a")
    (kernel,) = pool.stats().kernels
    t0 = time.monotonic()
    os.kill(kernel.pid, signal.SIGKILL)
    await asyncio.wait_for(until(pool, lambda s: not s.kernels or s.kernels[0].state != "idle"), 10)
    noticed = time.monotonic() - t0
    print(f"death noticed after {noticed:.2f} s")
    assert noticed < 3  # polled every 0.5 s; loose under load
    with pytest.raises(SessionLost):
        await pool.execute("x", session="a")


async def test_a_slow_on_output_in_one_session_does_not_delay_another(make_pool):
    pool = await make_pool(max_kernels=2, min_idle=2)
    await pool.wait_ready(60)
    await pool.execute("pass", session="b")
    calls: list[float] = []

    def slow(out) -> None:
        time.sleep(0.5)
        calls.append(time.monotonic())

    slow_cell = asyncio.ensure_future(
        pool.execute("for i in range(4): print(i, flush=True); __import__('time').sleep(0.05)", session="a", on_output=slow)
    )
    await asyncio.wait_for(until(pool, lambda s: sum(k.state == "busy" for k in s.kernels) == 1), 10)
    trips = []
    while not slow_cell.done():
        t0 = time.perf_counter()
        await pool.execute("pass", session="b")
        trips.append(time.perf_counter() - t0)
    r = await slow_cell
    assert len(calls) == 4 and r.stdout == "0\n1\n2\n3\n", "execute returned after every on_output call ran"
    trips.sort()
    print(f"b's pass while a's callback sleeps: {len(trips)} trips, p50 {1000 * trips[len(trips) // 2]:.1f} ms, "
          f"max {1000 * trips[-1]:.1f} ms")
    assert len(trips) >= 5 and trips[len(trips) // 2] < 0.05 and trips[-1] < 0.25


def test_reprs_are_one_line():
    pool = KernelPool(max_kernels=1)
    try:
        with pool.checkout("a") as lease:
            assert repr(lease) == f"<SyncLease session='a' kernel={lease.kernel_id!r} idle>"
            worker = pool._async._books.bound["a"].handle
            assert repr(worker).startswith("<LocalWorker kernel=") and "\n" not in repr(worker)
        assert repr(pool._async).startswith("<AsyncKernelPool kernel='python3' kernels=1 busy=0 max=1 running>")
    finally:
        pool.shutdown()
