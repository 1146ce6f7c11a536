"""The staff report: deterministic figures, staff-only pages, hypothesis table, labels, download."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import uuid
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from studyapp import models as m
from studyapp.reports import plots
from studyapp.reports.admin_links import report_link
from studyapp.analysis.run_results import (ArmRef, Baselines, Decision, Describe, Effect, Family, FlowArm, FlowCounts,
                                           HypothesisResult, Observer, ParticipantFlow, RunResults, RunSettings,
                                           StatRecord)
from studyapp.reports.context import fmt_ci, report_context
from studyapp.selectors.reports import study_report_data
from tests.analysis_factories import launch, study_with_items
from tests.factories import ArmFactory, ParticipantFactory, StudyFactory

ARMS = [{"name": "explained", "kind": "explanation", "estimate": 0.78, "ci_low": 0.70, "ci_high": 0.85},
        {"name": "control", "kind": "control", "estimate": 0.61, "ci_low": 0.52, "ci_high": 0.70},
        {"name": "placebo", "kind": "explanation", "estimate": 0.52, "ci_low": 0.40, "ci_high": 0.64}]
PRE_POST = [{"name": a["name"], "kind": a["kind"], "pre": {"estimate": 0.55, "ci_low": 0.5, "ci_high": 0.6},
             "post": {"estimate": a["estimate"], "ci_low": a["ci_low"], "ci_high": a["ci_high"]}} for a in ARMS]
RATINGS = {"useful": {"control": {1: 2, 4: 5, 7: 1}, "explained": {"2": 3, "6": 4}}, "trust": {"control": {3: 3}}}
BASELINES = [{"name": "always the true label", "accuracy": 0.8}, {"name": "majority output", "accuracy": 0.5}]


def all_figures(arms=ARMS) -> list[str]:
    return [plots.accuracy_plot(arms, chance=0.5), plots.pre_post_plot(PRE_POST),
            plots.ratings_plot(RATINGS, ["control", "explained"]), plots.baselines_plot(arms, BASELINES)]


# ---------------------------------------------------------------- figures


def test_same_input_gives_byte_identical_svg():
    first, second = all_figures(), all_figures()
    assert all(svg.startswith("<svg") for svg in first)
    assert first == second


def test_different_input_gives_different_svg():
    changed = [dict(a, estimate=a["estimate"] - 0.1) for a in ARMS]
    assert plots.accuracy_plot(ARMS) != plots.accuracy_plot(changed)


def test_svg_carries_no_date_and_no_xml_prolog_so_it_inlines_in_html():
    for svg in all_figures():
        assert "<dc:date>" not in svg
        assert "<?xml" not in svg and "<!DOCTYPE" not in svg


def test_figures_inlined_together_have_unique_ids_and_resolvable_references():
    figures = all_figures()
    ids = [i for svg in figures for i in re.findall(r'\bid="([^"]+)"', svg)]
    assert len(ids) == len(set(ids)) > 0
    for svg in figures:
        for ref in re.findall(r'(?:href="#|url\(#)([^")]+)', svg):
            assert ref in ids


def test_accuracy_plot_puts_control_first_and_escapes_arm_names():
    svg = plots.accuracy_plot([*ARMS, {"name": "<b>&", "kind": "explanation", "estimate": 0.5}])
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    arm_labels = [t.strip() for t in labels if t.strip() in ("control", "explained", "placebo", "&lt;b&gt;&amp;")]
    assert arm_labels == ["control", "explained", "placebo", "&lt;b&gt;&amp;"]
    assert "<b>" not in svg


def test_an_arm_name_with_dollar_signs_is_drawn_literally_not_as_mathtext():
    # "$x^2$" would be typeset (and "$\\foo$" would raise) if matplotlib parsed mathtext.
    names = ["cost $5 or $6", "$x^2$", "$\\notacommand$"]
    arms = [{"name": n, "kind": "explanation", "estimate": 0.5, "ci_low": 0.4, "ci_high": 0.6} for n in names]
    for svg in (plots.accuracy_plot(arms), plots.baselines_plot(arms, BASELINES),
                plots.ratings_plot({"$q$": {n: {1: 1} for n in names}}, names)):
        texts = [t.strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
        assert any("$x^2$" in t for t in texts) and any("$\\notacommand$" in t for t in texts)


def test_empty_input_draws_nothing():
    assert plots.accuracy_plot([]) == ""
    assert plots.pre_post_plot([]) == ""
    assert plots.ratings_plot({}) == ""
    assert plots.baselines_plot([], []) == ""


def test_plots_use_no_pyplot_global_state():
    source = Path(plots.__file__).read_text()
    imported = {alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module for node in ast.walk(ast.parse(source))
                                            if isinstance(node, ast.ImportFrom) and node.module}
    assert not any("pyplot" in name for name in imported)
    # In a fresh interpreter, drawing every figure never loads pyplot (so no figure registry exists).
    code = ("import sys\n"
            "from studyapp.reports import plots\n"
            f"arms, pre_post, ratings, baselines = {ARMS!r}, {PRE_POST!r}, {RATINGS!r}, {BASELINES!r}\n"
            "assert all([plots.accuracy_plot(arms), plots.pre_post_plot(pre_post),\n"
            "            plots.ratings_plot(ratings), plots.baselines_plot(arms, baselines)])\n"
            "print('pyplot loaded' if 'matplotlib.pyplot' in sys.modules else 'no pyplot')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "no pyplot"


def test_a_one_sided_interval_shows_its_open_end():
    assert fmt_ci(0.05, None) == "[0.050, +\u221e)"
    assert fmt_ci(None, None) == "\u2014"


# ---------------------------------------------------------------- data


def results_for(arms=("control", "explained", "placebo"), *, kind="confirmatory") -> RunResults:
    """An analysis run's results as study_analyze writes them (trimmed to what the report reads)."""
    def hypothesis(label, arm, *, p, p_adj, verdict, reason, direction="greater", estimate=0.15, low=0.05):
        effect = Effect(name="mean_difference", estimate=estimate, ci_low=low, ci_high=None, confidence_level=0.95,
                        method="Welch t interval (greater)")
        return HypothesisResult(
            label=label, statement=f"{arm} beats control", comparison="arm_vs_control", arm=arm, comparator="control",
            outcome="test_accuracy", likert_item="", direction=direction, equivalence_margin=None, test="welch_t",
            alpha=0.05, family="primary", correction="holm", error=None, p_value=p, p_equivalence=None,
            p_difference=None, tests={"difference": StatRecord(method="Welch two-sample t-test", p_value=p,
                                                               effect=effect)},
            effect_sizes={"mean_difference": effect}, p_adjusted=p_adj,
            decision=Decision(verdict=verdict, reason=reason, alpha=0.05), kind=kind)

    def describe(mean):
        return Describe(n=12, mean=mean, sd=0.15)

    return RunResults(
        kind=kind, label="CONFIRMATORY: the pre-registered plan, frozen at launch" if kind == "confirmatory"
        else "EXPLORATORY: not part of the pre-registered plan",
        exploratory_reasons=() if kind == "confirmatory" else ("the exclusion rules differ from the frozen ones",),
        seed=7, arms=tuple(ArmRef(name=a, kind="control" if i == 0 else "explanation") for i, a in enumerate(arms)),
        settings=RunSettings(num_classes=2),
        descriptives={"pre_test": {a: describe(0.55) for a in arms},
                      "post_test": {a: describe(0.6 + 0.05 * i) for i, a in enumerate(arms)},
                      "test": {a: describe(0.6 + 0.05 * i) for i, a in enumerate(arms)}},
        hypotheses=(
            hypothesis("H1", arms[1], p=0.0102, p_adj=0.0204, verdict="supported",
                       reason="adjusted p <= 0.05 in the pre-registered direction"),
            hypothesis("H2", arms[2], p=0.3111, p_adj=0.3111, verdict="inconclusive",
                       reason="adjusted p > 0.05 and equivalence not shown", estimate=0.01, low=-0.08),
        ),
        families={"primary": Family(correction="holm", labels=("H1", "H2"))},
        participant_flow=ParticipantFlow(
            arms={a: FlowArm(enrolled=14, consented=13, completed=12, not_completed=2, excluded=1,
                             excluded_by_rule={"max_failed_attention_checks": 1}, analysed=11,
                             by_status={"completed": 12, "abandoned": 2}) for a in arms},
            totals=FlowCounts(enrolled=42, consented=39, completed=36, not_completed=6, excluded=3, analysed=33),
            rule_descriptions={"max_failed_attention_checks": "more failed attention checks than allowed"},
            attrition_test=StatRecord(method="Fisher exact test, RxC, Monte Carlo p-value", statistic=0.2,
                                      p_value=0.8123),
            exclusion_test=StatRecord(status="not_available", reason="the exclusion test needs two arms"),
        ),
        baselines={"test": Baselines(
            n_items=20,
            true_label_observer=Observer(accuracy=0.8, description="always the true label"),
            majority_class_observer=Observer(accuracy=0.5, majority_class=0),
            explanation_only_observer={
                arms[0]: Observer(status="not_available", reason="the control arm shows no explanation"),
                arms[1]: Observer(accuracy=0.9, method="logistic regression")})},
        secondary={"H1": {"gee": StatRecord(method="GEE logistic", p_value=0.004,
                                            effect=Effect(name="odds_ratio", estimate=2.1, ci_low=1.2, ci_high=3.7)),
                          "mixed_logistic": StatRecord(status="not_run", reason="150 trials, fewer than 200")}},
        exclusions={},
        software={"python": "3.11", "scipy": "1.17.1", "statsmodels": "0.15.0"},
    )


