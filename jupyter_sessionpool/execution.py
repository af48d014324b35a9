"""Running one cell on a held kernel: send execute_request, gather outputs, end on reply + idle.

Called only by the lease holder, never by the pool's bookkeeping. Timeouts escalate:
interrupt, then give up on the kernel if it is still busy after ``interrupt_timeout``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .errors import ExecutionTimeout, KernelDied, ProtocolError
from .results import ExecutionResult, OutputCallback, _Outputs
from .workers.local import Inbox, KernelExited, PooledKernel

IDLE_GRACE = 5.0
"""Seconds of iopub silence after the execute_reply before a cell counts as done without its idle.

IOPub is ZeroMQ PUB/SUB: a cell that floods output faster than it is read loses messages at the
kernel's high-water mark, the final ``status: idle`` among them. The reply (on shell) is never
dropped, so once it is in and the cell's iopub has gone quiet, waiting longer would wedge the session.
"""


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
            displays=self.outputs.displays,
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
