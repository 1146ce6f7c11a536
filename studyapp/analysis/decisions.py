"""From an adjusted p-value to a pre-registered verdict.

Verdicts: ``"supported"``, ``"not_supported"``, ``"equivalent"``, ``"inconclusive"``.

Rule (fixed before data are seen; alpha is the hypothesis' pre-registered level and every
p-value passed here is already adjusted over the hypothesis' correction family):

Directional hypothesis (kind 'greater', 'less' or 'two_sided'; ``p_adjusted`` is the p-value
of the test in that direction):
  1. p_adjusted <= alpha                                   -> "supported"
  2. else, if an equivalence test (TOST) with the pre-registered margin was run and its
     adjusted p-value <= alpha: the effect is shown to lie inside (-margin, margin), so the
     hypothesised effect is ruled out                        -> "not_supported"
  3. otherwise (absence of evidence is not evidence of absence) -> "inconclusive"

Equivalence hypothesis (kind 'equivalence' with a margin; ``p_adjusted`` is the TOST p-value):
  1. p_adjusted <= alpha                                   -> "equivalent"
  2. else, if the two-sided difference test's adjusted p-value <= alpha (a difference was
     detected and equivalence was not shown)              -> "not_supported"
  3. otherwise                                             -> "inconclusive"

A NaN p-value (the test could not be computed) is always "inconclusive".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("greater", "less", "two_sided", "equivalence")
VERDICTS = ("supported", "not_supported", "equivalent", "inconclusive")


@dataclass(frozen=True)
class HypothesisSpec:
    """The decision-relevant part of a pre-registered hypothesis."""

    name: str
    kind: str
    alpha: float = 0.05
    margin: float | None = None  # equivalence margin on the outcome scale

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must lie in (0, 1)")
        if self.kind == "equivalence" and (self.margin is None or self.margin <= 0):
            raise ValueError("an equivalence hypothesis needs a positive margin")


@dataclass(frozen=True)
class Decision:
    hypothesis: str
    verdict: str
    p_adjusted: float
    alpha: float
    reason: str


def _significant(p: float | None, alpha: float) -> bool:
    return p is not None and not math.isnan(p) and p <= alpha


def decide(
    spec: HypothesisSpec,
    *,
    p_adjusted: float,
    p_equivalence_adjusted: float | None = None,
    p_difference_adjusted: float | None = None,
) -> Decision:
    """Apply the rule in the module docstring."""
    alpha = spec.alpha

    def verdict(label: str, reason: str) -> Decision:
        return Decision(spec.name, label, float(p_adjusted), alpha, reason)

    if p_adjusted is None or math.isnan(p_adjusted):
        return verdict("inconclusive", "the test could not be computed (p is NaN)")
    if spec.kind == "equivalence":
        if _significant(p_adjusted, alpha):
            return verdict("equivalent", f"TOST adjusted p <= {alpha}")
        if _significant(p_difference_adjusted, alpha):
            return verdict(
                "not_supported",
                f"TOST adjusted p > {alpha} and the difference test adjusted p <= {alpha}",
            )
        return verdict("inconclusive", f"TOST adjusted p > {alpha}; no difference shown")
    if _significant(p_adjusted, alpha):
        return verdict("supported", f"adjusted p <= {alpha} in the pre-registered direction")
    if _significant(p_equivalence_adjusted, alpha):
        return verdict(
            "not_supported",
            f"adjusted p > {alpha} and TOST within the pre-registered margin adjusted p <= {alpha}",
        )
    return verdict("inconclusive", f"adjusted p > {alpha} and equivalence not shown")
