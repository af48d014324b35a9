"""The jupyter-sessionpool command: help, version, exit statuses, one-line usage errors, JUnit XML, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

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
    for flag in ("-j", "-o", "-p NAME VALUE", "-r NAME VALUE", "-f", "-y YAML", "-b BASE64", "--timeout",
                 "--cell-timeout", "--kernel", "--junit-xml", "--gateway-url", "--fail-fast", "--quiet", "--inplace"):
        assert flag in done.stdout


def test_run_validates_notebooks_without_building_the_iri_grammar(tmp_path):
    # jsonschema builds rfc3987_syntax's grammar at import (0.75 s of the command's start);
    # nbformat's schemas check no IRI format, and validation still rejects a bad notebook.
    script = (
        "import sys\n"
        "from jupyter_sessionpool.cli import main\n"
        f"assert main(['run', {str(tmp_path / 'missing.ipynb')!r}]) == 2\n"
        "import nbformat\n"
        "bad = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')]); bad.cells[0].outputs = 'no'\n"
        "try:\n    nbformat.validate(bad)\nexcept nbformat.ValidationError:\n    print('rejected')\n"
        "print(sys.modules['rfc3987_syntax'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["rejected", "None"]


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
        ("run", str(good), "-p", "class", "3"): "parameter name 'class' is a Python keyword",
        ("run", str(good), "-o", str(good)): f"output directory {str(good)!r} is a file, not a directory",
        ("run", str(good), "-o", str(good / "sub")): f"cannot be made: {str(good)!r} is a file",
        ("run", str(good), "--junit-xml", str(tmp_path)): f"--junit-xml {str(tmp_path)!r} is a directory, not a file",
        ("run", str(good), "--junit-xml", str(good / "r.xml")): f"the directory of --junit-xml {str(good)!r} is a file",
        ("run", str(good), "-y", "s: !!set {a, b}"): "parameter 's' is a set",
        ("run", str(good), "-y", "[1, 2]"): "-y value #1 must hold a mapping",
        ("run", str(good), "-b", "not base64"): "-b value #1 is not base64",
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


def test_values_papermill_keeps_as_strings_are_injected_and_written(tmp_path, capsys):
    """-p msg 1+2j and -p msg "{1, 2}" are strings by papermill's rules: they run and are written."""
    nb = notebook(tmp_path / "nb.ipynb", "print(repr(msg), repr(other), repr(n))")
    out = tmp_path / "out"
    assert main(["run", str(nb), "-o", str(out), "-q", "-p", "msg", "1+2j", "-p", "other", "{1, 2}", "-p", "n", "0123"]) == 0
    written = nbformat.read(out / "nb.ipynb", as_version=4)
    assert written.cells[1].outputs[0]["text"] == "'1+2j' '{1, 2}' 123\n"
    assert written.metadata.papermill.parameters == {"msg": "1+2j", "other": "{1, 2}", "n": 123}


def test_an_unwritable_output_ends_only_its_notebook_and_the_report_is_written(tmp_path, capsys):
    src, out, report = tmp_path / "src", tmp_path / "out", tmp_path / "reports" / "junit.xml"
    notebook(src / "a.ipynb", "print('a')")
    notebook(src / "b.ipynb", "print('b')")
    (out / "b.ipynb").mkdir(parents=True)
    assert main(["run", str(src), "-o", str(out), "--junit-xml", str(report)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "1/2 passed" in captured.out and "it is a directory" in captured.out  # the summary
    assert nbformat.read(out / "a.ipynb", as_version=4).cells[0].outputs[0]["text"] == "a\n"
    suite = ET.parse(report).getroot()
    assert suite.get("tests") == "2" and suite.get("errors") == "1" and suite.get("failures") == "0"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases["a.ipynb"]) == [] and "it is a directory" in cases["b.ipynb"].find("error").get("message")
    assert not kernels_of_this_process()


def test_junit_xml_is_well_formed_whatever_the_error_holds(tmp_path, capsys):
    """ESC sequences (colours, tput sgr0), backspaces, NUL, and a path with an undecodable byte."""
    odd = Path(os.fsdecode(str(tmp_path).encode() + b"/dir\xff\x01"))  # a lone surrogate and a control character
    notebook(odd / "nb.ipynb", 'raise ValueError("red \\x1b[31mR\\x1b(B\\x1b[m bar 50%\\x08\\x08\\x08 nul \\x00 end")')
    report = tmp_path / "junit.xml"
    assert main(["run", str(odd / "nb.ipynb"), "--junit-xml", str(report), "-q"]) == 1
    capsys.readouterr()
    suite = ET.parse(report).getroot()  # raises ParseError if not well-formed
    (case,) = suite.iter("testcase")
    failure = case.find("failure")
    assert failure.get("message") == "cell 0: ValueError: red R bar 50%\\x08\\x08\\x08 nul \\x00 end"
    assert failure.text.endswith("ValueError: red R bar 50%\\x08\\x08\\x08 nul \\x00 end")
    assert case.get("classname").endswith("dir\\udcff\\x01")
    assert not kernels_of_this_process()


def test_ctrl_c_writes_what_ran_and_leaves_no_kernel(tmp_path):
    before = set(psutil.Process().children(recursive=True))  # e.g. a session-scoped gateway of other tests
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
    # The command gets SIGINT as a terminal's Ctrl-C sends it, whatever this process inherited: one
    # started in the background of a non-interactive shell (`nohup make test &`) ignores SIGINT, and
    # so would the command, for which a Ctrl-C would then never come.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([*COMMAND, "run", str(src), "-j", "2", "-o", str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if inherited is None else inherited)
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
    assert not {p for p in psutil.Process().children(recursive=True) if p.pid not in ours} - before
