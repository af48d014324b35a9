"""PoolWidget: the live ipywidgets view of a KernelPool (``%pool status``, ``pool.widget()``).

Threads. The pool calls :meth:`PoolWidget._on_stats` on its own thread after every change;
that only stores the snapshot and arms a timer, so the pool's loop never waits on the UI.
The timer thread renders the newest snapshot: it is the one place that writes the view's
traits, under one lock, at most every ``_MIN_INTERVAL`` seconds however fast events come.
While a kernel is busy or a checkout waits, it re-arms itself once a second so the busy
and waiting times tick; otherwise no timer is armed and nothing runs.

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
from ..stats import KernelStats, PoolStats, rss_bytes

if TYPE_CHECKING:
    from ..sync import KernelPool

_MIN_INTERVAL = 0.25  # seconds between two renders: at most 4 updates a second
_TICK = 1.0  # seconds between renders while busy times run and nothing else changes
_ACTIONS = ("interrupt", "restart", "release")
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
    executions and its memory (RSS). Each named session gets interrupt, restart and
    release buttons, which call the pool's own methods. Several widgets may watch one
    pool; :meth:`close` unsubscribes this one. Where widgets cannot render (terminal
    IPython, a notebook exported without widget state) the plain-text repr is the pool's
    text table.
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
        self._table = HTML()
        self._footer = HTML()
        self._note = HTML()
        self._actions = VBox()
        self._rows: dict[str, tuple[HBox, dict[str, Button]]] = {}
        super().__init__(children=(self._summary, self._table, self._actions, self._footer, self._note))
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
        """Subscriber, called on the pool's thread: keep the snapshot, render it soon."""
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
        with self._lock:
            if self._timer is not threading.current_thread():
                return  # superseded by an earlier timer or a flush while this one waited
            self._timer = None
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
            parts = [self._summary, self._table, self._footer, self._note, self._actions]
            parts += [w for row, _ in self._rows.values() for w in (row, *row.children)]
            self._rows.clear()
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
        self._summary.value = _summary_html(stats)
        self._footer.value = _footer_html(stats, now)
        self._render_actions(stats)
        self._table.value = _table_html(stats, now)  # last: whoever sees it change sees a complete view
        self._last_render = time.monotonic()
        if not stats.closed and (stats.count("busy") or stats.waiting):
            self._arm(self._last_render + _TICK)

    def _render_actions(self, stats: PoolStats) -> None:
        """One row of buttons per named session; rows are kept while their session lives."""
        live = {} if stats.closed else {k.session: k for k in stats.kernels if k.session and k.state in ("idle", "busy")}
        for session in [s for s in self._rows if s not in live]:
            row, _ = self._rows.pop(session)
            _close_widgets([row, *row.children])
        for session, kernel in live.items():
            if session not in self._rows:
                self._rows[session] = self._session_row(session)
            self._rows[session][1]["interrupt"].disabled = kernel.state != "busy"
        children = tuple(self._rows[s][0] for s in live)
        if self._actions.children != children:
            self._actions.children = children

    def _session_row(self, session: str) -> tuple[HBox, dict[str, Button]]:
        label = HTML(f"<code>{html.escape(session)}</code>", layout=Layout(width="12em"))
        buttons = {}
        for action in _ACTIONS:
            button = Button(description=action, tooltip=f"{action} session {session}", layout=Layout(width="auto"))
            button.add_class(f"jsp-{action}")
            button.on_click(lambda _b, a=action: self._act(a, session))
            buttons[action] = button
        row = HBox([label, *buttons.values()])
        row.add_class("jsp-session-actions")
        return row, buttons

    # ---- actions (kernel main thread, from button clicks) --------------------------------

    def _act(self, action: str, session: str) -> None:
        """Run a button's action through the pool's own method and say how it went."""
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


def _close_widgets(parts: list[Any]) -> None:
    """Close widgets with the layout and style models they own (ipywidgets leaves those open)."""
    for part in parts:
        for owned in (getattr(part, "layout", None), getattr(part, "style", None)):
            if owned is not None:
                owned.close()
        part.close()


def _summary_html(stats: PoolStats) -> str:
    closed = " <b>(closed)</b>" if stats.closed else ""
    return (
        f"<b>{html.escape(stats.kernel_name)} pool</b>: {stats.count('busy')}/{stats.max_kernels} busy, "
        f"{stats.count('idle')} idle, {stats.count('starting')} starting{closed}"
    )


def _table_html(stats: PoolStats, now: float) -> str:
    head = "".join(f"<th style='text-align:left;padding:0 .8em 0 0'>{h}</th>"
                   for h in ("kernel", "state", "session", "busy for", "runs", "memory"))
    rows = [_kernel_row(k, now) for k in stats.kernels]
    if not rows:
        rows = ["<tr><td colspan='6'><i>no kernels yet</i></td></tr>"]
    return f"<table class='jsp-kernels'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _kernel_row(k: KernelStats, now: float) -> str:
    symbol, colour = _STATE_STYLE.get(k.state, ("?", "inherit"))
    session = html.escape(k.session) if k.session else "<i>-</i>"
    busy = _duration(now - k.busy_since) if k.busy_since is not None else ""
    rss = rss_bytes(k.pid)
    memory = f"{rss / 2**20:.0f} MiB" if rss is not None else ""
    cells = (
        f"<code title='{html.escape(k.kernel_id)}'>{html.escape(_short_id(k.kernel_id))}</code>",
        f"<span class='jsp-state' style='color:{colour};font-weight:bold'>{symbol} {k.state}</span>",
        session,
        f"<span class='jsp-busy-for'>{busy}</span>",
        str(k.executions),
        memory,
    )
    attrs = f"data-kernel='{html.escape(k.kernel_id)}' data-state='{k.state}' data-session='{html.escape(k.session or '')}'"
    return f"<tr {attrs}>" + "".join(f"<td style='padding:0 .8em 0 0'>{c}</td>" for c in cells) + "</tr>"


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
