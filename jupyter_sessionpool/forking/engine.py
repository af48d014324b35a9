"""The owner's side of fork-started kernels: templates, which one serves a start, and the forked processes.

:func:`launch` is the one entry point, used by the ``sessionpool-fork`` provisioner (and
through it by the pool's local worker). It reads a kernel command line the way a spawn
would run it; if the command is ``python [options] -m ipykernel_launcher ARGS`` (or
``-m ipykernel``) on Linux, it finds or starts the template for its :class:`Key` and has it
fork the kernel, returning once the kernel's sockets are bound. Anything else raises
:class:`Unservable` with the reason, and the caller spawns instead.

A :class:`Key` is everything a fork cannot change after the template started: the
interpreter and its options, the module and the kernel's arguments, the interpreter-level
environment (``PYTHON*``, ``VIRTUAL_ENV``, ``CONDA_PREFIX``, locale, ...), the ``preload``
list and the kernelspec file. A template is *stale* once its kernelspec file, interpreter
or the directories its modules came from change (an upgrade, an install): it is then
retired (it forks no more and exits after its last kernel) and the next start gets a
new one. A template that died is replaced the same way.

Each template is watched by a thread of its owner, which also started it: the template's
``PR_SET_PDEATHSIG`` refers to the thread that started it, and this one lives exactly as
long as the template. The thread reads the template's replies, fork results and exit
reports, and its output (kept as a short tail for error messages).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("jupyter_sessionpool")

TEMPLATE_SCRIPT = str(Path(__file__).resolve().with_name("template.py"))
READY_TIMEOUT = 30.0
"""Seconds :func:`launch` waits for a forked kernel to bind its sockets before returning anyway
(a kernel that takes longer is still starting; its client connects when it can)."""

_KERNEL_MODULES = ("ipykernel_launcher", "ipykernel")
_OPTIONS_WITH_VALUE = frozenset({"-X", "-W", "--check-hash-based-pycs"})
# Environment read when an interpreter (or a module the template imports) starts, which a
# forked kernel cannot change: these pick the template. Everything else is set per kernel.
_INTERPRETER_PREFIXES = ("PYTHON", "PYDEVD_", "DEBUGPY_")
_INTERPRETER_ENV = frozenset({
    "VIRTUAL_ENV", "CONDA_PREFIX", "LD_PRELOAD", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "LC_CTYPE",
    "USER",  # jupyter_client's Session.username default
    "IPYTHON_SUPPRESS_CONFIG_ERRORS",
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",  # read by numpy's BLAS when preloaded
})
_PER_START_ENV = ("JPY_PARENT_PID", "JPY_SESSION_NAME")  # never part of a template's own environment
_TAIL_BYTES = 4000
_MAX_PACKET = 64 << 10
# A template whose imports failed is not started again for every kernel (each would pay its
# failed start before spawning) until its sources change, or this long has passed.
_RETRY_FAILED_AFTER = 60.0
_IDLE_GRACE = 60.0  # seconds an unheld template without kernels lives on, for the next pool
_IDLE_CHECK = 5.0  # seconds between its watcher's looks at that
_LOST_GRACE = 5.0  # seconds to wait for a lost template's kernels to die of its death


class Unservable(Exception):
    """This start cannot be forked; ``reason`` says why. The caller spawns the kernel instead.

    ``failure`` is True where forking was possible but failed (a template that would not
    start, a fork refused), False where the start is simply not one a template serves.
    """

    def __init__(self, reason: str, failure: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failure = failure


class _TemplateLost(Unservable):
    """The template died while a fork request was in flight: worth one try on a new template."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, failure=True)


def interpreter_level(name: str) -> bool:
    """True for an environment variable that is read when the interpreter starts (so it picks the template)."""
    return name.startswith(_INTERPRETER_PREFIXES) or name in _INTERPRETER_ENV


