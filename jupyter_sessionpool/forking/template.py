"""The template: a warmed interpreter that forks fresh ipykernels on request.

This file is not imported by the pool. Its owner (a pool, or Jupyter Server through the
``sessionpool-fork`` provisioner) runs it *by path* with the interpreter of the kernelspec
it serves, so it needs nothing but that interpreter's ipykernel::

    python [the kernelspec's interpreter options] template.py CHANNEL_FD OWNER_PID

It imports what every kernel start imports (``ipykernel.kernelapp``, IPython,
``ipykernel.debugger``, the modules a rehearsal start loads, and the ``preload`` list),
compiles what a first cell compiles, calls ``gc.freeze()``, and then owns no thread, no zmq context and no event loop: it waits
on its channel and forks. Each child becomes the kernel a spawned ``python -m
ipykernel_launcher ...`` would have been (its own session and process group, cwd, env,
argv, stdio, signal handlers, random streams) and builds its ``IPKernelApp`` only after
the fork. The template reaps its children and reports each one's exit code.

Lifetime: the template dies with its owner (``PR_SET_PDEATHSIG`` and, when its channel
closes, it kills its kernels and exits); each kernel dies with the template (the same
signal, and ipykernel's parent poller through ``JPY_PARENT_PID``).

The channel is an ``AF_UNIX`` ``SOCK_SEQPACKET`` socket, one JSON object per packet:

* owner → template: ``{"preload": [...], "module": ...}`` once; then ``{"op": "fork",
  "id": N, "args": [...], "orig_argv": [...], "env": {...}, "cwd": ...}`` carrying four
  descriptors (stdin, stdout, stderr, and a pipe the child writes one byte to once its
  sockets are bound), or ``{"op": "retire"}`` (fork no more; exit after the last kernel).
* template → owner: ``{"ready": {...}}`` or ``{"error": ...}`` once; then ``{"id": N,
  "pid": P}`` or ``{"id": N, "error": ...}`` per fork, and ``{"exit": P, "code": C}``.
"""

import os
import sys

_HERE = os.path.dirname(os.path.realpath(__file__))
if sys.path and os.path.realpath(sys.path[0] or os.curdir) == _HERE:
    del sys.path[0]  # as ipykernel_launcher drops the cwd; IPython's init_path adds '' back in the kernel

import gc  # noqa: E402 - sys.path first
import importlib  # noqa: E402
import itertools  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402

_MAX_PACKET = 1 << 20  # a request (its env, mostly) of up to 1 MB
_PR_SET_PDEATHSIG = 1
# What a kernel start imports, imported once here (never a thread, a zmq context or a loop) ...
_KERNEL_MODULES = ("ipykernel.kernelapp", "IPython", "ipykernel.debugger")
# ... and what it imports later, where installed: ipykernel imports psutil at shutdown to find the
# kernel's children (a tenth of a forked kernel's CPU while each kernel imported it on its way out),
# IPython its logger at the first cell.
_LATER_MODULES = ("psutil", "IPython.core.logger")
_CONTROL_FINISH = 1.0  # seconds a stopping kernel gives its control thread to finish the shutdown request


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that started it ends; exit now if it already has."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)  # it died before the signal was armed


def _send(channel: socket.socket, message: dict) -> None:
    channel.send(json.dumps(message).encode())


def _recv(channel: socket.socket) -> tuple:
    """(message or None at EOF, received descriptors)."""
    data, fds, flags, _ = socket.recv_fds(channel, _MAX_PACKET, 8)
    if not data:
        return None, fds
    if flags & socket.MSG_TRUNC:
        raise ValueError("a request larger than the channel's packet limit")
    return json.loads(data), fds


def _sources(names: list) -> list:
    """[path, mtime_ns] of the directories the kernel's modules come from, taken before importing them.

    Every directory on ``sys.path`` (installing, upgrading or removing a distribution changes
    its site-packages directory) and each named module's package directory (an editable
    install's files). The owner retires a template once one of them changes.
    """
    paths = [os.path.abspath(p) for p in sys.path if p]
    for name in names:
        spec = importlib.util.find_spec(name.partition(".")[0])
        if spec is not None and spec.origin and os.path.isabs(spec.origin):
            paths.append(os.path.dirname(spec.origin))
    found = {}
    for path in paths:
        try:
            found[path] = os.stat(path).st_mtime_ns
        except OSError:
            pass  # a zip that does not exist, say
    return [[path, mtime] for path, mtime in found.items()]


