"""Template filters for the preparation progress (studyapp.selectors.preparation)."""
from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def duration(seconds) -> str:
    """42 s, 3 min 05 s, 1 h 02 min: how long, readably."""
    if seconds is None:
        return "—"
    total = int(round(float(seconds)))
    if total < 60:
        return f"{float(seconds):.1f} s" if float(seconds) < 10 else f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
