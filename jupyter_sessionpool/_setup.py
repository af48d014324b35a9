"""The hidden cell that moves a prewarmed Python kernel into its caller's directory and environment.

A prewarmed kernel is started before anyone knows which session (or notebook) it will
serve, so it cannot be started in that session's directory or with its environment. For
Python kernels both are applied after the handover by one cell run with
``store_history=False``: it leaves nothing in ``In``/``_i`` and does not count as an
execution. Kernels of other languages get no such cell; their callers start them where
they belong instead (see the batch runner and the service).
"""

from __future__ import annotations

from collections.abc import Mapping


def python_setup_code(cwd: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The source of the hidden set-up cell: ``os.chdir(cwd)`` and ``os.environ.update(env)``."""
    parts = []
    if cwd is not None:
        parts.append(f"__import__('os').chdir({str(cwd)!r})")
    if env:
        parts.append(f"__import__('os').environ.update({dict(env)!r})")
    return "; ".join(parts)
