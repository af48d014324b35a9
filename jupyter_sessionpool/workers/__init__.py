"""The kernel workers: what starts, talks to and stops one kernel, behind one interface.

``base`` defines the interface the pool, its leases and the execution code use; ``local``
runs kernels on this machine through jupyter_client (any kernelspec or provisioner).
"""
