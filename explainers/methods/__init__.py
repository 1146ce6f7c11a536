"""Attribution methods through Captum, every parameter explicit and recorded.

Public API::

    METHODS                                   name -> MethodInfo(modalities, stochastic, ...)
    default_config(method, *, modality)       full default configuration (JSON-serializable)
    resolve_config(method, overrides, *, modality)   validated configuration (ValueError)
    config_sha256(config) / canonical_json(config)
    data_reference_overrides(method, X_train, *, modality)   training-mean baseline, ranges
    explain(model, inputs, *, method, config=None, targets=None, seed=0, device=None,
            max_batch=None) -> ExplanationResult
    predict(model, inputs, *, device=None, batch_size=1024) -> (classes, probabilities)

Our defaults (each stored in the configuration; Captum's own defaults are never relied on):
IG 50 Gauss-Legendre steps from a zero baseline with its convergence delta; saliency as
|gradient| (``signed: false``, the original Simonyan et al. map); SmoothGrad over saliency with
25 samples of Gaussian noise at 15% of the input range (images: [0, 1]; tabular: per-feature
training range); Grad-CAM on the architecture's last convolution with its ReLU, upsampled
bilinearly; occlusion 2x2 windows, stride 2; KernelSHAP and LIME 200 samples over a 4x4 grid of
cells (images) or single features (tabular); LIME with an exponential kernel of width 0.25 on
the cosine distance of the binary interpretable vector and a ridge surrogate (alpha 1).
"""
from .config import (METHODS, MODALITIES, MethodInfo, canonical_json, config_sha256,
                     data_reference_overrides, default_config, resolve_config)
from .explain import ExplanationResult, explain
from .models import predict

__all__ = [
    "METHODS", "MODALITIES", "MethodInfo", "ExplanationResult", "canonical_json",
    "config_sha256", "data_reference_overrides", "default_config", "explain", "predict",
    "resolve_config",
]
