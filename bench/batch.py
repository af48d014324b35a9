"""Item 10: many notebooks at once: `jupyter-sessionpool run` against papermill serial, `xargs -P 4 papermill`, `pytest --nbmake -n 4`.

Each runner runs the largest batch 5 times, and the item reports the spread of those runs, so
that a run that stalls (issue 19 item 6: a shutdown waiting seconds on a kernel that had just
started) shows instead of hiding behind the fastest round.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from _common import Section, Target

METHOD = """\
{sizes} notebooks of four small code cells each (imports, a loop, a print, an expression), written
fresh for each run into one directory; each runner is a command started from the shell, timed from
its start to its exit (interpreter start and imports included, as a user sees it), one after the
other per size, in rotating order: one round at the smaller sizes, {rounds} at {top} notebooks (the spread
table gives each of those runs, in the order they ran). *papermill serial*: one Python process calling
`papermill.execute_notebook` for each notebook in turn (the fastest serial papermill: no process
start per notebook). *xargs -P 4 papermill*: `ls *.ipynb | xargs -P 4 -I{{}} papermill {{}} out/{{}}`.
*nbmake -n 4*: `pytest --nbmake -n 4` (pytest-xdist). *sessionpool -j J*: `python -m
jupyter_sessionpool run DIR -o OUT -j J` (J = 2, this machine's cores, the default; and 4 like the
peers). A port race is any `Address already in use` in a runner's output; a failure any non-zero exit.
CPU is the runner's and its descendants' (kernels, xdist workers) user + system time.
Every notebook's kernel is a fresh `python3` kernel in every runner."""

CELLS = [
    "import os, math, json",
    "total = sum(math.sqrt(i) for i in range(20000))",
    "print('total', round(total, 3), os.getcwd() != '')",
    "json.dumps({'n': 20000, 'total': total})[:20]",
]
_RACE = re.compile(r"Address already in use")
ROUNDS = 5  # runs of each runner at the largest size, for the spread
STALL = 1.5  # a sessionpool run slower than this times its median run is a stall


def write_notebooks(where: Path, n: int) -> None:
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i in range(n):
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": kernelspec})
        nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
        nbformat.write(nb, where / f"nb{i:02d}.ipynb")


