"""The Jupyter Server extension, and ``jupyter-sessionpool serve``: a server with only it.

Inside any Jupyter Server (``--ServerApp.jpserver_extensions="{'jupyter_sessionpool': True}"``)
the extension adds the HTTP API under ``/sessionpool/api`` and MCP under ``/sessionpool/mcp``,
behind that server's authentication, TLS, ``base_url`` and logging. Its pool is an
AsyncKernelPool on the server's event loop, configured like any pool
(``c.AsyncKernelPool.max_kernels = 8``, ``--KernelPool.min_idle=2``), and shut down with the
server. Inside someone else's server it starts no kernel until a session asks for one
(``min_idle`` is 0 unless configured).
"""

from __future__ import annotations

import argparse
import logging
import sys

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.serverapp import ServerApp
from traitlets import Bool, Float, Int, Unicode
from traitlets.config import Config

from .handlers import routes
from .service import SessionService, pool_config


class SessionPoolApp(ExtensionApp):
    """The ``jupyter_sessionpool`` server extension: sessions over HTTP and MCP on one kernel pool."""

    name = "jupyter_sessionpool"
    load_other_extensions = True

    root_dir = Unicode(
        None,
        allow_none=True,
        help="Directory holding one working directory per session (created if missing; a session's "
        "directory is removed with it). None: a private temporary directory, removed at shutdown.",
    ).tag(config=True)
    idle_timeout = Float(
        None,
        allow_none=True,
        help="Seconds a session may go without a request before it is released (its next request answers "
        "SessionLost once); a session's own idle_timeout overrides it. None: the pool's "
        "session_idle_timeout, else never.",
    ).tag(config=True)
    max_lifetime = Float(
        None, allow_none=True, help="Seconds a session may live at most, however busy; None: no limit."
    ).tag(config=True)
    max_code_size = Int(1_000_000, help="Characters of code one execute request may carry.").tag(config=True)
    max_upload_size = Int(100 << 20, help="Bytes one uploaded file may have.").tag(config=True)
    mcp = Bool(True, help="Serve MCP (streamable HTTP) at /sessionpool/mcp; needs the 'mcp' extra.").tag(config=True)

    service: SessionService

    def pool_config(self) -> Config:
        """The pool's configuration: the ``AsyncKernelPool`` section, over ``KernelPool`` and ``PoolSettings``."""
        return pool_config(self.config)

    def initialize_settings(self) -> None:
        # the pool logs to the "jupyter_sessionpool" logger: send it where the server's own log goes
        pool_log = logging.getLogger("jupyter_sessionpool")
        server_log = self.serverapp.log if self.serverapp is not None else self.log
        for handler in server_log.handlers:
            if handler not in pool_log.handlers:
                pool_log.addHandler(handler)
        pool_log.setLevel(server_log.getEffectiveLevel())
        pool_log.propagate = False  # once, through the server's handlers
        self.service = SessionService(
            {"config": self.pool_config()},
            root_dir=self.root_dir,
            idle_timeout=self.idle_timeout,
            max_lifetime=self.max_lifetime,
            max_code_size=self.max_code_size,
            max_upload_size=self.max_upload_size,
        )

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes())
        if self.mcp:
            from .mcp import routes as mcp_routes

            self.handlers.extend(mcp_routes())

    async def _start_jupyter_server_extension(self, serverapp: ServerApp) -> None:
        """On the server's loop: start the pool (prewarming ``min_idle`` kernels, none by default)."""
        await self.service.start()
        pool = self.service.pool
        self.log.info(
            "jupyter_sessionpool: sessions at %ssessionpool/api/sessions (kernel %s, max_kernels %d, min_idle %d, "
            "session directories in %s)",
            serverapp.base_url, pool.kernel_name, pool.max_kernels, pool.min_idle, self.service.root,
        )

    async def stop_extension(self) -> None:
        """With the server: release every session and stop every kernel."""
        if self.mcp:
            from .mcp import stop

            await stop(self)
        await self.service.shutdown()


class SessionPoolServer(ServerApp):
    """A Jupyter Server with only the jupyter_sessionpool extension (no JupyterLab, no other extension)."""

    name = "jupyter-sessionpool-serve"
    description = "A Jupyter Server serving only jupyter_sessionpool's sessions API and MCP."

    def init_server_extensions(self) -> None:
        self.jpserver_extensions = {"jupyter_sessionpool": True}
        super().init_server_extensions()

    def start_app(self) -> None:
        super().start_app()
        # the server binds its socket in a loop callback queued before this one: announce once it listens
        self.io_loop.add_callback(self._announce)

    def _announce(self) -> None:
        url = self.connection_url.rstrip("/")
        token = self.identity_provider.token
        print(f"jupyter-sessionpool serve: sessions API at {url}/sessionpool/api/sessions", flush=True)
        print(f"jupyter-sessionpool serve: MCP (streamable HTTP) at {url}/sessionpool/mcp", flush=True)
        print(f"jupyter-sessionpool serve: token {token}" if token else "jupyter-sessionpool serve: no token", flush=True)


# The options of `serve` and the traits they set; anything else goes as --Class.trait=value.
SERVE_OPTIONS = {
    "port": ("ServerApp.port", 8900),
    "ip": ("ServerApp.ip", "127.0.0.1"),
    "token": ("IdentityProvider.token", None),
    "max_kernels": ("AsyncKernelPool.max_kernels", 8),
    "min_idle": ("AsyncKernelPool.min_idle", 2),
    "gateway_url": ("AsyncKernelPool.gateway_url", None),
    "root_dir": ("SessionPoolApp.root_dir", None),
}


def serve(args: argparse.Namespace, extra: list[str]) -> int:
    """Run ``jupyter-sessionpool serve`` until Ctrl-C (or SIGTERM); returns the exit status.

    The command's own options go on the server's command line, so they beat config files;
    their defaults go in as base config, which config files may change. ``extra`` are
    ``--Class.trait=value`` settings (``--AsyncKernelPool.startup_timeout=30``,
    ``--SessionPoolApp.idle_timeout=600``, ``--ServerApp.certfile=...``).
    """
    bad = [arg for arg in extra if not (arg.startswith("--") and "." in arg.split("=", 1)[0])]
    if bad:
        print(f"jupyter-sessionpool serve: error: unrecognised argument(s) {' '.join(bad)}; settings are given "
              "as --Class.trait=value, e.g. --AsyncKernelPool.startup_timeout=30", file=sys.stderr)
        return 2
    config = Config()
    config.ServerApp.port_retries = 0  # a service listens where it is told, or says why not
    config.ServerApp.open_browser = False
    config.ServerApp.allow_root = True  # no browser is opened; containers commonly run as root
    argv = []
    for option, (trait, default) in SERVE_OPTIONS.items():
        section, name = trait.split(".")
        value = getattr(args, option)
        if value is not None:
            argv.append(f"--{trait}={value}")
        elif default is not None:
            config[section][name] = default
    app = SessionPoolServer.instance(config=config)
    app.initialize(argv=argv + extra, find_extensions=False, starter_extension="jupyter_sessionpool")
    app.start()
    return 0

