"""run_notebooks: the same notebooks as papermill writes them, each on a fresh kernel of its own.

Real kernels throughout; papermill (the reference) runs the same notebooks, each with its
own command, and the written notebooks are compared field by field.
"""

from __future__ import annotations

import base64
import datetime
import concurrent.futures
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import nbformat
import psutil
import pytest

from poolkit import kernels_below
from slicedpoll import PRELUDE
from widgetkit import WIDGET_STATE, widget_models

from jupyter_sessionpool import __version__
from jupyter_sessionpool.batch import (
    DIED,
    ERROR,
    FAILED,
    PASSED,
    SKIPPED,
    TIMEOUT,
    UsageError,
    collect_parameters,
    inject_parameters,
    load_parameters_file,
    parse_value,
    run_notebooks,
)
from jupyter_sessionpool.cli import main

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def notebook(path: Path, *cells: str | tuple[str, list[str]], markdown_first: bool = False) -> Path:
    """Write a notebook of code cells (``(source, tags)`` for tagged ones)."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    if markdown_first:
        nb.cells.append(nbformat.v4.new_markdown_cell("# a heading"))
    for cell in cells:
        source, tags = cell if isinstance(cell, tuple) else (cell, [])
        code = nbformat.v4.new_code_cell(source)
        if tags:
            code.metadata["tags"] = tags
        nb.cells.append(code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def kernels_of_this_process() -> list[psutil.Process]:
    return kernels_below()


# ---- the reference: papermill ---------------------------------------------------------------------

_ADDRESS = re.compile(r"0x[0-9a-f]{6,}")
PARAMETER_ARGS = ["-p", "alpha", "0123", "-p", "name", "'quoted'", "-p", "listy", "[1, 2]", "-p", "flag", "True",
                  "-r", "raw", "0123", "-y", "{items: [1, two, null], when: 2024-01-01}", "-f", "PARAMS"]
PARAMETERS = {"alpha": 123, "name": "'quoted'", "listy": "[1, 2]", "flag": True, "raw": "0123",
              "items": [1, "two", None], "when": "2024-01-01", "from_file": {"k": [1.5, None]}}


def comparable(path: Path) -> dict:
    """A written notebook as papermill and we must agree on it, field by field.

    Left out: what differs between any two runs (cell ids, times, durations, the paths, the
    writer's version) and memory addresses; the ``execution`` timing stamps are kept as the
    set of keys written. Consecutive stream outputs of one name are merged (nbclient keeps
    each message as an output, the pool merges them; a front end shows them the same).
    """
    nb = json.loads(path.read_text())
    meta = nb["metadata"]["papermill"]
    for key in ("start_time", "end_time", "duration", "input_path", "output_path", "version"):
        meta.pop(key, None)
    for cell in nb["cells"]:
        cell.pop("id", None)
        cell["source"] = "".join(cell["source"])
        for key in ("start_time", "end_time", "duration"):
            cell["metadata"].get("papermill", {}).pop(key, None)
        if "execution" in cell["metadata"]:
            cell["metadata"]["execution"] = sorted(cell["metadata"]["execution"])
        outputs = []
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = "".join(out["text"])
            for key, value in out.get("data", {}).items():
                out["data"][key] = _ADDRESS.sub("0x…", "".join(value) if isinstance(value, list) else str(value))
            if outputs and out["output_type"] == "stream" and outputs[-1].get("name") == out.get("name"):
                outputs[-1]["text"] += out["text"]
            else:
                outputs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outputs
    return nb


def papermill(source: Path, target: Path, args: list[str]) -> int:
    """papermill's own command on one notebook; its exit status (1 when the notebook fails, 138 when its kernel died).

    Its waits are made in slices (tests/slicedpoll.py says why).
    """
    cmd = [sys.executable, "-c", PRELUDE + "; from papermill.cli import papermill; papermill()", str(source), str(target), "--cwd", str(source.parent),
           "--no-progress-bar", *args]
    target.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=240).returncode


def reader_notebooks(src: Path) -> None:
    """Notebooks in two directories, each reading a data file and a module next to itself."""
    for sub in ("one", "two"):
        (src / sub).mkdir(parents=True)
        (src / sub / "data.txt").write_text(f"data of {sub}\n")
        (src / sub / "helper.py").write_text(f"WHERE = {sub!r}\n")


READER = "import helper\nprint(open('data.txt').read().strip(), helper.WHERE)"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same notebooks run by us (one command, -j 2) and by papermill (one command each), with the same parameters."""
    base = tmp_path_factory.mktemp("corpus")
    src = base / "src"
    reader_notebooks(src)
    notebook(
        src / "one" / "params.ipynb",
        ("alpha = 1\nname = 'default'", ["parameters"]),
        READER,
        "print('a', flush=True); import sys; print('err', file=sys.stderr, flush=True); print('b')",
        "from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))\nalpha * 2, name, listy, flag, raw",
        "",
        "progress = display('step 0', display_id=True)",
        "progress.update('step 1 of 1, from a later cell')",  # nbclient updates the earlier cell's output
        markdown_first=True,
    )
    notebook(src / "one" / "fails.ipynb", READER, "x = 1", "raise ValueError(f'bad {x}')", "print('never')",
             markdown_first=True)
    notebook(src / "two" / "noparams.ipynb", READER, "print(items, when)")
    rerun = notebook(src / "two" / "rerun.ipynb", ("a = 0", ["parameters"]), "print('rerun', a)")
    nb = nbformat.read(rerun, as_version=4)  # an earlier papermill output: its banners, injected cell and metrics
    nb.metadata["papermill"] = {"metrics": {"auc": 0.93}, "parameters": {"a": 5}}
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("old banner", metadata={"tags": ["papermill-error-cell-tag"]}))
    nb.cells.insert(2, nbformat.v4.new_code_cell("a = 5", metadata={"tags": ["injected-parameters"]}))
    nbformat.write(nb, rerun)
    exits = {"sys_exit": "import sys\nsys.exit()", "exit_zero": "raise SystemExit(0)", "bare": "raise SystemExit",
             "exit_one": "import sys\nsys.exit(1)", "exit_text": "raise SystemExit('stop here')"}
    for name, code in exits.items():
        notebook(src / "exits" / f"{name}.ipynb", "print('before')", code, "print('never after an exit')")
    notebook(src / "exits" / "dies.ipynb", "print('about to die', flush=True)",  # a moment for 'dying' to leave
             "import os, signal, time\nprint('dying', flush=True)\ntime.sleep(0.5)\nos.kill(os.getpid(), signal.SIGKILL)",
             "print('never')")
    params_file = base / "params.yaml"
    params_file.write_text("from_file: {k: [1.5, null]}\nalpha: 7  # -p wins\n")
    args = [str(params_file) if a == "PARAMS" else a for a in PARAMETER_ARGS]

    ours, theirs = base / "ours", base / "papermill"
    report = base / "report.xml"
    status = main(["run", str(src), "-o", str(ours), "-j", "2", "-q", "--junit-xml", str(report), *args])
    names = [nb_path.relative_to(src) for nb_path in sorted(src.rglob("*.ipynb"))]
    with ThreadPoolExecutor(3) as threads:  # a few at a time: the machine is shared
        codes = threads.map(lambda name: papermill(src / name, theirs / name, args), names)
        exit_codes = dict(zip(names, codes))
    return SimpleNamespace(src=src, ours=ours, theirs=theirs, status=status, exit_codes=exit_codes, report=report)