def test_the_report_fixture_is_the_typed_results_structure_and_survives_storage():
    results = results_for()
    assert isinstance(results, RunResults) and isinstance(results.hypotheses[0], HypothesisResult)
    assert RunResults.from_dict(json.loads(json.dumps(results.to_dict()))) == results


@pytest.fixture
def launched_study() -> m.Study:
    return launch(study_with_items(arms=("control", "explained", "placebo")))


def add_run(study, *, kind="confirmatory", results: RunResults | dict | None = None) -> m.AnalysisRun:
    """Store a run as the analysis service does (a dict: a run stored by an older version)."""
    results = results_for(kind=kind) if results is None else results
    stored = results.to_dict() if isinstance(results, RunResults) else results
    number = m.AnalysisRun.objects.filter(study=study, kind=kind).count() + 1  # as the analysis service numbers
    return m.AnalysisRun.objects.create(study=study, kind=kind, number=number, plan_sha256=study.frozen_sha256, seed=7,
                                        results=stored, software=stored.get("software", {}))


def report_url(study) -> str:
    return reverse("report-study", kwargs={"pk": study.pk})


class _Cells(HTMLParser):
    """Text of the cells of every <tr class="hypothesis"> inside sections, by section class."""

    def __init__(self):
        super().__init__()
        self.section, self.rows, self.row, self.cell = None, [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "run" in (attrs.get("class") or "").split():
            self.section = attrs["class"]
        elif tag == "tr" and attrs.get("class") == "hypothesis":
            self.row = {"section": self.section, "cells": []}
        elif tag == "td" and self.row is not None:
            self.cell = []
        elif tag == "br" and self.cell is not None:
            self.cell.append(" ")

    def handle_endtag(self, tag):
        if tag == "td" and self.row is not None and self.cell is not None:
            self.row["cells"].append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.rows.append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def hypothesis_rows(html: str) -> list[dict]:
    parser = _Cells()
    parser.feed(html)
    return parser.rows


# ---------------------------------------------------------------- access


@pytest.mark.django_db
def test_anonymous_user_is_sent_to_the_login_page_from_every_report_url(client, launched_study):
    for url in (report_url(launched_study), reverse("report-study-download", kwargs={"pk": launched_study.pk}),
                reverse("report-planner")):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    response = client.post(reverse("report-study-analyze", kwargs={"pk": launched_study.pk}), {"seed": 0})
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert not m.AnalysisRun.objects.exists()


@pytest.mark.django_db
def test_a_logged_in_non_staff_user_is_refused(client, django_user_model, launched_study):
    add_run(launched_study)
    client.force_login(django_user_model.objects.create_user(username="participant", password="pw"))
    response = client.get(report_url(launched_study))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert b"H1" not in response.content
    download = client.get(reverse("report-study-download", kwargs={"pk": launched_study.pk}))
    assert download.status_code == 302 and "Content-Disposition" not in download
    client.post(reverse("report-study-analyze", kwargs={"pk": launched_study.pk}), {"seed": 0})
    assert m.AnalysisRun.objects.count() == 1


@pytest.mark.django_db
def test_report_of_an_unknown_study_is_404(staff_client):
    assert staff_client.get(reverse("report-study", kwargs={"pk": 999999})).status_code == 404


# ---------------------------------------------------------------- the report


@pytest.mark.django_db
def test_report_shows_every_hypothesis_with_p_values_effect_and_decision(staff_client, launched_study):
    run = add_run(launched_study)
    response = staff_client.get(report_url(launched_study))
    assert response.status_code == 200
    html = response.content.decode()
    rows = hypothesis_rows(html)
    assert [r["cells"][0].split()[0] for r in rows] == ["H1", "H2"]
    h1, h2 = (r["cells"] for r in rows)
    assert h1[1] == "explained vs control" and h2[1] == "placebo vs control"
    assert h1[5] == "0.0102" and h1[7] == "0.0204"  # raw and Holm-adjusted p
    assert h1[9] == "0.150" and h1[10] == "95% [0.050, +\u221e)"  # effect and its one-sided CI
    assert h1[11].startswith("Supported") and h2[11].startswith("Inconclusive")
    assert h1[12] == h2[12] == "Confirmatory"
    assert "Confirmatory analysis, look 1 of 1" in html and f"Run #{run.pk}," in html
    assert "CONFIRMATORY: the pre-registered plan" in html
    assert html.count("<svg") >= 3  # accuracy, pre/post, baselines (+ admin icons)


@pytest.mark.django_db
def test_a_figure_that_fails_to_draw_leaves_the_rest_of_the_report_and_its_download(staff_client, launched_study,
                                                                                   monkeypatch):
    add_run(launched_study)

    def broken(*args, **kwargs):
        raise ValueError("a matplotlib failure")

    monkeypatch.setattr(plots, "pre_post_plot", broken)
    for url in (report_url(launched_study), reverse("report-study-download", kwargs={"pk": launched_study.pk})):
        response = staff_client.get(url)
        assert response.status_code == 200
        html = response.content.decode()
        assert "This figure could not be drawn" in html and "H1" in html
        assert html.count("<svg") >= 2  # the other figures are still there


@pytest.mark.django_db
def test_report_shows_flow_with_attrition_test_and_not_computed_sections(staff_client, launched_study):
    add_run(launched_study)
    html = staff_client.get(report_url(launched_study)).content.decode()
    assert "Fisher exact test, RxC, Monte Carlo p-value, p = 0.8123" in html
    assert "not computed: the exclusion test needs two arms" in html
    assert "not computed: 150 trials, fewer than 200" in html
    assert "Explanation-only classifier (explained)" in html


@pytest.mark.django_db
def test_a_run_without_results_shows_not_computed_instead_of_failing(staff_client, launched_study):
    add_run(launched_study, results={})
    response = staff_client.get(report_url(launched_study))
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("not computed") >= 5
    assert hypothesis_rows(html) == []


@pytest.mark.django_db
def test_a_study_without_runs_says_no_confirmatory_analysis_has_been_run(staff_client):
    study = StudyFactory()
    ArmFactory(study=study, name="control")
    html = staff_client.get(report_url(study)).content.decode()
    assert "no confirmatory analysis has been run" in html
    assert "never launched" in html


@pytest.mark.django_db
def test_exploratory_runs_are_labelled_exploratory_wherever_they_appear(staff_client, launched_study):
    add_run(launched_study)
    exploratory = add_run(launched_study, kind="exploratory")
    html = staff_client.get(report_url(launched_study)).content.decode()
    rows = hypothesis_rows(html)
    confirmatory_rows = [r for r in rows if "run-confirmatory" in r["section"]]
    exploratory_rows = [r for r in rows if "run-exploratory" in r["section"]]
    assert len(confirmatory_rows) == len(exploratory_rows) == 2
    assert all(r["cells"][-1] == "Exploratory" for r in exploratory_rows)
    assert all(r["cells"][-1] == "Confirmatory" for r in confirmatory_rows)
    section = html[html.index(f'id="run-{exploratory.pk}"'):]
    section = section[:section.index("</section>")]
    assert "Exploratory analysis 1" in section and f"Run #{exploratory.pk}," in section
    assert "EXPLORATORY: not part of the pre-registered plan" in section
    assert "the exclusion rules differ from the frozen ones" in section
    # Every heading, table caption and figure caption of the run says so.
    headings = re.findall(r"<h3>(.*?)</h3>", section)
    captions = re.findall(r"<caption>(.*?)</caption>", section, re.S)
    figcaptions = re.findall(r"<figcaption>(.*?)</figcaption>", section, re.S)
    assert headings and captions and figcaptions
    assert all(h.startswith("Exploratory: ") for h in headings)
    assert all(c.strip().startswith("Exploratory") for c in captions + figcaptions)


@pytest.mark.django_db
def test_a_confirmatory_row_inside_an_exploratory_run_is_still_labelled_exploratory(staff_client, launched_study):
    results = results_for(kind="exploratory")
    # Never trust a row over its run.
    results = replace(results, hypotheses=tuple(replace(h, kind="confirmatory") for h in results.hypotheses))
    add_run(launched_study, kind="exploratory", results=results)
    rows = hypothesis_rows(staff_client.get(report_url(launched_study)).content.decode())
    assert [r["cells"][-1] for r in rows] == ["Exploratory", "Exploratory"]


@pytest.mark.django_db
def test_the_latest_confirmatory_run_is_shown_as_the_last_look_and_every_look_is_listed(staff_client, launched_study):
    add_run(launched_study)
    latest = add_run(launched_study)
    html = staff_client.get(report_url(launched_study)).content.decode()
    assert "Confirmatory analysis, look 2 of 2" in html and f"Run #{latest.pk}," in html
    assert "This plan was analysed 2 times: there was more than one look at the data." in html


@pytest.mark.django_db
def test_provenance_lists_hashes_launch_time_software_and_dated_deviations(staff_client, launched_study):
    add_run(launched_study)
    m.PreregistrationDeviation.objects.create(study=launched_study, hypothesis_label="H2", field="planned_n_per_arm",
                                              before=30, after=40, reason="Slow recruitment on Prolific.")
    html = staff_client.get(report_url(launched_study)).content.decode()
    deviation = m.PreregistrationDeviation.objects.get()
    assert launched_study.frozen_sha256 in html
    assert launched_study.model.weights_sha256 in html
    assert launched_study.dataset.content_sha256 in html
    assert launched_study.launched_at.strftime("%Y-%m-%d %H:%M:%S") in html
    assert "statsmodels 0.15.0" in html
    assert "Slow recruitment on Prolific." in html
    assert deviation.recorded_at.strftime("%Y-%m-%d %H:%M") in html


@pytest.mark.django_db
def test_sanity_checks_show_not_computed_until_preparation_records_them(staff_client, launched_study):
    html = staff_client.get(report_url(launched_study)).content.decode()
    sanity = html[html.index('class="sanity"'):]
    assert "not computed" in sanity[:sanity.index("</section>")]
    m.Study.objects.filter(pk=launched_study.pk).update(preparation={"sanity": {
        "explained": {"method": "saliency", "verdict": "not_model_sensitive", "n_stimuli": 32,
                      "notes": ["Only a few stimuli."]}}})
    html = staff_client.get(report_url(launched_study)).content.decode()
    assert "not model sensitive" in html and "Only a few stimuli." in html


@pytest.mark.django_db
def test_ratings_figure_counts_answers_of_analysed_participants(launched_study):
    arms = {a.name: a for a in launched_study.arms.all()}
    kept = ParticipantFactory(study=launched_study, arm=arms["control"], status="completed",
                              completed_at="2025-01-06T10:00:00Z")
    excluded = ParticipantFactory(study=launched_study, arm=arms["explained"], status="completed",
                                  completed_at="2025-01-06T10:00:00Z")
    for participant, value in ((kept, 6), (excluded, 2)):
        m.QuestionnaireAnswer.objects.create(participant=participant, item="useful", value=value,
                                             idempotency_key=uuid.uuid4())
    results = replace(results_for(), exclusions={str(excluded.public_id): ["max_failed_attention_checks"]})
    add_run(launched_study, results=results)
    section = report_context(study_report_data(study=launched_study))["confirmatory"]
    assert section["ratings_items"] == ["useful"]
    assert "control (n=1)" in section["figures"]["ratings"]
    assert "explained (n=" not in section["figures"]["ratings"]


@pytest.mark.django_db
def test_the_report_is_formatted_from_the_selected_runs_without_touching_the_database(launched_study,
                                                                                    django_assert_num_queries):
    add_run(launched_study)
    add_run(launched_study, kind="exploratory")
    report = study_report_data(study=launched_study)
    with django_assert_num_queries(0):
        context = report_context(report)
    assert [h["label"] for h in context["confirmatory"]["hypotheses"]] == ["H1", "H2"]
    assert context["exploratory_runs"][0]["exploratory"] and context["looks"][0]["verdicts"].startswith("H1: ")


@pytest.mark.django_db
def test_download_is_one_self_contained_html_file_named_after_the_study(staff_client, launched_study):
    add_run(launched_study)
    add_run(launched_study, kind="exploratory")
    response = staff_client.get(reverse("report-study-download", kwargs={"pk": launched_study.pk}))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert response["Content-Disposition"] == f'attachment; filename="{launched_study.slug}_report.html"'
    html = response.content.decode()
    assert html.lstrip().startswith("<!DOCTYPE html>")
    assert "<style>" in html and html.count("<svg") >= 6
    lowered = html.lower()
    for forbidden in ('src="http', "src='http", "<script", "<link", 'href="http', "@import", "url(http"):
        assert forbidden not in lowered, forbidden
    # Inline SVG only references ids inside the same file.
    ids = set(re.findall(r'\bid="([^"]+)"', html))
    assert all(ref in ids for ref in re.findall(r'(?:href="#|url\(#)([^")]+)', html))
    rows = hypothesis_rows(html)
    assert [r["cells"][-1] for r in rows] == ["Confirmatory", "Confirmatory", "Exploratory", "Exploratory"]


@pytest.mark.django_db
def test_download_of_the_same_runs_is_identical_twice(staff_client, launched_study):
    add_run(launched_study)
    url = reverse("report-study-download", kwargs={"pk": launched_study.pk})
    assert staff_client.get(url).content == staff_client.get(url).content


# ---------------------------------------------------------------- "Run analysis"


@pytest.mark.django_db
def test_run_analysis_needs_a_post_with_a_csrf_token(django_user_model, launched_study):
    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.create_user(username="analyst", password="pw", is_staff=True,
                                                             is_superuser=True))
    url = reverse("report-study-analyze", kwargs={"pk": launched_study.pk})
    assert client.get(url).status_code == 405
    assert client.post(url, {"seed": 0}).status_code == 403
    assert not m.AnalysisRun.objects.exists()
    page = client.get(report_url(launched_study)).content.decode()
    assert 'name="csrfmiddlewaretoken"' in page and f'action="{url}"' in page


