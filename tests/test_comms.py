"""Comm traffic of pooled kernels: the comm sink, the widget state it rebuilds, comm messages sent
to a session's kernel through the lease rules.

The first tests feed :class:`WidgetState` hand-written messages (what ipywidgets sends); the
rest drive real kernels with real ipywidgets.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import threading

import pytest

from jupyter_sessionpool import AsyncKernelPool, CommNotFound, KernelPool, PoolClosed, SessionLost
from jupyter_sessionpool.comms import CLOSED_KEPT, WIDGET_STATE_MIME, WidgetState

from poolkit import started_marker, until

OUTPUT_STATE = {"_model_module": "@jupyter-widgets/output", "_model_name": "OutputModel",
                "_model_module_version": "1.0.0", "msg_id": "", "outputs": []}
SLIDER_STATE = {"_model_module": "@jupyter-widgets/controls", "_model_name": "IntSliderModel",
                "_model_module_version": "2.0.0", "value": 0}


def comm(kind, comm_id, state=None, parent="", buffers=(), paths=(), **data):
    """An iopub comm message as the pool's reader delivers it."""
    if state is not None:
        data = {**data, "state": state, "buffer_paths": [list(p) for p in paths]}
    content = {"comm_id": comm_id, "data": data}
    if kind == "comm_open":
        content["target_name"] = "jupyter.widget"
    return {"msg_type": kind, "content": content, "parent_header": {"msg_id": parent}, "metadata": {},
            "buffers": list(buffers)}


def stream(text, parent):
    return {"msg_type": "stream", "content": {"name": "stdout", "text": text}, "parent_header": {"msg_id": parent}}


# ---- the widget state, message by message -------------------------------------------------------


def test_widget_state_is_what_nbclient_writes():
    state = WidgetState()
    state.take(comm("comm_open", "s1", SLIDER_STATE))
    state.take(comm("comm_msg", "s1", {"value": 5}, method="update"))
    state.take(comm("comm_open", "img", {**SLIDER_STATE, "_model_name": "ImageModel"}, buffers=[b"\x89PNG"],
                    paths=[["value"]]))
    state.take(comm("comm_open", "plain", None, target_name="other"))  # a comm that is no widget: not saved
    saved = state.to_dict()
    assert saved["version_major"] == 2 and saved["version_minor"] == 0 and set(saved["state"]) == {"s1", "img"}
    assert saved["state"]["s1"] == {"model_name": "IntSliderModel", "model_module": "@jupyter-widgets/controls",
                                    "model_module_version": "2.0.0", "state": {**SLIDER_STATE, "value": 5}}
    assert saved["state"]["img"]["buffers"] == [
        {"data": base64.b64encode(b"\x89PNG").decode(), "encoding": "base64", "path": ["value"]}
    ]
    state.take(comm("comm_msg", "s1", {"value": 6}, method="update"))
    assert saved["state"]["s1"]["state"]["value"] == 5, "to_dict() is a copy"
    state.take(comm("comm_close", "s1"))
    assert not state.is_open("s1") and state.to_dict()["state"]["s1"]["state"]["value"] == 6, "kept, as nbclient does"
    assert WIDGET_STATE_MIME == "application/vnd.jupyter.widget-state+json"


def test_an_output_widget_captures_what_a_front_end_would():
    state = WidgetState()
    state.take(comm("comm_open", "out", OUTPUT_STATE))
    assert state.take(stream("before\n", "cell-1")) is None, "not capturing yet"
    state.take(comm("comm_msg", "out", {"msg_id": "cell-1"}, method="update"))
    assert state.take(stream("a", "cell-1")) == ("output", {"comm_id": "out", "output": {
        "output_type": "stream", "name": "stdout", "text": "a"}})
    state.take(stream("b\n", "cell-1"))
    assert state.take(stream("other\n", "cell-2")) is None, "another request's output is not captured"
    outputs = state.to_dict()["state"]["out"]["state"]["outputs"]
    assert outputs == [{"output_type": "stream", "name": "stdout", "text": "ab\n"}]
    clear = {"msg_type": "clear_output", "content": {"wait": True}, "parent_header": {"msg_id": "cell-1"}}
    state.take(clear)
    assert state.to_dict()["state"]["out"]["state"]["outputs"], "clear_output(wait=True) waits for the next output"
    state.take(stream("c\n", "cell-1"))
    assert state.to_dict()["state"]["out"]["state"]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "c\n"}]
    state.take(comm("comm_msg", "out", {"msg_id": ""}, method="update"))
    assert state.take(stream("after\n", "cell-1")) is None and not state.capturing
    appended = [{"output_type": "stream", "name": "stdout", "text": "set by the kernel\n"}]
    state.take(comm("comm_msg", "out", {"outputs": appended}, method="update"))  # out.append_stdout(...)
    assert state.to_dict()["state"]["out"]["state"]["outputs"] == appended