SAME_AS_PAPERMILL = ["one/params.ipynb", "one/fails.ipynb", "two/noparams.ipynb", "two/rerun.ipynb",
                     *(f"exits/{n}.ipynb" for n in ("sys_exit", "exit_zero", "bare", "exit_one", "exit_text"))]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", SAME_AS_PAPERMILL)
def test_written_notebooks_equal_papermills_field_by_field(corpus, name):
    """Outputs, counts, cell metadata (papermill status, timing keys, tags), papermill's
    metadata (parameters, its defaults, the input's own keys) and its error banners."""
    assert comparable(corpus.ours / name) == comparable(corpus.theirs / name)


@pytest.mark.timeout(300)
def test_pass_or_fail_as_papermill_decides_sys_exit_included(corpus):
    suite = ET.parse(corpus.report).getroot()
    statuses = {}
    for case in suite.iter("testcase"):
        name = str(Path(case.get("classname")).relative_to(corpus.src.resolve()) / case.get("name"))
        statuses[name] = "failed" if case.find("failure") is not None else "error" if case.find("error") is not None else "passed"
    for name in SAME_AS_PAPERMILL:  # papermill exits 0 for a notebook it passes, 1 for one that failed
        assert statuses[name] == {0: "passed", 1: "failed"}[corpus.exit_codes[Path(name)]], name
    assert {n for n, s in statuses.items() if s == "passed"} >= {"exits/sys_exit.ipynb", "exits/exit_zero.ipynb",
                                                                 "exits/bare.ipynb"}
    assert statuses["exits/exit_one.ipynb"] == statuses["exits/exit_text.ipynb"] == "failed"
    assert corpus.status == 1


