"""Participants, their planned trials, and their answers."""
from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from studyapp.models.base import choices_check
from studyapp.models.data import Edit, Stimulus
from studyapp.models.study import Arm, Study


class ParticipantStatus(models.TextChoices):
    STARTED = "started", "Started"
    CONSENTED = "consented", "Consented"
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Completed"
    SCREENED_OUT = "screened_out", "Screened out"
    FAILED_CHECKS = "failed_checks", "Failed attention checks"
    ABANDONED = "abandoned", "Abandoned (slot released)"
    WITHDRAWN = "withdrawn", "Withdrew consent"


class ParticipantSource(models.TextChoices):
    DIRECT = "direct", "Direct link"
    PROLIFIC = "prolific", "Prolific"
    SONA = "sona", "SONA"
    GENERIC = "generic", "Other (id in a URL parameter)"
    EXTERNAL = "external", "Data collected elsewhere (imported from a file)"


class ParticipantStep(models.TextChoices):
    """Where the participant is in the session; moves forward only (conditional updates)."""

    INSTRUCTIONS = "instructions", "Instructions"
    COMPREHENSION = "comprehension", "Comprehension quiz"
    TRIALS = "trials", "Trials"
    QUESTIONNAIRE = "questionnaire", "Questionnaire"
    DEMOGRAPHICS = "demographics", "Demographics"
    DEBRIEF = "debrief", "Debrief"
    DONE = "done", "Done"


class Participant(models.Model):
    """One enrollment in a study. The arm is assigned server-side; the participant never picks it."""

    Status = ParticipantStatus

    Source = ParticipantSource

    Step = ParticipantStep

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="participants")
    arm = models.ForeignKey(Arm, on_delete=models.PROTECT, related_name="participants")
    # Opaque token in the participant's URL/cookie; the database id is never exposed.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    external_id = models.CharField(max_length=128, blank=True, help_text="e.g. PROLIFIC_PID")
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.DIRECT)
    source_params = models.JSONField(default=dict, blank=True, help_text="STUDY_ID, SESSION_ID, ...")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STARTED)
    step = models.CharField(max_length=16, choices=Step.choices, default=Step.INSTRUCTIONS)
    # Simulated participants (pilots, load tests, the demo) never count toward targets, are
    # balanced among themselves and never enter a confirmatory analysis.
    simulated = models.BooleanField(default=False)
    # A staff member's "Preview as participant" (also simulated): never counted, analysed or
    # exported, and deleted when the same browser starts another preview.
    preview = models.BooleanField(default=False)
    # What balanced assignment saw: per-arm counts, weights, the candidates and the seeded draw.
    assignment = models.JSONField(default=dict, blank=True)
    plan_seed = models.PositiveBigIntegerField(null=True, blank=True, help_text="Seeds this participant's trial order.")
    instructions_shown_at = models.DateTimeField(null=True, blank=True)
    demographics = models.JSONField(default=dict, blank=True)
    completion_code = models.CharField(max_length=64, blank=True, help_text="The code given at the end.")
    n_trials = models.PositiveIntegerField(default=0, help_text="Trials in the plan (set at enrollment).")
    started_at = models.DateTimeField(auto_now_add=True)
    consented_at = models.DateTimeField(null=True, blank=True)
    consent_version = models.CharField(max_length=12, blank=True,
                                       help_text="Version of the consent text agreed to (first 12 hex digits of its SHA-256).")
    completed_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # Quality-control measurements used by pre-registered exclusion rules.
    comprehension_attempts = models.PositiveSmallIntegerField(default=0)
    instructions_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Time spent on the instructions.")

    class Meta:
        constraints = [
            choices_check("status", ParticipantStatus, "participant_status_valid"),
            choices_check("source", ParticipantSource, "participant_source_valid"),
            choices_check("step", ParticipantStep, "participant_step_valid"),
            # The same Prolific participant cannot enroll twice in one study.
            models.UniqueConstraint(fields=["study", "external_id"], condition=~Q(external_id=""),
                                    name="participant_unique_external_id"),
            models.CheckConstraint(condition=~Q(status="completed") | Q(completed_at__isnull=False),
                                   name="participant_completed_has_time"),
        ]
        indexes = [models.Index(fields=["study", "arm", "status"], name="participant_assignment_idx")]

    def __str__(self) -> str:
        return str(self.public_id)


class TrialPhase(models.TextChoices):
    PRACTICE = "practice", "Practice"
    LEARNING = "learning", "Learning (model output shown)"
    PRE_TEST = "pre_test", "Pre-test"
    POST_TEST = "post_test", "Post-test"
    TEST = "test", "Test"


