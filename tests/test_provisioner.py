"""A kernelspec that names a jupyter_client provisioner runs through the local worker unchanged.

Provisioners for Kubernetes, YARN, Docker or SSH (gateway_provisioners) leave no local pid,
so the pool cannot watch a pidfd: it falls back to the provisioner's ``poll()``. The test
provisioner here is jupyter_client's local one with its pid hidden, which is exactly that case.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from importlib.metadata import EntryPoint

import pytest
from jupyter_client.provisioning import KernelProvisionerFactory, LocalProvisioner
from poolkit import started_marker, until

from jupyter_sessionpool import KernelDied, SessionLost

PROVISIONER = "jsp-test-hidden-pid"


class HiddenPidProvisioner(LocalProvisioner):
    """A local kernel that, like a remote provisioner's, shows the pool no pid."""

    @property
    def pid(self) -> None:
        return None

    @pid.setter
    def pid(self, value: int | None) -> None:
        pass


@pytest.fixture
def provisioned(tmp_path, monkeypatch):
    """A kernelspec ``provisioned`` whose metadata names the hidden-pid provisioner."""
    spec = tmp_path / "share" / "kernels" / "provisioned"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    metadata = {"kernel_provisioner": {"provisioner_name": PROVISIONER}}
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "p", "language": "python", "metadata": metadata}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share"))
    # what an entry point in the group jupyter_client.kernel_provisioners would register
    entry = EntryPoint(PROVISIONER, f"{__name__}:HiddenPidProvisioner", "jupyter_client.kernel_provisioners")
    monkeypatch.setitem(KernelProvisionerFactory.instance().provisioners, PROVISIONER, entry)
    return "provisioned"


async def test_provisioner_kernel_works_and_its_death_is_noticed_within_3s(make_pool, provisioned):
    pool = await make_pool(kernel_name=provisioned, max_kernels=2)
    pid = int((await pool.execute("import os; os.getpid()", session="a")).result)
    (kernel,) = pool.stats().kernels
    assert kernel.pid is None and kernel.location == "local"
    assert type(pool._books.slots[kernel.kernel_id].handle._km.provisioner) is HiddenPidProvisioner

    task = await started_marker(pool, "print('started', flush=True); import time; time.sleep(60)", "a")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(KernelDied):
        await task
    assert time.monotonic() - t0 < 3

    with pytest.raises(SessionLost):
        await pool.execute("1", session="a")
    pid = int((await pool.execute("import os; os.getpid()", session="a")).result)
    died = until(pool, lambda s: s.counters["died"] == 2)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # idle this time: noticed by the poll, not at the next use
    await asyncio.wait_for(died, 10)
    assert time.monotonic() - t0 < 3
