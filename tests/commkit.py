"""A minimal Jupyter frontend for comm tests: a real kernel, and a client that speaks to its comms.

Loaded as a pytest plugin by tests/conftest.py, so the ``frontend`` fixture serves every test.
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

from jupyter_sessionpool.notebook.comm import TARGET, VERSION

Data = dict[str, Any]

SETUP = """
import jupyter_sessionpool.notebook.comm as _c
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
