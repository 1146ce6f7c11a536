"""Manipulated and placebo explanations for the study's control arms, each seeded and recorded.

Every function returns its result together with a *record*: a JSON-serializable dict holding
every parameter that produced it (seed, rule, per-stimulus choices), stored with the arm so the
manipulation can be audited and repeated exactly.

Model manipulations (the explanation is then computed with the same method and configuration):

- ``randomization_layers(model)``: parameterized layers from the logits down.
- ``randomize_cascading(model, down_to=..., seed=...)``: re-initialize layers cumulatively
  from the logits down to ``down_to`` (Adebayo et al. 2018, cascading randomization).
- ``randomize_independent(model, layer=..., seed=...)``: re-initialize one layer only.
- ``label_randomized_model(...)``: the same architecture trained on permuted labels.

Map manipulations (arrays of attributions in, arrays out, first dimension = stimuli):

- ``invert(attributions, signed=...)``: negated map, or reversed ranks for magnitude maps.
- ``random_matched(attributions, seed=..., inputs=None)``: random map with the real map's
  values, multi-lag smoothness, the method's average layout (border mass) and, for
  input-times-gradient methods, zero exactly where the input is zero (``algorithm="legacy"``:
  the earlier histogram + lag-1 version, kept as a regression guard for the realism check).
- ``sobel_edges(inputs)``: an edge detector, a model-independent baseline.
- ``other_input(attributions, predicted=..., seed=..., inputs=None)``: the explanation of
  another stimulus (for input-times-gradient methods: the donor's gradients times this input).

Placebo maps must match the real ones in low-level statistics (histogram, sparsity,
smoothness): otherwise participants spot the fake from texture alone and the arm measures
texture, not the information in the explanation. Measure it with
``explainers.realism.placebo_realism``. What the demo digits showed (200 test digits, each arm
on its own shared scale; AUC of the fixed classifier, map alone / with the input; before ->
now):

- ``random_matched`` can in principle be matched (it is free to take any texture) and is the
  one to keep improving: IG 0.998 / 1.000 -> 0.76 / 0.89, saliency 0.99 / 0.99 -> 0.79 / 0.82.
  Still spotted: what remains is finer texture (lag-2 autocorrelation, band energies) and how
  |map| follows the input's intensity and edges, which one Gaussian smoothness and a mean
  layout do not reproduce.
- ``other_input`` carries another stimulus's real texture, so the map alone is never spotted
  (0.38 / 0.48); its relation to *this* input is. For input-times-gradient methods the
  donor's gradients times this input fix most of that (IG with the input 0.99 -> 0.68). For
  saliency nothing equivalent exists (|gradient| has no input factor to swap): 0.68 with the
  input.
- ``inverted`` cannot be made indistinguishable: a signed attribution to the predicted class is
  net positive (completeness: it sums to f(x) - f(baseline) > 0), so the negated map is net
  negative, and reversed ranks put a magnitude map's largest values where the real map is
  near zero (border, background). Hiding that would undo the inversion itself (AUC 1.00 for
  both). Use it as a misleading-explanation arm, not as a look-alike placebo.
- ``randomized_model`` is the method itself on another model; its maps cannot be edited
  without ceasing to be that. On its own shared scale it is no longer blank, but its texture
  differs (AUC 0.97 IG, 0.99 saliency): report the realism verdict next to it.
"""
from __future__ import annotations

import copy
import zlib
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from explainers.training import DEFAULT_RANDOMIZED_EPOCHS, train_label_randomized

__all__ = [
    "INIT_SCHEME",
    "invert",
    "label_randomized_model",
    "other_input",
    "randomization_layers",
    "randomize_cascading",
    "randomize_independent",
    "random_matched",
    "sobel_edges",
]

INIT_SCHEME = ("each layer's own reset_parameters() (PyTorch's default initialization; for "
               "Linear and Conv2d: weight kaiming_uniform_(a=sqrt(5)), bias "
               "uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)))")
_LAYER_SEED_RULE = ("numpy.random.SeedSequence([seed, zlib.crc32(layer_name)]).generate_state(1)"
                    "[0]; torch.manual_seed(layer_seed) on the CPU generator inside "
                    "torch.random.fork_rng, right before that layer's reset_parameters()")
