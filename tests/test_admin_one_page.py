"""The study page: arms and the hypotheses that name them are built and saved in one go, and each
arm's settings boxes say which settings are valid for the method and manipulation chosen."""
from __future__ import annotations

import html
import json
import re

import pytest
from django.urls import reverse

from studyapp.arm_settings import (BASELINE_SETTINGS, METHOD_SETTING_MEANINGS, Exemplars, OodWarning,
                                   method_setting_keys)
from studyapp.models import Arm, Hypothesis, Study
from tests.factories import SMALL_DESIGN, HypothesisFactory, MLModelFactory, StimulusFactory, study_with_arms

pytestmark = pytest.mark.django_db
ADD_URL = reverse("admin:studyapp_study_add")

ARM_DEFAULTS = {"kind": "control", "method": "", "method_config": "{}", "manipulation": "none",
                "manipulation_config": "{}", "allocation_weight": 1}
HYPOTHESIS_DEFAULTS = {"comparison": "arm_vs_control", "comparator_name": "", "statement": "It helps.",
                       "outcome": "test_accuracy", "likert_item": "", "direction": "greater", "equivalence_margin": "",
                       "test": "welch_t", "alpha": 0.05, "family": "primary", "correction": "holm",
                       "planned_n_per_arm": 30, "stopping_rule": "", "exclusion_rules": "{}"}


def study_post(*, arms: list[dict], hypotheses: list[dict], study: Study | None = None, **fields) -> dict:
    """The study page's POST: the study's fields, then the arm rows and the hypothesis rows (each
    with an ``id`` when it is saved already)."""
    if study is None:
        model = MLModelFactory()
        StimulusFactory.create_batch(6, dataset=model.dataset, split="test")
    else:
        model = study.model
    data = {"title": study.title if study else "Maps or not", "slug": study.slug if study else "maps-or-not",
            "description": "", "model": model.pk, "dataset": model.dataset_id, "seed": 0,
            "config": json.dumps(SMALL_DESIGN), "target_per_arm": 30, "consent_text": "Please take part.",
            "instructions": "", "debrief_text": "", "completion_code": "DONE", "screened_out_code": "",
            "failed_checks_code": "", **fields}
    for prefix, rows, defaults in (("arms", arms, ARM_DEFAULTS), ("hypotheses", hypotheses, HYPOTHESIS_DEFAULTS),
                                   ("deviations", [], {}), ("items", [], {})):
        data[f"{prefix}-TOTAL_FORMS"] = len(rows)
        data[f"{prefix}-INITIAL_FORMS"] = sum(1 for row in rows if row.get("id"))
        for i, row in enumerate(rows):
            values = {"position": i, **defaults, **row} if prefix == "arms" else {**defaults, **row}
            if study is not None:
                values["study"] = study.pk
            data.update({f"{prefix}-{i}-{key}": value for key, value in values.items()})
    return data


