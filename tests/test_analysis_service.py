"""study_analyze: the frozen plan on the database gives the numbers of studyapp.analysis called directly."""
from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
import pytest

from studyapp import analysis as stats
from studyapp.analysis.run_results import RunResults
from studyapp.models import AnalysisRun, Edit, Explanation, Participant, QuestionnaireAnswer, Response, Trial
from studyapp.selectors import edit_settings_key, study_edits
from studyapp.services.analysis import study_analyze
from studyapp.services.errors import ServiceError
from studyapp.services.preregistration import hypothesis_update_after_launch
from tests.analysis_factories import (
    T0,
    add_participant,
    as_analysis_frame,
    launch,
    model_prediction,
    study_with_items,
    tamper_with_frozen_plan,
    write_simulated_trials,
)
from tests.factories import HypothesisFactory, npy_bytes

pytestmark = pytest.mark.django_db

ARMS = ("control", "explained", "placebo")
# The model's outputs on items 0-5 are 1, 1, 0, 1, 0, 0 (see model_prediction): these answers are
# right on 6/6, 2/6 and 4/6 of them.
ANSWERS = ([1, 1, 0, 1, 0, 0], [0, 1, 1, 0, 1, 0], [1, 1, 0, 1, 1, 1])


def hypothesis(study, label, arm, **fields):
    return HypothesisFactory(study=study, arm=study.arms.get(name=arm), label=label, **fields)


def simulated(study, *, accuracy, phases=("test",), n_per_arm=10, trials_per_phase=20, seed=1):
    trials = stats.simulate_study(arm_accuracy=accuracy, n_per_arm=n_per_arm, trials_per_phase=trials_per_phase,
                                  phases=phases, pre_phase="pre_test" if "pre_test" in phases else None, seed=seed)
    public_ids = write_simulated_trials(study, trials)
    return as_analysis_frame(trials, public_ids)


def by_label(run: AnalysisRun) -> dict:
    return {h["label"]: h for h in run.results["hypotheses"]}


def test_an_unlaunched_study_cannot_have_a_confirmatory_analysis():
    study = study_with_items(arms=ARMS)
    hypothesis(study, "H1", "explained")
    with pytest.raises(ServiceError, match="never launched"):
        study_analyze(study=study)
    assert not AnalysisRun.objects.exists()


def test_confirmatory_results_match_the_statistics_package_called_directly():
    study = study_with_items(arms=ARMS)
    hypothesis(study, "H1", "explained")
    hypothesis(study, "H2", "placebo")
    study = launch(study)
    frame = simulated(study, accuracy={"control": 0.6, "explained": 0.8, "placebo": 0.6})

    run = study_analyze(study=study, seed=7)

    direct = stats.primary_analysis(frame, control="control", outcome="test",
                                    alternative="greater", correction="holm", test="welch")
    results = by_label(run)
    for label, arm in (("H1", "explained"), ("H2", "placebo")):
        assert results[label]["p_value"] == pytest.approx(direct.results[arm].p_value, rel=1e-9)
        assert results[label]["tests"]["difference"]["statistic"] == pytest.approx(direct.results[arm].statistic)
        assert results[label]["effect_sizes"]["mean_difference"]["estimate"] == pytest.approx(
            direct.results[arm].effect.estimate)
        assert results[label]["descriptives"][arm]["n"] == 10
    adjusted = dict(zip(direct.adjusted.labels, direct.adjusted.adjusted))
    assert results["H1"]["p_adjusted"] == pytest.approx(adjusted["explained"])
    assert results["H2"]["p_adjusted"] == pytest.approx(adjusted["placebo"])
    assert results["H1"]["decision"]["verdict"] == ("supported" if adjusted["explained"] <= 0.05 else "inconclusive")
    assert run.results["families"]["primary"]["adjusted_p_value"]["method"] == "holm"

    stored = AnalysisRun.objects.get()
    assert stored.pk == run.pk and stored.kind == "confirmatory" and stored.seed == 7
    assert stored.plan_sha256 == study.frozen_sha256 == stored.results["plan_sha256"]
    assert stored.results["kind"] == "confirmatory" and stored.results["plan_verified"] is True
    assert set(stored.software) >= {"python", "numpy", "scipy", "statsmodels", "gpboost", "pandas", "django"}
    assert stored.results["software"] == stored.software and stored.results["seed"] == 7


