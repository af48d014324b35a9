"""Item 8: overhead of a ``%%pool`` cell as a notebook front end sees it, against a direct cell and ``%%px``."""

from __future__ import annotations

from typing import Any

from _common import STATS_HEADERS, Section, Stats, interleaved, raw_execute, raw_kernel, stats_rows

METHOD = """\
One python3 kernel plays the notebook; a jupyter_client client times each cell from its
`execute_request` to its reply and `idle` status, for the same trivial body run three ways,
interleaved, {reps} rounds after {warmup} warm-up rounds: `pass` run directly in the
notebook's kernel (the floor); `%%pool session=a` + `pass` (the body runs on a pooled
kernel of the notebook's pool, its outputs routed back); `%%px` + `pass` on a one-engine
ipyparallel cluster started in the notebook (`ipp.Cluster(n=1).start_and_connect_sync()`,
`rc.activate()`). Overhead is the difference of medians to the direct cell."""

CELLS = {
    "direct `pass`": "pass",
    "`%%pool session=a` `pass`": "%%pool session=a\npass",
    "`%%px` `pass` (ipyparallel, 1 engine)": "%%px\npass",
}
PX_SETUP = "import ipyparallel as ipp\ncluster = ipp.Cluster(n=1)\nrc = cluster.start_and_connect_sync()\nrc.activate()"


async def cell(kc: Any, code: str) -> None:
    """Run one notebook cell; a failed cell fails the benchmark (it would time an error path)."""
    reply = await raw_execute(kc, code, timeout=120)
    content = reply["content"]
    if content["status"] != "ok":
        raise RuntimeError(f"cell {code!r} failed: {content.get('ename')}: {content.get('evalue')}")


async def measure(quick: bool) -> Section:
    reps, warmup = (20, 3) if quick else (200, 10)
    section = Section(
        "magics", "8. `%%pool` cell overhead vs a direct cell and `%%px`", METHOD.format(reps=reps, warmup=warmup)
    )
    async with raw_kernel("tcp") as (_, kc):
        await cell(kc, "%load_ext jupyter_sessionpool")
        await cell(kc, PX_SETUP)
        try:
            samples = await interleaved(
                {name: lambda code=code: cell(kc, code) for name, code in CELLS.items()}, reps, warmup
            )
        finally:
            await cell(kc, "cluster.stop_cluster_sync()")
            await cell(kc, "%unload_ext jupyter_sessionpool")
    section.raw = samples
    rows = stats_rows(samples, "direct `pass`")
    floor = Stats.of(samples["direct `pass`"]).p50
    for row, xs in zip(rows, samples.values()):
        row.append(f"+{(Stats.of(xs).p50 - floor) * 1000:.2f}")
    section.table([*STATS_HEADERS, "overhead ms (p50)"], rows)
    pool, px = Stats.of(samples["`%%pool session=a` `pass`"]).p50, Stats.of(samples[list(CELLS)[2]]).p50
    winner = "`%%pool` is faster" if pool < px else "`%%px` is faster"
    section.notes.append(f"`%%pool` / `%%px` (p50): {pool / px:.3f}x; {winner}.")
    return section
