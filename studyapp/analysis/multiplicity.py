"""Multiple-comparison correction over a pre-registered family of hypotheses.

Adjustment is delegated to ``statsmodels.stats.multitest.multipletests`` and the method is
ALWAYS passed explicitly: its default is Holm-Sidak ('hs'), not Holm.

Names (ours -> statsmodels -> R ``p.adjust``)::

    holm        -> 'holm'            -> "holm"        (default; FWER, any dependence)
    bonferroni  -> 'bonferroni'      -> "bonferroni"  (FWER)
    hochberg    -> 'simes-hochberg'  -> "hochberg"    (FWER, needs PRDS)
    hommel      -> 'hommel'          -> "hommel"      (FWER, needs PRDS)
    bh          -> 'fdr_bh'          -> "BH"          (FDR, PRDS)
    by          -> 'fdr_by'          -> "BY"          (FDR, any dependence)

NaN policy (matches R's ``p.adjust``): a NaN p-value (a test that could not be computed)
stays NaN, is never rejected, and the adjustment of the others uses only the number of
non-NaN p-values. In R this comes from ``p.adjust(p, n = length(p))``: ``p`` is subset to its
non-NA entries before the lazily evaluated default ``n`` is first used. statsmodels 0.15
differs: it counts a NaN in the family size for Holm/Bonferroni and returns all-NaN for the
step-up methods (Hochberg, Hommel, BH, BY), so NaNs are removed before the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from statsmodels.stats.multitest import multipletests

# our name -> (statsmodels method, R p.adjust method)
METHODS: dict[str, tuple[str, str]] = {
    "holm": ("holm", "holm"),
    "bonferroni": ("bonferroni", "bonferroni"),
    "hochberg": ("simes-hochberg", "hochberg"),
    "hommel": ("hommel", "hommel"),
    "bh": ("fdr_bh", "BH"),
    "by": ("fdr_by", "BY"),
}
DEFAULT_METHOD = "holm"


def statsmodels_method(method: str) -> str:
    return _lookup(method)[0]


def r_method(method: str) -> str:
    return _lookup(method)[1]


def _lookup(method: str) -> tuple[str, str]:
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown correction {method!r}; choose from {sorted(METHODS)}") from None


@dataclass(frozen=True)
class AdjustedPValues:
    raw: np.ndarray
    adjusted: np.ndarray
    reject: np.ndarray
    method: str
    statsmodels_method: str
    r_method: str
    alpha: float
    n_tests: int  # the number of non-NaN p-values the adjustment used
    labels: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        def clean(values):
            return [None if np.isnan(v) else float(v) for v in values]

        return {
            "raw": clean(self.raw),
            "adjusted": clean(self.adjusted),
            "reject": [bool(v) for v in self.reject],
            "method": self.method,
            "statsmodels_method": self.statsmodels_method,
            "r_method": self.r_method,
            "alpha": self.alpha,
            "n_tests": self.n_tests,
            "labels": list(self.labels) if self.labels is not None else None,
        }


def adjust_pvalues(
    pvalues,
    *,
    method: str = DEFAULT_METHOD,
    alpha: float = 0.05,
    labels=None,
) -> AdjustedPValues:
    """Adjust a family of p-values; NaN stays NaN and does not count towards the family."""
    sm_method, r_name = _lookup(method)
    raw = np.asarray(pvalues, dtype="float64").ravel()
    if np.any((raw < 0) | (raw > 1)):
        raise ValueError("p-values must lie in [0, 1] (or be NaN)")
    adjusted = np.full(raw.shape, np.nan)
    reject = np.zeros(raw.shape, dtype=bool)
    ok = ~np.isnan(raw)
    n_tests = int(ok.sum())
    if n_tests == 1:
        # A family of one needs no adjustment (R returns p unchanged when n <= 1).
        adjusted[ok] = raw[ok]
        reject[ok] = raw[ok] <= alpha
    elif n_tests > 1:
        rej, padj, _, _ = multipletests(raw[ok], alpha=alpha, method=sm_method)
        adjusted[ok] = padj
        reject[ok] = rej
    if labels is not None:
        labels = tuple(str(label) for label in labels)
        if len(labels) != raw.size:
            raise ValueError("labels must have one entry per p-value")
    return AdjustedPValues(
        raw=raw,
        adjusted=adjusted,
        reject=reject,
        method=method,
        statsmodels_method=sm_method,
        r_method=r_name,
        alpha=alpha,
        n_tests=n_tests,
        labels=labels,
    )
