"""Forms of the report pages. Error messages are written for a researcher, not a programmer."""
from __future__ import annotations

import math
import os
import re

from django import forms


ALTERNATIVES = [
    ("two-sided", "Two-sided (a difference in either direction)"),
    ("greater", "One-sided: treatment better than control"),
    ("less", "One-sided: treatment worse than control"),
]
FAMILY_CORRECTIONS = [
    ("holm", "Holm (plan with alpha / number of comparisons)"),
    ("bonferroni", "Bonferroni (alpha / number of comparisons)"),
    ("none", "No correction (a single pre-registered comparison)"),
]
CORRECTION_LABELS = {
    "holm": "Holm", "bonferroni": "Bonferroni", "hochberg": "Hochberg", "hommel": "Hommel",
    "bh": "Benjamini-Hochberg (FDR, not family-wise)", "by": "Benjamini-Yekutieli (FDR, not family-wise)",
}

# Simulation cost on the reference machine: a fixed cost per simulated study (the analysis and
# the correction) plus a cost per simulated trial. Used to refuse requests that would keep a web
# request busy for more than SIMULATION_BUDGET_SECONDS; calibrate() itself cannot be interrupted.
SIMULATION_BUDGET_SECONDS = 4.0
SECONDS_PER_STUDY = 0.025
SECONDS_PER_TRIAL = 2.5e-7
MAX_SIMULATED_STUDIES = 400
# A worker process (calibrate's workers > 1, spawned) first imports pandas, scipy and statsmodels:
# 2.1-2.4 s each on the reference machine (2 cores, shared), paid once per request before any study
# runs. So more workers only pay off on a server with many cores or for a long simulation.
WORKER_START_SECONDS = 2.5
CONFIDENCE_LEVELS = (0.5, 0.999)


def max_workers() -> int:
    """The most worker processes a simulation may start: the server's CPU count."""
    return os.cpu_count() or 1


class RunAnalysisForm(forms.Form):
    seed = forms.IntegerField(min_value=0, max_value=2**32 - 1, initial=0,
                              help_text="Seeds permutation tests, bootstrap and Monte Carlo p-values; stored with "
                                        "the run.")
    note = forms.CharField(required=False, max_length=500, label="Why (exploratory runs)",
                           widget=forms.TextInput(attrs={"size": 40}))
    # Which analysis: the frozen plan, pilot data of a study not launched, or the amended plan.
    mode = forms.ChoiceField(choices=[("plan", "plan"), ("pilot", "pilot"), ("amended", "amended")],
                             required=False)

    def spec(self) -> dict | None:
        """The exploratory request for study_analyze, or None for the frozen (confirmatory) plan."""
        mode = self.cleaned_data.get("mode") or "plan"
        if mode == "plan":
            return None
        note = self.cleaned_data.get("note") or {
            "pilot": "pilot analysis from the report page (the study is not launched)",
            "amended": "the plan as amended by the recorded deviations"}[mode]
        return {"note": note, **({"use_amended_plan": True} if mode == "amended" else {})}


def _open_unit(value: float | None, what: str) -> list[str]:
    if value is not None and not 0 < value < 1:
        hint = " Enter a proportion such as 0.60, not a percentage." if value > 1 else ""
        return [f"{what} must lie strictly between 0 and 1 (you entered {value:g}).{hint}"]
    return []


class _PlanningFields(forms.Form):
    alpha = forms.FloatField(initial=0.05, label="Alpha (family-wise false-positive rate)")
    power = forms.FloatField(initial=0.80, label="Power", help_text="Probability of detecting the effect if it is "
                                                                     "real, e.g. 0.80 or 0.90.")

    def _check_alpha_power(self, cleaned: dict) -> None:
        alpha, power = cleaned.get("alpha"), cleaned.get("power")
        for message in _open_unit(alpha, "Alpha"):
            self.add_error("alpha", message)
        for message in _open_unit(power, "Power"):
            self.add_error("power", message)
        if alpha is not None and power is not None and 0 < alpha < 1 and 0 < power < 1 and power <= alpha:
            self.add_error("power", f"Power ({power:g}) must be larger than alpha ({alpha:g}): even with no real "
                                    "effect a test rejects with probability alpha, so no sample size is needed "
                                    "for that power and none would be meaningful.")


