"""The pool as a service: a Jupyter Server extension with an HTTP sessions API and MCP.

``jupyter-sessionpool serve`` starts a server with only this extension;
``jupyter server --ServerApp.jpserver_extensions="{'jupyter_sessionpool': True}"`` adds it to
any Jupyter Server. See README.md, "Run it as a service".
"""

from .app import SessionPoolApp
from .service import SessionService

__all__ = ["SessionPoolApp", "SessionService"]
