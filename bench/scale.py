"""Item 5: scale and churn: 16 kernels started at once, 64 sessions over 16 kernels, session create/release cycles."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import time
from typing import Any

from _common import (
    STATS_HEADERS,
    Parts,
    Section,
    Stats,
    Target,
    interleaved,
    open_files,
    raw_execute,
    stats_rows,
)
from jupyter_client.manager import AsyncKernelManager

from jupyter_sessionpool import AsyncKernelPool

# Cycles of the churn test in a full run. Every cycle starts (and stops) a real kernel, about
# 0.5 CPU-s on this machine, so 1,000 cycles alone take ~8 minutes on 2 cores:
# `run.py --churn-cycles 1000` does that; the default keeps `make bench` near 10 minutes.
CHURN_CYCLES = 150

METHOD = """\
**Start-up of {n_start} kernels at once**, {start_reps} rounds interleaved: a new
`AsyncKernelPool(max_kernels={n_start}, min_idle={n_start})` until `wait_ready()`
returns (all {n_start} answered `kernel_info`), against {n_start} default
`AsyncKernelManager`s started with `asyncio.gather` until each client's `wait_for_ready()`
returns. Shutdown is untimed.

**{sessions} sessions over {kernels} kernels**: a pool with `max_kernels={kernels},
min_idle={kernels}`, ready. {sessions} named sessions ask for a checkout at the same moment
(in order s0…s{last}); each runs `time.sleep({hold})` and is then released, which shuts its
kernel down and lets the pool start a fresh one for the next waiter (a kernel never passes
from one named session to another). *Wait* is the time from asking to holding the lease.
*Out of order* counts pairs of sessions granted in the opposite order of their requests
(0 = strict FIFO). Then, on the same pool, {sessions} anonymous clients each run
{anon_cells} cells of `time.sleep({anon_hold})` one after the other; every checkout's wait is
recorded, and *fairness* is Jain's index over the clients' total waits (1.0 = all waited
alike; 1/{sessions} = one client got everything).

**Churn**: {cycles} session create/release cycles on `AsyncKernelPool(max_kernels=4,
min_idle=4)`, 4 at a time: checkout of a new session, `pass`, `release()`. Sessions per
second over the whole run, and this process's RSS and open file descriptors after the
pool is ready and {warm} warm-up cycles ("before") and after the last cycle, once the
pool is ready again and `gc.collect()` ran ("after"). The same cycle with raw
jupyter_client ({raw_cycles} cycles, 4 at a time: `AsyncKernelManager.start_kernel`,
`wait_for_ready`, `pass`, `shutdown_kernel`) gives the ceiling the machine allows."""


# ---- 16 kernels started at once --------------------------------------------------------


async def pool_start(n: int) -> Parts:
    async with AsyncKernelPool(max_kernels=n, min_idle=n) as pool:
        t0 = time.perf_counter()
        await pool.wait_ready(timeout=120)
        return Parts({f"pool, {n} kernels ready": time.perf_counter() - t0})


async def raw_start(n: int) -> Parts:
    kms = [AsyncKernelManager(kernel_name="python3") for _ in range(n)]
    clients: list[Any] = []

    async def one(km: AsyncKernelManager) -> None:
        await km.start_kernel()
        kc = km.client()
        clients.append(kc)
        kc.start_channels()
        await kc.wait_for_ready(timeout=120)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(km) for km in kms))
        return Parts({f"jupyter_client, {n} kernels ready": time.perf_counter() - t0})
    finally:
        for kc in clients:
            kc.stop_channels()
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms if km.has_kernel))


# ---- many sessions over few kernels ------------------------------------------------------


async def named_sessions(pool: AsyncKernelPool, sessions: int, hold: float) -> tuple[list[float], int]:
    """Waits of ``sessions`` named sessions asking at once, and how many pairs were granted out of order."""
    granted: list[int] = []
    waits = [0.0] * sessions

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        async with pool.checkout(f"s{i}", timeout=300) as lease:
            waits[i] = time.perf_counter() - t0
            granted.append(i)
            await lease.execute(f"import time; time.sleep({hold})")
        await pool.release(f"s{i}")

    await asyncio.gather(*(one(i) for i in range(sessions)))
    inversions = sum(1 for a, b in itertools.combinations(granted, 2) if a > b)
    return waits, inversions


async def anonymous_clients(pool: AsyncKernelPool, clients: int, cells: int, hold: float) -> list[list[float]]:
    """Per client, the wait of each of its checkouts."""
    waits: list[list[float]] = [[] for _ in range(clients)]

    async def one(i: int) -> None:
        for _ in range(cells):
            t0 = time.perf_counter()
            async with pool.checkout(timeout=300) as lease:
                waits[i].append(time.perf_counter() - t0)
                await lease.execute(f"import time; time.sleep({hold})")

    await asyncio.gather(*(one(i) for i in range(clients)))
    return waits


def jain(xs: list[float]) -> float:
    """Jain's fairness index: (Σx)² / (n Σx²), 1.0 when all are equal."""
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if any(xs) else 1.0


