"""jupyter_sessionpool: a pool of real Jupyter kernels handed out by session.

Session ``a`` always gets the same kernel, with its state; different sessions run at the
same time. See README.md for the quickstart.
"""

import logging
from typing import Any

from ._version import __version__
from .comms import CommEvent
from .errors import (
    CheckoutTimeout,
    CommNotFound,
    ExecutionError,
    ExecutionTimeout,
    KernelDied,
    KernelStartError,
    PoolClosed,
    PoolError,
    ProtocolError,
    SessionLost,
)
from .results import ExecutionResult
from .pool import AsyncKernelPool, Lease
from .stats import KernelStats, PoolStats, WaitingCheckout
from .sync import KernelPool, SyncLease

__all__ = [
    # pools
    "AsyncKernelPool",
    "KernelPool",
    "Lease",
    "SyncLease",
    # results and snapshots
    "ExecutionResult",
    "PoolStats",
    "KernelStats",
    "WaitingCheckout",
    # widgets and other comms
    "CommEvent",
    # errors
    "PoolError",
    "CheckoutTimeout",
    "ExecutionTimeout",
    "ExecutionError",
    "KernelDied",
    "SessionLost",
    "KernelStartError",
    "PoolClosed",
    "ProtocolError",
    "CommNotFound",
    "__version__",
]

# A library logs; the application decides where it goes. Without this, Python's last-resort
# handler would print the pool's warnings to stderr, which in a notebook is whatever cell runs.
logging.getLogger("jupyter_sessionpool").addHandler(logging.NullHandler())


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the prebuilt extension shipped in this package."""
    return [{"src": "labextension", "dest": "jupyter-sessionpool"}]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """The Jupyter Server extension (the sessions API and MCP), enabled by
    ``--ServerApp.jpserver_extensions="{'jupyter_sessionpool': True}"``."""
    from .server.app import SessionPoolApp

    return [{"module": "jupyter_sessionpool.server", "app": SessionPoolApp}]


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext jupyter_sessionpool``: register ``%pool``/``%%pool``; the pool starts on first use."""
    from .notebook.comm import register as register_comm
    from .notebook.magics import load

    magics = load(ip)
    register_comm(ip, lambda: magics.current_pool)


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext jupyter_sessionpool``: shut the notebook's pool down and remove the magics."""
    from .notebook.magics import unload

    unload(ip)
