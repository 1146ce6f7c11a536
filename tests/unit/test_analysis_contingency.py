"""Count-based tests (attrition, completion) against R's documented examples."""

import numpy as np
import pandas as pd
import pytest

from studyapp.analysis import (
    attrition_test,
    chi_square_test,
    completion_table,
    fisher_exact_test,
)

# R ?fisher.test, Agresti (2002) Job satisfaction (income x satisfaction, 4x4):
# fisher.test(Job) -> p-value = 0.7827.
JOB = np.array([[1, 2, 1, 0], [3, 3, 6, 1], [10, 10, 14, 9], [6, 7, 12, 11]]).T


def test_fisher_tea_tasting_matches_r():
    # R ?fisher.test, TeaTasting <- matrix(c(3, 1, 1, 3), nrow = 2):
    # two-sided p-value = 0.4857; alternative = "greater" p-value = 0.2429.
    assert fisher_exact_test([[3, 1], [1, 3]]).p_value == pytest.approx(0.4857, abs=5e-5)
    greater = fisher_exact_test([[3, 1], [1, 3]], alternative="greater")
    assert greater.p_value == pytest.approx(0.2429, abs=5e-5)


def test_fisher_reports_r_conditional_odds_ratio_with_exact_interval():
    # R: fisher.test(TeaTasting) -> 95 percent confidence interval 0.2117329 621.9337,
    # sample estimates: odds ratio 6.408309 (the conditional MLE, not ad/bc = 9).
    # R finds each number with uniroot at its default tolerance (.Machine$double.eps^0.25);
    # scipy solves to machine precision. Its upper limit, 626.24, is where the exact lower
    # tail probability is 0.025 (R's 621.93 gives 0.02517), so the upper limit is compared
    # at 1%, the others at R's printed digits.
    res = fisher_exact_test([[3, 1], [1, 3]])
    assert res.effect.estimate == pytest.approx(6.408309, rel=5e-6)
    assert res.statistic == res.effect.estimate
    assert res.effect.ci_low == pytest.approx(0.2117329, rel=5e-5)
    assert res.effect.ci_high == pytest.approx(621.9337, rel=1e-2)
    assert "conditional maximum likelihood" in res.effect.method
    # The sample odds ratio with its Wald interval stays available under a labelled key.
    assert res.extra["sample_odds_ratio"] == pytest.approx(9.0)
    low, high = res.extra["sample_odds_ratio_wald_ci"]
    assert (low, high) == pytest.approx((0.37, 220.9), abs=5e-2)


def test_fisher_one_sided_interval_is_one_sided_like_r():
    # R: fisher.test(TeaTasting, alternative = "greater") -> 95 percent confidence interval
    # 0.3135693 Inf (an interval open on the side the alternative does not test).
    res = fisher_exact_test([[3, 1], [1, 3]], alternative="greater")
    assert res.effect.ci_low == pytest.approx(0.3135693, rel=5e-5)
    assert res.effect.ci_high == np.inf


def test_fisher_larger_table_is_seeded_monte_carlo_close_to_r_exact():
    first = fisher_exact_test(JOB, seed=2015, n_resamples=100_000)
    assert first.p_value == pytest.approx(0.7827, abs=0.01)  # MC standard error ~0.0013
    assert first.params == {"alternative": "two-sided", "seed": 2015, "n_resamples": 100_000}
    again = fisher_exact_test(JOB, seed=2015, n_resamples=100_000)
    assert again.p_value == first.p_value


def test_fisher_larger_table_refuses_to_run_unseeded():
    with pytest.raises(ValueError, match="seed"):
        fisher_exact_test(JOB)


def test_chi_square_2x3_matches_r():
    # R ?chisq.test (Agresti 2007 p. 39): M <- as.table(rbind(c(762, 327, 468),
    # c(484, 239, 477))); chisq.test(M) -> X-squared = 30.07, df = 2, p-value = 2.954e-07.
    res = chi_square_test([[762, 327, 468], [484, 239, 477]], correction=False)
    assert res.statistic == pytest.approx(30.07, abs=5e-3)
    assert res.df == 2
    assert res.p_value == pytest.approx(2.954e-07, abs=5e-11)


def test_chi_square_2x2_yates_correction_is_explicit_and_matches_r():
    # R ?chisq.test: x <- matrix(c(12, 5, 7, 7), ncol = 2); chisq.test(x)$p.value # 0.4233
    # (R's default correct = TRUE applies Yates' correction).
    table = [[12, 7], [5, 7]]
    corrected = chi_square_test(table, correction=True)
    assert corrected.p_value == pytest.approx(0.4233, abs=5e-5)
    assert corrected.params["correction_applied"] is True
    uncorrected = chi_square_test(table, correction=False)
    assert uncorrected.p_value < corrected.p_value
    with pytest.raises(TypeError):
        chi_square_test(table)  # no silent default


def test_completion_table_and_attrition_test_per_arm():
    participants = pd.DataFrame(
        {
            "arm": ["control"] * 10 + ["ig"] * 10 + ["placebo"] * 10,
            "completed": [True] * 9 + [False] + [True] * 5 + [False] * 5 + [True] * 8 + [False] * 2,
        }
    )
    table = completion_table(participants, arms=["control", "ig", "placebo", "empty"])
    assert table.loc["ig"].tolist() == [5, 5]
    assert table.loc["empty"].tolist() == [0, 0]
    result = attrition_test(table.loc[["control", "ig", "placebo"]], seed=3, n_resamples=20_000)
    assert 0 < result.p_value <= 1
    assert result.params["seed"] == 3
    assert result.extra["table"]["control"] == {"completed": 9, "not_completed": 1}
    assert attrition_test(table.loc[["control", "ig", "placebo"]], seed=3, n_resamples=20_000).p_value == result.p_value


def test_tables_must_hold_counts():
    with pytest.raises(ValueError):
        chi_square_test([[1.5, 2], [3, 4]], correction=False)
    with pytest.raises(ValueError):
        fisher_exact_test([[-1, 2], [3, 4]])
