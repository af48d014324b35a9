"""The one interface between the pool and a kernel, wherever the kernel runs.

The pool, its leases and the execution code talk to a kernel only through
:class:`KernelWorker`: start it (launch plus a ``kernel_info`` health check), send a request
and read the messages that answer it, interrupt it, stop it, and learn that it is gone.
Nothing here names zmq, a pid's signals, a connection file or HTTP; the local worker
(jupyter_client) and the gateway worker (REST + websocket) each fill it in.

Every worker has one reader that drains all of the kernel's channels all the time and hands
each message to a :class:`Router`, which routes it by its parent ``msg_id`` to the
:class:`Request` it answers. A request keeps its messages until they are read, whether or
not anyone is reading right now (a cancelled caller, a recovery task that takes over), so
no reply is lost to a cancellation. Output that answers no open request (a thread that
prints after its cell ended) goes to a small ring bounded in messages and characters, never
an unbounded backlog; what it drops is counted and said.
"""

from __future__ import annotations

import abc
import asyncio
import os
import time
from collections import deque
from typing import Any, Protocol

from ..results import output_size

Message = dict[str, Any]
"""A deserialized Jupyter message: ``header``, ``parent_header``, ``metadata``, ``content``,
``msg_id``, ``msg_type`` (as jupyter_client's ``Session.deserialize`` returns it)."""

ORPHAN_MESSAGES = 200
"""Most output messages kept per kernel that answer no open request (oldest dropped first)."""
ORPHAN_CHARS = 1_000_000
"""Most characters of such output kept per kernel, every output type counted (oldest dropped first)."""
ORPHAN_TEXT = 10_000
"""Characters kept of each such stream message (its end)."""

# Messages returned back to back (already queued) before yielding to the loop: more than a
# reader hands over per loop callback, so a reader never outpaces its consumer in a flood
# (the queue would grow by the difference every loop iteration).
_FAIR_SHARE = 256


# The pool's own start-up cell for an ipykernel, local or remote, run before the kernel is
# lent to anyone. It is the kernel's first execution, so a first cell's one-time costs are
# paid here rather than by the first caller, and it tunes what ipykernel has no setting for:
# * IOPub's send limit. At zmq's default (1,000 queued) ipykernel drops messages when the
#   pool's side is slower than a flooding cell (a loaded machine): 2.3% of a 100k-line flood
#   was lost that way. It is lifted on the kernel's IOPub thread (zmq sockets are not
#   thread-safe); the pool reads all the time, so the kernel-side queue stays short.
# * History writes. IPython commits every cell to its sqlite file (a thread wake and a disk
#   write per cell, ~10% of a remote `pass` on a stock gateway, whose kernels' arguments are
#   not ours to set); the cache makes it write every 1,000 cells and at exit instead. Local
#   pool kernels keep history in memory (``--HistoryManager.hist_file=:memory:``).
IPYKERNEL_PREPARATION = (
    "(lambda ip, z: (ip.kernel.iopub_thread.schedule(lambda: ip.kernel.iopub_thread.socket.setsockopt(z.SNDHWM, 0)),"
    " setattr(ip.history_manager, 'db_cache_size', 1000)))(get_ipython(), __import__('zmq')) and None"
)


