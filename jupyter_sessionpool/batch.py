"""Run many notebooks at once, each on a fresh prewarmed kernel of its own.

Built on :class:`AsyncKernelPool`'s public API only: every notebook checks out a session of
its own (so it gets a fresh kernel, never one that ran another notebook), runs its code
cells on that lease one after the other, and releases the session. The pool keeps
``min(jobs, notebooks left)`` kernels prewarmed, so the next notebook's kernel has started
while the current ones run, and no kernel is started that no notebook will use.

Parameters are injected the papermill way, and executed notebooks are written with the
outputs, execution counts and ``execution`` timing metadata nbclient writes, plus
papermill-style ``papermill`` metadata, so papermill and nbclient users read them alike.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import datetime
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nbformat
from jupyter_client.kernelspec import KernelSpecManager

from .comms import WIDGET_STATE_MIME, CommEvent
from .config import check_timeout
from .errors import CommNotFound, ExecutionTimeout, KernelDied, PoolError
from .pool import AsyncKernelPool, Lease
from .workers.local import check_kernelspec
from .results import ExecutionResult

PASSED, FAILED, TIMEOUT, DIED, INTERRUPTED, SKIPPED = "passed", "failed", "timeout", "died", "interrupted", "skipped"
RUNNING = "running"

Progress = Callable[[str, "NotebookResult"], Any]
"""``progress(event, result)``: "queued" (each notebook, before any runs), "start", "cell" (one more code cell done), "done"."""


class UsageError(PoolError, ValueError):
    """The batch run was asked for something it cannot do (missing notebook, bad parameter...)."""


@dataclass
class NotebookResult:
    """What happened to one notebook; ``notebook`` is the executed copy (as written to ``output_path``)."""

    path: Path
    output_path: Path | None
    status: str = "pending"
    cells: int = 0  # code cells run
    cells_total: int = 0
    duration: float = 0.0
    error: str | None = None  # one line: what failed and where
    traceback: list[str] = field(default_factory=list)
    notebook: Any = None

    @property
    def ok(self) -> bool:
        return self.status == PASSED

    @property
    def name(self) -> str:
        return self.path.name


# ---- planning: everything that can be wrong with the request, before any kernel starts ---------


def parse_value(text: str) -> Any:
    """A ``-p NAME VALUE`` value: a Python literal where it parses as one, the string otherwise."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def load_parameters_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a ``-f params.yaml`` file; UsageError if it is missing, not YAML, or not a mapping."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read parameters file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"parameters file {str(path)!r} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"parameters file {str(path)!r} must hold a mapping of names to values, not a {type(data).__name__}")
    return data


def _check_parameters(parameters: dict[str, Any]) -> None:
    for name in parameters:
        if not isinstance(name, str) or not name.isidentifier():
            raise UsageError(f"parameter name {name!r} is not a valid Python identifier")


def find_notebooks(paths: Iterable[str | os.PathLike[str]], exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """(notebook, name to write it under) for every ``.ipynb`` named or found in a named directory.

    Directories are searched recursively (skipping ``.ipynb_checkpoints`` and ``exclude``,
    the output directory); their notebooks keep their path relative to the directory.
    """
    found: dict[Path, Path] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            inside = [
                nb
                for nb in sorted(path.rglob("*.ipynb"))
                if ".ipynb_checkpoints" not in nb.parts and not (exclude and nb.resolve().is_relative_to(exclude))
            ]
            if not inside:
                raise UsageError(f"no notebooks (*.ipynb) in directory {str(path)!r}")
            for nb in inside:
                found.setdefault(nb.resolve(), nb.relative_to(path))
        elif path.is_file():
            found.setdefault(path.resolve(), Path(path.name))
        else:
            raise UsageError(f"no such notebook or directory: {str(path)!r}")
    if not found:
        raise UsageError("no notebooks given")
    return list(found.items())


@dataclass
class _Plan:
    """One notebook ready to run: its parameterised copy, its kernel, where it goes."""

    result: NotebookResult
    nb: Any
    kernel_name: str
    cwd: str | None  # chdir into it with a hidden first cell (Python kernels, local)
    pool_key: tuple[str, str | None]


def _python_literal(value: Any) -> str:
    """``value`` as Python source, the way papermill's PythonTranslator writes it."""
    if isinstance(value, str):
        return '"{}"'.format(value.encode("unicode_escape").decode("utf-8").replace('"', r"\""))
    if isinstance(value, float) and not (value == value and abs(value) != float("inf")):
        return "float('nan')" if value != value else "float('-inf')" if value < 0 else "float('inf')"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_python_literal(str(k))}: {_python_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_python_literal(v) for v in value) + "]"
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, (tuple, set, frozenset, complex, bytes)):  # from -p: literals, so repr is source
        return repr(value)
    return _python_literal(str(value))  # e.g. a YAML date: as a string, as papermill does


