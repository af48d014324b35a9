"""The exceptions the pool raises, all catchable as :class:`PoolError`.

A Python exception raised by *user code* on a kernel is not one of these: it comes back
as an :class:`~jupyter_sessionpool.execution.ExecutionResult` with ``status="error"``.
These types are for the pool's own failures, and each message says what happened and
what to do about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .results import ExecutionResult


class PoolError(Exception):
    """Base class of every error the pool raises."""


class PoolClosed(PoolError, RuntimeError):
    """The pool was shut down; create a new pool to run more code."""

    def __init__(self, message: str = "the kernel pool is shut down; create a new pool") -> None:
        super().__init__(message)


class CheckoutTimeout(PoolError, TimeoutError):
    """No kernel became free for this session within ``checkout_timeout``.

    ``holders`` maps each kernel id to the session holding it (None: an anonymous lease)
    and ``states`` maps it to that kernel's state: sessions that sit idle hold a kernel
    too, until they are released.
    """

    def __init__(
        self,
        session: str | None,
        timeout: float,
        holders: dict[str, str | None],
        states: dict[str, str] | None = None,
    ) -> None:
        self.session = session
        self.timeout = timeout
        self.holders = holders
        self.states = states or {}
        held = ", ".join(
            f"{s!r} ({self.states.get(kid, 'busy')})" if s else f"an anonymous lease ({self.states.get(kid, 'busy')})"
            for kid, s in holders.items()
        ) or "nobody (kernels are starting or stopping)"
        who = f"session {session!r}" if session else "an anonymous lease"
        named = [s for s in holders.values() if s]
        free = f"release one (pool.release({named[0]!r}) or %pool release {named[0]}), " if named else ""
        super().__init__(
            f"no kernel free for {who} within {timeout:g} s; kernels are held by: {held}. "
            f"To free one: {free}raise max_kernels, or set evict_idle_sessions=True to evict the least "
            "recently used idle session."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.session, self.timeout, self.holders, self.states))


class ExecutionTimeout(PoolError, TimeoutError):
    """A cell ran past its timeout and was interrupted.

    ``restarted`` is True when the interrupt did not free the kernel within the grace
    period: the kernel was then replaced, so the session's state is gone.
    ``result`` holds the outputs received before the timeout.
    """

    def __init__(self, session: str | None, timeout: float, restarted: bool, result: ExecutionResult) -> None:
        self.session = session
        self.timeout = timeout
        self.restarted = restarted
        self.result = result
        after = (
            "the kernel ignored the interrupt and was replaced, so this session's state is lost"
            if restarted
            else "the kernel was interrupted and keeps its state"
        )
        super().__init__(f"cell exceeded its timeout of {timeout:g} s; {after}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.session, self.timeout, self.restarted, self.result))


class ExecutionError(PoolError):
    """User code raised on the kernel; raised only by ``ExecutionResult.raise_for_error()``.

    Carries ``ename``, ``evalue``, ``traceback`` (the kernel's own, with ANSI colours) and
    the whole ``result``. In IPython it renders the remote traceback, not a local one.
    """

    def __init__(self, result: ExecutionResult) -> None:
        err = result.error or {}
        self.result = result
        self.ename: str = err.get("ename", "")
        self.evalue: str = err.get("evalue", "")
        self.traceback: list[str] = list(err.get("traceback", []))
        where = f" in session {result.session!r}" if result.session else ""
        super().__init__(f"{self.ename}: {self.evalue} (raised on kernel {result.kernel_id}{where})")

    def _render_traceback_(self) -> list[str]:
        return self.traceback or [str(self)]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.result,))


class KernelDied(PoolError):
    """The kernel process exited while this caller held it; its state is gone.

    ``result`` holds the outputs received before the death, or is None when the kernel
    was already gone before this call sent its code.
    """

    def __init__(self, kernel_id: str, session: str | None, result: ExecutionResult | None = None) -> None:
        self.kernel_id = kernel_id
        self.session = session
        self.result = result
        where = f" (session {session!r})" if session else ""
        when = (
            "died while running code; outputs received before the death are on .result"
            if result is not None
            else "died before this call could run code"
        )
        after = (
            "The session's next call raises SessionLost once, then runs on a fresh kernel: re-run its set-up code."
            if session
            else "The next call gets a fresh kernel."
        )
        super().__init__(f"kernel {kernel_id}{where} {when}. {after}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kernel_id, self.session, self.result))


class SessionLost(PoolError):
    """The session's kernel was lost (died, timed out, replaced); its variables are gone.

    Raised once, on the first call after the loss; later calls get a fresh kernel.
    """

    def __init__(self, session: str, reason: str) -> None:
        self.session = session
        self.reason = reason
        super().__init__(
            f"session {session!r} lost its kernel ({reason}); its variables are gone. "
            "Call again to continue on a fresh kernel, re-running any set-up code."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.session, self.reason))


class CommNotFound(PoolError, LookupError):
    """A comm message was sent to a comm the session's kernel does not have (open).

    The kernel closed it, or the session was released, restarted or lost its kernel (its
    comms went with it), or the session never held a kernel. Nothing was sent.
    """

    def __init__(self, session: str | None, comm_id: str, reason: str) -> None:
        self.session = session
        self.comm_id = comm_id
        self.reason = reason
        whose = f"session {session!r}" if session else "this kernel"
        super().__init__(f"{whose} has no open comm {comm_id!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.session, self.comm_id, self.reason))


class KernelStartError(PoolError):
    """A kernel failed to start after every retry. ``stderr`` is the kernel's own tail.

    ``hint`` says what to check; ``retryable`` is False for failures that retrying cannot
    cure (a gateway refusing our token or its limits), which the pool does not retry.
    """

    def __init__(
        self,
        kernel_name: str,
        reason: str,
        stderr: str = "",
        attempts: int = 1,
        *,
        hint: str = "check the kernelspec with `jupyter kernelspec list`",
        retryable: bool = True,
    ) -> None:
        super().__init__(kernel_name, reason)
        self.kernel_name = kernel_name
        self.reason = reason
        self.stderr = stderr
        self.attempts = attempts
        self.hint = hint
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kernel_name, self.reason, self.stderr, self.attempts))

    def __str__(self) -> str:
        tail = f"\n--- kernel stderr (tail) ---\n{self.stderr.rstrip()}" if self.stderr.strip() else ""
        return (
            f"kernel {self.kernel_name!r} failed to start ({self.reason}) after {self.attempts} attempt(s); "
            f"{self.hint}.{tail}"
        )


class ProtocolError(PoolError):
    """The kernel answered outside the Jupyter messaging protocol; it was discarded."""
