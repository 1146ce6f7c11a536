from __future__ import annotations

import json
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from studyapp.models import Dataset
from studyapp.services.mlmodels import mlmodel_register


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise CommandError(f"--input-shape must be whole numbers separated by commas, e.g. 1,8,8; got {text!r}.") from None


class Command(BaseCommand):
    help = "Register a model: an allowlisted architecture plus a safetensors weights file, checked against a dataset."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--architecture", required=True, help="e.g. image_cnn or tabular_mlp")
        parser.add_argument("--weights", required=True, type=Path, help="a .safetensors file of the state_dict")
        parser.add_argument("--dataset", required=True, help="name of an imported dataset")
        parser.add_argument("--input-shape", help="defaults to the dataset's, e.g. 1,8,8")
        parser.add_argument("--class-names", help="comma-separated; defaults to the dataset's, in order")
        parser.add_argument("--hyperparameters", default="{}", help='JSON, e.g. {"hidden": 64}')

    def handle(self, *args, **opts) -> None:
        dataset = Dataset.objects.filter(name=opts["dataset"]).first()
        if dataset is None:
            known = ", ".join(Dataset.objects.order_by("name").values_list("name", flat=True)) or "none yet"
            raise CommandError(f"No dataset named {opts['dataset']!r}. Imported datasets: {known}.")
        if not opts["weights"].is_file():
            raise CommandError(f"The weights file {opts['weights']} does not exist.")
        try:
            hyperparameters = json.loads(opts["hyperparameters"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--hyperparameters is not valid JSON: {exc.msg}.") from None
        try:
            model = mlmodel_register(
                name=opts["name"], architecture=opts["architecture"], weights=opts["weights"].read_bytes(),
                dataset=dataset, input_shape=_int_list(opts["input_shape"]) if opts["input_shape"] else None,
                class_names=[c.strip() for c in opts["class_names"].split(",")] if opts["class_names"] else None,
                hyperparameters=hyperparameters)
        except ValidationError as exc:
            raise CommandError("The model was not registered:\n" + "\n".join(f"  - {m}" for m in exc.messages)) from None
        accuracy = model.metrics.get("test_accuracy")
        self.stdout.write(f"Registered {model} (sha256 {model.weights_sha256[:12]}"
                          + (f", test accuracy {accuracy:.3f})" if accuracy is not None else ")"))