# Smoothness search for random_matched: sigma 0 (white noise) plus a geometric grid.
_SIGMA_GRID_SIZE = 32
_SIGMA_GRID_MIN = 0.25


# --------------------------------------------------------------------- model randomization


def randomization_layers(model: nn.Module) -> list[str]:
    """Names of the layers that own parameters, from the top (logits) down.

    Modules that hold only buffers (``Standardize``: the tabular model's fitted mean and std)
    are not layers here and are never touched: re-initializing them would change what the
    input means, not what the model learned. The order is the reverse of module definition
    order, which is the forward order for the allowlisted architectures.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    layers = [name for name, module in model.named_modules()
              if name and any(True for _ in module.parameters(recurse=False))]
    if not layers:
        raise ValueError("The model has no layers with parameters to randomize.")
    return layers[::-1]


def randomize_cascading(model: nn.Module, *, down_to: str | None, seed: int
                        ) -> tuple[nn.Module, dict]:
    """A copy of ``model`` with every layer from the logits down to ``down_to`` (inclusive)
    re-initialized; all layers when ``down_to`` is None. The caller's model is not modified.

    Each layer draws from its own seed (derived from ``seed`` and its name), so a layer gets
    the same new weights at every cascading step and in ``randomize_independent``.
    """
    layers = randomization_layers(model)
    if down_to is None:
        chosen = layers
    else:
        _check_layer(down_to, layers)
        chosen = layers[:layers.index(down_to) + 1]
    net, record = _reinitialize(model, chosen, layers, seed)
    record.update(mode="cascading", down_to=down_to)
    return net, record


def randomize_independent(model: nn.Module, *, layer: str, seed: int) -> tuple[nn.Module, dict]:
    """A copy of ``model`` with only ``layer`` re-initialized (independent randomization)."""
    layers = randomization_layers(model)
    _check_layer(layer, layers)
    net, record = _reinitialize(model, [layer], layers, seed)
    record.update(mode="independent", layer=layer)
    return net, record


def _check_layer(name: str, layers: list[str]) -> None:
    if name not in layers:
        raise ValueError(f"'{name}' is not a parameterized layer of this model; layers from the "
                         f"logits down: {layers}.")


def _layer_seed(seed: int, name: str) -> int:
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode("utf-8"))])
               .generate_state(1)[0])


def _reinitialize(model: nn.Module, chosen: list[str], layers: list[str], seed: int
                  ) -> tuple[nn.Module, dict]:
    seed = _check_seed(seed)
    devices = {t.device for t in [*model.parameters(), *model.buffers()]}
    if len(devices) > 1:
        raise ValueError(f"The model's tensors are spread over several devices {sorted(map(str, devices))}; "
                         "move it to one device first.")
    device = devices.pop()
    # Re-initialize on the CPU so the same seed gives the same weights on every machine.
    net = copy.deepcopy(model).to("cpu")
    modules = dict(net.named_modules())
    missing = [n for n in chosen if not callable(getattr(modules[n], "reset_parameters", None))]
    if missing:
        raise ValueError(f"Layer(s) {missing} have no reset_parameters(), so they cannot be "
                         "re-initialized with their own initialization scheme.")
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    seeds = {name: _layer_seed(seed, name) for name in chosen}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for name in chosen:
            torch.manual_seed(seeds[name])
            modules[name].reset_parameters()
    # Guard: a reset_parameters() that reaches into other modules would break the protocol.
    for key, value in net.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if owner not in chosen and not torch.equal(value, before[key]):
            raise RuntimeError(f"Re-initializing {chosen} changed '{key}', which belongs to a "
                               "layer that was to be kept.")
    net = net.to(device)
    buffers_only = [n for n, m in net.named_modules()
                    if n and not any(True for _ in m.parameters(recurse=False))
                    and any(True for _ in m.buffers(recurse=False))]
    record = {
        "manipulation": "randomized_model",
        "seed": seed,
        "layers_from_logits_down": layers,
        "layers_randomized": list(chosen),
        "layers_kept": [n for n in layers if n not in chosen],
        "buffers_only_modules_untouched": buffers_only,
        "init_scheme": INIT_SCHEME,
        "init_per_layer": {n: f"{type(modules[n]).__name__}.reset_parameters" for n in chosen},
        "layer_seeds": seeds,
        "layer_seed_rule": _LAYER_SEED_RULE,
        "torch_version": torch.__version__,
    }
    return net, record


def label_randomized_model(*, architecture: str, X: np.ndarray, y: np.ndarray, num_classes: int,
                           seed: int = 0, permutation_seed: int | None = None,
                           epochs: int = DEFAULT_RANDOMIZED_EPOCHS, **training_kwargs
                           ) -> tuple[nn.Module, dict]:
    """The built-in ``architecture`` trained on a seeded permutation of ``y`` (data
    randomization). A thin wrapper over ``training.train_label_randomized``; the record holds
    the permutation seed and the full training configuration and accuracies (train accuracy
    against the permuted labels, validation accuracy against the true ones).
    """
    result = train_label_randomized(architecture=architecture, X=X, y=y, num_classes=num_classes,
                                    seed=seed, permutation_seed=permutation_seed, epochs=epochs,
                                    **training_kwargs)
    randomization = result.config["label_randomization"]
    record = {
        "manipulation": "label_randomized_model",
        "architecture": architecture,
        "seed": int(seed),
        "permutation_seed": randomization["permutation_seed"],
        "label_randomization": randomization,
        "training": result.config,
        "train_accuracy_on_permuted_labels": result.train_accuracy,
        "val_accuracy_on_true_labels": result.val_accuracy,
    }
    return result.model, record


# ------------------------------------------------------------------------ map manipulations


def invert(attributions: np.ndarray, *, signed: bool) -> tuple[np.ndarray, dict]:
    """The inverted explanation of each stimulus.

    Signed maps are negated. Unsigned (magnitude) maps cannot be negated without leaving their
    colormap, so their ranks are reversed instead: per stimulus, the sorted values are assigned
    in reverse rank order (the most important feature gets the smallest value), which keeps
    exactly the same histogram. Ties are ranked by position (a stable sort).
    """
    a = _as_maps(attributions)
    if not isinstance(signed, bool):
        raise ValueError(f"signed must be true or false; got {signed!r}.")
    if signed:
        out = -a
    else:
        if np.any(a < 0):
            raise ValueError("signed=False was given but the maps have negative values; pass "
                             "signed=True to negate a signed map.")
        flat = a.reshape(len(a), -1)
        out = np.empty_like(flat)
        for i, row in enumerate(flat):
            order = np.argsort(row, kind="stable")  # ascending ranks
            out[i, order] = row[order][::-1]
        out = out.reshape(a.shape)
    record = {
        "manipulation": "inverted",
        "signed": signed,
        "rule": ("negated map" if signed else
                 "ranks reversed per stimulus: the k-th largest value moves to the position of "
                 "the k-th smallest; the same values (histogram) are kept"),
        "tie_break": None if signed else "stable sort by flat position (C, H, W order)",
    }
    return out, record


def random_matched(attributions: np.ndarray, *, seed: int,
                   smoothness_sigma: float | None = None, inputs: np.ndarray | None = None,
                   input_relation: str = "auto", algorithm: str = "multiscale"
                   ) -> tuple[np.ndarray, dict]:
    """A random map per stimulus with the real map's values, smoothness, layout and relation to
    the input, carrying nothing of where the real map puts its values.

    Images (N, C, H, W), ``algorithm="multiscale"`` (the default; see the module docstring):

    1. A random signed field: standard normal noise smoothed with ``gaussian_filter`` (sigma).
    2. An envelope that says where values may be large, never taken from this stimulus's own
       map: with ``input_relation="times_input"`` the input itself (|x|; the map is then zero
       exactly where the input is zero, as for IG and input x gradient); otherwise the mean |map|
       of the *other* stimuli (leave-one-out), the method's average layout (border mass).
    3. Scores = envelope x (field - t) for signed maps, where t makes the number of negative
       scores equal the real map's number of negative values; envelope x exp(field) for
       magnitude maps.
    4. Rank transfer: the real map's sorted values are assigned in the scores' order, so the
       values (histogram, sparsity, sign balance) are exactly the real ones.
    5. Sigma is chosen per stimulus from a grid (or given) so that the result's spatial
       autocorrelation at lags 1, 2 and 4, of the map and of |map|, is closest (least squares)
       to the real map's (translation-invariant statistics: they say nothing about where).

    ``input_relation``: "auto" (default) uses "times_input" when ``inputs`` are given and every
    real map is exactly zero wherever its input is zero (a property of the method over the
    whole sample, not of one stimulus), else "none". ``algorithm="legacy"``: the earlier
    algorithm (white noise smoothed to the real map's lag-1 autocorrelation, then rank transfer;
    no envelope, no input relation), kept as a regression guard for the realism check.
    Tabular (N, F): a random permutation of the real values across features.
    """
    if algorithm == "legacy":
        return _random_matched_legacy(attributions, seed=seed, smoothness_sigma=smoothness_sigma)
    if algorithm != "multiscale":
        raise ValueError(f"algorithm must be 'multiscale' or 'legacy'; got {algorithm!r}.")
    a = _as_maps(attributions)
    seed = _check_seed(seed)
    _check_sigma(smoothness_sigma)
    if a.ndim == 2:
        return _random_matched_legacy(a, seed=seed)
    if a.ndim != 4:
        raise ValueError(f"random_matched takes image maps (N, C, H, W) or tabular maps (N, F); "
                         f"got shape {list(a.shape)}.")
    x = _as_inputs_like(inputs, a)
    relation = _input_relation(a, x, input_relation)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(a))]
    h, w = a.shape[2:]
    grid = _sigma_grid(h, w) if smoothness_sigma is None else [float(smoothness_sigma)]
    lags = [lag for lag in _MATCH_LAGS if lag < min(h, w)]
    base, layout = _envelope_parts(a, x, relation)
    noises = [(rng.standard_normal(real.shape), rng.random(real.size)) for real, rng in zip(a, rngs)]

    def generate(i: int, gamma: float) -> tuple[np.ndarray, float, float]:
        real, (noise, tie_break) = a[i], noises[i]
        envelope = base[i] * layout[i] ** gamma
        target = _autocorrelations(real, lags)
        best = None
        for sigma in grid:
            candidate = _rank_transfer(real, _scores(real, _smooth(noise, sigma), envelope), tie_break)
            err = float(np.sum((_autocorrelations(candidate, lags) - target) ** 2))
            if best is None or err < best[2]:
                best = (candidate, float(sigma), err)
        return best

    # One layout exponent for the whole arm: the one whose maps put the same share of their
    # mass in the border ring as the real maps, on average (measured on a fixed subsample).
    ring = max(1, int(round(min(h, w) / 8)))
    sample = np.linspace(0, len(a) - 1, min(len(a), _GAMMA_SAMPLE)).round().astype(int)
    target_border = np.mean([_border_share(a[i], ring) for i in sample])
    gamma_errors = {g: abs(np.mean([_border_share(generate(i, g)[0], ring) for i in sample]) - target_border)
                    for g in _GAMMA_GRID}
    gamma = min(gamma_errors, key=gamma_errors.get)
    out = np.empty_like(a)
    sigmas, targets, achieved, errors = [], [], [], []
    for i in range(len(a)):
        out[i], sigma, err = generate(i, gamma)
        sigmas.append(sigma)
        targets.append(_json_float(_lag1_autocorrelation(a[i])))
        achieved.append(_json_float(_lag1_autocorrelation(out[i])))
        errors.append(_json_float(err))
    record = {
        "manipulation": "random_matched",
        "algorithm": "multiscale",
        "modality": "image",
        "seed": seed,
        "rng": "numpy default_rng(SeedSequence(seed).spawn(N)[i]) for stimulus i: noise, then "
               "tie-break keys",
        "noise": "standard normal, one value per element (C, H, W)",
        "smoothing": "scipy.ndimage.gaussian_filter per channel over (H, W), mode 'reflect', "
                     "truncate 4.0",
        "input_relation": relation,
        "input_relation_requested": input_relation,
        "envelope": ("|input| of the stimulus" if relation == "times_input" else "1")
                    + " x layout ** gamma; layout = leave-one-out mean over the other stimuli of "
                    + ("|map| / |input| where the input is non-zero" if relation == "times_input"
                       else "|map|") + ", per channel and position",
        "layout_gamma": float(gamma),
        "layout_gamma_rule": (f"from {list(_GAMMA_GRID)}: the mean share of |map| in the border "
                              f"ring ({ring} px) closest to the real maps', on stimuli "
                              f"{sample.tolist()}"),
        "scores": ("envelope * (field - t), t the real map's count of negative values-th "
                   "smallest field value where the envelope is non-zero" if _is_signed(a) else
                   "envelope * |field|"),
        "histogram": "rank transfer: the real map's sorted values assigned in the scores' rank "
                     "order (exactly the same values); ties broken by a random key",
        "sigma_source": "estimated" if smoothness_sigma is None else "given",
        "smoothness_statistic": (f"least squares over the spatial autocorrelation at lags {lags} "
                                 "of the map and of |map| (Pearson, horizontal and vertical "
                                 "pairs pooled)"),
        "sigma_grid": grid,
        "smoothness_sigma": sigmas,
        "real_autocorrelation": targets,  # lag 1, for reading
        "achieved_autocorrelation": achieved,
        "autocorrelation_squared_error": errors,
    }
    return out, record


_MATCH_LAGS = (1, 2, 4)
_GAMMA_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
_GAMMA_SAMPLE = 32
_LAYOUT_PRIOR = 8
_INPUT_RELATIONS = ("auto", "none", "times_input")


def _check_sigma(smoothness_sigma) -> None:
    if smoothness_sigma is not None and (isinstance(smoothness_sigma, bool) or not
                                         np.isfinite(smoothness_sigma) or smoothness_sigma < 0):
        raise ValueError(f"smoothness_sigma must be None or a number >= 0; got {smoothness_sigma!r}.")


def _sigma_grid(h: int, w: int) -> list[float]:
    return [0.0, *np.geomspace(_SIGMA_GRID_MIN, max(max(h, w) / 2, _SIGMA_GRID_MIN * 2),
                               _SIGMA_GRID_SIZE).tolist()]


def _is_signed(a: np.ndarray) -> bool:
    return bool(np.any(a < 0))


def _as_inputs_like(inputs, a: np.ndarray) -> np.ndarray | None:
    if inputs is None:
        return None
    x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    x = np.asarray(x, dtype=np.float64)
    if x.shape != a.shape:
        raise ValueError(f"inputs must have the attributions' shape {list(a.shape)}; got "
                         f"{list(x.shape)}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("inputs contain NaN or infinite values.")
    return x


def _input_relation(a: np.ndarray, x: np.ndarray | None, requested: str) -> str:
    """"times_input" when the maps are zero wherever the input is zero, over the whole sample."""
    if requested not in _INPUT_RELATIONS:
        raise ValueError(f"input_relation must be one of {list(_INPUT_RELATIONS)}; got {requested!r}.")
    if requested == "times_input" and x is None:
        raise ValueError("input_relation='times_input' needs the inputs.")
    if requested != "auto":
        return requested
    if x is None:
        return "none"
    zero = x == 0
    return "times_input" if zero.any() and not np.any(a[zero]) else "none"


def _envelope_parts(a: np.ndarray, x: np.ndarray | None, relation: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Where each stimulus's random map may be large, never from the stimulus's own map:
    ``base`` (the input's magnitude for times_input, else 1) and ``layout``, the method's average
    layout over the *other* stimuli (leave-one-out mean of |map| / |input| where the input is
    non-zero, or of |map|), scaled to a maximum of 1 per stimulus."""
    mags = np.abs(a.astype(np.float64))
    base = np.abs(x) if relation == "times_input" else np.ones_like(mags)
    valid = base > 0
    ratio = np.where(valid, mags / np.where(valid, base, 1.0), 0.0)
    if len(a) == 1:
        return base, np.ones_like(mags)
    total, count = ratio.sum(axis=0, keepdims=True), valid.sum(axis=0, keepdims=True)
    loo_count = count - valid
    layout = np.where(loo_count > 0, (total - ratio) / np.maximum(loo_count, 1), 0.0)
    # Shrunk towards a flat layout as if _LAYOUT_PRIOR more stimuli were flat: with a handful of
    # stimuli the average of the others is mostly noise (negligible with hundreds).
    flat = layout.reshape(len(a), -1).mean(axis=1).reshape(-1, 1, 1, 1)
    layout = ((len(a) - 1) * layout + _LAYOUT_PRIOR * flat) / (len(a) - 1 + _LAYOUT_PRIOR)
    peak = layout.reshape(len(a), -1).max(axis=1).reshape(-1, 1, 1, 1)
    layout = layout / np.where(peak > 0, peak, 1.0)
    # A floor keeps positions the other maps never used in play (they rank last).
    return base, layout + 1e-6


