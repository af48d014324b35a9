"""The examples a new user runs first keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_demo_runs_four_sessions_at_once():
    out = subprocess.run([sys.executable, EXAMPLES / "demo.py"], capture_output=True, text=True, timeout=120, check=True)
    assert all(f"{name} ran on pid" in out.stdout for name in ("alice", "bob", "carol", "dave"))
    wall = float(out.stdout.split("wall ")[1].split(" s")[0])
    assert wall < 2.5, f"the four one-second cells were serialised: {wall} s"

