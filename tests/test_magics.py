"""The %pool / %%pool magics in an in-process IPython shell, against real pooled kernels.

Here the shell has no kernel of its own, so outputs go to the shell's stdout and display
publisher; routing into notebook cells is tested through real kernels in test_notebooks.py.
"""

from __future__ import annotations

import pickle
import re
import threading
import time

import psutil
import pytest
from IPython.core.completer import provisionalcompleter
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

from jupyter_sessionpool.notebook.magics import CellArgs, PoolMagics, RemoteCellError, TransferError, parse_cell_args, parse_line_args


@pytest.fixture
def ip():
    """A fresh IPython shell with the extension loaded; unloading it shuts the pool down."""
    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "jupyter_sessionpool")
    try:
        yield shell
    finally:
        magics = shell.magics_manager.registry.get("PoolMagics")
        pids = kernel_pids(magics._pool) if magics and magics._pool else []
        shell.run_line_magic("unload_ext", "jupyter_sessionpool")
        InteractiveShell.clear_instance()
        assert_gone(pids)


def magics_of(shell):
    return shell.magics_manager.registry["PoolMagics"]


def kernel_pids(pool):
    return [k.pid for k in pool.stats().kernels if k.pid]


def assert_gone(pids):
    """Every process in ``pids`` has exited (shutdown waits for its kernels)."""
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid


def run(shell, cell):
    """Run a cell, capturing its output; returns (ExecutionResult of the local cell, captured)."""
    with capture_output() as captured:
        result = shell.run_cell(cell)
    return result, captured


# ---- argument parsing -----------------------------------------------------------------


def test_cell_args_parse():
    assert parse_cell_args("session=a") == CellArgs("a", None, False)
    assert parse_cell_args("timeout=2.5 session='my session' --bg") == CellArgs("my session", 2.5, True)


@pytest.mark.parametrize(
    "line, message",
    [
        ("", "missing session name"),
        ("timeout=3", "missing session name"),
        ("session=", "must not be empty"),
        ("session=a timeout=abc", "timeout must be a positive number of seconds, got 'abc'"),
        ("session=a timeout=-1", "timeout must be a positive number"),
        ("session=a timeout=nan", "timeout must be a positive number"),
        ("session=a --background", "unknown option '--background'"),
        ("session=a color=red", "unknown option 'color=red'"),
        ("session=a session=b", "session= given twice"),
        ("session='a", "cannot parse"),
    ],
)
def test_bad_cell_args_are_usage_errors(line, message):
    with pytest.raises(UsageError, match=message) as info:
        parse_cell_args(line)
    assert "\n" not in str(info.value) and "%%pool session=NAME" in str(info.value)


@pytest.mark.parametrize(
    "line, message",
    [
        ("", "needs a command"),
        ("frobnicate", "unknown command 'frobnicate'"),
        ("status now", "takes no arguments"),
        ("release", "takes one session name"),
        ("release a b", "takes one session name"),
        ("push a", "takes a session name and variable names"),
        ("pull a 1x", "'1x' is not a variable name"),
        ("pull a class", "'class' is not a variable name"),
        ("push '' x", "must not be empty"),
    ],
)
def test_bad_line_args_are_usage_errors(line, message):
    with pytest.raises(UsageError, match=message):
        parse_line_args(line)


@pytest.mark.parametrize("parse, line", [(parse_cell_args, "session="), (parse_cell_args, "session=' '"),
                                         (parse_line_args, "release ''"), (parse_line_args, "push '' x")])
def test_an_empty_session_name_gets_a_message_that_fits_the_magic(parse, line):
    """Issue 19, item 9: the Python API's hint ("pass session=None for an anonymous kernel")
    would, typed into the magic, make a session literally named None. The magic names its session."""
    with pytest.raises(UsageError) as info:
        parse(line)
    message = str(info.value)
    assert "must not be empty" in message and "None" not in message and "anonymous" not in message
    if parse is parse_cell_args:
        assert "e.g. session=a" in message


