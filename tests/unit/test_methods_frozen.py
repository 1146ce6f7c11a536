"""explain() keeps a private frozen copy of each model between calls: never stale, never shared,
never a change to the caller's model."""
from __future__ import annotations

import copy
import gc
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from torch import nn

from explainers import demo_data
from explainers.architectures import build_model
from explainers.methods import explain
from explainers.methods.frozen import frozen_copy
from explainers.resnet import ResNet18Like
from explainers.training import train_classifier

torch.set_num_threads(1)
CPU = torch.device("cpu")
TARGETS = [0, 1, 2, 3]


@pytest.fixture
def model(digits_cnn):
    return copy.deepcopy(digits_cnn[0])  # each test may change its own model


@pytest.fixture(scope="module")
def x(digits_cnn):
    return digits_cnn[1]["X"][600:604]


def _reference(model: nn.Module, x, targets) -> np.ndarray:
    """Signed saliency from plain Captum on a fresh copy: knows nothing of explain()'s cache."""
    net = copy.deepcopy(model).eval()
    xt = torch.as_tensor(x).clone().requires_grad_(True)
    return Saliency(net).attribute(xt, target=torch.as_tensor(targets), abs=False).detach().numpy()


def _saliency(model: nn.Module, x, targets=TARGETS) -> np.ndarray:
    return explain(model, x, method="saliency", config={"signed": True},
                   targets=targets).attributions


def _assert_matches_the_model_as_it_is_now(model, x, targets=TARGETS) -> np.ndarray:
    got = _saliency(model, x, targets)
    np.testing.assert_allclose(got, _reference(model, x, targets), rtol=1e-5, atol=1e-7)
    return got


def test_a_second_call_on_the_same_model_gives_exactly_the_first_result(model, x):
    for method in ("integrated_gradients", "deeplift", "guided_backprop", "gradcam"):
        first = explain(model, x, method=method, targets=TARGETS).attributions
        again = explain(model, x, method=method, targets=TARGETS).attributions
        np.testing.assert_array_equal(first, again)


def test_each_model_gets_its_own_copy(model, x):
    torch.manual_seed(1)
    other = build_model("image_cnn", input_shape=(1, 8, 8), num_classes=10)
    for m in (model, other, model, other):
        _assert_matches_the_model_as_it_is_now(m, x)
    assert not np.allclose(_saliency(model, x), _saliency(other, x))


def _scale_in_place(m):
    with torch.no_grad():
        m.features.conv1.weight.mul_(-2.0)


def _through_data(m):  # leaves the parameter's version counter as it was
    torch.manual_seed(2)
    m.features.conv1.weight.data.normal_()


def _load_state_dict(m):
    torch.manual_seed(3)
    m.load_state_dict(build_model("image_cnn", input_shape=(1, 8, 8), num_classes=10).state_dict())


def _reassign_data(m):
    m.head.fc2.weight.data = torch.randn_like(m.head.fc2.weight)


def _new_parameter(m):
    m.head.fc2.weight = nn.Parameter(torch.randn_like(m.head.fc2.weight))


@pytest.mark.parametrize("change", [_scale_in_place, _through_data, _load_state_dict,
                                    _reassign_data, _new_parameter])
def test_a_change_of_weights_after_a_call_shows_in_the_next_call(model, x, change):
    before = _assert_matches_the_model_as_it_is_now(model, x)
    change(model)
    after = _assert_matches_the_model_as_it_is_now(model, x)
    assert not np.allclose(before, after)


def test_a_change_of_buffers_shows_in_the_next_call():
    data = demo_data.load_breast_cancer()
    mlp = train_classifier(architecture="tabular_mlp", X=data["X"][:200], y=data["y"][:200],
                           num_classes=2, seed=0, epochs=2).model
    rows = data["X"][400:403]
    before = explain(mlp, rows, method="input_x_gradient", targets=[1, 1, 1]).attributions
    mlp.features.standardize.mean.data.mul_(0.5)  # a buffer, changed behind autograd's back
    after = explain(mlp, rows, method="input_x_gradient", targets=[1, 1, 1]).attributions
    fresh = explain(copy.deepcopy(mlp), rows, method="input_x_gradient", targets=[1, 1, 1])
    np.testing.assert_array_equal(after, fresh.attributions)
    assert not np.allclose(before, after)


def test_a_replaced_layer_or_a_changed_layer_setting_shows_in_the_next_call(model, x):
    _assert_matches_the_model_as_it_is_now(model, x)
    model.features.relu1 = nn.Tanh()
    _assert_matches_the_model_as_it_is_now(model, x)
    model.features.conv1.dilation = (2, 2)  # 6x6 maps now; the adaptive pooling still fits
    _assert_matches_the_model_as_it_is_now(model, x)


