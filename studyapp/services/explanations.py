"""Precomputing what each arm shows: raw arrays plus a rendered PNG per stimulus.

Arms (DESIGN.md glossary): ``explanation`` arms run a method, on the trained model or through a
manipulation (randomized model, label-randomized model, inverted, matched random, another
input's map); ``baseline`` arms show Sobel edges or natural exemplars; ``ood_warning`` arms store
an out-of-distribution score and its calibrated threshold.

Idempotent: one Explanation row per (arm, stimulus) is a database constraint, rows that exist are
skipped, and every map is deterministic (seeded), so a redelivered task writes only what is
missing and writes the same thing. Rendering uses one scale shared by all pictures of an arm,
chosen by the same rule for every arm: the 99th percentile of |map| over that arm's own maps as
drawn. A per-image stretch would itself be a manipulation (a near-empty map shown at full
contrast); the real method's scale, used for its placebos before, drew the randomized-model maps
(about 1/1000 of the real maps' magnitude) as a blank picture: a second control arm, not a
placebo. With its own scale every arm uses the display range the same way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction

from explainers import manipulations, rendering
from explainers.aids import build_exemplar_index, fit_ood_detector
from explainers.demo_data import train_test_split_indices
from explainers.methods import METHODS, ExplanationResult, data_reference_overrides, explain, resolve_config
from explainers.methods import config_sha256 as method_config_sha256
from studyapp.arm_settings import manipulation_settings_problems
from studyapp.models import Arm, Explanation, ModelOutput, Stimulus, Study
from studyapp.services.datasets import array_to_npy_bytes, stimuli_arrays

WRITE_CHUNK = 128
EXEMPLARS_K = 3
OOD_QUANTILE = 0.95
OOD_CALIBRATION_FRACTION = 0.25
OOD_MIN_CALIBRATION = 19  # a 0.95 conformal quantile needs ceil((n + 1) * 0.95) <= n
# Baseline aids that can be prepared, with the modalities they make sense for.
BASELINE_METHODS = {"sobel_edges": ("image",), "exemplars": ("image",)}


def explainer_device() -> str | None:
    """settings.EXPLAINER_DEVICE: None lets explainers pick CUDA when present, else the CPU."""
    return None if settings.EXPLAINER_DEVICE == "auto" else settings.EXPLAINER_DEVICE


def study_stimulus_pool(*, study: Study):
    """The stimuli trials draw from: the dataset's test split (never the model's training items)."""
    return Stimulus.objects.filter(dataset=study.dataset, split=Stimulus.Split.TEST).order_by("index")


def arm_problem(*, arm: Arm, modality: str) -> str | None:
    """Why ``arm`` cannot be prepared on ``modality`` data, or None. Checked before any work."""
    if arm.kind == Arm.Kind.BASELINE:
        allowed = BASELINE_METHODS.get(arm.method)
        if allowed is None:
            return (f"Arm '{arm.name}': a baseline arm shows {' or '.join(BASELINE_METHODS)}; for a random map use "
                    "an explanation arm with the 'random map matched to the real one' manipulation.")
        if modality not in allowed:
            return f"Arm '{arm.name}': {arm.get_method_display()} does not work on {modality} data."
        return None
    if arm.kind == Arm.Kind.OOD_WARNING:
        n_train = Stimulus.objects.filter(dataset=arm.study.dataset, split=Stimulus.Split.TRAIN).count()
        if n_train * OOD_CALIBRATION_FRACTION < OOD_MIN_CALIBRATION:
            return (f"Arm '{arm.name}': the warning threshold is calibrated on a quarter of the training items, "
                    f"which needs at least {int(OOD_MIN_CALIBRATION / OOD_CALIBRATION_FRACTION)} of them; "
                    f"the dataset has {n_train}.")
        return None
    if arm.kind != Arm.Kind.EXPLANATION:
        return None
    settings = manipulation_settings_problems(arm.manipulation, arm.manipulation_config or {})
    if settings:
        return f"Arm '{arm.name}': " + " ".join(settings)
    info = METHODS.get(arm.method)
    if info is None or modality not in info.modalities:
        return f"Arm '{arm.name}': {arm.get_method_display()} does not work on {modality} data."
    try:
        # Data-dependent keys (training mean, feature ranges) are filled in at preparation.
        resolve_config(arm.method, arm.method_config, modality=modality, allow_incomplete=True)
    except ValueError as exc:
        return f"Arm '{arm.name}': {exc}"
    return None


def _real_arms_of(arm: Arm, arms: list[Arm]) -> list[Arm]:
    """The real (unmanipulated) explanation arms with the method of ``arm`` when ``arm`` is a
    placebo (a manipulated explanation arm); empty otherwise."""
    if arm.kind != Arm.Kind.EXPLANATION or arm.manipulation == Arm.Manipulation.NONE:
        return []
    return [a for a in arms if a.kind == Arm.Kind.EXPLANATION and a.manipulation == Arm.Manipulation.NONE
            and a.method == arm.method]


def placebo_real_arm(arm: Arm, arms: list[Arm]) -> Arm | None:
    """The real arm a manipulated arm is the placebo of, when there is exactly one; None otherwise
    (and for real arms)."""
    real = _real_arms_of(arm, arms)
    return real[0] if len(real) == 1 else None


def placebo_settings_problems(*, arms: list[Arm], modality: str) -> list[str]:
    """A placebo compared with a real arm must differ from it only in the manipulation: the same
    method settings (a real IG arm at 32 steps against its randomized twin at the default 50 would
    confound the comparison). An empty placebo configuration inherits the real arm's."""
    problems = []
    for arm in arms:
        real = _real_arms_of(arm, arms)
        if not real:
            continue
        if len(real) > 1 and not arm.method_config:
            problems.append(f"Arm '{arm.name}' is a placebo of {arm.method}, which has several real arms "
                            f"({', '.join(repr(a.name) for a in real)}): copy the method settings of the one it "
                            "is the placebo of, so that the two differ only in the manipulation.")
            continue
        try:
            mine = resolve_config(arm.method, arm.method_config or real[0].method_config or {}, modality=modality,
                                  allow_incomplete=True)
            theirs = [resolve_config(a.method, a.method_config or {}, modality=modality, allow_incomplete=True)
                      for a in real]
        except ValueError:
            continue  # the settings themselves are wrong: arm_problem says so
        if mine not in theirs:
            other = theirs[0]
            differ = ", ".join(f"{k}={mine.get(k)!r} (real arm '{real[0].name}': {other.get(k)!r})"
                               for k in sorted(set(mine) | set(other)) if mine.get(k) != other.get(k))
            problems.append(f"Arm '{arm.name}' is a placebo of the real arm '{real[0].name}' but uses other method "
                            f"settings: {differ}. The comparison would be confounded by the settings; give the "
                            "placebo the real arm's settings (or leave its settings empty to inherit them).")
    return problems


