"""Class names, labels and train/test splits, as read from a file or made at import."""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable

import numpy as np

from studyapp.models import Stimulus
from studyapp.services.datasets import common
from studyapp.services.datasets.common import examples, quoted


def sorted_labels(labels: Iterable[str]) -> list[str]:
    distinct = set(labels)
    if all(re.fullmatch(r"[+-]?\d+", s) for s in distinct):
        return sorted(distinct, key=lambda s: (int(s), s))
    return sorted(distinct)


def check_class_list(names: list[str], *, source: str) -> list[str]:
    if len(names) > common.MAX_CLASSES:
        return [f"{source} lists {len(names):,} classes; a dataset may have at most {common.MAX_CLASSES:,}."]
    problems = []
    if any(not n for n in names):
        problems.append(f"{source} contains an empty class name; remove it.")
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1 and n)
    if duplicates:
        problems.append(f"{source} lists these classes more than once: {examples([quoted(d) for d in duplicates])}. "
                        f"Each class must appear exactly once.")
    if len(set(names)) < 2:
        problems.append(f"{source} must list at least 2 classes (found {len(set(names))}).")
    return problems


def labels_to_indices(labels: list[str], row_numbers: list[int], *, class_names: list[str] | None,
                      filename: str, class_source: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(class_names, label indices, problems) for string labels as read from a file."""
    problems = []
    empty = [n for n, lab in zip(row_numbers, labels) if not lab]
    if empty:
        problems.append(f"{filename}: the label is empty in row(s) {examples(empty)}. Every item needs a label.")
    present = [lab for lab in labels if lab]
    if class_names is None:
        class_names = sorted_labels(present)
        if len(class_names) < 2:
            problems.append(f"{filename} has fewer than 2 classes (found: {quoted(', '.join(class_names)) or 'none'}). "
                            f"A classification dataset needs items of at least 2 classes.")
        elif len(class_names) > common.MAX_CLASSES:
            problems.append(f"{filename} has {len(class_names):,} different labels; a dataset may have at most "
                            f"{common.MAX_CLASSES:,} classes. Is the label column the right one?")
        problems += _rare_label_questions(labels, row_numbers, filename=filename)
    else:
        known = set(class_names)
        rows_by_unknown: dict[str, list[int]] = defaultdict(list)
        for n, lab in zip(row_numbers, labels):
            if lab and lab not in known:
                rows_by_unknown[lab].append(n)
        problems += _unknown_label_problems(rows_by_unknown, class_names, filename=filename,
                                            class_source=class_source)
        if not rows_by_unknown and not empty and len(set(present)) < 2:
            problems.append(f"{filename} has items of fewer than 2 classes (only: {quoted(', '.join(set(present)))}). "
                            f"A classification dataset needs items of at least 2 classes.")
    lookup = {name: i for i, name in enumerate(class_names)}
    indices = np.array([lookup.get(lab, -1) for lab in labels], dtype=np.int64)
    return class_names, indices, problems


def _unknown_label_problems(rows_by_unknown: dict[str, list[int]], class_names: list[str], *, filename: str,
                            class_source: str) -> list[str]:
    """One message for each of the first few labels that are not classes, then one for the rest: N unknown
    labels once gave N messages each listing every class (a 325 MB admin page for a 42 KB upload)."""
    classes = examples([quoted(c) for c in class_names[:20]], 20, total=len(class_names))
    problems = []
    unknown = list(rows_by_unknown.items())
    for lab, rows in unknown[:common.EXAMPLES]:
        more = f" (and {len(rows) - 1:,} more row(s))" if len(rows) > 1 else ""
        problems.append(f"{filename} row {rows[0]}{more}: '{quoted(lab)}' is not one of the classes in "
                        f"{class_source} ({classes}). Fix the label or add the class to {class_source}.")
    rest = unknown[common.EXAMPLES:]
    if rest:
        listed = [f"'{quoted(lab)}' (row {rows[0]})" for lab, rows in rest[:common.EXAMPLES]]
        problems.append(f"{filename} has {len(rest):,} more labels that are not classes in {class_source}: "
                        f"{examples(listed, total=len(rest))}. Check that {class_source} lists every class.")
    return problems


RARE_AMONG_FREQUENT = 10  # a label seen once where the other classes have at least this many items


def _rare_label_questions(labels: list[str], row_numbers: list[int], *, filename: str) -> list[str]:
    """A label that appears once among frequent ones is more often a typo than a class: asked about
    before a new class is created from it (listing the classes explicitly confirms it)."""
    counts = Counter(lab for lab in labels if lab)
    frequent = [lab for lab, n in counts.items() if n >= RARE_AMONG_FREQUENT]
    if len(frequent) < 2:
        return []
    once = [lab for lab, n in counts.items() if n == 1]
    if not once:
        return []
    row_of = {value: r for r, value in zip(row_numbers, labels) if counts.get(value) == 1}
    others = [counts[f] for f in frequent]
    confirm = "list all the classes (classes.txt in an image zip, or the class names field) to confirm it"
    questions = []
    for lab in once[:common.EXAMPLES]:
        questions.append(
            f"{filename} row {row_of[lab]}: the label '{quoted(lab)}' appears once, while the other classes have "
            f"{min(others)} to {max(others)} items: a typo?{common.did_you_mean(lab, frequent)} Fix it, or if it is "
            f"a real class, {confirm}.")
    if len(once) > common.EXAMPLES:
        listed = [f"'{quoted(lab)}' (row {row_of[lab]})" for lab in once[common.EXAMPLES:2 * common.EXAMPLES]]
        questions.append(f"{filename} has {len(once) - common.EXAMPLES:,} more labels that appear only once: "
                         f"{examples(listed, total=len(once) - common.EXAMPLES)}. Fix them, or if they are real "
                         f"classes, {confirm}.")
    return questions


# --------------------------------------------------------------------------- train/test splits

def parse_splits(values: list[str] | None, row_numbers: list[int], *,
                 filename: str) -> tuple[list[str] | None, list[str]]:
    """(splits, problems) of a file's split column; (None, []) when the file has none."""
    if values is None:
        return None, []
    splits = [v.strip().lower() for v in values]
    bad = [(n, v) for n, v, s in zip(row_numbers, values, splits) if s not in ("train", "test")]
    if bad:
        listed = examples([f"row {n}: '{quoted(v)}'" for n, v in bad[:common.EXAMPLES]], total=len(bad))
        return splits, [f"{filename}: the split column must say 'train' or 'test' in every row; "
                        f"found {listed}. Fix these values or delete the split column to let the "
                        f"import make a seeded 80/20 split."]
    return splits, []


def split_items(labels: np.ndarray, *, from_file: list[str] | None = None) -> tuple[list[str], dict]:
    """(split of each item, ``Dataset.split_info``): the file's own split, else a seeded 80/20 one.

    The seeded split is stratified by class when every class has enough items. ``split_info`` is
    ``{"method": "from_file", "n_train", "n_test"}`` or, for a split made here, ``{"method":
    "seeded_stratified" | "seeded_random", "seed", "test_fraction", "n_train", "n_test"}``.
    """
    if from_file is not None:
        return from_file, {"method": "from_file", **_counts(from_file)}
    from explainers.demo_data import train_test_split_indices

    n = len(labels)
    seed, fraction = common.SPLIT_SEED, common.TEST_FRACTION
    try:
        _, test = train_test_split_indices(n, test_fraction=fraction, seed=seed, stratify=labels)
        method = "seeded_stratified"
    except ValueError:  # a class with a single item, or fewer test slots than classes
        _, test = train_test_split_indices(n, test_fraction=fraction, seed=seed, stratify=None)
        method = "seeded_random"
    splits = [Stimulus.Split.TRAIN.value] * n
    for i in test:
        splits[int(i)] = Stimulus.Split.TEST.value
    return splits, {"method": method, "seed": seed, "test_fraction": fraction, **_counts(splits)}


def _counts(splits: list[str]) -> dict[str, int]:
    return {"n_train": splits.count(Stimulus.Split.TRAIN.value), "n_test": splits.count(Stimulus.Split.TEST.value)}


def split_note(split_info: dict) -> str:
    """The sentence for the description about a split made at import ("" for a split from the file)."""
    if split_info.get("method") == "from_file":
        return ""
    how = ("stratified by class" if split_info["method"] == "seeded_stratified"
           else "not stratified (some classes have too few items)")
    fraction = split_info["test_fraction"]
    return (f"Train/test split made at import: {1 - fraction:.0%} train / {fraction:.0%} test, {how}, "
            f"seed {split_info['seed']} ({split_info['n_train']} train, {split_info['n_test']} test).")
