"""The study planner: sample size per arm (family-aware) and calibration by simulation."""
from __future__ import annotations

import html as html_lib
import re

import pytest
from django.urls import reverse

from studyapp.analysis import calibrate, sample_size_two_proportions
from studyapp.reports import planner as planner_module
from studyapp.reports.forms import SimulationForm

URL = "/staff/planner/"
SIZE = {"calc": "size", "design": "proportions", "p_control": "0.50", "p_treatment": "0.75", "alpha": "0.05",
        "power": "0.90", "ratio": "1", "alternative": "two-sided", "n_arms": "2", "n_comparisons": "",
        "correction": "holm"}
SIMULATE = {"calc": "simulate", "sim-control_accuracy": "0.6", "sim-arm_accuracies": "saliency: 0.75\nplacebo: 0.6",
            "sim-n_per_arm": "12", "sim-trials_per_phase": "10", "sim-design": "pre_post",
            "sim-alternative": "greater", "sim-correction": "holm", "sim-alpha": "0.05", "sim-n_studies": "20",
            "sim-participant_sd": "0.5", "sim-item_sd": "0.5", "sim-seed": "3"}


def result_text(response, anchor: str) -> str:
    html = response.content.decode()
    assert f'id="{anchor}"' in html, "no result shown"
    block = html[html.index(">", html.index(f'id="{anchor}"')) + 1:]
    block = block[:block.index("</div>")]
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", block)).split())


