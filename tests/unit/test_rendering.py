"""PNG rendering: byte-deterministic, honest colour scales, no leaks into pixels or metadata."""
from __future__ import annotations

import inspect
import io
import struct

import matplotlib
import numpy as np
import pytest
from PIL import Image

from explainers import rendering
from explainers.rendering import (attribution_scale, reduce_channels, render_edit,
                                  render_exemplar_strip, render_heatmap_overlay,
                                  render_stimulus, render_tabular_bars, top_features)


RNG = np.random.RandomState(0)
IMAGE = RNG.rand(1, 8, 8)
COLOUR_IMAGE = RNG.rand(3, 8, 8)
SIGNED_MAP = RNG.randn(8, 8)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _chunk_types(png: bytes) -> list[str]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    types, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        types.append(png[pos + 4:pos + 8].decode("ascii"))
        pos += 12 + length
    return types


def _all_renderings() -> dict[str, bytes]:
    return {
        "overlay": render_heatmap_overlay(IMAGE, SIGNED_MAP, signed=True, normalization="per_image"),
        "magnitude": render_heatmap_overlay(IMAGE, np.abs(SIGNED_MAP), signed=False,
                                            normalization="shared", scale=1.0),
        "stimulus": render_stimulus(IMAGE),
        "strip": render_exemplar_strip([IMAGE, IMAGE[..., ::-1], COLOUR_IMAGE]),
        "edit": render_edit(IMAGE, box=(2, 4, 2, 2), occlude=True, fill_value=0.0),
        "bars": render_tabular_bars(np.array([0.5, -2.0, 1.0, -0.1]),
                                    feature_names=["Mean radius", "Mean texture", "Area", "Symmetry"],
                                    feature_units=["mm", "gray levels", "mm²", None], top_k=3),
    }


def test_every_rendering_is_byte_identical_across_calls():
    first, second = _all_renderings(), _all_renderings()
    for name in first:
        assert first[name] == second[name], name


def test_pngs_carry_no_text_time_or_software_chunks():
    for name, png in _all_renderings().items():
        assert set(_chunk_types(png)) <= {"IHDR", "IDAT", "IEND"}, name
        assert Image.open(io.BytesIO(png)).info == {}, name


def test_small_images_are_enlarged_with_nearest_neighbour_blocks():
    pixels = _pixels(render_stimulus(IMAGE))
    assert pixels.shape == (224, 224, 3)
    block = pixels[:28, :28]
    assert (block == block[0, 0]).all()  # one input pixel = one uniform 28x28 block
    assert block[0, 0, 0] == round(IMAGE[0, 0, 0] * 255)


def test_signed_maps_use_the_diverging_map_centred_at_zero():
    m = np.zeros((8, 8))
    m[0, 0], m[7, 7] = 1.0, -1.0
    pixels = _pixels(render_heatmap_overlay(np.full((1, 8, 8), 0.5), m, signed=True,
                                            normalization="shared", scale=1.0, size=8))
    grey = round(0.5 * 255)
    red, blue = matplotlib.colormaps["RdBu_r"](1.0)[:3], matplotlib.colormaps["RdBu_r"](0.0)[:3]
    np.testing.assert_array_equal(pixels[0, 0], np.rint((0.5 * 0.5 + 0.5 * np.array(red)) * 255))
    np.testing.assert_array_equal(pixels[7, 7], np.rint((0.5 * 0.5 + 0.5 * np.array(blue)) * 255))
    assert pixels[0, 0, 0] > pixels[0, 0, 2] and pixels[7, 7, 2] > pixels[7, 7, 0]
    assert (pixels[3, 3] == grey).all()  # zero attribution: untouched grey input


def test_magnitude_maps_use_the_sequential_map():
    m = np.zeros((8, 8))
    m[2, 2] = 3.0
    pixels = _pixels(render_heatmap_overlay(np.zeros((1, 8, 8)), m, signed=False,
                                            normalization="shared", scale=3.0, size=8))
    top = np.array(matplotlib.colormaps["viridis"](1.0)[:3])
    np.testing.assert_array_equal(pixels[2, 2], np.rint(0.5 * top * 255))
    assert (pixels[0, 0] == 0).all()


def test_zero_attribution_leaves_a_grey_copy_of_the_input():
    colour = COLOUR_IMAGE
    pixels = _pixels(render_heatmap_overlay(colour, np.zeros((8, 8)), signed=True,
                                            normalization="per_image", size=8))
    luma = np.rint(np.clip(np.moveaxis(colour, 0, -1) @ [0.299, 0.587, 0.114], 0, 1) * 255)
    for c in range(3):
        np.testing.assert_array_equal(pixels[..., c], luma)


def test_values_beyond_the_99th_percentile_are_clipped():
    m = np.ones((20, 20))
    m[0, 0] = 1000.0  # one outlier in 400 values must not wash out everything else
    assert attribution_scale(m) == pytest.approx(1.0)
    pixels = _pixels(render_heatmap_overlay(np.zeros((1, 20, 20)), m, signed=True,
                                            normalization="per_image", size=20))
    np.testing.assert_array_equal(pixels[0, 0], pixels[5, 5])


