"""What an analysis run computes once and shares gives what computing it afresh gives.

The run caches the analysed participants and their rows per exclusion-rule set, the outcomes of
those rows per set of participants, and counts participant accuracy on categorical codes; each
test compares a shared or fast result with the plain computation.
"""
import numpy as np
import pandas as pd
import pytest

from studyapp.analysis import aggregate, participant_accuracy, participant_outcomes, simulate_study
from studyapp.analysis.outcomes import AnalysedOutcomes, measure_rows, outcome_values


def _categorical_trials(seed=3) -> pd.DataFrame:
    """A simulated gain study as the run loads it: text columns as categoricals (with a category
    no row uses, in an unsorted order), a few unanswered trials and attention checks."""
    trials = simulate_study(arm_accuracy={"control": 0.6, "explained": 0.7}, n_per_arm=12, trials_per_phase=10,
                            seed=seed)
    trials["participant_id"] = "p" + trials["participant_id"].astype(str).str.zfill(3)
    trials.loc[trials.index[::17], "correct"] = np.nan
    trials.loc[trials.index[::23], "task"] = "attention_check"
    for column, unused in (("participant_id", "p999"), ("arm", "placebo"), ("phase", "test"), ("task", "other")):
        values = trials[column].astype(str)
        categories = [unused, *sorted(values.unique(), reverse=True)]
        trials[column] = pd.Categorical(values, categories=categories)
    return trials


def _grouped_accuracy(trials, monkeypatch, **kwargs) -> pd.DataFrame:
    """participant_accuracy without its code-counting fast paths (the groupby it replaces)."""
    with monkeypatch.context() as patched:
        patched.setattr(aggregate, "_counts_on_codes", lambda *args: None)
        patched.setattr(aggregate, "_first_pairs", lambda t: t[["participant_id", "arm"]].drop_duplicates())
        return participant_accuracy(trials, **kwargs)


@pytest.mark.parametrize("phases", [None, ["pre_test"], ["post_test", "pre_test"]])
def test_accuracy_counted_on_categorical_codes_is_exactly_the_groupby(monkeypatch, phases):
    trials = _categorical_trials()
    fast = participant_accuracy(trials, phases=phases)
    pd.testing.assert_frame_equal(fast, _grouped_accuracy(trials, monkeypatch, phases=phases), check_exact=True)
    assert len(fast) and not (fast["participant_id"] == "p999").any()


def test_accuracy_of_correct_values_other_than_zero_and_one_falls_back_to_the_groupby(monkeypatch):
    trials = _categorical_trials()
    trials["correct"] = trials["correct"] * 0.5
    pd.testing.assert_frame_equal(participant_accuracy(trials), _grouped_accuracy(trials, monkeypatch),
                                  check_exact=True)


def test_a_participant_in_two_arms_is_still_refused_on_categorical_codes():
    trials = _categorical_trials()
    trials.loc[trials.index[1], "arm"] = "explained" if trials["arm"].iloc[1] == "control" else "control"
    with pytest.raises(ValueError, match="more than one arm"):
        participant_accuracy(trials)


def _likert(trials) -> pd.DataFrame:
    people = trials[["participant_id", "arm"]].drop_duplicates().reset_index(drop=True)
    return people.assign(item="useful", value=np.arange(len(people)) % 5 + 1)


@pytest.mark.parametrize("outcome", ["gain", "test_accuracy", "counterfactual_accuracy", "likert"])
def test_shared_outcome_values_equal_the_values_computed_directly(outcome):
    trials = _categorical_trials()
    likert = _likert(trials)
    outcomes = AnalysedOutcomes(trials, likert)
    shared = outcomes.values(outcome=outcome, likert_item="useful")
    direct = outcome_values(trials, likert, outcome=outcome, likert_item="useful")
    pd.testing.assert_frame_equal(shared, direct, check_exact=True)
    assert outcomes.values(outcome=outcome, likert_item="useful") is shared  # computed once