def is_signed(config: dict) -> bool:
    """Signed maps get the diverging colormap; magnitude maps (|gradient|, Grad-CAM) sequential."""
    return not (config.get("method") == "gradcam" or config.get("signed") is False)


@dataclass
class PreparationContext:
    """What every arm of one study's preparation shares, computed once."""

    study: Study
    model: object
    X_train: np.ndarray
    y_train: np.ndarray
    stimuli: list[Stimulus]
    inputs: np.ndarray
    targets: np.ndarray  # the trained model's predicted class per pool stimulus
    _real: dict = field(default_factory=dict)

    @classmethod
    def build(cls, *, study: Study, model, stimuli: list[Stimulus] | None = None) -> PreparationContext:
        """Over ``stimuli`` (default: the whole test split; preparation passes the item sample)."""
        train = list(Stimulus.objects.filter(dataset=study.dataset, split=Stimulus.Split.TRAIN)
                     .order_by("index").only("data", "label"))
        X_train, y_train = stimuli_arrays(train, input_shape=study.dataset.input_shape)
        no_inputs, no_targets = stimuli_arrays([], input_shape=study.dataset.input_shape)
        ctx = cls(study=study, model=model, X_train=X_train, y_train=y_train, stimuli=[], inputs=no_inputs,
                  targets=no_targets)
        return ctx.with_stimuli(list(study_stimulus_pool(study=study).only("data", "label"))
                                if stimuli is None else stimuli)

    def with_stimuli(self, stimuli: list[Stimulus]) -> PreparationContext:
        """The same context (model, training data) over other stimuli; cached maps are not shared."""
        predicted = dict(ModelOutput.objects.filter(model=self.study.model, stimulus__in=[s.pk for s in stimuli])
                         .values_list("stimulus_id", "predicted"))
        inputs, _ = stimuli_arrays(stimuli, input_shape=self.study.dataset.input_shape)
        return PreparationContext(study=self.study, model=self.model, X_train=self.X_train, y_train=self.y_train,
                                  stimuli=stimuli, inputs=inputs,
                                  targets=np.array([predicted[s.pk] for s in stimuli], dtype=np.int64))

    @property
    def modality(self) -> str:
        return self.study.dataset.modality

    def method_config_recorded(self, arm: Arm) -> dict:
        """``method_config``, also stored on the arm itself, so launch freezes every parameter."""
        config = self.method_config(arm)
        if arm.method_config != config:
            Arm.objects.filter(pk=arm.pk).update(method_config=config)
        return config

    def method_config(self, arm: Arm) -> dict:
        """Researcher overrides on top of explicit defaults. Tabular baselines default to the training
        mean (zeros in raw units would be an arbitrary, often impossible, patient). A manipulated
        arm without settings of its own takes its real arm's (``placebo_real_arm``)."""
        overrides = dict(arm.method_config or {})
        real = placebo_real_arm(arm, list(self.study.arms.all()))
        if real is not None and not overrides:
            overrides = dict(real.method_config or {})
        if self.modality == "tabular":
            overrides = {**data_reference_overrides(arm.method, self.X_train, modality=self.modality), **overrides}
        return resolve_config(arm.method, overrides, modality=self.modality)

    def explain(self, model, method: str, config: dict):
        return explain(model, self.inputs, method=method, config=config, targets=self.targets,
                       seed=self.study.seed, device=explainer_device())

    def real(self, method: str, config: dict):
        """The method's maps on the trained model (cached: manipulated arms derive from them)."""
        key = method_config_sha256(config)
        if key not in self._real:
            self._real[key] = self.explain(self.model, method, config)
        return self._real[key]

    def prime_real(self, arm: Arm, maps: np.ndarray, *, config: dict) -> None:
        """Use the real arm's stored maps (``config``: their stored configuration) as the real maps
        of its method, instead of computing them a second time for a placebo derived from them."""
        method_config = {k: v for k, v in config.items() if k not in ("manipulation", "rendering")}
        self._real[method_config_sha256(self.method_config(arm))] = ExplanationResult(
            attributions=maps, targets=self.targets, config=method_config)

    def shown(self, maps: np.ndarray, *, signed: bool) -> np.ndarray:
        """What is drawn: image channels summed for signed maps (keeps IG completeness), averaged for
        magnitude maps (Grad-CAM repeats one map on every channel); tabular rows as they are."""
        if self.modality == "tabular":
            return maps
        return np.stack([rendering.reduce_channels(a, how="sum" if signed else "mean") for a in maps])


