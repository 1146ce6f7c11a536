from __future__ import annotations

from django.core.exceptions import ValidationError


class ServiceError(ValidationError):
    """A request that cannot be carried out, with a message for a researcher.

    Subclasses ValidationError so admin forms and DRF views show the message instead of a 500.
    """


class InvalidTransition(ServiceError):
    """A study state change that the state machine does not allow."""
