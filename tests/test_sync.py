"""KernelPool, the blocking facade: scripts, running event loops, Ctrl-C, config."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from traitlets import TraitError
from traitlets.config import Config

from jupyter_sessionpool import KernelPool


def test_blocking_pool_round_trip_and_lease():
    with KernelPool(max_kernels=2) as pool:
        pool.execute("x = 41", session="a")
        r = pool.execute("x + 1", session="a")
        assert r.status == "ok" and r.result == "42"
        with pool.checkout(session="b") as lease:
            assert lease.execute("import os; os.getpid()").result == str(lease.pid)
            msg_id = lease.client.execute("z = 3")
            reply = lease.client.get_shell_msg(timeout=10)
            assert reply["parent_header"]["msg_id"] == msg_id
        assert pool.execute("z", session="b").result == "3"
        assert sorted(pool.sessions()) == ["a", "b"]
        assert pool.release("a") and pool.sessions() == ["b"]
    assert pool.stats().closed


def test_lease_client_gets_its_replies_on_every_lease_of_a_session():
    """Each lease's BlockingKernelClient has a shell identity of its own. ipykernel's ROUTER
    hands a name over to the peer that connected last, so a client sharing the pool-side
    client's name lost its replies whenever that one connected later (a race, seen under load)."""
    with KernelPool(max_kernels=1) as pool:
        for i in range(3):
            with pool.checkout(session="b") as lease:
                msg_id = lease.client.execute(f"z = {i}")
                reply = lease.client.get_shell_msg(timeout=30)
                assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "ok"
        assert pool.execute("z", session="b").result == "2"


def test_works_when_called_from_inside_a_running_event_loop():
    async def main() -> str:
        with KernelPool(max_kernels=1) as pool:
            return pool.execute("'from a coroutine'").result

    assert asyncio.run(main()) == "'from a coroutine'"


def test_config_reaches_the_pool_and_later_changes_apply():
    c = Config()
    c.KernelPool.max_kernels = 3
    c.KernelPool.min_idle = 1
    pool = KernelPool(config=c)
    try:
        assert (pool.max_kernels, pool.stats().max_kernels) == (3, 3)
        pool.max_kernels = 5
        assert pool.stats().max_kernels == 5
    finally:
        pool.shutdown()


def test_a_change_that_cannot_apply_is_refused_naming_the_setting_and_what_to_do():
    """Issue 19, item 2: a live pool takes each change as its help says, and refuses the ones that
    cannot apply (local kernels of a kernelspec this machine lacks) with a TraitError, unchanged."""
    pool = KernelPool(max_kernels=1)
    try:
        with pytest.raises(TraitError, match=r"kernel_name not changed: .*no kernelspec named 'no-such-kernel'.*gateway_url"):
            pool.kernel_name = "no-such-kernel"
        assert pool.kernel_name == "python3" and pool.execute("1").result == "1"
        pool.gateway_url = "http://127.0.0.1:9"  # a gateway's kernelspecs are its own: not checked here
        pool.kernel_name = "spark-on-the-gateway"
        with pytest.raises(TraitError, match=r"gateway_url not changed: .*'spark-on-the-gateway'.*set kernel_name to a local"):
            pool.gateway_url = ""
        assert pool.gateway_url == "http://127.0.0.1:9" and pool._async.gateway_url == "http://127.0.0.1:9"
        pool.kernel_name = "python3"
        pool.gateway_url = ""
        assert pool.execute("2").result == "2"
    finally:
        pool.shutdown()


def test_blocking_call_from_a_callback_is_refused():
    with KernelPool(max_kernels=1) as pool:
        errors: list[BaseException] = []

        def on_output(out) -> None:
            try:
                pool.execute("1")
            except RuntimeError as exc:
                errors.append(exc)

        pool.execute("print('hi')", on_output=on_output)
        assert errors and "inside on_output" in str(errors[0])