@pytest.mark.django_db
def test_run_analysis_on_a_study_never_launched_explains_why_and_stores_nothing(staff_client):
    study = study_with_items()
    response = staff_client.post(reverse("report-study-analyze", kwargs={"pk": study.pk}), {"seed": 0}, follow=True)
    assert response.status_code == 200
    assert "The analysis was not run" in response.content.decode()
    assert "never launched" in response.content.decode()
    assert not m.AnalysisRun.objects.exists()


@pytest.mark.django_db(transaction=True)  # real commits: embedded mode runs the job on commit, in the request
def test_run_analysis_stores_a_confirmatory_run_and_the_report_shows_its_decisions(staff_client):
    from studyapp.analysis import simulate_study
    from tests.analysis_factories import write_simulated_trials
    from tests.factories import HypothesisFactory

    # Hypotheses must exist before launch to be frozen: build a fresh study for this test.
    study = study_with_items(arms=("control", "explained"))
    HypothesisFactory(study=study, arm=study.arms.get(name="explained"), label="H1", outcome="test_accuracy")
    study = launch(study)
    trials = simulate_study(arm_accuracy={"control": 0.6, "explained": 0.8}, n_per_arm=8, trials_per_phase=10,
                            n_items=20, phases=("test",), pre_phase=None, seed=1)
    write_simulated_trials(study, trials)
    response = staff_client.post(reverse("report-study-analyze", kwargs={"pk": study.pk}), {"seed": 5})
    run = m.AnalysisRun.objects.get(study=study)
    assert m.AnalysisJob.objects.get(study=study).run == run
    assert response.status_code == 302 and response["Location"].endswith(f"#run-{run.pk}")
    assert run.kind == "confirmatory" and run.seed == 5
    html = staff_client.get(report_url(study)).content.decode()
    rows = hypothesis_rows(html)
    stored = {h.label: h.decision.verdict for h in RunResults.from_dict(run.results).hypotheses}
    assert [r["cells"][0].split()[0] for r in rows] == list(stored) == ["H1"]
    assert set(run.results) == set(results_for().to_dict())  # the fixture writes what the analysis writes
    verdict_text = {"supported": "Supported", "not_supported": "Not supported", "equivalent": "Equivalent",
                    "inconclusive": "Inconclusive"}[stored["H1"]]
    assert rows[0]["cells"][11].startswith(verdict_text)