def test_bad_arguments_touch_nothing(ip):
    for cell in ["%%pool\n1", "%%pool session=a timeout=abc\n1", "%%pool session=a --nope\n1", "%pool release"]:
        result, captured = run(ip, cell)
        assert isinstance(result.error_in_exec, UsageError), cell
    assert magics_of(ip)._pool is None  # not even created

    assert run(ip, "%%pool session=a\nx = 1")[0].success
    before = magics_of(ip).pool.stats()
    result, _ = run(ip, "%%pool session=a timeout=abc\nx = 2")
    assert isinstance(result.error_in_exec, UsageError)
    assert magics_of(ip).pool.stats().counters == before.counters


def test_help_shows_usage(ip):
    assert "%pool push NAME VAR" in ip.find_line_magic("pool").__doc__
    assert "%%pool session=NAME [timeout=SECONDS] [--bg]" in ip.find_cell_magic("pool").__doc__
    _, captured = run(ip, "%pool?")
    assert "%pool release NAME" in captured.stdout


# ---- running cells ---------------------------------------------------------------------


def test_sessions_keep_separate_state_on_separate_kernels(ip):
    run(ip, "%%pool session=a\nx = 'a-value'\nimport os; pid = os.getpid()")
    run(ip, "%%pool session=b\nx = 'b-value'\nimport os; pid = os.getpid()")
    result, captured = run(ip, "%%pool session=a\nprint(x, pid)")
    assert result.success
    a_out = captured.stdout
    _, captured = run(ip, "%%pool session=b\nprint(x, pid)")
    b_out = captured.stdout
    assert a_out.startswith("a-value") and b_out.startswith("b-value")
    assert a_out.split()[1] != b_out.split()[1]  # different kernel processes
    assert ip.run_line_magic("pool", "sessions") == ["a", "b"]


def test_outputs_and_last_expression_reach_the_cell(ip):
    result, captured = run(
        ip,
        "%%pool session=a\n"
        "import sys\n"
        "print('to stdout'); print('to stderr', file=sys.stderr)\n"
        "from IPython.display import HTML, display\n"
        "display(HTML('<b>rich</b>'))\n"
        "40 + 2",
    )
    assert result.success and result.result is None  # the value is shown, not returned
    assert captured.stdout == "to stdout\n" and captured.stderr == "to stderr\n"
    data = [out.data for out in captured.outputs]
    assert data[0]["text/html"] == "<b>rich</b>"
    assert data[1]["text/plain"] == "42"


def test_output_made_between_cells_comes_first_in_a_later_cell(ip, tmp_path):
    """A thread prints 2 s after its cell ended: a later cell of the session shows it first, headed, once."""
    marker = tmp_path / "printed"
    run(ip, f"%%pool session=a\nimport pathlib, threading\n"
            f"threading.Timer(2, lambda: (print('late', flush=True), pathlib.Path({str(marker)!r}).touch())).start()")
    deadline = time.monotonic() + 60
    while not marker.exists():  # another process's doing: no event reaches the test
        assert time.monotonic() < deadline, "the kernel's thread never printed"
        time.sleep(0.05)
    # Sent before the next cell's messages (one IOPub queue), it is in the ring when this cell
    # starts, or arrives during it and waits for the one after: either way shown exactly once.
    shown = []
    for text in ("next", "again"):
        _, captured = run(ip, f"%%pool session=a\nprint({text!r})")
        shown.append((captured.stderr, captured.stdout))
    headed = ("[output of session a while no cell ran]\n", "late\n")
    assert shown in ([(headed[0], headed[1] + "next\n"), ("", "again\n")],
                     [("", "next\n"), (headed[0], headed[1] + "again\n")])


