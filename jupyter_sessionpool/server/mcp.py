"""MCP on the pool, for agents: the same sessions as the HTTP API, as tools of an ``mcp`` SDK server.

Tools: ``execute_code(code, session, timeout)`` (outputs as text, images as image content),
``list_sessions``, ``interrupt_session``, ``restart_session``, ``release_session``,
``upload_file``, ``download_file``. A failure of the pool or the service (SessionLost,
ExecutionTimeout, NotFound, ...) is a tool error (``isError``) whose text starts with the
error's type; an exception raised by the user's code is a normal result showing its traceback.

Two transports: ``jupyter-sessionpool mcp`` (stdio, a pool of its own) and streamable HTTP
at ``/sessionpool/mcp`` inside the server extension, behind the server's token. The SDK's
streamable HTTP is an ASGI app; :class:`MCPHandler` carries each request from tornado into
its session manager, which runs on the server's loop for the extension's lifetime.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import re
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import PoolError
from . import files
from .errors import ServiceError
from .service import SessionService

if TYPE_CHECKING:
    from .app import SessionPoolApp

EXTRA = "mcp"
MISSING = (
    "MCP needs the mcp Python SDK, which jupyter_sessionpool installs with its 'mcp' extra: "
    "pip install 'jupyter_sessionpool[mcp]'"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_IMAGES = ("image/png", "image/jpeg", "image/gif", "image/webp")

INSTRUCTIONS = """\
Runs code on real Jupyter kernels. Each `session` name is a kernel of its own whose variables
persist across calls until it is released; sessions run at the same time. A session's working
directory is private to it (upload_file / download_file reach it). If a session's kernel was
lost (it died, was restarted, or the session expired) the next call says SessionLost once, then
runs on a fresh kernel: re-run set-up code."""


def require_sdk() -> None:
    """Raise ImportError naming the extra if the mcp SDK is missing."""
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError as exc:
        raise ImportError(MISSING) from exc


def _tool_errors(fn: Any) -> Any:
    """The pool's and the service's errors as tool errors (``isError``) whose text starts with their type."""
    from mcp_types import CallToolResult, TextContent

    @functools.wraps(fn)
    async def tool(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except (ServiceError, PoolError) as exc:
            text = f"{type(exc).__name__}: {exc}"
            partial = getattr(exc, "result", None)
            if partial is not None and partial.outputs:
                text += "\n\nOutput before the error:\n" + "\n".join(_text(out) for out in partial.outputs)
            return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)

    return tool


def _text(out: dict[str, Any]) -> str:
    kind = out["output_type"]
    if kind == "stream":
        return out["text"]
    if kind == "error":
        return _ANSI.sub("", "\n".join(out.get("traceback") or [f"{out['ename']}: {out['evalue']}"]))
    data = out.get("data", {})
    return data.get("text/plain", "") if isinstance(data.get("text/plain", ""), str) else ""


def contents(result: Any) -> list[Any]:
    """An ExecutionResult as MCP content: text blocks for text, image blocks for images, in output order."""
    from mcp_types import ImageContent, TextContent

    blocks: list[Any] = []
    for out in result.outputs:
        data = out.get("data", {})
        image = next((kind for kind in _IMAGES if kind in data), None)
        if image is not None:
            blocks.append(ImageContent(type="image", data=data[image].strip(), mime_type=image))
            continue
        text = _text(out)
        if text:
            blocks.append(TextContent(type="text", text=text))
    if not blocks:
        blocks.append(TextContent(type="text", text="(no output)" if result.status == "ok" else f"status: {result.status}"))
    return blocks


def build(service: SessionService) -> Any:
    """An MCPServer whose tools run on ``service``'s sessions."""
    require_sdk()
    from mcp.server.mcpserver import MCPServer
    from mcp_types import ImageContent, TextContent

    server = MCPServer("jupyter-sessionpool", version=__version__, instructions=INSTRUCTIONS)

    def tool(fn: Any) -> Any:
        server.add_tool(_tool_errors(fn), name=fn.__name__, description=fn.__doc__, structured_output=False)
        return fn

    @tool
    async def execute_code(code: str, session: str = "default", timeout: float | None = None) -> list[Any]:
        """Run code in a session's kernel (created on first use; its variables persist across calls).
        Returns the outputs: text (stdout, stderr, results, tracebacks) and images. timeout: seconds
        before the cell is interrupted (ExecutionTimeout; the session keeps its state)."""
        return contents(await service.execute(session, code, timeout))

    @tool
    async def list_sessions() -> list[Any]:
        """The live sessions: state (idle, busy, lost...), kernel, created, last used, expires."""
        return [TextContent(type="text", text=json.dumps(service.list(), indent=1))]

    @tool
    async def interrupt_session(session: str) -> list[Any]:
        """Interrupt the code running in a session (like Ctrl-C); its variables are kept."""
        done = await service.interrupt(session)
        return [TextContent(type="text", text="interrupted" if done else "nothing to interrupt: no kernel yet")]

    @tool
    async def restart_session(session: str) -> list[Any]:
        """Give a session a fresh kernel: its variables are gone, its files stay."""
        await service.restart(session)
        return [TextContent(type="text", text=f"session {session!r} restarted: its next call runs on a fresh kernel")]

    @tool
    async def release_session(session: str) -> list[Any]:
        """End a session: its kernel is shut down and its files are deleted."""
        await service.release(session)
        return [TextContent(type="text", text=f"session {session!r} released")]

    @tool
    async def upload_file(session: str, path: str, content: str, base64_encoded: bool = False) -> list[Any]:
        """Write a file into a session's working directory (its kernel's cwd), creating the session if
        needed. content is text, or base64 with base64_encoded=true (binary files)."""
        data = base64.b64decode(content, validate=True) if base64_encoded else content.encode()
        if service.sessions.get(session) is None:
            await service.open(session)
        upload = files.Upload(service.root, service.get(session).directory, path, service.max_upload_size)
        try:
            upload.write(data)
        except BaseException:
            upload.abort()
            raise
        await asyncio.to_thread(upload.commit)
        return [TextContent(type="text", text=f"wrote {len(data):,} bytes to {path}")]

    @tool
    async def download_file(session: str, path: str) -> list[Any]:
        """Read a file from a session's working directory: text as text, images as images, other
        binary files as base64 text."""
        directory = service.get(session).directory
        fd, size = files.open_for_reading(directory, path)
        try:
            if size > service.max_upload_size:
                raise ServiceError(f"{path!r} is {size:,} bytes; files over {service.max_upload_size:,} are not sent")
            with open(fd, "rb", closefd=False) as f:
                data = f.read()
        finally:
            os.close(fd)
        kind = next((k for k in _IMAGES if path.lower().endswith(k.split("/")[1].replace("jpeg", "jpg"))), None)
        if kind is not None:
            return [ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=kind)]
        try:
            return [TextContent(type="text", text=data.decode())]
        except UnicodeDecodeError:
            return [TextContent(type="text", text="base64:" + base64.b64encode(data).decode())]

    return server


