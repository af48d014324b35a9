"""A real `jupyter-sessionpool serve` for the service tests: started as a subprocess on 127.0.0.1.

The server runs with private Jupyter paths (HOME, config, data, runtime) under a temporary
directory and this suite's test kernelspecs (``echo``, ``scripted``, ...) on its JUPYTER_PATH.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from gatewaykit import free_port

TEST_KERNELS = Path(__file__).parent / "kernels"


def write_test_kernelspecs(share: Path) -> None:
    for spec in TEST_KERNELS.glob("*.json"):
        target = share / "kernels" / spec.stem
        target.mkdir(parents=True, exist_ok=True)
        text = spec.read_text().replace("{python}", sys.executable).replace("{here}", str(TEST_KERNELS))
        (target / "kernel.json").write_text(text)


class Service:
    """One `jupyter-sessionpool serve` process: its URL, token, session root; start and stop."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.base}/sessionpool/api/sessions"
        self.root = workdir / "sessions"
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"serve-{self.port}.log"
        self.banner: list[str] = []

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def env(self) -> dict[str, str]:
        home = self.workdir / "home"
        share = self.workdir / "share"
        write_test_kernelspecs(share)
        return {
            **os.environ,
            "HOME": str(home),
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTER_PATH": str(share),
        }

    def command(self) -> list[str]:
        return [sys.executable, "-m", "jupyter_sessionpool", "serve", "--port", str(self.port), "--token", self.token,
                "--root-dir", str(self.root), *self.args]  # fmt: skip

    def start(self) -> Service:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log, env=self.env(),
                                         cwd=self.workdir, text=True)  # fmt: skip
        # the command prints where it listens and the token once it listens: that line is the event
        while not any(line.startswith("jupyter-sessionpool serve: token") for line in self.banner):
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"serve exited ({self.proc.wait()}):\n{self.log_tail()}")
            self.banner.append(line.rstrip("\n"))
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM (the server shuts the pool down) and wait; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        return self.proc.returncode


def ndjson(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines if line.strip()]


class JupyterServer(Service):
    """`jupyter server` or `jupyter lab` with the extension enabled by the documented flag."""

    def __init__(self, workdir: Path, app: str, *args: str) -> None:
        super().__init__(workdir, *args)
        self.app = app

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.app, "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                "--ServerApp.jpserver_extensions={'jupyter_sessionpool': True}",
                f"--SessionPoolApp.root_dir={self.root}", *self.args]  # fmt: skip

    def start(self, timeout: float = 60) -> JupyterServer:
        import time
        import urllib.error
        import urllib.request

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                         cwd=self.workdir, text=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:  # a server started by another command prints no line of ours: poll its API
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.app} exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                request = urllib.request.Request(self.api, headers=self.headers)
                with urllib.request.urlopen(request, timeout=5):
                    return self
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.app} not answering after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return None if self.proc is None else self.proc.returncode