class TrialTask(models.TextChoices):
    FORWARD = "forward", "Predict the model's output"
    COUNTERFACTUAL_PREDICT = "counterfactual_predict", "Predict the output on an edited input"
    COUNTERFACTUAL_CHOOSE = "counterfactual_choose", "Choose the edit that changes the output"
    ATTENTION_CHECK = "attention_check", "Attention check"


class Trial(models.Model):
    """One planned item in a participant's sequence, stored so a refresh resumes where it was."""

    Phase = TrialPhase

    Task = TrialTask

    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="trials")
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    position = models.PositiveIntegerField()
    phase = models.CharField(max_length=16, choices=Phase.choices)
    task = models.CharField(max_length=32, choices=Task.choices)
    stimulus = models.ForeignKey(Stimulus, on_delete=models.PROTECT, related_name="trials")
    edit = models.ForeignKey(Edit, null=True, blank=True, on_delete=models.PROTECT, related_name="trials")
    show_explanation = models.BooleanField(default=False)
    show_model_output = models.BooleanField(default=False)
    # The answer that counts as correct (model output for prediction tasks, the instructed option
    # for attention checks). Server-side only: never serialized to the participant before answering.
    expected_answer = models.IntegerField(null=True, blank=True)
    # How many options the participant chose from (classes, or candidate edits): sets chance level.
    n_options = models.PositiveSmallIntegerField(null=True, blank=True)
    block = models.PositiveSmallIntegerField(default=0, help_text="Index of the design block it belongs to.")
    feedback = models.CharField(max_length=16, default="none")
    # counterfactual_choose: the candidate edits' ids in the order shown (the answer is a position).
    options = models.JSONField(default=list, blank=True)
    served_at = models.DateTimeField(null=True, blank=True, help_text="When the trial was first served.")

    class Meta:
        ordering = ["participant", "position"]
        constraints = [
            models.UniqueConstraint(fields=["participant", "position"], name="trial_unique_position"),
            choices_check("phase", TrialPhase, "trial_phase_valid"),
            choices_check("task", TrialTask, "trial_task_valid"),
            models.CheckConstraint(condition=~Q(task="counterfactual_predict") | Q(edit__isnull=False),
                                   name="trial_counterfactual_has_edit"),
        ]

    def __str__(self) -> str:
        return f"Trial {self.position} ({self.phase}, {self.task}) of participant {self.participant_id}"


class Response(models.Model):
    """A participant's answer to a trial: stored exactly once.

    ``trial`` is one-to-one (one response per trial) and ``idempotency_key`` is generated by the
    browser per answer and unique, so a resent request finds the stored row instead of writing a
    second one; the same key with a different payload is refused (see payload_sha256).
    """

    trial = models.OneToOneField(Trial, on_delete=models.CASCADE, related_name="response")
    idempotency_key = models.UUIDField(unique=True)
    payload_sha256 = models.CharField(max_length=64)
    answer = models.IntegerField(help_text="Class index or edit position chosen.")
    correct = models.BooleanField(null=True)
    confidence = models.PositiveSmallIntegerField(null=True, blank=True)
    client_rt_ms = models.PositiveIntegerField(help_text="Response time measured in the browser.")
    server_rt_ms = models.PositiveIntegerField(null=True, blank=True,
                                               help_text="Time between serving the trial and receiving the answer.")
    client_sent_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    # Focus, blur and visibility changes while the trial was on screen: [{"type", "t_ms"}].
    events = models.JSONField(default=list, blank=True)
    # Viewport and device class of the browser that answered: {"viewport_width", "viewport_height",
    # "device": phone/tablet/desktop, "pointer": coarse/fine, "pixel_ratio"}.
    client = models.JSONField(null=True, blank=True)
    # How often the participant left the trial (window blurred or tab hidden), from ``events``:
    # kept as a column so exports and exclusion rules read it without parsing JSON.
    focus_losses = models.PositiveSmallIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(confidence__isnull=True) | Q(confidence__gte=1, confidence__lte=7),
                                   name="response_confidence_range"),
            models.CheckConstraint(condition=Q(answer__gte=0), name="response_answer_nonnegative"),
            models.CheckConstraint(condition=Q(client_rt_ms__lte=86_400_000), name="response_rt_below_a_day"),
        ]

    def __str__(self) -> str:
        return f"Answer {self.answer} to trial {self.trial_id}"


class QuestionnaireAnswer(models.Model):
    """A participant's rating on a questionnaire item (Likert 1-7), e.g. "the explanations were useful"."""

    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="questionnaire_answers")
    item = models.CharField(max_length=64)
    value = models.PositiveSmallIntegerField()
    idempotency_key = models.UUIDField(unique=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["participant", "item"], name="questionnaire_unique_item"),
            models.CheckConstraint(condition=Q(value__gte=1, value__lte=7), name="questionnaire_value_range"),
        ]

    def __str__(self) -> str:
        return f"Rating {self.value} of {self.item} by participant {self.participant_id}"
