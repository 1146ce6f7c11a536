"""Sanity checks for attribution methods (Adebayo et al. 2018), calibrated against nulls.

Two randomization tests: **model parameter randomization** (re-initialize layers from the
logits down, cascading, and explain again with the same method, configuration and targets)
and **data randomization** (the same architecture trained on permuted labels). A method whose
maps stay similar when what the model learned is destroyed shows the input, not the model.

"Similar" is judged against **null references on the same stimuli**, never a fixed threshold
(on small image data unrelated maps reach |rho| 0.4-0.7 against real ones):

- ``sobel_edges``: the input's Sobel edge map (model-independent),
- ``other_input``: the trained model's map of another stimulus with the same predicted class,
- ``random_matched``: a random map with the real map's histogram and smoothness (the floor; the
  manipulation's ``legacy`` algorithm, built from this map itself;
  reported for context, not used in the decision: nothing is reliably below it).

Similarity metrics, per stimulus (``similarity``): Spearman rank correlation of |map| and of
the signed map, SSIM of |map|, top-k intersection. Image maps are first
reduced to 2-D pixel maps by summing over channels (|map| metrics: the sum of |a_c|; signed
metrics: the sum of a_c). |map| metrics cannot see a sign inversion (a negated map scores 1.0),
so the signed metrics are always reported next to them.

Decision rule (``RULE``), in two steps.

**Per metric**, on per-stimulus differences d_i = sim(real_i, randomized_i) - sim(real_i,
reference_i), paired by stimulus, with one-sided Wilcoxon signed-rank tests
(``scipy.stats.wilcoxon``, zero_method "zsplit"). The structured references (Sobel,
other-input) are maps that carry nothing of what this model does with this input; together they
span the range of similarity that such maps reach against the real map:

- ``not_model_sensitive`` (checked first): d is significantly above 0 for *at least one*
  structured reference (Bonferroni over the references, statsmodels): the randomized model's
  maps stay closer to the real maps than a map that does not come from this model for this input
  does. One reference is enough: a method whose maps, after the model is destroyed, still match
  the real maps better than an edge detector does, shows the input rather than the model.
- ``model_sensitive``: otherwise, when d is significantly below 0 for *every* structured
  reference, an intersection-union test (Berger 1982): each one-sided test at level alpha, its
  p-value the largest of theirs, with no multiplicity correction needed. Below every reference,
  not only the closest one: a randomized model whose maps resemble the real ones as much as
  some model-free map does has not been shown to matter. It also keeps the two verdicts
  exclusive: maps that lie between the references can become ``not_model_sensitive`` with more
  stimuli, never ``model_sensitive`` (the former rule, "below the closest reference", called
  them model-sensitive with few stimuli and not model-sensitive with many).
- ``inconclusive``: neither (too few stimuli, or the randomized maps sit inside the null range).

**Headline** (``HEADLINE_METRICS``): ``model_sensitive`` only when *both* the signed and the
|map| Spearman correlations say so (each against every structured reference, as above);
``not_model_sensitive`` when either says so; otherwise ``inconclusive``. Both, because they
see different failures: the signed metric alone misses maps whose bright pixels are the
input's under any weights (only the colour changes), the |map| metric alone misses a sign
inversion. SSIM and top-k intersection are |map| metrics that repeat the |map| Spearman
correlation's question less precisely: their verdicts are reported, not added to the rule.

Where the references disagree the rule says which one decided: for guided backprop on digits
the randomized maps are above the Sobel map and below the other-input maps. That is by
design: guided backprop largely reconstructs the image's edges (Nie et al. 2018), which is what
the Sobel reference stands for, while another digit of the same class shares its shape with
the real map (rho 0.85-0.91), so being below it shows little. The sentences in words name the
reference that decided, so a researcher can judge it: on noise-like images the Sobel map can be
anti-correlated with the real maps, and being above it then comes easily.

Measured on the demo digits CNN (``image_cnn``, 5 epochs, 60 held-out digits, seed 0; mean
Spearman rho of the fully randomized model's maps vs the Sobel and other-input references,
signed / |map|): saliency 0.05 vs 0.24 / 0.78 (|grad|: both metrics the same), model-sensitive;
Grad-CAM -0.04 vs 0.13 / 0.67, model-sensitive; guided backprop signed 0.58 vs 0.31 / 0.91,
|map| 0.37 vs 0.32 / 0.85, not model-sensitive on both (above Sobel); the Sobel edge map itself
1.0 vs 0.61 (other-input only), not model-sensitive: Adebayo et al.'s pattern. Integrated
gradients and input x gradient: signed 0.05 and 0.03 (model-sensitive, narrowly below Sobel's
0.12 and 0.11: p = 0.04 and 0.01), but |map| 0.92 and
0.91 vs 0.48 / 0.73 (not model-sensitive), so the headline is **not model-sensitive**: zero
pixels get zero attribution under any weights, so where these maps are bright is the input's
doing; only their sign follows the model. That is the honest verdict, spelled out in ``notes``.

A reference that is the method itself (Sobel checked as a method) is not used as its own null.
Every metric's verdict is kept (``verdict_by_metric``) and said in words for researchers
(``metric_verdicts``, ``verdict_reason``). ``PRIMARY_METRIC`` (the signed Spearman
correlation, the first headline metric) is kept for readers of older reports.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from scipy import stats
from torch import nn

from explainers import manipulations
from explainers.canonical import json_safe
from explainers.methods import METHODS, explain, predict

__all__ = [
    "HEADLINE_METRICS",
    "METRICS",
    "METRIC_LABELS",
    "METRIC_SETTINGS",
    "PRIMARY_METRIC",
    "RULE",
    "SanityReport",
    "cascading_randomization_curve",
    "label_randomization_comparison",
    "null_reference_similarities",
    "similarity",
    "spearman_abs",
    "spearman_signed",
    "ssim_abs",
    "topk_intersection",
]

METRICS = ("spearman_abs", "spearman_signed", "ssim_abs", "topk_intersection")
PRIMARY_METRIC = "spearman_signed"
# The headline needs both: the signed metric alone misses input-shaped magnitudes, the |map|
# metric alone misses a sign inversion (see the module docstring).
HEADLINE_METRICS = ("spearman_signed", "spearman_abs")
METRIC_LABELS = {"spearman_signed": "signed Spearman", "spearman_abs": "|map| Spearman",
                 "ssim_abs": "SSIM of |map|", "topk_intersection": "top-k overlap"}
REFERENCE_LABELS = {"sobel_edges": "the Sobel edge map",
                    "other_input": "the map of another input of the same class"}
VERDICT_WORDS = {"model_sensitive": "model-sensitive", "not_model_sensitive": "not model-sensitive",
                 "inconclusive": "inconclusive"}
DEFAULT_ALPHA = 0.05
DEFAULT_TOPK_FRACTION = 0.1
STRUCTURED_REFERENCES = ("sobel_edges", "other_input")
FLOOR_REFERENCE = "random_matched"
METRIC_SETTINGS: dict[str, Any] = {
    "pixel_map": "images: channels summed (|map| metrics: sum of |a_c|; signed: sum of a_c); "
                 "tabular: the feature vector",
    "spearman": "scipy.stats.spearmanr on the flattened pixel maps (average ranks for ties); "
                "identical maps score 1; a constant map (no ranking) against a different map "
                "scores 0",
    "ssim": {"function": "skimage.metrics.structural_similarity",
             "abs_normalization": "sum_c |a_c| divided by its maximum -> [0, 1], data_range 1",
             "signed_maps": "not computed: SSIM's luminance and structure terms are both "
                            "negative for a negated map, so their product is positive; the "
                            "signed Spearman correlation covers sign changes",
             "all_zero_map": "left at 0",
             "win_size": "7, or the largest odd number <= the smaller image side (< 3: not "
                         "computed)",
             "gaussian_weights": False, "K1": 0.01, "K2": 0.03, "use_sample_covariance": True,
             "tabular": "not computed (no 2-D structure)"},
    "topk_intersection": {"importance": "|pixel map| (sum over channels of |a_c|)",
                          "k": "ceil(fraction x number of pixels or features), at least 1",
                          "fraction": DEFAULT_TOPK_FRACTION,
                          "ties": "stable sort by flat position"},
}
RULE = {
    "primary_metric": PRIMARY_METRIC,  # kept for readers of older reports
    "headline_metrics": list(HEADLINE_METRICS),
    "headline": "model_sensitive only if every headline metric says model_sensitive; "
                "not_model_sensitive if any says so; otherwise inconclusive",
    "statistic": "d_i = sim(real_i, randomized_i) - sim(real_i, reference_i), paired by stimulus",
    "test": "scipy.stats.wilcoxon one-sided (alternative 'less' and 'greater'), "
            "zero_method 'zsplit', method 'auto'",
    "structured_references": list(STRUCTURED_REFERENCES),
    "floor_reference": FLOOR_REFERENCE + " (context only)",
    "not_model_sensitive": "checked first: Bonferroni-adjusted p_higher < alpha for at least "
                           "one structured reference (statsmodels multipletests; for 'at least "
                           "one rejects' the same decision as Holm)",
    "model_sensitive": "otherwise, p_lower < alpha against every structured reference "
                       "(intersection-union test, Berger 1982: p = the largest p_lower, no "
                       "multiplicity correction needed)",
    "inconclusive": "otherwise",
    "self_reference": "a reference identical to the method (Sobel as the method) is skipped",
    "combined_with_data_randomization": "when a label-randomized model is given: "
        "model_sensitive only if both checks' headlines say so; not_model_sensitive if either "
        "does; otherwise inconclusive",
    "other_metrics": "ssim_abs and topk_intersection: verdicts reported, not in the headline",
    "in_words": "model-sensitive only when both the signed and the |map| Spearman correlations "
                "put the randomized model's maps below every null reference (an edge map and "
                "another input's map); not model-sensitive when either finds them above one of "
                "those references; otherwise inconclusive.",
}

MapFn = Callable[..., Any]


# ------------------------------------------------------------------------------- metrics


def _pixel_maps(maps: np.ndarray, *, absolute: bool) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W) channel sums; (N, F) -> (N, F)."""
    a = np.asarray(maps, dtype=np.float64)
    if absolute:
        a = np.abs(a)
    if a.ndim == 4:
        return a.sum(axis=1)
    if a.ndim == 2:
        return a
    raise ValueError(f"Maps must be images (N, C, H, W) or tabular (N, F); got shape {list(a.shape)}.")


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"Maps to compare must have the same shape; got {list(a.shape)} and "
                         f"{list(b.shape)}.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("Maps to compare contain NaN or infinite values.")
    return a, b


