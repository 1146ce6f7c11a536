"""explain()'s faster paths compute what Captum's usual calls compute: one autograd root for
every row (GuidedBackprop, DeepLift, Grad-CAM), the layout chosen per model, seeding only the
generators a method draws from."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import DeepLift, GuidedBackprop, LayerGradCam, Saliency

from explainers.methods import METHODS, explain
from explainers.resnet import ResNet18Like

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits(digits_cnn):
    model, data = digits_cnn
    return model.eval(), data["X"][600:610]


def _captum(method: str, model, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The usual Captum call: per-row autograd roots, NCHW inputs that require grad."""
    xt = torch.as_tensor(x).clone().requires_grad_(True)
    t = torch.as_tensor(targets)
    if method == "guided_backprop":
        out = GuidedBackprop(model).attribute(xt, target=t)
    elif method == "deeplift":
        out = DeepLift(model, multiply_by_inputs=True, eps=1e-10).attribute(
            xt, baselines=torch.zeros_like(xt), target=t)
    else:
        layer = dict(model.named_modules())["features.relu2"]
        cam = LayerGradCam(model, layer).attribute(xt, target=t, relu_attributions=True)
        out = F.interpolate(cam, size=xt.shape[2:], mode="bilinear", align_corners=False)
    return out.detach().numpy()


@pytest.mark.parametrize("method", ["guided_backprop", "deeplift", "gradcam"])
def test_hooked_methods_with_one_autograd_root_equal_captums_usual_call(digits, method):
    model, x = digits
    res = explain(model, x, method=method)
    expected = _captum(method, model, x, res.targets)
    np.testing.assert_allclose(res.attributions, np.broadcast_to(expected, x.shape),
                               rtol=1e-5, atol=1e-7)
    assert np.abs(res.attributions).sum() > 0


def test_narrow_convolutions_run_nchw_and_wide_ones_channels_last_on_cpu(digits):
    model, x = digits
    assert explain(model, x[:1], method="saliency").config["execution"]["memory_format"] \
        == "contiguous_format"
    torch.manual_seed(0)
    resnet = ResNet18Like(num_classes=4).eval()
    images = np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32)
    res = explain(resnet, images, method="saliency", config={"signed": True}, targets=[0, 3])
    assert res.config["execution"]["memory_format"] == "channels_last"
    assert res.attributions.flags.c_contiguous  # callers index it as (N, C, H, W)
    xt = torch.as_tensor(images).requires_grad_(True)
    expected = Saliency(resnet).attribute(xt, target=torch.tensor([0, 3]), abs=False)
    np.testing.assert_allclose(res.attributions, expected.detach().numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", [m for m, info in METHODS.items()
                                    if not info.stochastic and "image" in info.modalities])
def test_methods_without_random_draws_ignore_and_keep_the_callers_random_state(digits, method):
    model, x = digits
    results = []
    for seed in (1, 2):
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        results.append(explain(model, x[:2], method=method, seed=seed).attributions)
        after = (torch.rand(2), np.random.rand(2), random.random())
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        assert torch.equal(after[0], torch.rand(2)) and np.array_equal(after[1], np.random.rand(2))
        assert after[2] == random.random()
    np.testing.assert_array_equal(results[0], results[1])