def test_remote_error_is_the_remote_exception_shown_once_and_fails_the_cell(ip):
    ip.run_cell("%%pool session=a\ndef inner():\n    raise KeyError('remote-key')", store_history=True)
    defined_in = ip.execution_count - 1
    with capture_output() as captured:
        result = ip.run_cell("%%pool session=a\nx = 1\ninner()", store_history=True)
    error = result.error_in_exec
    assert isinstance(error, RemoteCellError) and type(error).__name__ == "KeyError"  # named like the remote one
    assert (error.ename, str(error)) == ("KeyError", "'remote-key'")
    assert error.result.session == "a"
    shown = re.sub(r"\x1b\[[0-9;]*m", "", captured.stdout + captured.stderr)
    assert shown.count("Traceback") == 1 and shown.count("KeyError: 'remote-key'") == 1  # once
    assert "inner()" in shown  # the remote frames
    # Cell In[k] names the local cells (the remote kernel counted 1 and 2)
    assert re.findall(r"Cell In\[(\d+)\]", shown) == [str(defined_in + 1), str(defined_in)]
    assert pickle.loads(pickle.dumps(error)).evalue == "'remote-key'"
    assert run(ip, "%%pool session=a\nprint('still here')")[1].stdout == "still here\n"


def test_timeout_interrupts_the_remote_cell(ip):
    result, _ = run(ip, "%%pool session=a timeout=1\nimport time; time.sleep(30)")
    assert type(result.error_in_exec).__name__ == "ExecutionTimeout"
    assert run(ip, "%%pool session=a\nprint('free again')")[1].stdout == "free again\n"


def test_pool_errors_show_their_message_and_the_full_traceback_is_one_tb_away(ip):
    result, captured = run(ip, "%%pool session=a timeout=1\nimport time; time.sleep(30)")
    shown = (captured.stdout + captured.stderr).strip().splitlines()
    assert shown[0].startswith("ExecutionTimeout: cell exceeded its timeout of 1 s")
    assert len(shown) <= 3 and "%tb" in shown[-1]
    with capture_output() as full:
        ip.run_line_magic("tb", "")
    assert "Traceback" in full.stdout and "magics.py" in full.stdout and "ExecutionTimeout" in full.stdout


def test_a_bad_kernelspec_is_a_short_error(ip):
    ip.run_line_magic("config", "KernelPool.kernel_name = 'no-such-kernel'")
    result, captured = run(ip, "%%pool session=a\n1")
    assert isinstance(result.error_in_exec, ValueError)
    shown = (captured.stdout + captured.stderr).strip().splitlines()
    assert shown[0].startswith("ValueError: no kernelspec named 'no-such-kernel'; installed:") and len(shown) <= 3
    assert magics_of(ip)._pool is None


def test_a_full_pool_says_who_holds_the_kernels_while_the_cell_waits(ip):
    ip.run_line_magic("config", "KernelPool.max_kernels = 1")
    run(ip, "%%pool session=a\npass")
    pool = magics_of(ip).pool
    # the user's way out, done by a helper the moment session b waits: release a
    freeing = []

    def release_a_once_b_waits(stats):
        if not freeing and any(w.session == "b" for w in stats.waiting):
            freeing.append(threading.Thread(target=pool.release, args=("a",)))
            freeing[0].start()

    unsubscribe = pool.subscribe(release_a_once_b_waits)
    result, captured = run(ip, "%%pool session=b\nprint('b ran')")
    unsubscribe()
    freeing[0].join()
    assert result.success and captured.stdout == "b ran\n"
    assert "session 'b' is waiting for a kernel: all 1 are held, by a (idle)" in captured.stderr
    assert "%pool release a" in captured.stderr and "KernelPool.max_kernels = 2" in captured.stderr


