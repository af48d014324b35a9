"""PoolWidget: the live ipywidgets view of a KernelPool (``%pool status``, ``pool.widget()``).

Threads. The pool calls :meth:`PoolWidget._on_stats` on its own thread after every change;
that only stores the snapshot and arms a timer, so the pool's loop never waits on the UI.
The timer thread renders the newest snapshot: it is the one place that writes the view's
traits, under one lock, at most every ``_MIN_INTERVAL`` seconds however fast events come.
While a kernel is busy or a checkout waits, it re-arms itself once a second so the busy
and waiting times tick (taking a new snapshot while a kernel is busy, so its memory moves
too); otherwise no timer is armed and nothing runs.

Rendering deliberately happens off the kernel's main thread: that thread is blocked for as
long as a foreground ``%%pool`` cell runs, which is exactly when the view must move.
ipykernel sends widget messages from any thread through its IOPub thread. Button clicks,
in contrast, are delivered by ipywidgets on the kernel's main thread, so they are handled
once no foreground cell is running (use the notebook's own interrupt for that cell).
"""

from __future__ import annotations

import html
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ipywidgets import HTML, Button, HBox, Layout, VBox

from ..errors import PoolError
from ..stats import KernelStats, PoolStats

if TYPE_CHECKING:
    from ..sync import KernelPool

_MIN_INTERVAL = 0.25  # seconds between two renders: at most 4 updates a second
_TICK = 1.0  # seconds between renders while busy times run and nothing else changes
_ACTIONS = ("interrupt", "restart", "release")
_CONFIRM = ("restart", "release")  # they lose the session's state: a second click confirms
DASH = "–"  # an empty cell: no value, or none yet
_COLUMNS = {  # column -> (heading, width)
    "kernel": ("kernel", "9em"),
    "state": ("state", "7em"),
    "session": ("session", "9em"),
    "busy": ("busy for", "5.5em"),
    "runs": ("runs", "3.5em"),
    "memory": ("memory", "5.5em"),
    "location": ("runs on", "12em"),
}
_STATE_STYLE = {  # state -> (symbol, colour): a cue that does not rely on colour alone
    "starting": ("◌", "#1565c0"),
    "idle": ("●", "#2e7d32"),
    "busy": ("◉", "#e65100"),
    "dead": ("✖", "#c62828"),
    "stopping": ("◌", "#757575"),
}


