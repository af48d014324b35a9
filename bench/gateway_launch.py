"""Start ``jupyter kernelgateway`` with the given options; ``--nodelay`` first sets TCP_NODELAY on websockets.

jupyter_server's kernel websocket handler never calls ``set_nodelay(True)``, so on a stock
gateway every small reply frame waits for Nagle's algorithm and the client's delayed ACK
(~40 ms per round trip). The patch sets the option on each stream tornado detaches for a
websocket, which is all a fix upstream would do. Used by ``_common.kernel_gateway``.
"""

from __future__ import annotations

import sys

from tornado.iostream import IOStream
from tornado.websocket import WebSocketHandler


def patch_nodelay() -> None:
    """Make every accepted websocket stream TCP_NODELAY."""
    detach = WebSocketHandler._detach_stream

    def detach_nodelay(self: WebSocketHandler) -> IOStream:
        stream = detach(self)
        stream.set_nodelay(True)
        return stream

    WebSocketHandler._detach_stream = detach_nodelay


if __name__ == "__main__":
    if "--nodelay" in sys.argv:
        sys.argv.remove("--nodelay")
        patch_nodelay()
    from kernel_gateway.gatewayapp import launch_instance

    launch_instance()
