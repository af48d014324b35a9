"""Comparing saved widget state (``metadata.widgets``) across runs: the same models, ids aside."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
BINARY_MIMES = frozenset({"image/png", "image/jpeg", "image/svg+xml", "audio/wav", "video/mp4"})  # bytes may differ
_VOLATILE = [
    (re.compile(r"ipykernel_\d+/\d+"), "ipykernel/N"),  # a cell's file in tracebacks
    (re.compile(r"0x[0-9a-f]+"), "0x…"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"), "<logging time>"),
]


def volatile(value: str) -> str:
    """``value`` without what differs between two runs of a cell (temp file names, addresses, log times)."""
    for pattern, replacement in _VOLATILE:
        value = pattern.sub(replacement, value)
    return value


def widget_models(metadata: dict[str, Any] | None, text: Callable[[str], Any] = volatile) -> list[str]:
    """A notebook's saved models as sorted JSON strings, run-specific ids aside.

    ``metadata`` is the notebook's metadata (or None). A reference to another model
    (``IPY_MODEL_<id>``) becomes ``IPY_MODEL_<its model name>``, the data of an image or
    a sound (an Output widget's captured plot) ``<bytes>``; every other string goes through
    ``text`` (which normalises what legitimately differs between runs).
    """
    state = ((metadata or {}).get("widgets") or {}).get(WIDGET_STATE, {}).get("state", {})
    names = {model_id: model["model_name"] for model_id, model in state.items()}

    def plain(value: Any) -> Any:
        if isinstance(value, str):
            if value.startswith("IPY_MODEL_"):
                return "IPY_MODEL_" + names.get(value[len("IPY_MODEL_"):], "<missing>")
            return text(value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: "<bytes>" if k in BINARY_MIMES else plain(v) for k, v in value.items()}
        return value

    return sorted(json.dumps(plain(model), sort_keys=True, default=str) for model in state.values())
