"""A kernel that fails to start while $FLAKY_FLAG names an existing file, else an ipykernel.

With $FLAKY_TOKENS naming a directory, each start first tries to take one file out of it
(an unlink only one process can win) and fails if it got one: N files, N failed starts.
"""

import os
import runpy
import sys

flag = os.environ.get("FLAKY_FLAG", "")
if flag and os.path.exists(flag):
    sys.stderr.write(f"flaky kernel refusing to start: {flag} exists\n")
    sys.exit(7)
tokens = os.environ.get("FLAKY_TOKENS", "")
for token in sorted(os.listdir(tokens)) if tokens else []:
    try:
        os.unlink(os.path.join(tokens, token))
    except FileNotFoundError:
        continue  # another start took this one
    sys.stderr.write(f"flaky kernel refusing to start: took token {token}\n")
    sys.exit(7)
sys.argv[0] = "ipykernel_launcher"
runpy.run_module("ipykernel_launcher", run_name="__main__")