def _spearman(a: np.ndarray, b: np.ndarray, absolute: bool) -> np.ndarray:
    a, b = _check_pair(a, b)
    pa = _pixel_maps(a, absolute=absolute).reshape(len(a), -1)
    pb = _pixel_maps(b, absolute=absolute).reshape(len(b), -1)
    out = np.empty(len(pa))
    for i, (u, v) in enumerate(zip(pa, pb)):
        if np.array_equal(u, v):
            out[i] = 1.0
        elif np.ptp(u) == 0 or np.ptp(v) == 0:
            out[i] = 0.0  # a constant map carries no ranking to share
        else:
            out[i] = stats.spearmanr(u, v).statistic
    return out


def spearman_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-stimulus Spearman rank correlation of |map| (blind to sign inversion)."""
    return _spearman(a, b, True)


def spearman_signed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-stimulus Spearman rank correlation of the signed maps (a negated map scores -1)."""
    return _spearman(a, b, False)


def ssim_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-stimulus SSIM of the channel-summed |map|, each map divided by its own maximum
    (-> [0, 1], an all-zero map stays 0) with data_range 1. Per-map scaling because the maps of
    a randomized model can be orders of magnitude smaller: SSIM should compare structure."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError as exc:  # pragma: no cover - needs scikit-image==0.26.0 installed
        raise ImportError("SSIM needs scikit-image (pip install scikit-image==0.26.0).") from exc
    a, b = _check_pair(a, b)
    if a.ndim != 4:
        return np.full(len(a), np.nan)  # tabular: no 2-D structure
    pa = _pixel_maps(a, absolute=True)
    pb = _pixel_maps(b, absolute=True)
    side = min(pa.shape[1:])
    win = 7 if side >= 7 else (side if side % 2 else side - 1)
    if win < 3:
        return np.full(len(a), np.nan)
    out = np.empty(len(pa))
    for i, (u, v) in enumerate(zip(pa, pb)):
        out[i] = structural_similarity(_normalized(u), _normalized(v), win_size=win,
                                       data_range=1.0, gaussian_weights=False,
                                       K1=0.01, K2=0.03, use_sample_covariance=True)
    return out


