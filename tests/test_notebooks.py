"""The extension inside a real kernel: which outputs land in which notebook cell.

Notebooks run through nbclient, as "Run all" would. The background form and interrupts
are driven at the message level with jupyter_client, where every iopub message's parent
header can be checked.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook

from jupyter_sessionpool import KernelPool
from jupyter_sessionpool.notebook.routing import BACKGROUND_MIME

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


def test_remote_error_fails_the_cell_once_and_stops_run_all(tmp_path):
    nb = notebook("%%pool session=a\ndef f():\n    return 1 / 0\nf()", "print('never runs')")
    with pytest.raises(CellExecutionError) as info:
        execute(nb, tmp_path)
    assert info.value.ename == "ZeroDivisionError" and "RemoteCellError" not in str(info.value)
    [error] = [o for o in nb.cells[1].outputs if o["output_type"] == "error"]  # one error: the remote one
    assert (error["ename"], error["evalue"]) == ("ZeroDivisionError", "division by zero")
    assert any("f()" in line for line in error["traceback"])  # the remote frames
    assert nb.cells[2].outputs == [] and nb.cells[2].execution_count is None


def test_an_error_shown_by_a_cell_that_goes_on_stays(tmp_path):
    nb = execute(
        notebook(
            "%%pool session=a\n"
            "from IPython import get_ipython\n"
            "try:\n    1 / 0\nexcept ZeroDivisionError:\n    get_ipython().showtraceback()\n"
            "print('went on')"
        ),
        tmp_path,
    )
    kinds = [o["output_type"] for o in nb.cells[1].outputs]
    assert kinds == ["error", "stream"] and nb.cells[1].outputs[0]["ename"] == "ZeroDivisionError"


def test_background_output_lands_in_the_starting_cell_only(tmp_path):
    nb = execute(
        notebook(
            "%%pool session=a --bg\nimport time\nprint('bg-1', flush=True)\ntime.sleep(1)\nprint('bg-2')",
            "%pool wait",
        ),
        tmp_path,
    )
    starting, waiting = nb.cells[1:]
    assert len(starting.outputs) == 1 and starting.outputs[0]["output_type"] == "display_data"
    assert starting.outputs[0]["data"]["text/plain"].endswith("\nbg-1\nbg-2\n")
    assert streams(waiting) == "1 background cell(s) finished\n" and len(waiting.outputs) == 1


def test_display_updates_across_cells_reach_api_callers():
    """ExecutionResult.displays says what to update where, so a caller can rebuild a notebook run."""
    with KernelPool(max_kernels=1) as pool:
        first = pool.execute("h = display('x', display_id=True)\nprint('after')", session="a")
        second = pool.execute("h.update('y')\nfrom IPython.display import display\ndisplay('z', display_id=h.display_id)", session="a")
        third = pool.execute("h.update('w')", session="a")
    [display_id] = first.displays
    assert first.displays[display_id] == {"data": {"text/plain": "'x'"}, "metadata": {}, "outputs": [0]}
    assert "transient" not in first.outputs[0]  # outputs stay pure nbformat
    assert second.displays[display_id]["outputs"] == [0] and second.outputs[0]["data"] == {"text/plain": "'z'"}
    assert third.outputs == [] and third.displays[display_id]["data"] == {"text/plain": "'w'"}
    results = [first, second, third]
    for n, result in enumerate(results):  # the rule the results module documents
        for shown_id, shown in result.displays.items():
            for earlier in results[:n]:
                for i in earlier.displays.get(shown_id, {}).get("outputs", []):
                    earlier.outputs[i].update(data=shown["data"], metadata=shown["metadata"])
    assert [o["data"]["text/plain"] for r in results for o in r.outputs if o["output_type"] == "display_data"] == [
        "'w'",
        "'w'",
    ]


def test_output_captured_by_an_output_widget_belongs_to_the_widget():
    """As in a front end (and nbclient): what `with out:` captures is not the cell's output."""
    with KernelPool(max_kernels=1) as pool:
        seen = []
        result = pool.execute(
            "import ipywidgets\nout = ipywidgets.Output()\n"
            "with out:\n    print('inside')\n    raise ValueError('shown in the widget')\n"
            "print('outside')",
            session="a",
            on_output=seen.append,
        )
    assert result.status == "ok" and result.outputs == [{"output_type": "stream", "name": "stdout", "text": "outside\n"}]
    assert seen == result.outputs


def test_non_string_mime_values_count_towards_max_output_size():
    with KernelPool(max_kernels=1, max_output_size=10_000) as pool:
        result = pool.execute(
            "from IPython.display import display\n"
            "for i in range(20):\n"
            "    display({'application/json': {'rows': list(range(200))}}, raw=True)",
            session="a",
        )
    assert result.truncated
    assert sum(o["output_type"] == "display_data" for o in result.outputs) < 20


def test_quickstart_runs_clean(tmp_path):
    nb = nbformat.read(QUICKSTART, as_version=4)
    execute(nb, tmp_path)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    expected_text = (
        "alice 2", "bob 100", "alice slept 2 s", "bob slept 2 s",  # the --bg cells' output, kept in the saved notebook
        "2 background cell(s) finished", "285", "[49, 64, 81]", "['alice', 'bob']",
    )
    for expected in expected_text:
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


