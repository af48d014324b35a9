"""Widgets made on session kernels, live in this notebook: the notebook's kernel relays their comms.

A widget lives on the kernel that made it: an ``IntSlider()`` in a ``%%pool session=a`` cell
has its comm on session a's kernel, which the front end never talks to. :class:`WidgetRelay`
makes the notebook's own kernel stand in for it. For every comm a session's kernel opens, it
opens one here with the same id, target, data and buffers (so the widget's model id, and every
``IPY_MODEL_`` reference in other models, is the same on both sides); it forwards each
message of the session's comm to the front end, and each message the front end sends on it
to the session's kernel (``KernelPool.send_comm``: in turn behind the session's running cell,
never blocking this kernel, another session or the notebook's own widgets).

Parents. The front end attributes IOPub messages by their parent, so each relayed message gets
the local message that stands for the one it answers: the ``%%pool`` cell that ran the remote
cell, or the front end's own comm message that the session is answering. An ``Output`` widget
captures the output of the request whose id is its ``msg_id`` state, and the front end's
``Output`` model hooks that id's request *in the front end*; so a remote ``msg_id`` is
translated to a local cell's id (the cell that ran it, or for a front end's message, the cell
where its widget was made: a front end keeps a cell's request, never a comm message's, after
it ends) and the captured outputs are published with that cell as parent. ``interact``,
``with out:``, ``@out.capture`` and ``interactive_output`` then fill their widget in the page.

Ends. A widget view relayed here carries a display id; when its session is released,
restarted or loses its kernel, each view is replaced by a notice saying so, and every comm of
that kernel is closed in the front end. (A restart of the notebook's kernel ends its pool and
the session kernels with it: nothing is left to relay.)

Threads: session events arrive on pool callback threads (one per kernel, in the kernel's
order, in order with its cells' outputs), the front end's messages on this kernel's shell
threads. Everything is published with an explicit parent (see :mod:`.comm` for why never
through ``comm.send``), under one lock, so the front end sees each kernel's traffic in order.
"""

from __future__ import annotations

import html
import logging
import threading
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from ..comms import WIDGET_VIEW_MIME, CommEvent
from ..errors import CommNotFound, PoolClosed
from ..results import OutputCallback
from ..sync import KernelPool
from .routing import iopub_content

log = logging.getLogger("jupyter_sessionpool")

NOTICE_MIME = "application/vnd.jupyter-sessionpool.widget-gone+json"
"""Carried by a notice that replaced a widget view: ``{"session", "reason"}``."""

_CONTEXTS_KEPT = 1000  # remote requests whose local context is remembered (oldest forgotten)
_VIEWS_KEPT = 1000  # widget views per kernel that get a notice when it ends


@dataclass
class _Context:
    """Where the messages of one remote request go here.

    ``parent``: the local message standing for the request (what its comm traffic and
    outputs are published under); ``home``: the local cell its ``Output`` widgets capture
    under (the same cell for a ``%%pool`` cell; the widget's cell for a front end's message).
    """

    session: str
    parent: dict[str, Any]
    home: dict[str, Any]


@dataclass
class _Relayed:
    """A session kernel's comm, and its stand-in registered in this kernel's comm manager."""

    session: str
    kernel_id: str
    home: dict[str, Any]
    comm: Any


@dataclass(frozen=True)
class _View:
    """A widget view shown here: its display id, whether it is a cell's result, the cell."""

    display_id: str
    result: bool
    cell: dict[str, Any]


