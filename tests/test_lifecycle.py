"""The pool's life cycle against real kernels: shutdown, release and restart that survive
cancellation and Ctrl-C, calls racing a shutdown, idle expiry, start retries, eviction, and a
pool dropped without shutdown."""

from __future__ import annotations

import asyncio
import gc
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from jupyter_sessionpool import AsyncKernelPool, CheckoutTimeout, KernelPool, PoolClosed, SessionLost

from poolkit import until

# A kernel that takes a minute to exit after a shutdown request: only a kill stops it quickly.
SLOW_EXIT = "import atexit, time; atexit.register(time.sleep, 60)"


def gone(pid: int, within: float) -> bool:
    """True when process ``pid`` has exited within ``within`` seconds."""
    try:
        psutil.Process(pid).wait(within)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


def kernel_pid(pool: AsyncKernelPool | KernelPool, session: str) -> int:
    (pid,) = [k.pid for k in pool.stats().kernels if k.session == session]
    return pid


# ---- cancellation never leaves a kernel behind ---------------------------------------------


async def test_a_cancelled_shutdown_still_stops_every_kernel_and_a_second_shutdown_returns(make_pool):
    pool = await make_pool(max_kernels=2, shutdown_timeout=1)
    await pool.execute(SLOW_EXIT, session="a")
    pid = kernel_pid(pool, "a")
    stopping = until(pool, lambda s: s.count("stopping") == 1)
    first = asyncio.ensure_future(pool.shutdown())
    await asyncio.wait_for(stopping, 30)
    first.cancel()
    await asyncio.wait_for(pool.shutdown(), 30)  # hung forever before: it awaited the cancelled work
    assert gone(pid, 5), "the kernel outlived the cancelled shutdown"
    assert first.cancelled() and pool.stats().kernels == ()


@pytest.mark.parametrize("action", ["release", "restart"])
async def test_a_cancelled_release_or_restart_still_stops_the_kernel(make_pool, action):
    pool = await make_pool(max_kernels=2, shutdown_timeout=1)
    await pool.execute(SLOW_EXIT, session="a")
    pid = kernel_pid(pool, "a")
    stopping = until(pool, lambda s: s.count("stopping") == 1)
    task = asyncio.ensure_future(getattr(pool, action)("a"))
    await asyncio.wait_for(stopping, 30)
    task.cancel()
    await asyncio.wait_for(until(pool, lambda s: s.kernels == ()), 30)
    assert gone(pid, 5), f"the kernel outlived the cancelled {action}"
    assert (await pool.execute("1 + 1", session="a")).result == "2", "the pool goes on"


