"""The study's item sample: seeded, stratified, disjoint roles, recorded, and the only items explained."""
from __future__ import annotations

import numpy as np
import pytest

from studyapp.models import Explanation, ModelOutput, Study, StudyItem
from studyapp.services.item_sample import PoolItem, stratified_draw
from tests.factories import StimulusFactory, study_with_arms
from tests.participation_helpers import WITHIN_DESIGN, image_study

pytestmark = pytest.mark.django_db


def pool(n_per_stratum: dict[tuple[int, bool], int]) -> list[PoolItem]:
    items, next_id = [], 0
    for (predicted, correct), n in n_per_stratum.items():
        for _ in range(n):
            items.append(PoolItem(next_id, predicted, correct))
            next_id += 1
    return items


def test_half_of_the_items_are_model_errors_spread_over_predicted_classes():
    items = pool({(0, True): 50, (1, True): 50, (0, False): 20, (1, False): 20})
    drawn, notes = stratified_draw(items, 20, error_share=0.5, rng=np.random.default_rng(0))
    assert len(drawn) == 20 and len({d.stimulus_id for d in drawn}) == 20 and notes == []
    strata = {(p, c): sum(1 for d in drawn if (d.predicted, d.correct) == (p, c)) for p in (0, 1) for c in (True, False)}
    assert strata == {(0, True): 5, (1, True): 5, (0, False): 5, (1, False): 5}


def test_a_short_stratum_moves_its_share_elsewhere_and_says_so():
    items = pool({(0, True): 30, (1, True): 30, (0, False): 2})
    drawn, notes = stratified_draw(items, 10, error_share=0.5, rng=np.random.default_rng(0))
    assert len(drawn) == 10 and sum(1 for d in drawn if not d.correct) == 2
    assert notes and "only 2 of 5 items the model gets wrong" in notes[0]


def test_the_draw_is_reproducible_from_its_seed():
    items = pool({(0, True): 30, (1, True): 30, (0, False): 10, (1, False): 10})
    first = stratified_draw(items, 12, error_share=0.5, rng=np.random.default_rng(3))[0]
    again = stratified_draw(items, 12, error_share=0.5, rng=np.random.default_rng(3))[0]
    assert first == again


def test_preparation_records_the_sample_with_disjoint_roles_and_explains_only_it(prepare):
    study = image_study(arms=[{"name": "ig", "kind": "explanation", "method": "saliency"}])
    Study.objects.filter(pk=study.pk).update(config=WITHIN_DESIGN)
    study = prepare(study)
    items = list(StudyItem.objects.filter(study=study))
    roles = {role: [i for i in items if i.role == role] for role in ("learning", "test", "counterfactual_predict",
                                                                      "counterfactual_choose")}
    assert {r: len(v) for r, v in roles.items()} == {"learning": 2, "test": 2, "counterfactual_predict": 1,
                                                     "counterfactual_choose": 1}
    assert len({i.stimulus_id for i in items}) == len(items)  # disjoint
    choose = roles["counterfactual_choose"][0]
    assert len(choose.edits) == 2 and choose.answer_position in (0, 1)
    record = study.item_sample
    assert record["pool_size"] == 40 and record["seed"] == study.seed
    assert sum(record["counts"]["test"].values()) == 2
    explained = set(Explanation.objects.filter(arm__name="ig").values_list("stimulus_id", flat=True))
    assert explained == {i.stimulus_id for i in items}


def test_a_second_preparation_keeps_the_same_sample(prepare):
    study = prepare(study_with_arms())
    before = list(StudyItem.objects.filter(study=study).values_list("stimulus_id", "role", "position"))
    Study.objects.filter(pk=study.pk).update(state="preparing")
    from studyapp.services.preparation import study_run_preparation

    study_run_preparation(study_id=study.pk)
    assert list(StudyItem.objects.filter(study=study).values_list("stimulus_id", "role", "position")) == before


def test_a_pool_too_small_for_the_design_is_refused_at_prepare_with_the_numbers_before_any_computation(prepare):
    from studyapp.services.errors import ServiceError

    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(config={"blocks": [{"phase": "test", "n_items": 50}]})
    study.refresh_from_db()
    with pytest.raises(ServiceError, match="needs 50 distinct items .* test split has 6"):
        prepare(study)
    study.refresh_from_db()
    assert study.state == "draft" and not study.preparation_units.exists()
    assert not ModelOutput.objects.filter(model=study.model).exists()


def test_items_are_crossed_with_arms_every_participant_sees_the_same_items_in_their_own_order(prepare):
    from django.test import Client

    from tests.participation_helpers import live, to_trials

    study = study_with_arms()
    StimulusFactory.create_batch(20, dataset=study.dataset, split="test")
    Study.objects.filter(pk=study.pk).update(config={"blocks": [{"phase": "test", "n_items": 12}],
                                                     "attention_checks": {"count": 0},
                                                     "min_instruction_seconds": 0})
    study = live(study, prepare)
    for _ in range(4):
        to_trials(Client(), study)
    from studyapp.models import Participant

    orders = [list(p.trials.order_by("position").values_list("stimulus_id", flat=True))
              for p in Participant.objects.all()]
    assert all(sorted(o) == sorted(orders[0]) for o in orders) and len({tuple(o) for o in orders}) > 1
    assert {p.arm.name for p in Participant.objects.all()} == {"control", "integrated_gradients"}