class KernelExited(Exception):
    """The kernel is gone (its process ended, the gateway lost it); ``reason`` says how.

    ``sent`` is False when the request it is raised for never reached the kernel (a remote
    request held while the connection was down, dropped when the kernel turned out lost).
    """

    def __init__(self, reason: str, sent: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


class Request:
    """The messages that answer one request, in arrival order, as the reader routes them."""

    def __init__(self, router: Router, msg_id: str, channel: str) -> None:
        self.msg_id = msg_id
        self.channel = channel
        self._router = router
        self._queue: deque[tuple[str, Message]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._interjection: BaseException | None = None
        self._streak = 0

    def _put(self, channel: str, msg: Message) -> None:
        self._queue.append((channel, msg))
        if not _opens_a_request(msg):
            self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def interject(self, error: BaseException | None) -> None:
        """Make the current (or next) :meth:`next` raise ``error`` once (None: withdraw it).

        For a reason to stop reading that lives outside the kernel (a failing ``on_output``
        callback); the messages stay queued, so whoever reads on (recovery) sees every one.
        """
        self._interjection = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, deadline: float | None) -> tuple[str, Message] | None:
        """The next (channel, message), or None once ``deadline`` (``time.monotonic()``) passes.

        Raises the request's error (a ``ProtocolError`` for a malformed message) or
        :class:`KernelExited` once every message that arrived before the end was read.
        """
        while True:
            if self._interjection is not None:
                error, self._interjection = self._interjection, None
                raise error
            if self._queue:
                break
            self._streak = 0
            if self._error is not None:
                raise self._error
            if self._router.exit_reason is not None:
                raise KernelExited(self._router.exit_reason)
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return None
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            # A timer that resolves the waiter, not asyncio.wait_for: that costs a wrapper
            # future and two callbacks on every wait, and a wait happens nearly every message.
            timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if waiter.result() is _EXPIRED:
                return None
        self._streak += 1
        if self._streak >= _FAIR_SHARE:  # a flood never waits by itself: let other sessions run
            self._streak = 0
            await asyncio.sleep(0)
        return self._queue.popleft()

    def close(self) -> None:
        """Stop routing to this request; what still arrives for it counts as orphan output."""
        self._router._close(self)


_EXPIRED = object()


def _opens_a_request(msg: Message) -> bool:
    """A request's ``busy`` or its ``execute_input``: no reader acts on either before what follows.

    They wait in the queue for the next message instead of waking the reader: a wake-up is a
    loop pass and a task step, two per cell the pool paid and never used (profiled).
    """
    kind = msg.get("msg_type")
    return kind == "execute_input" or (kind == "status" and msg.get("content", {}).get("execution_state") == "busy")


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(_EXPIRED)


class CommSink(Protocol):
    """Where a kernel's comm traffic goes (the pool's ``comms.KernelComms``)."""

    def take(self, msg: Message, answered: bool) -> bool:
        """See every iopub message; True if it consumed one that answers no request."""


class Router:
    """Routes each message a kernel sends to the open request it answers (by parent msg_id).

    Called by the worker's reader, synchronously, on the pool's event loop. It also keeps
    the kernel's last ``execution_state`` as its iopub ``status`` messages report it, and
    follows requests sent around the pool (``Lease.client``) to their ``idle``. Every iopub
    message is shown to ``comms`` first, the kernel's comm sink, in arrival order: comm
    traffic that answers no request ends there instead of among the orphans.
    """

    def __init__(self) -> None:
        self._open: dict[str, Request] = {}
        self.comms: CommSink | None = None
        self.orphans = OrphanRing()
        self.execution_state: str | None = None
        self.kernel_info: dict[str, Any] | None = None  # the content of the latest kernel_info reply
        self.exit_reason: str | None = None
        self._outside: set[str] = set()  # requests sent around the pool, not yet ended (idle)
        self._ended: deque[str] = deque(maxlen=_ENDED_KEPT)  # recent idles nobody expected (yet)
        self._outside_waiter: asyncio.Future[None] | None = None

    def open(self, msg_id: str, channel: str = "shell") -> Request:
        """Start collecting the messages whose parent is ``msg_id`` (call before sending it)."""
        request = self._open[msg_id] = Request(self, msg_id, channel)
        return request

    def deliver(self, channel: str, msg: Message) -> None:
        """Hand one message from ``channel`` (shell, iopub, control, stdin) to its request."""
        parent = msg.get("parent_header", {}).get("msg_id", "")
        if channel == "iopub" and msg.get("msg_type") == "status":
            self.execution_state = msg.get("content", {}).get("execution_state", self.execution_state)
            if self.execution_state == "idle" and parent not in self._open:
                self._outside_ended(parent)
        elif channel == "shell" and msg.get("msg_type") == "kernel_info_reply":
            self.kernel_info = msg.get("content")
        request = self._open.get(parent)
        if channel == "iopub" and self.comms is not None and self.comms.take(msg, request is not None):
            return
        if request is not None:
            request._put(channel, msg)
        elif channel == "iopub" and msg.get("msg_type") in _OUTPUT_TYPES:
            self.orphans.append(msg)

    def expect(self, msg_id: str) -> None:
        """A request was sent around the pool (through ``Lease.client``): follow it to its idle."""
        if msg_id in self._ended:
            self._ended.remove(msg_id)
        else:
            self._outside.add(msg_id)

    async def outside_ended(self, deadline: float) -> bool:
        """Wait until every :meth:`expect`-ed request has ended; False if ``deadline`` passes first."""
        while self._outside and self.exit_reason is None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return False
            self._outside_waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._outside_waiter, timeout)
            except TimeoutError:
                return False
        return not self._outside

    def _outside_ended(self, msg_id: str) -> None:
        if msg_id in self._outside:
            self._outside.discard(msg_id)
            if not self._outside and self._outside_waiter is not None and not self._outside_waiter.done():
                self._outside_waiter.set_result(None)
        else:  # its expect() may still be on its way from the sender's thread
            self._ended.append(msg_id)

    def fail(self, msg_id: str | None, error: BaseException) -> None:
        """A message for ``msg_id`` could not be read: its request raises ``error`` (None: all do)."""
        targets = list(self._open.values()) if msg_id is None else [self._open.get(msg_id)]
        for request in targets:
            if request is not None:
                request._fail(error)

    def exited(self, reason: str) -> None:
        """The kernel is gone: every open request raises KernelExited once its queue is read."""
        if self.exit_reason is None:
            self.exit_reason = reason
            for request in self._open.values():
                request._wake()
            if self._outside_waiter is not None and not self._outside_waiter.done():
                self._outside_waiter.set_result(None)

    def _close(self, request: Request) -> None:
        if self._open.get(request.msg_id) is request:
            del self._open[request.msg_id]


