"""Templates and forked kernels live and die as they should: no orphans, no stale template, no leaked start.

SIGKILL of the owner, of a template or of a Jupyter Server leaves no kernel and no template;
a template killed mid-fork is replaced; a changed kernelspec or module directory retires
its template while its kernels run on; the interpreter-level environment picks the
template, and a start no template matches is spawned; a cancelled start leaves no kernel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from forkkit import Kernel, alive, kernelspecs, templates, wait_gone
from gatewaykit import free_port
from jupyter_client.manager import AsyncKernelManager

from jupyter_sessionpool.forking import stop_templates
from jupyter_sessionpool.forking.kernelspec import install_kernelspec


@pytest.fixture
def specs(tmp_path, monkeypatch):
    """The test kernelspecs on a JUPYTER_PATH of this test's own (so its templates are its own too)."""
    share = kernelspecs(tmp_path / "prefix")
    monkeypatch.setenv("JUPYTER_PATH", str(share))
    yield share / "kernels"
    assert stop_templates(), "a template outlived its kernels"


OWNER = """
import asyncio, json, sys
from jupyter_client.manager import AsyncKernelManager
from jupyter_sessionpool import AsyncKernelPool
from jupyter_sessionpool.forking.engine import TEMPLATES

async def main():
    pool = AsyncKernelPool(start_method="fork", max_kernels=2, min_idle=2)
    await pool.start()
    await pool.wait_ready(timeout=120)
    km = AsyncKernelManager(kernel_name="fork")
    await km.start_kernel()
    kernels = [k.pid for k in pool.stats().kernels] + [km.provisioner.pid]
    print(json.dumps({"kernels": kernels, "templates": [t.pid for t in TEMPLATES]}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_sigkill_of_the_owner_leaves_no_kernel_and_no_template(specs):
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(owner.stdout.readline())
        assert len(started["kernels"]) == 3 and len(started["templates"]) == 2, started
        for pid in started["kernels"]:
            assert psutil.Process(pid).ppid() in started["templates"]  # forked, all of them
        owner.kill()
        owner.wait()
        left = wait_gone(started["kernels"] + started["templates"], 10)
        assert not left, f"outlived their owner: {left}"
    finally:
        owner.kill()
        owner.wait()


async def test_sigkill_of_a_template_kills_its_kernels_and_the_next_start_gets_a_new_one(make_pool, caplog):
    caplog.set_level(logging.WARNING, "jupyter_sessionpool")
    pool = await make_pool(start_method="fork", max_kernels=2)
    from poolkit import started_marker

    task = await started_marker(pool, "print('started', flush=True); import time; time.sleep(60)", "a")
    (template,) = [t for t in templates() if t.pid == psutil.Process(pool.stats().kernels[0].pid).ppid()]
    kernel = pool.stats().kernels[0].pid
    t0 = time.monotonic()
    os.kill(template.pid, signal.SIGKILL)
    from jupyter_sessionpool import KernelDied, SessionLost

    with pytest.raises(KernelDied):
        await task
    assert time.monotonic() - t0 < 3  # the pool's usual bound
    assert not wait_gone([kernel], 5)
    assert any("exited with code -9" in r.getMessage() for r in caplog.records)  # the kernel's exit code
    with pytest.raises(SessionLost):
        await pool.execute("1", session="a")
    pid = int((await pool.execute("import os; os.getpid()", session="a")).result)
    assert psutil.Process(pid).ppid() not in (template.pid, os.getpid())  # a new template forked it


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_sigkill_of_jupyter_server_leaves_no_kernel_and_no_template(tmp_path, specs):
    """Jupyter Server with sessionpool-fork as its default provisioner, on the stock python3 kernelspec."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("jupyter-server")), "--no-browser", "--allow-root",
         "--IdentityProvider.token=", "--ip=127.0.0.1", f"--port={port}", f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.disable_check_xsrf=True", "--KernelProvisionerFactory.default_provisioner_name=sessionpool-fork"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _get(f"http://127.0.0.1:{port}/api/status")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "jupyter server did not start"
                time.sleep(0.2)  # polling a port: there is no event to wait on
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/kernels", method="POST",
                                         data=json.dumps({"name": "python3"}).encode())
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 201
        (template,) = psutil.Process(server.pid).children()
        (kernel,) = template.children()  # forked by the template, not spawned by the server
        assert "template.py" in " ".join(template.cmdline())
        server.kill()
        server.wait()
        assert not wait_gone([template.pid, kernel.pid], 10)
    finally:
        server.kill()
        server.wait()


async def test_a_template_killed_mid_fork_is_replaced_and_the_start_succeeds(specs):
    first = AsyncKernelManager(kernel_name="fork")
    await first.start_kernel()
    template = first.provisioner.process.template
    second = AsyncKernelManager(kernel_name="fork")
    try:
        os.kill(template.pid, signal.SIGSTOP)  # it cannot answer: the next fork request stays in flight
        start = asyncio.ensure_future(second.start_kernel())
        while not template._requests:
            await asyncio.sleep(0.01)  # the request is on its way (no event tells it was sent)
        os.kill(template.pid, signal.SIGKILL)
        await asyncio.wait_for(start, 60)
        assert second.provisioner.forked and second.provisioner.process.template.pid != template.pid
        kc = second.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        kc.stop_channels()
        assert await asyncio.to_thread(first.provisioner.process.wait, 10) == -signal.SIGKILL  # died with its template
        assert not await first.is_alive()
    finally:
        for km in (first, second):
            if km.has_kernel:
                await km.shutdown_kernel(now=True)


