"""Item 12: fork-started kernels against spawned ones (issue 21), side by side in one run."""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import batch
import scale
from _common import STATS_HEADERS, Parts, Section, Stats, Target, interleaved, memory, stats_rows

from jupyter_sessionpool import AsyncKernelPool
from jupyter_sessionpool.forking import stop_templates
from jupyter_sessionpool.forking.engine import TEMPLATES

METHOD = """\
`AsyncKernelPool(start_method="fork")` against `start_method="spawn"`, everything else equal
(the venv's `python3` kernelspec). Each template was warmed by an untimed first start.
*First result*: a started pool with `min_idle=0` (no kernel prewarmed) runs `pass` on a new
session, which starts a kernel; {reps} rounds after {warmup} warm-up, the two variants
interleaved; the session is released (untimed) after each sample. Wall time is from
`execute` to its result; CPU is the pool process's (all its threads), plus the kernel's
just before the release (its whole start, the start-up cell and the `pass`), plus the
template's for the fork (its `fork()`); kernel and template CPU are the run time of their
threads (`/proc/PID/task/*/schedstat`, in ns). *Churn*: item 5's churn (a new
session checks out a kernel, runs `pass`, is released; 4 at a time; `max_kernels=4`,
`min_idle=4`), {churn_fork} cycles forked and {churn_spawn} spawned, with the CPU of everything
involved (this process, its reaped children, the templates and their reaped kernels). *100 kernels*:
`AsyncKernelPool(max_kernels=100, min_idle=100)`, from `start()` until `wait_ready()`
returns (every kernel started, answered `kernel_info` and ran the start-up cell).
*Preload*: pools with `preload=["numpy", "pandas"]` (fork) and without (spawn), {n_mem}
prewarmed kernels each; a new session's first cell `import numpy, pandas` (wall time in
the pool, {reps} rounds interleaved), then the Pss (`/proc/PID/smaps_rollup`) of {n_mem}
idle kernels of each kind that have run it. *Notebooks*: {nbs} small notebooks (item 10's)
through `jupyter-sessionpool run -j 4` (forking, its default) and the same with
`start_method="spawn"`, against papermill one notebook after another, {nb_reps} round(s) in
rotating order."""

SPAWN_ONLY = [  # the `run` command with every pool of its process spawning (as tests/conftest.py does)
    "-c", "import sys; from jupyter_sessionpool.config import PoolSettings; "
    "PoolSettings.class_traits()['start_method'].default_value = 'spawn'; "
    "from jupyter_sessionpool.cli import main; sys.exit(main(sys.argv[1:]))",
]


def cpu_of(pid: int) -> float:
    """CPU seconds a live process's threads have run: ``/proc/PID/task/*/schedstat``, in ns (``stat`` counts 10 ms ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # the thread ended meanwhile
    return total / 1e9


def templates_cpu() -> float:
    return sum(cpu_of(t.pid) for t in TEMPLATES if t.pid and not t.ended.done())


def cpu_all() -> float:
    """CPU seconds of this process, its reaped children (spawned kernels) and its templates with their reaped kernels."""
    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = sum(u.ru_utime + u.ru_stime for u in usage)
    for t in TEMPLATES:
        if t.pid and not t.ended.done():
            with open(f"/proc/{t.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


async def churn(method: str, cycles: int) -> tuple[float, float]:
    """(sessions per second, CPU seconds per session) of item 5's churn, everything it costs counted."""
    cpu0 = cpu_all()
    c = await scale.churn(cycles, warm=8, start_method=method)
    return cycles / c["seconds"], (cpu_all() - cpu0) / (cycles + 8)


