"""Item 3: N sessions each sleeping 1 s at once, and the global-lock anti-pattern for contrast."""

from __future__ import annotations

import asyncio

from _common import Section, Stats, Target, interleaved

from jupyter_sessionpool import AsyncKernelPool

METHOD = """\
For each N, a pool with `max_kernels=N, min_idle=N`, all kernels ready and each of the
N sessions bound by one warm-up cell. A sample is the wall time of
`asyncio.gather` over N `pool.execute("time.sleep(1)", session=s_i)`; {reps} samples
per N. The contrast line wraps the same `pool.execute` in one `asyncio.Lock` held across
the whole round trip (the manager anti-pattern the design forbids), {lock_reps}
sample(s) per N: it serialises the cells, so it takes about N s. With {reps} samples the
"max" column stands in for p99."""

SLEEP = "time.sleep(1)"


async def one_n(n: int, reps: int, lock_reps: int) -> dict[str, list[float]]:
    """Wall times of N concurrent sleeps: through the pool, and through a global lock."""
    sessions = [f"s{i}" for i in range(n)]
    lock = asyncio.Lock()

    async with AsyncKernelPool(max_kernels=n, min_idle=n) as pool:
        await pool.wait_ready(timeout=60 + 10 * n)
        await asyncio.gather(*(pool.execute("import time", session=s) for s in sessions))

        async def locked(session: str) -> None:
            async with lock:
                await pool.execute(SLEEP, session=session)

        concurrent = await interleaved(
            {"pool": lambda: asyncio.gather(*(pool.execute(SLEEP, session=s) for s in sessions))}, reps
        )
        contrast = await interleaved({"global lock": lambda: asyncio.gather(*(locked(s) for s in sessions))}, lock_reps)
    return {**concurrent, **contrast}


async def measure(quick: bool) -> Section:
    ns, reps, lock_reps = ([1, 2, 4], 1, 1) if quick else ([1, 2, 4, 8, 16], 5, 1)
    section = Section(
        "concurrency", "3. Concurrency: N sessions × `time.sleep(1)`", METHOD.format(reps=reps, lock_reps=lock_reps)
    )
    rows = []
    for n in ns:
        samples = await one_n(n, reps, lock_reps)
        section.raw[str(n)] = samples
        pool, lock = Stats.of(samples["pool"]), Stats.of(samples["global lock"])
        rows.append(
            [
                str(n),
                f"{pool.p50:.3f}",
                f"{pool.max:.3f}",
                f"{pool.p50:.3f}x",
                f"{lock.p50:.3f}",
                f"{lock.p50 / pool.p50:.2f}x",
            ]
        )
        section.targets.append(Target(f"wall / 1 s, N={n} (p50)", pool.p50, 1.1, "x"))
    section.table(
        ["N", "pool wall p50 s", "pool wall max s", "ratio to 1 s", "global lock wall s", "lock / pool"], rows
    )
    plot(section, ns)
    return section


def plot(section: Section, ns: list[int]) -> None:
    """Wall time against N: the pool (p50, bar to the slowest sample), the lock line, 1 s and the 1.1 s target."""
    import matplotlib.pyplot as plt

    pool = [Stats.of(section.raw[str(n)]["pool"]) for n in ns]
    lock = [Stats.of(section.raw[str(n)]["global lock"]).p50 for n in ns]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.errorbar(
        ns,
        [s.p50 for s in pool],
        yerr=[[0] * len(ns), [s.max - s.p50 for s in pool]],
        marker="o",
        capsize=3,
        label="pool (p50, bar to max)",
    )
    ax.plot(ns, lock, marker="s", color="tab:red", label="global lock across the round trip")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="1 s (one cell)")
    ax.axhline(1.1, color="tab:green", lw=0.8, ls="--", label="target 1.1 s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_yticks([0.5, 1, 2, 4, 8, 16], ["0.5", "1", "2", "4", "8", "16"])
    ax.set_xlabel("N sessions, each time.sleep(1), max_kernels = N")
    ax.set_ylabel("wall time, s")
    ax.legend(fontsize=8)
    section.figure(fig, "bench-concurrency.png", "Item 3: wall time of N concurrent one-second cells")
