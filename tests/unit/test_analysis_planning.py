"""Sample-size planning against R's power.t.test / power.prop.test and pwr examples."""

import pytest

from studyapp.analysis import sample_size_two_means, sample_size_two_proportions


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


def test_two_proportions_agrees_with_r_power_prop_test_example():
    # R ?power.prop.test: power.prop.test(p1 = .50, p2 = .75, power = .90) -> n = 76.65294
    # (printed "n = 76.7" in the comment). R uses a different normal approximation than
    # Cohen's h; for this example the two agree to the printed digits.
    plan = sample_size_two_proportions(p_control=0.50, p_treatment=0.75, power=0.90)
    assert plan.n_control_exact == pytest.approx(76.65294, abs=1e-4)


def test_effect_against_the_alternative_is_refused():
    with pytest.raises(ValueError, match="against"):
        sample_size_two_proportions(p_control=0.6, p_treatment=0.5, alternative="greater")
    with pytest.raises(ValueError):
        sample_size_two_means(effect_size=0.0)
