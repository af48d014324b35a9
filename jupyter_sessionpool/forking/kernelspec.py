"""Writing a kernelspec whose kernels the ``sessionpool-fork`` provisioner starts.

``jupyter-sessionpool kernelspec install --name NAME`` calls :func:`install_kernelspec`. The
kernelspec is ipykernel's own (``ipykernel install`` writes the same argv, logos and
metadata) plus ``metadata.kernel_provisioner``, so JupyterLab, Notebook 7, nbclient,
papermill and nbconvert start its kernels by forking, and spawn them as usual wherever
forking is not possible.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROVISIONER_NAME = "sessionpool-fork"


def install_kernelspec(
    name: str,
    display_name: str | None = None,
    preload: Sequence[str] = (),
    user: bool = False,
    prefix: str | None = None,
) -> str:
    """Install the kernelspec ``name`` for this interpreter, forked by ``sessionpool-fork``; returns its directory.

    ``preload`` names the modules its template imports once. ``user`` installs for this
    user only, ``prefix`` under that prefix (e.g. ``sys.prefix``); neither: system-wide.
    Raises ValueError for a bad name or module name, OSError where the directory cannot be written.
    """
    from ipykernel.kernelspec import get_kernel_dict, write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager, _is_valid_kernel_name

    if not _is_valid_kernel_name(name):
        raise ValueError(f"{name!r} is not a kernelspec name: use letters, digits, '.', '_' and '-'")
    bad = [m for m in preload if not all(part.isidentifier() for part in m.split("."))]
    if bad:
        raise ValueError(f"not module names: {', '.join(map(repr, bad))}")
    metadata = get_kernel_dict()["metadata"]
    metadata["kernel_provisioner"] = {"provisioner_name": PROVISIONER_NAME, "config": {"preload": list(preload)}}
    overrides = {"display_name": display_name or name, "metadata": metadata}
    # The argv `ipykernel install` writes: debugpy wants frozen modules off (-Xfrozen_modules=off on CPython 3.11+)
    python_arguments = ["-Xfrozen_modules=off"] if sys.implementation.name == "cpython" else None
    with tempfile.TemporaryDirectory() as scratch:
        source = write_kernel_spec(Path(scratch) / name, overrides=overrides, python_arguments=python_arguments)
        return KernelSpecManager().install_kernel_spec(source, kernel_name=name, user=user, prefix=prefix)
