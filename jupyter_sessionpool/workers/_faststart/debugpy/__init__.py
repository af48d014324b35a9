"""Stands in for debugpy once, while a pooled ipykernel starts, then removes itself.

ipykernel imports debugpy at start for its visual debugger (``debug_request`` on the
control channel, which the pool never opens); that import is ~0.1 s of CPU, a quarter of
a kernel start. The pool puts this directory first on the kernel's PYTHONPATH: the
kernel's first ``import debugpy`` lands here, which takes the directory off ``sys.path``
and ``PYTHONPATH`` again (so the kernel's code and subprocesses see the paths they would
have had) and fails that one import, so ipykernel starts without its debugger. Any later
``import debugpy`` in a cell gets the real one.
"""

import os
import sys

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
_rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != _HERE]
if _rest:
    os.environ["PYTHONPATH"] = os.pathsep.join(_rest)
else:
    os.environ.pop("PYTHONPATH", None)
raise ImportError("debugpy is not loaded while a pooled kernel starts (jupyter_sessionpool); import it again to use it")
