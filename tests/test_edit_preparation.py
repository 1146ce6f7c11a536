"""Preparation creates counterfactual edits of the pool stimuli and the model's output on each."""
from __future__ import annotations

import numpy as np
import pytest

from studyapp.models import Edit, ModelOutput, Study
from studyapp.services.datasets import stimulus_array
from studyapp.services.preparation import study_run_preparation
from tests.factories import image_study_with_arms, study_with_arms

pytestmark = pytest.mark.django_db


def test_tabular_edits_move_exactly_one_feature_and_have_the_models_output(prepare):
    study = prepare(study_with_arms())
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
    study = prepare(image_study_with_arms(arms=[{"name": "edges", "kind": "baseline", "method": "sobel_edges"}]))
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
    study = prepare(study_with_arms())
    counts = (Edit.objects.count(), ModelOutput.objects.count())
    Study.objects.filter(pk=study.pk).update(state="preparing")
    study_run_preparation(study_id=study.pk)
    assert (Edit.objects.count(), ModelOutput.objects.count()) == counts
