"""The pool's start_method and preload: auto forks what a template can serve, fork says so where it cannot,
spawn is jupyter_client's own start; forked kernels keep what the pool gives every kernel."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time

import psutil
import pytest
from forkkit import templates
from poolkit import assert_prepared, started_marker, until

from jupyter_sessionpool import KernelDied, KernelStartError, SessionLost
from jupyter_sessionpool.forking import provisioner


def parent(pid: int) -> int:
    return psutil.Process(pid).ppid()


def template_pids() -> set[int]:
    return {t.pid for t in templates()}


async def kernel_pid(pool, session: str) -> int:
    return int((await pool.execute("import os; os.getpid()", session=session)).result)


async def test_auto_forks_an_ipykernel_and_keeps_what_the_pool_gives_its_kernels(make_pool):
    pool = await make_pool(start_method="auto", max_kernels=2)
    await assert_prepared(pool, "a")  # the pool's start-up cell ran, and it is not In [1]
    pid = await kernel_pid(pool, "a")
    assert parent(pid) in template_pids()
    assert (await pool.execute("str(get_ipython().history_manager.hist_file)", session="a")).result == "':memory:'"
    (kernel,) = pool.stats().kernels
    assert kernel.pid == pid  # the pool knows the forked kernel's pid (memory, the widget, pidfd)


async def test_spawn_is_jupyter_clients_own_start(make_pool):
    pool = await make_pool(start_method="spawn", max_kernels=1)
    pid = await kernel_pid(pool, "a")
    assert parent(pid) == os.getpid()  # setpriv execs the kernel: its parent is the pool
    assert (await pool.execute("'debugpy' in __import__('sys').modules", session="a")).result == "False"


async def test_auto_spawns_what_it_cannot_fork_and_says_why_once(make_pool, kernel_dir, caplog, monkeypatch):
    monkeypatch.setattr(provisioner, "_told", set())  # once per process: an earlier test may have been told
    caplog.set_level(logging.INFO, "jupyter_sessionpool")
    pool = await make_pool(kernel_name="scripted", start_method="auto", max_kernels=2)
    for session in ("a", "b"):
        assert (await pool.execute("hello", session=session, timeout=20)).stdout == "hello\n"
    told = [r.getMessage() for r in caplog.records if "spawned, not forked" in r.getMessage()]
    assert len(told) == 1 and "not an ipykernel" in told[0], told


async def test_fork_raises_a_start_error_that_is_not_retried_where_it_cannot_fork(make_pool, kernel_dir):
    pool = await make_pool(kernel_name="scripted", start_method="fork", max_kernels=1, start_retries=2)
    with pytest.raises(KernelStartError) as caught:
        await pool.execute("hello", session="a")
    error = caught.value
    assert not error.retryable and error.attempts == 1 and pool.stats().counters["start_failures"] == 1
    message = str(error)
    assert "cannot be forked" in message and "not an ipykernel" in message and "start_method='auto'" in message


async def test_preload_is_imported_before_the_first_cell_and_shared_with_the_template(make_pool):
    pool = await make_pool(start_method="fork", preload=["numpy"], max_kernels=1)
    assert (await pool.execute("import sys; 'numpy' in sys.modules", session="a")).result == "True"
    r = await pool.execute("import numpy; float(numpy.arange(4).sum())", session="a")
    assert r.result == "6.0"
    (template,) = [t for t in templates() if t.pid == parent(pool.stats().kernels[0].pid)]
    assert template.key.preload == ("numpy",)


async def test_a_forked_kernels_death_is_kernel_died_with_its_exit_code(make_pool, caplog):
    caplog.set_level(logging.WARNING, "jupyter_sessionpool")
    pool = await make_pool(start_method="fork", max_kernels=1)
    pid = await kernel_pid(pool, "a")
    task = await started_marker(pool, "print('started', flush=True); import time; time.sleep(60)", "a")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(KernelDied):
        await task
    assert time.monotonic() - t0 < 3
    assert any("exited with code -9" in r.getMessage() for r in caplog.records)
    with pytest.raises(SessionLost):
        await pool.execute("1", session="a")
    pid = await kernel_pid(pool, "a")  # an idle kernel's death is noticed too, and replaced
    died = until(pool, lambda s: s.counters["died"] == 2)
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(died, 10)


async def test_an_interpreter_level_env_no_template_matches_is_spawned_or_refused(make_pool):
    pool = await make_pool(start_method="auto", max_kernels=2, env={"PYTHONHASHSEED": "1"})
    first = await kernel_pid(pool, "a")
    assert parent(first) in template_pids()
    pool.env = {"PYTHONHASHSEED": "2"}  # the next kernel's; the template of "1" is in use
    second = await kernel_pid(pool, "b")
    assert parent(second) == os.getpid()
    strict = await make_pool(start_method="fork", max_kernels=1, env={"PYTHONHASHSEED": "3"})
    with pytest.raises(KernelStartError, match="interpreter-level environment") as caught:
        await strict.execute("1", session="a")
    assert not caught.value.retryable


async def test_a_kernelspec_naming_sessionpool_fork_is_forked_with_its_preload_or_spawned(make_pool, tmp_path, monkeypatch):
    from jupyter_sessionpool.forking.kernelspec import install_kernelspec

    install_kernelspec("fast", preload=["json"], prefix=str(tmp_path))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    forked = await make_pool(kernel_name="fast", max_kernels=1, preload=["csv"])
    pid = await kernel_pid(forked, "a")
    (template,) = [t for t in templates() if t.pid == parent(pid)]
    assert template.key.preload == ("json", "csv")
    spawned = await make_pool(kernel_name="fast", max_kernels=1, start_method="spawn")
    assert parent(await kernel_pid(spawned, "a")) == os.getpid()


async def test_a_closed_pool_no_longer_holds_its_templates(make_pool):
    pool = await make_pool(start_method="fork", max_kernels=1)
    pid = await kernel_pid(pool, "a")
    (template,) = [t for t in templates() if t.pid == parent(pid)]
    assert template.in_use()
    await pool.shutdown()
    assert not template.in_use()  # retired after a grace period, or taken up by the next pool


def test_the_settings_are_traits_of_both_pools():
    from jupyter_sessionpool import AsyncKernelPool, KernelPool

    for cls in (KernelPool, AsyncKernelPool):
        traits = cls.class_traits(config=True)
        assert traits["start_method"].default_value == (os.environ.get("JSP_TEST_START_METHOD") or "auto")
        assert list(traits["start_method"].values) == ["auto", "fork", "spawn"]
        assert cls().preload == []
    assert json.dumps(KernelPool(preload=["numpy"]).settings()["preload"]) == '["numpy"]'


async def test_forked_kernels_exit_promptly_on_release(make_pool):
    """ipykernel's close() stops IOPub before joining the control thread, whose last flush then
    waits 10 s (about one shutdown in twenty, under churn); a forked kernel lets that thread finish first."""
    pool = await make_pool(start_method="fork", max_kernels=4, shutdown_timeout=30)
    names = iter(range(40))
    slowest = 0.0

    async def worker() -> None:
        nonlocal slowest
        for i in names:
            await pool.execute("pass", session=f"s{i}")
            t0 = time.monotonic()
            await pool.release(f"s{i}")
            slowest = max(slowest, time.monotonic() - t0)

    await asyncio.gather(*(worker() for _ in range(4)))
    assert slowest < 5, f"a release waited {slowest:.1f} s for its kernel to exit"
