"""Running one request on a held kernel: a cell (execute_request) or a comm message, to reply + idle.

Called only by the lease holder (or the recovery task that takes an abandoned cell over),
never by the pool's bookkeeping. It speaks to the kernel only through the worker interface:
the request's messages arrive through the worker's reader, so a cell abandoned by its
caller is still followed to its end by whoever reads on. Timeouts escalate: interrupt, then
give up on the kernel if it is still busy after ``interrupt_timeout``.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from .comms import CommCallback, KernelComms
from .errors import ExecutionTimeout, KernelDied, ProtocolError
from .results import ExecutionResult, OutputCallback, _Outputs
from .workers.base import KernelExited, KernelWorker

IDLE_GRACE = 5.0
"""Seconds of iopub silence after the execute_reply before a cell counts as done without its idle.

IOPub is ZeroMQ PUB/SUB: a kernel whose send queue overflows (one we could not tune, a loaded
machine) drops messages, the final ``status: idle`` among them. The reply (on shell) is never
dropped, so once it is in and the cell's iopub has gone quiet, waiting longer would wedge the session.
"""

SETTLE = 0.25
"""Seconds an abandoned cell (or a kernel driven directly through ``Lease.client``) gets to end
on its own before it is interrupted: an interrupt landing just as a cell ends can lose its
idle or kill the kernel, and most abandoned cells are about to end anyway."""


class Execution:
    """One request in flight on a kernel, followed to its reply (if it has one) and final idle.

    An ``execute_request`` (:meth:`cell`) or a comm message (``comm_msg``/``comm_close``),
    which has no reply: the kernel's ``idle`` for it says it was handled. ``on_output`` and ``on_comm``
    are handed off (see :mod:`._handoff`) on the kernel's one queue: they run on a callback
    thread, in the order the kernel sent their messages, and :func:`run` returns only after
    every call for this request has run. Comm events of this request go to ``on_comm``, or
    to the session's watchers without one (:mod:`.comms`).
    """

    def __init__(
        self,
        worker: KernelWorker,
        msg_type: str,
        content: dict[str, Any],
        on_output: OutputCallback | None = None,
        max_output_size: int = 0,
        on_comm: CommCallback | None = None,
        buffers: list[bytes] | None = None,
    ) -> None:
        self.worker = worker
        self.started = time.monotonic()
        self.replies = msg_type == "execute_request"  # a comm message has no reply: its idle ends it
        self.reply: dict[str, Any] | None = None
        self.idle = False
        self.abandoned = False
        self.on_comm = on_comm
        self._heard = self.started  # when this request's last message arrived
        self._loop = asyncio.get_running_loop()
        self.comms = KernelComms.of(worker)
        self._on_output = on_output
        self._failed: BaseException | None = None  # what on_output raised
        self.outputs = _Outputs(self._queue_output if on_output is not None else None, max_output_size)
        self.request = worker.request(msg_type, content, buffers=buffers)
        self.msg_id = self.request.msg_id

    @classmethod
    def cell(
        cls,
        worker: KernelWorker,
        code: str,
        on_output: OutputCallback | None = None,
        max_output_size: int = 0,
        store_history: bool = True,
        on_comm: CommCallback | None = None,
    ) -> Execution:
        """Run ``code`` as a cell (``execute_request``)."""
        content = {"code": code, "silent": False, "store_history": store_history, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": False}
        return cls(worker, "execute_request", content, on_output, max_output_size, on_comm)

    @property
    def done(self) -> bool:
        return (self.reply is not None or not self.replies) and self.idle

    def _queue_output(self, out: dict[str, Any]) -> None:
        self.comms.handoff.put(lambda: self._deliver(out))

    def _deliver(self, out: dict[str, Any]) -> None:
        """On the callback thread: one output to on_output, unless an earlier one failed."""
        on_output = self._on_output
        if self._failed is not None or on_output is None:
            return
        try:
            on_output(out)
        except BaseException as exc:
            self._failed = exc
            self._loop.call_soon_threadsafe(self._interject, exc)  # end the caller's wait with that error

    def _interject(self, error: BaseException) -> None:
        if not self.abandoned:
            self.request.interject(error)

    def abandon(self) -> None:
        """Its caller is gone: stop passing it outputs and events (comm events go to the watchers)."""
        self.abandoned = True
        self.request.interject(None)
        self.outputs.on_output = None
        self._on_output = self.on_comm = None

    async def follow(self, deadline: float | None, idle_ends: bool = False) -> bool:
        """Read this cell's messages until it is done (True) or ``deadline`` passes (False).

        With ``idle_ends`` the cell's own ``idle`` ends it even without a reply (an interrupt
        that lands between the last output and the reply makes ipykernel skip the reply).
        Raises KernelExited if the kernel dies, ProtocolError on a malformed message.
        """
        while not (self.done or (idle_ends and self.idle)):
            wait_until = deadline
            if self.reply is not None:  # only the idle is missing: give up on it once iopub goes quiet
                wait_until = min(deadline or math.inf, self._heard + IDLE_GRACE)
            got = await self.request.next(wait_until)
            if got is None:
                if self.reply is None or time.monotonic() < self._heard + IDLE_GRACE:
                    return False
                self.outputs.note_lost_idle()
                self.idle = True
                break
            channel, msg = got
            self._heard = time.monotonic()
            if channel == "shell":
                if not self.replies or msg.get("msg_type") != "execute_reply" or not isinstance(msg.get("content"), dict):
                    raise ProtocolError(f"expected an execute_reply on shell, got {msg.get('msg_type')!r}")
                self.reply = msg
                continue
            event = self.comms.event_of(msg)
            if event is not None:
                self.comms.emit(event, self.on_comm)
                if event.msg_type == "output":
                    continue  # an Output widget's, not this request's (as in a front end)
            try:
                idle = self.outputs.handle(msg)
            except Exception as exc:  # a message of the right type with the wrong content
                raise ProtocolError(
                    f"kernel {self.worker.kernel_id} sent a malformed {msg.get('msg_type')!r} "
                    f"message ({type(exc).__name__}: {exc}); it was discarded"
                ) from exc
            self.idle = self.idle or idle
        return True

    async def flush(self) -> None:
        """Wait until every on_output and on_comm call for this request has run; re-raise what one raised."""
        await self.comms.handoff.flush()
        if self._failed is not None:
            raise self._failed

    def result(self, session: str | None) -> ExecutionResult:
        """The result so far (complete once ``done``)."""
        content = (self.reply or {}).get("content", {})
        status = content.get("status", "ok" if self.done else "incomplete")
        error = None
        if status == "error":
            error = {k: content.get(k) for k in ("ename", "evalue", "traceback")}
        return ExecutionResult(
            status=status,
            execution_count=content.get("execution_count", self.outputs.execution_count),
            outputs=self.outputs.outputs,
            error=error,
            session=session,
            kernel_id=self.worker.kernel_id,
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
    kernel must be replaced), ProtocolError, or what an ``on_output`` callback raised.
    """
    worker = execution.worker
    try:
        deadline = None if timeout is None else execution.started + timeout
        if await execution.follow(deadline):
            await execution.flush()
            return execution.result(session)
        await worker.interrupt()
        stopped = await execution.follow(time.monotonic() + interrupt_timeout, idle_ends=True)
        raise ExecutionTimeout(session, timeout or 0.0, restarted=not stopped, result=execution.result(session))
    except KernelExited as exc:
        # a cell that never reached the kernel has no outputs, not even empty ones: result None says so
        raise KernelDied(worker.kernel_id, session, execution.result(session) if exc.sent else None) from None
    finally:
        if execution.idle:  # ended: what still comes for it is orphan output; else recovery reads on
            execution.request.close()


