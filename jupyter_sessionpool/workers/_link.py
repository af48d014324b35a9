"""The gateway worker's connection to its kernel, as a small state machine (no I/O here).

A kernel on a gateway is reached through one websocket, which can drop and be reopened
while the gateway restarts the kernel under the same id with empty state. So a socket that
opens is not yet trusted: the kernel behind it must first prove it is the same *process*
(its ``kernel_info`` reply carries the ``header.session`` that process picked at start), and
until then nothing of the pool's is sent to it. States of a :class:`Link`::

    CONNECTING --opened--> VERIFYING --verified--> OPEN
    OPEN --dropped--> RECONNECTING --opened--> VERIFYING
    VERIFYING --dropped--> RECONNECTING
    CONNECTING/VERIFYING/OPEN/RECONNECTING --lost--> LOST      (final)

Requests made while the link is not OPEN are held, in order, and handed back by
:meth:`Link.verified` to be sent then, or by :meth:`Link.lost` to be dropped. Each method
is a transition named for its event; one that does not apply in the current state changes
nothing and returns False (an event that arrives late, e.g. a socket closing after the
kernel was given up).
"""

from __future__ import annotations

import enum
from typing import Any


class LinkState(str, enum.Enum):
    """Where a gateway worker's connection is."""

    CONNECTING = "connecting"  # the first websocket is being opened (the kernel is starting)
    VERIFYING = "verifying"  # a websocket is open; kernel_info must prove it reaches the same kernel process
    OPEN = "open"  # proven: requests go out at once
    RECONNECTING = "reconnecting"  # the websocket closed; the gateway is asked and the socket reopened
    LOST = "lost"  # the kernel is gone, restarted, or could not prove who it is; final


class Link:
    """One kernel's connection state and the requests held while it is not OPEN."""

    def __init__(self) -> None:
        self.state = LinkState.CONNECTING
        self.held: list[Any] = []

    @property
    def open(self) -> bool:
        """True when requests may be sent at once."""
        return self.state is LinkState.OPEN

    def hold(self, item: Any) -> None:
        """Keep a request made while not OPEN, to be sent after the next verification."""
        self.held.append(item)

    def opened(self) -> bool:
        """A websocket opened: CONNECTING/RECONNECTING -> VERIFYING."""
        return self._move((LinkState.CONNECTING, LinkState.RECONNECTING), LinkState.VERIFYING)

    def verified(self) -> list[Any]:
        """The kernel proved it is the same process: VERIFYING -> OPEN; returns the held requests to send."""
        if not self._move((LinkState.VERIFYING,), LinkState.OPEN):
            return []
        held, self.held = self.held, []
        return held

    def dropped(self) -> bool:
        """The websocket closed: OPEN/VERIFYING -> RECONNECTING."""
        return self._move((LinkState.OPEN, LinkState.VERIFYING), LinkState.RECONNECTING)

    def lost(self) -> list[Any]:
        """The kernel is gone or unproven: any state -> LOST; returns the held requests, never to be sent."""
        if self.state is LinkState.LOST:
            return []
        self.state = LinkState.LOST
        held, self.held = self.held, []
        return held

    def _move(self, sources: tuple[LinkState, ...], target: LinkState) -> bool:
        if self.state not in sources:
            return False
        self.state = target
        return True

    def __repr__(self) -> str:
        return f"<Link {self.state.value} held={len(self.held)}>"
