"""Participant-level tests against published reference values (R documentation examples,
statsmodels' and scipy's own references). Expected values are never produced by the code under
test; each carries its source."""

import numpy as np
import pytest

from studyapp.analysis import (
    chance_level_test,
    likert_mann_whitney,
    permutation_test,
    pooled_binomial_descriptive,
    tost_equivalence,
    welch_t_test,
)

# R datasets::sleep, extra hours of sleep for drug 1 (group 1) and drug 2 (group 2).
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

# "clinic" data of R package equivalence, copied in statsmodels/stats/tests/test_tost.py;
# var1 of the 15 subjects of factor 1 and the 15 of factor 2, var2 likewise.
CLINIC_VAR1_F1 = [2.84, 2.51, 2.41, 2.95, 3.14, 3.79, 4.14, 3.85, 3.02, 3.45, 5.37, 3.81, 4.19,
                  3.16, 3.84]
CLINIC_VAR1_F2 = [2.60, 2.82, 2.18, 3.46, 4.01, 3.04, 3.47, 4.06, 2.91, 3.59, 4.51, 3.16, 3.86,
                  3.31, 3.02]
CLINIC_VAR2_F1 = [4.00, 3.26, 4.14, 3.42, 3.25, 4.34, 4.97, 4.31, 3.11, 3.41, 5.02, 4.21, 4.59,
                  5.30, 4.32]
CLINIC_VAR2_F2 = [3.76, 3.66, 3.65, 3.60, 3.48, 2.87, 3.24, 3.92, 3.99, 4.21, 4.21, 3.31, 3.61,
                  2.97, 2.73]


class TestWelch:
    def test_sleep_data_matches_r_t_test(self):
        # R ?t.test: t.test(extra ~ group, data = sleep) -> Welch, t = -1.8608,
        # df = 17.776, p-value = 0.07939, 95% CI -3.3654832 0.2054832.
        res = welch_t_test(SLEEP_1, SLEEP_2)
        assert res.statistic == pytest.approx(-1.8608, abs=5e-5)
        assert res.df == pytest.approx(17.776, abs=5e-4)
        assert res.p_value == pytest.approx(0.07939, abs=5e-6)
        assert res.effect.estimate == pytest.approx(0.75 - 2.33)
        assert res.effect.ci_low == pytest.approx(-3.3654832, abs=5e-8)
        assert res.effect.ci_high == pytest.approx(0.2054832, abs=5e-8)
        assert res.n == {"treatment": 10, "control": 10}
        assert res.params["equal_var"] is False

    def test_one_sided_alternatives_match_r(self):
        # statsmodels test_tost.py, R: t.test(clinic$var1[1:15], clinic$var1[16:30],
        # alternative="greater") t = 0.650438363512706, df = 26.7484787582315,
        # p = 0.2604786501355416, CI (-0.2666862980722534, Inf); "less": p = 0.739521349864458.
        greater = welch_t_test(CLINIC_VAR1_F1, CLINIC_VAR1_F2, alternative="greater")
        assert greater.statistic == pytest.approx(0.650438363512706, rel=1e-10)
        assert greater.df == pytest.approx(26.7484787582315, rel=1e-10)
        assert greater.p_value == pytest.approx(0.2604786501355416, rel=1e-10)
        assert greater.effect.ci_low == pytest.approx(-0.2666862980722534, rel=1e-10)
        assert greater.effect.ci_high == np.inf
        less = welch_t_test(CLINIC_VAR1_F1, CLINIC_VAR1_F2, alternative="less")
        assert less.p_value == pytest.approx(0.739521349864458, rel=1e-10)

    def test_missing_values_are_dropped_and_counted(self):
        res = welch_t_test(SLEEP_1 + [np.nan], SLEEP_2)
        assert res.n["treatment"] == 10
        assert res.p_value == pytest.approx(0.07939, abs=5e-6)

    def test_two_sided_spelling_from_hypotheses_is_accepted(self):
        assert welch_t_test(SLEEP_1, SLEEP_2, alternative="two_sided").alternative == "two-sided"
        with pytest.raises(ValueError):
            welch_t_test(SLEEP_1, SLEEP_2, alternative="bigger")


