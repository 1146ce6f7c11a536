"""JSON from people and browsers: nesting deep enough to exhaust Python's recursion (a thousand
``[``, a few KB) is refused with a sentence, never a 500.

``json.loads`` raises RecursionError, not a ValueError, on such input, and neither Django's form
``JSONField`` nor DRF's ``JSONParser`` catch it. Used by the admin forms (``bounded_json_fields``)
and as the REST framework's JSON parser (settings.REST_FRAMEWORK).
"""
from __future__ import annotations

from django import forms
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

TOO_DEEP = "The JSON is nested too deeply (hundreds of levels); no setting here needs more than a few."


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(TOO_DEEP) from None


def bounded_json_fields(form: forms.BaseForm) -> None:
    """Make every JSON field of ``form`` refuse too-deep nesting as a validation error."""
    for field in form.fields.values():
        if isinstance(field, forms.JSONField):
            field.to_python = _bounded(field.to_python)


def _bounded(to_python):
    def to_python_bounded(value):
        try:
            return to_python(value)
        except RecursionError:
            raise forms.ValidationError(TOO_DEEP, code="too_deep") from None
    return to_python_bounded


class BoundedJSONForm:
    """Mixin for forms with JSON fields (put it first among the bases)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        bounded_json_fields(self)
