"""Preparation computes every explanation arm's maps and images, fully configured and once."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from studyapp.models import Arm, Explanation, Study
from studyapp.services.errors import ServiceError
from studyapp.services.preparation import study_run_preparation
from studyapp.services.studies import study_launch, study_prepare
from tests.factories import ArmFactory, image_study_with_arms, study_with_arms

pytestmark = pytest.mark.django_db


def test_each_sampled_item_gets_one_explanation_per_arm_with_its_full_config(prepare):
    study = prepare(study_with_arms(methods=("integrated_gradients", "saliency")))
    assert study.state == Study.State.READY
    test_ids = set(study.dataset.stimuli.filter(split="test").values_list("pk", flat=True))
    sampled = set(study.items.values_list("stimulus_id", flat=True))
    assert len(sampled) == 5 and sampled <= test_ids  # 2 learning + 3 test items, never training items
    for arm in study.arms.filter(kind="explanation"):
        rows = Explanation.objects.filter(arm=arm)
        assert set(rows.values_list("stimulus_id", flat=True)) == sampled  # only the study's items
        first = rows.first()
        # Every parameter is explicit; the tabular baseline is the training mean, recorded with its values.
        if arm.method == "integrated_gradients":
            assert first.config["n_steps"] == 50 and first.config["baseline"] == "training_mean"
            assert len(first.config["baseline_values"]) == 3
        assert first.config["rendering"]["normalization"] == "shared_per_arm"
        assert first.config["execution"]["seed"] == study.seed
        attributions = np.load(io.BytesIO(bytes(first.attributions)), allow_pickle=False)
        assert attributions.shape == (3,) and attributions.dtype == np.float32
        assert Image.open(first.image.open("rb")).format == "PNG"
        # The arm now carries the complete configuration, so launch freezes all of it.
        arm.refresh_from_db()
        assert {k: v for k, v in first.config.items()
                if k not in ("execution", "rendering", "manipulation")} == arm.method_config


def test_one_shared_scale_per_arm_is_recorded_in_every_row(prepare):
    prepare(study_with_arms())
    scales = {e.config["rendering"]["scale"] for e in Explanation.objects.all()}
    assert len(scales) == 1 and scales.pop() > 0


def test_rerunning_preparation_writes_no_second_row_and_recomputes_the_same_maps(prepare):
    study = prepare(study_with_arms())
    before = {e.stimulus_id: bytes(e.attributions) for e in Explanation.objects.all()}
    Explanation.objects.filter(pk=Explanation.objects.order_by("pk").first().pk).delete()  # a lost chunk
    Study.objects.filter(pk=study.pk).update(state="preparing")  # the task is redelivered
    study_run_preparation(study_id=study.pk)
    after = {e.stimulus_id: bytes(e.attributions) for e in Explanation.objects.all()}
    assert after == before


def test_launch_freezes_the_resolved_method_configuration(prepare):
    study = study_launch(study=prepare(study_with_arms()))
    frozen = {a["name"]: a for a in study.frozen_config["arms"]}
    assert frozen["integrated_gradients"]["method_config"]["integration"] == "gausslegendre"


@pytest.mark.parametrize("arm_kwargs,message", [
    ({"method": "gradcam"}, "Grad-CAM does not work on tabular data"),
    ({"method": "integrated_gradients", "method_config": {"n_steps": -3}}, "n_steps"),
    ({"method": "saliency", "method_config": {"colour": "red"}}, "colour"),
    ({"kind": "baseline", "method": "sobel_edges"}, "does not work on tabular data"),
    ({"kind": "baseline", "method": "random_map"}, "random map matched to the real one"),
    ({"kind": "ood_warning"}, "needs at least 76 of them; the dataset has 4"),
])
def test_an_arm_that_cannot_be_computed_is_refused_before_any_work(arm_kwargs, message):
    study = study_with_arms(methods=())
    ArmFactory(study=study, name="bad", **{"kind": "explanation", **arm_kwargs})
    with pytest.raises(ServiceError, match=message):
        study_prepare(study=study)
    study.refresh_from_db()
    assert study.state == Study.State.DRAFT and not Explanation.objects.exists()


def test_the_control_arm_gets_no_explanations(prepare):
    study = prepare(study_with_arms())
    assert not Explanation.objects.filter(arm__kind=Arm.Kind.CONTROL).exists()
    assert study.preparation["explanations_created"] == {"integrated_gradients": 5}


def maps_of(arm_name: str) -> dict[int, np.ndarray]:
    return {e.stimulus_id: np.load(io.BytesIO(bytes(e.attributions)), allow_pickle=False)
            for e in Explanation.objects.filter(arm__name=arm_name)}


def test_manipulated_arms_derive_from_the_real_maps_and_each_arm_is_drawn_on_its_own_shared_scale(prepare):
    study = image_study_with_arms(arms=[
        {"name": "ig", "kind": "explanation", "method": "integrated_gradients"},
        {"name": "ig inverted", "kind": "explanation", "method": "integrated_gradients", "manipulation": "inverted"},
        {"name": "ig random", "kind": "explanation", "method": "integrated_gradients",
         "manipulation": "random_matched"},
        {"name": "ig randomized", "kind": "explanation", "method": "integrated_gradients",
         "manipulation": "randomized_model"},
        {"name": "ig other", "kind": "explanation", "method": "integrated_gradients", "manipulation": "other_input"},
    ])
    study = prepare(study)
    assert study.state == Study.State.READY
    real, inverted, random, randomized, other = (maps_of(n) for n in
                                                 ("ig", "ig inverted", "ig random", "ig randomized", "ig other"))
    for pk, a in real.items():
        np.testing.assert_array_equal(inverted[pk], -a)
        # The placebo is made of another stimulus's values (never this one's own map), zero where
        # the input is zero like real IG.
        assert any(np.array_equal(np.sort(random[pk].ravel()), np.sort(real[other].ravel()))
                   for other in real if other != pk)
        assert not np.array_equal(np.sort(random[pk].ravel()), np.sort(a.ravel()))
        assert not np.allclose(randomized[pk], a)
    donors = {e.config["manipulation"]["name"] for e in Explanation.objects.filter(arm__name="ig other")}
    assert donors == {"other_input"}
    assert any(not np.array_equal(other[pk], real[pk]) for pk in real)
    for name in ("ig", "ig inverted", "ig random", "ig randomized", "ig other"):
        # One scale per arm, by the same rule for every arm: each arm's pictures use the display
        # range alike (the randomized model's tiny maps are not drawn blank on the real maps' scale).
        rows = Explanation.objects.filter(arm__name=name)
        assert len({e.config["rendering"]["scale"] for e in rows}) == 1
        shown = np.abs(np.concatenate([maps_of(name)[pk].sum(axis=0).ravel() for pk in real]))
        assert np.percentile(shown, 99) == pytest.approx(rows.first().config["rendering"]["scale"], rel=1e-4)
    record = Explanation.objects.filter(arm__name="ig randomized").first().config["manipulation"]
    assert record["mode"] == "cascading" and record["down_to"] is None


def test_baseline_and_ood_arms_are_prepared_on_images(prepare):
    study = image_study_with_arms(arms=[
        {"name": "edges", "kind": "baseline", "method": "sobel_edges"},
        {"name": "exemplars", "kind": "baseline", "method": "exemplars"},
        {"name": "ood", "kind": "ood_warning"},
    ])
    study = prepare(study)
    assert study.state == Study.State.READY
    train_labels = dict(study.dataset.stimuli.filter(split="train").values_list("index", "label"))
    for e in Explanation.objects.filter(arm__name="exemplars"):
        chosen = np.load(io.BytesIO(bytes(e.attributions)), allow_pickle=False).astype(int)
        assert len(chosen) == 3 and e.image
        # Exemplars come from the class the model predicted (e.target), never from the true label.
        train_order = sorted(train_labels)
        assert {train_labels[train_order[j]] for j in chosen} == {e.target}
    for e in Explanation.objects.filter(arm__name="ood"):
        score, threshold, flagged = np.load(io.BytesIO(bytes(e.attributions)), allow_pickle=False)
        assert flagged == float(score > threshold) and not e.image
    assert Explanation.objects.filter(arm__name="edges").count() == 5  # the sampled items


def test_a_study_with_manipulated_explanations_needs_a_debrief():
    study = study_with_arms(methods=())
    Study.objects.filter(pk=study.pk).update(debrief_text="  ")
    study.refresh_from_db()
    ArmFactory(study=study, name="fake", kind="explanation", method="saliency", manipulation="inverted")
    with pytest.raises(ServiceError, match="write a debrief text"):
        study_prepare(study=study)