def test_secondary_analyses_and_chance_tests_are_reported_next_to_the_confirmatory_tests():
    study = study_with_items(arms=ARMS[:2])
    hypothesis(study, "H1", "explained")
    study = launch(study)
    frame = simulated(study, accuracy={"control": 0.6, "explained": 0.8})

    run = study_analyze(study=study, seed=3)

    secondary = run.results["secondary"]["H1"]
    direct_gee = stats.gee_logistic(frame, control="control", phase="test", arms=["explained"],
                                    alternative="greater")["explained"]
    assert secondary["gee"]["status"] == "ok"
    assert secondary["gee"]["p_value"] == pytest.approx(direct_gee.p_value, rel=1e-6)
    assert secondary["mixed_logistic"]["status"] == "ok" and secondary["mixed_logistic"]["effect"]["estimate"] > 0
    direct_boot = stats.two_stage_bootstrap(frame, treatment="explained", control="control", phase="test", seed=3)
    assert secondary["bootstrap"]["ci_low"] == pytest.approx(direct_boot.ci_low)
    assert secondary["bootstrap"]["ci_high"] == pytest.approx(direct_boot.ci_high)
    accuracy = stats.participant_accuracy(frame, phases=["test"])
    direct_chance = stats.chance_level_test(accuracy.loc[accuracy["arm"] == "explained", "accuracy"], num_classes=2)
    assert run.results["chance"]["test"]["explained"]["p_value"] == pytest.approx(direct_chance.p_value)
    assert run.results["descriptives"]["test"]["control"]["n"] == 10


def test_gain_and_equivalence_hypotheses_use_post_minus_pre_and_tost_with_the_margin():
    study = study_with_items(arms=ARMS[:2])
    hypothesis(study, "H1", "explained", outcome="gain")
    hypothesis(study, "H2", "explained", outcome="gain", direction="equivalence", equivalence_margin=0.2,
               family="equivalence")
    study = launch(study)
    frame = simulated(study, accuracy={"control": 0.7, "explained": 0.72}, phases=("pre_test", "post_test"))

    results = by_label(study_analyze(study=study))

    wide = stats.participant_outcomes(frame)
    x = wide.loc[wide["arm"] == "explained", "gain"]
    y = wide.loc[wide["arm"] == "control", "gain"]
    assert results["H1"]["p_value"] == pytest.approx(stats.welch_t_test(x, y, alternative="greater").p_value)
    tost = stats.tost_equivalence(x, y, margin=0.2, alpha=0.05)
    assert results["H2"]["p_value"] == pytest.approx(tost.p_value)
    assert results["H2"]["p_difference"] == pytest.approx(stats.welch_t_test(x, y).p_value)
    # Each hypothesis is alone in its family: adjusted = raw, and the verdict follows decide().
    assert results["H2"]["p_adjusted"] == pytest.approx(tost.p_value)
    expected = stats.decide(stats.HypothesisSpec("H2", "equivalence", margin=0.2), p_adjusted=tost.p_value,
                            p_difference_adjusted=results["H2"]["p_difference"])
    assert results["H2"]["decision"]["verdict"] == expected.verdict
    assert results["H1"]["p_equivalence"] is None


def test_hypotheses_are_corrected_within_their_family_only():
    study = study_with_items(arms=ARMS)
    hypothesis(study, "H1", "explained", family="main", correction="holm")
    hypothesis(study, "H2", "placebo", family="main", correction="holm")
    hypothesis(study, "H3", "placebo", comparator=study.arms.get(name="explained"), comparison="arm_vs_arm",
               direction="less", family="arms", correction="bonferroni")
    study = launch(study)
    simulated(study, accuracy={"control": 0.6, "explained": 0.75, "placebo": 0.6})

    results = by_label(study_analyze(study=study))

    main = stats.adjust_pvalues([results["H1"]["p_value"], results["H2"]["p_value"]], method="holm")
    assert [results["H1"]["p_adjusted"], results["H2"]["p_adjusted"]] == pytest.approx(list(main.adjusted))
    assert results["H3"]["p_adjusted"] == pytest.approx(results["H3"]["p_value"])
    assert results["H3"]["comparator"] == "explained"


