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
from .frozen import Frozen, frozen_copy
from .models import (as_float_tensor, check_targets, default_max_batch, gradcam_layer_name,
                     predict_tensor, resolve_device)


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
def _seeded(seed: int, device: torch.device, *, numpy_and_random: bool):
    """Seed torch's generator of ``device`` (and the CPU's) for one call, and numpy's and
    random's when ``numpy_and_random``, then restore the caller's: results repeat exactly, and
    nobody else's random stream is disturbed.

    Only the generators that fork_rng saves are seeded, with the same seed as before:
    torch.manual_seed would also reseed every other CUDA device (not restored after) and, on a
    CPU-only build, queue a lazy CUDA seeding with a formatted stack trace (about 0.1 ms a call).
    Saving and restoring numpy's state costs about 0.06 ms, so it is done only for the methods
    that draw random numbers (METHODS[...].stochastic); the others draw none."""
    devices = ([device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else [])
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        if not numpy_and_random:
            yield
            return
        np_state, py_state = np.random.get_state(), random.getstate()
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


def _context(frozen: Frozen, x: torch.Tensor, cfg: dict, dev: torch.device,
             max_batch: int | None) -> tuple[runners.RunContext, dict]:
    shape = tuple(x.shape[1:])
    mask, n_features = _feature_mask(cfg, shape, dev)
    layout = frozen.input_layout(x)
    ctx = runners.RunContext(net=frozen.net, max_batch=max_batch or default_max_batch(x, dev),
                             baseline=_baseline(cfg, shape, dev), feature_mask=mask,
                             num_features=n_features, layer=_layer(frozen.net, cfg), layout=layout)
    return ctx, runners.plan(cfg["method"], cfg, ctx, shape)


def explain(model: nn.Module, inputs: np.ndarray | torch.Tensor, *, method: str,
            config: dict | None = None, targets: Sequence[int] | None = None, seed: int = 0,
            device: str | None = None, max_batch: int | None = None) -> ExplanationResult:
    """Attributions of ``method`` for every stimulus in ``inputs`` (first dimension = stimuli).

    ``targets``: the class to explain per stimulus; default the model's predicted class.
    ``device``: None or "auto" uses CUDA when available. ``max_batch``: most rows (stimuli x
    steps / samples / perturbations) per forward pass; default from a memory estimate.
    The caller's model is not modified: the work runs on a private frozen copy, kept between
    calls (frozen.py). torch (and numpy and random for the stochastic methods) are seeded for
    this call only.
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
    with frozen_copy(model, dev) as frozen:
        info = frozen.inspect(x)
        cfg = resolve_config(method, config, modality=info.modality)
        layer_given = cfg.get("layer") is not None
        ctx, batching = _context(frozen, x, cfg, dev, max_batch)
        if targets is None:
            t = torch.from_numpy(predict_tensor(frozen.net, x, dev, ctx.max_batch)[0])
        else:
            t = check_targets(targets, x.shape[0], info.num_classes)
        with _seeded(int(seed), dev, numpy_and_random=METHODS[method].stochastic):
            attributions, delta = runners.run(method, ctx, x, t, cfg, batching, dev)
    cfg[EXECUTION_KEY] = {
        "seed": int(seed), "device": dev.type, "max_batch": ctx.max_batch, "batching": batching,
        "dtype": "float32", "memory_format": str(ctx.layout).removeprefix("torch."),
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