def test_a_kernelspec_changed_under_a_live_template_retires_it(specs):
    old = Kernel("fork")
    try:
        retired = old.template
        stamp = time.time() + 5
        os.utime(specs / "fork" / "kernel.json", (stamp, stamp))  # edited: its template no longer matches
        new = Kernel("fork")
        try:
            assert new.forked and new.template is not retired
            assert retired.retired and alive(retired.pid)  # it serves no new start, and lives on for its kernel
            assert old.value("1 + 1") == 2
        finally:
            new.stop()
    finally:
        old.stop()
    assert not wait_gone([retired.pid], 10)  # gone with its last kernel


def test_a_changed_module_directory_retires_the_template(tmp_path, specs, monkeypatch):
    """An install or upgrade changes the directory a module is imported from: the next start gets a new template."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "jsp_preloaded.py").write_text("VERSION = 1\n")
    monkeypatch.setenv("PYTHONPATH", str(lib))
    install_kernelspec("fork-lib", preload=["jsp_preloaded"], prefix=str(tmp_path / "prefix"))
    old = Kernel("fork-lib")
    try:
        assert old.value("import sys; sys.modules['jsp_preloaded'].VERSION") == 1
        (lib / "jsp_preloaded.py").unlink()
        (lib / "jsp_preloaded_v2.py").write_text("")  # what pip does: entries removed and added
        (lib / "jsp_preloaded.py").write_text("VERSION = 2\n")
        new = Kernel("fork-lib")
        try:
            assert new.template is not old.template and old.template.retired
            assert new.value("__import__('sys').modules['jsp_preloaded'].VERSION") == 2
        finally:
            new.stop()
    finally:
        old.stop()


def _hash_under(seed: str) -> int:
    code = "print(hash('jupyter-sessionpool'))"
    return int(subprocess.check_output([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}))


def test_the_interpreter_level_environment_picks_the_template_and_an_unmatched_start_spawns(specs):
    one = {**os.environ, "PYTHONHASHSEED": "1"}
    kernels = [Kernel("fork", env=one), Kernel("fork", env=one)]
    try:
        assert all(k.forked for k in kernels) and kernels[0].template is kernels[1].template
        assert kernels[0].value("hash('jupyter-sessionpool')") == _hash_under("1")
        other = Kernel("fork", env={**os.environ, "PYTHONHASHSEED": "2"})  # no template matches: spawned
        kernels.append(other)
        assert not other.forked and other.value("__import__('os').getppid()") == os.getpid()
        assert other.value("hash('jupyter-sessionpool')") == _hash_under("2")
    finally:
        for kernel in kernels:
            kernel.stop(now=True)


def test_a_template_that_fails_to_start_means_spawned_kernels_and_one_log_line(tmp_path, specs, caplog):
    install_kernelspec("fork-broken", preload=["jsp_no_such_module"], prefix=str(tmp_path / "prefix"))
    caplog.set_level(logging.INFO)
    kernels = [Kernel("fork-broken") for _ in range(2)]
    try:
        assert not any(k.forked for k in kernels)
        assert kernels[1].value("1 + 1") == 2
        told = [r.getMessage() for r in caplog.records if "spawned, not forked" in r.getMessage()]
        assert len(told) == 1 and "No module named 'jsp_no_such_module'" in told[0], told
    finally:
        for kernel in kernels:
            kernel.stop(now=True)


# ---- cancelling a start at each stage leaves no kernel --------------------------------------


async def test_a_start_cancelled_while_its_template_starts_forks_nothing(specs):
    km = AsyncKernelManager(kernel_name="fork-np")  # a family nobody started yet: its template is starting
    start = asyncio.ensure_future(km.start_kernel())
    while not templates(specs):
        await asyncio.sleep(0.01)
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    (template,) = templates(specs)
    await asyncio.wrap_future(template.ready)
    assert not template._children and not template._requests and not psutil.Process(template.pid).children()


async def test_a_start_cancelled_while_its_fork_is_in_flight_kills_the_kernel(specs):
    warm = AsyncKernelManager(kernel_name="fork")
    await warm.start_kernel()
    template = warm.provisioner.process.template
    km = AsyncKernelManager(kernel_name="fork")
    try:
        os.kill(template.pid, signal.SIGSTOP)
        start = asyncio.ensure_future(km.start_kernel())
        while not template._requests:
            await asyncio.sleep(0.01)
        (request,) = template._requests.values()
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        os.kill(template.pid, signal.SIGCONT)
        child = await asyncio.wrap_future(request.future)
        assert await asyncio.to_thread(child.wait, 30) == -signal.SIGKILL
    finally:
        os.kill(template.pid, signal.SIGCONT)
        await warm.shutdown_kernel(now=True)


async def test_a_start_cancelled_before_the_kernel_is_bound_kills_the_kernel(specs, tmp_path):
    km = AsyncKernelManager(kernel_name="fork")
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text("import time; time.sleep(60)")  # read before the sockets are bound
    start = asyncio.ensure_future(km.start_kernel(env={**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}))
    while not any(t._children for t in templates(specs)):
        await asyncio.sleep(0.01)
    (child,) = [c for t in templates(specs) for c in t._children.values()]
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    assert await asyncio.to_thread(child.wait, 30) == -signal.SIGKILL