class WidgetRelay:
    """Relays the comms of the pool's session kernels through this notebook's kernel.

    Made once per notebook kernel (``%load_ext``); :meth:`cell` is called by each ``%%pool``
    cell on the kernel's main thread.
    """

    def __init__(self, kernel: Any) -> None:
        self._kernel = kernel
        self._lock = threading.Lock()
        self._pool: KernelPool | None = None
        self._watching: set[str] = set()
        self._comms: dict[str, _Relayed] = {}
        self._contexts: OrderedDict[str, _Context] = OrderedDict()
        self._latest: dict[str, _Context] = {}  # session -> its latest %%pool cell
        self._views: dict[str, deque[_View]] = {}  # session kernel id -> its widget views shown here

    def cell(self, pool: KernelPool, session: str, background: bool = False) -> CellWidgets:
        """The relay of one ``%%pool`` cell: its ``on_comm``, and the wrapper of its ``on_output``.

        Call on the kernel's main thread while the cell runs (its parent is read here).
        """
        parent = self._kernel.get_parent("shell")
        context = _Context(session, parent, parent)
        with self._lock:
            if pool is not self._pool:
                self._pool, self._watching = pool, set()
            self._latest[session] = context
            watch = session not in self._watching
            self._watching.add(session)
        if watch:
            pool.watch_comms(session, lambda event: self._on_event(event, None))
        return CellWidgets(self, context, background)

    # ---- from a session's kernel (pool callback threads) -------------------------------------------

    def _on_event(self, event: CommEvent, context: _Context | None) -> None:
        with self._lock:
            if event.session is None:
                return
            if context is not None:
                self._remember(event.parent_id, context)
            else:
                context = self._context_of(event.session, event.parent_id)
            kind = event.msg_type
            try:
                if kind == "comm_open":
                    self._open(event, context)
                elif kind in ("comm_msg", "comm_close"):
                    self._message(event, context)
                elif kind == "output":
                    self._publish_output(event.content["output"], self._translated(event.parent_id, context).home)
                elif kind == "kernel_ended":
                    self._end(event.kernel_id, event.session, event.content["reason"])
            except Exception:  # a relay failure must never break the session's other callbacks
                log.exception("could not relay %s of session %r to the front end", kind, event.session)

    def _remember(self, request_id: str, context: _Context) -> None:
        if request_id and request_id not in self._contexts:
            self._contexts[request_id] = context
            while len(self._contexts) > _CONTEXTS_KEPT:
                self._contexts.popitem(last=False)

    def _context_of(self, session: str, request_id: str) -> _Context:
        """The context of a message that answers no call of ours: its request's, if we made it."""
        known = self._contexts.get(request_id)
        if known is not None:
            return known
        latest = self._latest.get(session) or _Context(session, {}, {})
        if not request_id:  # e.g. a thread's message with no parent: none here either
            return _Context(session, {}, latest.home)
        return latest

    def _translated(self, request_id: str, context: _Context) -> _Context:
        """The context of remote request ``request_id`` (an Output widget's ``msg_id``)."""
        return self._contexts.get(request_id) or context

    def _open(self, event: CommEvent, context: _Context) -> None:
        from comm import create_comm, get_comm_manager

        comm_id = event.comm_id
        if comm_id in self._comms:
            return
        content = {**event.content, "data": self._local_state(event.content.get("data"), context)}
        stand_in = create_comm(comm_id=comm_id, primary=False, target_name=content.get("target_name") or "comm")
        relayed = _Relayed(event.session or "", event.kernel_id, context.home, stand_in)
        stand_in.on_msg(lambda msg: self._from_front_end(relayed, msg))
        stand_in.on_close(lambda msg: self._closed_by_front_end(relayed, msg))
        get_comm_manager().register_comm(stand_in)
        self._comms[comm_id] = relayed
        self._send("comm_open", content, context.parent, event.metadata, event.buffers, stand_in.topic)

    def _message(self, event: CommEvent, context: _Context) -> None:
        relayed = self._comms.get(event.comm_id)
        if relayed is None:
            return  # not a comm the front end knows (it opened before this relay watched)
        content = {**event.content, "data": self._local_state(event.content.get("data"), context)}
        self._send(event.msg_type, content, context.parent, event.metadata, event.buffers, relayed.comm.topic)
        if event.msg_type == "comm_close":
            self._forget(event.comm_id)

    def _local_state(self, data: Any, context: _Context) -> Any:
        """``data`` with an Output widget's remote ``msg_id`` replaced by the local cell's."""
        state = data.get("state") if isinstance(data, dict) else None
        if not isinstance(state, dict) or not state.get("msg_id"):
            return data
        home = self._translated(str(state["msg_id"]), context).home
        return {**data, "state": {**state, "msg_id": home.get("header", {}).get("msg_id", "")}}

    def _end(self, kernel_id: str, session: str, reason: str) -> None:
        """A session's kernel is gone: its views say so, its comms close in the front end."""
        notice = _notice(session, reason)
        for view in self._views.pop(kernel_id, ()):
            if view.result:  # a front end maps display ids of display_data only: say so below it, in its cell
                self._send("display_data", {**notice, "transient": {}}, view.cell)
            else:
                self._send("update_display_data", {**notice, "transient": {"display_id": view.display_id}}, {})
        for comm_id in [c for c, r in self._comms.items() if r.kernel_id == kernel_id]:
            self._send("comm_close", {"comm_id": comm_id, "data": {}}, {}, ident=self._comms[comm_id].comm.topic)
            self._forget(comm_id)

    def _forget(self, comm_id: str) -> None:
        from comm import get_comm_manager

        relayed = self._comms.pop(comm_id)
        relayed.comm._closed = True  # closed already: it must not publish a close of its own when collected
        get_comm_manager().comms.pop(comm_id, None)

    # ---- from the front end (this kernel's shell threads) --------------------------------------

    def _from_front_end(self, relayed: _Relayed, msg: dict[str, Any]) -> None:
        self._forward(relayed, msg, close=False)

    def _closed_by_front_end(self, relayed: _Relayed, msg: dict[str, Any]) -> None:
        with self._lock:
            if self._comms.get(relayed.comm.comm_id) is relayed:
                del self._comms[relayed.comm.comm_id]  # the comm manager forgot it already
                relayed.comm._closed = True
        self._forward(relayed, msg, close=True)

    def _forward(self, relayed: _Relayed, msg: dict[str, Any], close: bool) -> None:
        """Send a front end's message on to the session's kernel, without waiting for it."""
        pool = self._pool
        data = msg["content"].get("data")
        if pool is None or not isinstance(data, dict):
            return
        context = _Context(relayed.session, msg, relayed.home)
        try:
            sent = pool.send_comm(
                relayed.session, relayed.comm.comm_id, data, buffers=[bytes(b) for b in msg.get("buffers") or ()],
                close=close, on_comm=lambda event: self._on_event(event, context),
                on_output=lambda out: self._publish_output(out, msg),
            )
        except PoolClosed:
            return
        sent.add_done_callback(_report)

    # ---- publishing ------------------------------------------------------------------------------

    def _send(
        self,
        msg_type: str,
        content: dict[str, Any],
        parent: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        buffers: tuple[bytes, ...] | list[bytes] = (),
        ident: bytes | None = None,
    ) -> None:
        """Publish one IOPub message with an explicit parent (safe from any thread)."""
        kernel = self._kernel
        kernel.session.send(kernel.iopub_socket, msg_type, content, parent=parent, metadata=metadata or {},
                            ident=ident, buffers=list(buffers) or None)

    def _publish_output(self, out: dict[str, Any], parent: dict[str, Any]) -> None:
        content = iopub_content(out)
        if content is not None:
            self._send(out["output_type"], content, parent)

    def _note_view(self, out: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
        """``out`` (showing a relayed widget in ``cell``) with a display id, noted for the notice
        at its kernel's end."""
        model_id = str(out["data"][WIDGET_VIEW_MIME].get("model_id", ""))
        display_id = (out.get("transient") or {}).get("display_id") or f"jsp-widget-{uuid.uuid4().hex}"
        with self._lock:
            relayed = self._comms.get(model_id)
            if relayed is not None:
                views = self._views.setdefault(relayed.kernel_id, deque(maxlen=_VIEWS_KEPT))
                views.append(_View(display_id, out["output_type"] == "execute_result", cell))
        return {**out, "transient": {**(out.get("transient") or {}), "display_id": display_id}}


class CellWidgets:
    """One ``%%pool`` cell's part of the relay: its ``on_comm``, and :meth:`views`."""

    def __init__(self, relay: WidgetRelay, context: _Context, background: bool) -> None:
        self._relay = relay
        self._context = context
        self._background = background

    def on_comm(self, event: CommEvent) -> None:
        """The cell's comm events (pool callback thread)."""
        self._relay._on_event(event, self._context)

    def views(self, on_output: OutputCallback) -> OutputCallback:
        """``on_output`` for the cell: widget views get a display id (their notice's), the rest passes.

        A background cell's outputs reach the front end as updates of one text display, where
        no widget can render: its widget views are shown in its cell as displays of their own.
        """

        def route(out: dict[str, Any]) -> None:
            if out["output_type"] not in ("display_data", "execute_result") or WIDGET_VIEW_MIME not in out.get("data", {}):
                on_output(out)
                return
            out = self._relay._note_view(out, self._context.home)
            if not self._background:
                on_output(out)
                return
            content = {"data": out["data"], "metadata": out.get("metadata", {}), "transient": out["transient"]}
            with self._relay._lock:
                self._relay._send("display_data", content, self._context.home)

        return route


def _notice(session: str, reason: str) -> dict[str, Any]:
    text = f"[widget of session {session!r}: {reason}; it is no longer live]"
    return {
        "data": {
            "text/plain": text,
            "text/html": f'<div class="jsp-widget-gone" style="color:#777;font-style:italic">{html.escape(text)}</div>',
            NOTICE_MIME: {"session": session, "reason": reason},
        },
        "metadata": {},
    }


def _report(sent: Any) -> None:
    """A forwarded front-end message failed: a gone comm is normal (the session ended), the rest is logged."""
    if sent.cancelled():
        return
    error = sent.exception()
    if isinstance(error, (CommNotFound, PoolClosed)):
        log.debug("a widget message was not delivered: %s", error)
    elif error is not None:
        log.warning("a widget message to a session's kernel failed: %s", error)
