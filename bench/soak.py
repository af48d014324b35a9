"""The long reliability runs behind docs/reliability.md: load, churn and a realistic output flood.

    .venv/bin/python bench/soak.py                  # all three; rewrites the figures in docs/reliability.md
    .venv/bin/python bench/soak.py --only churn     # one part (figures printed, docs untouched)
    .venv/bin/python bench/soak.py --load-seconds 20 --sessions 100   # a shorter run, to try the harness

``make soak`` runs this after 50 rounds of the kill test in tests/test_faults.py.

load
    200 concurrent callers over 8 kernels and 50 sessions, mixed cells (short, long, failing,
    printing) for 2 minutes, 5 % of calls cancelled at a random moment, 3 % releasing their
    session. Every cell prints its kernel's own record of which session it serves (set the
    first time a kernel runs a session's cell) and a per-call token, so misrouted or lost
    output is caught. Only SessionLost (a session released or abandoned under a queued caller)
    and our own cancellations are expected; anything else is counted as unexpected.
churn
    1,000 sessions created, used and released, 8 at a time; open file descriptors, threads,
    child processes and RSS of this process before (after a warm-up) and after.
flood
    A cell printing 100,000 lines with ``flush=True`` while another session measures latency;
    lines received out of 100,000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from _common import percentile
from jupyter_sessionpool import AsyncKernelPool, SessionLost
from jupyter_sessionpool.forking import stop_templates

HERE = Path(__file__).parent
DOC = HERE.parent / "docs" / "reliability.md"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
ME = psutil.Process()

# ---- load ------------------------------------------------------------------------------------

WHO = "try:\n    _who\nexcept NameError:\n    _who = {session!r}\nprint(_who, {token!r})\n"
KINDS = ["short", "long", "failing", "printing"]
WEIGHTS = [50, 15, 15, 20]


def cell(kind: str, session: str, token: str, rng: random.Random) -> tuple[str, int]:
    """The code of one call and, for printing cells, how many lines it prints after the header."""
    head = WHO.format(session=session, token=token)
    if kind == "short":
        return head + "1 + 1", 0
    if kind == "long":
        return head + f"import time; time.sleep({rng.uniform(0.5, 2.0):.2f})", 0
    if kind == "failing":
        return head + "1 / 0", 0
    lines = rng.randint(100, 2000)
    return head + f"for i in range({lines}): print({token!r}, i)", lines


def check(kind: str, session: str, token: str, lines: int, r: Any) -> str | None:
    """What is wrong with a result, or None. Names the problem so a failure explains itself."""
    head, _, rest = r.stdout.partition("\n")
    if r.session != session:
        return f"result of {session} says session {r.session}"
    if head != f"{session} {token}":
        return f"misrouted: {session}'s call printed {head!r}"
    if kind == "short" and (r.status, r.result) != ("ok", "2"):
        return f"short cell gave {r.status} {r.result!r}"
    if kind == "failing" and (r.status != "error" or r.error["ename"] != "ZeroDivisionError"):
        return f"failing cell gave {r.status} {r.error}"
    if kind == "printing" and rest != "".join(f"{token} {i}\n" for i in range(lines)):
        return f"printing cell lost output: {rest.count(chr(10))} of {lines} lines"
    if kind in ("long", "printing") and r.status != "ok":
        return f"{kind} cell gave {r.status}"
    return None


@dataclass
class Load:
    waits: list[float] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)
    expected: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


async def caller(pool: AsyncKernelPool, sessions: list[str], deadline: float, seed: int, load: Load) -> None:
    """One of the concurrent callers: call after call on random sessions until the deadline."""
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        session = rng.choice(sessions)
        kind = rng.choices(KINDS, WEIGHTS)[0]
        token = uuid.uuid4().hex[:12]
        code, lines = cell(kind, session, token, rng)
        release = rng.random() < 0.03
        call = asyncio.ensure_future(one_call(pool, session, code, release, load))
        if rng.random() < 0.05:
            await asyncio.wait([call], timeout=rng.uniform(0, 2.0))  # the random moment of a cancel
            call.cancel()
        try:
            r = await call
        except asyncio.CancelledError:
            load.expected["cancelled by the test"] += 1
            continue
        except SessionLost as exc:
            load.expected[f"SessionLost ({exc.reason})"] += 1
            continue
        except Exception as exc:  # anything else breaks the promise; record it and go on
            load.unexpected.append(f"{type(exc).__name__}: {exc}")
            continue
        load.calls[kind] += 1
        problem = check(kind, session, token, lines, r)
        if problem:
            load.unexpected.append(problem)


async def one_call(pool: AsyncKernelPool, session: str, code: str, release: bool, load: Load) -> Any:
    t0 = time.monotonic()
    async with pool.checkout(session) as lease:
        load.waits.append(time.monotonic() - t0)
        r = await lease.execute(code)
        if release:  # while holding the lease, so no other caller's running cell is killed
            await pool.release(session)
        return r


async def run_load(seconds: float, callers: int, kernels: int, sessions: int) -> dict[str, Any]:
    names = [f"s{i:02d}" for i in range(sessions)]
    load = Load()
    async with AsyncKernelPool(
        max_kernels=kernels, min_idle=2, checkout_timeout=None, execution_timeout=60, session_idle_timeout=2
    ) as pool:
        await pool.wait_ready(timeout=120)
        t0 = time.monotonic()
        tasks = [asyncio.ensure_future(caller(pool, names, t0 + seconds, seed, load)) for seed in range(callers)]
        done, hung = await asyncio.wait(tasks, timeout=seconds + 300)
        for task in hung:
            task.cancel()
        wall = time.monotonic() - t0
        counters = pool.stats().counters
    for task in done:
        if task.exception() is not None:
            load.unexpected.append(f"caller crashed: {task.exception()!r}")
    finished = sum(load.calls.values())
    return {
        "callers": callers,
        "kernels": kernels,
        "sessions": sessions,
        "seconds": round(wall, 1),
        "results": finished,
        "by_kind": dict(load.calls),
        "results_per_s": round(finished / wall, 1),
        "expected_errors": dict(load.expected),
        "unexpected": load.unexpected[:20],
        "unexpected_count": len(load.unexpected),
        "hung_callers": len(hung),
        "wait_s": {
            "p50": round(percentile(load.waits, 50), 3),
            "p99": round(percentile(load.waits, 99), 2),
            "max": round(max(load.waits), 2),
            "n": len(load.waits),
        },
        "kernels_started": counters["started"],
        "released": counters["released"],
    }


# ---- churn -----------------------------------------------------------------------------------


def resources() -> dict[str, int]:
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "os_threads": ME.num_threads(),
        "children": len(ME.children(recursive=True)),
        "rss_mb": ME.memory_info().rss >> 20,
    }


async def run_churn(total: int, warmup: int, parallel: int) -> dict[str, Any]:
    async def sessions(pool: AsyncKernelPool, numbers: range) -> None:
        """``parallel`` workers take the numbers in turn: create, use and release one session each."""
        todo = iter(numbers)

        async def worker() -> None:
            for n in todo:
                r = await pool.execute("x = 1; x", session=f"churn{n}")
                assert r.result == "1", r
                assert await pool.release(f"churn{n}")

        await asyncio.gather(*(worker() for _ in range(parallel)))
        await settled(pool)

    async with AsyncKernelPool(max_kernels=parallel, min_idle=2) as pool:
        await pool.wait_ready(timeout=120)
        await sessions(pool, range(warmup))  # imports, caches and thread pools reach their steady state
        before = resources()
        t0 = time.monotonic()
        await sessions(pool, range(warmup, warmup + total))
        took = time.monotonic() - t0
        after = resources()
        released = pool.stats().counters["released"] - warmup
    return {
        "sessions": released,
        "seconds": round(took, 1),
        "before": before,
        "after": after,
        "after_shutdown": resources(),
    }


async def settled(pool: AsyncKernelPool) -> None:
    """Until only the min_idle prewarmed kernels remain, all idle (pool events, no polling)."""
    fut = asyncio.get_running_loop().create_future()

    def check(stats: Any) -> None:
        if not fut.done() and len(stats.kernels) == pool.min_idle and all(k.state == "idle" for k in stats.kernels):
            fut.set_result(None)

    unsubscribe = pool.subscribe(check)
    check(pool.stats())
    try:
        await asyncio.wait_for(fut, 120)
    finally:
        unsubscribe()


# ---- a realistic flood -----------------------------------------------------------------------


async def run_flood(lines: int) -> dict[str, Any]:
    async with AsyncKernelPool(max_kernels=2, min_idle=2) as pool:
        await pool.wait_ready(timeout=120)
        await pool.execute("1", session="other")
        rss0 = ME.memory_info().rss
        peak, latencies = rss0, []
        flood = asyncio.ensure_future(
            pool.execute(f"for i in range({lines}): print(i, flush=True)", session="flood", timeout=600)
        )
        while not flood.done():
            t0 = time.monotonic()
            await pool.execute("1 + 1", session="other", timeout=60)
            latencies.append(time.monotonic() - t0)
            peak = max(peak, ME.memory_info().rss)
        r = await flood
    received = r.stdout.splitlines()
    return {
        "lines": lines,
        "received": len(received),
        "exact": received == [str(i) for i in range(lines)],
        "seconds": round(r.duration, 1),
        "status": r.status,
        "other_p50_ms": round(1000 * percentile(latencies, 50)),
        "other_max_ms": round(1000 * max(latencies)),
        "peak_rss_growth_mb": (peak - rss0) >> 20,
    }


# ---- report ------------------------------------------------------------------------------------


def markdown(figures: dict[str, Any]) -> str:
    m = figures["machine"]
    out = [
        f"Run {figures['when']} on {m['cpus']} CPUs, load average {m['load_before']} before and "
        f"{m['load_after']} after (other developers' tests and benchmarks share the machine).",
        "",
    ]
    if "load" in figures:
        lo = figures["load"]
        w = lo["wait_s"]
        out += [
            f"**Load**: {lo['callers']} callers, {lo['kernels']} kernels, {lo['sessions']} sessions, {lo['seconds']} s.",
            "",
            "| results | per s | by kind | expected errors | unexpected | hung callers | wait p50 / p99 / max | kernels started |",
            "|---|---|---|---|---|---|---|---|",
            f"| {lo['results']:,} | {lo['results_per_s']} | {_kv(lo['by_kind'])} | {_kv(lo['expected_errors'])} "
            f"| {lo['unexpected_count']} | {lo['hung_callers']} | {w['p50']} s / {w['p99']} s / {w['max']} s "
            f"| {lo['kernels_started']} |",
            "",
        ]
        if lo["unexpected"]:
            out += ["Unexpected: " + "; ".join(lo["unexpected"]), ""]
    if "churn" in figures:
        c = figures["churn"]
        out += [
            f"**Churn**: {c['sessions']:,} sessions created, used and released in {c['seconds']} s.",
            "",
            "| resource of the pool's process | before | after 1,000 sessions | after shutdown |",
            "|---|---|---|---|",
            *(f"| {k} | {c['before'][k]} | {c['after'][k]} | {c['after_shutdown'][k]} |" for k in c["before"]),
            "",
        ]
    if "flood" in figures:
        f = figures["flood"]
        out += [
            f"**Flood** (`print(i, flush=True)` × {f['lines']:,}): {f['received']:,} lines received "
            f"(complete and in order: {'yes' if f['exact'] else 'no'}), {f['seconds']} s; another session's `1 + 1` p50 {f['other_p50_ms']} ms, "
            f"max {f['other_max_ms']} ms; peak RSS growth {f['peak_rss_growth_mb']} MB.",
            "",
        ]
    return "\n".join(out)


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items()) or "none"


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} section to fill")
    DOC.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", doc))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["load", "churn", "flood"])
    parser.add_argument("--load-seconds", type=float, default=120)
    parser.add_argument("--sessions", type=int, default=1000, help="sessions in the churn run")
    args = parser.parse_args()
    figures: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_before": round(os.getloadavg()[0], 1)},
    }
    parts = {
        "load": lambda: run_load(args.load_seconds, callers=200, kernels=8, sessions=50),
        "churn": lambda: run_churn(args.sessions, warmup=40, parallel=8),
        "flood": lambda: run_flood(100_000),
    }
    for name, run in parts.items():
        if args.only in (None, name):
            print(f"--- {name}", flush=True)
            figures[name] = asyncio.run(run())
            print(json.dumps(figures[name], indent=1), flush=True)
    figures["machine"]["load_after"] = round(os.getloadavg()[0], 1)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json").write_text(json.dumps(figures, indent=1))
    text = markdown(figures)
    print(text)
    if args.only is None and args.load_seconds >= 120 and args.sessions >= 1000:
        write_doc(text)
        print(f"wrote the figures into {DOC}")
    stop_templates()  # the fork templates outlive their pools by a minute otherwise
    leftovers = ME.children(recursive=True)
    broken = figures.get("load", {}).get("unexpected_count", 0) + figures.get("load", {}).get("hung_callers", 0)
    if leftovers:
        print(f"processes outlived their pools: {leftovers}", file=sys.stderr)
    return 1 if leftovers or broken else 0


if __name__ == "__main__":
    sys.exit(main())
