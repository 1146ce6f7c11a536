"""Within-subject (paired) comparisons: every participant is measured in both conditions.

Input is a long frame with one row per participant and condition (``participant_id``,
``condition``, ``accuracy`` by default; ``LongColumns`` renames them, e.g. ``condition="phase"``
for a pre/post design or ``"arm"`` when arms vary within participants). ``paired_sample``
builds the pairs and refuses, naming the participants, a participant who lacks one of the two
conditions, has two rows in one condition, or has a missing value: dropping or averaging them
would be a guess about the design. The difference is always condition - comparator.

* ``paired_t_test``: ``scipy.stats.ttest_rel`` (R: ``t.test(x, y, paired = TRUE)``).
* ``wilcoxon_signed_rank``: ``scipy.stats.wilcoxon`` on the differences. Zero policy: R's
  ``wilcox.test`` default, zero differences are dropped before ranking (``zero_method=
  "wilcox"``, Wilcoxon 1945); ``zero_method="pratt"`` ranks them and then drops their ranks
  (Pratt 1959; R: ``coin::wilcoxsign_test(zero.method = "Pratt")``), which keeps the sample
  size and is more conservative. The p-value follows R's rule: exact when fewer than 50
  non-zero differences and no ties and no zeros, otherwise the normal approximation with tie
  correction and continuity correction (R's ``correct = TRUE``). ``statistic`` is R's V, the
  rank sum of the positive differences (scipy reports the smaller rank sum when two-sided).
  Differences are rounded to 12 significant digits before ranking (R's ``digits.rank = 12``):
  accuracies are fractions, and 0.8 - 0.7 and 0.7 - 0.6 must tie although they differ in the
  last floating-point bit.
* ``sign_flip_permutation_test``: ``scipy.stats.permutation_test`` with ``permutation_type=
  "samples"`` (each participant's two values swap, i.e. the sign of the difference flips) on the
  mean difference; exact when ``n_resamples`` covers all 2**n flips; seeded.
* ``paired_tost``: equivalence by two one-sided paired t-tests against a pre-registered margin
  (``statsmodels.stats.weightstats.ttost_paired``; R: ``equivalence::tost(x - y, eps = )``).
* ``one_sample_tost``: is one condition's mean within a margin of a value such as chance
  (``statsmodels`` ``DescrStatsW.ttost_mean``)?

Results are the package's ``StatResult`` (estimate and CI in ``effect``), so the report and the
exports read them like the between-subject tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.weightstats import DescrStatsW, ttost_paired

from .comparisons import rank_test_method_words
from .results import EffectSize, StatResult, normalize_alternative

# R's wilcox.test computes the exact null distribution only below this many differences.
R_EXACT_LIMIT = 50
RANK_DIGITS = 12
ZERO_METHODS = ("wilcox", "pratt")


@dataclass(frozen=True)
class LongColumns:
    """Column names of the long frame (one row per participant and condition)."""

    participant: str = "participant_id"
    condition: str = "condition"
    value: str = "accuracy"


@dataclass(frozen=True)
class PairedSample:
    """Two values per participant, aligned: ``condition_values[i]`` and
    ``comparator_values[i]`` belong to ``participants[i]``."""

    condition: str
    comparator: str
    participants: tuple
    condition_values: np.ndarray
    comparator_values: np.ndarray

    @property
    def differences(self) -> np.ndarray:
        return self.condition_values - self.comparator_values

    @property
    def n(self) -> int:
        return len(self.participants)


def _listed(values) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:5])
    return shown + (f" and {len(values) - 5} more" if len(values) > 5 else "")


def paired_sample(
    frame: pd.DataFrame,
    *,
    condition: str,
    comparator: str,
    columns: LongColumns = LongColumns(),
) -> PairedSample:
    """Pair each participant's value in ``condition`` with theirs in ``comparator``."""
    needed = [columns.participant, columns.condition, columns.value]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"the paired analysis needs the columns {missing}, which are missing")
    if condition == comparator:
        raise ValueError(f"a condition cannot be compared with itself ({condition!r})")
    rows = frame.loc[frame[columns.condition].isin([condition, comparator]), needed]
    for name in (condition, comparator):
        if not (rows[columns.condition] == name).any():
            raise ValueError(f"no participant has a value for condition {name!r}")
    keys = [columns.participant, columns.condition]
    repeated = rows.loc[rows.duplicated(keys, keep=False), columns.participant].unique()
    if repeated.size:
        raise ValueError(
            f"participants with more than one row in one condition: {_listed(repeated)}; "
            "give one value per participant and condition (e.g. their accuracy)"
        )
    absent = rows.loc[rows[columns.value].isna(), columns.participant].unique()
    if absent.size:
        raise ValueError(f"participants with a missing value: {_listed(absent)}")
    wide = rows.pivot(index=columns.participant, columns=columns.condition, values=columns.value)
    for name in (condition, comparator):
        lacking = wide.index[wide[name].isna()] if name in wide else wide.index
        if len(lacking):
            raise ValueError(
                f"participants without a value in condition {name!r}: {_listed(lacking)}; "
                "a paired test needs every participant in both conditions"
            )
    if len(wide) < 2:
        raise ValueError(f"a paired test needs at least 2 participants, got {len(wide)}")
    return PairedSample(
        condition=str(condition),
        comparator=str(comparator),
        participants=tuple(wide.index.tolist()),
        condition_values=wide[condition].to_numpy(dtype="float64"),
        comparator_values=wide[comparator].to_numpy(dtype="float64"),
    )