def test_likert_hypotheses_use_mann_whitney_on_the_questionnaire_item():
    study = study_with_items(arms=ARMS[:2])
    hypothesis(study, "H1", "explained", outcome="likert", likert_item="useful", direction="two_sided")
    study = launch(study)
    ratings = {"control": [3, 4, 4, 2, 5, 3], "explained": [5, 6, 4, 7, 6, 5]}
    for arm, values in ratings.items():
        for i, value in enumerate(values):
            p = add_participant(study, arm, answers=ANSWERS[i % 3])
            QuestionnaireAnswer.objects.create(participant=p, item="useful", value=value,
                                               idempotency_key=f"00000000-0000-0000-0000-{i:06d}{len(arm):06d}")

    h1 = by_label(study_analyze(study=study))["H1"]

    direct = stats.likert_mann_whitney(ratings["explained"], ratings["control"], alternative="two-sided")
    assert h1["p_value"] == pytest.approx(direct.p_value)
    assert h1["effect_sizes"]["rank_biserial"]["estimate"] == pytest.approx(direct.effect.estimate)
    assert h1["tests"]["difference"]["method"].startswith("Mann-Whitney")


def test_arm_versus_chance_is_a_one_sample_test_against_one_over_the_number_of_classes():
    study = study_with_items(arms=ARMS[:2])
    hypothesis(study, "H1", "explained", comparison="arm_vs_chance")
    study = launch(study)
    frame = simulated(study, accuracy={"control": 0.5, "explained": 0.7})

    h1 = by_label(study_analyze(study=study))["H1"]

    accuracy = stats.participant_accuracy(frame, phases=["test"])
    direct = stats.chance_level_test(accuracy.loc[accuracy["arm"] == "explained", "accuracy"], chance=0.5)
    assert h1["p_value"] == pytest.approx(direct.p_value) and h1["comparator"] is None
    assert h1["descriptives"]["chance"] == 0.5


def test_excluded_and_unfinished_participants_are_not_analysed_and_the_flow_counts_them_per_arm():
    study = study_with_items(arms=ARMS[:2], config={"exclusion_rules": {"max_failed_attention_checks": 0,
                                                                        "total_seconds_window": [60, None]}})
    hypothesis(study, "H1", "explained")
    study = launch(study)
    for arm in ("control", "explained"):
        for answers in ANSWERS:
            add_participant(study, arm, answers=answers, checks=[(1, 1)])
    add_participant(study, "control", answers=ANSWERS[0], checks=[(0, 1)])  # failed a check
    add_participant(study, "explained", answers=ANSWERS[0], checks=[(0, 1)], seconds=10)  # both rules
    add_participant(study, "explained", answers=[0], status="abandoned")
    Participant.objects.create(study=study, arm=study.arms.get(name="explained"))  # never consented

    run = study_analyze(study=study, seed=5)

    flow = run.results["participant_flow"]
    assert flow["arms"]["control"] == {
        "enrolled": 4, "consented": 4, "completed": 4, "not_completed": 0, "by_status": {"completed": 4},
        "excluded": 1, "excluded_by_rule": {"max_failed_attention_checks": 1, "total_seconds_window": 0},
        "analysed": 3}
    assert flow["arms"]["explained"] == {
        "enrolled": 6, "consented": 5, "completed": 4, "not_completed": 2,
        "by_status": {"abandoned": 1, "completed": 4, "started": 1},
        "excluded": 1, "excluded_by_rule": {"max_failed_attention_checks": 1, "total_seconds_window": 1},
        "analysed": 3}
    assert flow["totals"]["analysed"] == 6 == run.results["analysed_participants"]
    direct = stats.attrition_test(np.array([[4, 0], [4, 2]]), seed=5)
    assert flow["attrition_test"]["p_value"] == pytest.approx(direct.p_value)
    assert flow["attrition_test"]["extra"]["table"]["explained"] == {"completed": 4, "not_completed": 2}
    assert flow["exclusion_test"]["status"] == "ok"
    assert sorted(map(sorted, run.results["exclusions"].values())) == [
        ["max_failed_attention_checks"], ["max_failed_attention_checks", "total_seconds_window"]]
    descriptives = by_label(run)["H1"]["descriptives"]
    # 95% t interval: mean +/- t(0.975, df=2) * sd / sqrt(3), with t(0.975, 2) = 4.302653 from t tables.
    half_width = 4.302653 * (1 / 3) / 3 ** 0.5
    assert descriptives["explained"] == descriptives["control"] == {
        "n": 3, "mean": pytest.approx(2 / 3), "sd": pytest.approx(1 / 3), "confidence_level": 0.95,
        "ci_low": pytest.approx(2 / 3 - half_width, abs=1e-6), "ci_high": pytest.approx(2 / 3 + half_width, abs=1e-6)}


