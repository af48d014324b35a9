"""Bad input gets a clear error naming the problem, at once, and disturbs nothing."""

from __future__ import annotations

import math

import pytest
from traitlets import TraitError

from jupyter_sessionpool import AsyncKernelPool, KernelPool

BAD_SESSIONS = [
    ("", ValueError, "must not be empty"),
    ("   ", ValueError, "must not be empty"),
    ("x" * 201, ValueError, "201 characters"),
    ("a\x00b", ValueError, "control characters"),
    ("line\nbreak", ValueError, "control characters"),
    (42, TypeError, "must be a str or None"),
    (b"bytes", TypeError, "must be a str or None"),
]

BAD_TIMEOUTS = [
    (-1, ValueError, "positive"),
    (0, ValueError, "positive"),
    (math.nan, ValueError, "positive"),
    ("10", TypeError, "number of seconds"),
    (True, TypeError, "number of seconds"),
]

BAD_OPTIONS = [
    ({"max_kernels": 0}, TraitError, "max_kernels must be at least 1"),
    ({"min_idle": -1}, TraitError, "min_idle must be 0 or more"),
    ({"checkout_timeout": -5}, TraitError, "checkout_timeout must be a positive"),
    ({"startup_timeout": 0}, TraitError, "startup_timeout must be a positive"),
    ({"kernel_name": "no-such-kernel"}, ValueError, "no kernelspec named 'no-such-kernel'; installed: .*python3"),
    ({"kernel_name": ""}, TraitError, "kernel_name must name a kernelspec"),
    ({"max_kernel": 4}, TypeError, "unknown option.*max_kernel; the settings are:.*max_kernels"),
    ({"transport": "udp"}, TraitError, "transport"),
    ({"start_method": "thread"}, TraitError, "start_method"),
    ({"preload": ["numpy pandas"]}, TraitError, "preload must list module names"),
]


@pytest.fixture(scope="module")
def warm_pool():
    """One pool with a session holding state, shared by the cases below to prove nothing is disturbed."""
    with KernelPool(max_kernels=2) as pool:
        pool.execute("x = 'undisturbed'", session="a")
        yield pool


def assert_undisturbed(pool: KernelPool) -> None:
    assert pool.execute("x", session="a").result == "'undisturbed'"
    assert pool.stats().waiting == ()


@pytest.mark.parametrize("session,error,message", BAD_SESSIONS)
def test_bad_session_names(warm_pool, session, error, message):
    for call in (
        lambda: warm_pool.execute("1", session=session),
        lambda: warm_pool.checkout(session=session),
        lambda: warm_pool.release(session),
        lambda: warm_pool.interrupt(session),
        lambda: warm_pool.restart(session),
    ):
        with pytest.raises(error, match=message):
            call()
    assert_undisturbed(warm_pool)


@pytest.mark.parametrize("timeout,error,message", BAD_TIMEOUTS)
def test_bad_timeouts(warm_pool, timeout, error, message):
    with pytest.raises(error, match=message):
        warm_pool.execute("1", session="a", timeout=timeout)
    with pytest.raises(error, match=message):
        warm_pool.checkout(session="a", timeout=timeout)
    assert_undisturbed(warm_pool)


@pytest.mark.parametrize("options,error,message", BAD_OPTIONS)
@pytest.mark.parametrize("cls", [KernelPool, AsyncKernelPool])
def test_bad_options_fail_at_construction(cls, options, error, message):
    with pytest.raises(error, match=message):
        cls(**options)


def test_bad_code_and_callbacks(warm_pool):
    with pytest.raises(TypeError, match="code must be a str"):
        warm_pool.execute(b"1", session="a")
    with pytest.raises(TypeError, match="on_output must be callable"):
        warm_pool.execute("1", session="a", on_output="print")
    with pytest.raises(TypeError, match="callback must be callable"):
        warm_pool.subscribe(None)
    with pytest.raises(TypeError):
        warm_pool.execute("1", session="a", silent=True)  # an unknown keyword option
    assert_undisturbed(warm_pool)


def test_setting_a_bad_value_on_a_live_pool_is_refused(warm_pool):
    with pytest.raises(TraitError, match="max_kernels must be at least 1"):
        warm_pool.max_kernels = 0
    assert warm_pool.stats().max_kernels == 2
    assert_undisturbed(warm_pool)


def test_min_idle_above_max_kernels_is_refused_at_construction_and_later():
    with pytest.raises(TraitError, match=r"min_idle \(5\) cannot exceed max_kernels \(4\)"):
        AsyncKernelPool(min_idle=5)
    pool = AsyncKernelPool(min_idle=5, max_kernels=8)  # the order of the arguments does not matter
    with pytest.raises(TraitError, match="raise max_kernels first"):
        pool.max_kernels = 2
    with pytest.raises(TraitError, match=r"min_idle \(9\) cannot exceed max_kernels \(8\)"):
        pool.min_idle = 9
    assert (pool.min_idle, pool.max_kernels) == (5, 8), "a refused value changes nothing"
    with pytest.raises(TraitError, match="cannot exceed"):
        KernelPool(min_idle=2, max_kernels=1)
