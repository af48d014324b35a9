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
import shlex
from dataclasses import dataclass
from keyword import iskeyword
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display
from traitlets import Int

from .routing import in_kernel, route_to_current_cell
from ..config import check_session, check_timeout
from ..errors import ExecutionError, PoolError
from ..results import ExecutionResult
from ..sync import KernelPool

CELL_USAGE = "usage: %%pool session=NAME [timeout=SECONDS] [--bg]"
LINE_USAGE = (
    "usage: %pool status | sessions | wait | shutdown | release NAME | interrupt NAME | restart NAME"
    " | push NAME VAR [VAR ...] | pull NAME VAR [VAR ...]"
)
_MIME = "application/x.jupyter-sessionpool.pickle+base64"  # carries pulled values back


class RemoteCellError(ExecutionError):
    """A ``%%pool`` cell raised on its kernel; the remote traceback is already in the cell.

    It fails the local cell (so "Run all" stops) with one short line instead of printing
    the traceback a second time.
    """

    def __init__(self, result: ExecutionResult, shown_in: str = "above") -> None:
        super().__init__(result)
        self.shown_in = shown_in

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}; the remote traceback is shown {self.shown_in}"]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.result, self.shown_in))


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
        check_session(name)
    except ValueError as exc:
        raise UsageError(f"{exc}; {usage}") from None
    return name


def _seconds(text: str) -> float:
    try:
        return check_timeout(float(text), "timeout")
    except ValueError:
        raise UsageError(f"timeout must be a positive number of seconds, got {text!r}; {CELL_USAGE}") from None


# ---- background cells ------------------------------------------------------------------------


@dataclass
class _Background:
    """A ``%%pool --bg`` cell in flight; ``label`` names the local cell that started it."""

    label: str
    future: concurrent.futures.Future[ExecutionResult]


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

    @property
    def pool(self) -> KernelPool:
        """The shell's pool, made on first use from the shell's config."""
        if self._pool is None:
            self._pool = KernelPool(parent=self.shell)
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
        ``clear_output``. A remote exception shows the remote traceback and fails this
        cell, so "Run all" stops here. Interrupting this cell interrupts the remote cell.
        ``timeout`` interrupts the remote cell after SECONDS (default:
        ``KernelPool.execution_timeout``).

        ``--bg`` runs it in the background: the cell returns at once, and the output keeps
        arriving in this cell (never in a later one) while other cells run. ``%pool wait``
        collects background cells and fails if one of them failed.

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
        pool = self.pool
        route = route_to_current_cell(self.shell)
        if args.background:
            future = pool.submit(cell, args.session, args.timeout, route)
            self._background.append(_Background(f"In [{self.shell.displayhook.prompt_count}]", future))
            return
        result = pool.execute(cell, session=args.session, timeout=args.timeout, on_output=route)
        if result.status == "error":
            raise RemoteCellError(result)

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
        for job in jobs:
            result = job.future.result()  # a pool failure (timeout, dead kernel) is raised here
            if result.status == "error":
                raise RemoteCellError(result, shown_in=f"in {job.label}")
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
    """Register the magics on ``shell``; the pool itself starts on first use."""
    magics = PoolMagics(shell)
    shell.register_magics(magics)
    shell.configurables.append(magics)
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
