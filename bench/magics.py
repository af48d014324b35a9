"""Overhead of a ``%%pool`` cell, as a notebook front end sees it.

One python3 kernel plays the notebook. A jupyter_client client times each cell from
sending its execute_request to the kernel's matching ``idle`` status (reply received too),
for the same trivial body run three ways:

- ``pass`` run directly in the notebook's kernel (the floor);
- ``%%pool session=a`` + ``pass``: the body runs on a pooled kernel, its outputs routed back;
- ``%%px`` + ``pass`` on a one-engine ipyparallel cluster, if ipyparallel is importable.

Samples are taken interleaved (one of each variant per round) so the noise of a shared
machine hits every variant alike. Prints a markdown table.

    .venv/bin/python bench/bench_magics.py [--reps 200]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import start_new_kernel

VARIANTS = {
    "direct `pass`": "pass",
    "`%%pool session=a` `pass`": "%%pool session=a\npass",
    "`%%px` `pass` (ipyparallel, 1 engine)": "%%px\npass",
}
PX_SETUP = (
    "import ipyparallel as ipp\n"
    "cluster = ipp.Cluster(n=1)\n"
    "rc = cluster.start_and_connect_sync()\n"
    "rc.activate()"
)


def run_cell(kc, code: str, timeout: float = 120) -> float:
    """Seconds from execute_request to the matching idle; raises if the cell failed."""
    start = time.perf_counter()
    msg_id = kc.execute(code)
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            elapsed = time.perf_counter() - start
            break
    reply = kc.get_shell_msg(timeout=timeout)
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"cell {code!r} failed: {reply['content'].get('ename')}: {reply['content'].get('evalue')}")
    return elapsed


def percentile(samples: list[float], q: float) -> float:
    xs = sorted(samples)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def measure(reps: int, warmup: int) -> dict[str, list[float]]:
    variants = dict(VARIANTS)
    with_px = importlib.util.find_spec("ipyparallel") is not None
    if not with_px:
        del variants["`%%px` `pass` (ipyparallel, 1 engine)"]
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        run_cell(kc, "%load_ext jupyter_sessionpool")
        if with_px:
            run_cell(kc, PX_SETUP)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for i in range(warmup + reps):
            order = names[i % len(names):] + names[: i % len(names)]  # rotate who goes first
            for name in order:
                elapsed = run_cell(kc, variants[name])
                if i >= warmup:
                    samples[name].append(elapsed)
        if with_px:
            run_cell(kc, "cluster.stop_cluster_sync()")
        run_cell(kc, "%unload_ext jupyter_sessionpool")
        return samples
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def table(samples: dict[str, list[float]]) -> str:
    floor = statistics.median(samples["direct `pass`"])
    rows = [
        "| cell | median | p90 | p99 | overhead vs direct (median) |",
        "|---|---|---|---|---|",
    ]
    for name, xs in samples.items():
        median = statistics.median(xs)
        overhead = "–" if name.startswith("direct") else f"+{(median - floor) * 1e3:.1f} ms"
        rows.append(
            f"| {name} | {median * 1e3:.1f} ms | {percentile(xs, 90) * 1e3:.1f} ms "
            f"| {percentile(xs, 99) * 1e3:.1f} ms | {overhead} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200, help="timed rounds (one cell of each variant per round)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed rounds first")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="jsp-bench-magics-"))
    os.environ.setdefault("IPYTHONDIR", str(scratch / "ipython"))
    os.environ.setdefault("JUPYTER_RUNTIME_DIR", str(scratch / "runtime"))
    samples = measure(args.reps, args.warmup)
    print(f"`%%pool` overhead: execute_request → idle as a jupyter_client client sees it, {args.reps} rounds, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print(table(samples))


if __name__ == "__main__":
    main()
