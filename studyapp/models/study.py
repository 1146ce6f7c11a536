"""Studies, their arms, precomputed explanations, pre-registered hypotheses and analyses."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from studyapp.models.base import OpaqueUploadPath, TimeStamped, choices_check, stimulus_xor_edit_constraints
from studyapp.models.data import Dataset, Edit, MLModel, Stimulus


class StudyState(models.TextChoices):
    DRAFT = "draft", "Draft"
    PREPARING = "preparing", "Preparing"
    READY = "ready", "Ready"
    LIVE = "live", "Live"
    CLOSED = "closed", "Closed"


class StudySource(models.TextChoices):
    PLATFORM = "platform", "Run on this platform"
    EXTERNAL = "external", "Data collected elsewhere (imported from a file)"


class Study(TimeStamped):
    """One experiment. The state only changes through services (studyapp.services.studies).

    ``source`` "external": the data were collected elsewhere (jsPsych, Gorilla, Qualtrics...) and
    imported from a long-format file (studyapp.services.external_import). Such a study has no
    model (``model`` is empty), its ``dataset`` holds its items by name only, it is never prepared
    or opened to participants, and freezing its plan takes it from draft to closed.
    """

    State = StudyState

    Source = StudySource

    title = models.CharField(max_length=200, help_text="Shown to participants; must not reveal the hypotheses.")
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True, help_text="For experimenters only.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.DRAFT, editable=False)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.PLATFORM, editable=False)
    # Empty exactly for a study whose data were collected elsewhere (constraint below).
    model = models.ForeignKey(MLModel, null=True, on_delete=models.PROTECT, related_name="studies")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="studies")
    seed = models.PositiveIntegerField(default=0, help_text="Seeds stimulus sampling, assignment and explainers.")
    config = models.JSONField(default=dict, blank=True,
                              help_text="Phases, trial counts, sampling and quality-control settings.")
    consent_text = models.TextField(blank=True)
    instructions = models.TextField(blank=True)
    debrief_text = models.TextField(blank=True)
    target_per_arm = models.PositiveIntegerField(default=30)
    # The participant link uses this random id, not the slug, so links cannot be guessed.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    ingest_paused = models.BooleanField(default=False, editable=False,
                                        help_text="New participants are refused while paused (the live monitor's "
                                                  "switch); those already in the study go on.")
    completion_code = models.CharField(max_length=64, blank=True)
    screened_out_code = models.CharField(max_length=64, blank=True)
    failed_checks_code = models.CharField(max_length=64, blank=True)
    # Set by launch: canonical JSON of config + arms + hypotheses, its SHA-256 and the time.
    frozen_config = models.JSONField(null=True, blank=True, editable=False)
    frozen_sha256 = models.CharField(max_length=64, blank=True, editable=False)
    launched_at = models.DateTimeField(null=True, blank=True, editable=False)
    closed_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Progress and the last error of preparation, shown in the admin.
    preparation = models.JSONField(default=dict, blank=True, editable=False)
    # The draw of the study's items (seed, pool size, counts per stratum), set by preparation.
    item_sample = models.JSONField(default=dict, blank=True, editable=False)
    # Who may see the study and its data (studyapp.selectors.studies_visible_to): its owner, its
    # collaborators and superusers. A lab runs many researchers' studies on one server.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="owned_studies",
                              help_text="The researcher who created the study; only the owner, the collaborators and "
                                        "superusers see it, its participants and its data. A study created before "
                                        "studies had owners has none and is seen by superusers only, until a "
                                        "superuser gives it one (Sharing).")
    collaborators = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="shared_studies",
                                           help_text="Other researchers who see this study and its data, within "
                                                     "what their permissions allow.")

    class Meta:
        verbose_name_plural = "studies"
        # Beyond view/add/change/delete: what a researcher may do with a study's results.
        permissions = [
            ("view_results", "Can view results, reports and the live monitor"),
            ("export_data", "Can download exports"),
            ("run_analysis", "Can run analyses"),
            ("launch_study", "Can launch, pause and close studies"),
        ]
        constraints = [
            choices_check("state", StudyState, "study_state_valid"),
            # A study that has been launched always carries its frozen plan.
            models.CheckConstraint(
                condition=Q(state__in=["draft", "preparing", "ready"])
                | (Q(launched_at__isnull=False, frozen_config__isnull=False) & ~Q(frozen_sha256="")),
                name="study_launched_is_frozen"),
            models.CheckConstraint(condition=Q(target_per_arm__gte=1), name="study_target_positive"),
            choices_check("source", StudySource, "study_source_valid"),
            # A study run here shows a model's outputs; one imported from elsewhere has no model.
            models.CheckConstraint(
                condition=Q(source="platform", model__isnull=False) | Q(source="external", model__isnull=True),
                name="study_model_matches_source",
                violation_error_message="A study run on this platform needs a model; a study whose data were "
                                        "collected elsewhere has none."),
        ]

    def __str__(self) -> str:
        return self.title


class ArmKind(models.TextChoices):
    CONTROL = "control", "Control (no explanation)"
    EXPLANATION = "explanation", "Explanation"
    BASELINE = "baseline", "Baseline aid (edges, exemplars, random map)"
    OOD_WARNING = "ood_warning", "Out-of-distribution warning"
    # A condition of a study imported from elsewhere: what it showed is described there, not here.
    EXTERNAL = "external", "Condition of data collected elsewhere"


class ArmMethod(models.TextChoices):
    NONE = "", "None"
    INTEGRATED_GRADIENTS = "integrated_gradients", "Integrated gradients"
    SALIENCY = "saliency", "Saliency (gradient)"
    SMOOTHGRAD = "smoothgrad", "SmoothGrad"
    GRADCAM = "gradcam", "Grad-CAM"
    GUIDED_BACKPROP = "guided_backprop", "Guided backpropagation"
    DEEPLIFT = "deeplift", "DeepLIFT"
    INPUT_X_GRADIENT = "input_x_gradient", "Input x gradient"
    OCCLUSION = "occlusion", "Occlusion"
    FEATURE_ABLATION = "feature_ablation", "Feature ablation"
    KERNEL_SHAP = "kernel_shap", "Kernel SHAP"
    LIME = "lime", "LIME"
    SOBEL_EDGES = "sobel_edges", "Sobel edge map (baseline)"
    EXEMPLARS = "exemplars", "Natural exemplars (baseline)"
    RANDOM_MAP = "random_map", "Random map (baseline)"


class ArmManipulation(models.TextChoices):
    NONE = "none", "None (real explanation)"
    RANDOMIZED_MODEL = "randomized_model", "Randomized model parameters"
    LABEL_RANDOMIZED_MODEL = "label_randomized_model", "Model trained on permuted labels"
    INVERTED = "inverted", "Inverted map"
    RANDOM_MATCHED = "random_matched", "Random map matched to the real one"
    OTHER_INPUT = "other_input", "Explanation of another input"


class Arm(models.Model):
    """A condition: what participants in it see as an aid."""

    Kind = ArmKind

    Method = ArmMethod

    Manipulation = ArmManipulation

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="arms")
    name = models.CharField(max_length=80, help_text="Internal; participants never see arm names.")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CONTROL)
    method = models.CharField(max_length=32, choices=Method.choices, blank=True, default="")
    method_config = models.JSONField(default=dict, blank=True,
                                     help_text="Every parameter of the method; defaults are filled in and stored at preparation.")
    manipulation = models.CharField(max_length=32, choices=Manipulation.choices, default=Manipulation.NONE)
    manipulation_config = models.JSONField(default=dict, blank=True)
    allocation_weight = models.PositiveSmallIntegerField(default=1, help_text="Relative share of participants.")
    ingest_paused = models.BooleanField(default=False, editable=False,
                                        help_text="No new participant is assigned to this arm while paused.")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["study", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["study", "name"], name="arm_unique_name"),
            choices_check("kind", ArmKind, "arm_kind_valid"),
            choices_check("method", ArmMethod, "arm_method_valid"),
            choices_check("manipulation", ArmManipulation, "arm_manipulation_valid"),
            models.CheckConstraint(condition=Q(allocation_weight__gte=1), name="arm_weight_positive"),
            # A control arm shows nothing; an explanation arm must say which method.
            models.CheckConstraint(
                condition=~Q(kind="control") | (Q(method="") & Q(manipulation="none")),
                name="arm_control_shows_nothing"),
            models.CheckConstraint(condition=~Q(kind="explanation") | ~Q(method=""),
                                   name="arm_explanation_has_method"),
        ]

    def __str__(self) -> str:
        return f"{self.study.slug}: {self.name}"


class Explanation(models.Model):
    """The artifact shown in an arm for a stimulus or an edit: raw floats plus a rendered image."""

    arm = models.ForeignKey(Arm, on_delete=models.CASCADE, related_name="explanations")
    stimulus = models.ForeignKey(Stimulus, null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="explanations")
    edit = models.ForeignKey(Edit, null=True, blank=True, on_delete=models.CASCADE, related_name="explanations")
    attributions = models.BinaryField(help_text="Raw float32 attributions, .npy.")
    image = models.FileField(upload_to=OpaqueUploadPath("explanations"), blank=True)
    config = models.JSONField(help_text="The full resolved configuration that produced it.")
    config_sha256 = models.CharField(max_length=64)
    seed = models.PositiveIntegerField()
    target = models.PositiveIntegerField(help_text="Class explained.")
    compute_seconds = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            *stimulus_xor_edit_constraints(owner="arm", prefix="explanation"),
            models.CheckConstraint(condition=Q(compute_seconds__gte=0), name="explanation_seconds_nonnegative"),
        ]

    def __str__(self) -> str:
        shown = f"edit {self.edit_id}" if self.edit_id else f"stimulus {self.stimulus_id}"
        return f"Explanation of {shown} in arm {self.arm.name}"


class StudyItemRole(models.TextChoices):
    LEARNING = "learning", "Learning and practice"
    TEST = "test", "Test (pre-test and post-test)"
    COUNTERFACTUAL_PREDICT = "counterfactual_predict", "Counterfactual: predict the edit's output"
    COUNTERFACTUAL_CHOOSE = "counterfactual_choose", "Counterfactual: choose the edit that changes it"


class StudyItem(models.Model):
    """One item of the study's sample: every participant sees the same items (items x arms crossed).

    Drawn by preparation (studyapp.services.item_sample), stratified by the model's predicted
    class x whether the model is right. Counterfactual items carry the edits shown, in order.
    """

    Role = StudyItemRole

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="items")
    stimulus = models.ForeignKey(Stimulus, on_delete=models.PROTECT, related_name="study_items")
    role = models.CharField(max_length=32, choices=Role.choices)
    position = models.PositiveIntegerField(help_text="Order within the role, as drawn.")
    stratum = models.CharField(max_length=64, help_text="predicted class / model right or wrong.")
    edits = models.JSONField(default=list, blank=True, help_text="Edit ids shown, in order (counterfactual).")
    answer_position = models.PositiveSmallIntegerField(null=True, blank=True,
                                                       help_text="Choose: position of the edit that changes the output.")

    class Meta:
        ordering = ["study", "role", "position"]
        constraints = [
            # Learning, test and counterfactual items are disjoint.
            models.UniqueConstraint(fields=["study", "stimulus"], name="studyitem_unique_stimulus"),
            models.UniqueConstraint(fields=["study", "role", "position"], name="studyitem_unique_position"),
            choices_check("role", StudyItemRole, "studyitem_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.get_role_display()} item {self.position} (stimulus {self.stimulus_id})"


class HypothesisComparison(models.TextChoices):
    ARM_VS_CONTROL = "arm_vs_control", "Arm vs control"
    ARM_VS_ARM = "arm_vs_arm", "Arm vs arm"
    ARM_VS_CHANCE = "arm_vs_chance", "Arm vs chance"


class HypothesisOutcome(models.TextChoices):
    TEST_ACCURACY = "test_accuracy", "Test-phase accuracy"
    GAIN = "gain", "Post-test minus pre-test accuracy"
    COUNTERFACTUAL_ACCURACY = "counterfactual_accuracy", "Counterfactual accuracy"
    LIKERT = "likert", "Likert item"


class HypothesisDirection(models.TextChoices):
    GREATER = "greater", "Greater"
    LESS = "less", "Less"
    TWO_SIDED = "two_sided", "Two-sided"
    EQUIVALENCE = "equivalence", "Equivalent within a margin"


class HypothesisTest(models.TextChoices):
    """The tests the analysis runs (studyapp/analysis/hypotheses.py ``two_sample``); arm-vs-chance
    hypotheses always use the one-sample test against chance."""

    WELCH_T = "welch_t", "Welch's t-test (unequal variances)"
    PERMUTATION = "permutation", "Permutation test of the difference in means"
    MANN_WHITNEY = "mann_whitney", "Mann-Whitney U (rank test, for Likert outcomes)"


class HypothesisCorrection(models.TextChoices):
    HOLM = "holm", "Holm"
    BONFERRONI = "bonferroni", "Bonferroni"
    HOCHBERG = "hochberg", "Hochberg"
    HOMMEL = "hommel", "Hommel"
    BH = "bh", "Benjamini-Hochberg (FDR)"
    BY = "by", "Benjamini-Yekutieli (FDR)"


class Hypothesis(TimeStamped):
    """A pre-registered, falsifiable claim. Frozen with the study at launch."""

    Comparison = HypothesisComparison

    Outcome = HypothesisOutcome

    Direction = HypothesisDirection

    Correction = HypothesisCorrection

    Test = HypothesisTest

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="hypotheses")
    label = models.CharField(max_length=20, help_text="Short code such as H1.")
    statement = models.TextField(help_text="The claim in words.")
    comparison = models.CharField(max_length=16, choices=Comparison.choices, default=Comparison.ARM_VS_CONTROL)
    arm = models.ForeignKey(Arm, on_delete=models.CASCADE, related_name="hypotheses")
    comparator = models.ForeignKey(Arm, null=True, blank=True, on_delete=models.CASCADE, related_name="+",
                                   help_text="Other arm for arm-vs-arm; the control arm when empty.")
    outcome = models.CharField(max_length=32, choices=Outcome.choices, default=Outcome.TEST_ACCURACY)
    likert_item = models.CharField(max_length=64, blank=True)
    direction = models.CharField(max_length=16, choices=Direction.choices, default=Direction.GREATER)
    equivalence_margin = models.FloatField(null=True, blank=True)
    test = models.CharField(max_length=32, choices=HypothesisTest.choices, default=HypothesisTest.WELCH_T)
    alpha = models.FloatField(default=0.05)
    family = models.CharField(max_length=40, default="primary", help_text="Correction family.")
    correction = models.CharField(max_length=16, choices=Correction.choices, default=Correction.HOLM)
    planned_n_per_arm = models.PositiveIntegerField(default=30)
    stopping_rule = models.TextField(blank=True)
    exclusion_rules = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name_plural = "hypotheses"
        constraints = [
            models.UniqueConstraint(fields=["study", "label"], name="hypothesis_unique_label"),
            choices_check("comparison", HypothesisComparison, "hypothesis_comparison_valid"),
            choices_check("outcome", HypothesisOutcome, "hypothesis_outcome_valid"),
            choices_check("direction", HypothesisDirection, "hypothesis_direction_valid"),
            choices_check("correction", HypothesisCorrection, "hypothesis_correction_valid"),
            choices_check("test", HypothesisTest, "hypothesis_test_valid"),
            # The messages are what a researcher reads in the admin (Django validates constraints
            # on save), never the constraint's name.
            models.CheckConstraint(condition=Q(alpha__gt=0) & Q(alpha__lt=1), name="hypothesis_alpha_range",
                                   violation_error_message="Alpha must be between 0 and 1 (for example 0.05)."),
            models.CheckConstraint(
                # isnull spelled out: in SQL a NULL margin would make the check pass.
                condition=~Q(direction="equivalence") | Q(equivalence_margin__isnull=False, equivalence_margin__gt=0),
                name="hypothesis_equivalence_needs_margin",
                violation_error_message="An equivalence hypothesis needs a positive equivalence margin: the largest "
                                        "difference you would call equivalent (for example 0.05 = 5 points)."),
            models.CheckConstraint(condition=~Q(outcome="likert") | ~Q(likert_item=""),
                                   name="hypothesis_likert_needs_item",
                                   violation_error_message="A Likert outcome needs the questionnaire item it is "
                                                           "about (its id, for example trust)."),
            models.CheckConstraint(condition=Q(comparator__isnull=True) | ~Q(comparator=F("arm")),
                                   name="hypothesis_comparator_differs",
                                   violation_error_message="The arm cannot be compared with itself: choose another "
                                                           "comparator arm."),
        ]

    def __str__(self) -> str:
        return f"{self.label}: {self.statement[:60]}"


class PreregistrationDeviation(models.Model):
    """A dated, explained change to the plan after launch. The frozen plan itself never changes."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="deviations")
    hypothesis_label = models.CharField(max_length=20, blank=True, help_text="Empty when it concerns the study.")
    field = models.CharField(max_length=64, help_text="What changed, e.g. planned_n_per_arm or exclusion_rules.")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.TextField()
    recorded_by = models.CharField(max_length=150, blank=True)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "recorded_at"]
        constraints = [models.CheckConstraint(condition=~Q(reason=""), name="deviation_has_reason")]

    def __str__(self) -> str:
        concerns = self.hypothesis_label or "the study"
        when = f", {self.recorded_at:%Y-%m-%d %H:%M}" if self.recorded_at else ""
        return f"Deviation of {concerns}: {self.field}{when}"


