"""The gateway worker on its own, against a real Kernel Gateway on 127.0.0.1.

Each test's kernels are gone from the gateway when it ends (asserted by the fixture), and
the session's gateway has none left at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import statistics
import struct
import sys
import time

import pytest
from gatewaykit import Proxy, free_port, wait_until
from traitlets import TraitError

from jupyter_sessionpool.config import PoolSettings
from jupyter_sessionpool.errors import KernelStartError, ProtocolError
from jupyter_sessionpool.workers import _wire as wire
from jupyter_sessionpool.workers import gateway as gateway_module
from jupyter_sessionpool.workers._link import Link, LinkState
from jupyter_sessionpool.workers.base import KernelExited
from jupyter_sessionpool.workers.gateway import GatewayWorkers


@pytest.fixture
async def workers(kg):
    """Make GatewayWorkers for a gateway (default: the session's KG); every worker is stopped after."""
    made: list[GatewayWorkers] = []
    started = []

    async def make(url: str | None = None, token: str | None = None, **settings) -> GatewayWorkers:
        ws = GatewayWorkers(PoolSettings(gateway_url=url or kg.url, gateway_token=kg.token if token is None else token, **settings))
        made.append(ws)
        await ws.open()
        original = ws.new

        def new(kernel_id: str):
            worker = original(kernel_id)
            started.append(worker)
            return worker

        ws.new = new
        return ws

    yield make
    await asyncio.gather(*(worker.stop(5) for worker in started))
    for ws in made:
        await ws.close()
    assert kg.kernels() == []


def execute_request(code: str) -> dict:
    return {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": False}


async def run(worker, code: str, timeout: float = 30, seen: asyncio.Event | None = None):
    """One cell: (execute_reply content, stream text). ``seen`` is set at the first output."""
    request = worker.request("execute_request", execute_request(code))
    deadline = time.monotonic() + timeout
    reply, idle, text = None, False, ""
    try:
        while reply is None or not idle:
            got = await request.next(deadline)
            assert got is not None, f"no answer to {code!r} within {timeout} s"
            channel, msg = got
            if channel == "shell":
                reply = msg["content"]
            elif msg["msg_type"] == "status":
                idle = msg["content"]["execution_state"] == "idle"
            elif msg["msg_type"] == "stream":
                text += msg["content"]["text"]
                if seen is not None:
                    seen.set()
            elif msg["msg_type"] == "execute_result":
                text += msg["content"]["data"]["text/plain"]
    finally:
        request.close()
    return reply, text


async def started(ws: GatewayWorkers, name: str = "k"):
    worker = ws.new(name)
    await worker.start(60)
    return worker


async def test_start_run_stop_leaves_no_kernel(kg, workers):
    ws = await workers()
    worker = await started(ws)
    assert worker.pid is None and worker.client is None
    assert worker.location == f"127.0.0.1:{kg.port}"
    assert worker._v1, "the gateway offers the v1 websocket protocol; it should be used"
    assert [k["id"] for k in kg.kernels()] == [worker.remote_id]
    await run(worker, "x = 41")
    reply, text = await run(worker, "print(x + 1)")
    assert reply["status"] == "ok" and text == "42\n"
    await worker.stop(5)
    assert not worker.alive and kg.kernels() == []
    await worker.stop(5)  # idempotent


async def test_legacy_json_protocol(workers, monkeypatch):
    monkeypatch.setattr(gateway_module, "V1_PROTOCOL", "not-offered.example")  # the gateway then picks none
    ws = await workers()
    worker = await started(ws)
    assert not worker._v1
    reply, text = await run(worker, "print('é' * 3); 6 * 7")
    assert reply["status"] == "ok" and text == "ééé\n42"


async def test_sessions_run_concurrently(workers):
    ws = await workers()
    kernels = await asyncio.gather(*(started(ws, f"k{i}") for i in range(4)))
    t0 = time.monotonic()
    await asyncio.gather(*(run(k, "import time; time.sleep(1)") for k in kernels))
    assert time.monotonic() - t0 < 3.5  # serialised would be >= 4 s


async def test_interrupt_by_rest(workers):
    ws = await workers()
    worker = await started(ws)
    seen = asyncio.Event()
    cell = asyncio.ensure_future(run(worker, "print('go', flush=True); import time; time.sleep(60)", seen=seen))
    await asyncio.wait_for(seen.wait(), 30)
    await worker.interrupt()
    reply, _ = await asyncio.wait_for(cell, 30)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert (await run(worker, "1 + 1"))[1] == "2"


@pytest.mark.parametrize("busy", [True, False], ids=["mid-cell", "idle"])
async def test_killed_kernel_is_noticed_within_3s(kg, workers, busy):
    ws = await workers()
    worker = await started(ws)
    pid = kg.kernel_pid(worker.remote_id)
    cell = None
    if busy:
        seen = asyncio.Event()
        cell = asyncio.ensure_future(run(worker, "print('go', flush=True); import time; time.sleep(60)", seen=seen))
        await asyncio.wait_for(seen.wait(), 30)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    reason = await asyncio.wait_for(asyncio.shield(worker.exited), 10)
    assert time.monotonic() - t0 < 3, f"death noticed after {time.monotonic() - t0:.2f} s"
    assert "restarting" in reason and "state is gone" in reason
    if cell is not None:
        with pytest.raises(KernelExited):
            await asyncio.wait_for(cell, 1)
    # the gateway restarted it under the same id: stopping must still delete it (DELETE is retried
    # while the gateway is mid-restart, when it answers 500)
    await worker.stop(5)
    assert kg.kernels() == []


@pytest.fixture
async def proxy(kg):
    """A cuttable TCP proxy in front of the session's gateway (closed after the test's workers)."""
    proxy = await Proxy(kg.port).start()
    yield proxy
    await proxy.close()


async def reconnected(worker, connections: int) -> None:
    # the worker has no public reconnect event; its connection count is the observable
    await wait_until(lambda: worker._connection >= connections and worker._ws is not None, 20, "the reconnect")


async def test_websocket_drop_reconnects_and_keeps_state(proxy, workers, caplog):
    caplog.set_level(logging.INFO, "jupyter_sessionpool")
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    await run(worker, "x = 1")
    assert proxy.cut() == 1
    await reconnected(worker, 2)
    reply, text = await run(worker, "x + 1")
    assert reply["status"] == "ok" and text == "2"
    # a cut while a cell runs: the gateway buffers the cell's messages and replays them on reconnect
    seen = asyncio.Event()
    cell = asyncio.ensure_future(run(worker, "print('a', flush=True); import time; time.sleep(1); print('b'); x += 1", seen=seen))
    await asyncio.wait_for(seen.wait(), 30)
    proxy.cut()
    reply, text = await asyncio.wait_for(cell, 30)
    assert reply["status"] == "ok" and text == "a\nb\n"
    assert (await run(worker, "x"))[1] == "2"
    assert worker.alive
    assert sum("reconnected" in r.message for r in caplog.records) == 2


async def test_request_lost_in_a_cut_fails_instead_of_hanging(proxy, workers):
    """Sent into a connection that is already dead (not yet noticed): nobody can tell whether
    the kernel ran it, so the request fails with a clear error once the reconnect shows it lost."""
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    proxy.cut()
    with pytest.raises(ProtocolError, match="reply was lost"):
        await run(worker, "1 + 1")


async def test_reply_lost_in_a_cut_fails_its_request(proxy, workers):
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    seen = asyncio.Event()
    cell = asyncio.ensure_future(run(worker, "print('a', flush=True); import time; time.sleep(1)", seen=seen))
    await asyncio.wait_for(seen.wait(), 30)
    real = worker._on_frame

    def drop_the_reply(frame):  # the reply was in flight when the connection broke: lost with it
        if frame is not None and b"execute_reply" in (frame if isinstance(frame, bytes) else frame.encode()):
            worker._on_frame = real
            proxy.cut()
            return None
        return real(frame)

    worker._on_frame = drop_the_reply
    with pytest.raises(ProtocolError, match="reply was lost"):
        await asyncio.wait_for(cell, 30)


async def test_cancelled_start_and_stop_leave_no_kernel(kg, workers):
    ws = await workers()
    worker = ws.new("k")
    task = asyncio.ensure_future(worker.start(60))
    await wait_until(lambda: kg.kernels(), 30, "the POST to create the kernel")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert kg.kernels() == []
    other = await started(ws, "k2")
    stopping = asyncio.ensure_future(other.stop(5))
    await asyncio.sleep(0)
    stopping.cancel()
    await ws.close()  # waits for the delete the cancelled stop began
    assert kg.kernels() == []


async def test_bad_token_is_a_clear_non_retryable_error(kg, workers):
    with pytest.raises(KernelStartError, match="HTTP 401") as info:
        await workers(token="wrong")
    assert not info.value.retryable and "gateway_token" in str(info.value) and "wrong" not in str(info.value)


async def test_unknown_kernelspec_lists_the_gateways(workers):
    with pytest.raises(KernelStartError, match="no kernelspec 'nope'; it has: crash, nosession, python3") as info:
        await workers(kernel_name="nope")
    assert not info.value.retryable


async def test_nothing_listening_is_retryable_and_checked_again(workers, caplog):
    caplog.set_level(logging.WARNING, "jupyter_sessionpool")
    ws = await workers(url=f"http://127.0.0.1:{free_port()}")
    assert any("cannot check kernel" in r.message for r in caplog.records)
    with pytest.raises(KernelStartError, match="does not answer") as info:
        await ws.new("k").start(10)
    assert info.value.retryable


async def test_kernel_that_crashes_at_start(kg, workers):
    ws = await workers(kernel_name="crash")
    t0 = time.monotonic()
    with pytest.raises(KernelStartError, match="exited during start-up"):
        await ws.new("k").start(60)
    assert time.monotonic() - t0 < 40
    assert kg.kernels() == []


def test_gateway_url_is_validated():
    for bad in ("ftp://gw:8888", "http://", "gw:8888", "http://gw:8888/?x=1", "http://gw:99999"):
        with pytest.raises(TraitError, match="gateway_url"):
            PoolSettings(gateway_url=bad)
    assert PoolSettings(gateway_url=" https://gw.example.com/base/ ").gateway_url == "https://gw.example.com/base/"
    # the error (what %config prints into a notebook) never repeats a password the URL carried
    for bad in ("http://user:s3cret@gw:99999", "ftp://user:s3cret@gw", "http://user:s3cret@gw/?q=1", "http://user:pa/s3cret@gw"):
        with pytest.raises(TraitError, match=r"got '[a-z]+://user:\*\*\*@gw") as info:
            PoolSettings(gateway_url=bad)
        assert "s3cret" not in str(info.value)


def test_gateway_settings_default_from_jupyter_server_environment(monkeypatch):
    monkeypatch.setenv("JUPYTER_GATEWAY_URL", "http://gw:8888")
    monkeypatch.setenv("JUPYTER_GATEWAY_AUTH_TOKEN", "s3cret")
    settings = PoolSettings()
    assert settings.gateway_url == "http://gw:8888" and settings.gateway_token == "s3cret"
    monkeypatch.delenv("JUPYTER_GATEWAY_URL")
    assert PoolSettings().gateway_url == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_QUICKACK exists only on Linux")
async def test_round_trips_do_not_wait_for_delayed_acks(workers):
    """A stock gateway sends with Nagle on: without QUICKACK re-armed per frame, every round
    trip waits ~40 ms for the client's delayed ACK, however idle the machine."""
    ws = await workers()
    worker = await started(ws)
    samples = []
    for _ in range(25):
        t0 = time.monotonic()
        await run(worker, "pass")
        samples.append(time.monotonic() - t0)
    # a delayed ACK costs every round trip >= 40 ms, so even the fastest of 25 would show it;
    # load only slows some of them
    assert min(samples) < 0.030, f"fastest round trip {min(samples) * 1000:.1f} ms, median {statistics.median(samples) * 1000:.1f} ms"


# ---- the connection's state machine (workers/_link.py), one test per transition -----------------


def test_link_connecting_opened_is_verifying_and_holds_requests():
    link = Link()
    assert link.state is LinkState.CONNECTING and not link.open
    link.hold("first")
    assert link.opened() and link.state is LinkState.VERIFYING and not link.open
    assert link.held == ["first"]


def test_link_verifying_verified_is_open_and_hands_back_the_held_requests_in_order():
    link = Link()
    link.opened()
    link.hold("a")
    link.hold("b")
    assert link.verified() == ["a", "b"] and link.state is LinkState.OPEN and link.open and link.held == []


@pytest.mark.parametrize("verified", [True, False], ids=["open", "verifying"])
def test_link_dropped_is_reconnecting_and_keeps_what_it_holds(verified):
    link = Link()
    link.opened()
    if verified:
        link.verified()
    link.hold("during the drop")
    assert link.dropped() and link.state is LinkState.RECONNECTING and link.held == ["during the drop"]


def test_link_reconnecting_opened_is_verifying_again():
    link = Link()
    link.opened()
    link.verified()
    link.dropped()
    assert link.opened() and link.state is LinkState.VERIFYING


@pytest.mark.parametrize("state", [s for s in LinkState if s is not LinkState.LOST])
def test_link_lost_from_every_state_gives_up_what_it_holds(state):
    link = Link()
    link.state = state
    link.hold("never sent")
    assert link.lost() == ["never sent"] and link.state is LinkState.LOST and link.held == []
    assert link.lost() == [] and link.state is LinkState.LOST


@pytest.mark.parametrize(
    ("state", "event"),
    [(LinkState.OPEN, "opened"), (LinkState.VERIFYING, "opened"), (LinkState.LOST, "opened"),
     (LinkState.CONNECTING, "dropped"), (LinkState.RECONNECTING, "dropped"), (LinkState.LOST, "dropped"),
     (LinkState.OPEN, "verified"), (LinkState.RECONNECTING, "verified"), (LinkState.LOST, "verified")],
)
def test_link_events_that_do_not_apply_change_nothing(state, event):
    link = Link()
    link.state = state
    link.hold("kept")
    assert not getattr(link, event)()
    assert link.state is state and link.held == ["kept"]


# ---- the connection on a real gateway: proof of identity at start and after every reconnection ----------


class Wire:
    """Records what a worker puts on its websocket; ``swallow`` makes it drop kernel_info requests instead
    (a kernel that never answers who it is)."""

    def __init__(self, worker) -> None:
        self.sent: list[tuple[str, str]] = []
        self.swallow = False
        real = worker._write

        def write(channel, msg):
            if self.swallow and msg["header"]["msg_type"] == "kernel_info_request":
                return True
            self.sent.append((channel, msg["header"]["msg_type"]))
            return real(channel, msg)

        worker._write = write


async def state_is(worker, state: LinkState, timeout: float = 20) -> None:
    await wait_until(lambda: worker.link.state is state, timeout, f"the link to be {state.value}")


async def test_start_proves_the_kernel_before_lending_it(workers):
    ws = await workers()
    worker = ws.new("k")
    assert worker.link.state is LinkState.CONNECTING
    seen = []
    real = worker._health_check

    async def health_check(deadline):
        seen.append(worker.link.state)
        await real(deadline)

    worker._health_check = health_check
    await worker.start(60)
    assert seen == [LinkState.VERIFYING] and worker.link.state is LinkState.OPEN
    assert worker.kernel_info["implementation"] == "ipython" and worker.kernel_info["language_info"]["name"] == "python"
    assert worker._kernel_session  # ipykernel's per-process session id
    assert worker.location in repr(worker) and "open" in repr(worker)


async def test_requests_made_while_reconnecting_are_held_and_sent_after_verification(proxy, workers):
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    await run(worker, "x = 41")
    wire = Wire(worker)
    proxy.block()
    await state_is(worker, LinkState.RECONNECTING)
    cell = asyncio.ensure_future(run(worker, "x + 1"))
    await wait_until(lambda: worker.link.held, 10, "the request to be held")
    assert wire.sent == []
    proxy.restore()
    reply, text = await asyncio.wait_for(cell, 30)
    assert reply["status"] == "ok" and text == "42"  # the same process: its state is kept
    assert wire.sent[:3] == [("control", "kernel_info_request"), ("shell", "kernel_info_request"), ("shell", "execute_request")]
    assert worker.link.state is LinkState.OPEN and worker.alive


def drop_shutdown_replies(worker) -> None:
    """Hide the old kernel's last word (its iopub shutdown_reply) from the worker: only the session remains to tell."""
    real = worker._on_frame

    def without_shutdown_replies(frame):
        if frame is not None and b"shutdown_reply" in (frame if isinstance(frame, bytes) else frame.encode()):
            return None
        return real(frame)

    worker._on_frame = without_shutdown_replies


async def test_a_busy_kernel_proves_itself_on_control_while_its_cell_runs(proxy, workers):
    """The shell probe waits behind a running cell; the control one does not, so a reconnect during a
    long cell is verified at once and the cell still ends normally."""
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    seen = asyncio.Event()
    cell = asyncio.ensure_future(run(worker, "print('go', flush=True); import time; time.sleep(8); print('done')", seen=seen))
    await asyncio.wait_for(seen.wait(), 30)
    proxy.cut()
    await wait_until(lambda: worker._connection == 2 and worker.link.state is LinkState.OPEN, 6, "the verified reconnect")
    assert not cell.done()
    reply, text = await asyncio.wait_for(cell, 30)
    assert reply["status"] == "ok" and text == "go\ndone\n"


async def test_kernel_restarted_while_the_socket_was_down_is_lost_on_verification(kg, proxy, workers):
    """The old kernel's shutdown_reply went into the outage; after the reconnect, the verification's
    kernel_info (or anything else the new process says) comes from another session."""
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    await run(worker, "x = 1")
    proxy.block()
    await state_is(worker, LinkState.RECONNECTING)
    assert await asyncio.to_thread(kg.call, f"/api/kernels/{worker.remote_id}/restart", "POST") == 200
    await kg.answers(worker.remote_id)
    cell = asyncio.ensure_future(run(worker, "x"))  # held: it must never run on the restarted kernel
    proxy.restore()
    reason = await asyncio.wait_for(asyncio.shield(worker.exited), 30)
    assert "another kernel process" in reason and "state is gone" in reason
    assert worker.link.state is LinkState.LOST
    with pytest.raises(KernelExited):
        await asyncio.wait_for(cell, 5)


async def test_a_kernel_that_cannot_prove_itself_after_a_reconnect_is_lost(proxy, workers, monkeypatch):
    monkeypatch.setattr(gateway_module, "_VERIFY_FOR", 1.0)
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    wire = Wire(worker)
    wire.swallow = True
    proxy.cut()
    await state_is(worker, LinkState.VERIFYING)
    cell = asyncio.ensure_future(run(worker, "1"))
    reason = await asyncio.wait_for(asyncio.shield(worker.exited), 20)
    assert "did not answer kernel_info within 1 s" in reason
    with pytest.raises(KernelExited):
        await asyncio.wait_for(cell, 5)
    assert ("shell", "execute_request") not in wire.sent  # held, never sent to an unproven kernel


async def test_a_drop_while_verifying_reconnects_and_verifies_again(proxy, workers, monkeypatch):
    monkeypatch.setattr(gateway_module, "_VERIFY_FOR", 30.0)
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    await run(worker, "x = 3")
    wire = Wire(worker)
    wire.swallow = True
    proxy.cut()
    await state_is(worker, LinkState.VERIFYING)
    connections = worker._connection
    proxy.block()  # the socket drops again mid-verification, and stays down for a moment
    await state_is(worker, LinkState.RECONNECTING, 10)
    wire.swallow = False
    proxy.restore()
    await state_is(worker, LinkState.OPEN)
    assert worker._connection > connections
    assert (await run(worker, "x"))[1] == "3"


@pytest.mark.parametrize("phase", [LinkState.RECONNECTING, LinkState.VERIFYING])
async def test_a_stop_while_reconnecting_or_verifying_ends_it_and_deletes_the_kernel(kg, proxy, workers, phase, monkeypatch):
    monkeypatch.setattr(gateway_module, "_VERIFY_FOR", 30.0)
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    wire = Wire(worker)
    wire.swallow = True  # a verification that would wait its whole 30 s
    if phase is LinkState.RECONNECTING:
        proxy.block()
    else:
        proxy.cut()
    await state_is(worker, phase)
    cell = asyncio.ensure_future(run(worker, "1"))
    proxy.restore()
    t0 = time.monotonic()
    await worker.stop(5)
    assert time.monotonic() - t0 < 5 and worker.link.state is LinkState.LOST
    assert worker._reconnect.done() and not worker._probes
    with pytest.raises(KernelExited, match="stopped"):
        await asyncio.wait_for(cell, 5)
    assert kg.kernels() == []


async def test_kernel_deleted_while_the_socket_was_down_is_lost(kg, proxy, workers):
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    proxy.block()
    await state_is(worker, LinkState.RECONNECTING)
    assert await asyncio.to_thread(kg.call, f"/api/kernels/{worker.remote_id}", "DELETE") == 204
    proxy.restore()
    reason = await asyncio.wait_for(asyncio.shield(worker.exited), 30)
    assert "no longer has the kernel" in reason


async def test_a_kernel_without_a_session_is_lost_when_its_socket_drops(proxy, workers):
    ws = await workers(url=proxy.url, kernel_name="nosession")
    worker = await started(ws)
    assert worker.kernel_info["implementation"] == "scripted" and not worker._kernel_session
    assert (await run(worker, "hello"))[1] == "hello\n"
    proxy.cut()
    reason = await asyncio.wait_for(asyncio.shield(worker.exited), 10)
    assert "gives no session id" in reason


async def test_rest_restart_with_the_socket_connected_ends_the_worker_at_once(kg, workers):
    """The old kernel's iopub shutdown_reply is the reliable sign (the new one's starting status is
    usually lost to the gateway's slow reconnect of its iopub socket)."""
    ws = await workers()
    worker = await started(ws)
    t0 = time.monotonic()
    await asyncio.to_thread(kg.call, f"/api/kernels/{worker.remote_id}/restart", "POST")
    reason = await asyncio.wait_for(asyncio.shield(worker.exited), 10)
    assert time.monotonic() - t0 < 3 and "shutting down for a restart" in reason


async def test_a_message_from_another_kernel_process_is_never_delivered(kg, workers):
    """Without the shutdown_reply (filtered out here), the restarted kernel still gives itself away: its
    first answer carries another session, so the worker ends instead of returning that answer."""
    ws = await workers()
    worker = await started(ws)
    drop_shutdown_replies(worker)
    await asyncio.to_thread(kg.call, f"/api/kernels/{worker.remote_id}/restart", "POST")
    with pytest.raises(KernelExited, match="another kernel process"):
        await run(worker, "x = 1")


# ---- malformed frames: the request's ProtocolError, never an exception in tornado's callback ------------


def v1_frame(channel="iopub", header=None, parent=None, metadata=None, content=None) -> bytes:
    """A v1 frame of arbitrary JSON parts (encode_v1 dumps whatever each part is)."""
    header = {"msg_id": "m", "msg_type": "stream", "session": "s"} if header is None else header
    return wire.encode_v1(channel, {"header": header, "parent_header": {} if parent is None else parent,
                                              "metadata": {} if metadata is None else metadata,
                                              "content": {"name": "stdout", "text": "x"} if content is None else content})


def bad_offsets(frame: bytes) -> bytes:
    """The frame with its third offset pointing before the second."""
    count = struct.unpack_from("<Q", frame)[0]
    offsets = list(struct.unpack_from(f"<{count}Q", frame, 8))
    offsets[2] = offsets[1] - 1
    return struct.pack(f"<{count + 1}Q", count, *offsets) + frame[8 * (count + 1):]


@pytest.mark.parametrize(
    ("frame", "problem", "parent"),
    [
        (v1_frame(parent=["not", "a", "dict"]), "parent_header is list", None),
        (v1_frame(header=["x"], parent={"msg_id": "p1"}), "header is list", "p1"),
        (v1_frame(content=[1, 2], parent={"msg_id": "p2"}), "content is list", "p2"),
        (v1_frame(metadata="meta", parent={"msg_id": "p3"}), "metadata is str", "p3"),
        (v1_frame(header={"msg_type": "stream"}), "no msg_id", None),
        (v1_frame(channel="nowhere"), "unknown channel 'nowhere'", None),
        (bad_offsets(v1_frame()), "bad offsets", None),
        (struct.pack("<Q", 1 << 40) + b"\0" * 40, "cannot hold", None),
        (b"\x01\x00", "too short", None),
        (v1_frame()[:-5], "bad offsets", None),
    ],
    ids=["parent-list", "header-list", "content-list", "metadata-str", "no-msg-id", "channel", "offsets",
         "huge-count", "short", "truncated"],
)
def test_malformed_v1_frames_name_the_problem_and_the_request(frame, problem, parent):
    with pytest.raises(wire.MalformedFrame, match=problem) as info:
        wire.decode_v1(frame)
    assert info.value.parent == parent


@pytest.mark.parametrize(
    ("frame", "problem"),
    [("not json", "no JSON object"), ("[1, 2]", "no JSON object"),
     ('{"channel": "iopub", "header": {"msg_id": "m", "msg_type": "x"}, "parent_header": [], "content": {}}',
      "parent_header is list"),
     ('{"channel": "shell", "header": {"msg_id": "m", "msg_type": "x"}, "content": null}', "content is NoneType"),
     (b"\x00\x00\x00\x09", "too short")],
)
def test_malformed_json_frames_name_the_problem(frame, problem):
    with pytest.raises(wire.MalformedFrame, match=problem):
        wire.decode_json(frame)


async def test_a_malformed_frame_fails_the_open_requests_and_the_socket_stays_up(proxy, workers, caplog):
    """The issue's case: a parent_header that is a list, which names no request: every open request
    fails with ProtocolError, as for a local kernel; the connection is neither dropped nor reopened."""
    caplog.set_level(logging.WARNING)
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    seen = asyncio.Event()
    cell = asyncio.ensure_future(run(worker, "print('go', flush=True); import time; time.sleep(2)", seen=seen))
    await asyncio.wait_for(seen.wait(), 30)
    proxy.inject(v1_frame(parent=["not", "a", "dict"]))
    with pytest.raises(ProtocolError, match="malformed message .*parent_header is list"):
        await asyncio.wait_for(cell, 30)
    assert worker._connection == 1 and worker.link.state is LinkState.OPEN and worker.alive
    assert (await run(worker, "6 * 7"))[1] == "42"
    assert not [r for r in caplog.records if r.name.startswith("tornado")], "an exception reached tornado"
    assert any("sent a malformed message" in r.message for r in caplog.records)


async def test_a_malformed_answer_fails_only_its_own_request(proxy, workers):
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    seen = asyncio.Event()
    cell = asyncio.ensure_future(run(worker, "print('go', flush=True); import time; time.sleep(2)", seen=seen))
    await asyncio.wait_for(seen.wait(), 30)
    other = worker.router.open("someone-else")
    proxy.inject(v1_frame(parent={"msg_id": next(iter(worker._unanswered))}, content=[1, 2]))
    with pytest.raises(ProtocolError, match="content is list"):
        await asyncio.wait_for(cell, 30)
    assert other._error is None
    other.close()
    assert worker._connection == 1 and worker.alive


async def test_a_malformed_legacy_frame_fails_the_open_requests(proxy, workers, monkeypatch):
    monkeypatch.setattr(gateway_module, "V1_PROTOCOL", "not-offered.example")
    ws = await workers(url=proxy.url)
    worker = await started(ws)
    request = worker.request("kernel_info_request", {})  # open until it is closed: the injected frame fails it
    proxy.inject("this is no JSON")
    with pytest.raises(ProtocolError, match="no JSON object"):
        while (await request.next(time.monotonic() + 30)) is not None:
            pass
    request.close()
    assert worker._connection == 1 and worker.alive


# ---- a gateway that accepts connections and does not answer: every REST call is bounded --------------


async def test_a_gateway_that_never_answers_is_bounded_by_startup_timeout(workers, caplog):
    caplog.set_level(logging.WARNING, "jupyter_sessionpool")
    silent = await Proxy(free_port()).start()
    silent.stall()  # accepts every connection, answers none
    try:
        t0 = time.monotonic()
        ws = await workers(url=silent.url, startup_timeout=1)
        assert time.monotonic() - t0 < 5, "open() waited for a gateway that never answers"
        assert any("cannot check kernel" in r.message for r in caplog.records)
        t0 = time.monotonic()
        with pytest.raises(KernelStartError, match="does not answer") as info:
            await ws.new("k").start(1)
        assert time.monotonic() - t0 < 5 and info.value.retryable
    finally:
        await silent.close()


async def test_interrupt_and_stop_are_bounded_when_the_gateway_stops_answering(kg, proxy, workers, caplog):
    caplog.set_level(logging.WARNING, "jupyter_sessionpool")
    ws = await workers(url=proxy.url, interrupt_timeout=1)
    worker = await started(ws)
    proxy.stall()  # the websocket stays up; every new REST call hangs
    t0 = time.monotonic()
    await worker.interrupt()
    assert time.monotonic() - t0 < 4, f"interrupt took {time.monotonic() - t0:.1f} s with interrupt_timeout=1"
    t0 = time.monotonic()
    await worker.stop(1)
    assert time.monotonic() - t0 < 4, f"stop(1) took {time.monotonic() - t0:.1f} s"
    assert any("could not delete" in r.message for r in caplog.records)
    assert worker.remote_id in [k["id"] for k in kg.kernels()]  # the DELETE never reached the gateway
    await asyncio.to_thread(kg.call, f"/api/kernels/{worker.remote_id}", "DELETE")


async def test_late_answers_do_not_hold_up_interrupt_or_stop(kg, proxy, workers):
    ws = await workers(url=proxy.url, interrupt_timeout=1)
    worker = await started(ws)
    seen = asyncio.Event()
    cell = asyncio.ensure_future(run(worker, "print('go', flush=True); import time; time.sleep(60)", seen=seen))
    await asyncio.wait_for(seen.wait(), 30)
    proxy.slow(60)  # requests reach the gateway; its answers come a minute late
    t0 = time.monotonic()
    await worker.interrupt()
    assert time.monotonic() - t0 < 4
    reply, _ = await asyncio.wait_for(cell, 30)
    assert reply["ename"] == "KeyboardInterrupt"  # the interrupt itself went through
    t0 = time.monotonic()
    await worker.stop(1)
    assert time.monotonic() - t0 < 4
    await wait_until(lambda: kg.kernels() == [], 10, "the DELETE to reach the gateway")
