"""Speed of the batched attribution path next to a naive one-stimulus-at-a-time Captum loop.

    .venv/bin/python benchmarks/explainers.py            # --quick (default): short on CPU
    .venv/bin/python benchmarks/explainers.py --full --device cuda

For each gradient method, on the demo CNN (image_cnn, 1x8x8) and on a ResNet-18-sized model at
224x224, it prints stimuli per second of ``explainers.methods.explain`` (many stimuli x steps
per forward/backward pass) and of the loop a newcomer writes (one ``attribute`` call per
stimulus, the model as given), measured side by side in one run, and their ratio. Both paths do
the same work: same targets, steps, samples, noise level and baseline. Weights are random (speed
does not depend on them). The goal: batched >= 5x naive for IG on the demo CNN on CPU; on a GPU,
IG-50 on the ResNet near the hardware limit, estimated below from FLOPs and a measured GEMM rate.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from captum.attr import (DeepLift, GuidedBackprop, InputXGradient, IntegratedGradients,
                         LayerGradCam, NoiseTunnel, Saliency)
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explainers.architectures import build_model  # noqa: E402
from explainers.methods import explain  # noqa: E402
from explainers.methods.models import (default_max_batch, in_attribution_layout,  # noqa: E402
                                       memory_format)
from explainers.resnet import ResNet18Like  # noqa: E402

METHODS = ("integrated_gradients", "saliency", "smoothgrad", "gradcam", "deeplift",
           "input_x_gradient", "guided_backprop")
IG_STEPS, NT_SAMPLES, NOISE = 50, 25, 0.15
# (demo CNN stimuli, ResNet stimuli) per mode and device type
COUNTS = {("quick", "cpu"): (256, 2), ("full", "cpu"): (2048, 8),
          ("quick", "cuda"): (1024, 64), ("full", "cuda"): (8192, 512)}


def naive_one(method: str, net: nn.Module, layer: nn.Module | None, x: torch.Tensor,
              target: int) -> torch.Tensor:
    """What a newcomer writes: one stimulus per call, Captum's batching knobs unused."""
    x = x.clone().requires_grad_(True)
    if method == "integrated_gradients":
        return IntegratedGradients(net).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                  n_steps=IG_STEPS, method="gausslegendre")
    if method == "saliency":
        return Saliency(net).attribute(x, target=target, abs=True)
    if method == "smoothgrad":
        return NoiseTunnel(Saliency(net)).attribute(x, nt_type="smoothgrad", nt_samples=NT_SAMPLES,
                                                    stdevs=NOISE, target=target, abs=True)
    if method == "gradcam":
        cam = LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True)
        return F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
    if method == "deeplift":
        return DeepLift(net).attribute(x, baselines=torch.zeros_like(x), target=target)
    if method == "input_x_gradient":
        return InputXGradient(net).attribute(x, target=target)
    if method == "guided_backprop":
        return GuidedBackprop(net).attribute(x, target=target)
    raise ValueError(method)


def run_naive(method, net, layer, x, targets, device) -> float:
    start = time.perf_counter()
    for i in range(x.shape[0]):
        naive_one(method, net, layer, x[i:i + 1].to(device), int(targets[i])).detach().cpu()
    return time.perf_counter() - start


def run_batched(method, model, x, targets, device) -> float:
    config = {"integrated_gradients": {"n_steps": IG_STEPS},
              "smoothgrad": {"nt_samples": NT_SAMPLES, "noise_fraction": NOISE}}.get(method)
    start = time.perf_counter()
    explain(model, x, method=method, config=config, targets=targets, device=device)
    return time.perf_counter() - start


def forward_flops(model: nn.Module, shape: tuple[int, ...]) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass, counted on Conv2d and Linear layers."""
    macs = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            per_out = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs.append(output.numel() * per_out)
        else:
            macs.append(output.numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return 2.0 * sum(macs)


def gemm_flops_per_s(device: torch.device) -> float:
    """Measured fp32 matrix-multiply rate (current TF32 settings apply), a practical peak."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    reps = 10 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return reps * 2.0 * n ** 3 / (time.perf_counter() - start)


def best_of(repeats: int, fn) -> float:
    """Fastest of ``repeats`` runs: the machine's other load only ever adds time."""
    return min(fn() for _ in range(repeats))


