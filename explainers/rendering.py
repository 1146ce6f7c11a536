"""Deterministic PNG rendering of stimuli and explanations for participants.

Raw float attributions are stored elsewhere; this module turns arrays into PNG bytes that are
identical byte for byte on every call: numpy for the arithmetic, a matplotlib colormap *lookup*
(``matplotlib.colormaps``; no pyplot, no global state), Pillow to encode with fixed compression
and no metadata chunks (no text, time or software chunks). Bar charts are drawn with matplotlib's
object API onto an Agg canvas and re-encoded by Pillow, for the same reason.

Choices (the same for every arm of a study, real and manipulated):

* Signed maps use ``RdBu_r`` (ColorBrewer RdBu: blue negative, white 0, red positive), a
  diverging map that stays distinguishable with the common colour-vision deficiencies (it is
  not red-green). Magnitude maps use ``viridis``, perceptually uniform and colour-blind safe.
* Scale: values are divided by a scale ``s`` and clipped to [-1, 1]. ``s`` is the 99th
  percentile of |map| (``clip_percentile``), or the maximum |map| when that percentile is 0
  (maps with under 1% non-zero values). ``normalization`` must be chosen explicitly:
  ``"shared"`` uses a scale passed in (compute it with :func:`attribution_scale` over, e.g., the
  real arm's maps, and use it for every arm), ``"per_image"`` computes ``s`` from each map.
  Per-image scaling stretches a near-empty map (say, from a randomized model) to full contrast,
  which is itself a manipulation; shared scaling keeps arms comparable.
* Overlay: the colour is blended over a grey copy of the input with opacity ``alpha`` (0.5)
  wherever the attribution is non-zero; where it is exactly 0 the overlay is fully transparent
  and the grey input shows through unchanged. Colour alone encodes sign and size (opacity
  proportional to |v| would fade mid-sized values twice, in colour and in opacity).
* Small images (8x8 digits) are enlarged with nearest-neighbour by the largest integer factor
  that keeps the longest side within ``size`` (224 px), so every input pixel is a square block.

Nothing here takes a class name, target or model output, so none can end up in the pixels or
metadata of a stimulus shown to someone who has to predict it.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

DIVERGING_CMAP = "RdBu_r"
SEQUENTIAL_CMAP = "viridis"
DISPLAY_SIZE = 224
CLIP_PERCENTILE = 99.0
OVERLAY_ALPHA = 0.5
PNG_COMPRESS_LEVEL = 6
# Okabe-Ito colours (colour-blind safe): vermillion for positive, blue for negative bars,
# orange for edit outlines.
POSITIVE_COLOR = "#D55E00"
NEGATIVE_COLOR = "#0072B2"
OUTLINE_RGB = (230, 159, 0)
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


# --- encoding and geometry --------------------------------------------------------------

def encode_png(rgb: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes with fixed settings and no metadata chunks."""
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"encode_png takes an (H, W, 3) RGB array; got shape {list(arr.shape)}.")
    buf = io.BytesIO()
    # No pnginfo, no dpi, no icc_profile: nothing but image data in the file.
    Image.fromarray(arr).save(buf, format="PNG", optimize=False,
                                          compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def upscale_factor(height: int, width: int, size: int) -> int:
    return max(1, int(size) // max(height, width))


def _upscale(rgb: np.ndarray, size: int) -> np.ndarray:
    k = upscale_factor(rgb.shape[0], rgb.shape[1], size)
    return np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)


def _image_hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) / (H, W, C) / (H, W) image in [0, 1] -> float (H, W, C), C in (1, 3).
    A 3-D array with 1 or 3 leading channels is read as the models' (C, H, W)."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"An image must be (C, H, W) or (H, W, C) with 1 or 3 channels, or "
                         f"(H, W); got shape {list(np.shape(image))}.")
    if not np.all(np.isfinite(img)):
        raise ValueError("The image contains NaN or infinite values.")
    return np.clip(img, 0.0, 1.0)


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def _grey(img: np.ndarray) -> np.ndarray:
    """(H, W, 1) grey copy: the channel itself, or BT.601 luma of an RGB image."""
    return img if img.shape[2] == 1 else (img @ _LUMA)[..., None]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _map_2d(attribution_map: np.ndarray) -> np.ndarray:
    m = np.asarray(attribution_map, dtype=np.float64)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"The attribution map must be 2-D (H, W); got shape {list(m.shape)}. "
                         "Reduce channels first with reduce_channels(attributions, how=...).")
    if not np.all(np.isfinite(m)):
        raise ValueError("The attribution map contains NaN or infinite values.")
    return m


# --- scales and channels ----------------------------------------------------------------