def test_a_checkout_timeout_is_brief_and_follows_the_wait_message(ip):
    ip.run_line_magic("config", "KernelPool.max_kernels = 1")
    assert run(ip, "%%pool session=a\npass")[0].success
    ip.run_line_magic("config", "KernelPool.checkout_timeout = 1.0")  # once a holds the kernel (starts are slow under load)
    result, captured = run(ip, "%%pool session=b\npass")
    assert type(result.error_in_exec).__name__ == "CheckoutTimeout"
    assert "session 'b' is waiting for a kernel" in captured.stderr
    shown = captured.stdout.strip().splitlines()
    assert shown[0].startswith("CheckoutTimeout: no kernel free for session 'b' within 1 s") and len(shown) <= 3


def test_no_wait_message_when_a_kernel_is_only_starting(ip):
    result, captured = run(ip, "%%pool session=a\nprint('first')")
    assert result.success and captured.stderr == ""


@pytest.mark.parametrize(
    "line, expected",
    [
        ("%pool re", ["release", "restart"]),
        ("%pool ", ["status", "sessions", "wait", "release", "interrupt", "restart", "push", "pull", "shutdown"]),
        ("%pool release al", ["alpha"]),
        ("%pool pull ", ["alpha", "beta"]),
        ("%%pool ses", ["session="]),
        ("%%pool session=", ["session=alpha", "session=beta"]),
        ("%%pool session=b", ["session=beta"]),
        ("%%pool session=alpha --", ["--bg"]),
        ("%%pool session=alpha t", ["timeout="]),
    ],
)
def test_tab_completion(ip, line, expected):
    run(ip, "%%pool session=alpha\npass")
    run(ip, "%%pool session=beta\npass")
    with provisionalcompleter():
        completions = list(ip.Completer.completions(line, len(line)))
    assert sorted(line[: c.start] + c.text for c in completions) == sorted(line[: len(line) - len(line.split(" ")[-1])] + e for e in expected)


def test_completion_and_cell_hook_are_removed_on_unload(ip):
    magics = magics_of(ip)
    assert magics.complete in ip.Completer.custom_matchers and magics.note_cell in ip.events.callbacks["pre_run_cell"]
    ip.run_line_magic("unload_ext", "jupyter_sessionpool")
    assert magics.complete not in ip.Completer.custom_matchers
    assert magics.note_cell not in ip.events.callbacks["pre_run_cell"]
    with provisionalcompleter():
        assert "release" not in [c.text for c in ip.Completer.completions("%pool re", 8)]
    ip.run_line_magic("load_ext", "jupyter_sessionpool")  # the fixture unloads it again


def test_config_before_first_use_and_after_reaches_the_pool(ip):
    ip.run_line_magic("config", "KernelPool.max_kernels = 3")
    ip.run_line_magic("config", "KernelPool.execution_timeout = 30.0")
    pool = magics_of(ip).pool
    assert (pool.max_kernels, pool.execution_timeout) == (3, 30.0)
    assert pool in ip.configurables
    ip.run_line_magic("config", "KernelPool.max_kernels = 5")
    assert pool.max_kernels == 5 and pool.stats().max_kernels == 5


def test_config_listing_never_shows_the_gateway_secrets(ip, monkeypatch):
    """Issue 19, item 5: ``%config KernelPool`` printed the gateway token (even one taken from
    JUPYTER_GATEWAY_AUTH_TOKEN) into the notebook's saved output, and a password in gateway_url."""
    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", "tok-from-the-environment")
    ip.run_line_magic("config", "KernelPool.gateway_url = 'http://alice:pw-secret@gateway.invalid:8888'")
    pool = magics_of(ip).pool  # made, not started: nothing reaches the (absent) gateway
    with capture_output() as listing:
        ip.run_line_magic("config", "KernelPool")
    assert "KernelPool.gateway_token" in listing.stdout and "http://alice:***@gateway.invalid:8888" in listing.stdout
    assert "tok-from-the-environment" not in listing.stdout and "pw-secret" not in listing.stdout
    assert pool.gateway_token == "tok-from-the-environment"  # code still reads the value


