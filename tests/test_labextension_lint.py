"""The JupyterLab extension's TypeScript passes its linters (prettier, eslint) and strict tsc.

Uses the node_modules that ``pip install`` left in labextension/ (the build hook runs
``jlpm install``), installing them first if they are missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LABEXTENSION = Path(__file__).resolve().parents[1] / "labextension"
JLPM = Path(sys.executable).with_name("jlpm")


def jlpm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``jlpm args`` in labextension/ (package scripts call jlpm again, so it goes on PATH)."""
    env = {**os.environ, "PATH": f"{JLPM.parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(JLPM), *args], cwd=LABEXTENSION, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def node_modules() -> None:
    if not (LABEXTENSION / "node_modules").is_dir():
        done = jlpm("install")
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", ["lint:check", "typecheck"])
def test_typescript_is_clean(node_modules: None, script: str) -> None:
    done = jlpm(script)
    assert done.returncode == 0, f"jlpm {script} failed:\n{done.stdout}\n{done.stderr}"
