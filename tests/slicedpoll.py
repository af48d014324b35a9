"""jupyter_client's asyncio ``get_msg``, made to wait in one-second slices, for the front ends the suite runs.

The suite runs nbclient and papermill: directly, as references, and as the front end of
notebooks with ``%%pool`` cells. Both wait on jupyter_client's asyncio channels, and on a busy
machine a wait without a timeout now and then missed a message that had arrived:
``AsyncZMQSocketChannel.get_msg(timeout=None)`` polls the socket once, and that poll missed it
(nbclient#312 is the same hang; papermill's run of Output.ipynb hung so in 16 of 16 runs with
both cores busy). Each slice polls the socket afresh, so the runs end (5 of 5). Only the wait
for a message that has arrived changes: one that a kernel, a magic or the pool never sent still
fails its test. The pool's own workers never call ``get_msg``.
"""

from __future__ import annotations

from pathlib import Path
from queue import Empty

from jupyter_client.channels import AsyncZMQSocketChannel

_get_msg = AsyncZMQSocketChannel.get_msg


async def _get_msg_in_slices(self: AsyncZMQSocketChannel, timeout: float | None = None) -> dict:
    while timeout is None:  # a wait for good, in slices: each asks the socket again
        try:
            return await _get_msg(self, 1.0)
        except Empty:
            continue
    return await _get_msg(self, timeout)


# Put first in a ``python -c`` script, it makes the script's process wait so too.
PRELUDE = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import slicedpoll; slicedpoll.install()"


def install() -> None:
    """Make every asyncio channel of this process wait in slices (idempotent)."""
    AsyncZMQSocketChannel.get_msg = _get_msg_in_slices