def _normalized(m: np.ndarray) -> np.ndarray:
    scale = np.max(m)
    return m / scale if scale > 0 else m


def topk_intersection(a: np.ndarray, b: np.ndarray, *,
                      fraction: float = DEFAULT_TOPK_FRACTION) -> np.ndarray:
    """Per stimulus, the fraction of the k most important pixels (features) of ``a`` that are
    also among the k most important of ``b``; importance is |pixel map|."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}.")
    a, b = _check_pair(a, b)
    pa = _pixel_maps(a, absolute=True).reshape(len(a), -1)
    pb = _pixel_maps(b, absolute=True).reshape(len(b), -1)
    k = max(1, math.ceil(fraction * pa.shape[1]))
    out = np.empty(len(pa))
    for i, (u, v) in enumerate(zip(pa, pb)):
        top_u = np.argsort(-u, kind="stable")[:k]
        top_v = np.argsort(-v, kind="stable")[:k]
        out[i] = np.intersect1d(top_u, top_v).size / k
    return out


def similarity(a: np.ndarray, b: np.ndarray, *,
               topk_fraction: float = DEFAULT_TOPK_FRACTION) -> dict[str, np.ndarray]:
    """Every metric, per stimulus: ``{metric: array of N}`` (SSIM is NaN for tabular maps)."""
    return {
        "spearman_abs": spearman_abs(a, b),
        "spearman_signed": spearman_signed(a, b),
        "ssim_abs": ssim_abs(a, b),
        "topk_intersection": topk_intersection(a, b, fraction=topk_fraction),
    }


def _summary(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    return {"mean": _f(finite.mean()) if finite.size else None,
            "median": _f(np.median(finite)) if finite.size else None,
            "per_stimulus": [_f(v) for v in values]}


def _summaries(sims: dict[str, np.ndarray]) -> dict:
    return {metric: _summary(values) for metric, values in sims.items()}


# ------------------------------------------------------------------------ running a method


@dataclass
class _Method:
    name: str
    fn: Callable[[nn.Module, np.ndarray, np.ndarray, int], np.ndarray]
    model_independent_reference: str | None  # the null reference it is identical to
    config: dict | None = None  # full recorded configuration, set by the first run


def _resolve_method(method: str | MapFn, config: dict | None) -> _Method:
    """A method name from ``METHODS``, ``"sobel_edges"``, or a callable
    ``fn(model, inputs, *, targets, seed) -> array`` (or an object with ``.attributions``)."""
    if callable(method):
        name = getattr(method, "__qualname__", None) or type(method).__name__

        def run_callable(model, x, targets, seed):
            out = method(model, x, targets=targets, seed=seed)
            return np.asarray(getattr(out, "attributions", out), dtype=np.float32)
        return _Method(f"callable:{name}", run_callable, None,
                       json.loads(json.dumps(config)) if config else None)
    if method == "sobel_edges":
        if config:
            raise ValueError("sobel_edges takes no configuration.")
        return _Method("sobel_edges", lambda model, x, targets, seed: manipulations.sobel_edges(x)[0],
                       "sobel_edges")
    if method in METHODS:
        def run_method(model, x, targets, seed):
            result = explain(model, x, method=method, config=config, targets=targets, seed=seed)
            if m.config is None:
                m.config = {k: v for k, v in result.config.items() if k != "execution"}
            return result.attributions
        m = _Method(method, run_method, None)
        return m
    raise ValueError(f"Unknown method {method!r}: use one of {', '.join(METHODS)}, "
                     "'sobel_edges', or a callable fn(model, inputs, *, targets, seed).")


def _prepare(model: nn.Module, inputs, targets, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
    x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim not in (2, 4) or len(x) == 0:
        raise ValueError(f"inputs must be images (N, C, H, W) or tabular rows (N, F); got "
                         f"shape {list(x.shape)}.")
    if targets is None:
        # Explain the trained model's predicted class under every manipulation: the question
        # is whether the map for the *same* class changes, not which class the broken model
        # would pick.
        return x, predict(model, x)[0], "predicted by the trained model"
    t = np.asarray(targets)
    if t.shape != (len(x),) or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"targets must hold one integer class per stimulus ({len(x)}).")
    return x, t.astype(np.int64), "given"


# ---------------------------------------------------------------------- randomization tests


def _cascade(model, x, targets, m: _Method, seed: int, reference: np.ndarray):
    steps, last = [], None
    for layer in manipulations.randomization_layers(model):
        randomized, record = manipulations.randomize_cascading(model, down_to=layer, seed=seed)
        sims = similarity(reference, m.fn(randomized, x, targets, seed))
        steps.append({"down_to": layer, "layers_randomized": record["layers_randomized"],
                      "randomization": record, "similarity": _summaries(sims)})
        last = sims
    return steps, last


def cascading_randomization_curve(model: nn.Module, inputs, *, method: str | MapFn,
                                  config: dict | None, targets, seed: int) -> dict:
    """Similarity of the trained model's maps to the maps after each cumulative randomization
    step, from the logits down to the first layer (Adebayo et al.'s cascading curve).

    Same method, configuration, targets and seed at every step; ``targets`` default to the
    trained model's predictions. Returns ``{"method", "config", "seed", "targets",
    "target_source", "layers", "steps": [{"down_to", "layers_randomized", "randomization",
    "similarity": {metric: {"mean", "median", "per_stimulus"}}}]}``.
    """
    x, t, source = _prepare(model, inputs, targets, seed)
    m = _resolve_method(method, config)
    reference = m.fn(model, x, t, seed)
    steps, _ = _cascade(model, x, t, m, seed, reference)
    return {"method": m.name, "config": m.config, "seed": int(seed), "targets": t.tolist(),
            "target_source": source, "metric_settings": METRIC_SETTINGS,
            "layers": manipulations.randomization_layers(model), "steps": steps}


def label_randomization_comparison(model: nn.Module, randomized_model: nn.Module, inputs, *,
                                   method: str | MapFn, config: dict | None, targets,
                                   seed: int) -> dict:
    """Similarity of the trained model's maps to those of a model trained on permuted labels
    (data randomization), same method, configuration, targets and seed."""
    x, t, source = _prepare(model, inputs, targets, seed)
    m = _resolve_method(method, config)
    sims = similarity(m.fn(model, x, t, seed), m.fn(randomized_model, x, t, seed))
    return {"method": m.name, "config": m.config, "seed": int(seed), "targets": t.tolist(),
            "target_source": source, "similarity": _summaries(sims)}


def null_reference_similarities(reference: np.ndarray, inputs: np.ndarray, *,
                                predicted: np.ndarray, seed: int,
                                skip: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """Similarity of the real maps to each null reference on the same stimuli:
    ``({name: {metric: array}}, {name: record})``. Sobel only for images."""
    sims, records = {}, {}
    if reference.ndim == 4 and "sobel_edges" not in skip:
        edges, records["sobel_edges"] = manipulations.sobel_edges(inputs)
        sims["sobel_edges"] = similarity(reference, edges)
    if "other_input" not in skip and len(reference) >= 2:
        donor_maps, _, records["other_input"] = manipulations.other_input(
            reference, predicted=predicted, seed=seed, same_class=True)
        sims["other_input"] = similarity(reference, donor_maps)
    if FLOOR_REFERENCE not in skip:
        random_maps, records[FLOOR_REFERENCE] = manipulations.random_matched(reference, seed=seed, algorithm="legacy")
        sims[FLOOR_REFERENCE] = similarity(reference, random_maps)
    return sims, records


def _wilcoxon(d: np.ndarray, alternative: str) -> float | None:
    d = d[np.isfinite(d)]
    if d.size == 0 or np.all(d == 0):
        return 1.0 if d.size else None  # no evidence either way
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy notes exact -> normal switches
        warnings.simplefilter("ignore", UserWarning)
        return float(stats.wilcoxon(d, zero_method="zsplit", alternative=alternative,
                                    method="auto").pvalue)


def _paired(randomized: np.ndarray, ref: np.ndarray) -> dict:
    d = randomized - ref
    finite = d[np.isfinite(d)]
    return {
        "n": int(finite.size),
        "mean_randomized": _f(np.nanmean(randomized)) if np.isfinite(randomized).any() else None,
        "mean_reference": _f(np.nanmean(ref)) if np.isfinite(ref).any() else None,
        "mean_difference": _f(finite.mean()) if finite.size else None,
        "median_difference": _f(np.median(finite)) if finite.size else None,
        "p_lower": _wilcoxon(d, "less"),
        "p_higher": _wilcoxon(d, "greater"),
    }


def _decide(randomized: np.ndarray, nulls: dict[str, np.ndarray], alpha: float) -> dict:
    """Apply RULE to one metric. ``nulls``: structured reference -> per-stimulus similarity."""
    from statsmodels.stats.multitest import multipletests

    tests = {name: _paired(randomized, ref) for name, ref in nulls.items()}
    names = [n for n in tests if tests[n]["p_higher"] is not None]
    if names:
        # For "at least one reference rejects", Holm and Bonferroni make the same decision
        # (Holm's first step is Bonferroni on the smallest p-value).
        _, adjusted, _, _ = multipletests([tests[n]["p_higher"] for n in names], alpha=alpha,
                                          method="bonferroni")
        for n, p in zip(names, adjusted):
            tests[n]["p_higher_adjusted"] = float(p)
    above = [n for n in tests if tests[n].get("p_higher_adjusted", 1.0) < alpha]
    lower = [t["p_lower"] for t in tests.values()]
    # "Below every reference" is an intersection-union test: it rejects only if each one-sided
    # test does at alpha, so its p-value is the largest and needs no multiplicity correction.
    p_every = max(lower) if lower and None not in lower else None
    if above:
        verdict = "not_model_sensitive"
    elif p_every is not None and p_every < alpha:
        verdict = "model_sensitive"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "tests": tests, "above_references": above,
            "p_lower_every_reference": p_every}


def _headline(verdicts: dict[str, str]) -> str:
    got = [verdicts[m] for m in HEADLINE_METRICS if m in verdicts]
    if "not_model_sensitive" in got:
        return "not_model_sensitive"
    if got and all(v == "model_sensitive" for v in got):
        return "model_sensitive"
    return "inconclusive"


def _randomization_test(randomized: dict[str, np.ndarray], null_sims: dict, alpha: float) -> dict:
    structured = [n for n in STRUCTURED_REFERENCES if n in null_sims]
    by_metric = {}
    for metric in METRICS:
        if not np.isfinite(randomized[metric]).any():
            continue  # e.g. SSIM on tabular maps
        by_metric[metric] = _decide(randomized[metric],
                                    {n: null_sims[n][metric] for n in structured}, alpha)
        floor = null_sims.get(FLOOR_REFERENCE, {}).get(metric)
        if floor is not None:
            by_metric[metric]["floor"] = {
                "reference": FLOOR_REFERENCE, "mean": _f(np.nanmean(floor)),
                "p_randomized_above_floor": _wilcoxon(randomized[metric] - floor, "greater")}
    verdicts = {k: v["verdict"] for k, v in by_metric.items()}
    return {"similarity": _summaries(randomized), "verdict": _headline(verdicts),
            "verdict_by_metric": verdicts, "by_metric": by_metric}


# ------------------------------------------------------------------------ verdicts in words


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _refs_in_words(tests: dict, names: list[str]) -> str:
    parts = [f"{REFERENCE_LABELS.get(n, n)} ({_num(tests[n]['mean_reference'])})" for n in names]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _metric_sentence(metric: str, decision: dict, randomized_mean: float | None, who: str,
                     alpha: float) -> str:
    """One sentence a researcher can read: what the randomized maps did against the nulls."""
    label, tests = METRIC_LABELS.get(metric, metric), decision["tests"]
    verdict = decision["verdict"]
    mean = _num(randomized_mean)
    if verdict == "not_model_sensitive":
        said = (f"{who} maps stay more similar to the real maps (mean {mean}) than "
                f"{_refs_in_words(tests, decision['above_references'])} "
                f"{'does' if len(decision['above_references']) == 1 else 'do'}")
    elif verdict == "model_sensitive":
        said = (f"{who} maps are less similar to the real maps (mean {mean}) than every null "
                f"reference: {_refs_in_words(tests, list(tests))}")
    elif not tests:
        said = (f"there is no null reference to compare {who} maps (mean {mean}) with "
                "(too few stimuli)")
    else:
        not_below = [n for n, t in tests.items() if t["p_lower"] is None or t["p_lower"] >= alpha]
        said = (f"{who} maps (mean {mean}) are not shown to be less similar to the real maps "
                f"than {_refs_in_words(tests, not_below)}, nor shown to be more similar than any "
                "null reference")
    return f"{label[:1].upper()}{label[1:]}: {said}: {VERDICT_WORDS[verdict]}."


def _sentences(check: str, test: dict, who: str, alpha: float) -> list[dict]:
    return [{"check": check, "metric": metric, "label": METRIC_LABELS.get(metric, metric),
             "verdict": decision["verdict"], "in_headline": metric in HEADLINE_METRICS,
             "sentence": _metric_sentence(metric, decision,
                                          test["similarity"][metric]["mean"], who, alpha)}
            for metric, decision in test["by_metric"].items()]


def _reason(checks: list[tuple[str, dict]], verdict: str) -> str:
    """The headline verdict and which metrics, references (and checks) it rests on."""
    if verdict == "model_sensitive":
        who = " and the ".join(name for name, _ in checks)
        return (f"Model-sensitive: on both the signed and the |map| Spearman correlations, the "
                f"{who} maps are less similar to the real maps than every null reference.")
    if verdict == "not_model_sensitive":
        parts = []
        for name, test in checks:
            failed = [m for m in HEADLINE_METRICS
                      if test["verdict_by_metric"].get(m) == "not_model_sensitive"]
            refs = [r for m in failed for r in test["by_metric"][m]["above_references"]]
            refs = [REFERENCE_LABELS.get(r, r) for r in dict.fromkeys(refs)]
            if failed:
                metrics = " and the ".join(METRIC_LABELS[m] for m in failed)
                parts.append(f"on the {metrics} correlation{'s' if len(failed) > 1 else ''}, the "
                             f"{name} maps stay more similar to the real maps than "
                             f"{' and '.join(refs)} {'does' if len(refs) == 1 else 'do'}")
        return ("Not model-sensitive: " + "; ".join(parts) + ". The maps show the input more "
                "than the model.")
    return ("Inconclusive: the signed and the |map| Spearman correlations do not both place the "
            "randomized maps below every null reference, and neither places them clearly above "
            "one.")


# ------------------------------------------------------------------------------- the report


@dataclass
class SanityReport:
    method: str
    verdict: str  # "model_sensitive" | "not_model_sensitive" | "inconclusive"
    primary_metric: str
    alpha: float
    n_stimuli: int
    seed: int
    config: dict | None
    targets: list[int]
    target_source: str
    model_randomization: dict  # fully randomized model vs nulls: similarities, tests, verdicts
    null_references: dict  # name -> {"similarity": {metric: summary}, "record": ...}
    cascading: list[dict]  # per cumulative step: similarity summaries and randomization record
    data_randomization: dict | None = None  # label-randomized model, when given
    notes: list[str] = field(default_factory=list)
    rule: dict = field(default_factory=lambda: dict(RULE))
    metric_settings: dict = field(default_factory=lambda: dict(METRIC_SETTINGS))
    headline_metrics: list[str] = field(default_factory=lambda: list(HEADLINE_METRICS))
    verdict_reason: str = ""  # the headline verdict in words, and what it rests on
    # per check and metric: {"check", "metric", "label", "verdict", "in_headline", "sentence"}
    metric_verdicts: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-serializable (NaN becomes None)."""
        return json_safe(asdict(self))


