"""Within-subject (paired) tests against R's documented outputs and hand-computable values.

R is not run here: each expected value is written in with the R call and where its output is
documented. Expected values are never produced by the code under test.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from studyapp.analysis import (
    LongColumns,
    one_sample_tost,
    paired_sample,
    paired_t_test,
    paired_tost,
    participant_accuracy,
    sign_flip_permutation_test,
    simulate_study,
    two_stage_bootstrap,
    wilcoxon_signed_rank,
)

# R datasets::sleep: extra sleep of the same 10 patients under drug 1 and drug 2.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
# R ?wilcox.test, Hollander & Wolfe (1973) p. 29f, depression scale at first (x) and second (y)
# visit of the same 9 patients.
DEPRESSION_X = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
DEPRESSION_Y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]
# "clinic" data of R package equivalence (copied in statsmodels/stats/tests/test_tost.py):
# var1 of subjects 1-15 and 16-30, paired by position in statsmodels' R reference.
CLINIC_A = [2.84, 2.51, 2.41, 2.95, 3.14, 3.79, 4.14, 3.85, 3.02, 3.45, 5.37, 3.81, 4.19, 3.16,
            3.84]
CLINIC_B = [2.60, 2.82, 2.18, 3.46, 4.01, 3.04, 3.47, 4.06, 2.91, 3.59, 4.51, 3.16, 3.86, 3.31,
            3.02]


def long_frame(first, second, names=("first", "second"), participants=None):
    ids = list(participants or range(len(first)))
    return pd.DataFrame({
        "participant_id": ids + ids,
        "condition": [names[0]] * len(first) + [names[1]] * len(second),
        "accuracy": list(first) + list(second),
    })


SLEEP = long_frame(SLEEP_1, SLEEP_2, names=("drug1", "drug2"))


class TestPairedSample:
    def test_pairs_are_aligned_by_participant_not_by_row_order(self):
        frame = long_frame([0.5, 0.6, 0.7], [0.4, 0.6, 0.9], participants=["p1", "p2", "p3"])
        shuffled = frame.sample(frac=1.0, random_state=3)
        sample = paired_sample(shuffled, condition="first", comparator="second")
        assert sample.participants == ("p1", "p2", "p3")
        np.testing.assert_allclose(sample.differences, [0.1, 0.0, -0.2])

    def test_a_participant_missing_one_condition_is_refused_by_name(self):
        frame = long_frame([0.5, 0.6, 0.7], [0.4, 0.6, 0.9], participants=["p1", "p2", "p3"])
        frame = frame.drop(index=frame.index[(frame.participant_id == "p2")
                                             & (frame.condition == "second")])
        with pytest.raises(ValueError, match=r"without a value in condition 'second': p2"):
            paired_sample(frame, condition="first", comparator="second")

    def test_a_participant_twice_in_one_condition_is_refused_by_name(self):
        frame = long_frame([0.5, 0.6, 0.7], [0.4, 0.6, 0.9], participants=["p1", "p2", "p3"])
        frame = pd.concat([frame, frame.iloc[[0]].assign(accuracy=0.9)])
        with pytest.raises(ValueError, match=r"more than one row in one condition: p1"):
            paired_t_test(frame, condition="first", comparator="second")

    def test_a_missing_value_and_an_unknown_condition_are_refused(self):
        frame = long_frame([0.5, np.nan, 0.7], [0.4, 0.6, 0.9])
        with pytest.raises(ValueError, match="missing value: 1"):
            paired_sample(frame, condition="first", comparator="second")
        with pytest.raises(ValueError, match="no participant has a value for condition 'third'"):
            paired_sample(SLEEP, condition="drug1", comparator="third")

    def test_other_column_names_are_used_for_a_pre_post_design(self):
        trials = simulate_study(arm_accuracy={"control": 0.6, "ig": 0.8}, n_per_arm=12,
                                trials_per_phase=10, baseline_accuracy=0.6, seed=4)
        accuracy = participant_accuracy(trials, phases=["pre_test", "post_test"])
        ig = accuracy.loc[accuracy.arm == "ig"]
        res = paired_t_test(ig, condition="post_test", comparator="pre_test",
                            columns=LongColumns(condition="phase"))
        wide = ig.pivot(index="participant_id", columns="phase", values="accuracy")
        direct = stats.ttest_rel(wide["post_test"], wide["pre_test"])
        assert res.p_value == pytest.approx(direct.pvalue)
        assert res.n == {"participants": 12}


class TestPairedT:
    def test_sleep_data_matches_r_paired_t_test(self):
        # R ?sleep / ?t.test: with(sleep, t.test(extra[group == 1], extra[group == 2],
        # paired = TRUE)) -> t = -4.0621, df = 9, p-value = 0.002833,
        # 95 percent CI -2.4598858 -0.7001142, mean difference -1.58.
        res = paired_t_test(SLEEP, condition="drug1", comparator="drug2")
        assert res.statistic == pytest.approx(-4.0621, abs=5e-5)
        assert res.df == 9
        assert res.p_value == pytest.approx(0.002833, abs=5e-7)
        assert res.effect.estimate == pytest.approx(-1.58)
        assert (res.effect.ci_low, res.effect.ci_high) == pytest.approx(
            (-2.4598858, -0.7001142), abs=5e-8)
        assert res.params["difference"] == "condition - comparator"


class TestWilcoxonSignedRank:
    def test_ties_and_a_zero_give_the_corrected_normal_approximation_like_r(self):
        # R: with(sleep, wilcox.test(extra[group == 1], extra[group == 2], paired = TRUE))
        # -> "cannot compute exact p-value with ties / with zeroes", V = 0, p-value = 0.009091
        # (R drops the zero difference: zero_method 'wilcox').
        res = wilcoxon_signed_rank(SLEEP, condition="drug1", comparator="drug2")
        assert res.statistic == 0
        assert res.p_value == pytest.approx(0.009091, abs=5e-7)
        assert res.params["resolved_method"] == "asymptotic"
        assert res.params["zero_method"] == "wilcox"
        assert res.n == {"participants": 10, "nonzero_differences": 9}
        assert (res.extra["zeros"], res.extra["ties"]) == (1, True)
        assert res.effect.estimate == -1.0  # every non-zero difference is negative

    def test_small_sample_without_ties_is_exact_like_r(self):
        # R ?wilcox.test: wilcox.test(x, y, paired = TRUE, alternative = "greater")
        # -> V = 40, p-value = 0.01953 (exact: 10 of the 512 sign patterns have V >= 40).
        frame = long_frame(DEPRESSION_X, DEPRESSION_Y)
        res = wilcoxon_signed_rank(frame, condition="first", comparator="second",
                                   alternative="greater")
        assert res.statistic == 40
        assert res.p_value == pytest.approx(10 / 512)
        assert res.params["resolved_method"] == "exact"

    def test_v_is_the_positive_rank_sum_when_two_sided(self):
        # scipy reports min(R+, R-) when two-sided; R's V is R+ whatever the alternative.
        frame = long_frame(DEPRESSION_X, DEPRESSION_Y)
        res = wilcoxon_signed_rank(frame, condition="first", comparator="second")
        assert res.statistic == 40
        assert res.p_value == pytest.approx(2 * 10 / 512)

    def test_accuracy_differences_equal_up_to_rounding_are_ties(self):
        # 0.8 - 0.7 and 0.7 - 0.6 differ in the last bit of a double; as accuracies they tie.
        first = [0.8, 0.7, 0.9, 0.6, 0.5]
        second = [0.7, 0.6, 0.5, 0.3, 0.4]
        assert len({a - b for a, b in zip(first, second)}) == 4  # float noise: 0.1 != 0.1
        res = wilcoxon_signed_rank(long_frame(first, second), condition="first",
                                   comparator="second")
        assert res.extra["ties"] is True
        assert res.params["resolved_method"] == "asymptotic"

    def test_pratt_keeps_zeros_in_the_ranking(self):
        # Differences 0, 1, 2, 3: Wilcoxon ranks 1..3 over three values (V = 6); Pratt ranks
        # 2..4 over four and drops the zero's rank (V = 9).
        frame = long_frame([1, 2, 3, 4], [1, 1, 1, 1])
        wilcox = wilcoxon_signed_rank(frame, condition="first", comparator="second")
        pratt = wilcoxon_signed_rank(frame, condition="first", comparator="second",
                                     zero_method="pratt")
        assert (wilcox.statistic, pratt.statistic) == (6, 9)
        assert pratt.params["resolved_method"] == "asymptotic"

    def test_no_difference_at_all_and_exact_with_ties_are_refused(self):
        frame = long_frame([0.5, 0.6], [0.5, 0.6])
        with pytest.raises(ValueError, match="no difference to rank"):
            wilcoxon_signed_rank(frame, condition="first", comparator="second")
        with pytest.raises(ValueError, match="exact"):
            wilcoxon_signed_rank(SLEEP, condition="drug1", comparator="drug2", method="exact")


class TestSignFlip:
    def test_exact_p_value_is_hand_computable_on_the_sleep_data(self):
        # All 9 non-zero differences are negative, so of the 2**10 sign flips only the
        # observed one (and its copy with the zero flipped) reach mean -1.58:
        # one-sided 2/1024, two-sided 4/1024.
        res = sign_flip_permutation_test(SLEEP, condition="drug1", comparator="drug2", seed=1)
        assert res.statistic == pytest.approx(-1.58)
        assert res.p_value == pytest.approx(4 / 1024)
        assert res.extra["exact"] is True
        assert res.params["permutation_type"] == "samples" and res.params["seed"] == 1

    def test_sampled_flips_are_reproducible_from_the_seed(self):
        rng = np.random.default_rng(0)
        first = rng.uniform(0.4, 0.9, 30)
        frame = long_frame(first, first - rng.normal(0.02, 0.1, 30))
        kwargs = dict(condition="first", comparator="second", n_resamples=2000)
        a = sign_flip_permutation_test(frame, seed=7, **kwargs)
        b = sign_flip_permutation_test(frame, seed=7, **kwargs)
        c = sign_flip_permutation_test(frame, seed=8, **kwargs)
        assert a.p_value == b.p_value and a.p_value != c.p_value
        assert a.extra["exact"] is False


class TestTost:
    def test_paired_tost_matches_r_equivalence_tost(self):
        # statsmodels test_tost.py ``tost_clinic_paired_1``: R equivalence::tost(
        # -clinic$var1[16:30] + clinic$var1[1:15], eps = 0.6) -> p = 0.003166881489265175,
        # df = 14, mean difference 0.1646666666666667,
        # 90% CI (-0.0744336620516462, 0.4037669953849797).
        res = paired_tost(long_frame(CLINIC_A, CLINIC_B), condition="first",
                          comparator="second", margin=0.6)
        assert res.p_value == pytest.approx(0.003166881489265175, rel=1e-10)
        assert res.df == 14
        assert res.effect.estimate == pytest.approx(0.1646666666666667)
        assert (res.effect.ci_low, res.effect.ci_high) == pytest.approx(
            (-0.0744336620516462, 0.4037669953849797), rel=1e-10)
        assert res.alternative == "equivalence"

    def test_one_sample_tost_against_chance_is_the_same_test_shifted(self):
        # The same R reference: a one-sample TOST of d + 0.5 within 0.5 +- 0.6.
        d = np.subtract(CLINIC_A, CLINIC_B)
        res = one_sample_tost(d + 0.5, mu=0.5, margin=0.6)
        assert res.p_value == pytest.approx(0.003166881489265175, rel=1e-10)
        assert (res.effect.ci_low, res.effect.ci_high) == pytest.approx(
            (0.5 - 0.0744336620516462, 0.5 + 0.4037669953849797), rel=1e-10)
        assert (res.params["margin_low"], res.params["margin_high"]) == pytest.approx((-0.1, 1.1))

    def test_a_margin_that_is_not_an_interval_is_refused(self):
        with pytest.raises(ValueError, match="low < high"):
            one_sample_tost([0.5, 0.6, 0.7], mu=0.5, margin=(0.1, -0.1))


def within_subject_trials():
    """Every participant answers in both arms: 10 items each, 8 right in 'explained', 5 in
    'control', so each participant's difference is 0.3. Half of them start in each arm, so
    keeping a participant's first arm leaves 3 participants per arm and no error."""
    rows = []
    for p in range(6):
        order = (("control", 5), ("explained", 8))
        for arm, n_right in order if p % 2 else order[::-1]:
            for item in range(10):
                rows.append((p, arm, item, "test", int(item < n_right)))
    return pd.DataFrame(rows, columns=["participant_id", "arm", "item_id", "phase", "correct"])


def test_participant_accuracy_refuses_a_participant_in_two_arms():
    with pytest.raises(ValueError, match="more than one arm"):
        participant_accuracy(within_subject_trials())


def test_two_stage_bootstrap_refuses_a_participant_in_two_arms():
    with pytest.raises(ValueError, match="more than one arm"):
        two_stage_bootstrap(within_subject_trials(), treatment="explained", control="control",
                            phase="test", seed=0, n_resamples=50)
