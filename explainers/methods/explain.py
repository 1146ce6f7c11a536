"""explain(): validated inputs -> batched, seeded, device-aware Captum attributions."""
from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import captum
import numpy as np
import torch
from torch import nn

from . import runners
from .config import EXECUTION_KEY, METHODS, config_sha256, resolve_config
from .models import (as_float_tensor, check_targets, default_max_batch, gradcam_layer_name,
                     in_attribution_layout, inspect_model, memory_format, predict_tensor,
                     private_copy, resolve_device)


@dataclass
class ExplanationResult:
    attributions: np.ndarray  # float32, same shape as the inputs
    targets: np.ndarray  # int64, the class explained for each stimulus
    config: dict  # full resolved configuration, with an 'execution' record
    convergence_delta: np.ndarray | None = None  # IG: sum(attr) - (f(x) - f(baseline))

    @property
    def config_sha256(self) -> str:
        return config_sha256(self.config)


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed torch (CPU and CUDA), numpy and random for one call, then restore the caller's
    generators: results repeat exactly, and nobody else's random stream is disturbed."""
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = ([device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else [])
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _baseline(cfg: dict, shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    if "baseline" not in cfg:
        return None
    if cfg["baseline"] == "zeros":
        return torch.zeros((1, *shape), device=device)
    arr = np.asarray(cfg["baseline_values"], dtype=np.float32)
    if cfg["modality"] == "image" and arr.ndim == 1 and len(shape) == 3 and arr.shape[0] == shape[0]:
        arr = arr.reshape(shape[0], 1, 1)  # one value per channel
    try:
        arr = np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(f"baseline_values of shape {list(np.shape(cfg['baseline_values']))} do "
                         f"not fit inputs of shape {list(shape)} (give one value per feature or "
                         f"channel, or an array shaped like one input).") from None
    return torch.from_numpy(np.array(arr, dtype=np.float32))[None].to(device)


def _feature_mask(cfg: dict, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor | None, int]:
    kind = cfg.get("feature_mask")
    if kind is None:
        return None, 0
    if kind == "each_feature":
        return torch.arange(shape[0], device=device)[None], shape[0]
    (c, h, w), (gr, gc) = shape, cfg["grid_cells"]
    if gr > h or gc > w:
        raise ValueError(f"grid_cells {cfg['grid_cells']} is finer than the {h}x{w} image.")
    rows = np.concatenate([np.full(len(a), i) for i, a in enumerate(np.array_split(np.arange(h), gr))])
    cols = np.concatenate([np.full(len(a), j) for j, a in enumerate(np.array_split(np.arange(w), gc))])
    cells = rows[:, None] * gc + cols[None, :]
    mask = np.broadcast_to(cells, (c, h, w)).astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(mask))[None].to(device), gr * gc


def _layer(net: nn.Module, cfg: dict) -> nn.Module | None:
    if cfg["method"] != "gradcam":
        return None
    name = cfg["layer"] or gradcam_layer_name(net)
    if name is None:
        raise ValueError("This model has no default Grad-CAM layer; set config 'layer' to a "
                         "convolutional module name.")
    modules = dict(net.named_modules())
    if name not in modules or name == "":
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise ValueError(f"Grad-CAM layer '{name}' is not a module of this model; "
                         f"convolutional layers: {convs}.")
    cfg["layer"] = name  # recorded: the resolved layer is part of the method's configuration
    return modules[name]


def explain(model: nn.Module, inputs: np.ndarray | torch.Tensor, *, method: str,
            config: dict | None = None, targets: Sequence[int] | None = None, seed: int = 0,
            device: str | None = None, max_batch: int | None = None) -> ExplanationResult:
    """Attributions of ``method`` for every stimulus in ``inputs`` (first dimension = stimuli).

    ``targets``: the class to explain per stimulus; default the model's predicted class.
    ``device``: None or "auto" uses CUDA when available. ``max_batch``: most rows (stimuli x
    steps / samples / perturbations) per forward pass; default from a memory estimate.
    The caller's model is not modified; torch/numpy/random are seeded for this call only.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method '{method}'. Known methods: {', '.join(METHODS)}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int)
                                  or max_batch < 1):
        raise ValueError(f"max_batch must be a positive integer; got {max_batch!r}.")
    recorded = (config or {}).get(EXECUTION_KEY) if isinstance(config, dict) else None
    if recorded and recorded.get("seed") not in (None, seed):
        raise ValueError(f"The configuration was recorded with seed {recorded['seed']} but "
                         f"seed={seed} was passed; pass the same seed to repeat it.")
    dev = resolve_device(device)
    x = as_float_tensor(inputs)
    net = private_copy(model, dev)
    info = inspect_model(net, x)
    net = in_attribution_layout(net, x)
    cfg = resolve_config(method, config, modality=info.modality)
    shape = tuple(x.shape[1:])
    layer_given = cfg.get("layer") is not None
    mask, n_features = _feature_mask(cfg, shape, dev)
    ctx = runners.RunContext(net=net, max_batch=max_batch or default_max_batch(x, dev),
                             baseline=_baseline(cfg, shape, dev), feature_mask=mask,
                             num_features=n_features, layer=_layer(net, cfg))
    batching = runners.plan(method, cfg, ctx, shape)
    if targets is None:
        t = torch.from_numpy(predict_tensor(net, x, dev, ctx.max_batch)[0])
    else:
        t = check_targets(targets, x.shape[0], info.num_classes)
    with _seeded(int(seed), dev):
        attributions, delta = runners.run(method, ctx, x, t, cfg, batching, dev)
    cfg[EXECUTION_KEY] = {
        "seed": int(seed), "device": dev.type, "max_batch": ctx.max_batch, "batching": batching,
        "dtype": "float32", "memory_format": str(memory_format(x)).removeprefix("torch."),
        "torch": torch.__version__, "captum": captum.__version__,
        # On CUDA: TF32 (on by default for cuDNN convolutions) lowers precision, and bitwise
        # repeatability needs cudnn.deterministic. Recorded, not changed: they are process-wide.
        "cuda_flags": ({"cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
                        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}
                       if dev.type == "cuda" else None),
        "target_source": "predicted" if targets is None else "given",
    }
    if method == "gradcam":  # in the execution record: a re-run resolves 'layer' as given
        cfg[EXECUTION_KEY]["layer_source"] = (
            "given" if layer_given else
            "architecture default: the last convolutional block's output after its ReLU")
    return ExplanationResult(attributions=attributions, targets=t.numpy().astype(np.int64),
                             config=cfg, convergence_delta=delta)
