"""The confirmatory family with every comparison a hypothesis can make: arm vs control, arm vs arm and
arm vs chance, corrected together (studyapp.analysis.primary)."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import DescrStatsW, ttost_ind

from studyapp.analysis import simulate_study
from studyapp.analysis import CHANCE, ComparisonSpec, primary_analysis

# R's ?t.test example data (datasets::sleep): extra hours of sleep under two drugs, 10 patients.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
# R's ?wilcox.test example (Hollander & Wolfe 1973, p. 29): depression scores before (x) and after (y).
DEPRESSION_X = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
DEPRESSION_Y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]


def participants(**arms) -> pd.DataFrame:
    """A participant frame (one row per participant) with the outcome column 'score'."""
    rows = [(f"{arm}-{i}", arm, float(v)) for arm, values in arms.items() for i, v in enumerate(values)]
    return pd.DataFrame(rows, columns=["participant_id", "arm", "score"])


@pytest.fixture(scope="module")
def trials():
    return simulate_study(arm_accuracy={"control": 0.6, "ig": 0.72, "saliency": 0.66}, n_per_arm=25,
                          trials_per_phase=20, seed=31)


def gains(trials, arm):
    """Each participant's post-test minus pre-test accuracy, computed here with plain pandas."""
    acc = trials.loc[trials["arm"] == arm].groupby(["participant_id", "phase"], observed=True)["correct"].mean()
    wide = acc.unstack("phase")
    return (wide["post_test"] - wide["pre_test"]).to_numpy()


def test_arm_vs_arm_equals_scipy_welch_on_the_same_gains(trials):
    result = primary_analysis(trials, comparisons=[ComparisonSpec(arm="ig", comparator="saliency")],
                              alternative="two-sided")
    [(label, res)] = result.results.items()
    expected = stats.ttest_ind(gains(trials, "ig"), gains(trials, "saliency"), equal_var=False)
    assert label == "ig vs saliency"
    assert res.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    assert res.df == pytest.approx(expected.df, rel=1e-12)
    assert result.comparisons[label].kind == "arm_vs_arm"
    # A family of one is not adjusted.
    assert result.adjusted.adjusted[0] == res.p_value


def test_arm_vs_arm_welch_matches_r_t_test_on_the_sleep_data():
    # R: t.test(extra ~ group, data = sleep) -> t = -1.8608, df = 17.776, p-value = 0.07939,
    # 95 percent confidence interval -3.3654832 0.2054832 (R's ?t.test example).
    result = primary_analysis(None, participants=participants(drug1=SLEEP_1, drug2=SLEEP_2), outcome="score",
                              comparisons=[ComparisonSpec(arm="drug1", comparator="drug2", direction="two_sided")])
    res = result.results["drug1 vs drug2"]
    assert res.statistic == pytest.approx(-1.8608, abs=5e-5)
    assert res.df == pytest.approx(17.776, abs=5e-4)
    assert res.p_value == pytest.approx(0.07939, abs=5e-6)
    assert (res.effect.ci_low, res.effect.ci_high) == pytest.approx((-3.3654832, 0.2054832), abs=5e-8)


def test_arm_vs_chance_t_equals_scipy_one_sample_t(trials):
    spec = ComparisonSpec(arm="ig", comparator=CHANCE, chance=0.5, outcome="post_test")
    result = primary_analysis(trials, comparisons=[spec])
    res = result.results["ig vs chance 0.5 on post_test"]
    post = trials.loc[(trials["arm"] == "ig") & (trials["phase"] == "post_test")]
    accuracy = post.groupby("participant_id")["correct"].mean().to_numpy()
    expected = stats.ttest_1samp(accuracy, 0.5, alternative="greater")
    assert (res.statistic, res.p_value) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)
    ran = result.comparisons["ig vs chance 0.5 on post_test"]
    assert (ran.kind, ran.test, ran.test_ran, ran.chance) == ("arm_vs_chance", "welch", "one_sample_t", 0.5)


def test_arm_vs_chance_matches_r_paired_t_test_on_the_sleep_differences():
    # R: with(sleep, t.test(extra[group == 1], extra[group == 2], paired = TRUE)) -> t = -4.0621,
    # df = 9, p-value = 0.002833: the one-sample t-test of the differences against 0, here the
    # differences shifted by 0.5 against a chance level of 0.5.
    shifted = np.array(SLEEP_1) - np.array(SLEEP_2) + 0.5
    result = primary_analysis(None, participants=participants(drug=shifted), outcome="score", alternative="two-sided",
                              comparisons=[ComparisonSpec(arm="drug", comparator=CHANCE, chance=0.5)])
    res = result.results["drug vs chance 0.5"]
    assert res.statistic == pytest.approx(-4.0621, abs=5e-5)
    assert res.p_value == pytest.approx(0.002833, abs=5e-7)
    assert res.df == 9