def test_config_after_first_use_that_cannot_apply_is_refused_and_changes_nothing(ip, caplog):
    run(ip, "%%pool session=a\npass")
    pool = magics_of(ip).pool
    ip.run_line_magic("config", "KernelPool.kernel_name = 'no-such-kernel'")  # %config reports the TraitError
    assert "kernel_name not changed: the pool would start local kernels, and no kernelspec named" in caplog.text
    assert pool.kernel_name == "python3" and run(ip, "%%pool session=b\nprint('still fine')")[1].stdout == "still fine\n"


# ---- background cells ------------------------------------------------------------------


def test_background_cell_returns_at_once_and_wait_collects_it(ip):
    with capture_output() as captured:
        ip.run_cell("%%pool session=a --bg\nimport time; time.sleep(1); print('bg finished')")
        assert "bg finished" not in captured.stdout  # returned before the remote cell ended
        result = ip.run_cell("%pool wait")
    assert result.success
    assert captured.stdout.index("bg finished") < captured.stdout.index("1 background cell(s) finished")


def test_a_background_cell_ends_off_the_pools_loop_thread(ip, monkeypatch):
    """Issue 19, item 7: the --bg magic's ``_finished`` (which renders all of the cell's output
    once more) ran on the pool's loop thread, stalling every session meanwhile."""
    finished, threads, called = PoolMagics._finished, [], threading.Event()

    def spy(self, job, parent=None):
        threads.append(threading.current_thread().name)
        if threading.current_thread() is not threading.main_thread():
            called.set()  # the future's done-callback, not %pool wait's own call
        finished(self, job, parent)

    monkeypatch.setattr(PoolMagics, "_finished", spy)
    run(ip, "%%pool session=a --bg\nprint('bg')")
    run(ip, "%pool wait")
    assert called.wait(30)
    assert "jupyter-sessionpool" not in threads, threads  # the loop thread's name
    assert all(name == "MainThread" or name.startswith("jupyter-sessionpool-callback") for name in threads), threads


def test_background_cells_on_one_session_run_in_order(ip):
    with capture_output() as captured:
        for i in range(4):
            ip.run_cell(f"%%pool session=a --bg\nimport time; time.sleep(0.{3 - i}); print('cell {i}')")
        ip.run_cell("%pool wait")
    assert [line for line in captured.stdout.splitlines() if line.startswith("cell")] == [f"cell {i}" for i in range(4)]


def test_wait_reraises_the_first_remote_error(ip):
    with capture_output():
        ip.run_cell("%%pool session=a --bg\nprint('ok')", store_history=True)
        ip.run_cell("%%pool session=b --bg\nraise ValueError('first')", store_history=True)
        started = ip.execution_count - 1
        ip.run_cell("%%pool session=c --bg\nraise ValueError('second')", store_history=True)
        result = ip.run_cell("%pool wait")
    error = result.error_in_exec
    assert isinstance(error, RemoteCellError) and type(error).__name__ == "ValueError" and str(error) == "first"
    rendered = error._render_traceback_()
    assert rendered[0] == f"In [{started}] (%%pool session=b --bg) raised:"
    assert any(f"In[{started}]" in line for line in rendered)  # the remote cell number, relabelled
    assert ip.run_line_magic("pool", "wait") is None  # collected: nothing left to wait for


# ---- line commands ---------------------------------------------------------------------


