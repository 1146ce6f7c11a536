"""Preparation creates counterfactual edits of the candidate stimuli and the model's output on each."""
from __future__ import annotations

import numpy as np
import pytest

from studyapp.models import Edit, ModelOutput, Study
from studyapp.selectors import study_edits
from studyapp.services.datasets import stimulus_array
from studyapp.services.preparation import study_run_preparation
from tests.factories import (ArmFactory, StimulusFactory, StudyFactory, image_study_with_arms, study_with_arms,
                             with_hypothesis)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _same_stimuli_whatever_ran_before():
    # Stimulus values are seeded by the factory's global index sequence: without a reset, which
    # items have an edit that changes the model's answer depended on how many tests ran earlier.
    StimulusFactory.reset_sequence(0)
# One counterfactual item: every test stimulus of these small pools is a candidate, so all get edits.
CF = {"blocks": [{"phase": "test", "task": "counterfactual_predict", "n_items": 1}], "min_instruction_seconds": 0}


def with_cf(study: Study, **config) -> Study:
    Study.objects.filter(pk=study.pk).update(config={**CF, **config})
    study.refresh_from_db()
    return with_hypothesis(study)


def test_tabular_edits_move_exactly_one_feature_and_have_the_models_output(prepare):
    study = prepare(with_cf(study_with_arms()))
    edits = Edit.objects.filter(stimulus__dataset=study.dataset).select_related("stimulus")
    assert edits.exists() and set(edits.values_list("stimulus__split", flat=True)) == {"test"}
    for edit in edits:
        before, after = stimulus_array(edit.stimulus), stimulus_array(edit)
        changed = np.flatnonzero(before != after)
        assert changed.tolist() == [edit.params["feature"]]
        assert after[changed[0]] == pytest.approx(edit.params["to_value"])
        assert ModelOutput.objects.filter(model=study.model, edit=edit).count() == 1
    assert study.preparation["edits"]["outputs_created"] == edits.count()


def test_image_edits_occlude_one_cell_and_are_rendered(prepare):
    study = prepare(with_cf(image_study_with_arms(arms=[{"name": "edges", "kind": "baseline", "method": "sobel_edges"}])))
    edits = Edit.objects.filter(stimulus__dataset=study.dataset).select_related("stimulus")
    assert edits.count() == 8 * 16  # 8 pool stimuli, a 4x4 grid each
    for edit in edits[:20]:
        before, after = stimulus_array(edit.stimulus), stimulus_array(edit)
        top, left, h, w = edit.params["box"]
        mask = np.zeros_like(before, dtype=bool)
        mask[:, top:top + h, left:left + w] = True
        assert np.array_equal(before[~mask], after[~mask]) and np.allclose(after[mask], edit.params["fill_value"])
        assert edit.image and edit.kind == "occlude_cell"


def test_a_second_preparation_reuses_the_edits_and_adds_nothing(prepare):
    study = prepare(with_cf(study_with_arms()))
    counts = (Edit.objects.count(), ModelOutput.objects.count())
    Study.objects.filter(pk=study.pk).update(state="preparing")
    study_run_preparation(study_id=study.pk)
    assert (Edit.objects.count(), ModelOutput.objects.count()) == counts


def _study_on(model, **fields) -> Study:
    study = StudyFactory(model=model, **fields)
    ArmFactory(study=study, name="control", kind="control", position=0)
    ArmFactory(study=study, name="edges", kind="baseline", method="sobel_edges", position=1)
    return with_hypothesis(study)


def test_two_studies_with_different_edit_settings_each_get_their_own_edits(prepare):
    first = prepare(with_cf(image_study_with_arms(arms=[{"name": "edges", "kind": "baseline", "method": "sobel_edges"}])))
    second = prepare(_study_on(first.model, config={**CF, "edits": {"grid": [2, 2]}}))
    same = prepare(_study_on(first.model, config=CF))  # the default 4x4 grid, as in the first study

    stimuli = list(first.dataset.stimuli.filter(split="test"))
    assert study_edits(study=first, stimuli=stimuli).count() == 8 * 16
    coarse = study_edits(study=second, stimuli=stimuli)
    assert coarse.count() == 8 * 4 and all(e.params["box"][2:] == [4, 4] for e in coarse)
    assert second.preparation["edits"]["settings"]["grid"] == [2, 2]
    assert same.preparation["edits"]["created"] == 0  # same settings: the first study's edits serve
    assert Edit.objects.count() == 8 * 16 + 8 * 4


def test_an_edit_grid_that_does_not_tile_the_images_is_refused_at_prepare_before_any_computation(prepare):
    from studyapp.services.errors import ServiceError

    study = with_cf(image_study_with_arms(arms=[{"name": "edges", "kind": "baseline", "method": "sobel_edges"}]),
                    edits={"grid": [3, 3]})
    with pytest.raises(ServiceError, match="a 3x3 grid does not divide the 8x8 images"):
        prepare(study)
    study.refresh_from_db()
    assert study.state == "draft" and not ModelOutput.objects.filter(model=study.model).exists()
