"""The ``%pool`` and ``%%pool`` magics: parse the arguments, call the pool, show the outcome.

``%load_ext jupyter_sessionpool`` registers :class:`PoolMagics` on the shell. The shell's
pool is a :class:`~jupyter_sessionpool.KernelPool` made on first use with the shell as its
config parent, so ``%config KernelPool.max_kernels = 8`` set before that use applies, and
one set afterwards reaches the live pool (it is in ``shell.configurables``).

Every argument is checked before the pool is touched: bad arguments raise IPython's
``UsageError`` (one line, no traceback). User text is never evaluated.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import re
import shlex
from dataclasses import dataclass
from keyword import iskeyword
from typing import Any, Callable

from IPython.core.completer import CompletionContext, SimpleCompletion, context_matcher
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display
from traitlets import Int

from .relay import WidgetRelay
from .routing import BackgroundCell, HoldingErrors, Notice, cell_number, current_parent, in_kernel, route_to_current_cell
from ..config import check_session_name, check_timeout
from ..errors import ExecutionError, PoolError
from ..results import ExecutionResult
from ..stats import PoolStats
from ..sync import KernelPool

CELL_USAGE = "usage: %%pool session=NAME [timeout=SECONDS] [--bg]"
LINE_USAGE = (
    "usage: %pool status | sessions | wait | shutdown | release NAME | interrupt NAME | restart NAME"
    " | push NAME VAR [VAR ...] | pull NAME VAR [VAR ...]"
)
_COMMANDS = ("status", "sessions", "wait", "release", "interrupt", "restart", "push", "pull", "shutdown")
_SESSION_COMMANDS = ("release", "interrupt", "restart", "push", "pull")
_MIME = "application/x.jupyter-sessionpool.pickle+base64"  # carries pulled values back


class RemoteCellError(ExecutionError):
    """A ``%%pool`` cell raised on its kernel: the remote exception, shown as this cell's error.

    What is raised is a subclass named like the remote exception (``ZeroDivisionError``),
    so the error the cell shows, and that nbclient and papermill report, has the remote
    name, message (``str()`` is the remote ``evalue``) and traceback, once. ``Cell In[n]``
    in the traceback names the local cell that ran the remote one. It fails the local cell,
    so "Run all" stops there. ``except RemoteCellError`` catches every one of them.
    """

    def __init__(self, result: ExecutionResult, traceback: list[str] | None = None) -> None:
        super().__init__(result)
        if traceback is not None:
            self.traceback = traceback

    def __str__(self) -> str:
        return self.evalue

    def __reduce__(self) -> tuple[Any, ...]:
        return (remote_error, (self.result, self.traceback))


_REMOTE_CLASSES: dict[str, type[RemoteCellError]] = {}


def remote_error(result: ExecutionResult, traceback: list[str] | None = None) -> RemoteCellError:
    """The RemoteCellError for a failed ``result``, of a subclass named like the remote exception."""
    ename = (result.error or {}).get("ename") or ""
    name = ename if ename.isidentifier() else RemoteCellError.__name__
    cls = _REMOTE_CLASSES.get(name)
    if cls is None:
        cls = _REMOTE_CLASSES[name] = type(name, (RemoteCellError,), {"__module__": __name__, "__doc__": RemoteCellError.__doc__})
    return cls(result, traceback)


_CELL_IN = re.compile(r"(Cell(?:\x1b\[[0-9;]*m)*\s(?:\x1b\[[0-9;]*m)*In\[)(\d+)(\])")


def relabel(traceback: list[str], numbers: dict[int, int]) -> list[str]:
    """``traceback`` with each ``Cell In[k]`` (a remote cell number) replaced by ``numbers[k]``."""

    def local(match: re.Match[str]) -> str:
        number = numbers.get(int(match.group(2)))
        return match.group(0) if number is None else f"{match.group(1)}{number}{match.group(3)}"

    return [_CELL_IN.sub(local, line) for line in traceback]


class _Brief:
    """A pool error's rendering in a notebook: its type and message, like a UsageError.

    Set on the exception instance, it renders once, short; then it removes itself, so
    ``%tb`` (which renders the same exception again) shows the full traceback.
    """

    def __init__(self, exc: BaseException) -> None:
        self._exc = exc

    def __call__(self) -> list[str]:
        del self._exc._render_traceback_
        return [f"{type(self._exc).__name__}: {self._exc}", "(the full traceback: %tb)"]


def _briefly(exc: BaseException) -> None:
    """Make ``exc`` show as its message only, unless its type renders itself already."""
    if not hasattr(exc, "_render_traceback_"):
        exc._render_traceback_ = _Brief(exc)  # type: ignore[attr-defined]


class TransferError(PoolError, ValueError):
    """``%pool push`` / ``%pool pull`` could not move a value (unpicklable, too large, missing)."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