def test_nested_output_widgets_capture_last_one_first():
    state = WidgetState()
    for name in ("outer", "inner"):
        state.take(comm("comm_open", name, OUTPUT_STATE))
    state.take(comm("comm_msg", "outer", {"msg_id": "m"}))
    state.take(comm("comm_msg", "inner", {"msg_id": "m"}))
    assert state.take(stream("x", "m"))[1]["comm_id"] == "inner"
    state.take(comm("comm_msg", "inner", {"msg_id": ""}))
    assert state.take(stream("y", "m"))[1]["comm_id"] == "outer"


def test_memory_stays_bounded_however_chatty_the_widgets():
    state = WidgetState(max_output_size=1000)
    state.take(comm("comm_open", "s", SLIDER_STATE))
    for value in range(20_000):
        state.take(comm("comm_msg", "s", {"value": value}, buffers=[bytes(100)], paths=[["data"]]))
    saved = state.to_dict()["state"]["s"]
    assert saved["state"]["value"] == 19_999 and len(saved["buffers"]) == 1, "the latest state, not the history"
    for n in range(CLOSED_KEPT + 500):
        state.take(comm("comm_open", f"w{n}", SLIDER_STATE))
        state.take(comm("comm_close", f"w{n}"))
    assert len(state.to_dict()["state"]) == CLOSED_KEPT + 1, "the oldest closed models are forgotten"
    state.take(comm("comm_open", "out", OUTPUT_STATE))
    state.take(comm("comm_msg", "out", {"msg_id": "m"}))
    for _ in range(500):
        state.take(stream("x" * 100, "m"))
    text = "".join(o["text"] for o in state.to_dict()["state"]["out"]["state"]["outputs"])
    assert len(text) < 1500 and "output truncated" in text


# ---- real kernels ---------------------------------------------------------------------------------

SLIDER = "import ipywidgets as w\ns = w.IntSlider(3)\n"


def model_id(pool_or_lease, model_name, session=None):
    state = pool_or_lease.widget_state(session) if session else pool_or_lease.widget_state()
    (found,) = [k for k, v in state["state"].items() if v["model_name"] == model_name]
    return found


async def test_comm_events_come_in_order_with_the_outputs(make_pool):
    pool = await make_pool(max_kernels=1)
    seen = []  # on_output and on_comm run on the kernel's one callback thread, in the kernel's order
    code = (SLIDER + "out = w.Output()\nprint('plain 1')\nwith out:\n    print('captured')\nprint('plain 2')\n"
            "display(s)\ns.value = 4")
    result = await pool.execute(code, session="a", on_output=lambda o: seen.append(("out", o)),
                                on_comm=lambda e: seen.append(("comm", e)))
    kinds = [(k, x["output_type"] if k == "out" else x.msg_type) for k, x in seen]
    assert [o["text"] for o in result.outputs if o["output_type"] == "stream"] == ["plain 1\nplain 2\n"]
    slider = model_id(pool, "IntSliderModel", "a")
    opened = next(i for i, (k, x) in enumerate(seen) if k == "comm" and x.msg_type == "comm_open" and x.comm_id == slider)
    shown = next(i for i, (k, x) in enumerate(seen) if k == "out" and x["output_type"] == "display_data")
    assert opened < shown, "a widget's comm_open comes before the output that shows it"
    captured = kinds.index(("comm", "output"))
    assert kinds[captured - 2:captured + 3] == [("out", "stream"), ("comm", "comm_msg"), ("comm", "output"),
                                                ("comm", "comm_msg"), ("out", "stream")], kinds
    assert seen[captured][1].content["output"] == {"output_type": "stream", "name": "stdout", "text": "captured\n"}
    assert {e.parent_id for k, e in seen if k == "comm"} == {seen[captured][1].parent_id}, "each names its request"
    state = pool.widget_state("a")["state"]
    assert state[slider]["state"]["value"] == 4
    (out,) = [v for v in state.values() if v["model_name"] == "OutputModel"]
    assert out["state"]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "captured\n"}]


