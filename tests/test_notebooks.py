"""The extension inside a real kernel: which outputs land in which notebook cell.

Notebooks run through nbclient, as "Run all" would. The background form and interrupts
are driven at the message level with jupyter_client, where every iopub message's parent
header can be checked.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook

QUICKSTART = Path(__file__).parent.parent / "examples" / "quickstart.ipynb"


def execute(nb, tmp_path):
    """Run every cell of ``nb`` in a fresh python3 kernel (shut down afterwards, pool and all)."""
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def notebook(*cells: str):
    return new_notebook(cells=[new_code_cell("%load_ext jupyter_sessionpool"), *map(new_code_cell, cells)])


def streams(cell, name="stdout"):
    return "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == name)


# ---- nbclient: foreground cells -------------------------------------------------------


def test_each_cells_output_lands_in_that_cell(tmp_path):
    nb = execute(
        notebook(
            "%%pool session=a\n"
            "import sys\n"
            "print('a-out'); print('a-err', file=sys.stderr)\n"
            "from IPython.display import HTML, display\n"
            "display(HTML('<i>a-html</i>'))\n"
            "6 * 7",
            "%%pool session=b\nprint('b-out')",
            "print('local')",
        ),
        tmp_path,
    )
    a, b, local = nb.cells[1:]
    assert [o["output_type"] for o in a.outputs] == ["stream", "stream", "display_data", "execute_result"]
    assert streams(a) == "a-out\n" and streams(a, "stderr") == "a-err\n"
    assert a.outputs[2]["data"]["text/html"] == "<i>a-html</i>"
    assert a.outputs[3]["data"]["text/plain"] == "42"
    assert a.outputs[3]["execution_count"] == a.execution_count  # shown as this cell's Out[n]
    assert b.outputs == [nbformat.NotebookNode(output_type="stream", name="stdout", text="b-out\n")]
    assert streams(local) == "local\n" and len(local.outputs) == 1


def test_clear_output_and_display_updates_are_mirrored(tmp_path):
    nb = execute(
        notebook(
            "%%pool session=a\n"
            "from IPython.display import clear_output, display\n"
            "print('gone'); clear_output(); print('kept')\n"
            "print('also gone'); clear_output(wait=True); print('kept too')",
            "%%pool session=a\nhandle = display('first', display_id=True)",
            "%%pool session=a\nhandle.update('second')",
        ),
        tmp_path,
    )
    cleared, shown, updater = nb.cells[1:]
    assert streams(cleared) == "kept too\n"
    assert [o["data"]["text/plain"] for o in shown.outputs] == ["'second'"]
    assert updater.outputs == []


def test_remote_matplotlib_figure_shows_as_png(tmp_path):
    pytest.importorskip("matplotlib")
    nb = execute(
        notebook(
            "%%pool session=a\n%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
        ),
        tmp_path,
    )
    images = [o for o in nb.cells[1].outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1 and len(images[0]["data"]["image/png"]) > 1000


def test_remote_error_fails_the_cell_and_stops_run_all(tmp_path):
    nb = notebook("%%pool session=a\ndef f():\n    return 1 / 0\nf()", "print('never runs')")
    with pytest.raises(CellExecutionError) as info:
        execute(nb, tmp_path)
    assert "RemoteCellError" in str(info.value) and "ZeroDivisionError" in str(info.value)
    remote, local = [o for o in nb.cells[1].outputs if o["output_type"] == "error"]
    assert remote["ename"] == "ZeroDivisionError"
    assert any("f()" in line for line in remote["traceback"])  # the remote frames, shown once
    assert local["ename"] == "RemoteCellError" and len(local["traceback"]) == 1
    assert nb.cells[2].outputs == [] and nb.cells[2].execution_count is None


def test_background_output_never_lands_in_a_later_cell(tmp_path):
    nb = execute(
        notebook(
            "%%pool session=a --bg\nimport time\nprint('bg-1', flush=True)\ntime.sleep(1)\nprint('bg-2')",
            "%pool wait",
        ),
        tmp_path,
    )
    starting, waiting = nb.cells[1:]
    # nbclient stops listening to a cell once it is idle, so it may keep any prefix of bg-1, bg-2
    assert streams(starting) in ("", "bg-1\n", "bg-1\nbg-2\n")
    assert streams(waiting) == "1 background cell(s) finished\n" and len(waiting.outputs) == 1


def test_quickstart_runs_clean(tmp_path):
    nb = nbformat.read(QUICKSTART, as_version=4)
    execute(nb, tmp_path)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    for expected in ("alice 2", "bob 100", "2 background cell(s) finished", "285", "[49, 64, 81]", "['alice', 'bob']"):
        assert expected in text
    took = float(text.split("both cells took ")[1].split(" s")[0])
    assert took < 3.9  # the two 2 s cells overlapped (loose: the machine is shared)


# ---- jupyter_client: message-level routing -----------------------------------------------


@pytest.fixture
def kernel():
    """A real python3 kernel with the extension loaded; shutting it down stops its pool."""
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        run_cell(kc, "%load_ext jupyter_sessionpool")
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def run_cell(kc, code):
    """Execute ``code`` and return (reply, iopub messages up to its idle)."""
    msg_id = kc.execute(code)
    return reply_to(kc, msg_id), collect(kc, msg_id)


def reply_to(kc, msg_id, timeout=60):
    """The shell reply to ``msg_id``, skipping stale replies (start_new_kernel's readiness
    probe may leave an extra kernel_info_reply queued)."""
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def collect(kc, msg_id, until=None):
    """iopub messages (of any parent) up to the idle of ``msg_id``, or until ``until(msg)`` holds."""
    messages = []
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        messages.append(msg)
        if until is not None and until(msg):
            return messages
        if until is None and is_idle(msg, msg_id):
            return messages


def is_idle(msg, msg_id):
    return (
        msg["msg_type"] == "status"
        and msg["content"]["execution_state"] == "idle"
        and msg["parent_header"].get("msg_id") == msg_id
    )


def test_background_messages_carry_the_starting_cells_parent(kernel, tmp_path):
    _, kc = kernel
    gate = tmp_path / "gate"
    first = kc.execute(
        "%%pool session=a --bg\n"
        "import os, time\n"
        "from IPython.display import display\n"
        "print('bg-early', flush=True)\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.02)\n"  # the remote cell waits for the second cell to start
        "print('bg-late', flush=True)\n"
        "handle = display('bg-display', display_id=True)\n"
        "handle.update('bg-updated')\n"
        "raise RuntimeError('bg-error')",
    )
    second = kc.execute(f"open({str(gate)!r}, 'w').close()\n%pool wait")
    messages = collect(kc, second)
    routed = [  # everything the remote cell produced (not the code echo, not %pool wait's own error)
        m
        for m in messages
        if "bg-" in str(m["content"])
        and m["msg_type"] != "execute_input"
        and m["content"].get("ename") != "RemoteCellError"
    ]
    second_started = next(
        i for i, m in enumerate(messages) if m["msg_type"] == "status" and m["parent_header"].get("msg_id") == second
    )
    assert {m["msg_type"] for m in routed} >= {"stream", "display_data", "update_display_data", "error"}
    assert all(m["parent_header"]["msg_id"] == first for m in routed), [
        (m["msg_type"], m["parent_header"].get("msg_id")) for m in routed
    ]
    late = [m for m in routed if "bg-late" in str(m["content"])]
    assert late and messages.index(late[0]) > second_started  # published while the second cell ran
    errors = [m for m in messages if m["msg_type"] == "error" and m["parent_header"]["msg_id"] == second]
    assert [m["content"]["ename"] for m in errors] == ["RemoteCellError"]  # %pool wait re-raises it, briefly
    assert "shown in In [2]" in errors[0]["content"]["traceback"][0]  # and names the starting cell
    display_ids = {m["content"]["transient"]["display_id"] for m in routed if m["msg_type"].endswith("display_data")}
    assert len(display_ids) == 1  # the update targets the displayed output


def test_interrupting_the_cell_interrupts_the_remote_kernel(kernel):
    km, kc = kernel
    msg_id = kc.execute("%%pool session=a\nx = 5\nprint('started', flush=True)\nimport time\ntime.sleep(60)")
    collect(kc, msg_id, until=lambda m: m["msg_type"] == "stream" and m["content"]["text"] == "started\n")
    interrupted = time.monotonic()
    km.interrupt_kernel()
    reply = reply_to(kc, msg_id, timeout=30)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    collect(kc, msg_id)
    reply, messages = run_cell(kc, "%%pool session=a\nprint(x)")
    assert reply["content"]["status"] == "ok"
    assert [m["content"]["text"] for m in messages if m["msg_type"] == "stream"] == ["5\n"]  # same kernel, state kept
    assert time.monotonic() - interrupted < 30  # the remote sleep(60) was interrupted, not waited out
