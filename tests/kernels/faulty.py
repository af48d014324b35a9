"""A kernel whose start-up fault is chosen by $JSP_FAULT, so one live pool can meet each in turn.

- unset or empty: a normal ipykernel;
- ``exit``: exits at once with status 0, saying nothing;
- ``garbage``: writes binary junk (invalid UTF-8, NULs, terminal escapes, fake JSON) to
  stdout, then never answers;
- ``noise``: the same junk, then starts a normal ipykernel (stdout noise must not matter).
"""

import os
import runpy
import sys
import time

JUNK = (
    b"\x00\xff\xfe garbage \x1b[2J\x1b[31m not a kernel \x80\x81\r\n"
    b'{"shell_port": 1, "key": "fake"}\n' + bytes(range(256))
)

fault = os.environ.get("JSP_FAULT", "")
if fault == "exit":
    sys.exit(0)
if fault in ("garbage", "noise"):
    sys.stdout.buffer.write(JUNK * 64)
    sys.stdout.flush()
if fault == "garbage":
    time.sleep(600)
sys.argv[0] = "ipykernel_launcher"
runpy.run_module("ipykernel_launcher", run_name="__main__")