_ENDED_KEPT = 256
MEMORY_EVERY = 1.0
"""Seconds a kernel's memory reading is reused: a reading costs a file read (~10-70 us), and
snapshots of the pool are taken on every change."""


def _resident_bytes(pid: int) -> int | None:
    """Resident memory of a local process (Linux ``/proc``), or None when unknown."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class OrphanRing:
    """A kernel's output that answers no open request: the newest ``ORPHAN_MESSAGES`` messages
    and ``ORPHAN_CHARS`` characters of them, whatever their type (a stream message keeps its
    last ``ORPHAN_TEXT`` characters). What is dropped to stay in bounds is counted, and
    :meth:`take` says so first, so nothing is lost without a word."""

    def __init__(self, messages: int = ORPHAN_MESSAGES, chars: int = ORPHAN_CHARS) -> None:
        self.messages = messages
        self.chars = chars
        self.size = 0  # characters held now
        self._items: deque[tuple[int, Message]] = deque()
        self._dropped = self._dropped_chars = 0

    def append(self, msg: Message) -> None:
        msg = _trimmed(msg)
        size = output_size(msg.get("content", {}))
        self._items.append((size, msg))
        self.size += size
        while self._items and (len(self._items) > self.messages or self.size > self.chars):
            gone, _ = self._items.popleft()
            self.size -= gone
            self._dropped += 1
            self._dropped_chars += gone

    def take(self) -> list[Message]:
        """Hand over what is held, oldest first (after a note of what was dropped), and forget it."""
        taken = [msg for _, msg in self._items]
        if self._dropped:
            note = (f"[jupyter_sessionpool: {self._dropped} earlier output(s), {self._dropped_chars:,} characters, "
                    f"made while no cell ran were dropped; the pool keeps the last {self.chars:,} characters]\n")
            taken.insert(0, {"msg_type": "stream", "parent_header": {}, "content": {"name": "stderr", "text": note}})
        self._items.clear()
        self.size = self._dropped = self._dropped_chars = 0
        return taken

    def __len__(self) -> int:
        return len(self._items)


def _trimmed(msg: Message) -> Message:
    """An orphan stream message cut to ``ORPHAN_TEXT`` characters, so the ring's memory stays small."""
    content = msg.get("content", {})
    text = content.get("text")
    if msg.get("msg_type") == "stream" and isinstance(text, str) and len(text) > ORPHAN_TEXT:
        return {**msg, "content": {**content, "text": text[-ORPHAN_TEXT:]}}
    return msg


_OUTPUT_TYPES = frozenset({"stream", "display_data", "update_display_data", "execute_result", "error", "clear_output"})


