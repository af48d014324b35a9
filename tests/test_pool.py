"""AsyncKernelPool against real kernels: one test per row of the design's semantics table."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from poolkit import assert_prepared, started_marker, until
from jupyter_sessionpool import (
    CheckoutTimeout,
    ExecutionTimeout,
    KernelDied,
    KernelStartError,
    PoolClosed,
    SessionLost,
)


# ---- affinity and concurrency ---------------------------------------------------------------


async def test_session_keeps_its_kernel_and_state(make_pool):
    pool = await make_pool(max_kernels=2)
    await pool.execute("x = 41", session="a")
    r = await pool.execute("x + 1", session="a")
    assert (r.status, r.result, r.session) == ("ok", "42", "a")
    pid_a = (await pool.execute("import os; os.getpid()", session="a")).result
    r = await pool.execute("import os; os.getpid()", session="b")
    assert r.result != pid_a
    r = await pool.execute("x", session="b")
    assert r.status == "error" and r.error["ename"] == "NameError"


async def test_same_session_requests_queue_fifo_and_all_succeed(make_pool):
    pool = await make_pool(max_kernels=2)
    await pool.execute("order = []", session="a")
    results = await asyncio.gather(
        *(pool.execute(f"import time; time.sleep(0.05); order.append({i}); {i}", session="a") for i in range(6))
    )
    assert [r.result for r in results] == [str(i) for i in range(6)]
    assert (await pool.execute("order", session="a")).result == "[0, 1, 2, 3, 4, 5]"
    assert len(pool.stats().kernels) == 1


async def test_different_sessions_run_concurrently(make_pool):
    pool = await make_pool(max_kernels=4, min_idle=4)
    await pool.wait_ready(timeout=90)
    t0 = time.monotonic()
    results = await asyncio.gather(
        *(pool.execute("import time; time.sleep(1)", session=s) for s in "abcd")
    )
    wall = time.monotonic() - t0
    assert all(r.status == "ok" for r in results)
    assert wall < 2.5, f"4 sessions x 1 s took {wall:.2f} s: they were serialised"
    assert len({r.kernel_id for r in results}) == 4


async def test_the_pool_is_not_blocked_by_a_long_cell(make_pool):
    """While one session runs a long cell, stats, a checkout and another session's cell return at once."""
    pool = await make_pool(max_kernels=2, min_idle=2)
    await pool.wait_ready(timeout=60)
    long = await started_marker(pool, "print('started', flush=True); import time; time.sleep(5)", "slow")
    t0 = time.monotonic()
    stats = pool.stats()
    async with pool.checkout("fast") as lease:
        checkout_took = time.monotonic() - t0
        r = await lease.execute("1 + 1")
    took = time.monotonic() - t0
    assert [k.state for k in stats.kernels if k.session == "slow"] == ["busy"]
    assert not long.done(), "the long cell was still running during all of this"
    assert r.result == "2"
    assert checkout_took < 0.5 and took < 2.0, f"checkout {checkout_took:.3f} s, total {took:.3f} s"
    long.cancel()


async def test_anonymous_execute_uses_any_free_kernel(make_pool):
    pool = await make_pool(max_kernels=1)
    r = await pool.execute("6 * 7")
    assert r.result == "42" and r.session is None
    assert pool.sessions() == []


# ---- checkout timeout ----------------------------------------------------------------------


async def test_checkout_timeout_names_the_holders(make_pool):
    pool = await make_pool(max_kernels=1)
    async with pool.checkout("holder"):
        with pytest.raises(CheckoutTimeout, match="holder") as info:
            async with pool.checkout("other", timeout=0.3):
                pass
    assert list(info.value.holders.values()) == ["holder"]
    assert pool.stats().waiting == () and pool.stats().counters["timeouts"] == 1


async def test_waiter_gets_the_kernel_when_it_frees(make_pool):
    pool = await make_pool(max_kernels=1)
    await pool.execute("y = 1")  # anonymous: the kernel can go to another anonymous lease
    first = await started_marker(pool, "print('started', flush=True); import time; time.sleep(0.5)", None)
    r = await pool.execute("y", timeout=10)
    assert (await first).status == "ok" and r.result == "1"


# ---- execution timeout ------------------------------------------------------------------


