"""Headless runs, as CI and pipelines run notebooks: nbclient, ``jupyter nbconvert --execute``
and papermill, each a real client of a real kernel; the tests read the notebook it saved.

What they must hold: every ``--bg`` cell's output in the cell that started it (clearly
attributed), a remote error as the remote exception itself (once, with local cell
numbers) that stops the run, a ``--bg`` failure raised by ``%pool wait``, and display
updates across cells applied where the display is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import nbformat
import papermill
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook

ANSI = re.compile(r"\x1b\[[0-9;]*m")

BACKGROUND = [
    "%load_ext jupyter_sessionpool",
    "%%pool session=a --bg\nimport time\nprint('bg-a-1', flush=True)\ntime.sleep(1)\nprint('bg-a-2')",
    "%%pool session=b --bg\nfrom IPython.display import HTML, display\ndisplay(HTML('<b>bg-b-html</b>'))\nprint('bg-b-out')",
    "%%pool session=c\nfrom IPython.display import display\n_ = display('first', display_id='shown')",
    "%%pool session=c\nfrom IPython.display import update_display\nupdate_display('second', display_id='shown')",
    "%pool wait",
]

BACKGROUND_FAILURE = [
    "%load_ext jupyter_sessionpool",
    "%%pool session=a --bg\nprint('before the failure', flush=True)\ndef boom():\n    raise ValueError('bg-boom')\nboom()",
    "print('local cell')",
    "%pool wait",
    "print('never runs')",
]

REMOTE_ERROR = [
    "%load_ext jupyter_sessionpool",
    "%%pool session=a\ndef f():\n    return 1 / 0",
    "%%pool session=a\nprint('before')\nf()",
    "print('never runs')",
]


def notebook(cells: list[str]) -> nbformat.NotebookNode:
    return new_notebook(cells=[new_code_cell(source) for source in cells])


def plain(output) -> str:
    """What a reader sees of one output, as text."""
    if output["output_type"] == "stream":
        return output["text"]
    if output["output_type"] == "error":
        return ANSI.sub("", "\n".join(output["traceback"]))
    return ANSI.sub("", output["data"].get("text/plain", ""))


def shown(cell) -> str:
    return "".join(plain(o) for o in cell.outputs)


def run_nbclient(nb, tmp_path):
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def run_nbconvert(nb, tmp_path, *options):
    source = tmp_path / "in.ipynb"
    nbformat.write(nb, source)
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", *options,
         "--ExecutePreprocessor.kernel_name=python3", "--ExecutePreprocessor.timeout=120",
         "--output", "out.ipynb", str(source)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return done, tmp_path / "out.ipynb"


def run_papermill(nb, tmp_path):
    source, target = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, source)
    error = None
    try:
        papermill.execute_notebook(str(source), str(target), kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    except papermill.PapermillExecutionError as exc:
        error = exc
    return nbformat.read(target, as_version=4), error


def check_background(nb):
    _, a, b, shown_cell, updater, wait = nb.cells
    # each --bg cell holds one display with all its output, headed by the cell that started it
    assert len(a.outputs) == 1 and a.outputs[0]["output_type"] == "display_data"
    assert shown(a) == f"In [{a.execution_count}] (%%pool session=a --bg): finished in " + shown(a).split(" finished in ")[1]
    assert shown(a).endswith("\nbg-a-1\nbg-a-2\n")
    assert len(b.outputs) == 1 and "bg-b-out" in shown(b)
    assert "<b>bg-b-html</b>" in b.outputs[0]["data"]["text/html"]  # rich output keeps its HTML
    # a display made in one cell, updated by a later one: the update shows where the display is
    assert [o["data"]["text/plain"] for o in shown_cell.outputs] == ["'second'"]
    assert updater.outputs == []
    assert shown(wait) == "2 background cell(s) finished\n"


def check_background_failure(nb, failing):
    bg = nb.cells[1]
    assert len(bg.outputs) == 1
    text = shown(bg)
    assert text.startswith(f"In [{bg.execution_count}] (%%pool session=a --bg): raised ValueError")
    assert "before the failure" in text and "ValueError: bg-boom" in text
    assert f"Cell In[{bg.execution_count}]" in text  # the remote cell number, made local
    errors = [o for o in failing.outputs if o["output_type"] == "error"]
    assert [(e["ename"], e["evalue"]) for e in errors] == [("ValueError", "bg-boom")]  # one error: the remote one
    assert plain(errors[0]).startswith(f"In [{bg.execution_count}] (%%pool session=a --bg) raised:")
    assert "boom()" in plain(errors[0])


def check_remote_error(nb):
    _, define, failing, after = nb.cells
    errors = [o for o in failing.outputs if o["output_type"] == "error"]
    assert [(e["ename"], e["evalue"]) for e in errors] == [("ZeroDivisionError", "division by zero")]
    assert [o["text"] for o in failing.outputs if o["output_type"] == "stream"] == ["before\n"]
    # Cell In[n]: the local cells' numbers (the failing cell, and the cell that defined f)
    assert re.findall(r"Cell In\[(\d+)\]", plain(errors[0])) == [str(failing.execution_count), str(define.execution_count)]
    assert after.outputs == [] and after.execution_count is None  # the run stopped there


# ---- nbclient ----------------------------------------------------------------------------


def test_nbclient_saves_background_output_in_the_starting_cells(tmp_path):
    check_background(run_nbclient(notebook(BACKGROUND), tmp_path))


def test_nbclient_background_failure(tmp_path):
    nb = notebook(BACKGROUND_FAILURE)
    with pytest.raises(CellExecutionError) as info:
        run_nbclient(nb, tmp_path)
    assert info.value.ename == "ValueError" and info.value.evalue == "bg-boom"
    check_background_failure(nb, nb.cells[3])
    assert shown(nb.cells[2]) == "local cell\n"


def test_nbclient_remote_error(tmp_path):
    nb = notebook(REMOTE_ERROR)
    with pytest.raises(CellExecutionError) as info:
        run_nbclient(nb, tmp_path)
    assert (info.value.ename, info.value.evalue) == ("ZeroDivisionError", "division by zero")
    check_remote_error(nb)


# ---- nbconvert ---------------------------------------------------------------------------


def test_nbconvert_execute_saves_background_output(tmp_path):
    done, out = run_nbconvert(notebook(BACKGROUND), tmp_path)
    assert done.returncode == 0, done.stderr
    check_background(nbformat.read(out, as_version=4))


def test_nbconvert_execute_stops_on_a_remote_error(tmp_path):
    done, out = run_nbconvert(notebook(REMOTE_ERROR), tmp_path)
    assert done.returncode != 0 and "ZeroDivisionError" in done.stderr and "RemoteCellError" not in done.stderr
    done, out = run_nbconvert(notebook(BACKGROUND_FAILURE), tmp_path, "--allow-errors")
    assert done.returncode == 0, done.stderr
    nb = nbformat.read(out, as_version=4)
    check_background_failure(nb, nb.cells[3])


# ---- papermill ---------------------------------------------------------------------------


def test_papermill_saves_background_output(tmp_path):
    nb, error = run_papermill(notebook(BACKGROUND), tmp_path)
    assert error is None
    check_background(nb)


def test_papermill_reports_the_remote_error(tmp_path):
    nb, error = run_papermill(notebook(REMOTE_ERROR), tmp_path)
    assert error is not None and (error.ename, error.evalue) == ("ZeroDivisionError", "division by zero")
    # papermill puts its own banner first; the code cells follow, in order
    code = [c for c in nb.cells if c.cell_type == "code"]
    check_remote_error(nbformat.v4.new_notebook(cells=code))


def test_papermill_reports_a_background_failure_at_the_wait(tmp_path):
    nb, error = run_papermill(notebook(BACKGROUND_FAILURE), tmp_path)
    assert error is not None and (error.ename, error.evalue) == ("ValueError", "bg-boom")
    code = [c for c in nb.cells if c.cell_type == "code"]
    check_background_failure(nbformat.v4.new_notebook(cells=code), code[3])
