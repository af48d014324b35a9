"""Item 4: throughput of many short anonymous tasks, the pool against ipyparallel's load-balanced view."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import ipyparallel as ipp
from _common import Section, Stats, Target, interleaved, ipp_cluster

from jupyter_sessionpool import AsyncKernelPool

CELL = "import time; time.sleep(0.001)"

METHOD = """\
{tasks:,} tasks of about 1 ms each (`time.sleep(0.001)`), all submitted at once, over K
kernels; a sample is the wall time until every result is back, {reps} samples per
variant, interleaved after one warm-up round. *pool*: `AsyncKernelPool(max_kernels=K,
min_idle=K)`, ready, and `asyncio.gather` over {tasks:,} anonymous
`pool.execute("{cell}")` (each one a checkout, a cell, a check-in). *ipyparallel*: one
local `ipp.Cluster(n=4)`, `rc.load_balanced_view(targets=<K engines>)` and
{tasks:,} `apply_async` of a function doing the same sleep, then `get()` on each, with
ipyparallel's defaults (scheme `leastload`, `TaskScheduler.hwm=1`: one task in flight per
engine, like the pool). Throughput is tasks / wall."""

WHY_MISSED = (
    "The pool's own process is CPU-bound here, and it does not gain from K=2 to K=4. With 1,000 tasks "
    "queued, every check-in and checkout runs `Books.settle()` over all waiters, which is O(waiters x kernels). "
    "That is about 1 ms of CPU per task at the average depth: see item 6's *queued* variant and the profile "
    "notes. On top of that, every message is deserialized and its dates parsed on the one event-loop thread. "
    "ipyparallel splits the same work between its scheduler (a separate process) and the client's I/O "
    "thread, so it uses both cores. Its tasks are also `apply` requests, which skip IPython's cell machinery."
)


def sleep_1ms() -> None:
    """The ipyparallel task: the same 1 ms sleep as the pool's cell."""
    import time

    time.sleep(0.001)


async def pool_batch(pool: AsyncKernelPool, tasks: int) -> None:
    await asyncio.gather(*(pool.execute(CELL) for _ in range(tasks)))


def ipp_batch(view: Any, task: Any, tasks: int) -> None:
    """Submit every task, then wait for each result (blocks the loop; nothing else is timed meanwhile)."""
    for ar in [view.apply_async(task) for _ in range(tasks)]:
        ar.get()


async def measure(quick: bool) -> Section:
    tasks, reps = (200, 1) if quick else (1000, 4)
    ks = (2, 4)
    section = Section(
        "throughput",
        "4. Throughput: many short anonymous tasks, pool vs ipyparallel load-balanced view",
        METHOD.format(tasks=tasks, reps=reps, cell=CELL),
    )
    task = ipp.interactive(sleep_1ms)  # pickled by value: the engines cannot import this module
    async with AsyncExitStack() as stack:
        rc = await stack.enter_async_context(ipp_cluster(max(ks)))
        variants = {}
        for k in ks:
            pool = await stack.enter_async_context(AsyncKernelPool(max_kernels=k, min_idle=k))
            await pool.wait_ready(timeout=120)
            view = rc.load_balanced_view(targets=list(range(k)))
            variants[f"pool, {k} kernels"] = lambda pool=pool: pool_batch(pool, tasks)
            variants[f"ipyparallel, {k} engines"] = lambda view=view: ipp_batch(view, task, tasks)
        samples = await interleaved(variants, reps, warmup=1)
    section.raw = samples
    rates = {name: [tasks / s for s in xs] for name, xs in samples.items()}
    rows = []
    for k in ks:
        pool, peer = Stats.of(samples[f"pool, {k} kernels"]), Stats.of(samples[f"ipyparallel, {k} engines"])
        for name, s in ((f"pool, {k} kernels", pool), (f"ipyparallel, {k} engines", peer)):
            rows.append([name, str(s.n), f"{tasks / s.p50:,.0f}", f"{tasks / s.max:,.0f}", f"{s.p50:.2f}"])
        rows[-1].append(f"{peer.p50 / pool.p50:.3f}x")
        rows[-2].append("")
        section.targets.append(
            Target(f"pool / ipyparallel tasks per second, K={k} (p50)", peer.p50 / pool.p50, 1.0, "x", WHY_MISSED, True)
        )
    section.table(["variant", "n", "tasks/s p50", "tasks/s slowest", "wall p50 s", "pool / ipyparallel"], rows)
    plot(section, ks, rates)
    return section


def plot(section: Section, ks: tuple[int, ...], rates: dict[str, list[float]]) -> None:
    """Grouped bars: tasks per second (median, bar to the slowest and fastest sample) per K."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    width = 0.38
    for i, (label, fmt) in enumerate((("pool", "pool, {k} kernels"), ("ipyparallel", "ipyparallel, {k} engines"))):
        xs = [j + (i - 0.5) * width for j in range(len(ks))]
        per_k = [rates[fmt.format(k=k)] for k in ks]
        mid = [Stats.of(r).p50 for r in per_k]
        err = [[m - min(r) for m, r in zip(mid, per_k)], [max(r) - m for m, r in zip(mid, per_k)]]
        ax.bar(xs, mid, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(range(len(ks)), [f"{k} kernels / engines" for k in ks])
    ax.set_ylabel("tasks per second (1 ms tasks)")
    ax.legend()
    section.figure(fig, "bench-throughput.png", "Item 4: throughput of short anonymous tasks")
