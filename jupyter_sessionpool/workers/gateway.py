"""Kernels on a Jupyter Kernel Gateway or Enterprise Gateway: REST to start and stop them, one websocket to talk.

Our own small client on tornado (jupyter_server's gateway client blocks the event loop while
it connects, busy-polls a core while it waits and sends no token on the websocket). Per
kernel there is one websocket and no thread: tornado calls :meth:`GatewayWorker._on_frame`
for each frame, which routes the message at once.

A gateway restarts a kernel under the same id with empty state (when it dies, or when anyone
asks over REST), so the worker never trusts the id alone. What it trusts, and how:

* **The kernel's own session.** An ipykernel picks a new ``header.session`` per process and
  puts it on every message. The worker records it from the start-up ``kernel_info`` reply;
  any later message from another session (the gateway's rate-limit ``stream`` notices
  excepted) means another process answers: the kernel is lost, and that message is never
  delivered as if the old kernel had sent it.
* **The old kernel's last word.** A restart or shutdown by anyone else makes the kernel
  broadcast a ``shutdown_reply`` on iopub before it exits (the new process's ``starting``
  status is usually lost to the gateway's slow reconnect, so it cannot be relied on); that
  ends the worker at once. So do the gateway's own ``restarting`` / ``dead`` statuses.
* **Proof after every reconnection.** The connection is a small state machine
  (:mod:`._link`): a reopened websocket is VERIFYING until ``kernel_info`` (asked on control,
  which a busy ipykernel answers too, and on shell) is answered by the same process within
  ``_VERIFY_FOR`` s; the pool's requests are held until then. A kernel that cannot prove it,
  including one that gives no session, is lost.

Other things a gateway does not say in so many words:

* a closed websocket is asked about over REST: 404 means the kernel is gone; otherwise the
  socket is reopened with back-off under the same session id, so the gateway replays what it
  buffered meanwhile. A reply lost in the cut is detected (the shell ``kernel_info`` of the
  verification overtakes no earlier reply) and fails its request instead of leaving it waiting.
* every REST call is bounded by the pool timeout that governs it (create by
  ``startup_timeout``, interrupt by ``interrupt_timeout``, delete by ``shutdown_timeout``,
  checks during a reconnect by its window), so a gateway that accepts connections and never
  answers delays nothing by more than that.
* a frame that is no well-formed message fails the request it answers (or every open request
  when it names none) with ``ProtocolError``; the socket stays up.
* stock gateways never set ``TCP_NODELAY``, so each small reply would wait ~40 ms for the
  client's delayed ACK; re-arming ``TCP_QUICKACK`` after every received frame (Linux) sends
  that ACK at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from jupyter_client import protocol_version
from jupyter_client.session import msg_header
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClosedError, WebSocketClientConnection, websocket_connect

from .._redact import redact, redact_url
from ..errors import KernelStartError, ProtocolError
from ._link import Link, LinkState
from ._wire import MalformedFrame, decode_json, decode_v1, encode_json, encode_v1
from .base import KernelExited, KernelWorker, Message, Request, Router, Workers

if TYPE_CHECKING:
    from ..config import PoolSettings

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12) if sys.platform.startswith("linux") else None
_CONNECT_TIMEOUT = 10.0  # seconds at most for a TCP (+TLS) connection to the gateway, within the call's own bound
_MIN_CALL = 1.0  # seconds a REST call gets when its budget is spent (an abandoned kernel's DELETE still gets one try)
_MAX_FRAME = 1 << 30  # tornado's default (10 MiB) would cut the connection on one big output
_PING_INTERVAL = 15.0  # websocket pings: a silent network cut closes the socket instead of hanging it
_RECONNECT_FOR = 10.0  # seconds to keep trying to reopen a dropped websocket before giving the kernel up
_VERIFY_FOR = 5.0  # seconds a reopened websocket's kernel has to prove (kernel_info) it is the same process
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 2.0
_START_POLL = 1.0  # during start-up, how often to ask whether the gateway still has the kernel
_EVIDENCE_CHARS = 4000
_GATEWAY_SAYS_LOST = frozenset({"restarting", "dead"})  # statuses the gateway itself sends (its KernelRestarter)
_TOKEN_HINT = "set gateway_token (or JUPYTER_GATEWAY_AUTH_TOKEN) to the gateway's auth token"


class _Unreachable(Exception):
    """The gateway did not answer at all (refused, reset, timed out, TLS failure)."""


class _Dropped(ConnectionError):
    """The websocket closed while a verification waited for its answer."""


def _backoff() -> Any:
    delay = _BACKOFF_FIRST
    while True:
        yield delay
        delay = min(_BACKOFF_MAX, delay * 2)


def _budget(deadline: float) -> float:
    """Seconds a REST call may take to end by ``deadline`` (at least ``_MIN_CALL``)."""
    return max(deadline - time.monotonic(), _MIN_CALL)


def _gateway_message(response: HTTPResponse) -> str:
    """The gateway's own words from an error response (its JSON ``message``/``reason``, else the body)."""
    body = (response.body or b"").decode("utf-8", "replace")
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip()[:_EVIDENCE_CHARS] or (response.reason or "")
    if isinstance(parsed, dict):
        for key in ("message", "reason"):
            if parsed.get(key):
                return str(parsed[key])
    return body.strip()[:_EVIDENCE_CHARS]