async def probe(worker: KernelWorker, timeout: float) -> bool:
    """Ask ``kernel_info`` through the reader: True if answered within ``timeout`` (shell is free).

    Shell requests are answered in order, so the answer also says that whatever ran before it ended.
    """
    request = worker.request("kernel_info_request", {})
    try:
        deadline = time.monotonic() + timeout
        while (got := await request.next(deadline)) is not None:
            if got[0] == "shell":
                return True
        return False
    finally:
        request.close()


async def stop(execution: Execution, interrupt_timeout: float) -> bool:
    """Take over an abandoned cell and end it; True if the kernel is free again.

    The cell gets a moment to end on its own, then is interrupted; a kernel whose cell
    ended without a trace (its idle lost) is probed with ``kernel_info`` before it is given up.
    """
    execution.abandon()
    try:
        if await execution.follow(time.monotonic() + SETTLE, idle_ends=True):
            return True
        await execution.worker.interrupt()
        if await execution.follow(time.monotonic() + interrupt_timeout, idle_ends=True):
            return True
        return await probe(execution.worker, interrupt_timeout)
    except (KernelExited, ProtocolError):
        return False
    finally:
        execution.request.close()


async def quiesce(worker: KernelWorker, interrupt_timeout: float) -> bool:
    """Free a kernel its holder drove directly (``Lease.client``); True if it is free again.

    Waits a moment for what the holder sent to end (the router follows each such request
    to its idle), interrupts it if it does not, and ends with a ``kernel_info`` probe.
    """
    router = worker.router
    try:
        if not await router.outside_ended(time.monotonic() + SETTLE):
            await worker.interrupt()
            if not await router.outside_ended(time.monotonic() + interrupt_timeout):
                return False
        return await probe(worker, interrupt_timeout)
    except (KernelExited, ProtocolError):
        return False