def _border_share(m: np.ndarray, ring: int) -> float:
    mags = np.abs(m)
    total = mags.sum()
    inner = mags[..., ring:mags.shape[-2] - ring, ring:mags.shape[-1] - ring].sum()
    return float((total - inner) / total) if total > 0 else 0.0


def _scores(real: np.ndarray, field: np.ndarray, envelope: np.ndarray) -> np.ndarray:
    field = (field - field.mean()) / (field.std() or 1.0)
    if not np.any(real < 0):
        return envelope * np.abs(field)
    negatives = int(np.sum(real < 0))
    support = envelope > 0
    values = np.sort(field[support])
    if values.size == 0:
        return field
    k = min(negatives, values.size)
    if k == 0:
        t = values[0] - 1.0
    elif k == values.size:
        t = values[-1] + 1.0
    else:
        t = (values[k - 1] + values[k]) / 2
    return envelope * (field - t)


def _autocorrelations(m: np.ndarray, lags: list[int]) -> np.ndarray:
    out = []
    for v in (m, np.abs(m)):
        for lag in lags:
            out.append(_lag_autocorrelation(v, lag))
    return np.nan_to_num(np.array(out), nan=0.0)


def _lag_autocorrelation(m: np.ndarray, lag: int) -> float:
    left = np.concatenate([m[:, :, :-lag].ravel(), m[:, :-lag, :].ravel()])
    right = np.concatenate([m[:, :, lag:].ravel(), m[:, lag:, :].ravel()])
    if left.size < 2 or np.ptp(left) == 0 or np.ptp(right) == 0:
        return float("nan")
    return float(np.corrcoef(left, right)[0, 1])


