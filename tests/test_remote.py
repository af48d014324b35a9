"""The pool's semantics on remote kernels: every row of design.md's table, on a real Kernel
Gateway (and a smoke set on Enterprise Gateway 3.3), plus what only remote kernels meet:
the websocket dropping, the gateway going away and coming back, its tokens and limits.

After each test no kernel of it is left on the gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import nbformat
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
from jupyter_sessionpool.batch import run_notebooks
from jupyter_sessionpool.notebook import comm, widget
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
    with pytest.raises(KernelStartError, match="no kernelspec 'nope'; it has: crash, nosession, python3"):
        await remote(kernel_name="nope")


# ---- settings changed on a live pool (issue 19, item 2) ------------------------------------------


def test_gateway_settings_made_after_construction_reach_the_next_start(kg, monkeypatch):
    """``KernelPool()`` and then gateway_url/gateway_token, before the first call: the cell ran on a
    *local* kernel; and a corrected token never reached later starts (HTTP 401 on every start)."""
    for name in ("JUPYTER_GATEWAY_URL", "JUPYTER_GATEWAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    pool = KernelPool(max_kernels=2)
    try:
        pool.gateway_url, pool.gateway_token = kg.url, "not-the-token"
        with pytest.raises(KernelStartError, match="HTTP 401"):
            pool.execute("1", session="a")
        pool.gateway_token = kg.token  # corrected: the next start uses it
        assert pool.execute("import os; os.getpid()", session="a").status == "ok"
        [kernel] = pool.stats().kernels
        assert (kernel.location, kernel.pid) == (f"127.0.0.1:{kg.port}", None) and len(kg.kernels()) == 1
    finally:
        pool.shutdown()
    assert kg.kernels() == []


async def test_a_live_pool_moves_between_backends_and_each_kernel_stays_where_it_runs(kg, make_pool):
    """Each start uses the backend the settings name then; running kernels keep theirs (a release
    DELETEs on the gateway the kernel lives on), and a backend left behind closes with its last kernel."""
    pool = await make_pool(max_kernels=3)
    await pool.execute("x = 'local'", session="a")
    local = pool._workers
    pool.gateway_url, pool.gateway_token = kg.url, kg.token
    await pool.execute("x = 'remote'", session="b")
    where = {k.session: k.location for k in pool.stats().kernels}
    assert where == {"a": "local", "b": f"127.0.0.1:{kg.port}"} and len(kg.kernels()) == 1
    assert (await pool.execute("x", session="a")).result == "'local'"  # a kept its kernel and state
    pool.gateway_url = ""  # back to local kernels for new sessions
    await pool.execute("x = 'local again'", session="c")
    assert pool.stats().kernels[-1].location == "local" and len(kg.kernels()) == 1
    assert await pool.release("b")  # deleted on the gateway, though new kernels start locally now
    assert kg.kernels() == []
    assert local.dir.exists()  # the first local backend still serves session a ...
    assert await pool.release("a")
    await wait_until(lambda: not local.dir.exists(), 30, "the first local backend to close")  # ... until a went
    assert (await pool.execute("x", session="c")).result == "'local again'"


async def test_a_remote_kernel_has_its_kernel_info_and_no_memory_figure(kg, remote):
    pool = await remote(max_kernels=1)
    async with pool.checkout("a") as lease:
        assert lease.client is None and lease.kernel_info["language_info"]["name"] == "python"
    [kernel] = pool.stats().kernels
    assert (kernel.pid, kernel.memory) == (None, None)


def test_a_remote_notebook_gets_language_info(kg, tmp_path, monkeypatch):
    """Issue 19, Design: the batch runner took language_info from a jupyter_client client, which
    remote kernels do not have; it comes from the kernel's kernel_info reply now."""
    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", kg.token)
    source = tmp_path / "in" / "a.ipynb"
    source.parent.mkdir()
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nbformat.v4.new_notebook(metadata={"kernelspec": kernelspec},
                                            cells=[nbformat.v4.new_code_cell("1 + 1")]), source)
    [result] = run_notebooks([source], output_dir=tmp_path / "out", gateway_url=kg.url, jobs=1)
    assert result.status == "passed", result.error
    info = nbformat.read(tmp_path / "out" / "a.ipynb", as_version=4).metadata.language_info
    assert info["name"] == "python" and info["version"].startswith(f"{sys.version_info.major}.")
    assert kg.kernels() == []


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


