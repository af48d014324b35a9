"""Run many notebooks at once, each on a fresh prewarmed kernel of its own.

Built on :class:`AsyncKernelPool`'s public API only: every notebook checks out a session of
its own (so it gets a fresh kernel, never one that ran another notebook), runs its code
cells on that lease one after the other, and releases the session. The pool keeps
``min(jobs, notebooks left)`` kernels prewarmed, so the next notebook's kernel has started
while the current ones run, and no kernel is started that no notebook will use.

Parameters are taken and injected as papermill takes and injects them, and executed
notebooks are written as papermill writes them: nbclient's outputs, execution counts and
``execution`` timing metadata, papermill's ``papermill`` metadata and its error banner
cells, so papermill and nbclient users read them alike.

A request that cannot work is refused with :class:`UsageError` before any kernel starts;
what can only go wrong for one notebook (its output cannot be written, its kernel will not
start) is that notebook's result, and the others run on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import datetime
import keyword
import math
import os
import threading
import time
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nbformat
import yaml
from jupyter_client.kernelspec import KernelSpecManager

from ._setup import python_setup_code
from ._version import __version__
from .comms import WIDGET_STATE_MIME, CommEvent
from .config import check_timeout
from .errors import CommNotFound, ExecutionTimeout, KernelDied, PoolError, SessionLost
from .pool import AsyncKernelPool, Lease
from .workers import check_kernelspec
from .results import ExecutionResult

PASSED, FAILED, TIMEOUT, DIED, INTERRUPTED, SKIPPED = "passed", "failed", "timeout", "died", "interrupted", "skipped"
ERROR = "error"
"""The run could not do its part for this notebook: its kernel would not start, or its output could not be written."""
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


# ---- parameters, taken as papermill's command line takes them ------------------------------------


class _NoDatesSafeLoader(yaml.SafeLoader):
    """YAML's safe loader without its timestamp resolver: ``2024-01-01`` stays a string, as in papermill."""

    yaml_implicit_resolvers = {
        k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_CONSTANTS = {"True": True, "False": False, "None": None}


def parse_value(text: str) -> Any:
    """A ``-p NAME VALUE`` value by papermill's rules (its CLI's ``_resolve_type``).

    ``True``/``False``/``None`` are those; what ``int()`` takes is an int (``0123`` is 123),
    else what ``float()`` takes is a float (``nan``, ``1e3``, ``inf``), else it is the string
    as given (``[1, 2]`` and ``'quoted'`` included). ``-r`` takes a value as a string always.
    """
    if text in _CONSTANTS:
        return _CONSTANTS[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _yaml_mapping(text: str | bytes, what: str) -> dict[Any, Any]:
    try:
        data = yaml.load(text, Loader=_NoDatesSafeLoader)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"{what} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{what} must hold a mapping of names to values, not a {type(data).__name__}")
    return data


def load_parameters_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a ``-f params.yaml`` file; UsageError if it is missing, not YAML, or not a mapping."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read parameters file {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    return _yaml_mapping(text, f"parameters file {str(path)!r}")


def collect_parameters(
    *,
    base64_yaml: Iterable[str] = (),
    files: Iterable[str | os.PathLike[str]] = (),
    yaml_text: Iterable[str] = (),
    values: Iterable[tuple[str, str]] = (),
    raw: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The parameters of papermill's ``-b``, ``-f``, ``-y``, ``-p`` and ``-r`` options, merged as papermill merges them.

    Later kinds win over earlier ones in that order (a ``-r`` value over a ``-p`` value over
    ``-y`` YAML over a ``-f`` file over ``-b`` base64 YAML), and within a kind the later one.
    """
    merged: dict[str, Any] = {}
    for i, text in enumerate(base64_yaml, 1):
        try:
            decoded = base64.b64decode(text)  # as papermill: what is not base64's alphabet (line breaks) is skipped
        except (binascii.Error, ValueError):
            raise UsageError(f"-b value #{i} is not base64: {text[:40]!r}") from None
        merged.update(_yaml_mapping(decoded, f"-b value #{i} (decoded)"))
    for path in files:
        merged.update(load_parameters_file(path))
    for i, text in enumerate(yaml_text, 1):
        merged.update(_yaml_mapping(text, f"-y value #{i}"))
    merged.update((name, parse_value(value)) for name, value in values)
    merged.update(raw)
    return merged


_SCALARS = (str, bool, int, float, type(None))


def _check_value(value: Any, where: str) -> None:
    """UsageError unless ``value`` can be written both into the notebook's JSON and as Python source."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{where} holds text that is not valid Unicode (a lone surrogate, as undecodable "
                             "bytes in a command-line argument become); a notebook cannot store it") from None
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise UsageError(f"{where} has a key {key!r}: keys must be strings (or whole numbers)")
            _check_value(key, f"{where} key")
            _check_value(item, f"{where}[{key!r}]")
    elif not isinstance(value, _SCALARS):
        raise UsageError(f"{where} is a {type(value).__name__} ({value!r:.60}): a notebook parameter must be a "
                         "string, number, boolean, None, or a list or mapping of these")


def _check_parameters(parameters: dict[str, Any]) -> None:
    for name, value in parameters.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise UsageError(f"parameter name {name!r} is not a valid Python identifier")
        if keyword.iskeyword(name) or name == "__debug__":
            raise UsageError(f"parameter name {name!r} is a Python keyword; it cannot be assigned to")
        _check_value(value, f"parameter {name!r}")


def _python_literal(value: Any) -> str:
    """``value`` as Python source, the way papermill's PythonTranslator writes it."""
    if isinstance(value, str):
        return '"{}"'.format(value.encode("unicode_escape").decode("utf-8").replace('"', r"\""))
    if isinstance(value, float) and not math.isfinite(value):
        return "float('nan')" if math.isnan(value) else "float('-inf')" if value < 0 else "float('inf')"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_python_literal(str(k))}: {_python_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_python_literal(v) for v in value) + "]"
    return str(value)  # None, bool, int, float


