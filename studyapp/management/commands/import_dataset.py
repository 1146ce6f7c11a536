"""python manage.py import_dataset: import a dataset from the command line (thin: calls one service)."""
from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count

from studyapp.models import Dataset
from studyapp.services.datasets import (BUILTIN_DATASETS, DatasetValidationError, dataset_import_builtin,
                                        dataset_import_images, dataset_import_tabular)


class Command(BaseCommand):
    help = ("Import a dataset: a zip of images with labels.csv, a CSV of numeric features with a label "
            "column, or built-in demo data.")

    def add_arguments(self, parser: CommandParser) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--images", metavar="ZIP", help="zip of images plus labels.csv (filename,label[,split]) "
                                                             "and optionally classes.txt")
        source.add_argument("--tabular", metavar="CSV", help="CSV with numeric feature columns and a label column")
        source.add_argument("--builtin", choices=sorted(BUILTIN_DATASETS), help="bundled demo data")
        parser.add_argument("--name", help="dataset name (required for --images and --tabular)")
        parser.add_argument("--label-column", default="label", help="label column of --tabular (default: label)")
        parser.add_argument("--descriptions", metavar="CSV",
                            help="for --tabular: CSV with columns feature,description,unit")
        parser.add_argument("--class-names", metavar="A,B,...",
                            help="for --tabular: class names in class-index order (default: sorted labels)")
        parser.add_argument("--description", default="", help="free-text description of the dataset")

    def handle(self, *args, **options) -> None:
        if not options["tabular"] and (options["descriptions"] or options["class_names"]
                                       or options["label_column"] != "label"):
            raise CommandError("--label-column, --descriptions and --class-names only apply to --tabular.")
        try:
            if options["builtin"]:
                dataset, created = self._builtin(options)
            else:
                dataset, created = self._upload(options), True
        except DatasetValidationError as exc:
            problems = "\n".join(f"  - {message}" for message in exc.messages)
            raise CommandError(f"The dataset was not imported:\n{problems}") from None
        self.stdout.write(self._summary(dataset, created))

    def _builtin(self, options: dict) -> tuple[Dataset, bool]:
        if options["name"]:
            self.stderr.write("Note: --name is ignored with --builtin; built-in datasets have fixed names.")
        existed = Dataset.objects.filter(name=BUILTIN_DATASETS[options["builtin"]]).exists()
        return dataset_import_builtin(which=options["builtin"]), not existed

    def _upload(self, options: dict) -> Dataset:
        if not options["name"]:
            raise CommandError("--name is required with --images and --tabular.")
        if options["images"]:
            with _open(options["images"]) as archive:
                return dataset_import_images(name=options["name"], archive=archive,
                                             description=options["description"])
        class_names = ([c.strip() for c in options["class_names"].split(",")]
                       if options["class_names"] else None)
        with _open(options["tabular"]) as csv_file:
            if options["descriptions"] is None:
                return dataset_import_tabular(name=options["name"], csv_file=csv_file,
                                              label_column=options["label_column"], class_names=class_names,
                                              description=options["description"])
            with _open(options["descriptions"]) as descriptions:
                return dataset_import_tabular(name=options["name"], csv_file=csv_file,
                                              label_column=options["label_column"], descriptions=descriptions,
                                              class_names=class_names, description=options["description"])

    @staticmethod
    def _summary(dataset: Dataset, created: bool) -> str:
        splits = dict.fromkeys(("train", "test"), 0)
        # order_by(): the default ordering would otherwise join the GROUP BY.
        splits.update(dataset.stimuli.order_by().values_list("split").annotate(n=Count("pk")))
        verb = "Imported" if created else "Already imported (unchanged)"
        return (f"{verb} dataset '{dataset.name}' (id {dataset.pk}): {dataset.n_items} {dataset.modality} items "
                f"of shape {dataset.input_shape}, {len(dataset.class_names)} classes, "
                f"{splits['train']} train / {splits['test']} test.")


def _open(path: str):
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"File not found: {path}")
    return file.open("rb")