def reduce_channels(attributions: np.ndarray, *, how: str) -> np.ndarray:
    """(C, H, W) attributions -> (H, W). ``how``: "sum" (keeps IG completeness), "mean"
    (Grad-CAM stores the same map on every channel) or "max_abs" (signed value of largest |a|)."""
    a = np.asarray(attributions, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"reduce_channels takes (C, H, W) attributions; got shape {list(a.shape)}.")
    if how == "sum":
        return a.sum(axis=0)
    if how == "mean":
        return a.mean(axis=0)
    if how == "max_abs":
        idx = np.abs(a).argmax(axis=0)
        return np.take_along_axis(a, idx[None], axis=0)[0]
    raise ValueError(f"how must be 'sum', 'mean' or 'max_abs'; got {how!r}.")


def attribution_scale(maps: np.ndarray | Sequence[np.ndarray], *,
                      clip_percentile: float = CLIP_PERCENTILE) -> float:
    """The clip scale of one map or of many maps together (a shared scale, e.g. the real
    arm's maps): the ``clip_percentile`` of |values|, or max |values| when that is 0."""
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100]; got {clip_percentile!r}.")
    arrays = [maps] if isinstance(maps, np.ndarray) else list(maps)
    if not arrays:
        raise ValueError("attribution_scale needs at least one map.")
    values = np.abs(np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in arrays]))
    if not np.all(np.isfinite(values)):
        raise ValueError("The attribution maps contain NaN or infinite values.")
    scale = float(np.percentile(values, clip_percentile))
    return scale if scale > 0 else float(values.max(initial=0.0))


def normalized(m: np.ndarray, *, normalization: str, scale: float | None,
                clip_percentile: float) -> np.ndarray:
    """Map values divided by the scale and clipped to [-1, 1] (0 everywhere if scale is 0)."""
    if normalization == "shared":
        if scale is None or not np.isfinite(scale) or scale < 0:
            raise ValueError("normalization 'shared' needs a finite, non-negative scale "
                             "(see attribution_scale).")
    elif normalization == "per_image":
        if scale is not None:
            raise ValueError("normalization 'per_image' computes its own scale; do not pass one.")
        scale = attribution_scale(m, clip_percentile=clip_percentile)
    else:
        raise ValueError(f"normalization must be 'shared' or 'per_image'; got {normalization!r}.")
    if scale == 0:
        return np.zeros_like(m)
    return np.clip(m / scale, -1.0, 1.0)


# --- images -----------------------------------------------------------------------------

