"""Real gateways on 127.0.0.1 for the remote tests: Kernel Gateway from this venv, Enterprise
Gateway from its own (``make .venv-eg/.installed``), and a TCP proxy that can cut connections.

A gateway runs kernelspecs from a private JUPYTER_PATH: ``python3`` (this venv's ipykernel),
``crash`` (exits at start) and ``nosession`` (the scripted fake kernel, giving no session id). Readiness is polled on ``GET /api`` (an external process
offers no event to wait on); the kernels a test leaves behind are asserted from the REST API.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parent.parent
EG_VENV = Path(os.environ.get("JSP_EG_VENV") or ROOT / ".venv-eg")  # unset or empty: the one make test builds
KERNELSPECS = {
    "python3": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--HistoryManager.hist_file=:memory:"],
    "crash": [sys.executable, "-c", "import sys; sys.exit(3)", "{connection_file}"],
    "nosession": [sys.executable, str(ROOT / "tests" / "kernels" / "scripted.py"), "-f", "{connection_file}", "--no-session"],
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_kernelspecs(share: Path) -> None:
    for name, argv in KERNELSPECS.items():
        spec = share / "kernels" / name
        spec.mkdir(parents=True, exist_ok=True)
        (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))


class Gateway:
    """One gateway process: its URL and token, its kernels (REST and /proc), start and stop."""

    def __init__(self, kind: str, workdir: Path, port: int | None = None, extra: list[str] | None = None) -> None:
        self.kind = kind
        self.port = port or free_port()
        self.token = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{kind}-{self.port}.log"

    def command(self) -> list[str]:
        # Recommended settings from docs/remote.md: a dead kernel is noticed in 0.5 s, and
        # kernels nobody is connected to are culled (here after 30 s, checked every 5 s).
        common = [
            "--KernelRestarter.time_to_dead=0.5",
            "--MappingKernelManager.cull_idle_timeout=30",
            "--MappingKernelManager.cull_interval=5",
            "--MappingKernelManager.cull_connected=False",
        ]
        overridden = {option.partition("=")[0] for option in self.extra}  # traitlets refuses an option twice
        common = [option for option in common if option.partition("=")[0] not in overridden]
        if self.kind == "kg":
            return [
                sys.executable, "-m", "kernel_gateway",
                "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={self.port}",
                "--KernelGatewayApp.port_retries=0", f"--KernelGatewayApp.auth_token={self.token}",
                "--JupyterWebsocketPersonality.list_kernels=True", *common, *self.extra,
            ]  # fmt: skip
        return [
            str(EG_VENV / "bin" / "jupyter-enterprisegateway"),
            "--ip=127.0.0.1", f"--port={self.port}", "--port_retries=0",
            f"--EnterpriseGatewayApp.auth_token={self.token}", "--EnterpriseGatewayApp.list_kernels=True",
            *common, *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 60) -> Gateway:
        share = self.workdir / "share"
        write_kernelspecs(share)
        env = {**os.environ, "JUPYTER_PATH": str(share), "JUPYTER_RUNTIME_DIR": str(self.workdir / "runtime")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/api")
                return self
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind} not answering after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)  # an external process's readiness has no event to wait on

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def get(self, path: str):
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def call(self, path: str, method: str) -> int:
        """A REST call as someone else makes it (a restart, a delete): its HTTP status. Blocking: from a test's
        event loop use ``asyncio.to_thread``, or the pool's loop stands still meanwhile."""
        request = urllib.request.Request(self.url + path, method=method, data=b"{}" if method == "POST" else None,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status

    async def answers(self, remote_id: str, timeout: float = 30) -> None:
        """Wait until the kernel ``remote_id`` answers kernel_info on a websocket of the test's own (it is up)."""
        url = f"ws://127.0.0.1:{self.port}/api/kernels/{remote_id}/channels?session_id={uuid.uuid4().hex}"
        request = HTTPRequest(url, headers={"Authorization": f"token {self.token}"}, request_timeout=timeout)
        ws = await asyncio.wait_for(websocket_connect(request), timeout)
        try:
            msg_id = uuid.uuid4().hex
            header = {"msg_id": msg_id, "msg_type": "kernel_info_request", "session": "test", "username": "test",
                      "date": "", "version": "5.3"}
            await ws.write_message(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": {},
                                               "channel": "shell"}))
            while True:
                frame = await asyncio.wait_for(ws.read_message(), timeout)
                assert frame is not None, "the gateway closed the test's websocket"
                if isinstance(frame, str) and json.loads(frame)["parent_header"].get("msg_id") == msg_id:
                    return
        finally:
            ws.close()

    def kernels(self) -> list[dict]:
        """GET /api/kernels; Kernel Gateway answers 500 now and then while a kernel starts: ask again."""
        for _ in range(20):
            try:
                return self.get("/api/kernels")
            except urllib.error.HTTPError as exc:
                if exc.code != 500:
                    raise
                time.sleep(0.1)
        return self.get("/api/kernels")

    def kernel_pid(self, remote_id: str) -> int:
        """The pid of a kernel process on the gateway's host (here: this machine), by its connection file."""
        marker = f"kernel-{remote_id}.json".encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker in f.read():
                        return int(entry)
            except OSError:
                continue
        raise LookupError(f"no process for kernel {remote_id}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the gateway (SIGTERM: it shuts its kernels down) and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def wait_until(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` (a gateway's REST state: no event reaches the test) until true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a gateway, which a test breaks the ways networks and gateways break.

    :meth:`cut` resets every open connection, both ends. :meth:`block` is a network outage
    until :meth:`restore`: the pool's ends are reset and new connections refused, while the
    gateway's ends stay open and what the gateway sends on them is lost. As on a real
    partition, the gateway learns of it late (here: when the pool's reconnect replaces the
    stale connection, or the proxy closes), so it buffers nothing for the reconnect. :meth:`stall` accepts
    new connections and never answers them (a gateway that hangs); :meth:`slow` answers them
    only after a delay. :meth:`inject` writes a websocket frame into the newest kernel
    websocket as if the gateway had sent it (the proxy forwards the gateway's frames whole,
    so an injected one never splits another).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.mode = "forward"  # forward | block | stall | slow
        self.delay = 0.0
        self.refused = 0  # connections refused while blocked
        self._server: asyncio.base_events.Server | None = None
        self._pairs: set[_Pair] = set()
        self._swallowing: set[asyncio.StreamWriter] = set()
        self._websockets: list[asyncio.StreamWriter] = []  # the pool's end of each kernel websocket, oldest first
        self._serving: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Proxy:
        self._closing = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> int:
        """Reset every connection through the proxy (both ends); new ones are still accepted."""
        pairs = list(self._pairs)
        for pair in pairs:
            pair.client.transport.abort()
            pair.upstream.transport.abort()
        for writer in list(self._swallowing):
            writer.transport.abort()
        return len(pairs)

    def block(self) -> int:
        """A network outage until :meth:`restore`: reset the pool's ends, keep the gateway's, refuse new connections."""
        self.mode = "block"
        pairs = list(self._pairs)
        for pair in pairs:
            pair.partitioned = True
            pair.client.transport.abort()
        return len(pairs)

    def stall(self) -> None:
        """Accept new connections and never answer them (a gateway that hangs); open ones go on."""
        self.mode = "stall"

    def slow(self, delay: float) -> None:
        """Forward new connections, but hold the gateway's answers back ``delay`` seconds."""
        self.mode, self.delay = "slow", delay

    def restore(self) -> None:
        """Forward new connections again."""
        self.mode = "forward"

    def inject(self, payload: bytes | str) -> None:
        """Send ``payload`` as one websocket frame (binary for bytes, text for str) on the newest kernel websocket."""
        binary = isinstance(payload, bytes)
        data = payload if binary else payload.encode()
        size = len(data)
        head = bytes([0x82 if binary else 0x81])
        if size < 126:
            head += bytes([size])
        elif size < 1 << 16:
            head += bytes([126]) + size.to_bytes(2, "big")
        else:
            head += bytes([127]) + size.to_bytes(8, "big")
        self._websockets[-1].write(head + data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._serving.add(task)
        try:
            if self.mode == "block":
                self.refused += 1
                writer.transport.abort()
            elif self.mode == "stall":
                await self._swallow(reader, writer)
            else:
                await self._pipe(reader, writer, self.delay if self.mode == "slow" else 0.0)
        finally:
            self._serving.discard(task)

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._swallowing.add(writer)
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            self._swallowing.discard(writer)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)

        async def upward() -> None:  # the pool -> the gateway
            try:
                while data := await reader.read(65536):
                    up_writer.write(data)
                    await up_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                if pair.partitioned:  # the gateway's end lingers until the gateway or the proxy closes it
                    await asyncio.wait([asyncio.ensure_future(pair.upstream_gone.wait()),
                                        asyncio.ensure_future(self._closing.wait())], return_when=asyncio.FIRST_COMPLETED)
                up_writer.close()

        async def downward(frames: bool) -> None:  # the gateway -> the pool; a websocket's frames are forwarded whole
            pending = bytearray()
            upgraded = False
            try:
                while data := await up_reader.read(65536):
                    if pair.partitioned:
                        continue  # lost in the outage
                    if delay:  # the answer's late arrival is what this mode simulates
                        await asyncio.wait([asyncio.ensure_future(self._closing.wait())], timeout=delay)
                    if not frames:
                        writer.write(data)
                    else:
                        pending += data
                        if not upgraded and (end := pending.find(b"\r\n\r\n")) >= 0:
                            writer.write(bytes(pending[: end + 4]))
                            del pending[: end + 4]
                            upgraded = True
                            self._websockets.append(writer)
                        while upgraded and (size := _frame_size(pending)) is not None:
                            writer.write(bytes(pending[:size]))
                            del pending[:size]
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                pair.upstream_gone.set()
                writer.close()

        first = await reader.read(65536)
        up_writer.write(first)
        try:
            await asyncio.gather(upward(), downward(frames=b"/channels" in first.partition(b"\r\n")[0]))
        finally:
            self._pairs.discard(pair)
            if writer in self._websockets:
                self._websockets.remove(writer)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._closing.set()  # a slow or partitioned connection may be waiting
        self.cut()
        await asyncio.gather(*self._serving, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


class _Pair:
    """One proxied connection: the pool's end and the gateway's end."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.partitioned = False  # broken by an outage: the gateway's end lingers, its data is dropped
        self.upstream_gone = asyncio.Event()


def _frame_size(data: bytearray) -> int | None:
    """The length of the complete websocket frame at the start of ``data``, or None if it is not all there."""
    if len(data) < 2:
        return None
    size, at = data[1] & 0x7F, 2
    if size == 126:
        size, at = int.from_bytes(data[2:4], "big"), 4
    elif size == 127:
        size, at = int.from_bytes(data[2:10], "big"), 10
    at += 4 if data[1] & 0x80 else 0  # a masking key (frames from the client)
    return at + size if len(data) >= at + size and len(data) >= at else None


# ---- fixtures (a pytest plugin: conftest lists this module in pytest_plugins) ------------------


def _session_gateway(kind: str, tmp_path_factory) -> Gateway:
    if kind == "eg" and not (EG_VENV / ".installed").exists():
        pytest.fail(
            f"Enterprise Gateway's venv is missing at {EG_VENV}: run `make .venv-eg/.installed` "
            "(make test does), or point JSP_EG_VENV at one",
            pytrace=False,
        )
    return Gateway(kind, tmp_path_factory.mktemp(kind)).start()


@pytest.fixture(scope="session")
def kg(tmp_path_factory):
    """The run's Kernel Gateway; at the end no kernel may be left on it."""
    gw = _session_gateway("kg", tmp_path_factory)
    yield gw
    try:
        assert gw.kernels() == [], "kernels left on the Kernel Gateway at the end of the run"
    finally:
        gw.stop()


@pytest.fixture(scope="session")
def eg(tmp_path_factory):
    """The run's Enterprise Gateway 3.3 (from its own venv); at the end no kernel may be left on it."""
    gw = _session_gateway("eg", tmp_path_factory)
    yield gw
    try:
        assert gw.kernels() == [], "kernels left on the Enterprise Gateway at the end of the run"
    finally:
        gw.stop()


def pool_settings(gw: Gateway) -> dict:
    """The settings that point a pool at ``gw`` (EG will not start kernels for root without a user name)."""
    env = {"KERNEL_USERNAME": "jsp-tester"} if gw.kind == "eg" else {}
    return {"gateway_url": gw.url, "gateway_token": gw.token, "env": env}
