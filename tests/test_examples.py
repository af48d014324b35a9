"""The examples a new user runs first keep working."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_demo_runs_four_sessions_at_once():
    out = subprocess.run([sys.executable, EXAMPLES / "demo.py"], capture_output=True, text=True, timeout=120, check=True)
    assert all(f"{name} ran on pid" in out.stdout for name in ("alice", "bob", "carol", "dave"))
    wall = float(out.stdout.split("wall ")[1].split(" s")[0])
    assert wall < 2.5, f"the four one-second cells were serialised: {wall} s"


def test_service_keeps_state_per_connection_and_releases_on_disconnect():
    proc = subprocess.Popen(
        [sys.executable, EXAMPLES / "service.py", "--port", "0", "--max-kernels", "2"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])

        def ask(conn: socket.socket, code: str) -> dict:
            conn.sendall(code.encode() + b"\n")
            return json.loads(conn.makefile().readline())

        with socket.create_connection(("127.0.0.1", port)) as a, socket.create_connection(("127.0.0.1", port)) as b:
            assert ask(a, "x = 41")["status"] == "ok"
            assert ask(a, "x + 1")["result"] == "42"
            assert ask(b, "x")["error"]["ename"] == "NameError", "each connection is its own session"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0
