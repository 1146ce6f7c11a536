"""What a researcher should know about an uploaded model or dataset before building a study on it."""
from __future__ import annotations

from django.db.models import Count

from studyapp.models import Dataset, MLModel, Stimulus

CHANCE_MARGIN = 0.02


def dataset_class_counts(*, dataset: Dataset) -> list[dict]:
    """Items per class and split, one row per class (a rare class shows at once)."""
    counts = {(label, split): n for label, split, n in
              # Items whose truth is unknown (data collected elsewhere) belong to no class.
              Stimulus.objects.filter(dataset=dataset, label__isnull=False).values_list("label", "split")
              .annotate(n=Count("pk"))
              .values_list("label", "split", "n")}
    names = list(dataset.class_names or [])
    labels = sorted({label for label, _ in counts} | set(range(len(names))))
    return [{"label": names[i] if i < len(names) else str(i),
             **{split: counts.get((i, split), 0) for split in ("train", "test")}} for i in labels]


def model_warnings(*, model: MLModel) -> list[str]:
    """Flags, in words: a held-out accuracy at chance level, and weights identical to another model."""
    warnings = []
    accuracy = (model.metrics or {}).get("test_accuracy")
    test = list(Stimulus.objects.filter(dataset_id=model.dataset_id, split="test").values_list("label", flat=True))
    if accuracy is not None and test:
        majority = max(test.count(label) for label in set(test)) / len(test)
        if accuracy <= majority + CHANCE_MARGIN:
            warnings.append(f"Held-out accuracy {accuracy:.3f} is at chance level: always answering the most frequent "
                            f"class scores {majority:.3f}. A study of how people predict such a model mostly measures "
                            "its bias.")
    twins = MLModel.objects.filter(weights_sha256=model.weights_sha256).exclude(pk=model.pk).values_list("name", flat=True)
    if twins:
        warnings.append(f"Same weights as {', '.join(repr(n) for n in twins)}: this is the same model registered again.")
    return warnings
