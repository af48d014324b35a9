"""The widget relay inside a real notebook kernel, at the message level: this test is the front end.

What a front end needs to render and drive a session's widget: the same comm ids, targets and
data as the session's kernel; parents that point at the local cell (or the front end's own
message) that each message answers; an Output widget's msg_id translated to a local cell's id;
its messages on to the session, in turn, without blocking the notebook's kernel; a notice and
comm_close when the session's kernel goes. The browser tests show the same in JupyterLab and
Notebook 7.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from jupyter_client.manager import start_new_kernel

from jupyter_sessionpool.comms import WIDGET_VIEW_MIME
from jupyter_sessionpool.notebook.relay import NOTICE_MIME

Msg = dict[str, Any]
SLIDER = "%%pool session=a\nimport ipywidgets as w\ns = w.IntSlider(3)\n"


class FrontEnd:
    """The notebook kernel's client: runs cells, sends comm messages, keeps every IOPub message."""

    def __init__(self, km: Any, kc: Any) -> None:
        self.km, self.kc = km, kc
        self.seen: list[Msg] = []

    def _pump(self, timeout: float) -> None:
        try:
            self.seen.append(self.kc.get_iopub_msg(timeout=timeout))
        except queue.Empty:
            pass

    def wait(self, predicate: Callable[[Msg], bool], timeout: float = 60, after: int = 0) -> Msg:
        """The first message (from index ``after`` on) satisfying ``predicate``, waiting for it."""
        deadline = time.monotonic() + timeout
        index = after
        while True:
            while index < len(self.seen):
                if predicate(self.seen[index]):
                    return self.seen[index]
                index += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"no such message within {timeout} s")
            self._pump(0.2)

    def run(self, code: str, timeout: float = 120) -> list[Msg]:
        """Run a cell to its idle; the IOPub messages with it as parent (it must succeed)."""
        msg_id = self.kc.execute(code)
        self.wait(lambda m: is_idle(m, msg_id), timeout)
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        assert reply["content"]["status"] == "ok", reply["content"]
        return [m for m in self.seen if m["parent_header"].get("msg_id") == msg_id]

    def start(self, code: str) -> str:
        """Send a cell without waiting for it; its msg_id."""
        return self.kc.execute(code)

    def send(self, comm_id: str, data: dict[str, Any], kind: str = "comm_msg") -> str:
        """A comm message from the front end; its msg_id."""
        msg = self.kc.session.msg(kind, {"comm_id": comm_id, "data": data})
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]


def is_idle(msg: Msg, msg_id: str) -> bool:
    return (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
            and msg["parent_header"].get("msg_id") == msg_id)


def opened(messages: list[Msg], model: str) -> Msg:
    (found,) = [m for m in messages if m["msg_type"] == "comm_open" and m["content"]["data"]["state"]["_model_name"] == model]
    return found


def session_pids(fe: FrontEnd) -> list[int]:
    out = fe.run("print([k.pid for k in get_ipython().magics_manager.registry['PoolMagics'].pool.stats().kernels])")
    return json.loads("".join(m["content"]["text"] for m in out if m["msg_type"] == "stream"))


@pytest.fixture
def fe() -> Iterator[FrontEnd]:
    km, kc = start_new_kernel(kernel_name="python3")
    front = FrontEnd(km, kc)
    try:
        front.run("%load_ext jupyter_sessionpool")
        yield front
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def test_a_cells_widgets_come_with_their_ids_data_and_the_cells_parent(fe: FrontEnd) -> None:
    cell = fe.start(SLIDER + "out = w.Output()\nwith out:\n    print('captured')\nprint('plain')\ndisplay(s, out)")
    fe.wait(lambda m: is_idle(m, cell), 120)
    mine = [m for m in fe.seen if m["parent_header"].get("msg_id") == cell]
    slider, output = opened(mine, "IntSliderModel"), opened(mine, "OutputModel")
    assert slider["content"]["target_name"] == "jupyter.widget" and slider["metadata"]["version"].startswith("2.")
    assert slider["content"]["data"]["state"]["value"] == 3
    views = [m for m in mine if m["msg_type"] == "display_data" and WIDGET_VIEW_MIME in m["content"]["data"]]
    assert [v["content"]["data"][WIDGET_VIEW_MIME]["model_id"] for v in views] == [
        slider["content"]["comm_id"], output["content"]["comm_id"]], "views show the relayed models"
    assert all(v["content"]["transient"]["display_id"] for v in views), "a display id for the notice at the end"
    assert mine.index(slider) < mine.index(views[0]), "the model is there before its view"
    kinds = [(m["msg_type"], m["content"].get("data", {}).get("state", {}).get("msg_id", m["content"].get("text")))
             for m in mine if m["msg_type"] in ("comm_msg", "stream")]
    assert kinds == [("comm_msg", cell), ("stream", "captured\n"), ("comm_msg", ""), ("stream", "plain\n")], \
        "the Output widget captures this cell's messages, in order"


def test_front_end_messages_reach_the_session_in_turn_and_never_block_this_kernel(fe: FrontEnd, tmp_path) -> None:
    gate = tmp_path / "gate"
    slider = opened(fe.run(SLIDER + "s"), "IntSliderModel")["content"]["comm_id"]
    busy = fe.start(f"%%pool session=a --bg\nimport os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
                    "print('bg cell ended, value', s.value)")
    fe.wait(lambda m: is_idle(m, busy))
    sent = fe.send(slider, {"method": "update", "state": {"value": 9}, "buffer_paths": []})
    fe.wait(lambda m: is_idle(m, sent))  # handled here at once: the session is busy, this kernel is not
    assert fe.run("print('local cell ran')")[-2]["content"]["text"] == "local cell ran\n"
    assert not [m for m in fe.seen if m["parent_header"].get("msg_id") == sent and m["msg_type"] == "comm_msg"]
    gate.touch()
    echo = fe.wait(lambda m: m["msg_type"] == "comm_msg" and m["parent_header"].get("msg_id") == sent, 60)
    assert echo["content"]["data"] == {"method": "echo_update", "state": {"value": 9}, "buffer_paths": []}, \
        "the session's answer has the front end's message as parent (ipywidgets matches echoes by it)"
    fe.wait(lambda m: "bg cell ended, value 3" in str(m["content"].get("data", {}).get("text/plain", "")))
    after = fe.run("%%pool session=a\nprint(s.value)")
    assert [m["content"]["text"] for m in after if m["msg_type"] == "stream"] == ["9\n"]


