"""A scripted fake kernel: speaks the Jupyter protocol over zmq, and misbehaves on cue.

A test double for message-level scenarios a real kernel produces only by chance (in the
spirit of nbclient's ``prepare_cell_mocks`` and httpcore's mock backends). It answers
``kernel_info_request`` and ``shutdown_request`` properly; an ``execute_request``'s code
names the script:

- ``malformed``: a ``stream`` message without its ``name`` (a KeyError for a reader that
  trusts it), then nothing more;
- ``bad-signature``: a message whose HMAC signature is wrong, then nothing more;
- ``burst``: an output, a 10 ms pause, then the reply and the idle together in one burst;
- ``hang``: busy, a ``started`` line, then nothing more until an ``interrupt_request`` on control, after
  which it ends the cell normally (interrupt_mode "message");
- anything else: busy, execute_input, a stream with the code as its text, reply, idle.

With ``JSP_SCRIPTED_IGNORE_SHUTDOWN=1`` in its environment it ignores ``shutdown_request``
(a kernel that never answers one: only a kill ends it).

With ``--no-session`` every message carries an empty ``header.session``, as from a kernel that
gives no identity (a gateway cannot prove it is still the same process after a reconnect).
"""

import itertools
import json
import os
import signal
import sys
import time

import zmq
from jupyter_client.session import Session

connection = json.load(open(sys.argv[sys.argv.index("-f") + 1]))
session = Session(key=connection["key"].encode(), signature_scheme=connection["signature_scheme"],
                  **({"session": ""} if "--no-session" in sys.argv else {}))
ctx = zmq.Context()


def bind(kind: int, port: str) -> zmq.Socket:
    sock = ctx.socket(kind)
    sep = "-" if connection["transport"] == "ipc" else ":"
    sock.bind(f"{connection['transport']}://{connection['ip']}{sep}{connection[port]}")
    return sock


shell = bind(zmq.ROUTER, "shell_port")
control = bind(zmq.ROUTER, "control_port")
iopub = bind(zmq.PUB, "iopub_port")
stdin = bind(zmq.ROUTER, "stdin_port")
hb = bind(zmq.REP, "hb_port")
signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts come as messages (kernelspec says so)
counter = itertools.count(1)
hanging: tuple[list, dict] | None = None
IGNORE_SHUTDOWN = os.environ.get("JSP_SCRIPTED_IGNORE_SHUTDOWN") == "1"


def status(state: str, parent: dict) -> None:
    session.send(iopub, "status", {"execution_state": state}, parent=parent)


def finish(idents: list, parent: dict, count: int) -> None:
    session.send(shell, "execute_reply", {"status": "ok", "execution_count": count,
                                          "user_expressions": {}, "payload": []}, parent=parent, ident=idents)
    status("idle", parent)


def execute(idents: list, msg: dict) -> None:
    global hanging
    code = msg["content"]["code"]
    count = next(counter)
    status("busy", msg)
    if code == "malformed":
        session.send(iopub, "stream", {"text": "no name\n"}, parent=msg)
        return
    if code == "bad-signature":
        frames = session.serialize(session.msg("stream", {"name": "stdout", "text": "x"}, parent=msg))
        frames[frames.index(b"<IDS|MSG>") + 1] = b"0" * 64
        iopub.send_multipart(frames)
        return
    if code == "burst":
        session.send(iopub, "stream", {"name": "stdout", "text": "out\n"}, parent=msg)
        time.sleep(0.01)
        finish(idents, msg, count)
        return
    if code == "hang":
        session.send(iopub, "stream", {"name": "stdout", "text": "started\n"}, parent=msg)
        hanging = (idents, msg)
        return
    session.send(iopub, "execute_input", {"code": code, "execution_count": count}, parent=msg)
    session.send(iopub, "stream", {"name": "stdout", "text": code + "\n"}, parent=msg)
    finish(idents, msg, count)


def answer(sock: zmq.Socket, idents: list, msg: dict) -> None:
    global hanging
    kind = msg["header"]["msg_type"]
    if kind == "kernel_info_request":
        status("busy", msg)
        session.send(sock, "kernel_info_reply", {
            "status": "ok", "protocol_version": "5.3", "implementation": "scripted",
            "implementation_version": "0", "banner": "", "help_links": [],
            "language_info": {"name": "python", "version": "3", "mimetype": "text/x-python",
                              "file_extension": ".py"},
        }, parent=msg, ident=idents)
        status("idle", msg)
    elif kind == "execute_request":
        execute(idents, msg)
    elif kind == "interrupt_request":
        session.send(sock, "interrupt_reply", {"status": "ok"}, parent=msg, ident=idents)
        if hanging is not None:
            (h_idents, h_msg), hanging = hanging, None
            finish(h_idents, h_msg, 0)
    elif kind == "shutdown_request" and not IGNORE_SHUTDOWN:
        session.send(sock, "shutdown_reply", {"status": "ok", "restart": False}, parent=msg, ident=idents)
        os._exit(0)


poller = zmq.Poller()
for sock in (shell, control, hb):
    poller.register(sock, zmq.POLLIN)
while True:
    for sock, _ in poller.poll():
        frames = sock.recv_multipart()
        if sock is hb:
            sock.send_multipart(frames)
            continue
        idents, parts = session.feed_identities(frames)
        answer(sock, idents, session.deserialize(parts))
