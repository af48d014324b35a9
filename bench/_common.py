"""Shared pieces of the benchmarks: timing, percentiles, report sections, raw jupyter_client kernels.

Every item module exposes ``async def measure(quick: bool) -> Section``. Comparisons are
measured *interleaved* (one sample of each variant per round, in rotating order) so the
noise of this shared machine hits every variant alike: the ratios hold even when the
absolute times drift.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import websocket
from jupyter_client.jsonutil import json_default
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.session import Session

matplotlib.use("Agg")  # files only, never a window

HERE = Path(__file__).resolve().parent

Variant = Callable[[], Any]  # a sync callable or one returning an awaitable

# Kernel options the pool passes to its kernels; raw kernels get them too when we compare
# client-side overhead, so only the client code differs.
POOL_KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:"]


# ---- statistics ----------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated between closest ranks."""
    xs = sorted(samples)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class Stats:
    """Summary of one variant's samples (seconds)."""

    n: int
    p50: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: list[float]) -> Stats:
        return cls(len(samples), percentile(samples, 50), percentile(samples, 99), min(samples), max(samples))


class Parts(dict):
    """Returned by a variant that times its own parts: ``{name: seconds}``."""


async def call(fn: Variant) -> Any:
    """Run a variant, awaiting it if it is async."""
    result = fn()
    if inspect.isawaitable(result):
        result = await result
    return result


async def interleaved(variants: dict[str, Variant], reps: int, warmup: int = 0) -> dict[str, list[float]]:
    """Sample every variant ``reps`` times, one call of each per round in rotating order.

    A call is timed as a whole, unless it returns :class:`Parts`: then it timed its own
    parts (and did untimed set-up or clean-up) and those are recorded.
    ``warmup`` untimed rounds come first (imports, caches, first-message costs).
    """
    names = list(variants)
    samples: dict[str, list[float]] = {}
    for i in range(warmup + reps):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            result = await call(variants[name])
            parts = result if isinstance(result, Parts) else {name: time.perf_counter() - t0}
            for part, seconds in parts.items():
                samples.setdefault(part, [])
                if i >= warmup:
                    samples[part].append(seconds)
    return samples


def ms(seconds: float) -> str:
    """Seconds as milliseconds for a table cell, 3 significant-ish digits."""
    v = seconds * 1000
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def ratio(a: float, b: float) -> str:
    """``a / b`` for a table cell."""
    return f"{a / b:.3f}x"


# ---- report sections -----------------------------------------------------------------

# Where Section.figure saves PNGs: next to the report. run.py points it at docs/ for a full run.
FIGURE_DIR = HERE / "results"


@dataclass
class Target:
    """One goal from the issue: ``value`` must be below ``limit`` (above it with ``higher_better``)."""

    label: str
    value: float
    limit: float
    unit: str
    why_missed: str = ""  # the known cause, printed only when the target is missed
    higher_better: bool = False

    @property
    def met(self) -> bool:
        return self.value > self.limit if self.higher_better else self.value < self.limit


@dataclass
class Section:
    """One benchmark item: its method, its result tables and targets, and the raw samples."""

    key: str
    title: str
    method: str
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    raw: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        self.tables.append((headers, rows))

    def figure(self, fig: Any, name: str, caption: str) -> None:
        """Save a matplotlib figure as ``FIGURE_DIR/name`` (a PNG beside the report) and close it."""
        import matplotlib.pyplot as plt

        fig.tight_layout()
        fig.savefig(FIGURE_DIR / name, dpi=110)
        plt.close(fig)
        self.figures.append((name, caption))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = [{**asdict(t), "met": t.met} for t in self.targets]
        return d