def test_shared_measure_rows_equal_the_rows_selected_directly():
    trials = _categorical_trials()
    outcomes = AnalysedOutcomes(trials, _likert(trials))
    for measure in ("gain", "pre_test", "counterfactual"):
        rows, phase, pre = outcomes.rows(measure)
        direct_rows, direct_phase, direct_pre = measure_rows(trials, measure)
        pd.testing.assert_frame_equal(rows, direct_rows, check_exact=True)
        assert (phase, pre) == (direct_phase, direct_pre)
        assert outcomes.rows(measure)[0] is rows
    wide = participant_outcomes(outcomes.rows("gain")[0])
    assert outcomes.values(outcome="gain", likert_item="")["value"].tolist() == wide["gain"].dropna().tolist()


# ---------------------------------------------------------------- the run's caches (services.analysis)

STUDY_RULES = {"max_failed_attention_checks": 1}
STRICT = {"max_comprehension_attempts": 1}  # a hypothesis's own rule, added to the study's


def _fake_exclusions(*, study, rules, answers):
    """Participant -> the rules that exclude them: p000-p003 fail the attention rule, every third
    participant the comprehension rule (a stand-in for the database query, a function of the rules)."""
    people = sorted(answers["participant_id"].astype(str).unique())
    return {p: [rule for rule, hit in (("max_failed_attention_checks", i < 4),
                                       ("max_comprehension_attempts", i % 3 == 0)) if rule in rules and hit]
            for i, p in enumerate(people)}


@pytest.fixture
def run_data(monkeypatch):
    """``_Data`` of a run on the categorical trials, its exclusions from ``_fake_exclusions``: a new
    one has empty caches, so it computes each answer afresh."""
    from django.apps import apps

    if not apps.ready:  # under ``-p no:django``: the run's caches live in the Django service
        pytest.skip("studyapp.services.analysis needs Django")
    from studyapp.services import analysis

    monkeypatch.setattr(analysis, "participant_exclusions", _fake_exclusions)
    trials = _categorical_trials()
    people = trials[["participant_id", "arm"]].drop_duplicates().astype(str).reset_index(drop=True)
    people = people.assign(status=["completed"] * (len(people) - 2) + ["abandoned"] * 2, consented_at=None,
                           consented=True)
    likert = _likert(trials).astype({"participant_id": str, "arm": str})

    def fresh():
        return analysis._Data(study=None, rules=STUDY_RULES, people=people, trials=trials, likert=likert,
                              arms=[{"name": "control", "kind": "control"}, {"name": "explained", "kind": "x"}],
                              control="control", num_classes=2, design="between", several_arms={})
    return fresh


def test_cached_analysed_participants_and_rows_equal_a_fresh_computation_for_two_rule_sets(run_data):
    data = run_data()
    for extra in (None, STRICT, None, STRICT):  # interleaved: one rule set's answer never leaks into the other's
        cached = data.selection(extra)
        fresh = run_data()
        analysed = fresh.analysed(extra)
        completed = set(fresh.people.loc[fresh.people["status"] == "completed", "participant_id"])
        assert analysed == {p for p, reasons in fresh.exclusions(extra).items() if p in completed and not reasons}
        assert cached.participants == data.analysed(extra) == analysed
        pd.testing.assert_frame_equal(cached.trials, fresh.trials.loc[fresh.trials["participant_id"].isin(analysed)])
        pd.testing.assert_frame_equal(cached.likert, fresh.likert.loc[fresh.likert["participant_id"].isin(analysed)])
        pd.testing.assert_frame_equal(cached.outcomes.values(outcome="gain", likert_item=""),
                                      outcome_values(cached.trials, cached.likert, outcome="gain", likert_item=""))
    assert len(data.analysed(STRICT)) < len(data.analysed()) < len(data.people)


def test_rule_sets_that_exclude_the_same_participants_share_one_selection(run_data):
    data = run_data()
    same_people = {"max_failed_attention_checks": 1, "total_seconds_window": [0, None]}  # excludes no one more
    assert data.selection(same_people) is data.selection()
    assert data.selection(STRICT) is not data.selection()


def test_rows_of_every_participant_are_the_frame_itself_not_a_copy(run_data):
    from studyapp.services.analysis import _rows_of

    trials = run_data().trials  # the fixture has imported the service (or skipped)
    assert _rows_of(trials, frozenset(trials["participant_id"].astype(str))) is trials
    assert len(_rows_of(trials, frozenset({"p000"}))) == (trials["participant_id"] == "p000").sum()