# ---------------------------------------------------------------- admin link


@pytest.mark.django_db
def test_report_link_is_an_escaped_anchor_to_the_report_page():
    study = StudyFactory(title="<script>x</script>")
    link = report_link(study)
    assert link == f'<a href="{reverse("report-study", kwargs={"pk": study.pk})}">Report</a>'
    assert "<script>" not in link


@pytest.mark.django_db(transaction=True)
def test_pilot_analysis_of_a_study_not_launched_is_stored_and_shown_as_exploratory(staff_client):
    study = study_with_items()
    page = staff_client.get(report_url(study)).content.decode()
    assert "Run exploratory analysis (pilot data)" in page and ">Run analysis<" not in page
    response = staff_client.post(reverse("report-study-analyze", kwargs={"pk": study.pk}),
                                 {"seed": 2, "mode": "pilot", "note": "first pilot"})
    run = m.AnalysisRun.objects.get(study=study)
    assert response.status_code == 302
    assert run.kind == "exploratory" and RunResults.from_dict(run.results).spec.note == "first pilot"
    html = staff_client.get(report_url(study)).content.decode()
    assert "Exploratory analysis 1" in html and f"Run #{run.pk}," in html and "Note: first pilot" in html
    assert "no confirmatory analysis has been run" in html


def test_the_report_links_the_plan_the_monitor_and_every_export(staff_client):
    from tests.export_factories import exported_study

    data = exported_study(with_run=True)
    page = staff_client.get(reverse("report-study", args=[data.study.pk])).content.decode()
    links = page.split('id="control-links"')[1].split("</p>")[0]
    for name in ("responses.csv", "participants.csv", "hypotheses.csv", "items.csv", "codebook.csv", "manifest.json"):
        assert f">{name}</a>" in links
    assert "Live monitor" in links and "The plan (frozen)" in links


def test_the_report_shows_preparation_progress_while_a_study_is_being_prepared(staff_client):
    from studyapp.models import Study
    from tests.factories import study_with_arms

    from studyapp.services.preparation import preparation_plan

    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(state="preparing")
    preparation_plan(study=study)
    page = staff_client.get(reverse("report-study", args=[study.pk])).content.decode()
    assert "Preparing: 0 of 2 units done" in page and "Model outputs" in page and "staff/preparation.js" in page
