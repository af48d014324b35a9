"""Kernels on a Jupyter Kernel Gateway or Enterprise Gateway: REST to start and stop them, one websocket to talk.

Our own small client on tornado (jupyter_server's gateway client blocks the event loop while
it connects, busy-polls a core while it waits and sends no token on the websocket). Per
kernel there is one websocket and no thread: tornado calls :meth:`GatewayWorker._on_frame`
for each frame, which routes the message at once.

What a gateway does not tell in so many words, and how it is read here:

* a kernel that dies is restarted by the gateway under the same id with empty state; the
  websocket then carries a ``status`` of ``restarting`` (or ``dead`` once the gateway gives
  up), or after a REST restart a ``starting`` with no parent. Each of them ends the worker:
  a restarted kernel is never handed back as if it kept its variables.
* a closed websocket is asked about over REST: 404 means the kernel is gone; otherwise the
  socket is reopened with back-off under the same session id, so the gateway replays what it
  buffered meanwhile. A reply lost in the cut is detected (a ``kernel_info`` probe overtakes
  it) and fails its request instead of leaving it waiting.
* stock gateways never set ``TCP_NODELAY``, so each small reply would wait ~40 ms for the
  client's delayed ACK; re-arming ``TCP_QUICKACK`` after every received frame (Linux) sends
  that ACK at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from jupyter_client.jsonutil import json_default
from jupyter_client.session import msg_header
from jupyter_client import protocol_version
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClosedError, WebSocketClientConnection, websocket_connect

from ..errors import KernelStartError, ProtocolError
from .base import KernelExited, KernelWorker, Message, Request, Router, Workers

if TYPE_CHECKING:
    from ..config import PoolSettings

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12) if sys.platform.startswith("linux") else None
_CONNECT_TIMEOUT = 10.0  # seconds for a TCP (+TLS) connection to the gateway
_REQUEST_TIMEOUT = 30.0  # seconds for a REST call that does not wait on a kernel
_MAX_FRAME = 1 << 30  # tornado's default (10 MiB) would cut the connection on one big output
_PING_INTERVAL = 15.0  # websocket pings: a silent network cut closes the socket instead of hanging it
_RECONNECT_FOR = 10.0  # seconds to keep trying to reopen a dropped websocket before giving the kernel up
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 2.0
_START_POLL = 1.0  # during start-up, how often to ask whether the gateway still has the kernel
_EVIDENCE_CHARS = 4000
_TOKEN_HINT = "set gateway_token (or JUPYTER_GATEWAY_AUTH_TOKEN) to the gateway's auth token"


class _Unreachable(Exception):
    """The gateway did not answer at all (refused, reset, timed out, TLS failure)."""


def _backoff() -> Any:
    delay = _BACKOFF_FIRST
    while True:
        yield delay
        delay = min(_BACKOFF_MAX, delay * 2)


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


# ---- wire formats ------------------------------------------------------------------------


def encode_v1(channel: str, msg: Message) -> bytes:
    """A message as one ``v1.kernel.websocket.jupyter.org`` frame (uint64 LE offsets, channel, 4 JSON parts, buffers)."""
    parts = [channel.encode()] + [
        json.dumps(msg[key], default=json_default).encode() for key in ("header", "parent_header", "metadata", "content")
    ] + [bytes(buffer) for buffer in msg.get("buffers") or ()]
    offsets = [8 * (len(parts) + 2)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + b"".join(parts)


def decode_v1(frame: bytes) -> tuple[str, Message]:
    """The (channel, message) in a v1 frame; binary buffers land in ``buffers``."""
    (count,) = struct.unpack_from("<Q", frame)
    offsets = struct.unpack_from(f"<{count}Q", frame, 8)
    parts = [frame[a:b] for a, b in zip(offsets, offsets[1:])]
    if len(parts) < 5:
        raise ValueError(f"a v1 frame needs at least 5 parts, this one has {len(parts)}")
    header, parent, metadata, content = (json.loads(p) if p else {} for p in parts[1:5])
    return parts[0].decode(), _message(header, parent, metadata, content, parts[5:])


def encode_json(channel: str, msg: Message) -> str | bytes:
    """A message as a legacy frame: JSON text, or binary (uint32 BE offsets) when it has buffers."""
    buffers = [bytes(buffer) for buffer in msg.get("buffers") or ()]
    text = json.dumps({**{k: v for k, v in msg.items() if k != "buffers"}, "channel": channel}, default=json_default)
    if not buffers:
        return text
    parts = [text.encode(), *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts)


def decode_json(frame: str | bytes) -> tuple[str, Message]:
    """The (channel, message) in a legacy frame: JSON text, or binary with uint32 BE offsets and buffers."""
    buffers: list[bytes] = []
    if isinstance(frame, bytes):
        (count,) = struct.unpack_from("!I", frame)
        offsets = [*struct.unpack_from(f"!{count}I", frame, 4), len(frame)]
        frame, *buffers = (frame[a:b] for a, b in zip(offsets, offsets[1:]))
    raw = json.loads(frame)
    msg = _message(raw["header"], raw.get("parent_header") or {}, raw.get("metadata") or {}, raw["content"], buffers)
    return raw["channel"], msg


def _message(header: dict, parent: dict, metadata: dict, content: dict, buffers: list[bytes]) -> Message:
    return {
        "header": header,
        "parent_header": parent,
        "metadata": metadata,
        "content": content,
        "buffers": buffers,
        "msg_id": header.get("msg_id", ""),
        "msg_type": header.get("msg_type", ""),
    }


# ---- the per-pool part: settings and the HTTP client ---------------------------------------


class GatewayWorkers(Workers):
    """Makes one pool's gateway workers; owns the HTTP client, the gateway's address and headers."""

    def __init__(self, settings: PoolSettings) -> None:
        super().__init__(settings)  # kernel_name, env and cwd are read at each start, like the local workers
        self.log = settings.log
        self.url = settings.gateway_url.rstrip("/")
        self.ws_url = "ws" + self.url[len("http") :]
        self.location = urlsplit(self.url).netloc.rpartition("@")[2]
        self.headers = {str(k): str(v) for k, v in settings.gateway_headers.items()}
        if settings.gateway_token and not any(k.lower() == "authorization" for k in self.headers):
            self.headers["Authorization"] = f"token {settings.gateway_token}"
        self._tls: dict[str, Any] = {"validate_cert": settings.gateway_validate_cert, "ca_certs": settings.gateway_ca_certs}
        self.http: AsyncHTTPClient | None = None
        self._spec_checked: str | None = None  # the kernel_name the gateway was found to have
        self.stopping: set[asyncio.Task[None]] = set()

    @property
    def kernel_name(self) -> str:
        return self.settings.kernel_name

    def start_body(self) -> dict[str, Any]:
        """The POST /api/kernels body: the kernelspec and the kernels' environment (EG reads KERNEL_* there)."""
        env = {str(k): str(v) for k, v in self.settings.env.items()}
        if self.settings.cwd:
            env.setdefault("KERNEL_WORKING_DIR", self.settings.cwd)  # honoured where the gateway allows it
        return {"name": self.kernel_name, "env": env}

    def request(self, path: str, method: str = "GET", body: Any = None, timeout: float = _REQUEST_TIMEOUT) -> HTTPRequest:
        """An HTTP (or websocket handshake) request to the gateway, with our headers and TLS settings."""
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

    async def fetch(self, path: str, method: str = "GET", body: Any = None, timeout: float = _REQUEST_TIMEOUT) -> HTTPResponse:
        """Send one REST call; any HTTP status is returned, no answer at all raises _Unreachable."""
        if self.http is None:
            raise _Unreachable("the pool's gateway client is closed")
        try:
            return await self.http.fetch(self.request(path, method, body, timeout), raise_error=False)
        except HTTPClientError as exc:  # 599: timed out or the connection dropped mid-request
            raise _Unreachable(str(exc)) from None
        except (OSError, asyncio.TimeoutError) as exc:  # refused, reset, DNS, TLS
            raise _Unreachable(f"{type(exc).__name__}: {exc}") from None

    def refused(self, response: HTTPResponse, doing: str) -> KernelStartError:
        """The KernelStartError for a gateway that answered ``doing`` with an error status (its words in it)."""
        said = _gateway_message(response)[:500]
        answer = f"the gateway at {self.url} answered HTTP {response.code} when {doing}: {said}"
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
            self.kernel_name, f"the gateway at {self.url} does not answer ({exc})", hint=_GATEWAY_HINT
        )

    async def open(self) -> None:
        """Make the HTTP client and check ``kernel_name`` against the gateway's kernelspecs.

        A gateway that does not answer yet is only a warning here: the check runs again
        before each start, whose failures the pool retries.
        """
        if self.http is None:
            self.http = AsyncHTTPClient(force_instance=True, max_clients=64)
        try:
            await self.check_kernelspec()
        except KernelStartError as exc:
            if exc.retryable:
                self.log.warning("cannot check kernel %r on the gateway yet: %s", self.kernel_name, exc.reason)
            else:
                raise

    async def check_kernelspec(self) -> None:
        """Raise KernelStartError unless the gateway has a kernelspec named ``kernel_name`` (once per pool)."""
        if self._spec_checked == self.kernel_name:
            return
        try:
            response = await self.fetch("/api/kernelspecs")
        except _Unreachable as exc:
            raise self.unreachable(exc) from None
        if response.code != 200:
            raise self.refused(response, "listing its kernelspecs")
        try:
            specs = json.loads(response.body).get("kernelspecs", {})
        except (ValueError, AttributeError):
            raise KernelStartError(
                self.kernel_name,
                f"{self.url} answered /api/kernelspecs with something other than a kernelspec list",
                hint="check gateway_url: it must point at a Jupyter Kernel Gateway or Enterprise Gateway",
                retryable=False,
            ) from None
        if self.kernel_name not in specs:
            raise KernelStartError(
                self.kernel_name,
                f"the gateway at {self.url} has no kernelspec {self.kernel_name!r}; it has: "
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


_GATEWAY_HINT = "check that the gateway is running and gateway_url is right; the pool retries with back-off"


# ---- one kernel -----------------------------------------------------------------------------


class GatewayWorker(KernelWorker):
    """One kernel on a gateway: created by POST, spoken to over its websocket, removed by DELETE."""

    def __init__(self, workers: GatewayWorkers, kernel_id: str) -> None:
        self.kernel_id = kernel_id
        self.router = Router()
        self.exited = asyncio.get_running_loop().create_future()
        self.remote_id: str | None = None
        self._gw = workers
        self._log = workers.log
        self._session_id = uuid.uuid4().hex  # one per kernel, kept across reconnects: the gateway replays to it
        self._ws: WebSocketClientConnection | None = None
        self._token: object | None = None
        self._v1 = False
        self._sock: socket.socket | None = None
        self._connection = 0  # bumped on every websocket (re)connect
        self._outbox: list[tuple[str, Message]] = []  # requested while the websocket was down
        self._unanswered: dict[str, int] = {}  # shell msg_id -> the connection it was sent on
        self._reconnect: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._started = False
        self._evidence = ""

    @property
    def location(self) -> str:
        return self._gw.location

    def evidence(self) -> str:
        return self._evidence

    # ---- start ------------------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        creating = None
        try:
            await self._gw.check_kernelspec()
            creating = asyncio.ensure_future(self._create(deadline))
            await asyncio.shield(creating)  # a cancel must not lose the id of a kernel the POST made
            await self._connect_while_alive(deadline)
            await self._health_check(deadline)
        except asyncio.CancelledError:
            if creating is not None:
                await asyncio.gather(creating, return_exceptions=True)
            await self.stop(timeout, now=True)
            raise
        except Exception as exc:
            await self.stop(timeout, now=True)
            if isinstance(exc, KernelStartError):
                raise
            if isinstance(exc, KernelExited):
                reason = f"the kernel died during start-up ({exc.reason})"
            elif isinstance(exc, TimeoutError):
                reason = str(exc)
            else:
                reason = f"{type(exc).__name__}: {exc}"
            raise KernelStartError(self._gw.kernel_name, reason, hint=_GATEWAY_HINT) from exc
        self._started = True
        self._log.info("kernel %s started on %s as %s", self.kernel_id, self.location, self.remote_id)

    async def _create(self, deadline: float) -> None:
        try:
            response = await self._gw.fetch("/api/kernels", "POST", self._gw.start_body(), timeout=max(0.1, deadline - time.monotonic()))
        except _Unreachable as exc:
            raise self._gw.unreachable(exc) from None
        self._evidence = _gateway_message(response)
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
                if await self._kernel_state() == "gone":
                    raise KernelStartError(
                        self._gw.kernel_name,
                        f"the kernel exited during start-up: the gateway at {self._gw.url} no longer has it",
                        hint="its stderr is in the gateway's log; try the kernelspec on the gateway's host",
                    )
            connect.result()
        finally:
            connect.cancel()

    async def _kernel_state(self) -> str:
        """``gone`` (404), ``there`` (200), or ``unknown`` (no answer, or any other status)."""
        try:
            response = await self._gw.fetch(f"/api/kernels/{quote(self.remote_id)}")
        except _Unreachable as exc:
            self._evidence = str(exc)
            return "unknown"
        if response.code != 200:
            self._evidence = f"HTTP {response.code}: {_gateway_message(response)}"
        return {200: "there", 404: "gone"}.get(response.code, "unknown")

    async def _connect(self, deadline: float) -> None:
        path = f"/api/kernels/{quote(self.remote_id)}/channels?session_id={self._session_id}"
        request = self._gw.request(path, timeout=max(0.1, deadline - time.monotonic()))
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
                    f"the gateway at {self._gw.url} refused our websocket (HTTP {exc.code})",
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
        stream = ws.protocol.stream
        stream.set_nodelay(True)
        self._sock = stream.socket if _TCP_QUICKACK is not None else None
        outbox, self._outbox = self._outbox, []
        for channel, msg in outbox:
            self._send(channel, msg)
        arrived, early = early, None
        for frame in arrived:
            self._on_frame(frame)

    async def _health_check(self, deadline: float) -> None:
        """kernel_info answered on shell, and its iopub ``idle`` seen (the output channel is live)."""
        probe = self.request("kernel_info_request", {})
        replied = idle = False
        ipykernel = False
        try:
            while not (replied and idle):
                got = await probe.next(deadline)
                if got is None:
                    raise TimeoutError("no kernel_info reply within the startup timeout")
                channel, msg = got
                if channel == "shell":
                    replied = True
                    ipykernel = msg["content"].get("implementation") == "ipython"
                elif msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                    idle = True
        finally:
            probe.close()
        if ipykernel:
            await self.prepare(deadline)

    # ---- messages -------------------------------------------------------------------------

    def request(
        self, msg_type: str, content: dict[str, Any], channel: str = "shell", buffers: list[bytes] | None = None
    ) -> Request:
        header = msg_header(uuid.uuid4().hex, msg_type, "jupyter_sessionpool", self._session_id)
        header["version"] = protocol_version
        msg = {"header": header, "parent_header": {}, "metadata": {}, "content": content}  # the gateway signs it
        if buffers:
            msg["buffers"] = buffers
        request = self.router.open(msg["header"]["msg_id"], channel)
        if self.exited.done():
            return request  # its next() raises KernelExited
        self._send(channel, msg)
        return request

    def _send(self, channel: str, msg: Message) -> None:
        ws = self._ws
        if ws is None:
            self._outbox.append((channel, msg))
            return
        try:
            if self._v1:
                sent = ws.write_message(encode_v1(channel, msg), binary=True)
            else:
                frame = encode_json(channel, msg)
                sent = ws.write_message(frame, binary=isinstance(frame, bytes))
        except WebSocketClosedError:  # closed a moment ago; the close callback reconnects and flushes
            self._outbox.append((channel, msg))
            return
        sent.add_done_callback(lambda f: f.cancelled() or f.exception())  # a failed write shows as the close
        if channel == "shell":
            self._unanswered[msg["header"]["msg_id"]] = self._connection

    def _on_frame(self, frame: str | bytes | None) -> None:
        """tornado's callback for every frame of the current websocket (None: it closed)."""
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
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            self.router.fail(None, ProtocolError(f"the gateway sent an invalid frame for kernel {self.kernel_id[:8]}: {exc}"))
            return
        parent = msg["parent_header"].get("msg_id")
        if channel == "shell" and parent:
            self._unanswered.pop(parent, None)
        elif channel == "iopub" and msg["msg_type"] == "status" and not parent:
            state = msg["content"].get("execution_state")
            if state in ("restarting", "dead") or (state == "starting" and self._started):
                self._lost(f"the gateway reports the kernel {state}: it died or was restarted, so its state is gone")
                return
        self.router.deliver(channel, msg)

    # ---- the websocket closed ------------------------------------------------------------------

    def _closed(self) -> None:
        ws, self._ws, self._sock, self._token = self._ws, None, None, None
        if ws is None or self.exited.done():
            return
        detail = f"with code {ws.close_code}" if ws.close_code else "abnormally"
        self._log.warning("websocket of kernel %s on %s closed %s; reconnecting", self.kernel_id, self.location, detail)
        self._reconnect = asyncio.ensure_future(self._reopen())

    async def _reopen(self) -> None:
        """Ask the gateway about the kernel; reconnect while it still has it, with back-off."""
        deadline = time.monotonic() + _RECONNECT_FOR
        before = self._connection
        delays = _backoff()
        while not self.exited.done():
            state = await self._kernel_state()
            if state == "gone":
                self._lost("the gateway no longer has the kernel (it died or was culled)")
                return
            if state == "there":
                try:
                    await self._connect(time.monotonic() + _REQUEST_TIMEOUT)
                except Exception as exc:  # noqa: BLE001 - any failure to reconnect is retried
                    self._evidence = f"{type(exc).__name__}: {exc}"
                if self._ws is not None:
                    self._log.info("kernel %s: websocket reconnected", self.kernel_id)
                    if any(conn <= before for conn in self._unanswered.values()):
                        asyncio.ensure_future(self._find_lost_replies(before))
                    return
            if time.monotonic() >= deadline:
                self._lost(f"lost the connection to the gateway at {self._gw.url} for {_RECONNECT_FOR:g} s ({self._evidence})")
                return
            await asyncio.sleep(next(delays))

    async def _find_lost_replies(self, before: int) -> None:
        """After a reconnect: a kernel_info reply overtakes no earlier reply (shell is one queue),
        so requests sent before the drop and still unanswered then have lost theirs in the cut."""
        probe = self.request("kernel_info_request", {})
        try:
            while (got := await probe.next(None)) is not None and got[0] != "shell":
                pass
        except Exception:  # noqa: BLE001 - the kernel went away: its requests already fail with it
            return
        finally:
            probe.close()
        for msg_id, conn in list(self._unanswered.items()):
            if conn <= before:
                del self._unanswered[msg_id]
                self.router.fail(
                    msg_id,
                    ProtocolError(
                        f"the connection to kernel {self.kernel_id[:8]} on {self.location} dropped while a request "
                        "ran and its reply was lost; the kernel is replaced, as its state is unknown"
                    ),
                )

    def _lost(self, reason: str) -> None:
        if self.exited.done():
            return
        self._log.warning("kernel %s on %s is gone: %s", self.kernel_id, self.location, reason)
        self._end(reason)

    def _end(self, reason: str) -> None:
        self.exited.set_result(reason)
        self.router.exited(reason)

    # ---- control --------------------------------------------------------------------------

    async def interrupt(self) -> None:
        """POST .../interrupt; a gateway that cannot be reached is logged, not raised (the cell's wait decides)."""
        if not self.alive or self.remote_id is None:
            return
        try:
            response = await self._gw.fetch(f"/api/kernels/{quote(self.remote_id)}/interrupt", "POST")
        except _Unreachable as exc:
            self._log.warning("could not interrupt kernel %s: the gateway does not answer (%s)", self.kernel_id, exc)
            return
        if response.code == 404:
            self._lost("the gateway no longer has the kernel (it died or was culled)")
        elif response.code >= 300:
            self._log.warning("gateway refused to interrupt kernel %s: HTTP %s %s", self.kernel_id, response.code, _gateway_message(response))

    def kill(self) -> None:
        if self.remote_id is not None and self._stop_task is None:  # a DELETE needs a loop: the culler must do it
            self._log.warning("kernel %s (%s) is left on %s for the gateway's culler to reclaim",
                              self.kernel_id, self.remote_id, self.location)

    async def stop(self, timeout: float, now: bool = False) -> None:
        """Close the websocket and DELETE the kernel (the gateway shuts it down, then kills it).

        ``now`` changes nothing: the gateway decides how to end it. A DELETE that fails
        (the gateway unreachable, or busy restarting the kernel) is retried for ``timeout`` s.
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
                response = await self._gw.fetch(path, "DELETE")
            except _Unreachable as exc:
                problem, retry = str(exc), True
            else:
                if response.code in (200, 204, 404):
                    self._log.info("kernel %s deleted on %s", self.kernel_id, self.location)
                    return
                # 5xx: e.g. the gateway is restarting the kernel right now (it answers 500 then)
                problem, retry = f"HTTP {response.code}: {_gateway_message(response)}", response.code >= 500
            if not retry or time.monotonic() >= give_up:
                self._log.warning(
                    "could not delete kernel %s (%s) on %s: %s; the gateway's culler must reclaim it",
                    self.kernel_id, self.remote_id, self.location, problem,
                )
                return
            await asyncio.sleep(next(delays))
