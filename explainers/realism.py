"""Placebo realism: can a simple classifier tell a placebo arm's maps from the real arm's?

A placebo arm only tests "does the real information help?" when participants cannot spot it
from its look. This check measures that with a **fixed, documented low-level-feature
classifier**, so the number can be frozen with the plan and reproduced by a reviewer.

Input: the maps *as displayed* (each arm divided by its own shared scale and clipped, values in
[-1, 1] or [0, 1]), ``real[i]`` and ``placebo[i]`` explaining the same stimulus ``i``; images
(N, H, W) or tabular rows (N, F); optionally the stimuli (N, C, H, W) or (N, F).

Classifier (``CLASSIFIER``), the same for every study:

1. Features per map (``feature_names``), computed once. Images: histogram moments and
   quantiles of the values and of |values|, the fraction exactly zero / near zero (|v| < 0.02,
   about one colour step) / saturated (|v| >= 0.98), the share of positive mass; spatial
   autocorrelation (Pearson over horizontal and vertical pairs pooled) at lags 1, 2 and 4 of
   the map and of |map|; energy in difference-of-Gaussian bands at four scales; total
   variation; mass in the border ring and in the centre box; centre of mass and spread. With
   the input (``input_feature_names``) also: correlation of |map| and of the map with the
   input's intensity (mean over channels), of |map| with the input's Sobel edge magnitude, the
   mass on dark input pixels (intensity <= 0.02) and the fraction of those pixels coloured.
   Tabular rows: statistics that do not depend on the order of the features (which feature
   carries weight is the information a placebo removes, not its texture): moments, quantiles,
   sparsity, top-1 / top-3 share of |mass|, Gini; with the input: correlation of |map| with
   |z-scored input| and of the map with the z-scored input, mass on zero inputs.
   Undefined values (a correlation of a constant map) count as 0.
2. ``StandardScaler`` + L2 ``LogisticRegression(C=1.0, solver="newton-cholesky", max_iter=100)``
   (scikit-learn), real = 1, placebo = 0.
3. AUC: ``roc_auc_score`` of the out-of-fold decision function over all 2N maps, with
   ``GroupKFold(folds, shuffle=True, random_state=seed)`` grouped by stimulus, so the real and
   placebo maps of a stimulus are always on the same side. Computed from the map alone
   (``auc``) and with the input features beside it (``auc_with_input``).
4. Permutation null: the real/placebo labels are swapped within each stimulus's pair with
   probability 1/2 (numpy ``default_rng(seed)``), ``permutations`` times, with the same folds;
   each time both AUCs are recomputed. The test statistic is the **larger** of the two AUCs
   (max over the feature sets, so looking at two feature sets costs no extra false alarms);
   ``p_value`` = (1 + #{null max >= observed max}) / (1 + permutations); ``null_q95`` is the
   null's 95th percentile of that max.

Verdict (``VERDICT_RULE``), with the practical margin ``AUC_MARGIN`` = 0.65:

- ``spotted``: the larger AUC is >= 0.65 and p <= alpha (a detectable, not small, difference).
- ``indistinguishable``: the larger AUC is < 0.65 and the null's 95th percentile is < 0.65
  (with this many stimuli chance alone stays below the margin, so an AUC of 0.65 would have
  been seen). A difference that is significant but below the margin counts as
  indistinguishable in practice and the sentence says so.
- ``inconclusive``: otherwise (too few stimuli: the AUC is >= 0.65 without p <= alpha, or the
  chance AUCs themselves reach the margin).

Django-free; numpy, scipy and scikit-learn only. The features are computed once; the
permutations refit only the classifier (and the scaler is fitted once per fold: it does not
depend on the labels, and both maps of a stimulus sit in the same fold).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage, stats
from sklearn import config_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

__all__ = [
    "AUC_MARGIN",
    "CLASSIFIER",
    "RealismReport",
    "VERDICT_RULE",
    "map_features",
    "placebo_realism",
    "realism_verdict",
]

AUC_MARGIN = 0.65
NEAR_ZERO = 0.02  # |v| below this is drawn within about one colour step of zero
SATURATED = 0.98
DARK_INPUT = 0.02  # intensity on the [0, 1] image scale counted as "input is zero"
LAGS = (1, 2, 4)
N_BANDS = 4
LOGISTIC_C = 1.0

CLASSIFIER = {
    "features": "low-level statistics of each displayed map, computed once (see feature_names); "
                "undefined values count as 0",
    "model": "sklearn Pipeline-equivalent: StandardScaler fitted on the training fold, then "
             f"LogisticRegression(penalty='l2', C={LOGISTIC_C}, solver='newton-cholesky', max_iter=100)",
    "labels": "real = 1, placebo = 0",
    "cross_validation": "GroupKFold(n_splits=folds, shuffle=True, random_state=seed), groups = "
                        "stimulus (a stimulus's real and placebo maps are on the same side)",
    "auc": "sklearn.metrics.roc_auc_score of the out-of-fold decision function over all 2N maps "
           "(each map scored by the fold model that did not see its stimulus)",
    "permutation_null": "labels swapped within each stimulus pair with probability 1/2 "
                        "(numpy default_rng(seed).random(N) < 0.5), same folds, both AUCs "
                        "recomputed; statistic = max(auc, auc_with_input) (auc alone without "
                        "inputs); p = (1 + #{null >= observed}) / (1 + permutations)",
    "near_zero": NEAR_ZERO,
    "saturated": SATURATED,
    "dark_input_intensity": DARK_INPUT,
}
VERDICT_RULE = (f"spotted: max AUC >= {AUC_MARGIN} and permutation p <= alpha; indistinguishable: "
                f"max AUC < {AUC_MARGIN} and the null's 95th percentile < {AUC_MARGIN}; "
                "inconclusive: otherwise (too few stimuli for the check to decide)")


@dataclass
class RealismReport:
    auc: float  # from the map alone
    auc_with_input: float | None  # with the input features beside it; None without inputs
    null_q95: float  # 95th percentile of the permutation null of the statistic (the max AUC)
    null_mean: float
    p_value: float  # of the statistic max(auc, auc_with_input)
    n: int  # stimuli (pairs of maps)
    verdict: str  # "indistinguishable" | "spotted" | "inconclusive"
    sentence: str  # the verdict in words, for the researcher
    statistic: str
    verdict_rule: str
    margin: float
    alpha: float
    folds: int
    permutations: int
    seed: int
    modality: str  # "image" or "tabular"
    classifier: dict = field(default_factory=dict)
    feature_names: list[str] = field(default_factory=list)
    input_feature_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-safe: plain floats, ints, strings, lists and None."""
        return asdict(self)


