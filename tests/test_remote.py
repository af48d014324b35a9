"""The pool's semantics on remote kernels: every row of design.md's table, on a real Kernel
Gateway (and a smoke set on Enterprise Gateway 3.3), plus what only remote kernels meet:
the websocket dropping, the gateway going away and coming back, its tokens and limits.

After each test no kernel of it is left on the gateway.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from gatewaykit import Gateway, Proxy, free_port, pool_settings, wait_until
from poolkit import assert_prepared, started_marker, until

from jupyter_sessionpool import (
    AsyncKernelPool,
    ExecutionTimeout,
    KernelDied,
    KernelPool,
    KernelStartError,
    SessionLost,
)
from jupyter_sessionpool.workers import gateway as gateway_module
from jupyter_sessionpool.workers.gateway import GatewayWorkers

SLEEPER = "print('started', flush=True); import time; time.sleep(60)"


@pytest.fixture
async def remote(kg):
    """``remote(gw=kg, **settings)`` makes a started pool on a gateway; all shut down after, then
    the gateway must hold no kernel."""
    pools: list[tuple[AsyncKernelPool, Gateway]] = []

    async def make(gw: Gateway | None = None, url: str | None = None, **settings) -> AsyncKernelPool:
        gw = gw or kg
        pool = AsyncKernelPool(**{**pool_settings(gw), **({"gateway_url": url} if url else {}), **settings})
        pools.append((pool, gw))
        return await pool.start()

    yield make
    for pool, _ in pools:
        await pool.shutdown()
    for gw in {gw for _, gw in pools}:
        if gw.proc is not None and gw.proc.poll() is None:
            assert gw.kernels() == [], f"kernels left on {gw.kind} after the test"


@pytest.fixture(params=["kg", "eg"])
def gateway(request):
    """The smoke set runs on both gateways."""
    return request.getfixturevalue(request.param)


# ---- the smoke set: Kernel Gateway and Enterprise Gateway ------------------------------------


async def test_sessions_keep_their_kernel_and_state(gateway, remote):
    pool = await remote(gateway, max_kernels=2)
    await asyncio.gather(pool.execute("x = 'a'", session="a"), pool.execute("x = 'b'", session="b"))
    a, b = await asyncio.gather(pool.execute("x", session="a"), pool.execute("x", session="b"))
    assert (a.result, b.result) == ("'a'", "'b'") and a.kernel_id != b.kernel_id
    kernels = pool.stats().kernels
    assert {k.location for k in kernels} == {f"127.0.0.1:{gateway.port}"} and {k.pid for k in kernels} == {None}
    assert len(gateway.kernels()) == 2
    assert isinstance(pool._workers, GatewayWorkers)


async def test_a_remote_ipykernel_is_prepared_like_a_local_one(gateway, remote):
    await assert_prepared(await remote(gateway, max_kernels=1), "a")


async def test_sessions_run_concurrently(gateway, remote):
    pool = await remote(gateway, max_kernels=4, min_idle=4)
    await pool.wait_ready(60)
    t0 = time.monotonic()
    await asyncio.gather(*(pool.execute("import time; time.sleep(1)", session=s) for s in "abcd"))
    assert time.monotonic() - t0 < 3.0  # one after another would be >= 4 s


async def test_remote_death_mid_cell_is_kernel_died_within_3s(gateway, remote):
    pool = await remote(gateway)
    pid = int((await pool.execute("import os; os.getpid()", session="a")).result)
    cell = await started_marker(pool, SLEEPER, "a")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # the gateway's host is this machine
    with pytest.raises(KernelDied) as info:
        await asyncio.wait_for(cell, 30)
    assert time.monotonic() - t0 < 3
    assert info.value.result.stdout == "started\n"
    # the gateway restarted it under the same id; the pool never hands that kernel back
    with pytest.raises(SessionLost):
        await pool.execute("1", session="a")
    fresh = await pool.execute("import os; os.getpid()", session="a")
    assert int(fresh.result) != pid and fresh.kernel_id != info.value.kernel_id
    await until(pool, lambda s: len(s.kernels) == 1)
    await wait_until(lambda: len(gateway.kernels()) == 1, 10, "the dead kernel's DELETE")


async def test_widget_comms_go_both_ways_with_their_buffers(gateway, remote):
    """The comm sink reads a remote kernel's comm traffic, and comm messages with binary
    buffers reach it (v1 websocket frames on Kernel Gateway, binary legacy frames on EG)."""
    pool = await remote(gateway, max_kernels=1)
    await pool.execute("import ipywidgets as w\nimg = w.Image(value=b'first', format='png')", session="a")
    state = pool.widget_state("a")["state"]
    (image,) = [k for k, v in state.items() if v["model_name"] == "ImageModel"]
    assert state[image]["buffers"][0]["path"] == ["value"]
    sent = await pool.send_comm("a", image, {"method": "update", "state": {}, "buffer_paths": [["value"]]},
                                buffers=[b"\x00second\xff"])
    assert sent.status == "ok"
    assert (await pool.execute("bytes(img.value)", session="a")).result == "b'\\x00second\\xff'"


async def test_shutdown_leaves_no_kernel_even_after_an_exception(gateway, remote):
    with pytest.raises(ZeroDivisionError):
        async with AsyncKernelPool(**pool_settings(gateway), max_kernels=3, min_idle=2) as pool:
            await pool.wait_ready(60)
            await pool.execute("x = 1", session="a")
            assert len(gateway.kernels()) >= 2  # a third one is starting to keep 2 idle
            raise ZeroDivisionError("the user's code failed")
    assert gateway.kernels() == []


# ---- Kernel Gateway: every other row of the table --------------------------------------------


async def test_idle_death_is_session_lost_then_a_fresh_kernel(kg, remote):
    pool = await remote()
    pid = int((await pool.execute("import os; os.getpid()", session="a")).result)
    died = until(pool, lambda s: s.counters["died"] == 1)
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(died, 10)
    with pytest.raises(SessionLost, match="died"):
        await pool.execute("1", session="a")
    assert (await pool.execute("1 + 1", session="a")).result == "2"


async def test_timeout_interrupts_over_rest_and_keeps_state(remote):
    pool = await remote()
    await pool.execute("x = 5", session="a")
    with pytest.raises(ExecutionTimeout) as info:
        await pool.execute("import time; time.sleep(30)", session="a", timeout=1)
    assert not info.value.restarted
    assert (await pool.execute("x", session="a")).result == "5"


async def test_timeout_past_an_ignored_interrupt_replaces_the_kernel(kg, remote):
    pool = await remote(interrupt_timeout=1)
    await pool.execute("x = 1", session="a")
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.01)"
    with pytest.raises(ExecutionTimeout) as info:
        await pool.execute(code, session="a", timeout=1)
    assert info.value.restarted
    with pytest.raises(SessionLost):
        await pool.execute("x", session="a")
    await wait_until(lambda: len(kg.kernels()) <= 1, 10, "the replaced kernel's DELETE")


async def test_cancelled_cell_is_interrupted_and_the_session_goes_on(remote):
    pool = await remote()
    await pool.execute("x = 7", session="a")
    cell = await started_marker(pool, SLEEPER, "a")
    cell.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cell
    assert (await pool.execute("x", session="a")).result == "7"


async def test_release_deletes_the_kernel_on_the_gateway(kg, remote):
    pool = await remote()
    await pool.execute("1", session="a")
    assert len(kg.kernels()) == 1
    assert await pool.release("a")
    assert kg.kernels() == []


async def test_start_refused_by_the_gateway_carries_its_message_and_the_pool_serves_on(tmp_path, remote):
    limited = Gateway("kg", tmp_path, extra=["--KernelGatewayApp.max_kernels=1"]).start()
    try:
        pool = await remote(limited, max_kernels=2, start_retries=2)
        await pool.execute("x = 1", session="a")
        t0 = time.monotonic()
        with pytest.raises(KernelStartError, match="HTTP 403.*(limit|Resource)") as info:
            await pool.execute("1", session="b")
        assert info.value.attempts == 1 and time.monotonic() - t0 < 5  # a refusal is not retried
        assert (await pool.execute("x", session="a")).result == "1"
        await pool.shutdown()
        assert limited.kernels() == []
    finally:
        limited.stop()


async def test_crashing_kernelspec_is_retried_then_a_clear_error(kg, remote):
    pool = await remote(kernel_name="crash", start_retries=1)
    with pytest.raises(KernelStartError, match="exited during start-up") as info:
        await pool.execute("1")
    assert info.value.attempts == 2
    assert kg.kernels() == []


async def test_bad_token_and_url_are_clear_errors(kg, remote):
    with pytest.raises(KernelStartError, match="HTTP 401.*gateway_token"):
        await remote(gateway_token="not-the-token")
    pool = await remote(url=f"http://127.0.0.1:{free_port()}", start_retries=1)
    with pytest.raises(KernelStartError, match="does not answer.*gateway is running") as info:
        await pool.execute("1")
    assert info.value.attempts == 2
    with pytest.raises(KernelStartError, match="no kernelspec 'nope'; it has: crash, python3"):
        await remote(kernel_name="nope")


async def test_websocket_drop_keeps_the_session(kg, remote):
    proxy = await Proxy(kg.port).start()
    try:
        pool = await remote(url=proxy.url)
        await pool.execute("x = 1", session="a")
        cell = await started_marker(pool, "print('started', flush=True); import time; time.sleep(1); x += 1", "a")
        assert proxy.cut() == 1
        result = await asyncio.wait_for(cell, 30)
        assert result.status == "ok" and result.stdout == "started\n"
        assert (await pool.execute("x", session="a")).result == "2"
        assert pool.stats().counters["died"] == 0
        await pool.shutdown()  # through the proxy, before it closes
    finally:
        await proxy.close()


async def test_gateway_gone_is_a_clear_error_and_the_pool_recovers(tmp_path, remote, monkeypatch):
    monkeypatch.setattr(gateway_module, "_RECONNECT_FOR", 3.0)  # how long a dropped socket is retried (10 s)
    gw = Gateway("kg", tmp_path).start()
    try:
        pool = await remote(gw, start_retries=1)
        await pool.execute("x = 1", session="a")
        cell = await started_marker(pool, SLEEPER, "a")
        gw.stop(signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(KernelDied):
            await asyncio.wait_for(cell, 30)
        assert time.monotonic() - t0 < 3.0 + 5
        with pytest.raises(KernelStartError, match="does not answer"):
            await pool.execute("1", session="b")
        gw.start()  # back on the same port
        with pytest.raises(SessionLost):
            await pool.execute("x", session="a")
        assert (await pool.execute("1 + 1", session="a")).result == "2"
    finally:
        gw.stop()


def test_ctrl_c_in_a_script_leaves_no_kernel_on_the_gateway(kg, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        from jupyter_sessionpool import KernelPool
        with KernelPool(gateway_url={kg.url!r}, gateway_token={kg.token!r}, max_kernels=2, min_idle=2) as pool:
            pool.wait_ready(60)
            pool.execute("1", session="a")
            print("running", flush=True)
            pool.execute("import time; time.sleep(60)", session="a")
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "running\n", proc.stderr.read()
        assert len(kg.kernels()) == 2
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert "KeyboardInterrupt" in err
    finally:
        proc.kill()
        proc.wait()
    assert kg.kernels() == []


def test_a_sigkilled_pools_kernels_are_culled_by_the_gateway(tmp_path):
    """docs/remote.md: nothing deletes a SIGKILLed pool's kernels; the gateway's culler
    reclaims them once idle, while a living pool's idle kernels (connected) are untouched."""
    culling = ["--MappingKernelManager.cull_idle_timeout=4", "--MappingKernelManager.cull_interval=1"]
    gw = Gateway("kg", tmp_path, extra=culling).start()
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from jupyter_sessionpool import KernelPool
        pool = KernelPool(gateway_url={gw.url!r}, gateway_token={gw.token!r}, max_kernels=2, min_idle=1).start()
        pool.execute("x = 1", session="a")
        pool.wait_ready(60)
        print("ready", flush=True)
        sys.stdin.read()
    """))
    proc = None
    try:
        with KernelPool(gateway_url=gw.url, gateway_token=gw.token, max_kernels=1) as living:
            living.execute("y = 2", session="kept")
            (kept,) = [k["id"] for k in gw.kernels()]
            proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline() == "ready\n"
            orphans = [k["id"] for k in gw.kernels() if k["id"] != kept]
            pids = [gw.kernel_pid(k) for k in orphans]
            assert len(pids) == 2
            proc.kill()
            proc.wait()
            asyncio.run(wait_until(lambda: [k["id"] for k in gw.kernels()] == [kept], 60, "the culler to reclaim the orphans"))
            assert not any(psutil.pid_exists(pid) for pid in pids), "a culled kernel's process is still alive"
            assert living.execute("y", session="kept").result == "2", "the living pool's idle kernel was culled"
        assert gw.kernels() == []
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        gw.stop()