def test_ctrl_c_interrupts_the_remote_cell_and_the_pool_goes_on(tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(textwrap.dedent("""
        from jupyter_sessionpool import KernelPool
        with KernelPool(max_kernels=1) as pool:
            pool.execute("x = 'kept'", session="a")
            try:
                pool.execute("print('started', flush=True); import time; time.sleep(60)", session="a",
                             on_output=lambda out: out.get("text") == "started\\n" and print("READY", flush=True))
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            print(pool.execute("x", session="a", timeout=20).result, flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", proc.stderr.read() if not line else line
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert out.split() == ["interrupted", "'kept'"], out


def test_subscribers_run_on_a_callback_thread_not_the_pools():
    threads: set[str] = set()
    with KernelPool(max_kernels=1) as pool:
        unsubscribe = pool.subscribe(lambda stats: threads.add(threading.current_thread().name))
        pool.execute("1")
        unsubscribe()
    assert threads and all(t.startswith("jupyter-sessionpool-callback") for t in threads), threads


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kernels_die_with_the_pools_process(tmp_path, sig):
    """Even when the pool's process is SIGKILLed, its kernels exit within seconds."""
    psutil = pytest.importorskip("psutil")
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent("""
        import time
        from jupyter_sessionpool import KernelPool
        pool = KernelPool(max_kernels=2, min_idle=2).start()
        pool.wait_ready(60)
        print(" ".join(str(k.pid) for k in pool.stats().kernels), flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        kernels = [psutil.Process(pid) for pid in pids]
        os.kill(proc.pid, sig)
        proc.wait(10)
        gone, alive = psutil.wait_procs(kernels, timeout=10)
        assert alive == [], f"kernels outlived their pool: {alive}"
        for left in Path(tempfile.gettempdir()).glob(f"jsp-{proc.pid}-*"):  # unless another pool reaped it already
            assert left.stat().st_mode & 0o777 == 0o700, "what the dead pool left is private, so harmless"
    finally:
        proc.kill()
        proc.wait()


def test_a_new_pool_reaps_runtime_dirs_of_dead_pools():
    from jupyter_sessionpool.workers.local import reap_runtime_dirs

    exited = subprocess.Popen(["true"])
    exited.wait()
    gone = Path(tempfile.mkdtemp(prefix=f"jsp-{exited.pid}-"))
    (gone / "k1.json").write_text("{}")
    alive = Path(tempfile.mkdtemp(prefix=f"jsp-{os.getpid()}-"))
    try:
        reap_runtime_dirs()
        assert not gone.exists(), "a dead pool's directory is removed"
        assert alive.exists(), "a live pool's directory is kept"
    finally:
        alive.rmdir()


def test_submit_returns_at_once_and_keeps_session_order():
    with KernelPool(max_kernels=2) as pool:
        pool.execute("order = []", session="a")
        futures = [pool.submit(f"import time; time.sleep(0.05); order.append({i})", session="a") for i in range(5)]
        assert not futures[-1].done(), "submit does not wait for the cell"
        assert [f.result(30).status for f in futures] == ["ok"] * 5
        assert pool.execute("order", session="a").result == "[0, 1, 2, 3, 4]"
        with pytest.raises(ValueError, match="must not be empty"):
            pool.submit("1", session="")


def test_a_slow_done_callback_delays_no_other_session():
    """Issue 19, item 7: a submit() Future's done-callbacks ran on the pool's loop thread, so a 2 s
    callback stalled another session's round trip to 2,002 ms. They run on a callback thread."""
    with KernelPool(max_kernels=2) as pool:
        pool.execute("pass", session="b")  # b's kernel is up: its round trip is pure pool work
        entered, leave, ran_on = threading.Event(), threading.Event(), []

        def slow(_future) -> None:
            ran_on.append(threading.current_thread().name)
            entered.set()
            leave.wait(10)

        future = pool.submit("pass", session="a")  # a new session: it needs a kernel start first
        future.add_done_callback(slow)
        assert entered.wait(60)
        try:
            t0 = time.monotonic()
            assert pool.execute("1 + 1", session="b").result == "2"
            took = time.monotonic() - t0
        finally:
            leave.set()
        assert took < 5, took  # 10 s before: the whole of the callback (loose: a loaded machine)
        assert ran_on[0].startswith("jupyter-sessionpool-callback") and future.result().status == "ok"


def test_cancelling_a_submitted_cell_interrupts_it_and_the_session_goes_on():
    with KernelPool(max_kernels=1) as pool:
        pool.execute("x = 'kept'", session="a")
        started = threading.Event()
        future = pool.submit("print('started', flush=True); import time; time.sleep(60)", session="a",
                             on_output=lambda out: started.set())
        assert started.wait(60)
        t0 = time.monotonic()
        assert future.cancel() and future.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result()
        assert pool.execute("x", session="a").result == "'kept'"  # interrupted, not waited out
        assert time.monotonic() - t0 < 30
        done = pool.submit("1", session="a")
        assert done.result(30).result == "1" and not done.cancel()  # a completed call cannot be cancelled


def test_store_history_false_leaves_no_trace_in_the_sessions_history():
    with KernelPool(max_kernels=1) as pool:
        pool.execute("secret_payload = 1", session="a", store_history=False)
        r = pool.execute("[cell for cell in In if 'secret' + '_payload' in cell]", session="a")
        assert r.result == "[]"
        pool.execute("visible = 2", session="a")
        r = pool.execute("[cell for cell in In if 'vis' + 'ible' in cell]", session="a")
        assert r.result == "['visible = 2']", "with store_history (the default) the cell is in In"