# ---- argument parsing (pure: no pool, no shell) --------------------------------------------


@dataclass(frozen=True)
class CellArgs:
    """The parsed ``%%pool`` line."""

    session: str
    timeout: float | None
    background: bool


def parse_cell_args(line: str) -> CellArgs:
    """Parse ``session=NAME [timeout=SECONDS] [--bg]``; raise UsageError on anything else."""
    options: dict[str, str] = {}
    background = False
    for word in _split(line, CELL_USAGE):
        key, eq, value = word.partition("=")
        if word == "--bg":
            background = True
        elif eq and key in ("session", "timeout"):
            if key in options:
                raise UsageError(f"{key}= given twice; {CELL_USAGE}")
            options[key] = value
        else:
            raise UsageError(f"unknown option {word!r}; {CELL_USAGE}")
    if "session" not in options:
        raise UsageError(f"missing session name, e.g. session=a; {CELL_USAGE}")
    timeout = _seconds(options["timeout"]) if "timeout" in options else None
    return CellArgs(_session(options["session"], CELL_USAGE), timeout, background)


def parse_line_args(line: str) -> tuple[str, list[str]]:
    """Parse a ``%pool`` command into (command, arguments); raise UsageError if malformed."""
    words = _split(line, LINE_USAGE)
    if not words:
        raise UsageError(f"%pool needs a command; {LINE_USAGE}")
    command, args = words[0], words[1:]
    if command in ("status", "sessions", "wait", "shutdown"):
        if args:
            raise UsageError(f"%pool {command} takes no arguments; {LINE_USAGE}")
    elif command in ("release", "interrupt", "restart"):
        if len(args) != 1:
            raise UsageError(f"%pool {command} takes one session name, e.g. %pool {command} a")
        _session(args[0], LINE_USAGE)
    elif command in ("push", "pull"):
        if len(args) < 2:
            raise UsageError(f"%pool {command} takes a session name and variable names, e.g. %pool {command} a x y")
        _session(args[0], LINE_USAGE)
        for name in args[1:]:
            if not name.isidentifier() or iskeyword(name):
                raise UsageError(f"{name!r} is not a variable name; %pool {command} NAME VAR [VAR ...]")
    else:
        raise UsageError(f"unknown command {command!r}; {LINE_USAGE}")
    return command, args


