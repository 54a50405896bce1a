"""Errors of the service, each reported to callers with its own status, and how a bug is reported.

:class:`InvalidArgument` (``INVALID_ARGUMENT``, HTTP 400) is raised only where input is checked,
never for a failure during the computation. Any other exception is a bug: the caller gets
``INTERNAL`` (HTTP 500) with an incident id, and the log gets the same id with the traceback
(:func:`report_internal_error`).
"""

from __future__ import annotations

import logging
import uuid


class InvalidArgument(ValueError):
    """A request field is invalid; the message starts with the field's name."""


class ModelNotFound(KeyError):
    """The request names a model this server has not loaded."""


class BackendUnavailable(Exception):
    """The backend cannot compute now (models still loading, TorchServe down); the message says why."""


class BackendFailed(Exception):
    """The backend refused or failed on work this service gave it: a bug on one side, not the caller's."""


def report_internal_error(log: logging.Logger, during: str) -> str:
    """Log the exception being handled, with its traceback, under a new incident id; return the caller's message.

    Call it in an ``except`` block. The message names the incident id, nothing of the exception,
    so internals do not leak to callers while the log entry can be found from what they report.
    """
    incident = uuid.uuid4().hex[:12]
    log.exception("internal error %s while %s", incident, during)
    return f"internal error (incident {incident}); the server log holds the details"
