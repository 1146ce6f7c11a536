"""Effect sizes against published values."""

import math

import pytest

from studyapp.analysis import cohens_d, cohens_h, difference_in_proportions, odds_ratio

SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_cohens_d_matches_easystats_on_sleep_data():
    # easystats/parameters test suite, model_parameters(t.test(sleep$extra[sleep$group == 1],
    # sleep$extra[sleep$group == 2]), standardized_d = TRUE): Cohens_d = -0.83218108134954.
    assert cohens_d(SLEEP_1, SLEEP_2).estimate == pytest.approx(-0.83218108134954, rel=1e-12)


def test_cohens_h_matches_pwr_es_h():
    # pwr vignette: ES.h(p1 = 0.55, p2 = 0.50) -> h = 0.1001674.
    assert cohens_h(0.55, 0.50).estimate == pytest.approx(0.1001674, abs=5e-8)
    assert cohens_h(0.50, 0.55).estimate == pytest.approx(-0.1001674, abs=5e-8)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        # Newcombe (1998), Stat Med 17:873, Table II, method 10 (hybrid score):
        # 56/70 - 48/80 -> 0.0524 to 0.3339; 9/10 - 3/10 -> 0.1705 to 0.8090
        # (as asserted in R package propint's tests "results reported in Newcombe1998").
        ((56, 70, 48, 80), (0.0524, 0.3339)),
        ((9, 10, 3, 10), (0.1705, 0.8090)),
    ],
)
def test_difference_in_proportions_matches_newcombe_1998(counts, expected):
    res = difference_in_proportions(*counts)
    c1, n1, c2, n2 = counts
    assert res.estimate == pytest.approx(c1 / n1 - c2 / n2)
    assert res.ci_low == pytest.approx(expected[0], abs=5e-5)
    assert res.ci_high == pytest.approx(expected[1], abs=5e-5)
    assert res.confidence_level == 0.95


def test_odds_ratio_wald_interval_matches_r_epitools():
    # Biostatistics For Dummies, ch. 13 (obesity x hypertension, 14 7 / 12 27):
    # OR = 4.50; R epitools oddsratio.wald() 95% CI 1.448095 to 13.98389.
    res = odds_ratio([[14, 7], [12, 27]])
    assert res.estimate == pytest.approx(4.5)
    assert res.ci_low == pytest.approx(1.448095, abs=5e-7)
    assert res.ci_high == pytest.approx(13.98389, abs=5e-5)


def test_odds_ratio_needs_a_two_by_two_table():
    with pytest.raises(ValueError):
        odds_ratio([[1, 2, 3], [4, 5, 6]])
    assert math.isfinite(odds_ratio([[0, 5], [3, 4]]).estimate)  # zero cell: 0.5 shift