async def test_timeout_interrupts_and_the_session_keeps_its_state(make_pool):
    pool = await make_pool(max_kernels=1)
    await pool.execute("x = 'kept'", session="a")
    t0 = time.monotonic()
    with pytest.raises(ExecutionTimeout) as info:
        await pool.execute("print('before'); import time; time.sleep(30)", session="a", timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert info.value.restarted is False and info.value.result.stdout == "before\n"
    assert (await pool.execute("x", session="a")).result == "'kept'"


async def test_a_timed_out_cell_counts_as_a_run(make_pool):
    """Issue 19, item 9: four cells ran (one timed out), so the kernel's runs say four, not three."""
    pool = await make_pool(max_kernels=1)
    for _ in range(3):
        await pool.execute("pass", session="a")
    with pytest.raises(ExecutionTimeout):
        await pool.execute("import time; time.sleep(30)", session="a", timeout=0.5)
    [kernel] = pool.stats().kernels
    assert kernel.executions == 4


async def test_timeout_past_an_ignored_interrupt_replaces_the_kernel(make_pool):
    pool = await make_pool(max_kernels=1, interrupt_timeout=0.5)
    await pool.execute("x = 1", session="a")
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.01)"
    with pytest.raises(ExecutionTimeout) as info:
        await pool.execute(code, session="a", timeout=0.5)
    assert info.value.restarted is True
    with pytest.raises(SessionLost, match="timed out"):
        await pool.execute("x", session="a")
    r = await pool.execute("x", session="a")
    assert r.error["ename"] == "NameError", "a fresh kernel, told once"


# ---- kernel death -----------------------------------------------------------------------


async def test_kernel_death_mid_cell_raises_kernel_died_promptly(make_pool):
    pool = await make_pool(max_kernels=1)
    task = await started_marker(pool, "print('started', flush=True); import time; time.sleep(60)", "a")
    (kernel,) = pool.stats().kernels
    t0 = time.monotonic()
    os.kill(kernel.pid, signal.SIGKILL)
    with pytest.raises(KernelDied) as info:
        await task
    assert time.monotonic() - t0 < 2.0
    assert info.value.result.stdout == "started\n", "output received before the death is kept"


async def test_idle_death_is_noticed_and_the_session_is_told_once(make_pool):
    pool = await make_pool(max_kernels=2)
    await pool.execute("x = 1", session="a")
    (kernel,) = pool.stats().kernels
    died = until(pool, lambda s: s.counters["died"] == 1 and not s.kernels)
    os.kill(kernel.pid, signal.SIGKILL)
    await asyncio.wait_for(died, 10)  # noticed by the monitor, not at the next use
    with pytest.raises(SessionLost, match="died"):
        await pool.execute("x", session="a")
    r = await pool.execute("x", session="a")
    assert r.error["ename"] == "NameError"


async def test_a_death_between_cells_of_a_held_lease_is_the_sessions_loss_told_once(make_pool):
    """A session's kernel that dies while its holder sends nothing is a loss of the session's state,
    like an idle death: the holder's next cell raises SessionLost (it never ran), and the session's
    next call runs on a fresh kernel instead of hearing of the same loss a second time."""
    pool = await make_pool(max_kernels=2)
    async with pool.checkout("a") as lease:
        await lease.execute("x = 1")
        died = until(pool, lambda s: s.counters["died"] == 1)
        os.kill(lease.pid, signal.SIGKILL)
        await asyncio.wait_for(died, 10)
        with pytest.raises(SessionLost, match="variables are gone"):
            await lease.execute("x")
    r = await pool.execute("x", session="a")
    assert r.error["ename"] == "NameError"


async def test_min_idle_is_restored_after_an_idle_kernel_dies(make_pool):
    pool = await make_pool(max_kernels=2, min_idle=1)
    await pool.wait_ready(timeout=60)
    (kernel,) = pool.stats().kernels
    os.kill(kernel.pid, signal.SIGKILL)
    stats = await asyncio.wait_for(
        until(pool, lambda s: s.counters["died"] == 1 and [k.state for k in s.kernels] == ["idle"]), 60
    )
    assert stats.kernels[0].pid != kernel.pid


# ---- release, restart, interrupt ---------------------------------------------------------


