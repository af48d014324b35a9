"""A forked kernel is indistinguishable from a spawned one: each point side by side, through jupyter_client.

Two kernels of the same kernelspec argv, started by jupyter_client's blocking
KernelManager with the same env and cwd: ``fork`` (the ``sessionpool-fork`` provisioner)
and ``spawn`` (jupyter_client's local provisioner). Every test asks both the same thing and
compares the answers.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from forkkit import Kernel, kernelspecs

from jupyter_sessionpool.forking import stop_templates

SESSION_NAME = "/notebooks/analysis.ipynb"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """Test kernelspecs on JUPYTER_PATH, a working directory and a per-start environment."""
    root = tmp_path_factory.mktemp("forking")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(kernelspecs(root / "prefix")))
        cwd = root / "work dir"
        cwd.mkdir()
        env = {**os.environ, "JSP_PER_START": "yes", "JPY_SESSION_NAME": SESSION_NAME}
        yield cwd, env
    assert stop_templates(), "a template outlived its kernels"


@pytest.fixture(scope="module")
def pair(scratch):
    """A forked and a spawned kernel, started alike."""
    cwd, env = scratch
    kernels = {name: Kernel(name, cwd=str(cwd), env=env) for name in ("fork", "spawn")}
    yield kernels
    for kernel in kernels.values():
        kernel.stop()


def both(pair, expression: str) -> tuple:
    return pair["fork"].value(expression), pair["spawn"].value(expression)


def test_the_fork_kernel_was_forked_and_the_spawn_kernel_spawned(pair):
    fork, spawn = pair["fork"], pair["spawn"]
    assert fork.forked and not spawn.forked
    assert fork.value("__import__('os').getppid()") == fork.template.pid
    assert spawn.value("__import__('os').getppid()") == os.getpid()


def test_own_pid_process_group_session_and_connection_file(pair):
    for kernel in pair.values():
        pid = kernel.km.provisioner.pid
        assert kernel.value("import os; os.getpid(), os.getpgid(0), os.getsid(0)") == (pid, pid, pid)
        assert kernel.km.provisioner.pgid == pid
        connection = kernel.value("get_ipython().kernel.parent.connection_file")
        assert connection == kernel.km.connection_file and Path(connection).exists()
        # the parent poller watches the process that is really its parent
        assert kernel.value("int(os.environ['JPY_PARENT_PID']) == os.getppid() == get_ipython().kernel.parent.parent_handle")
    assert pair["fork"].km.connection_file != pair["spawn"].km.connection_file


def test_cwd_and_env_are_set_per_start(pair, scratch):
    cwd, env = scratch
    fork_env, spawn_env = both(pair, "dict(os.environ)")
    assert fork_env.pop("JPY_PARENT_PID") == str(pair["fork"].template.pid)
    assert spawn_env.pop("JPY_PARENT_PID") == str(os.getpid())
    assert fork_env == spawn_env
    assert fork_env["JSP_PER_START"] == "yes" and fork_env["JPY_SESSION_NAME"] == SESSION_NAME
    assert both(pair, "os.getcwd()") == (str(cwd), str(cwd))
    assert both(pair, "__session__") == (SESSION_NAME, SESSION_NAME)  # ipykernel reads JPY_SESSION_NAME


def test_argv_executable_and_paths_are_a_spawned_kernels(pair):
    expression = "import sys; sys.argv, sys.orig_argv, sys.executable, sys.path, tuple(sys.flags)"
    fork, spawn = both(pair, expression)
    fork_file, spawn_file = pair["fork"].km.connection_file, pair["spawn"].km.connection_file
    normal = [[arg.replace(spawn_file, fork_file) for arg in argv] for argv in spawn[:2]]
    assert list(fork[:2]) == normal
    assert fork[0][0].endswith("ipykernel_launcher.py") and fork[2] == sys.executable
    assert fork[2:] == spawn[2:]


def test_threads_are_the_same_as_a_spawned_kernels(pair):
    expression = "import threading; sorted((type(t).__name__, t.name, t.daemon) for t in threading.enumerate())"
    fork, spawn = both(pair, expression)
    assert fork == spawn
    assert len(os.listdir(f"/proc/{pair['fork'].km.provisioner.pid}/task")) == len(
        os.listdir(f"/proc/{pair['spawn'].km.provisioner.pid}/task"))  # no thread the kernel did not start


def test_signal_handlers_and_mask_are_a_spawned_kernels(pair):
    expression = (
        "import signal; sorted((s.name, repr(signal.getsignal(s))) for s in signal.valid_signals() "
        "if s not in (signal.SIGKILL, signal.SIGSTOP) and isinstance(s, signal.Signals)), "
        "sorted(map(int, signal.pthread_sigmask(signal.SIG_BLOCK, [])))"
    )
    fork, spawn = both(pair, expression)
    assert fork == spawn
    with open(f"/proc/{pair['fork'].km.provisioner.pid}/status") as f:
        fork_status = {line.split(":")[0]: line.split(":")[1].strip() for line in f if line.startswith("Sig")}
    with open(f"/proc/{pair['spawn'].km.provisioner.pid}/status") as f:
        spawn_status = {line.split(":")[0]: line.split(":")[1].strip() for line in f if line.startswith("Sig")}
    for field in ("SigBlk", "SigIgn"):  # what the kernel blocks and ignores, as the OS sees it
        assert fork_status[field] == spawn_status[field], field


def test_history_is_the_kernels_own_never_a_file_shared_across_the_fork(pair):
    expression = "str(get_ipython().history_manager.hist_file)"
    fork_file, spawn_file = both(pair, expression)
    assert fork_file == spawn_file and fork_file.endswith("history.sqlite")  # what this kernelspec's kernels use
    template = pair["fork"].template.pid
    opened = [os.readlink(f"/proc/{template}/fd/{fd}") for fd in os.listdir(f"/proc/{template}/fd")]
    assert not [path for path in opened if "sqlite" in path], opened
    for kernel in pair.values():
        kernel.run(f"marker = 'cell of {kernel.km.provisioner.pid}'")
    mine = [pair[n].value("[src for _, _, src in get_ipython().history_manager.get_range()]") for n in ("fork", "spawn")]
    assert any(str(pair["fork"].km.provisioner.pid) in src for src in mine[0])
    assert not any(str(pair["spawn"].km.provisioner.pid) in src for src in mine[0])
    numbers = both(pair, "get_ipython().history_manager.session_number")
    assert numbers[0] != numbers[1]


def test_connect_info_names_the_kernels_own_connection_file(pair):
    for kernel in pair.values():
        content, outputs = kernel.run("%connect_info")
        text = "".join(m["content"].get("text", "") for m in outputs)
        assert content["status"] == "ok" and Path(kernel.km.connection_file).name in text, text
        assert json.loads(text[text.index("{"):text.index("}") + 1])["shell_port"] == kernel.km.shell_port


def test_input_reads_from_the_front_end(pair):
    for kernel in pair.values():
        msg_id = kernel.kc.execute("answer = input('name? ')", allow_stdin=True)
        request = kernel.kc.get_stdin_msg(timeout=30)
        assert request["msg_type"] == "input_request" and request["content"]["prompt"] == "name? "
        kernel.kc.input("forked or not")
        while True:
            reply = kernel.kc.get_shell_msg(timeout=30)
            if reply["parent_header"]["msg_id"] == msg_id:
                break
        assert reply["content"]["status"] == "ok"
    assert both(pair, "answer") == ("forked or not", "forked or not")


def test_matplotlib_inline_draws_a_png(pair):
    for kernel in pair.values():
        content, outputs = kernel.run("%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.show()")
        assert content["status"] == "ok", content
        assert [m for m in outputs if "image/png" in m["content"].get("data", {})], outputs


def test_the_debugger_answers_debug_requests_on_the_control_channel(pair):
    """What JupyterLab's debugger sends first: debugInfo, then initialize (which starts debugpy)."""
    for kernel in pair.values():
        seq = 0
        answers = []
        for command, arguments in (("debugInfo", {}), ("initialize", {"clientID": "test", "adapterID": "python"})):
            seq += 1
            msg = kernel.kc.session.msg("debug_request", {"type": "request", "seq": seq, "command": command,
                                                          "arguments": arguments})
            kernel.kc.control_channel.send(msg)
            while True:
                reply = kernel.kc.control_channel.get_msg(timeout=30)
                if reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]:
                    break
            answers.append((command, reply["content"].get("success"), reply["content"].get("command")))
        assert answers == [("debugInfo", True, "debugInfo"), ("initialize", True, "initialize")], (kernel.forked, answers)


