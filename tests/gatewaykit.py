"""Real gateways on 127.0.0.1 for the remote tests: Kernel Gateway from this venv, Enterprise
Gateway from its own (``make .venv-eg/.installed``), and a TCP proxy that can cut connections.

A gateway runs kernelspecs from a private JUPYTER_PATH: ``python3`` (this venv's ipykernel)
and ``crash`` (exits at start). Readiness is polled on ``GET /api`` (an external process
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

ROOT = Path(__file__).resolve().parent.parent
EG_VENV = Path(os.environ.get("JSP_EG_VENV") or ROOT / ".venv-eg")  # unset or empty: the one make test builds
KERNELSPECS = {
    "python3": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--HistoryManager.hist_file=:memory:"],
    "crash": [sys.executable, "-c", "import sys; sys.exit(3)", "{connection_file}"],
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
    """A TCP proxy on 127.0.0.1 in front of a gateway; :meth:`cut` drops every open connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._serving: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._serving.add(task)
        try:
            await self._pipe(reader, writer)
        finally:
            self._serving.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._conns.difference_update((writer, up_writer))

    def cut(self) -> int:
        """Reset every connection through the proxy (both sides); new ones are still accepted."""
        conns = list(self._conns)
        for w in conns:
            w.transport.abort()
        return len(conns) // 2

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        await asyncio.gather(*self._serving, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


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
