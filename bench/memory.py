"""Item 7: memory of a pooled kernel against a bare ipykernel, and what each kernel costs the pool's process."""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack

from _common import Section, memory, percentile, raw_execute, raw_kernel

from jupyter_sessionpool import AsyncKernelPool

METHOD = """\
{n} kernels of each kind alive at the same time, each after one `pass` cell, then 1 s of
rest: *pooled* from `AsyncKernelPool(max_kernels={n}, min_idle={n})` (one session each),
*bare* from default `AsyncKernelManager`s (jupyter_client's defaults, tcp). Per kernel
process: Rss and Pss from `/proc/PID/smaps_rollup` (Pss splits pages shared between
processes, such as the Python binary and libraries, among their sharers, so it is what one
more kernel really costs); the table gives the median over the {n} kernels of each kind.
*Pool process per kernel*: growth of this process's Rss from before the pool was created
to {n} kernels ready and used, divided by {n} (client sockets, zmq buffers, bookkeeping)."""


def rss_self() -> int:
    return memory(os.getpid())["rss"]


async def measure(quick: bool) -> Section:
    n = 2 if quick else 4
    section = Section("memory", "7. Memory per pooled kernel vs a bare ipykernel", METHOD.format(n=n))
    async with AsyncExitStack() as stack:
        bare = [await stack.enter_async_context(raw_kernel("tcp")) for _ in range(n)]
        for _, kc in bare:
            await raw_execute(kc, "pass")
        before = rss_self()
        pool = await stack.enter_async_context(AsyncKernelPool(max_kernels=n, min_idle=n))
        await pool.wait_ready(timeout=120)
        await asyncio.gather(*(pool.execute("pass", session=f"m{i}") for i in range(n)))
        await asyncio.sleep(1)
        pool_side = (rss_self() - before) / n
        pooled = [memory(k.pid) for k in pool.stats().kernels]
        bare_mem = [memory(km.provisioner.process.pid) for km, _ in bare]
    rows = []
    for label, mems in (("pooled kernel", pooled), ("bare ipykernel", bare_mem)):
        rows.append(
            [
                label,
                str(len(mems)),
                f"{percentile([m['rss'] for m in mems], 50) / 2**20:.1f}",
                f"{percentile([m['pss'] for m in mems], 50) / 2**20:.1f}",
            ]
        )
    ratio = [percentile([m[k] for m in pooled], 50) / percentile([m[k] for m in bare_mem], 50) for k in ("rss", "pss")]
    rows.append(["pooled / bare", "", f"{ratio[0]:.3f}x", f"{ratio[1]:.3f}x"])
    rows.append(["pool process per kernel", "", f"{pool_side / 2**20:.2f}", ""])
    section.table(["process", "n", "Rss MiB (median)", "Pss MiB (median)"], rows)
    section.raw = {"pooled": pooled, "bare": bare_mem, "pool_process_per_kernel": pool_side}
    return section