# ---- stdio: `jupyter-sessionpool mcp` ------------------------------------------------------------


async def run_stdio(service: SessionService) -> None:
    """Serve MCP over this process's stdin/stdout until the client closes it."""
    server = build(service)
    await service.start()
    try:
        await server.run_stdio_async()
    finally:
        await service.shutdown()


# ---- streamable HTTP inside the server extension ------------------------------------------------


class _Bridge:
    """The SDK's streamable-HTTP session manager, running on the server's loop while the extension lives."""

    def __init__(self, service: SessionService) -> None:
        from mcp.server.transport_security import TransportSecuritySettings

        self.server = build(service)
        # stateless, JSON answers: each POST is one self-contained exchange, which tornado relays whole.
        # The Jupyter Server checks hosts and tokens itself (allow_remote_access, its identity provider).
        self.server.streamable_http_app(
            stateless_http=True,
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.manager = self.server.session_manager
        self._stop = asyncio.Event()
        self._started = asyncio.get_running_loop().create_future()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async with self.manager.run():
            self._started.set_result(None)
            await self._stop.wait()

    async def ready(self) -> Any:
        await asyncio.wait([self._started, self._task], return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            self._task.result()  # it failed to start: say why
        return self.manager

    async def close(self) -> None:
        self._stop.set()
        await asyncio.gather(self._task, return_exceptions=True)


def routes() -> list[tuple[str, Any]]:
    """The MCP route, relative to the server's ``base_url``."""
    return [("/sessionpool/mcp", _handler_class())]


async def stop(app: SessionPoolApp) -> None:
    """Stop the extension's MCP session manager, if it was started."""
    bridge = getattr(app, "_mcp_bridge", None)
    if bridge is not None:
        await bridge.close()


@functools.lru_cache(maxsize=None)
def _handler_class() -> Any:
    """The handler class (it subclasses jupyter_server's, which `jupyter-sessionpool mcp` never imports)."""
    from tornado import web

    from jupyter_server.auth.decorator import authorized

    from .handlers import _JSONBody, answers

    class MCPHandler(_JSONBody):
        """``/sessionpool/mcp``: MCP's streamable HTTP, authenticated by the server, relayed to the SDK."""

        def body_limit(self) -> int:
            # a JSON-RPC message carries code, or a file for upload_file (base64: 4/3 of its size)
            return max(super().body_limit(), 2 * self.service.max_upload_size)

        @web.authenticated
        @authorized
        @answers
        async def post(self) -> None:
            await self._relay()

        @web.authenticated
        @authorized
        @answers
        async def get(self) -> None:
            await self._relay()

        @web.authenticated
        @authorized
        @answers
        async def delete(self) -> None:
            await self._relay()

        async def _relay(self) -> None:
            try:
                require_sdk()
            except ImportError as exc:
                self.set_status(501)
                self.finish(json.dumps({"error": "NotImplemented", "message": str(exc)}))
                return
            app = self.extensionapp
            bridge = getattr(app, "_mcp_bridge", None)
            if bridge is None:
                bridge = app._mcp_bridge = _Bridge(app.service)
            manager = await bridge.ready()
            await manager.handle_request(self._scope(), self._receive(), self._send)
            if not self._finished:
                self.finish(set_content_type=self._headers.get("Content-Type", "application/json"))

        def _scope(self) -> dict[str, Any]:
            request = self.request
            host, _, port = request.host.partition(":")
            return {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "method": request.method,
                "scheme": request.protocol,
                "path": "/mcp",
                "raw_path": b"/mcp",
                "root_path": "",
                "query_string": request.query.encode("latin-1"),
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.get_all()],
                "client": (request.remote_ip, 0),
                "server": (host, int(port or 0)),
            }

        def _receive(self) -> Any:
            body = [bytes(self._body) or self.request.body or b""]
            closed = asyncio.Event()
            self._closed = closed

            async def receive() -> dict[str, Any]:
                if body:
                    return {"type": "http.request", "body": body.pop(), "more_body": False}
                await closed.wait()
                return {"type": "http.disconnect"}

            return receive

        async def _send(self, message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.set_status(message["status"])
                for name, value in message.get("headers", []):
                    key = name.decode("latin-1")
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.set_header(key, value.decode("latin-1"))
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                if chunk:
                    self.write(chunk)
                if message.get("more_body"):
                    await self.flush()
                else:
                    self.finish(set_content_type=self._headers.get("Content-Type", "application/json"))

        def on_connection_close(self) -> None:
            closed = getattr(self, "_closed", None)
            if closed is not None:
                closed.set()

    return MCPHandler