# ---- the per-pool part: settings and the HTTP client ---------------------------------------


class GatewayWorkers(Workers):
    """Makes one pool's gateway workers; owns the HTTP client, the gateway's address and headers.

    The pool's timeouts (``startup_timeout``, ``interrupt_timeout``, ``shutdown_timeout``) are
    read from ``settings`` when a call is made; what a person sees of the gateway's URL is
    ``display_url``, without its credentials.
    """

    def __init__(self, settings: PoolSettings) -> None:
        super().__init__(settings)  # kernel_name, env and cwd are read at each start, like the local workers
        self.log = settings.log
        self.url = settings.gateway_url.rstrip("/")
        self.display_url = redact_url(self.url)
        self.ws_url = "ws" + self.url[len("http") :]
        parts = urlsplit(self.url)
        self.location = parts.netloc.rpartition("@")[2]
        self.headers = {str(k): str(v) for k, v in settings.gateway_headers.items()}
        if settings.gateway_token and not any(k.lower() == "authorization" for k in self.headers):
            self.headers["Authorization"] = f"token {settings.gateway_token}"
        self.secrets = (settings.gateway_token, parts.password, parts.username)  # never shown; see said()
        self._tls: dict[str, Any] = {"validate_cert": settings.gateway_validate_cert, "ca_certs": settings.gateway_ca_certs}
        self.http: AsyncHTTPClient | None = None
        self._spec_checked: str | None = None  # the kernel_name the gateway was found to have
        self.stopping: set[asyncio.Task[None]] = set()

    @classmethod
    def fixed_settings(cls, settings: Any) -> tuple[Any, ...]:
        """Every ``gateway_*`` setting: the address, credentials and TLS options are read once, when made."""
        return tuple(getattr(settings, name) for name in sorted(settings.trait_names()) if name.startswith("gateway_"))

    @property
    def kernel_name(self) -> str:
        return self.settings.kernel_name

    def said(self, text: str) -> str:
        """``text`` (the gateway's answer, an error) fit to show: the token and URL credentials masked."""
        return redact(text, self.secrets)

    def start_body(self) -> dict[str, Any]:
        """The POST /api/kernels body: the kernelspec and the kernels' environment (EG reads KERNEL_* there)."""
        env = {str(k): str(v) for k, v in self.settings.env.items()}
        if self.settings.cwd:
            env.setdefault("KERNEL_WORKING_DIR", self.settings.cwd)  # honoured where the gateway allows it
        return {"name": self.kernel_name, "env": env}

    def request(self, path: str, timeout: float, method: str = "GET", body: Any = None) -> HTTPRequest:
        """An HTTP (or websocket handshake) request to the gateway taking at most ``timeout`` s, with our headers."""
        if method == "POST" and body is None:
            body = {}
        return HTTPRequest(
            self.url + path,
            method=method,
            headers={**self.headers, **({"Content-Type": "application/json"} if body is not None else {})},
            body=None if body is None else json.dumps(body),
            connect_timeout=min(_CONNECT_TIMEOUT, timeout),
            request_timeout=timeout,
            **self._tls,
        )

    async def fetch(self, path: str, timeout: float, method: str = "GET", body: Any = None) -> HTTPResponse:
        """Send one REST call bounded by ``timeout`` s; any HTTP status is returned, no answer in time raises _Unreachable."""
        if self.http is None:
            raise _Unreachable("the pool's gateway client is closed")
        try:
            return await self.http.fetch(self.request(path, timeout, method, body), raise_error=False)
        except HTTPClientError as exc:  # 599: timed out or the connection dropped mid-request
            raise _Unreachable(self.said(str(exc))) from None
        except (OSError, asyncio.TimeoutError) as exc:  # refused, reset, DNS, TLS
            raise _Unreachable(self.said(f"{type(exc).__name__}: {exc}")) from None

    def refused(self, response: HTTPResponse, doing: str) -> KernelStartError:
        """The KernelStartError for a gateway that answered ``doing`` with an error status (its words in it)."""
        said = self.said(_gateway_message(response))[:500]
        answer = f"the gateway at {self.display_url} answered HTTP {response.code} when {doing}: {said}"
        if response.code == 401:
            return KernelStartError(self.kernel_name, answer, hint=_TOKEN_HINT, retryable=False)
        if response.code == 403:  # a limit (per user, max kernels) or a user rule: retrying only hammers it
            return KernelStartError(
                self.kernel_name, answer, hint="the gateway's limits or user rules refused it", retryable=False
            )
        if response.code == 404:
            return KernelStartError(
                self.kernel_name,
                answer,
                hint="check gateway_url: it must be the gateway's base URL, e.g. http://host:8888",
                retryable=False,
            )
        return KernelStartError(self.kernel_name, answer, hint=_GATEWAY_HINT, retryable=response.code >= 500)

    def unreachable(self, exc: BaseException) -> KernelStartError:
        return KernelStartError(
            self.kernel_name, f"the gateway at {self.display_url} does not answer ({exc})", hint=_GATEWAY_HINT
        )

    async def open(self) -> None:
        """Make the HTTP client and check ``kernel_name`` against the gateway's kernelspecs (within ``startup_timeout``).

        A gateway that does not answer yet is only a warning here: the check runs again
        before each start, whose failures the pool retries.
        """
        if self.http is None:
            self.http = AsyncHTTPClient(force_instance=True, max_clients=64)
        try:
            await self.check_kernelspec(time.monotonic() + self.settings.startup_timeout)
        except KernelStartError as exc:
            if exc.retryable:
                self.log.warning("cannot check kernel %r on the gateway yet: %s", self.kernel_name, exc.reason)
            else:
                raise

    async def check_kernelspec(self, deadline: float) -> None:
        """Raise KernelStartError unless the gateway has a kernelspec named ``kernel_name`` (asked once per pool)."""
        if self._spec_checked == self.kernel_name:
            return
        try:
            response = await self.fetch("/api/kernelspecs", _budget(deadline))
        except _Unreachable as exc:
            raise self.unreachable(exc) from None
        if response.code != 200:
            raise self.refused(response, "listing its kernelspecs")
        try:
            specs = json.loads(response.body).get("kernelspecs", {})
        except (ValueError, AttributeError):
            raise KernelStartError(
                self.kernel_name,
                f"{self.display_url} answered /api/kernelspecs with something other than a kernelspec list",
                hint="check gateway_url: it must point at a Jupyter Kernel Gateway or Enterprise Gateway",
                retryable=False,
            ) from None
        if self.kernel_name not in specs:
            raise KernelStartError(
                self.kernel_name,
                f"the gateway at {self.display_url} has no kernelspec {self.kernel_name!r}; it has: "
                + (", ".join(sorted(specs)) or "none"),
                hint="set kernel_name to one of the gateway's kernelspecs",
                retryable=False,
            )
        self._spec_checked = self.kernel_name

    def new(self, kernel_id: str) -> GatewayWorker:
        return GatewayWorker(self, kernel_id)

    async def close(self) -> None:
        """Wait for the deletes still running (a cancelled stop goes on), then close the HTTP client."""
        while self.stopping:
            await asyncio.gather(*self.stopping, return_exceptions=True)
        if self.http is not None:
            self.http.close()
            self.http = None

    def __repr__(self) -> str:
        return f"<GatewayWorkers {self.display_url}>"


