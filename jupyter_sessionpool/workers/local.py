"""One pooled kernel: start it, prove it healthy, watch for its death, stop it.

A :class:`PooledKernel` is driven by the task that holds it (a starting task, a lease
holder, a stopping task), never by the pool's bookkeeping. Its exit is noticed the
moment the process ends (a pidfd on the event loop, no polling), which is what lets a
caller stuck mid-cell get ``KernelDied`` in milliseconds rather than at its timeout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import zmq
import zmq.asyncio
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner

from ..errors import KernelStartError, ProtocolError

# Kill the kernel if the process that launched it dies, even by SIGKILL: the kernel gets
# SIGKILL from Linux itself. ipykernel's own parent poller (1 s) is the second line.
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
_DEATH_SIGNAL = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []

# Put first on an ipykernel's PYTHONPATH: it skips loading debugpy at start (a quarter of the
# start's CPU) and then takes itself off the paths again; see _faststart/debugpy/__init__.py.
_FASTSTART = str(Path(__file__).resolve().parent / "_faststart")

_STDERR_TAIL_BYTES = 4000
_IOPUB_RESEND = 0.25  # seconds to wait for iopub before re-sending kernel_info (slow joiner)
_FAIR_SHARE = 16  # messages read back to back (already queued) before yielding to the event loop


class _PooledKernelManager(AsyncKernelManager):
    """An AsyncKernelManager whose local kernels die with the process that started them."""

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd = super().format_kernel_cmd(extra_arguments)
        if isinstance(self.provisioner, LocalProvisioner):
            return _DEATH_SIGNAL + cmd
        return cmd


class KernelExited(Exception):
    """Internal: the kernel process ended while we were waiting on it."""


class Inbox:
    """Messages from a kernel's shell and iopub sockets, in arrival order per socket.

    ``next()`` also returns early when the kernel exits, so nothing waits on a dead
    kernel. Pending receives are cancelled on ``close()``; pyzmq then leaves unread
    messages in the socket for the next reader.
    """

    def __init__(self, kernel: PooledKernel) -> None:
        self._kernel = kernel
        self._session = kernel.client.session
        self._socks = {"shell": kernel.client.shell_channel.socket, "iopub": kernel.client.iopub_channel.socket}
        self._pending: dict[Any, str] = {}
        self._streak = 0  # messages returned in a row without waiting on the event loop

    def _arm(self, channel: str) -> None:
        self._pending[self._socks[channel].recv_multipart()] = channel

    async def next(self, deadline: float | None) -> tuple[str, dict[str, Any]] | None:
        """The next (channel, message), or None when ``deadline`` (monotonic) passes first.

        Raises KernelExited as soon as the kernel's process has ended.
        """
        exited = self._kernel.exited
        while True:
            if exited.done():
                raise KernelExited(exited.result())
            if not self._pending:
                self._arm("shell")
                self._arm("iopub")
            for fut, channel in list(self._pending.items()):
                if fut.done():
                    self._streak += 1
                    if self._streak >= _FAIR_SHARE:  # a flood never yields by itself: let other sessions run
                        self._streak = 0
                        await asyncio.sleep(0)
                    return self._take(fut, channel)
            self._streak = 0
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait([*self._pending, exited], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return None

    def _take(self, fut: Any, channel: str) -> tuple[str, dict[str, Any]]:
        del self._pending[fut]
        if fut.cancelled() or fut.exception() is not None:
            raise ProtocolError(f"kernel {self._kernel.kernel_id[:8]}'s {channel} socket failed: {fut!r}")
        self._arm(channel)
        frames = fut.result()
        try:
            _, parts = self._session.feed_identities(frames, copy=True)
            return channel, self._session.deserialize(parts, content=True, copy=True)
        except Exception as exc:
            raise ProtocolError(f"kernel {self._kernel.kernel_id[:8]} sent an invalid message: {exc}") from exc

    def close(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()


class PooledKernel:
    """A kernel process plus its async client, with an exit future the pool can watch."""

    def __init__(
        self,
        kernel_id: str,
        kernel_name: str,
        runtime_dir: Path,
        context: zmq.asyncio.Context,
        *,
        transport: str = "ipc",
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        on_exit: Callable[[PooledKernel], None] | None = None,
    ) -> None:
        self.kernel_id = kernel_id
        self.kernel_name = kernel_name
        self.pid: int | None = None
        self._dir = runtime_dir
        self._context = context
        self._transport = transport
        self._env = env or {}
        self._cwd = cwd
        self._on_exit = on_exit
        self._log_path = runtime_dir / f"{kernel_id}.log"
        self._log: Any = None
        self._pidfd: int | None = None
        self._poller: asyncio.Task[None] | None = None
        self.km: _PooledKernelManager | None = None
        self.client: Any = None
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    # ---- start ------------------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        """Launch the kernel and return once it answered kernel_info and iopub is live.

        Raises KernelStartError (with the kernel's stderr tail) on any failure, after
        cleaning up whatever was started.
        """
        deadline = time.monotonic() + timeout
        try:
            await self._launch()
            await self._health_check(deadline)
        except asyncio.CancelledError:
            await self.shutdown(now=True)
            raise
        except Exception as exc:
            reason = self._failure_reason(exc)
            stderr = self.stderr_tail()
            await self.shutdown(now=True)
            raise KernelStartError(self.kernel_name, reason, stderr) from exc

    async def _launch(self) -> None:
        km = _PooledKernelManager(
            kernel_name=self.kernel_name,
            context=self._context,
            transport=self._transport,
            connection_file=str(self._dir / f"{self.kernel_id}.json"),
        )
        if self._transport == "ipc":
            km.ip = str(self._dir / self.kernel_id)  # a unique socket path per kernel: no collisions
        self.km = km
        self._log = open(self._log_path, "wb")  # noqa: SIM115 - closed in shutdown()
        env = {**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1", **self._env}
        extra = []
        if km.ipykernel:
            extra = ["--HistoryManager.hist_file=:memory:"]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [_FASTSTART, env.get("PYTHONPATH")]))
        await km.start_kernel(
            env=env, cwd=self._cwd, stdout=self._log, stderr=self._log, extra_arguments=extra
        )
        self.pid = getattr(km.provisioner, "pid", None)
        self._watch_exit()
        self.client = km.client(context=self._context)  # one zmq context (one I/O thread) per pool
        self.client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)

    async def _health_check(self, deadline: float) -> None:
        """kernel_info must be answered on shell, and some iopub message seen (subscription live)."""
        inbox = Inbox(self)
        try:
            self.client.kernel_info()
            replied = iopub_live = False
            while not (replied and iopub_live):
                wait_until = deadline if not replied else min(deadline, time.monotonic() + _IOPUB_RESEND)
                got = await inbox.next(wait_until)
                if got is None:
                    if time.monotonic() >= deadline:
                        raise TimeoutError("no kernel_info reply within the startup timeout")
                    self.client.kernel_info()  # iopub joined late: provoke another status message
                    continue
                channel, msg = got
                if channel == "iopub":
                    iopub_live = True
                elif msg["msg_type"] == "kernel_info_reply":
                    replied = True
        finally:
            inbox.close()

    def _failure_reason(self, exc: BaseException) -> str:
        if isinstance(exc, KernelExited):
            return f"the kernel process exited with code {exc.args[0]} during start-up"
        if isinstance(exc, TimeoutError):
            return str(exc) or "timed out"
        return f"{type(exc).__name__}: {exc}"

    def stderr_tail(self) -> str:
        """The last few KB the kernel wrote to stdout/stderr (both go to one log)."""
        try:
            with open(self._log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _STDERR_TAIL_BYTES))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # ---- liveness -----------------------------------------------------------------------

    def _watch_exit(self) -> None:
        loop = asyncio.get_running_loop()
        if self.pid is not None and hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except ProcessLookupError:
                self._mark_exited()
                return
            loop.add_reader(self._pidfd, self._on_pidfd)
        else:  # a provisioner without a local pid: ask it once a second
            self._poller = asyncio.ensure_future(self._poll_alive())

    def _on_pidfd(self) -> None:
        self._close_pidfd()
        self._mark_exited()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def _poll_alive(self) -> None:
        while self.km is not None and await self.km.is_alive():
            await asyncio.sleep(1.0)
        self._mark_exited()

    def _mark_exited(self) -> None:
        if self.exited.done():
            return
        process = getattr(self.km.provisioner, "process", None) if self.km else None
        code = process.poll() if process is not None else None  # reaps the zombie
        self.exited.set_result(code)
        if self._on_exit is not None:
            self._on_exit(self)

    @property
    def alive(self) -> bool:
        return self.km is not None and not self.exited.done()

    # ---- control --------------------------------------------------------------------------

    async def interrupt(self) -> None:
        """Interrupt the running cell (SIGINT or interrupt_request, as the kernelspec says)."""
        if self.alive:
            await self.km.interrupt_kernel()

    async def shutdown(self, timeout: float = 5.0, now: bool = False) -> None:
        """Ask the kernel to exit, kill it after ``timeout`` s (at once with ``now``), clean up."""
        km = self.km
        if km is None:
            return
        try:
            if not now and self.alive and km.has_kernel:
                await km.request_shutdown()
                try:
                    await asyncio.wait_for(asyncio.shield(self.exited), timeout)
                except TimeoutError:
                    pass
            if km.has_kernel:
                await km.shutdown_kernel(now=True)  # kills if still alive, removes connection + ipc files
        finally:
            self._close_pidfd()
            if self._poller is not None:
                self._poller.cancel()
            if not self.exited.done():
                self.exited.set_result(None)  # before closing sockets: readers see the exit, not a socket error
            if self.client is not None:
                self.client.stop_channels()
            if self._log is not None:
                self._log.close()
            self._log_path.unlink(missing_ok=True)
            self.km = None