async def test_release_shuts_the_kernel_down_and_never_reuses_it(make_pool):
    pool = await make_pool(max_kernels=1)
    await pool.execute("secret = 's3cr3t'", session="a")
    (kernel,) = pool.stats().kernels
    assert await pool.release("a") is True
    assert pool.sessions() == [] and not Path(f"/proc/{kernel.pid}").exists()
    r = await pool.execute("secret", session="b")
    assert r.error["ename"] == "NameError" and r.kernel_id != kernel.kernel_id
    assert await pool.release("never-existed") is False


async def test_restart_gives_fresh_state_without_session_lost(make_pool):
    pool = await make_pool(max_kernels=1)
    await pool.execute("x = 1", session="a")
    assert await pool.restart("a") is True
    r = await pool.execute("x", session="a")
    assert r.error["ename"] == "NameError"


async def test_interrupt_stops_a_running_cell(make_pool):
    pool = await make_pool(max_kernels=1)
    task = await started_marker(pool, "print('started', flush=True); import time; time.sleep(60)", "a")
    assert await pool.interrupt("a") is True
    r = await asyncio.wait_for(task, 10)
    assert r.status == "error" and r.error["ename"] == "KeyboardInterrupt"
    assert await pool.interrupt("nobody") is False


async def test_session_idle_timeout_releases_idle_sessions(make_pool):
    pool = await make_pool(max_kernels=1, session_idle_timeout=0.3)
    await pool.execute("x = 1", session="a")
    await asyncio.wait_for(until(pool, lambda s: s.counters["released"] == 1 and not s.kernels), 10)
    assert pool.sessions() == []


# ---- start failures and many starts ----------------------------------------------------------


async def test_start_failure_raises_with_the_kernels_stderr(make_pool, kernel_dir):
    pool = await make_pool(kernel_name="crash", start_retries=1)
    with pytest.raises(KernelStartError) as info:
        await pool.execute("1")
    assert "libfoo.so.1 not found" in info.value.stderr and "libfoo.so.1" in str(info.value)
    assert info.value.attempts == 2 and pool.stats().counters["start_failures"] == 2


async def test_start_that_hangs_times_out(make_pool, kernel_dir):
    pool = await make_pool(kernel_name="hang", startup_timeout=1, start_retries=0)
    with pytest.raises(KernelStartError, match="startup timeout") as info:
        await pool.execute("1")
    assert "never answering" in info.value.stderr


async def test_pool_keeps_serving_through_start_failures(make_pool, kernel_dir, tmp_path, monkeypatch):
    flag = tmp_path / "fail"
    monkeypatch.setenv("FLAKY_FLAG", str(flag))
    pool = await make_pool(kernel_name="flaky", max_kernels=3, start_retries=1)
    await pool.execute("x = 'alive'", session="a")
    flag.touch()
    with pytest.raises(KernelStartError, match="refusing to start"):
        await pool.execute("1", session="b")
    assert (await pool.execute("x", session="a")).result == "'alive'"
    flag.unlink()
    assert (await pool.execute("2", session="b")).result == "2"


async def test_sixteen_kernels_start_at_once_without_port_races(make_pool):
    pool = await make_pool(max_kernels=16, min_idle=16)
    await pool.wait_ready(timeout=180)
    results = await asyncio.gather(*(pool.execute("1 + 1", session=f"s{i}") for i in range(16)))
    stats = pool.stats()
    assert [r.result for r in results] == ["2"] * 16
    assert stats.counters["start_failures"] == 0 and len({k.pid for k in stats.kernels}) >= 16


async def test_a_kernel_is_prepared_before_it_is_lent(make_pool):
    await assert_prepared(await make_pool(max_kernels=1), "a")


# ---- prewarm yields to first cells --------------------------------------------------------------


def _refill(stats):
    """The kernel the pool is starting to keep ``min_idle`` (the one without a session)."""
    (kernel,) = [k for k in stats.kernels if k.session is None]
    return kernel


@pytest.fixture
def long_yield(monkeypatch):
    """Prewarm starts wait for first cells for up to 60 s, so a test sees the waiting itself."""
    monkeypatch.setattr("jupyter_sessionpool.pool._PREWARM_YIELD", 60.0)