@pytest.mark.timeout(300)
def test_papermill_metadata_parameters_and_banners(corpus):
    ours = nbformat.read(corpus.ours / "one" / "params.ipynb", as_version=4)
    meta = ours.metadata.papermill
    assert meta.parameters == PARAMETERS
    assert meta.default_parameters == {} and meta.environment_variables == {}
    assert meta.version == __version__ and meta.exception is None
    assert [c.metadata.tags for c in ours.cells][:3] == [[], ["parameters"], ["injected-parameters"]]
    injected = ours.cells[2].source
    assert "alpha = 123\n" in injected and "name = \"'quoted'\"\n" in injected and 'listy = "[1, 2]"\n' in injected
    theirs = nbformat.read(corpus.theirs / "one" / "params.ipynb", as_version=4)
    assert ours.metadata.language_info == theirs.metadata.language_info
    shown = [c for c in ours.cells if c.source.startswith("progress = display")][0]
    assert shown.outputs[0]["data"]["text/plain"] == "'step 1 of 1, from a later cell'"
    noparams = nbformat.read(corpus.ours / "two" / "noparams.ipynb", as_version=4)
    assert "data of two two" in noparams.cells[1].outputs[0]["text"]  # its own directory, not the first one's

    rerun = nbformat.read(corpus.ours / "two" / "rerun.ipynb", as_version=4)
    assert rerun.metadata.papermill.metrics == {"auc": 0.93}  # the input's own keys are kept
    assert "version" not in rerun.metadata.papermill  # papermill adds its defaults only to a notebook without any
    assert "old banner" not in [c.source for c in rerun.cells]

    failed = nbformat.read(corpus.ours / "one" / "fails.ipynb", as_version=4)
    banners = [i for i, c in enumerate(failed.cells) if "papermill-error-cell-tag" in c.metadata.get("tags", [])]
    assert banners == [0, 5]  # the note on top, the anchor right before the failing cell
    assert "An Exception was encountered at '<a href=\"#papermill-error-cell\">In [4]</a>'" in failed.cells[0].source
    assert failed.cells[6].source.startswith("raise ValueError") and failed.cells[6].execution_count == 4
    assert [c.metadata.papermill.status for c in failed.cells[1:] if "papermill" in c.metadata] == [
        "completed", "completed", "completed", "completed", "failed", "pending"]