def inject_parameters(nb: Any, parameters: dict[str, Any]) -> Any:
    """Return ``nb`` upgraded to the current format with a cell tagged ``injected-parameters``.

    As papermill does: the cell replaces an earlier injected cell, else goes right after the
    first cell tagged ``parameters``, else first.
    """
    nb = nbformat.v4.upgrade(nb)
    source = "# Parameters\n" + "".join(f"{name} = {_python_literal(v)}\n" for name, v in parameters.items())
    cell = nbformat.v4.new_code_cell(source=source)
    cell.metadata["tags"] = ["injected-parameters"]
    tags = [c.get("metadata", {}).get("tags", []) for c in nb.cells]
    injected = next((i for i, t in enumerate(tags) if "injected-parameters" in t), None)
    tagged = next((i for i, t in enumerate(tags) if "parameters" in t), None)
    if injected is not None:
        nb.cells[injected] = cell
    elif tagged is not None:
        nb.cells.insert(tagged + 1, cell)
    else:
        nb.cells.insert(0, cell)
    return nb


def _plan(
    paths: Iterable[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str] | None,
    inplace: bool,
    parameters: dict[str, Any],
    kernel_name: str | None,
    remote: bool,
) -> list[_Plan]:
    out = Path(output_dir).resolve() if output_dir is not None else None
    if inplace and out is not None:
        raise UsageError("give either an output directory or inplace, not both")
    _check_parameters(parameters)
    if kernel_name is not None and not remote:  # a gateway's kernelspecs are checked when the pool opens
        _check_kernel(kernel_name, "--kernel")
    ksm = KernelSpecManager()
    languages: dict[str, str] = {}
    plans: list[_Plan] = []
    targets: dict[Path, Path] = {}
    for path, name in find_notebooks(paths, exclude=out):
        target = path if inplace else out / name if out is not None else None
        if target is not None and not inplace and target == path:
            raise UsageError(f"the output for {str(path)!r} would overwrite it; choose another output directory")
        if target is not None and target in targets:
            raise UsageError(f"{str(path)!r} and {str(targets[target])!r} would both be written to {str(target)!r}")
        if target is not None:
            targets[target] = path
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as exc:  # unreadable, not JSON, not a notebook: say which file and why
            raise UsageError(f"cannot read notebook {str(path)!r}: {exc}") from None
        kernel = kernel_name or nb.metadata.get("kernelspec", {}).get("name") or "python3"
        if kernel not in languages and remote:
            languages[kernel] = str(nb.metadata.get("kernelspec", {}).get("language", "python")).lower()
        elif kernel not in languages:
            _check_kernel(kernel, f"notebook {str(path)!r} asks for kernelspec")
            languages[kernel] = ksm.get_kernel_spec(kernel).language.lower()
        python = languages[kernel] == "python"
        if parameters:
            if not python:
                raise UsageError(f"parameters can only be injected into Python notebooks; {str(path)!r} runs {kernel!r}")
            nb = inject_parameters(nb, parameters)
        # A Python kernel changes directory in a hidden first cell, so one prewarmed pool serves
        # every directory; other kernels get a pool started in the notebook's directory.
        cwd = str(path.parent) if python and not remote else None
        key = (kernel, None if python or remote else str(path.parent))
        code = sum(1 for c in nb.cells if _runnable(c))
        result = NotebookResult(path=path, output_path=target, cells_total=code)
        plans.append(_Plan(result, nb, kernel, cwd, key))
    return plans


