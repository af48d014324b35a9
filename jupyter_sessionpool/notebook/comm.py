"""The kernel side of the JupyterLab panel: a comm that streams pool snapshots.

``%load_ext jupyter_sessionpool`` calls :func:`register`. From then on a frontend (the
JupyterLab extension, or any client) may open a comm on target ``jupyter_sessionpool``
and gets the pool of *this* kernel, live. Protocol version 1, every message a JSON dict:

kernel → frontend
    ``{"version": 1, "type": "snapshot", "time": t, "pool": {...}}``: ``PoolStats.to_dict()``,
    each kernel's ``memory`` named ``rss`` (bytes or None); ``time`` is the kernel's wall clock, so a
    frontend can turn ``busy_since`` into "busy for". Sent on open and after pool changes,
    coalesced to at most one per :data:`MIN_INTERVAL`, always ending on the latest state.
    ``{"version": 1, "type": "no_pool"}``: the extension is loaded, the pool not made yet.
    ``{"version": 1, "type": "reply", "request_id": r, "ok": bool, "error": str | None}``.
frontend → kernel
    ``{"version": 1, "action": "interrupt" | "restart" | "release", "session": "a",
    "request_id": r}``. Anything else (another version, action or key, a bad session) gets
    a reply with ``ok`` false and an error; nothing in a message is ever executed.

So that a frontend can find out, without an error in the kernel log, whether a kernel
serves this target, :func:`register` also opens one kernel→frontend comm on the same
target: a beacon carrying ``{"version": 1, "type": "hello"}`` and nothing else. It shows up
in ``comm_info`` for frontends that connect later.

Threads: comm callbacks run on whichever shell thread got the message (JupyterLab sends
comm messages over a subshell, so actions work while a cell blocks the main shell);
pool events arrive on a pool callback thread; snapshots are sent from a timer thread.

Every message goes out with an explicit IOPub parent (the frontend message it answers,
or none for a pushed snapshot) rather than through ``comm.send``: ipykernel 7.4 routes a
comm's *incoming* messages to the subshell of whatever it last published with, and a
publish from a pool or timer thread names the main shell. Through ``comm.send`` the
panel's Interrupt would wait behind the very cell it is meant to stop.
"""

from __future__ import annotations

import reprlib
import threading
import time
from typing import Any, Callable

from ..config import check_session_name
from ..stats import PoolStats
from ..sync import KernelPool

TARGET = "jupyter_sessionpool"
VERSION = 1
ACTIONS = ("interrupt", "restart", "release")
MIN_INTERVAL = 0.25
"""Seconds between two snapshots on the wire."""

_REQUEST_KEYS = {"version", "action", "session", "request_id"}

GetPool = Callable[[], "KernelPool | None"]


class ProtocolViolation(ValueError):
    """A frontend message that protocol version 1 does not allow."""


def register(shell: Any, get_pool: GetPool) -> None:
    """Serve pool snapshots on comm target ``jupyter_sessionpool``; idempotent.

    Called by ``load_ipython_extension`` on the kernel's main thread. ``get_pool`` returns
    the notebook's pool, or None while there is none; it must not create one. The bridge
    looks again after every cell, so a pool made (or replaced) later is picked up.
    """
    from comm import create_comm, get_comm_manager

    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return  # plain IPython: no frontend to talk to
    bridge = getattr(shell, "_jupyter_sessionpool_bridge", None)
    if bridge is None:
        bridge = PoolBridge(kernel, get_pool)
        shell._jupyter_sessionpool_bridge = bridge
        shell.events.register("post_run_cell", bridge.follow_pool)
        bridge.beacon = create_comm(target_name=TARGET, data={"version": VERSION, "type": "hello"})
    else:
        bridge.get_pool = get_pool
    get_comm_manager().register_target(TARGET, bridge.open)


def parse_request(data: Any) -> tuple[str, str]:
    """Check a frontend message against protocol v1; return ``(action, session)``.

    Raises :class:`ProtocolViolation` naming the first problem found; values are quoted
    shortened, so a huge payload never comes back whole in the error.
    """
    if not isinstance(data, dict):
        raise ProtocolViolation(f"a message must be a JSON object, not {type(data).__name__}")
    if data.get("version") != VERSION:
        raise ProtocolViolation(f"unsupported protocol version {reprlib.repr(data.get('version'))}; "
                                f"this kernel speaks {VERSION}")
    extra = sorted(map(str, set(data) - _REQUEST_KEYS))
    if extra:
        raise ProtocolViolation(f"unknown key(s): {', '.join(_short(key) for key in extra[:5])}")
    action, session = data.get("action"), data.get("session")
    if action not in ACTIONS:
        raise ProtocolViolation(f"unknown action {reprlib.repr(action)}; expected one of {', '.join(ACTIONS)}")
    if session is None:
        raise ProtocolViolation("session is missing; actions name the session they act on")
    try:
        return action, check_session_name(session)
    except (TypeError, ValueError) as exc:
        raise ProtocolViolation(str(exc)) from None


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def snapshot_message(stats: PoolStats | None) -> dict[str, Any]:
    """The kernel→frontend message for ``stats`` (None: no pool yet)."""
    if stats is None:
        return {"version": VERSION, "type": "no_pool"}
    pool = stats.to_dict()
    for kernel in pool["kernels"]:
        kernel["rss"] = kernel.pop("memory", None)  # the protocol's name for KernelStats.memory
    return {"version": VERSION, "type": "snapshot", "time": time.time(), "pool": pool}