def _sample(data, condition, comparator, columns) -> PairedSample:
    if isinstance(data, PairedSample):
        if (condition, comparator) not in ((None, None), (data.condition, data.comparator)):
            raise ValueError(
                f"the paired sample compares {data.condition!r} with {data.comparator!r}, "
                f"not {condition!r} with {comparator!r}"
            )
        return data
    if condition is None or comparator is None:
        raise ValueError("name the condition and the comparator to pair")
    return paired_sample(data, condition=condition, comparator=comparator, columns=columns)


def _params(sample: PairedSample, **extra) -> dict:
    return {
        "condition": sample.condition,
        "comparator": sample.comparator,
        "difference": "condition - comparator",
        **extra,
    }


def paired_t_test(
    data: pd.DataFrame | PairedSample,
    *,
    condition: str | None = None,
    comparator: str | None = None,
    columns: LongColumns = LongColumns(),
    alternative: str = "two-sided",
    confidence_level: float = 0.95,
) -> StatResult:
    """Paired t-test of the mean difference (R: ``t.test(x, y, paired = TRUE)``)."""
    sample = _sample(data, condition, comparator, columns)
    alt = normalize_alternative(alternative)
    res = stats.ttest_rel(sample.condition_values, sample.comparator_values, alternative=alt)
    ci = res.confidence_interval(confidence_level=confidence_level)
    d = sample.differences
    sd = float(d.std(ddof=1))
    return StatResult(
        method="paired t-test (scipy.stats.ttest_rel)",
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        alternative=alt,
        n={"participants": sample.n},
        params=_params(sample, alternative=alt, confidence_level=confidence_level),
        effect=EffectSize(
            name="mean_difference",
            estimate=float(d.mean()),
            ci_low=float(ci.low),
            ci_high=float(ci.high),
            confidence_level=confidence_level,
            method=f"paired t interval ({alt})",
        ),
        df=float(res.df),
        extra={
            "cohens_dz": float(d.mean() / sd) if sd > 0 else math.nan,
            "mean_condition": float(sample.condition_values.mean()),
            "mean_comparator": float(sample.comparator_values.mean()),
        },
    )


def _signif(values: np.ndarray, digits: int) -> np.ndarray:
    """Round to significant digits (R's ``signif``)."""
    with np.errstate(divide="ignore"):
        magnitude = np.floor(np.log10(np.abs(values)))
    magnitude = np.where(np.isfinite(magnitude), magnitude, 0.0)
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.round(values * scale) / scale


