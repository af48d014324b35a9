"""A lean echo kernel for tests that need hundreds of kernels: zmq and the standard library only.

Speaks just enough of the Jupyter protocol for a pool: ``kernel_info_request``,
``execute_request`` (busy, execute_input, a stream with the code as its text, reply, idle),
``interrupt_request`` and ``shutdown_request``. About a tenth of an ipykernel's memory and
start-up CPU, so 200 of them fit a small machine.
"""

import datetime
import hashlib
import hmac
import itertools
import json
import os
import sys
import uuid

import zmq

connection = json.load(open(sys.argv[sys.argv.index("-f") + 1]))
key = connection["key"].encode()
ctx = zmq.Context()
counter = itertools.count(1)
session_id = uuid.uuid4().hex


def bind(kind, port):
    sock = ctx.socket(kind)
    sep = "-" if connection["transport"] == "ipc" else ":"
    sock.bind(f"{connection['transport']}://{connection['ip']}{sep}{connection[port]}")
    return sock


shell, control, iopub, hb = (bind(zmq.ROUTER, "shell_port"), bind(zmq.ROUTER, "control_port"),
                             bind(zmq.PUB, "iopub_port"), bind(zmq.REP, "hb_port"))
stdin = bind(zmq.ROUTER, "stdin_port")


def send(sock, msg_type, content, parent, idents=()):
    header = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": session_id, "username": "echo",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "version": "5.3"}
    parts = [json.dumps(p).encode() for p in (header, parent["header"], {}, content)]
    signature = hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest().encode() if key else b""
    sock.send_multipart([*idents, b"<IDS|MSG>", signature, *parts])


def status(state, parent):
    send(iopub, "status", {"execution_state": state}, parent)


def answer(sock, idents, msg):
    kind = msg["header"]["msg_type"]
    if kind == "kernel_info_request":
        status("busy", msg)
        send(sock, "kernel_info_reply", {
            "status": "ok", "protocol_version": "5.3", "implementation": "echo", "implementation_version": "0",
            "banner": "", "help_links": [],
            "language_info": {"name": "python", "version": "3", "mimetype": "text/x-python", "file_extension": ".py"},
        }, msg, idents)
        status("idle", msg)
    elif kind == "execute_request":
        count, code = next(counter), msg["content"]["code"]
        status("busy", msg)
        send(iopub, "execute_input", {"code": code, "execution_count": count}, msg)
        send(iopub, "stream", {"name": "stdout", "text": code + "\n"}, msg)
        send(sock, "execute_reply", {"status": "ok", "execution_count": count, "user_expressions": {}, "payload": []},
             msg, idents)
        status("idle", msg)
    elif kind == "interrupt_request":
        send(sock, "interrupt_reply", {"status": "ok"}, msg, idents)
    elif kind == "shutdown_request":
        send(sock, "shutdown_reply", {"status": "ok", "restart": False}, msg, idents)
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
        split = frames.index(b"<IDS|MSG>")
        header, parent, metadata, content = (json.loads(f) for f in frames[split + 2:split + 6])
        answer(sock, frames[:split], {"header": header, "parent_header": parent, "metadata": metadata, "content": content})