def test_random_streams_are_each_kernels_own_numpy_included(scratch):
    """CPython reseeds ``random`` in a forked child; numpy's global state (preloaded here) is reseeded by the child."""
    cwd, env = scratch
    kernels = [Kernel("fork-np", cwd=str(cwd), env=env) for _ in range(3)]
    try:
        assert all(k.forked for k in kernels)
        assert len({k.template.pid for k in kernels}) == 1
        assert kernels[0].value("import sys; 'numpy' in sys.modules")  # preloaded: imported before any cell
        draws = [k.value("import random, numpy; random.random(), float(numpy.random.random())") for k in kernels]
        assert len({d[0] for d in draws}) == 3 and len({d[1] for d in draws}) == 3, draws
    finally:
        for kernel in kernels:
            kernel.stop(now=True)


def test_a_forked_kernels_first_cell_and_shutdown_import_nothing_the_template_did_not(scratch):
    """What a kernel imports at its first cell (IPython's logger) and at shutdown (psutil, to find
    its children) comes from the template, as the start's own imports do: a module object made
    after the fork is one the template's ``gc.freeze()`` did not hold."""
    cwd, env = scratch
    kernel = Kernel("fork", cwd=str(cwd), env=env)
    try:
        assert kernel.forked
        made_here = kernel.value(
            "import sys, gc\n"
            "live = {id(o) for o in gc.get_objects()}\n"
            "sorted(name for name, module in list(sys.modules.items()) if id(module) in live), 'psutil' in sys.modules"
        )
        assert made_here == (["__main__"], True)  # __main__: the kernel's own user namespace
    finally:
        kernel.stop(now=True)