def raw_rows_per_s(model: nn.Module, shape: tuple[int, ...], rows: int, device: torch.device,
                   repeats: int) -> float:
    """Plain forward + backward-to-input throughput, frozen weights, in the layout explain()
    uses: the ceiling for any gradient method (IG-k reaches at most this / k stimuli per s)."""
    net = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    x = torch.rand(rows, *shape, device=device)
    net = in_attribution_layout(net, x)  # as explain() runs it
    x = x.contiguous(memory_format=memory_format(x)).requires_grad_(True)

    def once() -> float:
        start = time.perf_counter()
        torch.autograd.grad(net(x)[:, 0].sum(), x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()
    return rows / best_of(repeats, once)


def bench_model(name: str, model: nn.Module, shape: tuple[int, ...], n: int, device: torch.device,
                methods: list[str], layer_name: str, no_warmup: tuple[str, ...],
                repeats: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, *shape, generator=gen)
    with torch.no_grad():  # explain the predicted class, as a study does
        targets = torch.cat([model(x[i:i + 64]).argmax(1) for i in range(0, n, 64)]).tolist()
    naive_net = copy.deepcopy(model).to(device).eval()  # as given: parameters require grad
    layer = dict(naive_net.named_modules())[layer_name]
    print(f"\n{name}: input {'x'.join(map(str, shape))}, {n} stimuli, device {device.type}, "
          f"best of {repeats}")
    print(f"{'method':<22}{'batched/s':>12}{'naive/s':>12}{'ratio':>9}")
    rates = {}
    for method in methods:
        if method not in no_warmup:
            # First-call costs are not throughput: oneDNN/cuDNN build kernels per batch shape.
            run_batched(method, model, x, targets, device)
            run_naive(method, naive_net, layer, x[:2], targets, device)
        t_batched, t_naive = float("inf"), float("inf")
        for _ in range(repeats):  # interleaved, so both see the same background load
            t_batched = min(t_batched, run_batched(method, model, x, targets, device))
            t_naive = min(t_naive, run_naive(method, naive_net, layer, x, targets, device))
        rates[method] = n / t_batched
        print(f"{method:<22}{n / t_batched:>12.1f}{n / t_naive:>12.1f}{t_naive / t_batched:>8.1f}x",
              flush=True)
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick")
    mode.add_argument("--full", dest="mode", action="store_const", const="full")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    # Captum announces the hooks DeepLift / GuidedBackprop put on the naive loop's model.
    warnings.filterwarnings("ignore", message="Setting (forward, )?backward hooks")
    mode_name = args.mode or "quick"
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    n_cnn, n_resnet = COUNTS[(mode_name, device.type)]
    repeats_cnn = 3
    repeats_resnet = 1 if device.type == "cpu" else 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, mode {mode_name}, "
          f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print(f"IG: {IG_STEPS} Gauss-Legendre steps, zero baseline. SmoothGrad: saliency, "
          f"{NT_SAMPLES} samples, noise {NOISE} x input range. Naive: one Captum call per "
          "stimulus, model as given (parameters require grad).")

    torch.manual_seed(0)
    cnn = build_model("image_cnn", input_shape=(1, 8, 8), num_classes=10)
    rates = bench_model("Demo CNN (image_cnn)", cnn, (1, 8, 8), n_cnn, device, methods,
                        "features.conv2", no_warmup=(), repeats=repeats_cnn)
    if "integrated_gradients" in rates:
        rows = default_max_batch(torch.zeros(1, 1, 8, 8), device)
        ceiling = raw_rows_per_s(cnn, (1, 8, 8), rows, device, repeats_cnn) / IG_STEPS
        print(f"IG-{IG_STEPS} ceiling from plain forward+backward passes of {rows} rows: "
              f"{ceiling:.0f} stimuli/s; batched IG reaches "
              f"{100 * rates['integrated_gradients'] / ceiling:.0f}% of it.")
    if args.skip_resnet:
        return
    resnet = ResNet18Like(num_classes=1000).eval()
    shape = (3, 224, 224)
    # On CPU, warming up the 50- and 25-pass methods would cost more than measuring them.
    expensive = ("integrated_gradients", "smoothgrad") if device.type == "cpu" else ()
    rates = bench_model("ResNet-18-sized", resnet, shape, n_resnet, device, methods,
                        "features.layer4", no_warmup=expensive, repeats=repeats_resnet)
    if "integrated_gradients" in rates:
        fwd = forward_flops(resnet, shape)
        # Per IG step: a forward and a backward to the input only (weights are frozen, so no
        # weight gradients): about 2 forward passes of work.
        per_image = IG_STEPS * 2 * fwd
        peak = gemm_flops_per_s(device)
        limit = peak / per_image
        ig_rate = rates["integrated_gradients"]
        print(f"\nIG-{IG_STEPS} on ResNet-18-sized: forward {fwd / 1e9:.2f} GFLOP, about "
              f"{per_image / 1e9:.0f} GFLOP per image; measured fp32 GEMM rate "
              f"{peak / 1e12:.2f} TFLOP/s -> FLOP limit about {limit:.2f} images/s; batched "
              f"reaches {ig_rate:.2f} images/s ({100 * ig_rate / limit:.0f}% of the estimate).")
        rows = default_max_batch(torch.zeros(1, *shape), device)
        ceiling = raw_rows_per_s(resnet, shape, rows, device, repeats_resnet) / IG_STEPS
        print(f"Measured ceiling from plain forward+backward passes of {rows} rows: "
              f"{ceiling:.2f} images/s; batched IG reaches {100 * ig_rate / ceiling:.0f}% of it.")
        if device.type == "cuda":
            print(f"TF32: cudnn {torch.backends.cudnn.allow_tf32}, "
                  f"matmul {torch.backends.cuda.matmul.allow_tf32}")


if __name__ == "__main__":
    main()
