"""Sample-size planning against R's power.t.test / power.prop.test and pwr examples."""

import math

import pytest
from scipy import stats
from scipy.special import expit, logit

from studyapp.analysis import (
    calibrate,
    participant_accuracy,
    participant_accuracy_spread,
    power_one_group,
    power_participant_accuracy,
    power_two_means,
    power_two_proportions,
    sample_size_one_group,
    sample_size_participant_accuracy,
    sample_size_two_means,
    sample_size_two_proportions,
    simulate_study,
)


def test_two_means_matches_r_power_t_test():
    # R ?power.t.test: power.t.test(power = .90, delta = 1) -> n = 22.02110 per group
    # (sd = 1, sig.level = 0.05, two-sided).
    plan = sample_size_two_means(effect_size=1.0, alpha=0.05, power=0.90)
    assert plan.n_control_exact == pytest.approx(22.02110, abs=1e-4)
    assert (plan.n_control, plan.n_treatment) == (23, 23)
    assert plan.n_total == 46


def test_two_means_one_sided_matches_pwr():
    # statsmodels test_power.py, R: pwr.t.test(d=1, n=30, sig.level=0.05, type="two.sample",
    # alternative="greater") -> power = 0.985459690251624; solving for n gives back 30.
    plan = sample_size_two_means(effect_size=1.0, power=0.985459690251624, alternative="greater")
    assert plan.n_control_exact == pytest.approx(30, rel=1e-3)


def test_two_means_unequal_allocation_matches_pwr_t2n():
    # statsmodels test_power.py, R: pwr.t2n.test(d=0.1, n1=20, n2=30, sig.level=0.05,
    # alternative="greater") -> power = 0.09623589080917805.
    plan = sample_size_two_means(
        effect_size=0.1, power=0.09623589080917805, ratio=1.5, alternative="greater"
    )
    assert plan.n_control_exact == pytest.approx(20, rel=1e-3)
    assert plan.n_treatment_exact == pytest.approx(30, rel=1e-3)


def test_two_proportions_matches_pwr_2p_test():
    # pwr vignette: pwr.2p.test(h = ES.h(p1 = 0.55, p2 = 0.50), sig.level = 0.05,
    # power = .80) -> h = 0.1001674, n = 1564.529 per group.
    plan = sample_size_two_proportions(p_control=0.50, p_treatment=0.55, alpha=0.05, power=0.80)
    assert plan.effect_size == pytest.approx(0.1001674, abs=5e-8)
    assert plan.n_control_exact == pytest.approx(1564.529, abs=5e-4)
    assert plan.n_control == 1565


def test_arcsine_formula_is_named_and_is_not_r_power_prop_test():
    # pwr::pwr.2p.test(h = ES.h(.75, .50), power = .90), h = 2 asin(sqrt(.75)) - pi / 2:
    # pwr counts both rejection regions, pnorm(h sqrt(n/2) - qnorm(.975)) +
    # pnorm(-h sqrt(n/2) - qnorm(.975)) = .90, root 76.65294 (scipy brentq outside this
    # code; the one-region closed form 2 ((qnorm(.975) + qnorm(.90)) / h)^2 is 76.65297).
    # R's power.prop.test, a different formula, gives 76.707 for the same design (next
    # test): 76.65294 is NOT its answer.
    plan = sample_size_two_proportions(p_control=0.50, p_treatment=0.75, power=0.90)
    assert plan.n_control_exact == pytest.approx(76.65294, abs=1e-4)
    assert plan.params["formula"] == "arcsine"
    assert "pwr.2p.test" in plan.params["r_equivalent"]