def _check_kernel(name: str, what: str) -> None:
    try:
        check_kernelspec(name)
    except ValueError as exc:
        raise UsageError(f"{what} {name!r}: {exc}") from None


def _runnable(cell: Any) -> bool:
    """Whether nbclient would execute this cell (a non-empty code cell not tagged skip-execution)."""
    tags = cell.get("metadata", {}).get("tags", [])
    return cell.get("cell_type") == "code" and bool(cell.get("source", "").strip()) and "skip-execution" not in tags


# ---- writing cells the way nbclient and papermill do -------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _stamp(t: datetime.datetime) -> str:
    """nbclient's ``record_timing`` format."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reset(nb: Any, parameters: dict[str, Any], result: NotebookResult) -> None:
    """Clear outputs and set the papermill metadata a run starts with."""
    for cell in nb.cells:
        cell.metadata["papermill"] = {"exception": None, "start_time": None, "end_time": None, "duration": None, "status": "pending"}
        if cell.cell_type == "code":
            cell.execution_count = None
            cell.outputs = []
    nb.metadata["papermill"] = {
        "parameters": parameters,
        "input_path": str(result.path),
        "output_path": str(result.output_path) if result.output_path else None,
        "start_time": _now().isoformat(),
        "end_time": None,
        "duration": None,
        "exception": None,
    }


def fill_cell(cell: Any, result: ExecutionResult, started: datetime.datetime, ended: datetime.datetime) -> None:
    """Write one cell's result into its notebook cell, as nbclient would have.

    The ``execution`` timestamps are this process's clock around the request (the batch runs
    on the pool's public API, which hands back outputs, not message headers); same machine,
    they are within milliseconds of the kernel's own. Updates of displays shown by earlier
    cells are carried over by :func:`carry_displays`.
    """
    cell.execution_count = result.execution_count
    cell.outputs = [nbformat.from_dict(copy.deepcopy(out)) for out in result.outputs]
    cell.metadata["execution"] = {
        "iopub.status.busy": _stamp(started),
        "iopub.execute_input": _stamp(started),
        "shell.execute_reply": _stamp(ended),
        "iopub.status.idle": _stamp(ended),
    }
    failed = result.status != "ok" and "raises-exception" not in cell.metadata.get("tags", [])
    cell.metadata["papermill"].update(
        exception=failed,
        start_time=started.isoformat(),
        end_time=ended.isoformat(),
        duration=(ended - started).total_seconds(),
        status="failed" if failed else "completed",
    )


def carry_displays(shown: dict[str, list[tuple[Any, int]]], cell: Any, result: ExecutionResult) -> None:
    """Apply ``result``'s display updates to earlier cells' outputs of the same display id, as
    nbclient does, then remember this cell's own outputs with ids (``shown`` spans the notebook)."""
    for display_id, latest in result.displays.items():
        for earlier, i in shown.get(display_id, []):
            if earlier is not cell:
                earlier.outputs[i]["data"] = copy.deepcopy(latest["data"])
                earlier.outputs[i]["metadata"] = copy.deepcopy(latest["metadata"])
        shown.setdefault(display_id, []).extend((cell, i) for i in latest["outputs"])