async def test_a_prewarm_start_waits_for_a_new_sessions_first_cell(make_pool, long_yield):
    pool = await make_pool(max_kernels=2, min_idle=1)
    await pool.wait_ready(timeout=60)
    cell = await started_marker(pool, "print('started', flush=True); import time; time.sleep(1)", "a")
    refill = _refill(pool.stats())
    assert (refill.state, refill.pid) == ("starting", None), "the refill was spawned while the first cell ran"
    assert (await cell).status == "ok"
    await pool.wait_ready(timeout=60)  # and it starts once the cell is done
    assert _refill(pool.stats()).state == "idle"


async def test_a_hidden_set_up_cell_keeps_a_prewarm_start_waiting_for_the_callers_first_cell(make_pool, long_yield):
    """A service moves a new session's kernel into its directory with a hidden cell first
    (``store_history=False``): the refill still waits for the caller's own first cell."""
    pool = await make_pool(max_kernels=2, min_idle=1)
    await pool.wait_ready(timeout=60)
    seen, loop = asyncio.Event(), asyncio.get_running_loop()

    def on_output(out) -> None:
        if out.get("text", "").startswith("started"):
            loop.call_soon_threadsafe(seen.set)

    async with pool.checkout("a") as lease:
        await lease.execute("import os", store_history=False)
        refilled = until(pool, lambda s: _refill(s).state == "idle")
        cell = asyncio.ensure_future(lease.execute("print('started', flush=True); import time; time.sleep(2)",
                                                   on_output=on_output))
        await asyncio.wait_for(seen.wait(), 30)
        assert _refill(pool.stats()).state == "starting"
        assert (await cell).status == "ok"
        assert not refilled.done(), "the refill started while the caller's first cell ran"
    await asyncio.wait_for(refilled, 60)


async def test_a_set_up_cell_in_its_own_checkout_keeps_a_prewarm_start_waiting_for_the_next(make_pool, long_yield):
    """A service's PUT runs the hidden set-up cell and returns the kernel; its execute brings the
    caller's first cell a moment later: the refill waits for that one too (but not for ever)."""
    pool = await make_pool(max_kernels=2, min_idle=1)
    await pool.wait_ready(timeout=60)
    async with pool.checkout("a") as lease:
        await lease.execute("import os", store_history=False)
    refilled = until(pool, lambda s: _refill(s).state == "idle")
    cell = await started_marker(pool, "print('started', flush=True); import time; time.sleep(2)", "a")
    assert _refill(pool.stats()).state == "starting"
    assert (await cell).status == "ok"
    assert not refilled.done(), "the refill started while the caller's first cell ran"
    await asyncio.wait_for(refilled, 60)


async def test_a_long_first_cell_holds_a_prewarm_start_back_only_briefly(make_pool):
    pool = await make_pool(max_kernels=2, min_idle=1)
    await pool.wait_ready(timeout=60)
    cell = await started_marker(pool, "print('started', flush=True); import time; time.sleep(60)", "a")
    await pool.wait_ready(timeout=45)
    assert not cell.done(), "the refill became ready while the long first cell still ran"
    cell.cancel()


async def test_a_prewarm_start_waits_only_for_the_first_cells_running_when_it_was_due(make_pool, long_yield):
    pool = await make_pool(max_kernels=3, min_idle=2)
    await pool.wait_ready(timeout=60)
    cell_a = await started_marker(pool, "print('started', flush=True); import time; time.sleep(1)", "a")
    (refill,) = [k for k in pool.stats().kernels if k.state == "starting"]
    assert refill.pid is None, "the refill was spawned while a's first cell ran"
    cell_b = await started_marker(pool, "print('started', flush=True); import time; time.sleep(60)", "b")
    assert (await cell_a).status == "ok"
    await asyncio.wait_for(until(pool, lambda s: _refill(s).state == "idle"), 45)
    assert not cell_b.done(), "the refill waited for b's first cell, which began after it was due"
    cell_b.cancel()


async def test_a_caller_waiting_for_a_kernel_is_not_held_back(make_pool, long_yield):
    pool = await make_pool(max_kernels=3, min_idle=1)
    await pool.wait_ready(timeout=60)
    cell = await started_marker(pool, "print('started', flush=True); import time; time.sleep(60)", "a")
    assert _refill(pool.stats()).pid is None
    r = await asyncio.wait_for(pool.execute("1 + 1", session="b"), 45)
    assert r.result == "2" and not cell.done()
    cell.cancel()