@dataclass(frozen=True)
class Key:
    """What a template is made for: starts with an equal key can be forked from it."""

    python: str
    options: tuple[str, ...]
    module: str
    args: tuple[str, ...]  # the kernel's arguments, its connection file as "{connection_file}"
    env: tuple[tuple[str, str], ...]  # the interpreter-level part of the environment
    preload: tuple[str, ...]
    spec_file: str | None

    def family(self) -> tuple[Any, ...]:
        """Everything but the environment: what one template serves (its env must then match)."""
        return (self.python, self.options, self.module, self.args, self.preload, self.spec_file)

    def describe(self) -> str:
        preload = f" preload={list(self.preload)}" if self.preload else ""
        return f"{self.python} -m {self.module}{preload}"


def plan(cmd: Sequence[str], connection_file: str, env: dict[str, str], preload: Sequence[str] = (),
         spec_file: str | None = None) -> tuple[Key, list[str]]:
    """The template key of a kernel command line, and the kernel's own arguments (``sys.argv[1:]``).

    Raises :class:`Unservable` for anything but ``python [options] -m ipykernel_launcher ...``
    (or ``-m ipykernel``) on Linux.
    """
    if not sys.platform.startswith("linux"):
        raise Unservable(f"fork-started kernels need Linux, and this is {sys.platform}")
    if not cmd:
        raise Unservable("the kernelspec has an empty argv")
    # jupyter_client runs these names as its own interpreter (KernelManager.format_kernel_cmd)
    own = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    if cmd[0] not in own and not shutil.which(cmd[0]):
        raise Unservable(f"its interpreter {cmd[0]!r} was not found")
    rest, options, index = list(cmd[1:]), [], 0
    not_ipykernel = Unservable(
        f"its argv ({' '.join(map(str, cmd[:4]))}{' ...' if len(cmd) > 4 else ''}) is not "
        "`python [options] -m ipykernel_launcher ...`: not an ipykernel")
    while index < len(rest) and rest[index] != "-m":
        token = rest[index]
        if not token.startswith("-") or token in ("-", "-c", "-i"):
            raise not_ipykernel
        options.append(token)
        if token in _OPTIONS_WITH_VALUE and index + 1 < len(rest):
            index += 1
            options.append(rest[index])
        index += 1
    if index + 1 >= len(rest) or rest[index + 1] not in _KERNEL_MODULES:
        raise not_ipykernel
    args = rest[index + 2:]
    real = os.path.realpath(connection_file)
    key_args = tuple("{connection_file}" if a in (connection_file, real) else a for a in args)
    key_env = tuple(sorted((k, v) for k, v in env.items() if interpreter_level(k)))
    return Key(cmd[0], tuple(options), rest[index + 1], key_args, key_env, tuple(preload), spec_file), args


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino


class ForkedProcess:
    """A forked kernel, shown as :class:`subprocess.Popen` shows a spawned one.

    ``pid``, ``returncode``, :meth:`poll`, :meth:`wait`, :meth:`send_signal`,
    :meth:`terminate`, :meth:`kill`: jupyter_client's ``LocalProvisioner`` and the pool drive
    it as they drive a ``Popen``. The kernel is its template's child, not ours, so its exit
    code comes from the template's report (``exit_code``); signals go through a pidfd, which
    cannot reach another process that reused the pid.
    """

    stdin = stdout = stderr = None

    def __init__(self, pid: int, args: list[str], template: Template) -> None:
        self.pid = pid
        self.args = args
        self.template = template
        self.returncode: int | None = None
        self.exit_code: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._lock = threading.Lock()
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfds (gVisor, old kernels), or it is already gone
            self._pidfd = None

    def poll(self) -> int | None:
        if self.exit_code.done():
            self.returncode = self.exit_code.result()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        try:
            self.returncode = self.exit_code.result(timeout)
        except concurrent.futures.TimeoutError:
            raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self.exit_code.done():
                return
            try:
                if self._pidfd is not None:
                    signal.pidfd_send_signal(self._pidfd, sig)
                else:
                    os.kill(self.pid, sig)
            except ProcessLookupError:
                pass  # exited; its report is on the way

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _gone(self) -> bool:
        """True once the process has ended (used when no report will come: its template died)."""
        with self._lock:
            if self._pidfd is not None:
                return bool(select.select([self._pidfd], [], [], 0)[0])
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def _exited(self, code: int) -> None:
        with self._lock:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self.returncode = code
            if not self.exit_code.done():
                self.exit_code.set_result(code)

    def __repr__(self) -> str:
        return f"<ForkedProcess pid={self.pid} returncode={self.returncode} template={self.template.pid}>"


