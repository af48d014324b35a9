"""``jupyter-sessionpool kernelspec install``, and the tools that start kernels from what it installs.

nbclient, papermill and nbconvert start kernels through jupyter_client: from a kernelspec
naming ``sessionpool-fork`` they get forked kernels (each notebook checks that its kernel's
parent is a template), in their own process, with nothing of ours in between.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jupyter_client.kernelspec
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

from jupyter_sessionpool.cli import main
from jupyter_sessionpool.forking import stop_templates

# A cell that fails unless its kernel was forked by a sessionpool-fork template.
FORKED_CHECK = (
    "import os\n"
    "with open(f'/proc/{os.getppid()}/cmdline', 'rb') as f:\n"
    "    parent = f.read().decode()\n"
    "assert 'jupyter_sessionpool/forking/template.py' in parent, parent\n"
    "print('forked', os.getpid())"
)


@pytest.fixture
def jupyter_home(tmp_path, monkeypatch):
    """A HOME and Jupyter data/config dirs of this test's own, and system-wide kernelspecs in a scratch dir."""
    for name, sub in (("HOME", "home"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_CONFIG_DIR", "config")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "system"))
    monkeypatch.setattr(jupyter_client.kernelspec, "SYSTEM_JUPYTER_PATH", [str(tmp_path / "system")])
    yield tmp_path
    assert stop_templates()


def installed(name: str) -> dict:
    return KernelSpecManager().get_kernel_spec(name).to_dict()


def test_install_writes_ipykernels_kernelspec_started_by_sessionpool_fork(jupyter_home, capsys):
    code = main(["kernelspec", "install", "--name", "python3-fast", "--display-name", "Python 3 (fast start)",
                 "--preload", "numpy,pandas", "--user"])
    out = capsys.readouterr().out
    assert code == 0 and "python3-fast" in out
    where = Path(KernelSpecManager().find_kernel_specs()["python3-fast"])
    assert where == jupyter_home / "data" / "kernels" / "python3-fast"
    spec = installed("python3-fast")
    assert spec["display_name"] == "Python 3 (fast start)"
    assert spec["argv"][0] == sys.executable and spec["argv"][-4:] == ["-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert spec["metadata"]["kernel_provisioner"] == {"provisioner_name": "sessionpool-fork",
                                                       "config": {"preload": ["numpy", "pandas"]}}
    assert spec["metadata"]["debugger"] is True  # as ipykernel's own kernelspec: JupyterLab offers its debugger
    assert (where / "logo-64x64.png").exists()


def test_install_where_asked(jupyter_home, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(jupyter_home / "prefix"))
    assert main(["kernelspec", "install", "--name", "in-prefix", "--sys-prefix"]) == 0
    assert (jupyter_home / "prefix" / "share" / "jupyter" / "kernels" / "in-prefix" / "kernel.json").exists()
    assert main(["kernelspec", "install", "--name", "system-wide"]) == 0
    assert json.loads((jupyter_home / "system" / "kernels" / "system-wide" / "kernel.json").read_text())[
        "display_name"] == "system-wide"


@pytest.mark.parametrize("args, message", [
    (["kernelspec", "install"], "the following arguments are required: --name"),
    (["kernelspec", "install", "--name", "a b"], "'a b' is not a kernelspec name"),
    (["kernelspec", "install", "--name", "x", "--user", "--sys-prefix"], "not allowed with argument --user"),
    (["kernelspec", "install", "--name", "x", "--preload", "numpy,two words"], "not module names: two words"),
    (["kernelspec", "uninstall"], "invalid choice: 'uninstall'"),
])
def test_bad_usage_is_one_line_and_exit_2(jupyter_home, capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (jupyter_home / "data" / "kernels").exists()


def test_kernelspec_alone_lists_its_commands_and_exits_2(capsys):
    assert main(["kernelspec"]) == 2
    assert "install" in capsys.readouterr().out


def test_an_unwritable_place_is_one_line_and_exit_1(jupyter_home, monkeypatch, capsys):
    blocker = jupyter_home / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setattr(sys, "prefix", str(blocker))
    assert main(["kernelspec", "install", "--name", "x", "--sys-prefix"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jupyter-sessionpool kernelspec install: error:") and len(err.strip().splitlines()) == 1


def notebook(path: Path, kernel: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    nbformat.write(nb, path)
    return path


def test_nbclient_starts_forked_kernels_from_the_installed_kernelspec(jupyter_home):
    assert main(["kernelspec", "install", "--name", "fast", "--preload", "json", "--user"]) == 0
    for _ in range(2):  # the second start reuses the template
        nb = nbformat.read(notebook(jupyter_home / "a.ipynb", "fast", FORKED_CHECK, "import sys; 'json' in sys.modules"), 4)
        NotebookClient(nb, timeout=60, kernel_name="fast").execute()
        assert nb.cells[0].outputs[0]["text"].startswith("forked")
        assert nb.cells[1].outputs[0]["data"]["text/plain"] == "True"


@pytest.mark.parametrize("tool", ["papermill", "nbconvert"])
def test_papermill_and_nbconvert_start_forked_kernels_from_the_installed_kernelspec(jupyter_home, tool):
    assert main(["kernelspec", "install", "--name", "fast", "--user"]) == 0
    source = notebook(jupyter_home / "in.ipynb", "fast", FORKED_CHECK)
    out = jupyter_home / "out.ipynb"
    bin_dir = Path(sys.executable).parent
    if tool == "papermill":
        cmd = [str(bin_dir / "papermill"), str(source), str(out)]
    else:
        cmd = [str(bin_dir / "jupyter-nbconvert"), "--to", "notebook", "--execute", str(source), "--output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    assert nbformat.read(out, 4).cells[0].outputs[0]["text"].startswith("forked")