def test_interact_from_the_front_end_fills_its_output_in_the_widgets_cell(fe: FrontEnd) -> None:
    cell_msgs = fe.run("%%pool session=a\nfrom ipywidgets import interact\ndef f(x):\n    print('f', 2 * x)\n"
                       "interact(f, x=4);")
    cell = cell_msgs[0]["parent_header"]["msg_id"]
    slider = opened(cell_msgs, "IntSliderModel")["content"]["comm_id"]
    mark = len(fe.seen)
    sent = fe.send(slider, {"method": "update", "state": {"value": 6}, "buffer_paths": []})
    captured = fe.wait(lambda m: m["msg_type"] == "stream" and m["content"]["text"] == "f 12\n", after=mark)
    assert captured["parent_header"]["msg_id"] == cell, "published under the widget's cell, which the page still has"
    fe.wait(lambda m: m["msg_type"] == "comm_msg" and m["content"]["data"].get("state", {}).get("msg_id") == "", after=mark)
    capture = [m for m in fe.seen[mark:] if m["msg_type"] == "comm_msg" and "msg_id" in m["content"]["data"].get("state", {})]
    assert [m["content"]["data"]["state"]["msg_id"] for m in capture][:2] == [cell, ""], "a local cell's id, then none"
    assert all(m["parent_header"]["msg_id"] == sent for m in capture)


def test_a_background_cells_widget_views_are_displays_of_their_own(fe: FrontEnd) -> None:
    cell = fe.start("%%pool session=c --bg\nfrom tqdm.auto import tqdm\nfor i in tqdm(range(5), desc='bar'): pass")
    done = fe.wait(lambda m: m["msg_type"] == "update_display_data" and "finished" in m["content"]["data"]["text/plain"])
    view = fe.wait(lambda m: m["msg_type"] == "display_data" and WIDGET_VIEW_MIME in m["content"]["data"])
    assert view["parent_header"]["msg_id"] == cell, "in the cell that started it"
    assert "bar" not in done["content"]["data"]["text/plain"], "not repeated as text in the cell's display"
    hbox = view["content"]["data"][WIDGET_VIEW_MIME]["model_id"]
    assert [m for m in fe.seen if m["msg_type"] == "comm_open" and m["content"]["comm_id"] == hbox]


@pytest.mark.parametrize("how", ["release", "restart", "death"])
def test_a_sessions_end_replaces_its_views_by_a_notice_and_closes_its_comms(fe: FrontEnd, how: str) -> None:
    first = fe.run(SLIDER + "display(s)\ns")  # shown twice: as a display and as the cell's result
    comms = {m["content"]["comm_id"] for m in first if m["msg_type"] == "comm_open"}
    (display_view,) = [m for m in first if m["msg_type"] == "display_data"]
    cell = first[0]["parent_header"]["msg_id"]
    mark = len(fe.seen)
    if how == "death":
        (pid,) = session_pids(fe)
        os.kill(pid, signal.SIGKILL)
    else:
        fe.run(f"%pool {how} a")
    reason = {"release": "the session was released", "restart": "the session was restarted",
              "death": "the session lost its kernel"}[how]
    update = fe.wait(lambda m: m["msg_type"] == "update_display_data", after=mark)
    assert update["content"]["transient"]["display_id"] == display_view["content"]["transient"]["display_id"]
    assert reason in update["content"]["data"]["text/plain"] and update["content"]["data"][NOTICE_MIME]["session"] == "a"
    below = fe.wait(lambda m: m["msg_type"] == "display_data" and NOTICE_MIME in m["content"]["data"], after=mark)
    assert below["parent_header"]["msg_id"] == cell, "the cell's result view gets the notice below it"
    closed = set()
    while closed != comms:
        closed.add(fe.wait(lambda m: m["msg_type"] == "comm_close" and m["content"]["comm_id"] not in closed,
                           after=mark)["content"]["comm_id"])
    slider = next(iter(comms))
    sent = fe.send(slider, {"method": "update", "state": {"value": 1}})
    fe.wait(lambda m: is_idle(m, sent))
    follow = fe.run("%%pool session=a\nprint('a goes on')" if how != "death" else "print('ok')")
    assert not [m for m in fe.seen[mark:] if m["msg_type"] == "error"]
    assert [m["content"]["text"] for m in follow if m["msg_type"] == "stream"] in (["a goes on\n"], ["ok\n"])


def test_restarting_the_notebook_kernel_leaves_no_session_kernel_behind(fe: FrontEnd) -> None:
    fe.run(SLIDER + "s")
    pids = session_pids(fe)
    fe.km.restart_kernel(now=False)
    fe.kc.wait_for_ready(timeout=60)
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
        assert time.monotonic() < deadline, "a session kernel outlived the notebook kernel's restart"
        time.sleep(0.1)  # polling a process that has no event to wait on
    fe.seen.clear()
    fe.run("%load_ext jupyter_sessionpool")
    again = fe.run(SLIDER + "s")
    assert opened(again, "IntSliderModel")
