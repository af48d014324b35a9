"""Comm traffic of pooled kernels, and the widget state a front end rebuilds from it.

Every kernel the pool starts gets a :class:`KernelComms`: its reader hands it each
``comm_open``, ``comm_msg`` and ``comm_close`` the kernel sends, whether or not a call is
waiting (a widget callback triggered by a front end's message, a background thread, a
``tqdm`` bar all send comm traffic), and each output an ipywidgets ``Output`` widget
captures. From them it keeps :class:`WidgetState`, what nbclient (and so papermill)
rebuilds: the widget models the kernel opened, the latest state of each with its binary
buffers, and each ``Output`` widget's captured outputs. Only the latest state of a model is
kept, never its history, so a chatty widget costs nothing over time.

The same traffic goes out as :class:`CommEvent` objects, live: to the ``on_comm`` of the
call it answers (the cell or comm message whose request is its parent), otherwise to the
session's watchers (``watch_comms``). Events and ``on_output`` outputs of one kernel go
through one ordered queue to callback threads, so they arrive in the order the kernel sent
them: a widget's ``comm_open`` before the output that displays it, an ``Output`` widget's
capture before the outputs it captures. The models' latest state, rebuilt from the events
as a front end does (``widget_state`` returns it applied), the way the display-id loop in
:mod:`.results` rebuilds displays::

    models = {}

    def on_comm(event):  # on a callback thread, in order with on_output
        state = event.content.get("data", {}).get("state") if event.msg_type != "output" else None
        if state is not None:
            models.setdefault(event.comm_id, {}).update(state)

    await pool.execute("import ipywidgets; s = ipywidgets.IntSlider(3); s", session="a", on_comm=on_comm)
    slider = next(i for i, m in models.items() if m["_model_name"] == "IntSliderModel")
    await pool.send_comm("a", slider, {"method": "update", "state": {"value": 7}}, on_comm=on_comm)
    assert models[slider]["value"] == 7 == pool.widget_state("a")["state"][slider]["state"]["value"]

An ``"output"`` event is one output an ``Output`` widget captured; ``widget_state`` keeps
them under that widget's ``outputs``, ``clear_output`` applied as a front end applies it.

Imports nothing of zmq, IPython or ipywidgets: it reads Jupyter messages as dicts.
"""

from __future__ import annotations

import base64
import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from ._handoff import Handoff
from .results import _CAPTURED, _Outputs

WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
"""The MIME type (and ``metadata.widgets`` key) of saved widget state."""
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
"""The MIME type of an output that shows a widget: ``{"model_id": ..., "version_major": 2, ...}``."""

COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})
CLOSED_KEPT = 1000
"""Most closed models whose last state is kept (as nbclient keeps them); the oldest go first."""

_PENDING = "jupyter_sessionpool.comm_event"  # the event of a message waiting in its request's queue
_OUTPUT_MODEL = ("@jupyter-widgets/output", "OutputModel")

log = logging.getLogger("jupyter_sessionpool")


@dataclass(frozen=True)
class CommEvent:
    """One comm message a kernel sent, an output an ``Output`` widget captured, or the kernel's end.

    ``msg_type`` and ``content``:

    - ``"comm_open"``, ``"comm_msg"``, ``"comm_close"``: the message's own content
      (``comm_id``, ``data``, and ``target_name``/``target_module`` for an open);
      ``metadata`` and ``buffers`` are the message's too.
    - ``"output"``: ``{"comm_id": C, "output": OUT}``: the ``Output`` widget ``C`` captured
      ``OUT``, one output in the ``on_output`` form (a stream piece, a display, an error,
      ``clear_output``); its ``outputs`` state in :meth:`WidgetState.to_dict` holds them applied.
    - ``"kernel_ended"``: ``{"reason": R}``: the session's kernel is gone (released, restarted,
      lost); every comm it had is closed. Goes to the session's watchers only.

    ``parent_id`` is the msg_id of the kernel-side request the message answers ("" for none):
    the cell or comm message that caused it. ``session`` and ``kernel_id`` say whose it is.
    """

    msg_type: str
    content: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    buffers: tuple[bytes, ...] = ()
    parent_id: str = ""
    session: str | None = None
    kernel_id: str = ""

    @property
    def comm_id(self) -> str:
        """The comm (widget model id) the event is about; "" for ``kernel_ended``."""
        return str(self.content.get("comm_id", ""))


CommCallback = Callable[[CommEvent], Any]


def empty_widget_state() -> dict[str, Any]:
    """A widget state with no models, in the ``application/vnd.jupyter.widget-state+json`` form."""
    return {"state": {}, "version_major": 2, "version_minor": 0}


