"""Item 2b: checking out and back in a kernel that is already started and idle."""

from __future__ import annotations

from _common import STATS_HEADERS, Section, Stats, Target, interleaved, stats_rows

from jupyter_sessionpool import AsyncKernelPool

METHOD = """\
A pool with `max_kernels=2, min_idle=2`, both kernels ready; session `a` has run one
cell, so its kernel is bound and idle. Each sample is `async with pool.checkout(...)`
entered and exited with nothing inside, {reps} samples per variant after {warmup}
warm-up rounds, interleaved. *session a* re-checks-out the bound kernel (the common
case: a session's next cell); *anonymous* takes the pool's anonymous kernel. Taking a
fresh prewarmed kernel for a *new* session is item 2."""


async def measure(quick: bool) -> Section:
    reps, warmup = (200, 20) if quick else (3000, 200)
    section = Section("checkout", "2b. Checkout of a prewarmed idle kernel", METHOD.format(reps=reps, warmup=warmup))

    async with AsyncKernelPool(max_kernels=2, min_idle=2) as pool:
        await pool.wait_ready(timeout=120)
        await pool.execute("pass", session="a")

        async def bound() -> None:
            async with pool.checkout("a"):
                pass

        async def anonymous() -> None:
            async with pool.checkout():
                pass

        samples = await interleaved({"session a": bound, "anonymous": anonymous}, reps, warmup)
    section.raw = samples
    section.table(STATS_HEADERS, stats_rows(samples, None))
    for name, xs in samples.items():
        section.targets.append(Target(f"checkout enter+exit p50 ({name})", Stats.of(xs).p50 * 1000, 1.0, "ms"))
    return section
