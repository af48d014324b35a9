"""Item 9: the pool on a stock Jupyter Kernel Gateway: per-cell cost, prewarmed first result,
concurrency, death detection, and what idle remote kernels cost the pool's process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import uuid
from contextlib import AsyncExitStack

from _common import (
    POOL_KERNEL_ARGS,
    STATS_HEADERS,
    Section,
    Stats,
    Target,
    interleaved,
    kernel_gateway,
    ms,
    raw_execute,
    raw_kernel,
    stats_rows,
)

from jupyter_client.session import msg_header
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from jupyter_sessionpool import AsyncKernelPool, KernelDied, SessionLost
from jupyter_sessionpool.workers.base import IPYKERNEL_PREPARATION
from jupyter_sessionpool.workers.gateway import V1_PROTOCOL, decode_v1, encode_v1

METHOD = """\
A stock Kernel Gateway 3 on 127.0.0.1 (no TCP_NODELAY patch, default
`KernelRestarter.time_to_dead` of 3 s), the pool pointed at it with `gateway_url`.
*Round trip*: `pool.execute("pass", session="a")` on the remote kernel against an
`AsyncKernelClient` on a local kernel started by a plain `AsyncKernelManager` over ipc
(*raw ipc*, the pool's local reference), {reps} interleaved rounds after {warmup} warm-ups.
Beside them, to split the client's share out of the remote figure, *minimal websocket
client*: the least a client can do on its own remote kernel of the same gateway (tornado,
the v1 protocol, QUICKACK re-armed per frame, the pool's start-up cell run once, no
routing, no results).
*Prewarmed first result*: a pool with `min_idle=1`, ready; the time of the first
`execute("pass")` of a new session (checkout of the prewarmed remote kernel plus the
round trip), {first_reps} sessions, the pool refilled before each. *8 × sleep(1)*:
`max_kernels=8, min_idle=8`, the wall time of 8 sessions' `time.sleep(1)` at once,
{conc_reps} samples. *Death*: a session's remote kernel SIGKILLed (on the gateway's host,
here this machine) while its cell sleeps; the time until the caller gets `KernelDied`,
{death_reps} kills, on the stock gateway and on one started with the recommended
`--KernelRestarter.time_to_dead=0.5`. *Idle CPU*: the CPU time of this process (the pool's)
over 10 s with 8 idle remote kernels connected."""


class _MinimalClient:
    """A remote kernel driven with nothing but tornado's websocket: the floor for any client."""

    async def open(self, url: str) -> None:
        self.url = url
        response = await AsyncHTTPClient().fetch(f"{url}/api/kernels", method="POST", body=json.dumps({"name": "python3"}))
        self.kernel = json.loads(response.body)["id"]
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.ws = await websocket_connect(
            f"ws{url[len('http'):]}/api/kernels/{self.kernel}/channels",
            subprotocols=[V1_PROTOCOL], on_message_callback=self._frame,
        )  # fmt: skip
        self.ws.protocol.stream.set_nodelay(True)
        self.sock = self.ws.protocol.stream.socket
        await self.execute(IPYKERNEL_PREPARATION)

    def _frame(self, frame: bytes | None) -> None:
        if frame is not None:
            self.sock.setsockopt(socket.IPPROTO_TCP, 12, 1)  # TCP_QUICKACK (Linux)
            self.inbox.put_nowait(decode_v1(frame))

    async def execute(self, code: str) -> None:
        header = msg_header(uuid.uuid4().hex, "execute_request", "bench", "bench")
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
        self.ws.write_message(encode_v1("shell", {"header": header, "parent_header": {}, "metadata": {}, "content": content}), binary=True)
        replied = idle = False
        while not (replied and idle):
            channel, msg = await self.inbox.get()
            if msg["parent_header"].get("msg_id") == header["msg_id"]:
                replied = replied or channel == "shell"
                idle = idle or (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")

    async def close(self) -> None:
        self.ws.close()
        await AsyncHTTPClient().fetch(f"{self.url}/api/kernels/{self.kernel}", method="DELETE")


async def _first_result(pool: AsyncKernelPool, reps: int) -> list[float]:
    samples = []
    for i in range(reps):
        await pool.wait_ready(60)
        t0 = time.perf_counter()
        await pool.execute("pass", session=f"first-{i}")
        samples.append(time.perf_counter() - t0)
        await pool.release(f"first-{i}")
    return samples


async def _deaths(pool: AsyncKernelPool, reps: int) -> list[float]:
    samples = []
    loop = asyncio.get_running_loop()
    for i in range(reps):
        session = f"victim-{i}"
        pid = int((await pool.execute("import os; os.getpid()", session=session)).result)
        started = asyncio.Event()
        cell = asyncio.ensure_future(
            pool.execute("print('go', flush=True); import time; time.sleep(60)", session=session,
                         on_output=lambda _out, ev=started: loop.call_soon_threadsafe(ev.set))  # a callback thread
        )  # fmt: skip
        await asyncio.wait_for(started.wait(), 60)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(cell, 60)
            raise RuntimeError("the killed kernel's cell completed")
        except KernelDied:
            samples.append(time.perf_counter() - t0)
        try:
            await pool.execute("pass", session=session)
        except SessionLost:
            pass
        await pool.release(session)
    return samples


async def measure(quick: bool) -> Section:
    reps, warmup = (30, 5) if quick else (300, 30)
    first_reps, conc_reps, death_reps = (3, 1, 2) if quick else (20, 5, 10)
    section = Section(
        "remote",
        "9. Remote kernels on a stock Kernel Gateway",
        METHOD.format(
            reps=reps, warmup=warmup, first_reps=first_reps, conc_reps=conc_reps, death_reps=death_reps
        ),
    )
    async with AsyncExitStack() as stack:
        stock = await stack.enter_async_context(kernel_gateway(0, nodelay=False))
        _, kc_ipc = await stack.enter_async_context(raw_kernel("ipc", POOL_KERNEL_ARGS))
        pool = await stack.enter_async_context(AsyncKernelPool(gateway_url=stock.url, max_kernels=8))
        minimal = _MinimalClient()
        await minimal.open(stock.url)
        stack.push_async_callback(minimal.close)
        round_trip = await interleaved(
            {"raw ipc (local)": lambda: raw_execute(kc_ipc, "pass"),
             "pool.execute, remote": lambda: pool.execute("pass", session="a"),
             "minimal websocket client, remote": lambda: minimal.execute("pass")},
            reps, warmup,
        )  # fmt: skip
        await pool.release("a")

        pool.min_idle = 1
        first = await _first_result(pool, first_reps)

        pool.min_idle = 8
        await pool.wait_ready(120)
        sessions = [f"s{i}" for i in range(8)]
        await asyncio.gather(*(pool.execute("import time", session=s) for s in sessions))
        conc = await interleaved(
            {"8 × sleep(1)": lambda: asyncio.gather(*(pool.execute("time.sleep(1)", session=s) for s in sessions))},
            conc_reps,
        )
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(10)
        idle_cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        for s in sessions:
            await pool.release(s)
        pool.min_idle = 0

        deaths = {"stock (time_to_dead 3 s)": await _deaths(pool, death_reps)}
        tuned = await stack.enter_async_context(
            kernel_gateway(0, nodelay=False, extra=["--KernelRestarter.time_to_dead=0.5"])
        )
        tuned_pool = await stack.enter_async_context(AsyncKernelPool(gateway_url=tuned.url, max_kernels=2))
        deaths["time_to_dead 0.5 s"] = await _deaths(tuned_pool, death_reps)

    section.raw = {"round_trip": round_trip, "first": first, "concurrency": conc, "deaths": deaths, "idle_cpu": idle_cpu}
    section.table(STATS_HEADERS, stats_rows(round_trip, "raw ipc (local)"))
    first_s, conc_s = Stats.of(first), Stats.of(conc["8 × sleep(1)"])
    rows = [
        ["prewarmed session's first result", str(first_s.n), ms(first_s.p50), ms(first_s.max)],
        ["8 sessions × sleep(1), wall", str(conc_s.n), ms(conc_s.p50), ms(conc_s.max)],
    ]
    for name, xs in deaths.items():
        d = Stats.of(xs)
        rows.append([f"kernel killed mid-cell → KernelDied, {name}", str(d.n), ms(d.p50), ms(d.max)])
    rows.append(["pool process CPU, 8 idle remote kernels, 10 s", "1", f"{100 * idle_cpu:.2f} %", ""])
    section.table(["measure", "n", "p50 ms", "max ms"], rows)
    p50 = {name: Stats.of(xs).p50 for name, xs in round_trip.items()}
    section.targets += [
        Target("remote pool.execute p50 / local raw ipc p50", p50["pool.execute, remote"] / p50["raw ipc (local)"], 1.0, "x",
               f"the least a websocket client can do on the same gateway takes "
               f"{p50['minimal websocket client, remote'] / p50['raw ipc (local)']:.3f}x, and the pool "
               f"{p50['pool.execute, remote'] / p50['minimal websocket client, remote']:.3f}x that: what is left is "
               "the gateway's hop (each of a cell's messages passes through its Python process: zmq → "
               "jupyter_server → websocket, on the same cores) and its kernels, which are not started the "
               "pool's way (tcp, debugpy loaded)"),
        Target("prewarmed remote session's first result p50", first_s.p50 * 1000, 20, "ms"),
        Target("8 remote sessions × sleep(1), wall p50", conc_s.p50, 1.1, "s"),
        Target("pool process CPU with 8 idle remote kernels", 100 * idle_cpu, 1.0, "%"),
    ]  # fmt: skip
    section.notes.append(
        "Without TCP_QUICKACK re-armed after every received frame (Linux), each remote round trip on a stock "
        "gateway waits ~40 ms for the client's delayed ACK (Nagle on the gateway's side); see docs/remote.md."
    )
    return section