def test_trivial_observers_are_reported_next_to_human_accuracy():
    study = study_with_items(arms=("control", "explained", "no_maps"), n_items=20, flip_every=5)
    study = launch(study)
    rng = np.random.default_rng(0)
    for stimulus in study.dataset.stimuli.all():
        output = model_prediction(stimulus.index)
        Explanation.objects.create(arm=study.arms.get(name="explained"), stimulus=stimulus,
                                   attributions=npy_bytes([2.0 * output - 1.0 + rng.normal(0, 0.1), rng.normal(),
                                                           rng.normal()]),
                                   config={}, config_sha256="0" * 64, seed=0, target=output)
    simulated(study, accuracy={"control": 0.6, "explained": 0.7, "no_maps": 0.6}, n_per_arm=3)

    baselines = study_analyze(study=study).results["baselines"]["test"]

    assert baselines["n_items"] == 20
    assert baselines["true_label_observer"]["accuracy"] == pytest.approx(16 / 20)
    assert baselines["majority_class_observer"]["accuracy"] == pytest.approx(10 / 20)
    observer = baselines["explanation_only_observer"]
    assert observer["explained"]["status"] == "ok" and observer["explained"]["accuracy"] == pytest.approx(1.0)
    assert observer["control"] == {"status": "not_available", "reason": "the control arm shows no explanation"}
    assert observer["no_maps"]["reason"] == "no explanations are stored for this arm's items"
    assert set(baselines["human_accuracy"]) == {"control", "explained", "no_maps"}


def test_a_request_outside_the_frozen_plan_is_stored_and_labelled_exploratory():
    study = study_with_items(arms=ARMS[:2])
    hypothesis(study, "H1", "explained")
    study = launch(study)
    simulated(study, accuracy={"control": 0.6, "explained": 0.7}, n_per_arm=4)

    run = study_analyze(study=study, exploratory_spec={
        "hypotheses": [{"label": "E1", "arm": "explained", "direction": "two_sided"}], "note": "two-sided look"})

    assert run.kind == "exploratory" == run.results["kind"]
    assert run.results["label"].startswith("EXPLORATORY")
    assert [h["kind"] for h in run.results["hypotheses"]] == ["exploratory"]
    assert "E1 is not a hypothesis of the frozen plan (as requested)" in run.results["exploratory_reasons"]
    assert AnalysisRun.objects.get().kind == "exploratory"


def test_a_request_that_reproduces_the_frozen_plan_is_confirmatory():
    study = study_with_items(arms=ARMS[:2])
    hypothesis(study, "H1", "explained")
    study = launch(study)
    simulated(study, accuracy={"control": 0.6, "explained": 0.7}, n_per_arm=4)

    run = study_analyze(study=study, exploratory_spec={"hypotheses": [{"label": "again", "arm": "explained"}]})

    assert run.kind == "confirmatory" and run.results["exploratory_reasons"] == []