def test_background_output_is_one_display_in_the_starting_cell(kernel, tmp_path):
    """A --bg cell's output reaches the front end only as updates of one display made in its
    cell: a live front end shows it there, once (an update adds nothing where it is sent)."""
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
    routed = [  # everything that carries the remote cell's output (not the code echo, not %pool wait's error)
        m for m in messages if "bg-" in str(m["content"]) and m["msg_type"] not in ("execute_input", "error")
    ]
    assert {m["msg_type"] for m in routed} == {"update_display_data"}
    made = [m for m in messages if m["msg_type"] == "display_data" and m["parent_header"]["msg_id"] == first]
    assert len(made) == 1  # the one display, made while the starting cell ran
    display_id = made[0]["content"]["transient"]["display_id"]
    assert {m["content"]["transient"]["display_id"] for m in routed} == {display_id}
    final = routed[-1]
    assert final["parent_header"]["msg_id"] == second  # sent while %pool wait runs: a headless client applies it
    text = re.sub(r"\x1b\[[0-9;]*m", "", final["content"]["data"]["text/plain"])
    assert text.startswith("In [2] (%%pool session=a --bg): raised RuntimeError")
    for expected in ("bg-early", "bg-late", "'bg-updated'", "RuntimeError: bg-error"):
        assert expected in text
    outputs = final["content"]["data"][BACKGROUND_MIME]["outputs"]
    assert [o["output_type"] for o in outputs] == ["stream", "display_data", "error"]
    assert outputs[1]["data"] == {"text/plain": "'bg-updated'"}  # the remote display update, applied inside
    errors = [m for m in messages if m["msg_type"] == "error" and m["parent_header"]["msg_id"] == second]
    assert [m["content"]["ename"] for m in errors] == ["RuntimeError"]  # %pool wait raises the remote error
    assert errors[0]["content"]["traceback"][0] == "In [2] (%%pool session=a --bg) raised:"  # naming its cell
    others = [m for m in messages if m["msg_type"] in ("stream", "display_data", "execute_result", "error")]
    assert all(m in made or m in errors for m in others if "bg-" in str(m["content"]))


def test_a_large_background_output_is_sent_in_proportion_to_what_arrives(kernel):
    """Issue 19, item 7: a --bg display was re-rendered whole every 0.2 s while output flowed, so its
    updates grew with everything shown so far (a 20 MB cell: a 68 MB update per call). Live updates
    show the newest output only; what all updates carry is bounded by a small multiple of the output
    (the bound BackgroundCell documents), and the final one still holds every character."""
    _, kc = kernel
    chunk, chunks = 50_000, 80  # 4,000,000 characters, flowing for ~4 s
    first = kc.execute(
        f"%%pool session=a --bg\nimport time\nfor i in range({chunks}):\n"
        f"    print(str(i % 10) * {chunk - 1}, flush=True)\n    time.sleep(0.05)"
    )
    second = kc.execute("%pool wait")
    messages = collect(kc, second)
    [made] = [m for m in messages if m["msg_type"] == "display_data" and m["parent_header"].get("msg_id") == first]
    display_id = made["content"]["transient"]["display_id"]
    updates = [m for m in messages
               if m["msg_type"] == "update_display_data" and m["content"]["transient"]["display_id"] == display_id]
    sizes = [len(json.dumps(m["content"])) for m in updates]
    output = chunk * chunks
    final = [m for m in updates if m["parent_header"].get("msg_id") == second][-1]  # %pool wait's
    assert final["content"]["data"]["text/plain"].endswith("".join(str(i % 10) * (chunk - 1) + "\n" for i in range(70, 80)))
    assert len(final["content"]["data"]["text/plain"]) > output  # every character, under its header
    live = [size for m, size in zip(updates, sizes) if "finished in" not in m["content"]["data"]["text/plain"][:200]]
    assert len(live) >= 3 and max(live) < 200_000, live  # each live update: the newest output only
    assert sum(sizes) <= 8 * output + 10_000 * len(updates), (sum(sizes), len(updates))


def test_a_full_pool_shows_who_holds_the_kernels_until_one_is_free(kernel):
    _, kc = kernel
    run_cell(kc, "%config KernelPool.max_kernels = 1")
    reply, _ = run_cell(kc, "%%pool session=a\npass")
    assert reply["content"]["status"] == "ok"
    # the way out the message names, done the moment session b waits: release a
    run_cell(
        kc,
        "import threading\n"
        "_pool = get_ipython().magics_manager.registry['PoolMagics'].pool\n"
        "def _free_a(stats, done=[]):\n"
        "    if not done and any(w.session == 'b' for w in stats.waiting):\n"
        "        done.append(threading.Thread(target=_pool.release, args=('a',)))\n"
        "        done[0].start()\n"
        "_pool.subscribe(_free_a)",
    )
    reply, messages = run_cell(kc, "%%pool session=b\nprint('b ran')")
    assert reply["content"]["status"] == "ok"
    outputs = [m for m in messages if m["msg_type"] in ("display_data", "update_display_data", "stream")]
    shown, removed, ran = outputs
    assert shown["msg_type"] == "display_data" and shown["parent_header"]["msg_id"] == reply["parent_header"]["msg_id"]
    text = shown["content"]["data"]["text/plain"]
    assert text.startswith("session 'b' is waiting for a kernel: all 1 are held, by a (idle).")
    assert "%pool release a" in text and "KernelPool.max_kernels = 2" in text and "%pool status" in text
    assert removed["msg_type"] == "update_display_data" and removed["content"]["data"] == {}
    assert removed["content"]["transient"] == shown["content"]["transient"]
    assert ran["content"]["text"] == "b ran\n"


def test_tab_completion_through_the_kernel(kernel):
    _, kc = kernel
    run_cell(kc, "%%pool session=alpha\npass")
    code = "%%pool session=al"
    msg_id = kc.complete(code, len(code))
    reply = reply_to(kc, msg_id)
    assert reply["content"]["matches"] == ["session=alpha"]
    assert code[: reply["content"]["cursor_start"]] == "%%pool "


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