def commands(src: Path, out: Path) -> dict[str, list[str] | str]:
    py = sys.executable
    serial = (
        "import pathlib, sys, papermill\n"
        f"for nb in sorted(pathlib.Path({str(src)!r}).glob('*.ipynb')):\n"
        f"    papermill.execute_notebook(str(nb), str(pathlib.Path({str(out)!r}) / nb.name), progress_bar=False)\n"
    )
    return {
        "papermill serial": [py, "-c", serial],
        "xargs -P 4 papermill": f"cd {src} && ls *.ipynb | xargs -P 4 -I{{}} {py} -m papermill --no-progress-bar {{}} {out}/{{}}",
        "nbmake -n 4": [py, "-m", "pytest", "--nbmake", "-n", "4", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
                        "--rootdir", str(src), str(src)],
        "sessionpool -j 2": [py, "-m", "jupyter_sessionpool", "run", str(src), "-o", str(out), "-j", "2", "-q"],
        "sessionpool -j 4": [py, "-m", "jupyter_sessionpool", "run", str(src), "-o", str(out), "-j", "4", "-q"],
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(command: list[str] | str, out: Path) -> tuple[float, float, bool, int]:
    """(wall seconds, CPU seconds of the runner and everything it started, exited 0, port races seen)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cpu0, t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(command, shell=isinstance(command, str), capture_output=True, text=True, timeout=900)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    races = len(_RACE.findall(done.stdout + done.stderr))
    if done.returncode != 0:
        print(f"  failed ({done.returncode}): {command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}", flush=True)
    return wall, cpu, done.returncode == 0, races


async def measure(quick: bool) -> Section:
    sizes = [5] if quick else [5, 10, 20]
    section = Section("batch", "10. Many notebooks at once: `jupyter-sessionpool run`", METHOD.format(
        sizes=", ".join(map(str, sizes)), rounds=ROUNDS, top=sizes[-1]))
    scratch = Path(tempfile.mkdtemp(prefix="jsp-batch-"))
    walls: dict[str, dict[int, list[float]]] = {}
    cpus: dict[str, dict[int, list[float]]] = {}  # wall time swings with the machine's load; CPU much less
    failures: dict[str, int] = {}
    races: dict[str, int] = {}
    try:
        for n in sizes:
            src, out = scratch / f"nbs{n}", scratch / "out"
            write_notebooks(src, n)
            variants = commands(src, out)
            names = list(variants)
            for r in range(ROUNDS if n == sizes[-1] else 1):
                shift = r % len(names)
                for name in names[shift:] + names[:shift]:
                    print(f"  {n} notebooks: {name}", flush=True)
                    wall, cpu, ok, race = await asyncio.to_thread(run_one, variants[name], out)
                    walls.setdefault(name, {}).setdefault(n, []).append(wall)
                    cpus.setdefault(name, {}).setdefault(n, []).append(cpu)
                    failures[name] = failures.get(name, 0) + (not ok)
                    races[name] = races.get(name, 0) + race
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    section.raw = {"walls": {k: {str(n): v for n, v in d.items()} for k, d in walls.items()},
                   "cpu": {k: {str(n): v for n, v in d.items()} for k, d in cpus.items()},
                   "failures": failures, "port_races": races}
    top = sizes[-1]
    best = {name: min(d[top]) for name, d in walls.items()}
    serial = best["papermill serial"]
    rows = [[name, *(f"{min(walls[name][n]):.2f}" for n in sizes), f"{top / best[name]:.2f}",
             f"{serial / best[name]:.2f}x", f"{min(cpus[name][top]) / top:.2f}", str(failures[name])] for name in walls]
    section.table(["runner", *(f"{n} nb s" for n in sizes), f"notebooks/s ({top})", "vs papermill serial",
                   f"CPU s per notebook ({top})", "failed runs"], rows)
    section.table(["runner", f"min s ({top})", "median s", "max s", "max / median", f"each of the {ROUNDS} runs, s"],
                  [[name, f"{min(d[top]):.2f}", f"{statistics.median(d[top]):.2f}", f"{max(d[top]):.2f}",
                    f"{max(d[top]) / statistics.median(d[top]):.2f}", ", ".join(f"{w:.2f}" for w in d[top])]
                   for name, d in walls.items()])
    cpu_serial = min(cpus["papermill serial"][top])
    cpu_ours = min(min(cpus["sessionpool -j 2"][top]), min(cpus["sessionpool -j 4"][top]))
    section.notes.append(
        f"CPU, which the other users of this machine disturb far less than wall time: papermill serial used "
        f"{cpu_serial / top:.2f} s per notebook, sessionpool {cpu_ours / top:.2f} s ({cpu_serial / cpu_ours:.2f}x less). "
        f"Papermill serial keeps one core busy and the pool all {os.cpu_count()}: on a quiet machine the wall-time "
        f"speed-up is bounded by about {os.cpu_count()} x that ratio = {os.cpu_count() * cpu_serial / cpu_ours:.1f}x."
    )
    ours = min(best["sessionpool -j 2"], best["sessionpool -j 4"])
    section.targets += [
        Target(f"speed-up vs papermill serial, {top} notebooks", serial / ours, 3.0, "x", higher_better=True,
               why_missed="on 2 cores every runner pays one kernel start (~0.25-0.3 s CPU) per notebook; see the notes"),
        Target(f"sessionpool / xargs -P 4 papermill, {top} notebooks", ours / best["xargs -P 4 papermill"], 1.0, "x"),
        Target(f"sessionpool / nbmake -n 4, {top} notebooks", ours / best["nbmake -n 4"], 1.0, "x"),
        Target(f"sessionpool's slowest run / its median run, {top} notebooks ({ROUNDS} runs each of -j 2 and -j 4)",
               max(max(walls[name][top]) / statistics.median(walls[name][top]) for name in ("sessionpool -j 2",
                   "sessionpool -j 4")), STALL, "x",
               why_missed="a run stalled: see the spread table (issue 19 item 6: shutdown waited on a just-started kernel)"),
        Target("port races (Address already in use) in sessionpool's runs", sum(n for name, n in races.items()
               if name.startswith("sessionpool")), 1, "", why_missed="see the raw output"),
    ]
    peers = {name: n for name, n in races.items() if n and not name.startswith("sessionpool")}
    if peers:
        section.notes.append("Port races the peers hit in this run (their kernels bind TCP ports; the pool's use "
                             "private ipc sockets): " + ", ".join(f"{name} {n}" for name, n in peers.items()) + ".")
    plot(section, sizes, walls)
    return section


def plot(section: Section, sizes: list[int], walls: dict[str, dict[int, list[float]]]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, by_n in walls.items():
        ax.plot(sizes, [min(by_n[n]) for n in sizes], marker="o", label=name)
    ax.set_xlabel("notebooks")
    ax.set_ylabel("wall time, s")
    ax.set_xticks(sizes)
    ax.grid(alpha=0.3)
    ax.legend()
    section.figure(fig, "bench-batch.png", "Wall time against the number of notebooks (fastest round).")
