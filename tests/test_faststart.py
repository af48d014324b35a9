"""Spawned pool ipykernels start without loading debugpy, and leave no trace of how.

(Forked kernels have debugpy from their template, imported once for all of them.)
"""

from __future__ import annotations

import os


async def test_kernel_starts_without_debugpy_and_paths_are_as_without_the_pool(make_pool):
    pool = await make_pool(max_kernels=1, start_method="spawn")
    first = await pool.execute("import sys, os\n'debugpy' in sys.modules, os.environ.get('PYTHONPATH')", session="a")
    assert first.result == repr((False, os.environ.get("PYTHONPATH")))
    paths = await pool.execute("any('_faststart' in p for p in sys.path)", session="a")
    assert paths.result == "False"
    real = await pool.execute("import debugpy\ndebugpy.__file__.endswith('debugpy/__init__.py'), hasattr(debugpy, 'listen')", session="a")
    assert real.status == "ok" and real.result == "(True, True)"
    child = await pool.execute(
        "import subprocess\nsubprocess.run([sys.executable, '-c', 'import debugpy'], capture_output=True).returncode",
        session="a",
    )
    assert child.result == "0"  # the kernel's subprocesses import the real debugpy too
