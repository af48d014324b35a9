"""Running one cell on a held kernel: send execute_request, gather outputs, end on reply + idle.

Called only by the lease holder, never by the pool's bookkeeping. Timeouts escalate:
interrupt, then give up on the kernel if it is still busy after ``interrupt_timeout``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .errors import ExecutionError, ExecutionTimeout, KernelDied, ProtocolError
from .kernel import Inbox, KernelExited, PooledKernel

OutputCallback = Callable[[dict[str, Any]], Any]

IDLE_GRACE = 5.0
"""Seconds of iopub silence after the execute_reply before a cell counts as done without its idle.

IOPub is ZeroMQ PUB/SUB: a cell that floods output faster than it is read loses messages at the
kernel's high-water mark, the final ``status: idle`` among them. The reply (on shell) is never
dropped, so once it is in and the cell's iopub has gone quiet, waiting longer would wedge the session.
"""


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


class Execution:
    """One execute_request in flight on a kernel, followed to its reply and final idle."""

    def __init__(
        self,
        kernel: PooledKernel,
        code: str,
        on_output: OutputCallback | None = None,
        max_output_size: int = 0,
        store_history: bool = True,
    ) -> None:
        self.kernel = kernel
        self.started = time.monotonic()
        self.msg_id: str = kernel.client.execute(
            code, store_history=store_history, allow_stdin=False, stop_on_error=False
        )
        self.reply: dict[str, Any] | None = None
        self.idle = False
        self._heard = self.started  # when this cell's last message arrived
        self.outputs = _Outputs(on_output, max_output_size)

    @property
    def done(self) -> bool:
        return self.reply is not None and self.idle

    async def follow(self, deadline: float | None) -> bool:
        """Read this cell's messages until it is done (True) or ``deadline`` passes (False).

        Raises KernelExited if the kernel dies, ProtocolError on a malformed reply.
        """
        inbox = Inbox(self.kernel)
        try:
            while not self.done:
                wait_until = deadline
                if self.reply is not None:  # only the idle is missing: give up on it once iopub goes quiet
                    wait_until = min(deadline or math.inf, self._heard + IDLE_GRACE)
                got = await inbox.next(wait_until)
                if got is None:
                    if self.reply is None or time.monotonic() < self._heard + IDLE_GRACE:
                        return False
                    self.outputs.note_lost_idle()
                    self.idle = True
                    break
                channel, msg = got
                if msg.get("parent_header", {}).get("msg_id") != self.msg_id:
                    continue  # a stale message from an earlier request
                self._heard = time.monotonic()
                if channel == "shell":
                    if msg["msg_type"] != "execute_reply":
                        raise ProtocolError(f"expected execute_reply, got {msg['msg_type']!r}")
                    self.reply = msg
                elif self.outputs.handle(msg):
                    self.idle = True
            return True
        finally:
            inbox.close()

    def result(self, session: str | None) -> ExecutionResult:
        """The result so far (complete once ``done``)."""
        content = (self.reply or {}).get("content", {})
        status = content.get("status", "incomplete")
        error = None
        if status == "error":
            error = {k: content.get(k) for k in ("ename", "evalue", "traceback")}
        return ExecutionResult(
            status=status,
            execution_count=content.get("execution_count", self.outputs.execution_count),
            outputs=self.outputs.outputs,
            error=error,
            session=session,
            kernel_id=self.kernel.kernel_id,
            duration=time.monotonic() - self.started,
            truncated=self.outputs.truncated,
        )


async def run(
    execution: Execution,
    session: str | None,
    timeout: float | None,
    interrupt_timeout: float,
) -> ExecutionResult:
    """Follow ``execution`` to the end, escalating on timeout; the lease holder awaits this.

    Raises KernelDied (kernel exited), ExecutionTimeout (``restarted`` says whether the
    kernel must be replaced) or ProtocolError.
    """
    kernel = execution.kernel
    try:
        deadline = None if timeout is None else execution.started + timeout
        if await execution.follow(deadline):
            return execution.result(session)
        await kernel.interrupt()
        stopped = await execution.follow(time.monotonic() + interrupt_timeout)
        raise ExecutionTimeout(session, timeout or 0.0, restarted=not stopped, result=execution.result(session))
    except KernelExited:
        raise KernelDied(kernel.kernel_id, session, execution.result(session)) from None


async def stop(execution: Execution, interrupt_timeout: float) -> bool:
    """Interrupt an abandoned cell and wait for it to end; True if the kernel is free again."""
    execution.outputs.on_output = None  # its caller is gone; so is any interest in the output
    try:
        await execution.kernel.interrupt()
        return await execution.follow(time.monotonic() + interrupt_timeout)
    except (KernelExited, ProtocolError):
        return False