# ---- churn -------------------------------------------------------------------------------


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def churn(cycles: int, warm: int, width: int = 4, **options: Any) -> dict[str, Any]:
    """Session create/release cycles through a pool (more pool ``options``: item 14's start_method);
    rate, and this process's RSS and open files over time."""
    names = itertools.count()
    trace: list[tuple[int, int, int]] = []  # (cycles done, rss, open fds)
    every = max(1, cycles // 30)
    done = 0

    async def cycle(pool: AsyncKernelPool) -> None:
        nonlocal done
        session = f"c{next(names)}"
        async with pool.checkout(session, timeout=300) as lease:
            await lease.execute("pass")
        await pool.release(session)
        done += 1
        if done % every == 0:
            trace.append((done, rss(), open_files(os.getpid())))

    async def run(pool: AsyncKernelPool, n: int) -> None:
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                await cycle(pool)

        await asyncio.gather(*(worker() for _ in range(width)))

    async with AsyncKernelPool(max_kernels=width, min_idle=width, **options) as pool:
        await pool.wait_ready(timeout=120)
        await run(pool, warm)
        await pool.wait_ready(timeout=120)
        gc.collect()
        before = (rss(), open_files(os.getpid()))
        done = 0
        trace[:] = [(0, *before)]
        t0 = time.perf_counter()
        await run(pool, cycles)
        elapsed = time.perf_counter() - t0
        await pool.wait_ready(timeout=120)
        gc.collect()
        after = (rss(), open_files(os.getpid()))
    return {"seconds": elapsed, "before": before, "after": after, "trace": trace}


async def raw_churn(cycles: int, width: int = 4) -> float:
    """Seconds for ``cycles`` start/ready/pass/shutdown cycles of raw jupyter_client kernels, ``width`` at a time."""
    todo = iter(range(cycles))

    async def worker() -> None:
        for _ in todo:
            km = AsyncKernelManager(kernel_name="python3")
            await km.start_kernel()
            kc = km.client()
            try:
                kc.start_channels()
                await kc.wait_for_ready(timeout=120)
                await raw_execute(kc, "pass")
            finally:
                kc.stop_channels()
                await km.shutdown_kernel()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    return time.perf_counter() - t0


# ---- the item ----------------------------------------------------------------------------


async def measure(quick: bool) -> Section:
    p = {
        "n_start": 4 if quick else 16,
        "start_reps": 1 if quick else 3,
        "sessions": 16 if quick else 64,
        "kernels": 4 if quick else 16,
        "hold": 0.2,
        "anon_cells": 5,
        "anon_hold": 0.05,
        "cycles": 12 if quick else CHURN_CYCLES,
        "warm": 4 if quick else 8,
    }
    p["raw_cycles"] = max(4, p["cycles"] // 4)
    p["last"] = p["sessions"] - 1
    section = Section("scale", "5. Scale and churn", METHOD.format(**p))
    n = p["n_start"]

    starts = await interleaved({"pool": lambda: pool_start(n), "raw": lambda: raw_start(n)}, p["start_reps"])
    section.table(STATS_HEADERS, stats_rows(starts, f"jupyter_client, {n} kernels ready"))

    async with AsyncKernelPool(max_kernels=p["kernels"], min_idle=p["kernels"]) as pool:
        await pool.wait_ready(timeout=120)
        named, inversions = await named_sessions(pool, p["sessions"], p["hold"])
        await pool.wait_ready(timeout=120)
        t0 = time.perf_counter()
        anon = await anonymous_clients(pool, p["sessions"], p["anon_cells"], p["anon_hold"])
        anon_wall = time.perf_counter() - t0
    anon_all = [w for ws in anon for w in ws]
    ideal = p["sessions"] * p["anon_cells"] * p["anon_hold"] / p["kernels"]
    rows = []
    for label, waits, extra in (
        (f"{p['sessions']} named sessions, release after one cell", named, f"{inversions} out of order"),
        (
            f"{p['sessions']} anonymous clients × {p['anon_cells']} cells",
            anon_all,
            f"Jain {jain([sum(ws) for ws in anon]):.3f}; wall {anon_wall:.2f} s vs ideal {ideal:.2f} s",
        ),
    ):
        s = Stats.of(waits)
        rows.append([label, str(s.n), f"{s.p50:.3f}", f"{s.p99:.3f}", f"{s.max:.3f}", extra])
    section.table(["scenario", "checkouts", "wait p50 s", "wait p99 s", "wait max s", "fairness"], rows)
    section.targets.append(Target("named sessions granted out of FIFO order", inversions, 0.5, "pairs"))

    c = await churn(p["cycles"], p["warm"])
    raw_seconds = await raw_churn(p["raw_cycles"])
    pool_rate, raw_rate = p["cycles"] / c["seconds"], p["raw_cycles"] / raw_seconds
    (rss0, fd0), (rss1, fd1) = c["before"], c["after"]
    section.table(
        ["cycles", "sessions/s", "raw jupyter_client cycles/s", "pool / raw", "RSS before → after MiB", "open files"],
        [
            [
                str(p["cycles"]),
                f"{pool_rate:.2f}",
                f"{raw_rate:.2f}",
                f"{pool_rate / raw_rate:.2f}x",
                f"{rss0 / 2**20:.1f} → {rss1 / 2**20:.1f} ({(rss1 - rss0) / 2**20:+.1f})",
                f"{fd0} → {fd1} ({fd1 - fd0:+d})",
            ]
        ],
    )
    section.targets.append(Target("open files after churn minus before", fd1 - fd0, 1, "files"))
    section.notes.append(
        "A create/release cycle costs one kernel start (and stop), which is CPU-bound (~0.5 CPU-s of imports "
        "per ipykernel): sessions per second are set by how fast this machine starts kernels, not by the pool. "
        f"Pool / raw jupyter_client cycles per second: {pool_rate / raw_rate:.2f}x (the raw cycle has no "
        "bookkeeping, but waits for `wait_for_ready()`'s 0.2 s flush)."
    )
    section.notes.append(
        "The named sessions' waits are kernel starts too: a named session never inherits another's kernel, "
        f"so the last {p['sessions'] - p['kernels']} sessions each wait for a release (shutdown) and a fresh start, "
        "and those starts share the 2 cores."
    )
    section.raw = {
        "starts": starts,
        "named": named,
        "inversions": inversions,
        "anonymous": anon,
        "churn": c,
        "raw_churn_s": raw_seconds,
    }
    plot(section, f"{p['sessions']} sessions over {p['kernels']} kernels", named, anon_all, c)
    return section


def plot(section: Section, title: str, named: list[float], anon: list[float], c: dict[str, Any]) -> None:
    """Left: distribution of checkout waits. Right: this process's RSS and open files during churn."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, waits in (("named sessions (released after one cell)", named), ("anonymous clients", anon)):
        xs = sorted(waits)
        left.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=label)
    left.set_xlabel("checkout wait, s")
    left.set_ylabel("share of checkouts")
    left.set_title(f"Waiting checkouts, {title}", fontsize=10)
    left.legend(fontsize=8)
    trace = c["trace"]
    cycles = [t[0] for t in trace]
    right.plot(cycles, [t[1] / 2**20 for t in trace], color="tab:blue", marker=".")
    right.set_xlabel("create/release cycles")
    right.set_ylabel("pool process RSS, MiB", color="tab:blue")
    fds = right.twinx()
    fds.plot(cycles, [t[2] for t in trace], color="tab:orange", marker=".")
    fds.set_ylabel("open file descriptors", color="tab:orange")
    right.set_title("Churn: the pool's process over time", fontsize=10)
    section.figure(fig, "bench-scale.png", f"Item 5: checkout waits, {title}, and churn")
