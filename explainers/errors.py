"""Errors raised by the explainers library that a researcher reads.

The web layer shows ``str(error)`` verbatim (admin form errors, API 400 bodies), so every message
is written for a person: what is wrong, in plain words, and what to do about it.
"""
from __future__ import annotations


class ModelValidationError(ValueError):
    """An uploaded model (weights, architecture, shapes, class names) cannot be used.

    Subclasses ``ValueError`` so callers that already catch bad input keep working.
    """