def heatmap_overlay_rgb(image: np.ndarray, attribution_map: np.ndarray, *, signed: bool,
                        normalization: str, scale: float | None = None,
                        clip_percentile: float = CLIP_PERCENTILE,
                        alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The overlay at input resolution as uint8 (H, W, 3) (see module docstring)."""
    img = _image_hwc(image)
    m = _map_2d(attribution_map)
    if m.shape != img.shape[:2]:
        raise ValueError(f"The attribution map is {m.shape[0]}x{m.shape[1]} but the image is "
                         f"{img.shape[0]}x{img.shape[1]}.")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}.")
    v = normalized(m, normalization=normalization, scale=scale, clip_percentile=clip_percentile)
    if signed:
        colors = matplotlib.colormaps[DIVERGING_CMAP]((v + 1.0) / 2.0)[..., :3]
    else:
        v = np.abs(v)
        colors = matplotlib.colormaps[SEQUENTIAL_CMAP](v)[..., :3]
    grey = _grey(img)
    opacity = np.where(m != 0, alpha, 0.0)[..., None]  # exactly 0: the grey input shows
    return _to_uint8((1.0 - opacity) * grey + opacity * colors)


def render_heatmap_overlay(image: np.ndarray, attribution_map: np.ndarray, *, signed: bool,
                           normalization: str, scale: float | None = None,
                           clip_percentile: float = CLIP_PERCENTILE,
                           alpha: float = OVERLAY_ALPHA, size: int = DISPLAY_SIZE) -> bytes:
    """PNG of ``attribution_map`` (H, W) over a grey copy of ``image``, enlarged to ``size``.

    ``signed``: diverging map centred at 0 (True) or magnitude on a sequential map (False).
    ``normalization``: "shared" (pass ``scale``) or "per_image"; no default on purpose.
    """
    rgb = heatmap_overlay_rgb(image, attribution_map, signed=signed, normalization=normalization,
                              scale=scale, clip_percentile=clip_percentile, alpha=alpha)
    return encode_png(_upscale(rgb, size))


def render_stimulus(image: np.ndarray, *, size: int = DISPLAY_SIZE) -> bytes:
    """PNG of the input image alone (colour kept), enlarged with nearest-neighbour."""
    return encode_png(_upscale(_to_uint8(_rgb(_image_hwc(image))), size))


def render_exemplar_strip(images: Sequence[np.ndarray], *, size: int = DISPLAY_SIZE // 2,
                          gap: int = 8) -> bytes:
    """PNG of k images side by side on white, each enlarged into a ``size`` square tile."""
    if len(images) == 0:
        raise ValueError("render_exemplar_strip needs at least one image.")
    tiles = []
    for image in images:
        rgb = _upscale(_to_uint8(_rgb(_image_hwc(image))), size)
        tile = np.full((size, size, 3), 255, dtype=np.uint8)
        h, w = min(size, rgb.shape[0]), min(size, rgb.shape[1])
        top, left = (size - h) // 2, (size - w) // 2
        tile[top:top + h, left:left + w] = rgb[:h, :w]
        tiles.append(tile)
    spacer = np.full((size, gap, 3), 255, dtype=np.uint8)
    parts = [tiles[0]]
    for tile in tiles[1:]:
        parts += [spacer, tile]
    return encode_png(np.concatenate(parts, axis=1))


def render_edit(image: np.ndarray, *, box: tuple[int, int, int, int], occlude: bool,
                fill_value: float | None = None, size: int = DISPLAY_SIZE,
                line_width: int = 3) -> bytes:
    """PNG of ``image`` with the region ``box`` = (top, left, height, width), in input pixels,
    outlined in orange; with ``occlude`` the region is first set to ``fill_value`` (in [0, 1],
    the value the edit uses)."""
    img = _image_hwc(image)
    top, left, height, width = (int(b) for b in box)
    if height < 1 or width < 1 or top < 0 or left < 0 or top + height > img.shape[0] or left + width > img.shape[1]:
        raise ValueError(f"box {list(box)} (top, left, height, width) does not lie inside the "
                         f"{img.shape[0]}x{img.shape[1]} image.")
    if occlude:
        if fill_value is None or not 0 <= fill_value <= 1:
            raise ValueError("occlude=True needs fill_value in [0, 1] (the value the edit uses).")
        img = img.copy()
        img[top:top + height, left:left + width] = fill_value
    elif fill_value is not None:
        raise ValueError("fill_value is only used with occlude=True.")
    rgb = _upscale(_to_uint8(_rgb(img)), size)
    k = upscale_factor(img.shape[0], img.shape[1], size)
    y0, x0, y1, x1 = top * k, left * k, (top + height) * k, (left + width) * k
    lw = max(1, min(int(line_width), (y1 - y0) // 2, (x1 - x0) // 2))
    color = np.array(OUTLINE_RGB, dtype=np.uint8)
    rgb[y0:y0 + lw, x0:x1] = color
    rgb[y1 - lw:y1, x0:x1] = color
    rgb[y0:y1, x0:x0 + lw] = color
    rgb[y0:y1, x1 - lw:x1] = color
    return encode_png(rgb)


# --- tabular ----------------------------------------------------------------------------

def feature_label(name: str, unit: str | None) -> str:
    return f"{name} ({unit})" if unit else name


def top_features(attributions: np.ndarray, *, top_k: int) -> np.ndarray:
    """Indices of the ``top_k`` largest |attribution|, largest first (ties: lower index first)."""
    a = np.asarray(attributions, dtype=np.float64)
    order = np.lexsort((np.arange(a.size), -np.abs(a)))
    return order[:top_k]


def render_tabular_bars(attributions: np.ndarray, *, feature_names: Sequence[str],
                        feature_units: Sequence[str | None] | None = None,
                        feature_values: Sequence[float] | None = None, top_k: int = 10,
                        width_px: int = 640, dpi: int = 100) -> bytes:
    """PNG bar chart of the ``top_k`` features by |attribution|, largest on top, vermillion for
    positive and blue for negative (Okabe-Ito). Labels are "name (unit)", with "= value" when
    ``feature_values`` (the stimulus' own inputs) are given."""
    a = np.asarray(attributions, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"Tabular attributions must be a finite 1-D array; got shape {list(a.shape)}.")
    if len(feature_names) != a.size:
        raise ValueError(f"{len(feature_names)} feature names for {a.size} attributions.")
    if feature_units is not None and len(feature_units) != a.size:
        raise ValueError(f"{len(feature_units)} feature units for {a.size} attributions.")
    if feature_values is not None and len(feature_values) != a.size:
        raise ValueError(f"{len(feature_values)} feature values for {a.size} attributions.")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer; got {top_k!r}.")
    idx = top_features(a, top_k=min(top_k, a.size))
    labels = []
    for i in idx:
        label = feature_label(str(feature_names[i]), feature_units[i] if feature_units else None)
        if feature_values is not None:
            label += f" = {float(feature_values[i]):.4g}"
        labels.append(label)
    values = a[idx]
    colors = [POSITIVE_COLOR if v > 0 else NEGATIVE_COLOR for v in values]

    height_in = 0.9 + 0.38 * len(idx)
    fig = Figure(figsize=(width_px / dpi, height_in), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(idx))[::-1]  # largest |attribution| at the top
    ax.barh(y, values, color=colors, height=0.7)
    ax.set_yticks(y, labels=labels, fontsize=10)
    ax.axvline(0.0, color="#333333", linewidth=0.8)
    lim = float(np.abs(values).max()) or 1.0
    ax.set_xlim(-1.1 * lim, 1.1 * lim)
    ax.set_xlabel("attribution (vermillion: raises the score, blue: lowers it)", fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return encode_png(rgba[..., :3])