class WidgetState:
    """What a front end knows of one kernel's widgets, rebuilt from its messages as nbclient does.

    Fed every comm message and every captured output with :meth:`take`, in the kernel's
    order (the pool's event loop does that). Memory is bounded: one latest state per model
    (buffers kept per path, newest wins), at most :data:`CLOSED_KEPT` closed models, and
    each ``Output`` widget's captured outputs cut at ``max_output_size`` characters.
    """

    def __init__(self, max_output_size: int = 0) -> None:
        self._max_output_size = max_output_size
        self._models: dict[str, dict[str, Any]] = {}  # comm id -> latest state, in the order opened
        self._buffers: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}  # comm id -> path -> buffer
        self._open: set[str] = set()
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._captures: dict[str, list[str]] = {}  # msg_id -> Output widgets capturing it (last one wins)
        self._capturing: dict[str, str] = {}  # Output widget -> the msg_id it captures
        self._captured: dict[str, _Outputs] = {}  # Output widget -> its outputs, as a front end applies them

    @property
    def capturing(self) -> bool:
        """True while some ``Output`` widget captures a request's output."""
        return bool(self._captures)

    def is_open(self, comm_id: str) -> bool:
        """Whether the kernel opened ``comm_id`` and has not closed it."""
        return comm_id in self._open

    def take(self, msg: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """Apply one iopub message; return the (msg_type, content) of its event, or None if it is none."""
        kind = msg.get("msg_type")
        content = msg.get("content") or {}
        if kind in COMM_TYPES:
            comm_id = str(content.get("comm_id", ""))
            data = content.get("data")
            if kind == "comm_close":
                self._close(comm_id)
            else:
                if kind == "comm_open":
                    self._open.add(comm_id)
                    self._closed.pop(comm_id, None)
                if isinstance(data, dict) and isinstance(data.get("state"), dict):
                    self._update(comm_id, data["state"], data.get("buffer_paths") or [], msg.get("buffers") or [])
            return kind, content
        if kind in _CAPTURED:
            stack = self._captures.get(msg.get("parent_header", {}).get("msg_id", ""))
            if stack:
                return "output", {"comm_id": stack[-1], "output": self._capture(stack[-1], msg)}
        return None

    def _update(self, comm_id: str, state: dict[str, Any], paths: list[Any], buffers: list[Any]) -> None:
        model = self._models.setdefault(comm_id, {})
        model.update(state)
        if (model.get("_model_module"), model.get("_model_name")) == _OUTPUT_MODEL:
            if "outputs" in state:  # the kernel set them (append_stdout, outputs=...): they replace what was captured
                captured = self._output_model(comm_id)
                captured._clear()
                captured.outputs.extend(dict(out) for out in state["outputs"] or ())
            if comm_id in self._captured:
                model["outputs"] = self._captured[comm_id].outputs
            if "msg_id" in state:
                self._recapture(comm_id, str(state["msg_id"] or ""))
        if paths:
            kept = self._buffers.setdefault(comm_id, {})
            for path, buffer in zip(paths, buffers):
                kept[tuple(path)] = {"data": base64.b64encode(bytes(buffer)).decode("ascii"), "encoding": "base64",
                                     "path": list(path)}

    def _output_model(self, comm_id: str) -> _Outputs:
        captured = self._captured.get(comm_id)
        if captured is None:
            captured = self._captured[comm_id] = _Outputs(None, self._max_output_size)
            self._models[comm_id]["outputs"] = captured.outputs
        return captured

    def _recapture(self, comm_id: str, msg_id: str) -> None:
        """An Output widget starts capturing ``msg_id``'s output ("" : stops), as a front end sees it."""
        previous = self._capturing.pop(comm_id, None)
        if previous is not None:
            stack = self._captures[previous]
            stack.reverse()
            stack.remove(comm_id)  # its latest registration
            stack.reverse()
            if not stack:
                del self._captures[previous]
        if msg_id:
            self._captures.setdefault(msg_id, []).append(comm_id)
            self._capturing[comm_id] = msg_id

    def _capture(self, comm_id: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Add a captured output message to the Output widget's outputs; the output in on_output form."""
        captured = self._output_model(comm_id)
        emitted: list[dict[str, Any]] = []
        captured.on_output = emitted.append
        try:
            captured.handle(msg)
        finally:
            captured.on_output = None
        return emitted[-1] if emitted else {}

    def _close(self, comm_id: str) -> None:
        self._open.discard(comm_id)
        if comm_id in self._capturing:
            self._recapture(comm_id, "")
        if comm_id in self._models:
            self._closed[comm_id] = None
            while len(self._closed) > CLOSED_KEPT:
                gone, _ = self._closed.popitem(last=False)
                self._models.pop(gone, None)
                self._buffers.pop(gone, None)
                self._captured.pop(gone, None)

    def to_dict(self) -> dict[str, Any]:
        """The ``application/vnd.jupyter.widget-state+json`` value, as nbclient writes ``metadata.widgets``.

        Every model with a ``_model_name`` that the kernel opened (closed ones too, as
        nbclient keeps them), with its latest state, and its binary buffers base64-encoded
        under ``buffers``. A copy: it does not change as the kernel goes on.
        """
        state = {}
        for comm_id, model in self._models.items():
            if "_model_name" not in model:
                continue
            entry = {
                "model_name": model.get("_model_name"),
                "model_module": model.get("_model_module"),
                "model_module_version": model.get("_model_module_version"),
                "state": copy.deepcopy(model),
            }
            buffers = self._buffers.get(comm_id)
            if buffers:
                entry["buffers"] = copy.deepcopy(list(buffers.values()))
            state[comm_id] = entry
        return {**empty_widget_state(), "state": state}


Watchers = dict[str, list[CommCallback]]


class KernelComms:
    """One kernel's comm sink: its widget state, and the ordered queue its callbacks run from.

    Called on the pool's event loop. ``session()`` names the session the kernel serves now
    (None: anonymous or not yet lent); ``watchers`` is the pool's session -> callbacks map,
    read at each event. :attr:`handoff` runs this kernel's ``on_output`` and comm callbacks
    on a callback thread, one at a time, in the order they were queued.
    """

    def __init__(
        self,
        kernel_id: str,
        session: Callable[[], str | None] = lambda: None,
        watchers: Watchers | None = None,
        max_output_size: int = 0,
    ) -> None:
        self.kernel_id = kernel_id
        self.state = WidgetState(max_output_size)
        self.handoff = Handoff(_call, _callback_failed)
        self.ended: str | None = None
        self._session = session
        self._watchers = watchers if watchers is not None else {}

    @classmethod
    def of(cls, worker: Any) -> KernelComms:
        """The sink of ``worker``'s kernel, attached to its router (the pool attaches one at start)."""
        comms = worker.router.comms
        if comms is None:
            comms = worker.router.comms = cls(worker.kernel_id)
        return comms

    def take(self, msg: dict[str, Any], answered: bool) -> bool:
        """Router hook, for every iopub message: track comm traffic and captures in arrival order.

        A message that answers an open request (``answered``) keeps its event until that
        request's reader reads it (:meth:`event_of`), so the event comes out in order with
        the request's outputs. Returns True when the message is consumed here: comm
        traffic or a captured output that answers no request.
        """
        if msg.get("msg_type") not in COMM_TYPES and not self.state.capturing:
            return False
        if self.ended is not None:
            return msg.get("msg_type") in COMM_TYPES  # a stopping kernel's last words: nobody listens
        taken = self.state.take(msg)
        if taken is None:
            return False
        kind, content = taken
        event = CommEvent(
            kind, content, msg.get("metadata") or {}, tuple(bytes(b) for b in msg.get("buffers") or ()),
            msg.get("parent_header", {}).get("msg_id", ""), self._session(), self.kernel_id,
        )
        if answered:
            msg[_PENDING] = event
            return False
        self.emit(event)
        return True

    @staticmethod
    def event_of(msg: dict[str, Any]) -> CommEvent | None:
        """The event of a message read from its request's queue (once; None if it has none)."""
        return msg.pop(_PENDING, None)

    def emit(self, event: CommEvent, on_comm: CommCallback | None = None) -> None:
        """Queue ``event`` for ``on_comm`` (the call it answers), else for its session's watchers."""
        if on_comm is not None:
            self.handoff.put(lambda: on_comm(event))
            return
        for callback in self._watchers.get(event.session or "", ()):
            self.handoff.put(lambda callback=callback: callback(event))

    def end(self, reason: str) -> None:
        """The kernel is gone (or going) for ``reason``: tell the watchers once, forget the state."""
        if self.ended is not None:
            return
        self.ended = reason
        self.emit(CommEvent("kernel_ended", {"reason": reason}, session=self._session(), kernel_id=self.kernel_id))
        self.state = WidgetState()


def _call(thunk: Callable[[], Any]) -> None:
    thunk()


def _callback_failed(exc: BaseException) -> None:
    log.error("a comm callback failed", exc_info=exc)
