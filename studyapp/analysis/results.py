"""Small, serialisable result objects shared by the analysis modules.

Every result carries the method name and *every* parameter that produced it (seed included),
so a stored AnalysisRun can be re-run and must give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from explainers.canonical import json_safe

# Our spelling of the direction of a hypothesis -> scipy's ``alternative``.
_ALTERNATIVES = {
    "greater": "greater",
    "less": "less",
    "two-sided": "two-sided",
    "two_sided": "two-sided",
}


def normalize_alternative(alternative: str) -> str:
    """Return scipy's spelling ('greater', 'less', 'two-sided'); accept 'two_sided' too."""
    try:
        return _ALTERNATIVES[alternative]
    except KeyError:
        raise ValueError(
            f"alternative must be one of {sorted(_ALTERNATIVES)}, got {alternative!r}"
        ) from None


def statsmodels_alternative(alternative: str) -> str:
    """statsmodels power classes spell the one-sided alternatives 'larger' / 'smaller'."""
    return {"greater": "larger", "less": "smaller", "two-sided": "two-sided"}[
        normalize_alternative(alternative)
    ]


# The one numpy -> plain JSON conversion (explainers.canonical); the underscore name is what the
# analysis modules import.
_jsonable = json_safe


@dataclass(frozen=True)
class EffectSize:
    """A point estimate with its confidence interval (NaN bounds when none is defined)."""

    name: str
    estimate: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    confidence_level: float = math.nan
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class StatResult:
    """Result of one hypothesis test.

    ``params`` holds every argument needed to reproduce the result (alternative, seed,
    number of resamples, correction flags, library method names ...).
    """

    method: str
    statistic: float
    p_value: float
    alternative: str
    n: dict[str, int]
    params: dict[str, Any]
    effect: EffectSize | None = None
    df: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))