def set_widgets_metadata(nb: Any, widget_state: dict[str, Any]) -> None:
    """Save this run's widgets as ``metadata.widgets``, as nbclient and papermill write it.

    ``widget_state`` is the run's ``application/vnd.jupyter.widget-state+json`` value
    (``Lease.widget_state()``: every model with its latest state, each Output widget's
    captured outputs). It replaces what the input held, whose model ids no output of this run
    refers to; a run without widgets leaves none.
    """
    if widget_state["state"]:
        nb.metadata["widgets"] = {WIDGET_STATE_MIME: widget_state}
    else:
        nb.metadata.pop("widgets", None)


class OutputWidgets:
    """What a front end does for ``Output`` widgets, done for a batch run as nbclient does it.

    A front end tells the kernel what each ``Output`` widget captured (its ``outputs``), so
    later cells find it there (``out.outputs``, ``out.append_stdout(...)`` adds to it, a repr
    shows it). Pass :meth:`on_comm` to each cell's ``execute``, then :meth:`sync` after it.
    """

    def __init__(self) -> None:
        self._captured: set[str] = set()

    def on_comm(self, event: CommEvent) -> None:
        if event.msg_type == "output":
            self._captured.add(event.comm_id)

    async def sync(self, lease: Lease) -> None:
        """Send each Output widget that captured something since the last sync its ``outputs``."""
        captured, self._captured = self._captured, set()
        models = lease.widget_state()["state"]
        for comm_id in captured & set(models):
            update = {"method": "update", "state": {"outputs": models[comm_id]["state"]["outputs"]}, "buffer_paths": []}
            try:
                await lease.send_comm(comm_id, update)
            except CommNotFound:  # the kernel closed it meanwhile
                pass


def _finish(nb: Any, result: NotebookResult) -> None:
    meta = nb.metadata["papermill"]
    ended = _now()
    meta["end_time"] = ended.isoformat()
    meta["duration"] = (ended - datetime.datetime.fromisoformat(meta["start_time"])).total_seconds()
    meta["exception"] = True if result.status != PASSED else None
    for cell in nb.cells:  # as papermill: cells before the failure that had nothing to run completed
        status = cell.metadata["papermill"]["status"]
        if status in ("failed", "running"):
            break
        if status == "pending" and (result.status == PASSED or not _runnable(cell)):
            cell.metadata["papermill"]["status"] = "completed"
    result.notebook = nb
    if result.output_path is not None:
        result.output_path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, result.output_path)


# ---- running ------------------------------------------------------------------------------------