def test_other_exclusion_rules_or_the_amended_plan_make_an_analysis_exploratory():
    study = study_with_items(arms=ARMS[:2], config={"exclusion_rules": {"max_comprehension_attempts": 3}})
    h1 = hypothesis(study, "H1", "explained")
    study = launch(study)
    simulated(study, accuracy={"control": 0.6, "explained": 0.7}, n_per_arm=4)
    hypothesis_update_after_launch(hypothesis=h1, field="direction", value="two_sided", reason="reviewer asked")

    stricter = study_analyze(study=study, exploratory_spec={"exclusion_rules": {}})
    amended = study_analyze(study=study, exploratory_spec={"use_amended_plan": True})
    frozen = study_analyze(study=study)

    assert stricter.kind == "exploratory"
    assert stricter.results["exploratory_reasons"] == ["the exclusion rules differ from the frozen ones"]
    assert amended.kind == "exploratory" and by_label(amended)["H1"]["direction"] == "two_sided"
    assert frozen.kind == "confirmatory" and by_label(frozen)["H1"]["direction"] == "greater"
    assert [d["field"] for d in frozen.results["deviations"]] == ["direction"]


def test_before_launch_only_an_exploratory_analysis_runs():
    study = study_with_items(arms=ARMS[:2])
    hypothesis(study, "H1", "explained")
    simulated(study, accuracy={"control": 0.6, "explained": 0.7}, n_per_arm=4)

    run = study_analyze(study=study, exploratory_spec={"note": "pilot"})

    assert run.kind == "exploratory" and run.plan_sha256 == "" and run.results["plan_verified"] is False
    assert [h["label"] for h in run.results["hypotheses"]] == ["H1"]


def test_a_tampered_frozen_plan_gets_no_confirmatory_analysis():
    study = study_with_items(arms=ARMS[:2])
    hypothesis(study, "H1", "explained")
    study = launch(study)
    tamper_with_frozen_plan(study, dict(study.frozen_config, hypotheses=[]))

    with pytest.raises(ServiceError, match="no longer matches the SHA-256"):
        study_analyze(study=study)
    assert not AnalysisRun.objects.exists()


def test_a_hypothesis_that_cannot_be_tested_is_inconclusive_and_does_not_count_in_its_family():
    study = study_with_items(arms=ARMS)
    hypothesis(study, "H1", "explained")
    hypothesis(study, "H2", "placebo", outcome="counterfactual_accuracy")  # no counterfactual trials
    study = launch(study)
    simulated(study, accuracy={"control": 0.6, "explained": 0.7, "placebo": 0.6}, n_per_arm=4)

    results = by_label(study_analyze(study=study))

    assert results["H2"]["error"] and results["H2"]["decision"]["verdict"] == "inconclusive"
    assert results["H2"]["p_adjusted"] is None
    assert results["H1"]["p_adjusted"] == pytest.approx(results["H1"]["p_value"])


def test_a_permutation_hypothesis_is_reproducible_from_the_stored_seed():
    study = study_with_items(arms=ARMS[:2])
    hypothesis(study, "H1", "explained", test="permutation")
    study = launch(study)
    frame = simulated(study, accuracy={"control": 0.6, "explained": 0.75}, n_per_arm=6)

    h1 = by_label(study_analyze(study=study, seed=11))["H1"]

    accuracy = stats.participant_accuracy(frame, phases=["test"])
    direct = stats.permutation_test(accuracy.loc[accuracy["arm"] == "explained", "accuracy"],
                                    accuracy.loc[accuracy["arm"] == "control", "accuracy"],
                                    alternative="greater", n_resamples=9999, seed=11)
    assert h1["p_value"] == pytest.approx(direct.p_value)
    assert h1["tests"]["difference"]["params"]["seed"] == 11


def test_exclusion_rules_of_a_hypothesis_apply_to_that_hypothesis_only():
    study = study_with_items(arms=ARMS[:2])
    hypothesis(study, "H1", "explained")
    hypothesis(study, "H2", "explained", exclusion_rules={"max_comprehension_attempts": 1}, family="strict")
    study = launch(study)
    for arm in ("control", "explained"):
        for i, answers in enumerate(ANSWERS * 2):
            add_participant(study, arm, answers=answers, comprehension_attempts=1 + i % 2)

    run = study_analyze(study=study)

    results = by_label(run)
    assert results["H1"]["descriptives"]["explained"]["n"] == 6
    assert results["H2"]["descriptives"]["explained"]["n"] == 3
    assert run.results["participant_flow"]["totals"]["analysed"] == 12