def test_power_prop_test_formula_matches_r_examples():
    # R ?power.prop.test examples:
    #   power.prop.test(p1 = .50, p2 = .75, power = .90)  ## => n = 76.7
    #     (documented to 3 digits; the power equation in R's stats:::power.prop.test source,
    #     pnorm((sqrt(n) |p1 - p2| - qnorm(.975) sqrt((p1 + p2)(1 - (p1 + p2) / 2)))
    #     / sqrt(p1 q1 + p2 q2)) = .90, solved with scipy's brentq outside this code, has its
    #     root at 76.70693; R's uniroot stops within about 1e-4 of it)
    #   power.prop.test(p1 = .5, p2 = 0.501, sig.level = .001, power = 0.90) ## => n = 10451937
    #   power.prop.test(p1 = 0.90, p2 = 1.0, power = 0.8)  ##-> n = 73.37
    plan = sample_size_two_proportions(p_control=0.50, p_treatment=0.75, power=0.90,
                                       formula="power.prop.test")
    assert plan.n_control_exact == pytest.approx(76.7069, abs=1e-3)
    assert (plan.n_control, plan.n_treatment) == (77, 77)
    assert plan.params["r_equivalent"].startswith("stats::power.prop.test")
    tiny = sample_size_two_proportions(p_control=0.5, p_treatment=0.501, alpha=0.001, power=0.9,
                                       formula="power.prop.test")
    assert round(tiny.n_control_exact) == 10451937
    ceiling = sample_size_two_proportions(p_control=1.0, p_treatment=0.9, power=0.8,
                                          formula="power.prop.test")
    assert ceiling.n_control_exact == pytest.approx(73.37, abs=5e-3)
    arcsine = sample_size_two_proportions(p_control=1.0, p_treatment=0.9, power=0.8)
    assert arcsine.n_control_exact < 40  # the two formulas disagree badly near 0 and 1


def test_power_at_a_given_n_matches_r():
    # R ?power.prop.test: power.prop.test(n = 50, p1 = .50, p2 = .75) ## => power = 0.740
    by_r_formula = power_two_proportions(p_control=0.5, p_treatment=0.75, n_control=50,
                                         formula="power.prop.test")
    assert by_r_formula.power == pytest.approx(0.740, abs=5e-4)
    assert by_r_formula.n == {"control": 50, "treatment": 50}
    arcsine = power_two_proportions(p_control=0.5, p_treatment=0.75, n_control=50)
    assert arcsine.power == pytest.approx(0.7447, abs=5e-4)  # not R's 0.740: another formula
    # statsmodels test_power.py: R pwr.2p.test(h = 0.01, n = 80, sig.level = 0.05,
    # alternative = "greater") -> power = 0.056869534873146124 is the arcsine power; back to
    # proportions, the pwr vignette's design (h = 0.1001674 at n = 1564.529) has power 0.80.
    vignette = power_two_proportions(p_control=0.50, p_treatment=0.55, n_control=1564.529)
    assert vignette.power == pytest.approx(0.80, abs=1e-6)
    # R ?power.t.test: power.t.test(n = 20, delta = 1) -> power = 0.8689528 (R counts one
    # rejection region; the other adds 2e-7).
    assert power_two_means(effect_size=1.0, n_control=20).power == pytest.approx(
        0.8689528, abs=1e-6)


def test_unequal_allocation_power_matches_pwr_t2n():
    # statsmodels test_power.py, R: pwr.t2n.test(d=0.1, n1=20, n2=30, sig.level=0.05,
    # alternative="greater") -> power = 0.09623589080917805.
    res = power_two_means(effect_size=0.1, n_control=20, ratio=1.5, alternative="greater")
    assert res.power == pytest.approx(0.09623589080917805, rel=1e-8)
    assert res.n == {"control": 20, "treatment": 30}