class TestPermutation:
    # On 0/1 outcomes the exact permutation distribution of the difference in means is the
    # hypergeometric distribution of Fisher's exact test. R ?fisher.test, TeaTasting
    # (truth milk first: guesses 3 milk of 4; truth tea first: 1 of 4):
    # alternative = "greater" p-value = 0.2429; two-sided p-value = 0.4857.
    TEA_MILK_FIRST = [1, 1, 1, 0]
    TEA_TEA_FIRST = [1, 0, 0, 0]

    def test_exact_permutation_reproduces_fisher_tea_tasting(self):
        greater = permutation_test(
            self.TEA_MILK_FIRST, self.TEA_TEA_FIRST, alternative="greater", seed=1
        )
        assert greater.extra["exact"] is True
        assert greater.p_value == pytest.approx(0.2429, abs=5e-5)
        two_sided = permutation_test(
            self.TEA_MILK_FIRST, self.TEA_TEA_FIRST, alternative="two-sided", seed=1
        )
        assert two_sided.p_value == pytest.approx(0.4857, abs=5e-5)

    def test_same_seed_same_p_value_and_seed_is_stored(self):
        rng = np.random.default_rng(7)
        x, y = rng.normal(0.3, 1, 40), rng.normal(0, 1, 40)
        first = permutation_test(x, y, alternative="greater", n_resamples=2000, seed=123)
        again = permutation_test(x, y, alternative="greater", n_resamples=2000, seed=123)
        other = permutation_test(x, y, alternative="greater", n_resamples=2000, seed=124)
        assert first.p_value == again.p_value
        assert first.p_value != other.p_value
        assert first.params["seed"] == 123 and first.params["n_resamples"] == 2000
        assert first.extra["exact"] is False


class TestMannWhitney:
    # R datasets::airquality Ozone, May (Month 5) and August (Month 8), NA removed.
    MAY = [41, 36, 12, 18, 28, 23, 19, 8, 7, 16, 11, 14, 18, 14, 34, 6, 30, 11, 1, 11, 4, 32, 23,
           45, 115, 37]
    AUG = [39, 9, 16, 78, 35, 66, 122, 89, 110, 44, 28, 65, 22, 59, 23, 31, 44, 21, 9, 45, 168,
           73, 76, 118, 84, 85]

    def test_ties_use_tie_corrected_normal_approximation_like_r(self):
        # R ?wilcox.test: wilcox.test(Ozone ~ Month, data = airquality,
        # subset = Month %in% c(5, 8)) -> "cannot compute exact p-value with ties",
        # W = 127.5, p-value = 0.0001208.
        res = likert_mann_whitney(self.MAY, self.AUG)
        assert res.statistic == 127.5
        assert res.p_value == pytest.approx(0.0001208, abs=5e-8)
        assert res.params["resolved_method"] == "asymptotic"
        assert res.extra["ties"] is True

    def test_small_samples_without_ties_are_exact_like_r(self):
        # R ?wilcox.test: x <- c(0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46);
        # y <- c(1.15, 0.88, 0.90, 0.74, 1.21); wilcox.test(x, y, alternative = "g")
        # -> W = 35, p-value = 0.1272.
        x = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46]
        y = [1.15, 0.88, 0.90, 0.74, 1.21]
        res = likert_mann_whitney(x, y, alternative="greater")
        assert res.statistic == 35
        assert res.p_value == pytest.approx(0.1272, abs=5e-5)
        assert res.params["resolved_method"] == "exact"

    # 20 vs 20 ratings without ties with U = 291, the statistic at which 20 vs 20 gives the
    # two p-values quoted in issue 13; the treatment sample holds ranks 1-5, 17 and 27-40.
    TREATMENT_20 = [1, 2, 3, 4, 5, 17, *range(27, 41)]
    CONTROL_20 = [*range(6, 17), *range(18, 27)]

    def test_auto_is_exact_below_50_per_sample_without_ties_like_r(self):
        # Issue 13, R wilcox.test on 20 vs 20 without ties: exact p = 0.01319, where the
        # normal approximation with continuity correction gives 0.01436 (for U = 291 the
        # latter is by hand 2 pnorm(-(91 - 0.5) / sqrt(20 * 20 * 41 / 12))). R's rule
        # (?wilcox.test): exact "if the samples contain less than 50 finite values and
        # there are no ties".
        res = likert_mann_whitney(self.TREATMENT_20, self.CONTROL_20)
        assert res.statistic == 291
        assert res.p_value == pytest.approx(0.01319, abs=5e-6)
        assert res.params["resolved_method"] == "exact"
        assert "exact" in res.method and res.method.startswith("Mann-Whitney U test")
        normal = likert_mann_whitney(self.TREATMENT_20, self.CONTROL_20, method="asymptotic")
        assert normal.p_value == pytest.approx(0.01436, abs=5e-6)
        assert "continuity correction" in normal.method

    def test_exact_p_value_of_complete_separation_is_hand_computable(self):
        # wilcox.test(21:40, 1:20): W = 400, the largest of choose(40, 20) equally likely
        # rank sets, so the exact two-sided p-value is 2 / choose(40, 20) = 1.4509e-11.
        res = likert_mann_whitney(range(21, 41), range(1, 21))
        assert res.p_value == pytest.approx(2 / 137846528820, rel=1e-9)

    def test_auto_uses_the_normal_approximation_from_50_values(self):
        x = np.arange(50) * 2.0 + 1.0
        y = np.arange(50) * 2.0
        assert likert_mann_whitney(x, y).params["resolved_method"] == "asymptotic"
        assert likert_mann_whitney(x[:49], y[:49]).params["resolved_method"] == "exact"

    def test_exact_method_is_refused_for_tied_likert_data(self):
        with pytest.raises(ValueError, match="ties"):
            likert_mann_whitney([1, 2, 2, 3, 4], [2, 3, 3, 4, 5], method="exact")