def stats_rows(samples: dict[str, list[float]], reference: str | None) -> list[list[str]]:
    """Table rows (variant, n, p50 ms, p99 ms, p50 ratio, p99 ratio) against ``reference``."""
    ref = Stats.of(samples[reference]) if reference else None
    rows = []
    for name, xs in samples.items():
        s = Stats.of(xs)
        r50 = ratio(s.p50, ref.p50) if ref else ""
        r99 = ratio(s.p99, ref.p99) if ref else ""
        rows.append([name, str(s.n), ms(s.p50), ms(s.p99), r50, r99])
    return rows


STATS_HEADERS = ["variant", "n", "p50 ms", "p99 ms", "p50 ratio", "p99 ratio"]


# ---- machine load --------------------------------------------------------------------


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class LoadMeter:
    """Machine-wide CPU busy share (all users) and load average over a span of time."""

    def __init__(self) -> None:
        self._busy, self._total = _cpu_times()
        self._load0 = loadavg()

    def read(self) -> dict[str, float]:
        busy, total = _cpu_times()
        share = (busy - self._busy) / max(1, total - self._total)
        return {"cpu_busy_pct": round(100 * share, 1), "load_start": self._load0, "load_end": loadavg()}


# ---- raw jupyter_client kernels ----------------------------------------------------------


@asynccontextmanager
async def raw_kernel(
    transport: str = "tcp", extra_arguments: list[str] | None = None
) -> AsyncIterator[tuple[AsyncKernelManager, Any]]:
    """A kernel started with plain jupyter_client and a ready AsyncKernelClient; always shut down."""
    km = AsyncKernelManager(kernel_name="python3", transport=transport)
    if transport == "ipc":
        km.ip = str(Path(os.environ["JUPYTER_RUNTIME_DIR"]) / f"raw-{uuid.uuid4().hex[:8]}")
    kc = None
    try:
        await km.start_kernel(extra_arguments=extra_arguments or [])
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        if kc is not None:
            kc.stop_channels()
        if km.has_kernel:
            await km.shutdown_kernel(now=True)


async def raw_execute(kc: Any, code: str, timeout: float = 30) -> dict[str, Any]:
    """One execute round trip on a raw client (async or blocking): execute_reply *and* iopub idle."""
    msg_id = kc.execute(code)
    reply = None
    while reply is None:
        msg = await call(lambda: kc.get_shell_msg(timeout=timeout))
        if msg["parent_header"].get("msg_id") == msg_id:
            reply = msg
    while True:
        msg = await call(lambda: kc.get_iopub_msg(timeout=timeout))
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            return reply


def execute_request(code: str) -> dict[str, Any]:
    """An ``execute_request`` message as a front end sends it (used over websockets)."""
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
    return Session().msg("execute_request", content=content)


# ---- process memory and files ----------------------------------------------------------


def memory(pid: int) -> dict[str, int]:
    """``Rss`` and ``Pss`` of a process in bytes (``/proc/PID/smaps_rollup``).

    Pss charges each shared page to its sharers in equal parts, so the Pss of N kernels
    sums to what they really cost together; Rss counts shared pages in every process.
    """
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower()] = int(rest.split()[0]) * 1024
    return out