def _rehearse(module_names: set) -> list:
    """Names of the modules a kernel's ``IPKernelApp.initialize()`` imports beyond ours.

    Found by initializing one throwaway kernel in a forked child with an empty IPython
    directory (no user configuration, startup files or extensions run), so that the
    template imports them once instead of every kernel: a quarter of a start's CPU.
    """
    scratch = tempfile.mkdtemp(prefix="jsp-rehearsal-")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read)
            os.environ["IPYTHONDIR"] = scratch
            from jupyter_client.connect import write_connection_file

            connection_file, _ = write_connection_file(
                os.path.join(scratch, "kernel.json"), transport="ipc", ip=os.path.join(scratch, "k")
            )
            from ipykernel.kernelapp import IPKernelApp

            sys.argv = ["ipykernel", "-f", connection_file, "--HistoryManager.hist_file=:memory:", "--log-level=CRITICAL"]
            IPKernelApp.instance().initialize()
            os.write(write, json.dumps([m for m in list(sys.modules) if m not in module_names]).encode())
            status = 0
        except BaseException:  # noqa: B036 - the template goes on without the list; say why
            traceback.print_exc()
        finally:
            os._exit(status)  # no atexit, no shutdown of what it built: only its module list matters
    os.close(write)
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    shutil.rmtree(scratch, ignore_errors=True)
    return json.loads(b"".join(chunks) or b"[]")


def _thread_names_taken() -> int:
    """How many default thread names ("Thread-N") the imports took (pydevd makes a Thread at import)."""
    import threading

    if not hasattr(threading, "_counter"):
        return 0
    taken = threading._counter() - 1
    threading._counter = itertools.count(taken + 1).__next__
    return taken


def _number_threads_as_spawned(app, taken: int) -> None:
    """Number this kernel's threads as a spawned kernel numbers them.

    A spawned kernel makes those imports while it builds its kernel, after its parent
    poller took "Thread-1": restart the count, and take the imports' names there.
    """
    import threading

    if not hasattr(threading, "_counter"):
        return
    threading._counter = itertools.count(1).__next__
    init_kernel = app.init_kernel

    def numbered_init_kernel() -> None:
        for _ in range(taken):
            threading._counter()
        init_kernel()

    app.init_kernel = numbered_init_kernel


def _say_when_bound(app, ready: int) -> None:
    """Write to ``ready`` once every socket is bound (``initialize()`` then writes the connection file).

    The owner returns from its launch then: its client connects to sockets that exist (no
    zmq reconnect interval to wait out), and its first requests wait in their queues while
    the kernel builds the rest of itself (its shell, its kernel object).
    """
    write_connection_file = app.write_connection_file

    def bound_and_written(**kwargs) -> None:
        write_connection_file(**kwargs)
        os.write(ready, b"1")
        os.close(ready)

    app.write_connection_file = bound_and_written


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _transform_a_cell() -> None:
    """Compile, once for every kernel, the regexes a first cell's input transforms compile (tokenize's among them).

    A process compiles them at its first cell: 2 ms of that cell, three quarters of it in a
    forked kernel. The transformer is a standalone object; nothing of it outlives this call
    but the module-level caches the kernels inherit.
    """
    from IPython.core.inputtransformer2 import TransformerManager

    TransformerManager().transform_cell("pass\n")


def _warm(hello: dict) -> dict:
    """Import everything a kernel needs, then freeze: what the ``ready`` message reports.

    ``ready["env"]`` is what those imports set in ``os.environ`` (debugpy sets
    ``PYDEVD_USE_FRAME_EVAL`` unless it is set): a spawned kernel's imports would set it too.
    """
    preload = list(hello.get("preload") or [])
    env_before = dict(os.environ)
    for name in _KERNEL_MODULES:
        importlib.import_module(name)
    for name in [*_LATER_MODULES, *_rehearse(set(sys.modules))]:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: S112 - a module only some kernels load: they import it themselves
            continue
    for name in preload:
        importlib.import_module(name)  # a missing preload module fails the template, loudly
    _transform_a_cell()
    if _threads() > 1:
        # Native pools started at import (OpenBLAS under numpy) stop in their fork handlers:
        # one throwaway fork runs those handlers, and nothing starts them again here.
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    if _threads() > 1:
        raise RuntimeError(
            f"the template has {_threads()} threads after importing {preload or 'the kernel modules'}: "
            "forking it could deadlock its kernels"
        )
    spec = importlib.util.find_spec(hello["module"])
    if spec is None or not spec.origin:
        raise ModuleNotFoundError(f"no module named {hello['module']!r}")
    origin = spec.origin
    if spec.submodule_search_locations is not None:  # a package run with -m runs its __main__
        origin = importlib.util.find_spec(hello["module"] + ".__main__").origin
    import ipykernel

    gc.collect()
    gc.freeze()  # the imports' objects stay in shared pages: a collection in a kernel does not copy them
    env = {k: v for k, v in os.environ.items() if env_before.get(k) != v}
    return {"pid": os.getpid(), "origin": origin, "ipykernel": ipykernel.__version__, "env": env,
            "thread_names": _thread_names_taken()}