def randomized_model(ctx: PreparationContext, arm: Arm):
    """The trained model with weights re-initialized as the arm's randomized_model settings say
    (cascading from the top, default; or one layer), and the record of what was randomized."""
    options = arm.manipulation_config or {}
    if options.get("mode", "cascading") == "independent":
        return manipulations.randomize_independent(ctx.model, layer=options["layer"], seed=ctx.study.seed)
    return manipulations.randomize_cascading(ctx.model, down_to=options.get("down_to"), seed=ctx.study.seed)


def _manipulated_maps(ctx: PreparationContext, arm: Arm, config: dict, real) -> tuple[np.ndarray, dict]:
    m, options, seed = arm.manipulation, arm.manipulation_config or {}, ctx.study.seed
    if m == Arm.Manipulation.NONE:
        return real.attributions, {}
    if m == Arm.Manipulation.RANDOMIZED_MODEL:
        randomized, record = randomized_model(ctx, arm)
        return ctx.explain(randomized, arm.method, config).attributions, record
    if m == Arm.Manipulation.LABEL_RANDOMIZED_MODEL:
        randomized, record = manipulations.label_randomized_model(
            architecture=ctx.study.model.architecture, X=ctx.X_train, y=ctx.y_train,
            num_classes=len(ctx.study.model.class_names), seed=seed,
            hyperparameters=ctx.study.model.hyperparameters or None)
        return ctx.explain(randomized, arm.method, config).attributions, record
    if m == Arm.Manipulation.INVERTED:
        return manipulations.invert(real.attributions, signed=is_signed(config))
    if m == Arm.Manipulation.RANDOM_MATCHED:
        return manipulations.random_matched(real.attributions, seed=seed, inputs=ctx.inputs)
    if m == Arm.Manipulation.OTHER_INPUT:
        maps, donors, record = manipulations.other_input(real.attributions, predicted=ctx.targets, seed=seed,
                                                         same_class=options.get("same_class", True),
                                                         inputs=ctx.inputs)
        return maps, {**record, "donor_stimulus_indices": [ctx.stimuli[int(d)].index for d in donors]}
    raise ValueError(f"Arm '{arm.name}': unknown manipulation '{m}'.")


def _explanation_arm(ctx: PreparationContext, arm: Arm):
    config = ctx.method_config_recorded(arm)
    real = ctx.real(arm.method, config)
    maps, record = _manipulated_maps(ctx, arm, config, real)
    signed = is_signed(config)
    shown = ctx.shown(maps, signed=signed)
    scale = rendering.attribution_scale(shown)
    stored = {**real.config, "manipulation": {"name": arm.manipulation, **record},
              "rendering": {"normalization": "shared_per_arm", "scale": scale, "signed": signed,
                            "clip_percentile": rendering.CLIP_PERCENTILE}}
    return maps, stored, lambda i: render_map(ctx, i, shown[i], signed=signed, scale=scale)


