"""The ``jupyter_sessionpool`` comm, driven from a real kernel as a frontend would drive it.

A test kernel (ipykernel) runs the pool; this process speaks the Jupyter protocol to it with
``jupyter_client``: comm_open / comm_msg on shell, snapshots and replies on IOPub.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.manager import KernelManager

from jupyter_sessionpool.comm import MIN_INTERVAL, TARGET, VERSION

Data = dict[str, Any]

SETUP = """
import jupyter_sessionpool.comm as _c
from jupyter_sessionpool import KernelPool
pool = None
_c.register(get_ipython(), lambda: pool)
"""


class Frontend:
    """This test, acting as a frontend on one kernel.

    One reader takes every IOPub message: comm messages are kept per comm until a test
    waits for them, so running a cell never swallows the snapshots sent meanwhile.
    """

    def __init__(self, client: BlockingKernelClient) -> None:
        self.client = client
        self._inbox: dict[str, list[Data]] = {}
        self._printed: dict[str, list[str]] = {}
        self._idle: set[str] = set()

    def _pump(self, deadline: float) -> None:
        """File one IOPub message (or return at ``deadline``)."""
        try:
            msg = self.client.get_iopub_msg(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return
        parent = msg["parent_header"].get("msg_id", "")
        content = msg["content"]
        if msg["msg_type"] in ("comm_msg", "comm_close"):
            data = {"type": "closed"} if msg["msg_type"] == "comm_close" else content["data"]
            if isinstance(data, dict):
                data["_received"] = time.monotonic()
            self._inbox.setdefault(content["comm_id"], []).append(data)
        elif msg["msg_type"] == "stream":
            self._printed.setdefault(parent, []).append(content["text"])
        elif msg["msg_type"] == "status" and content["execution_state"] == "idle":
            self._idle.add(parent)

    def execute(self, code: str, timeout: float = 60) -> str:
        """Run ``code`` in the kernel, which must succeed; what it printed."""
        return self.finish(self.client.execute(code), timeout)

    def finish(self, msg_id: str, timeout: float = 60) -> str:
        """Wait for the cell sent as ``msg_id``, which must succeed; what it printed."""
        deadline = time.monotonic() + timeout
        while msg_id not in self._idle:
            if time.monotonic() > deadline:
                raise AssertionError(f"cell {msg_id} did not finish within {timeout} s")
            self._pump(deadline)
        reply = self.client.get_shell_msg(timeout=timeout)
        while reply["parent_header"]["msg_id"] != msg_id:  # e.g. a late extra kernel_info_reply
            reply = self.client.get_shell_msg(timeout=timeout)
        assert reply["content"]["status"] == "ok", reply["content"]
        return "".join(self._printed.pop(msg_id, []))

    def open(self, data: Data | None = None) -> str:
        """Open a comm on our target; its id."""
        comm_id = uuid.uuid4().hex
        content = {"comm_id": comm_id, "target_name": TARGET, "data": {"version": VERSION} if data is None else data}
        self.client.shell_channel.send(self.client.session.msg("comm_open", content))
        return comm_id

    def send(self, comm_id: str, data: Any, subshell: str | None = None) -> None:
        """A comm_msg on the main shell, or on ``subshell`` as JupyterLab sends them."""
        msg = self.client.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        if subshell is not None:
            msg["header"]["subshell_id"] = subshell
        self.client.shell_channel.send(msg)

    def create_subshell(self) -> str:
        """A new kernel subshell (JEP 91); its id."""
        self.client.control_channel.send(self.client.session.msg("create_subshell_request", {}))
        reply = self.client.control_channel.get_msg(timeout=30)
        assert reply["content"]["status"] == "ok", reply["content"]
        return reply["content"]["subshell_id"]

    def wait(self, comm_id: str, predicate: Callable[[Data], bool], timeout: float = 60) -> tuple[Data, list[Data]]:
        """Take messages on ``comm_id`` until one satisfies ``predicate``.

        Returns it and the ones taken before it (a comm_close reads ``{"type": "closed"}``).
        """
        seen: list[Data] = []
        inbox = self._inbox.setdefault(comm_id, [])
        deadline = time.monotonic() + timeout
        while True:
            while inbox:
                data = inbox.pop(0)
                if predicate(data):
                    return data, seen
                seen.append(data)
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching message within {timeout} s; saw {seen}")
            self._pump(deadline)

    def request(self, comm_id: str, data: Any) -> Data:
        """Send one message and wait for the reply to it (matched by request_id)."""
        self.send(comm_id, data)
        request_id = data.get("request_id") if isinstance(data, dict) else None
        reply, _ = self.wait(comm_id, lambda d: d.get("type") == "reply" and d.get("request_id") == request_id)
        return reply


@pytest.fixture
def frontend() -> Iterator[Frontend]:
    """A fresh python3 kernel and a client on it; shut down gracefully (its pool with it)."""
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield Frontend(client)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)


def session_state(data: Data, session: str) -> str | None:
    """The state of ``session``'s kernel in a snapshot, or None if it holds none."""
    if data.get("type") != "snapshot":
        return None
    return next((k["state"] for k in data["pool"]["kernels"] if k["session"] == session), None)


