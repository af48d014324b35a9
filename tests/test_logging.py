"""What the pool did is in the ``jupyter_sessionpool`` logger, at levels an operator can filter."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal

from poolkit import until

import pytest

from jupyter_sessionpool import ExecutionTimeout, KernelDied, SessionLost


async def test_starts_deaths_discards_and_releases_are_logged(make_pool, caplog):
    caplog.set_level(logging.DEBUG, logger="jupyter_sessionpool")
    pool = await make_pool(max_kernels=2)
    await pool.execute("x = 1", session="a")
    pid = pool.stats().kernels[0].pid
    cell = asyncio.ensure_future(pool.execute("import time; time.sleep(60)", session="b"))
    await until(pool, lambda s: any(k.session == "b" and k.state == "busy" for k in s.kernels))
    victim = next(k.pid for k in pool.stats().kernels if k.session == "b")
    os.kill(victim, signal.SIGKILL)
    try:
        await cell
    except KernelDied:
        pass
    await pool.release("a")
    records = [r for r in caplog.records if r.name == "jupyter_sessionpool"]
    said = [(r.levelno, r.getMessage()) for r in records]
    assert any(level == logging.INFO and "started" in text and str(pid) in text for level, text in said), said
    assert any(level == logging.WARNING and "(session b)" in text for level, text in said), said  # the death
    assert any(level == logging.INFO and "'a' released" in text for level, text in said), said
    assert all("key" not in text.lower() for _, text in said)  # no HMAC key or connection secrets


async def test_log_lines_name_each_kernel_by_its_whole_id(make_pool, caplog):
    """Issue 19, item 9: ids cut to 8 characters made ``af96b2-12`` and ``af96b2-19`` both ``af96b2-1``.
    Every line about a kernel names it by its whole id, the one stats() and the widget show."""
    caplog.set_level(logging.DEBUG, logger="jupyter_sessionpool")
    pool = await make_pool(max_kernels=1, interrupt_timeout=0.5)
    seen: set[str] = set()
    pool.subscribe(lambda stats: seen.update(k.kernel_id for k in stats.kernels))
    await pool.execute("x = 1", session="a")
    with pytest.raises(ExecutionTimeout):  # a timeout that replaces the kernel, then a release: each logged
        await pool.execute("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(30)",
                           session="a", timeout=0.5)
    with pytest.raises(SessionLost):
        await pool.execute("x", session="a")
    await pool.execute("x = 2", session="a")
    await pool.release("a")
    await pool.shutdown()
    tag = next(iter(seen)).split("-")[0]
    named = [(r.getMessage(), re.findall(rf"{tag}[-0-9a-f]*", r.getMessage())) for r in caplog.records
             if r.name == "jupyter_sessionpool" and tag in r.getMessage()]
    assert len(named) >= 5, named
    for text, ids in named:
        assert ids and set(ids) <= seen, text
