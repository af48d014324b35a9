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
METHODS = ["execute", "checkout", "stats", "subscribe", "release", "interrupt", "restart", "sessions", "shutdown"]


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
        assert inspect.signature(KernelPool.execute).parameters.keys() == inspect.signature(
            AsyncKernelPool.execute
        ).parameters.keys()