def errors(response) -> str:
    html = response.content.decode()
    found = re.findall(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', html, re.S)
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", " ".join(found))).split())


def test_planner_url_is_where_staff_expect_it():
    assert reverse("report-planner") == URL


@pytest.mark.django_db
def test_planner_is_staff_only(client, django_user_model):
    assert client.get(URL, SIZE)["Location"].startswith(reverse("admin:login"))
    client.force_login(django_user_model.objects.create_user(username="someone", password="pw"))
    assert client.get(URL, SIZE)["Location"].startswith(reverse("admin:login"))


@pytest.mark.django_db
def test_the_empty_planner_shows_both_forms_without_errors(staff_client):
    response = staff_client.get(URL)
    assert response.status_code == 200
    assert errors(response) == ""
    assert "Compute sample size" in response.content.decode() and "Simulate" in response.content.decode()


@pytest.mark.django_db
def test_two_proportions_give_the_same_n_per_arm_as_r(staff_client):
    # R: power.prop.test(p1 = .50, p2 = .75, power = .90) gives n = 76.7 per group (R's own documented
    # example; the unrounded value is 76.65294 by the arcsine/Cohen's h method the planner uses, which
    # is pwr::pwr.2p.test(h = ES.h(.75, .50), power = .90)). Rounded up: 77 participants per arm.
    response = staff_client.get(URL, SIZE)
    assert response.status_code == 200
    assert errors(response) == ""
    text = result_text(response, "sample-size-result")
    assert text.startswith("77 participants per arm")
    assert "154 in total over 2 arms" in text
    exact = float(re.search(r"Unrounded: ([0-9.]+)", text).group(1))
    assert exact == pytest.approx(76.65294, abs=1e-5)
    assert "pwr::pwr.2p.test(h = ES.h(0.75, 0.5), sig.level = 0.05, power = 0.9)" in text


@pytest.mark.django_db
def test_accuracy_over_k_trials_needs_about_a_tenth_of_the_one_answer_formula(staff_client):
    from studyapp.analysis import sample_size_participant_accuracy

    params = {**SIZE, "design": "accuracy", "p_control": "0.60", "p_treatment": "0.70",
              "trials_per_participant": "20", "between_sd": "0.10", "power": "0.80"}
    text = result_text(staff_client.get(URL, params), "sample-size-result")
    expected = sample_size_participant_accuracy(p_control=0.6, p_treatment=0.7, trials_per_participant=20,
                                                between_sd=0.1, alpha=0.05, power=0.8)
    assert text.startswith(f"{expected.n_control} participants per arm")
    one_answer = sample_size_two_proportions(p_control=0.6, p_treatment=0.7, alpha=0.05, power=0.8).n_control
    assert one_answer > 5 * expected.n_control
    refused = staff_client.get(URL, {**params, "trials_per_participant": "", "between_sd": "0.7"})
    assert "trials per participant is needed" in errors(refused) and "lies between 0 and 0.5" in errors(refused)


@pytest.mark.django_db
def test_two_means_give_the_same_n_per_arm_as_r(staff_client):
    # R: pwr::pwr.t.test(d = 0.5, sig.level = 0.05, power = 0.80) gives n = 63.76561 -> 64 per group.
    response = staff_client.get(URL, {**SIZE, "design": "means", "p_control": "", "p_treatment": "",
                                      "effect_size": "0.5", "power": "0.8"})
    text = result_text(response, "sample-size-result")
    assert text.startswith("64 participants per arm")
    assert float(re.search(r"Unrounded: ([0-9.]+)", text).group(1)) == pytest.approx(63.76561, abs=1e-4)


@pytest.mark.django_db
def test_a_holm_family_plans_each_comparison_at_alpha_over_the_number_of_comparisons(staff_client):
    response = staff_client.get(URL, {**SIZE, "n_arms": "3"})
    text = result_text(response, "sample-size-result")
    expected = sample_size_two_proportions(p_control=0.5, p_treatment=0.75, alpha=0.025, power=0.9)
    assert text.startswith(f"{expected.n_control} participants per arm")
    assert expected.n_control > 77
    assert f"{3 * expected.n_control} in total over 3 arms" in text
    assert "Alpha per comparison: 0.025 (family alpha 0.05 / 2 comparisons, holm)" in text


@pytest.mark.django_db
def test_no_correction_uses_the_full_alpha_and_unequal_allocation_is_reported(staff_client):
    response = staff_client.get(URL, {**SIZE, "n_arms": "3", "correction": "none", "ratio": "2"})
    text = result_text(response, "sample-size-result")
    expected = sample_size_two_proportions(p_control=0.5, p_treatment=0.75, alpha=0.05, power=0.9, ratio=2)
    assert text.startswith(f"{expected.n_control} in control, {expected.n_treatment} per treatment arm")
    assert f"{expected.n_control + 2 * expected.n_treatment} in total" in text


@pytest.mark.parametrize("params, message", [
    ({"p_control": "1.2"}, "The control arm's proportion must lie strictly between 0 and 1 (you entered 1.2)."),
    ({"p_treatment": "75"}, "Enter a proportion such as 0.60, not a percentage."),
    ({"p_control": "0"}, "must lie strictly between 0 and 1"),
    ({"power": "0.04"}, "Power (0.04) must be larger than alpha (0.05)"),
    ({"power": "0.05"}, "Power (0.05) must be larger than alpha (0.05)"),
    ({"alpha": "1.5"}, "Alpha must lie strictly between 0 and 1"),
    ({"p_treatment": "0.50"}, "The two proportions are equal: there is no difference to detect"),
    ({"alternative": "less"}, "The treatment proportion (0.75) is higher than control (0.5), but the alternative "
                              "is 'treatment worse than control'"),
    ({"ratio": "0"}, "The allocation ratio must be a positive number"),
    ({"n_arms": "1"}, "A comparison needs at least 2 arms"),
    ({"p_control": "abc"}, "Enter a number."),
    ({"p_control": ""}, "The control arm's proportion is needed for a design with two proportions."),
    ({"design": "means", "effect_size": ""}, "An effect size d is needed for a design with two means."),
    ({"design": "means", "effect_size": "0"}, "An effect size of 0 means no difference"),
    ({"design": "means", "effect_size": "-0.4", "alternative": "greater"},
     "The effect size (-0.4) is negative, but the alternative is 'treatment better than control'"),
])
@pytest.mark.django_db
def test_bad_input_is_explained_in_plain_words(staff_client, params, message):
    response = staff_client.get(URL, {**SIZE, **params})
    assert response.status_code == 200
    assert 'id="sample-size-result"' not in response.content.decode()
    assert "Please correct the problems below." in response.content.decode()
    assert message in errors(response)


@pytest.mark.django_db
def test_simulation_shows_family_wise_false_positive_rate_and_power_from_calibrate(staff_client):
    response = staff_client.get(URL, SIMULATE)
    assert errors(response) == ""
    text = result_text(response, "simulation-result")
    direct = calibrate(arm_accuracy={"control": 0.6, "saliency": 0.75, "placebo": 0.6}, n_per_arm=12, n_studies=20,
                       seed=3, alternative="greater", correction="holm", alpha=0.05, trials_per_phase=10,
                       phases=("pre_test", "post_test"), participant_sd=0.5, item_sd=0.5)
    assert "20 simulated studies per scenario, 12 participants per arm (36 in total), outcome: gain, Holm" in text
    assert f"when no arm differs from control {direct.fwer_null:.3f} 95% CI [{direct.fwer_null_ci[0]:.3f}," in text
    assert f"Power: at least one arm detected {direct.power_any:.3f}" in text
    assert f"Power for saliency (true accuracy 0.75) {direct.power_per_arm['saliency']:.3f}" in text
    assert f"Power for placebo (true accuracy 0.60) {direct.power_per_arm['placebo']:.3f}" in text


@pytest.mark.django_db
def test_a_simulation_too_slow_for_a_web_request_is_refused_before_it_runs(staff_client, monkeypatch):
    def must_not_run(**kwargs):
        raise AssertionError("calibrate ran")

    monkeypatch.setattr(planner_module, "calibrate", must_not_run)
    response = staff_client.get(URL, {**SIMULATE, "sim-n_per_arm": "2000", "sim-trials_per_phase": "100",
                                      "sim-n_studies": "400"})
    assert response.status_code == 200
    assert 'id="simulation-result"' not in response.content.decode()
    message = errors(response)
    assert "This simulation would take about" in message
    assert "or run studyapp.analysis.calibrate in a notebook or script" in message


def test_the_default_simulation_fits_the_time_budget():
    form = SimulationForm({k.removeprefix("sim-"): v for k, v in SIMULATE.items() if k != "calc"})
    assert form.is_valid(), form.errors
    defaults = SimulationForm()
    initial = {name: field.initial for name, field in defaults.fields.items()}
    cleaned = {**initial, "arm_accuracies": {"explanation": 0.7}}
    assert SimulationForm.estimated_seconds(cleaned) < 4.0


@pytest.mark.parametrize("arms, message", [
    ("saliency: 1.3", "The accuracy of 'saliency' must lie strictly between 0 and 1"),
    ("saliency 0.7 0.8", "Could not read 'saliency 0.7 0.8'"),
    ("control: 0.7", "'control' is the control arm"),
    ("a: 0.7, a: 0.8", "The arm name 'a' appears twice."),
    ("", "This field is required."),
])
@pytest.mark.django_db
def test_bad_simulation_input_is_explained_in_plain_words(staff_client, arms, message):
    response = staff_client.get(URL, {**SIMULATE, "sim-arm_accuracies": arms})
    assert 'id="simulation-result"' not in response.content.decode()
    assert message in errors(response)


@pytest.mark.django_db
def test_simulation_limits_are_explained(staff_client):
    response = staff_client.get(URL, {**SIMULATE, "sim-n_studies": "5", "sim-control_accuracy": "60"})
    message = errors(response)
    assert "The number of simulated studies must be between 10 and 400 (you entered 5)." in message
    assert "The control arm's accuracy must lie strictly between 0 and 1 (you entered 60)." in message


PRE_POST_DESIGN = {"design": "within_pre_post",
                   "blocks": [{"phase": "pre_test", "n_items": 12},
                              {"phase": "learning", "n_items": 4, "show_model_output": True, "show_aid": True},
                              {"phase": "post_test", "n_items": 12}]}


def initial_values(form) -> dict:
    return {name: form[name].value() for name in form.fields}


@pytest.mark.django_db
def test_with_a_study_both_calculators_start_from_its_arms_design_and_hypotheses(admin_client):
    from tests.factories import HypothesisFactory, study_with_arms

    study = study_with_arms(methods=("integrated_gradients", "saliency"), hypothesis=False)
    study.config = PRE_POST_DESIGN
    study.save(update_fields=["config"])
    for label, arm in (("H1", "integrated_gradients"), ("H2", "saliency")):
        HypothesisFactory(study=study, label=label, arm=study.arms.get(name=arm), outcome="gain", correction="hochberg",
                          alpha=0.01, planned_n_per_arm=44, direction="greater")
    HypothesisFactory(study=study, label="H3", arm=study.arms.get(name="saliency"), family="secondary", alpha=0.2)
    response = admin_client.get(reverse("report-planner"), {"study": study.pk})

    size = initial_values(response.context["size_form"])
    assert (size["n_arms"], size["n_comparisons"], size["alpha"]) == (3, 2, 0.01)
    assert (size["correction"], size["alternative"]) == ("holm", "greater")
    sim = initial_values(response.context["sim_form"])
    assert sim["arm_accuracies"] == "integrated_gradients: 0.70, saliency: 0.70"
    assert (sim["n_per_arm"], sim["trials_per_phase"], sim["design"]) == (44, 12, "pre_post")
    assert (sim["correction"], sim["alpha"], sim["alternative"]) == ("hochberg", 0.01, "greater")
    page = html_lib.unescape(response.content.decode())
    assert "3 arms: control, integrated_gradients, saliency." in page
    assert "12 trials in the pre-test and the same in the post-test (the design)." in page
    assert "Hypotheses of the family 'primary': H1, H2 (2 comparisons), Hochberg, alpha 0.01" in page
    assert "44 participants per arm planned" in page and "plans Hochberg as alpha / 2" in page
    # Each form carries the study along, so a computed result keeps the study's other defaults.
    assert page.count(f'<input type="hidden" name="study" value="{study.pk}">') == 2


@pytest.mark.django_db
def test_a_single_hypothesis_on_one_test_phase_is_planned_without_correction_on_its_test_trials(admin_client):
    from tests.factories import study_with_arms

    study = study_with_arms()  # SMALL_DESIGN: 3 test items; H0: the explanation arm beats control
    response = admin_client.get(reverse("report-planner"), {"study": study.pk})

    size = initial_values(response.context["size_form"])
    assert (size["n_arms"], size["n_comparisons"], size["correction"]) == (2, 1, "none")
    sim = initial_values(response.context["sim_form"])
    assert (sim["trials_per_phase"], sim["design"], sim["n_per_arm"]) == (3, "test", 30)


@pytest.mark.django_db
def test_the_simulation_prefilled_from_a_study_runs_as_it_is(admin_client):
    from tests.factories import HypothesisFactory, study_with_arms

    study = study_with_arms(methods=("integrated_gradients", "saliency"), hypothesis=False)
    study.config = PRE_POST_DESIGN
    study.save(update_fields=["config"])
    HypothesisFactory(study=study, arm=study.arms.get(name="saliency"), outcome="gain", planned_n_per_arm=200)
    page = admin_client.get(reverse("report-planner"), {"study": study.pk})
    params = {f"sim-{name}": value for name, value in initial_values(page.context["sim_form"]).items()}
    response = admin_client.get(reverse("report-planner"), {**params, "calc": "simulate", "study": study.pk})

    assert errors(response) == ""
    assert "200 participants per arm (600 in total)" in result_text(response, "simulation-result")
    # The study's defaults stay on the page after a computation.
    assert response.context["size_form"]["n_arms"].value() == 3


@pytest.mark.django_db
def test_the_study_page_links_the_planner_for_its_design(admin_client):
    from tests.factories import study_with_arms

    study = study_with_arms()
    page = admin_client.get(reverse("admin:studyapp_study_change", args=[study.pk])).content.decode()
    assert f'href="{reverse("report-planner")}?study={study.pk}"' in page


def test_the_planner_explains_why_its_two_calculators_can_disagree(admin_client):
    page = admin_client.get(reverse("report-planner")).content.decode()
    assert 'id="two-calculators"' in page and "treats each participant as" in page and "accuracy over k trials" in page


def without_timing(text: str) -> str:
    return re.sub(r"Took [0-9.]+ s with \d+ worker process(es)?\.", "", text)


@pytest.mark.django_db
def test_the_simulation_says_each_interval_in_words(staff_client):
    text = result_text(staff_client.get(URL, SIMULATE), "simulation-result")
    direct = calibrate(arm_accuracy={"control": 0.6, "saliency": 0.75, "placebo": 0.6}, n_per_arm=12, n_studies=20,
                       seed=3, trials_per_phase=10)
    hits = round(direct.fwer_null * 20)
    low, high = direct.fwer_null_ci
    assert (f"When no arm differs from control, {hits} of 20 simulated studies ({100 * direct.fwer_null:.1f}%) gave "
            f"at least one significant comparison after Holm; with 95% confidence the true rate lies between "
            f"{100 * low:.1f}% and {100 * high:.1f}%: the interval contains alpha = 0.05") in text
    saliency_low, saliency_high = direct.power_per_arm_ci["saliency"]
    assert (f"saliency (true accuracy 0.75) was detected in {round(direct.power_per_arm['saliency'] * 20)} of 20 "
            f"simulated studies ({100 * direct.power_per_arm['saliency']:.1f}%); with 95% confidence the true rate "
            f"lies between {100 * saliency_low:.1f}% and {100 * saliency_high:.1f}%.") in text
    assert "placebo (true accuracy 0.60, the same as control, so this is a false-positive rate, not power)" in text
    assert "With the accuracies you entered, at least one arm was detected in" in text


@pytest.mark.django_db
def test_a_null_only_simulation_checks_the_false_positive_rate_without_power(staff_client):
    text = result_text(staff_client.get(URL, {**SIMULATE, "sim-null_only": "on"}), "simulation-result")
    null = calibrate(arm_accuracy={"control": 0.6, "saliency": 0.75, "placebo": 0.6}, n_per_arm=12, n_studies=20,
                     seed=3, trials_per_phase=10, null_only=True)
    assert "(only the scenario in which no arm differs from control)" in text
    assert f"when no arm differs from control {null.fwer_null:.3f} 95% CI [{null.fwer_null_ci[0]:.3f}," in text
    assert "Power was not simulated: this was the false-positive check only." in text
    assert "Power for" not in text and "at least one arm detected" not in text


@pytest.mark.django_db
def test_the_confidence_level_sets_every_interval(staff_client):
    text = result_text(staff_client.get(URL, {**SIMULATE, "sim-confidence_level": "0.8"}), "simulation-result")
    direct = calibrate(arm_accuracy={"control": 0.6, "saliency": 0.75, "placebo": 0.6}, n_per_arm=12, n_studies=20,
                       seed=3, trials_per_phase=10, confidence_level=0.8)
    low, high = direct.power_per_arm_ci["saliency"]
    assert f"Power for saliency (true accuracy 0.75) {direct.power_per_arm['saliency']:.3f} 80% CI [{low:.3f}, " \
           f"{high:.3f}]" in text
    assert f"80% CI [{direct.fwer_null_ci[0]:.3f}, {direct.fwer_null_ci[1]:.3f}]" in text
    assert "with 80% confidence the true rate lies between" in text and "95%" not in text


@pytest.mark.django_db
def test_worker_processes_give_the_same_numbers_as_one(staff_client, monkeypatch):
    from studyapp.reports import forms as forms_module

    monkeypatch.setattr(forms_module, "max_workers", lambda: 2)  # the same on a one-core machine
    used = []
    real = planner_module.calibrate

    def recording(**kwargs):
        used.append(kwargs["workers"])
        return real(**kwargs)

    monkeypatch.setattr(planner_module, "calibrate", recording)
    one = result_text(staff_client.get(URL, SIMULATE), "simulation-result")
    two = result_text(staff_client.get(URL, {**SIMULATE, "sim-workers": "2"}), "simulation-result")
    assert used == [1, 2]
    assert "with 2 worker processes." in two and "with 1 worker process." in one
    assert without_timing(two) == without_timing(one)


@pytest.mark.parametrize("params, message", [
    ({"sim-workers": "0"}, "Worker processes must be between 1 and {cores}, the number of CPU cores of this server "
                           "(you entered 0)."),
    ({"sim-workers": "{too_many}"}, "Worker processes must be between 1 and {cores}"),
    ({"sim-workers": "two"}, "Enter a whole number."),
    ({"sim-confidence_level": "95"}, "The confidence level must be between 0.5 and 0.999 (you entered 95). Enter a "
                                     "proportion such as 0.95, not a percentage."),
    ({"sim-confidence_level": "0.2"}, "The confidence level must be between 0.5 and 0.999"),
])
@pytest.mark.django_db
def test_bad_calibration_options_are_explained_in_plain_words(staff_client, params, message):
    import os

    cores = os.cpu_count() or 1
    params = {k: v.format(too_many=cores + 1) for k, v in params.items()}
    response = staff_client.get(URL, {**SIMULATE, **params})
    assert 'id="simulation-result"' not in response.content.decode()
    assert message.format(cores=cores) in errors(response)


def test_null_only_halves_the_estimated_time_and_workers_add_their_start():
    from studyapp.reports.forms import WORKER_START_SECONDS

    cleaned = {"arm_accuracies": {"a": 0.7, "b": 0.6}, "n_per_arm": 30, "trials_per_phase": 20, "design": "pre_post",
               "n_studies": 100}
    both = SimulationForm.estimated_seconds(cleaned)
    assert SimulationForm.estimated_seconds({**cleaned, "null_only": True}) == pytest.approx(both / 2)
    assert SimulationForm.estimated_seconds({**cleaned, "workers": 4}) == pytest.approx(WORKER_START_SECONDS + both / 4)
    assert SimulationForm.estimated_seconds({**cleaned, "workers": 1}) == pytest.approx(both)


@pytest.mark.django_db
def test_a_simulation_that_only_worker_start_up_makes_too_slow_is_told_to_use_one_worker(staff_client, monkeypatch):
    from studyapp.reports import forms as forms_module

    monkeypatch.setattr(forms_module, "max_workers", lambda: 2)
    # About 3.8 s in one process; 2.5 s to start two, then 1.9 s each: over the 4 s budget.
    response = staff_client.get(URL, {**SIMULATE, "sim-workers": "2", "sim-n_studies": "75"})
    assert 'id="simulation-result"' not in response.content.decode()
    assert "use 1 worker process (starting 2 takes about 2.5 s; one process does this in about 3.8 s)" in errors(response)
    alone = staff_client.get(URL, {**SIMULATE, "sim-workers": "1", "sim-n_studies": "75"})
    assert errors(alone) == "" and 'id="simulation-result"' in alone.content.decode()
    # When one process would not fit either, fewer studies are the advice.
    slow = staff_client.get(URL, {**SIMULATE, "sim-workers": "2", "sim-n_studies": "200"})
    assert "lower the number of simulated studies to at most" in errors(slow)
