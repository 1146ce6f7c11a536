"""Captum calls, one per method, every argument passed explicitly from the configuration.

Batching: many stimuli x steps/samples/perturbations go through the model in one pass; we split
only to keep each pass under ``max_batch`` rows (``internal_batch_size`` for IG,
``nt_samples_batch_size`` for NoiseTunnel, ``perturbations_per_eval`` for the perturbation
methods). The chosen split is returned and stored: it fixes the order of random draws.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from captum._utils.common import _run_forward
from captum._utils.models.linear_model import (SkLearnLasso, SkLearnLinearRegression,
                                               SkLearnRidge)
from captum.attr import (DeepLift, FeatureAblation, GuidedBackprop, InputXGradient,
                         IntegratedGradients, KernelShap, LayerGradCam, Lime, NoiseTunnel,
                         Occlusion, Saliency)
from torch import nn


@dataclass
class RunContext:
    net: nn.Module
    max_batch: int
    baseline: torch.Tensor | None  # (1, *input shape), on the device
    feature_mask: torch.Tensor | None  # (1, *input shape), long, on the device
    num_features: int  # interpretable features in feature_mask
    layer: nn.Module | None  # Grad-CAM layer
    layout: torch.memory_format = torch.contiguous_format  # of the model's inputs


class _Scaled(nn.Module):
    """f(z * scale): SmoothGrad noise of a fixed stdev in z is noise_fraction x range in x."""

    def __init__(self, net: nn.Module, scale: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("scale", scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z * self.scale)


def _summed_gradients(forward_fn, inputs, target_ind=None, additional_forward_args=None):
    """Captum's compute_gradients, with one autograd root instead of one per row.

    Captum differentiates ``torch.unbind(outputs)`` (one scalar root per row: thousands of
    tiny grad_outputs in a batched IG pass). Rows of a model in eval mode do not interact, so
    the gradient of the sum w.r.t. each row equals that row's own gradient, exactly.
    """
    with torch.autograd.set_grad_enabled(True):
        outputs = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        if outputs[0].numel() != 1:
            raise ValueError("A target class is needed to take gradients of a multi-class output.")
        return torch.autograd.grad(outputs.sum(), inputs)


def _fast(attribution):
    """Use _summed_gradients in a Captum gradient attribution (its documented hook point).

    Also right under the hooks of GuidedBackprop (ReLU gradients clamped elementwise) and
    DeepLift (each row's multipliers from its own input and baseline rows): they act on each
    row's gradient alone, and the one root gives every row the same upstream gradient of ones.
    """
    attribution.gradient_func = _summed_gradients
    return attribution


def _summed_targets(net: nn.Module, t: torch.Tensor) -> Callable:
    """The forward function f(x) = sum_i net(x)[i, t_i], of shape (1,): for Captum methods that
    take no gradient_func (LayerGradCam), one autograd root as in _summed_gradients."""
    index = t.reshape(-1, 1)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return net(inputs).gather(1, index).sum().reshape(1)
    return forward


def _rows(base: torch.Tensor | None, n: int, layout: torch.memory_format) -> torch.Tensor | None:
    # In the inputs' layout: DeepLift concatenates inputs and baselines, IG interpolates them.
    return None if base is None else base.expand(n, *base.shape[1:]).contiguous(memory_format=layout)


def _plan_gradient(method: str, cfg: dict, ctx: RunContext) -> dict:
    mb = ctx.max_batch
    if method == "integrated_gradients":
        return {"stimuli_per_call": max(1, mb // cfg["n_steps"]), "internal_batch_size": mb}
    if method == "smoothgrad":
        steps = cfg["n_steps"] if cfg["base"] == "integrated_gradients" else 1
        chunk = max(1, mb // (cfg["nt_samples"] * steps))
        nsb = max(1, min(cfg["nt_samples"], mb // (chunk * steps)))
        plan = {"stimuli_per_call": chunk, "nt_samples_batch_size": nsb}
        if steps > 1:
            plan["internal_batch_size"] = max(mb, chunk * nsb)
        return plan
    if method == "deeplift":  # inputs and baselines go through together
        return {"stimuli_per_call": max(1, mb // 2)}
    return {"stimuli_per_call": mb}


def _plan_perturbation(method: str, cfg: dict, ctx: RunContext, n_perturb: int) -> dict:
    mb = ctx.max_batch
    if method in ("kernel_shap", "lime"):
        # Captum fits one surrogate per stimulus; samples of one stimulus share a pass.
        return {"stimuli_per_call": 1, "perturbations_per_eval": max(1, min(cfg["n_samples"], mb))}
    chunk = max(1, mb // n_perturb)
    return {"stimuli_per_call": chunk,
            "perturbations_per_eval": max(1, min(n_perturb, mb // chunk))}


def _occlusion_windows(cfg: dict, shape: tuple[int, ...]) -> int:
    (_c, h, w), (wh, ww), (sh, sw) = shape, cfg["window"], cfg["stride"]
    if wh > h or ww > w:
        raise ValueError(f"The occlusion window {cfg['window']} is larger than the "
                         f"{h}x{w} image.")
    return ((h - wh) // sh + 1) * ((w - ww) // sw + 1)


def plan(method: str, cfg: dict, ctx: RunContext, shape: tuple[int, ...]) -> dict:
    if method == "occlusion":
        return _plan_perturbation(method, cfg, ctx, _occlusion_windows(cfg, shape))
    if method in ("feature_ablation", "kernel_shap", "lime"):
        return _plan_perturbation(method, cfg, ctx, ctx.num_features)
    return _plan_gradient(method, cfg, ctx)


# --- one chunk per call: (x on device, targets on device) -> (attributions, delta or None) --

def _ig(ctx, x, t, cfg, p):
    ig = _fast(IntegratedGradients(ctx.net, multiply_by_inputs=cfg["multiply_by_inputs"]))
    base = _rows(ctx.baseline, len(x), ctx.layout)
    out = ig.attribute(x, baselines=base, target=t, n_steps=cfg["n_steps"],
                       method=cfg["integration"], internal_batch_size=p["internal_batch_size"],
                       return_convergence_delta=cfg["return_convergence_delta"])
    return out if cfg["return_convergence_delta"] else (out, None)


def _saliency(ctx, x, t, cfg, p):
    return _fast(Saliency(ctx.net)).attribute(x, target=t, abs=not cfg["signed"]), None


def _smoothgrad(ctx, x, t, cfg, p):
    if cfg["modality"] == "image":
        lo, hi = cfg["input_range"]
        scale = torch.tensor(hi - lo, dtype=torch.float32, device=x.device)
    else:
        scale = torch.tensor(cfg["feature_ranges"], dtype=torch.float32, device=x.device)[None]
    net = _Scaled(ctx.net, scale)
    common = dict(nt_type=cfg["nt_type"], nt_samples=cfg["nt_samples"],
                  nt_samples_batch_size=p["nt_samples_batch_size"],
                  stdevs=float(cfg["noise_fraction"]), draw_baseline_from_distrib=False, target=t)
    if cfg["base"] == "saliency":
        attr = NoiseTunnel(_fast(Saliency(net))).attribute(x / scale, abs=not cfg["signed"], **common)
        # d f / d x = (d f / d z) / scale; squared types (smoothgrad_sq, vargrad) scale twice.
        power = 1 if cfg["nt_type"] == "smoothgrad" else 2
        return attr / scale ** power, None
    ig = _fast(IntegratedGradients(net, multiply_by_inputs=cfg["multiply_by_inputs"]))
    attr = NoiseTunnel(ig).attribute(
        x / scale, baselines=_rows(ctx.baseline, len(x), ctx.layout) / scale,
        n_steps=cfg["n_steps"],
        method=cfg["integration"], internal_batch_size=p["internal_batch_size"], **common)
    return attr, None  # IG is invariant to the change of variables


def _gradcam(ctx, x, t, cfg, p):
    gc = LayerGradCam(_summed_targets(ctx.net, t), ctx.layer)
    attr = gc.attribute(x, target=None, attribute_to_layer_input=cfg["attribute_to_layer_input"],
                        relu_attributions=cfg["relu_attributions"], attr_dim_summation=True)
    if attr.ndim != 4:
        raise ValueError(f"Grad-CAM layer '{cfg['layer']}' does not output a 2-D feature map "
                         f"(output shape {list(attr.shape)}); choose a convolutional layer.")
    mode = cfg["interpolation"]
    align = cfg["align_corners"] if mode in ("bilinear", "bicubic") else None
    attr = F.interpolate(attr, size=tuple(x.shape[2:]), mode=mode, align_corners=align)
    if mode == "bicubic" and cfg["relu_attributions"]:
        attr = attr.clamp_min(0)  # bicubic overshoots below zero
    return attr.expand(-1, x.shape[1], -1, -1).contiguous(), None


def _guided_backprop(ctx, x, t, cfg, p):
    return _fast(GuidedBackprop(ctx.net)).attribute(x, target=t), None


def _deeplift(ctx, x, t, cfg, p):
    dl = _fast(DeepLift(ctx.net, multiply_by_inputs=cfg["multiply_by_inputs"], eps=cfg["eps"]))
    return dl.attribute(x, baselines=_rows(ctx.baseline, len(x), ctx.layout), target=t), None


def _input_x_gradient(ctx, x, t, cfg, p):
    return _fast(InputXGradient(ctx.net)).attribute(x, target=t), None


def _occlusion(ctx, x, t, cfg, p):
    c = x.shape[1]
    attr = Occlusion(ctx.net).attribute(
        x, sliding_window_shapes=(c, *cfg["window"]), strides=(1, *cfg["stride"]),
        baselines=_rows(ctx.baseline, len(x), ctx.layout), target=t,
        perturbations_per_eval=p["perturbations_per_eval"], show_progress=False)
    return attr, None


def _feature_ablation(ctx, x, t, cfg, p):
    attr = FeatureAblation(ctx.net).attribute(
        x, baselines=_rows(ctx.baseline, len(x), ctx.layout), target=t,
        feature_mask=ctx.feature_mask, perturbations_per_eval=p["perturbations_per_eval"], show_progress=False)
    return attr, None


def _kernel_shap(ctx, x, t, cfg, p):
    attr = KernelShap(ctx.net).attribute(
        x, baselines=ctx.baseline, target=t, feature_mask=ctx.feature_mask,
        n_samples=cfg["n_samples"], perturbations_per_eval=p["perturbations_per_eval"],
        return_input_shape=True, show_progress=False)
    return attr, None


def interpretable_kernel(distance: str, width: float) -> Callable:
    """LIME weight of a sample from its binary interpretable vector z (1 = feature kept)."""
    def similarity(original_inp, perturbed_inp, interpretable_inp, **kwargs) -> float:
        z = interpretable_inp.float().flatten()
        ones = torch.ones_like(z)
        if distance == "cosine":
            d = 1.0 - F.cosine_similarity(z, ones, dim=0).item()
        else:
            d = torch.linalg.vector_norm(ones - z).item()
        return math.exp(-(d ** 2) / (2 * width ** 2))
    return similarity


def _surrogate(cfg: dict):
    if cfg["interpretable_model"] == "ridge":
        return SkLearnRidge(alpha=cfg["interpretable_model_alpha"], fit_intercept=cfg["fit_intercept"])
    if cfg["interpretable_model"] == "lasso":
        return SkLearnLasso(alpha=cfg["interpretable_model_alpha"], fit_intercept=cfg["fit_intercept"])
    return SkLearnLinearRegression(fit_intercept=cfg["fit_intercept"])


def _lime(ctx, x, t, cfg, p):
    lime = Lime(ctx.net, interpretable_model=_surrogate(cfg),
                similarity_func=interpretable_kernel(cfg["kernel_distance"], cfg["kernel_width"]))
    attr = lime.attribute(
        x, baselines=ctx.baseline, target=t, feature_mask=ctx.feature_mask,
        n_samples=cfg["n_samples"], perturbations_per_eval=p["perturbations_per_eval"],
        return_input_shape=True, show_progress=False)
    return attr, None


PERTURBATION_METHODS = ("occlusion", "feature_ablation", "kernel_shap", "lime")
RUNNERS = {
    "integrated_gradients": _ig, "saliency": _saliency, "smoothgrad": _smoothgrad,
    "gradcam": _gradcam, "guided_backprop": _guided_backprop, "deeplift": _deeplift,
    "input_x_gradient": _input_x_gradient, "occlusion": _occlusion,
    "feature_ablation": _feature_ablation, "kernel_shap": _kernel_shap, "lime": _lime,
}


def run(method: str, ctx: RunContext, x: torch.Tensor, targets: torch.Tensor, cfg: dict,
        batching: dict, device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
    fn = RUNNERS[method]
    # Grad-CAM differentiates only down to its layer: an input that requires grad would make
    # the forward pass record the layers below it for nothing.
    needs_grad = method not in PERTURBATION_METHODS and method != "gradcam"
    step = batching["stimuli_per_call"]
    attrs, deltas = [], []
    for i in range(0, x.shape[0], step):
        xc = x[i:i + step].to(device, memory_format=ctx.layout)
        if needs_grad:  # set here so Captum does not warn that it did it for us
            xc.requires_grad_(True)
        tc = targets[i:i + step].to(device)
        with warnings.catch_warnings():
            # Expected: the hooks land on our private copy of the model and are removed after.
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            attr, delta = fn(ctx, xc, tc, cfg, batching)
        attrs.append(attr.detach().float().cpu())
        if delta is not None:
            deltas.append(delta.detach().float().cpu().reshape(-1))
    return _joined(attrs), (_joined(deltas) if deltas else None)


def _joined(parts: list[torch.Tensor]) -> np.ndarray:
    """float32 (N, ...) C-contiguous, copied only where the chunks or the layout require it."""
    whole = parts[0] if len(parts) == 1 else torch.cat(parts)
    return whole.contiguous().numpy()
