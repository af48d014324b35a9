"""The service's own refusals, beside the pool's errors; each class name is the ``error`` of a JSON answer."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses; ``status`` is its HTTP status, the class name its error type."""

    status = 400


class BadRequest(ServiceError):
    """Malformed input: bad JSON, a bad session id, an unknown option, a value of the wrong type."""


class Forbidden(ServiceError):
    """A path outside the session's directory (``..``, absolute, a symlink out)."""

    status = 403


class NotFound(ServiceError):
    """No such session, or no such file in it."""

    status = 404


class Conflict(ServiceError):
    """The request contradicts the session as it is (e.g. another kernel_name than it was created with)."""

    status = 409


class PayloadTooLarge(ServiceError):
    """Code or an upload past the service's limits."""

    status = 413
