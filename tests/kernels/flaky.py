"""A kernel that fails to start while $FLAKY_FLAG names an existing file, else an ipykernel."""

import os
import runpy
import sys

flag = os.environ.get("FLAKY_FLAG", "")
if flag and os.path.exists(flag):
    sys.stderr.write(f"flaky kernel refusing to start: {flag} exists\n")
    sys.exit(7)
sys.argv[0] = "ipykernel_launcher"
runpy.run_module("ipykernel_launcher", run_name="__main__")
