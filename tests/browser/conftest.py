"""Browser fixtures: a real ``jupyter lab`` and a real ``jupyter notebook`` (Notebook 7) on
127.0.0.1, each started once per test run when a test first needs it, and a fresh
headless-Chromium page per test.

Tests run in both frontends through the ``server`` fixture (parametrized "lab" and
"notebook"); a test for one frontend only says so with
``@pytest.mark.parametrize("server", ["lab"], indirect=True)``.

Each server gets a clean, isolated config (settings, workspaces, runtime in a scratch dir,
no news or update checks), and exposes ``window.jupyterapp`` so tests can drive the app
through its own commands. After each test, every kernel the test started is shut down
through the REST API, so tests never see each other's notebooks or kernels. On failure,
a screenshot and the server log's tail land in ``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT = 90.0


class JupyterServer:
    """A ``jupyter lab`` or ``jupyter notebook`` subprocess (``app``) and where it logs."""

    def __init__(self, app: str, root: Path, home: Path) -> None:
        self.app = app
        self.root = root
        self.log_path = home / f"{app}.log"
        self.ipython_dir = home / "ipython"
        self.prefix = home / "prefix"  # kernelspecs a test installs with prefix=server.prefix are the server's
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = home / "settings"
        (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
        (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false"})
        )
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "IPYTHONDIR": str(self.ipython_dir),  # kernels get a profile of their own, never ~/.ipython
            "JUPYTER_PATH": os.pathsep.join(filter(None, [str(self.prefix / "share" / "jupyter"),
                                                          os.environ.get("JUPYTER_PATH")])),
        }
        command = [
            str(Path(sys.executable).with_name(f"jupyter-{app}")),
            "--no-browser",
            "--allow-root",
            "--IdentityProvider.token=",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            f"--ServerApp.root_dir={root}",
            "--expose-app-in-browser",
            "--ServerApp.disable_check_xsrf=True",  # lets the fixture DELETE kernels over REST
        ]
        if app == "lab":
            command += ["--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=root)

    def wait_ready(self) -> None:
        """Block until ``/api/status`` answers; fail with the log if the server exits first."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter {self.app} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)  # polling a port that has no event to wait on
        raise TimeoutError(f"jupyter {self.app} did not answer within {START_TIMEOUT} s:\n{self.log_tail()}")

    def api(self, method: str, path: str) -> object:
        """One REST call; the decoded JSON answer, or None for an empty one."""
        request = urllib.request.Request(f"{self.url}{path}", method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Shut down every session and kernel (gracefully: the pools inside them stop too)."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")
        for kernel in self.api("GET", "/api/kernels"):
            self.api("DELETE", f"/api/kernels/{kernel['id']}")

    def log_tail(self, lines: int = 60) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM (jupyter_server then shuts its kernels down), SIGKILL after 30 s."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """Remember each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's root_dir: tests write their notebooks here."""
    return tmp_path_factory.mktemp("lab-root")


def _serve(app: str, root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    server = JupyterServer(app, root, tmp_path_factory.mktemp(f"{app}-home"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def lab_server(lab_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    """A running ``jupyter lab`` with a clean, isolated config; stopped at the end of the run."""
    yield from _serve("lab", lab_root, tmp_path_factory)


@pytest.fixture(scope="session")
def notebook_server(lab_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    """A running ``jupyter notebook`` (Notebook 7), like ``lab_server``."""
    yield from _serve("notebook", lab_root, tmp_path_factory)


@pytest.fixture(params=["lab", "notebook"])
def server(request: pytest.FixtureRequest) -> JupyterServer:
    """The server of the frontend this test runs in: JupyterLab, then Notebook 7."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, driven by Playwright; closed at the end of the run."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, server: JupyterServer, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh page (own context) for one test; artifacts on failure; kernels shut down after."""
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            name = request.node.name.replace("/", "_")
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
            (ARTIFACTS / f"{name}.server.log").write_text(server.log_tail(200))
        context.close()
        server.shutdown_kernels()


# Errors a frontend logs by itself, with no extension of ours: Notebook 7.6.5's shortcut
# plugin throws this on every notebook page (seen with jupyter-sessionpool disabled through
# labconfig/page_config.json). Only these exact texts are ignored, only in that frontend.
UPSTREAM_ERRORS = {
    "notebook": {"uncaught: Cannot read properties of undefined (reading 'schema')"},
}


@pytest.fixture
def console_errors(page: Page, server: JupyterServer) -> list[str]:
    """Console errors and uncaught page errors seen by ``page`` during the test, but for the
    frontend's own ``UPSTREAM_ERRORS``."""
    errors: list[str] = []
    upstream = UPSTREAM_ERRORS.get(server.app, set())

    def record(text: str) -> None:
        if text not in upstream:
            errors.append(text)

    page.on("console", lambda message: record(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: record(f"uncaught: {error}"))
    return errors