def test_arm_vs_chance_wilcoxon_matches_r_and_scipy():
    # R: wilcox.test(x, y, paired = TRUE, alternative = "greater") on ?wilcox.test's depression data
    # -> V = 40, p-value = 0.01953 (exact: 10 of the 2^9 sign patterns reach 40).
    shifted = np.array(DEPRESSION_X) - np.array(DEPRESSION_Y) + 0.5
    spec = ComparisonSpec(arm="treated", comparator=CHANCE, chance=0.5, test="wilcoxon_signed_rank")
    result = primary_analysis(None, participants=participants(treated=shifted), outcome="score", comparisons=[spec])
    res = result.results["treated vs chance 0.5"]
    assert res.statistic == 40
    assert res.p_value == pytest.approx(10 / 512, rel=1e-12)
    assert res.p_value == pytest.approx(0.01953, abs=5e-6)
    expected = stats.wilcoxon(np.array(DEPRESSION_X) - np.array(DEPRESSION_Y), alternative="greater")
    assert res.p_value == pytest.approx(expected.pvalue, rel=1e-12)


def test_arm_vs_chance_wilcoxon_with_tied_accuracies_equals_scipy_normal_approximation(trials):
    spec = ComparisonSpec(arm="ig", comparator=CHANCE, chance=0.5, test="mann_whitney", outcome="post_test",
                          direction="two-sided")
    result = primary_analysis(trials, comparisons=[spec])
    [(label, res)] = result.results.items()
    assert result.comparisons[label].test_ran == "wilcoxon_signed_rank"
    post = trials.loc[(trials["arm"] == "ig") & (trials["phase"] == "post_test")]
    differences = post.groupby("participant_id")["correct"].mean().to_numpy() - 0.5
    # Accuracies over 20 trials tie; R ranks differences rounded to 12 digits (digits.rank), so do we.
    expected = stats.wilcoxon(np.round(differences, 12), method="asymptotic", correction=True)
    assert res.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    assert res.params["resolved_method"] == "asymptotic"


def test_arm_vs_chance_sign_flip_enumerates_every_sign_pattern():
    values = np.array(DEPRESSION_X) - np.array(DEPRESSION_Y) + 0.5
    spec = ComparisonSpec(arm="treated", comparator=CHANCE, chance=0.5, test="permutation")
    result = primary_analysis(None, participants=participants(treated=values), outcome="score", comparisons=[spec],
                              seed=7)
    res = result.results["treated vs chance 0.5"]
    d = values - 0.5
    flips = np.array(list(itertools.product([1, -1], repeat=d.size)))
    means = (flips * d).mean(axis=1)
    assert res.extra["exact"] is True
    assert res.p_value == pytest.approx(np.mean(means >= d.mean() - 1e-12), rel=1e-12)
    assert result.comparisons["treated vs chance 0.5"].test_ran == "sign_flip_permutation"
    with pytest.raises(ValueError, match="sign-flip-permutation test needs a seed"):
        primary_analysis(None, participants=participants(treated=values), outcome="score", comparisons=[spec])


def test_holm_over_a_mixed_family_equals_statsmodels_multipletests(trials):
    family = [ComparisonSpec(arm="ig"), ComparisonSpec(arm="saliency"),
              ComparisonSpec(arm="ig", comparator="saliency", direction="two-sided"),
              ComparisonSpec(arm="ig", comparator=CHANCE, chance=0.0, label="ig improved")]
    result = primary_analysis(trials, control="control", comparisons=family)
    assert list(result.results) == ["ig vs control", "saliency vs control", "ig vs saliency", "ig improved"]
    assert [c.kind for c in result.comparisons.values()] == ["arm_vs_control", "arm_vs_control", "arm_vs_arm",
                                                             "arm_vs_chance"]
    ig, saliency, control = gains(trials, "ig"), gains(trials, "saliency"), gains(trials, "control")
    raw = [stats.ttest_ind(ig, control, equal_var=False, alternative="greater").pvalue,
           stats.ttest_ind(saliency, control, equal_var=False, alternative="greater").pvalue,
           stats.ttest_ind(ig, saliency, equal_var=False).pvalue,
           stats.ttest_1samp(ig, 0.0, alternative="greater").pvalue]
    np.testing.assert_allclose(result.adjusted.raw, raw, rtol=1e-12)
    reject, adjusted, _, _ = multipletests(raw, alpha=0.05, method="holm")
    np.testing.assert_allclose(result.adjusted.adjusted, adjusted, rtol=1e-12)
    np.testing.assert_array_equal(result.adjusted.reject, reject)
    assert result.rejected() == dict(zip(result.results, reject.tolist()))
    assert result.adjusted.labels == tuple(result.results)


