"""The ``jupyter_sessionpool`` comm, driven from a real kernel as a frontend would drive it.

A test kernel (ipykernel) runs the pool; this process speaks the Jupyter protocol to it with
``jupyter_client``: comm_open / comm_msg on shell, snapshots and replies on IOPub.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from commkit import SETUP, Data, Frontend
from jupyter_sessionpool.notebook.comm import MIN_INTERVAL, TARGET, VERSION, snapshot_message



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
        (action("release", ""), "session name must not be empty"),
        (action("release", None), "session is missing"),
        (action("release", "a\nb"), "session name 'a\\nb' contains control characters"),
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


def test_snapshot_of_a_remote_kernel_has_no_memory_and_keeps_its_location() -> None:
    """What the panel gets for a kernel with no local process (a gateway's): rss None, and
    any extra field of KernelStats (``location``) passed through as is."""
    from dataclasses import dataclass

    from jupyter_sessionpool.stats import KernelStats, PoolStats

    @dataclass(frozen=True)
    class RemoteKernelStats(KernelStats):
        location: str | None = None

    stats = PoolStats(kernel_name="python3", max_kernels=1, min_idle=0, closed=False, waiting=(), counters={},
                      kernels=(RemoteKernelStats("k-1", None, "idle", "a", 0, None, None, "gateway:8888"),))
    message = snapshot_message(stats)
    [kernel] = message["pool"]["kernels"]
    assert (kernel["pid"], kernel["rss"], kernel["location"]) == (None, None, "gateway:8888")
