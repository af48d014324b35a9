"""Kernels on this machine, through jupyter_client: any kernelspec, any provisioner.

:class:`LocalWorkers` owns what one pool's local kernels share: a private 0700 runtime
directory (connection files, ipc sockets) and one zmq context. Each :class:`LocalWorker`
launches its kernel with jupyter_client's manager and reads it with one reader: plain
(non-asyncio) zmq sockets whose file descriptors the event loop watches
(``loop.add_reader``). zmq's descriptor is edge-triggered, so the reader drains a socket
that signalled until it is empty, looks at the shell socket again after every send, and hands at most ``_BATCH`` messages to the
:class:`~.base.Router` per loop callback before yielding: no future or task per message.
Death is noticed the moment the process ends (a pidfd on the loop), or by polling where
the system refuses pidfds.

``start_method`` picks the launch: a fork from a warmed template of the kernelspec's
interpreter (:mod:`jupyter_sessionpool.forking`, the ``sessionpool-fork`` provisioner), or
a spawn through jupyter_client's local provisioner. Either way the kernel gets the same
arguments, environment, working directory and log, and dies with the pool.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import hmac
import logging
import os
import shutil
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import KernelProvisionerFactory, LocalProvisioner
from jupyter_client.session import Session

from ..errors import KernelStartError, ProtocolError
from ..forking.engine import TEMPLATES, ForkedProcess, Unservable, plan
from ..forking.provisioner import ForkProvisioner, ForkUnavailable, tell_once
from .base import KernelExited, KernelWorker, Message, Request, Router, Workers

# Kill the kernel if the process that launched it dies, even by SIGKILL: the kernel gets
# SIGKILL from Linux itself. ipykernel's own parent poller (1 s) is the second line.
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
_DEATH_SIGNAL = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []

# Put first on an ipykernel's PYTHONPATH: it skips loading debugpy at start (a quarter of the
# start's CPU) and then takes itself off the paths again; see _faststart/debugpy/__init__.py.
_FASTSTART = str(Path(__file__).resolve().parent / "_faststart")

_STDERR_TAIL_BYTES = 4000
_IOPUB_RESEND = 0.25  # seconds to wait for iopub before re-sending kernel_info (slow joiner) ...
_IOPUB_AFTER_REPLY = 0.02  # ... or this long after its reply: a kernel that answered sends its idle at once
# How often a socket retries a connect the kernel refuses. It binds some 300 ms after its launch,
# and at zmq's default (100 ms) its first reply came up to 100 ms after it was up, and iopub later still.
_RECONNECT_MS = 10
_BATCH = 64  # messages handed to the router per loop callback before yielding to other work ...
_BATCH_BYTES = 256 << 10  # ... or this many bytes of them (a flood of 1 MB writes must not hog the loop)
_POLL_INTERVAL = 0.5  # seconds between liveness polls where no pidfd is available
_EXIT_REPORT_WAIT = 1.0  # seconds a forked kernel's death waits for its template's report of the exit code
_FORK_PROVISIONER, _LOCAL_PROVISIONER = "sessionpool-fork", "local-provisioner"
_MEMORY_HISTORY = "--HistoryManager.hist_file=:memory:"  # parallel kernels never lock one history file

log = logging.getLogger("jupyter_sessionpool")


def check_kernelspec(name: str) -> None:
    """Raise ValueError naming the problem if ``name`` is not a usable kernelspec (missing, unreadable, no argv)."""
    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(name)
    except NoSuchKernel:
        installed = ", ".join(sorted(ksm.find_kernel_specs())) or "none"
        raise ValueError(f"no kernelspec named {name!r}; installed: {installed}") from None
    except Exception as exc:  # unreadable kernel.json: name the file, not just the parser's complaint
        where = ksm.find_kernel_specs().get(name, "?")
        raise ValueError(f"kernelspec {name!r} cannot be read ({where}/kernel.json): {exc}") from None
    if not spec.argv and not spec.metadata.get("kernel_provisioner"):
        raise ValueError(f"kernelspec {name!r} has an empty argv: there is no command to start its kernels")


def reap_runtime_dirs() -> None:
    """Remove runtime directories left by pools whose process died (e.g. by SIGKILL).

    Their kernels died with them; what remains is connection files and sockets, harmless
    (0600 in a 0700 directory) but clutter. A directory is ``jsp-<pid>-*`` in the temp dir.
    """
    for path in Path(tempfile.gettempdir()).glob("jsp-*-*"):
        pid = path.name.split("-")[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


class _PooledKernelManager(AsyncKernelManager):
    """An AsyncKernelManager whose local kernels die with the process that started them.

    A spawned kernel gets ``setpriv --pdeathsig``; a forked one dies with its template,
    which dies with this process.
    """

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd = super().format_kernel_cmd(extra_arguments)
        if isinstance(self.provisioner, LocalProvisioner) and not isinstance(self.provisioner, ForkProvisioner):
            return _DEATH_SIGNAL + cmd
        return cmd


def _provisioner_of(km: AsyncKernelManager) -> tuple[str, dict[str, Any]]:
    """The provisioner jupyter_client would launch ``km``'s kernelspec with, and its config.

    The kernelspec's own (``metadata.kernel_provisioner``), else the configured default.
    """
    stanza = km.kernel_spec.metadata.get("kernel_provisioner") or {}
    if "provisioner_name" in stanza:
        return stanza["provisioner_name"], stanza.get("config") or {}
    return KernelProvisionerFactory.instance(parent=km.parent).default_provisioner_name, {}


def fork_plan(km: AsyncKernelManager, preload: list[str]) -> list[str]:
    """The ``preload`` list a forked start of ``km``'s kernelspec would use; Unservable if it cannot be forked.

    Checks what can be known before launching: the system, the kernelspec's provisioner and
    its argv. (A template that fails to start is found out at launch.)
    """
    name, config = _provisioner_of(km)
    if name not in (_LOCAL_PROVISIONER, _FORK_PROVISIONER):
        raise Unservable(f"it is launched by the kernel provisioner {name!r}")
    plan(km.kernel_spec.argv, "{connection_file}", {})
    return list(dict.fromkeys([*config.get("preload", []), *preload]))


def _with_faststart(env: dict[str, str]) -> str:
    """The PYTHONPATH that makes a spawned ipykernel start without debugpy (see _faststart/)."""
    return os.pathsep.join(filter(None, [_FASTSTART, env.get("PYTHONPATH")]))


class _PoolForkProvisioner(ForkProvisioner):
    """The pool's fork provisioner: a start it cannot fork is spawned as the pool spawns (``setpriv
    --pdeathsig``, no debugpy at start), saying why once; with ``strict`` it is refused instead."""

    strict = False

    async def spawn_instead(self, cmd: list[str], kwargs: dict[str, Any], why: Unservable) -> Any:
        if self.strict:
            raise ForkUnavailable(why.reason)
        tell_once(log, logging.WARNING if why.failure else logging.INFO, self.kernel_spec.name, why.reason)
        env = dict(kwargs.pop("env"))
        env["PYTHONPATH"] = _with_faststart(env)
        return await LocalProvisioner.launch_kernel(self, _DEATH_SIGNAL + cmd, env=env, **kwargs)


class LocalWorkers(Workers):
    """The local kernels of one pool: their 0700 runtime directory and their one zmq context.

    Each kernel is made from the pool's ``kernel_name``, ``transport``, ``env`` and ``cwd``.
    """

    def __init__(self, settings: Any) -> None:
        check_kernelspec(settings.kernel_name)
        super().__init__(settings)
        self.dir: Path | None = None
        # One zmq context, two faces: plain sockets for the readers, asyncio ones for jupyter_client.
        # The asyncio face owns it, because whichever owns it closes only the sockets it made
        # when it is destroyed, then waits for the rest: ours are closed by every stop, even a
        # cancelled one, while jupyter_client's may be left open by a cancelled shutdown (a pool
        # dropped as its loop ends), and would otherwise hang the context's end forever.
        self.async_context: zmq.asyncio.Context | None = None
        self.context: zmq.Context[Any] | None = None
        self._remove_dir: Any = None
        # What holds the fork templates these kernels use, until close() (or this object is dropped).
        self.holder = object()
        self._release_templates = weakref.finalize(self, TEMPLATES.release, self.holder)

    async def open(self) -> None:
        reap_runtime_dirs()
        self.dir = Path(tempfile.mkdtemp(prefix=f"jsp-{os.getpid()}-"))  # 0700; short: ipc paths < 107 bytes
        self._remove_dir = functools.partial(shutil.rmtree, self.dir, ignore_errors=True)
        atexit.register(self._remove_dir)
        self.async_context = zmq.asyncio.Context()
        self.context = zmq.Context.shadow(self.async_context.underlying)

    def new(self, kernel_id: str) -> LocalWorker:
        return LocalWorker(self, kernel_id)

    async def close(self) -> None:
        self._release_templates()
        if self.async_context is not None:
            self.async_context.destroy(linger=0)
        if self._remove_dir is not None:
            self._remove_dir()
            atexit.unregister(self._remove_dir)

    def __repr__(self) -> str:
        return f"<LocalWorkers kernel={self.settings.kernel_name!r} dir={str(self.dir)!r}>"


class LocalWorker(KernelWorker):
    """One local kernel process, its manager, and the reader that drains its sockets."""

    def __init__(self, workers: LocalWorkers, kernel_id: str) -> None:
        settings = workers.settings
        self.kernel_id = kernel_id
        self.kernel_name: str = settings.kernel_name
        self.router = Router()
        self._workers = workers
        self._transport: str = settings.transport
        self._env = {str(k): str(v) for k, v in settings.env.items()}
        self._cwd: str | None = settings.cwd
        self._start_method: str = settings.start_method
        self._preload: list[str] = list(settings.preload)
        self._ipykernel = False  # known once launched: what gets the pool's start-up cell
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[str] = self._loop.create_future()
        self._log_path = workers.dir / f"{kernel_id}.log"
        self._log: Any = None
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._poller: asyncio.Task[None] | None = None
        self._km: _PooledKernelManager | None = None
        self._client: Any = None
        self._session: Session | None = None
        self._sockets: list[tuple[str, zmq.Socket[Any]]] = []
        self._draining = False  # a drain is scheduled on the loop
        self._unread: set[int] = set()  # indices into _sockets that may hold messages
        self._iopub_seen = False
        self._started_at: float | None = None

    # ---- what the pool sees -----------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def client(self) -> Any:
        """An AsyncKernelClient of this kernel with its own sockets, made on first use.

        The pool's reader keeps its own sockets; this one is for callers who speak the
        protocol themselves (``Lease.client``). Its session announces each request it sends
        to the router (thread-safe: a blocking client on another thread may share it).
        """
        if self._client is None and self._km is not None:
            theirs = self._km.session
            session = _AnnouncingSession(
                key=theirs.key, signature_scheme=theirs.signature_scheme, username=theirs.username,
                announce=functools.partial(self._loop.call_soon_threadsafe, self.router.expect),
            )
            self._client = self._km.client(context=self._workers.async_context, session=session)
            self._client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        return self._client

    def evidence(self) -> str:
        """The last few KB the kernel wrote to stdout/stderr (both go to one log)."""
        try:
            with open(self._log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _STDERR_TAIL_BYTES))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        state = "exited" if self.exited.done() else self.router.execution_state or "starting"
        return f"<LocalWorker kernel={self.kernel_id!r} pid={self._pid} {state}>"

    # ---- start --------------------------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        try:
            await self._launch()
            await self._health_check(deadline)
        except asyncio.CancelledError:
            await self.stop(0, now=True)
            raise
        except KernelStartError:
            await self.stop(0, now=True)
            raise
        except Exception as exc:
            reason = self._failure_reason(exc)
            stderr = self.evidence()
            await self.stop(0, now=True)
            raise KernelStartError(self.kernel_name, reason, stderr) from exc
        self._started_at = time.monotonic()
        log.info("kernel %s started (pid %s) in %.2f s", self.kernel_id, self._pid, self._started_at - t0)

    def _manager(self) -> _PooledKernelManager:
        km = _PooledKernelManager(
            kernel_name=self.kernel_name,
            context=self._workers.async_context,
            transport=self._transport,
            connection_file=str(self._workers.dir / f"{self.kernel_id}.json"),
        )
        if self._transport == "ipc":
            km.ip = str(self._workers.dir / self.kernel_id)  # a unique socket path per kernel: no collisions
        return km

    async def _launch(self) -> None:
        self._log = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1", **self._env}
        km = self._km = self._manager()
        forking = self._start_method != "spawn"
        if forking:
            try:
                preload = fork_plan(km, self._preload)
            except Unservable as exc:
                self._cannot_fork(exc.reason)
                tell_once(log, logging.INFO, self.kernel_name, exc.reason)
                forking = False
        if forking:
            provisioner = _PoolForkProvisioner(kernel_spec=km.kernel_spec, parent=km, preload=preload)
            provisioner.strict = self._start_method == "fork"
            provisioner.holder = self._workers.holder
            km.provisioner = provisioner
            try:
                await km.start_kernel(env=env, cwd=self._cwd, stdout=self._log, stderr=self._log,
                                      extra_arguments=[_MEMORY_HISTORY])
            except ForkUnavailable as exc:
                km.cleanup_connection_file()
                self._cannot_fork(exc.reason, failed=True)
            self._ipykernel = True
        else:
            if _provisioner_of(km)[0] == _FORK_PROVISIONER:  # a spawn is jupyter_client's own local launch
                km.provisioner = LocalProvisioner(kernel_spec=km.kernel_spec, parent=km)
            extra = []
            self._ipykernel = km.ipykernel
            if km.ipykernel:
                extra = [_MEMORY_HISTORY]
                env["PYTHONPATH"] = _with_faststart(env)
            await km.start_kernel(env=env, cwd=self._cwd, stdout=self._log, stderr=self._log, extra_arguments=extra)
        self._pid = getattr(km.provisioner, "pid", None)
        self._watch_exit()
        self._connect(km)

    def _cannot_fork(self, reason: str, failed: bool = False) -> None:
        """With start_method='fork', a start that cannot be forked is an error no retry cures."""
        if self._start_method == "fork":
            what = "fix what stopped it, or" if failed else "start_method='fork' forks ipykernel kernelspecs on Linux only;"
            raise KernelStartError(
                self.kernel_name, f"it cannot be forked: {reason}", retryable=False,
                hint=f"{what} set start_method='auto' to spawn what cannot be forked (or 'spawn')",
            )

    def _connect(self, km: _PooledKernelManager) -> None:
        """Open the reader's own shell and iopub sockets and put them on the loop."""
        self._session = km.session
        info = km.get_connection_info()
        ctx = self._workers.context
        shell = ctx.socket(zmq.DEALER)  # zmq picks its identity: Lease.client's shell socket uses the session's
        iopub = ctx.socket(zmq.SUB)
        iopub.setsockopt(zmq.SUBSCRIBE, b"")
        for sock, port in ((shell, "shell_port"), (iopub, "iopub_port")):
            sock.linger = 0
            # No receive limit: at zmq's default (1,000 messages) a flooding cell lost output.
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_MS)
            sep = "-" if info["transport"] == "ipc" else ":"
            sock.connect(f"{info['transport']}://{info['ip']}{sep}{info[port]}")
        self._sockets = [("shell", shell), ("iopub", iopub)]
        for index, (_, sock) in enumerate(self._sockets):
            self._loop.add_reader(sock.FD, self._readable, index)

    async def _health_check(self, deadline: float) -> None:
        """kernel_info must be answered on shell, and some iopub message seen (subscription live)."""
        while True:
            request = self.request("kernel_info_request", {})
            try:
                wait_until = min(deadline, time.monotonic() + _IOPUB_RESEND)
                replied = False
                while not (replied and self._iopub_seen):
                    got = await request.next(wait_until)
                    if got is None:
                        break
                    if got[0] == "shell" and not replied:
                        replied = True  # the kernel is up: its idle follows at once, unless iopub has not joined yet
                        wait_until = min(wait_until, time.monotonic() + _IOPUB_AFTER_REPLY)
            finally:
                request.close()
            if replied and self._iopub_seen:  # that iopub message may have answered an earlier request
                if self._ipykernel:
                    await self.prepare(deadline)
                return
            if time.monotonic() >= deadline:
                raise TimeoutError("no kernel_info reply within the startup timeout")
            # no reply yet, or iopub joined late: ask again, which also provokes status messages

    def _failure_reason(self, exc: BaseException) -> str:
        if isinstance(exc, KernelExited):
            return f"the kernel process {exc.reason} during start-up"
        if isinstance(exc, TimeoutError):
            return str(exc) or "timed out"
        return f"{type(exc).__name__}: {exc}"

    # ---- the reader --------------------------------------------------------------------------

    def request(
        self, msg_type: str, content: dict[str, Any], channel: str = "shell", buffers: list[bytes] | None = None
    ) -> Request:
        if channel != "shell":
            raise ValueError(f"the local worker sends requests on shell only, not {channel!r}")
        if self._session is None or self.exited.done():
            raise KernelExited(self.exited.result() if self.exited.done() else "not started")
        msg = self._session.msg(msg_type, content)
        request = self.router.open(msg["header"]["msg_id"], channel)
        shell = self._sockets[0][1]
        self._session.send(shell, msg, buffers=buffers)
        if shell.get(zmq.EVENTS) & zmq.POLLIN:  # a send can consume the descriptor's edge: look again
            self._wake_reader(0)
        log.debug("kernel %s: sent %s %s", self.kernel_id, msg_type, request.msg_id)
        return request

    def _readable(self, index: int) -> None:
        """The loop saw socket ``index``'s descriptor signal: drain now, unless a drain is already due."""
        self._unread.add(index)
        if not self._draining:
            self._drain()

    def _wake_reader(self, index: int) -> None:
        """Socket ``index`` may hold messages: drain it soon."""
        self._unread.add(index)
        if not self._draining:
            self._draining = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Hand up to _BATCH waiting messages to the router; continue later if more wait.

        Only sockets that signalled are read, each until its ``EVENTS`` show no message
        waiting (which also re-arms its descriptor): an empty socket costs nothing, and one
        ``EVENTS`` query per message is cheaper than the ``zmq.Again`` that would end each
        drain (profiled: 2 µs against 5–9 µs).
        """
        self._draining = False
        budget, budget_bytes = _BATCH, _BATCH_BYTES
        for index, (channel, sock) in enumerate(self._sockets):
            if index not in self._unread:
                continue
            try:
                while budget > 0 and budget_bytes > 0:
                    if not sock.get(zmq.EVENTS) & zmq.POLLIN:
                        self._unread.discard(index)
                        break
                    frames = _recv_frames(sock)
                    budget -= 1
                    budget_bytes -= sum(map(len, frames))
                    self._take(channel, frames)
            except zmq.ZMQError:
                return  # closed under us by stop()
        if self._unread and not self._draining:
            self._draining = True
            self._loop.call_soon(self._drain)  # the budget ran out: keep draining, fairly

    def _take(self, channel: str, frames: list[bytes]) -> None:
        session = self._session
        try:
            msg = _unpack(session, frames)
        except Exception as exc:
            parent = _parent_msg_id(session, frames)
            log.warning("kernel %s sent an invalid %s message (%s); failing request %s",
                        self.kernel_id, channel, exc, parent or "<all open>")
            self.router.fail(parent, ProtocolError(
                f"kernel {self.kernel_id} sent an invalid {channel} message ({exc}); it was discarded"))
            return
        if channel == "iopub":
            self._iopub_seen = True
        try:
            self.router.deliver(channel, msg)
        except Exception as exc:  # a header of the wrong shape: the reader itself must go on
            log.warning("kernel %s sent a malformed %s message: %r", self.kernel_id, channel, exc)
            self.router.fail(None, ProtocolError(
                f"kernel {self.kernel_id} sent a malformed {channel} message ({exc!r}); it was discarded"))

    # ---- liveness -----------------------------------------------------------------------------

    def _watch_exit(self) -> None:
        if self._pid is not None and hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(self._pid)
            except ProcessLookupError:
                self._mark_exited()
                return
            except OSError as exc:  # ENOSYS/EPERM (gVisor, older seccomp profiles): poll instead
                log.warning("pidfd_open refused (%s); polling kernel %s for its exit", exc, self.kernel_id)
            else:
                self._loop.add_reader(self._pidfd, self._on_pidfd)
                return
        self._poller = asyncio.ensure_future(self._poll_alive())

    def _on_pidfd(self) -> None:
        self._close_pidfd()
        process = getattr(self._km.provisioner, "process", None) if self._km else None
        if isinstance(process, ForkedProcess) and process.poll() is None:
            # a forked kernel is its template's child: its exit code comes in the template's report
            self._loop.call_later(_EXIT_REPORT_WAIT, self._mark_exited)
            process.exit_code.add_done_callback(functools.partial(_call_soon, self._loop, self._mark_exited))
            return
        self._mark_exited()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def _poll_alive(self) -> None:
        while self._km is not None and await self._km.is_alive():
            await asyncio.sleep(_POLL_INTERVAL)
        self._mark_exited()

    def _mark_exited(self) -> None:
        if self.exited.done():
            return
        process = getattr(self._km.provisioner, "process", None) if self._km else None
        code = process.poll() if process is not None else None  # reaps the zombie
        reason = "exited" if code is None else f"exited with code {code}"
        self._set_exited(reason)

    def _set_exited(self, reason: str) -> None:
        if not self.exited.done():
            self.exited.set_result(reason)
            self.router.exited(reason)

    # ---- control ------------------------------------------------------------------------------

    async def interrupt(self) -> None:
        """Interrupt the running cell (SIGINT or interrupt_request, as the kernelspec says)."""
        if self.alive and self._km is not None:
            await self._km.interrupt_kernel()

    def kill(self) -> None:
        process = getattr(self._km.provisioner, "process", None) if self._km is not None else None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if self._km is not None:
            self._km.cleanup_connection_file()

    async def stop(self, timeout: float, now: bool = False) -> None:
        km = self._km
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
            self._km = None
            process = getattr(km.provisioner, "process", None)
            if process is not None and process.poll() is None:  # stop was cancelled mid-way: kill now
                process.kill()
                km.cleanup_connection_file()
            self._close_pidfd()
            if self._poller is not None:
                self._poller.cancel()
            self._set_exited("stopped")  # before closing sockets: readers see the exit, not a socket error
            for _, sock in self._sockets:
                self._loop.remove_reader(sock.FD)
                sock.close(linger=0)
            if self._client is not None:
                self._client.stop_channels()
            if self._log is not None:
                self._log.close()
            self._log_path.unlink(missing_ok=True)
            if self._started_at is not None:
                log.info("kernel %s stopped after %.1f s", self.kernel_id, time.monotonic() - self._started_at)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any, *_: Any) -> None:
    """Run ``callback`` on ``loop`` from any thread, unless the loop has closed."""
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:
        pass


class _AnnouncingSession(Session):
    """A Session that calls ``announce(msg_id)`` for every message it sends."""

    def __init__(self, announce: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._announce = announce

    def send(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        msg = super().send(*args, **kwargs)
        if msg is not None:
            self._announce(msg["header"]["msg_id"])
        return msg

    def sibling(self) -> _AnnouncingSession:
        """A session announcing to the same place under its own id, for a second client.

        jupyter_client names a client's shell socket after its session id, and ipykernel's
        ROUTER socket (``ROUTER_HANDOVER``) sends every reply to whichever peer of a name
        connected last: of two clients sharing a session, one loses its replies, and which one
        is a race (seen under load: a ``Lease.client`` reply never came).
        """
        return _AnnouncingSession(self._announce, key=self.key, signature_scheme=self.signature_scheme,
                                  username=self.username)


def _recv_frames(sock: zmq.Socket[Any]) -> list[bytes]:
    """One waiting multipart message, as ``recv_multipart`` returns it.

    A frame's ``more`` flag replaces the ``RCVMORE`` query ``recv_multipart`` makes after
    every frame, each a socket-option lookup through an enum: 8 µs a message against 12 µs.
    """
    frame = sock.recv(zmq.NOBLOCK, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(zmq.NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames


def _unpack(session: Session, frames: list[bytes]) -> Message:
    """A verified message from its frames: what ``Session.deserialize`` returns, minus its per-message extras.

    The signature is checked as ``deserialize`` checks it. Left out, because the pool uses
    none of them and they were most of the reader's cost per message (profiled): header
    dates parsed into datetimes, protocol adaptation (ipykernel speaks protocol 5), and
    the replay history of signatures (the sockets are private to this process and kernel).
    """
    start = frames.index(_DELIM) + 1
    signature, header, parent, metadata, content = frames[start:start + 5]
    if session.auth is not None:
        mac = session.auth.copy()
        for part in (header, parent, metadata, content):
            mac.update(part)
        if not hmac.compare_digest(signature, mac.hexdigest().encode("ascii")):
            raise ValueError(f"invalid signature {signature[:16]!r}")
    unpack = session.unpack  # a trait: look it up once
    head = unpack(header)
    return {
        "header": head,
        "msg_id": head["msg_id"],
        "msg_type": head["msg_type"],
        "parent_header": unpack(parent),
        "metadata": unpack(metadata),
        "content": unpack(content),
        "buffers": frames[start + 5:],
    }


_DELIM = b"<IDS|MSG>"


def _parent_msg_id(session: Session, frames: list[bytes]) -> str | None:
    """The parent msg_id of a message that failed to deserialize, if its parent header can be read."""
    try:
        _, parts = session.feed_identities(frames, copy=True)
        return session.unpack(parts[2]).get("msg_id") or None
    except Exception:
        return None