class SampleSizeForm(_PlanningFields):
    design = forms.ChoiceField(
        choices=[("accuracy", "Participant accuracy over k trials (the usual outcome here)"),
                 ("proportions", "Two proportions (one yes/no answer per participant)"),
                 ("means", "Two means (standardized effect size, Cohen's d)")],
        initial="proportions", widget=forms.RadioSelect)
    p_control = forms.FloatField(required=False, label="Expected proportion (accuracy) in the control arm",
                                 help_text="e.g. 0.50")
    p_treatment = forms.FloatField(required=False, label="Expected proportion (accuracy) in the treatment arm",
                                   help_text="e.g. 0.75")
    trials_per_participant = forms.IntegerField(
        required=False, label="Trials per participant (k)", help_text="Accuracy design: the trials each "
        "participant's accuracy is computed from, e.g. 20.")
    between_sd = forms.FloatField(
        required=False, label="SD of participants' true accuracy", initial=0.1,
        help_text="Accuracy design: how much people differ beyond trial-to-trial chance, e.g. 0.10 (from a pilot: "
                  "the SD of participant accuracies, which also contains chance over k trials, is an upper bound).")
    effect_size = forms.FloatField(required=False, label="Effect size d",
                                   help_text="Difference in means divided by the SD of participants' scores; "
                                             "for accuracy use the SD of participant accuracies.")
    ratio = forms.FloatField(initial=1.0, label="Allocation ratio (treatment / control)",
                             help_text="1 = equal arms; 2 = twice as many in each treatment arm as in control.")
    alternative = forms.ChoiceField(choices=ALTERNATIVES, initial="two-sided")
    n_arms = forms.IntegerField(initial=2, label="Number of arms (including control)")
    n_comparisons = forms.IntegerField(required=False, label="Comparisons in the correction family",
                                       help_text="Blank = every treatment arm against control (arms - 1).")
    correction = forms.ChoiceField(choices=FAMILY_CORRECTIONS, initial="holm")

    def clean(self):
        cleaned = super().clean()
        self._check_alpha_power(cleaned)
        ratio, n_arms, m = cleaned.get("ratio"), cleaned.get("n_arms"), cleaned.get("n_comparisons")
        if ratio is not None and not (ratio > 0 and math.isfinite(ratio)):
            self.add_error("ratio", "The allocation ratio must be a positive number (1 for equal arms).")
        if n_arms is not None and not 2 <= n_arms <= 50:
            self.add_error("n_arms", "A comparison needs at least 2 arms (a control and one treatment); at most 50.")
        if m is not None and not 1 <= m <= 1000:
            self.add_error("n_comparisons", "The correction family must contain at least one comparison.")
        if cleaned.get("design") in ("proportions", "accuracy"):
            self._check_proportions(cleaned)
        if cleaned.get("design") == "accuracy":
            self._check_accuracy(cleaned)
        elif cleaned.get("design") == "means":
            self._check_means(cleaned)
        return cleaned

    def _direction_problem(self, effect: float, alternative: str | None, description: str) -> str | None:
        if alternative == "greater" and effect < 0:
            return (f"{description}, but the alternative is 'treatment better than control'. Swap the values or "
                    "choose the other direction (or two-sided).")
        if alternative == "less" and effect > 0:
            return (f"{description}, but the alternative is 'treatment worse than control'. Swap the values or "
                    "choose the other direction (or two-sided).")
        return None

    def _check_proportions(self, cleaned: dict) -> None:
        p1, p2 = cleaned.get("p_control"), cleaned.get("p_treatment")
        for name, value, what in (("p_control", p1, "The control arm's proportion"),
                                  ("p_treatment", p2, "The treatment arm's proportion")):
            if value is None and name not in self.errors:
                self.add_error(name, f"{what} is needed for a design with two proportions.")
            for message in _open_unit(value, what):
                self.add_error(name, message)
        if p1 is None or p2 is None or "p_control" in self.errors or "p_treatment" in self.errors:
            return
        if p1 == p2:
            self.add_error("p_treatment", "The two proportions are equal: there is no difference to detect, so no "
                                          "number of participants gives the requested power.")
            return
        direction = "higher" if p2 > p1 else "lower"
        problem = self._direction_problem(p2 - p1, cleaned.get("alternative"),
                                          f"The treatment proportion ({p2:g}) is {direction} than control ({p1:g})")
        if problem:
            self.add_error("alternative", problem)

    def _check_accuracy(self, cleaned: dict) -> None:
        k, sd = cleaned.get("trials_per_participant"), cleaned.get("between_sd")
        if k is None and "trials_per_participant" not in self.errors:
            self.add_error("trials_per_participant", "The number of trials per participant is needed for the "
                                                     "accuracy design.")
        elif k is not None and not 1 <= k <= 10_000:
            self.add_error("trials_per_participant", "Trials per participant must be between 1 and 10,000.")
        if sd is None and "between_sd" not in self.errors:
            self.add_error("between_sd", "The SD of participants' true accuracy is needed (0 if everyone is alike).")
        elif sd is not None and not (0 <= sd < 0.5 and math.isfinite(sd)):
            self.add_error("between_sd", "An SD of accuracy lies between 0 and 0.5 (accuracy itself is between 0 "
                                         "and 1); 0.05 to 0.15 is typical.")

    def _check_means(self, cleaned: dict) -> None:
        d = cleaned.get("effect_size")
        if d is None:
            if "effect_size" not in self.errors:
                self.add_error("effect_size", "An effect size d is needed for a design with two means.")
            return
        if d == 0 or not math.isfinite(d):
            self.add_error("effect_size", "An effect size of 0 means no difference: no number of participants "
                                          "can detect it. Enter the smallest difference worth detecting.")
            return
        if abs(d) > 5:
            self.add_error("effect_size", f"An effect size of {d:g} standard deviations is implausibly large; "
                                          "d is usually between 0.2 (small) and 0.8 (large).")
            return
        problem = self._direction_problem(d, cleaned.get("alternative"), f"The effect size ({d:g}) is "
                                          f"{'positive' if d > 0 else 'negative'}")
        if problem:
            self.add_error("alternative", problem)


