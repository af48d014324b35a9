"""The jupyter-sessionpool command: help, version, exit statuses, one-line usage errors, JUnit XML, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import nbformat
import psutil

from jupyter_sessionpool import __version__
from jupyter_sessionpool.cli import main
from jupyter_sessionpool.forking.engine import TEMPLATES
from test_batch import kernels_of_this_process, notebook

COMMAND = [sys.executable, "-m", "jupyter_sessionpool"]


def command(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=120, env=env, **kwargs)


def test_help_and_version():
    done = command("--help")
    assert done.returncode == 0 and "run" in done.stdout and "COMMAND" in done.stdout
    done = command("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"jupyter-sessionpool {__version__}"
    done = command("run", "--help")
    assert done.returncode == 0
    for flag in ("-j", "-o", "-p NAME VALUE", "-f", "--timeout", "--cell-timeout", "--kernel", "--junit-xml",
                 "--gateway-url", "--fail-fast", "--quiet", "--inplace"):
        assert flag in done.stdout


def test_bad_usage_is_one_line_and_exit_2(tmp_path, capsys):
    good = notebook(tmp_path / "good.ipynb", "1")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    cases = {
        ("run", str(tmp_path / "missing.ipynb")): "no such notebook or directory",
        ("run", str(good), "-j", "0"): "argument -j/--jobs: must be at least 1, got 0",
        ("run", str(good), "-f", str(tmp_path / "bad.yaml")): "is not valid YAML",
        ("run", str(good), "-p", "1x", "2"): "parameter name '1x' is not a valid Python identifier",
        ("run", str(good), "--timeout", "soon"): "'soon' is not a number of seconds",
        ("run", str(good), "--kernel", "nope"): "no kernelspec named 'nope'",
        ("run", str(good), "-o", str(tmp_path / "o"), "--inplace"): "not allowed with argument",
        ("run",): "the following arguments are required: NOTEBOOK_OR_DIR",
    }
    for argv, message in cases.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert not kernels_of_this_process()


def test_exit_status_summary_and_junit_xml(tmp_path, capsys):
    notebook(tmp_path / "nbs" / "passes.ipynb", "print('hi')")
    notebook(tmp_path / "nbs" / "fails.ipynb", "x = 1", "raise KeyError('[missing]')")
    report = tmp_path / "report.xml"
    status = main(["run", str(tmp_path / "nbs"), "-o", str(tmp_path / "out"), "--junit-xml", str(report)])
    assert status == 1
    printed = capsys.readouterr().out
    assert "1/2 passed" in printed and "KeyError: '[missing]'" in printed  # not taken for rich markup
    suite = ET.parse(report).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    failure = cases["fails.ipynb"].find("failure")
    assert failure is not None and "KeyError" in failure.get("message")
    assert "raise KeyError" in failure.text and "\x1b[" not in failure.text  # the traceback, without colours
    assert list(cases["passes.ipynb"]) == []
    assert main(["run", str(tmp_path / "nbs" / "passes.ipynb"), "-q"]) == 0
    assert capsys.readouterr().out == ""


def test_ctrl_c_writes_what_ran_and_leaves_no_kernel(tmp_path):
    src = tmp_path / "src"
    for name in ("a", "b"):
        marker = tmp_path / f"{name}.pid"
        notebook(
            src / f"{name}.ipynb",
            f"print('started {name}')",
            f"import os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)",
            "print('never')",
        )
    notebook(src / "c.ipynb", "print('c never starts: -j 2')")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([*COMMAND, "run", str(src), "-j", "2", "-o", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        markers = [tmp_path / "a.pid", tmp_path / "b.pid"]
        while not all(m.exists() and m.read_text() for m in markers):  # both notebooks are in their sleeping cell (the first one done)
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the notebooks never started"
            time.sleep(0.05)
        kernels = [psutil.Process(int(m.read_text())) for m in markers]
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    for name in ("a", "b"):
        written = nbformat.read(out / f"{name}.ipynb", as_version=4)
        assert written.cells[0].outputs[0]["text"] == f"started {name}\n"
        assert written.metadata.papermill.exception is True
    assert not (out / "c.ipynb").exists()
    for kernel in kernels:
        kernel.wait(timeout=10)  # raises TimeoutExpired if the kernel outlived the command
    # nothing of the command's is left; this process's own fork templates may be (they outlive its pools by a minute)
    ours = {t.pid for t in TEMPLATES}
    assert not [p for p in psutil.Process().children(recursive=True) if p.pid not in ours]