_GATEWAY_HINT = "check that the gateway is running and gateway_url is right; the pool retries with back-off"


# ---- one kernel -----------------------------------------------------------------------------


class GatewayWorker(KernelWorker):
    """One kernel on a gateway: created by POST, spoken to over its websocket, removed by DELETE.

    ``link`` is the connection's state (:class:`~._link.Link`); the start-up ``kernel_info``
    reply gives :attr:`kernel_info`, and its ``header.session`` identifies the kernel process.
    """

    def __init__(self, workers: GatewayWorkers, kernel_id: str) -> None:
        self.kernel_id = kernel_id
        self.router = Router()
        self.exited = asyncio.get_running_loop().create_future()
        self.remote_id: str | None = None
        self.link = Link()
        self._gw = workers
        self._log = workers.log
        self._session_id = uuid.uuid4().hex  # ours, one per kernel, kept across reconnects: the gateway replays to it
        self._kernel_info: dict[str, Any] | None = None
        self._kernel_session: str | None = None  # the kernel process's, from its start-up kernel_info reply
        self._ws: WebSocketClientConnection | None = None
        self._token: object | None = None
        self._v1 = False
        self._sock: socket.socket | None = None
        self._connection = 0  # bumped on every websocket (re)connect
        self._unanswered: dict[str, int] = {}  # shell msg_id -> the connection it was sent on
        self._probes: set[Request] = set()  # verification requests a dropped socket must fail
        self._reconnect: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None  # the lost-reply check after a reconnect
        self._stop_task: asyncio.Task[None] | None = None
        self._started = False
        self._evidence = ""

    @property
    def location(self) -> str:
        return self._gw.location

    @property
    def kernel_info(self) -> dict[str, Any] | None:
        """The content of the kernel's start-up ``kernel_info`` reply (``language_info``, ``implementation``, ...)."""
        return self._kernel_info

    def evidence(self) -> str:
        return self._evidence

    def __repr__(self) -> str:
        state = "exited" if self.exited.done() else self.link.state.value
        return f"<GatewayWorker kernel={self.kernel_id!r} remote={self.remote_id!r} on {self.location} {state}>"

    # ---- start ------------------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        creating = None
        try:
            await self._gw.check_kernelspec(deadline)
            creating = asyncio.ensure_future(self._create(deadline))
            await asyncio.shield(creating)  # a cancel must not lose the id of a kernel the POST made
            await self._connect_while_alive(deadline)
            await self._health_check(deadline)
        except asyncio.CancelledError:
            if creating is not None:
                await asyncio.gather(creating, return_exceptions=True)
            await self.stop(self._gw.settings.shutdown_timeout, now=True)
            raise
        except Exception as exc:
            await self.stop(self._gw.settings.shutdown_timeout, now=True)
            if isinstance(exc, KernelStartError):
                raise
            if isinstance(exc, KernelExited):
                reason = f"the kernel died during start-up ({exc.reason})"
            elif isinstance(exc, (TimeoutError, _Dropped)):
                reason = str(exc)
            else:
                reason = self._gw.said(f"{type(exc).__name__}: {exc}")
            raise KernelStartError(self._gw.kernel_name, reason, hint=_GATEWAY_HINT) from exc
        self._started = True
        self._log.info("kernel %s started on %s as %s", self.kernel_id, self.location, self.remote_id)

    async def _create(self, deadline: float) -> None:
        try:
            response = await self._gw.fetch("/api/kernels", _budget(deadline), "POST", self._gw.start_body())
        except _Unreachable as exc:
            raise self._gw.unreachable(exc) from None
        self._evidence = self._gw.said(_gateway_message(response))
        if response.code not in (200, 201):
            raise self._gw.refused(response, "starting a kernel")
        self.remote_id = json.loads(response.body)["id"]

    async def _connect_while_alive(self, deadline: float) -> None:
        """Open the websocket (the gateway completes the handshake once the kernel is up), but
        fail early if the gateway drops the kernel meanwhile (a kernel that crashes at start)."""
        connect = asyncio.ensure_future(self._connect(deadline))
        try:
            while not connect.done():
                await asyncio.wait([connect], timeout=min(_START_POLL, max(0.0, deadline - time.monotonic())))
                if connect.done():
                    break
                if time.monotonic() >= deadline:
                    raise TimeoutError("the gateway did not connect us to the kernel within the startup timeout")
                if await self._kernel_state(deadline) == "gone":
                    raise KernelStartError(
                        self._gw.kernel_name,
                        f"the kernel exited during start-up: the gateway at {self._gw.display_url} no longer has it",
                        hint="its stderr is in the gateway's log; try the kernelspec on the gateway's host",
                    )
            connect.result()
        finally:
            connect.cancel()

    async def _kernel_state(self, deadline: float) -> str:
        """``gone`` (404), ``there`` (200), or ``unknown`` (no answer by ``deadline``, or any other status)."""
        try:
            response = await self._gw.fetch(f"/api/kernels/{quote(self.remote_id)}", _budget(deadline))
        except _Unreachable as exc:
            self._evidence = str(exc)
            return "unknown"
        if response.code != 200:
            self._evidence = f"HTTP {response.code}: {self._gw.said(_gateway_message(response))}"
        return {200: "there", 404: "gone"}.get(response.code, "unknown")

    async def _connect(self, deadline: float) -> None:
        """Open a websocket to the kernel by ``deadline``: the link goes VERIFYING (nothing is sent yet)."""
        path = f"/api/kernels/{quote(self.remote_id)}/channels?session_id={self._session_id}"
        request = self._gw.request(path, _budget(deadline))
        request.url = self._gw.ws_url + path
        token = object()  # frames of a socket that is no longer ours are ignored
        early: list[str | bytes | None] | None = []  # frames before we took the socket (a replay can come at once)

        def on_frame(frame: str | bytes | None) -> None:
            if early is not None:
                early.append(frame)
            elif self._token is token:
                self._on_frame(frame)

        connecting = websocket_connect(
            request,
            on_message_callback=on_frame,
            subprotocols=[V1_PROTOCOL],
            max_message_size=_MAX_FRAME,
            ping_interval=_PING_INTERVAL,
        )
        try:
            ws = await asyncio.shield(connecting)
        except asyncio.CancelledError:  # tornado would finish the handshake anyway: close what it opens
            connecting.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().close())
            raise
        except HTTPClientError as exc:
            if exc.code in (401, 403):
                raise KernelStartError(
                    self._gw.kernel_name,
                    f"the gateway at {self._gw.display_url} refused our websocket (HTTP {exc.code})",
                    hint=_TOKEN_HINT,
                    retryable=False,
                ) from None
            raise
        if self.exited.done():  # stopped while connecting
            ws.close()
            return
        self._ws, self._token = ws, token
        self._v1 = ws.selected_subprotocol == V1_PROTOCOL
        self._connection += 1
        self.link.opened()
        stream = ws.protocol.stream
        stream.set_nodelay(True)
        self._sock = stream.socket if _TCP_QUICKACK is not None else None
        arrived, early = early, None
        for frame in arrived:
            self._on_frame(frame)

    async def _health_check(self, deadline: float) -> None:
        """VERIFYING at start: kernel_info answered on shell (its session is the process's identity from now
        on) and its iopub ``idle`` seen (the output channel is live); then OPEN, and the start-up cell."""
        probe = self._probe("shell")
        replied = idle = False
        try:
            while not (replied and idle):
                got = await probe.next(deadline)
                if got is None:
                    raise TimeoutError("no kernel_info reply within the startup timeout")
                channel, msg = got
                if channel == "shell":
                    replied = True
                    self._kernel_info = msg["content"]
                    self._kernel_session = msg["header"].get("session") or None
                elif msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                    idle = True
        finally:
            self._close_probe(probe)
        for channel, msg in self.link.verified():
            self._write(channel, msg)
        if self._kernel_info.get("implementation") == "ipython":
            await self.prepare(deadline)

    # ---- messages -------------------------------------------------------------------------

    def request(
        self, msg_type: str, content: dict[str, Any], channel: str = "shell", buffers: list[bytes] | None = None
    ) -> Request:
        """Send a request now if the link is OPEN, else hold it until the kernel proved who it is."""
        msg = self._message(msg_type, content)
        if buffers:
            msg["buffers"] = buffers
        request = self.router.open(msg["header"]["msg_id"], channel)
        if self.exited.done():
            return request  # its next() raises KernelExited
        if self.link.open:
            self._write(channel, msg)
        else:
            self.link.hold((channel, msg))
        return request

    def _message(self, msg_type: str, content: dict[str, Any]) -> Message:
        header = msg_header(uuid.uuid4().hex, msg_type, "jupyter_sessionpool", self._session_id)
        header["version"] = protocol_version
        return {"header": header, "parent_header": {}, "metadata": {}, "content": content}  # the gateway signs it

    def _probe(self, channel: str) -> Request:
        """A kernel_info request sent at once, past the hold: the verification of a socket just opened."""
        msg = self._message("kernel_info_request", {})
        probe = self.router.open(msg["header"]["msg_id"], channel)
        self._probes.add(probe)
        if not self._write(channel, msg):
            self.router.fail(probe.msg_id, _Dropped("the websocket closed before the kernel could be asked who it is"))
        return probe

    def _close_probe(self, probe: Request) -> None:
        self._probes.discard(probe)
        probe.close()

    def _write(self, channel: str, msg: Message) -> bool:
        """Put a message on the socket; False if it closed (a request is then held: the close reconnects)."""
        ws = self._ws
        try:
            if ws is None:
                raise WebSocketClosedError()
            if self._v1:
                sent = ws.write_message(encode_v1(channel, msg), binary=True)
            else:
                frame = encode_json(channel, msg)
                sent = ws.write_message(frame, binary=isinstance(frame, bytes))
        except WebSocketClosedError:
            if msg["header"]["msg_id"] not in {p.msg_id for p in self._probes}:
                self.link.hold((channel, msg))
            return False
        sent.add_done_callback(lambda f: f.cancelled() or f.exception())  # a failed write shows as the close
        if channel == "shell":
            self._unanswered[msg["header"]["msg_id"]] = self._connection
        return True

    def _on_frame(self, frame: str | bytes | None) -> None:
        """tornado's callback for every frame of the current websocket (None: it closed). Never raises:
        an exception here would make tornado drop the connection."""
        if frame is None:
            self._closed()
            return
        if self._sock is not None:
            try:  # the kernel undoes QUICKACK after a while: re-arm it after every frame
                self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                self._sock = None
        try:
            channel, msg = decode_v1(frame) if self._v1 and isinstance(frame, bytes) else decode_json(frame)
            self._take(channel, msg)
        except MalformedFrame as exc:
            self._malformed(str(exc), exc.parent)
        except Exception as exc:  # noqa: BLE001 - a message of a shape nobody expected: its requests fail, the socket stays
            self._malformed(f"{type(exc).__name__}: {exc}", None)

    def _take(self, channel: str, msg: Message) -> None:
        """Check one well-formed message against the kernel's identity, then route it."""
        kind, parent = msg["msg_type"], msg["parent_header"].get("msg_id")
        status = msg["content"].get("execution_state") if kind == "status" else None
        if channel == "iopub" and status in _GATEWAY_SAYS_LOST and not parent:
            self._lost(f"the gateway reports the kernel {status}: it died and was restarted, so its state is gone")
            return
        if channel == "iopub" and kind == "shutdown_reply":  # we never ask: someone restarts or stops the kernel
            restart = " for a restart" if msg["content"].get("restart") else ""
            self._lost(f"the kernel is shutting down{restart}, asked by someone else through the gateway, so its state is gone")
            return
        session = msg["header"].get("session")
        if self._kernel_session and session != self._kernel_session and not (channel == "iopub" and kind == "stream"):
            self._lost(
                f"another kernel process answers under its id (session {session!r}, not {self._kernel_session!r}): "
                "the gateway restarted it, so its state is gone"
            )
            return
        if status == "starting" and self._started and not parent:
            self._lost("the kernel reports itself starting: it was restarted, so its state is gone")
            return
        if channel == "shell" and parent:
            self._unanswered.pop(parent, None)
        self.router.deliver(channel, msg)

    def _malformed(self, problem: str, parent: str | None) -> None:
        """A frame that is no well-formed message: its request (or every open one) fails with ProtocolError."""
        self._log.warning("kernel %s on %s sent a malformed message (%s); failing %s",
                          self.kernel_id, self.location, problem, f"request {parent}" if parent else "its open requests")
        if parent:
            self._unanswered.pop(parent, None)
        self.router.fail(parent, ProtocolError(
            f"kernel {self.kernel_id} on {self.location} sent a malformed message ({problem}); it was discarded"))

    # ---- the websocket closed: reconnect, then prove it is the same kernel --------------------------

    def _closed(self) -> None:
        ws, self._ws, self._sock, self._token = self._ws, None, None, None
        if ws is None or self.exited.done():
            return
        self.link.dropped()
        for probe in list(self._probes):
            self.router.fail(probe.msg_id, _Dropped("the websocket closed before the kernel proved who it is"))
        if self._kernel_info is None:
            return  # still proving itself at start: that check fails with the drop, and the pool retries the start
        detail = f"with code {ws.close_code}" if ws.close_code else "abnormally"
        if not self._kernel_session:
            self._lost(f"its websocket closed {detail}, and the kernel gives no session id to prove it is "
                       "still the same process after a reconnect")
            return
        self._log.warning("websocket of kernel %s on %s closed %s; reconnecting", self.kernel_id, self.location, detail)
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.ensure_future(self._reopen())

    async def _reopen(self) -> None:
        """RECONNECTING: ask the gateway about the kernel and reopen the socket with back-off, then verify it.

        Gives the kernel up when the gateway says it is gone (404), or when no socket could be
        reopened and verified within ``_RECONNECT_FOR`` s of the drop.
        """
        deadline = time.monotonic() + _RECONNECT_FOR
        delays = _backoff()
        while self.link.state is LinkState.RECONNECTING:
            state = await self._kernel_state(deadline)
            if state == "gone":
                self._lost("the gateway no longer has the kernel (it died or was culled)")
                return
            if state == "there" and self.link.state is LinkState.RECONNECTING:
                try:
                    await self._connect(deadline)
                except Exception as exc:  # noqa: BLE001 - any failure to reconnect is retried
                    self._evidence = self._gw.said(f"{type(exc).__name__}: {exc}")
                if self.link.state is LinkState.VERIFYING:
                    await self._verify()
                    if self.link.state is not LinkState.RECONNECTING:
                        return  # OPEN, or LOST
                    deadline, delays = time.monotonic() + _RECONNECT_FOR, _backoff()  # dropped again: a new window
                    continue
            if self.link.state is not LinkState.RECONNECTING:
                return
            if time.monotonic() >= deadline:
                self._lost(f"lost the connection to the gateway at {self._gw.display_url} for {_RECONNECT_FOR:g} s "
                           f"({self._evidence})")
                return
            await asyncio.sleep(next(delays))

    async def _verify(self) -> None:
        """VERIFYING after a reconnect: the first kernel_info reply, on control or shell, within ``_VERIFY_FOR`` s.

        Any message from another process is caught on arrival (:meth:`_take`) and ends the
        worker, so a reply that reaches its probe came from the process that answered at start:
        the link is OPEN and the held requests go out. The shell probe then also tells which
        requests sent before the drop lost their replies (it overtakes no earlier reply).
        """
        verifying = self._connection
        control, shell = self._probe("control"), self._probe("shell")
        answers = {asyncio.ensure_future(_reply(probe)): probe for probe in (control, shell)}
        shell_answer = next(task for task, probe in answers.items() if probe is shell)
        proven = False
        try:
            done, _ = await asyncio.wait(answers, timeout=_VERIFY_FOR, return_when=asyncio.FIRST_COMPLETED)
            first = min(done, key=lambda task: task.exception() is not None, default=None)  # an answer, if any
            if first is None:
                self._lost(f"the kernel did not answer kernel_info within {_VERIFY_FOR:g} s of the reconnect, so "
                           "nothing proves it is the same process; its state is treated as gone")
            elif first.exception() is None:
                proven = True
            elif not isinstance(first.exception(), (_Dropped, KernelExited)):
                self._lost(f"the kernel's answer to kernel_info after the reconnect was unusable ({first.exception()})")
        finally:
            for task, probe in answers.items():
                if not (proven and task is shell_answer):
                    task.cancel()
                    self._close_probe(probe)
        if not proven:
            return
        self._log.info("kernel %s: websocket reconnected to the same kernel process", self.kernel_id)
        for channel, msg in self.link.verified():
            self._write(channel, msg)
        self._watcher = asyncio.ensure_future(self._find_lost_replies(shell_answer, shell, verifying))

    async def _find_lost_replies(self, answer: asyncio.Future[Message], probe: Request, connection: int) -> None:
        """Once the shell probe of ``connection`` is answered, requests sent before it and still unanswered lost their reply."""
        try:
            await answer
        except Exception:  # the kernel went away, or the socket dropped again (the next verification checks)
            return
        finally:
            self._close_probe(probe)
        for msg_id, conn in list(self._unanswered.items()):
            if conn < connection:
                del self._unanswered[msg_id]
                self.router.fail(
                    msg_id,
                    ProtocolError(
                        f"the connection to kernel {self.kernel_id} on {self.location} dropped while a request "
                        "ran and its reply was lost; the kernel is replaced, as its state is unknown"
                    ),
                )

    def _lost(self, reason: str) -> None:
        if self.exited.done():
            return
        self._log.warning("kernel %s on %s is gone: %s", self.kernel_id, self.location, reason)
        self._end(reason)

    def _end(self, reason: str) -> None:
        held = self.link.lost()
        self.exited.set_result(reason)  # first: the pool hears of the death before any caller does
        self.router.exited(reason)
        for _, msg in held:  # held requests were never sent, and say so
            self.router.fail(msg["header"]["msg_id"], KernelExited(reason, sent=False))

    # ---- control --------------------------------------------------------------------------

    async def interrupt(self) -> None:
        """POST .../interrupt, bounded by ``interrupt_timeout``; a gateway that does not answer in time is logged,
        not raised (the cell's wait decides)."""
        if not self.alive or self.remote_id is None:
            return
        try:
            response = await self._gw.fetch(f"/api/kernels/{quote(self.remote_id)}/interrupt",
                                            self._gw.settings.interrupt_timeout, "POST")
        except _Unreachable as exc:
            self._log.warning("could not interrupt kernel %s: the gateway does not answer (%s)", self.kernel_id, exc)
            return
        if response.code == 404:
            self._lost("the gateway no longer has the kernel (it died or was culled)")
        elif response.code >= 300:
            self._log.warning("gateway refused to interrupt kernel %s: HTTP %s %s",
                              self.kernel_id, response.code, self._gw.said(_gateway_message(response)))

    def kill(self) -> None:
        if self.remote_id is not None and self._stop_task is None:  # a DELETE needs a loop: the culler must do it
            self._log.warning("kernel %s (%s) is left on %s for the gateway's culler to reclaim",
                              self.kernel_id, self.remote_id, self.location)

    async def stop(self, timeout: float, now: bool = False) -> None:
        """Close the websocket and DELETE the kernel (the gateway shuts it down, then kills it).

        ``now`` changes nothing: the gateway decides how to end it. The DELETE, retried while
        it fails (the gateway unreachable, or busy restarting the kernel), is given ``timeout``
        s in all (at least one try of ``_MIN_CALL`` s).
        """
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(timeout))
            self._gw.stopping.add(self._stop_task)
            self._stop_task.add_done_callback(self._gw.stopping.discard)
        await asyncio.shield(self._stop_task)

    async def _stop(self, timeout: float) -> None:
        if not self.exited.done():
            self._end("the kernel was stopped")
        if self._reconnect is not None:
            self._reconnect.cancel()
        ws, self._ws, self._token = self._ws, None, None
        if ws is not None:
            ws.close()
        if self.remote_id is None:
            return
        give_up = time.monotonic() + timeout
        delays = _backoff()
        path = f"/api/kernels/{quote(self.remote_id)}"
        while True:
            try:
                response = await self._gw.fetch(path, _budget(give_up), "DELETE")
            except _Unreachable as exc:
                problem, retry = str(exc), True
            else:
                if response.code in (200, 204, 404):
                    self._log.info("kernel %s deleted on %s", self.kernel_id, self.location)
                    return
                # 5xx: e.g. the gateway is restarting the kernel right now (it answers 500 then)
                problem = f"HTTP {response.code}: {self._gw.said(_gateway_message(response))}"
                retry = response.code >= 500
            delay = next(delays)
            if not retry or time.monotonic() + delay >= give_up:
                self._log.warning(
                    "could not delete kernel %s (%s) on %s: %s; the gateway's culler must reclaim it",
                    self.kernel_id, self.remote_id, self.location, problem,
                )
                return
            await asyncio.sleep(delay)


async def _reply(probe: Request) -> Message:
    """The reply to ``probe`` on its own channel (raises as its ``next`` does)."""
    while True:
        got = await probe.next(None)
        if got is not None and got[0] == probe.channel:
            return got[1]