def render_map(ctx: PreparationContext, i: int, shown: np.ndarray, *, signed: bool, scale: float) -> bytes:
    if ctx.modality == "image":
        return rendering.render_heatmap_overlay(ctx.inputs[i], shown, signed=signed, normalization="shared",
                                                scale=scale)
    dataset = ctx.study.dataset
    units = [dataset.feature_descriptions.get(n, {}).get("unit") for n in dataset.feature_names]
    return rendering.render_tabular_bars(shown, feature_names=dataset.feature_names, feature_units=units,
                                         feature_values=ctx.inputs[i].tolist(), top_k=min(10, len(shown)))


def _baseline_arm(ctx: PreparationContext, arm: Arm):
    if arm.method == "sobel_edges":
        maps, record = manipulations.sobel_edges(ctx.inputs)
        shown = ctx.shown(maps, signed=False)
        scale = rendering.attribution_scale(shown)
        stored = {"method": "sobel_edges", **record,
                  "rendering": {"normalization": "shared_per_arm", "scale": scale, "signed": False,
                                "clip_percentile": rendering.CLIP_PERCENTILE}}
        return maps, stored, lambda i: render_map(ctx, i, shown[i], signed=False, scale=scale)
    # Natural exemplars: the k nearest training items of the class the MODEL predicts (never the
    # true label: on items the model gets wrong that would leak the truth).
    k = int((arm.method_config or {}).get("k", EXEMPLARS_K))
    index = build_exemplar_index(ctx.model, ctx.X_train, ctx.y_train)
    nearest = index.nearest(ctx.inputs, k=k, predicted_classes=ctx.targets)
    stored = {"method": "exemplars", "k": k, **index.to_dict()}
    return nearest.astype(np.float32), stored, lambda i: rendering.render_exemplar_strip(
        [ctx.X_train[j] for j in nearest[i]])


def _ood_arm(ctx: PreparationContext, arm: Arm):
    """Mahalanobis on penultimate features (the energy score misses far-out tabular rows), with the
    threshold calibrated on training items held out from the fit: ~5% false alarms in distribution."""
    fit_idx, cal_idx = train_test_split_indices(len(ctx.y_train), test_fraction=OOD_CALIBRATION_FRACTION, seed=ctx.study.seed,
                                                stratify=ctx.y_train)
    options = arm.method_config or {}
    detector = fit_ood_detector(ctx.model, ctx.X_train[fit_idx], ctx.y_train[fit_idx],
                                method=options.get("ood_method", "mahalanobis"),
                                X_calibration=ctx.X_train[cal_idx], quantile=options.get("quantile", OOD_QUANTILE))
    scores = detector.score(ctx.inputs)
    values = np.stack([scores, np.full_like(scores, detector.threshold), scores > detector.threshold], axis=1)
    return values.astype(np.float32), {"method": "ood_warning", **detector.to_dict()}, None


def arm_compute_explanations(*, arm: Arm, ctx: PreparationContext, save_files=None) -> int:
    """Compute and store every missing explanation of ``arm`` over the study's stimulus pool.
    ``save_files(pngs) -> names`` stores the pictures (preparation records the names first, see
    ``studyapp.services.preparation.files_write``); by default each row saves its own."""
    if not ctx.stimuli:
        return 0
    build = {Arm.Kind.EXPLANATION: _explanation_arm, Arm.Kind.BASELINE: _baseline_arm,
             Arm.Kind.OOD_WARNING: _ood_arm}[arm.kind]
    started = time.perf_counter()
    arrays, stored, render = build(ctx, arm)
    seconds_each = (time.perf_counter() - started) / len(ctx.stimuli)
    digest = method_config_sha256(stored)
    done = set(Explanation.objects.filter(arm=arm).values_list("stimulus_id", flat=True))
    todo = [i for i, s in enumerate(ctx.stimuli) if s.pk not in done]
    for start in range(0, len(todo), WRITE_CHUNK):
        rows = []
        for i in todo[start:start + WRITE_CHUNK]:
            row = Explanation(arm=arm, stimulus_id=ctx.stimuli[i].pk, attributions=array_to_npy_bytes(arrays[i]),
                              config=stored, config_sha256=digest, seed=ctx.study.seed, target=int(ctx.targets[i]),
                              compute_seconds=seconds_each)
            if render is not None and save_files is None:
                row.image.save("explanation.png", ContentFile(render(i)), save=False)
            rows.append(row)
        if render is not None and save_files is not None:
            names = save_files([render(i) for i in todo[start:start + WRITE_CHUNK]])
            for row, name in zip(rows, names):
                row.image.name = name
        with transaction.atomic():
            Explanation.objects.bulk_create(rows, ignore_conflicts=True)
    return len(todo)