# ------------------------------------------------------------------------------ features


def _safe(x: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _rowwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per row of two (N, K) arrays; 0 where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return _safe((a * b).sum(axis=1) / den)


def _lag_corr(m: np.ndarray, lag: int) -> np.ndarray:
    """Autocorrelation at ``lag`` pixels, horizontal and vertical pairs pooled, per map."""
    n = len(m)
    first = np.concatenate([m[:, :, :-lag].reshape(n, -1), m[:, :-lag, :].reshape(n, -1)], axis=1)
    second = np.concatenate([m[:, :, lag:].reshape(n, -1), m[:, lag:, :].reshape(n, -1)], axis=1)
    return _rowwise_corr(first, second)


def _image_geometry(h: int, w: int) -> dict:
    lags = [lag for lag in LAGS if lag < min(h, w)]
    sigmas = np.geomspace(0.5, max(1.0, min(h, w) / 4), N_BANDS).tolist()
    ring = max(1, int(round(min(h, w) / 8)))
    return {"lags": lags, "sigmas": sigmas, "ring": ring}


def _image_feature_names(h: int, w: int) -> list[str]:
    g = _image_geometry(h, w)
    names = ["mean", "std", "mean_abs", "skew", "kurtosis_abs",
             "q50_abs", "q75_abs", "q90_abs", "q99_abs",
             "frac_zero", "frac_near_zero", "frac_saturated", "positive_mass_share"]
    names += [f"autocorr_lag{lag}" for lag in g["lags"]]
    names += [f"autocorr_abs_lag{lag}" for lag in g["lags"]]
    names += [f"band_energy_sigma{a:.2g}-{b:.2g}" for a, b in zip([0.0, *g["sigmas"][:-1]], g["sigmas"])]
    names += [f"lowpass_energy_sigma{g['sigmas'][-1]:.2g}"]
    names += ["total_variation", "total_variation_per_mass",
              f"border_mass_ring{g['ring']}", "centre_box_mass", "centre_of_mass_offset", "spread"]
    return names


def _image_features(m: np.ndarray) -> np.ndarray:
    n, h, w = m.shape
    g = _image_geometry(h, w)
    a = np.abs(m)
    flat, aflat = m.reshape(n, -1), a.reshape(n, -1)
    mass = aflat.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = [flat.mean(1), flat.std(1), aflat.mean(1),
                _safe(stats.skew(flat, axis=1)), _safe(stats.kurtosis(aflat, axis=1))]
        cols += list(np.quantile(aflat, [0.5, 0.75, 0.9, 0.99], axis=1))
        cols += [(aflat == 0).mean(1), (aflat < NEAR_ZERO).mean(1), (aflat >= SATURATED).mean(1),
                 _safe(np.clip(flat, 0, None).sum(1) / mass)]
        cols += [_lag_corr(m, lag) for lag in g["lags"]]
        cols += [_lag_corr(a, lag) for lag in g["lags"]]
        # Difference-of-Gaussian bands: the share of the map's energy at each scale.
        energy = (flat ** 2).sum(1)
        previous = m
        for sigma in g["sigmas"]:
            smooth = ndimage.gaussian_filter(m, sigma=(0, sigma, sigma), mode="constant")
            cols.append(_safe(((previous - smooth) ** 2).reshape(n, -1).sum(1) / energy))
            previous = smooth
        cols.append(_safe((previous ** 2).reshape(n, -1).sum(1) / energy))
        tv = np.abs(np.diff(m, axis=1)).reshape(n, -1).sum(1) + np.abs(np.diff(m, axis=2)).reshape(n, -1).sum(1)
        cols += [tv / (h * w), _safe(tv / mass)]
        r = g["ring"]
        inner = np.zeros((h, w), dtype=bool)
        inner[r:h - r, r:w - r] = True
        centre = np.zeros((h, w), dtype=bool)
        centre[h // 4:h - h // 4, w // 4:w - w // 4] = True
        cols += [_safe(a[:, ~inner].sum(1) / mass), _safe(a[:, centre].sum(1) / mass)]
        yy, xx = np.mgrid[0:h, 0:w]
        yy = (yy - (h - 1) / 2) / max(h, w)
        xx = (xx - (w - 1) / 2) / max(h, w)
        cy = _safe((a * yy).reshape(n, -1).sum(1) / mass)
        cx = _safe((a * xx).reshape(n, -1).sum(1) / mass)
        spread = _safe(np.sqrt((a * ((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2))
                               .reshape(n, -1).sum(1) / mass))
        cols += [np.hypot(cy, cx), spread]
    return np.column_stack([_safe(c) for c in cols])


IMAGE_INPUT_FEATURES = ["corr_abs_intensity", "corr_signed_intensity", "corr_abs_edges",
                        "mass_on_dark_input", "frac_dark_input_coloured"]


def _intensity(inputs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    x = np.asarray(inputs, dtype=np.float64)
    if x.ndim == 4:
        x = x.mean(axis=1)
    if x.ndim != 3 or x.shape[1:] != shape:
        raise ValueError(f"inputs must be images (N, C, H, W) or (N, H, W) matching the maps' "
                         f"{list(shape)}; got shape {list(np.shape(inputs))}.")
    return x


def _image_input_features(m: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    n = len(m)
    a = np.abs(m).reshape(n, -1)
    x = intensity.reshape(n, -1)
    edges = np.hypot(ndimage.sobel(intensity, axis=1), ndimage.sobel(intensity, axis=2)).reshape(n, -1)
    dark = x <= DARK_INPUT
    mass = a.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = [_rowwise_corr(a, x), _rowwise_corr(m.reshape(n, -1), x), _rowwise_corr(a, edges),
                _safe((a * dark).sum(1) / mass),
                _safe(((a >= NEAR_ZERO) & dark).sum(1) / dark.sum(1))]
    return np.column_stack(cols)


TABULAR_FEATURES = ["mean", "std", "mean_abs", "skew", "kurtosis_abs", "q50_abs", "q90_abs", "max_abs",
                    "frac_near_zero", "positive_mass_share", "top1_share", "top3_share", "gini_abs"]
TABULAR_INPUT_FEATURES = ["corr_abs_abs_zscored_input", "corr_signed_zscored_input", "mass_on_zero_input"]


def _tabular_features(m: np.ndarray) -> np.ndarray:
    a = np.abs(m)
    mass = a.sum(1)
    ordered = -np.sort(-a, axis=1)
    k = a.shape[1]
    ranks = np.arange(1, k + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        gini = _safe(((2 * ranks - k - 1) * np.sort(a, axis=1)).sum(1) / (k * mass))
        cols = [m.mean(1), m.std(1), a.mean(1), _safe(stats.skew(m, axis=1)),
                _safe(stats.kurtosis(a, axis=1)), np.median(a, 1), np.quantile(a, 0.9, axis=1),
                a.max(1), (a < NEAR_ZERO).mean(1), _safe(np.clip(m, 0, None).sum(1) / mass),
                _safe(ordered[:, 0] / mass), _safe(ordered[:, :3].sum(1) / mass), gini]
    return np.column_stack([_safe(c) for c in cols])


def _tabular_input_features(m: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    x = np.asarray(inputs, dtype=np.float64)
    if x.shape != m.shape:
        raise ValueError(f"inputs must be rows (N, F) matching the maps' {list(m.shape)}; got "
                         f"shape {list(x.shape)}.")
    sd = x.std(0)
    z = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)
    a = np.abs(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = [_rowwise_corr(a, np.abs(z)), _rowwise_corr(m, z), _safe((a * (x == 0)).sum(1) / a.sum(1))]
    return np.column_stack(cols)


def map_features(maps: np.ndarray, *, inputs: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """The classifier's features of each displayed map: ``(features (N, K), names)``; with
    ``inputs`` the input-relation features are appended."""
    m = _check_maps(maps, "maps")
    if m.ndim == 3:
        feats, names = _image_features(m), _image_feature_names(*m.shape[1:])
        if inputs is not None:
            feats = np.hstack([feats, _image_input_features(m, _intensity(inputs, m.shape[1:]))])
            names = names + IMAGE_INPUT_FEATURES
    else:
        feats, names = _tabular_features(m), list(TABULAR_FEATURES)
        if inputs is not None:
            feats = np.hstack([feats, _tabular_input_features(m, inputs)])
            names = names + TABULAR_INPUT_FEATURES
    return feats, names


# ---------------------------------------------------------------------------- classifier


def _fold_data(features: np.ndarray, splits: list) -> list[tuple]:
    """Per fold: the standardized training and test matrices (label-free, so fitted once)."""
    out = []
    for train, test in splits:
        scaler = StandardScaler().fit(features[train])
        out.append((train, test, scaler.transform(features[train]), scaler.transform(features[test])))
    return out


def _cv_auc(folds: list[tuple], labels: np.ndarray) -> float:
    """AUC of the out-of-fold decision function over all maps (each map scored once, by the
    model that did not see its stimulus)."""
    scores = np.empty(len(labels))
    for train, test, x_train, x_test in folds:
        model = LogisticRegression(C=LOGISTIC_C, solver="newton-cholesky", max_iter=100)
        model.fit(x_train, labels[train])
        scores[test] = model.decision_function(x_test)
    return float(roc_auc_score(labels, scores))


def placebo_realism(real: np.ndarray, placebo: np.ndarray, *, inputs: np.ndarray | None, seed: int,
                    permutations: int = 200, folds: int = 5, alpha: float = 0.05) -> RealismReport:
    """How well the fixed classifier (module docstring) tells ``placebo`` maps from ``real`` ones.

    ``real[i]`` and ``placebo[i]`` are the displayed maps of stimulus ``i``; ``inputs[i]`` its
    input, or None. See the module docstring for the features, the cross-validation, the
    permutation null and the verdict rule.
    """
    r, p = _check_maps(real, "real"), _check_maps(placebo, "placebo")
    if r.shape != p.shape:
        raise ValueError(f"real and placebo maps must have the same shape (paired by stimulus); got "
                         f"{list(r.shape)} and {list(p.shape)}.")
    n = len(r)
    if n < 2:
        raise ValueError(f"The realism check needs at least 2 stimuli; got {n}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
    if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)) or permutations < 1:
        raise ValueError(f"permutations must be a positive integer; got {permutations!r}.")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2; got {folds!r}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1; got {alpha!r}.")
    if inputs is not None and len(inputs) != n:
        raise ValueError(f"inputs must hold one input per stimulus ({n}); got {len(inputs)}.")
    folds = int(min(folds, n))

    names = map_features(r[:1])[1]
    feats_r, all_names = map_features(r, inputs=inputs)
    feats_p, _ = map_features(p, inputs=inputs)
    both = np.vstack([feats_r, feats_p])
    feature_sets = [both[:, :len(names)]]  # the map alone
    input_names = all_names[len(names):]
    if inputs is not None:
        feature_sets.append(both)  # the map and its relation to the input

    groups = np.concatenate([np.arange(n), np.arange(n)])
    labels = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    splits = list(GroupKFold(n_splits=folds, shuffle=True, random_state=int(seed))
                  .split(feature_sets[0], labels, groups))
    prepared = [_fold_data(f, splits) for f in feature_sets]
    rng = np.random.default_rng(int(seed))
    # One BLAS thread: these are thousands of tiny fits, where thread start-up costs more than
    # it saves (measured 8x slower with all threads on a busy 2-core machine).
    # The features were checked once above; skipping scikit-learn's per-call re-validation
    # halves the time of these small fits.
    with (warnings.catch_warnings(), threadpool_limits(limits=1),
          config_context(assume_finite=True, skip_parameter_validation=True)):
        warnings.simplefilter("ignore", ConvergenceWarning)
        observed = [_cv_auc(fd, labels) for fd in prepared]
        null = np.empty(int(permutations))
        for k in range(int(permutations)):
            swap = rng.random(n) < 0.5
            permuted = np.concatenate([np.where(swap, 0, 1), np.where(swap, 1, 0)])
            null[k] = max(_cv_auc(fd, permuted) for fd in prepared)
    statistic = max(observed)
    p_value = float((1 + np.sum(null >= statistic - 1e-12)) / (1 + len(null)))
    q95 = float(np.quantile(null, 0.95))
    verdict = realism_verdict(statistic, p_value, q95, alpha)
    auc, auc_input = observed[0], (observed[1] if len(observed) > 1 else None)
    return RealismReport(
        auc=round(auc, 6), auc_with_input=None if auc_input is None else round(auc_input, 6),
        null_q95=round(q95, 6), null_mean=round(float(null.mean()), 6), p_value=round(p_value, 6), n=n,
        verdict=verdict, sentence=_sentence(verdict, auc, auc_input, q95, p_value, alpha),
        statistic="max(auc, auc_with_input)" if auc_input is not None else "auc",
        verdict_rule=VERDICT_RULE, margin=AUC_MARGIN, alpha=float(alpha), folds=folds,
        permutations=int(permutations), seed=int(seed), modality="image" if r.ndim == 3 else "tabular",
        classifier=dict(CLASSIFIER), feature_names=list(names), input_feature_names=list(input_names))


def realism_verdict(statistic: float, p_value: float, null_q95: float, alpha: float) -> str:
    """``VERDICT_RULE`` on the larger AUC, its permutation p-value and the null's 95th percentile."""
    if statistic >= AUC_MARGIN and p_value <= alpha:
        return "spotted"
    if statistic < AUC_MARGIN and null_q95 < AUC_MARGIN:
        return "indistinguishable"
    return "inconclusive"


def _sentence(verdict: str, auc: float, auc_input: float | None, q95: float, p: float, alpha: float) -> str:
    both = f"AUC {auc:.2f} from the map alone" + ("" if auc_input is None else f", {auc_input:.2f} with the input")
    chance = f"(chance 0.5; 95% of chance results below {q95:.2f}; permutation p = {p:.3g})"
    if verdict == "spotted":
        by_input = auc_input is not None and auc_input > auc and auc < AUC_MARGIN
        how = ("by how the map sits on the input" if by_input else "by texture alone")
        best = auc_input if by_input else auc
        return (f"Participants could tell this placebo from the real maps {how}: a simple classifier on "
                f"low-level statistics does so with AUC {best:.2f} {chance}; {both}.")
    if verdict == "indistinguishable":
        slight = (f" It tells them apart slightly better than chance (p <= {alpha:g}), but below the "
                  f"{AUC_MARGIN} margin." if p <= alpha else "")
        return (f"A simple classifier on low-level statistics cannot tell this placebo from the real maps "
                f"beyond the {AUC_MARGIN} margin: {both} {chance}.{slight}")
    return (f"Too few stimuli to tell whether participants could spot this placebo: {both} {chance}; "
            f"the check decides when the AUC is at or above {AUC_MARGIN} with p <= {alpha:g}, or below "
            f"{AUC_MARGIN} with chance results below it too.")


def _check_maps(maps, name: str) -> np.ndarray:
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim not in (2, 3) or m.shape[0] == 0:
        raise ValueError(f"{name} must be displayed maps (N, H, W) or rows (N, F); got shape "
                         f"{list(np.shape(maps))}.")
    if m.ndim == 3 and min(m.shape[1:]) < 2:
        raise ValueError(f"{name} maps must be at least 2x2; got {list(m.shape[1:])}.")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return m
