"""Importing datasets: a zip of images, a CSV of numeric features, or built-in demo data.

Everything uploaded is untrusted. An import first reads and validates the whole upload in
memory (never extracting anything to disk) and only then writes, in one transaction, so a
rejected upload leaves no Dataset, no Stimulus and no file behind. Validation problems are
collected and raised together as :class:`DatasetValidationError`, each message saying what is
wrong, where, and what to do; a refusal shows at most ``MAX_MESSAGES`` messages, and each lists
a few examples and how many more there are.

The work of an import is bounded before it is done: a zip's entry count is read from its end
records before zipfile parses the directory; an image's size is read from its header, and the
memory it would take is counted against ``MAX_DECODED_BYTES`` before it is decoded; decoded images
are held as 8/16-bit arrays and made float32 one at a time while they are written; a CSV's feature
count (setting ``MAX_DATASET_FEATURES``) is read from the header's bytes before any row is parsed,
and its rows are parsed and checked a chunk at a time, up to ``MAX_TABULAR_ROWS`` and
``MAX_TABULAR_VALUES``. Large uploads are imported by a worker (studyapp.services.dataset_imports): the
request runs only ``tabular_upload_check`` / ``images_upload_check``, the checks that cost little whatever
the size, and the import reports its progress through its ``progress`` argument.

Conventions a consumer needs:

- Row numbers in messages are spreadsheet row numbers: the header is row 1, data starts at row 2.
- ``Stimulus.data`` is a float32 ``.npy`` blob (read it with :func:`stimulus_array`): images are
  (C, H, W) in [0, 1], C = 1 when every image is grayscale, otherwise 3 (RGB); tabular rows are
  (F,) in the units of the CSV.
- ``Dataset.value_range``: images ``[0.0, 1.0]``; tabular ``[[min, max], ...]``, one pair per
  feature in ``feature_names`` order (features have different units, so one overall range would
  make SmoothGrad noise far too large for some features and invisible for others).
- Class-index order: ``classes.txt`` / ``class_names`` when given, else the sorted distinct labels
  (numerically when every label is an integer, so "2" comes before "10").
- Without a ``split`` column, items get a seeded, class-stratified 80/20 train/test split; a
  sentence in the description says so, and ``Dataset.split_info`` records the same facts
  (``method`` "seeded_stratified" or "seeded_random", ``seed``, ``test_fraction``, ``n_train``,
  ``n_test``). With a split column it is ``{"method": "from_file", "n_train", "n_test"}``.

Layout: ``common`` (the error, limits, ``.npy`` blobs, reading uploads and CSV, message helpers),
``labels`` (classes and splits), ``store`` (the all-or-nothing write), ``images``, ``tabular`` and
``builtin`` (one kind of import each). The limits are re-exported here for reading; to adjust one,
set it on :mod:`studyapp.services.datasets.common`, which the code reads when it runs.
"""
from __future__ import annotations

from studyapp.services.datasets.builtin import BUILTIN_DATASETS, dataset_import_builtin
from studyapp.services.datasets.common import (BULK_BATCH, EXAMPLES, MAX_ARCHIVE_ENTRIES, MAX_COMPRESSION_RATIO,
                                               MAX_DECODED_BYTES, MAX_ENTRY_BYTES, MAX_IMAGE_PIXELS, MAX_MESSAGES,
                                               MAX_TABULAR_ROWS, MAX_TABULAR_VALUES, MAX_UNCOMPRESSED_FACTOR,
                                               RATIO_CHECK_MIN_BYTES, SPLIT_SEED, TEST_FRACTION,
                                               DatasetValidationError, UploadCheck, array_to_npy_bytes,
                                               stimuli_arrays, stimulus_array)
from studyapp.services.datasets.images import dataset_import_images, images_upload_check
from studyapp.services.datasets.tabular import dataset_import_tabular, tabular_upload_check

__all__ = [
    "BUILTIN_DATASETS",
    "BULK_BATCH",
    "DatasetValidationError",
    "EXAMPLES",
    "MAX_ARCHIVE_ENTRIES",
    "MAX_COMPRESSION_RATIO",
    "MAX_DECODED_BYTES",
    "MAX_ENTRY_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_MESSAGES",
    "MAX_TABULAR_ROWS",
    "MAX_TABULAR_VALUES",
    "MAX_UNCOMPRESSED_FACTOR",
    "RATIO_CHECK_MIN_BYTES",
    "SPLIT_SEED",
    "TEST_FRACTION",
    "UploadCheck",
    "array_to_npy_bytes",
    "dataset_import_builtin",
    "dataset_import_images",
    "dataset_import_tabular",
    "images_upload_check",
    "stimuli_arrays",
    "stimulus_array",
    "tabular_upload_check",
]
