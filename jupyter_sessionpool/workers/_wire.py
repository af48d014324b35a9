"""The gateway websocket's two wire formats, decoded into checked Jupyter messages.

``v1.kernel.websocket.jupyter.org`` (binary: uint64 LE offsets, the channel, the four JSON
parts, then buffers), which Kernel Gateway 3 and Enterprise Gateway 3 both offer, and the
legacy JSON text frames (binary, with uint32 BE offsets, when a message has buffers). A
frame is checked whole as it is decoded: one that is no well-formed message raises
:class:`MalformedFrame`, naming what is wrong and, where its parent header is readable, the
request it answers, so that request alone can fail.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from jupyter_client.jsonutil import json_default

from .base import Message

_CHANNELS = frozenset({"shell", "control", "iopub", "stdin"})


class MalformedFrame(ValueError):
    """A websocket frame that is no well-formed Jupyter message; ``parent`` is the msg_id it answers, if readable."""

    def __init__(self, problem: str, parent: str | None = None) -> None:
        super().__init__(problem)
        self.parent = parent


def encode_v1(channel: str, msg: Message) -> bytes:
    """A message as one ``v1.kernel.websocket.jupyter.org`` frame (uint64 LE offsets, channel, 4 JSON parts, buffers)."""
    parts = [channel.encode()] + [
        json.dumps(msg[key], default=json_default).encode() for key in ("header", "parent_header", "metadata", "content")
    ] + [bytes(buffer) for buffer in msg.get("buffers") or ()]
    offsets = [8 * (len(parts) + 2)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + b"".join(parts)


def encode_json(channel: str, msg: Message) -> str | bytes:
    """A message as a legacy frame: JSON text, or binary (uint32 BE offsets) when it has buffers."""
    buffers = [bytes(buffer) for buffer in msg.get("buffers") or ()]
    text = json.dumps({**{k: v for k, v in msg.items() if k != "buffers"}, "channel": channel}, default=json_default)
    if not buffers:
        return text
    parts = [text.encode(), *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts)


def decode_v1(frame: bytes) -> tuple[str, Message]:
    """The (channel, message) in a v1 frame; binary buffers land in ``buffers``. Raises MalformedFrame."""
    try:
        (count,) = struct.unpack_from("<Q", frame)
        if count < 6 or 8 * (count + 1) > len(frame):  # channel + 4 JSON parts need 6 offsets
            raise MalformedFrame(f"a v1 frame of {len(frame)} bytes cannot hold {count} offsets")
        offsets = struct.unpack_from(f"<{count}Q", frame, 8)
    except struct.error as exc:
        raise MalformedFrame(f"a v1 frame too short for its offsets ({exc})") from None
    if offsets[0] != 8 * (count + 1) or offsets[-1] > len(frame) or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise MalformedFrame(f"a v1 frame of {len(frame)} bytes with bad offsets {list(offsets[:8])}")
    parts = [frame[a:b] for a, b in zip(offsets, offsets[1:])]
    try:
        channel: Any = parts[0].decode()
    except UnicodeDecodeError:
        channel = parts[0]
    return _message(channel, [_json(part) for part in parts[1:5]], parts[5:])


def decode_json(frame: str | bytes) -> tuple[str, Message]:
    """The (channel, message) in a legacy frame: JSON text, or binary with uint32 BE offsets and buffers."""
    buffers: list[bytes] = []
    if isinstance(frame, bytes):
        try:
            (count,) = struct.unpack_from("!I", frame)
            offsets = [*struct.unpack_from(f"!{count}I", frame, 4), len(frame)]
        except struct.error as exc:
            raise MalformedFrame(f"a binary frame too short for its offsets ({exc})") from None
        if any(b < a for a, b in zip(offsets, offsets[1:])):
            raise MalformedFrame(f"a binary frame of {len(frame)} bytes with bad offsets {offsets[:8]}")
        frame, *buffers = (frame[a:b] for a, b in zip(offsets, offsets[1:]))
    raw = _json(frame)
    if not isinstance(raw, dict):
        raise MalformedFrame(f"a frame that is no JSON object ({raw if isinstance(raw, ValueError) else type(raw).__name__})")
    parts = [raw.get("header"), *({} if raw.get(key) is None else raw[key] for key in ("parent_header", "metadata")),
             raw.get("content")]
    return _message(raw.get("channel"), parts, buffers)


def _json(part: str | bytes) -> Any:
    """A JSON part decoded (an empty part is ``{}``), or the ValueError that decoding it raised."""
    try:
        return json.loads(part) if part else {}
    except ValueError as exc:  # UnicodeDecodeError included
        return exc


def _message(channel: Any, parts: list[Any], buffers: list[bytes]) -> tuple[str, Message]:
    """The (channel, message) from its decoded header, parent_header, metadata and content, or MalformedFrame
    naming every problem and, when the parent header is readable, the request the message answers."""
    header, parent, metadata, content = parts
    parent_id = parent.get("msg_id") if isinstance(parent, dict) else None
    problems = [] if channel in _CHANNELS else [f"unknown channel {channel!r}"]
    for name, value in zip(("header", "parent_header", "metadata", "content"), parts):
        if isinstance(value, ValueError):
            problems.append(f"its {name} is not JSON ({value})")
        elif not isinstance(value, dict):
            problems.append(f"its {name} is {type(value).__name__}, not an object")
    if isinstance(header, dict) and not (isinstance(header.get("msg_id"), str) and isinstance(header.get("msg_type"), str)):
        problems.append("its header has no msg_id or msg_type")
    if problems:
        raise MalformedFrame("; ".join(problems), parent_id if isinstance(parent_id, str) and parent_id else None)
    return channel, {
        "header": header,
        "parent_header": parent,
        "metadata": metadata,
        "content": content,
        "buffers": buffers,
        "msg_id": header["msg_id"],
        "msg_type": header["msg_type"],
    }