_ARM_TOKEN = re.compile(r"^\s*(?:(?P<name>[^:=]+?)\s*[:=]\s*)?(?P<value>[-+0-9.eE]+)\s*$")


class SimulationForm(_PlanningFields):
    control_accuracy = forms.FloatField(initial=0.60, label="True accuracy of the control arm")
    arm_accuracies = forms.CharField(
        initial="explanation: 0.70", label="True accuracy of the other arms", widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One arm per line or comma-separated, as 'name: accuracy' or just the accuracy "
                  "(e.g. 'integrated gradients: 0.70, placebo: 0.60').")
    n_per_arm = forms.IntegerField(initial=30, label="Participants per arm")
    trials_per_phase = forms.IntegerField(initial=20, label="Trials per participant and phase")
    design = forms.ChoiceField(
        choices=[("pre_post", "Pre-test and post-test; outcome = gain (post minus pre)"),
                 ("test", "One test phase; outcome = accuracy")],
        initial="pre_post")
    alternative = forms.ChoiceField(choices=ALTERNATIVES, initial="greater")
    correction = forms.ChoiceField(choices=sorted(CORRECTION_LABELS.items()), initial="holm")
    n_studies = forms.IntegerField(initial=60, label="Simulated studies per scenario",
                                   help_text=f"At most {MAX_SIMULATED_STUDIES}, and few enough to finish in about "
                                             f"{SIMULATION_BUDGET_SECONDS:g} s.")
    participant_sd = forms.FloatField(initial=0.5, label="Participant SD (log-odds)")
    item_sd = forms.FloatField(initial=0.5, label="Item SD (log-odds)")
    seed = forms.IntegerField(initial=0, min_value=0, max_value=2**32 - 1)
    null_only = forms.BooleanField(
        required=False, initial=False, label="Only check the false-positive rate",
        help_text="Simulate only studies in which no arm differs from control (the family-wise false-positive "
                  "check), not the power: half the work, so twice the studies fit in the same time.")
    # Optional (blank = the initial value), so a simulation bookmarked before these fields existed still runs.
    workers = forms.IntegerField(
        required=False, initial=1, label="Worker processes",
        help_text="Simulated studies run in this many processes, with the same results as one. Each process "
                  f"first takes about {WORKER_START_SECONDS:g} s to start, so more than 1 only helps a long "
                  "simulation on a server with several cores.")
    confidence_level = forms.FloatField(
        required=False, initial=0.95, label="Confidence level of the intervals",
        help_text="For the exact (Clopper-Pearson) interval around each simulated rate, e.g. 0.95.")
    # Power is not asked for here: the simulation estimates it.
    power = None

    field_order = ["control_accuracy", "arm_accuracies", "n_per_arm", "trials_per_phase", "design", "alternative",
                   "correction", "alpha", "n_studies", "participant_sd", "item_sd", "seed", "null_only", "workers",
                   "confidence_level"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        most = max_workers()
        self.fields["workers"].help_text += f" This server has {most} CPU core{'s' if most != 1 else ''}."
        self.fields["workers"].widget.attrs.update(min=1, max=most)

    def clean_arm_accuracies(self) -> dict[str, float]:
        text = self.cleaned_data["arm_accuracies"]
        arms: dict[str, float] = {}
        tokens = [t for t in re.split(r"[,\n;]", text) if t.strip()]
        if not tokens:
            raise forms.ValidationError("Give the true accuracy of at least one arm besides control.")
        for i, token in enumerate(tokens, start=1):
            match = _ARM_TOKEN.match(token)
            if not match:
                raise forms.ValidationError(f"Could not read '{token.strip()}': write 'name: accuracy', e.g. "
                                            "'saliency: 0.70'.")
            try:
                value = float(match["value"])
            except ValueError:
                raise forms.ValidationError(f"'{match['value']}' is not a number.") from None
            name = (match["name"] or f"arm {i}").strip()
            if name == "control":
                raise forms.ValidationError("'control' is the control arm; give the other arms other names.")
            if name in arms:
                raise forms.ValidationError(f"The arm name '{name}' appears twice.")
            problems = _open_unit(value, f"The accuracy of '{name}'")
            if problems:
                raise forms.ValidationError(problems[0])
            arms[name] = value
        if len(arms) > 12:
            raise forms.ValidationError("At most 12 arms besides control can be simulated here.")
        return arms

    def clean(self):
        cleaned = super().clean()
        alpha = cleaned.get("alpha")
        for message in _open_unit(alpha, "Alpha"):
            self.add_error("alpha", message)
        for message in _open_unit(cleaned.get("control_accuracy"), "The control arm's accuracy"):
            self.add_error("control_accuracy", message)
        limits = {"n_per_arm": (2, 5000, "Participants per arm"), "trials_per_phase": (1, 500, "Trials per phase"),
                  "n_studies": (10, MAX_SIMULATED_STUDIES, "The number of simulated studies")}
        for name, (low, high, what) in limits.items():
            value = cleaned.get(name)
            if value is not None and not low <= value <= high:
                self.add_error(name, f"{what} must be between {low} and {high} (you entered {value}).")
        for name in ("participant_sd", "item_sd"):
            value = cleaned.get(name)
            if value is not None and not 0 <= value <= 5:
                self.add_error(name, "A standard deviation on the log-odds scale must be between 0 and 5.")
        for name in ("workers", "confidence_level"):
            if cleaned.get(name) is None and name not in self.errors:
                cleaned[name] = self.fields[name].initial
        workers, most = cleaned.get("workers"), max_workers()
        if workers is not None and not 1 <= workers <= most:
            self.add_error("workers", f"Worker processes must be between 1 and {most}, the number of CPU cores of "
                                      f"this server (you entered {workers}).")
        level = cleaned.get("confidence_level")
        low, high = CONFIDENCE_LEVELS
        if level is not None and not low <= level <= high:
            hint = " Enter a proportion such as 0.95, not a percentage." if level > 1 else ""
            self.add_error("confidence_level", f"The confidence level must be between {low:g} and {high:g} (you "
                                               f"entered {level:g}).{hint}")
        if self.errors:
            return cleaned
        seconds = self.estimated_seconds(cleaned)
        if seconds > SIMULATION_BUDGET_SECONDS:
            start = self.start_seconds(cleaned)
            single = self.estimated_seconds({**cleaned, "workers": 1})
            per_study = (seconds - start) / cleaned["n_studies"]
            most = int((SIMULATION_BUDGET_SECONDS - start) / per_study)
            if start and single <= SIMULATION_BUDGET_SECONDS:
                advice = (f"use 1 worker process (starting {cleaned['workers']} takes about {start:g} s; one process "
                          f"does this in about {single:.1f} s)")
            elif most >= 10:
                advice = f"lower the number of simulated studies to at most {most}"
            else:
                advice = "lower the participants per arm or the trials per phase"
            raise forms.ValidationError(
                f"This simulation would take about {seconds:.0f} s, more than the {SIMULATION_BUDGET_SECONDS:g} s a "
                f"page may take: {advice}, or run studyapp.analysis.calibrate in a notebook or script.")
        return cleaned

    @staticmethod
    def start_seconds(cleaned: dict) -> float:
        """The time worker processes take to start before any study runs (none for one worker)."""
        return WORKER_START_SECONDS if cleaned.get("workers", 1) > 1 else 0.0

    @classmethod
    def estimated_seconds(cls, cleaned: dict) -> float:
        n_arms = 1 + len(cleaned["arm_accuracies"])
        phases = 2 if cleaned["design"] == "pre_post" else 1
        trials = n_arms * cleaned["n_per_arm"] * cleaned["trials_per_phase"] * phases
        # n_studies simulated studies per scenario: the null one, and the alternative unless null-only.
        scenarios = 1 if cleaned.get("null_only") else 2
        work = scenarios * cleaned["n_studies"] * (SECONDS_PER_STUDY + SECONDS_PER_TRIAL * trials)
        # The processes start in parallel, then share the studies.
        return cls.start_seconds(cleaned) + work / cleaned.get("workers", 1)
