"""The pool's settings, declared once as traitlets so ``%config`` and config files work.

``AsyncKernelPool`` and ``KernelPool`` both inherit :class:`PoolSettings`, so
``c.KernelPool.max_kernels = 8`` (or ``%config KernelPool.max_kernels = 8``) configures
the blocking pool and ``c.AsyncKernelPool.max_kernels`` the async one. Every value is
validated when set, and the error names the value and the fix.
"""

from __future__ import annotations

import logging
import math
import os
import reprlib
from typing import Any
from urllib.parse import urlsplit

from traitlets import Bool, Dict, Enum, Float, HasTraits, Int, List, TraitError, TraitType, Unicode, default, validate
from traitlets.config import LoggingConfigurable
from traitlets.utils.text import indent

from ._redact import MASK, redact_url

_MAX_SESSION_LEN = 200


def check_session(session: Any) -> str | None:
    """Return ``session`` if it is a usable session name (or None), else raise.

    A name is 1–200 printable characters; None means an anonymous lease.
    """
    if session is None:
        return None
    if not isinstance(session, str):
        raise TypeError(f"session must be a str or None, not {type(session).__name__} ({reprlib.repr(session)})")
    if not session.strip():
        raise ValueError("session name must not be empty; pass session=None for an anonymous kernel")
    return check_session_name(session)


def check_session_name(session: Any) -> str:
    """Return ``session`` if it is a usable session name, else raise TypeError or ValueError.

    For faces where a session is always named (the magics, the comm): their messages must
    not offer the Python API's ``session=None``.
    """
    if not isinstance(session, str):
        raise TypeError(f"session must be a str, not {type(session).__name__} ({reprlib.repr(session)})")
    if not session.strip():
        raise ValueError("session name must not be empty")
    if len(session) > _MAX_SESSION_LEN:
        raise ValueError(f"session name is {len(session)} characters long; the limit is {_MAX_SESSION_LEN}")
    if not session.isprintable():
        raise ValueError(f"session name {session!r} contains control characters")
    return session


def check_timeout(value: Any, name: str = "timeout") -> float | None:
    """Return ``value`` as a float of seconds (or None for no limit), else raise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__} ({value!r})")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
    return float(value)


def _positive_or_none(name: str, value: Any) -> Any:
    try:
        check_timeout(value, name)
    except (TypeError, ValueError) as exc:
        raise TraitError(str(exc)) from None
    return value


# How a change made to a live pool applies, for the settings' help (%config KernelPool shows it).
_AT_ONCE = "A change applies at once"
_NEXT_CALLS = "A change applies to the calls made after it."
_NEXT_KERNELS = "A change applies to the kernels started after it (sessions keep the kernels they have)."
_SECRETS = frozenset({"gateway_url", "gateway_token", "gateway_headers"})  # shown by _shown()


def _shown(name: str, value: Any) -> Any:
    """A setting's value as a person may see it: secrets redacted."""
    if name == "gateway_url":
        return redact_url(value)
    if name == "gateway_token":
        return MASK if value else value
    if name == "gateway_headers":
        return dict.fromkeys(value, MASK)
    return value