class _Request:
    def __init__(self, args: list[str]) -> None:
        self.args = args  # the command line a spawn would have run, as Popen.args
        self.future: concurrent.futures.Future[ForkedProcess] = concurrent.futures.Future()
        self.abandoned = False  # its caller gave up: kill what it forks


class Template:
    """One template process, the thread that started and watches it, and its kernels."""

    def __init__(self, key: Key, env: dict[str, str]) -> None:
        self.key = key
        self.ready: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self.pid: int | None = None
        self.retired = False
        self.lost = False
        self.failed_at: float | None = None  # when it failed to start (its imports failed)
        self.kept = False  # kept while this process lives (the provisioner's)
        self._holders: set[object] = set()  # the pools using it
        self._unheld_since: float | None = time.monotonic()
        self.ended: concurrent.futures.Future[None] = concurrent.futures.Future()  # resolved once it has exited
        self._fingerprint = [(p, _stat(p)) for p in (key.python, key.spec_file) if p]
        self._sources: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._channel: socket.socket | None = None
        self._ids = itertools.count()
        self._requests: dict[int, _Request] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._tail = bytearray()
        self._thread = threading.Thread(target=self._run, args=(env,), daemon=True,
                                        name=f"jupyter-sessionpool-template-{key.module}")
        self._thread.start()

    # ---- what the registry asks -----------------------------------------------------------

    def stale(self) -> str | None:
        """Why this template no longer matches what a spawned kernel would load, or None."""
        for path, before in self._fingerprint:
            if _stat(path) != before:
                return f"{path} changed"
        for path, mtime in self._sources:
            now = _stat(path)
            if now is None or now[0] != mtime:
                return f"{path} changed"
        return None

    def hold(self, holder: object | None) -> None:
        with self._lock:
            if holder is None:
                self.kept = True
            else:
                self._holders.add(holder)
            self._unheld_since = None

    def unhold(self, holder: object) -> None:
        with self._lock:
            if holder in self._holders:
                self._holders.discard(holder)
                if not self._holders and not self.kept:
                    self._unheld_since = time.monotonic()

    def in_use(self) -> bool:
        """Held by a pool or the provisioner, or serving kernels."""
        with self._lock:
            return bool(self.kept or self._holders or self._children or self._requests)

    def _retire_if_unused(self) -> None:
        with self._lock:
            since = self._unheld_since
            unused = not (self.kept or self._holders or self._children or self._requests)
        if unused and since is not None and time.monotonic() - since > _IDLE_GRACE and not self.retired:
            log.info("retiring the fork template %s: unused for %g s", self.pid, _IDLE_GRACE)
            self.retire()

    def retire(self) -> None:
        """Fork no more; the template exits after its last kernel (they keep running)."""
        with self._lock:
            if self.retired:
                return
            self.retired = True
            if self._channel is not None and not self.lost:
                try:
                    self._channel.send(b'{"op": "retire"}')
                except OSError:
                    pass

    def abandon(self, request: _Request) -> None:
        """The caller of ``request`` gave up: kill its kernel, now if forked already, else once it is."""
        with self._lock:
            request.abandoned = True
            if request.future.done() and request.future.exception() is None:
                request.future.result().kill()


    def tail(self) -> str:
        """The last few KB the template wrote (its stdout and stderr)."""
        return bytes(self._tail).decode("utf-8", "replace")

    # ---- forking ------------------------------------------------------------------------

    def fork(self, args: list[str], orig_argv: list[str], env: dict[str, str], cwd: str,
             fds: Sequence[int]) -> _Request:
        """Send one fork request (from any thread); its ``future`` gets the ForkedProcess."""
        request = _Request(orig_argv)
        message = {"op": "fork", "args": args, "orig_argv": orig_argv, "env": env, "cwd": cwd}
        with self._lock:
            if self.lost or self.retired:
                raise _TemplateLost("the template is gone")
            message["id"] = ident = next(self._ids)
            payload = json.dumps(message).encode()
            if len(payload) > _MAX_PACKET:
                raise Unservable(f"its environment and arguments are {len(payload)} bytes, over {_MAX_PACKET}")
            self._requests[ident] = request
            try:
                socket.send_fds(self._channel, [payload], list(fds))
            except OSError as exc:
                del self._requests[ident]
                raise _TemplateLost(f"the template's channel failed ({exc})") from None
        return request

    # ---- the watching thread -------------------------------------------------------------

    def _run(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [self.key.python, *self.key.options, TEMPLATE_SCRIPT, str(theirs.fileno()), str(os.getpid())]
        try:
            process = subprocess.Popen(
                cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=env, cwd="/", start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            self.lost = True
            self.ready.set_exception(Unservable(f"its interpreter could not be started ({exc})", failure=True))
            self.ended.set_result(None)
            return
        finally:
            theirs.close()
        self.pid = process.pid
        try:
            with self._lock:
                self._channel = ours
                ours.send(json.dumps({"preload": list(self.key.preload), "module": self.key.module}).encode())
                if self.retired:  # retired while it was being started
                    ours.send(b'{"op": "retire"}')
            self._read(ours, process)
        except Exception as exc:  # a broken channel: the template is as good as gone
            log.warning("lost the fork template %s: %r", self.pid, exc)
        finally:
            process.kill()
            process.wait()
            self._lost(process.returncode)
            with self._lock:
                ours.close()
            self.ended.set_result(None)

    def _read(self, channel: socket.socket, process: subprocess.Popen[bytes]) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(channel, selectors.EVENT_READ)
            selector.register(process.stdout, selectors.EVENT_READ)
            while True:
                self._retire_if_unused()
                for key, _ in selector.select(_IDLE_CHECK):
                    if key.fileobj is channel:
                        data, fds, _, _ = socket.recv_fds(channel, _MAX_PACKET, 1)
                        for fd in fds:
                            os.close(fd)
                        if not data:
                            return
                        self._dispatch(json.loads(data))
                    else:
                        chunk = os.read(process.stdout.fileno(), 1 << 16)
                        if not chunk:
                            selector.unregister(process.stdout)
                        self._tail += chunk
                        del self._tail[:-_TAIL_BYTES]

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "exit" in message:
            with self._lock:
                child = self._children.pop(message["exit"], None)
            if child is not None:
                child._exited(message["code"])
        elif "id" in message:
            with self._lock:
                request = self._requests.pop(message["id"])
            if "error" in message:
                request.future.set_exception(Unservable(f"the template could not fork: {message['error']}", failure=True))
                return
            child = ForkedProcess(message["pid"], request.args, self)
            with self._lock:
                self._children[child.pid] = child
                if request.abandoned:
                    child.kill()
                request.future.set_result(child)
        elif "ready" in message:
            self._sources = [(path, mtime) for path, mtime in message["sources"]]
            self.ready.set_result(message["ready"])
        elif "error" in message:
            self._sources = [(path, mtime) for path, mtime in message["sources"]]
            self.failed_at = time.monotonic()
            self.ready.set_exception(Unservable(f"its template failed to start: {message['error']}", failure=True))

    def _lost(self, code: int | None) -> None:
        """The template exited: fail what waits on it; its kernels die of its death (PDEATHSIG)."""
        with self._lock:
            self.lost = True
            requests, self._requests = list(self._requests.values()), {}
            children, self._children = list(self._children.values()), {}
        if not self.ready.done():
            tail = self.tail().strip()
            self.ready.set_exception(Unservable(
                f"its template exited with code {code} while starting" + (f":\n{tail}" if tail else ""), failure=True))
        for request in requests:
            request.future.set_exception(_TemplateLost(f"its template exited with code {code} while forking"))
        deadline = time.monotonic() + _LOST_GRACE
        while children and time.monotonic() < deadline:
            for child in [c for c in children if c._gone()]:
                child._exited(-signal.SIGKILL)
                children.remove(child)
            if children:
                time.sleep(0.01)
        for child in children:
            child._exited(-signal.SIGKILL)

    def __repr__(self) -> str:
        state = "lost" if self.lost else "retired" if self.retired else "ready" if self.ready.done() else "starting"
        return f"<Template pid={self.pid} {self.key.describe()} kernels={len(self._children)} {state}>"


class Templates:
    """This process's templates: found for a start, replaced when dead or stale, retired when unused.

    One template per *family* (the parts of a :class:`Key` other than the environment), shared
    by every pool of this process and by the provisioner. A start whose interpreter-level
    environment differs from its family's live template is not forked (it is spawned),
    unless nobody uses that template: it is then replaced. Pools hold the templates they
    use until they close; the provisioner's are kept while this process lives; a template
    neither holds is retired after ``_IDLE_GRACE`` seconds without kernels.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_family: dict[tuple[Any, ...], Template] = {}
        self._all: set[Template] = set()  # every template not yet exited, retired ones included

    def get(self, key: Key, env: dict[str, str], holder: object | None) -> Template:
        """The live template for ``key``, started if there is none, now held by ``holder`` (None: kept for good).

        Raises :class:`Unservable` if the family's template, in use, has another interpreter-level environment.
        """
        family = key.family()
        with self._lock:
            for other, template in list(self._by_family.items()):
                why = template.stale() if template.ready.done() else None
                failed = template.failed_at is not None
                if failed and not why and time.monotonic() - template.failed_at > _RETRY_FAILED_AFTER:
                    why = f"it failed to start {_RETRY_FAILED_AFTER:g} s ago; trying again"
                if (template.lost and not failed) or template.retired or why:
                    if why:
                        log.info("retiring the fork template %s of %s: %s", template.pid, template.key.describe(), why)
                    self._by_family.pop(other).retire()
            template = self._by_family.get(family)
            if template is not None and template.key.env != key.env:
                if template.in_use():
                    theirs, ours = dict(template.key.env), dict(key.env)
                    names = sorted(n for n in theirs.keys() | ours.keys() if theirs.get(n) != ours.get(n))
                    raise Unservable(f"no template matches its interpreter-level environment ({', '.join(names)} "
                                     f"differ from the template {template.pid}'s, which is in use)")
                self._by_family.pop(family).retire()
                template = None
            if template is None:
                own_env = {k: v for k, v in env.items() if k not in _PER_START_ENV}
                template = self._by_family[family] = Template(key, own_env)
                self._all.add(template)
                template.ended.add_done_callback(lambda _: self._all.discard(template))
            template.hold(holder)
            return template

    def release(self, holder: object) -> None:
        """``holder`` (a pool) is done with its templates; those nobody else uses retire after a grace period."""
        with self._lock:
            for template in self._by_family.values():
                template.unhold(holder)

    def stop(self, timeout: float = 10.0) -> bool:
        """Retire every template and wait up to ``timeout`` s for them to exit (after their kernels).

        Returns False if some are still running then (their kernels still run).
        """
        with self._lock:
            self._by_family.clear()
            templates = list(self._all)
        for template in templates:
            template.retire()
        _, running = concurrent.futures.wait([t.ended for t in templates], timeout)
        return not running

    def __iter__(self) -> Any:
        """The templates that have not exited yet, retired ones included."""
        with self._lock:
            return iter(list(self._all))


TEMPLATES = Templates()
"""The templates of this process (a pool's, a Jupyter Server's)."""


def stop_templates(timeout: float = 10.0) -> bool:
    """Retire this process's fork templates and wait for them to exit; False if some still serve live kernels."""
    return TEMPLATES.stop(timeout)


async def _result(future: concurrent.futures.Future[Any]) -> Any:
    """Await a future resolved by a template thread, without cancelling it when the awaiting task is cancelled."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def relay(_: concurrent.futures.Future[Any]) -> None:
        def settle() -> None:
            if not waiter.done():
                waiter.set_result(None)

        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop closed meanwhile: nobody waits any more
            pass

    future.add_done_callback(relay)
    await waiter
    return future.result()


async def _readable(fd: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    loop.add_reader(fd, lambda: waiter.done() or waiter.set_result(None))
    try:
        await asyncio.wait_for(waiter, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


def _fd(stream: Any, default: int) -> tuple[int, bool]:
    """A descriptor for a Popen-style stdout/stderr argument, and whether we opened it."""
    if stream is None:
        return default, False
    if stream == subprocess.DEVNULL:
        return os.open(os.devnull, os.O_RDWR), True
    if isinstance(stream, int) and stream >= 0:
        return stream, False
    if hasattr(stream, "fileno"):
        return stream.fileno(), False
    raise Unservable(f"a stream of {stream!r} (only files, descriptors, None or DEVNULL can be forked)")


async def launch(
    cmd: Sequence[str],
    *,
    connection_file: str,
    env: dict[str, str],
    cwd: str | os.PathLike[str] | None = None,
    stdout: Any = None,
    stderr: Any = None,
    preload: Sequence[str] = (),
    spec_file: str | None = None,
    holder: object | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> ForkedProcess:
    """Fork the kernel ``cmd`` would spawn, from the template that matches it; return once it is bound.

    ``env``, ``cwd``, ``stdout`` and ``stderr`` mean what they mean to ``Popen`` (None: this
    process's cwd and streams). ``holder`` is the pool whose template it is (its templates
    are retired by :meth:`Templates.release`); None: this process's, kept while it lives.
    Raises :class:`Unservable` (with the reason) where no template can serve the start.
    Cancelling it kills a kernel already forked.
    """
    key, args = plan(cmd, connection_file, env, preload, spec_file)
    cwd = os.fspath(cwd) if cwd is not None else os.getcwd()
    for attempt in (1, 2):
        template = TEMPLATES.get(key, env, holder)
        await _result(template.ready)
        try:
            return await _fork(template, args, list(cmd), env, cwd, stdout, stderr, ready_timeout)
        except _TemplateLost:
            if attempt == 2:
                raise
            log.warning("the fork template %s died while forking; starting a new one", template.pid)
    raise AssertionError("unreachable")


async def _fork(template: Template, args: list[str], cmd: list[str], env: dict[str, str], cwd: str,
                stdout: Any, stderr: Any, ready_timeout: float) -> ForkedProcess:
    out, close_out = _fd(stdout, 1)
    err, close_err = _fd(stderr, 2)
    stdin_read, stdin_write = os.pipe()  # as jupyter_client's launch: a pipe whose writer is closed at once
    ready_read, ready_write = os.pipe()
    child_env = {**env, "JPY_PARENT_PID": str(template.pid)}
    try:
        request = template.fork(args, cmd, child_env, cwd, [stdin_read, out, err, ready_write])
    except BaseException:
        os.close(ready_read)
        raise
    finally:
        for fd in (stdin_read, stdin_write, ready_write):
            os.close(fd)
        for fd, opened in ((out, close_out), (err, close_err)):
            if opened:
                os.close(fd)
    child: ForkedProcess | None = None
    try:
        child = await _result(request.future)
        if await _readable(ready_read, ready_timeout):
            os.read(ready_read, 1)  # b"1": bound; b"": it exited first (poll() tells how)
        else:
            log.warning("forked kernel %s did not bind its sockets within %g s; still starting", child.pid, ready_timeout)
        return child
    except BaseException:
        template.abandon(request)
        if child is not None:
            child.kill()
        raise
    finally:
        os.close(ready_read)
