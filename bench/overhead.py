"""Item 1: what the pool adds to one execute round trip, against raw jupyter_client and ipyparallel."""

from __future__ import annotations

from contextlib import AsyncExitStack

import ipyparallel as ipp
from _common import (
    POOL_KERNEL_ARGS,
    STATS_HEADERS,
    Section,
    Stats,
    Target,
    interleaved,
    raw_execute,
    raw_kernel,
    stats_rows,
)

from jupyter_sessionpool import AsyncKernelPool

METHOD = """\
All variants run `pass` on their own idle kernel, interleaved one sample each per round
(rotating order) after {warmup} warm-up rounds, {reps} rounds. A round trip ends when the
`execute_reply` *and* the iopub `status: idle` of the request have arrived.
*raw ipc* is an `AsyncKernelClient` on a kernel started by a plain `AsyncKernelManager`
with the pool's transport (ipc) and the pool's kernel arguments, so only client code
differs from the pool; *raw tcp* is jupyter_client with its defaults. `pool.execute`
includes checkout and check-in of session `a`; `Lease.execute` runs on a lease held for
the whole measurement (no checkout). ipyparallel: one engine of a local
`ipp.Cluster(n=1)`, `rc[0].apply_sync(lambda: None)` and `rc[0].execute("pass", block=True)`."""

WHY_MISSED = ""  # filled in from profiling when the target is missed


async def measure(quick: bool) -> Section:
    reps, warmup = (60, 10) if quick else (1000, 50)
    section = Section("overhead", "1. Execute overhead: `pool.execute(\"pass\")` vs raw jupyter_client",
                      METHOD.format(reps=reps, warmup=warmup))
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(AsyncKernelPool(max_kernels=2, min_idle=2))
        await pool.wait_ready(timeout=120)
        lease = await stack.enter_async_context(pool.checkout("held"))
        _, kc_ipc = await stack.enter_async_context(raw_kernel("ipc", POOL_KERNEL_ARGS))
        _, kc_tcp = await stack.enter_async_context(raw_kernel("tcp"))
        cluster = ipp.Cluster(n=1, log_level=40)
        stack.push_async_callback(cluster.stop_cluster)
        rc = await cluster.start_and_connect(n=1)
        stack.callback(rc.close)
        engine = rc[0]
        noop = ipp.interactive(lambda: None)  # pickled by value: the engine cannot import this module
        variants = {
            "raw ipc": lambda: raw_execute(kc_ipc, "pass"),
            "pool.execute": lambda: pool.execute("pass", session="a"),
            "Lease.execute": lambda: lease.execute("pass"),
            "raw tcp (defaults)": lambda: raw_execute(kc_tcp, "pass"),
            "ipyparallel apply_sync": lambda: engine.apply_sync(noop),
            "ipyparallel execute": lambda: engine.execute("pass", block=True),
        }
        samples = await interleaved(variants, reps, warmup)
    section.raw = samples
    section.table(STATS_HEADERS, stats_rows(samples, "raw ipc"))
    pool_p50 = Stats.of(samples["pool.execute"]).p50
    raw_p50 = Stats.of(samples["raw ipc"]).p50
    section.targets.append(Target("pool.execute p50 / raw p50", pool_p50 / raw_p50, 1.05, "x", WHY_MISSED))
    return section