def open_files(pid: int) -> int:
    """Number of open file descriptors (files, sockets, pipes, zmq's eventfds) of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


async def settled(pid: int, window: float = 0.5, quiet: float = 0.05, timeout: float = 60) -> None:
    """Wait until a process and its descendants use under ``quiet`` CPU-seconds per ``window``.

    For peers that report kernels before they are ready (a gateway lists a prespawned
    kernel as soon as its process is spawned): once the kernels stop burning CPU on
    imports they are idle.
    """
    import psutil

    def cpu() -> float:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    deadline = time.monotonic() + timeout
    before = cpu()
    while time.monotonic() < deadline:
        await asyncio.sleep(window)
        now = cpu()
        if now - before < quiet:
            return
        before = now


# ---- peers: ipyparallel and Jupyter Kernel Gateway -------------------------------------


@asynccontextmanager
async def ipp_cluster(n: int) -> AsyncIterator[Any]:
    """A local ipyparallel cluster of ``n`` engines and its connected Client; always stopped."""
    import ipyparallel as ipp

    cluster = ipp.Cluster(n=n, log_level=40)
    try:
        rc = await cluster.start_and_connect(n=n)
        try:
            yield rc
        finally:
            rc.close()
    finally:
        await cluster.stop_cluster()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayKernel:
    """One kernel of a Kernel Gateway, driven over its websocket as a front end would."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url)  # websocket-client sets TCP_NODELAY on its side

    def execute(self, code: str) -> dict[str, Any]:
        """One round trip: the ``execute_reply`` *and* the iopub ``idle`` of the request."""
        msg = execute_request(code)
        msg["channel"] = "shell"
        self.ws.send(json.dumps(msg, default=json_default))
        msg_id, reply, idle = msg["header"]["msg_id"], None, False
        while reply is None or not idle:
            got = json.loads(self.ws.recv())
            if got["parent_header"].get("msg_id") != msg_id:
                continue
            if got["msg_type"] == "execute_reply":
                reply = got
            elif got["msg_type"] == "status" and got["content"]["execution_state"] == "idle":
                idle = True
        return reply

    def close(self) -> None:
        self.ws.close()


class Gateway:
    """A running ``jupyter kernelgateway`` (jupyter-websocket personality) on 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"  # what a pool's gateway_url names
        self.http = f"http://127.0.0.1:{port}/api/kernels"
        self.ws = f"ws://127.0.0.1:{port}/api/kernels"

    def _request(self, method: str, url: str) -> Any:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def kernels(self) -> list[dict[str, Any]]:
        """``GET /api/kernels`` (needs ``list_kernels=True``; it is how clients find prespawned kernels)."""
        return self._request("GET", self.http)

    def start(self) -> str:
        """``POST /api/kernels``: a new kernel's id (returns once the process is spawned, not ready)."""
        return self._request("POST", self.http)["id"]

    def connect(self, kernel_id: str) -> GatewayKernel:
        return GatewayKernel(f"{self.ws}/{kernel_id}/channels")

    def delete(self, kernel_id: str) -> None:
        self._request("DELETE", f"{self.http}/{kernel_id}")


@asynccontextmanager
async def kernel_gateway(
    prespawn: int, nodelay: bool, timeout: float = 120, extra: list[str] | None = None
) -> AsyncIterator[Gateway]:
    """A Kernel Gateway with ``prespawn`` kernels, all listed and idle; SIGTERM'd and awaited at the end.

    ``extra`` are more command-line options for the gateway.

    ``nodelay`` launches it through ``gateway_launch.py --nodelay``, which sets TCP_NODELAY
    on every accepted websocket (stock jupyter_server never does: each reply then waits on
    Nagle + delayed ACK, ~40 ms).
    """
    port = free_port()
    log = open(Path(os.environ["JUPYTER_RUNTIME_DIR"]) / f"gateway-{port}.log", "wb")
    cmd = [sys.executable, str(HERE / "gateway_launch.py"), *(["--nodelay"] if nodelay else [])]
    cmd += [
        "--KernelGatewayApp.ip=127.0.0.1",
        f"--KernelGatewayApp.port={port}",
        f"--KernelGatewayApp.prespawn_count={prespawn}",
        "--JupyterWebsocketPersonality.list_kernels=True",
        *(extra or []),
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    gateway = Gateway(port)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"kernel gateway exited with {proc.returncode}; see {log.name}")
            try:
                listed = gateway.kernels()
                # execution_state stays 'starting' until a client connects: settle on 'listed'
                if len(listed) >= prespawn:
                    break
            except (urllib.error.URLError, ConnectionError):  # not listening yet, or HTTP 500 mid-prespawn
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"kernel gateway not ready with {prespawn} kernels after {timeout} s")
            await asyncio.sleep(0.1)
        await settled(proc.pid)  # listed is not ready: the kernels are still importing
        yield gateway
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
