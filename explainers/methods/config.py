"""Method registry and full, explicit configurations for every attribution method.

Captum's defaults silently change the stimulus a participant sees (``Saliency`` takes |grad|,
``LayerGradCam`` drops Grad-CAM's ReLU, ``NoiseTunnel`` adds absolute noise of 1.0 with 5
samples, ``Lime``/``KernelShap`` draw 25 samples, interpolation is "nearest"). So no parameter
is left to Captum: every one is in the configuration, is passed explicitly, and is stored with
the explanation. ``config_sha256`` hashes the canonical JSON of a configuration.

Keys whose value is fixed (``rule``, ``perturbation``, ``kernel_space``...) document a choice
that Captum hard-codes; they are validated so a stored configuration cannot claim otherwise.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from explainers.canonical import canonical_json, canonical_sha256  # noqa: F401 (re-exported)

MODALITIES = ("image", "tabular")


@dataclass(frozen=True)
class MethodInfo:
    name: str
    modalities: tuple[str, ...]
    stochastic: bool  # draws random numbers: the seed matters
    description: str


METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("integrated_gradients", MODALITIES, False,
               "Integrated Gradients (Sundararajan et al. 2017) from an explicit baseline."),
    MethodInfo("saliency", MODALITIES, False,
               "Gradient of the target logit; signed or absolute (config 'signed')."),
    MethodInfo("smoothgrad", MODALITIES, True,
               "SmoothGrad: NoiseTunnel over saliency or IG, noise as a fraction of the input range."),
    MethodInfo("gradcam", ("image",), False,
               "Grad-CAM with its ReLU, upsampled bilinearly to the input size."),
    MethodInfo("guided_backprop", MODALITIES, False, "Guided Backpropagation."),
    MethodInfo("deeplift", MODALITIES, False, "DeepLift (rescale rule) from an explicit baseline."),
    MethodInfo("input_x_gradient", MODALITIES, False, "Input times gradient."),
    MethodInfo("occlusion", ("image",), False,
               "Occlusion: output change when a sliding window is replaced by the baseline."),
    MethodInfo("feature_ablation", MODALITIES, False,
               "Output change when one feature (tabular) or grid cell (image) is set to the baseline."),
    MethodInfo("kernel_shap", MODALITIES, True, "Kernel SHAP over features / grid cells."),
    MethodInfo("lime", MODALITIES, True,
               "LIME over features / grid cells with an explicit similarity kernel."),
)}

IG_INTEGRATION = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                  "riemann_trapezoid")
BASELINE_KINDS = ("zeros", "training_mean", "custom")
EXECUTION_KEY = "execution"  # added by explain(): seed, device, batch size, versions


# --- validators: each returns the normalized value or raises ValueError ---------------------

def _int(lo: int, hi: int | None = None) -> Callable[[str, Any], int]:
    def check(key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"'{key}' must be an integer {bound}; got {v!r}.")
        return int(v)
    return check


def _float(lo: float, hi: float | None = None, *, lo_open: bool = False) -> Callable[[str, Any], float]:
    def check(key: str, v: Any) -> float:
        ok = isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and (hi is None or v <= hi)
        if not ok:
            bound = (">" if lo_open else ">=") + f" {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise ValueError(f"'{key}' must be a finite number {bound}; got {v!r}.")
        return float(v)
    return check


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"'{key}' must be true or false; got {v!r}.")
    return v


def _choice(*options: Any) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if v not in options:
            raise ValueError(f"'{key}' must be one of {list(options)}; got {v!r}.")
        return v
    return check


def _pair(key: str, v: Any) -> list[int]:
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 1 for i in v)):
        raise ValueError(f"'{key}' must be two positive integers [rows, cols]; got {v!r}.")
    return [int(v[0]), int(v[1])]


def _input_range(key: str, v: Any) -> list[float]:
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(i, (int, float)) and math.isfinite(i) for i in v) or v[1] <= v[0]):
        raise ValueError(f"'{key}' must be [low, high] with low < high; got {v!r}.")
    return [float(v[0]), float(v[1])]


def _optional_positive_list(key: str, v: Any) -> list[float] | None:
    if v is None:
        return None
    arr = _numeric_array(key, v)
    if arr.ndim != 1 or arr.size == 0 or not np.all(arr > 0):
        raise ValueError(f"'{key}' must be a list of positive numbers, one per feature; got {v!r}.")
    return arr.astype(float).tolist()


def _numeric_array(key: str, v: Any) -> np.ndarray:
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"'{key}' must be a number or a (nested) list of numbers.") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"'{key}' must contain only finite numbers.")
    return arr


def _baseline_values(key: str, v: Any) -> Any:
    if v is None:
        return None
    return _numeric_array(key, v).astype(np.float32).astype(float).tolist()


def _str_or_none(key: str, v: Any) -> str | None:
    if v is not None and (not isinstance(v, str) or not v):
        raise ValueError(f"'{key}' must be a module name such as 'features.conv2', or null; got {v!r}.")
    return v


# --- per-method parameter tables ---------------------------------------------------------
# Each entry: key -> (default, validator). Defaults are our choices, documented in the module
# docstring of each method and recorded in every configuration.

def _baseline_params() -> dict:
    # Baselines are explicit: zeros by default (images: black; tabular: 0 in raw units, so
    # researchers usually pass the training mean via data_reference_overrides()).
    return {"baseline": ("zeros", _choice(*BASELINE_KINDS)),
            "baseline_values": (None, _baseline_values)}


def _mask_params(modality: str) -> dict:
    if modality == "image":
        # Superpixel-like square grid: every channel of a cell is one interpretable feature.
        return {"feature_mask": ("grid", _choice("grid")), "grid_cells": ([4, 4], _pair)}
    return {"feature_mask": ("each_feature", _choice("each_feature"))}


def _ig_params() -> dict:
    return {"n_steps": (50, _int(2, 100_000)),
            "integration": ("gausslegendre", _choice(*IG_INTEGRATION)),
            "multiply_by_inputs": (True, _choice(True)),
            **_baseline_params()}


def _params(method: str, modality: str, base: str | None) -> dict:
    if method == "integrated_gradients":
        return {**_ig_params(), "return_convergence_delta": (True, _bool)}
    if method == "saliency":
        # Captum takes |grad| unless abs=False; we store the choice as 'signed'.
        return {"signed": (False, _bool)}
    if method == "smoothgrad":
        base = base or "saliency"
        p: dict = {"base": ("saliency", _choice("saliency", "integrated_gradients")),
                   # Over IG the map is signed by construction.
                   "signed": (base == "integrated_gradients", _bool),
                   "nt_type": ("smoothgrad", _choice("smoothgrad", "smoothgrad_sq", "vargrad")),
                   "nt_samples": (25, _int(1, 10_000)),
                   "noise_fraction": (0.15, _float(0.0, 10.0, lo_open=True)),
                   "draw_baseline_from_distrib": (False, _choice(False))}
        if modality == "image":
            p["input_range"] = ([0.0, 1.0], _input_range)
        else:
            p["feature_ranges"] = (None, _optional_positive_list)
        p["noise_stdev"] = (None, lambda k, v: v)  # derived in resolve_config
        if base == "integrated_gradients":
            p.update(_ig_params())
        return p
    if method == "gradcam":
        return {"layer": (None, _str_or_none),  # None: the architecture's Grad-CAM layer
                "relu_attributions": (True, _bool),
                "attribute_to_layer_input": (False, _bool),
                "interpolation": ("bilinear", _choice("bilinear", "bicubic", "nearest")),
                "align_corners": (False, _bool),
                "channels": ("repeat", _choice("repeat"))}  # same map copied to every channel
    if method == "guided_backprop":
        return {"relu_rule": ("guided", _choice("guided"))}
    if method == "deeplift":
        return {"rule": ("rescale", _choice("rescale")),
                "multiply_by_inputs": (True, _bool),
                "eps": (1e-10, _float(0.0, 1.0, lo_open=True)),
                **_baseline_params()}
    if method == "input_x_gradient":
        return {}
    if method == "occlusion":
        return {"window": ([2, 2], _pair), "stride": ([2, 2], _pair),
                "occlude_all_channels": (True, _choice(True)), **_baseline_params()}
    if method == "feature_ablation":
        return {**_mask_params(modality), **_baseline_params()}
    if method == "kernel_shap":
        return {"n_samples": (200, _int(10, 1_000_000)),
                "perturbation": ("shapley_kernel", _choice("shapley_kernel")),
                **_mask_params(modality), **_baseline_params()}
    if method == "lime":
        return {"n_samples": (200, _int(10, 1_000_000)),
                "perturbation": ("bernoulli_0.5", _choice("bernoulli_0.5")),
                # Similarity on the binary interpretable vector (as the original LIME), not
                # Captum's default cosine distance between raw inputs with width 1.0.
                "kernel": ("exponential", _choice("exponential")),
                "kernel_formula": ("exp(-d**2 / (2 * kernel_width**2))",
                                   _choice("exp(-d**2 / (2 * kernel_width**2))")),
                "kernel_space": ("interpretable", _choice("interpretable")),
                "kernel_distance": ("cosine", _choice("cosine", "euclidean")),
                "kernel_width": (0.25, _float(0.0, 1e6, lo_open=True)),
                "interpretable_model": ("ridge", _choice("ridge", "lasso", "linear_regression")),
                "interpretable_model_alpha": (1.0, _float(0.0, 1e6)),
                "fit_intercept": (True, _bool),
                **_mask_params(modality), **_baseline_params()}
    raise AssertionError(method)


# --- public API ---------------------------------------------------------------------------

def check_method(method: str, modality: str) -> MethodInfo:
    if method not in METHODS:
        raise ValueError(f"Unknown method '{method}'. Known methods: {', '.join(METHODS)}.")
    if modality not in MODALITIES:
        raise ValueError(f"Unknown modality '{modality}'; expected one of {list(MODALITIES)}.")
    info = METHODS[method]
    if modality not in info.modalities:
        raise ValueError(f"Method '{method}' does not apply to {modality} models; it applies to "
                         f"{' and '.join(info.modalities)} models only.")
    return info


def default_config(method: str, *, modality: str) -> dict:
    """The full default configuration of ``method`` for ``modality`` (JSON-serializable)."""
    check_method(method, modality)
    return resolve_config(method, None, modality=modality, allow_incomplete=True)


def resolve_config(method: str, overrides: dict | None, *, modality: str,
                   allow_incomplete: bool = False) -> dict:
    """Defaults updated with ``overrides``, every value validated; raises a clear ValueError.

    ``allow_incomplete`` accepts a configuration whose data-dependent keys (SmoothGrad's
    per-feature ranges on tabular data) are still missing: for checking a researcher's overrides
    before the training data is at hand. Such a configuration cannot be run.

    ``overrides`` may be a full configuration returned earlier (with 'method', 'modality' and
    an 'execution' record of a past run, which is not a request and is dropped here).
    """
    check_method(method, modality)
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ValueError(f"The configuration must be a dict of parameters; got {type(overrides).__name__}.")
    overrides = dict(overrides)
    overrides.pop(EXECUTION_KEY, None)
    for key, expected in (("method", method), ("modality", modality)):
        if key in overrides and overrides.pop(key) != expected:
            raise ValueError(f"The configuration is for a different {key}; expected '{expected}'.")
    base = overrides.get("base") if method == "smoothgrad" else None
    if base is not None and base not in ("saliency", "integrated_gradients"):
        raise ValueError(f"'base' must be one of ['saliency', 'integrated_gradients']; got {base!r}.")
    params = _params(method, modality, base)
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(f"Unknown parameter(s) for {method} on {modality} models: {unknown}. "
                         f"Allowed: {sorted(params)}.")
    cfg: dict = {"method": method, "modality": modality}
    for key, (default, check) in params.items():
        cfg[key] = check(key, overrides[key]) if key in overrides else default
    _check_cross_field(method, modality, cfg, overrides, allow_incomplete)
    json.dumps(cfg, allow_nan=False)  # stays JSON-serializable
    return cfg


def _check_cross_field(method: str, modality: str, cfg: dict, overrides: dict,
                       allow_incomplete: bool) -> None:
    if "baseline" in cfg:
        if cfg["baseline"] == "zeros" and cfg["baseline_values"] is not None:
            raise ValueError("baseline 'zeros' takes no 'baseline_values'; use baseline 'custom' "
                             "or 'training_mean' to pass values.")
        if cfg["baseline"] != "zeros" and cfg["baseline_values"] is None:
            raise ValueError(f"baseline '{cfg['baseline']}' needs 'baseline_values' (one value per "
                             "feature, per channel, or an array shaped like one input).")
    if method != "smoothgrad":
        return
    if cfg["base"] == "integrated_gradients" and not cfg["signed"]:
        raise ValueError("smoothgrad over integrated_gradients is signed; set 'signed' to true "
                         "(or use base 'saliency' for a magnitude map).")
    if modality == "image":
        lo, hi = cfg["input_range"]
        stdev: Any = cfg["noise_fraction"] * (hi - lo)
    elif cfg["feature_ranges"] is None:
        if allow_incomplete:
            stdev = None
        else:
            raise ValueError("smoothgrad on tabular data needs 'feature_ranges' (max - min of each "
                             "feature in the training data) to set the noise per feature; "
                             "data_reference_overrides(method, X_train, modality='tabular') "
                             "computes it.")
    else:
        stdev = [cfg["noise_fraction"] * r for r in cfg["feature_ranges"]]
    if "noise_stdev" in overrides and overrides["noise_stdev"] != stdev:
        raise ValueError("'noise_stdev' is derived (noise_fraction x input range); set "
                         "'noise_fraction' and the range instead.")
    cfg["noise_stdev"] = stdev


def data_reference_overrides(method: str, X_train: np.ndarray, *, modality: str) -> dict:
    """Overrides that tie a method to training data: the training mean as baseline and, for
    SmoothGrad on tabular data, per-feature ranges for the noise. Only keys the method takes.

    Images get a per-channel mean; tabular data a per-feature mean (in raw units).
    """
    params = _params(method, modality, None)
    X = np.asarray(X_train, dtype=np.float64)
    if X.ndim < 2 or X.shape[0] == 0 or not np.all(np.isfinite(X)):
        raise ValueError("X_train must be a non-empty array of finite numbers with a batch dimension.")
    out: dict = {}
    if "baseline" in params:
        axes = (0, 2, 3) if modality == "image" and X.ndim == 4 else 0
        out["baseline"] = "training_mean"
        out["baseline_values"] = X.mean(axis=axes).astype(np.float32).astype(float).tolist()
    if "feature_ranges" in params:
        rng = X.max(axis=0) - X.min(axis=0)
        if np.any(rng <= 0):
            raise ValueError("Some features are constant in X_train, so their range is 0 and "
                             "SmoothGrad noise cannot be scaled to it; drop those features.")
        out["feature_ranges"] = rng.astype(float).tolist()
    return out


def config_sha256(config: dict) -> str:
    return canonical_sha256(config)