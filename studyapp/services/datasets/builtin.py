"""Importing the bundled demo data (scikit-learn's digits and breast cancer sets), idempotently."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import numpy as np

from studyapp.models import Dataset
from studyapp.models.base import Modality
from studyapp.services.datasets.common import DatasetValidationError, array_to_npy_bytes
from studyapp.services.datasets.labels import split_items
from studyapp.services.datasets.store import Prepared, feature_ranges, store

BUILTIN_DATASETS: dict[str, str] = {
    "digits": "Handwritten digits (scikit-learn)",
    "breast_cancer": "Breast cancer diagnosis (scikit-learn)",
}


def _content_hash(arrays: np.ndarray, labels: np.ndarray, meta: dict) -> str:
    digest = hashlib.sha256()
    digest.update(array_to_npy_bytes(arrays))
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    digest.update(json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def _prepare(which: str, raw: dict, *, loader: str, modality: str, about: str,
             feature_descriptions: dict | None = None) -> Prepared:
    """A built-in dataset from what an ``explainers.demo_data`` loader returned."""
    X, y = np.asarray(raw["X"], dtype=np.float32), np.asarray(raw["y"], dtype=np.int64)
    splits, split_info = split_items(y)
    # The hash identifies the content (and so whether an existing import is the same). split_info is
    # left out on purpose: it is derived from the splits, and adding it would change existing hashes.
    meta = {"class_names": raw["class_names"], "splits": splits}
    if feature_descriptions is not None:
        meta["features"] = feature_descriptions
    return Prepared(
        name=BUILTIN_DATASETS[which], modality=modality, source=Dataset.Source.BUILTIN,
        description=f"{raw.get('source', f'scikit-learn {loader}')}. {about}",
        class_names=list(raw["class_names"]), arrays=X, labels=y, splits=splits, split_info=split_info,
        source_names=[f"{loader} index {i}" for i in range(len(y))], content_sha256=_content_hash(X, y, meta),
        value_range=[0.0, 1.0] if modality == Modality.IMAGE else feature_ranges(X),
        feature_names=list(raw.get("feature_names", [])), feature_descriptions=feature_descriptions or {})


def _builtin_digits() -> Prepared:
    from explainers.demo_data import load_digits

    return _prepare("digits", load_digits(), loader="load_digits", modality=Modality.IMAGE,
                    about="8x8 grayscale images scaled to [0, 1].")


def _builtin_breast_cancer() -> Prepared:
    from explainers.demo_data import load_breast_cancer

    raw = load_breast_cancer()
    described = {n: {"description": d, "unit": u}
                 for n, d, u in zip(raw["feature_names"], raw["feature_descriptions"], raw["feature_units"])}
    return _prepare("breast_cancer", raw, loader="load_breast_cancer", modality=Modality.TABULAR,
                    about="Measurements of cell nuclei in a digitized microscope image, in raw units: lengths in "
                          "image pixels, texture in gray levels, shape scores unitless.",
                    feature_descriptions=described)


_BUILTIN_LOADERS: dict[str, Callable[[], Prepared]] = {
    "digits": _builtin_digits,
    "breast_cancer": _builtin_breast_cancer,
}


def dataset_import_builtin(*, which: str) -> Dataset:
    """Import bundled demo data; idempotent: an identical existing import is returned untouched."""
    if which not in _BUILTIN_LOADERS:
        raise DatasetValidationError(f"Unknown built-in dataset '{which}'; choose one of: "
                                     f"{', '.join(BUILTIN_DATASETS)}.")
    prepared = _BUILTIN_LOADERS[which]()
    existing = Dataset.objects.filter(name=prepared.name).first()
    if existing is None:
        try:
            return store(prepared)
        except DatasetValidationError:
            # Another process imported it between our check and our insert.
            existing = Dataset.objects.filter(name=prepared.name).first()
            if existing is None:
                raise
    if existing.content_sha256 != prepared.content_sha256:
        raise DatasetValidationError(
            f"A dataset named '{prepared.name}' already exists with different content (it was imported with "
            f"another version of the demo data). Rename or delete it before importing again.")
    return existing