async def first_result(pool: AsyncKernelPool, names: itertools.count, label: str) -> Parts:
    """A new session's first `pass` on a pool with no kernel prewarmed: wall and CPU."""
    session = f"s{next(names)}"
    cpu0, tpl0, t0 = time.process_time(), templates_cpu(), time.perf_counter()
    await pool.execute("pass", session=session)
    wall = time.perf_counter() - t0
    pid = pool.stats().kernels[0].pid
    own, kernel, template = time.process_time() - cpu0, cpu_of(pid), templates_cpu() - tpl0
    await pool.release(session)
    return Parts({f"{label} wall": wall, f"{label} CPU": own + kernel + template, f"{label} CPU: pool": own,
                  f"{label} CPU: kernel": kernel, f"{label} CPU: template": template})


async def hundred_kernels() -> tuple[float, float, float]:
    """(seconds from start() to 100 kernels ready, CPU seconds that took, seconds to shut them down)."""
    pool = AsyncKernelPool(start_method="fork", max_kernels=100, min_idle=100, startup_timeout=300)
    cpu0, t0 = cpu_all(), time.perf_counter()
    await pool.start()
    await pool.wait_ready(timeout=600)
    ready = time.perf_counter() - t0
    cpu = cpu_all() - cpu0 + sum(cpu_of(k.pid) for k in pool.stats().kernels)
    t1 = time.perf_counter()
    await pool.shutdown()
    return ready, cpu, time.perf_counter() - t1


async def preloaded(reps: int, warmup: int, n: int) -> tuple[dict[str, list[float]], dict[str, list[dict[str, int]]]]:
    """First `import numpy, pandas` cell on a fresh prewarmed kernel, fork+preload vs spawn; then Pss of idle kernels."""
    names = itertools.count()
    async with AsyncKernelPool(start_method="fork", preload=["numpy", "pandas"], max_kernels=n, min_idle=1) as fork, \
            AsyncKernelPool(start_method="spawn", max_kernels=n, min_idle=1) as spawn:

        async def cell(pool: AsyncKernelPool, label: str, code: str = "import numpy, pandas") -> Parts:
            await pool.wait_ready(timeout=120)
            session = f"p{next(names)}"
            async with pool.checkout(session) as lease:
                t0 = time.perf_counter()
                await lease.execute(code)
                elapsed = time.perf_counter() - t0
            await pool.release(session)
            return Parts({label: elapsed})

        samples = await interleaved({"fork": lambda: cell(fork, "fork + preload: import numpy, pandas"),
                                     "fork pass": lambda: cell(fork, "fork + preload: pass", "pass"),
                                     "spawn": lambda: cell(spawn, "spawn: import numpy, pandas")}, reps, warmup)
        mems: dict[str, list[dict[str, int]]] = {}
        for label, pool in (("fork + preload", fork), ("spawn", spawn)):
            await pool.wait_ready(timeout=120)
            await asyncio.gather(*(pool.execute("import numpy, pandas, gc; gc.collect()", session=f"m{i}")
                                   for i in range(n)))
            await asyncio.sleep(1)  # let the kernels go idle (their history and IOPub threads settle)
            mems[label] = [memory(k.pid) for k in pool.stats().kernels if k.session is not None]
    return samples, mems


def notebooks(n: int, reps: int) -> dict[str, list[float]]:
    """Wall seconds of `run -j 4` (fork, spawn) and papermill serial on ``n`` small notebooks, rotating."""
    scratch = Path(tempfile.mkdtemp(prefix="jsp-forkbench-"))
    src, out = scratch / "nbs", scratch / "out"
    batch.write_notebooks(src, n)
    everything = batch.commands(src, out)
    one = scratch / "one"
    batch.write_notebooks(one, 1)
    variants = {
        "papermill serial": everything["papermill serial"],
        "sessionpool run -j 4 (fork)": everything["sessionpool -j 4"],
        "sessionpool run (fork), 1 notebook": [sys.executable, "-m", "jupyter_sessionpool", "run", str(one), "-q"],
        "sessionpool run -j 4 (spawn)": [sys.executable, *SPAWN_ONLY, "run", str(src), "-o", str(out), "-j", "4", "-q"],
    }
    walls: dict[str, list[float]] = {}
    names = list(variants)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            print(f"  {n} notebooks: {name}", flush=True)
            wall, _, ok, _ = batch.run_one(variants[name], out)
            walls.setdefault(name, []).append(wall if ok else float("inf"))
    return walls


