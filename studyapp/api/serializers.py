"""Input and output serializers of the participant API (documented by drf-spectacular)."""
from __future__ import annotations

from rest_framework import serializers

from studyapp.services.participants import AGE_BANDS, ML_EXPERIENCE
from studyapp.services.responses import EVENT_TYPES, MAX_EVENTS


class ConsentInput(serializers.Serializer):
    agree = serializers.BooleanField()
    params = serializers.DictField(child=serializers.CharField(max_length=128, allow_blank=True), required=False,
                                   help_text="The link's query parameters (PROLIFIC_PID, STUDY_ID, SESSION_ID, ...).")
    consent_version = serializers.CharField(required=False, max_length=12, allow_blank=True,
                                            help_text="The consent text version shown (refused if it changed since).")
    simulation = serializers.CharField(required=False, max_length=500,
                                       help_text="Signed token of manage.py simulate_participants.")

    def validate_params(self, value):
        if len(value) > 20:
            raise serializers.ValidationError("At most 20 link parameters.")
        return value


class StateOutput(serializers.Serializer):
    step = serializers.CharField()
    status = serializers.CharField()
    progress = serializers.DictField()
    content = serializers.DictField(help_text="What the current step shows.")


class ComprehensionInput(serializers.Serializer):
    answers = serializers.ListField(child=serializers.IntegerField(min_value=0, max_value=50), max_length=20)


class ComprehensionOutput(serializers.Serializer):
    passed = serializers.BooleanField()
    wrong_questions = serializers.ListField(child=serializers.IntegerField())
    attempts = serializers.IntegerField()
    attempts_left = serializers.IntegerField()
    state = StateOutput()


class EventInput(serializers.Serializer):
    type = serializers.ChoiceField(choices=EVENT_TYPES)
    t_ms = serializers.IntegerField(min_value=0, max_value=86_400_000)


class ClientInput(serializers.Serializer):
    """The browser when it answered (bounded: fixed keys, ranged numbers)."""

    viewport_width = serializers.IntegerField(min_value=0, max_value=20_000)
    viewport_height = serializers.IntegerField(min_value=0, max_value=20_000)
    device = serializers.ChoiceField(choices=("phone", "tablet", "desktop"))
    pointer = serializers.ChoiceField(choices=("coarse", "fine"))
    pixel_ratio = serializers.FloatField(min_value=0.1, max_value=10, required=False)


class AnswerInput(serializers.Serializer):
    idempotency_key = serializers.UUIDField(help_text="Made by the browser per answer, kept until it is stored.")
    answer = serializers.IntegerField(min_value=0, max_value=1000, help_text="Option number.")
    confidence = serializers.IntegerField(min_value=1, max_value=7, required=False, allow_null=True)
    client_rt_ms = serializers.IntegerField(min_value=0, max_value=86_400_000)
    client_sent_at = serializers.DateTimeField(required=False, allow_null=True)
    events = EventInput(many=True, required=False, max_length=MAX_EVENTS)
    client = ClientInput(required=False, allow_null=True, help_text="Viewport and device class.")


class AnswerOutput(serializers.Serializer):
    trial = serializers.UUIDField()
    answer = serializers.IntegerField()
    received_at = serializers.DateTimeField()
    idempotency_key = serializers.UUIDField()
    feedback = serializers.DictField(allow_null=True, help_text="Learning and practice only, after answering.")


class TrialOutput(serializers.Serializer):
    trial = serializers.UUIDField(help_text="Opaque id, only for this participant.")
    number = serializers.IntegerField()
    total = serializers.IntegerField()
    phase = serializers.CharField()
    block = serializers.IntegerField(help_text="Index of the design block (a new block gets an introduction).")
    task = serializers.CharField()
    question = serializers.CharField()
    options = serializers.ListField(child=serializers.DictField())
    input = serializers.DictField()
    model_output = serializers.DictField(allow_null=True)
    aid = serializers.DictField(allow_null=True)
    edit = serializers.DictField(allow_null=True)
    confidence = serializers.BooleanField()


class QuestionnaireInput(serializers.Serializer):
    answers = serializers.DictField(child=serializers.IntegerField(min_value=1, max_value=7))


class DemographicsInput(serializers.Serializer):
    age_band = serializers.ChoiceField(choices=AGE_BANDS)
    ml_experience = serializers.ChoiceField(choices=ML_EXPERIENCE)


class CompletionOutput(serializers.Serializer):
    outcome = serializers.CharField()
    code = serializers.CharField()
    redirect_url = serializers.CharField(allow_null=True)


class ErrorOutput(serializers.Serializer):
    detail = serializers.CharField()
    problems = serializers.ListField(child=serializers.CharField(), required=False)