def sanity_check(model: nn.Module, inputs, *, method: str | MapFn, config: dict | None,
                 targets=None, seed: int, randomized_label_model: nn.Module | None = None,
                 alpha: float = DEFAULT_ALPHA) -> SanityReport:
    """Run the randomization checks for one method and give a verdict (see ``RULE``).

    ``method``: a name from ``explainers.methods.METHODS``, ``"sobel_edges"``, or a callable
    ``fn(model, inputs, *, targets, seed)`` returning maps shaped like ``inputs``.
    ``targets``: the class explained per stimulus (default: the trained model's prediction),
    kept fixed under every manipulation. ``seed`` seeds the method, the re-initialization and
    the null references. Use a few dozen stimuli: the tests are per-stimulus paired tests.
    """
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5); got {alpha!r}.")
    x, t, source = _prepare(model, inputs, targets, seed)
    m = _resolve_method(method, config)
    reference = m.fn(model, x, t, seed)
    if reference.shape != x.shape:
        raise ValueError(f"The method returned maps of shape {list(reference.shape)} for inputs "
                         f"of shape {list(x.shape)}.")
    predicted = predict(model, x)[0]
    skip = (m.model_independent_reference,) if m.model_independent_reference else ()
    null_sims, null_records = null_reference_similarities(reference, x, predicted=predicted,
                                                          seed=seed, skip=skip)
    steps, fully_randomized = _cascade(model, x, t, m, seed, reference)
    model_test = _randomization_test(fully_randomized, null_sims, alpha)
    model_test["randomization"] = steps[-1]["randomization"]

    data_test = None
    if randomized_label_model is not None:
        sims = similarity(reference, m.fn(randomized_label_model, x, t, seed))
        data_test = _randomization_test(sims, null_sims, alpha)

    verdict = model_test["verdict"]
    checks = [("randomized model's", model_test)]
    words = _sentences("model_randomization", model_test, "the randomized model's", alpha)
    if data_test is not None:
        pair = {verdict, data_test["verdict"]}
        verdict = ("model_sensitive" if pair == {"model_sensitive"} else
                   "not_model_sensitive" if "not_model_sensitive" in pair else "inconclusive")
        checks.append(("label-randomized model's", data_test))
        words += _sentences("data_randomization", data_test, "the label-randomized model's", alpha)
    notes = _notes(model_test, data_test, len(x), skip)
    nulls = {name: {"similarity": _summaries(sims), "record": null_records[name],
                    "used_in_decision": name in STRUCTURED_REFERENCES}
             for name, sims in null_sims.items()}
    return SanityReport(method=m.name, verdict=verdict, primary_metric=PRIMARY_METRIC,
                        alpha=float(alpha), n_stimuli=len(x), seed=int(seed), config=m.config,
                        targets=t.tolist(), target_source=source, model_randomization=model_test,
                        null_references=nulls, cascading=steps, data_randomization=data_test,
                        notes=notes, verdict_reason=_reason(checks, verdict),
                        metric_verdicts=words)