async def measure(quick: bool) -> Section:
    p = {"reps": 3 if quick else 16, "warmup": 1, "churn_fork": 40 if quick else 300, "churn_spawn": 12 if quick else 60,
         "n_mem": 2 if quick else 4, "nbs": 5 if quick else 20, "nb_reps": 1 if quick else 2}
    section = Section("forking", "14. Fork-started kernels (issue 21)", METHOD.format(**p))
    names = itertools.count()
    async with AsyncKernelPool(start_method="fork", max_kernels=1) as fork, \
            AsyncKernelPool(start_method="spawn", max_kernels=1) as spawn:
        first = await interleaved({"fork": lambda: first_result(fork, names, "fork"),
                                   "spawn": lambda: first_result(spawn, names, "spawn")}, p["reps"], p["warmup"])
    churned = {method: await churn(method, p[f"churn_{method}"]) for method in ("fork", "spawn")}
    ready, ready_cpu, stopped = await hundred_kernels()
    cells, mems = await preloaded(p["reps"], p["warmup"], p["n_mem"])
    nb = await asyncio.to_thread(notebooks, p["nbs"], p["nb_reps"])
    stop_templates()
    section.raw = {"first": first, "churn_per_s_and_cpu": churned, "hundred": [ready, ready_cpu, stopped], "cells": cells,
                   "pss": mems, "notebooks": nb}

    p50 = {k: Stats.of(v).p50 for k, v in first.items()}
    section.table(STATS_HEADERS, stats_rows({k: first[k] for k in ("fork wall", "spawn wall")}, "spawn wall"))
    section.table(STATS_HEADERS, stats_rows({k: first[k] for k in ("fork CPU", "spawn CPU")}, "spawn CPU"))
    section.table(STATS_HEADERS, stats_rows({k: v for k, v in first.items() if ": " in k}, None))
    section.table(["churn (new session, pass, release; 4 at a time)", "sessions/s", "CPU s per session"],
                  [[method, f"{rate:.1f}", f"{cpu:.3f}"] for method, (rate, cpu) in churned.items()])
    section.table(["100 kernels, forked", "s"], [["start() to wait_ready()", f"{ready:.2f}"],
                                                   ["CPU seconds of that (pool, template, kernels)", f"{ready_cpu:.2f}"],
                                                   ["shutdown()", f"{stopped:.2f}"]])
    section.table(STATS_HEADERS, stats_rows(cells, "spawn: import numpy, pandas"))
    pss = {label: sorted(m["pss"] for m in ms)[len(ms) // 2] for label, ms in mems.items()}
    rss = {label: sorted(m["rss"] for m in ms)[len(ms) // 2] for label, ms in mems.items()}
    section.table(["idle kernel with numpy + pandas", "n", "Rss MiB (median)", "Pss MiB (median)"],
                  [[label, str(len(mems[label])), f"{rss[label] / 2**20:.1f}", f"{pss[label] / 2**20:.1f}"]
                   for label in mems])
    best = {name: min(walls) for name, walls in nb.items()}
    serial = best["papermill serial"]
    fixed = best.pop("sessionpool run (fork), 1 notebook")
    section.table(["runner", f"{p['nbs']} notebooks, s (best)", "vs papermill serial"],
                  [[name, f"{wall:.2f}", f"{serial / wall:.2f}x"] for name, wall in best.items()]
                  + [["sessionpool run (fork), 1 notebook", f"{fixed:.2f}", ""]])
    cell = Stats.of(cells["fork + preload: import numpy, pandas"]).p50
    first_pass = Stats.of(cells["fork + preload: pass"]).p50
    section.targets += [
        Target("first result, min_idle=0: fork / spawn wall (p50)", p50["fork wall"] / p50["spawn wall"], 0.25, "x",
               why_missed=f"a forked start is the kernel's own work after the fork, one step after another: "
               f"{p50['fork CPU: kernel'] * 1000:.0f} ms of CPU of the fork's {p50['fork wall'] * 1000:.0f} ms (its "
               "IPKernelApp.initialize() alone takes 31-35 ms, all of it traitlets configuration and object "
               "construction, no import; then kernel_info, the start-up cell and the `pass`), while a spawn took "
               f"{p50['spawn wall'] * 1000:.0f} ms here"),
        Target("first result, min_idle=0: fork / spawn CPU of pool + kernel (p50)", p50["fork CPU"] / p50["spawn CPU"],
               0.15, "x", why_missed=f"of the fork's {p50['fork CPU'] * 1000:.0f} ms, the kernel's own is "
               f"{p50['fork CPU: kernel'] * 1000:.0f} ms (it builds its IPKernelApp after the fork: zmq context, "
               "sockets, threads, the shell; then the start-up cell and the `pass`), the pool's "
               f"{p50['fork CPU: pool'] * 1000:.0f} ms"),
        Target("churn, forked kernels", churned["fork"][0], 30, "/s", higher_better=True,
               why_missed=f"a cycle costs {churned['fork'][1]:.3f} CPU-seconds (pool, template and kernel: the "
               f"kernel's start and its exit), so two cores give at most {2 / churned['fork'][1]:.0f}/s, and the "
               "machine's other tenants took part of them"),
        Target("100 forked kernels ready at once", ready, 3.0, "s",
               why_missed=f"the 100 starts cost {ready_cpu:.1f} CPU-seconds (each kernel's own initialize() and "
               f"start-up cell, the pool's health check): {ready_cpu / 2:.1f} s on two idle cores at best, and the "
               "machine's other tenants took part of them"),
        Target("fresh kernel's `import numpy, pandas` cell, preloaded (p50)", cell * 1000, 5, "ms",
               why_missed=f"the import is a dictionary lookup; what remains is a fresh kernel's first cell: a `pass` "
               f"in its place took {first_pass * 1000:.2f} ms (p50) in the same run"),
        Target("Pss of an idle forked kernel / a spawned one's (numpy + pandas)", pss["fork + preload"] / pss["spawn"],
               0.5, "x", why_missed=f"a forked kernel's own pages ({rss['fork + preload'] / 2**20:.0f} MiB resident, "
               "of which what its initialize() allocated and the template's pages it copied as it touched their "
               "objects' reference counts are private) count whole; the pages it shares count a fifth (4 kernels and "
               "the template)"),
        Target(f"{p['nbs']} notebooks: `run -j 4` speed-up over papermill serial",
               serial / best["sessionpool run -j 4 (fork)"], 8, "x", higher_better=True,
               why_missed=f"a `run` of one notebook took {fixed:.2f} s: the command's own start and its template's "
               f"(interpreter, imports, the rehearsal start) are paid once per run, {fixed / best['sessionpool run -j 4 (fork)']:.0%} "
               f"of the {p['nbs']}-notebook run"),
    ]
    section.notes.append(
        f"Spawned, a new session's first `pass` cost {p50['spawn CPU']:.3f} CPU-seconds; forked "
        f"{p50['fork CPU']:.3f}. What remains in a fork is the kernel's own `IPKernelApp.initialize()` (its zmq "
        "context, sockets and threads, the shell, the history) and the pool's health check and start-up cell.")
    section.notes.append(
        f"Spawned kernels churn at {churned['spawn'][0]:.1f} sessions/s and forked ones at {churned['fork'][0]:.1f}/s "
        f"({churned['fork'][0] / churned['spawn'][0]:.1f}x), for {churned['fork'][1] / churned['spawn'][1]:.2f}x the "
        "CPU per session.")
    return section
