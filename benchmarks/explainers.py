"""Speed of the project's attribution path next to plain Captum on the whole batch and a naive loop.

    .venv/bin/python benchmarks/explainers.py            # --quick (default): 1-2 min on CPU
    .venv/bin/python benchmarks/explainers.py --full --device cuda

For each gradient method it measures, side by side in one run (interleaved rounds, best of
at least 3, more rounds for cheap methods):
- project: ``explainers.methods.explain`` (many stimuli x steps per forward/backward pass);
- plain batched: what a user who knows Captum writes, the same method called on the whole batch
  with Captum's own batching knobs (``internal_batch_size``, ``nt_samples_batch_size``) set to the
  project's rows per pass, the model as given (eval mode, parameters requiring grad, NCHW);
- naive: one ``attribute`` call per stimulus, Captum's batching knobs unused (timed on at most
  NAIVE stimuli: its rate per stimulus does not depend on the batch).
All three run the project's resolved configuration of the method (``resolve_config``): same
targets, steps, integration rule, samples, noise level, zero baseline, Grad-CAM layer and ReLU,
convergence delta for IG. The "same maps" column is ||project - plain|| / ||plain||, so the
paths are seen to compute the same thing: float rounding gives about 1e-6; the project's NHWC
layout (used for models with wide convolutions, such as the ResNet, not for the demo CNN) can flip
a near-tie in a ResNet's MaxPool, about 1e-3 (SmoothGrad draws other noise: not compared).

Each method runs with all of torch's CPU threads (wall clock) and with one, timed in this
process's CPU seconds. On the shared 2-core machines other processes swing multi-threaded ratios
from 3x to 80x for the same code, and even one thread's wall time by tens of percent; the
one-thread CPU time is the stable figure, and the goals are judged on it:
- the project at least as fast as plain batched Captum, for every method (ratio >= 1.00);
- IG at >= 90% of the measured forward+backward ceiling on CPU: plain passes of the same rows,
  frozen weights, the fastest of two pass sizes (the most rows allowed, the most whole stimuli x
  steps) and two memory layouts (NCHW, NHWC);
- on a GPU, IG-50 on the ResNet at >= 40% of a FLOP limit from a measured GEMM rate.

Models: the demo CNN (image_cnn, 1x8x8) and a ResNet-18-sized model at 224x224, random weights
(speed does not depend on them). The ResNet is not run in --quick on CPU: there one 224-px image
already fills the cores, so batching buys nothing but the fixed costs of a call, and a batch
that means something (the 17 rows the project puts in one CPU pass, about 0.3 s each on one
thread here) takes minutes per method. An earlier two-stimulus row measured mostly the fixed
cost of an ``explain`` call (then a deep copy of the 47 MB of weights and a forward pass of one
image, about 80 ms; since the kept frozen copy, explainers/methods/frozen.py, a copy of the weight
values), not throughput; the printed "fixed cost of one explain() call" shows it. --full on CPU
runs it with 34 stimuli (two full passes) for the single-pass methods and 4 for IG and
SmoothGrad (4 x 50 = 200 rows, a dozen full passes).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from captum.attr import (DeepLift, GuidedBackprop, InputXGradient, IntegratedGradients,
                         LayerGradCam, NoiseTunnel, Saliency)
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import verdict  # noqa: E402
from explainers.architectures import build_model  # noqa: E402
from explainers.methods import explain, resolve_config  # noqa: E402
from explainers.methods.models import default_max_batch, gradcam_layer_name  # noqa: E402
from explainers.resnet import ResNet18Like  # noqa: E402

METHODS = ("integrated_gradients", "saliency", "smoothgrad", "gradcam", "deeplift",
           "input_x_gradient", "guided_backprop")
MULTI_PASS = ("integrated_gradients", "smoothgrad")  # 50 / 25 passes' worth of rows per stimulus
IG_STEPS, NT_SAMPLES, NOISE = 50, 25, 0.15
OVERRIDES = {"integrated_gradients": {"n_steps": IG_STEPS},
             "smoothgrad": {"nt_samples": NT_SAMPLES, "noise_fraction": NOISE}}
# Stimuli per mode and device: (demo CNN, ResNet single-pass methods, ResNet IG and SmoothGrad);
# 0: the ResNet is not run (see the docstring).
COUNTS = {("quick", "cpu"): (256, 0, 0), ("full", "cpu"): (2048, 34, 4),
          ("quick", "cuda"): (1024, 64, 64), ("full", "cuda"): (8192, 512, 512)}
# At most this many stimuli go through the naive loop, per mode and device.
NAIVE = {("quick", "cpu"): 16, ("full", "cpu"): 256, ("quick", "cuda"): 128, ("full", "cuda"): 256}
MIN_SECONDS, MAX_ROUNDS = 0.5, 15  # cheap methods: more rounds, so a quiet moment is caught
GOAL_IG_CEILING = 0.90  # of the forward+backward ceiling, CPU, one thread
GOAL_GPU_LIMIT = 0.40  # of the GEMM-based FLOP limit, IG-50 on the ResNet


@contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock_for(n_threads: int, device: torch.device):
    """One thread on CPU: this process's CPU seconds, which the other processes on a shared
    machine cannot inflate (they can only take the core away, which wall time would count).
    Otherwise wall seconds, the only fair clock for work spread over threads or a GPU."""
    return time.process_time if n_threads == 1 and device.type == "cpu" else time.perf_counter


def captum_call(method: str, net: nn.Module, layer: nn.Module | None, x: torch.Tensor,
                t, cfg: dict, max_batch: int | None) -> torch.Tensor:
    """One Captum ``attribute`` call with the project's settings. ``max_batch`` None: Captum's
    batching knobs unused (the naive loop); else the project's rows per pass."""
    if method == "integrated_gradients":
        out = IntegratedGradients(net, multiply_by_inputs=cfg["multiply_by_inputs"]).attribute(
            x, baselines=torch.zeros_like(x), target=t, n_steps=cfg["n_steps"],
            method=cfg["integration"], internal_batch_size=max_batch,
            return_convergence_delta=cfg["return_convergence_delta"])
        return out[0] if cfg["return_convergence_delta"] else out
    if method == "saliency":
        return Saliency(net).attribute(x, target=t, abs=not cfg["signed"])
    if method == "smoothgrad":
        nsb = None if max_batch is None else max(1, min(cfg["nt_samples"], max_batch // len(x)))
        return NoiseTunnel(Saliency(net)).attribute(
            x, nt_type=cfg["nt_type"], nt_samples=cfg["nt_samples"], nt_samples_batch_size=nsb,
            stdevs=cfg["noise_stdev"], draw_baseline_from_distrib=False, target=t,
            abs=not cfg["signed"])
    if method == "gradcam":
        cam = LayerGradCam(net, layer).attribute(
            x, target=t, relu_attributions=cfg["relu_attributions"],
            attribute_to_layer_input=cfg["attribute_to_layer_input"])
        return F.interpolate(cam, size=x.shape[2:], mode=cfg["interpolation"],
                             align_corners=cfg["align_corners"])
    if method == "deeplift":
        return DeepLift(net, multiply_by_inputs=cfg["multiply_by_inputs"], eps=cfg["eps"]).attribute(
            x, baselines=torch.zeros_like(x), target=t)
    if method == "input_x_gradient":
        return InputXGradient(net).attribute(x, target=t)
    if method == "guided_backprop":
        return GuidedBackprop(net).attribute(x, target=t)
    raise ValueError(method)


def run_naive(method, net, layer, x, targets, cfg, device) -> torch.Tensor:
    """What a newcomer writes: one stimulus per call."""
    outs = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].to(device, copy=True).requires_grad_(True)
        outs.append(captum_call(method, net, layer, xi, int(targets[i]), cfg, None).detach().cpu())
    return torch.cat(outs)


def run_plain(method, net, layer, x, targets, cfg, device, max_batch) -> torch.Tensor:
    """Plain Captum on the whole batch, split only where one call would exceed the project's
    rows per pass (DeepLift sends inputs and baselines through together)."""
    step = max(1, max_batch // 2) if method == "deeplift" else max_batch
    t_all = torch.as_tensor(targets)
    outs = []
    for i in range(0, x.shape[0], step):
        xc = x[i:i + step].to(device, copy=True).requires_grad_(True)
        tc = t_all[i:i + step].to(device)
        outs.append(captum_call(method, net, layer, xc, tc, cfg, max_batch).detach().cpu())
    return torch.cat(outs)


def run_project(method, model, x, targets, device) -> torch.Tensor:
    result = explain(model, x, method=method, config=OVERRIDES.get(method), targets=targets,
                     device=device.type)
    return torch.from_numpy(result.attributions)


def relative_difference(project: torch.Tensor, plain: torch.Tensor) -> float:
    project = project[:, :plain.shape[1]]  # Grad-CAM: the project repeats the map per channel
    return float(torch.linalg.vector_norm(project - plain)
                 / torch.linalg.vector_norm(plain).clamp_min(1e-30))


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
    sync(device)
    reps = 10 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return reps * 2.0 * n ** 3 / (time.perf_counter() - start)


def ceiling_path(model: nn.Module, shape: tuple[int, ...], rows: int, per_pass: int,
                 device: torch.device, fmt: torch.memory_format):
    """Plain forward + backward-to-input passes of ``rows`` rows in all, ``per_pass`` at a time,
    frozen weights, layout ``fmt``: a ceiling for any gradient method doing that many rows.
    Timed like the paths (same total work, interleaved with them): a best-of over single short
    passes would catch quiet moments of the shared machine that a long run cannot."""
    net = copy.deepcopy(model).to(device).eval().requires_grad_(False).to(memory_format=fmt)
    sizes = [per_pass] * (rows // per_pass) + ([rows % per_pass] if rows % per_pass else [])
    xs = {k: torch.rand(k, *shape, device=device).contiguous(memory_format=fmt).requires_grad_(True)
          for k in set(sizes)}

    def run() -> None:
        for k in sizes:
            torch.autograd.grad(net(xs[k])[:, 0].sum(), xs[k])
        sync(device)

    return run


def ceiling_paths(model, shape, n, steps, max_batch, device) -> dict:
    """IG's ceiling candidates: passes of the most rows allowed and of the most whole stimuli x
    steps that fit (oneDNN's speed per row can depend on the pass shape), in both layouts."""
    per_pass = {max_batch, max_batch // steps * steps} - {0}
    return {f"ceiling {layout} {k}": ceiling_path(model, shape, n * steps, k, device, fmt)
            for layout, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last))
            for k in sorted(per_pass)}


def bench_method(method, model, naive_net, layer, x, targets, device, max_batch, n_naive,
                 repeats, warm_up, clock, with_ceiling) -> dict:
    """Stimuli per ``clock`` second of each path, best of at least ``repeats`` rounds (more while
    a method has taken under MIN_SECONDS), interleaved so that all paths see the same background
    load; and how far the project's maps are from plain Captum's. For IG, also the ceiling."""
    cfg = resolve_config(method, OVERRIDES.get(method), modality="image")
    assert cfg.get("baseline", "zeros") == "zeros", "the Captum paths use a zero baseline"
    if method == "gradcam":
        cfg["layer"] = gradcam_layer_name(naive_net)
    n = x.shape[0]
    paths = {
        "project": lambda: run_project(method, model, x, targets, device),
        "plain": lambda: run_plain(method, naive_net, layer, x, targets, cfg, device, max_batch),
        # The naive loop's rate per stimulus does not depend on the batch: a subset will do.
        "naive": lambda: run_naive(method, naive_net, layer, x[:n_naive], targets, cfg, device),
    }
    if method == "integrated_gradients" and with_ceiling:
        paths.update(ceiling_paths(model, tuple(x.shape[1:]), n, cfg["n_steps"], max_batch,
                                   device))
    if warm_up:  # first calls pay for lazy initialization; the best-of drops per-shape costs
        run_project(method, model, x[:2], targets[:2], device)
        run_plain(method, naive_net, layer, x[:2], targets[:2], cfg, device, max_batch)
        run_naive(method, naive_net, layer, x[:2], targets, cfg, device)
    best = dict.fromkeys(paths, float("inf"))
    outputs = {}
    start, rounds = time.perf_counter(), 0
    while rounds < repeats or (time.perf_counter() - start < MIN_SECONDS and rounds < MAX_ROUNDS):
        for name, run in paths.items():
            begin = clock()
            outputs[name] = run()
            best[name] = min(best[name], clock() - begin)
        rounds += 1
    rates = {name: (n_naive if name == "naive" else n) / s for name, s in best.items()}
    rates["same"] = (None if method == "smoothgrad"
                     else relative_difference(outputs["project"], outputs["plain"]))
    return rates


def bench_model(name: str, model: nn.Module, shape: tuple[int, ...], counts: dict[str, int],
                n_naive: int, device: torch.device, methods: list[str], thread_counts: list[int],
                repeats: int, cheap_warm_up: bool) -> dict:
    """{(method, threads): rates}, printed as a table."""
    n_max = max(counts[m] for m in methods)
    x_all = torch.rand(n_max, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # explain the predicted class, as a study does
        targets_all = torch.cat([model(x_all[i:i + 64]).argmax(1)
                                 for i in range(0, n_max, 64)]).tolist()
    naive_net = copy.deepcopy(model).to(device).eval()  # as given: parameters require grad
    layer = dict(naive_net.named_modules())[gradcam_layer_name(naive_net)]
    max_batch = default_max_batch(x_all[:1], device)
    sizes = sorted({counts[m] for m in methods})
    print(f"\n{name}: input {'x'.join(map(str, shape))}, {' or '.join(map(str, sizes))} stimuli "
          f"(naive loop: at most {n_naive}), device {device.type}, {max_batch} rows per pass, "
          f"best of {repeats} or more rounds; on CPU one thread is timed in CPU seconds, "
          "more threads in wall seconds")
    print(f"{'method':<22}{'threads':>8}{'project/s':>11}{'plain/s':>10}{'naive/s':>10}"
          f"{'proj/plain':>11}{'proj/naive':>11}{'same maps':>11}")
    results = {}
    for method in methods:
        n = counts[method]
        x, targets = x_all[:n], targets_all[:n]
        for k in thread_counts:
            with threads(k):
                # The judged one-thread figure gets more rounds than the noisy wall-clock one.
                r = bench_method(method, model, naive_net, layer, x, targets, device, max_batch,
                                 min(n, n_naive), repeats + 2 * (k == 1 and repeats > 1),
                                 warm_up=cheap_warm_up or method not in MULTI_PASS,
                                 clock=clock_for(k, device),
                                 # the goal is on one thread; wall-clock ceilings are noise here
                                 with_ceiling=k == 1 or device.type == "cuda")
            results[(method, k)] = r
            same = "-" if r["same"] is None else f"{r['same']:.0e}"
            print(f"{method:<22}{k:>8}{r['project']:>11.1f}{r['plain']:>10.1f}{r['naive']:>10.1f}"
                  f"{r['project'] / r['plain']:>10.2f}x{r['project'] / r['naive']:>10.1f}x"
                  f"{same:>11}", flush=True)
            ceilings = {key: rate for key, rate in r.items() if key.startswith("ceiling ")}
            if ceilings:
                best = max(ceilings, key=ceilings.get)
                _, layout, per_pass = best.split()
                r["ceiling"] = ceilings[best]
                print(f"{'':<30}ceiling {r['ceiling']:.1f}/s (plain forward+backward passes of "
                      f"the same rows, {per_pass} per pass, {layout}): the project at "
                      f"{100 * r['project'] / r['ceiling']:.1f}%; all candidates: "
                      + ", ".join(f"{key.removeprefix('ceiling ')} {rate:.0f}/s"
                                  for key, rate in ceilings.items()), flush=True)
    with threads(1):
        r = bench_method("saliency", model, naive_net, layer, x_all[:1], targets_all[:1], device,
                         max_batch, 1, 3, warm_up=True,
                         clock=clock_for(1, device), with_ceiling=False)
    project_ms, plain_ms = 1e3 / r["project"], 1e3 / r["plain"]
    print(f"Fixed cost of one explain() call, one thread (saliency on one stimulus): "
          f"{project_ms:.1f} ms against {plain_ms:.1f} ms for plain Captum, so about "
          f"{project_ms - plain_ms:.1f} ms per call (private model copy, RNG seeding, "
          f"inspect_model's forward pass, layout and output conversions).")
    return results


def gpu_limit(model, shape, results, device, k) -> float | None:
    """IG-50 on the ResNet against a FLOP limit from the measured GEMM rate."""
    if ("integrated_gradients", k) not in results:
        return None
    fwd = forward_flops(model, shape)
    # Per IG step: a forward and a backward to the input only (weights are frozen, so no weight
    # gradients): about 2 forward passes of work.
    per_image = IG_STEPS * 2 * fwd
    limit = gemm_flops_per_s(device) / per_image
    ig = results[("integrated_gradients", k)]["project"]
    print(f"IG-{IG_STEPS} on ResNet-18-sized: forward {fwd / 1e9:.2f} GFLOP, about "
          f"{per_image / 1e9:.0f} GFLOP per image; FLOP limit from the measured fp32 GEMM rate "
          f"about {limit:.1f} images/s; the project reaches {ig:.1f} ({100 * ig / limit:.0f}%). "
          f"TF32: cudnn {torch.backends.cudnn.allow_tf32}, "
          f"matmul {torch.backends.cuda.matmul.allow_tf32}")
    return ig / limit


def print_goals(goals: list[tuple[bool, str]]) -> None:
    print("\nGoals (on CPU judged on the one-thread run, the stable figure):")
    for ok, text in goals:
        print(f"{verdict(ok)} {text}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick")
    mode.add_argument("--full", dest="mode", action="store_const", const="full")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="the 'all threads' run's torch CPU threads (default: torch's choice); "
                             "a one-thread run is always added")
    args = parser.parse_args(argv)
    # Captum announces the hooks DeepLift / GuidedBackprop put on the Captum paths' model, and
    # that internal_batch_size is raised to the stimuli of a call (the project's rows per pass
    # are below the ResNet batch; Captum then runs one step of every stimulus per pass).
    warnings.filterwarnings("ignore", message="Setting (forward, )?backward hooks")
    warnings.filterwarnings("ignore", message="Internal batch size cannot be less")
    mode_name = args.mode or "quick"
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    # On a GPU the CPU threads only launch kernels: one run, with torch's threads.
    thread_counts = ([torch.get_num_threads()] if device.type == "cuda"
                     else sorted({torch.get_num_threads(), 1}, reverse=True))
    judged = 1 if device.type == "cpu" else thread_counts[0]  # the stable figure on CPU
    n_cnn, n_resnet, n_resnet_multi = COUNTS[(mode_name, device.type)]
    n_naive = NAIVE[(mode_name, device.type)]
    print(f"torch {torch.__version__}, threads {' and '.join(map(str, thread_counts))}, mode "
          f"{mode_name}, device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print(f"IG: {IG_STEPS} Gauss-Legendre steps, zero baseline, convergence delta. SmoothGrad: "
          f"saliency, {NT_SAMPLES} samples, noise {NOISE} x input range. Plain: Captum on the "
          "whole batch with its batching knobs; naive: one Captum call per stimulus; both on the "
          "model as given (eval, parameters require grad).")
    goals: list[tuple[bool, str]] = []

    def judge(label: str, results: dict) -> None:
        for method in methods:
            r = results[(method, judged)]
            ratio = r["project"] / r["plain"]
            goals.append((ratio >= 1.0, f"{label} {method}: project {ratio:.2f}x plain batched "
                                        "Captum (goal >= 1.00x)"))

    def judge_ig(label: str, results: dict) -> None:
        r = results.get(("integrated_gradients", 1))
        if r is not None:
            share = r["project"] / r["ceiling"]
            goals.append((share >= GOAL_IG_CEILING,
                          f"{label} IG-{IG_STEPS}: {100 * share:.1f}% of the forward+backward "
                          f"ceiling (goal >= {100 * GOAL_IG_CEILING:.0f}%)"))

    torch.manual_seed(0)
    cnn = build_model("image_cnn", input_shape=(1, 8, 8), num_classes=10)
    results = bench_model("Demo CNN (image_cnn)", cnn, (1, 8, 8), dict.fromkeys(methods, n_cnn),
                          n_naive, device, methods, thread_counts, repeats=3, cheap_warm_up=True)
    judge("demo CNN", results)
    if device.type == "cpu":
        judge_ig("demo CNN", results)

    if args.skip_resnet or n_resnet == 0:
        if not args.skip_resnet:
            print("\nResNet-18-sized: not run in --quick on CPU (a meaningful batch takes minutes "
                  "here; see the docstring). Run --full, or --device cuda.")
        print_goals(goals)
        return
    resnet = ResNet18Like(num_classes=1000).eval()
    shape = (3, 224, 224)
    counts = {m: n_resnet_multi if m in MULTI_PASS else n_resnet for m in methods}
    on_cpu = device.type == "cpu"
    # On CPU, warming up the 50- and 25-pass methods would cost more than measuring them.
    results = bench_model("ResNet-18-sized", resnet, shape, counts, n_naive, device, methods,
                          thread_counts, repeats=1 if on_cpu else 3, cheap_warm_up=not on_cpu)
    judge("ResNet", results)
    if on_cpu:
        judge_ig("ResNet", results)
    else:
        share = gpu_limit(resnet, shape, results, device, thread_counts[0])
        if share is not None:
            goals.append((share >= GOAL_GPU_LIMIT,
                          f"ResNet IG-{IG_STEPS} on {device.type}: {100 * share:.0f}% of the "
                          f"GEMM-based limit (goal >= {100 * GOAL_GPU_LIMIT:.0f}%)"))
    print_goals(goals)


if __name__ == "__main__":
    main()
