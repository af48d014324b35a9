"""What a cell produced, as nbformat outputs: the result type and the iopub-to-output model.

Imports nothing of zmq or of any worker, so the faces (magics, batch runs) and the workers
share it without pulling in each other.

The output form, for ``on_output`` and :class:`ExecutionResult` alike
---------------------------------------------------------------------

``on_output`` is called with one dict per iopub output message, in order:

- an nbformat v4 output (``stream``, ``display_data``, ``execute_result``, ``error``);
  a ``display_data`` or ``execute_result`` made with a display id also carries
  ``transient: {"display_id": ID}``, as in the message (drop it before writing a notebook);
- ``{"output_type": "update_display_data", "data", "metadata", "transient": {"display_id": ID}}``
  for ``handle.update(...)`` / ``update_display(...)``;
- ``{"output_type": "clear_output", "wait": bool}``.

A front end (JupyterLab, nbclient) lets any message with a display id set what *every*
output with that id shows, in this cell and in earlier ones; ``clear_output`` clears only
the cell it comes from (with ``wait``, just before that cell's next output).

:class:`ExecutionResult` holds the same thing applied: ``outputs`` is what the cell's
output area ends up showing (pure nbformat, no ``transient``), and ``displays`` says what
the cell did to displays, so that a caller can reproduce across cells exactly what a
notebook run shows. After each result, apply its displays to the earlier results::

    for display_id, shown in result.displays.items():
        for earlier in earlier_results:
            for i in earlier.displays.get(display_id, {}).get("outputs", []):
                earlier.outputs[i].update(data=shown["data"], metadata=shown["metadata"])

(this result's own outputs are already up to date).

Output that an ipywidgets ``Output`` widget captures (``with out:``, ``interact``) belongs
to the widget, as in a front end: it is neither in ``outputs`` nor passed to ``on_output``,
but in the widget's state (``widget_state``) and its ``on_comm`` events (:mod:`.comms`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .errors import ExecutionError

OutputCallback = Callable[[dict[str, Any]], Any]


@dataclass
class ExecutionResult:
    """What one cell produced. A Python exception in user code is ``status="error"`` here.

    ``outputs`` are nbformat v4 output dicts, consecutive stream outputs of the same name
    merged, ``clear_output`` and display updates already applied. ``displays`` maps each
    display id that a message of this cell carried (a display made with ``display_id``, or
    an update of one, maybe made by an earlier cell) to ``{"data", "metadata", "outputs"}``:
    the latest content the cell gave it and the indices of this cell's ``outputs`` showing
    it; the module docstring says how to apply it to earlier cells. ``truncated`` is True
    when the cell's output passed ``max_output_size`` characters: the rest was dropped (and
    not streamed to ``on_output`` either), and a marker says so.
    """

    status: str
    execution_count: int | None
    outputs: list[dict[str, Any]]
    error: dict[str, Any] | None
    session: str | None
    kernel_id: str
    duration: float
    truncated: bool = False
    displays: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def stdout(self) -> str:
        """Everything the cell wrote to stdout."""
        return self._stream("stdout")

    @property
    def stderr(self) -> str:
        """Everything the cell wrote to stderr."""
        return self._stream("stderr")

    @property
    def result(self) -> str | None:
        """text/plain of the cell's execute_result (its last expression), or None."""
        for out in self.outputs:
            if out["output_type"] == "execute_result":
                return out["data"].get("text/plain")
        return None

    def _stream(self, name: str) -> str:
        return "".join(o["text"] for o in self.outputs if o["output_type"] == "stream" and o["name"] == name)

    def raise_for_error(self) -> ExecutionResult:
        """Raise :class:`ExecutionError` if the cell failed; return self otherwise."""
        if self.status == "error":
            raise ExecutionError(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)