class PoolWidget(VBox):
    """A live view of ``pool``: one row per kernel, the waiting checkouts, the counters.

    Each kernel row shows its short id, state, session, how long it has been busy, its
    executions, its memory (RSS) and, for a remote kernel, where it runs; a row of a named
    session ends with interrupt, restart and release buttons, which call the pool's own
    methods (restart and release, which lose the session's state, ask for a confirming
    second click). Memory shows only when some kernel is a local process. Several widgets
    may watch one pool; :meth:`close` unsubscribes this one. Where widgets cannot render
    (terminal IPython, a notebook exported without widget state) the plain-text repr is
    the pool's text table.

    Row widgets are reused for the next kernel rather than closed when their kernel goes:
    a pool shutting down as its kernel exits (a notebook kernel restart) then sends the
    frontend no comm_close for models it has already forgotten. :meth:`close` closes them.
    """

    def __init__(self, pool: KernelPool) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._latest: PoolStats | None = None
        self._timer: threading.Timer | None = None
        self._due = 0.0
        self._last_render = 0.0
        self._closed = False
        self._summary = HTML()
        self._head = HTML()
        self._body = VBox()
        self._footer = HTML()
        self._note = HTML()
        self._rows: dict[str, _KernelRow] = {}
        self._spare: list[_KernelRow] = []
        super().__init__(children=(self._summary, self._head, self._body, self._footer, self._note))
        self.add_class("jsp-pool-widget")
        # Subscribe before taking the first snapshot: any event that arrives in between is
        # at least as new as that snapshot (the pool notifies after every change), so it wins.
        self._unsubscribe: Callable[[], None] = pool.subscribe(self._on_stats)
        initial = pool.stats()
        with self._lock:
            if self._latest is None:
                self._latest = initial
        self.flush()

    # ---- events (pool thread) and timers ---------------------------------------------------

    def _on_stats(self, stats: PoolStats) -> None:
        """Subscriber, called on a pool callback thread: keep the snapshot, render it soon."""
        with self._lock:
            self._latest = stats
            self._arm(self._last_render + _MIN_INTERVAL)

    def _arm(self, when: float) -> None:
        """Make sure a render happens by ``when`` (time.monotonic); call with the lock held."""
        if self._closed:
            return
        if self._timer is not None:
            if self._due <= when:
                return
            self._timer.cancel()
        self._due = when
        self._timer = threading.Timer(max(0.0, when - time.monotonic()), self._fire)
        self._timer.name = "jupyter-sessionpool-widget"
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        latest = self._latest
        # a tick while a cell runs: take a new snapshot, so its kernel's memory moves too
        fresh = self._pool.stats() if latest is not None and not latest.closed and latest.count("busy") else None
        with self._lock:
            if self._timer is not threading.current_thread():
                return  # superseded by an earlier timer or a flush while this one waited
            self._timer = None
            if fresh is not None and self._latest is latest:  # no event brought a newer one meanwhile
                self._latest = fresh
            self._render()

    def flush(self) -> None:
        """Render the newest snapshot now, from the calling thread, instead of on the timer.

        For callers that need the view current at a known point, such as tests; the pool
        has already delivered its event for any call that returned.
        """
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._render()

    def close(self) -> None:
        """Stop watching the pool and close this widget and its parts."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            latest = self._latest
            parts = [self._summary, self._head, self._footer, self._note, self._body]
            for row in [*self._rows.values(), *self._spare]:
                parts += row.widgets()
            self._rows.clear()
            self._spare.clear()
        if latest is not None and not latest.closed:
            self._unsubscribe()  # a closed pool never calls back, and its thread may be gone
        _close_widgets(parts)
        _close_widgets([self.layout])
        super().close()

    # ---- rendering (timer thread or flush; lock held) -----------------------------------

    def _render(self) -> None:
        stats = self._latest
        if self._closed or stats is None:
            return
        now = time.time()
        columns = _columns(stats)
        self._summary.value = _summary_html(stats)
        self._footer.value = _footer_html(stats, now)
        self._head.value = _head_html(stats, columns)
        self._render_rows(stats, columns, now)
        self._last_render = time.monotonic()
        if not stats.closed and (stats.count("busy") or stats.waiting):
            self._arm(self._last_render + _TICK)

    def _render_rows(self, stats: PoolStats, columns: tuple[str, ...], now: float) -> None:
        """One row per kernel, in the snapshot's order; rows of kernels gone become spares."""
        live = {k.kernel_id: k for k in stats.kernels}
        for kernel_id in [i for i in self._rows if i not in live]:
            row = self._rows.pop(kernel_id)
            row.forget()
            self._spare.append(row)
        for kernel in stats.kernels:
            row = self._rows.get(kernel.kernel_id)
            if row is None:
                row = self._spare.pop() if self._spare else _KernelRow(self._confirm_or_act)
                self._rows[kernel.kernel_id] = row
            row.show(kernel, columns, now, actionable=not stats.closed)
        children = tuple(self._rows[k.kernel_id].box for k in stats.kernels)
        if self._body.children != children:
            self._body.children = children

    # ---- actions (kernel main thread, from button clicks) --------------------------------

    def _confirm_or_act(self, row: _KernelRow, name: str) -> None:
        """A row's button ``name``: interrupt at once; restart and release once confirmed."""
        with self._lock:
            session, action = row.session, row.confirming if name == "confirm" else name
            if session is None or action is None:
                return  # the row's kernel went, or the ask was undone, while the click travelled
            if action in _CONFIRM and name != "confirm":
                row.ask(action)
                self._note.value = (f"<small>{html.escape(action)} {html.escape(session)}: every variable "
                                    "and import of the session is lost; confirm or cancel</small>")
                return
            row.ask(None)
            if action == "cancel":
                self._note.value = ""
                return
        self._act(action, session)

    def _act(self, action: str, session: str) -> None:
        """Run an action through the pool's own method and say how it went."""
        method: Callable[[str], bool] = getattr(self._pool, action)
        try:
            done = method(session)
        except PoolError as exc:
            note = f"{action} {session}: {exc}"
        else:
            note = f"{action} {session}: {'done' if done else 'the session holds no kernel'}"
        self._note.value = f"<small>{html.escape(note)}</small>"

    # ---- plain text ---------------------------------------------------------------------------

    def __repr__(self) -> str:
        return str(self._latest)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget view plus the whole text table (ipywidgets cuts text/plain at 110 chars)."""
        data = super()._repr_mimebundle_(**kwargs)
        data["text/plain"] = repr(self)
        return data


class _KernelRow:
    """One kernel's row: its cells (one HTML) and, for a named session, its action buttons.

    ``confirming`` is the action (restart or release) waiting for its confirming click:
    the row then shows "Confirm …" and "Cancel" in place of its three buttons.
    """

    def __init__(self, on_click: Callable[[_KernelRow, str], None]) -> None:
        self.session: str | None = None
        self.confirming: str | None = None
        self.cells = HTML()
        self.buttons: dict[str, Button] = {}
        for name in (*_ACTIONS, "confirm", "cancel"):
            button = Button(description=name.capitalize(), layout=Layout(width="auto"))
            button.add_class(f"jsp-{name}")
            button.on_click(lambda _b, n=name: on_click(self, n))
            self.buttons[name] = button
        self.buttons["confirm"].button_style = "danger"
        self.box = HBox([self.cells, *self.buttons.values()], layout=Layout(align_items="center"))
        self.box.add_class("jsp-kernel-row")
        self._shown: tuple[str, ...] = ()

    def widgets(self) -> list[Any]:
        return [self.box, self.cells, *self.buttons.values()]

    def show(self, kernel: KernelStats, columns: tuple[str, ...], now: float, actionable: bool) -> None:
        """Render ``kernel``; buttons only for a named session whose kernel can take them."""
        if kernel.session != self.session:
            self.session = kernel.session
            self.confirming = None
            for name in _ACTIONS:
                self.buttons[name].tooltip = f"{name.capitalize()} session {kernel.session}"
            self.buttons["cancel"].tooltip = f"Keep session {kernel.session} as it is"
        cells = _row_html(kernel, columns, now)
        if self.cells.value != cells:
            self.cells.value = cells
        if not actionable or kernel.session is None or kernel.state not in ("idle", "busy"):
            self._display(())
        elif self.confirming is not None:
            self._display(("confirm", "cancel"))
        else:
            self.buttons["interrupt"].disabled = kernel.state != "busy"
            self._display(_ACTIONS)

    def ask(self, action: str | None) -> None:
        """Ask to confirm ``action`` in place of the buttons (None: back to the buttons)."""
        self.confirming = action
        if action is not None:
            self.buttons["confirm"].description = f"Confirm {action}"
            self.buttons["confirm"].tooltip = f"{action.capitalize()} session {self.session}: its state is lost"
            self._display(("confirm", "cancel"))
        else:
            self._display(_ACTIONS)

    def forget(self) -> None:
        """The row's kernel is gone: hide everything until the row shows another kernel."""
        self.session = None
        self.confirming = None
        self._display(())

    def _display(self, actions: tuple[str, ...]) -> None:
        if actions == self._shown:
            return
        self._shown = actions
        for action, button in self.buttons.items():
            button.layout.display = None if action in actions else "none"


