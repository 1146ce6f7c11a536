"""Sanity checks for attribution methods (Adebayo et al. 2018), calibrated against nulls.

Two randomization tests: **model parameter randomization** (re-initialize layers from the
logits down, cascading, and explain again with the same method, configuration and targets)
and **data randomization** (the same architecture trained on permuted labels). A method whose
maps stay similar when what the model learned is destroyed shows the input, not the model.

"Similar" is judged against **null references on the same stimuli**, never a fixed threshold
(on small image data unrelated maps reach |rho| 0.4-0.7 against real ones):

- ``sobel_edges``: the input's Sobel edge map (model-independent),
- ``other_input``: the trained model's map of another stimulus with the same predicted class,
- ``random_matched``: a random map with the real map's histogram and smoothness (the floor;
  reported for context, not used in the decision: nothing is reliably below it).

Similarity metrics, per stimulus (``similarity``): Spearman rank correlation of |map| and of
the signed map, SSIM of |map|, top-k intersection. Image maps are first
reduced to 2-D pixel maps by summing over channels (|map| metrics: the sum of |a_c|; signed
metrics: the sum of a_c). |map| metrics cannot see a sign inversion (a negated map scores 1.0),
so the signed metrics are always reported next to them.

Decision rule (``RULE``), for each metric, on per-stimulus differences
d_i = sim(real_i, randomized_i) - sim(real_i, reference_i), paired by stimulus, with one-sided
Wilcoxon signed-rank tests (``scipy.stats.wilcoxon``, zero_method "zsplit"). The structured
references (Sobel, other-input) span the range of similarity that maps *not* produced by this
model for this input reach against the real map; the randomized model's maps should fall in or
below that range:

- ``not_model_sensitive`` (checked first): d is significantly above 0 for *at least one*
  structured reference (Bonferroni over the references, statsmodels): the randomized
  model's maps stay closer to the real maps than a reference that does not come from this
  model for this input (an edge map; another input's explanation).
- ``model_sensitive``: otherwise, when the randomized similarity is significantly below the
  per-stimulus *highest* structured-reference similarity ("closest reference").
- ``inconclusive``: neither (too few stimuli, or the randomized maps sit at the top of the
  null range).

A reference that is the method itself (Sobel checked as a method) is not used as its own null.
The verdict uses the primary metric, the signed Spearman correlation: it compares the map as
computed (for non-negative maps it equals the |map| correlation, for signed maps it also sees
sign changes). Verdicts on every metric are reported, and a disagreement is spelled out in
``notes`` (for input-times-gradient methods on digits, |map| stays similar because zero pixels
get zero attribution under any weights, while the signed map does change).
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
from explainers.methods import METHODS, explain, predict

__all__ = [
    "METRICS",
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
    "primary_metric": PRIMARY_METRIC,
    "statistic": "d_i = sim(real_i, randomized_i) - sim(real_i, reference_i), paired by stimulus",
    "test": "scipy.stats.wilcoxon one-sided (alternative 'less' and 'greater'), "
            "zero_method 'zsplit', method 'auto'",
    "structured_references": list(STRUCTURED_REFERENCES),
    "floor_reference": FLOOR_REFERENCE + " (context only)",
    "not_model_sensitive": "checked first: Bonferroni-adjusted p_higher < alpha for at least "
                           "one structured reference (statsmodels multipletests; for 'at least "
                           "one rejects' the same decision as Holm)",
    "model_sensitive": "otherwise, p_lower < alpha against the per-stimulus maximum of the "
                       "structured references' similarities (the closest reference)",
    "inconclusive": "otherwise",
    "self_reference": "a reference identical to the method (Sobel as the method) is skipped",
    "combined_with_data_randomization": "when a label-randomized model is given: "
        "model_sensitive only if both checks say so; not_model_sensitive if either does; "
        "otherwise inconclusive",
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
        random_maps, records[FLOOR_REFERENCE] = manipulations.random_matched(reference, seed=seed)
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
    closest = None
    if nulls:
        # Per stimulus, the structured reference most similar to the real map.
        closest = _paired(randomized, np.max(np.stack(list(nulls.values())), axis=0))
    if any(t.get("p_higher_adjusted", 1.0) < alpha for t in tests.values()):
        verdict = "not_model_sensitive"
    elif closest is not None and closest["p_lower"] is not None and closest["p_lower"] < alpha:
        verdict = "model_sensitive"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "tests": tests, "closest_reference": closest}


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
    return {"similarity": _summaries(randomized),
            "verdict": by_metric[PRIMARY_METRIC]["verdict"],
            "verdict_by_metric": {k: v["verdict"] for k, v in by_metric.items()},
            "by_metric": by_metric}


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

    def to_dict(self) -> dict:
        """JSON-serializable (NaN becomes None)."""
        return _json_safe(asdict(self))


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
    if data_test is not None:
        pair = {verdict, data_test["verdict"]}
        verdict = ("model_sensitive" if pair == {"model_sensitive"} else
                   "not_model_sensitive" if "not_model_sensitive" in pair else "inconclusive")
    notes = _notes(model_test, data_test, len(x), skip)
    nulls = {name: {"similarity": _summaries(sims), "record": null_records[name],
                    "used_in_decision": name in STRUCTURED_REFERENCES}
             for name, sims in null_sims.items()}
    return SanityReport(method=m.name, verdict=verdict, primary_metric=PRIMARY_METRIC,
                        alpha=float(alpha), n_stimuli=len(x), seed=int(seed), config=m.config,
                        targets=t.tolist(), target_source=source, model_randomization=model_test,
                        null_references=nulls, cascading=steps, data_randomization=data_test,
                        notes=notes)


def _notes(model_test: dict, data_test: dict | None, n: int, skip: tuple[str, ...]) -> list[str]:
    notes = []
    for label, test in (("model randomization", model_test), ("data randomization", data_test)):
        if test is None:
            continue
        primary = test["verdict"]
        abs_verdict = test["verdict_by_metric"].get("spearman_abs")
        if abs_verdict == "not_model_sensitive" and primary == "model_sensitive":
            notes.append(
                f"{label}: the signed maps change but their magnitudes do not (|map| rank "
                "correlation: not_model_sensitive). The magnitudes follow the input, e.g. zero "
                "pixels get zero attribution under any weights with input-times-gradient "
                "methods; show these maps signed, never as magnitude maps.")
        elif abs_verdict and abs_verdict != primary:
            notes.append(f"{label}: the |map| rank correlation says '{abs_verdict}' while the "
                         f"signed one (primary) says '{primary}'; see verdict_by_metric.")
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


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _f(obj)
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    return obj
