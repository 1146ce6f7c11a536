"""Within-subject analysis end to end: a within pre/post study filled through the participant API,
analysed by study_analyze (paired tests where the same participants are on both sides, the
between-arm tests elsewhere), rendered in the report and exported; a participant found in two arms
is refused with the reason, never dropped or guessed."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from django.urls import reverse

from studyapp import analysis as stats
from studyapp.models import Participant, Response, Study, Trial
from studyapp.services import analysis as analysis_service
from studyapp.services.analysis import study_analyze
from studyapp.services.studies import study_launch
from studyapp.simulated_participants import DatabaseOracle, DjangoTransport, run_participant
from tests.analysis_factories import (as_analysis_frame, launch, study_with_items, write_simulated_trials)
from tests.factories import HypothesisFactory, with_hypothesis
from tests.participation_helpers import WITHIN_DESIGN, image_study

pytestmark = pytest.mark.django_db

# The aid arm learns from its explanations, the control arm does not (pre/post accuracy).
ACCURACY = {"ig/pre_test": 0.5, "ig/post_test": 0.95, "control/pre_test": 0.5, "control/post_test": 0.6}
PAIRED = {"columns": stats.LongColumns(condition="phase"), "condition": "post_test", "comparator": "pre_test"}


class PhaseOracle(DatabaseOracle):
    """The arm and the phase of a trial, so a simulated participant's accuracy can change from the
    pre-test to the post-test (``run_participant`` looks its accuracy up by this name)."""

    def trial(self, trial_public_id: str) -> tuple[str, int | None]:
        arm, expected = super().trial(trial_public_id)
        phase = Trial.objects.filter(public_id=trial_public_id).values_list("phase", flat=True).get()
        return f"{arm}/{phase}", expected


def within_study(prepare) -> Study:
    """A live within_pre_post image study (arms control and ig) with the within-arm hypotheses:
    H0 the gain of ig beats control's (between), H1-H4 ig improved from pre to post under each
    named test, H5 control improved (two-sided)."""
    study = image_study(arms=[{"name": "ig", "kind": "explanation", "method": "saliency"}])
    Study.objects.filter(pk=study.pk).update(config=WITHIN_DESIGN)
    study.refresh_from_db()
    with_hypothesis(study)  # H0: the gain, ig vs control
    ig, control = study.arms.get(name="ig"), study.arms.get(name="control")
    within = {"comparison": "arm_vs_chance", "outcome": "gain", "family": "within"}
    HypothesisFactory(study=study, arm=ig, label="H1", test="welch_t", **within)
    HypothesisFactory(study=study, arm=ig, label="H2", test="mann_whitney", **within)
    HypothesisFactory(study=study, arm=ig, label="H3", test="permutation", **within)
    HypothesisFactory(study=study, arm=ig, label="H4", test="welch_t", direction="equivalence",
                      equivalence_margin=0.5, **{**within, "family": "equivalence"})
    HypothesisFactory(study=study, arm=control, label="H5", test="welch_t", direction="two_sided", **within)
    study = prepare(study)
    assert study.state == Study.State.READY, study.preparation
    return study_launch(study=study, acknowledge_spotted_placebos=True)


def fill(study: Study, n: int) -> None:
    for seed in range(n):
        run_participant(transport=DjangoTransport(), study_public_id=str(study.public_id),
                        rng=np.random.default_rng(seed), accuracy=ACCURACY, oracle=PhaseOracle(study))


def export(client, study: Study, kind: str) -> pd.DataFrame:
    response = client.get(reverse(f"export-{kind}", args=[study.pk]))
    assert response.status_code == 200
    return pd.read_csv(io.StringIO(b"".join(response.streaming_content).decode()))


def pre_post(responses: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Each participant's pre-test and post-test accuracy, long (participant_id, phase, accuracy),
    computed from the exported responses as an analyst would."""
    rows = responses.loc[(responses["arm"] == arm) & (responses["task"] == "forward")
                         & responses["phase"].isin(["pre_test", "post_test"])]
    rows = rows.rename(columns={"participant": "participant_id"})
    return stats.participant_accuracy(rows.astype({"correct": "float64"}), phases=["pre_test", "post_test"])


def by_label(run) -> dict:
    return {h["label"]: h for h in run.results["hypotheses"]}