def test_a_model_in_train_mode_is_explained_in_eval_mode_and_left_untouched():
    torch.manual_seed(0)
    resnet = ResNet18Like(num_classes=4)  # BatchNorm: train mode would use and update batch stats
    images = np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32)
    in_eval = explain(resnet, images, method="saliency", targets=[0, 1]).attributions
    resnet.train()
    state = {k: v.clone() for k, v in resnet.state_dict().items()}
    in_train = explain(resnet, images, method="saliency", targets=[0, 1]).attributions
    np.testing.assert_array_equal(in_eval, in_train)
    assert resnet.training and all(m.training for m in resnet.modules())
    assert all(torch.equal(state[k], v) for k, v in resnet.state_dict().items())
    assert all(p.requires_grad for p in resnet.parameters())


def _attributes(model: nn.Module) -> dict:
    return {name: {k: dict(v) if isinstance(v, dict) else v for k, v in vars(m).items()}
            for name, m in model.named_modules()}


def test_the_callers_model_keeps_its_parameters_their_values_and_no_hooks(model, x):
    params = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    attributes = _attributes(model)
    for method in ("deeplift", "guided_backprop", "gradcam", "smoothgrad", "occlusion"):
        config = {"nt_samples": 2} if method == "smoothgrad" else None
        explain(model, x, method=method, config=config)
    for name, p in model.named_parameters():
        kept, value = params[name]
        assert p is kept and torch.equal(p, value) and p.requires_grad
    assert _attributes(model) == attributes  # hooks, parameters, submodules, settings
    with frozen_copy(model, CPU) as frozen:  # the kept copy shares no memory with the model
        ours = {p.data_ptr() for p in frozen.net.parameters()}
    assert ours.isdisjoint(p.data_ptr() for p in model.parameters())


def test_a_kept_copy_dies_with_its_model():
    model = build_model("image_cnn", input_shape=(1, 8, 8), num_classes=3)
    with frozen_copy(model, CPU) as frozen:
        kept = weakref.ref(frozen.net)
    del model, frozen
    gc.collect()
    assert kept() is None


def test_a_copy_in_use_is_not_lent_to_another_call_and_is_kept_after(model):
    with frozen_copy(model, CPU) as first:
        with frozen_copy(model, CPU) as second:
            assert second.net is not first.net
    with frozen_copy(model, CPU) as third:
        assert third.net is first.net


def test_concurrent_calls_on_one_model_give_the_single_call_results(model, x):
    methods = ["deeplift", "guided_backprop", "gradcam", "integrated_gradients"] * 3
    expected = {m: explain(model, x, method=m, targets=TARGETS).attributions for m in set(methods)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda m: explain(model, x, method=m, targets=TARGETS), methods))
    for method, res in zip(methods, results):
        np.testing.assert_array_equal(res.attributions, expected[method])


def test_a_copy_left_with_a_hook_or_after_an_error_is_not_lent_again(model):
    with frozen_copy(model, CPU) as first:
        first.net.register_forward_hook(lambda *args: None)
    with frozen_copy(model, CPU) as second:
        assert second.net is not first.net
    with pytest.raises(RuntimeError, match="boom"):
        with frozen_copy(model, CPU) as third:
            assert third.net is second.net
            raise RuntimeError("boom")
    with frozen_copy(model, CPU) as fourth:
        assert fourth.net is not second.net and not fourth.net._forward_hooks


def test_a_model_with_its_own_hooks_is_copied_afresh_with_them_each_call(model, x):
    plain = _saliency(model, x)
    handle = model.head.register_forward_hook(lambda module, inputs, out: 2 * out)
    with frozen_copy(model, CPU) as first:
        pass
    with frozen_copy(model, CPU) as second:
        assert second.net is not first.net
    np.testing.assert_allclose(_saliency(model, x), 2 * plain, rtol=1e-6)
    handle.remove()
    np.testing.assert_array_equal(_saliency(model, x), plain)


def test_an_input_shape_that_does_not_fit_is_refused_after_one_that_fits(model, x):
    _saliency(model, x)
    _saliency(model, np.zeros((4, 1, 12, 12), np.float32))  # adaptive pooling takes 12x12
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\) images; got shape \[2, 3, 8, 8\]"):
        explain(model, np.zeros((2, 3, 8, 8), np.float32), method="saliency")
    _assert_matches_the_model_as_it_is_now(model, x)
