"""What a cell produced, as nbformat outputs: the result type and the iopub-to-output model.

Imports nothing of zmq or of any worker, so the faces (magics, batch runs) and the workers
share it without pulling in each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .errors import ExecutionError

OutputCallback = Callable[[dict[str, Any]], Any]


@dataclass
class ExecutionResult:
    """What one cell produced. A Python exception in user code is ``status="error"`` here.

    ``outputs`` are nbformat v4 output dicts, consecutive stream outputs of the same name
    merged, ``clear_output`` and ``update_display_data`` already applied. ``truncated``
    is True when the cell's output passed ``max_output_size`` characters: the rest was
    dropped (and not streamed to ``on_output`` either), and a marker says so.
    """

    status: str
    execution_count: int | None
    outputs: list[dict[str, Any]]
    error: dict[str, Any] | None
    session: str | None
    kernel_id: str
    duration: float
    truncated: bool = False

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
    """Turns iopub messages into nbformat outputs the way a notebook front end would."""

    on_output: OutputCallback | None
    max_bytes: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    execution_count: int | None = None
    truncated: bool = False
    _size: int = 0
    _clear_on_next: bool = False
    _display_ids: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def handle(self, msg: dict[str, Any]) -> bool:
        """Take one iopub message for this cell; True when it is the final ``idle``."""
        kind = msg["msg_type"]
        content = msg["content"]
        if kind == "status":
            return content.get("execution_state") == "idle"
        if kind == "execute_input":
            self.execution_count = content.get("execution_count")
        elif kind == "stream":
            self._add({"output_type": "stream", "name": content["name"], "text": content["text"]})
        elif kind in ("display_data", "execute_result"):
            out = {"output_type": kind, "data": content["data"], "metadata": content.get("metadata", {})}
            if kind == "execute_result":
                out["execution_count"] = content.get("execution_count")
            self._add(out, content.get("transient"))
        elif kind == "update_display_data":
            self._update(content)
        elif kind == "error":
            self._add({
                "output_type": "error",
                "ename": content.get("ename", ""),
                "evalue": content.get("evalue", ""),
                "traceback": content.get("traceback", []),
            })
        elif kind == "clear_output":
            if content.get("wait"):
                self._clear_on_next = True
            else:
                self._clear()
            self._emit({"output_type": "clear_output", "wait": bool(content.get("wait"))})
        return False

    def _add(self, out: dict[str, Any], transient: dict[str, Any] | None = None) -> None:
        if self._clear_on_next:
            self._clear()
        if self.max_bytes:
            if self.truncated:
                return
            room = self.max_bytes - self._size
            size = _size_of(out)
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

    def _update(self, content: dict[str, Any]) -> None:
        display_id = content.get("transient", {}).get("display_id")
        for out in self._display_ids.get(display_id, []):
            out["data"] = content["data"]
            out["metadata"] = content.get("metadata", {})
        self._emit({
            "output_type": "update_display_data",
            "data": content["data"],
            "metadata": content.get("metadata", {}),
            "transient": content.get("transient", {}),
        })

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


def _size_of(out: dict[str, Any]) -> int:
    if "text" in out:
        return len(out["text"])
    if "data" in out:
        return sum(len(v) if isinstance(v, str) else 64 for v in out["data"].values())
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