def wilcoxon_signed_rank(
    data: pd.DataFrame | PairedSample,
    *,
    condition: str | None = None,
    comparator: str | None = None,
    columns: LongColumns = LongColumns(),
    alternative: str = "two-sided",
    zero_method: str = "wilcox",
    method: str = "auto",
    use_continuity: bool = True,
) -> StatResult:
    """Wilcoxon signed-rank test of the differences (R: ``wilcox.test(x, y, paired = TRUE)``).

    See the module notes for the zero policy and the exact/normal rule.
    """
    sample = _sample(data, condition, comparator, columns)
    alt = normalize_alternative(alternative)
    if zero_method not in ZERO_METHODS:
        raise ValueError(f"zero_method must be one of {ZERO_METHODS}, got {zero_method!r}")
    if method not in ("auto", "exact", "asymptotic"):
        raise ValueError("method must be 'auto', 'asymptotic' or 'exact'")
    d = _signif(sample.differences, RANK_DIGITS)
    nonzero = d[d != 0]
    zeros = int(d.size - nonzero.size)
    if nonzero.size == 0:
        raise ValueError(
            "every participant has the same value in both conditions: there is no difference "
            "to rank"
        )
    ties = bool(np.unique(np.abs(nonzero)).size < nonzero.size)
    if method == "exact" and (ties or zeros):
        raise ValueError(
            "method='exact' is only valid without ties and zero differences; use 'auto' or "
            "'asymptotic'"
        )
    resolved = method
    if method == "auto":
        exact = nonzero.size < R_EXACT_LIMIT and not ties and not zeros
        resolved = "exact" if exact else "asymptotic"
    res = stats.wilcoxon(
        d,
        zero_method=zero_method,
        correction=use_continuity,
        alternative=alt,
        method=resolved,
    )
    # R's V: rank sum of the positive differences, ranked as the zero policy says.
    ranked = nonzero if zero_method == "wilcox" else d
    ranks = stats.rankdata(np.abs(ranked))
    r_plus = float(ranks[ranked > 0].sum())
    r_minus = float(ranks[ranked < 0].sum())
    ran = rank_test_method_words(resolved, use_continuity)
    return StatResult(
        method=f"Wilcoxon signed-rank test, {ran} (scipy.stats.wilcoxon)",
        statistic=r_plus,
        p_value=float(res.pvalue),
        alternative=alt,
        n={"participants": sample.n, "nonzero_differences": int(nonzero.size)},
        params=_params(
            sample,
            alternative=alt,
            zero_method=zero_method,
            method=method,
            resolved_method=resolved,
            use_continuity=use_continuity,
            rank_digits=RANK_DIGITS,
            exact_rule="R wilcox.test: exact when n < 50 non-zero differences, no ties, no zeros",
        ),
        effect=EffectSize(
            name="matched_pairs_rank_biserial_correlation",
            estimate=(r_plus - r_minus) / (r_plus + r_minus),
            method="(R+ - R-) / (R+ + R-) over the ranked differences",
        ),
        extra={
            "statistic_name": "V (rank sum of positive differences)",
            "zeros": zeros,
            "ties": ties,
            "median_difference": float(np.median(sample.differences)),
        },
    )


def _mean_difference(x, y, axis=-1):
    return np.mean(x - y, axis=axis)


def sign_flip_permutation_test(
    data: pd.DataFrame | PairedSample,
    *,
    condition: str | None = None,
    comparator: str | None = None,
    columns: LongColumns = LongColumns(),
    alternative: str = "two-sided",
    n_resamples: int = 9999,
    seed: int,
) -> StatResult:
    """Sign-flip permutation test of the mean difference, reproducible from ``seed``.

    Under the null each participant's two values are exchangeable, so the sign of each
    difference is flipped at random. With ``n_resamples`` at least 2**n scipy enumerates every
    flip and the p-value is exact; two-sided is twice the smaller one-sided p-value (scipy).
    """
    sample = _sample(data, condition, comparator, columns)
    alt = normalize_alternative(alternative)
    res = stats.permutation_test(
        (sample.condition_values, sample.comparator_values),
        _mean_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative=alt,
        rng=np.random.default_rng(seed),
    )
    exact = 2**sample.n <= n_resamples
    return StatResult(
        method="sign-flip permutation test of the mean difference (scipy.stats.permutation_test)",
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        alternative=alt,
        n={"participants": sample.n},
        params=_params(
            sample,
            statistic="mean(condition - comparator)",
            permutation_type="samples",
            n_resamples=n_resamples,
            alternative=alt,
            seed=seed,
        ),
        effect=EffectSize(name="mean_difference", estimate=float(res.statistic)),
        extra={"exact": exact},
    )