def _serve(channel: socket.socket, origin: str) -> tuple:
    """Fork a kernel per request and report exits; returns only in a forked child: (request, fds)."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    children = set()
    retired = False
    while True:
        readable, _, _ = select.select([channel, wake_read], [], [])
        if wake_read in readable:
            os.read(wake_read, 4096)
            while children:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                children.discard(pid)
                _send(channel, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
            if retired and not children:
                return None, None
        if channel not in readable:
            continue
        request, fds = _recv(channel)
        if request is None:  # the owner is gone: so are its kernels
            for pid in children:
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            return None, None
        if request.get("op") == "retire":
            retired = True
            if not children:
                return None, None
            continue
        try:
            if retired:
                raise RuntimeError("this template is retired")
            if _threads() > 1:
                raise RuntimeError(f"the template has {_threads()} threads: forking it could deadlock its kernels")
            sys.stderr.flush()
            pid = os.fork()
        except Exception as exc:
            for fd in fds:
                os.close(fd)
            _send(channel, {"id": request.get("id"), "error": f"{type(exc).__name__}: {exc}"})
            continue
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (wake_read, wake_write):
                os.close(fd)
            channel.close()
            request["origin"] = origin
            return request, fds
        children.add(pid)
        for fd in fds:
            os.close(fd)
        _send(channel, {"id": request["id"], "pid": pid})


def _become_kernel(request: dict, fds: list, template: int) -> None:
    """In a forked child: become what ``Popen(cmd, start_new_session=True, ...)`` would have started."""
    _die_with_parent(template)
    os.setsid()
    stdin, stdout, stderr, ready = fds
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    for fd in {stdin, stdout, stderr} - {0, 1, 2}:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import time

    time.tzset()
    tempfile.tempdir = None  # found again from this kernel's TMPDIR
    sys.argv[:] = [request["origin"], *request["args"]]
    sys.orig_argv[:] = request["orig_argv"]
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        if stream is not None:
            stream.reconfigure(line_buffering=fd == 2 or os.isatty(fd))
    # CPython reseeds ``random`` in a forked child itself; numpy's global state is copied (numpy#9650)
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()
    from ipykernel.kernelapp import IPKernelApp
    from IPython.core.interactiveshell import InteractiveShell

    for singleton in (IPKernelApp, InteractiveShell):
        singleton.clear_instance()
    app = IPKernelApp.instance()
    app.parent_handle = template  # its default was read from the template's env at import
    _number_threads_as_spawned(app, request["thread_names"])
    _say_when_bound(app, ready)
    app.initialize()
    app.start()
    control = getattr(app, "control_thread", None)
    if control is not None and control.is_alive():
        # The shutdown request's last step on the control thread is a flush through IOPub.
        # ipykernel's close() (atexit) stops IOPub before joining that thread: if it runs
        # first, the flush waits its whole timeout (10 s) and the kernel is killed for it.
        control.join(_CONTROL_FINISH)
    _exit_as_an_interpreter_would()


def _exit_as_an_interpreter_would() -> None:
    """End the kernel as interpreter shutdown would (threads joined, atexit run, streams flushed), minus the teardown.

    Tearing down every module's objects touches every page shared with the template, each
    then copied before being freed: it cost a forked kernel more CPU than its whole start.
    What is left out is only what Python does not promise at exit (``__del__`` of objects
    still alive, module teardown).
    """
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # noqa: S110 - a closed or broken stream: nothing left to flush
            pass
    os._exit(0)


def main() -> None:
    channel_fd, owner = int(sys.argv[1]), int(sys.argv[2])
    _die_with_parent(owner)
    channel = socket.socket(fileno=channel_fd)
    hello, _ = _recv(channel)
    if hello is None:
        return
    sources = _sources([*_KERNEL_MODULES, *(hello.get("preload") or [])])
    try:
        ready = _warm(hello)
    except BaseException as exc:  # noqa: B036 - whatever stops the warm-up is the owner's reason to spawn
        traceback.print_exc()
        _send(channel, {"error": f"{type(exc).__name__}: {exc}", "sources": sources})
        return
    _send(channel, {"ready": ready, "sources": sources})
    template = os.getpid()
    request, fds = _serve(channel, ready["origin"])
    if request is not None:  # a forked child: the rest of this process is a kernel
        request["env"] = {**ready["env"], **request["env"]}  # what the imports set, unless this start sets it
        request["thread_names"] = ready["thread_names"]
        _become_kernel(request, fds, template)


if __name__ == "__main__":
    main()
