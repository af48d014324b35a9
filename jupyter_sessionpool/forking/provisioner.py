"""``sessionpool-fork``: a jupyter_client kernel provisioner that forks ipykernels from a warmed template.

Registered under the entry point name ``sessionpool-fork`` (group
``jupyter_client.kernel_provisioners``), so any tool that starts kernels through
jupyter_client gets fork-started kernels from a kernelspec's metadata::

    "metadata": {"kernel_provisioner": {"provisioner_name": "sessionpool-fork",
                                         "config": {"preload": ["numpy", "pandas"]}}}

or for every kernelspec with
``--KernelProvisionerFactory.default_provisioner_name=sessionpool-fork``. It is
jupyter_client's ``LocalProvisioner`` with another launch: the connection file, ports,
signals to the process group, kill, terminate, wait and clean-up are the local
provisioner's, driving a :class:`~.engine.ForkedProcess` where that one drives a ``Popen``.
A start it cannot fork (not an ipykernel, not Linux, a template that failed) is launched
as ``LocalProvisioner`` launches it, and the reason is logged once.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import List, Unicode

from .engine import ForkedProcess, Unservable, launch

_told: set[tuple[str, str]] = set()  # (kernelspec, reason) already logged


def tell_once(log: logging.Logger, level: int, kernel: str, reason: str) -> None:
    """Log why ``kernel``'s kernels are spawned, once per kernelspec and reason."""
    if (kernel, reason) not in _told:
        _told.add((kernel, reason))
        log.log(level, "kernelspec %r: kernels are spawned, not forked: %s", kernel, reason)


class ForkUnavailable(RuntimeError):
    """A start that had to be forked cannot be; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ForkProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Starts ipykernels by forking a warmed template of their interpreter; spawns what it cannot fork."""

    preload = List(
        Unicode(),
        help="Modules the template imports once, so that importing them in a fresh kernel is a "
        "dictionary lookup (e.g. ['numpy', 'pandas']). The template is made again when they change.",
    ).tag(config=True)

    holder: object | None = None
    """Who keeps this kernel's template (a pool); None keeps it for the life of this process."""
    forked = False
    """Whether the running kernel was forked (False: spawned, or not started)."""

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Fork the kernel ``cmd`` names from its template; launch it as LocalProvisioner does if that cannot be."""
        try:
            self.process = await self._fork(cmd, dict(kwargs))
        except Unservable as exc:
            self.forked = False
            return await self.spawn_instead(cmd, kwargs, exc)
        self.forked = True
        self.pid = self.pgid = self.process.pid  # the kernel leads its own session, as a spawned one
        self.cwd = kwargs.get("cwd") or pathlib.Path.cwd()
        return self.connection_info

    async def spawn_instead(self, cmd: list[str], kwargs: dict[str, Any], why: Unservable) -> KernelConnectionInfo:
        """Launch a start that cannot be forked as ``LocalProvisioner`` would, saying why once per kernelspec.

        Subclasses launch it their own way, or raise :class:`ForkUnavailable`.
        """
        name = self.kernel_spec.name if self.kernel_spec is not None else "?"
        tell_once(self.log, logging.WARNING if why.failure else logging.INFO, name, why.reason)
        return await super().launch_kernel(cmd, **kwargs)

    async def _fork(self, cmd: list[str], kwargs: dict[str, Any]) -> ForkedProcess:
        for name in ("extra_arguments", "kernel_id"):  # what LocalProvisioner scrubs before Popen
            kwargs.pop(name, None)
        if kwargs.pop("independent", False):
            raise Unservable("it was asked for an independent kernel, and a forked one dies with its template")
        if kwargs.pop("stdin", None) is not None:
            raise Unservable("it was given a stdin of its own")
        env = kwargs.pop("env", None)
        cwd = kwargs.pop("cwd", None)
        stdout, stderr = kwargs.pop("stdout", None), kwargs.pop("stderr", None)
        if kwargs:
            raise Unservable(f"it was asked for Popen options a fork cannot apply ({', '.join(sorted(kwargs))})")
        km = self.parent
        spec_dir = getattr(self.kernel_spec, "resource_dir", None)
        return await launch(
            cmd,
            connection_file=km.connection_file if km is not None else "",
            env=dict(os.environ if env is None else env),
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            preload=self.preload,
            spec_file=os.path.join(spec_dir, "kernel.json") if spec_dir else None,
            holder=self.holder,
        )

    async def get_provisioner_info(self) -> dict[str, Any]:
        """The local provisioner's info, plus whether the kernel was forked and from which template."""
        info = await super().get_provisioner_info()
        process = self.process
        template = process.template.pid if isinstance(process, ForkedProcess) else None
        info.update({"forked": self.forked, "template_pid": template, "preload": list(self.preload)})
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        """The inverse of :meth:`get_provisioner_info` (the process itself stays with its launcher)."""
        await super().load_provisioner_info(provisioner_info)
        self.forked = provisioner_info.get("forked", False)
        self.preload = provisioner_info.get("preload", [])
