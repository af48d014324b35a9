"""Fork-started ipykernels: a way of launching a local kernel, at jupyter_client's provisioner seam.

A kernel start through jupyter_client ends in a provisioner's ``launch_kernel``; the
``sessionpool-fork`` provisioner (:mod:`.provisioner`) launches an ipykernel by forking a
*template* (:mod:`.template`), a warmed interpreter of the kernelspec that has imported
ipykernel, IPython and the ``preload`` list, so a fresh kernel costs tens of milliseconds
instead of an interpreter's start. :mod:`.engine` is the owner's side: which template
serves a start, starting, replacing and retiring templates, and the forked processes. The
pool's local worker launches its kernels through the same provisioner.
"""

from .engine import ForkedProcess, Unservable, stop_templates
from .provisioner import ForkProvisioner, ForkUnavailable

__all__ = ["ForkProvisioner", "ForkUnavailable", "ForkedProcess", "Unservable", "stop_templates"]
