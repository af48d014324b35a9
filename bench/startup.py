"""Item 2: time to a ready kernel for a new session: cold, lazy pool, prewarmed pool, Kernel Gateway prespawn."""

from __future__ import annotations

import os
import time
from contextlib import AsyncExitStack
from types import SimpleNamespace

from _common import (
    STATS_HEADERS,
    Gateway,
    Parts,
    Section,
    Stats,
    Target,
    interleaved,
    kernel_gateway,
    raw_execute,
    stats_rows,
)
from jupyter_client.manager import AsyncKernelManager

from jupyter_sessionpool import AsyncKernelPool
from jupyter_sessionpool.workers.local import LocalWorkers

FIRST_CELL_WHY = (
    "a kernel's first `store_history=True` cell still costs the kernel more than later ones (its first "
    "history write and execution-count path); the pool's start-up cell warms the rest, but it runs with "
    "`store_history=False` so that it never shows in `In` or the execution counts."
)

METHOD = """\
Four variants, interleaved, {reps} rounds after {warmup} warm-up round(s); set-up and
clean-up (kernel shutdown, waiting for a prewarmed replacement) are untimed, so no
kernel starts in the background while another variant is timed.
*jupyter_client*: a default `AsyncKernelManager` (tcp), `start_kernel()` → `client()` →
`start_channels()` → `wait_for_ready()` (*ready*), then one `pass` round trip (*first
result*). *PooledKernel.start*: the pool's kernel start alone (launch + `kernel_info`
reply + a live iopub message, no trailing 0.2 s flush). *lazy pool*: an entered
`AsyncKernelPool(max_kernels=1)` with no kernel yet; time from `pool.execute("pass",
session="a")` to its result. *prewarmed*: `AsyncKernelPool(max_kernels=2, min_idle=1)`
with its idle kernel ready; `pool.execute("pass", session=<new name>)`, split into
checkout of the new session and the first cell; the session is then released and the
replacement awaited (untimed). *Kernel Gateway prespawned*: `jupyter kernelgateway`
(jupyter-websocket personality, `list_kernels=True`) launched with
`--KernelGatewayApp.prespawn_count={prespawn}` and left to settle; a new client finds a
prespawned kernel with `GET /api/kernels` (a `POST` always starts a new kernel), opens its
websocket and runs `pass`; the kernel is then deleted (untimed). *stock* is the gateway
as installed; *TCP_NODELAY* is the same gateway with TCP_NODELAY set on its websockets
(`bench/gateway_launch.py --nodelay`), which jupyter_server never does.
With {reps} samples, p99 is close to the slowest sample."""

GATEWAY_WHY = (
    "Kernel Gateway's {flavor} first result is {ratio:.1f}x the pool's: a client must list the kernels "
    "and open a websocket (HTTP upgrade, then the server nudges the kernel with `kernel_info` until iopub "
    "answers) before its first cell"
)


async def jupyter_client_start() -> Parts:
    """Default jupyter_client: ready, and first result, both from before start_kernel()."""
    km = AsyncKernelManager(kernel_name="python3")
    kc = None
    try:
        t0 = time.perf_counter()
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        t_ready = time.perf_counter()
        await raw_execute(kc, "pass")
        t_first = time.perf_counter()
    finally:
        if kc is not None:
            kc.stop_channels()
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
    return Parts(
        {
            "jupyter_client ready": t_ready - t0,
            "jupyter_client first result": t_first - t0,
            "jupyter_client first cell alone": t_first - t_ready,
        }
    )


async def pooled_kernel_start(workers: LocalWorkers) -> Parts:
    """The pool's kernel start alone (LocalWorker.start: launch, kernel_info, iopub live, start-up cell)."""
    kernel = workers.new(f"bench-{os.urandom(4).hex()}")
    try:
        t0 = time.perf_counter()
        await kernel.start(60)
        return Parts({"PooledKernel.start": time.perf_counter() - t0})
    finally:
        await kernel.stop(0, now=True)


async def lazy_pool_first_result() -> Parts:
    """Checkout on an empty lazy pool to the first result."""
    async with AsyncKernelPool(max_kernels=1) as pool:
        t0 = time.perf_counter()
        await pool.execute("pass", session="a")
        return Parts({"lazy pool first result": time.perf_counter() - t0})


def gateway_attach(gateway: Gateway, label: str) -> Parts:
    """A new client's first result on a prespawned gateway kernel; the kernel is deleted afterwards."""
    t0 = time.perf_counter()
    kernel_id = gateway.kernels()[0]["id"]
    kernel = gateway.connect(kernel_id)
    kernel.execute("pass")
    elapsed = time.perf_counter() - t0
    kernel.close()
    gateway.delete(kernel_id)
    return Parts({label: elapsed})