def _random_matched_legacy(attributions: np.ndarray, *, seed: int,
                           smoothness_sigma: float | None = None) -> tuple[np.ndarray, dict]:
    """The earlier random_matched (kept as a regression guard for the realism check: the check
    must call these maps spotted on the demo digits). White noise smoothed per stimulus to the
    real map's lag-1 autocorrelation, then the real values by rank transfer; tabular rows: a
    random permutation of the real values."""
    a = _as_maps(attributions)
    seed = _check_seed(seed)
    _check_sigma(smoothness_sigma)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(a))]
    rng_rule = "numpy default_rng(SeedSequence(seed).spawn(N)[i]) for stimulus i"
    if a.ndim == 2:
        out = np.stack([row[rng.permutation(row.size)] for row, rng in zip(a, rngs)])
        return out, {"manipulation": "random_matched", "modality": "tabular", "seed": seed,
                     "rng": rng_rule,
                     "rule": "random permutation of the real values across features"}
    if a.ndim != 4:
        raise ValueError(f"random_matched takes image maps (N, C, H, W) or tabular maps (N, F); "
                         f"got shape {list(a.shape)}.")
    h, w = a.shape[2:]
    grid = _sigma_grid(h, w) if smoothness_sigma is None else [float(smoothness_sigma)]
    out = np.empty_like(a)
    sigmas, targets, achieved = [], [], []
    for i, (real, rng) in enumerate(zip(a, rngs)):
        noise = rng.standard_normal(real.shape)
        target = _lag1_autocorrelation(real)
        best = None
        for sigma in grid:
            candidate = _rank_transfer(real, _smooth(noise, sigma))
            ac = _lag1_autocorrelation(candidate)
            err = abs(ac - target) if np.isfinite(ac) and np.isfinite(target) else np.inf
            if best is None or err < best[0]:
                best = (err, sigma, candidate, ac)
        _, sigma, out[i], ac = best
        sigmas.append(float(sigma))
        targets.append(_json_float(target))
        achieved.append(_json_float(ac))
    record = {
        "manipulation": "random_matched",
        "algorithm": "legacy",
        "modality": "image",
        "seed": seed,
        "rng": rng_rule,
        "noise": "standard normal, one value per element (N, C, H, W)",
        "smoothing": "scipy.ndimage.gaussian_filter per channel over (H, W), mode 'reflect', "
                     "truncate 4.0",
        "histogram": "rank transfer: the real map's sorted values assigned in the smoothed "
                     "noise's rank order (exactly the same values)",
        "sigma_source": "estimated" if smoothness_sigma is None else "given",
        "smoothness_statistic": "lag-1 spatial autocorrelation (Pearson, horizontal and "
                                "vertical neighbour pairs pooled)",
        "sigma_grid": grid,
        "smoothness_sigma": sigmas,
        "real_autocorrelation": targets,
        "achieved_autocorrelation": achieved,
    }
    return out, record


