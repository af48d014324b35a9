"""Item 11: a slider dragged through 200 values in the page, relayed to a session's kernel (issue 20)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import psutil

from _common import Section, Stats, Target, interleaved, ms, raw_execute, raw_kernel

from jupyter_sessionpool import AsyncKernelPool

VALUES = 200
METHOD = """\
A python3 kernel plays the notebook (`%load_ext jupyter_sessionpool`, its pool's kernels on
ipc); a `%%pool session=a` cell makes an `IntSlider` whose observer appends each new value
to a list on the session's kernel. This process plays the page: a jupyter_client client
sends the slider's `comm_msg` updates to the notebook's kernel as ipywidgets' front end
does (`{{"method": "update", "state": {{"value": v}}}}`), and times each one from its send to
the session kernel's `echo_update`, relayed back with the message as its parent (what the
front end waits for). Against it, the pool's own round trip for the same message:
`AsyncKernelPool.send_comm` from this process to a slider on a session of its own pool,
until the kernel's `idle` for it; and, for scale, the same page message to a slider of the
notebook's own kernel (no pool: what any widget's message costs, the notebook kernel's
handling and two hops). The three are sampled interleaved, one message of each per round,
{reps} rounds after {warmup} warm-up rounds; the relay's cost is the difference of medians
to the pool's own round trip, and what is left of it after the notebook kernel's own
handling is the relay's own work. Then the drag: {values} values sent back to back without waiting (a page sends
the next as soon as the notebook's kernel has taken the last), timed until the last echo,
and checked on the session's kernel to have arrived all, in order; the notebook kernel's
CPU time (user + system, from `/proc`) is read around drags of {values} and {double}
values and over {idle} s with none."""


class Page:
    """The notebook kernel's client, as the page: sends comm messages, reads their echoes."""

    def __init__(self, kc: Any) -> None:
        self.kc = kc

    def send(self, comm_id: str, value: int) -> str:
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {
            "method": "update", "state": {"value": value}, "buffer_paths": []}})
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    async def echoes(self, msg_ids: set[str], timeout: float = 120) -> None:
        """Read IOPub until every message in ``msg_ids`` has had its echo_update."""
        while msg_ids:
            msg = await self.kc.get_iopub_msg(timeout=timeout)
            if msg["msg_type"] == "comm_msg" and msg["content"]["data"].get("method") == "echo_update":
                msg_ids.discard(msg["parent_header"].get("msg_id"))

    async def round_trip(self, comm_id: str, value: int) -> None:
        await self.echoes({self.send(comm_id, value)})


async def cell(kc: Any, code: str) -> str:
    """Run a notebook cell that must succeed; what it printed."""
    msg_id = kc.execute(code)
    printed = []
    while True:
        msg = await kc.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise RuntimeError(f"cell {code!r} failed: {msg['content']['evalue']}")
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(printed)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def measure(quick: bool) -> Section:
    reps, warmup, idle = (30, 5, 1.0) if quick else (300, 20, 5.0)
    section = Section("widgets", "13. A slider relayed from a session's kernel to the page",
                      METHOD.format(reps=reps, warmup=warmup, values=VALUES, double=2 * VALUES, idle=idle))
    slider = "import ipywidgets as w\ns = w.IntSlider(max=10**6)\nseen = []\ns.observe(lambda c: seen.append(c.new), 'value')\n"
    async with raw_kernel("ipc") as (km, kc), AsyncKernelPool(max_kernels=1) as pool:
        page = Page(kc)
        await raw_execute(kc, "%load_ext jupyter_sessionpool")
        relayed = (await cell(kc, f"%%pool session=a\n{slider}print(s.model_id)")).strip()
        local = (await cell(kc, f"{slider}print(s.model_id)")).strip()
        await pool.execute(slider, session="b")
        own = next(k for k, v in pool.widget_state("b")["state"].items() if v["model_name"] == "IntSliderModel")
        counter = iter(range(1, 10**6))

        own_name, relay_name, local_name = (
            "pool.send_comm (the pool's own round trip)",
            "relayed: page -> notebook kernel -> session's kernel -> page",
            "the notebook kernel's own slider: page -> notebook kernel -> page",
        )
        samples = await interleaved({
            own_name: lambda: pool.send_comm(
                "b", own, {"method": "update", "state": {"value": next(counter)}, "buffer_paths": []}),
            relay_name: lambda: page.round_trip(relayed, next(counter)),
            local_name: lambda: page.round_trip(local, next(counter)),
        }, reps, warmup)
        own_p50, relay_p50, local_p50 = (Stats.of(samples[name]).p50 for name in (own_name, relay_name, local_name))
        rows = [[name, str(len(xs)), ms(Stats.of(xs).p50), ms(Stats.of(xs).p99)] for name, xs in samples.items()]
        section.table(["per message", "n", "p50 ms", "p99 ms"], rows)
        section.targets.append(Target(
            "relay's cost per message over the pool's own round trip (p50)", (relay_p50 - own_p50) * 1000, 2.0, "ms",
            why_missed=f"the notebook kernel's own handling of a page's message (its own slider: "
                       f"{local_p50 * 1000:.2f} ms p50 on this machine now) is part of every relayed message",
        ))

        drags = []
        pid = km.provisioner.pid
        for values in (VALUES, 2 * VALUES):
            await cell(kc, "%%pool session=a\nseen.clear()")
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            first = next(counter)
            sent = {page.send(relayed, v) for v in range(first, first + values)}
            await page.echoes(sent)
            wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
            arrived = json.loads(await cell(kc, "%%pool session=a\nimport json; print(json.dumps(seen))"))
            expected = list(range(first, first + values))
            wrong = sum(a != b for a, b in zip(arrived, expected)) + abs(len(arrived) - len(expected))
            for _ in range(values):
                next(counter)
            drags.append((values, wall, cpu, wrong))
        cpu0 = cpu_seconds(pid)
        await asyncio.sleep(idle)
        idle_cpu = cpu_seconds(pid) - cpu0
    section.table(
        ["drag", "values", "wall ms", "per value ms", "notebook kernel CPU ms", "CPU per value ms", "all arrived, in order"],
        [[f"{n} values back to back", str(n), ms(wall), ms(wall / n), ms(cpu), ms(cpu / n),
          "yes" if not wrong else f"**no: {wrong} wrong**"] for n, wall, cpu, wrong in drags]
        + [[f"{idle:g} s with no message", "0", ms(idle), "", ms(idle_cpu), "", ""]],
    )
    section.targets.append(Target(f"values of the {VALUES}-value drag missing or out of order on the kernel",
                                  drags[0][3], 1, "values"))
    per_value = [cpu / n for n, _, cpu, _ in drags]
    section.targets.append(Target("notebook kernel CPU per value, 400-value drag / 200-value drag",
                                  per_value[1] / per_value[0], 1.5, "x"))
    section.notes.append(
        f"Relay cost per message (p50): {(relay_p50 - own_p50) * 1000:.2f} ms over the pool's own "
        f"{own_p50 * 1000:.2f} ms, of which {local_p50 * 1000:.2f} ms is the notebook kernel's own handling "
        f"of a page's message (its own slider's round trip) and {(relay_p50 - own_p50 - local_p50) * 1000:.2f} ms "
        "the relay's own work (its thread hops to the pool and back, the stand-in comm's publish)."
    )
    section.raw = {**samples, "drags": drags, "idle_cpu": idle_cpu}
    return section