def test_ctrl_c_during_shutdown_kills_the_kernels_and_the_process_exits_promptly(tmp_path):
    exiting = tmp_path / "exiting"  # the kernel touches it when its shutdown request arrives
    slow_exit = f"import atexit, pathlib, time; atexit.register(lambda: (pathlib.Path({str(exiting)!r}).touch(), time.sleep(60)))"
    script = tmp_path / "ctrl_c_shutdown.py"
    script.write_text(textwrap.dedent(f"""
        from jupyter_sessionpool import KernelPool
        pool = KernelPool(max_kernels=1, shutdown_timeout=60).start()
        pool.execute({slow_exit!r}, session="a")
        print(pool.stats().kernels[0].pid, flush=True)
        pool.shutdown()
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), proc.stderr.read()
        kernel = psutil.Process(int(line))
        deadline = time.monotonic() + 60
        while not exiting.exists() and time.monotonic() < deadline:  # shutdown() is now waiting on the kernel
            time.sleep(0.02)
        assert exiting.exists(), "the kernel never got its shutdown request"
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the process hung after Ctrl-C during shutdown()")
        took = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    print(f"exit {took:.2f} s after Ctrl-C during shutdown()")
    assert took < 10, f"exit took {took:.1f} s after Ctrl-C"
    assert "KeyboardInterrupt" in err
    assert gone(kernel.pid, 5), "the kernel outlived its pool's process"


# ---- calls from other threads racing a shutdown ----------------------------------------------


def _call_through_shutdown(pool: KernelPool, kind: str, go: threading.Barrier, done: threading.Event,
                           outcomes: list[str]) -> None:
    """Call the pool over and over until it answers PoolClosed, or (stats) until shutdown() returned."""
    go.wait()
    try:
        while True:
            if kind == "stats":
                pool.stats()
                if done.is_set():
                    outcomes.append("stats")
                    return
            else:
                pool.execute("1", session=kind)
    except PoolClosed:
        outcomes.append("PoolClosed")
    except BaseException as exc:  # anything else is a failure
        outcomes.append(repr(exc))


def test_shutdown_from_one_thread_answers_every_other_thread_100_times_in_a_row():
    """4 threads call stats()/execute() while another shuts the pool down: each gets its
    result or PoolClosed within 2 s, in 100 fresh pools (lazy: at most one kernel start each)."""
    rng = random.Random(10)
    slowest = 0.0
    for attempt in range(100):
        pool = KernelPool(max_kernels=1, shutdown_timeout=2).start()
        outcomes: list[str] = []
        go, done = threading.Barrier(5), threading.Event()
        threads = [
            threading.Thread(target=_call_through_shutdown, args=(pool, kind, go, done, outcomes), daemon=True)
            for kind in ("stats", "stats", "a", "b")
        ]
        for t in threads:
            t.start()
        go.wait()
        time.sleep(rng.uniform(0, 0.02))  # a random moment of the race
        pool.shutdown()
        done.set()
        returned = time.monotonic()
        for t in threads:
            t.join(max(0.0, returned + 2 - time.monotonic()))
        slowest = max(slowest, time.monotonic() - returned)
        stuck = [t for t in threads if t.is_alive()]
        assert not stuck, f"run {attempt}: {len(stuck)} thread(s) still blocked 2 s after shutdown() returned"
        assert sorted(outcomes) == ["PoolClosed", "PoolClosed", "stats", "stats"], (attempt, outcomes)
    print(f"100 races: every thread answered at most {slowest:.3f} s after shutdown() returned")


# ---- idle expiry ----------------------------------------------------------------------------


async def test_idle_timeout_costs_nothing_while_a_long_cell_runs(make_pool):
    pool = await make_pool(max_kernels=1, session_idle_timeout=0.5)
    await pool.execute("1", session="a")
    snapshots = []
    pool.subscribe(snapshots.append)
    cpu = time.thread_time()  # the pool's loop is this thread
    r = await pool.execute("import time; time.sleep(3)", session="a")
    cpu = time.thread_time() - cpu
    assert r.status == "ok"
    print(f"3 s cell under session_idle_timeout=0.5: {cpu:.4f} s of pool CPU, {len(snapshots)} snapshots")
    assert cpu < 0.1, f"the pool spent {cpu:.3f} s of CPU during a 3 s cell"
    assert len(snapshots) <= 4, f"{len(snapshots)} pool snapshots for one cell"
    expired = until(pool, lambda s: s.sessions == [])
    await asyncio.wait_for(expired, 30)  # and the session still expires once idle
    assert pool.stats().counters["released"] == 1


# ---- start failures ------------------------------------------------------------------------


async def test_one_flaky_start_among_concurrent_ones_is_retried_and_fails_nobody(make_pool, kernel_dir, tmp_path,
                                                                                  monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    for i in range(3):
        (tokens / str(i)).touch()  # the first 3 starts fail once each
    monkeypatch.setenv("FLAKY_TOKENS", str(tokens))
    pool = await make_pool(kernel_name="flaky", max_kernels=4, start_retries=2)
    results = await asyncio.gather(*(pool.execute("1 + 1", session=s) for s in "abcd"), return_exceptions=True)
    assert [getattr(r, "result", r) for r in results] == ["2"] * 4
    counters = pool.stats().counters
    assert counters["start_failures"] == 3 and counters["started"] == 4


# ---- a full pool ------------------------------------------------------------------------------


async def test_checkout_timeout_names_idle_sessions_and_how_to_free_one(make_pool):
    pool = await make_pool(max_kernels=2)
    await asyncio.gather(pool.execute("1", session="alice"), pool.execute("1", session="bob"))
    with pytest.raises(CheckoutTimeout) as info:
        await _checkout(pool, "carol", 0.5)
    message = str(info.value)
    assert "'alice' (idle)" in message and "'bob' (idle)" in message, message
    assert "pool.release(" in message and "%pool release" in message and "max_kernels" in message
    assert sorted(info.value.holders.values()) == ["alice", "bob"]


async def _checkout(pool: AsyncKernelPool, session: str, timeout: float) -> None:
    async with pool.checkout(session, timeout=timeout):
        pass


async def test_a_full_pool_evicts_the_least_recently_used_idle_session_when_asked(make_pool):
    pool = await make_pool(max_kernels=2, evict_idle_sessions=True)
    await pool.execute("x = 'a'", session="a")
    await pool.execute("x = 'b'", session="b")
    await pool.execute("x", session="a")  # a was used last: b is the least recently used
    r = await pool.execute("'new'", session="new", timeout=30)
    assert r.result == "'new'"
    assert sorted(pool.sessions()) == ["a", "new"] and pool.stats().counters["evicted"] == 1
    assert (await pool.execute("x", session="a")).result == "'a'", "the recently used session kept its state"
    with pytest.raises(SessionLost, match="evicted"):
        await pool.execute("x", session="b")


# ---- a pool dropped without shutdown -------------------------------------------------------


def test_a_blocking_pool_dropped_without_shutdown_stops_its_kernels_when_collected():
    pool = KernelPool(max_kernels=1, min_idle=1).start()
    pool.wait_ready(60)
    (pid,) = [k.pid for k in pool.stats().kernels]
    thread = pool._loop_thread.thread
    del pool
    gc.collect()
    assert gone(pid, 20), "the kernel of a dropped pool stayed alive"
    thread.join(10)
    assert not thread.is_alive(), "the dropped pool's thread kept running"


async def test_an_async_pool_dropped_without_shutdown_stops_its_kernels_when_collected(caplog):
    pool = AsyncKernelPool(max_kernels=2, min_idle=1, session_idle_timeout=600)
    await pool.start()
    await pool.execute("x = 1", session="a")  # a kernel bound to a session, its idle timer armed
    await pool.wait_ready(60)  # and a fresh one
    pids = [k.pid for k in pool.stats().kernels]
    assert len(pids) == 2
    del pool
    gc.collect()
    for pid in pids:  # waited for off the loop: the stops run on it
        assert await asyncio.to_thread(gone, pid, 20), "the kernels of a dropped pool stayed alive"
    assert "dropped without shutdown(); stopping its 2 kernel(s)" in caplog.text


def test_an_async_pool_left_running_when_its_loop_ends_stops_its_kernels_when_collected(tmp_path):
    """``asyncio.run(main())`` where main forgot ``shutdown()``: the loop is gone, the kernels go too."""
    script = tmp_path / "forgot.py"
    script.write_text(textwrap.dedent("""
        import asyncio, gc, sys
        from jupyter_sessionpool import AsyncKernelPool

        async def main():
            pool = AsyncKernelPool(max_kernels=1)
            await pool.start()
            r = await pool.execute("import os; os.getpid()", session="a")
            return int(r.result)

        pid = asyncio.run(main())
        gc.collect()
        print(pid, flush=True)
        sys.stdin.read()  # stay alive until the test has looked
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        assert gone(pid, 20), "the kernel outlived its dropped pool while the script still ran"
    finally:
        proc.communicate("", timeout=30)
