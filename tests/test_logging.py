"""What the pool did is in the ``jupyter_sessionpool`` logger, at levels an operator can filter."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from poolkit import until

from jupyter_sessionpool import KernelDied


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
