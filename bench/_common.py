"""Shared pieces of the benchmarks: timing, percentiles, report sections, raw jupyter_client kernels.

Every item module exposes ``async def measure(quick: bool) -> Section``. Comparisons are
measured *interleaved* (one sample of each variant per round, in rotating order) so the
noise of this shared machine hits every variant alike: the ratios hold even when the
absolute times drift.
"""

from __future__ import annotations

import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager

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
    raw: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        self.tables.append((headers, rows))

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