def _split(line: str, usage: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:  # unbalanced quotes
        raise UsageError(f"cannot parse {line!r} ({exc}); {usage}") from None


def _session(name: str, usage: str) -> str:
    try:
        check_session_name(name)
    except ValueError as exc:  # the magic always names its session: no session=None hint here
        example = ", e.g. session=a" if usage == CELL_USAGE and not name.strip() else ""
        raise UsageError(f"{exc}{example}; {usage}") from None
    return name


def _seconds(text: str) -> float:
    try:
        return check_timeout(float(text), "timeout")
    except ValueError:
        raise UsageError(f"timeout must be a positive number of seconds, got {text!r}; {CELL_USAGE}") from None


# ---- background cells ------------------------------------------------------------------------


def _label(count: int, session: str) -> str:
    return f"In [{count}] (%%pool session={session} --bg)"


def _running(count: int, session: str) -> str:
    return f"{_label(count, session)}: running in the background; %pool wait collects it"


@dataclass
class _Background:
    """A ``%%pool --bg`` cell in flight, started by local cell ``In [count]``."""

    count: int
    session: str
    future: concurrent.futures.Future[ExecutionResult]
    display: BackgroundCell | None  # None outside a kernel: the output is printed as it comes

    @property
    def label(self) -> str:
        return _label(self.count, self.session)

    def state(self) -> str:
        """The display's first line: what the cell is doing or how it ended."""
        if not self.future.done():
            return _running(self.count, self.session)
        if self.future.cancelled():
            return f"{self.label}: cancelled"
        exc = self.future.exception()
        if exc is not None:
            return f"{self.label}: failed: {type(exc).__name__}: {exc}"
        result = self.future.result()
        if result.status == "error":
            return f"{self.label}: raised {result.error['ename']} after {result.duration:.1f} s"
        return f"{self.label}: finished in {result.duration:.1f} s"


# ---- push / pull ---------------------------------------------------------------------------
# _jsp_pack and _jsp_unpack run here and, sent as source, in the session's kernel: so they
# are self-contained, their annotations are strings (never evaluated there), and their names
# will not clobber a user's variable while they run there.


def _jsp_pack(ns: "dict[str, Any]", names: "list[str]", limit: "int") -> "str":
    """Pickle ``ns[name]`` for each name (one at a time, so an error names the value); base64."""
    import base64
    import pickle

    missing = [name for name in names if name not in ns]
    if missing:
        raise NameError("no variable named " + ", ".join(map(repr, missing)))
    blobs = {}
    for name in names:
        try:
            blobs[name] = pickle.dumps(ns[name])
        except Exception as exc:
            raise TypeError(f"{name!r} cannot be pickled ({type(exc).__name__}: {exc})") from None
    size = sum(map(len, blobs.values()))
    if size > limit:
        raise ValueError(
            f"the values pickle to {size} bytes, over the limit of {limit} bytes; "
            "raise it with %config PoolMagics.transfer_limit = BYTES"
        )
    return base64.b64encode(pickle.dumps(blobs)).decode()


def _jsp_unpack(packed: "str") -> "dict[str, Any]":
    """The values packed by :func:`_jsp_pack`."""
    import base64
    import pickle

    values = {}
    for name, blob in pickle.loads(base64.b64decode(packed)).items():
        try:
            values[name] = pickle.loads(blob)
        except Exception as exc:
            raise TypeError(f"{name!r} cannot be unpickled here ({type(exc).__name__}: {exc})") from None
    return values


def _remote(helper: Callable[..., Any], call: str) -> str:
    """Code that defines ``helper`` in the session, runs ``call`` and deletes the helper again."""
    return f"{inspect.getsource(helper)}try:\n    {call}\nfinally:\n    del {helper.__name__}\n"


# ---- a full pool ----------------------------------------------------------------------------


def waiting_message(stats: PoolStats, session: str) -> str | None:
    """What to tell a user whose ``session`` waits for a kernel because sessions hold them all; else None."""
    live = [k for k in stats.kernels if k.state in ("starting", "idle", "busy")]
    if (
        not any(w.session == session for w in stats.waiting)
        or len(live) < stats.max_kernels
        or any(k.session in (None, session) for k in live)  # a free or own kernel: this is no full-pool wait
    ):
        return None
    held = ", ".join(f"{k.session} ({k.state})" for k in live)
    idle = [k.session for k in live if k.state == "idle"]
    return (
        f"session {session!r} is waiting for a kernel: all {stats.max_kernels} are held, by {held}.\n"
        f"Free one with %pool release {(idle or [k.session for k in live])[0]} (that session's variables are gone) "
        f"or from the pool panel (%pool status); allow more with %config KernelPool.max_kernels = {stats.max_kernels + 1}; "
        "or let the pool release the least recently used idle session itself: "
        "%config KernelPool.evict_idle_sessions = True"
    )


# ---- the magics --------------------------------------------------------------------------------


@magics_class
class PoolMagics(Magics):
    """``%pool`` and ``%%pool``, and the shell's kernel pool behind them."""

    transfer_limit = Int(
        16 * 2**20,
        help="Most bytes (pickled) that one %pool push or %pool pull may move.",
    ).tag(config=True)

    def __init__(self, shell: Any) -> None:
        super().__init__(shell=shell)
        self._pool: KernelPool | None = None
        self._background: list[_Background] = []
        self._numbers: dict[str, dict[int, int]] = {}  # session -> remote execution count -> local cell number
        self._latest_parent: dict[str, Any] = {}  # the parent header of the cell the kernel runs now
        self._relay = WidgetRelay(shell.kernel) if in_kernel(shell) else None  # widgets of sessions, live here

    def note_cell(self, info: Any = None) -> None:
        """``pre_run_cell`` hook: remember which request the kernel runs now (background updates go to it)."""
        if in_kernel(self.shell):
            self._latest_parent = current_parent(self.shell)

    @property
    def pool(self) -> KernelPool:
        """The shell's pool, made on first use from the shell's config."""
        if self._pool is None:
            try:
                self._pool = KernelPool(parent=self.shell)
            except ValueError as exc:  # a kernel_name that names no usable kernelspec
                _briefly(exc)
                raise
            self.shell.configurables.append(self._pool)
        return self._pool

    @property
    def current_pool(self) -> KernelPool | None:
        """The shell's pool if a cell has made it, else None (never makes one)."""
        return self._pool

    def close(self) -> None:
        """Shut the pool down (its kernels stop; background cells fail with PoolClosed)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            self.shell.configurables.remove(pool)
            pool.shutdown()

    @cell_magic("pool")
    def pool_cell(self, line: str, cell: str) -> None:
        """Run this cell on a session's kernel in the pool; its output streams into this cell.

        ::

            %%pool session=NAME [timeout=SECONDS] [--bg]

        Session ``NAME`` always runs on the same kernel, with its variables, until it is
        released; different sessions run at the same time. Output appears here as it is
        produced: stdout, stderr, rich display data, the last expression's value, and
        ``clear_output``. A remote exception is this cell's error: the remote exception
        itself (name, message, traceback, with local ``Cell In[n]`` numbers), and "Run all"
        stops here. The pool's own errors show their message; ``%tb`` shows the full
        traceback. Interrupting this cell interrupts the remote cell. ``timeout``
        interrupts the remote cell after SECONDS (default: ``KernelPool.execution_timeout``).
        If every kernel is held by other sessions, the cell says so at once, and how to
        free one, until it gets a kernel. Output the session's kernel made while none of its
        cells ran (a thread printing after its cell ended) comes first, headed as such.
        Widgets the cell makes render here and stay live: this kernel relays their comms to
        the session's kernel (see ``jupyter_sessionpool.notebook.relay``).

        ``--bg`` runs it in the background: the cell returns at once, and the output keeps
        arriving in this cell (never in a later one) while other cells run, as one display
        headed by this cell's number. ``%pool wait`` collects background cells, and fails
        with the first remote error; it also makes headless runs (nbconvert, papermill)
        save every background cell's output, so end such notebooks with it.

        In [1]: %%pool session=a
           ...: x = 41
           ...: x + 1
        Out[1]: 42

        In [2]: %%pool session=b --bg
           ...: import time; time.sleep(5); print("done")

        In [3]: %pool wait

        Configure the pool with ``%config KernelPool.max_kernels = 8`` (and the other
        ``KernelPool`` settings); see ``%pool?`` for the line commands.
        """
        args = parse_cell_args(line)
        try:
            if args.background:
                self._start_background(args, cell)
            else:
                self._run(args, cell)
        except PoolError as exc:
            _briefly(exc)
            raise

    def _run(self, args: CellArgs, cell: str) -> None:
        pool = self.pool
        route = HoldingErrors(route_to_current_cell(self.shell))
        widgets = self._relay.cell(pool, args.session) if self._relay is not None else None
        count = cell_number(self.shell)
        notice = Notice(self.shell)
        unsubscribe = pool.subscribe(lambda stats: notice.show(waiting_message(stats, args.session)))
        try:
            stray = pool.stray_output(args.session)
            if stray:  # e.g. a thread that printed after its cell ended: shown here, headed, never lost
                route({"output_type": "stream", "name": "stderr", "text": f"[output of session {args.session} while no cell ran]\n"})
                for output in stray:
                    route(output)
            result = pool.execute(
                cell, session=args.session, timeout=args.timeout, on_output=widgets.views(route) if widgets else route,
                on_comm=widgets.on_comm if widgets else None,
            )
        except BaseException:
            route.end(drop=True)  # the pool's error (or the interrupt) is what this cell shows
            raise
        finally:
            unsubscribe()
            notice.close()
        self._note_numbers(args.session, result, count)
        route.end(drop=result.status == "error")
        if result.status == "error":
            raise self._remote_error(args.session, result)

    def _start_background(self, args: CellArgs, cell: str) -> None:
        pool = self.pool
        count = cell_number(self.shell)
        display = None
        on_output, on_comm = route_to_current_cell(self.shell), None
        if self._relay is not None:
            numbers = self._numbers.setdefault(args.session, {})
            display = BackgroundCell(
                self.shell, _running(count, args.session), lambda: self._latest_parent, lambda tb: relabel(tb, numbers)
            )
            widgets = self._relay.cell(pool, args.session, background=True)
            on_output, on_comm = widgets.views(display), widgets.on_comm
        future = pool.submit(cell, args.session, args.timeout, on_output, on_comm=on_comm)
        job = _Background(count, args.session, future, display)
        self._background.append(job)
        future.add_done_callback(lambda _f: self._finished(job))

    def _finished(self, job: _Background, parent: dict[str, Any] | None = None) -> None:
        """A background cell ended: note its cell number and show how it ended (any thread; idempotent)."""
        if not job.future.cancelled() and job.future.exception() is None:
            self._note_numbers(job.session, job.future.result(), job.count)
        if job.display is not None:
            job.display.update(job.state(), parent)

    def _note_numbers(self, session: str, result: ExecutionResult, count: int) -> None:
        if result.execution_count is not None:
            self._numbers.setdefault(session, {})[result.execution_count] = count

    def _remote_error(self, session: str, result: ExecutionResult, heading: str | None = None) -> RemoteCellError:
        traceback = relabel((result.error or {}).get("traceback") or [], self._numbers.get(session, {}))
        return remote_error(result, [heading, *traceback] if heading else traceback)

    @line_magic("pool")
    def pool_line(self, line: str) -> list[str] | None:
        """Manage the notebook's kernel pool and move variables in and out of sessions.

        ::

            %pool status                 the pool's live widget (a text table where widgets cannot show)
            %pool sessions               the names of the sessions holding a kernel (a list)
            %pool wait                   wait for every %%pool --bg cell; fails if one failed
            %pool release NAME           shut session NAME's kernel down; its variables are gone
            %pool interrupt NAME         interrupt the cell running on session NAME
            %pool restart NAME           give session NAME a fresh kernel
            %pool push NAME VAR [VAR ...]  copy local variables into session NAME (pickle)
            %pool pull NAME VAR [VAR ...]  copy session NAME's variables here (pickle)
            %pool shutdown               stop every kernel; the next %%pool cell starts a new pool

        push and pull move at most ``PoolMagics.transfer_limit`` bytes (pickled), and fail
        with TransferError for values that cannot be pickled or are too large. push sends
        the values inside the code it runs, so the session's input history (``In``) keeps
        that copy until the session is released or restarted.

        In [1]: data = [1, 2, 3]
        In [2]: %pool push a data
        In [3]: %%pool session=a
           ...: total = sum(data)
        In [4]: %pool pull a total
        In [5]: total
        Out[5]: 6
        In [6]: %pool sessions
        Out[6]: ['a']

        See ``%%pool?`` for running cells.
        """
        command, args = parse_line_args(line)
        try:
            return self._line_command(command, args)
        except PoolError as exc:
            _briefly(exc)
            raise

    def _line_command(self, command: str, args: list[str]) -> list[str] | None:
        if command == "status":
            self._status()
        elif command == "sessions":
            return self._pool.sessions() if self._pool else []
        elif command == "wait":
            self._wait()
        elif command == "shutdown":
            self.close()
        elif command == "push":
            self._push(args[0], args[1:])
        elif command == "pull":
            self._pull(args[0], args[1:])
        else:
            self._session_command(command, args[0])
        return None

    @context_matcher()
    def complete(self, context: CompletionContext) -> dict[str, Any]:
        """Tab completion on a ``%pool`` / ``%%pool`` line: commands, options, session names.

        An IPython completion matcher: on those lines its completions are the only ones.
        """
        before = context.text_until_cursor.lstrip()
        words = before.split()
        typing = "" if not words or before[-1].isspace() else words.pop()
        sessions = self._pool.sessions() if self._pool else []
        if words[:1] == ["%%pool"] and context.cursor_line == 0:
            if typing.startswith("session="):
                options = [f"session={name}" for name in sessions]
            else:
                options = ["session=", "timeout=", "--bg"]
        elif words == ["%pool"]:
            options = list(_COMMANDS)
        elif len(words) == 2 and words[:1] == ["%pool"] and words[1] in _SESSION_COMMANDS:
            options = sessions
        else:
            return {"completions": []}
        matches = [SimpleCompletion(text) for text in options if text.startswith(typing)]
        return {"completions": matches, "matched_fragment": typing, "suppress": bool(matches)}

    # ---- the line commands ---------------------------------------------------------------

    def _status(self) -> None:
        try:
            from .widget import PoolWidget
        except ImportError:
            print(self.pool.stats())
            return
        if in_kernel(self.shell):
            display(PoolWidget(self.pool))
        else:
            print(self.pool.stats())

    def _session_command(self, command: str, session: str) -> None:
        done = self._pool is not None and getattr(self._pool, command)(session)
        if not done:
            print(f"session {session!r} holds no kernel; nothing to {command}")
        elif command == "release":
            print(f"released session {session!r}: its kernel is shut down")
        elif command == "restart":
            print(f"restarted session {session!r}: it gets a fresh kernel")
        else:
            print(f"interrupted session {session!r}")

    def _wait(self) -> None:
        jobs, self._background = self._background, []
        try:
            concurrent.futures.wait([job.future for job in jobs])
        except KeyboardInterrupt:
            for job in jobs:
                job.future.cancel()  # cancelling the pool's task interrupts the remote cell
            raise
        parent = current_parent(self.shell) if in_kernel(self.shell) else None
        for job in jobs:  # sent while this cell runs, so a headless run records every display
            self._finished(job, parent)
        for job in jobs:
            result = job.future.result()  # a pool failure (timeout, dead kernel) is raised here
            if result.status == "error":
                raise self._remote_error(job.session, result, f"{job.label} raised:")
        print(f"{len(jobs)} background cell(s) finished")

    def _push(self, session: str, names: list[str]) -> None:
        try:
            packed = _jsp_pack(self.shell.user_ns, names, self.transfer_limit)
        except NameError as exc:
            raise UsageError(f"{exc} here to push") from None
        except (TypeError, ValueError) as exc:
            raise TransferError(f"cannot push to session {session!r}: {exc}") from None
        code = _remote(_jsp_unpack, f"globals().update(_jsp_unpack({packed!r}))")
        result = self.pool.execute(code, session=session, store_history=False)
        if result.status == "error":
            raise TransferError(f"cannot push to session {session!r}: {result.error['evalue']}")

    def _pull(self, session: str, names: list[str]) -> None:
        if self._pool is None or session not in self._pool.sessions():
            raise TransferError(f"session {session!r} holds no kernel; run a %%pool session={session} cell first")
        publish = "__import__('IPython').display.publish_display_data"
        code = _remote(_jsp_pack, f"{publish}({{{_MIME!r}: _jsp_pack(globals(), {names!r}, {self.transfer_limit})}})")
        result = self._pool.execute(code, session=session, store_history=False)
        if result.status == "error":
            raise TransferError(f"cannot pull from session {session!r}: {result.error['evalue']}")
        packed = next(out["data"][_MIME] for out in result.outputs if _MIME in out.get("data", {}))
        try:
            self.shell.user_ns.update(_jsp_unpack(packed))
        except TypeError as exc:
            raise TransferError(f"cannot pull from session {session!r}: {exc}") from None


def load(shell: Any) -> PoolMagics:
    """Register the magics, their tab completion and cell hook on ``shell``; the pool starts on first use."""
    magics = PoolMagics(shell)
    shell.register_magics(magics)
    shell.configurables.append(magics)
    shell.events.register("pre_run_cell", magics.note_cell)
    shell.Completer.custom_matchers.append(magics.complete)
    return magics


def unload(shell: Any) -> None:
    """Shut the shell's pool down and remove the magics."""
    magics = shell.magics_manager.registry.pop(PoolMagics.__name__, None)
    if magics is None:
        return
    magics.close()
    for kind in ("line", "cell"):
        shell.magics_manager.magics[kind].pop("pool", None)
    shell.configurables.remove(magics)
    shell.events.unregister("pre_run_cell", magics.note_cell)
    shell.Completer.custom_matchers.remove(magics.complete)
