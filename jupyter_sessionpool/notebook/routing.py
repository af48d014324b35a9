"""Route a remote cell's outputs into the local cell that started it.

The pool calls ``on_output`` on its own thread, and for a background cell it keeps calling
it after the starting cell has finished, while later cells run. ipykernel attributes output
to whichever request is current where it is published, so :func:`route_to_current_cell`
captures the starting cell's parent header up front (on the kernel's main thread, while that
cell runs) and every output is published on IOPub with that explicit parent. The front end
then puts it in the starting cell, never in a later one. ``transient.display_id`` is kept,
so ``update_display`` from the remote kernel updates the right output.

A background cell's output is different: a headless client (nbclient, nbconvert,
papermill) stops listening to a cell once it is idle, and drops every later message whose
parent is not the cell it runs now. What every client does apply, to any earlier cell, is
an update of a display by its id. So :class:`BackgroundCell` shows a ``--bg`` cell's output
as ONE display in the starting cell, made while that cell runs, and delivers the output as
updates of that display: a live front end shows it there as it comes (once: an update adds
nothing to the cell it is sent from), and a headless run records it there as soon as an
update is sent while one of its cells runs (``%pool wait`` sends the final one).

Outside a kernel (terminal IPython, an in-process ``InteractiveShell``) there is one output
area: streams are written to ``sys.stdout``/``sys.stderr`` and rich data goes through the
shell's display publisher.
"""

from __future__ import annotations

import html
import re
import sys
import threading
import time
import uuid
from typing import Any, Callable

from ..results import OutputCallback, _Outputs, output_size

BACKGROUND_MIME = "application/vnd.jupyter-sessionpool.background+json"
"""The MIME type of a background cell's display: ``{"header", "outputs"}`` (nbformat outputs),
for a front end that renders the outputs natively; text/plain (and text/html when an output
needs it) are the fallback every client shows."""

_UPDATE_EVERY = 0.2  # seconds between two live updates of a background cell's display while output flows


def in_kernel(shell: Any) -> bool:
    """True if ``shell`` runs inside an ipykernel (it has a kernel with a messaging session)."""
    return getattr(getattr(shell, "kernel", None), "session", None) is not None


def current_parent(shell: Any) -> dict[str, Any]:
    """The parent header of the request the kernel runs now (call on the kernel's main thread)."""
    return shell.kernel.get_parent("shell")


def cell_number(shell: Any) -> int:
    """The ``n`` of ``In [n]`` of the cell running now (IPython counts a cell before running it)."""
    return shell.displayhook.prompt_count


def route_to_current_cell(shell: Any) -> OutputCallback:
    """An ``on_output`` callback that sends every output to the cell running now.

    Call it on the kernel's main thread while the cell runs; the callback it returns may
    then be called from any thread, for as long as the remote cell produces output.
    """
    if in_kernel(shell):
        return _ToIOPub(shell)
    return _ToShell(shell)


class _ToIOPub:
    """Publishes outputs on the kernel's IOPub socket with a fixed parent header.

    ipykernel's IOPub socket hands every send to its IO thread, so this is safe from the
    pool's callback threads.
    """

    def __init__(self, shell: Any) -> None:  # on the kernel's main thread, while the cell runs
        self._session = shell.kernel.session
        self._iopub = shell.kernel.iopub_socket
        self._parent = current_parent(shell)
        self._execution_count = cell_number(shell)

    def send(self, kind: str, content: dict[str, Any], parent: dict[str, Any] | None = None) -> None:
        """Publish one IOPub message, by default as output of the cell this route belongs to."""
        self._session.send(self._iopub, kind, content, parent=parent or self._parent)

    def __call__(self, out: dict[str, Any]) -> None:
        # the local cell's count on an execute_result: the output belongs to this cell, not to the remote history
        content = iopub_content(out, self._execution_count)
        if content is not None:
            self.send(out["output_type"], content)