def _json_safe(value: Any) -> Any:
    """``value`` for the notebook's metadata: a float nan/inf (no JSON for it) as its ``-p`` spelling.

    Papermill writes ``NaN`` there, which Python's json reads but a browser's ``JSON.parse``
    (JupyterLab opening the notebook) refuses.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


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


# ---- planning: everything that can be wrong with the request, before any kernel starts ---------


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


def check_directory(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` resolved, if it is a writable directory or can be made one; UsageError naming the problem otherwise."""
    target = Path(path).resolve()
    existing = target
    while not existing.exists():  # the first ancestor that exists is where the directory would be made
        existing = existing.parent
    if existing == target and not existing.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a file, not a directory")
    if not existing.is_dir():
        raise UsageError(f"{what} {str(path)!r} cannot be made: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {str(path)!r} is not writable: no write permission in {str(existing)!r}")
    return target


def check_output_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` resolved, if a file can be written there (its directory made if need be); UsageError otherwise."""
    target = Path(path).resolve()
    if target.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a directory, not a file")
    if target.exists() and not os.access(target, os.W_OK):
        raise UsageError(f"{what} {str(path)!r} is not writable")
    check_directory(target.parent, f"the directory of {what}")
    return target


@dataclass
class _Plan:
    """One notebook ready to run: its parameterised copy, its kernel, where it goes."""

    result: NotebookResult
    nb: Any
    kernel_name: str
    cwd: str | None  # chdir into it with a hidden first cell (Python kernels, local)
    pool_key: tuple[str, str | None]


def _plan(
    paths: Iterable[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str] | None,
    inplace: bool,
    parameters: dict[str, Any],
    kernel_name: str | None,
    remote: bool,
) -> list[_Plan]:
    if inplace and output_dir is not None:
        raise UsageError("give either an output directory or inplace, not both")
    out = check_directory(output_dir, "output directory") if output_dir is not None else None
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
        if parameters and not python:
            raise UsageError(f"parameters can only be injected into Python notebooks; {str(path)!r} runs {kernel!r}")
        if not isinstance(nb.metadata.get("papermill", {}), dict):
            raise UsageError(f"notebook {str(path)!r} has papermill metadata that is not a mapping; remove it")
        nb = _prepare(nb, parameters)
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


# ---- writing notebooks the way papermill (on nbclient) does --------------------------------------

ERROR_MARKER_TAG = "papermill-error-cell-tag"
_ERROR_STYLE = 'style="color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;"'
_ERROR_MESSAGE = f"<span {_ERROR_STYLE}>An Exception was encountered at '<a href=\"#papermill-error-cell\">In [%s]</a>'.</span>"
_ERROR_ANCHOR = (f'<span id="papermill-error-cell" {_ERROR_STYLE}>'
                 "Execution using papermill encountered an exception here and stopped:</span>")


def _prepare(nb: Any, parameters: dict[str, Any]) -> Any:
    """The notebook as papermill has it before a run: its ``papermill`` metadata (the input's
    own kept, else papermill's fresh one), every cell tagged, parameters injected, and the
    error banners of an earlier run removed."""
    nb = nbformat.v4.upgrade(nb)
    if "papermill" not in nb.metadata:
        nb.metadata["papermill"] = {"default_parameters": {}, "parameters": {}, "environment_variables": {},
                                    "version": __version__}
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    if parameters:
        nb = inject_parameters(nb, parameters)
        nb.metadata["papermill"]["parameters"] = _json_safe(parameters)
    nb.cells = [cell for cell in nb.cells if ERROR_MARKER_TAG not in cell.metadata.get("tags", [])]
    return nb


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _stamp(t: datetime.datetime) -> str:
    """nbclient's ``record_timing`` format."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _start_notebook(nb: Any, result: NotebookResult) -> None:
    """Clear outputs and set the metadata a run starts with (papermill's ``notebook_start``)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.execution_count = None
            cell.outputs = []
        cell.metadata["papermill"] = {"exception": None, "start_time": None, "end_time": None, "duration": None,
                                      "status": "pending"}
    nb.metadata["papermill"].update(
        input_path=str(result.path),
        output_path=str(result.output_path) if result.output_path else None,
        start_time=_now().isoformat(),
        end_time=None,
        duration=None,
        exception=None,
    )


def _start_cell(cell: Any) -> None:
    cell.metadata["papermill"].update(start_time=_now().isoformat(), status="running", exception=False)


def _fail_cell(nb: Any, cell: Any) -> None:
    cell.metadata["papermill"].update(exception=True, status="failed")
    nb.metadata["papermill"]["exception"] = True


def _complete_cell(cell: Any) -> None:
    meta = cell.metadata["papermill"]
    ended = _now()
    meta.update(end_time=ended.isoformat(), duration=(ended - datetime.datetime.fromisoformat(meta["start_time"])).total_seconds())
    if meta["status"] != "failed":
        meta["status"] = "completed"


def fill_cell(cell: Any, result: ExecutionResult, started: datetime.datetime, ended: datetime.datetime,
              idle: bool = True) -> None:
    """Write one cell's result into its notebook cell, as nbclient would have.

    nbclient stamps ``execution`` with the messages a cell got: ``iopub.status.busy`` and
    ``iopub.execute_input`` when it began, ``shell.execute_reply`` and ``iopub.status.idle``
    when it ended. So do we, with this process's clock around the request (the batch runs
    on the pool's public API, which hands back outputs, not message headers; same machine,
    within milliseconds of the kernel's own), and only for what arrived: a cell whose
    kernel died has no reply, and ``idle=False`` says its idle never came either. Updates of
    displays shown by earlier cells are carried over by :func:`carry_displays`.
    """
    cell.execution_count = result.execution_count
    cell.outputs = [nbformat.from_dict(copy.deepcopy(out)) for out in result.outputs]
    timing = {}
    if result.execution_count is not None:  # execute_input carries the count; busy came before it
        timing.update({"iopub.status.busy": _stamp(started), "iopub.execute_input": _stamp(started)})
    if result.status != "incomplete":  # the execute_reply came
        timing["shell.execute_reply"] = _stamp(ended)
    if idle:
        timing["iopub.status.idle"] = _stamp(ended)
    cell.metadata["execution"] = timing


def carry_displays(shown: dict[str, list[tuple[Any, int]]], cell: Any, result: ExecutionResult) -> None:
    """Apply ``result``'s display updates to earlier cells' outputs of the same display id, as
    nbclient does, then remember this cell's own outputs with ids (``shown`` spans the notebook)."""
    for display_id, latest in result.displays.items():
        for earlier, i in shown.get(display_id, []):
            if earlier is not cell:
                earlier.outputs[i]["data"] = copy.deepcopy(latest["data"])
                earlier.outputs[i]["metadata"] = copy.deepcopy(latest["metadata"])
        shown.setdefault(display_id, []).extend((cell, i) for i in latest["outputs"])


def _mark_error(nb: Any, failed: int) -> None:
    """Papermill's banners for a failed notebook: a note at the top linking to an anchor
    just before the cell that failed (index ``failed``)."""
    message = nbformat.v4.new_markdown_cell(_ERROR_MESSAGE % str(nb.cells[failed].execution_count))
    message.metadata["tags"] = [ERROR_MARKER_TAG]
    anchor = nbformat.v4.new_markdown_cell(_ERROR_ANCHOR)
    anchor.metadata["tags"] = [ERROR_MARKER_TAG]
    nb.cells.insert(failed, anchor)
    nb.cells.insert(0, message)


def _unwritable(target: Path) -> str | None:
    """Why the executed notebook could not be written to ``target`` (its directory made now), or None."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        return f"cannot create {str(target.parent)!r}: a file is in the way"
    except OSError as exc:
        return f"cannot create {str(target.parent)!r}: {exc.strerror or exc}"
    if target.is_dir():
        return f"cannot write {str(target)!r}: it is a directory"
    if not os.access(target if target.exists() else target.parent, os.W_OK):
        return f"cannot write {str(target)!r}: permission denied"
    return None


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


def _finish(nb: Any, result: NotebookResult, failed: int | None) -> None:
    """End the run's metadata (papermill's ``notebook_complete``), add the error banners if the
    notebook failed at cell ``failed``, and write it; a write that fails is this notebook's error."""
    meta = nb.metadata["papermill"]
    ended = _now()
    meta["end_time"] = ended.isoformat()
    meta["duration"] = (ended - datetime.datetime.fromisoformat(meta["start_time"])).total_seconds()
    if result.status != PASSED:
        meta["exception"] = True
    if result.status == FAILED and failed is not None:
        _mark_error(nb, failed)
    result.notebook = nb
    if result.output_path is None:
        return
    try:
        result.output_path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, result.output_path)
    except Exception as exc:  # a full disk, a path that became a directory...: this notebook's error only
        reason = f"cannot write the executed notebook to {str(result.output_path)!r}: {_oneline(exc)}"
        if result.status == PASSED:
            result.status, result.error = ERROR, reason
        else:
            result.error = f"{result.error}; {reason}"


def _oneline(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


# ---- running ------------------------------------------------------------------------------------


class _Runner:
    """One batch: pools by kernel (and directory, for non-Python kernels), ``jobs`` at a time."""

    def __init__(self, plans: list[_Plan], jobs: int, timeout: float | None, cell_timeout: float | None,
                 gateway_url: str | None, fail_fast: bool, progress: Progress | None):
        self.plans = plans
        self.jobs = jobs
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

    def _not_needed(self, plan: _Plan) -> None:
        """One notebook fewer will check out a kernel of its pool: never prewarm one nobody will use."""
        self.left[plan.pool_key] -= 1
        self.pools[plan.pool_key].min_idle = min(self.jobs, self.left[plan.pool_key])

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
        """Run one notebook; whatever goes wrong with it is its result, never the whole run's end."""
        result = plan.result
        try:
            async with self.slots:
                if self.stopping:
                    result.status = SKIPPED
                    self._not_needed(plan)
                    return result
                await self._execute(plan)
        except asyncio.CancelledError:
            if result.status == "pending":
                result.status = SKIPPED
        except Exception as exc:  # a fault of ours: keep it to this notebook, with its traceback
            result.status, result.error = ERROR, f"internal error: {_oneline(exc)}"
            result.traceback = traceback.format_exception(exc)
            self._report("done", result)
        if result.status == SKIPPED:
            self._report("done", result)
        return result

    async def _execute(self, plan: _Plan) -> None:
        result, nb = plan.result, plan.nb
        unwritable = _unwritable(result.output_path) if result.output_path is not None else None
        if unwritable is not None:  # found before its kernel is taken: the notebook is not run for nothing
            self._not_needed(plan)
            result.status, result.error = ERROR, unwritable
            self._report("done", result)
            return
        pool = self.pools[plan.pool_key]
        session = f"batch-{uuid.uuid4().hex[:12]}"
        _start_notebook(nb, result)
        started = time.monotonic()
        failed: int | None = None
        result.status = RUNNING
        self._report("start", result)
        try:
            async with pool.checkout(session) as lease:
                self._not_needed(plan)
                started = time.monotonic()
                try:
                    failed = await self._cells(plan, lease, started)
                finally:
                    set_widgets_metadata(nb, lease.widget_state())
        except asyncio.CancelledError:
            result.status = INTERRUPTED
            result.error = result.error or "interrupted"
        except PoolError as exc:  # the kernel could not start, or the pool closed under us
            result.status, result.error = ERROR, _oneline(exc)
        finally:
            self.releases.append(asyncio.ensure_future(pool.release(session)))
            if result.status == RUNNING:
                result.status = PASSED
            result.duration = time.monotonic() - started
            _finish(nb, result, failed)
            if result.status != PASSED and self.fail_fast and not self.stopping:
                self._stop_others()
            self._report("done", result)

    def _stop_others(self) -> None:
        self.stopping = True
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()

    async def _cells(self, plan: _Plan, lease: Lease, started: float) -> int | None:
        """Run the notebook's cells in order, as papermill does (every cell started and
        completed, code cells executed); return the index of the cell that failed, if any."""
        result, nb = plan.result, plan.nb
        deadline = None if self.timeout is None else started + self.timeout
        info = (lease.kernel_info or {}).get("language_info")  # nbclient's, from the kernel's kernel_info reply
        if info:
            nb.metadata["language_info"] = info
        if plan.cwd is not None:
            moved = await lease.execute(python_setup_code(cwd=plan.cwd), timeout=60, store_history=False)
            if moved.status != "ok":
                result.status, result.error = FAILED, f"cannot change to the notebook's directory: {moved.error['evalue']}"
                return None
        shown: dict[str, list[tuple[Any, int]]] = {}  # display id -> (cell, output index), across cells
        widgets = OutputWidgets()
        for index, cell in enumerate(nb.cells):
            limit, which = self.cell_timeout, "cell"
            if deadline is not None and _runnable(cell):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    result.status, result.error = TIMEOUT, f"notebook timed out after {self.timeout:g} s before cell {index}"
                    return None
                if limit is None or remaining < limit:
                    limit, which = remaining, "notebook"
            _start_cell(cell)
            try:
                if _runnable(cell) and await self._cell(plan, lease, index, limit, which, shown, widgets):
                    _fail_cell(nb, cell)
                    return index
            except asyncio.CancelledError:
                _fail_cell(nb, cell)
                raise
            finally:
                _complete_cell(cell)
        return None

    async def _cell(self, plan: _Plan, lease: Lease, index: int, limit: float | None, which: str,
                    shown: dict[str, list[tuple[Any, int]]], widgets: OutputWidgets) -> bool:
        """Run one code cell and write it; True if the notebook stops here."""
        result, cell = plan.result, plan.nb.cells[index]
        t0 = _now()
        try:
            run = await lease.execute(cell.source, timeout=limit, on_comm=widgets.on_comm)
        except ExecutionTimeout as exc:
            fill_cell(cell, exc.result, t0, _now(), idle=not exc.restarted)
            carry_displays(shown, cell, exc.result)
            total = self.cell_timeout if which == "cell" else self.timeout
            result.status, result.error = TIMEOUT, f"cell {index}: {which} timed out after {total:g} s"
            return True
        except (KernelDied, SessionLost) as exc:  # SessionLost: it died between cells, before this one was sent
            if isinstance(exc, KernelDied) and exc.result is not None:
                fill_cell(cell, exc.result, t0, _now(), idle=False)
            else:
                cell.metadata["execution"] = {}
            result.status, result.error = DIED, f"cell {index}: the kernel died"
            return True
        fill_cell(cell, run, t0, _now())
        carry_displays(shown, cell, run)
        await widgets.sync(lease)
        result.cells += 1
        self._report("cell", result)
        if run.status == "ok" or "raises-exception" in cell.metadata.get("tags", []):
            return False
        err = run.error or {}
        if err.get("ename") == "SystemExit" and err.get("evalue") in ("", "0"):
            return True  # papermill: sys.exit(), sys.exit(0), raise SystemExit end the notebook, which passes
        result.status = FAILED
        result.error = f"cell {index}: {err.get('ename', run.status)}: {err.get('evalue', '')}".rstrip(": ")
        result.traceback = list(err.get("traceback") or [])
        return True


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

    Raises UsageError before any kernel starts if the request is wrong (a missing notebook,
    a parameter that is no Python name or cannot be written into a notebook, an output
    directory that is a file...). What can only fail for one notebook (its output path
    cannot be written, its kernel will not start) is that notebook's ``error`` result. If
    cancelled (Ctrl-C), every run writes what it ran and no kernel is left; ``progress`` has
    seen each result.
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
    plans = _plan(paths, output_dir, inplace, dict(parameters or {}), kernel_name, bool(gateway_url))
    return await _Runner(plans, jobs, timeout, cell_timeout, gateway_url, fail_fast, progress).run()


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