def test_shared_scale_keeps_a_near_empty_map_pale_while_per_image_stretches_it():
    real = [RNG.randn(8, 8) for _ in range(5)]
    scale = attribution_scale(real)  # computed over the real arm, used for every arm
    faint = 0.01 * RNG.randn(8, 8)
    background = np.full((1, 8, 8), 0.5)

    def red_minus_blue(normalization, scale):
        pixels = _pixels(render_heatmap_overlay(background, faint, signed=True,
                                                normalization=normalization, scale=scale, size=8))
        return np.abs(pixels[..., 0] - pixels[..., 2]).max()

    assert red_minus_blue("shared", scale) <= 5  # near the white centre of the diverging map
    assert red_minus_blue("per_image", None) > 40  # stretched to saturated red / blue


def test_normalization_must_be_chosen_explicitly():
    with pytest.raises(TypeError):
        render_heatmap_overlay(IMAGE, SIGNED_MAP, signed=True)  # no silent default
    with pytest.raises(ValueError, match="'shared' needs a finite, non-negative scale"):
        render_heatmap_overlay(IMAGE, SIGNED_MAP, signed=True, normalization="shared")
    with pytest.raises(ValueError, match="computes its own scale"):
        render_heatmap_overlay(IMAGE, SIGNED_MAP, signed=True, normalization="per_image", scale=1.0)


def test_multichannel_attributions_must_be_reduced_explicitly():
    attr = RNG.randn(3, 8, 8)
    with pytest.raises(ValueError, match="reduce_channels"):
        render_heatmap_overlay(RNG.rand(3, 8, 8), attr, signed=True, normalization="per_image")
    np.testing.assert_allclose(reduce_channels(attr, how="sum"), attr.sum(axis=0))
    picked = reduce_channels(attr, how="max_abs")
    assert np.all(np.abs(picked) == np.abs(attr).max(axis=0))


def _bar_lengths(pixels: np.ndarray) -> list[int]:
    """Horizontal extent of each coloured bar, top to bottom."""
    colours = [np.array(matplotlib.colors.to_rgb(c)) * 255 for c in
               (rendering.POSITIVE_COLOR, rendering.NEGATIVE_COLOR)]
    coloured = np.zeros(pixels.shape[:2], bool)
    for c in colours:
        coloured |= (np.abs(pixels - c) <= 2).all(axis=2)
    rows = np.flatnonzero(coloured.any(axis=1))
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    return [int(coloured[band].any(axis=0).sum()) for band in bands]


def test_tabular_bars_are_the_top_k_sorted_by_absolute_attribution():
    attributions = np.array([0.3, -2.0, 1.0, -0.1, 0.6])
    assert list(top_features(attributions, top_k=3)) == [1, 2, 4]
    png = render_tabular_bars(attributions, feature_names=list("abcde"), top_k=3)
    lengths = _bar_lengths(_pixels(png))
    assert len(lengths) == 3
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[2]


def test_tabular_bars_are_coloured_by_sign():
    png = render_tabular_bars(np.array([2.0, -1.0]), feature_names=["up", "down"], top_k=2)
    pixels = _pixels(png)
    for colour in (rendering.POSITIVE_COLOR, rendering.NEGATIVE_COLOR):
        rgb = np.array(matplotlib.colors.to_rgb(colour)) * 255
        assert (np.abs(pixels - rgb) <= 2).all(axis=2).sum() > 100


def test_edit_visualization_occludes_and_outlines_the_cell():
    image = np.full((1, 8, 8), 1.0)
    pixels = _pixels(render_edit(image, box=(2, 2, 4, 4), occlude=True, fill_value=0.0))
    k = 28
    assert (pixels[3 * k, 3 * k] == 0).all()  # inside the cell: occluded
    assert (pixels[0, 0] == 255).all()  # outside: unchanged
    assert tuple(pixels[2 * k, 3 * k]) == rendering.OUTLINE_RGB  # on the outline
    outlined = _pixels(render_edit(image, box=(2, 2, 4, 4), occlude=False))
    assert (outlined[3 * k, 3 * k] == 255).all()
    with pytest.raises(ValueError, match="does not lie inside"):
        render_edit(image, box=(6, 6, 4, 4), occlude=False)


def test_exemplar_strip_places_images_side_by_side():
    pixels = _pixels(render_exemplar_strip([np.zeros((1, 8, 8)), np.ones((1, 8, 8))], size=112, gap=8))
    assert pixels.shape == (112, 232, 3)
    assert (pixels[:, :112] == 0).all() and (pixels[:, 112:120] == 255).all()
    assert (pixels[:, 120:] == 255).all()


def test_no_rendering_function_takes_class_names_targets_or_outputs():
    forbidden = ("class", "target", "label", "pred", "output", "prob", "title", "caption")
    for name, fn in inspect.getmembers(rendering, inspect.isfunction):
        if fn.__module__ != rendering.__name__:
            continue
        for param in inspect.signature(fn).parameters:
            assert not any(word in param.lower() for word in forbidden), (name, param)