def _close_widgets(parts: list[Any]) -> None:
    """Close widgets with the layout and style models they own (ipywidgets leaves those open)."""
    for part in parts:
        for owned in (getattr(part, "layout", None), getattr(part, "style", None)):
            if owned is not None:
                owned.close()
        part.close()


_STYLE = "<style>.jsp-pool-widget .jsp-col{display:inline-block;overflow:hidden;text-overflow:ellipsis;" \
    "white-space:nowrap;vertical-align:middle;padding-right:.5em}" + "".join(
        f".jsp-pool-widget .jsp-col-{column}{{width:{width}}}" for column, (_, width) in _COLUMNS.items()) + "</style>"
"""The cells' layout, once per widget: every row is a line of fixed-width cells."""


def _summary_html(stats: PoolStats) -> str:
    closed = " <b>(closed)</b>" if stats.closed else ""
    return (
        f"{_STYLE}<b>{html.escape(stats.kernel_name)} pool</b>: {stats.count('busy')}/{stats.max_kernels} busy, "
        f"{stats.count('idle')} idle, {stats.count('starting')} starting{closed}"
    )


def _columns(stats: PoolStats) -> tuple[str, ...]:
    """The columns for ``stats``: memory when a kernel is a local process, location when known."""
    columns = ["kernel", "state", "session", "busy", "runs"]
    if any(k.pid is not None for k in stats.kernels):
        columns.append("memory")
    if any(_location(k) for k in stats.kernels):
        columns.append("location")
    return tuple(columns)