class _Runner:
    """One batch: pools by kernel (and directory, for non-Python kernels), ``jobs`` at a time."""

    def __init__(self, plans: list[_Plan], jobs: int, parameters: dict[str, Any], timeout: float | None,
                 cell_timeout: float | None, gateway_url: str | None, fail_fast: bool, progress: Progress | None):
        self.plans = plans
        self.jobs = jobs
        self.parameters = parameters
        self.timeout = timeout
        self.cell_timeout = cell_timeout
        self.gateway_url = gateway_url
        self.fail_fast = fail_fast
        self.progress = progress
        self.slots = asyncio.Semaphore(jobs)
        self.pools: dict[tuple[str, str | None], AsyncKernelPool] = {}
        self.left: dict[tuple[str, str | None], int] = {}
        self.releases: list[asyncio.Task[bool]] = []
        self.stopping = False
        self.tasks: list[asyncio.Task[NotebookResult]] = []

    def _report(self, event: str, result: NotebookResult) -> None:
        if self.progress is not None:
            self.progress(event, result)

    def _make_pools(self) -> None:
        for plan in self.plans:
            self.left[plan.pool_key] = self.left.get(plan.pool_key, 0) + 1
        for key, count in self.left.items():
            kernel, cwd = key
            prewarm = min(self.jobs, count)
            options: dict[str, Any] = {"kernel_name": kernel, "max_kernels": 2 * prewarm, "min_idle": prewarm,
                                       "checkout_timeout": None, "cwd": cwd}
            if self.gateway_url:
                options["gateway_url"] = self.gateway_url
            self.pools[key] = AsyncKernelPool(**options)

    async def run(self) -> list[NotebookResult]:
        self._make_pools()
        try:
            for pool in self.pools.values():
                await pool.start()
            for plan in self.plans:
                self._report("queued", plan.result)
            self.tasks = [asyncio.ensure_future(self._run_one(plan)) for plan in self.plans]
            try:
                await asyncio.gather(*self.tasks)
            except asyncio.CancelledError:  # Ctrl-C: every run writes what it ran, then we stop
                for task in self.tasks:
                    task.cancel()
                await asyncio.gather(*self.tasks, return_exceptions=True)
                raise
            return [task.result() for task in self.tasks]
        finally:
            await asyncio.gather(*self.releases, return_exceptions=True)
            await asyncio.gather(*(pool.shutdown() for pool in self.pools.values()), return_exceptions=True)

    async def _run_one(self, plan: _Plan) -> NotebookResult:
        result = plan.result
        try:
            async with self.slots:
                if self.stopping:
                    result.status = SKIPPED
                    return result
                await self._execute(plan)
        except asyncio.CancelledError:
            if result.status == "pending":
                result.status = SKIPPED
        if result.status == SKIPPED:
            self._report("done", result)
        return result

    async def _execute(self, plan: _Plan) -> None:
        result, nb = plan.result, plan.nb
        pool = self.pools[plan.pool_key]
        session = f"batch-{uuid.uuid4().hex[:12]}"
        _reset(nb, self.parameters, result)
        started = time.monotonic()
        result.status = RUNNING
        self._report("start", result)
        try:
            async with pool.checkout(session) as lease:
                self.left[plan.pool_key] -= 1
                pool.min_idle = min(self.jobs, self.left[plan.pool_key])  # never prewarm a kernel nobody will use
                started = time.monotonic()
                try:
                    await self._cells(plan, lease, started)
                finally:
                    set_widgets_metadata(nb, lease.widget_state())
        except asyncio.CancelledError:
            result.status = INTERRUPTED
            result.error = result.error or "interrupted"
        except PoolError as exc:  # the kernel could not start, or the pool closed under us
            result.status, result.error = FAILED, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        finally:
            self.releases.append(asyncio.ensure_future(pool.release(session)))
            if result.status == RUNNING:
                result.status = PASSED
            result.duration = time.monotonic() - started
            _finish(nb, result)
            if result.status != PASSED and self.fail_fast and not self.stopping:
                self._stop_others()
            if result.status != SKIPPED:
                self._report("done", result)

    def _stop_others(self) -> None:
        self.stopping = True
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()

    async def _cells(self, plan: _Plan, lease: Lease, started: float) -> None:
        result, nb = plan.result, plan.nb
        deadline = None if self.timeout is None else started + self.timeout
        if lease.client is not None:  # local kernels: nbclient's language_info, from a kernel_info reply
            info = await _language_info(lease.client)
            if info:
                nb.metadata["language_info"] = info
        if plan.cwd is not None:
            moved = await lease.execute(f"__import__('os').chdir({plan.cwd!r})", timeout=60, store_history=False)
            if moved.status != "ok":
                result.status, result.error = FAILED, f"cannot change to the notebook's directory: {moved.error['evalue']}"
                return
        shown: dict[str, list[tuple[Any, int]]] = {}  # display id -> (cell, output index), across cells
        widgets = OutputWidgets()

        def fill(cell: Any, run: ExecutionResult, t0: datetime.datetime) -> None:
            fill_cell(cell, run, t0, _now())
            carry_displays(shown, cell, run)

        for index, cell in enumerate(nb.cells):
            if not _runnable(cell):
                continue
            limit, which = self.cell_timeout, "cell"
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    result.status, result.error = TIMEOUT, f"notebook timed out after {self.timeout:g} s before cell {index}"
                    return
                if limit is None or remaining < limit:
                    limit, which = remaining, "notebook"
            cell.metadata["papermill"].update(status="running", start_time=_now().isoformat(), exception=False)
            t0 = _now()
            try:
                run = await lease.execute(cell.source, timeout=limit, on_comm=widgets.on_comm)
            except ExecutionTimeout as exc:
                fill(cell, exc.result, t0)
                total = self.cell_timeout if which == "cell" else self.timeout
                result.status, result.error = TIMEOUT, f"cell {index}: {which} timed out after {total:g} s"
                return
            except KernelDied as exc:
                if exc.result is not None:
                    fill(cell, exc.result, t0)
                result.status, result.error = DIED, f"cell {index}: the kernel died"
                return
            fill(cell, run, t0)
            await widgets.sync(lease)
            result.cells += 1
            self._report("cell", result)
            if run.status != "ok" and "raises-exception" not in cell.metadata.get("tags", []):
                err = run.error or {}
                result.status = FAILED
                result.error = f"cell {index}: {err.get('ename', run.status)}: {err.get('evalue', '')}".rstrip(": ")
                result.traceback = list(err.get("traceback") or [])
                return