def test_a_larger_pre_registered_family_counts_the_missing_members_as_p_one(trials):
    family = [ComparisonSpec(arm="ig"), ComparisonSpec(arm="ig", comparator="saliency")]
    result = primary_analysis(trials, control="control", comparisons=family, correction="bonferroni", family_size=5)
    padded = np.concatenate([result.adjusted.raw, [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(result.adjusted.adjusted, multipletests(padded, method="bonferroni")[1][:2])
    assert result.params["family_size"] == 5


def test_the_original_call_is_each_arm_against_control_keyed_by_arm(trials):
    old = primary_analysis(trials, control="control")
    new = primary_analysis(trials, control="control", comparisons=[ComparisonSpec(arm="ig"),
                                                                   ComparisonSpec(arm="saliency")])
    assert list(old.results) == ["ig", "saliency"]
    assert list(new.results) == ["ig vs control", "saliency vs control"]
    np.testing.assert_array_equal(old.adjusted.adjusted, new.adjusted.adjusted)
    assert old.params["arms"] == ["ig", "saliency"] and old.control == "control"
    assert old.results["ig"].p_value == pytest.approx(
        stats.ttest_ind(gains(trials, "ig"), gains(trials, "control"), equal_var=False, alternative="greater").pvalue,
        rel=1e-12)


def test_equivalence_runs_tost_between_arms_and_against_chance():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.70, 0.05, 30), rng.normal(0.71, 0.05, 30)
    family = [ComparisonSpec(arm="a", comparator="b", direction="equivalence", margin=0.05),
              ComparisonSpec(arm="a", comparator=CHANCE, chance=0.7, direction="equivalence", margin=0.04)]
    result = primary_analysis(None, participants=participants(a=a, b=b), outcome="score", comparisons=family)
    between, against = result.results.values()
    assert between.p_value == pytest.approx(ttost_ind(a, b, -0.05, 0.05, usevar="unequal")[0], rel=1e-12)
    assert against.p_value == pytest.approx(DescrStatsW(a).ttost_mean(0.66, 0.74)[0], rel=1e-12)
    assert [c.test_ran for c in result.comparisons.values()] == ["welch_tost", "one_sample_tost"]


def test_mann_whitney_between_arms_equals_scipy():
    likert = {"a": [4, 5, 3, 4, 5, 4, 2, 5, 4, 4], "b": [3, 3, 2, 4, 3, 2, 3, 4, 1, 3]}
    result = primary_analysis(None, participants=participants(**likert), outcome="score",
                              comparisons=[ComparisonSpec(arm="a", comparator="b", test="mann_whitney")])
    expected = stats.mannwhitneyu(likert["a"], likert["b"], alternative="greater", method="asymptotic")
    assert result.results["a vs b"].p_value == pytest.approx(expected.pvalue, rel=1e-12)


def test_a_participant_in_two_arms_is_refused_by_name(trials):
    rows = trials.copy()
    rows["arm"] = rows["arm"].astype(str)
    rows.loc[(rows["participant_id"] == 3) & (rows["phase"] == "post_test"), "arm"] = "ig"
    with pytest.raises(ValueError) as refused:
        primary_analysis(rows, control="control")
    message = str(refused.value)
    assert message.startswith("1 participant appears in more than one arm (3 in control and ig)")
    assert "use the paired tests" in message
    frame = participants(control=[0.5, 0.6, 0.7], ig=[0.8, 0.9]).replace({"participant_id": {"ig-0": "control-0"}})
    with pytest.raises(ValueError, match=r"\(control-0 in control and ig\)"):
        primary_analysis(None, participants=frame, outcome="score", control="control")


@pytest.mark.parametrize("spec, message", [
    (ComparisonSpec(arm="ig", comparator=CHANCE), "needs the chance value"),
    (ComparisonSpec(arm="ig", comparator="saliency", chance=0.5), "use comparator='chance'"),
    (ComparisonSpec(arm="ig", comparator="ig"), "cannot be compared with itself"),
    (ComparisonSpec(arm="ig", test="wilcoxon_signed_rank"), "is a one-sample test"),
    (ComparisonSpec(arm="ig", direction="equivalence"), "needs its pre-registered margin"),
    (ComparisonSpec(arm="ig", margin=0.05), "only used with direction 'equivalence'"),
    (ComparisonSpec(arm="placebo"), "arm 'placebo' has no participants"),
    (ComparisonSpec(arm="ig", test="t-test"), "unknown test 't-test'"),
])
def test_a_comparison_that_cannot_run_is_refused_in_words(trials, spec, message):
    with pytest.raises(ValueError, match=message):
        primary_analysis(trials, control="control", comparisons=[spec])


def test_labels_must_be_unique_and_arms_and_comparisons_exclusive(trials):
    with pytest.raises(ValueError, match="share the label"):
        primary_analysis(trials, control="control", comparisons=[ComparisonSpec(arm="ig", label="H1"),
                                                                 ComparisonSpec(arm="saliency", label="H1")])
    with pytest.raises(ValueError, match="not both"):
        primary_analysis(trials, control="control", arms=["ig"], comparisons=[ComparisonSpec(arm="ig")])
    with pytest.raises(ValueError, match="name a comparator arm"):
        primary_analysis(trials, comparisons=[ComparisonSpec(arm="ig")])