def test_a_within_pre_post_study_runs_the_paired_equivalent_of_each_named_test_and_reports_and_exports_it(
        prepare, staff_client):
    study = within_study(prepare)
    fill(study, 12)
    n = {arm: Participant.objects.filter(study=study, arm__name=arm, status="completed").count()
         for arm in ("ig", "control")}
    assert sum(n.values()) == 12 and min(n.values()) >= 2

    run = study_analyze(study=study, seed=0)

    assert run.kind == "confirmatory" and run.results["design"] == "within_pre_post"
    assert run.results["participants_in_several_arms"] == {}
    h = by_label(run)
    responses = export(staff_client, study, "responses")
    assert len(responses) == Response.objects.filter(trial__participant__study=study).count()
    ig = stats.paired_sample(pre_post(responses, "ig"), **PAIRED)
    control = stats.paired_sample(pre_post(responses, "control"), **PAIRED)
    assert ig.n == n["ig"] and control.n == n["control"]

    expected = {"H1": ("paired_t", stats.paired_t_test(ig, alternative="greater")),
                "H2": ("wilcoxon_signed_rank", stats.wilcoxon_signed_rank(ig, alternative="greater")),
                "H3": ("sign_flip_permutation",
                       stats.sign_flip_permutation_test(ig, alternative="greater", n_resamples=9999, seed=0)),
                "H5": ("paired_t", stats.paired_t_test(control, alternative="two-sided"))}
    for label, (test, direct) in expected.items():
        entry = h[label]
        assert entry["error"] is None, entry["error"]
        assert entry["contrast"]["kind"] == "within_participants"
        assert (entry["contrast"]["condition"], entry["contrast"]["comparator"]) == ("post_test", "pre_test")
        assert entry["paired"]["test"] == test and entry["paired"]["n_pairs"] == direct.n["participants"]
        assert "same participants are on both sides" in entry["paired"]["why"]
        assert entry["tests"]["difference"]["method"] == direct.method == entry["contrast"]["test_run"]
        assert entry["tests"]["difference"]["n"]["participants"] == direct.n["participants"]
        assert entry["p_value"] == pytest.approx(direct.p_value)
    assert h["H2"]["tests"]["difference"]["params"]["zero_method"] == "wilcox"
    assert h["H3"]["tests"]["difference"]["params"]["seed"] == 0
    # The paired t on post vs pre is the one-sample t of the gains against 0.
    gains = ig.differences
    assert h["H1"]["p_value"] == pytest.approx(stats.chance_level_test(gains, chance=0.0).p_value)
    assert h["H1"]["effect_sizes"]["mean_difference"]["estimate"] == pytest.approx(gains.mean())

    tost = stats.paired_tost(ig, margin=0.5, alpha=0.05)
    assert h["H4"]["paired"]["tost"] and h["H4"]["tests"]["equivalence"]["method"] == tost.method
    assert h["H4"]["p_value"] == pytest.approx(tost.p_value)
    assert h["H4"]["p_difference"] == pytest.approx(stats.paired_t_test(ig).p_value)

    # The gain of one arm against the other's stays a between-participants comparison of gains.
    assert h["H0"]["contrast"]["kind"] == "between_participants" and "paired" not in h["H0"]
    welch = stats.welch_t_test(gains, control.differences, alternative="greater")
    assert h["H0"]["tests"]["difference"]["method"] == welch.method
    assert h["H0"]["p_value"] == pytest.approx(welch.p_value)
    assert h["H0"]["descriptives"]["ig"]["n"] == n["ig"] and h["H0"]["descriptives"]["control"]["n"] == n["control"]

    participants = export(staff_client, study, "participants")
    assert len(participants) == 12
    exported_gains = participants.set_index("participant").loc[list(map(str, ig.participants)), "gain"]
    assert exported_gains.to_numpy() == pytest.approx(gains)
    hypotheses = export(staff_client, study, "hypotheses").set_index("label")
    assert hypotheses.loc["H1", "test_method"] == expected["H1"][1].method
    assert hypotheses.loc["H1", "n_arm"] == n["ig"]

    page = staff_client.get(reverse("report-study", kwargs={"pk": study.pk})).content.decode()
    assert "within-participant comparisons" in page
    assert page.count('class="paired-test"') == 5
    assert "ig: Post-test accuracy vs Pre-test accuracy, same participants" in page
    assert "its paired equivalent ran (Wilcoxon signed-rank test)" in page
    assert "paired TOST" in page
    download = staff_client.get(reverse("report-study-download", kwargs={"pk": study.pk}))
    assert download.status_code == 200 and "within-participant comparisons" in download.content.decode()


