"""run_notebooks: the same notebooks as papermill writes them, each on a fresh kernel of its own.

Real kernels throughout; papermill (the reference) runs the same notebooks one at a time.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import psutil
import pytest

from jupyter_sessionpool.batch import (
    DIED,
    FAILED,
    PASSED,
    SKIPPED,
    TIMEOUT,
    UsageError,
    inject_parameters,
    load_parameters_file,
    parse_value,
    run_notebooks,
)

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
    """This process's kernels: spawned ones (ipykernel on their command line) and forked ones (a fork
    template's children, which show the template's command line)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "ipykernel" in " ".join(p.cmdline()) or _FORK_TEMPLATE in " ".join(p.parent().cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


_FORK_TEMPLATE = "jupyter_sessionpool/forking/template.py"


# ---- the reference: papermill ---------------------------------------------------------------------

_ADDRESS = re.compile(r"0x[0-9a-f]{6,}")


def normalised(path: Path) -> list[dict]:
    """A notebook's cells as papermill and we should agree on them.

    Dropped: papermill's error-marker cells, timing and papermill metadata, cell ids, memory
    addresses; consecutive stream outputs of one name merged (nbclient keeps each message as an
    output, the pool merges them; a front end shows them the same).
    """
    nb = json.loads(path.read_text())
    cells = []
    for cell in nb["cells"]:
        tags = cell["metadata"].get("tags", [])
        if "papermill-error-cell-tag" in tags:
            continue
        entry = {"type": cell["cell_type"], "source": "".join(cell["source"]), "tags": tags}
        if cell["cell_type"] == "code":
            outputs = []
            for out in copy.deepcopy(cell["outputs"]):
                if "text" in out:
                    out["text"] = "".join(out["text"])
                for key, value in out.get("data", {}).items():
                    out["data"][key] = _ADDRESS.sub("0x…", "".join(value) if isinstance(value, list) else str(value))
                if outputs and out["output_type"] == "stream" and outputs[-1].get("name") == out.get("name"):
                    outputs[-1]["text"] += out["text"]
                else:
                    outputs.append(out)
            entry.update(outputs=outputs, count=cell["execution_count"])
            entry["status"] = cell["metadata"].get("papermill", {}).get("status")
        cells.append(entry)
    return cells


def papermill(source: Path, target: Path, parameters: dict) -> None:
    args = [sys.executable, "-m", "papermill", str(source), str(target), "--cwd", str(source.parent)]
    for name, value in parameters.items():
        args += ["-y", json.dumps({name: value})]
    subprocess.run(args, capture_output=True, timeout=120)  # exit 1 for a failing notebook: compared below


@pytest.fixture
def notebooks(tmp_path):
    """Three notebooks in two directories, each reading a data file and a module next to itself."""
    src = tmp_path / "src"
    for sub in ("one", "two"):
        (src / sub).mkdir(parents=True)
        (src / sub / "data.txt").write_text(f"data of {sub}\n")
        (src / sub / "helper.py").write_text(f"WHERE = {sub!r}\n")
    reader = "import helper\nprint(open('data.txt').read().strip(), helper.WHERE)"
    notebook(
        src / "one" / "params.ipynb",
        ("alpha = 1\nname = 'default'", ["parameters"]),
        reader,
        "print('a', flush=True); import sys; print('err', file=sys.stderr, flush=True); print('b')",
        "from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))\nalpha * 2, name",
        "",
        "progress = display('step 0', display_id=True)",
        "progress.update('step 1 of 1, from a later cell')",  # nbclient updates the earlier cell's output
        markdown_first=True,
    )
    notebook(src / "one" / "fails.ipynb", reader, "x = 1", "raise ValueError(f'bad {x}')", "print('never')")
    notebook(
        src / "two" / "noparams.ipynb",
        reader,
        ("1/0", ["raises-exception"]),
        "print(alpha)\nobject()",
    )
    return src


def test_outputs_equal_papermill_with_parameters_failures_and_cwd(notebooks, tmp_path):
    out = tmp_path / "out"
    parameters = {"alpha": 21, "name": "from -p", "items": [1, "two", None]}
    results = run_notebooks([notebooks], output_dir=out, parameters=parameters, jobs=2)

    by_name = {r.name: r for r in results}
    assert [r.path.name for r in results] == ["fails.ipynb", "params.ipynb", "noparams.ipynb"]  # input order
    assert by_name["params.ipynb"].status == PASSED and by_name["noparams.ipynb"].status == PASSED
    failed = by_name["fails.ipynb"]
    assert failed.status == FAILED and "ValueError: bad 1" in failed.error and failed.cells == 4  # injected + 3
    for r in results:
        assert r.output_path == out / r.path.relative_to(notebooks)

    reference = tmp_path / "papermill"
    for r in results:
        target = reference / r.path.relative_to(notebooks)
        target.parent.mkdir(parents=True, exist_ok=True)
        papermill(r.path, target, parameters)
        assert normalised(r.output_path) == normalised(target), r.name

    # what papermill's readers look at: injected cell placement, parameters, timing keys
    ours = nbformat.read(out / "one" / "params.ipynb", as_version=4)
    theirs = nbformat.read(reference / "one" / "params.ipynb", as_version=4)
    assert [c.metadata.get("tags") for c in ours.cells][:3] == [None, ["parameters"], ["injected-parameters"]]
    assert ours.metadata.papermill.parameters == parameters
    assert ours.metadata.language_info == theirs.metadata.language_info
    timing = {"iopub.status.busy", "iopub.execute_input", "shell.execute_reply", "iopub.status.idle"}
    for mine, pm in zip(ours.cells, theirs.cells):
        if mine.cell_type == "code" and mine.source.strip():
            assert set(mine.metadata.execution) == set(pm.metadata.execution) == timing
    shown = [c for c in ours.cells if c.source.startswith("progress = display")][0]
    assert shown.outputs[0]["data"]["text/plain"] == "'step 1 of 1, from a later cell'"
    noparams = nbformat.read(out / "two" / "noparams.ipynb", as_version=4)
    assert noparams.cells[0].metadata.tags == ["injected-parameters"]
    assert "data of two two" in noparams.cells[1].outputs[0]["text"]  # its own directory, not the first one's
    assert not kernels_of_this_process()


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

    slow = results["slow.ipynb"]
    assert slow.status == TIMEOUT and "notebook timed out after 6 s" in slow.error and slow.cells < 6

    died = results["dies.ipynb"]
    assert died.status == DIED and "cell 1" in died.error
    assert nbformat.read(out / "dies.ipynb", as_version=4).cells[0].outputs[0]["text"] == "about to die\n"

    fine = results["fine.ipynb"]
    assert fine.status == PASSED and fine.notebook.cells[1].outputs[0]["data"]["text/plain"] == "42"
    assert not kernels_of_this_process()


def test_fail_fast_skips_the_rest(tmp_path):
    notebook(tmp_path / "a.ipynb", "1/0")
    notebook(tmp_path / "b.ipynb", "print('b ran')")
    results = run_notebooks([tmp_path / "a.ipynb", tmp_path / "b.ipynb"], jobs=1, fail_fast=True)
    assert [r.status for r in results] == [FAILED, SKIPPED]
    assert results[1].cells == 0


# ---- the request is checked before any kernel starts ---------------------------------------------


def test_bad_requests_are_usage_errors_naming_the_problem(tmp_path):
    good = notebook(tmp_path / "good.ipynb", "1")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.ipynb").write_text("{not json")
    cases = {
        "no such notebook or directory": dict(paths=[tmp_path / "missing.ipynb"]),
        "no notebooks (*.ipynb) in directory": dict(paths=[tmp_path / "empty"]),
        "cannot read notebook": dict(paths=[tmp_path / "broken.ipynb"]),
        "jobs must be a whole number of at least 1, got 0": dict(paths=[good], jobs=0),
        "not a valid Python identifier": dict(paths=[good], parameters={"not a name": 1}),
        "no kernelspec named 'nope'": dict(paths=[good], kernel_name="nope"),
        "either an output directory or inplace": dict(paths=[good], output_dir=tmp_path / "o", inplace=True),
        "would overwrite it": dict(paths=[good], output_dir=tmp_path),
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


def test_parameter_values_and_files(tmp_path):
    assert parse_value("3") == 3 and parse_value("2.5") == 2.5 and parse_value("[1, 'a']") == [1, "a"]
    assert parse_value("True") is True and parse_value("None") is None
    assert parse_value("hello world") == "hello world" and parse_value("1 +") == "1 +"
    good = tmp_path / "p.yaml"
    good.write_text("alpha: 3\nnames: [a, b]\n")
    assert load_parameters_file(good) == {"alpha": 3, "names": ["a", "b"]}
    (tmp_path / "bad.yaml").write_text("alpha: [unclosed\n")
    with pytest.raises(UsageError, match="is not valid YAML at line"):
        load_parameters_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UsageError, match="must hold a mapping"):
        load_parameters_file(tmp_path / "list.yaml")
    with pytest.raises(UsageError, match="cannot read parameters file"):
        load_parameters_file(tmp_path / "missing.yaml")


def test_injection_replaces_an_earlier_injected_cell():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell("b")]
    once = inject_parameters(nb, {"a": 2})
    twice = inject_parameters(once, {"a": 'say "hi"\n'})
    assert [c.source for c in twice.cells] == ["a = 1", '# Parameters\na = "say \\"hi\\"\\n"\n', "b"]
    scope: dict = {}
    exec(twice.cells[1].source, scope)
    assert scope["a"] == 'say "hi"\n'