def _location(k: KernelStats) -> str | None:
    """Where a kernel runs, if its stats say (remote kernels carry ``location``)."""
    return getattr(k, "location", None)


def _cell(column: str, content: str, title: str = "") -> str:
    title_attr = f" title='{html.escape(title)}'" if title else ""
    return f"<span class='jsp-col jsp-col-{column}'{title_attr}>{content}</span>"


def _head_html(stats: PoolStats, columns: tuple[str, ...]) -> str:
    """The column headings, or, with no kernel, what is true and what starts one."""
    if not stats.kernels:
        return f"<i class='jsp-no-kernels'>{html.escape(_no_kernels(stats))}</i>"
    return "<div class='jsp-head'>" + "".join(_cell(c, f"<b>{_COLUMNS[c][0]}</b>") for c in columns) + "</div>"


def _no_kernels(stats: PoolStats) -> str:
    if stats.closed:
        return "no kernels: the pool is shut down"
    if not stats.counters.get("started"):
        return "no kernels yet: the first %%pool cell starts one"
    why = [text for counter, text in (("released", "sessions released"), ("died", "kernels died"))
           if stats.counters.get(counter)]
    return f"no kernels running{': ' + ', '.join(why) if why else ''}; the next %%pool cell starts one"


def _row_html(k: KernelStats, columns: tuple[str, ...], now: float) -> str:
    symbol, colour = _STATE_STYLE.get(k.state, ("?", "inherit"))
    rss = k.memory
    location = _location(k)
    content = {
        "kernel": (f"<code>{html.escape(_short_id(k.kernel_id))}</code>", k.kernel_id),
        "state": (f"<span class='jsp-state' style='color:{colour};font-weight:bold'>{symbol} {k.state}</span>", ""),
        "session": (html.escape(k.session) if k.session else DASH, k.session or ""),
        "busy": (_duration(now - k.busy_since) if k.busy_since is not None else DASH, ""),
        "runs": (str(k.executions), ""),
        "memory": (f"{rss / 2**20:.0f} MiB" if rss is not None else DASH, ""),
        "location": (html.escape(location) if location else DASH, location or ""),
    }
    attrs = f"data-kernel='{html.escape(k.kernel_id)}' data-state='{k.state}' data-session='{html.escape(k.session or '')}'"
    return f"<div class='jsp-kernel' {attrs}>" + "".join(_cell(c, *content[c]) for c in columns) + "</div>"


def _footer_html(stats: PoolStats, now: float) -> str:
    waiting = ", ".join(f"{html.escape(w.session or 'anonymous')} {_duration(now - w.since)}" for w in stats.waiting)
    counters = " · ".join(f"{html.escape(name)} {n}" for name, n in stats.counters.items())
    return (
        f"<small><span class='jsp-waiting'>waiting checkouts: {len(stats.waiting)}"
        f"{f' ({waiting})' if waiting else ''}</span><br>"
        f"<span class='jsp-counters'>{counters}</span></small>"
    )


def _short_id(kernel_id: str) -> str:
    """The kernel id without its random suffix (the full id is in the cell's tooltip)."""
    return kernel_id.rpartition("-")[0] or kernel_id


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} m {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} m"