async def test_a_cancelled_first_cell_lets_the_prewarm_start_go(make_pool, long_yield):
    pool = await make_pool(max_kernels=2, min_idle=1)
    await pool.wait_ready(timeout=60)
    cell = await started_marker(pool, "print('started', flush=True); import time; time.sleep(60)", "a")
    cell.cancel()
    await asyncio.wait_for(until(pool, lambda s: _refill(s).state == "idle"), 45)


async def test_shutdown_while_a_prewarm_start_waits_leaves_no_kernel(make_pool, long_yield):
    pool = await make_pool(max_kernels=2, min_idle=1)
    await pool.wait_ready(timeout=60)
    cell = await started_marker(pool, "print('started', flush=True); import time; time.sleep(60)", "a")
    pid = next(k.pid for k in pool.stats().kernels if k.session == "a")
    assert _refill(pool.stats()).pid is None
    await asyncio.wait_for(pool.shutdown(), 30)
    assert pool.stats().kernels == () and not Path(f"/proc/{pid}").exists()
    with pytest.raises((PoolClosed, KernelDied)):
        await cell


# ---- shutdown -----------------------------------------------------------------------------------


async def test_shutdown_stops_kernels_removes_files_and_closes(make_pool):
    pool = await make_pool(max_kernels=2, min_idle=2)
    await pool.wait_ready(timeout=60)
    pids = [k.pid for k in pool.stats().kernels]
    runtime = pool._workers.dir
    assert sorted(p.suffix for p in runtime.iterdir() if p.suffix == ".json") == [".json", ".json"]
    await pool.shutdown()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not runtime.exists()
    with pytest.raises(PoolClosed):
        await pool.execute("1")
    await pool.shutdown()  # idempotent


async def test_shutdown_kills_a_kernel_that_ignores_the_request(make_pool):
    pool = await make_pool(max_kernels=1, shutdown_timeout=0.5)
    task = await started_marker(
        pool, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('started', flush=True)\n"
        "while True: time.sleep(0.01)", "a"
    )
    (kernel,) = pool.stats().kernels
    t0 = time.monotonic()
    await pool.shutdown()
    assert time.monotonic() - t0 < 10 and not Path(f"/proc/{kernel.pid}").exists()
    with pytest.raises(PoolClosed):
        await task


# A kernel that never answers a shutdown request: only a kill ends it (within shutdown_timeout).
DEAF = {"kernel_name": "scripted", "env": {"JSP_SCRIPTED_IGNORE_SHUTDOWN": "1"}, "shutdown_timeout": 30}


async def test_shutdown_kills_a_kernel_nobody_used_at_once(make_pool, kernel_dir):
    """Issue 19, item 6: a prewarmed kernel holds no state, so shutdown does not wait
    ``shutdown_timeout`` for it to answer a shutdown request (it never does, here)."""
    pool = await make_pool(max_kernels=2, min_idle=2, **DEAF)
    await pool.wait_ready(timeout=60)
    pids = [k.pid for k in pool.stats().kernels]
    t0 = time.monotonic()
    await pool.shutdown()
    assert time.monotonic() - t0 < 10  # 30 s (shutdown_timeout) before
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


async def test_lowering_min_idle_kills_the_fresh_kernels_it_no_longer_needs(make_pool, kernel_dir):
    """Issue 19, item 6: fresh kernels above a lowered min_idle are stopped at once (killed), and a
    kernel a session used is left alone."""
    pool = await make_pool(max_kernels=3, min_idle=2, **{**DEAF, "shutdown_timeout": 0.5})
    await pool.execute("used", session="a")
    await pool.wait_ready(timeout=60)
    fresh = [k for k in pool.stats().kernels if k.session is None]
    assert len(fresh) == 2
    t0 = time.monotonic()
    pool.min_idle = 1
    await asyncio.wait_for(until(pool, lambda s: len(s.kernels) == 2), 10)
    pool.min_idle = 0
    stats = await asyncio.wait_for(until(pool, lambda s: len(s.kernels) == 1), 10)
    assert time.monotonic() - t0 < 10 and [k.session for k in stats.kernels] == ["a"]
    assert not any(Path(f"/proc/{k.pid}").exists() for k in fresh)


# ---- observation --------------------------------------------------------------------------------