@dataclass
class _Outputs:
    """Turns iopub messages into nbformat outputs the way a notebook front end would.

    :meth:`handle` takes an iopub message; :meth:`apply` takes one output in the
    ``on_output`` form (see the module docstring), so a copy of a cell's outputs can be
    rebuilt from what ``on_output`` reported.
    """

    on_output: OutputCallback | None
    max_bytes: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    execution_count: int | None = None
    truncated: bool = False
    _size: int = 0
    _clear_on_next: bool = False
    _display_ids: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # this cell's outputs per id
    _latest: dict[str, dict[str, Any]] = field(default_factory=dict)  # each id's latest data and metadata

    def handle(self, msg: dict[str, Any]) -> bool:
        """Take one iopub message for this cell; True when it is the final ``idle``."""
        kind = msg["msg_type"]
        content = msg["content"]
        if kind == "status":
            return content.get("execution_state") == "idle"
        if kind == "execute_input":
            self.execution_count = content.get("execution_count")
        elif kind == "stream":
            self.apply({"output_type": "stream", "name": content["name"], "text": content["text"]})
        elif kind in ("display_data", "execute_result", "update_display_data"):
            out = {"output_type": kind, "metadata": content.get("metadata", {}), "data": content["data"]}  # nbformat's order
            if kind == "execute_result":
                out["execution_count"] = content.get("execution_count")
            if content.get("transient"):
                out["transient"] = content["transient"]
            self.apply(out)
        elif kind == "error":
            self.apply({
                "output_type": "error",
                "ename": content.get("ename", ""),
                "evalue": content.get("evalue", ""),
                "traceback": content.get("traceback", []),
            })
        elif kind == "clear_output":
            self.apply({"output_type": "clear_output", "wait": bool(content.get("wait"))})
        return False

    def apply(self, out: dict[str, Any]) -> None:
        """Take one output in the ``on_output`` form: store it, apply it, pass it on."""
        kind = out["output_type"]
        if kind == "clear_output":
            if out["wait"]:
                self._clear_on_next = True
            else:
                self._clear()
            self._emit(out)
            return
        transient = out.get("transient") or None
        out = {k: v for k, v in out.items() if k != "transient"}
        display_id = (transient or {}).get("display_id")
        if display_id and kind in ("display_data", "execute_result", "update_display_data"):
            # like a front end: any message with a display id sets what every output with that id shows
            self._latest[display_id] = {"data": out["data"], "metadata": out.get("metadata", {})}
            for shown in self._display_ids.get(display_id, []):
                shown["data"], shown["metadata"] = out["data"], out.get("metadata", {})
        if kind == "update_display_data":
            self._emit({**out, "transient": transient or {}})
        else:
            self._add(out, transient)

    @property
    def displays(self) -> dict[str, dict[str, Any]]:
        """``ExecutionResult.displays``: each display id this cell touched, its content and outputs."""
        return {
            display_id: {
                **content,
                "outputs": [
                    i for i, out in enumerate(self.outputs) if any(out is s for s in self._display_ids.get(display_id, ()))
                ],
            }
            for display_id, content in self._latest.items()
        }

    def _add(self, out: dict[str, Any], transient: dict[str, Any] | None = None) -> None:
        if self._clear_on_next:
            self._clear()
        if self.max_bytes:
            if self.truncated:
                return
            room = self.max_bytes - self._size
            size = output_size(out)
            if size > room:
                self.truncated = True
                if out["output_type"] == "stream" and room > 0:
                    self._store({**out, "text": out["text"][:room]}, None)
                out, transient = {"output_type": "stream", "name": "stderr", "text": _truncation_marker(self.max_bytes)}, None
            self._size += size
        self._store(out, transient)

    def _store(self, out: dict[str, Any], transient: dict[str, Any] | None) -> None:
        last = self.outputs[-1] if self.outputs else None
        if out["output_type"] == "stream" and last and last["output_type"] == "stream" and last["name"] == out["name"]:
            last["text"] += out["text"]
        else:
            stored = dict(out)
            self.outputs.append(stored)
            display_id = (transient or {}).get("display_id")
            if display_id:
                self._display_ids.setdefault(display_id, []).append(stored)
        self._emit({**out, "transient": transient} if transient else out)

    def note_lost_idle(self) -> None:
        """The reply came but the final ``idle`` never did: say that output may be missing."""
        self._store({"output_type": "stream", "name": "stderr", "text": _LOST_IDLE}, None)

    def _clear(self) -> None:
        self.outputs.clear()
        self._display_ids.clear()
        self._clear_on_next = False
        self._size = 0

    def _emit(self, out: dict[str, Any]) -> None:
        if self.on_output is not None:
            self.on_output(out)


_CAPTURED = frozenset({"stream", "display_data", "execute_result", "error", "clear_output"})
"""The outputs an ipywidgets Output widget captures (a front end's message hook takes them)."""


def output_size(out: dict[str, Any]) -> int:
    """Characters an output holds (an nbformat output, or an output message's content)."""
    if "text" in out:
        return len(out["text"])
    if "data" in out:
        return sum(len(v) if isinstance(v, str) else len(json.dumps(v, default=str)) for v in out["data"].values())
    return sum(len(line) for line in out.get("traceback", ()))


_LOST_IDLE = (
    "\n[jupyter_sessionpool: output may be incomplete: the kernel's final status message never arrived "
    "(its output channel drops messages when a cell floods it faster than they are read).]\n"
)


def _truncation_marker(limit: int) -> str:
    return (
        f"\n[jupyter_sessionpool: output truncated: this cell produced more than {limit:,} characters of "
        "output; the rest was dropped. Raise max_output_size or write large results to a file.]\n"
    )
