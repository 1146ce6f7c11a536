"""Multiple-comparison correction against R's p.adjust / multtest reference values."""

import numpy as np
import pytest

from studyapp.analysis import CORRECTION_METHODS, adjust_pvalues

# Reference vector and R results from statsmodels' own test suite
# (statsmodels/stats/tests/test_multi.py, ``res_multtest3``), produced with R package multtest
# ``mt.rawp2adjp``; columns rawp, Bonferroni, Holm, Hochberg, ..., BH, BY.
RAW = np.array([0.001, 0.002, 0.003, 0.004, 0.005, 0.05, 0.06, 0.07, 0.08, 0.09])
R_REFERENCE = {
    "bonferroni": [0.01, 0.02, 0.03, 0.04, 0.05, 0.5, 0.6, 0.7, 0.8, 0.9],
    "holm": [0.01, 0.018, 0.024, 0.028, 0.03, 0.25, 0.25, 0.25, 0.25, 0.25],
    "hochberg": [0.01, 0.018, 0.024, 0.028, 0.03, 0.09, 0.09, 0.09, 0.09, 0.09],
    "bh": [
        0.01, 0.01, 0.01, 0.01, 0.01,
        0.08333333333333334, 0.0857142857142857, 0.0875, 0.0888888888888889, 0.09,
    ],
    "by": [
        0.02928968253968254, 0.02928968253968254, 0.02928968253968254,
        0.02928968253968254, 0.02928968253968254, 0.2440806878306878,
        0.2510544217687075, 0.2562847222222222, 0.2603527336860670, 0.2636071428571428,
    ],
}
# Holm-Sidak ('hs', statsmodels' default) on the same vector: multtest SidakSD column.
R_SIDAK_SD_FIRST = 0.00995511979025177

# Hommel: statsmodels test_multi.py ``test_hommel``, "tested against R stats p_adjust(pval0,
# method='hommel')".
HOMMEL_RAW = np.array([
    0.00116, 0.00924, 0.01075, 0.01437, 0.01784, 0.01918, 0.02751, 0.02871, 0.03054,
    0.03246, 0.04259, 0.06879, 0.0691, 0.08081, 0.08593, 0.08993, 0.09386, 0.09412,
    0.09718, 0.09758, 0.09781, 0.09788, 0.13282, 0.20191, 0.21757, 0.24031, 0.26061,
    0.26762, 0.29474, 0.32901, 0.41386, 0.51479, 0.52461, 0.53389, 0.56276, 0.62967,
    0.72178, 0.73403, 0.87182, 0.95384,
])
HOMMEL_R = np.array([
    0.0464, 0.25872, 0.29025, 0.3495714285714286, 0.41032, 0.44114, 0.57771, 0.60291,
    0.618954, 0.6492, 0.7402725000000001, 0.86749, 0.86749, 0.8889100000000001,
    0.8971477777777778, 0.8993, 0.9175374999999999, 0.9175374999999999,
    0.9175374999999999, 0.9175374999999999, 0.9175374999999999, 0.9175374999999999,
    0.95384, *([0.9538400000000001] * 17),
])


@pytest.mark.parametrize("method", sorted(R_REFERENCE))
def test_adjustment_matches_r_reference(method):
    result = adjust_pvalues(RAW, method=method, alpha=0.05)
    np.testing.assert_allclose(result.adjusted, R_REFERENCE[method], rtol=1e-12)
    np.testing.assert_array_equal(result.reject, result.adjusted <= 0.05)
    assert result.n_tests == 10


def test_hommel_matches_r_p_adjust():
    result = adjust_pvalues(HOMMEL_RAW, method="hommel", alpha=0.1)
    np.testing.assert_allclose(result.adjusted, HOMMEL_R, rtol=1e-12)


def test_default_is_holm_not_statsmodels_holm_sidak():
    default = adjust_pvalues(RAW)
    assert default.method == "holm" and default.statsmodels_method == "holm"
    np.testing.assert_allclose(default.adjusted, R_REFERENCE["holm"], rtol=1e-12)
    assert default.adjusted[0] != pytest.approx(R_SIDAK_SD_FIRST)


def test_name_mapping_to_statsmodels_and_r():
    assert CORRECTION_METHODS == {
        "holm": ("holm", "holm"),
        "bonferroni": ("bonferroni", "bonferroni"),
        "hochberg": ("simes-hochberg", "hochberg"),
        "hommel": ("hommel", "hommel"),
        "bh": ("fdr_bh", "BH"),
        "by": ("fdr_by", "BY"),
    }
    assert adjust_pvalues(RAW, method="bh").r_method == "BH"


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown correction"):
        adjust_pvalues(RAW, method="hs")