def action(name: str, session: str, request_id: Any = "r1") -> Data:
    return {"version": VERSION, "action": name, "session": session, "request_id": request_id}


def test_load_ext_registers_target_and_beacon(frontend: Frontend) -> None:
    assert frontend.client.comm_info(TARGET, reply=True)["content"]["comms"] == {}
    frontend.execute("%load_ext jupyter_sessionpool")
    comms = frontend.client.comm_info(TARGET, reply=True)["content"]["comms"]
    assert [c["target_name"] for c in comms.values()] == [TARGET]  # the beacon, findable later
    frontend.execute("%load_ext jupyter_sessionpool")  # loading twice opens no second beacon
    assert len(frontend.client.comm_info(TARGET, reply=True)["content"]["comms"]) == 1

    comm_id = frontend.open()
    first, _ = frontend.wait(comm_id, lambda d: True)
    assert first == {"version": VERSION, "type": "no_pool", "_received": first["_received"]}

    frontend.execute("%%pool session=a\nx = 41")
    snap, _ = frontend.wait(comm_id, lambda d: session_state(d, "a") == "idle")
    (kernel,) = snap["pool"]["kernels"]
    assert kernel["executions"] == 1
    assert isinstance(kernel["rss"], int) and kernel["rss"] > 1_000_000
    assert abs(snap["time"] - time.time()) < 30


def test_pool_made_later_is_followed_live(frontend: Frontend) -> None:
    frontend.execute(SETUP)
    comm_id = frontend.open()
    frontend.wait(comm_id, lambda d: d["type"] == "no_pool")
    frontend.execute("pool = KernelPool(max_kernels=2)")
    frontend.wait(comm_id, lambda d: d["type"] == "snapshot" and d["pool"]["max_kernels"] == 2)
    frontend.execute(
        "import threading\n"
        "threading.Thread(target=pool.execute, args=('import time; time.sleep(3)',), kwargs={'session': 'b'}).start()"
    )
    busy, _ = frontend.wait(comm_id, lambda d: session_state(d, "b") == "busy")
    (kernel,) = [k for k in busy["pool"]["kernels"] if k["session"] == "b"]
    assert kernel["busy_since"] <= busy["time"]
    frontend.wait(comm_id, lambda d: session_state(d, "b") == "idle")  # pushed, not polled: no cell ran


def test_actions_interrupt_restart_release(frontend: Frontend) -> None:
    frontend.execute(SETUP + "pool = KernelPool(max_kernels=2)\npool.execute('y = 1', session='a')")
    comm_id = frontend.open()
    frontend.wait(comm_id, lambda d: session_state(d, "a") == "idle")

    frontend.execute(
        "import threading\nresults = []\n"
        "t = threading.Thread(target=lambda: results.append(pool.execute('import time; time.sleep(60)', session='a')))\n"
        "t.start()"
    )
    frontend.wait(comm_id, lambda d: session_state(d, "a") == "busy")
    reply = frontend.request(comm_id, action("interrupt", "a", request_id=7))
    assert reply == {"version": VERSION, "type": "reply", "request_id": 7, "ok": True, "error": None,
                     "_received": reply["_received"]}
    frontend.wait(comm_id, lambda d: session_state(d, "a") == "idle", timeout=20)
    frontend.execute("t.join(10); assert results[0].error['ename'] == 'KeyboardInterrupt', results")

    assert frontend.request(comm_id, action("restart", "a"))["ok"] is True
    frontend.execute("assert 'a' in pool.sessions() or pool.execute('1', session='a')")

    assert frontend.request(comm_id, action("release", "a"))["ok"] is True
    frontend.wait(comm_id, lambda d: d["type"] == "snapshot" and session_state(d, "a") is None)
    frontend.execute("assert 'a' not in pool.sessions()")

    reply = frontend.request(comm_id, action("release", "a"))
    assert (reply["ok"], reply["error"]) == (False, "session 'a' holds no kernel")