def iopub_content(out: dict[str, Any], execution_count: int | None = None) -> dict[str, Any] | None:
    """The IOPub message content that shows ``out`` (an output in the ``on_output`` form), or None
    for something that is no output; an execute_result gets ``execution_count`` if given, else its own."""
    kind = out.get("output_type")
    if kind == "stream":
        return {"name": out["name"], "text": out["text"]}
    if kind == "error":
        return {"ename": out["ename"], "evalue": out["evalue"], "traceback": out["traceback"]}
    if kind == "clear_output":
        return {"wait": out["wait"]}
    if kind not in ("display_data", "execute_result", "update_display_data"):
        return None
    content = {"data": out["data"], "metadata": out.get("metadata", {}), "transient": out.get("transient") or {}}
    if kind == "execute_result":
        content["execution_count"] = out.get("execution_count") if execution_count is None else execution_count
    return content


class _ToShell:
    """Prints streams and displays rich data through a kernel-less IPython shell."""

    def __init__(self, shell: Any) -> None:
        self._shell = shell

    def __call__(self, out: dict[str, Any]) -> None:
        kind = out["output_type"]
        publisher = self._shell.display_pub  # looked up per call: capture_output() swaps it
        if kind == "stream":
            stream = sys.stderr if out["name"] == "stderr" else sys.stdout
            stream.write(out["text"])
            stream.flush()
        elif kind == "error":
            sys.stderr.write("\n".join(out["traceback"]) + "\n")
            sys.stderr.flush()
        elif kind == "clear_output":
            publisher.clear_output(wait=out["wait"])
        else:
            publisher.publish(
                data=out["data"],
                metadata=out.get("metadata", {}),
                transient=out.get("transient"),
                update=kind == "update_display_data",
            )


class HoldingErrors:
    """Passes outputs on, holding back the latest ``error`` until another output follows it.

    A failing cell's own error is its last output. The magic raises that error as the
    local cell's own instead (so it shows once), and it raises ``ExecutionTimeout`` instead
    of the remote ``KeyboardInterrupt`` the timeout caused: :meth:`end` drops the held
    error then, and passes it on when the cell went on after showing it (e.g. an error
    shown inside an Output widget).
    """

    def __init__(self, route: OutputCallback) -> None:
        self._route = route
        self._held: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def __call__(self, out: dict[str, Any]) -> None:
        with self._lock:
            held, self._held = self._held, (out if out["output_type"] == "error" else None)
        if held is not None:
            self._route(held)
        if out["output_type"] != "error":
            self._route(out)

    def end(self, drop: bool) -> None:
        """The cell ended: drop the held error (``drop``: it is shown another way) or pass it on."""
        with self._lock:
            held, self._held = self._held, None
        if held is not None and not drop:
            self._route(held)


class Notice:
    """A one-output message in the cell running now, replaced on each :meth:`show`.

    Made on the kernel's main thread while the cell runs; :meth:`show` may then be called
    from any thread. In a kernel it is a display (with a display id) that ``show(None)``
    and :meth:`close` empty; outside one the first text is printed to stderr.
    """

    def __init__(self, shell: Any) -> None:
        self._iopub = _ToIOPub(shell) if in_kernel(shell) else None
        self._display_id = uuid.uuid4().hex
        self._text: str | None = None  # what shows now
        self._made = False
        self._closed = False
        self._lock = threading.Lock()

    def show(self, text: str | None) -> None:
        """Show ``text`` instead of what shows now (None: nothing)."""
        with self._lock:
            if not self._closed:
                self._show(text)

    def close(self) -> None:
        """Remove the message for good; later :meth:`show` calls do nothing."""
        with self._lock:
            self._show(None)
            self._closed = True

    def _show(self, text: str | None) -> None:  # called with the lock held
        if text == self._text:
            return
        self._text = text
        if self._iopub is None:
            if text:
                print(text, file=sys.stderr, flush=True)
            return
        kind = "update_display_data" if self._made else "display_data"
        self._made = True
        data = {"text/plain": text} if text else {}
        self._iopub.send(kind, {"data": data, "metadata": {}, "transient": {"display_id": self._display_id}})