@pytest.mark.parametrize("method", sorted(CORRECTION_METHODS))
def test_nan_stays_nan_and_family_size_counts_only_non_nan(method):
    # R's p.adjust subsets p to its non-NA entries before the lazily evaluated default
    # n = length(p) is used (stats::p.adjust source; ?p.adjust example "Can work with NA's"),
    # so adjusting [p with NaNs inserted] gives, at the non-NaN positions, R's result for p.
    with_nan = np.insert(RAW, [2, 7], np.nan)
    result = adjust_pvalues(with_nan, method=method)
    nan_positions = np.isnan(with_nan)
    assert np.isnan(result.adjusted[nan_positions]).all()
    assert not result.reject[nan_positions].any()
    assert result.n_tests == 10
    expected = adjust_pvalues(RAW, method=method).adjusted
    np.testing.assert_allclose(result.adjusted[~nan_positions], expected, rtol=1e-12)
    if method in R_REFERENCE:
        np.testing.assert_allclose(result.adjusted[~nan_positions], R_REFERENCE[method])


def test_all_nan_and_single_p_value():
    all_nan = adjust_pvalues([np.nan, np.nan])
    assert np.isnan(all_nan.adjusted).all() and all_nan.n_tests == 0
    # A family of one (the other test failed): R returns p unchanged when n <= 1.
    single = adjust_pvalues([0.03, np.nan], method="bonferroni")
    assert single.adjusted[0] == 0.03 and single.reject[0]


def test_labels_travel_with_the_result():
    result = adjust_pvalues([0.01, 0.2], labels=["ig", "placebo"])
    assert result.to_dict()["labels"] == ["ig", "placebo"]
    assert result.to_dict()["reject"] == [True, False]


# Family size (R's p.adjust(p, method, n = 5)) for p = (0.01, 0.02, 0.04), computed by hand
# from the formulas in R's stats::p.adjust source:
#   bonferroni  pmin(1, n p)                                  -> 0.05, 0.10, 0.20
#   holm        cummax((n + 1 - i) p_(i)), i = 1..3           -> 5, 4, 3 times p
#   hochberg    cummin from the largest of (n + 1 - i) p_(i)  -> 0.05, 0.08, 0.12
#   hommel      p padded with two 1s, R's loop by hand        -> 0.05, 0.08, 0.12
#   BH          cummin from the largest of n / i p_(i)        -> 0.05, 0.05, 1/15
#   BY          BH times sum(1 / 1:5) = 137 / 60
FAMILY_P = [0.01, 0.02, 0.04]
FAMILY_OF_FIVE = {
    "bonferroni": [0.05, 0.10, 0.20],
    "holm": [0.05, 0.08, 0.12],
    "hochberg": [0.05, 0.08, 0.12],
    "hommel": [0.05, 0.08, 0.12],
    "bh": [0.05, 0.05, 0.2 / 3],
    "by": [0.05 * 137 / 60, 0.05 * 137 / 60, 0.2 / 3 * 137 / 60],
}


@pytest.mark.parametrize("method", sorted(FAMILY_OF_FIVE))
def test_a_declared_family_larger_than_the_tests_run_is_corrected_for_its_full_size(method):
    result = adjust_pvalues(FAMILY_P, method=method, family_size=5, alpha=0.06)
    np.testing.assert_allclose(result.adjusted, FAMILY_OF_FIVE[method], rtol=1e-12)
    np.testing.assert_array_equal(result.reject, result.adjusted <= 0.06)
    assert (result.n_tests, result.family_size) == (3, 5)
    assert result.to_dict()["family_size"] == 5


@pytest.mark.parametrize("method", sorted(CORRECTION_METHODS))
def test_family_size_equal_to_the_p_values_changes_nothing(method):
    np.testing.assert_allclose(
        adjust_pvalues(RAW, method=method, family_size=10).adjusted,
        adjust_pvalues(RAW, method=method).adjusted,
        rtol=1e-12,
    )


def test_family_size_counts_a_test_that_could_not_be_computed():
    # R: p.adjust(c(0.01, NA), "bonferroni", n = 2) -> 0.02 NA; a family of one test
    # declared in a family of three: p.adjust(0.03, "bonferroni", n = 3) -> 0.09.
    result = adjust_pvalues([0.01, np.nan], method="bonferroni", family_size=2)
    assert result.adjusted[0] == pytest.approx(0.02) and np.isnan(result.adjusted[1])
    single = adjust_pvalues([0.03], method="bonferroni", family_size=3)
    assert single.adjusted[0] == pytest.approx(0.09)


def test_a_family_smaller_than_the_p_values_given_is_refused():
    with pytest.raises(ValueError, match="family size 2 is smaller than the 3 p-values"):
        adjust_pvalues(FAMILY_P, family_size=2)
    # Every p-value given is a member, NaN included (stricter than R, which counts non-NA).
    with pytest.raises(ValueError, match="smaller than the 2 p-values"):
        adjust_pvalues([0.01, np.nan], family_size=1)
    with pytest.raises(ValueError, match="whole number"):
        adjust_pvalues(FAMILY_P, family_size=4.5)