def _smooth(noise: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return noise
    return ndimage.gaussian_filter(noise, sigma=(0.0, sigma, sigma), mode="reflect", truncate=4.0)


def _rank_transfer(real: np.ndarray, scores: np.ndarray,
                   tie_break: np.ndarray | None = None) -> np.ndarray:
    """The real map's sorted values placed in the scores' rank order (ties: ``tie_break``)."""
    out = np.empty(real.size, dtype=real.dtype)
    if tie_break is None:
        order = np.argsort(scores, axis=None, kind="stable")
    else:
        order = np.lexsort((tie_break, scores.ravel()))
    out[order] = np.sort(real, axis=None)
    return out.reshape(real.shape)


def _lag1_autocorrelation(m: np.ndarray) -> float:
    """Pearson correlation of horizontally and vertically adjacent values (C, H, W)."""
    left = np.concatenate([m[:, :, :-1].ravel(), m[:, :-1, :].ravel()])
    right = np.concatenate([m[:, :, 1:].ravel(), m[:, 1:, :].ravel()])
    if left.size < 2 or np.ptp(left) == 0 or np.ptp(right) == 0:
        return float("nan")
    return float(np.corrcoef(left, right)[0, 1])


def sobel_edges(inputs: np.ndarray | torch.Tensor) -> tuple[np.ndarray, dict]:
    """Sobel edge magnitude of each input image, shaped like its attributions (N, C, H, W).

    A model-independent baseline: it looks like a plausible saliency map but knows nothing
    about the model, so a sanity check must flag it and a study can use it as a placebo arm.
    Per channel: hypot(sobel along H, sobel along W) with ``scipy.ndimage.sobel``.
    """
    x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"sobel_edges takes images (N, C, H, W); got shape {list(x.shape)}. "
                         "Edges are not defined for tabular rows.")
    if not np.all(np.isfinite(x)):
        raise ValueError("inputs contain NaN or infinite values.")
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            img = x[n, c].astype(np.float64)
            out[n, c] = np.hypot(ndimage.sobel(img, axis=0, mode="reflect"),
                                 ndimage.sobel(img, axis=1, mode="reflect"))
    record = {"manipulation": "sobel_edges", "model_independent": True,
              "rule": "per image and channel: hypot(scipy.ndimage.sobel(axis=H), "
                      "scipy.ndimage.sobel(axis=W)), mode 'reflect', on the raw input values"}
    return out, record


