"""Helpers for fork-started kernels: kernelspecs in a scratch JUPYTER_PATH, kernels through jupyter_client, waits.

``kernelspecs(root)`` installs, with ``jupyter-sessionpool kernelspec install``'s own code,
``fork`` (forked by ``sessionpool-fork``), ``fork-np`` (the same, numpy preloaded) and
``spawn`` (the same argv, no provisioner: jupyter_client spawns it), so a forked and a
spawned kernel differ in nothing but how they were started.
"""

from __future__ import annotations

import ast
import json
import os
import select
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

from jupyter_sessionpool.forking.engine import TEMPLATES, ForkedProcess, Template
from jupyter_sessionpool.forking.kernelspec import install_kernelspec



def kernelspecs(prefix: Path) -> Path:
    """Install the test kernelspecs under ``prefix``; returns the directory to put on JUPYTER_PATH."""
    install_kernelspec("fork", prefix=str(prefix))
    install_kernelspec("fork-np", preload=["numpy", "numpy.random"], prefix=str(prefix))  # numpy 2 imports random lazily
    share = prefix / "share" / "jupyter"
    spec = json.loads((share / "kernels" / "fork" / "kernel.json").read_text())
    del spec["metadata"]["kernel_provisioner"]
    (share / "kernels" / "spawn").mkdir()
    (share / "kernels" / "spawn" / "kernel.json").write_text(json.dumps(spec))
    return share


class Kernel:
    """A kernel started through jupyter_client's blocking KernelManager, and its client."""

    def __init__(self, name: str, **start: Any) -> None:
        self.km = KernelManager(kernel_name=name)
        self.km.start_kernel(**start)
        self.process = self.km.provisioner.process  # kept: the manager drops it once the kernel is gone
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    @property
    def forked(self) -> bool:
        return isinstance(self.km.provisioner.process, ForkedProcess)

    @property
    def template(self) -> Template | None:
        process = self.km.provisioner.process
        return process.template if isinstance(process, ForkedProcess) else None

    def run(self, code: str, timeout: float = 60, **kwargs: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Execute ``code``; (execute_reply content, iopub output messages)."""
        outputs: list[dict[str, Any]] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] in ("stream", "display_data", "execute_result", "error"):
                outputs.append(msg)

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook, **kwargs)
        return reply["content"], outputs

    def value(self, expression: str) -> Any:
        """The Python value of ``expression`` in the kernel (through its repr)."""
        content, outputs = self.run(expression)
        assert content["status"] == "ok", content
        results = [m["content"]["data"]["text/plain"] for m in outputs if m["msg_type"] == "execute_result"]
        assert results, outputs
        return ast.literal_eval(results[-1])

    def stop(self, now: bool = False) -> None:
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=now)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until every process of ``pids`` has exited (by pidfd, not by polling); the ones still alive."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    try:
        while fds and time.monotonic() < deadline:
            ready, _, _ = select.select(list(fds), [], [], max(0.0, deadline - time.monotonic()))
            for fd in ready:
                os.close(fd)
                del fds[fd]
        return sorted(fds.values())
    finally:
        for fd in fds:
            os.close(fd)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def templates(under: Path | None = None) -> list[Template]:
    """This process's live fork templates (those of the kernelspecs ``under`` a directory)."""
    return [t for t in TEMPLATES if not t.ended.done() and (under is None or str(under) in (t.key.spec_file or ""))]