# ---- a restarted kernel is never handed back as the session's own -----------------------------------


async def test_kernels_restarted_during_a_network_cut_are_lost_never_fresh_namespaces(kg, remote):
    """The review's scenario: the websocket drops for ~2 s while the gateway restarts the kernel under the
    same id. The session's next cell got ``NameError: name 'x' is not defined`` as a plain result in 4 of
    5 rounds; it must raise SessionLost. One kernel dies and is restarted by the gateway (its ``restarting``
    status goes to no one while nobody is connected), the other is restarted over REST, with a cell sent
    during the cut, which must never run on the restarted kernel."""
    proxy = await Proxy(kg.port).start()
    try:
        pool = await remote(url=proxy.url, max_kernels=2)
        pids = {s: int((await pool.execute("x = 1; import os; os.getpid()", session=s)).result)
                for s in ("killed", "restarted")}
        remote_ids = {s: pool._books.bound[s].handle.remote_id for s in pids}
        died = until(pool, lambda s: s.counters["died"] == 2)
        proxy.block()
        os.kill(pids["killed"], signal.SIGKILL)
        await asyncio.to_thread(kg.call, f"/api/kernels/{remote_ids['restarted']}/restart", "POST")
        await wait_until(lambda: _pid_or_none(kg, remote_ids["killed"]) not in (None, pids["killed"]), 20,
                         "the gateway to restart the killed kernel")
        for remote_id in remote_ids.values():  # both new processes are up: whatever they said at start is lost
            await kg.answers(remote_id)
        cell = asyncio.ensure_future(pool.execute("x", session="restarted"))
        await wait_until(lambda: proxy.refused >= 4, 10, "the pool to retry the gateway during the outage")
        proxy.restore()
        # held while the connection was down, then the kernel was found replaced: it never ran, and the
        # session's loss is reported to it, once
        with pytest.raises(SessionLost, match="variables are gone"):
            await asyncio.wait_for(cell, 30)
        await asyncio.wait_for(died, 20)
        with pytest.raises(SessionLost, match="variables are gone"):
            await pool.execute("x", session="killed")
        for session in pids:
            assert (await pool.execute("x = 2; x", session=session)).result == "2"
        await pool.shutdown()  # through the proxy, before it closes
    finally:
        await proxy.close()


def _pid_or_none(gw: Gateway, remote_id: str) -> int | None:
    try:
        return gw.kernel_pid(remote_id)
    except LookupError:
        return None


async def test_rest_restart_with_the_websocket_connected_is_noticed_within_3s(gateway, remote):
    """A REST restart (``POST /api/kernels/{id}/restart``) was missed in 3 of 3 runs: the next execute ran
    on the fresh kernel. The old kernel's iopub shutdown_reply now ends the worker at once: a caller
    mid-cell gets KernelDied within 3 s, and the next call of a session restarted while idle SessionLost.

    The old kernel may still answer its running cell, cut short by its own shutdown, and the gateway
    may forward that shell reply before the iopub shutdown_reply (two zmq sockets, one websocket):
    seen once in four runs on Enterprise Gateway. That answer is the old kernel's own, so it is
    returned, never as a success; the session's next call is SessionLost all the same."""
    pool = await remote(gateway, max_kernels=2)
    await pool.execute("x = 1", session="idle")
    cell = await started_marker(pool, SLEEPER, "busy")
    remote_ids = {s: pool._books.bound[s].handle.remote_id for s in ("idle", "busy")}
    t0 = time.monotonic()
    busy = asyncio.ensure_future(asyncio.to_thread(gateway.call, f"/api/kernels/{remote_ids['busy']}/restart", "POST"))
    try:
        cut_short = await asyncio.wait_for(cell, 30)
    except KernelDied:
        pass
    else:
        assert cut_short.status != "ok", cut_short
    assert time.monotonic() - t0 < 3, f"the restart was noticed after {time.monotonic() - t0:.2f} s"
    await asyncio.to_thread(gateway.call, f"/api/kernels/{remote_ids['idle']}/restart", "POST")
    with pytest.raises(SessionLost):  # the very next call, as the runs made it
        await pool.execute("x", session="idle")
    await busy
    with pytest.raises(SessionLost):
        await pool.execute("1", session="busy")
    assert (await pool.execute("x = 3; x", session="idle")).result == "3"