async def test_comm_traffic_outside_any_call_reaches_the_watchers(make_pool):
    pool = await make_pool(max_kernels=1)
    watched = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def watch(event):
        watched.append(event)
        if event.msg_type == "comm_msg" and event.content["data"].get("state", {}).get("value") == 49:
            loop.call_soon_threadsafe(done.set)

    pool.watch_comms("a", watch)
    code = SLIDER + ("import threading, time\n"
                     "def tick():\n    for i in range(50):\n        s.value = i\n        time.sleep(0.005)\n"
                     "threading.Thread(target=tick).start()")
    await pool.execute(code, session="a", on_comm=lambda e: None)  # the cell's own events go to its on_comm
    await asyncio.wait_for(done.wait(), 30)
    values = [e.content["data"]["state"]["value"] for e in watched if e.msg_type == "comm_msg"]
    assert values == sorted(values) and values[-1] == 49 and not [e for e in watched if e.msg_type == "comm_open"]
    assert pool.widget_state("a")["state"][model_id(pool, "IntSliderModel", "a")]["state"]["value"] == 49
    assert pool.stray_output("a") == [], "comm traffic is not stray output"


async def test_a_comm_message_acts_like_a_front_ends(make_pool):
    pool = await make_pool(max_kernels=1)
    code = ("from ipywidgets import interact, Button\n"
            "def double(x):\n    print('double', 2 * x)\n"
            "shown = interact(double, x=5)\n"
            "b = Button(description='go')\nb.on_click(lambda _: print('clicked'))\nb")
    first = await pool.execute(code, session="a")
    assert first.status == "ok" and not any("double" in o.get("text", "") for o in first.outputs)
    slider, button = model_id(pool, "IntSliderModel", "a"), model_id(pool, "ButtonModel", "a")
    events = []
    moved = await pool.send_comm("a", slider, {"method": "update", "state": {"value": 7}, "buffer_paths": []},
                                 on_comm=events.append)
    assert moved.status == "ok" and moved.outputs == [] and moved.execution_count is None
    captured = [e.content["output"] for e in events if e.msg_type == "output"]
    double = {"output_type": "stream", "name": "stdout", "text": "double 14\n"}
    assert captured == [{"output_type": "clear_output", "wait": True}, double], "interact re-ran it"
    assert any(e.content["data"].get("method") == "echo_update" for e in events if e.msg_type == "comm_msg")
    (out,) = [v for v in pool.widget_state("a")["state"].values() if v["model_name"] == "OutputModel"]
    assert out["state"]["outputs"] == [double]
    clicked = await pool.send_comm("a", button, {"method": "custom", "content": {"event": "click"}})
    assert clicked.stdout == "clicked\n", "a handler's output is the message's output"
    assert (await pool.execute("shown.widget.kwargs", session="a")).result == "{'x': 7}"
    assert pool._books.bound["a"].handle.router._open == {}, "every request it sent was closed"


async def test_binary_buffers_go_both_ways(make_pool):
    pool = await make_pool(max_kernels=1)
    await pool.execute("import ipywidgets as w\nimg = w.Image(value=b'first', format='png')", session="a")
    image = model_id(pool, "ImageModel", "a")
    assert pool.widget_state("a")["state"][image]["buffers"] == [
        {"data": base64.b64encode(b"first").decode(), "encoding": "base64", "path": ["value"]}
    ]
    await pool.send_comm("a", image, {"method": "update", "state": {}, "buffer_paths": [["value"]]},
                         buffers=[b"\x00second\xff"])
    assert (await pool.execute("bytes(img.value)", session="a")).result == "b'\\x00second\\xff'"


