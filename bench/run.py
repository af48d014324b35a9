"""Run every benchmark item in one process, one after the other, and write the report.

    make bench                                   # full run: docs/benchmarks.md, docs/bench-*.png
    .venv-bench/bin/python bench/run.py --quick  # few repetitions, to check the harness (all in bench/results/)
    .venv-bench/bin/python bench/run.py --only overhead,books
    .venv-bench/bin/python bench/run.py --only scale --churn-cycles 1000

Every process the run starts carries ``JSP_BENCH_RUN=<id>`` in its environment; at the end
any such process still alive is reported, killed, and fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN_ID = uuid.uuid4().hex
_SCRATCH = Path(tempfile.mkdtemp(prefix="jsp-bench-"))
os.environ["JSP_BENCH_RUN"] = RUN_ID
os.environ["JUPYTER_RUNTIME_DIR"] = str(_SCRATCH / "runtime")
os.environ["IPYTHONDIR"] = str(_SCRATCH / "ipython")
os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
(_SCRATCH / "runtime").mkdir(mode=0o700)

import _common  # noqa: E402 - the environment above must be set before Jupyter modules load
import batch  # noqa: E402
import books  # noqa: E402
import checkout  # noqa: E402
import concurrency  # noqa: E402
import forking  # noqa: E402
import forking_lab  # noqa: E402
import magics  # noqa: E402
import mcp_peer  # noqa: E402
import memory  # noqa: E402
import overhead  # noqa: E402
import remote  # noqa: E402
import report  # noqa: E402
import scale  # noqa: E402
import service  # noqa: E402
import startup  # noqa: E402
import throughput  # noqa: E402
import widgets  # noqa: E402
from _common import LoadMeter, Section  # noqa: E402

from jupyter_sessionpool.forking import stop_templates  # noqa: E402

# In the order of the list; magics (the notebook front end), then remote kernels (issue 11),
# batch runs (issue 14), the service over HTTP and MCP against jupyter-mcp-server (issue 18),
# widgets relayed from sessions (issue 20) and fork-started kernels (issue 21).
ITEMS = {
    m.__name__: m
    for m in (
        overhead, startup, checkout, concurrency, throughput, scale, books, memory, magics, remote, batch, service,
        mcp_peer, widgets, forking, forking_lab,
    )
}


def leftovers() -> list[tuple[int, str]]:
    """(pid, command line) of live processes started by this run, other than this one."""
    marker = f"JSP_BENCH_RUN={RUN_ID}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found.append((int(entry), f.read().replace(b"\0", b" ").decode(errors="replace").strip()))
        except OSError:
            continue
    return found


def check_cleanup(grace: float = 10.0) -> list[tuple[int, str]]:
    """Wait up to ``grace`` s for the run's processes to exit (ipyparallel's nanny lingers ~3 s), kill the rest."""
    deadline = time.monotonic() + grace
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(0.25)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repetitions; report goes to bench/results/")
    parser.add_argument("--only", default="", help=f"comma-separated items among {', '.join(ITEMS)}")
    parser.add_argument(
        "--churn-cycles", type=int, default=scale.CHURN_CYCLES, help="session create/release cycles (item 5)"
    )
    args = parser.parse_args()
    chosen = [name for name in ITEMS if not args.only or name in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(ITEMS) - {""}
    if unknown:
        parser.error(f"unknown items: {', '.join(sorted(unknown))}")
    scale.CHURN_CYCLES = args.churn_cycles
    full = not (args.quick or args.only)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    _common.FIGURE_DIR = HERE.parent / "docs" if full else results
    started = time.time()
    meter = LoadMeter()
    sections: list[Section] = []
    for name in chosen:
        print(f"== {name}", flush=True)
        item_meter = LoadMeter()
        section = asyncio.run(ITEMS[name].measure(args.quick))
        section.load = item_meter.read()
        sections.append(section)
        print(report.render_section(section), flush=True)
    stop_templates()  # the fork templates of this process's pools outlive them by a minute otherwise
    left = check_cleanup()
    machine = report.machine(meter.read(), time.time() - started, args.quick)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    raw = {"machine": machine, "sections": [s.to_dict() for s in sections], "leftover_processes": left}
    (results / f"{stamp}{'-quick' if args.quick else ''}.json").write_text(json.dumps(raw, indent=1))
    doc = report.render(sections, machine)
    out = HERE.parent / "docs" / "benchmarks.md" if full else results / "benchmarks-quick.md"
    out.write_text(doc)
    print(f"wrote {out} and {results}/{stamp}*.json")
    if left:
        print(f"LEFTOVER PROCESSES (killed): {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        shutil.rmtree(_SCRATCH, ignore_errors=True)