class TestTost:
    def test_equivalence_shown_matches_r_equivalence_tost(self):
        # statsmodels test_tost.py: R equivalence::tost(clinic$var1[1:15],
        # clinic$var1[16:30], eps = 0.6) -> p = 0.04853083976236974,
        # df = 26.7484787582315, 90% CI (-0.2666862980722534, 0.596019631405587).
        res = tost_equivalence(CLINIC_VAR1_F1, CLINIC_VAR1_F2, margin=0.6)
        assert res.p_value == pytest.approx(0.04853083976236974, rel=1e-9)
        assert res.df == pytest.approx(26.7484787582315, rel=1e-9)
        assert res.effect.ci_low == pytest.approx(-0.2666862980722534, rel=1e-9)
        assert res.effect.ci_high == pytest.approx(0.596019631405587, rel=1e-9)
        assert res.effect.confidence_level == pytest.approx(0.90)
        assert res.params["margin_low"] == -0.6 and res.params["margin_high"] == 0.6

    def test_equivalence_not_shown_matches_r(self):
        # Same source: tost(clinic$var2[1:15], clinic$var2[16:30], eps = 0.6)
        # -> p = 0.4317936812594803, df = 24.11000151062728.
        res = tost_equivalence(CLINIC_VAR2_F1, CLINIC_VAR2_F2, margin=(-0.6, 0.6))
        assert res.p_value == pytest.approx(0.4317936812594803, rel=1e-9)
        assert res.df == pytest.approx(24.11000151062728, rel=1e-9)

    def test_margin_must_be_an_interval(self):
        with pytest.raises(ValueError):
            tost_equivalence(SLEEP_1, SLEEP_2, margin=(0.5, -0.5))


class TestChance:
    def test_one_sample_t_test_matches_r(self):
        # R ?t.test / paired sleep example: t.test(x - y) on the sleep differences ->
        # t = -4.0621, df = 9, p-value = 0.002833, 95% CI -2.4598858 -0.7001142.
        diffs = np.subtract(SLEEP_1, SLEEP_2)
        res = chance_level_test(diffs, chance=0.0, alternative="two-sided")
        assert res.statistic == pytest.approx(-4.0621, abs=5e-5)
        assert res.df == 9
        assert res.p_value == pytest.approx(0.002833, abs=5e-7)
        assert res.effect.ci_low == pytest.approx(-2.4598858, abs=5e-8)
        assert res.effect.ci_high == pytest.approx(-0.7001142, abs=5e-8)

    def test_chance_is_one_over_the_number_of_classes(self):
        res = chance_level_test([0.3, 0.5, 0.4, 0.45, 0.35], num_classes=4)
        assert res.params["chance"] == 0.25
        assert res.alternative == "greater"
        with pytest.raises(ValueError):
            chance_level_test([0.3, 0.5], num_classes=4, chance=0.25)

    def test_pooled_binomial_matches_r_binom_test_and_is_descriptive(self):
        # R ?binom.test (Conover 1971): binom.test(c(682, 243), p = 3/4) -> p-value = 0.3825,
        # 95% CI 0.708 0.765 (printed to 3 digits), estimate 0.737.
        res = pooled_binomial_descriptive(682, 925, chance=0.75, alternative="two-sided")
        assert res.p_value == pytest.approx(0.3825, abs=5e-5)
        assert res.effect.ci_low == pytest.approx(0.708, abs=5e-4)
        assert res.effect.ci_high == pytest.approx(0.765, abs=5e-4)
        assert res.extra["descriptive_only"] is True

    def test_pooled_binomial_one_sided_matches_scipy_docs(self):
        # scipy.stats.binomtest docstring: binomtest(3, n=15, p=0.1, alternative='greater')
        # -> pvalue 0.18406106910639114.
        res = pooled_binomial_descriptive(3, 15, chance=0.1, alternative="greater")
        assert res.p_value == pytest.approx(0.18406106910639114, rel=1e-12)