@pytest.mark.timeout(300)
def test_a_dead_kernels_cell_has_only_the_timing_its_messages_gave(corpus):
    ours = nbformat.read(corpus.ours / "exits" / "dies.ipynb", as_version=4)
    theirs = nbformat.read(corpus.theirs / "exits" / "dies.ipynb", as_version=4)
    assert corpus.exit_codes[Path("exits/dies.ipynb")] == 138  # papermill's exit status for a dead kernel
    dead, began = ours.cells[2], {"iopub.status.busy", "iopub.execute_input"}
    # No reply, no idle: no message carried them. The cell's first messages came if its count did
    # (on a loaded machine a kernel can die before its iopub thread sends them).
    assert set(dead.metadata.execution) == (began if dead.execution_count is not None else set())
    assert set(theirs.cells[2].metadata.execution) <= began
    assert dead.metadata.papermill.status == "failed" and dead.metadata.papermill.exception is True
    assert [o["text"] for o in dead.outputs] in (["dying\n"], [])
    assert set(ours.cells[1].metadata.execution) == set(theirs.cells[1].metadata.execution)
    assert ours.metadata.papermill.exception is True
    assert not kernels_of_this_process()


def test_parameter_values_by_papermills_rules():
    from papermill.cli import _resolve_type

    for text in ["0123", "nan", "'quoted'", "[1, 2]", "True", "False", "None", "false", "1_000", " 7 ", "1e3",
                 "-inf", "1+2j", "{1, 2}", "0x10", "", "١٢", "3.0", "hello world"]:
        ours, theirs = parse_value(text), _resolve_type(text)
        assert type(ours) is type(theirs) and (ours == theirs or ours != ours and theirs != theirs), text