def test_paired_and_one_sample_power_match_pwr():
    # statsmodels test_power.py, R: pwr.t.test(d=0.2, n=20, sig.level=0.05,
    # type="one.sample", alternative="two.sided") -> power = 0.1359562887679666;
    # pwr.t.test(d=1, n=30, type="one.sample", alternative="greater") -> 0.999892010204909.
    # type = "paired" is the same computation on d_z (pwr's pwr.t.test source).
    for design in ("paired", "one_sample"):
        res = power_one_group(effect_size=0.2, n=20, design=design)
        assert res.power == pytest.approx(0.1359562887679666, rel=1e-8)
    greater = power_one_group(effect_size=1.0, n=30, design="one_sample", alternative="greater")
    assert greater.power == pytest.approx(0.999892010204909, rel=1e-10)
    assert res.params["effect_size_name"] == "cohens_d"
    plan = sample_size_one_group(effect_size=0.2, design="paired", power=0.1359562887679666)
    assert plan.n_exact == pytest.approx(20, rel=1e-6)
    assert plan.n == 20 and plan.params["effect_size_name"] == "d_z"


def test_unknown_formula_and_design_are_refused():
    with pytest.raises(ValueError, match="unknown two-proportion formula"):
        sample_size_two_proportions(p_control=0.5, p_treatment=0.6, formula="exact")
    with pytest.raises(ValueError, match="unknown design"):
        power_one_group(effect_size=0.5, n=10, design="crossover")
    with pytest.raises(ValueError, match="between 0 and 1"):
        power_two_proportions(p_control=50, p_treatment=60, n_control=10)


def test_effect_against_the_alternative_is_refused():
    with pytest.raises(ValueError, match="against"):
        sample_size_two_proportions(p_control=0.6, p_treatment=0.5, alternative="greater")
    with pytest.raises(ValueError):
        sample_size_two_means(effect_size=0.0)
    with pytest.raises(ValueError, match="against"):
        sample_size_two_proportions(p_control=0.6, p_treatment=0.5, alternative="greater",
                                    formula="power.prop.test")
    with pytest.raises(ValueError, match="against"):
        sample_size_one_group(effect_size=-0.3, design="paired", alternative="greater")


# Participant-level accuracy with k trials each (issue 13: the planner's two calculators disagreed
# by a factor of ten about the same effect). The simulation's default population: participant and
# item SD 0.5 on the log-odds scale, 20 trials, typical accuracies 0.6 and 0.7.
SPREAD = {"participant_sd": 0.5, "item_sd": 0.5}


def _accuracy_design(k=20, **extra):
    (p_c, sd_c), (p_t, sd_t) = (participant_accuracy_spread(typical_accuracy=a, **SPREAD) for a in (0.6, 0.7))
    return dict(p_control=p_c, p_treatment=p_t, trials_per_participant=k, between_sd=sd_c,
                between_sd_treatment=sd_t, **extra)


def test_accuracy_spread_matches_an_independent_integration():
    # scipy's norm.expect (adaptive quad), an implementation independent of the Gauss-Hermite rule.
    mean, sd = participant_accuracy_spread(typical_accuracy=0.7, participant_sd=0.8)
    ref_mean = stats.norm.expect(lambda u: expit(logit(0.7) + u), scale=0.8)
    ref_var = stats.norm.expect(lambda u: (expit(logit(0.7) + u) - ref_mean) ** 2, scale=0.8)
    assert mean == pytest.approx(ref_mean, abs=1e-9) and sd == pytest.approx(math.sqrt(ref_var), abs=1e-9)
    assert participant_accuracy_spread(typical_accuracy=0.7, participant_sd=0.0) == pytest.approx((0.7, 0.0))


def test_accuracy_variance_matches_simulated_participants():
    # Each participant draws 20 of 400 items, as the formula assumes (items independent per participant).
    design = _accuracy_design()
    plan = sample_size_participant_accuracy(**design)
    trials = simulate_study(arm_accuracy={"control": 0.6, "ig": 0.7}, n_per_arm=3000, trials_per_phase=20,
                            n_items=400, phases=("test",), seed=21, **SPREAD)
    observed = participant_accuracy(trials).groupby("arm", observed=True)["accuracy"].agg(["mean", "std"])
    for arm, key, p in (("control", "control", "p_control"), ("ig", "treatment", "p_treatment")):
        sd = plan.params["participant_sd"][key]
        assert observed.loc[arm, "std"] == pytest.approx(sd, abs=4 * sd / math.sqrt(2 * 3000))
        # The study's 400 item difficulties are one draw: its mean moves accuracy by ~0.006 (SD).
        assert observed.loc[arm, "mean"] == pytest.approx(design[p], abs=0.02)