class BackgroundCell:
    """A ``%%pool --bg`` cell's outputs, kept as one display in the cell that started it.

    Make it on the kernel's main thread while the starting cell runs: that shows the
    display. It is the cell's ``on_output``; a pool callback thread calls it. Updates are sent
    with the parent ``latest_parent()`` returns (the cell the kernel runs now), so that a
    headless client, which listens only to that cell, applies them too. ``relabel`` rewrites
    a remote traceback's cell numbers as each update is rendered.

    An update replaces the whole display, so what an update carries is chosen to keep the
    cost proportional to what arrived, not to everything shown so far:

    * while output flows, the display is updated at most every 0.2 s, and such a *live*
      update shows only the newest output: as many characters as arrived since the previous
      update, at least 4,000 and at most 64,000, after a line saying that earlier output shows
      when the cell ends. Its cost (rendering and bytes) is bounded by the window, never by
      the size of the output so far;
    * :meth:`update` (the cell ended, ``%pool wait``) shows every output: that render is kept
      and reused while no output arrives, so a second final update renders nothing again.

    So the updates of a cell whose output is N characters carry at most about 2 x N (live:
    text and outputs, each at most what arrived) plus 8,000 characters per live update,
    plus the final display (about 2 x N, or 3 x N with HTML), sent when the cell ends and
    again by ``%pool wait``.
    """

    def __init__(
        self,
        shell: Any,
        header: str,
        latest_parent: Callable[[], dict[str, Any]],
        relabel: Callable[[list[str]], list[str]],
    ) -> None:
        self._iopub = _ToIOPub(shell)
        self._latest_parent = latest_parent
        self._relabel = relabel
        self._display_id = uuid.uuid4().hex
        self._header = header
        self._outputs = _Outputs(None)
        self._version = 0  # bumped by every output
        self._arrived = 0  # characters of output since the last update
        self._full: tuple[int, list[dict[str, Any]], str, str | None] | None = None  # the last whole render
        self._lock = threading.Lock()
        self._sent = 0.0  # monotonic time of the last update
        self._timer: threading.Timer | None = None
        self._send("display_data", None, render(header, []))

    def __call__(self, out: dict[str, Any]) -> None:
        with self._lock:
            self._outputs.apply(out)
            self._version += 1
            self._arrived += output_size(out)
            if self._timer is not None:
                return  # an update is due already; it will carry this output
            delay = self._sent + _UPDATE_EVERY - time.monotonic()
            if delay <= 0:
                self._send_live()
            else:
                self._timer = threading.Timer(delay, self._update_live)
                self._timer.daemon = True
                self._timer.start()

    def update(self, header: str | None = None, parent: dict[str, Any] | None = None) -> None:
        """Send the display with every output; ``header`` replaces the first line, ``parent`` the target cell."""
        with self._lock:
            if header is not None:
                self._header = header
            if self._full is None or self._full[0] != self._version:
                outputs = self._labelled(self._outputs.outputs)
                self._full = (self._version, outputs, *_body(outputs))
            _, outputs, text, html_body = self._full
            self._send("update_display_data", parent, _bundle(self._header, outputs, text, html_body))

    def _update_live(self) -> None:
        with self._lock:
            if self._timer is threading.current_thread():
                self._send_live()

    def _send_live(self) -> None:  # called with the lock held
        window = min(_LIVE_MAX, max(_LIVE_MIN, self._arrived))
        self._send("update_display_data", None, render(self._header, self._labelled(_tail(self._outputs.outputs, window))))

    def _labelled(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**out, "traceback": self._relabel(out["traceback"])} if out["output_type"] == "error" else out
                for out in outputs]

    def _send(self, kind: str, parent: dict[str, Any] | None, data: dict[str, Any]) -> None:  # lock held
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._sent = time.monotonic()
        self._arrived = 0
        content = {"data": data, "metadata": {}, "transient": {"display_id": self._display_id}}
        self._iopub.send(kind, content, parent or (self._latest_parent() if kind != "display_data" else None))