def test_parameters_merge_in_papermills_order(tmp_path):
    """-b, -f, -y, -p, -r, later wins: the same parameters papermill's --prepare-only records."""
    params = tmp_path / "p.yaml"
    params.write_text("a: file\nb: file\nc: file\nd: file\nwhen: 2024-01-02\n")
    encoded = base64.b64encode(b"a: b64\nb: b64\nz: [1, 2]\n").decode()
    args = ["-b", encoded, "-f", str(params), "-y", "b: yaml\nc: yaml", "-p", "c", "12", "-p", "d", "x",
            "-r", "d", "raw", "-r", "e", "True", "-y", "f: {g: 1}"]
    nb = notebook(tmp_path / "nb.ipynb", "1")
    done = subprocess.run([sys.executable, "-m", "papermill", str(nb), str(tmp_path / "out.ipynb"), "--prepare-only",
                           *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    prepared = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    theirs = prepared.metadata.papermill.parameters
    ours = collect_parameters(base64_yaml=[encoded], files=[params], yaml_text=["b: yaml\nc: yaml", "f: {g: 1}"],
                              values=[("c", "12"), ("d", "x")], raw=[("d", "raw"), ("e", "True")])
    assert ours == theirs == {"a": "file", "b": "yaml", "c": 12, "d": "raw", "e": "True", "f": {"g": 1},
                              "when": "2024-01-02", "z": [1, 2]}
    injected = inject_parameters(nbformat.read(nb, as_version=4), ours).cells[0]  # in the same order, written the same
    assert injected.source == prepared.cells[0].source and injected.metadata == {"tags": ["injected-parameters"]}


def test_each_notebook_gets_a_fresh_kernel_of_its_own(tmp_path):
    for i in range(3):
        notebook(tmp_path / f"nb{i}.ipynb", "import os\nprint(os.getpid())", "print('seen' if 'mark' in dir() else 'fresh')\nmark = 1")
    results = run_notebooks([tmp_path], jobs=1)  # one at a time: a reused kernel would show
    assert all(r.status == PASSED for r in results)
    pids = {r.notebook.cells[0].outputs[0]["text"] for r in results}
    assert len(pids) == 3
    assert [r.notebook.cells[1].outputs[0]["text"] for r in results] == ["fresh\n"] * 3
    assert results[0].output_path is None and not list(tmp_path.glob("**/out*"))  # nothing written unless asked


def test_timeouts_and_a_killed_kernel_are_reported_and_the_others_finish(tmp_path):
    src = tmp_path / "src"
    notebook(src / "hangs.ipynb", "print('before the hang')", "import time\nprint('hanging', flush=True)\ntime.sleep(600)", "print('never')")
    notebook(src / "slow.ipynb", *["import time; time.sleep(1.5)"] * 6)
    notebook(src / "dies.ipynb", "print('about to die', flush=True)", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    notebook(src / "fine.ipynb", "print('fine')", "40 + 2")
    out = tmp_path / "out"
    results = {r.name: r for r in run_notebooks([src], output_dir=out, jobs=4, timeout=6, cell_timeout=3)}

    hung = results["hangs.ipynb"]
    assert hung.status == TIMEOUT and "cell timed out after 3 s" in hung.error
    written = nbformat.read(out / "hangs.ipynb", as_version=4)  # partial outputs kept, up to the hung cell
    assert written.cells[0].outputs[0]["text"] == "before the hang\n"
    assert "hanging" in written.cells[1].outputs[0]["text"]
    assert written.cells[1].metadata.papermill.status == "failed" and written.cells[2].outputs == []
    assert "iopub.status.idle" in written.cells[1].metadata.execution  # interrupted, it ended: its idle came

    slow = results["slow.ipynb"]
    assert slow.status == TIMEOUT and "notebook timed out after 6 s" in slow.error and slow.cells < 6

    died = results["dies.ipynb"]
    assert died.status == DIED and "cell 1" in died.error
    dead = nbformat.read(out / "dies.ipynb", as_version=4)
    assert dead.cells[0].outputs[0]["text"] == "about to die\n"
    began = {"iopub.status.busy", "iopub.execute_input"} if dead.cells[1].execution_count is not None else set()
    assert set(dead.cells[1].metadata.execution) == began  # no reply, no idle came

    fine = results["fine.ipynb"]
    assert fine.status == PASSED and fine.notebook.cells[1].outputs[0]["data"]["text/plain"] == "42"
    assert not kernels_of_this_process()


def test_fail_fast_skips_the_rest(tmp_path):
    notebook(tmp_path / "a.ipynb", "1/0")
    notebook(tmp_path / "b.ipynb", "print('b ran')")
    results = run_notebooks([tmp_path / "a.ipynb", tmp_path / "b.ipynb"], jobs=1, fail_fast=True)
    assert [r.status for r in results] == [FAILED, SKIPPED]
    assert results[1].cells == 0


def test_an_output_path_that_cannot_be_written_fails_only_its_notebook(tmp_path):
    """A directory where b's output goes: b is an error (not run), the others pass and are written.
    c turns its own output path into a directory while it runs: its write fails, alone."""
    src, out = tmp_path / "src", (tmp_path / "out").resolve()
    notebook(src / "a.ipynb", "print('a')")
    notebook(src / "b.ipynb", "print('b')")
    notebook(src / "c.ipynb", f"import os\nos.makedirs({str(out / 'c.ipynb')!r})")
    notebook(src / "d.ipynb", "print('d')")
    (out / "b.ipynb").mkdir(parents=True)
    results = {r.name: r for r in run_notebooks([src], output_dir=out, jobs=2)}

    assert results["a.ipynb"].status == results["d.ipynb"].status == PASSED
    assert nbformat.read(out / "d.ipynb", as_version=4).cells[0].outputs[0]["text"] == "d\n"
    b = results["b.ipynb"]
    assert b.status == ERROR and b.error == f"cannot write {str(out / 'b.ipynb')!r}: it is a directory" and b.cells == 0
    c = results["c.ipynb"]
    assert c.status == ERROR and c.cells == 1 and "\n" not in c.error
    assert c.error.startswith(f"cannot write the executed notebook to {str(out / 'c.ipynb')!r}: IsADirectoryError")
    assert not kernels_of_this_process()


def test_cells_tagged_raises_exception_may_fail_and_skip_execution_is_skipped(tmp_path):
    """nbclient's rules (papermill's own check fails a notebook on any error output, tagged or not)."""
    nb = notebook(tmp_path / "nb.ipynb", ("1/0", ["raises-exception"]), ("print('skipped')", ["skip-execution"]),
                  "print('after')")
    (result,) = run_notebooks([nb])
    assert result.status == PASSED and result.cells == 2
    cells = result.notebook.cells
    assert cells[0].outputs[0]["ename"] == "ZeroDivisionError" and cells[0].metadata.papermill.status == "completed"
    assert cells[1].outputs == [] and cells[2].outputs[0]["text"] == "after\n"


# ---- the request is checked before any kernel starts ---------------------------------------------


def test_bad_requests_are_usage_errors_naming_the_problem(tmp_path):
    good = notebook(tmp_path / "good.ipynb", "1")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.ipynb").write_text("{not json")
    odd = nbformat.read(notebook(tmp_path / "odd" / "odd.ipynb", "1"), as_version=4)
    odd.metadata["papermill"] = "not a mapping"
    nbformat.write(odd, tmp_path / "odd" / "odd.ipynb")
    cases = {
        "no such notebook or directory": dict(paths=[tmp_path / "missing.ipynb"]),
        "no notebooks (*.ipynb) in directory": dict(paths=[tmp_path / "empty"]),
        "cannot read notebook": dict(paths=[tmp_path / "broken.ipynb"]),
        "has papermill metadata that is not a mapping": dict(paths=[tmp_path / "odd" / "odd.ipynb"]),
        "jobs must be a whole number of at least 1, got 0": dict(paths=[good], jobs=0),
        "not a valid Python identifier": dict(paths=[good], parameters={"not a name": 1}),
        "no kernelspec named 'nope'": dict(paths=[good], kernel_name="nope"),
        "either an output directory or inplace": dict(paths=[good], output_dir=tmp_path / "o", inplace=True),
        "would overwrite it": dict(paths=[good], output_dir=tmp_path),
        f"output directory {str(good)!r} is a file, not a directory": dict(paths=[good], output_dir=good),
        f"output directory {str(good / 'sub')!r} cannot be made: {str(good)!r} is a file":
            dict(paths=[good], output_dir=good / "sub"),
        "timeout must be a positive number": dict(paths=[good], timeout=-1),
    }
    for message, kwargs in cases.items():
        paths = kwargs.pop("paths")
        with pytest.raises(UsageError, match=re.escape(message)):
            run_notebooks(paths, **kwargs)
    assert not kernels_of_this_process()


def test_same_name_in_two_places_would_collide(tmp_path):
    a = notebook(tmp_path / "x" / "nb.ipynb", "1")
    b = notebook(tmp_path / "y" / "nb.ipynb", "1")
    with pytest.raises(UsageError, match="would both be written to"):
        run_notebooks([a, b], output_dir=tmp_path / "out")


def test_parameters_that_cannot_go_into_a_notebook_are_refused_before_anything_runs(tmp_path):
    """Each must be written as JSON (the notebook's metadata) and as Python (the injected cell)."""
    good = notebook(tmp_path / "good.ipynb", "1")
    cases = {
        "parameter name 'class' is a Python keyword": {"class": 3},
        "parameter name 'None' is a Python keyword": {"None": 1},
        "parameter name '__debug__' is a Python keyword": {"__debug__": 1},
        "parameter 'c' is a complex": {"c": 1 + 2j},
        "parameter 's' is a set": {"s": {1, 2}},
        "parameter 't' is a tuple": {"t": (1, 2)},
        "parameter 'b' is a bytes": collect_parameters(yaml_text=["b: !!binary aGVsbG8="]),
        "parameter 'd'['k'] is a datetime": {"d": {"k": datetime.datetime(2024, 1, 1)}},
        "parameter 'u' holds text that is not valid Unicode": {"u": "bad \udcff"},
        "parameter 'xs'[1] holds text that is not valid Unicode": {"xs": ["ok", "\ud800"]},
        "parameter 'm' has a key (1, 2)": {"m": {(1, 2): 1}},
    }
    for message, parameters in cases.items():
        with pytest.raises(UsageError, match=re.escape(message)):
            run_notebooks([good], parameters=parameters)
    assert not kernels_of_this_process()


def test_parameter_values_and_files(tmp_path):
    assert parse_value("3") == 3 and parse_value("2.5") == 2.5 and parse_value("[1, 'a']") == "[1, 'a']"
    assert parse_value("True") is True and parse_value("None") is None and parse_value("0123") == 123
    assert parse_value("hello world") == "hello world" and parse_value("1 +") == "1 +"
    good = tmp_path / "p.yaml"
    good.write_text("alpha: 3\nnames: [a, b]\nwhen: 2024-05-01\n")
    assert load_parameters_file(good) == {"alpha": 3, "names": ["a", "b"], "when": "2024-05-01"}  # no dates, as papermill
    (tmp_path / "bad.yaml").write_text("alpha: [unclosed\n")
    with pytest.raises(UsageError, match="is not valid YAML at line"):
        load_parameters_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UsageError, match="must hold a mapping"):
        load_parameters_file(tmp_path / "list.yaml")
    with pytest.raises(UsageError, match="cannot read parameters file"):
        load_parameters_file(tmp_path / "missing.yaml")
    with pytest.raises(UsageError, match="-b value #1 is not base64"):
        collect_parameters(base64_yaml=["abc"])
    with pytest.raises(UsageError, match="-y value #2 must hold a mapping"):
        collect_parameters(yaml_text=["a: 1", "[1]"])


def test_injection_replaces_an_earlier_injected_cell():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell("b")]
    once = inject_parameters(nb, {"a": 2})
    twice = inject_parameters(once, {"a": 'say "hi"\n'})
    assert [c.source for c in twice.cells] == ["a = 1", '# Parameters\na = "say \\"hi\\"\\n"\n', "b"]
    scope: dict = {}
    exec(twice.cells[1].source, scope)
    assert scope["a"] == 'say "hi"\n'


# ---- widgets: metadata.widgets as papermill writes it ----------------------------------------------

NBCLIENT_FILES = Path(__file__).parent / "files" / "nbclient"  # nbclient 0.11.0's tests/files (BSD-3-Clause)


def saved_models(path: Path) -> list[str]:
    return widget_models(json.loads(path.read_text())["metadata"])


def without_model_ids(path: Path) -> list[dict]:
    """:func:`comparable` cells, widget views' model ids aside (each run makes its own)."""
    return json.loads(re.sub(r"'model_id': '[0-9a-f]{32}'", "'model_id': '…'", json.dumps(comparable(path)["cells"])))


_PAPERMILL_IPC = PRELUDE + """
import papermill
from traitlets.config import Config

papermill.execute_notebook(sys.argv[1], sys.argv[2], kernel_name="python3", cwd=sys.argv[3], progress_bar=False,
                           config=Config({"KernelManager": {"transport": "ipc"}}))
"""


def papermill_with_widgets(source: Path, target: Path, attempts: int = 3) -> None:
    """papermill's run of a widget notebook, as python3 (Output.ipynb names no kernelspec).

    Its kernel listens on ipc sockets: on tcp, a port taken meanwhile by another run's kernel
    on this shared machine killed it now and then. And on a busy machine nbclient 0.11 waited
    for good on an execute_reply that had arrived (the kernel had run the cell and was idle):
    jupyter_client's asyncio ``get_msg`` without a timeout polls the socket once, and that poll
    missed the message: it waits in slices here (tests/slicedpoll.py says why). The rest of the
    run is papermill's own. A run that has not ended in 60 s is still made again.
    """
    args = [sys.executable, "-c", _PAPERMILL_IPC, str(source), str(target), str(source.parent)]
    for attempt in range(attempts):
        try:
            subprocess.run(args, capture_output=True, timeout=60, check=True)
            return
        except subprocess.TimeoutExpired:
            if attempt == attempts - 1:
                raise


@pytest.mark.timeout(300)
def test_widget_state_is_saved_as_papermill_saves_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("JupyterWidgets.ipynb", "Output.ipynb"):
        (src / name).write_bytes((NBCLIENT_FILES / name).read_bytes())
    notebook(
        src / "mine.ipynb",
        "import ipywidgets as w\nfrom IPython.display import HTML, clear_output, display\n"
        "out = w.Output(layout={'border': '1px solid'})\nout",
        "with out:\n    print('one')\n    display(HTML('<b>two</b>'))\nprint('not captured')",
        "@out.capture(clear_output=True)\ndef fails():\n    print('about to fail')\n    1 / 0\nfails()",
        "from ipywidgets import interact\nresult = interact(lambda x: print('x is', x), x=(0, 10))",
        "s = w.IntSlider(3)\nbox = w.VBox([s, w.Label('label')])\ns.value = 7\nbox",
        "out.append_stdout('appended\\n')\nimg = w.Image(value=b'\\x89PNG bytes', format='png')",
    )
    stale = nbformat.read(src / "Output.ipynb", as_version=4)
    assert len(stale.metadata.widgets[WIDGET_STATE]["state"]) == 42, "the input's stale ipywidgets-7 state"
    notebook(src / "plain.ipynb", "print('no widgets')")
    plain_input = nbformat.read(src / "plain.ipynb", as_version=4)
    plain_input.metadata["widgets"] = stale.metadata.widgets
    nbformat.write(plain_input, src / "plain.ipynb")
    reference = tmp_path / "papermill"
    reference.mkdir()
    names = ("JupyterWidgets.ipynb", "Output.ipynb", "mine.ipynb")
    with concurrent.futures.ThreadPoolExecutor(1) as one_at_a_time:  # papermill's tcp kernels race for ports
        papermills = [one_at_a_time.submit(papermill_with_widgets, src / name, reference / name) for name in names]
        out = tmp_path / "out"
        results = run_notebooks([src], jobs=2, output_dir=out)  # meanwhile (ours listen on ipc sockets)
        for run in papermills:
            run.result()
    assert {r.name: r.status for r in results} == dict.fromkeys(
        ["JupyterWidgets.ipynb", "Output.ipynb", "mine.ipynb", "plain.ipynb"], PASSED)
    for name in ("JupyterWidgets.ipynb", "Output.ipynb", "mine.ipynb"):
        ours, theirs = saved_models(out / name), saved_models(reference / name)
        assert ours == theirs, name
        assert without_model_ids(out / name) == without_model_ids(reference / name), name
    saved = json.loads((out / "Output.ipynb").read_text())["metadata"]["widgets"][WIDGET_STATE]["state"]
    assert len(saved) < 42 and all(m["model_module_version"] != "1.5.0" for m in saved.values()), "this run's only"
    captured = [m["state"]["outputs"] for m in saved.values() if m["model_name"] == "OutputModel"]
    assert [{"output_type": "stream", "name": "stdout", "text": "in output\n"}] in [c[:1] for c in captured]
    assert "widgets" not in nbformat.read(out / "plain.ipynb", as_version=4).metadata, "no stale state either"
    mine = json.loads((out / "mine.ipynb").read_text())["metadata"]["widgets"][WIDGET_STATE]["state"]
    (image,) = [m for m in mine.values() if m["model_name"] == "ImageModel"]
    assert image["buffers"][0]["path"] == ["value"]