async def test_a_comm_message_waits_behind_the_running_cell_and_blocks_no_other_session(make_pool, tmp_path):
    pool = await make_pool(max_kernels=2)
    gate = tmp_path / "gate"
    await pool.execute(SLIDER + "order = []\ns.observe(lambda c: order.append(('moved', c.new)), 'value')",
                       session="a")
    slider = model_id(pool, "IntSliderModel", "a")
    cell = await started_marker(
        pool, f"import os, time\nprint('started', flush=True)\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
              "order.append('cell ended')", "a")
    moved = asyncio.ensure_future(pool.send_comm("a", slider, {"method": "update", "state": {"value": 9}}))
    await asyncio.wait_for(until(pool, lambda st: [w.session for w in st.waiting] == ["a"]), 10)
    other = await pool.execute("1 + 1", session="b", timeout=30)  # another session is not held up
    assert other.result == "2" and not moved.done()
    gate.touch()
    await asyncio.wait_for(asyncio.gather(cell, moved), 30)
    assert (await pool.execute("order", session="a")).result == "['cell ended', ('moved', 9)]"


async def test_comm_messages_to_comms_that_are_gone_raise_comm_not_found(make_pool, tmp_path):
    pool = await make_pool(max_kernels=2)
    with pytest.raises(CommNotFound, match="'a' has no open comm 'nope': the session holds no kernel"):
        await pool.send_comm("a", "nope", {})
    assert pool.sessions() == [], "no kernel was started for it"
    await pool.execute(SLIDER, session="a")
    slider = model_id(pool, "IntSliderModel", "a")
    await pool.execute("s.close()\nt = w.IntSlider()", session="a")
    for bad, error in [((None, "x"), ValueError), (("a", 3), TypeError), (("a", ""), TypeError),
                       (("a", "x", [1]), TypeError)]:
        with pytest.raises(error):
            await pool.send_comm(*bad)
    with pytest.raises(TypeError, match="buffers must be bytes-like"):
        await pool.send_comm("a", "x", {}, buffers=["text"])
    for gone in (slider, "f" * 32):  # closed by the kernel; never opened
        with pytest.raises(CommNotFound, match="no such comm open"):
            await pool.send_comm("a", gone, {})
    assert (await pool.execute("t.value", session="a")).result == "0", "bad input disturbed nothing"


@pytest.mark.parametrize("how", ["release", "restart", "death"])
async def test_losing_the_kernel_closes_its_comms_and_fails_waiting_messages(make_pool, tmp_path, how):
    pool = await make_pool(max_kernels=2)
    ended = asyncio.get_running_loop().create_future()
    pool.watch_comms("a", lambda e: e.msg_type == "kernel_ended" and ended.get_loop().call_soon_threadsafe(
        lambda: ended.done() or ended.set_result(e)))
    await pool.execute(SLIDER, session="a")
    slider = model_id(pool, "IntSliderModel", "a")
    started = pool.stats().counters["started"]
    cell = await started_marker(pool, "print('started', flush=True); import time; time.sleep(60)", "a")
    waiting = asyncio.ensure_future(pool.send_comm("a", slider, {"method": "update", "state": {"value": 1}}))
    await asyncio.wait_for(until(pool, lambda st: len(st.waiting) == 1), 10)
    if how == "release":
        await pool.release("a")
    elif how == "restart":
        await pool.restart("a")
    else:
        (kernel,) = pool.stats().kernels
        os.kill(kernel.pid, signal.SIGKILL)
    with pytest.raises(CommNotFound, match="lost the kernel that had it"):
        await asyncio.wait_for(waiting, 20)
    event = await asyncio.wait_for(ended, 20)
    assert event.session == "a" and {"release": "released", "restart": "restarted", "death": "died"}[how] in \
        event.content["reason"]
    await asyncio.gather(cell, return_exceptions=True)
    assert pool.widget_state("a")["state"] == {}
    if how == "death":
        with pytest.raises(SessionLost, match="died"):  # the comm message did not use up the session's loss
            await pool.execute("1", session="a")
    assert (await pool.execute("1", session="a")).result == "1"
    assert pool.stats().counters["started"] == started + 1, "no kernel was started for the comm message"


async def test_cancelling_a_comm_message_while_it_waits_withdraws_it(make_pool):
    pool = await make_pool(max_kernels=1)
    await pool.execute(SLIDER + "moves = []\ns.observe(lambda c: moves.append(c.new), 'value')", session="a")
    slider = model_id(pool, "IntSliderModel", "a")
    async with pool.checkout("a") as lease:
        waiting = asyncio.ensure_future(pool.send_comm("a", slider, {"method": "update", "state": {"value": 1}}))
        await asyncio.wait_for(until(pool, lambda st: len(st.waiting) == 1), 10)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pool.stats().waiting == ()
        assert (await lease.execute("moves")).result == "[]"