def test_a_malformed_exploratory_request_is_refused_before_anything_is_stored():
    study = launch(study_with_items(arms=ARMS[:2]))
    with pytest.raises(ServiceError, match="E1: arm must name an arm of the plan"):
        study_analyze(study=study, exploratory_spec={"hypotheses": [{"arm": "ghost"}]})
    with pytest.raises(ServiceError, match="Unknown analysis request key 'hypothesis'"):
        study_analyze(study=study, exploratory_spec={"hypothesis": []})
    with pytest.raises(ServiceError, match="seed must be a whole number"):
        study_analyze(study=study, seed=-1)
    assert not AnalysisRun.objects.exists()


def _counterfactual_participant(study, arm, stimuli, edits, n_options):
    """A completed participant who chose, on each stimulus, the edit at position 0 (correct)."""
    participant = Participant.objects.create(study=study, arm=study.arms.get(name=arm), status="completed",
                                             consented_at=T0, started_at=T0, completed_at=T0 + dt.timedelta(minutes=10))
    trials = Trial.objects.bulk_create([
        Trial(participant=participant, position=i, phase="test", task="counterfactual_choose", stimulus=s,
              edit=edits[s.pk], expected_answer=0, n_options=n_options) for i, s in enumerate(stimuli)])
    Response.objects.bulk_create([
        Response(trial=t, idempotency_key=uuid.uuid4(), payload_sha256="0" * 64, answer=0, correct=True,
                 client_rt_ms=1500)
        for t in trials])


def test_counterfactual_chance_is_one_over_the_options_each_trial_offered():
    study = study_with_items(arms=ARMS[:2], n_items=4)
    stimuli = list(study.dataset.stimuli.order_by("index"))
    # Three candidate edits per stimulus under this study's settings, five under other settings.
    for key, count in ((edit_settings_key(study=study), 3), ("f" * 64, 5)):
        Edit.objects.bulk_create([Edit(stimulus=s, settings_sha256=key, position=j, kind="feature_quantile",
                                       data=npy_bytes([0.0, 0.0, 0.0])) for s in stimuli for j in range(count)])
    first = {e.stimulus_id: e for e in study_edits(study=study, stimuli=stimuli).filter(position=0)}
    study = launch(study)
    _counterfactual_participant(study, "control", stimuli, first, n_options=4)  # recorded: 1/4
    _counterfactual_participant(study, "explained", stimuli, first, n_options=None)  # 1/3 edits

    run = study_analyze(study=study)

    assert run.results["settings"]["counterfactual_chance"] == pytest.approx((1 / 4 + 1 / 3) / 2)


def test_a_stored_run_reads_as_typed_results_that_write_back_exactly_what_was_stored():
    study = study_with_items(arms=ARMS[:2])
    hypothesis(study, "H1", "explained", outcome="gain")
    hypothesis(study, "H2", "explained", outcome="gain", direction="equivalence", equivalence_margin=0.2,
               family="equivalence")
    hypothesis(study, "H3", "explained", comparison="arm_vs_chance", outcome="gain")  # within participants
    study = launch(study)
    simulated(study, accuracy={"control": 0.7, "explained": 0.72}, phases=("pre_test", "post_test"), n_per_arm=6)

    run = study_analyze(study=study, seed=3)
    stored = AnalysisRun.objects.get(pk=run.pk).results  # as the database gives it back
    results = RunResults.from_dict(stored)

    assert results.to_dict() == stored == run.results
    assert not results.rest and not results.absent and not any(h.rest for h in results.hypotheses)
    h1, h2, h3 = results.hypotheses
    assert (h1.p_value, h1.verdict.verdict) == (stored["hypotheses"][0]["p_value"],
                                                stored["hypotheses"][0]["decision"]["verdict"])
    assert h2.test_result("equivalence").p_value == h2.p_value and h2.p_difference is not None
    assert h3.contrast.kind == "within_participants" and h3.paired.n_pairs == 6
    assert results.descriptives["post_test"]["explained"].n == 6 and results.settings.num_classes == 2
    assert results.participant_flow.totals.analysed == 12 and results.software == run.software