def _notes(model_test: dict, data_test: dict | None, n: int, skip: tuple[str, ...]) -> list[str]:
    notes = []
    for label, test in (("model randomization", model_test), ("data randomization", data_test)):
        if test is None:
            continue
        signed = test["verdict_by_metric"].get("spearman_signed")
        abs_verdict = test["verdict_by_metric"].get("spearman_abs")
        if abs_verdict == "not_model_sensitive" and signed == "model_sensitive":
            notes.append(
                f"{label}: the signed maps change but their magnitudes do not, so the verdict is "
                "not model-sensitive: where the maps are bright follows the input (with "
                "input-times-gradient methods zero pixels get zero attribution under any "
                "weights); only the sign, the colour, follows the model. If you keep this arm, "
                "show its maps signed, never as magnitude maps, and expect participants to learn "
                "the input's shape from them as much as the model.")
        elif abs_verdict and signed and abs_verdict != signed:
            notes.append(f"{label}: the |map| rank correlation says "
                         f"{VERDICT_WORDS[abs_verdict]} while the signed one says "
                         f"{VERDICT_WORDS[signed]}; the verdict needs both (see "
                         "verdict_by_metric).")
    if n < 10:
        notes.append(f"Only {n} stimuli: the paired tests have little power; use a few dozen.")
    if skip:
        notes.append(f"The method is the null reference {list(skip)}, which was not used as its "
                     "own null.")
    return notes


# ------------------------------------------------------------------------------- helpers


def _f(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None
