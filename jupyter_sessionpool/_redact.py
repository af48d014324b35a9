"""Credentials kept out of everything the pool shows people: errors, log lines, reprs, settings.

Two pure functions, so any face (the gateway worker, ``%config``, the widget) redacts the
same way: :func:`redact_url` for a URL that may carry ``user:password@``, and :func:`redact`
for text that may quote a known secret (a gateway's answer echoing a token).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# The user info is taken to be everything between "//" and the last "@": a password with a raw
# "@", ":" or "/" in it is still hidden whole (at worst an "@" in a path hides more than it must).
_USERINFO = re.compile(r"(?<=//)[^\s]*@")


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: ``http://user:pass@gw:8888`` -> ``http://user:***@gw:8888``.

    A user name alone (``http://TOKEN@gw``, a token passed as the user) is hidden whole. A URL
    without credentials (or a string that is no URL) comes back unchanged.
    """

    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match.group(0)[:-1].partition(":")
        return f"{user}:{MASK}@" if colon else f"{MASK}@"

    return _USERINFO.sub(hide, url, count=1)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each (non-empty) secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text