# ---- a gateway that accepts connections and stops answering ------------------------------------------


async def test_a_gateway_that_stops_answering_bounds_interrupt_and_shutdown(kg, remote, caplog):
    """With every REST call at a fixed 30 s, ``timeout=1, interrupt_timeout=1`` took 32 s and
    ``shutdown(shutdown_timeout=2)`` 30 s; each call is now bounded by the timeout that governs it."""
    caplog.set_level(logging.WARNING, "jupyter_sessionpool")
    proxy = await Proxy(kg.port).start()
    try:
        pool = await remote(url=proxy.url, interrupt_timeout=1, shutdown_timeout=2)
        await pool.execute("x = 1", session="a")
        proxy.stall()  # new connections are accepted and never answered; the websocket goes on
        t0 = time.monotonic()
        with pytest.raises(ExecutionTimeout) as info:
            await pool.execute("import time; time.sleep(30)", session="a", timeout=1)
        assert time.monotonic() - t0 < 10, f"the timed-out cell took {time.monotonic() - t0:.1f} s"
        assert info.value.restarted  # the interrupt never reached the kernel
        t0 = time.monotonic()
        await pool.shutdown()
        assert time.monotonic() - t0 < 8, f"shutdown took {time.monotonic() - t0:.1f} s"
        assert any("could not interrupt" in r.message for r in caplog.records)
        assert any("could not delete" in r.message for r in caplog.records)
    finally:
        await proxy.close()
        for kernel in kg.kernels():  # the DELETE never reached the gateway: the test cleans up
            await asyncio.to_thread(kg.call, f"/api/kernels/{kernel['id']}", "DELETE")


# ---- secrets -----------------------------------------------------------------------------------------


async def test_gateway_credentials_never_show(kg, remote, caplog):
    """A password in gateway_url and the gateway token appear nowhere a person (or a saved notebook)
    sees: errors, log lines, reprs, stats and what the widget and the comm render from them."""
    caplog.set_level(logging.DEBUG)
    password, token = f"pw-{uuid.uuid4().hex}", f"tok-{uuid.uuid4().hex}"
    silent = await Proxy(free_port()).start()
    silent.stall()  # a kernel start that hangs, so its stats can be read while it is starting
    surfaces = []
    try:
        pool = await remote(url=f"http://someone:{password}@127.0.0.1:{silent.port}", gateway_token=token,
                            startup_timeout=2, start_retries=0)
        call = asyncio.ensure_future(pool.execute("1"))
        await wait_until(lambda: any(k.location for k in pool.stats().kernels), 10, "a starting kernel")
        stats = pool.stats()
        (worker,) = [s.handle for s in pool._books.slots.values()]
        with pytest.raises(KernelStartError, match=r"http://someone:\*\*\*@127\.0\.0\.1") as info:
            await call
        assert stats.kernels[0].location == f"127.0.0.1:{silent.port}"
        surfaces += [str(info.value), repr(info.value), repr(pool), repr(pool._workers), repr(worker), str(stats),
                     json.dumps(stats.to_dict()), json.dumps(comm.snapshot_message(stats)),
                     *(widget._row_html(k, widget._columns(stats), time.time()) for k in stats.kernels)]
        # a real gateway that refuses the URL's credentials: its answer is shown, never the secrets
        with pytest.raises(KernelStartError, match="HTTP 401") as info:
            await remote(url=f"http://someone:{password}@127.0.0.1:{kg.port}", gateway_token=token)
        surfaces += [str(info.value), repr(info.value)]
    finally:
        await silent.close()
    surfaces.append(caplog.text)
    assert "cannot check kernel" in caplog.text and "failed to start" in caplog.text
    for surface in surfaces:
        assert password not in surface and token not in surface, surface