async def test_on_output_streams_before_the_cell_finishes(make_pool):
    pool = await make_pool(max_kernels=1)
    got: list[tuple[float, dict]] = []
    t0 = time.monotonic()
    code = "import time\nprint('one', flush=True)\ntime.sleep(1)\nprint('two', flush=True)"
    r = await pool.execute(code, on_output=lambda out: got.append((time.monotonic() - t0, out)))
    assert [o["text"] for _, o in got] == ["one\n", "two\n"]
    assert got[1][0] - got[0][0] > 0.5, "the first output arrived while the cell was still running"
    assert r.stdout == "one\ntwo\n" and len(r.outputs) == 1, "consecutive stream outputs are merged"


async def test_outputs_are_nbformat(make_pool):
    pool = await make_pool(max_kernels=1)
    code = (
        "from IPython.display import display, HTML, clear_output\n"
        "import sys\n"
        "print('gone'); clear_output()\n"
        "h = display(HTML('<b>v1</b>'), display_id=True)\n"
        "h.update(HTML('<b>v2</b>'))\n"
        "sys.stderr.write('warn\\n')\n"
        "42"
    )
    r = await pool.execute(code)
    kinds = [o["output_type"] for o in r.outputs]
    assert kinds == ["display_data", "stream", "execute_result"], r.outputs
    assert r.outputs[0]["data"]["text/html"] == "<b>v2</b>"
    assert r.stderr == "warn\n" and r.result == "42" and r.execution_count == 1
    import nbformat

    nbformat.validate(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=r.outputs)]))


async def test_user_errors_are_results_and_raise_for_error_raises(make_pool):
    from jupyter_sessionpool import ExecutionError

    pool = await make_pool(max_kernels=1)
    r = await pool.execute("1/0")
    assert r.status == "error" and r.error["ename"] == "ZeroDivisionError"
    with pytest.raises(ExecutionError, match="ZeroDivisionError") as info:
        r.raise_for_error()
    assert any("ZeroDivisionError" in line for line in info.value._render_traceback_())


async def test_stats_and_subscribe_follow_the_kernel_through_its_states(make_pool):
    pool = await make_pool(max_kernels=1)
    seen: list[str] = []
    unsubscribe = pool.subscribe(lambda s: seen.append(",".join(k.state for k in s.kernels)))
    await pool.execute("1", session="a")
    await pool.release("a")
    unsubscribe()
    await pool.execute("1", session="b")
    assert seen[0] == "starting" and "busy" in seen and "idle" in seen and "stopping" in seen
    assert seen[-1] == "", "unsubscribed: nothing after release"
    d = pool.stats().to_dict()
    import json

    json.dumps(d)
    assert set(d["kernels"][0]) == {"kernel_id", "pid", "state", "session", "executions", "busy_since", "last_used", "location",
                                     "memory"}
    assert d["kernels"][0]["location"] == "local" and d["kernels"][0]["memory"] > 10 * 2**20  # an ipykernel's RSS
    assert set(d["counters"]) >= {"started", "start_failures", "died", "checkouts", "timeouts"}


async def test_a_lease_has_the_kernels_kernel_info_and_its_kernel_its_memory(make_pool):
    """Issue 19, Design: what the faces need comes through the worker interface (no jupyter_client
    client): the kernel_info reply of the health check, and the kernel's memory where there is one."""
    pool = await make_pool(max_kernels=1)
    async with pool.checkout("a") as lease:
        info = lease.kernel_info
        assert info["status"] == "ok" and info["implementation"] == "ipython"
        assert info["language_info"]["name"] == "python" and info["language_info"]["file_extension"] == ".py"
        await lease.execute("blob = bytearray(200 * 2**20)")  # 200 MiB more
    [kernel] = pool.stats().kernels
    assert kernel.memory is not None and kernel.memory > 200 * 2**20


async def test_output_flood_is_capped_with_a_marker(make_pool):
    pool = await make_pool(max_kernels=1, max_output_size=100_000)
    streamed: list[dict] = []
    r = await pool.execute("for i in range(20000): print('x' * 50)", on_output=streamed.append)
    assert r.status == "ok" and r.truncated
    assert 100_000 <= len(r.stdout) < 200_000
    assert "output truncated" in r.stderr
    assert "output truncated" in streamed[-1]["text"], "the marker is streamed too, and nothing after it"
    r = await pool.execute("print('small')")
    assert r.stdout == "small\n" and not r.truncated
