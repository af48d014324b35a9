"""The service carries the pool's features over: inside JupyterLab's own server (next to its panel),
remote kernels on a gateway, kernels of other languages, any pool setting; and the service's
stages can be cancelled without leaving a session, a directory or a kernel behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import httpx
import pytest
from gatewaykit import wait_until
from poolkit import kernels_below, until
from servicekit import JupyterServer, Service, write_test_kernelspecs
from traitlets.config import Config

from jupyter_sessionpool import SessionLost
from jupyter_sessionpool.server.app import SessionPoolApp
from jupyter_sessionpool.server.errors import BadRequest
from jupyter_sessionpool.server.service import SessionService

pytestmark = pytest.mark.timeout(180)


def kernels_of(pid: int) -> list[int]:
    """Kernel processes (spawned, or forked by a template) below ``pid``."""
    return [p.pid for p in kernels_below(pid)]


async def test_inside_jupyterlab_the_extension_starts_no_kernel_until_used_and_the_panel_stays(tmp_path):
    server = JupyterServer(tmp_path, "jupyterlab").start()
    try:
        request = urllib.request.Request(f"{server.base}/lab/api/extensions", headers=server.headers)
        with urllib.request.urlopen(request, timeout=30) as r:
            names = [e["name"] for e in json.load(r)]
        assert "jupyter-sessionpool" in names, "the JupyterLab panel's extension is served beside the API"
        assert kernels_of(server.proc.pid) == [], "inside someone else's server, no kernel starts until used"
        async with httpx.AsyncClient(base_url=server.api, headers=server.headers, timeout=60) as client:
            assert (await client.get("")).json() == []
            r = await client.post("/lab-session/execute", json={"code": "6 * 7"}, headers={"Accept": "application/json"})
            assert r.json()["result"] == "42"
            assert len(kernels_of(server.proc.pid)) == 1, "min_idle is 0 in someone else's server: one kernel, used"
            assert (await client.delete("/lab-session")).status_code == 204
    finally:
        server.stop()
    assert kernels_of(server.proc.pid) == []


async def test_remote_kernels_on_a_gateway(kg, tmp_path):
    svc = Service(tmp_path, "--gateway-url", kg.url, f"--AsyncKernelPool.gateway_token={kg.token}",
                  "--min-idle", "1", "--max-kernels", "2").start()  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=svc.api, headers=svc.headers, timeout=60) as client:
            await client.put("/remote", json={"env": {"REMOTE_FLAG": "yes"}})
            await client.post("/remote/execute", json={"code": "x = 41"})
            r = await client.post("/remote/execute", json={"code": "import os; x + 1, os.environ['REMOTE_FLAG']"},
                                  headers={"Accept": "application/json"})  # fmt: skip
            assert r.json()["result"] == "(42, 'yes')"
            kernel = (await client.get("/remote")).json()
            assert kernel["pid"] is None and kernel["state"] == "idle", "a remote kernel has no local process"
            remote_ids = {k["id"] for k in kg.kernels()}
            assert len(remote_ids) >= 1
            assert (await client.delete("/remote")).status_code == 204
    finally:
        assert svc.stop() == 0, svc.log_tail()
    await wait_until(lambda: not kg.kernels(), 30, "the gateway's kernels to be deleted")


async def test_a_kernel_of_another_language_runs_in_its_session_directory(tmp_path, monkeypatch):
    share = tmp_path / "share"
    write_test_kernelspecs(share)
    spec = share / "kernels" / "echo-other"
    spec.mkdir()
    other = json.loads((share / "kernels" / "echo" / "kernel.json").read_text())
    (spec / "kernel.json").write_text(json.dumps({**other, "language": "echolang"}))
    monkeypatch.setenv("JUPYTER_PATH", str(share))
    service = await SessionService({"max_kernels": 2}, root_dir=tmp_path / "sessions").start()
    try:
        session, created = await service.open("poly", kernel_name="echo-other", env={"POLY": "1"})
        assert created and session.own_pool and not session.python
        pid = service.describe(session)["pid"]
        assert os.readlink(f"/proc/{pid}/cwd") == str(tmp_path / "sessions" / "poly")
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert b"POLY=1" in f.read().split(b"\0")
        result = await service.execute("poly", "echo me")
        assert result.stdout == "echo me\n", "no hidden Python cell is sent to another language"
        with pytest.raises(BadRequest, match="no kernelspec named"):
            await service.open("nope", kernel_name="no-such-kernel")
    finally:
        await service.shutdown()
    assert not (tmp_path / "sessions" / "poly").exists()


async def test_a_cancelled_session_start_leaves_nothing(tmp_path):
    # a spawned start (~0.3 s or more) leaves time to cancel it; a forked one may be done first
    service = await SessionService({"max_kernels": 1, "start_method": "spawn"}, root_dir=tmp_path / "sessions").start()
    try:
        opening = asyncio.ensure_future(service.open("early"))
        await asyncio.wait_for(until(service.pool, lambda s: any(k.state == "starting" for k in s.kernels)), 30)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        assert "early" not in service.sessions
        await service._wait_tasks()
        assert not (tmp_path / "sessions" / "early").exists()
        session, created = await service.open("early")  # the name is free again, on a kernel of its own
        assert created and (await service.execute("early", "1 + 1")).result == "2"
    finally:
        await service.shutdown()
    assert not service.pool.stats().kernels


def test_any_pool_setting_passes_through_the_extension_config():
    config = Config()
    config.KernelPool.max_kernels = 7
    config.AsyncKernelPool.min_idle = 3
    config.PoolSettings.startup_timeout = 12.0
    config.AsyncKernelPool.interrupt_timeout = 2.0
    app = SessionPoolApp(config=config)
    merged = app.pool_config().AsyncKernelPool
    assert (merged.max_kernels, merged.min_idle, merged.startup_timeout, merged.interrupt_timeout) == (7, 3, 12.0, 2.0)


async def test_the_pools_session_idle_timeout_becomes_the_services_own_clock(tmp_path):
    config = Config()
    config.AsyncKernelPool.session_idle_timeout = 0.5
    service = await SessionService({"config": config, "max_kernels": 1}, root_dir=tmp_path / "sessions").start()
    try:
        assert service.idle_timeout == 0.5 and service.pool.session_idle_timeout is None
        await service.execute("sleepy", "x = 1")
        await wait_until(lambda: "sleepy" not in service.sessions, 30, "the idle session to expire")
        with pytest.raises(SessionLost, match="idle"):
            await service.execute("sleepy", "x")  # never a silent fresh kernel
        assert (await service.execute("sleepy", "'x' in globals()")).result == "False"
    finally:
        await service.shutdown()


def test_the_extension_ships_disabled_and_jupyter_can_enable_it(tmp_path):
    """The shipped jupyter_server_config.d file lists the extension, disabled; `enable` turns it on."""
    shipped = Path(__file__).parent.parent / "jupyter-config" / "jupyter_server_config.d" / "jupyter_sessionpool.json"
    config_d = tmp_path / "config" / "jupyter_server_config.d"
    config_d.mkdir(parents=True)
    (config_d / shipped.name).write_text(shipped.read_text())
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "HOME": str(tmp_path)}

    def jupyter(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "jupyter", "server", "extension", *args], env=env,
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
        return re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)

    assert re.search(r"jupyter_sessionpool disabled", jupyter("list"))
    assert "Validation failed" not in jupyter("enable", "--user", "jupyter_sessionpool")
    assert re.search(r"jupyter_sessionpool enabled", jupyter("list"))
