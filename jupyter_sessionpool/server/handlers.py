"""The HTTP API: tornado handlers on the Jupyter Server, thin faces of :class:`SessionService`.

Every route is under the server's ``base_url`` and its authentication (``Authorization:
token T`` or ``Bearer T``); every answer is JSON, and every error is
``{"error": "<ErrorType>", "message": "..."}`` with the pool's error names (``SessionLost``,
``ExecutionTimeout``, ...) or the service's own (``BadRequest``, ``NotFound``, ...).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import mimetypes
import os
from http.client import responses
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web
from tornado.iostream import StreamClosedError

from ..errors import (
    CheckoutTimeout,
    ExecutionTimeout,
    KernelDied,
    KernelStartError,
    PoolClosed,
    PoolError,
    ProtocolError,
    SessionLost,
)
from . import files
from .errors import BadRequest, PayloadTooLarge, ServiceError
from .service import SessionService

API = "/sessionpool/api/sessions"
_SESSION = r"/([^/]+)"
NDJSON = "application/x-ndjson"

# The HTTP status of each pool error (the first matching class wins).
_POOL_STATUS: list[tuple[type[BaseException], int]] = [
    (SessionLost, 410),  # the session's state is gone; the next call starts afresh
    (ExecutionTimeout, 504),
    (CheckoutTimeout, 503),
    (KernelStartError, 503),
    (PoolClosed, 503),
    (KernelDied, 502),
    (ProtocolError, 502),
    (PoolError, 500),
]
_HTTP_NAMES = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    409: "Conflict", 413: "PayloadTooLarge", 415: "UnsupportedMediaType",
}  # fmt: skip


def classify(exc: BaseException) -> tuple[int, str, str] | None:
    """(HTTP status, error type, message) of an error the API reports, None for a bug."""
    if isinstance(exc, ServiceError):
        return exc.status, type(exc).__name__, str(exc)
    for kind, status in _POOL_STATUS:
        if isinstance(exc, kind):
            return status, type(exc).__name__, str(exc)
    return None


def answers(method: Any) -> Any:
    """Turn the service's and the pool's errors into their JSON answers."""

    @functools.wraps(method)
    async def wrapper(self: _Handler, *args: Any, **kwargs: Any) -> None:
        self._body_complete = True  # tornado calls a method once the whole body has arrived
        refusal = getattr(self, "_refusal", None)
        if refusal is not None:  # refused while its body came in (and was dropped): answer now
            self.fail(refusal)
            return
        try:
            await method(self, *args, **kwargs)
        except (ServiceError, PoolError) as exc:
            self.fail(exc)

    return wrapper


class _Handler(ExtensionHandlerMixin, APIHandler):
    """Shared: the service, JSON bodies, and errors in the API's form."""

    auth_resource = "kernels"  # what these routes do is run code on kernels, as /api/kernels does

    @property
    def service(self) -> SessionService:
        return self.extensionapp.service

    def json_body(self, allowed: set[str]) -> dict[str, Any]:
        """The request's JSON object (empty body: {}); BadRequest for anything else or unknown keys."""
        raw = bytes(getattr(self, "_body", b"")) or self.request.body or b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest(f"the body must be a JSON object, not {type(body).__name__}")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise BadRequest(f"unknown field(s) {', '.join(unknown)}; the fields are: {', '.join(sorted(allowed))}")
        return body

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body))

    def fail(self, exc: BaseException) -> None:
        """Answer ``exc`` as ``{"error", "message"}`` with its status (nothing may have been sent yet)."""
        status, name, message = classify(exc) or (500, "InternalError", f"{type(exc).__name__}: {exc}")
        if isinstance(exc, CheckoutTimeout):
            self.set_header("Retry-After", "1")
        self.clear_header("Content-Length")
        self.set_status(status)
        self.finish(json.dumps({"error": name, "message": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's and the server's own refusals (no token, unknown method, ...) in the API's form."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if exc is not None and classify(exc) is not None:
            self.fail(exc)
            return
        message = getattr(exc, "log_message", None) or responses.get(status_code, "error")
        if status_code == 403 and self.current_user is None:  # the server says 403; the truth is 401
            status_code, message = 401, "no valid token: send 'Authorization: token T' (or 'Bearer T')"
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'token realm="jupyter_sessionpool"')
        name = _HTTP_NAMES.get(status_code, "InternalError" if status_code >= 500 else "HTTPError")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": name, "message": message}))


_DRAIN = 16 << 20
"""Bytes of a refused request's body read and dropped so that its client hears the answer (a server
that closes on an unread body resets the connection, and the client sees no answer); past it, the
answer goes at once and the connection is closed."""


class _BodyFirst(_Handler):
    """A handler whose request body streams in: authenticated and judged before the body arrives,
    so that a body past the service's limits is refused (413) without being held or written."""

    _refusal: BaseException | None = None
    _received = 0  # bytes of the body so far
    _dropped = 0  # of which dropped after the refusal

    def fail(self, exc: BaseException) -> None:
        self._close_unless_read()
        super().fail(exc)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self._close_unless_read()
        super().write_error(status_code, **kwargs)

    def _close_unless_read(self) -> None:
        """An answer before the body was read: tornado then closes the connection, so say so (a client
        would otherwise send its next request on it)."""
        if not getattr(self, "_body_complete", False) and self.request.method in ("POST", "PUT"):
            self.set_header("Connection", "close")

    async def authorize_body(self, action: str) -> None:
        """Refuse a request with no valid token, or not allowed ``action``, before its body is read."""
        if self.current_user is None:
            raise web.HTTPError(403)
        allowed = self.authorizer.is_authorized(self, self.current_user, action, self.auth_resource)
        if not (await allowed if inspect.isawaitable(allowed) else allowed):
            raise web.HTTPError(403, f"not authorized to {action} {self.auth_resource}")

    def content_length(self) -> int:
        """The request's Content-Length (0 when absent: a chunked body is counted as it comes)."""
        try:
            return int(self.request.headers.get("Content-Length", "0") or 0)
        except ValueError:
            raise BadRequest(f"bad Content-Length {self.request.headers.get('Content-Length')!r}") from None

    def refuse(self, exc: BaseException) -> None:
        """Refuse the request: the rest of its body is dropped as it comes, and the answer goes once it
        has (past :data:`_DRAIN` bytes, at once, closing the connection)."""
        self._refusal = exc
        try:
            length = int(self.request.headers.get("Content-Length", "") or -1)
        except ValueError:
            length = self._received + _DRAIN + 1
        if length - self._received > _DRAIN:
            self.fail(exc)
        else:  # read to the end (chunked: up to _DRAIN more) and drop it
            self.request.connection.set_max_body_size(max(length, self._received + _DRAIN) + 1)

    def dropped(self, chunk: bytes) -> bool:
        """Count ``chunk``; True if the request was refused: it is dropped (past :data:`_DRAIN` bytes
        the answer goes at once)."""
        self._received += len(chunk)
        if self._refusal is None:
            return False
        self._dropped += len(chunk)
        if self._dropped > _DRAIN and not self._finished:
            self.fail(self._refusal)
        return True


@web.stream_request_body
class _JSONBody(_BodyFirst):
    """A handler with a JSON body, held in memory only up to the service's limit."""

    _body: bytearray

    def body_limit(self) -> int:
        return 6 * self.service.max_code_size + (64 << 10)  # code, JSON-escaped at worst, and the rest

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        self._body = bytearray()
        if self.request.method not in ("POST", "PUT") or self._finished:
            return
        await self.authorize_body("execute")
        limit = self.body_limit()
        try:
            length = self.content_length()
            if length > limit:
                raise PayloadTooLarge(f"the request body is {length:,} bytes; the limit is {limit:,}")
        except ServiceError as exc:
            self.refuse(exc)
            return
        self.request.connection.set_max_body_size(max(limit, length) + _DRAIN)  # our own count refuses past the limit

    def data_received(self, chunk: bytes) -> None:
        if self.dropped(chunk):
            return
        self._body += chunk
        if len(self._body) > self.body_limit():
            self._body = bytearray()
            self.refuse(PayloadTooLarge(f"the request body is over the limit of {self.body_limit():,} bytes"))


class SessionsHandler(_Handler):
    """``GET /sessionpool/api/sessions``: every session."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(self.service.list())


class PoolHandler(_Handler):
    """``GET /sessionpool/api/pool``: the pool's snapshot (kernels, waiting checkouts, counters), for operators."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(self.service.pool.stats().to_dict())


class SessionHandler(_JSONBody):
    """``PUT`` (get or create), ``GET`` (describe), ``DELETE`` (release) one session."""

    @web.authenticated
    @authorized
    @answers
    async def put(self, session_id: str) -> None:
        body = self.json_body({"kernel_name", "env", "idle_timeout"})
        session, created = await self.service.open(session_id, **body)
        if created:
            self.set_header("Location", self.request.path)
        self.reply(self.service.describe(session), 201 if created else 200)

    @web.authenticated
    @authorized
    @answers
    async def get(self, session_id: str) -> None:
        self.reply(self.service.describe(self.service.get(session_id)))

    @web.authenticated
    @authorized
    @answers
    async def delete(self, session_id: str) -> None:
        await self.service.release(session_id)
        self.set_status(204)
        self.finish()


class ActionHandler(_JSONBody):
    """``POST …/{id}/interrupt`` and ``POST …/{id}/restart``."""

    @web.authenticated
    @authorized
    @answers
    async def post(self, session_id: str, action: str) -> None:
        self.json_body(set())
        if action == "interrupt":
            done = await self.service.interrupt(session_id)
        else:
            done = await self.service.restart(session_id)
        self.reply({**self.service.describe(self.service.get(session_id)), action + "ed": done})


class ExecuteHandler(_JSONBody):
    """``POST …/{id}/execute``: NDJSON events as outputs arrive, then the result; or only the result.

    Each output event is the nbformat output with ``type`` set to its ``output_type`` (``stream``,
    ``display_data``, ``execute_result``, ``error`` for the user's exception, ``update_display_data``,
    ``clear_output``); the last line is ``{"type": "result", ...}``, or, when the pool fails after
    the stream began, ``{"type": "error", "error": "<ErrorType>", "message", "status"}``.

    A client that disconnects mid-cell interrupts the cell (its kernel keeps its state).
    """

    _task: asyncio.Task[Any] | None = None

    @web.authenticated
    @authorized
    @answers
    async def post(self, session_id: str) -> None:
        body = self.json_body({"code", "timeout"})
        if "code" not in body:
            raise BadRequest('the body needs "code": {"code": "1 + 1", "timeout": 30}')
        accept = self.request.headers.get("Accept", "")
        if "application/json" in accept and NDJSON not in accept:
            self._task = asyncio.ensure_future(self.service.execute(session_id, body["code"], body.get("timeout")))
            await asyncio.wait([self._task])
            if not self._task.cancelled():  # cancelled: the client went away, there is nobody to answer
                self.reply(result_event(self._task.result()))
            return
        await self._stream(session_id, body["code"], body.get("timeout"))

    async def _stream(self, session_id: str, code: Any, timeout: Any) -> None:
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def on_output(out: dict[str, Any]) -> None:  # on the pool's callback thread
            loop.call_soon_threadsafe(outputs.put_nowait, out)

        task = self._task = asyncio.ensure_future(self.service.execute(session_id, code, timeout, on_output))
        sent = False
        try:
            while not task.done():
                getting = asyncio.ensure_future(outputs.get())
                await asyncio.wait([getting, task], return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    break
                batch = [getting.result()]
                while not outputs.empty():  # a flood goes out in one write, not one per output
                    batch.append(outputs.get_nowait())
                sent = await self._send([output_event(out) for out in batch], sent)
            if task.cancelled():
                return  # the client went away (on_connection_close): its cell is being interrupted
            if not outputs.empty():  # every output was queued before the execution returned
                sent = await self._send([output_event(outputs.get_nowait()) for _ in range(outputs.qsize())], sent)
            try:
                result = task.result()
            except (ServiceError, PoolError) as exc:
                if not sent:
                    raise
                status, name, message = classify(exc)  # type: ignore[misc]
                partial = getattr(exc, "result", None)
                event = {"type": "error", "error": name, "message": message, "status": status}
                if partial is not None:
                    event["result"] = result_event(partial)
                await self._send([event], sent)
            else:
                await self._send([result_event(result)], sent)
            self.finish(set_content_type=NDJSON)
        except StreamClosedError:
            task.cancel()  # the client is gone: interrupt its cell

    async def _send(self, events: list[dict[str, Any]], sent: bool) -> bool:
        """Write ``events`` as NDJSON lines and flush them to the client; True (something was sent)."""
        if not sent:
            self.set_header("Content-Type", NDJSON)
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")  # proxies must not hold the stream back
        self.write("".join(json.dumps(event) + "\n" for event in events))
        await self.flush()
        return True

    def on_connection_close(self) -> None:
        """The client went away mid-cell: cancel the execution, which interrupts the cell."""
        if self._task is not None and not self._task.done():
            self._task.cancel()


def output_event(out: dict[str, Any]) -> dict[str, Any]:
    """One output as a stream event: the nbformat output (or display update, or clear), ``type`` its kind."""
    return {"type": out["output_type"], **out}


def result_event(result: Any) -> dict[str, Any]:
    """The final event: ``{"type": "result", ...ExecutionResult.to_dict(), "stdout", "stderr", "result"}``."""
    return {"type": "result", **result.to_dict(), "stdout": result.stdout, "stderr": result.stderr,
            "result": result.result}


@web.stream_request_body
class FilesHandler(_BodyFirst):
    """``GET|PUT|DELETE …/{id}/files/{path}`` and ``GET …/{id}/files/`` inside the session's directory.

    Uploads stream to disk (never held in memory) and are refused past ``max_upload_size``
    with 413, leaving nothing behind.
    """

    _upload: files.Upload | None = None

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if self.request.method != "PUT" or self._finished:
            return
        await self.authorize_body("write")
        session_id, relative = self.path_args[0], self.path_args[1] or ""
        try:
            limit = self.service.max_upload_size
            length = self.content_length()
            directory = self.service.get(session_id).directory
            self._upload = files.Upload(self.service.root, directory, relative, limit)
            if length > limit:
                self._upload.abort()
                raise PayloadTooLarge(f"the upload is {length:,} bytes; the limit is {limit:,} bytes; nothing was written")
            self.request.connection.set_max_body_size(max(limit, length) + _DRAIN)  # our own count refuses past the limit
        except (ServiceError, PoolError) as exc:
            self.refuse(exc)

    def data_received(self, chunk: bytes) -> None:
        if self.dropped(chunk) or self._upload is None:
            return
        try:
            self._upload.write(chunk)
        except ServiceError as exc:
            self._upload = None
            self.refuse(exc)

    def on_connection_close(self) -> None:
        if self._upload is not None:  # the client went away mid-upload: leave nothing
            self._upload.abort()
            self._upload = None

    @web.authenticated
    @authorized
    @answers
    async def put(self, session_id: str, relative: str | None) -> None:
        upload, self._upload = self._upload, None
        if upload is None:
            raise BadRequest("no upload was received")
        created = await asyncio.to_thread(upload.commit)
        self.reply({"path": (relative or "").strip("/"), "size": upload.size}, 201 if created else 200)

    @web.authenticated
    @authorized
    @answers
    async def get(self, session_id: str, relative: str | None) -> None:
        relative = relative or ""
        directory = self.service.get(session_id).directory
        if not relative.strip("/") or relative.endswith("/") or files.resolve(directory, relative).is_dir():
            self.reply(await asyncio.to_thread(files.listing, directory, relative))
            return
        fd, size = files.open_for_reading(directory, relative)
        try:
            kind = mimetypes.guess_type(relative)[0] or "application/octet-stream"
            self.set_header("Content-Type", kind)
            self.set_header("Content-Length", str(size))
            while chunk := os.read(fd, files.CHUNK):
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            return
        finally:
            os.close(fd)
        self.finish(set_content_type=kind)

    @web.authenticated
    @authorized
    @answers
    async def delete(self, session_id: str, relative: str | None) -> None:
        directory = self.service.get(session_id).directory
        await asyncio.to_thread(files.delete, directory, relative or "")
        self.set_status(204)
        self.finish()


class NoRouteHandler(_Handler):
    """Anything else under ``/sessionpool/api``: NotFound in the API's form, not the server's HTML page."""

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if self.current_user is None:
            raise web.HTTPError(403)
        self.set_status(404)
        self.finish(json.dumps({"error": "NotFound", "message": f"no route {self.request.path}; see README.md"}))


def routes() -> list[tuple[str, type[_Handler]]]:
    """The API's routes, relative to the server's ``base_url``."""
    return [
        (API + "/?", SessionsHandler),
        ("/sessionpool/api/pool", PoolHandler),
        (API + _SESSION, SessionHandler),
        (API + _SESSION + "/execute", ExecuteHandler),
        (API + _SESSION + "/(interrupt|restart)", ActionHandler),
        (API + _SESSION + "/files(?:/(.*))?", FilesHandler),
        ("/sessionpool/api(?:/.*)?", NoRouteHandler),
    ]