async def measure(quick: bool) -> Section:
    reps, warmup = (2, 1) if quick else (12, 1)
    section = Section(
        "startup",
        "2. Time to a ready kernel for a new session",
        METHOD.format(reps=reps, warmup=warmup, prespawn=reps + warmup),
    )
    workers = LocalWorkers(SimpleNamespace(kernel_name="python3", transport="ipc", env={}, cwd=None,
                                           start_method="spawn", preload=[]))  # a cold start, as jupyter_client's
    await workers.open()
    names = iter(range(1_000_000))
    try:
        async with AsyncExitStack() as stack:
            stock = await stack.enter_async_context(kernel_gateway(reps + warmup, nodelay=False))
            nodelay = await stack.enter_async_context(kernel_gateway(reps + warmup, nodelay=True))
            warm = await stack.enter_async_context(AsyncKernelPool(max_kernels=2, min_idle=1))

            async def prewarmed() -> Parts:
                await warm.wait_ready(timeout=60)
                session = f"new{next(names)}"
                t0 = time.perf_counter()
                async with warm.checkout(session) as lease:
                    t1 = time.perf_counter()
                    await lease.execute("pass")
                t2 = time.perf_counter()
                await warm.release(session)
                await warm.wait_ready(timeout=60)
                return Parts({"prewarmed first result": t2 - t0, "prewarmed: checkout of new session": t1 - t0})

            samples = await interleaved(
                {
                    "jupyter_client": jupyter_client_start,
                    "PooledKernel": lambda: pooled_kernel_start(workers),
                    "lazy pool": lazy_pool_first_result,
                    "prewarmed": prewarmed,
                    "gateway stock": lambda: gateway_attach(stock, "Kernel Gateway prespawned, stock"),
                    "gateway nodelay": lambda: gateway_attach(nodelay, "Kernel Gateway prespawned, TCP_NODELAY"),
                },
                reps,
                warmup,
            )
    finally:
        await workers.close()
    section.raw = samples
    stock_name, nodelay_name = "Kernel Gateway prespawned, stock", "Kernel Gateway prespawned, TCP_NODELAY"
    first = [
        "prewarmed first result",
        stock_name,
        nodelay_name,
        "lazy pool first result",
        "jupyter_client first result",
    ]
    cold = ["jupyter_client ready", "PooledKernel.start"]
    parts = ["jupyter_client first cell alone", "prewarmed: checkout of new session"]
    section.table(STATS_HEADERS, stats_rows({k: samples[k] for k in first}, "prewarmed first result"))
    section.table(STATS_HEADERS, stats_rows({k: samples[k] for k in cold}, "jupyter_client ready"))
    section.table(STATS_HEADERS, stats_rows({k: samples[k] for k in parts}, None))
    p50 = {k: Stats.of(v).p50 for k, v in samples.items()}
    for name, flavor in ((stock_name, "stock"), (nodelay_name, "TCP_NODELAY")):
        r = p50[name] / p50["prewarmed first result"]
        if r > 1:
            section.notes.append(
                GATEWAY_WHY.format(flavor=flavor, ratio=r)
                + (
                    ", and on the stock gateway the reply then waits ~40 ms for Nagle + delayed ACK."
                    if flavor == "stock"
                    else "."
                )
            )
        else:
            section.notes.append(f"Kernel Gateway ({flavor}) wins here: {r:.2f}x the pool's first result.")
    section.notes.append(
        "Most of the cold-start gain is jupyter_client's `wait_for_ready()` ending with an iopub flush "
        "(`get_msg(timeout=0.2)` until empty), which always adds at least 0.2 s after the kernel is ready; "
        "`PooledKernel.start` checks the same things (a `kernel_info` reply and a live iopub) and returns at once."
    )
    section.targets += [
        Target(
            "PooledKernel.start / jupyter_client ready (p50)",
            p50["PooledKernel.start"] / p50["jupyter_client ready"],
            0.75,
            "x",
        ),
        Target(
            "lazy pool first result / jupyter_client first result (p50)",
            p50["lazy pool first result"] / p50["jupyter_client first result"],
            0.75,
            "x",
        ),
        Target("prewarmed new session, first result (p50)", p50["prewarmed first result"] * 1000, 10, "ms",
               FIRST_CELL_WHY),
    ]
    return section
