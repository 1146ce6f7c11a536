"""Experimenters work in the Django admin: pages load, lists don't do N+1 queries, uploads validate."""
from __future__ import annotations

import io
import os
import pickle

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from PIL import Image

from studyapp.models import MLModel, Participant, Response, Stimulus, Study
from tests.factories import (DatasetFactory, HypothesisFactory, ParticipantFactory, StimulusFactory, TrialFactory,
                             study_with_arms, tabular_weights)

pytestmark = pytest.mark.django_db


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def populate(n: int) -> None:
    for _ in range(n):
        study = study_with_arms()
        HypothesisFactory(study=study, arm=study.arms.get(kind="explanation"))
        trial = TrialFactory(participant=ParticipantFactory(arm=study.arms.get(kind="control")))
        Response.objects.create(trial=trial, idempotency_key=__import__("uuid").uuid4(), payload_sha256="a" * 64,
                                answer=0, client_rt_ms=500)
        stimulus = Stimulus.objects.filter(dataset=study.dataset).first()
        stimulus.image.save("x.png", io.BytesIO(png_bytes()))


CHANGELISTS = ["study", "dataset", "stimulus", "mlmodel", "participant", "response", "analysisrun"]


@pytest.mark.parametrize("model_name", CHANGELISTS)
def test_change_lists_load_with_a_constant_number_of_queries(admin_client, model_name):
    url = reverse(f"admin:studyapp_{model_name}_changelist")
    populate(2)
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(url).status_code == 200
    populate(6)
    with CaptureQueriesContext(connection) as many:
        assert admin_client.get(url).status_code == 200
    assert len(many) == len(few), f"{model_name}: {len(few)} queries for 2 studies, {len(many)} for 8"


def test_study_change_page_shows_arms_hypotheses_and_the_participant_link(admin_client):
    study = study_with_arms()
    HypothesisFactory(study=study, arm=study.arms.get(kind="explanation"), statement="IG beats control")
    page = admin_client.get(reverse("admin:studyapp_study_change", args=[study.pk])).content.decode()
    assert "integrated_gradients" in page and "IG beats control" in page
    assert reverse("study-landing", args=[study.public_id]) in page


def test_participant_page_lists_trials_read_only(admin_client):
    trial = TrialFactory()
    response = admin_client.get(reverse("admin:studyapp_participant_change", args=[trial.participant.pk]))
    assert response.status_code == 200
    assert admin_client.get(reverse("admin:studyapp_participant_add")).status_code == 403


def test_stimulus_thumbnails_are_served_to_staff_only(admin_client, client):
    stimulus = StimulusFactory()
    stimulus.image.save("digit.png", io.BytesIO(png_bytes()))
    url = reverse("admin:studyapp_stimulus_image", args=[stimulus.pk])
    assert admin_client.get(url)["Content-Type"] == "image/png"
    assert client.get(url).status_code == 302  # to the login page


def test_prepare_and_launch_actions_move_a_study_to_live(admin_client, django_capture_on_commit_callbacks):
    study = study_with_arms()
    url = reverse("admin:studyapp_study_changelist")
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(url, {"action": "prepare", "_selected_action": [study.pk]})
    review = admin_client.post(url, {"action": "launch", "_selected_action": [study.pk]})
    assert review.status_code == 302 and review["Location"] == reverse("admin:studyapp_study_launch_review",
                                                                        args=[study.pk])
    admin_client.post(review["Location"], {"confirm": "on"})
    study.refresh_from_db()
    assert study.state == Study.State.LIVE and len(study.frozen_sha256) == 64


def test_an_action_that_is_not_allowed_says_why(admin_client):
    study = study_with_arms()
    response = admin_client.post(reverse("admin:studyapp_study_changelist"),
                                 {"action": "launch", "_selected_action": [study.pk]}, follow=True)
    assert "only a ready study can be launched" in response.content.decode()


def test_a_live_study_cannot_be_edited_in_the_admin(admin_client, django_capture_on_commit_callbacks):
    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(state="ready")
    from studyapp.services.studies import study_launch

    study_launch(study=study)
    page = admin_client.get(reverse("admin:studyapp_study_change", args=[study.pk])).content.decode()
    assert 'name="title"' not in page and 'name="arms-0-name"' not in page