async def test_cancelling_a_comm_message_while_its_handler_runs_frees_the_kernel(make_pool):
    pool = await make_pool(max_kernels=1)
    await pool.execute("from ipywidgets import Button\nimport time\nb = Button()\n"
                       "b.on_click(lambda _: (print('started', flush=True), time.sleep(60)))", session="a")
    button = model_id(pool, "ButtonModel", "a")
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    task = asyncio.ensure_future(pool.send_comm(
        "a", button, {"method": "custom", "content": {"event": "click"}},
        on_output=lambda o: "started" in o.get("text", "") and loop.call_soon_threadsafe(started.set)))
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await pool.execute("1 + 1", session="a", timeout=30)).result == "2", "interrupted, state kept"


def test_the_blocking_pool_sends_without_waiting_and_watches_from_threads():
    with KernelPool(max_kernels=1) as pool:
        seen = []
        unwatch = pool.watch_comms("a", seen.append)
        pool.execute(SLIDER + "moves = []\ns.observe(lambda c: moves.append(c.new), 'value')", session="a")
        slider = model_id(pool, "IntSliderModel", "a")
        futures = [pool.send_comm("a", slider, {"method": "update", "state": {"value": v}}) for v in range(1, 21)]
        assert pool.execute("moves", session="a").result == str(list(range(1, 21))), "sent in order, before the cell"
        assert all(f.result(30).status == "ok" for f in futures)
        assert [e.content["data"]["state"]["value"] for e in seen if e.msg_type == "comm_msg"] == list(range(1, 21))
        unwatch()
        with pool.checkout("a") as lease:
            assert lease.send_comm(slider, {"method": "update", "state": {"value": 99}}).status == "ok"
            assert lease.widget_state()["state"][slider]["state"]["value"] == 99
        assert len([e for e in seen if e.msg_type == "comm_msg"]) == 20, "unwatched"
        with pytest.raises(ValueError, match="needs a session name"):
            pool.widget_state(None)
        threads = [threading.Thread(target=lambda: pool.widget_state("a")) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with pytest.raises(PoolClosed):
        pool.send_comm("a", slider, {}).result()


async def test_a_closed_pool_refuses_comm_messages():
    pool = AsyncKernelPool(max_kernels=1)
    await pool.start()
    await pool.shutdown()
    with pytest.raises(PoolClosed):
        await pool.send_comm("a", "x", {})


async def test_the_documented_rebuild_from_events(make_pool):
    """The loop in the comms module's docstring, as written there."""
    pool = await make_pool(max_kernels=1)
    models = {}

    def on_comm(event):  # on a callback thread, in order with on_output
        state = event.content.get("data", {}).get("state") if event.msg_type != "output" else None
        if state is not None:
            models.setdefault(event.comm_id, {}).update(state)

    await pool.execute("import ipywidgets; s = ipywidgets.IntSlider(3); s", session="a", on_comm=on_comm)
    slider = next(i for i, m in models.items() if m["_model_name"] == "IntSliderModel")
    await pool.send_comm("a", slider, {"method": "update", "state": {"value": 7}}, on_comm=on_comm)
    assert models[slider]["value"] == 7 == pool.widget_state("a")["state"][slider]["state"]["value"]
    assert {k: {"model_name": m["_model_name"], "state": m} for k, m in models.items()} == {
        k: {"model_name": v["model_name"], "state": v["state"]} for k, v in pool.widget_state("a")["state"].items()
    }


async def test_an_expired_session_ends_its_widgets(make_pool):
    pool = await make_pool(max_kernels=1, session_idle_timeout=0.5)
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    pool.watch_comms("a", lambda e: e.msg_type == "kernel_ended" and loop.call_soon_threadsafe(
        lambda: ended.done() or ended.set_result(e.content["reason"])))
    await pool.execute(SLIDER, session="a")
    assert "expired after 0.5 s idle" in await asyncio.wait_for(ended, 20)
    assert pool.widget_state("a")["state"] == {}