def form_errors(response) -> str:
    found = re.findall(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', response.content.decode(), re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", " ".join(found))).split())


def saved_rows(study: Study) -> list[dict]:
    return [{"id": arm.pk, "name": arm.name, "kind": arm.kind, "method": arm.method, "position": arm.position}
            for arm in study.arms.order_by("position")]


def test_a_new_study_is_saved_with_its_arms_and_a_hypothesis_naming_them_in_one_post(admin_client):
    arms = [{"name": "control"}, {"name": "ig", "kind": "explanation", "method": "integrated_gradients"},
            {"name": "ig placebo", "kind": "explanation", "method": "integrated_gradients",
             "manipulation": "random_matched"}]
    hypotheses = [{"label": "H1", "arm_name": "ig"},
                  {"label": "H2", "comparison": "arm_vs_arm", "arm_name": "ig", "comparator_name": "ig placebo"}]
    response = admin_client.post(ADD_URL, study_post(arms=arms, hypotheses=hypotheses,
                                                     debrief_text="One kind of map was random."), follow=True)

    assert form_errors(response) == ""
    study = Study.objects.get()
    by_label = {h.label: h for h in study.hypotheses.select_related("arm", "comparator")}
    assert by_label["H1"].arm == study.arms.get(name="ig") and by_label["H1"].comparator is None
    assert (by_label["H2"].arm.name, by_label["H2"].comparator.name) == ("ig", "ig placebo")
    assert "Before this study can be prepared" not in response.content.decode()


def test_a_hypothesis_naming_an_arm_that_is_not_on_the_page_is_refused_in_words_and_nothing_is_saved(admin_client):
    arms = [{"name": "control"}, {"name": "ig", "kind": "explanation", "method": "integrated_gradients"}]
    response = admin_client.post(ADD_URL, study_post(arms=arms, hypotheses=[{"label": "H1", "arm_name": "xyz"}]))

    assert response.status_code == 200 and not Study.objects.exists()
    assert "H1 names arm 'xyz', which is not among this study's arms: control, ig." in form_errors(response)
    # The page comes back with the unsaved arms as the hypothesis's choices.
    choices = response.context["inline_admin_formsets"][1].formset.forms[0].fields["arm_name"].widget.choices
    assert [value for value, _ in choices] == ["", "control", "ig"]


def test_new_arms_of_a_draft_can_be_named_by_a_new_hypothesis_in_the_same_save(admin_client):
    study = study_with_arms()
    old = study.hypotheses.get()
    rows = [*saved_rows(study), {"name": "saliency", "kind": "explanation", "method": "saliency", "position": 2}]
    hypotheses = [{"id": old.pk, "label": old.label, "arm_name": old.arm.name},
                  {"label": "H2", "comparison": "arm_vs_arm", "arm_name": "saliency",
                   "comparator_name": "integrated_gradients"}]
    response = admin_client.post(reverse("admin:studyapp_study_change", args=[study.pk]),
                                 study_post(study=study, arms=rows, hypotheses=hypotheses), follow=True)

    assert form_errors(response) == ""
    new = study.hypotheses.get(label="H2")
    assert (new.arm, new.comparator) == (study.arms.get(name="saliency"), study.arms.get(name="integrated_gradients"))
    assert study.hypotheses.get(label=old.label).arm_id == old.arm_id


@pytest.mark.parametrize("named_as", ["ig", "integrated_gradients"], ids=["new name", "old name (no JavaScript)"])
def test_renaming_an_arm_in_the_same_save_keeps_its_hypotheses(admin_client, named_as):
    study = study_with_arms()
    hypothesis = study.hypotheses.get()
    arm_id = hypothesis.arm_id
    rows = [{**row, "name": "ig"} if row["id"] == arm_id else row for row in saved_rows(study)]
    response = admin_client.post(reverse("admin:studyapp_study_change", args=[study.pk]),
                                 study_post(study=study, arms=rows, hypotheses=[
                                     {"id": hypothesis.pk, "label": hypothesis.label, "arm_name": named_as}]),
                                 follow=True)

    assert form_errors(response) == ""
    hypothesis.refresh_from_db()
    assert hypothesis.arm_id == arm_id and hypothesis.arm.name == "ig"


def test_deleting_an_arm_that_a_hypothesis_names_is_refused_instead_of_deleting_the_hypothesis(admin_client):
    study = study_with_arms(methods=("integrated_gradients", "saliency"))
    hypothesis = study.hypotheses.get()
    rows = [{**row, "DELETE": "on"} if row["id"] == hypothesis.arm_id else row for row in saved_rows(study)]
    response = admin_client.post(reverse("admin:studyapp_study_change", args=[study.pk]),
                                 study_post(study=study, arms=rows, hypotheses=[
                                     {"id": hypothesis.pk, "label": "H0", "arm_name": hypothesis.arm.name}]))

    assert (f"H0 names arm '{hypothesis.arm.name}', which is not among this study's arms: control, saliency."
            in form_errors(response))
    assert study.arms.count() == 3 and Hypothesis.objects.filter(pk=hypothesis.pk).exists()


def test_a_hypothesis_comparing_an_arm_with_itself_is_refused_in_words(admin_client):
    arms = [{"name": "control"}, {"name": "ig", "kind": "explanation", "method": "integrated_gradients"}]
    response = admin_client.post(ADD_URL, study_post(arms=arms, hypotheses=[
        {"label": "H1", "comparison": "arm_vs_arm", "arm_name": "ig", "comparator_name": "ig"}]))

    assert "The arm cannot be compared with itself" in form_errors(response)
    assert not Study.objects.exists()


def test_saved_hypotheses_show_their_arms_chosen_among_the_saved_arms(admin_client):
    study = study_with_arms(methods=("integrated_gradients", "saliency"))
    HypothesisFactory(study=study, label="H2", comparison="arm_vs_arm", arm=study.arms.get(name="saliency"),
                      comparator=study.arms.get(name="integrated_gradients"))
    response = admin_client.get(reverse("admin:studyapp_study_change", args=[study.pk]))
    forms = {f.instance.label: f for f in response.context["inline_admin_formsets"][1].formset.forms}

    assert [value for value, _ in forms["H2"].fields["arm_name"].widget.choices] == [
        "", "control", "integrated_gradients", "saliency"]
    assert forms["H2"]["arm_name"].value() == "saliency"
    assert forms["H2"]["comparator_name"].value() == "integrated_gradients"
    page = response.content.decode()
    assert re.search(r'<option value="saliency" selected>saliency</option>', page)


def test_a_study_past_draft_shows_its_hypotheses_arms_read_only(admin_client):
    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(state=Study.State.READY)
    page = admin_client.get(reverse("admin:studyapp_study_change", args=[study.pk])).content.decode()

    assert "data-arm-choice" not in page
    assert re.search(r'field-arm_name">\s*<label[^>]*>Arm:</label>\s*<div class="readonly">integrated_gradients</div>',
                     page)
    assert "the control arm" in page


def test_each_settings_box_shows_the_valid_settings_of_the_method_and_manipulation_of_its_row(admin_client):
    study = study_with_arms()
    Arm.objects.create(study=study, name="ig random", kind="explanation", method="integrated_gradients",
                       manipulation="randomized_model", position=2)
    response = admin_client.get(reverse("admin:studyapp_study_change", args=[study.pk]))
    page = response.content.decode()
    row = page[page.index('id="arms-2"'):page.index('id="arms-empty"')]

    method = row[row.index('data-settings="method"'):row.index('data-settings="manipulation"')]
    assert 'data-choice="integrated_gradients"' in method
    assert "<code>n_steps</code>, default <code>50</code>" in method and "Steps of the path integral" in method
    manipulation = row[row.index('data-settings="manipulation"'):]
    assert 'data-choice="randomized_model"' in manipulation
    assert "<code>mode</code>, default <code>&quot;cascading&quot;</code>" in manipulation
    # Every other choice is on the page for the script to show when a row's select changes.
    for method_name in ("saliency", "lime", "exemplars", "control", "ood_warning"):
        assert f'<template id="arm-settings-method-{method_name}">' in page
    assert '<template id="arm-settings-manipulation-other_input">' in page and "same_class" in page


def test_unknown_settings_are_refused_next_to_their_box_with_the_valid_ones(admin_client):
    arms = [{"name": "control", "method_config": '{"steps": 3}'},
            {"name": "sal", "kind": "explanation", "method": "saliency", "method_config": '{"layers": "all"}'},
            {"name": "sal random", "kind": "explanation", "method": "saliency", "manipulation": "randomized_model",
             "manipulation_config": '{"layers": "all"}'},
            {"name": "neighbours", "kind": "baseline", "method": "exemplars", "method_config": '{"k": 0}'}]
    response = admin_client.post(ADD_URL, study_post(arms=arms, hypotheses=[{"label": "H1", "arm_name": "sal"}]))
    errors = form_errors(response)

    assert not Study.objects.exists()
    assert "A control arm shows nothing, so it has no method settings" in errors
    assert "Method settings: unknown setting 'layers' (valid settings for saliency: signed)." in errors
    assert ("Manipulation settings, layers: unknown setting (valid settings here: mode, down_to, layer)."
            in errors)
    assert "Method settings, k: Input should be greater than or equal to 1." in errors


def test_settings_stored_by_preparation_are_accepted_on_the_next_save(admin_client):
    study = study_with_arms()
    arm = study.arms.get(kind="explanation")
    arm.method_config = {"method": "integrated_gradients", "modality": "tabular", "n_steps": 32}
    arm.save()
    rows = [{**row, "method_config": json.dumps(arm.method_config)} if row["id"] == arm.pk else row
            for row in saved_rows(study)]
    hypothesis = study.hypotheses.get()
    response = admin_client.post(reverse("admin:studyapp_study_change", args=[study.pk]), study_post(
        study=study, arms=rows, hypotheses=[{"id": hypothesis.pk, "label": "H0", "arm_name": arm.name}]))

    assert response.status_code == 302, form_errors(response)


def test_every_method_setting_is_explained_and_the_aid_defaults_are_those_preparation_uses():
    from explainers.methods import METHODS
    from studyapp.services import explanations

    for method in METHODS:
        assert set(method_setting_keys(method)) <= set(METHOD_SETTING_MEANINGS), method
    assert Exemplars().k == explanations.EXEMPLARS_K and OodWarning().quantile == explanations.OOD_QUANTILE
    assert set(BASELINE_SETTINGS) == set(explanations.BASELINE_METHODS)


def test_a_new_preview_deletes_the_same_staff_members_earlier_previews_of_the_study_from_other_browsers(
        client, django_user_model, prepare):
    from django.test import Client

    from studyapp.models import Participant
    from tests.participation_helpers import live_tabular

    study = live_tabular(prepare)
    url = reverse("admin:studyapp_study_preview", args=[study.pk])
    arm = study.arms.get(kind="control")
    alice = django_user_model.objects.create_superuser("alice", "alice@example.org", "pw")
    bob = django_user_model.objects.create_superuser("bob", "bob@example.org", "pw")
    browsers = {}
    for name, user in (("alice laptop", alice), ("alice phone", alice), ("bob", bob)):
        browsers[name] = Client()
        browsers[name].force_login(user)
    browsers["alice laptop"].post(url, {"arm": arm.pk})
    browsers["bob"].post(url, {"arm": arm.pk})
    browsers["alice phone"].post(url, {"arm": arm.pk})  # the laptop's preview was abandoned

    kept = Participant.objects.filter(study=study, preview=True)
    assert sorted(p.assignment["preview_by"] for p in kept) == ["alice", "bob"]
    assert kept.count() == 2
