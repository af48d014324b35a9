"""The kernel workers: what starts, talks to and stops one kernel, behind one interface.

``base`` defines the interface the pool, its leases and the execution code use; ``local``
runs kernels on this machine through jupyter_client (any kernelspec or provisioner);
``gateway`` runs them on a Jupyter Kernel Gateway or Enterprise Gateway. Everything above
the workers reaches a backend only through the functions here, which import it when it is
first used: the pool picks its backend each time it starts a kernel, from the settings of
that moment.
"""

from __future__ import annotations

from typing import Any

from .base import Workers

__all__ = ["check_kernelspec", "serves", "workers_for"]


def _backend(settings: Any) -> type[Workers]:
    """The Workers class that starts kernels under ``settings``: the gateway's when ``gateway_url`` is set."""
    if settings.gateway_url:
        from .gateway import GatewayWorkers

        return GatewayWorkers
    from .local import LocalWorkers

    return LocalWorkers


def serves(workers: Workers, settings: Any) -> bool:
    """True while ``workers`` starts kernels as ``settings`` now ask: the same backend, made from
    the same values of the settings it reads only once (see :meth:`Workers.fixed_settings`)."""
    backend = _backend(settings)
    return type(workers) is backend and workers.fixed == backend.fixed_settings(settings)


def workers_for(settings: Any) -> Workers:
    """A new (not yet opened) Workers for ``settings`` as they are now.

    Raises ValueError if the settings cannot start a kernel here (a local kernel_name with no
    usable kernelspec).
    """
    return _backend(settings)(settings)


def check_kernelspec(name: str) -> None:
    """Raise ValueError naming the problem if ``name`` is not a usable local kernelspec (missing,
    unreadable, no argv)."""
    from .local import check_kernelspec as check

    check(name)