class KernelWorker(abc.ABC):
    """One kernel, started, spoken to and stopped by whichever task holds it.

    A worker is driven by the task that holds it (a starting task, a lease holder, a
    stopping task), never by the pool's bookkeeping. ``exited`` resolves (with a reason)
    the moment the kernel is known to be gone, so a caller stuck mid-cell is told at once.
    """

    kernel_id: str
    router: Router
    exited: asyncio.Future[str]
    _memory_sample: tuple[float, int | None] | None = None  # (when, bytes): the last reading

    @property
    def pid(self) -> int | None:
        """The kernel's local process id, or None where there is no local process."""
        return None

    @property
    def kernel_info(self) -> dict[str, Any] | None:
        """The content of the kernel's latest ``kernel_info`` reply (its health check's, or a later
        probe's): ``language_info``, ``implementation``, ``banner``...; None before the first."""
        return self.router.kernel_info

    def memory(self) -> int | None:
        """Bytes of memory the kernel uses, where there is such a figure: the resident set of its
        local process (read at most once every ``MEMORY_EVERY`` seconds); None without one (remote)."""
        pid = self.pid
        if pid is None:
            return None
        now = time.monotonic()
        if self._memory_sample is None or now - self._memory_sample[0] >= MEMORY_EVERY:
            self._memory_sample = (now, _resident_bytes(pid))
        return self._memory_sample[1]

    @property
    def location(self) -> str:
        """Where the kernel runs, for people: ``"local"``, or the gateway it lives on."""
        return "local"

    @property
    def client(self) -> Any:
        """The jupyter_client KernelClient where one exists (local kernels), else None.

        Every request sent through it (or through a client sharing its ``session``) is
        announced to :meth:`Router.expect`, so the pool can wait for it to end.
        """
        return None

    @property
    def alive(self) -> bool:
        """True from a successful start until the kernel is gone or stopped."""
        return not self.exited.done()

    @abc.abstractmethod
    async def start(self, timeout: float) -> None:
        """Launch the kernel and return once it answered ``kernel_info`` and its output channel is live.

        Raises KernelStartError (carrying :meth:`evidence`) on any failure, after cleaning
        up whatever was started; cancelling it also cleans up.
        """

    @abc.abstractmethod
    def request(
        self, msg_type: str, content: dict[str, Any], channel: str = "shell", buffers: list[bytes] | None = None
    ) -> Request:
        """Send a request (with binary ``buffers``, e.g. a comm message's) and return the
        :class:`Request` its answers are routed to."""

    @abc.abstractmethod
    async def interrupt(self) -> None:
        """Interrupt the running cell (however the kernel wants it: signal, message, REST)."""

    @abc.abstractmethod
    async def stop(self, timeout: float, now: bool = False) -> None:
        """Ask the kernel to exit, kill it after ``timeout`` s (at once with ``now``), clean up.

        Idempotent, and safe to cancel: a cancelled stop still leaves no kernel behind.
        """

    async def prepare(self, deadline: float) -> None:
        """Run :data:`IPYKERNEL_PREPARATION` on a fresh ipykernel and wait for its reply and idle."""
        content = {"code": IPYKERNEL_PREPARATION, "silent": False, "store_history": False,
                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": False}
        # not ``silent``: the kernel takes a user cell's path (execute_input, display hook) and pays its first costs
        request = self.request("execute_request", content)
        try:
            replied = idle = False
            while not (replied and idle):
                got = await request.next(deadline)
                if got is None:
                    raise TimeoutError("the kernel did not finish its start-up cell within the startup timeout")
                channel, msg = got
                replied = replied or channel == "shell"
                idle = idle or (msg.get("msg_type") == "status" and msg["content"].get("execution_state") == "idle")
        finally:
            request.close()

    @abc.abstractmethod
    def evidence(self) -> str:
        """What to show in an error about this kernel: its stderr tail, or the gateway's answer."""

    def abandon(self) -> None:
        """Stop the kernel without waiting for it, from any thread: its pool was dropped without shutdown().

        On a running loop the stop is a task of its own; where the loop no longer runs, :meth:`kill`.
        """
        loop = self.exited.get_loop()
        if loop.is_running():
            loop.call_soon_threadsafe(_stop_abandoned, self)
        else:
            self.kill()

    @abc.abstractmethod
    def kill(self) -> None:
        """End the kernel at once without the event loop (what :meth:`abandon` does where no loop runs)."""


_abandoned: set[asyncio.Task[None]] = set()  # stops of dropped pools' kernels, held until done


def _stop_abandoned(worker: KernelWorker) -> None:
    task = asyncio.ensure_future(worker.stop(0, now=True))
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


class Workers(abc.ABC):
    """Makes one pool's kernel workers and owns what they share (a zmq context, an HTTP client).

    ``settings`` (a PoolSettings: the pool passes a weak proxy of itself) is read as each
    kernel is made, so a changed setting applies to the next kernel; the few a backend reads
    only once, when it is made, are its :meth:`fixed_settings`, and a change of any of them
    makes the pool start its next kernels on a new Workers (this one serves on the kernels it
    made, until the last has stopped: then the pool closes it).
    """

    location = "local"
    """Where this backend's kernels run, for people: ``"local"``, or the gateway's host:port."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.fixed = self.fixed_settings(settings)

    @classmethod
    def fixed_settings(cls, settings: Any) -> tuple[Any, ...]:
        """The values of the settings this backend reads once, when made (none by default)."""
        return ()

    @abc.abstractmethod
    async def open(self) -> None:
        """Acquire the shared resources, and check the kernel name where that needs I/O."""

    @abc.abstractmethod
    def new(self, kernel_id: str) -> KernelWorker:
        """A worker for a kernel not yet started."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the shared resources, once every worker has stopped."""
