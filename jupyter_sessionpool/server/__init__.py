"""The pool as a service: a Jupyter Server extension with an HTTP sessions API and MCP.

``jupyter-sessionpool serve`` starts a server with only this extension;
``jupyter server --ServerApp.jpserver_extensions="{'jupyter_sessionpool': True}"`` adds it to
any Jupyter Server. See README.md, "Run it as a service".

:class:`SessionService` (sessions, directories, clocks) knows nothing of HTTP;
:class:`SessionPoolApp` (the extension) is imported on first use, so that
``jupyter-sessionpool mcp`` (stdio) never loads Jupyter Server.
"""

from typing import Any

from .service import SessionService

__all__ = ["SessionPoolApp", "SessionService"]


def __getattr__(name: str) -> Any:
    if name == "SessionPoolApp":
        from .app import SessionPoolApp

        return SessionPoolApp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