_LIVE_MIN, _LIVE_MAX = 4_000, 64_000  # characters a live update of a background cell shows (its newest)
_EARLIER = "[... earlier output: all of it shows here when the cell ends]\n"


def _tail(outputs: list[dict[str, Any]], window: int) -> list[dict[str, Any]]:
    """The newest outputs holding at most about ``window`` characters (a stream's end may be cut),
    after a line saying that earlier output is left out, if any is; costs O(what it returns)."""
    kept: list[dict[str, Any]] = []
    room = window
    for out in reversed(outputs):
        size = output_size(out)
        if size <= room:
            kept.append(out)
            room -= size
            continue
        if out["output_type"] == "stream" and room > 0:
            kept.append({**out, "text": out["text"][-room:]})
        break
    else:
        return outputs
    kept.append({"output_type": "stream", "name": "stdout", "text": _EARLIER})
    return kept[::-1]


# ---- one display for many outputs ------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_IMAGES = ("image/png", "image/jpeg", "image/gif")


def render(header: str, outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """A mimebundle showing ``header`` and then every output, for one display.

    text/plain holds the text of each output (tracebacks keep their colours, which
    front ends and nbconvert render); text/html is added only if an output has data
    that text cannot show (HTML, images), and :data:`BACKGROUND_MIME` carries the outputs.
    """
    return _bundle(header, outputs, *_body(outputs))


def _body(outputs: list[dict[str, Any]]) -> tuple[str, str | None]:
    """The text of ``outputs`` under a header, and their HTML if text cannot show them (else None)."""
    texts = []
    for out in outputs:
        kind = out["output_type"]
        if kind == "stream":
            texts.append(out["text"])
        elif kind == "error":
            texts.append("\n".join(out["traceback"]) + "\n")
        else:
            texts.append(str(out["data"].get("text/plain", "")) + "\n")
    rich = any(set(out.get("data", {})) - {"text/plain"} for out in outputs)
    return "".join(texts), _html(outputs) if rich else None


def _bundle(header: str, outputs: list[dict[str, Any]], text: str, html_body: str | None) -> dict[str, Any]:
    bundle: dict[str, Any] = {"text/plain": f"{header}\n{text}", BACKGROUND_MIME: {"header": header, "outputs": outputs}}
    if html_body is not None:
        bundle["text/html"] = _PRE.format(";color:#666", html.escape(header)) + "\n" + html_body
    return bundle


_PRE = '<pre style="margin:0;white-space:pre-wrap{}">{}</pre>'


def _html(outputs: list[dict[str, Any]]) -> str:
    parts = []
    for out in outputs:
        kind = out["output_type"]
        if kind == "stream":
            parts.append(_PRE.format(";background:#fdd" if out["name"] == "stderr" else "", html.escape(out["text"])))
        elif kind == "error":
            parts.append(_PRE.format(";background:#fdd", html.escape(_ANSI.sub("", "\n".join(out["traceback"])))))
        else:
            data = out["data"]
            image = next((mime for mime in _IMAGES if mime in data), None)
            if "text/html" in data:
                parts.append(_joined(data["text/html"]))
            elif image:
                parts.append(f'<img src="data:{image};base64,{_joined(data[image]).strip()}">')
            elif "image/svg+xml" in data:
                parts.append(_joined(data["image/svg+xml"]))
            else:
                parts.append(_PRE.format("", html.escape(str(data.get("text/plain", "")))))
    return "\n".join(parts)


def _joined(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)