async def _language_info(client: Any, timeout: float = 30) -> dict[str, Any] | None:
    """Ask a held, idle kernel for kernel_info on its own client (no cell runs on it meanwhile)."""
    msg_id = client.kernel_info()
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        try:
            reply = await client.get_shell_msg(timeout=left)
        except Exception:  # queue.Empty on timeout
            break
        if reply["parent_header"].get("msg_id") == msg_id:  # else a stale reply from the health check
            return reply["content"].get("language_info")
    return None


async def run_notebooks_async(
    paths: Iterable[str | os.PathLike[str]],
    *,
    jobs: int | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    inplace: bool = False,
    parameters: dict[str, Any] | None = None,
    timeout: float | None = None,
    cell_timeout: float | None = None,
    kernel_name: str | None = None,
    gateway_url: str | None = None,
    fail_fast: bool = False,
    progress: Progress | None = None,
) -> list[NotebookResult]:
    """Run notebooks ``jobs`` at a time (default: the cores), each on a fresh kernel of its own.

    ``paths`` are notebooks or directories (searched recursively). Each notebook runs with its
    own directory as working directory, ``parameters`` injected the papermill way, and is
    written to ``output_dir`` under its own name (its path relative to a named directory),
    over itself only with ``inplace``, or not at all when neither is given. ``timeout``
    bounds a whole notebook and ``cell_timeout`` each cell (seconds); a notebook that fails,
    times out or kills its kernel is written up to and including that cell. With
    ``fail_fast`` the first failure stops the others. Results come back in input order.
    Raises UsageError before any kernel starts if the request is wrong. If cancelled (Ctrl-C),
    every run writes what it ran and no kernel is left; ``progress`` has seen each result.
    """
    if jobs is None:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"jobs must be a whole number of at least 1, got {jobs!r}")
    for name, value in (("timeout", timeout), ("cell timeout", cell_timeout)):
        try:
            check_timeout(value, name)
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    if gateway_url and "gateway_url" not in AsyncKernelPool.class_trait_names():
        raise UsageError("a gateway URL needs the gateway worker, which this installation does not have")
    parameters = dict(parameters or {})
    plans = _plan(paths, output_dir, inplace, parameters, kernel_name, bool(gateway_url))
    return await _Runner(plans, jobs, parameters, timeout, cell_timeout, gateway_url, fail_fast, progress).run()


def run_notebooks(paths: Iterable[str | os.PathLike[str]], **options: Any) -> list[NotebookResult]:
    """Blocking :func:`run_notebooks_async` (same arguments); works inside a running event loop too."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_notebooks_async(paths, **options))
    box: dict[str, Any] = {}

    def target() -> None:  # a Jupyter kernel's loop is running here: use a thread of our own
        try:
            box["value"] = asyncio.run(run_notebooks_async(paths, **options))
        except BaseException as exc:  # noqa: B036 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="jupyter_sessionpool-batch")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
