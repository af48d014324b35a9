"""The sessions of the service: named sessions on the pool, each with its own directory and clocks.

:class:`SessionService` is what the HTTP API and the MCP tools share. It knows nothing of
HTTP or MCP: it turns requests into calls on :class:`~jupyter_sessionpool.AsyncKernelPool`
(the public API only) and keeps, per session, what a service adds to a pool session:

- a **working directory** of its own under the service's root, which is its kernel's cwd
  (a prewarmed Python kernel is moved there, with the session's ``env``, by a hidden
  history-less cell after the handover; kernels of other languages are started there);
- **three clocks**: the execution timeout (the pool's: interrupt, then replace), an idle
  timeout reset by activity, and a maximum lifetime. A session the service expires is
  released and answers its next request with ``SessionLost`` once, exactly as a session
  whose kernel died does in the pool: never a hang, never a fresh kernel posing as the old one.

Nothing here waits behind a kernel: describing, listing, interrupting and releasing are
bookkeeping plus signals, so they answer while every kernel is busy.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import shutil
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from .._setup import python_setup_code
from ..config import check_session, check_timeout
from ..errors import PoolClosed, PoolError, SessionLost
from ..pool import AsyncKernelPool
from ..results import ExecutionResult, OutputCallback
from . import files
from .errors import BadRequest, Conflict, NotFound, PayloadTooLarge

log = logging.getLogger("jupyter_sessionpool")

_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._~-]*")
_LOST_MEMORY = 1024  # expired sessions remembered for their one SessionLost; the oldest is forgotten past this
_SETUP_TIMEOUT = 60.0


def check_id(session: Any) -> str:
    """Return ``session`` if it is a valid service session id, else raise BadRequest.

    The pool's rules (1-200 printable characters) and URL-safe: letters, digits and
    ``-._~``, not starting with ``.`` or ``~`` (an id names the session's directory too).
    """
    try:
        check_session(session)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"bad session id: {exc}") from None
    if session is None or not _ID.fullmatch(session):
        raise BadRequest(
            f"bad session id {session!r}: use 1-200 letters, digits and '-', '_', '.', '~', "
            "starting with a letter, a digit, '-' or '_'"
        )
    return session


def pool_config(config: Any) -> Any:
    """The pool's part of a traitlets ``config``: ``AsyncKernelPool`` over ``KernelPool`` over ``PoolSettings``.

    Users know the blocking pool's name from ``%config KernelPool.x``; the service's pool is an
    AsyncKernelPool, so either section configures it (the more specific one wins).
    """
    from traitlets.config import Config

    merged = Config()
    for section in ("PoolSettings", "KernelPool", "AsyncKernelPool"):
        if section in config:
            merged.AsyncKernelPool.merge(config[section])
    return merged


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(eq=False)
class Session:
    """One named session as the service sees it; the kernel itself is the pool's."""

    id: str
    kernel_name: str
    env: dict[str, str]
    idle_timeout: float | None
    directory: Path
    pool: AsyncKernelPool
    python: bool  # gets the hidden set-up cell (cwd, env) after each handover
    own_pool: bool  # a pool of its own, started in its directory (kernels of other languages)
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    kernel_id: str | None = None  # the kernel that ran this session's set-up
    running: int = 0  # requests of the service holding or waiting for this session's kernel
    restarted: bool = False
    ended: str | None = None  # why the service ended it (released, expired), for requests in flight
    timer: asyncio.TimerHandle | None = None


class SessionService:
    """Named sessions with directories and clocks on a pool; shared by the HTTP API and MCP.

    ``pool_options`` are the settings of the pool (any PoolSettings trait; ``config`` too);
    the service owns the pool, starts it in :meth:`start` and stops it in :meth:`shutdown`.
    ``root_dir`` holds one directory per session (None: a private temporary directory,
    removed at shutdown). ``idle_timeout`` (reset by each request on the session) and
    ``max_lifetime`` are seconds or None; ``max_code_size`` bounds a cell's source in
    characters, ``max_upload_size`` an uploaded file in bytes.
    """

    def __init__(
        self,
        pool_options: dict[str, Any],
        root_dir: str | Path | None = None,
        idle_timeout: float | None = None,
        max_lifetime: float | None = None,
        max_code_size: int = 1_000_000,
        max_upload_size: int = 100 << 20,
    ) -> None:
        self.pool = AsyncKernelPool(**pool_options)
        # Idle expiry is the service's own (a per-session clock, SessionLost afterwards): the pool's
        # session_idle_timeout releases silently, so the service takes it as its default instead.
        pool_idle, self.pool.session_idle_timeout = self.pool.session_idle_timeout, None
        self.idle_timeout = check_timeout(idle_timeout if idle_timeout is not None else pool_idle, "idle_timeout")
        self.max_lifetime = check_timeout(max_lifetime, "max_lifetime")
        self.max_code_size = max_code_size
        self.max_upload_size = max_upload_size
        self._options = {**pool_options, "session_idle_timeout": None}  # for the pools of other kernels
        self.remote = bool(self.pool.gateway_url)
        self._pools: dict[str, AsyncKernelPool] = {self.pool.kernel_name: self.pool}
        self._own_root = root_dir is None
        self.root = Path(root_dir if root_dir is not None else tempfile.mkdtemp(prefix="jupyter-sessionpool-"))
        self.sessions: dict[str, Session] = {}
        self._lost: OrderedDict[str, str] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dropping: dict[str, asyncio.Task[Any]] = {}  # sessions being released, by id
        self._closed = False

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> SessionService:
        """Create the root directory and start the pool (prewarming its ``min_idle`` kernels)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()
        files.uploads_dir(self.root).mkdir(exist_ok=True)
        await self.pool.start()
        return self

    async def shutdown(self) -> None:
        """Release every session (kernels and directories) and stop the pools. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for session in list(self.sessions.values()):
            self._forget(session, "the service shut down")
        await asyncio.gather(*(pool.shutdown() for pool in self._all_pools()), return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            shutil.rmtree(files.uploads_dir(self.root), ignore_errors=True)

    def _all_pools(self) -> list[AsyncKernelPool]:
        own = [s.pool for s in self.sessions.values() if s.own_pool]
        return [*self._pools.values(), *own]

    # ---- sessions ------------------------------------------------------------------------

    def get(self, session_id: str) -> Session:
        """The live session ``session_id``; SessionLost once if the service expired it, else NotFound."""
        session_id = check_id(session_id)
        self._take_lost(session_id)
        session = self.sessions.get(session_id)
        if session is None:
            raise NotFound(f"no session {session_id!r}; create it with PUT (or run code in it, which creates it)")
        return session

    def _take_lost(self, session_id: str) -> None:
        reason = self._lost.pop(session_id, None)
        if reason is not None:
            raise SessionLost(session_id, reason)

    async def open(
        self,
        session_id: str,
        kernel_name: str | None = None,
        env: Any = None,
        idle_timeout: Any = None,
    ) -> tuple[Session, bool]:
        """Get or create session ``session_id``; True when created. A new session holds its kernel on return.

        Raises SessionLost once for a session that expired (or whose kernel was lost), and
        the pool's errors (CheckoutTimeout, KernelStartError) when no kernel can be had.
        """
        session, created = await self._ensure(session_id, kernel_name, env, idle_timeout)
        if created:
            await self._hold(session, None)
        return session, created  # an existing one is not checked out: a busy session answers at once too

    async def _ensure(self, session_id: str, kernel_name: Any, env: Any, idle_timeout: Any) -> tuple[Session, bool]:
        """The session ``session_id``, recorded (not yet holding a kernel) if it is new; True when new."""
        session_id = check_id(session_id)
        self._take_lost(session_id)
        while (dropping := self._dropping.get(session_id)) is not None:
            # an earlier session of this name is still going: its kernel must never serve this one
            await asyncio.wait([dropping])
        if self._closed:
            raise PoolClosed("the service is shutting down; its sessions are released")
        existing = self.sessions.get(session_id)
        if existing is None:
            return self._new(session_id, kernel_name, env, idle_timeout), True
        if kernel_name is not None and kernel_name != existing.kernel_name:
            raise Conflict(
                f"session {session_id!r} runs kernel {existing.kernel_name!r}, not {kernel_name!r}; "
                "release it first (DELETE) to start it on another kernel"
            )
        return existing, False

    def _new(self, session_id: str, kernel_name: Any, env: Any, idle_timeout: Any) -> Session:
        kernel_name = self.pool.kernel_name if kernel_name is None else kernel_name
        if not isinstance(kernel_name, str) or not kernel_name:
            raise BadRequest(f"kernel_name must be a kernelspec name, not {kernel_name!r}")
        env = {} if env is None else env
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise BadRequest("env must be an object of string names to string values")
        try:
            timeout = check_timeout(idle_timeout, "idle_timeout") if idle_timeout is not None else self.idle_timeout
        except (TypeError, ValueError) as exc:
            raise BadRequest(str(exc)) from None
        python = self._is_python(kernel_name)
        directory = self.root / session_id
        shutil.rmtree(directory, ignore_errors=True)  # a leftover of a crashed service is not this session's
        directory.mkdir(mode=0o700)
        if python or self.remote:
            pool, own = self._pool_for(kernel_name), False
        else:  # no hidden cell can move it: a pool of its own, its kernels started in the directory with the env
            options = {**self._options, "kernel_name": kernel_name, "max_kernels": 1, "min_idle": 0,
                       "cwd": str(directory), "env": {**self.pool.env, **env}}
            pool, own = AsyncKernelPool(**options), True
        session = Session(session_id, kernel_name, env, timeout, directory, pool, python, own)
        self.sessions[session_id] = session
        self._arm(session)
        log.info("session %r created (kernel %s)", session_id, kernel_name)
        return session

    def _is_python(self, kernel_name: str) -> bool:
        """Whether ``kernel_name``'s kernels take the Python set-up cell; BadRequest for an unknown kernelspec."""
        if self.remote:  # the gateway's kernelspecs are not ours to read; its kernels do not share our files
            return False
        try:
            return KernelSpecManager().get_kernel_spec(kernel_name).language.lower() == "python"
        except NoSuchKernel:
            installed = ", ".join(sorted(KernelSpecManager().find_kernel_specs())) or "none"
            raise BadRequest(f"no kernelspec named {kernel_name!r}; installed: {installed}") from None

    def _pool_for(self, kernel_name: str) -> AsyncKernelPool:
        pool = self._pools.get(kernel_name)
        if pool is None:  # another kernelspec: its own pool, started on first use, nothing prewarmed
            pool = self._pools[kernel_name] = AsyncKernelPool(**{**self._options, "kernel_name": kernel_name, "min_idle": 0})
        return pool

    async def release(self, session_id: str) -> None:
        """End session ``session_id``: its kernel is shut down (a running cell killed), its directory removed."""
        session = self.get(session_id)
        self._forget(session, None)
        await self._wait_tasks()
        log.info("session %r released", session_id)

    def _forget(self, session: Session, lost: str | None) -> None:
        """Drop ``session`` now and release its kernel and directory in the background.

        With ``lost`` (why: expired, shut down), its next request answers SessionLost once.
        """
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
        session.ended = lost or "released"
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        if lost is not None and not self._closed:
            self._lost[session.id] = lost
            while len(self._lost) > _LOST_MEMORY:
                self._lost.popitem(last=False)
        dropping = self._spawn(self._drop(session))
        self._dropping[session.id] = dropping
        dropping.add_done_callback(lambda t: self._dropping.get(session.id) is t and self._dropping.pop(session.id))

    async def _drop(self, session: Session) -> None:
        try:
            if session.own_pool:
                await session.pool.shutdown()
            else:
                await session.pool.release(session.id)
        finally:
            await asyncio.to_thread(shutil.rmtree, session.directory, True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _wait_tasks(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def interrupt(self, session_id: str) -> bool:
        """Interrupt the cell running in the session; False when it holds no kernel right now."""
        session = self.get(session_id)
        self._touch(session)
        return await session.pool.interrupt(session.id)

    async def restart(self, session_id: str) -> bool:
        """Give the session a fresh kernel (in its directory) on its next call; its variables are gone."""
        session = self.get(session_id)
        self._touch(session)
        restarted = await session.pool.restart(session.id)
        session.restarted = session.restarted or restarted
        return restarted

    # ---- execution -----------------------------------------------------------------------

    async def execute(
        self,
        session_id: str,
        code: Any,
        timeout: Any = None,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        """Run ``code`` in session ``session_id`` (created with the defaults if needed).

        ``on_output`` gets each output as it arrives, on the pool's callback thread (see
        ``AsyncKernelPool.execute``). Raises the pool's errors; SessionLost once after the
        session expired or lost its kernel.
        """
        if not isinstance(code, str):
            raise BadRequest(f"code must be a string, not {type(code).__name__}")
        if len(code) > self.max_code_size:
            raise PayloadTooLarge(f"code is {len(code):,} characters; the limit is {self.max_code_size:,}")
        try:
            timeout = check_timeout(timeout)
        except (TypeError, ValueError) as exc:
            raise BadRequest(str(exc)) from None
        session = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None:  # new: its set-up cell and this code run on one checkout
            session, _ = await self._ensure(session_id, None, None, None)
        return await self._hold(session, (code, timeout, on_output))

    async def _hold(self, session: Session, run: tuple[str, float | None, OutputCallback | None] | None) -> Any:
        """Check out the session's kernel, set it up if it is new to the session, and run ``run`` on it."""
        session.running += 1
        self._touch(session)
        try:
            async with session.pool.checkout(session.id) as lease:
                if lease.kernel_id != session.kernel_id:
                    await self._setup(session, lease)
                if run is None:
                    return None
                code, timeout, on_output = run
                return await lease.execute(code, timeout=timeout, on_output=on_output)
        except PoolError as exc:
            if session.ended is not None and not isinstance(exc, SessionLost):
                self._lost.pop(session.id, None)  # this request is the one that hears it
                raise SessionLost(session.id, session.ended) from exc
            raise
        finally:
            session.running -= 1
            self._touch(session)
            if session.kernel_id is None and session.running == 0 and self.sessions.get(session.id) is session:
                self._forget(session, None)  # it never got a kernel (cancelled, none free, none started): gone

    async def _setup(self, session: Session, lease: Any) -> None:
        # remote kernels run elsewhere: no cwd of ours; their env by the Python cell, if the session has one
        code = python_setup_code(cwd=None if self.remote else str(session.directory), env=session.env)
        if code and (session.python or self.remote):
            done = await lease.execute(code, timeout=_SETUP_TIMEOUT, store_history=False)
            if done.status != "ok":
                error = done.error or {}
                raise PoolError(
                    f"session {session.id!r}: its kernel could not be moved into its directory and environment "
                    f"({error.get('ename')}: {error.get('evalue')})"
                )
        session.kernel_id = lease.kernel_id
        session.restarted = False

    # ---- the idle and lifetime clocks ----------------------------------------------------

    def _touch(self, session: Session) -> None:
        session.last_used = time.time()
        if session.running == 0:
            self._arm(session)

    def expires(self, session: Session) -> float | None:
        """When the session expires (wall-clock seconds) if nothing else happens; None: never."""
        ends = []
        if session.idle_timeout is not None:
            ends.append(session.last_used + session.idle_timeout)
        if self.max_lifetime is not None:
            ends.append(session.created + self.max_lifetime)
        return min(ends) if ends else None

    def _arm(self, session: Session) -> None:
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        due = self.expires(session)
        if due is not None:
            loop = asyncio.get_running_loop()
            session.timer = loop.call_later(max(0.0, due - time.time()), self._expire, session)

    def _expire(self, session: Session) -> None:
        """A clock of ``session`` ran out: release it, and tell its next request SessionLost."""
        session.timer = None
        if self.sessions.get(session.id) is not session:
            return
        now = time.time()
        if self.max_lifetime is not None and now >= session.created + self.max_lifetime:
            reason = f"expired: its maximum lifetime of {self.max_lifetime:g} s passed"
        elif session.running:
            return  # busy: the idle clock restarts when its requests end
        elif session.idle_timeout is not None and now >= session.last_used + session.idle_timeout:
            reason = f"expired: idle for {session.idle_timeout:g} s"
        else:
            self._arm(session)
            return
        log.info("session %r %s", session.id, reason)
        self._forget(session, reason)

    # ---- describing ----------------------------------------------------------------------

    def describe(self, session: Session, kernels: dict[str, Any] | None = None) -> dict[str, Any]:
        """The session as JSON: state, kernel, created, last used, expires (ISO 8601 UTC).

        ``kernels`` maps session ids to their KernelStats (taken once for a whole listing).
        """
        kernels = self._kernels([session.pool]) if kernels is None else kernels
        kernel = kernels.get(session.id)
        if kernel is not None:
            state = kernel.state
        elif session.kernel_id is None or session.restarted:
            state = "new"  # its kernel comes with its next call
        else:
            state = "lost"  # its next call answers SessionLost, then runs on a fresh kernel
        return {
            "id": session.id,
            "state": state,
            "kernel": {
                "id": kernel.kernel_id if kernel else None,
                "name": session.kernel_name,
                "pid": kernel.pid if kernel else None,
                "execution_state": state,
            },
            "kernel_name": session.kernel_name,
            "kernel_id": kernel.kernel_id if kernel else None,
            "pid": kernel.pid if kernel else None,
            "executions": kernel.executions if kernel else 0,
            "created": _iso(session.created),
            "last_used": _iso(session.last_used),
            "expires": _iso(self.expires(session)),
            "idle_timeout": session.idle_timeout,
            "env": session.env,
        }

    def list(self) -> list[dict[str, Any]]:
        """Every live session, described."""
        kernels = self._kernels(self._all_pools())
        return [self.describe(s, kernels) for s in self.sessions.values()]

    @staticmethod
    def _kernels(pools: list[AsyncKernelPool]) -> dict[str, Any]:
        live = ("starting", "idle", "busy")
        return {k.session: k for pool in pools for k in pool.stats().kernels if k.session and k.state in live}

    # ---- files ---------------------------------------------------------------------------

    def path(self, session_id: str, relative: str, *, must_exist: bool = True) -> Path:
        """The file ``relative`` inside the session's directory; Forbidden for any path leading out of it."""
        session = self.get(session_id)
        self._touch(session)
        return files.resolve(session.directory, relative, must_exist=must_exist)

