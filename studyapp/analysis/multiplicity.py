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

Family size (R's ``p.adjust(p, method, n = )``): a pre-registered family can be larger than
the tests that could be run (a hypothesis dropped because its arm never filled, a test left out
of this call). ``family_size`` corrects every p-value for the full family. R does this for
every method by treating the missing members as p-values of 1 (explicitly so for Hommel; for
the others its formulas with ``n`` give the same numbers), so here the family is padded with
ones before ``multipletests`` and the padding is dropped from the result. A family smaller
than the p-values handed in is refused, NaNs included: every p-value given is a member.
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
    # The family size corrected for (R's n): n_tests unless a larger family was declared.
    family_size: int | None = None

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
            "family_size": self.family_size,
        }


def adjust_pvalues(
    pvalues,
    *,
    method: str = DEFAULT_METHOD,
    alpha: float = 0.05,
    labels=None,
    family_size: int | None = None,
) -> AdjustedPValues:
    """Adjust a family of p-values; NaN stays NaN and does not count towards the family.

    ``family_size`` is R's ``n``: the number of hypotheses in the pre-registered family when
    it is larger than the p-values given (default: the number of non-NaN p-values).
    """
    sm_method, r_name = _lookup(method)
    raw = np.asarray(pvalues, dtype="float64").ravel()
    if np.any((raw < 0) | (raw > 1)):
        raise ValueError("p-values must lie in [0, 1] (or be NaN)")
    ok = ~np.isnan(raw)
    n_tests = int(ok.sum())
    if family_size is None:
        family_size = n_tests
    else:
        if isinstance(family_size, bool) or int(family_size) != family_size:
            raise ValueError(f"family_size must be a whole number, got {family_size!r}")
        family_size = int(family_size)
        if family_size < raw.size:
            raise ValueError(
                f"the family size {family_size} is smaller than the {raw.size} p-values "
                "given; every p-value given belongs to the family, so the family has at "
                f"least {raw.size} members"
            )
    adjusted = np.full(raw.shape, np.nan)
    reject = np.zeros(raw.shape, dtype=bool)
    if n_tests and family_size <= 1:
        # A family of one needs no adjustment (R returns p unchanged when n <= 1).
        adjusted[ok] = raw[ok]
        reject[ok] = raw[ok] <= alpha
    elif n_tests:
        # Members that were not run count as p = 1 (R's p.adjust with n > length(p)).
        padded = np.concatenate([raw[ok], np.ones(family_size - n_tests)])
        rej, padj, _, _ = multipletests(padded, alpha=alpha, method=sm_method)
        adjusted[ok] = padj[:n_tests]
        reject[ok] = rej[:n_tests]
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
        family_size=family_size,
    )
