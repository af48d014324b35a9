"""The public names the design fixes are importable and documented."""

import inspect

import jupyter_sessionpool

DESIGN_NAMES = [
    "KernelPool", "AsyncKernelPool", "ExecutionResult", "PoolError", "CheckoutTimeout", "ExecutionTimeout",
    "ExecutionError", "KernelDied", "SessionLost", "KernelStartError", "PoolClosed",
]
SETTINGS = [
    "kernel_name", "max_kernels", "min_idle", "checkout_timeout", "execution_timeout", "startup_timeout",
    "shutdown_timeout", "session_idle_timeout", "env", "cwd",
]
METHODS = ["execute", "checkout", "stats", "subscribe", "release", "interrupt", "restart", "sessions", "shutdown",
           "widget_state", "watch_comms", "send_comm"]


def test_design_names_are_exported():
    assert set(DESIGN_NAMES) <= set(jupyter_sessionpool.__all__)
    for name in jupyter_sessionpool.__all__:
        assert hasattr(jupyter_sessionpool, name), name


def test_errors_are_catchable_as_pool_error_and_as_the_builtin_they_behave_like():
    from jupyter_sessionpool import CheckoutTimeout, ExecutionTimeout, PoolClosed, PoolError

    for name in DESIGN_NAMES:
        obj = getattr(jupyter_sessionpool, name)
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj is not PoolError:
            assert issubclass(obj, PoolError), name
    assert issubclass(CheckoutTimeout, TimeoutError) and issubclass(ExecutionTimeout, TimeoutError)
    assert issubclass(PoolClosed, RuntimeError)


def test_both_pools_have_the_same_settings_and_methods_with_docstrings():
    from jupyter_sessionpool import AsyncKernelPool, KernelPool

    for cls in (KernelPool, AsyncKernelPool):
        assert set(SETTINGS) <= set(cls.class_trait_names(config=True)), cls
        for name in METHODS:
            method = getattr(cls, name)
            assert method.__doc__, f"{cls.__name__}.{name} has no docstring"
        for name in ("execute", "send_comm", "widget_state", "watch_comms"):
            assert inspect.signature(getattr(KernelPool, name)).parameters.keys() == inspect.signature(
                getattr(AsyncKernelPool, name)
            ).parameters.keys(), name


def test_every_public_error_survives_a_pickle_round_trip():
    """Errors cross process boundaries (multiprocessing, ipyparallel, batch runners)."""
    import pickle

    from jupyter_sessionpool import (
        CheckoutTimeout, CommNotFound, ExecutionError, ExecutionResult, ExecutionTimeout, KernelDied,
        KernelStartError, PoolClosed, PoolError, SessionLost,
    )
    from jupyter_sessionpool.errors import ProtocolError

    result = ExecutionResult("error", 3, [], {"ename": "ValueError", "evalue": "bad", "traceback": ["tb"]},
                             "a", "k-1234567890", 0.5)
    errors = [
        PoolError("boom"),
        PoolClosed(),
        CheckoutTimeout("b", 2.0, {"k-1": "a", "k-2": None}, {"k-1": "idle", "k-2": "busy"}),
        ExecutionTimeout("a", 1.5, True, result),
        ExecutionError(result),
        KernelDied("k-1234567890", "a", result),
        SessionLost("a", "its kernel died"),
        KernelStartError("python3", "exit 7", "stderr tail", attempts=3),
        ProtocolError("malformed message"),
        CommNotFound("a", "c0ffee", "the session holds no kernel"),
    ]
    public = {obj for obj in vars(jupyter_sessionpool).values() if inspect.isclass(obj) and issubclass(obj, PoolError)}
    assert public <= {type(e) for e in errors}, "every public error is covered"
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert {k: v for k, v in vars(copy).items() if k != "result"} == {
            k: v for k, v in vars(error).items() if k != "result"
        }


def test_kernel_died_says_what_the_next_call_gets():
    from jupyter_sessionpool import ExecutionResult, KernelDied

    result = ExecutionResult("error", None, [], None, "a", "k-1", 0.1)
    running = str(KernelDied("k-1", "a", result))
    assert "while running code" in running and "raises SessionLost once" in running
    assert "fresh kernel" not in running.split("SessionLost")[0], "the next call does not silently get a fresh kernel"
    before = str(KernelDied("k-1", "a"))
    assert "before this call could run code" in before and "while running" not in before
    assert "next call gets a fresh kernel" in str(KernelDied("k-1", None)), "anonymous: nothing to lose"


def test_nothing_above_the_workers_imports_a_worker_module():
    """Issue 19, Design: the core and the faces reach the kernel workers only through the
    ``workers`` package (its interface and the functions that pick a backend), never a backend."""
    import ast
    from pathlib import Path

    package = Path(jupyter_sessionpool.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if "workers" in path.relative_to(package).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" if node.module else a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{path.name}: {name}" for name in names
                          if any(f"workers.{backend}" in name for backend in ("local", "gateway"))]
    assert offenders == []