def force_into_two_arms(monkeypatch, participant: str, phase: str, arm: str) -> None:
    """The loaded trials say ``participant`` answered ``phase`` in ``arm``. The database cannot hold
    this (a participant has one arm), but data from elsewhere can: the service must notice."""
    real = analysis_service.trials_long_frame

    def trials_long_frame(**kwargs):
        frame = real(**kwargs)
        moved = (frame["participant"].astype(str) == participant) & (frame["phase"] == phase)
        frame.loc[moved, "arm"] = arm
        return frame

    monkeypatch.setattr(analysis_service, "trials_long_frame", trials_long_frame)


def test_a_participant_forced_into_two_arms_is_refused_with_the_reason_in_every_result_and_the_report(
        prepare, staff_client, monkeypatch):
    study = within_study(prepare)
    fill(study, 6)
    moved = str(Participant.objects.filter(study=study, arm__name="ig").values_list("public_id", flat=True)[0])
    force_into_two_arms(monkeypatch, moved, "post_test", "control")

    run = study_analyze(study=study, seed=0)

    assert run.results["participants_in_several_arms"] == {moved: ["control", "ig"]}
    for label, entry in by_label(run).items():
        assert entry["p_value"] is None and entry["p_adjusted"] is None, label
        assert f"{moved} in control and ig" in entry["error"], label
        assert "contradict the study's design" in entry["error"]
        assert entry["decision"]["verdict"] == "inconclusive"
    assert {s["status"] for s in run.results["secondary"]["H0"].values()} == {"not_run"}
    for measure in ("pre_test", "post_test"):
        for arm in ("control", "ig"):
            assert run.results["descriptives"][measure][arm]["status"] == "not_run"
            assert run.results["chance"][measure][arm]["status"] == "not_run"

    page = staff_client.get(reverse("report-study", kwargs={"pk": study.pk})).content.decode()
    assert "appear in more than one arm, which the design does not allow" in page
    assert f"{moved} (control, ig)" in page
    assert page.count("contradict the study&#x27;s design") >= 6


def test_arms_without_the_double_participant_are_still_analysed_and_a_missing_post_test_is_refused_by_name(
        monkeypatch):
    study = study_with_items(arms=("control", "explained", "placebo", "other"))
    arms = {a.name: a for a in study.arms.all()}
    within = {"comparison": "arm_vs_chance", "outcome": "gain", "direction": "two_sided"}
    HypothesisFactory(study=study, arm=arms["explained"], label="H1", outcome="gain")
    HypothesisFactory(study=study, arm=arms["control"], label="H2", **within)
    HypothesisFactory(study=study, arm=arms["placebo"], label="H3", test="mann_whitney", **within)
    HypothesisFactory(study=study, arm=arms["other"], label="H4", **within)
    study = launch(study)
    trials = stats.simulate_study(arm_accuracy={"control": 0.6, "explained": 0.7, "placebo": 0.6, "other": 0.6},
                                  n_per_arm=8, trials_per_phase=10, phases=("pre_test", "post_test"),
                                  pre_phase="pre_test", seed=3)
    frame = as_analysis_frame(trials, write_simulated_trials(study, trials))
    explained = str(frame.loc[frame["arm"] == "explained", "participant_id"].iloc[0])
    force_into_two_arms(monkeypatch, explained, "pre_test", "placebo")
    lacking = frame.loc[frame["arm"] == "other", "participant_id"].iloc[0]
    Response.objects.filter(trial__participant__public_id=lacking, trial__phase="post_test").delete()

    h = by_label(study_analyze(study=study, seed=0))

    for label in ("H1", "H3"):  # explained vs control, and placebo: the double participant's arms
        assert f"{explained} in explained and placebo" in h[label]["error"] and h[label]["p_value"] is None
    control = frame.loc[frame["arm"] == "control"]
    direct = stats.paired_t_test(stats.participant_accuracy(control, phases=["pre_test", "post_test"]), **PAIRED)
    assert h["H2"]["error"] is None and h["H2"]["paired"]["n_pairs"] == 8 == direct.n["participants"]
    assert h["H2"]["p_value"] == pytest.approx(direct.p_value)
    # The participant of "other" without a post-test is named, not dropped from the pairs.
    assert h["H4"]["p_value"] is None
    assert "post_test vs pre_test of the same participants of 'other' could not be tested" in h["H4"]["error"]
    assert f"participants without a value in condition 'post_test': {lacking}" in h["H4"]["error"]