class AnalysisRunKind(models.TextChoices):
    CONFIRMATORY = "confirmatory", "Confirmatory (pre-registered)"
    EXPLORATORY = "exploratory", "Exploratory"


class AnalysisRun(models.Model):
    """One run of the analysis: confirmatory (the frozen plan) or exploratory (anything else).

    Confirmatory runs are append-only (database triggers, migration 0007): every confirmatory look
    at the data stays on record, so the report can say "look 2 of 2" and a reader can tell a
    second look from a first. ``number`` counts the runs of one kind per study, 1, 2, ...
    """

    Kind = AnalysisRunKind

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="analysis_runs")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    number = models.PositiveIntegerField(editable=False,
                                         help_text="1, 2, ... per study and kind: confirmatory look k of n.")
    plan_sha256 = models.CharField(max_length=64, blank=True)
    seed = models.PositiveIntegerField(default=0)
    results = models.JSONField(default=dict)
    software = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            choices_check("kind", AnalysisRunKind, "analysisrun_kind_valid"),
            models.UniqueConstraint(fields=["study", "kind", "number"], name="analysisrun_unique_number"),
            models.CheckConstraint(condition=Q(number__gte=1), name="analysisrun_number_positive"),
        ]

    def looks(self) -> int:
        """How many confirmatory runs the study has (``_looks`` when the queryset annotated it)."""
        annotated = getattr(self, "_looks", None)
        if annotated is not None:
            return annotated
        return AnalysisRun.objects.filter(study_id=self.study_id, kind=AnalysisRunKind.CONFIRMATORY).count()

    def __str__(self) -> str:
        when = f", {self.created_at:%Y-%m-%d %H:%M}" if self.created_at else ""
        if self.kind == AnalysisRunKind.CONFIRMATORY:
            return f"Confirmatory analysis, look {self.number} of {self.looks()}{when}"
        return f"Exploratory analysis {self.number}{when}"


class AnalysisJobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class AnalysisJob(models.Model):
    """A requested analysis, run by a worker: at a million responses it takes tens of seconds,
    longer than a web request should wait (and a timed-out request would lose it)."""

    Status = AnalysisJobStatus

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="analysis_jobs")
    seed = models.PositiveIntegerField(default=0)
    spec = models.JSONField(null=True, blank=True, help_text="The exploratory request; empty = the frozen plan.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    run = models.OneToOneField(AnalysisRun, null=True, blank=True, on_delete=models.CASCADE, related_name="job")
    requested_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When a message was last sent for it: a queued job whose message never reached the broker
    # (or was lost with it) is sent again by the dispatcher.
    enqueued_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study", "-created_at"]
        constraints = [
            choices_check("status", AnalysisJobStatus, "analysisjob_status_valid"),
            # A finished job says what came of it: its run, or why there is none.
            models.CheckConstraint(condition=~Q(status="done") | Q(run__isnull=False, finished_at__isnull=False),
                                   name="analysisjob_done_has_run"),
            models.CheckConstraint(condition=~Q(status="failed") | (~Q(error="") & Q(finished_at__isnull=False)),
                                   name="analysisjob_failed_has_error"),
        ]

    def __str__(self) -> str:
        return f"Analysis request #{self.pk} (seed {self.seed}, {self.get_status_display().lower()})"


class ExternalStudyImport(models.Model):
    """The file a study's data came from (``Study.source`` external), for provenance.

    Written by ``studyapp.services.external_import`` in the same transaction as the participants,
    trials and answers it describes: a study has its import record exactly when it has the data.
    The manifest and the frozen plan carry ``file_sha256``, so a result names the file it came from.
    """

    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="external_import")
    file_name = models.CharField(max_length=255)
    file_sha256 = models.CharField(max_length=64, help_text="SHA-256 of the uploaded file's bytes.")
    n_rows = models.PositiveIntegerField(help_text="Data rows read (the header not counted).")
    n_participants = models.PositiveIntegerField()
    n_items = models.PositiveIntegerField()
    columns = models.JSONField(default=list, help_text="The file's columns that were read, in file order.")
    ignored_columns = models.JSONField(default=list, blank=True, help_text="The file's other columns (not stored).")
    # Control condition, arm names given for condition codes, the default number of options, and
    # whether the answers came from a response column (else the stored answer is the correctness).
    settings = models.JSONField(default=dict, blank=True)
    imported_by = models.CharField(max_length=150, blank=True)
    imported_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(file_sha256__regex=r"^[0-9a-f]{64}$"),
                                   name="externalimport_sha256_hex"),
            models.CheckConstraint(condition=Q(n_rows__gte=1), name="externalimport_has_rows"),
        ]

    def __str__(self) -> str:
        return f"{self.file_name} ({self.n_rows} rows, SHA-256 {self.file_sha256[:12]}…)"