@pytest.mark.parametrize("name", ["fork", "spawn"])
def test_interrupt_restart_shutdown_and_exit_codes_through_jupyter_client(scratch, name):
    cwd, env = scratch
    kernel = Kernel(name, cwd=str(cwd), env=env)
    try:
        msg_id = kernel.kc.execute("print('sleeping', flush=True); import time; time.sleep(60)")
        while kernel.kc.get_iopub_msg(timeout=30)["content"].get("text") != "sleeping\n":
            pass
        kernel.km.interrupt_kernel()  # SIGINT to the kernel's process group
        while (reply := kernel.kc.get_shell_msg(timeout=30))["parent_header"]["msg_id"] != msg_id:
            pass
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"

        first = kernel.process
        kernel.km.restart_kernel()
        assert first.returncode == 0  # asked to shut down for the restart, it exited cleanly
        second = kernel.process = kernel.km.provisioner.process
        assert second.pid != first.pid and (name == "fork") == kernel.forked
        kernel.kc.wait_for_ready(timeout=60)
        assert kernel.value("1 + 1") == 2

        kernel.kc.execute("import os; os._exit(3)")
        assert second.wait(30) == 3 and not kernel.km.is_alive()
        kernel.km.restart_kernel(now=True)
        third = kernel.km.provisioner.process
        kernel.kc.wait_for_ready(timeout=60)
        kernel.km.shutdown_kernel(now=True)  # kill: SIGKILL to the process group
        assert third.returncode == -signal.SIGKILL
    finally:
        kernel.stop(now=True)


@pytest.mark.parametrize("name", ["fork", "spawn"])
def test_exit_runs_atexit_handlers_joins_threads_and_flushes(scratch, tmp_path, name):
    """A shutdown ends the kernel as interpreter exit does: non-daemon threads joined, atexit run, output flushed."""
    cwd, env = scratch
    marks = tmp_path / "marks"
    log = open(tmp_path / "kernel.log", "wb")  # noqa: SIM115 - closed below
    kernel = Kernel(name, cwd=str(cwd), env=env, stdout=log, stderr=log)
    try:
        kernel.run(
            "import atexit, sys, threading, time\n"
            f"marks = open({str(marks)!r}, 'a')\n"
            "def late():\n    time.sleep(0.5); marks.write('thread ')\n"
            "threading.Thread(target=late).start()\n"
            "atexit.register(lambda: (marks.write('atexit'), marks.close()))\n"
            "sys.__stdout__.write('unflushed to the log')"
        )
        process = kernel.process
        kernel.stop()
        assert process.returncode == 0
        assert marks.read_text() == "thread atexit"
    finally:
        kernel.stop(now=True)
        log.close()
    assert "unflushed to the log" in (tmp_path / "kernel.log").read_text()



@pytest.mark.parametrize("name", ["fork", "spawn"])
def test_terminate_and_the_provisioner_info_for_a_restarted_server(scratch, name):
    """SIGTERM reaches the kernel's process group; what a server persists of the provisioner loads back."""
    from jupyter_client.provisioning import KernelProvisionerFactory
    from jupyter_core.utils import run_sync

    cwd, env = scratch
    kernel = Kernel(name, cwd=str(cwd), env=env)
    try:
        provisioner = kernel.km.provisioner
        info = run_sync(provisioner.get_provisioner_info)()
        assert (info["pid"], info["pgid"]) == (provisioner.pid, provisioner.pid)
        if name == "fork":
            assert info["forked"] is True and info["template_pid"] == kernel.template.pid
        again = KernelProvisionerFactory.instance().create_provisioner_instance(
            kernel.km.kernel_id, kernel.km.kernel_spec, parent=None)
        assert type(again) is type(provisioner)
        run_sync(again.load_provisioner_info)(info)
        assert (again.pid, again.pgid, again.connection_info) == (provisioner.pid, provisioner.pgid,
                                                                  provisioner.connection_info)
        kernel.km._send_kernel_sigterm()
        assert kernel.process.wait(30) == -signal.SIGTERM
    finally:
        kernel.stop(now=True)