def test_actions_on_a_subshell_run_while_a_cell_blocks_the_main_shell(frontend: Frontend) -> None:
    frontend.execute(SETUP + "pool = KernelPool(max_kernels=1)\npool.execute('1', session='a')")
    comm_id = frontend.open()  # on the main shell, as JupyterLab does before its subshell exists
    frontend.wait(comm_id, lambda d: session_state(d, "a") == "idle")
    subshell = frontend.create_subshell()
    cell = frontend.client.execute("print(pool.execute('import time; time.sleep(300)', session='a').error['ename'])")
    frontend.wait(comm_id, lambda d: session_state(d, "a") == "busy")  # pushed from the pool's thread
    frontend.send(comm_id, action("interrupt", "a"), subshell=subshell)
    reply, _ = frontend.wait(comm_id, lambda d: d.get("type") == "reply", timeout=20)
    assert reply["ok"] is True
    assert frontend.finish(cell, timeout=20) == "KeyboardInterrupt\n"


def test_action_without_pool_is_an_error_reply(frontend: Frontend) -> None:
    frontend.execute(SETUP)
    comm_id = frontend.open()
    reply = frontend.request(comm_id, action("interrupt", "a"))
    assert (reply["ok"], reply["error"]) == (False, "this kernel has no pool yet")


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (["interrupt", "a"], "a message must be a JSON object, not list"),
        ({"action": "release", "session": "a", "request_id": "r1"}, "unsupported protocol version None"),
        ({**action("release", "a"), "version": 2}, "unsupported protocol version 2"),
        ({**action("release", "a"), "code": "open('PWNED', 'w')"}, "unknown key(s): code"),
        (action("execute", "a"), "unknown action 'execute'"),
        (action("shutdown", "a"), "unknown action 'shutdown'"),
        (action("release", ""), "session must be a non-empty string, not ''"),
        (action("release", None), "session must be a non-empty string, not None"),
        (action("release", "a\nb"), "ValueError: session name 'a\\nb' contains control characters"),
    ],
    ids=["list", "no-version", "version-2", "extra-code-key", "execute", "shutdown", "empty-session",
         "null-session", "bad-session"],
)
def test_malformed_messages_get_error_replies_and_change_nothing(
    frontend: Frontend, tmp_path: Any, message: Any, error: str
) -> None:
    frontend.execute(SETUP + f"import os; os.chdir({str(tmp_path)!r})\n"
                     "pool = KernelPool(max_kernels=1)\npool.execute('1', session='a')")
    comm_id = frontend.open()
    frontend.wait(comm_id, lambda d: session_state(d, "a") == "idle")
    frontend.send(comm_id, message)
    reply, _ = frontend.wait(comm_id, lambda d: d.get("type") == "reply")
    assert reply["ok"] is False
    assert error in reply["error"]
    assert reply["request_id"] == (message.get("request_id") if isinstance(message, dict) else None)
    frontend.execute("assert pool.sessions() == ['a'], pool.sessions()")
    assert list(tmp_path.iterdir()) == []  # nothing in a message is ever executed


def test_open_with_another_version_is_refused_and_closed(frontend: Frontend) -> None:
    frontend.execute(SETUP)
    comm_id = frontend.open({"version": 99})
    reply, _ = frontend.wait(comm_id, lambda d: d.get("type") == "reply")
    assert reply["ok"] is False and "unsupported protocol version" in reply["error"]
    frontend.wait(comm_id, lambda d: d["type"] == "closed")


def test_snapshots_are_coalesced_and_end_on_the_latest_state(frontend: Frontend) -> None:
    frontend.execute(
        SETUP + "pool = KernelPool(max_kernels=1)\nevents = []\npool.subscribe(events.append)\n"
        "pool.execute('1', session='a')"
    )
    comm_id = frontend.open()
    frontend.wait(comm_id, lambda d: session_state(d, "a") == "idle")
    frontend.execute("n0 = len(events)\nfor _ in range(40): pool.execute('1', session='a')")
    last, seen = frontend.wait(
        comm_id, lambda d: d.get("type") == "snapshot" and d["pool"]["kernels"][0]["executions"] == 41
    )
    snapshots = [d for d in seen if d.get("type") == "snapshot"] + [last]
    gaps = [b["_received"] - a["_received"] for a, b in zip(snapshots, snapshots[1:])]
    assert all(gap > MIN_INTERVAL * 0.6 for gap in gaps), gaps  # at most a few per second
    events = int(frontend.execute("print(len(events) - n0)"))
    assert events >= 80 and len(snapshots) < events / 4, (events, len(snapshots))  # far fewer than events
