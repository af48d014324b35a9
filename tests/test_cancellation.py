"""A caller that gives up at any stage never leaves a busy kernel checked in as idle."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from jupyter_sessionpool import AsyncKernelPool, PoolClosed, SessionLost

from poolkit import started_marker, until

SLEEP = "print('started', flush=True); import time; time.sleep(60)"


async def test_cancel_mid_cell_interrupts_and_keeps_the_session(make_pool):
    pool = await make_pool(max_kernels=1)
    await pool.execute("x = 'kept'", session="a")
    task = await started_marker(pool, SLEEP, "a")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [k.state for k in pool.stats().kernels] == ["busy"], "not idle until the cell has stopped"
    t0 = time.monotonic()
    r = await pool.execute("x", session="a", timeout=20)
    assert r.result == "'kept'" and time.monotonic() - t0 < 10


async def test_cancel_mid_cell_that_ignores_the_interrupt_discards_the_kernel(make_pool):
    pool = await make_pool(max_kernels=1, interrupt_timeout=0.5)
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('started', flush=True)\n" \
           "while True: time.sleep(0.01)"
    task = await started_marker(pool, code, "a")
    (kernel,) = pool.stats().kernels
    task.cancel()
    stats = await asyncio.wait_for(until(pool, lambda s: not s.kernels), 20)
    assert stats.counters["checkouts"] == 1
    with pytest.raises(SessionLost, match="abandoned"):
        await pool.execute("1", session="a")


async def test_cancel_while_waiting_for_a_kernel_leaves_no_waiter(make_pool):
    pool = await make_pool(max_kernels=1)
    async with pool.checkout("holder"):
        waiting = asyncio.ensure_future(pool.execute("1", session="other"))
        await asyncio.wait_for(until(pool, lambda s: len(s.waiting) == 1), 10)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pool.stats().waiting == ()
    assert [(k.session, k.state) for k in pool.stats().kernels] == [("holder", "idle")]


async def test_an_on_output_callback_that_raises_ends_the_call_and_frees_the_kernel(make_pool):
    pool = await make_pool(max_kernels=1)

    def explode(out):
        raise RuntimeError("callback broke")

    with pytest.raises(RuntimeError, match="callback broke"):
        await pool.execute(SLEEP, session="a", on_output=explode)
    r = await pool.execute("1 + 1", session="a", timeout=20)
    assert r.result == "2"


async def test_a_lease_left_by_an_exception_is_returned(make_pool):
    pool = await make_pool(max_kernels=1)
    with pytest.raises(ValueError):
        async with pool.checkout("a") as lease:
            await lease.execute("y = 2")
            raise ValueError("user code outside the kernel failed")
    assert (await pool.execute("y", session="a")).result == "2"
    with pytest.raises(Exception, match="already returned"):
        await lease.execute("1")


async def test_pool_shutdown_while_waiting_raises_pool_closed(make_pool):
    from jupyter_sessionpool import PoolClosed

    pool: AsyncKernelPool = await make_pool(max_kernels=1)
    async with pool.checkout("holder"):
        waiting = asyncio.ensure_future(pool.execute("1", session="other"))
        await asyncio.wait_for(until(pool, lambda s: len(s.waiting) == 1), 10)
        await pool.shutdown()
        with pytest.raises(PoolClosed):
            await waiting


async def test_200_random_moment_cancels_of_a_short_cell_never_lose_the_session(make_pool):
    """Cancel a 50 ms cell at a random moment, 200 times: the cell is followed to its end by the
    reader (a reply that raced the cancel is seen), the kernel is kept, the variables survive."""
    pool = await make_pool(max_kernels=1)
    await pool.execute("x = 'kept'", session="a")
    rng = random.Random(20261201)
    lost = cancelled = 0
    t0 = time.monotonic()
    for _ in range(200):
        task = asyncio.ensure_future(pool.execute("import time; time.sleep(0.05)", session="a"))
        await asyncio.sleep(rng.uniform(0, 0.08))  # the random moment of the cancel, not a synchronisation
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled += 1
        except SessionLost:
            lost += 1
    r = await pool.execute("x", session="a", timeout=30)
    print(f"200 cancels: {cancelled} cancelled, {lost} lost, {time.monotonic() - t0:.1f} s")
    assert lost == 0 and r.result == "'kept'"
    assert pool.stats().counters["started"] == 1
    assert cancelled > 50 and time.monotonic() - t0 < 200 * 0.5


async def test_an_on_output_that_raises_on_a_fast_cell_never_loses_the_kernel(make_pool):
    pool = await make_pool(max_kernels=1)
    await pool.execute("x = 'kept'", session="a")

    def explode(out):
        raise RuntimeError("callback broke")

    for _ in range(20):
        with pytest.raises(RuntimeError, match="callback broke"):
            await pool.execute("print('x')", session="a", on_output=explode)
    assert (await pool.execute("x", session="a", timeout=30)).result == "'kept'"
    assert pool.stats().counters["started"] == 1


async def test_shutdown_while_a_new_backend_opens_cancels_it_and_leaves_nothing(make_pool):
    """Issue 19, item 2: a start after gateway_url changed opens a new backend first; a gateway that
    accepts connections and never answers must not hold the shutdown (nor leak the half-open backend)."""
    connected = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await reader.read()  # never answers; returns when the client goes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        pool = await make_pool(max_kernels=2)
        await pool.execute("1", session="a")
        pool.gateway_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        cell = asyncio.ensure_future(pool.execute("1", session="b"))
        await asyncio.wait_for(connected.wait(), 30)  # the new backend is asking the gateway for its kernelspecs
        opening = pool._opening[0]
        t0 = time.monotonic()
        await pool.shutdown()
        assert time.monotonic() - t0 < 10
        with pytest.raises(PoolClosed):
            await cell
        assert opening.http is None and pool.stats().kernels == ()  # the half-open backend was closed
    finally:
        server.close()
        await server.wait_closed()