def test_accuracy_power_agrees_with_the_simulation_within_monte_carlo_error():
    design = _accuracy_design(alternative="greater")
    n = sample_size_participant_accuracy(**design).n_control
    assert n == 33
    predicted = power_participant_accuracy(n_control=n, **design).power
    simulated = calibrate(arm_accuracy={"control": 0.6, "ig": 0.7}, n_per_arm=n, n_studies=300, seed=13,
                          phases=("test",), trials_per_phase=20, n_items=400, confidence_level=0.99, **SPREAD)
    low, high = simulated.power_per_arm_ci["ig"]
    assert low <= predicted <= high, (predicted, simulated.power_per_arm["ig"], (low, high))


def test_the_two_proportion_formula_answers_for_one_answer_per_participant():
    # Why the calculators disagreed: "two proportions" is one yes/no answer per participant.
    accuracy = sample_size_participant_accuracy(**_accuracy_design())
    one_answer = sample_size_two_proportions(p_control=0.6, p_treatment=0.7)
    assert accuracy.n_control == 42 and one_answer.n_control == 356
    assert 8 < one_answer.n_control_exact / accuracy.n_control_exact < 12
    # With one trial each the spread between participants cannot show (k = 1): the same design as
    # the t-test on one 0/1 answer, within 0.5% of the two-proportion formula.
    single = sample_size_participant_accuracy(p_control=0.6, p_treatment=0.7, trials_per_participant=1,
                                              between_sd=0.2)
    d = 0.1 / math.sqrt((0.24 + 0.21) / 2)
    assert single.n_control_exact == pytest.approx(sample_size_two_means(effect_size=d).n_control_exact, rel=1e-9)
    assert single.n_control_exact == pytest.approx(one_answer.n_control_exact, rel=5e-3)


def test_accuracy_plan_states_its_design_effect_and_power_at_n_inverts_it():
    plan = sample_size_participant_accuracy(p_control=0.6, p_treatment=0.7, trials_per_participant=30,
                                            between_sd=0.1, ratio=2, power=0.9)
    rho = 0.01 / 0.24
    assert plan.params["design_effect"]["control"] == pytest.approx(1 + 29 * rho)
    assert plan.params["participant_sd"]["control"] == pytest.approx(math.sqrt(0.01 * (1 - 1 / 30) + 0.24 / 30))
    at_n = power_participant_accuracy(p_control=0.6, p_treatment=0.7, trials_per_participant=30, between_sd=0.1,
                                      ratio=2, n_control=plan.n_control_exact)
    assert at_n.power == pytest.approx(0.9, abs=1e-6)
    assert plan.n_treatment_exact == pytest.approx(2 * plan.n_control_exact)


def test_impossible_accuracy_designs_are_refused_in_plain_words():
    with pytest.raises(ValueError, match=r"between_sd must lie between 0 and sqrt\(p \(1 - p\)\)"):
        sample_size_participant_accuracy(p_control=0.9, p_treatment=0.95, trials_per_participant=10,
                                         between_sd=0.4)
    with pytest.raises(ValueError, match="whole number of at least 1"):
        sample_size_participant_accuracy(p_control=0.6, p_treatment=0.7, trials_per_participant=0,
                                         between_sd=0.1)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        power_participant_accuracy(p_control=60, p_treatment=70, trials_per_participant=10, between_sd=0.1,
                                   n_control=20)
