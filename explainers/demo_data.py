"""Bundled offline demo data (scikit-learn's copies): nothing here downloads anything.

- ``load_digits``: 8x8 handwritten digits as images (N, 1, 8, 8) in [0, 1], for ``image_cnn``.
- ``load_breast_cancer``: a handful of readable features of the Wisconsin diagnostic breast
  cancer data in raw units, for ``tabular_mlp`` (which standardizes inside the model, so
  attributions and counterfactual edits stay in the units a participant reads).

About units: the features were measured on a digitized microscope image of a fine needle
aspirate, and scikit-learn's description gives no physical scale. Lengths are therefore in
image pixels ("px"), areas in square pixels, texture in gray levels; the shape scores are
unitless ratios. We say so instead of inventing millimetres.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split

__all__ = [
    "BREAST_CANCER_FEATURES",
    "DEFAULT_BREAST_CANCER_FEATURES",
    "load_breast_cancer",
    "load_digits",
    "train_test_split_indices",
]

# Six "mean" measurements chosen to be easy to explain and not near-duplicates of one another
# (area and perimeter correlate 0.99 with radius; concavity 0.92 with concave points). A
# standardized logistic regression on them reaches about 0.93 cross-validated accuracy.
DEFAULT_BREAST_CANCER_FEATURES: tuple[str, ...] = (
    "mean radius",
    "mean texture",
    "mean smoothness",
    "mean concave points",
    "mean symmetry",
    "mean fractal dimension",
)

# Measurement -> (readable name, unit, description). Descriptions follow scikit-learn's DESCR.
_MEASUREMENTS: dict[str, tuple[str, str, str]] = {
    "radius": ("radius", "px",
               "average distance from the centre of a cell nucleus to its outline"),
    "texture": ("texture", "gray levels",
                "variation of brightness inside the nucleus (standard deviation of gray values)"),
    "perimeter": ("perimeter", "px", "length of the nucleus outline"),
    "area": ("area", "px²", "area inside the nucleus outline"),
    "smoothness": ("smoothness", "",
                   "local variation in radius lengths: higher means a bumpier outline"),
    "compactness": ("compactness", "",
                    "perimeter² / area − 1: higher means a less round, more irregular shape"),
    "concavity": ("concavity", "",
                  "how deep the inward dents in the outline are"),
    "concave points": ("concave points", "",
                       "how many inward dents the outline has (a scaled score)"),
    "symmetry": ("symmetry", "",
                 "how much the two halves of the nucleus differ: higher means less symmetric"),
    "fractal dimension": ("fractal dimension", "",
                          "roughness of the outline (\"coastline approximation\" − 1): higher "
                          "means a more jagged border"),
}
# sklearn name prefix/suffix -> (readable template, description prefix)
_STATISTICS = {
    "mean": ("Mean {}", "averaged over the nuclei in the image"),
    "error": ("{} (standard error)", "standard error over the nuclei in the image"),
    "worst": ("Worst {}", "mean of the three largest values among the nuclei in the image"),
}


def _feature_catalogue() -> dict[str, dict[str, str]]:
    catalogue: dict[str, dict[str, str]] = {}
    for key, (readable, unit, description) in _MEASUREMENTS.items():
        for stat, (name_tpl, how) in _STATISTICS.items():
            sk_name = f"{key} error" if stat == "error" else f"{stat} {key}"
            name = name_tpl.format(readable)
            catalogue[sk_name] = {
                "name": name[0].upper() + name[1:],
                "unit": unit,
                "description": f"{description[0].upper()}{description[1:]}; {how}.",
            }
    return catalogue


BREAST_CANCER_FEATURES: dict[str, dict[str, str]] = _feature_catalogue()


def load_digits() -> dict:
    """scikit-learn's 1,797 8x8 digits as float32 images (N, 1, 8, 8) scaled to [0, 1]."""
    raw = datasets.load_digits()
    X = (raw.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    return {
        "name": "digits",
        "X": np.ascontiguousarray(X),
        "y": raw.target.astype(np.int64),
        "class_names": [str(d) for d in range(10)],
        "source": "scikit-learn load_digits (UCI optical recognition of handwritten digits)",
    }


def load_breast_cancer(features: Sequence[str] = DEFAULT_BREAST_CANCER_FEATURES) -> dict:
    """Selected Wisconsin diagnostic breast cancer features in raw units, float32 (N, F).

    ``features`` are scikit-learn's feature names (e.g. ``"mean radius"``), in the order
    wanted. Labels follow scikit-learn: 0 = malignant, 1 = benign.
    """
    raw = datasets.load_breast_cancer()
    all_names = [str(n) for n in raw.feature_names]
    features = list(features)
    unknown = [f for f in features if f not in all_names]
    if unknown or not features:
        raise ValueError(f"Unknown breast cancer feature(s) {unknown}; choose from {all_names}.")
    if len(set(features)) != len(features):
        raise ValueError(f"Breast cancer features must not repeat; got {features}.")
    columns = [all_names.index(f) for f in features]
    info = [BREAST_CANCER_FEATURES[f] for f in features]
    return {
        "name": "breast_cancer",
        "X": np.ascontiguousarray(raw.data[:, columns].astype(np.float32)),
        "y": raw.target.astype(np.int64),
        "class_names": [str(n) for n in raw.target_names],  # ["malignant", "benign"]
        "source_features": features,
        "feature_names": [i["name"] for i in info],
        "feature_units": [i["unit"] for i in info],
        "feature_descriptions": [i["description"] for i in info],
        "source": "scikit-learn load_breast_cancer (UCI Breast Cancer Wisconsin (Diagnostic))",
    }


def train_test_split_indices(n: int, *, test_fraction: float, seed: int,
                             stratify: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train_indices, test_indices), each sorted, optionally stratified."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1; got {test_fraction}.")
    indices = np.arange(int(n))
    train, test = train_test_split(indices, test_size=test_fraction, random_state=int(seed),
                                   shuffle=True, stratify=stratify)
    return np.sort(train), np.sort(test)