class PoolSettings(LoggingConfigurable):
    """Every setting of a kernel pool; see each trait's help.

    A change to a started pool applies as each setting's help says; one that cannot apply is
    refused with a TraitError that names the setting, why, and what to do. ``%config
    KernelPool`` (and traitlets' help) show the current values with the gateway's token, the
    values of its headers and a password in its URL as ``***``.
    """

    _constructed = False  # True once __init__ has applied config and keyword arguments

    kernel_name = Unicode(
        "python3",
        help="Kernelspec every pooled kernel is started from. " + _NEXT_KERNELS + " For local kernels a "
        "name with no usable kernelspec here is refused when set (a gateway's are checked at its next start).",
    ).tag(config=True)
    max_kernels = Int(
        4, help="Most kernels alive at once (running, idle or starting). " + _AT_ONCE + " (a lower value stops no "
        "running kernel: the pool starts none until it is under the limit)."
    ).tag(config=True)
    min_idle = Int(
        0,
        help="Fresh kernels kept started and ready for instant checkout (0: start lazily). A refill "
        "waits up to 0.5 s for the first cells of kernels just checked out, unless a caller waits for it. "
        + _AT_ONCE + ": a higher value starts kernels, a lower one stops (kills) the fresh ones it no longer needs.",
    ).tag(config=True)
    checkout_timeout = Float(
        60.0, allow_none=True,
        help="Seconds a checkout waits for a free kernel before CheckoutTimeout; None waits forever. " + _NEXT_CALLS,
    ).tag(config=True)
    execution_timeout = Float(
        None, allow_none=True,
        help="Default seconds a cell may run before it is interrupted; None: no limit. " + _NEXT_CALLS,
    ).tag(config=True)
    interrupt_timeout = Float(
        5.0, help="Seconds a timed-out cell has to stop after the interrupt before its kernel is replaced. " + _NEXT_CALLS
    ).tag(config=True)
    startup_timeout = Float(
        60.0, help="Seconds a kernel has to start and answer kernel_info. A change applies to the starts that begin after it."
    ).tag(config=True)
    start_retries = Int(
        2, help="Extra attempts after a kernel fails to start, with back-off, before KernelStartError. " + _AT_ONCE + "."
    ).tag(config=True)
    shutdown_timeout = Float(
        5.0, help="Seconds a kernel has to exit after a shutdown request before it is killed (a kernel nobody "
        "used is killed at once). A change applies to the stops that begin after it."
    ).tag(config=True)
    session_idle_timeout = Float(
        None, allow_none=True,
        help="Seconds a session may stay idle before it is released; None: never. A change applies from each "
        "session's next use.",
    ).tag(config=True)
    evict_idle_sessions = Bool(
        False,
        help="When every kernel is taken and a new session (or anonymous caller) needs one, release the "
        "least recently used idle session that nobody is queued on, instead of waiting for a kernel to "
        "free up. The evicted session's next call raises SessionLost. For services with many short-lived "
        "users; off by default because it discards a session's variables. " + _AT_ONCE + ".",
    ).tag(config=True)
    env = Dict(
        {}, help="Extra environment variables for kernels, on top of this process's environment. " + _NEXT_KERNELS
    ).tag(config=True)
    cwd = Unicode(
        None, allow_none=True, help="Working directory of the kernels; None: this process's. " + _NEXT_KERNELS
    ).tag(config=True)
    max_output_size = Int(
        32_000_000,
        help="Characters of output one cell may produce before the rest is dropped with a marker; "
        "bounds the pool's memory when a cell floods output. 0: no limit. " + _NEXT_CALLS,
    ).tag(config=True)
    start_method = Enum(
        ["auto", "fork", "spawn"],
        "auto",
        help="How local kernels start. 'fork': from a warmed template process of the kernelspec's "
        "interpreter that has imported ipykernel, IPython and `preload` (tens of milliseconds instead of "
        "an interpreter's start; Linux and ipykernel kernelspecs only), raising KernelStartError where "
        "that cannot be done. 'spawn': a new interpreter per kernel, as jupyter_client starts kernels. "
        "'auto': fork where a template can serve the start, spawn otherwise (logging why, once). " + _NEXT_KERNELS,
    ).tag(config=True)
    preload = List(
        Unicode(),
        help="Modules the fork template imports once (e.g. ['numpy', 'pandas']), so that importing them "
        "in a fresh kernel is a dictionary lookup and their memory is shared between kernels. Forked "
        "starts only; a change to them (an upgrade) makes a new template. " + _NEXT_KERNELS,
    ).tag(config=True)
    transport = Enum(
        ["ipc", "tcp"],
        "ipc",
        help="ZeroMQ transport. ipc (a socket per kernel in a private directory) cannot race for ports; "
        "use tcp for kernels that do not support ipc. " + _NEXT_KERNELS,
    ).tag(config=True)

    gateway_url = Unicode(
        help="Base URL of a Jupyter Kernel Gateway or Enterprise Gateway to run the kernels on, e.g. "
        "http://gateway:8888; empty: local kernels. Default: the JUPYTER_GATEWAY_URL environment variable. "
        + _NEXT_KERNELS + " Kernels already running stay where they are (and are deleted there); emptying it "
        "is refused while kernel_name names no local kernelspec. A password in it is never shown.",
    ).tag(config=True)
    gateway_token = Unicode(
        help="The gateway's auth token, sent as 'Authorization: token ...' on every request and on the websocket. "
        "Default: the JUPYTER_GATEWAY_AUTH_TOKEN environment variable. " + _NEXT_KERNELS + " Never shown "
        "(%config shows ***); pool.gateway_token is the value itself.",
    ).tag(config=True)
    gateway_headers = Dict(
        default_value={}, key_trait=Unicode(), value_trait=Unicode(),
        help="Extra HTTP headers for every request to the gateway. " + _NEXT_KERNELS + " Their values are never "
        "shown (%config shows ***).",
    ).tag(config=True)
    gateway_validate_cert = Bool(
        True, help="Verify the gateway's TLS certificate (https gateways). " + _NEXT_KERNELS
    ).tag(config=True)
    gateway_ca_certs = Unicode(
        None, allow_none=True,
        help="A CA bundle (PEM file) to verify the gateway's certificate with; None: the system's. " + _NEXT_KERNELS,
    ).tag(config=True)

    @default("gateway_url")
    def _gateway_url_default(self) -> str:
        return os.environ.get("JUPYTER_GATEWAY_URL", "")

    @default("gateway_token")
    def _gateway_token_default(self) -> str:
        return os.environ.get("JUPYTER_GATEWAY_AUTH_TOKEN", "")

    @validate("gateway_url")
    def _check_gateway_url(self, proposal: Any) -> str:
        url = proposal.value.strip()
        if not url:
            if self._constructed and self.gateway_url:  # back to local kernels: they need a local kernelspec
                self._refuse_unless_local(self.kernel_name, "gateway_url",
                                          "set kernel_name to a local kernelspec first, then empty gateway_url")
            return ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TraitError(
                f"gateway_url must be an http(s) URL with a host, e.g. http://gateway:8888; got {redact_url(url)!r}"
            )
        if parts.query or parts.fragment:
            raise TraitError(
                f"gateway_url must be the gateway's base URL, without a query or fragment; got {redact_url(url)!r}"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError:  # its message may quote a raw password (http://user:pa/ss@host reads "pa" as the port)
            raise TraitError(f"gateway_url has a bad port (a number from 0 to 65535 expected); got {redact_url(url)!r}") from None
        return url

    @default("log")
    def _log_default(self) -> logging.Logger:
        # one named logger for every pool, so an operator configures "jupyter_sessionpool" once
        return logging.getLogger("jupyter_sessionpool")

    @validate("min_idle", "start_retries", "max_output_size")
    def _check_non_negative(self, proposal: Any) -> int:
        if proposal.value < 0:
            raise TraitError(f"{proposal.trait.name} must be 0 or more, got {proposal.value}")
        if proposal.trait.name == "min_idle" and self._constructed:
            self._check_min_idle(proposal.value, self.max_kernels)
        return proposal.value

    @validate("max_kernels")
    def _check_max(self, proposal: Any) -> int:
        if proposal.value < 1:
            raise TraitError(f"max_kernels must be at least 1, got {proposal.value}")
        if self._constructed:
            self._check_min_idle(self.min_idle, proposal.value)
        return proposal.value

    @staticmethod
    def _check_min_idle(min_idle: int, max_kernels: int) -> None:
        # checked once construction is done, so that the order of keyword arguments or config
        # lines does not matter; later changes are checked one at a time
        if min_idle > max_kernels:
            raise TraitError(
                f"min_idle ({min_idle}) cannot exceed max_kernels ({max_kernels}): the pool could never keep "
                "that many kernels ready. Lower min_idle, or raise max_kernels first."
            )

    @validate(
        "checkout_timeout",
        "execution_timeout",
        "interrupt_timeout",
        "startup_timeout",
        "shutdown_timeout",
        "session_idle_timeout",
    )
    def _check_seconds(self, proposal: Any) -> Any:
        return _positive_or_none(proposal.trait.name, proposal.value)

    @validate("preload")
    def _check_preload(self, proposal: Any) -> list[str]:
        bad = [name for name in proposal.value if not all(part.isidentifier() for part in name.split("."))]
        if bad:
            raise TraitError(f"preload must list module names, e.g. ['numpy', 'pandas']; not {', '.join(map(repr, bad))}")
        return proposal.value

    @validate("kernel_name")
    def _check_kernel_name(self, proposal: Any) -> str:
        if not proposal.value:
            raise TraitError("kernel_name must name a kernelspec, e.g. 'python3'")
        if self._constructed and not self.gateway_url:
            self._refuse_unless_local(proposal.value, "kernel_name",
                                      "install it, pick another, or set gateway_url first to use a gateway's")
        return proposal.value

    @staticmethod
    def _refuse_unless_local(kernel_name: str, setting: str, remedy: str) -> None:
        """Refuse a change of ``setting`` that would start local kernels of a kernelspec this machine lacks."""
        from .workers import check_kernelspec

        try:
            check_kernelspec(kernel_name)
        except ValueError as exc:
            raise TraitError(f"{setting} not changed: the pool would start local kernels, and {exc}; {remedy}") from None

    def __init__(self, **kwargs: Any) -> None:
        known = set(self.class_trait_names()) | {"parent", "config", "log"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            settings = ", ".join(sorted(self.class_trait_names(config=True)))
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; the settings are: {settings}")
        super().__init__(**kwargs)
        self._check_min_idle(self.min_idle, self.max_kernels)
        if not self.gateway_url:  # a local kernel_name that cannot start is named now (ValueError), not at a start
            from .workers import check_kernelspec

            check_kernelspec(self.kernel_name)
        self._constructed = True

    @classmethod
    def class_get_trait_help(cls, trait: TraitType[Any, Any], inst: HasTraits | None = None,
                             helptext: str | None = None) -> str:
        """traitlets' help of one setting, as ``%config KernelPool`` prints it: a secret's current value redacted."""
        text = super().class_get_trait_help(trait, inst, helptext)
        if inst is None or trait.name not in _SECRETS:
            return text
        head, _, _current = text.rpartition("\n")  # traitlets ends it with the current value's line
        return f"{head}\n{indent(f'Current: {_shown(trait.name, getattr(inst, trait.name))!r}')}"

    def settings(self) -> dict[str, Any]:
        """The current value of every configurable setting."""
        return {name: getattr(self, name) for name in self.class_trait_names(config=True)}
