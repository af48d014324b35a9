"""Route a remote cell's outputs into the local cell that started it.

The pool calls ``on_output`` on its own thread, and for a background cell it keeps calling
it after the starting cell has finished, while later cells run. ipykernel attributes output
to whichever request is current where it is published, so :func:`route_to_current_cell`
captures the starting cell's parent header up front (on the kernel's main thread, while that
cell runs) and every output is published on IOPub with that explicit parent. The front end
then puts it in the starting cell, never in a later one. ``transient.display_id`` is kept,
so ``update_display`` from the remote kernel updates the right output.

Outside a kernel (terminal IPython, an in-process ``InteractiveShell``) there is one output
area: streams are written to ``sys.stdout``/``sys.stderr`` and rich data goes through the
shell's display publisher.
"""

from __future__ import annotations

import sys
from typing import Any

from ..results import OutputCallback


def in_kernel(shell: Any) -> bool:
    """True if ``shell`` runs inside an ipykernel (it has a kernel with a messaging session)."""
    return getattr(getattr(shell, "kernel", None), "session", None) is not None


def route_to_current_cell(shell: Any) -> OutputCallback:
    """An ``on_output`` callback that sends every output to the cell running now.

    Call it on the kernel's main thread while the cell runs; the callback it returns may
    then be called from any thread, for as long as the remote cell produces output.
    """
    if in_kernel(shell):
        kernel = shell.kernel
        return _ToIOPub(kernel.session, kernel.iopub_socket, kernel.get_parent("shell"), shell.displayhook.prompt_count)
    return _ToShell(shell)


class _ToIOPub:
    """Publishes outputs on the kernel's IOPub socket with a fixed parent header.

    ipykernel's IOPub socket hands every send to its IO thread, so this is safe from the
    pool's thread.
    """

    def __init__(self, session: Any, iopub: Any, parent: dict[str, Any], execution_count: int) -> None:
        self._session = session
        self._iopub = iopub
        self._parent = parent
        self._execution_count = execution_count

    def __call__(self, out: dict[str, Any]) -> None:
        kind = out["output_type"]
        if kind == "stream":
            content: dict[str, Any] = {"name": out["name"], "text": out["text"]}
        elif kind == "error":
            content = {"ename": out["ename"], "evalue": out["evalue"], "traceback": out["traceback"]}
        elif kind == "clear_output":
            content = {"wait": out["wait"]}
        else:  # display_data, execute_result, update_display_data
            content = {"data": out["data"], "metadata": out.get("metadata", {}), "transient": out.get("transient", {})}
            if kind == "execute_result":
                # the local cell's count: the output belongs to this cell, not to the remote history
                content["execution_count"] = self._execution_count
        self._session.send(self._iopub, kind, content, parent=self._parent)


class _ToShell:
    """Prints streams and displays rich data through a kernel-less IPython shell."""

    def __init__(self, shell: Any) -> None:
        self._shell = shell

    def __call__(self, out: dict[str, Any]) -> None:
        kind = out["output_type"]
        publisher = self._shell.display_pub  # looked up per call: capture_output() swaps it
        if kind == "stream":
            stream = sys.stderr if out["name"] == "stderr" else sys.stdout
            stream.write(out["text"])
            stream.flush()
        elif kind == "error":
            sys.stderr.write("\n".join(out["traceback"]) + "\n")
            sys.stderr.flush()
        elif kind == "clear_output":
            publisher.clear_output(wait=out["wait"])
        else:
            publisher.publish(
                data=out["data"],
                metadata=out.get("metadata", {}),
                transient=out.get("transient"),
                update=kind == "update_display_data",
            )