def _margin(margin: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(margin, (tuple, list)):
        low, high = float(margin[0]), float(margin[1])
    else:
        low, high = -abs(float(margin)), abs(float(margin))
    if not low < high:
        raise ValueError(f"equivalence margin must satisfy low < high, got ({low}, {high})")
    return low, high


def _tost_result(*, method, values, p_value, lower, upper, ci, alpha, n, params, name):
    binding = lower if lower[1] >= upper[1] else upper
    return StatResult(
        method=method,
        statistic=float(binding[0]),
        p_value=float(p_value),
        alternative="equivalence",
        n=n,
        params={**params, "alpha": alpha},
        effect=EffectSize(
            name=name,
            estimate=float(values.mean()),
            ci_low=float(ci.low),
            ci_high=float(ci.high),
            confidence_level=1.0 - 2.0 * alpha,
            method="t interval at 1 - 2 alpha",
        ),
        df=float(binding[2]),
        extra={
            "lower_test": {"statistic": float(lower[0]), "p_value": float(lower[1])},
            "upper_test": {"statistic": float(upper[0]), "p_value": float(upper[1])},
        },
    )


def paired_tost(
    data: pd.DataFrame | PairedSample,
    *,
    margin: float | tuple[float, float],
    condition: str | None = None,
    comparator: str | None = None,
    columns: LongColumns = LongColumns(),
    alpha: float = 0.05,
) -> StatResult:
    """Equivalence of two conditions within participants by TOST on the differences.

    ``margin`` is the pre-registered margin for the mean difference: m for (-m, m) or a
    (low, high) pair. Equivalence is shown when the p-value (the larger one-sided one) is
    <= alpha, i.e. when the (1 - 2 alpha) paired t interval lies inside the margin.
    """
    sample = _sample(data, condition, comparator, columns)
    low, high = _margin(margin)
    p_value, lower, upper = ttost_paired(sample.condition_values, sample.comparator_values, low, high)
    d = sample.differences
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(confidence_level=1.0 - 2.0 * alpha)
    return _tost_result(
        method="TOST equivalence, paired t (statsmodels.stats.weightstats.ttost_paired)",
        values=d,
        p_value=p_value,
        lower=lower,
        upper=upper,
        ci=ci,
        alpha=alpha,
        n={"participants": sample.n},
        params=_params(sample, margin_low=low, margin_high=high),
        name="mean_difference",
    )


def one_sample_tost(
    values,
    *,
    mu: float,
    margin: float | tuple[float, float],
    alpha: float = 0.05,
) -> StatResult:
    """Is the mean within ``margin`` of ``mu`` (e.g. accuracy at chance +- 5 points)? TOST.

    ``margin`` is m for (mu - m, mu + m) or a (low, high) pair of offsets from ``mu``.
    """
    x = np.asarray(values, dtype="float64").ravel()
    if np.isnan(x).any():
        raise ValueError("values contain missing entries; remove or explain them first")
    if x.size < 2:
        raise ValueError(f"a one-sample TOST needs at least 2 values, got {x.size}")
    low, high = _margin(margin)
    p_value, lower, upper = DescrStatsW(x).ttost_mean(mu + low, mu + high)
    ci = stats.ttest_1samp(x, mu).confidence_interval(confidence_level=1.0 - 2.0 * alpha)
    return _tost_result(
        method="TOST equivalence, one-sample t (statsmodels DescrStatsW.ttost_mean)",
        values=x,
        p_value=p_value,
        lower=lower,
        upper=upper,
        ci=ci,
        alpha=alpha,
        n={"participants": int(x.size)},
        params={"mu": mu, "margin_low": mu + low, "margin_high": mu + high},
        name="mean",
    )
