"""PoolWidget against a real KernelPool and real kernels: the view follows the pool.

Determinism without sleeps: the pool delivers its event for a change before the call that
made it returns, so ``widget.flush()`` after a pool call renders that change; a subscriber
added after the widget sees each event after the widget has stored it, so flushing there
renders every intermediate state; waits for the timer's own renders wrap the widget's render.
"""

from __future__ import annotations

import html
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import nbformat
import pytest
from ipywidgets import Button
from ipywidgets.widgets.widget import _instances
from nbclient import NotebookClient
from nbconvert import MarkdownExporter

from jupyter_sessionpool import KernelPool, PoolStats
from jupyter_sessionpool.stats import KernelStats
from jupyter_sessionpool.notebook.widget import PoolWidget

_ROW = re.compile(r"<div class='jsp-kernel' data-kernel='([^']*)' data-state='([^']*)' data-session='([^']*)'>(.*)</div>")
_CELL = re.compile(r"<span class='jsp-col jsp-col-(\w+)'[^>]*>(.*?)</span>(?=<span class='jsp-col|$)")
DASH = "–"


@pytest.fixture
def make_kernel_pool():
    """KernelPools (they start on first use) that are always shut down, even when the test fails."""
    pools: list[KernelPool] = []

    def make(**kwargs: Any) -> KernelPool:
        pool = KernelPool(**kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.shutdown()


@pytest.fixture
def widgets():
    """Collect widgets so each is closed after the test."""
    made: list[PoolWidget] = []
    yield made
    for w in made:
        w.close()


def rows(w: PoolWidget) -> list[dict[str, str]]:
    """The kernel rows the widget shows now: id, state, session and each cell by column name."""
    found = []
    for box in w._body.children:
        [(kernel_id, state, session, body)] = _ROW.findall(box.children[0].value)
        cells = {column: html.unescape(re.sub(r"<[^>]+>", "", c)) for column, c in _CELL.findall(body)}
        found.append(dict(kernel_id=kernel_id, state=state, session=html.unescape(session),
                          shown_session=cells["session"], busy_for=cells["busy"],
                          **{k: v for k, v in cells.items() if k not in ("kernel", "state", "session", "busy")}))
    return found


def shown_row(w: PoolWidget, session: str):
    """The row the widget shows for ``session``'s kernel (raises if there is none)."""
    for row in w._rows.values():
        if row.box in w._body.children and row.session == session:
            return row
    raise LookupError(f"no row for session {session!r}")


def button(w: PoolWidget, action: str, session: str) -> Button:
    """The ``action`` button shown in ``session``'s row (raises if there is none)."""
    b = shown_row(w, session).buttons[action]
    if b.layout.display == "none":
        raise LookupError(f"no {action} button shown for session {session!r}")
    return b


def confirmed(w: PoolWidget, action: str, session: str) -> None:
    """Click ``action`` in ``session``'s row, then its confirming button."""
    button(w, action, session).click()
    confirm = button(w, "confirm", session)
    assert confirm.description == f"Confirm {action}"
    confirm.click()


def no_kernels_text(w: PoolWidget) -> str:
    return re.sub(r"<[^>]+>", "", w._head.value)


def record_every_event(pool: KernelPool, w: PoolWidget, until: Callable[[list[dict[str, str]]], bool]):
    """Render ``w`` at every pool event (subscribed after ``w``, so it already holds the event).

    Returns (history of rendered rows, an Event set once ``until(rows)`` held, unsubscribe).
    """
    history: list[list[dict[str, str]]] = []
    done = threading.Event()

    def on_event(_stats: PoolStats) -> None:
        w.flush()
        history.append(rows(w))
        if until(history[-1]):
            done.set()

    return history, done, pool.subscribe(on_event)


def states_of(history: list[list[dict[str, str]]], kernel_id: str) -> list[tuple[str, str]]:
    """(state, session) of one kernel through the history, consecutive repeats dropped."""
    seen: list[tuple[str, str]] = []
    for snapshot in history:
        for r in snapshot:
            if r["kernel_id"] == kernel_id and (not seen or seen[-1] != (r["state"], r["session"])):
                seen.append((r["state"], r["session"]))
    return seen


def _seconds(busy_for: str) -> int:
    """The whole seconds of a "busy for" cell such as "3 s" (-1 for anything else)."""
    number, _, unit = busy_for.partition(" ")
    return int(number) if number.isdigit() and unit == "s" else -1


def wait_for_render(w: PoolWidget, predicate: Callable[[list[dict[str, str]]], bool], timeout: float = 30) -> None:
    """Block until one of the widget's own renders (its timer's) shows rows satisfying ``predicate``."""
    hit = threading.Event()
    render = w._render

    def render_and_check() -> None:
        render()
        if predicate(rows(w)):
            hit.set()

    w._render = render_and_check
    try:
        assert hit.wait(timeout), f"widget never rendered the expected rows; it shows {rows(w)}"
    finally:
        del w._render


# ---- the view follows the pool ----------------------------------------------------------------


def test_follows_start_busy_idle_and_release(make_kernel_pool, widgets):
    pool = make_kernel_pool(max_kernels=2, min_idle=1)
    w = pool.widget()
    widgets.append(w)
    history, done, unsubscribe = record_every_event(pool, w, lambda r: any(k["session"] == "a" for k in r))
    try:
        pool.wait_ready(60)
        with pool.checkout("a") as lease:
            assert done.wait(5)
            w.flush()
            busy = [r for r in rows(w) if r["kernel_id"] == lease.kernel_id]
            assert busy and busy[0]["state"] == "busy" and busy[0]["session"] == "a"
            assert button(w, "interrupt", "a").disabled is False
            lease.execute("x = 1")
        w.flush()
        [idle] = [r for r in rows(w) if r["kernel_id"] == lease.kernel_id]
        assert (idle["state"], idle["session"], idle["runs"]) == ("idle", "a", "1")
        assert idle["memory"].endswith("MiB") and idle["busy_for"] == DASH
        assert button(w, "interrupt", "a").disabled is True
        assert "checkouts 1" in w._footer.value

        pool.release("a")
    finally:
        unsubscribe()
    w.flush()
    assert lease.kernel_id not in [r["kernel_id"] for r in rows(w)]
    assert "released 1" in w._footer.value
    with pytest.raises(LookupError):
        button(w, "release", "a")
    assert states_of(history, lease.kernel_id) == [
        ("starting", ""), ("idle", ""), ("busy", "a"), ("idle", "a"), ("stopping", "a"),
    ]


def test_shows_a_kernel_that_died(make_kernel_pool, widgets):
    pool = make_kernel_pool(max_kernels=1)
    pool.execute("x = 1", session="a")
    w = pool.widget()
    widgets.append(w)
    [before] = rows(w)
    history, gone, unsubscribe = record_every_event(
        pool, w, lambda r: before["kernel_id"] not in [k["kernel_id"] for k in r])
    try:
        os.kill(_pid_of(pool, "a"), signal.SIGKILL)
        assert gone.wait(30), f"the dead kernel was never removed; widget shows {rows(w)}"
    finally:
        unsubscribe()
    assert states_of(history, before["kernel_id"])[0] == ("dead", "a")
    assert "died 1" in w._footer.value
    with pytest.raises(LookupError):
        button(w, "interrupt", "a")


def _pid_of(pool: KernelPool, session: str) -> int:
    [pid] = [k.pid for k in pool.stats().kernels if k.session == session]
    return pid


# ---- live updates: coalesced, ticking, idle when nothing changes ---------------------------------


def test_updates_arrive_coalesced_without_flush(make_kernel_pool, widgets):
    pool = make_kernel_pool(max_kernels=1)
    pool.execute("pass", session="a")
    w = pool.widget()
    widgets.append(w)
    renders: list[float] = []
    shown_row(w, "a").cells.observe(lambda _c: renders.append(time.monotonic()), "value")
    events: list[PoolStats] = []
    unsubscribe = pool.subscribe(events.append)
    start = time.monotonic()
    try:
        for _ in range(30):
            pool.execute("pass", session="a")
        wait_for_render(w, lambda r: [(k["state"], k["runs"]) for k in r] == [("idle", "31")])
    finally:
        unsubscribe()
    elapsed = time.monotonic() - start
    assert len(events) >= 60
    assert 1 <= len(renders) <= elapsed / 0.25 + 2, f"{len(renders)} renders for {len(events)} events in {elapsed:.2f} s"


def test_busy_time_ticks_then_no_timer_stays_armed(make_kernel_pool, widgets):
    pool = make_kernel_pool(max_kernels=1)
    w = pool.widget()
    widgets.append(w)
    with pool.checkout("a"):
        # no pool event happens while the lease is held: only the widget's tick can move this
        # at least 2 s: a loaded machine may render "1 s" and then "3 s", never "2 s"
        wait_for_render(w, lambda r: [k["state"] for k in r] == ["busy"] and _seconds(r[0]["busy_for"]) >= 2)
    w.flush()
    assert [(k["state"], k["busy_for"]) for k in rows(w)] == [("idle", DASH)]
    assert w._timer is None


def test_follows_changes_made_from_other_threads(make_kernel_pool, widgets):
    pool = make_kernel_pool(max_kernels=3)
    w = pool.widget()
    widgets.append(w)
    threads = [threading.Thread(target=pool.execute, args=("y = 2",), kwargs={"session": s}) for s in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wait_for_render(w, lambda r: sorted((k["session"], k["state"], k["runs"]) for k in r)
                    == [("a", "idle", "1"), ("b", "idle", "1"), ("c", "idle", "1")])
    for session in "abc":
        assert button(w, "release", session).disabled is False


# ---- actions ------------------------------------------------------------------------------------


def test_interrupt_button_stops_a_running_cell(make_kernel_pool, widgets):
    pool = make_kernel_pool(max_kernels=1)
    w = pool.widget()
    widgets.append(w)
    started = threading.Event()
    result: list[Any] = []
    cell = threading.Thread(target=lambda: result.append(pool.execute(
        "import time; print('started', flush=True); time.sleep(60)", session="a",
        on_output=lambda out: started.set())))
    cell.start()
    try:
        assert started.wait(60)
        w.flush()
        button(w, "interrupt", "a").click()
    finally:
        cell.join(30)
    assert not cell.is_alive()
    [r] = result
    assert r.status == "error" and r.error["ename"] == "KeyboardInterrupt"
    assert "interrupt a: done" in w._note.value


def test_restart_and_release_ask_before_they_lose_state(make_kernel_pool, widgets):
    pool = make_kernel_pool(max_kernels=1)
    pool.execute("x = 41", session="a")
    w = pool.widget()
    widgets.append(w)
    [first] = rows(w)

    for action in ("restart", "release"):  # the first click only asks; cancel keeps everything
        button(w, action, "a").click()
        assert "every variable and import of the session is lost" in w._note.value
        with pytest.raises(LookupError):
            button(w, action, "a")  # the row now offers confirm and cancel only
        button(w, "cancel", "a").click()
        assert pool.execute("x", session="a").result == "41"
        w.flush()
        assert [r["kernel_id"] for r in rows(w)] == [first["kernel_id"]]
        assert button(w, action, "a").description == action.capitalize()

    confirmed(w, "restart", "a")
    assert "restart a: done" in w._note.value
    r = pool.execute("'x' in globals()", session="a")
    assert r.result == "False"
    w.flush()
    [second] = rows(w)
    assert second["kernel_id"] != first["kernel_id"] and second["session"] == "a"
    assert button(w, "release", "a").description == "Release"  # the new kernel's row is not asking

    confirmed(w, "release", "a")
    assert "release a: done" in w._note.value
    assert pool.sessions() == []
    w.flush()
    assert rows(w) == [] and w._body.children == ()
    assert no_kernels_text(w) == "no kernels running: sessions released; the next %%pool cell starts one"


def test_empty_cells_show_a_dash_and_remote_kernels_show_where_they_run(make_kernel_pool, widgets):
    pool = make_kernel_pool(max_kernels=2)
    w = pool.widget()
    widgets.append(w)
    assert no_kernels_text(w) == "no kernels yet: the first %%pool cell starts one"

    @dataclass(frozen=True)
    class RemoteKernelStats(KernelStats):  # what a gateway-backed pool reports (KernelStats.location)
        location: str | None = None

    now = time.time()
    remote = PoolStats(
        kernel_name="python3", max_kernels=2, min_idle=0, closed=False, waiting=(), counters={"started": 2},
        kernels=(RemoteKernelStats("k-1-aa", None, "busy", "a", 3, now - 5, now, "gateway.example:8888"),
                 RemoteKernelStats("k-2-bb", None, "idle", None, 0, None, None)))
    w._on_stats(remote)
    w.flush()
    busy, idle = rows(w)
    assert "memory" not in busy and "memory" not in w._head.value  # no kernel has a process here
    assert (busy["session"], busy["location"], busy["runs"]) == ("a", "gateway.example:8888", "3")
    assert busy["busy_for"].endswith(" s")
    assert (idle["shown_session"], idle["busy_for"], idle["location"]) == (DASH, DASH, DASH)
    assert "runs on" in w._head.value


# ---- several widgets, closing --------------------------------------------------------------------


def test_several_widgets_stay_live_and_close_unsubscribes(make_kernel_pool):
    pool = make_kernel_pool(max_kernels=1)
    subscribers = len(pool._async._subscribers)
    models = set(_instances)
    one, two = pool.widget(), pool.widget()
    try:
        pool.execute("pass", session="a")
        for w in (one, two):
            w.flush()
            assert [(k["session"], k["runs"]) for k in rows(w)] == [("a", "1")]
        one.close()
        assert len(pool._async._subscribers) == subscribers + 1
        pool.execute("pass", session="a")
        two.flush()
        assert [k["runs"] for k in rows(two)] == ["2"]
    finally:
        one.close()
        two.close()
    assert len(pool._async._subscribers) == subscribers
    assert set(_instances) == models, "closing the widgets left widget models open"


def test_pool_shutdown_closes_no_widget_models(make_kernel_pool, widgets):
    """A notebook kernel that restarts shuts its pool down on the way out: the frontend has
    forgotten that kernel's comms by then, so each comm_close would log "Comm not found".
    Rows of kernels that went are kept for reuse; only ``close()`` closes them."""
    pool = make_kernel_pool(max_kernels=2)
    pool.execute("pass", session="a")
    pool.execute("pass", session="b")
    w = pool.widget()
    widgets.append(w)
    assert len(rows(w)) == 2
    models = set(_instances)
    pool.shutdown()
    w.flush()
    assert set(_instances) == models, "the pool's shutdown closed widget models"
    assert rows(w) == [] and no_kernels_text(w) == "no kernels: the pool is shut down"

    pool = make_kernel_pool(max_kernels=1)  # a release reuses the row for the next kernel
    w = pool.widget()
    widgets.append(w)
    pool.execute("pass", session="a")
    w.flush()
    first = shown_row(w, "a")
    pool.release("a")
    pool.execute("pass", session="c")
    w.flush()
    assert shown_row(w, "c") is first and first.buttons["confirm"].layout.display == "none"


def test_close_while_busy_disarms_the_timer(make_kernel_pool):
    pool = make_kernel_pool(max_kernels=1)
    w = pool.widget()
    with pool.checkout("a"):
        w.flush()
        assert w._timer is not None  # ticking for the busy time
        w.close()
        assert w._timer is None


# ---- plain text where widgets cannot render -------------------------------------------------------


def test_plain_text_repr_is_the_whole_table(make_kernel_pool, widgets):
    from IPython.core.formatters import DisplayFormatter

    pool = make_kernel_pool(max_kernels=2)
    pool.execute("pass", session="a-session-with-a-long-name")
    w = pool.widget()
    widgets.append(w)
    data, _ = DisplayFormatter().format(w)
    text = data["text/plain"]
    assert text == str(pool.stats())
    assert "a-session-with-" in text and text.splitlines()[-1].startswith("  counters: started 1")
    assert "application/vnd.jupyter.widget-view+json" in data


def test_in_a_real_kernel_and_in_an_export(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from jupyter_sessionpool import KernelPool\n"
        "pool = KernelPool(max_kernels=1).start()\n"
        "pool.execute('pass', session='exported')\n"
        "w = pool.widget()\n"
        "w"
    ), nbformat.v4.new_code_cell("w.close(); pool.shutdown()")])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    [out] = nb.cells[0].outputs
    assert "application/vnd.jupyter.widget-view+json" in out["data"]
    body, _ = MarkdownExporter().from_notebook_node(nb)
    assert re.search(r"idle +exported +1", body) and "counters: started 1" in body, body