def test_release_restart_interrupt_and_shutdown(ip):
    magics = magics_of(ip)
    with capture_output() as captured:
        ip.run_line_magic("pool", "release a")  # no pool yet: nothing to do, nothing created
    assert "holds no kernel" in captured.stdout and magics._pool is None

    run(ip, "%%pool session=a\nx = 1")
    _, captured = run(ip, "%pool interrupt a")
    assert "interrupted session 'a'" in captured.stdout
    _, captured = run(ip, "%pool restart a")
    assert "restarted session 'a'" in captured.stdout
    result, _ = run(ip, "%%pool session=a\nx")
    assert isinstance(result.error_in_exec, RemoteCellError) and result.error_in_exec.ename == "NameError"
    _, captured = run(ip, "%pool release a")
    assert "released session 'a'" in captured.stdout and ip.run_line_magic("pool", "sessions") == []

    run(ip, "%%pool session=b\npass")
    pool = magics.pool
    pids = kernel_pids(pool)
    run(ip, "%pool shutdown")
    assert pids and pool not in ip.configurables
    assert_gone(pids)
    assert run(ip, "%%pool session=a\nprint('new pool')")[1].stdout == "new pool\n"
    assert magics.pool is not pool


def test_status_prints_the_table_outside_a_kernel(ip):
    run(ip, "%%pool session=a\npass")
    _, captured = run(ip, "%pool status")
    assert "python3 pool: 0/4 busy, 1 idle" in captured.stdout and " a " in captured.stdout


def test_unload_shuts_the_pool_down_and_removes_the_magics(ip):
    run(ip, "%%pool session=a\npass")
    pids = kernel_pids(magics_of(ip).pool)
    ip.run_line_magic("unload_ext", "jupyter_sessionpool")
    assert pids
    assert_gone(pids)
    assert ip.find_line_magic("pool") is None and ip.find_cell_magic("pool") is None
    ip.run_line_magic("load_ext", "jupyter_sessionpool")  # the fixture unloads it again


# ---- push / pull -------------------------------------------------------------------------


def test_push_and_pull_round_trip(ip):
    ip.user_ns.update(data=[1, 2, 3], scale={"k": 2.5})
    run(ip, "%pool push a data scale")
    result, _ = run(ip, "%%pool session=a\ntotal = sum(data) * scale['k']\nlabel = 'ok'")
    assert result.success
    run(ip, "%pool pull a total label")
    assert (ip.user_ns["total"], ip.user_ns["label"]) == (15.0, "ok")
    assert run(ip, "%%pool session=a\n'_jsp_pack' in globals() or '_jsp_unpack' in globals()")[1].outputs[0].data[
        "text/plain"
    ] == "False"


def test_push_errors_are_clear_and_touch_nothing(ip):
    ip.run_cell("import threading; lock = threading.Lock(); ok = 1")
    result, _ = run(ip, "%pool push a ok missing")
    assert isinstance(result.error_in_exec, UsageError) and "'missing'" in str(result.error_in_exec)
    result, _ = run(ip, "%pool push a ok lock")
    assert isinstance(result.error_in_exec, TransferError)
    assert "'lock' cannot be pickled" in str(result.error_in_exec)
    assert magics_of(ip)._pool is None  # failed before any kernel was involved

    ip.run_line_magic("config", "PoolMagics.transfer_limit = 1000")
    ip.user_ns["big"] = b"x" * 2000
    result, _ = run(ip, "%pool push a big")
    assert isinstance(result.error_in_exec, TransferError) and "over the limit of 1000 bytes" in str(result.error_in_exec)


def test_pull_errors_are_clear(ip):
    result, _ = run(ip, "%pool pull a x")
    assert isinstance(result.error_in_exec, TransferError) and "holds no kernel" in str(result.error_in_exec)
    run(ip, "%%pool session=a\nimport threading; lock = threading.Lock(); big = b'x' * 5000")
    result, _ = run(ip, "%pool pull a nope")
    assert "no variable named 'nope'" in str(result.error_in_exec)
    result, _ = run(ip, "%pool pull a lock")
    assert "'lock' cannot be pickled" in str(result.error_in_exec)
    ip.run_line_magic("config", "PoolMagics.transfer_limit = 1000")
    result, _ = run(ip, "%pool pull a big")
    assert isinstance(result.error_in_exec, TransferError) and "over the limit of 1000 bytes" in str(result.error_in_exec)
    assert "big" not in ip.user_ns