def other_input(attributions: np.ndarray, *, predicted: Sequence[int] | np.ndarray, seed: int,
                same_class: bool = True, inputs: np.ndarray | None = None,
                input_relation: str = "auto") -> tuple[np.ndarray, np.ndarray, dict]:
    """For each stimulus, the explanation of another stimulus: ``(maps, donors, record)``.

    ``maps[i] = attributions[donors[i]]`` with ``donors[i] != i`` drawn uniformly (seeded)
    among the stimuli with the same predicted class (``same_class=True``) or with a different
    one (``same_class=False``). Fallback: when no such stimulus exists (the class has one
    member, or every stimulus has the same class), the donor is drawn among all other stimuli;
    those stimuli are listed in the record's ``fallback_stimuli``.

    With ``inputs`` and an input-times-gradient method (``input_relation`` "auto" detects it as
    in ``random_matched``: every real map is zero wherever its input is zero), the donor's map
    is not pasted as it is (it would colour this input's blank background and leave its strokes
    empty): the donor's per-position multiplier (map / input where the donor's input is
    non-zero, extended to the rest of the image from the nearest such position,
    ``scipy.ndimage.distance_transform_edt``) is multiplied by this stimulus's input, i.e.
    ``maps[i] = inputs[i] * gradient_field(donor)``, the map this input would get from the
    donor's gradients.
    """
    a = _as_maps(attributions)
    seed = _check_seed(seed)
    pred = np.asarray(predicted)
    if pred.shape != (len(a),) or (pred.size and not np.issubdtype(pred.dtype, np.integer)):
        raise ValueError(f"predicted must hold one integer class per stimulus ({len(a)}); got "
                         f"{pred.dtype} of shape {list(pred.shape)}.")
    if len(a) < 2:
        raise ValueError("other_input needs at least two stimuli.")
    rng = np.random.default_rng(seed)
    indices = np.arange(len(a))
    donors = np.empty(len(a), dtype=np.int64)
    fallback = []
    for i in indices:
        match = (pred == pred[i]) if same_class else (pred != pred[i])
        eligible = indices[match & (indices != i)]
        if eligible.size == 0:
            eligible = indices[indices != i]
            fallback.append(int(i))
        donors[i] = eligible[rng.integers(eligible.size)]
    record = {
        "manipulation": "other_input",
        "seed": seed,
        "same_class": bool(same_class),
        "rule": ("donor drawn uniformly with numpy default_rng(seed).integers, stimulus by "
                 "stimulus in order, among the other stimuli with the "
                 + ("same" if same_class else "a different") + " predicted class"),
        "fallback_rule": "no eligible donor: drawn among all other stimuli",
        "fallback_stimuli": fallback,
        "donors": donors.tolist(),
        "predicted": pred.astype(np.int64).tolist(),
    }
    x = _as_inputs_like(inputs, a)
    relation = _input_relation(a, x, input_relation) if a.ndim == 4 else "none"
    record["input_relation"] = relation
    if relation != "times_input":
        return a[donors].copy(), donors, record
    field = _multiplier_field(a, x)
    record["rule_times_input"] = ("maps[i] = inputs[i] * field[donors[i]]; field = map / input "
                                  "where the input is non-zero, elsewhere the value at the nearest "
                                  "such position (scipy.ndimage.distance_transform_edt, per "
                                  "channel)")
    return (x * field[donors]).astype(a.dtype), donors, record


def _multiplier_field(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """map / input on the input's support, extended by nearest neighbour (N, C, H, W)."""
    field = np.zeros(a.shape, dtype=np.float64)
    for n in range(a.shape[0]):
        for c in range(a.shape[1]):
            support = x[n, c] != 0
            if not support.any():
                continue
            ratio = np.where(support, a[n, c] / np.where(support, x[n, c], 1.0), 0.0)
            _, (rows, cols) = ndimage.distance_transform_edt(~support, return_indices=True)
            field[n, c] = ratio[rows, cols]
    return field


# ------------------------------------------------------------------------------- helpers


def _as_maps(attributions) -> np.ndarray:
    a = np.asarray(attributions)
    if not np.issubdtype(a.dtype, np.number) or a.ndim < 2 or a.shape[0] == 0:
        raise ValueError(f"attributions must be a numeric array (N, ...) with at least one "
                         f"stimulus; got shape {list(a.shape)}.")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError("attributions contain NaN or infinite values.")
    return a


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
    return int(seed)


def _json_float(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None