def publish(kernel: Any, comm: Any, data: dict[str, Any], parent: dict[str, Any]) -> None:
    """Send ``data`` on ``comm`` with IOPub parent ``parent``; callable from any thread."""
    content = {"comm_id": comm.comm_id, "data": data}
    kernel.session.send(kernel.iopub_socket, "comm_msg", content, parent=parent, ident=comm.topic)


class PoolBridge:
    """Follows one kernel's pool and fans its snapshots out to every open comm."""

    def __init__(self, kernel: Any, get_pool: GetPool) -> None:
        self.kernel = kernel
        self.get_pool = get_pool
        self.beacon: Any = None
        self._lock = threading.Lock()
        self._comms: dict[str, Any] = {}
        self._pool: KernelPool | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._latest: PoolStats | None = None
        self._sender = Coalescer(MIN_INTERVAL, self._broadcast)

    # ---- comms (called on a shell thread) ------------------------------------------------------

    def open(self, comm: Any, open_msg: dict[str, Any]) -> None:
        """Comm target callback: accept a frontend's comm and send it the current state."""
        data = open_msg["content"].get("data")
        if not isinstance(data, dict) or data.get("version") != VERSION:
            error = f"unsupported protocol version in comm_open data {data!r}; this kernel speaks {VERSION}"
            publish(self.kernel, comm, self._reply(None, error), open_msg)
            comm.close()
            return
        comm.on_msg(lambda msg: self._on_msg(comm, msg))
        comm.on_close(lambda msg: self._forget(comm.comm_id))
        with self._lock:
            self._comms[comm.comm_id] = comm
        self.follow_pool()
        with self._lock:
            latest = self._latest
        publish(self.kernel, comm, snapshot_message(latest), open_msg)

    def _forget(self, comm_id: str) -> None:
        with self._lock:
            self._comms.pop(comm_id, None)

    def _on_msg(self, comm: Any, msg: dict[str, Any]) -> None:
        data = msg["content"].get("data")
        request_id = data.get("request_id") if isinstance(data, dict) else None
        if not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
            request_id = None
        try:
            action, session = parse_request(data)
            error = self._act(action, session)
        except Exception as exc:  # reported to the frontend, never raised into the kernel
            error = str(exc) if isinstance(exc, ProtocolViolation) else f"{type(exc).__name__}: {exc}"
        publish(self.kernel, comm, self._reply(request_id, error), msg)

    def _act(self, action: str, session: str) -> str | None:
        """Run one named pool action; return an error text, or None when it worked."""
        pool = self.get_pool()
        if pool is None:
            return "this kernel has no pool yet"
        methods = {"interrupt": pool.interrupt, "restart": pool.restart, "release": pool.release}
        if not methods[action](session):
            return f"session {session!r} holds no kernel"
        return None

    @staticmethod
    def _reply(request_id: str | int | None, error: str | None) -> dict[str, Any]:
        return {"version": VERSION, "type": "reply", "request_id": request_id, "ok": error is None, "error": error}

    # ---- the pool ----------------------------------------------------------------------------

    def follow_pool(self, *_: Any) -> None:
        """Subscribe to the current pool if it changed (``post_run_cell`` hook, and on open)."""
        pool = self.get_pool()
        with self._lock:
            if pool is self._pool:
                return
            old_unsubscribe, self._unsubscribe, self._pool = self._unsubscribe, None, pool
        if old_unsubscribe is not None:
            old_unsubscribe()
        if pool is not None:
            unsubscribe = pool.subscribe(self._changed)
            with self._lock:
                self._unsubscribe = unsubscribe
            self._changed(pool.stats())
        else:
            self._changed(None)

    def _changed(self, stats: PoolStats | None) -> None:
        """Pool subscriber (on a pool callback thread): remember the state, schedule a send."""
        with self._lock:
            self._latest = stats
        self._sender.poke()

    def _broadcast(self) -> None:
        with self._lock:
            comms, stats = list(self._comms.values()), self._latest
        message = snapshot_message(stats)
        for comm in comms:
            publish(self.kernel, comm, message, {})


class Coalescer:
    """Run ``flush`` soon after :meth:`poke`, but at most once per ``interval`` seconds.

    A poke while a flush is pending adds nothing: the pending flush reads the newest
    state when it runs. Flushes run on short-lived timer threads.
    """

    def __init__(self, interval: float, flush: Callable[[], None]) -> None:
        self._interval = interval
        self._flush = flush
        self._lock = threading.Lock()
        self._pending = False
        self._last = float("-inf")

    def poke(self) -> None:
        """Ask for a flush; thread-safe, never blocks."""
        with self._lock:
            if self._pending:
                return
            self._pending = True
            delay = max(0.0, self._last + self._interval - time.monotonic())
        timer = threading.Timer(delay, self._run)
        timer.daemon = True
        timer.start()

    def _run(self) -> None:
        with self._lock:
            self._pending = False
            self._last = time.monotonic()
        self._flush()
