"""Writing a validated dataset: the Dataset row, its Stimulus rows and their display images, all or nothing."""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from PIL import Image

from studyapp.models import Dataset, Stimulus
from studyapp.models.base import Modality
from studyapp.services.datasets import common
from studyapp.services.datasets.common import DatasetValidationError, Progress, array_to_npy_bytes, no_progress
from studyapp.services.datasets.labels import split_note


@dataclass
class Prepared:
    """A fully validated dataset, held in memory until it is written."""

    name: str
    modality: str
    source: str
    description: str                      # without the split sentence: store() adds it from split_info
    class_names: list[str]
    # (N, *input_shape) float32: an array, or a sequence with a ``shape`` that makes each item on access
    # (images.DecodedImages), so that an item's float32 copy exists only while it is written.
    arrays: np.ndarray | Sequence[np.ndarray]
    labels: np.ndarray                    # (N,) int64
    splits: list[str]
    split_info: dict
    source_names: list[str]
    content_sha256: str
    value_range: list = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    feature_descriptions: dict = field(default_factory=dict)


def feature_ranges(features: np.ndarray) -> list[list[float]]:
    """``Dataset.value_range`` of tabular data: [min, max] per feature column."""
    return [[float(lo), float(hi)] for lo, hi in zip(features.min(axis=0), features.max(axis=0))]


def _name_taken(name: str) -> DatasetValidationError:
    return DatasetValidationError(f"A dataset named '{name}' already exists; choose another name.")


def check_name(name: str) -> str:
    name = (name or "").strip()
    max_length = Dataset._meta.get_field("name").max_length
    if not name:
        raise DatasetValidationError("Give the dataset a name.")
    if len(name) > max_length:
        raise DatasetValidationError(f"The dataset name is {len(name)} characters long; use at most {max_length}.")
    if Dataset.objects.filter(name=name).exists():
        raise _name_taken(name)
    return name


def _png_bytes(array: np.ndarray) -> bytes:
    pixels = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if pixels.shape[0] == 1:
        image = Image.fromarray(pixels[0], "L")
    else:
        image = Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # no text chunks: nothing of the original file travels along
    return buffer.getvalue()


def _insert(batch: list[Stimulus]) -> None:
    Stimulus.objects.bulk_create(batch)
    # bulk_create leaves each instance in a reference cycle with its image's FieldFile, which only the
    # cyclic garbage collector frees, whenever it runs: without this, every batch's .npy bytes stayed
    # in memory until the end of the import.
    for stimulus in batch:
        stimulus.data = None


def store(prepared: Prepared, *, progress: Progress = no_progress,
          finish: Callable[[Dataset], None] | None = None) -> Dataset:
    """Write the dataset and its stimuli in one transaction; remove saved files if it fails.

    ``finish(dataset)`` runs last inside that transaction (a worker's job marks itself succeeded there,
    so the dataset and the job's outcome commit together); when it raises, nothing is written and the
    saved images are removed, as for any other failure.
    """
    image_field = Stimulus._meta.get_field("image")
    storage = image_field.storage
    saved: list[str] = []
    is_image = prepared.modality == Modality.IMAGE
    description = "\n\n".join(p for p in (prepared.description.strip(), split_note(prepared.split_info)) if p)
    n_items = len(prepared.arrays)
    progress("writing items", 0, n_items)
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                name=prepared.name, modality=prepared.modality, source=prepared.source,
                description=description, input_shape=[int(s) for s in prepared.arrays.shape[1:]],
                class_names=prepared.class_names, feature_names=prepared.feature_names,
                feature_descriptions=prepared.feature_descriptions, content_sha256=prepared.content_sha256,
                n_items=n_items, value_range=prepared.value_range, split_info=prepared.split_info)
            batch: list[Stimulus] = []
            batch_bytes = 0
            for i, array in enumerate(prepared.arrays):
                image_name = ""
                if is_image:
                    # The opaque upload_to gives a random name: never the label or the original name.
                    target = image_field.generate_filename(None, "stimulus.png")
                    image_name = storage.save(target, ContentFile(_png_bytes(array)))
                    saved.append(image_name)
                data = array_to_npy_bytes(array)
                batch.append(Stimulus(dataset=dataset, index=i, source_name=prepared.source_names[i][:255],
                                      label=int(prepared.labels[i]), split=prepared.splits[i],
                                      data=data, image=image_name))
                batch_bytes += len(data)
                # A batch is bounded in bytes too: 500 large images would be gigabytes in one INSERT.
                if len(batch) >= common.BULK_BATCH or batch_bytes >= common.BULK_BATCH_BYTES:
                    _insert(batch)
                    batch, batch_bytes = [], 0
                progress("writing items", i + 1, n_items)
            _insert(batch)
            progress("writing items", n_items, n_items)
            if finish is not None:
                finish(dataset)
    except BaseException as exc:
        # The rolled-back rows no longer point at these files: delete them so nothing stray remains.
        for name in saved:
            storage.delete(name)
        if isinstance(exc, IntegrityError) and Dataset.objects.filter(name=prepared.name).exists():
            raise _name_taken(prepared.name) from None
        raise
    return dataset