def upload(admin_client, dataset, weights: bytes, **extra):
    data = {"name": "uploaded", "architecture": "tabular_mlp", "dataset": dataset.pk,
            "weights_file": io.BytesIO(weights), "hyperparameters": "{}", **extra}
    data["weights_file"].name = extra.pop("filename", "model.safetensors")
    return admin_client.post(reverse("admin:studyapp_mlmodel_add"), data)


def test_uploading_valid_safetensors_registers_the_model(admin_client):
    dataset = DatasetFactory()
    response = upload(admin_client, dataset, tabular_weights(seed=3))
    assert response.status_code == 302
    model = MLModel.objects.get(name="uploaded")
    assert model.weights.read() == tabular_weights(seed=3)
    assert "uploaded" not in os.path.basename(model.weights.name)


class CreatesAFile:
    """Unpickling this object would create ``path``: the classic malicious-pickle payload."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_malicious_pickle_is_refused_and_never_executed(admin_client, tmp_path):
    marker = tmp_path / "pwned.txt"
    payload = pickle.dumps({"features.fc1.weight": CreatesAFile(str(marker))})
    # (tests/unit/test_safe_loading.py shows that unpickling this payload really creates the file.)
    response = upload(admin_client, DatasetFactory(), payload, filename="model.pt")
    page = response.content.decode()
    assert response.status_code == 200
    assert "pickle" in page and "never load" in page
    assert not marker.exists()
    assert not MLModel.objects.exists()


def test_weights_that_do_not_fit_the_dataset_are_explained(admin_client):
    dataset = DatasetFactory(class_names=["a", "b", "c"])
    page = upload(admin_client, dataset, tabular_weights()).content.decode()
    # The class names default to the dataset's, so the mismatch is the 2-output last layer.
    assert "has 2 outputs (classes), but 3 class names were given (a, b, c)" in page
    assert not MLModel.objects.exists()


def test_class_names_in_another_order_are_refused(admin_client):
    dataset = DatasetFactory()
    page = upload(admin_client, dataset, tabular_weights(), class_names="positive, negative").content.decode()
    assert "different order" in page
    assert not MLModel.objects.exists()


def test_a_tabular_dataset_can_be_imported_from_the_admin(admin_client):
    csv = "a,b,label\n1,2,yes\n3,4,no\n5,6,yes\n7,8,no\n"
    data = {"name": "csv data", "kind": "tabular", "label_column": "label", "data_file": io.BytesIO(csv.encode())}
    data["data_file"].name = "data.csv"
    response = admin_client.post(reverse("admin:studyapp_dataset_add"), data)
    assert response.status_code == 302
    assert Stimulus.objects.filter(dataset__name="csv data").count() == 4


def test_a_broken_csv_import_shows_the_problem_and_writes_nothing(admin_client):
    csv = "a,b,label\n1,2,yes\nx,4,no\n"
    data = {"name": "bad", "kind": "tabular", "label_column": "label", "data_file": io.BytesIO(csv.encode())}
    data["data_file"].name = "data.csv"
    page = admin_client.post(reverse("admin:studyapp_dataset_add"), data).content.decode()
    assert "not a number" in page or "non-numeric" in page or "numeric" in page
    assert not Participant.objects.exists() and not Stimulus.objects.exists()


def test_the_admin_home_links_the_planner_and_the_uploads(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    for name in ("report-planner", "admin:studyapp_dataset_add", "admin:studyapp_mlmodel_add"):
        assert f'href="{reverse(name)}"' in page


def test_the_study_list_offers_the_export_actions_and_they_download(admin_client):
    study = study_with_arms()
    url = reverse("admin:studyapp_study_changelist")
    page = admin_client.get(url).content.decode()
    assert 'value="export_responses_csv"' in page and 'value="export_manifest_json"' in page
    response = admin_client.post(url, {"action": "export_responses_csv", "_selected_action": [study.pk]})
    assert response.status_code == 200 and study.slug in response["Content-Disposition"]


def test_a_deviation_recorded_in_the_admin_is_dated_and_leaves_the_frozen_plan_alone(admin_client):
    from studyapp.models import PreregistrationDeviation
    from studyapp.services.studies import study_launch

    study = study_with_arms()
    HypothesisFactory(study=study, arm=study.arms.get(kind="explanation"), label="H1", planned_n_per_arm=30)
    Study.objects.filter(pk=study.pk).update(state="ready")
    study = study_launch(study=study)
    frozen, digest = study.frozen_config, study.frozen_sha256
    change = admin_client.get(reverse("admin:studyapp_study_change", args=[study.pk])).content.decode()
    url = reverse("admin:studyapp_study_deviation", args=[study.pk])
    assert url in change

    missing_reason = admin_client.post(url, {"target": "H1", "field": "planned_n_per_arm", "value": "45", "reason": ""})
    assert "This field is required" in missing_reason.content.decode()
    response = admin_client.post(url, {"target": "H1", "field": "planned_n_per_arm", "value": "45",
                                       "reason": "Recruitment was slower than planned."})
    assert response.status_code == 302
    deviation = PreregistrationDeviation.objects.get(study=study)
    assert (deviation.hypothesis_label, deviation.field, deviation.before, deviation.after) == (
        "H1", "planned_n_per_arm", 30, 45)
    assert deviation.recorded_at is not None and deviation.recorded_by == "admin"
    study.refresh_from_db()
    assert study.frozen_config == frozen and study.frozen_sha256 == digest


def test_a_deviation_before_launch_is_refused_with_a_reason(admin_client):
    study = study_with_arms()
    page = admin_client.post(reverse("admin:studyapp_study_deviation", args=[study.pk]),
                             {"target": "", "field": "target_per_arm", "value": "50", "reason": "why not"})
    assert page.status_code == 200
    from studyapp.models import PreregistrationDeviation
    assert not PreregistrationDeviation.objects.exists()
    assert "launch" in page.content.decode().lower()


def test_prepare_in_the_admin_lists_every_problem_of_the_plan_at_once_in_words(admin_client):
    study = study_with_arms(hypothesis=False)
    Study.objects.filter(pk=study.pk).update(consent_text="", completion_code="")
    response = admin_client.post(reverse("admin:studyapp_study_changelist"),
                                 {"action": "prepare", "_selected_action": [study.pk]}, follow=True)
    page = response.content.decode()
    assert "not prepared; 3 things to fix:" in page
    for words in ("Write the consent text", "Set the completion code", "Add at least one hypothesis"):
        assert words in page
    assert "hypothesis_" not in page  # no constraint names


def test_saving_a_draft_says_what_still_stands_between_it_and_prepare(admin_client):
    study = study_with_arms(hypothesis=False)
    url = reverse("admin:studyapp_study_change", args=[study.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {k: ("" if v is None else v) for k, v in form.initial.items() if k in form.fields}
    data.update(model=study.model_id, dataset=study.dataset_id, config='{"blocks": [{"phase": "test", "n_items": 2}]}',
                **{f"{prefix}-{k}": v for prefix in ("arms", "hypotheses", "deviations", "items")
                   for k, v in (("TOTAL_FORMS", 0), ("INITIAL_FORMS", 0))})
    arms = list(study.arms.order_by("position"))
    data.update({"arms-TOTAL_FORMS": len(arms), "arms-INITIAL_FORMS": len(arms)})
    for i, arm in enumerate(arms):
        data.update({f"arms-{i}-id": arm.pk, f"arms-{i}-study": study.pk, f"arms-{i}-name": arm.name,
                     f"arms-{i}-kind": arm.kind, f"arms-{i}-method": arm.method, f"arms-{i}-method_config": "{}",
                     f"arms-{i}-manipulation": arm.manipulation, f"arms-{i}-manipulation_config": "{}",
                     f"arms-{i}-allocation_weight": 1, f"arms-{i}-position": arm.position})
    response = admin_client.post(url, data, follow=True)
    page = response.content.decode()
    assert "Before this study can be prepared, fix 1 thing:" in page, page[:3000]
    assert "Add at least one hypothesis" in page


def test_a_prepared_study_reverts_to_draft_and_a_launched_one_is_duplicated_from_the_admin(
        admin_client, django_capture_on_commit_callbacks):
    study = study_with_arms()
    url = reverse("admin:studyapp_study_changelist")
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(url, {"action": "prepare", "_selected_action": [study.pk]})
    admin_client.post(url, {"action": "revert_to_draft", "_selected_action": [study.pk]})
    study.refresh_from_db()
    assert study.state == Study.State.DRAFT
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(url, {"action": "prepare", "_selected_action": [study.pk]})
    admin_client.post(reverse("admin:studyapp_study_launch_review", args=[study.pk]), {"confirm": "on"})
    page = admin_client.post(url, {"action": "duplicate", "_selected_action": [study.pk]}, follow=True).content.decode()
    copy = Study.objects.exclude(pk=study.pk).get()
    assert copy.state == Study.State.DRAFT and copy.arms.count() == study.arms.count() == 2
    assert "duplicated as a new draft" in page and reverse("admin:studyapp_study_change", args=[copy.pk]) in page


def test_the_admin_names_the_product_and_a_new_arm_comes_after_the_existing_ones(admin_client):
    study = study_with_arms(methods=("integrated_gradients", "saliency"))
    page = admin_client.get(reverse("admin:studyapp_study_change", args=[study.pk]))
    assert "Explanation studies" in page.content.decode()
    formset = next(f for f in page.context["inline_admin_formsets"] if f.formset.prefix == "arms").formset
    assert formset.empty_form["position"].initial == 3  # control 0, two arms at 1 and 2


def _ready(study, django_capture_on_commit_callbacks, admin_client):
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("admin:studyapp_study_changelist"), {"action": "prepare", "_selected_action": [study.pk]})
    study.refresh_from_db()
    assert study.state == Study.State.READY
    return study


def test_the_launch_review_shows_the_plan_and_launches_only_when_confirmed(admin_client,
                                                                         django_capture_on_commit_callbacks):
    study = _ready(study_with_arms(), django_capture_on_commit_callbacks, admin_client)
    url = reverse("admin:studyapp_study_launch_review", args=[study.pk])
    page = admin_client.get(url).content.decode()
    assert "Launch review" in page and "integrated_gradients" in page and "H0" in page
    assert "The arm beats control." in page and "n_steps" in page  # arms with their full settings
    refused = admin_client.post(url, {}).content.decode()
    assert "This field is required" in refused
    study.refresh_from_db()
    assert study.state == Study.State.READY
    response = admin_client.post(url, {"confirm": "on"}, follow=True)
    study.refresh_from_db()
    assert study.state == Study.State.LIVE
    page = response.content.decode()
    assert "The frozen plan of" in page and study.frozen_sha256 in page


def test_an_arm_that_failed_its_sanity_check_launches_only_with_an_acknowledgement_recorded_in_the_plan(
        admin_client, admin_user, django_capture_on_commit_callbacks):
    study = _ready(study_with_arms(), django_capture_on_commit_callbacks, admin_client)
    prep = dict(study.preparation)
    prep["sanity"] = {**prep.get("sanity", {}), "integrated_gradients": {"verdict": "not_model_sensitive"}}
    Study.objects.filter(pk=study.pk).update(preparation=prep)
    url = reverse("admin:studyapp_study_launch_review", args=[study.pk])
    assert "do not depend on the model" in admin_client.get(url).content.decode()
    assert "Acknowledge the failed sanity check" in admin_client.post(url, {"confirm": "on"}).content.decode()
    study.refresh_from_db()
    assert study.state == Study.State.READY
    admin_client.post(url, {"confirm": "on", "acknowledge_sanity_failures": "on"})
    study.refresh_from_db()
    assert study.state == Study.State.LIVE
    assert study.frozen_config["launch_acknowledgements"] == {"sanity_failures": ["integrated_gradients"],
                                                              "spotted_placebos": [], "by": admin_user.username}
    assert "acknowledged sanity-check failure" in admin_client.get(url).content.decode()


def test_a_placebo_its_realism_check_spotted_launches_only_with_an_acknowledgement_and_the_check_is_frozen(
        admin_client, admin_user, django_capture_on_commit_callbacks):
    study = _ready(study_with_arms(), django_capture_on_commit_callbacks, admin_client)
    report = {"verdict": "spotted", "auc": 0.99, "auc_with_input": 1.0, "real_arm": "integrated_gradients",
              "sentence": "Participants could tell this placebo from the real maps by texture alone.",
              "classifier": "L2 logistic regression on low-level picture features, 5-fold CV grouped by item"}
    Study.objects.filter(pk=study.pk).update(preparation={**study.preparation, "realism": {"ig random": report}})
    url = reverse("admin:studyapp_study_launch_review", args=[study.pk])
    page = admin_client.get(url).content.decode()
    assert "Placebo realism" in page and "by texture alone" in page and "0.990" in page
    refused = admin_client.post(url, {"confirm": "on"}).content.decode()
    assert "Acknowledge that the placebos ig random can be spotted" in refused
    study.refresh_from_db()
    assert study.state == Study.State.READY
    admin_client.post(url, {"confirm": "on", "acknowledge_spotted_placebos": "on"})
    study.refresh_from_db()
    assert study.state == Study.State.LIVE
    assert study.frozen_config["launch_acknowledgements"]["spotted_placebos"] == ["ig random"]
    assert study.frozen_config["placebo_realism"]["ig random"]["classifier"].startswith("L2 logistic")
    assert "placebos the realism check could spot" in admin_client.get(url).content.decode()


def test_the_arm_gallery_shows_every_arm_for_the_same_items_with_edits_and_serves_images_to_staff(
        admin_client, client, prepare):
    from tests.participation_helpers import WITHIN_DESIGN, image_study, live

    study = image_study(arms=[{"name": "saliency", "kind": "explanation", "method": "saliency"},
                              {"name": "saliency_inverted", "kind": "explanation", "method": "saliency",
                               "manipulation": "inverted"}])
    study = live(study, prepare, WITHIN_DESIGN)
    page = admin_client.get(reverse("admin:studyapp_study_gallery", args=[study.pk])).content.decode()
    assert "<th>saliency</th>" in page and "<th>saliency_inverted</th>" in page
    assert "Counterfactual edits:" in page and "(changes the answer)" in page
    # The verdict itself depends on this tiny noise-image model; the page must say it per metric in words.
    assert "Sanity checks" in page and "Each metric, in words" in page and "Spearman" in page
    prefix = reverse("admin:studyapp_study_gallery", args=[study.pk])
    first = next(m.split('"')[0] for m in page.split('src="')[1:] if m.startswith(prefix))
    assert admin_client.get(first).status_code == 200
    assert client.get(first).status_code == 302  # not public: the login page
    other = reverse("admin:studyapp_study_gallery_image", args=[study.pk, "explanation", 10 ** 9])
    assert admin_client.get(other).status_code == 404


def test_a_model_at_chance_or_registered_twice_is_flagged_and_a_dataset_shows_items_per_class_and_split(
        admin_client):
    from studyapp.models import MLModel
    from tests.factories import MLModelFactory, StimulusFactory

    model = MLModelFactory(metrics={"test_accuracy": 0.5})
    for label in (0, 0, 1, 1):
        StimulusFactory(dataset=model.dataset, split="test", label=label)
    StimulusFactory(dataset=model.dataset, split="train", label=1)
    twin = MLModelFactory(dataset=model.dataset, name="again", weights_sha256=model.weights_sha256)
    page = admin_client.get(reverse("admin:studyapp_mlmodel_change", args=[model.pk])).content.decode()
    assert "is at chance level" in page and "scores 0.500" in page and "Same weights as &#x27;again&#x27;" in page
    assert MLModel.objects.filter(pk=twin.pk).exists()
    page = admin_client.get(reverse("admin:studyapp_dataset_change", args=[model.dataset.pk])).content.decode()
    names = model.dataset.class_names
    assert f"{names[0]}: 0 training, 2 test" in page and f"{names[1]}: 1 training, 2 test" in page
