"""Import a study whose data were collected elsewhere (jsPsych, Gorilla, Qualtrics...) from one
long-format CSV file, as a study of ``source`` "external".

The data are stored as the platform's own rows (Participant, Trial, Response,
QuestionnaireAnswer), so exclusions, the confirmatory analysis, the report and the exports read
them exactly as they read a study run here. Nothing is fabricated: there is no model, so no
model output; the truth of an item is unknown (``Stimulus.label`` empty), so ``truth`` and
``model_output`` export as empty cells; whether an answer was right comes from the file.

The file (UTF-8, comma-separated, one header row; a UTF-8 byte-order mark is allowed; column
names are matched without regard to case or surrounding spaces; other columns are ignored and
listed in the import record) has one row per trial, taken in file order as each participant's
trial sequence:

==================  ========  ==========================================================
column              needed    meaning and allowed values
==================  ========  ==========================================================
participant         yes       the participant's id in the file (at most 128 characters);
                              stored as ``Participant.external_id``
condition (or arm)  yes       the condition the participant was in (at most 80
                              characters). Conditions are between participants: one
                              participant in two conditions is refused
phase               yes       pre_test, post_test, test, practice or learning
task                no        forward (the default when the column or the cell is
                              empty), counterfactual_predict or counterfactual_choose
item                yes       the item's id in the file (at most 255 characters); one
                              row per participant, item and phase
correct             yes       0/1 or true/false: whether the answer was right
rt_ms               yes       response time in milliseconds (a number, 0 to 86,400,000;
                              rounded to a whole number)
confidence          no        1-7 (empty: not asked)
response            no        the option chosen, a whole number >= 0, in every row when
                              the column is there. Without it the stored answer is the
                              correctness (1 right, 0 wrong), recorded as such in the
                              import record, and the straight-lining rule is refused
n_options           no        how many options the trial offered, a whole number >= 2;
                              sets the chance level. Rows without it take the form's
                              "options per trial"; every row needs one, and the forward
                              trials of pre_test/post_test/test share one value (forward
                              accuracy is tested against one chance level)
likert_<item>       no        a questionnaire rating 1-7 of item <item> (lowercase
                              letters, digits and _, starting with a letter): one value
                              per participant, repeated on its rows or given on some of
                              them (empty elsewhere)
==================  ========  ==========================================================

Rows are numbered as in a spreadsheet: the header is row 1, the first data row row 2. A file
with problems is refused as a whole, listing the first ``MAX_ERRORS_SHOWN`` problems by row and
column and then how many more there are; nothing is stored. Memory and time are bounded: the file
is read in chunks of ``CHUNK_ROWS`` rows (pandas), at most ``max_rows`` data rows and
``max_columns`` columns (beyond either the file is refused, saying so), and it is written in
batches of ``WRITE_BATCH`` trials.

What is stored (all in one transaction): a Study (draft, ``source`` external, no model) whose
``dataset`` is a Dataset of source and modality "external" with one Stimulus per distinct item
(``source_name`` = the item id, no label, no input); an Edit of kind "external" per item used in
counterfactual_predict trials (the platform's trials of that task name the edit shown); one Arm
per condition (the control condition of kind control, the others of kind external, named by the
form's "code = name" lines or by their code); per participant a completed Participant of source
external (``external_id`` = the file's id; consent, instructions and session times were not
recorded here: the first two are empty, start and completion are both the import time, and the
exclusion rules that need them are refused), its Trials and Responses
(``idempotency_key`` a UUID5 of the study and the row, ``payload_sha256`` of the row's values) and
its QuestionnaireAnswers; and an ExternalStudyImport with the file name, SHA-256, row count and
import time. Then the researcher adds hypotheses and freezes the plan
(``studyapp.services.studies.study_freeze_external``); a plan that cannot run on these data
(``external_plan_problems``) is never frozen.
"""
from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import io
import json
import re
import uuid
from typing import BinaryIO

import numpy as np
import pandas as pd
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from studyapp.analysis.outcomes import COUNTERFACTUAL_TASKS
from studyapp.models import (Arm, Dataset, Edit, ExternalStudyImport, Participant, QuestionnaireAnswer, Response,
                             Stimulus, Study, Trial)
from studyapp.models.data import DatasetModality
from studyapp.services.errors import ServiceError

# Sized for a web request: the import runs in it, and gunicorn's default worker timeout is 30 s.
# Measured on 2 cores shared with other test runs: 20,000 rows in 13 s, 100,000 in 84 s.
MAX_ROWS = 50_000
MAX_COLUMNS = 200
MAX_ERRORS_SHOWN = 20
CHUNK_ROWS = 50_000
WRITE_BATCH = 5_000
HASH_BLOCK = 1 << 20

PHASES = ("pre_test", "post_test", "test", "practice", "learning")
TEST_PHASES = ("pre_test", "post_test", "test")
TASKS = ("forward", "counterfactual_predict", "counterfactual_choose")
REQUIRED = {
    "participant": "the participant's id",
    "condition": "the condition (arm) the participant was in; a column named arm is taken too",
    "phase": "pre_test, post_test, test, practice or learning",
    "item": "the item's id",
    "correct": "0/1 or true/false",
    "rt_ms": "the response time in milliseconds",
}
OPTIONAL = ("task", "confidence", "response", "n_options")
LIKERT_PREFIX = "likert_"
LIKERT_ITEM = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_RT_MS = 86_400_000  # Response's check constraint: below a day
TRUE, FALSE = frozenset({"1", "true", "1.0"}), frozenset({"0", "false", "0.0"})
# Exclusion rules that read what a file does not give (times, consent, attention checks).
RULES_NEEDING_PLATFORM_DATA = {
    "max_failed_attention_checks": "attention checks are not imported (leave them out of the file, or apply the "
                                   "rule before the import)",
    "total_seconds_window": "the file gives no session start and end times",
    "max_comprehension_attempts": "the file gives no comprehension-check attempts",
    "min_instructions_seconds": "the file gives no time on the instructions",
}
# Keys of UUID5 idempotency keys: one namespace for imported answers.
ANSWER_NAMESPACE = uuid.UUID("0b7c7f4e-6a51-5d1e-9a55-6a2d3c1f8e10")


# ---------------------------------------------------------------- reading


class _Problems:
    """Problems found, by row and column: the first ``shown`` kept, the rest counted."""

    def __init__(self, shown: int) -> None:
        self.shown, self.messages, self.total = shown, [], 0

    @property
    def full(self) -> bool:
        """No more messages are kept (the rest are only counted)."""
        return len(self.messages) >= self.shown

    def add(self, message: str) -> None:
        self.total += 1
        if not self.full:
            self.messages.append(message)

    def add_cells(self, rows: np.ndarray, column: str, messages) -> None:
        """One problem per row: ``messages`` a string, or one string per row."""
        for i, row in enumerate(rows.tolist()):
            if len(self.messages) >= self.shown:
                self.total += len(rows) - i
                return
            text = messages if isinstance(messages, str) else messages[i]
            self.add(f"Row {row}, column {column}: {text}")

    def raise_if_any(self, *, file_name: str) -> None:
        if not self.total:
            return
        more = self.total - len(self.messages)
        head = (f"The file {file_name} was not imported (nothing was stored): {self.total} problem"
                f"{'s' if self.total != 1 else ''} found. Rows are numbered as in a spreadsheet (the header is row 1).")
        raise ServiceError([head, *self.messages, *([f"... and {more} more."] if more else [])])


@dataclasses.dataclass(frozen=True)
class ParsedFile:
    """A valid file, typed: one row per trial in file order (``row`` = spreadsheet row)."""

    file_name: str
    sha256: str
    header: list[str]
    used: list[str]
    ignored: list[str]
    rows: pd.DataFrame
    likert_items: list[str]
    has_response: bool


def _sha256_and_utf8(file: BinaryIO, *, file_name: str) -> tuple[str, int]:
    """SHA-256 of the bytes and their size, checking on the way that they are UTF-8 text (the
    first bad byte is reported with its row, before pandas reads anything)."""
    digest, size, line = hashlib.sha256(), 0, 1
    decoder = codecs.getincrementaldecoder("utf-8")()
    file.seek(0)
    while block := file.read(HASH_BLOCK):
        digest.update(block)
        try:
            decoder.decode(block)
        except UnicodeDecodeError as exc:
            bad = block[exc.start:exc.start + 1].hex()
            line += block[:exc.start].count(b"\n")
            raise ServiceError(
                f"The file {file_name} is not UTF-8 text: line {line} has the byte 0x{bad}, which UTF-8 does not "
                "allow (the file was probably saved as Latin-1 or Windows-1252). Save it as \"CSV UTF-8\" (Excel) "
                "or export it as UTF-8, then upload it again. Nothing was stored.") from None
        line += block.count(b"\n")
        size += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ServiceError(f"The file {file_name} is not UTF-8 text: it ends in the middle of a character. Save it "
                           "as \"CSV UTF-8\" and upload it again. Nothing was stored.") from None
    return digest.hexdigest(), size


def _header(file: BinaryIO, *, file_name: str, max_columns: int) -> list[str]:
    file.seek(0)
    text = io.TextIOWrapper(file, encoding="utf-8-sig", newline="")
    try:
        header = next(csv.reader(text), None)
    finally:
        text.detach()  # the upload stays open for pandas
    if not header or not any(h.strip() for h in header):
        raise ServiceError(f"The file {file_name} is empty: it needs a header row ({', '.join(REQUIRED)}, ...) and "
                           "one row per trial. Nothing was stored.")
    names = [h.strip().lower() for h in header]
    if len(names) > max_columns:
        raise ServiceError(f"The file {file_name} has {len(names)} columns; at most {max_columns} are read. Keep the "
                           "documented columns (and your likert_ columns) and upload it again. Nothing was stored.")
    problems = []
    blank = [i + 1 for i, n in enumerate(names) if not n]
    if blank:
        problems.append(f"Column{'s' if len(blank) > 1 else ''} {', '.join(map(str, blank))} of the header "
                        f"{'have' if len(blank) > 1 else 'has'} no name.")
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        problems.append(f"The header names {', '.join(repr(n) for n in repeated)} more than once (names are "
                        "compared without regard to case): each column must be named once.")
    if "condition" in names and "arm" in names:
        problems.append("The file has both a condition and an arm column: keep the one that says which condition "
                        "each participant was in.")
    present = set(names) | ({"condition"} if "arm" in names else set())
    for column, meaning in REQUIRED.items():
        if column not in present:
            problems.append(f"The file has no column '{column}' ({meaning}).")
    for name in names:
        if name.startswith(LIKERT_PREFIX) and not LIKERT_ITEM.match(name[len(LIKERT_PREFIX):]):
            problems.append(f"Column '{name}': a Likert column is named likert_<item>, where <item> starts with a "
                            "letter and has only lowercase letters, digits and _ (at most 64).")
    if problems:
        found = ", ".join(h.strip() or "(no name)" for h in header[:40]) + (" ..." if len(header) > 40 else "")
        raise ServiceError([f"The file {file_name} was not imported (nothing was stored): its header does not fit "
                            f"the long format. Its columns: {found}.", *problems])
    return names


def _chunks(file: BinaryIO, *, header: list[str], used: list[str], file_name: str, max_rows: int):
    """The file's data rows in chunks of typed-as-text columns, with their spreadsheet row numbers."""
    file.seek(0)
    reader = pd.read_csv(file, encoding="utf-8-sig", header=0, names=header, usecols=used, dtype=str,
                         keep_default_na=False, na_filter=False, chunksize=CHUNK_ROWS, engine="c",
                         # Blank lines are read (as empty rows, dropped below) so that the rows
                         # after them keep their spreadsheet numbers.
                         skip_blank_lines=False)
    seen = 0
    try:
        for chunk in reader:
            seen += len(chunk)
            if seen > max_rows:
                raise ServiceError(f"The file {file_name} has more than {max_rows:,} data rows, the most one import "
                                   "takes. Split it (for example by wave or by condition set) into separate studies, "
                                   "or ask the administrator to raise the limit. Nothing was stored.")
            chunk = chunk.fillna("")
            chunk = chunk.loc[(chunk != "").any(axis=1)]
            # The index runs on across chunks: 0 is the first data row, spreadsheet row 2.
            yield chunk.index.to_numpy() + 2, chunk
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            expected, line, saw = match.groups()
            raise ServiceError(f"The file {file_name} was not imported (nothing was stored): line {line} has {saw} "
                               f"fields but the header has {expected}. A value that contains a comma must be in "
                               "double quotes.") from None
        raise ServiceError(f"The file {file_name} could not be read as CSV ({exc}). Nothing was stored.") from None
    finally:
        reader.close()


def _text(values: pd.Series, column: str, limit: int, rows: np.ndarray, problems: _Problems) -> pd.Series:
    values = values.str.strip()
    empty = (values == "").to_numpy()
    problems.add_cells(rows[empty], column, "is empty")
    long = (values.str.len() > limit).to_numpy()
    problems.add_cells(rows[long], column, f"is longer than {limit} characters")
    return values


def _choice(values: pd.Series, column: str, allowed: tuple[str, ...], rows: np.ndarray, problems: _Problems,
            *, default: str | None = None, refused: dict[str, str] | None = None) -> pd.Series:
    values = values.str.strip().str.lower()
    if default is not None:
        values = values.where(values != "", default)
    bad = ~values.isin(allowed).to_numpy()
    messages = [refused[v] if refused and v in refused else
                (f"'{v}' is not one of {', '.join(allowed)}" if v else f"is empty (one of {', '.join(allowed)})")
                for v in values[bad].tolist()]
    problems.add_cells(rows[bad], column, messages)
    return values


def _integers(values: pd.Series, column: str, rows: np.ndarray, problems: _Problems, *, low: int, high: int,
              required: bool, what: str, whole: bool = True) -> pd.Series:
    """Numbers in [low, high] as nullable Int64 (rounded unless ``whole`` asks for whole numbers)."""
    text = values.str.strip()
    empty = text == ""
    numbers = pd.to_numeric(text.where(~empty), errors="coerce")
    bad_number = (~empty & (numbers.isna() | ~np.isfinite(numbers.fillna(0)))).to_numpy()
    fraction = (~empty & numbers.notna() & (numbers != numbers.round())).to_numpy() if whole else np.zeros(len(text), bool)
    out_of_range = (~empty & numbers.notna() & ((numbers < low) | (numbers > high))).to_numpy()
    if required:
        problems.add_cells(rows[empty.to_numpy()], column, f"is empty ({what})")
    problems.add_cells(rows[bad_number], column, [f"'{v}' is not a number ({what})" for v in text[bad_number]])
    problems.add_cells(rows[fraction & ~out_of_range], column,
                       [f"'{v}' is not a whole number ({what})" for v in text[fraction & ~out_of_range]])
    problems.add_cells(rows[out_of_range], column, [f"{v} is outside {low}-{high:,} ({what})"
                                                    for v in text[out_of_range]])
    # Refused values become missing (the file is refused anyway): an out-of-range number would
    # not fit the integer column.
    return numbers.where(~(bad_number | out_of_range)).round().astype("Int64")


def _typed_chunk(chunk: pd.DataFrame, rows: np.ndarray, *, names: dict[str, str], likert_columns: list[str],
                 default_options: int | None, problems: _Problems) -> pd.DataFrame:
    condition = names["condition"]
    out = pd.DataFrame({"row": rows})
    out["participant"] = _text(chunk["participant"], "participant", 128, rows, problems).to_numpy()
    out["condition"] = _text(chunk[condition], condition, 80, rows, problems).to_numpy()
    out["phase"] = _choice(chunk["phase"], "phase", PHASES, rows, problems).to_numpy()
    task = chunk["task"] if "task" in chunk else pd.Series([""] * len(chunk), index=chunk.index)
    out["task"] = _choice(task, "task", TASKS, rows, problems, default="forward", refused={
        "attention_check": "attention checks are not imported: the platform scores them against an instructed "
                           "answer that the file does not give. Leave those rows out (apply your attention "
                           "exclusions before the import)"}).to_numpy()
    out["item"] = _text(chunk["item"], "item", 255, rows, problems).to_numpy()
    correct = chunk["correct"].str.strip().str.lower()
    bad = ~correct.isin(TRUE | FALSE).to_numpy()
    problems.add_cells(rows[bad], "correct", [f"'{v}' is not 0, 1, true or false" if v else "is empty (0/1 or "
                                              "true/false)" for v in correct[bad].tolist()])
    out["correct"] = correct.isin(TRUE).to_numpy()
    out["rt_ms"] = _integers(chunk["rt_ms"], "rt_ms", rows, problems, low=0, high=MAX_RT_MS, required=True,
                             what="milliseconds", whole=False).to_numpy()
    if "confidence" in chunk:
        out["confidence"] = _integers(chunk["confidence"], "confidence", rows, problems, low=1, high=7,
                                      required=False, what="a rating 1-7, or empty").to_numpy()
    else:
        out["confidence"] = pd.array([pd.NA] * len(chunk), dtype="Int64")
    if "response" in chunk:
        out["response"] = _integers(chunk["response"], "response", rows, problems, low=0, high=2**31 - 1,
                                    required=True, what="the option chosen, a whole number >= 0").to_numpy()
    options = (chunk["n_options"] if "n_options" in chunk
               else pd.Series([""] * len(chunk), index=chunk.index)).str.strip()
    if default_options is not None:
        options = options.where(options != "", str(default_options))
    out["n_options"] = _integers(options, "n_options", rows, problems, low=2, high=32_767, required=True,
                                 what="how many options the trial offered; or give the form's options per "
                                      "trial").to_numpy()
    for column in likert_columns:
        out[column] = _integers(chunk[column], column, rows, problems, low=1, high=7, required=False,
                                what="a rating 1-7, or empty").to_numpy()
    return out


def _first_rows(frame: pd.DataFrame, n: int = 3) -> str:
    rows = frame["row"].tolist()
    shown = ", ".join(map(str, rows[:n])) + (f" and {len(rows) - n} more" if len(rows) > n else "")
    return f"row{'s' if len(rows) > 1 else ''} {shown}"


def _cross_row_problems(rows: pd.DataFrame, *, condition: str, likert_columns: list[str],
                        problems: _Problems) -> None:
    """What no single row shows: a participant in two conditions, a repeated (participant, item,
    phase), two Likert ratings of one item by one participant, forward chance levels that differ."""
    arms = rows.groupby("participant", sort=False)["condition"].nunique()
    for participant in arms.index[arms > 1]:
        if problems.full:  # counted, not described: a file of mislabelled rows stays fast
            problems.add("")
            continue
        mine = rows.loc[rows["participant"] == participant]
        seen = ", ".join(f"'{c}' ({_first_rows(g)})" for c, g in mine.groupby("condition", sort=False))
        problems.add(f"Column {condition}: participant '{participant}' is in more than one condition: {seen}. "
                     "Conditions are between participants (each person is in one arm); a participant in two "
                     "conditions is a mislabelled row or a repeated id.")
    key = ["participant", "item", "phase"]
    repeated = rows.loc[rows.duplicated(key, keep=False)]
    for (participant, item, phase), group in repeated.groupby(key, sort=False):
        if problems.full:
            problems.add("")
            continue
        problems.add(f"Rows {', '.join(map(str, group['row'].tolist()[:5]))}: participant '{participant}' answers "
                     f"item '{item}' in phase {phase} more than once; each participant answers an item once per phase.")
    for column in likert_columns:
        values = rows.loc[rows[column].notna(), ["participant", "row", column]]
        counts = values.groupby("participant", sort=False)[column].nunique()
        for participant in counts.index[counts > 1]:
            if problems.full:
                problems.add("")
                continue
            mine = values.loc[values["participant"] == participant]
            shown = ", ".join(f"{v} ({_first_rows(g)})" for v, g in mine.groupby(column, sort=False))
            problems.add(f"Column {column}: participant '{participant}' has different ratings: {shown}. A Likert "
                         "item has one rating per participant.")
    forward = rows.loc[(rows["task"] == "forward") & rows["phase"].isin(TEST_PHASES)]
    if forward["n_options"].nunique() > 1:
        shown = "; ".join(f"{int(v)} on {_first_rows(g)}" for v, g in forward.groupby("n_options"))
        problems.add(f"Column n_options: the forward trials of pre_test/post_test/test offer different numbers of "
                     f"options ({shown}). The analysis tests forward accuracy against one chance level (1/n_options): "
                     "import studies with different option counts separately.")


def external_file_parse(*, file: BinaryIO, file_name: str, default_options: int | None = None,
                        max_rows: int = MAX_ROWS, max_columns: int = MAX_COLUMNS,
                        max_errors: int = MAX_ERRORS_SHOWN) -> ParsedFile:
    """The file checked and typed, or ServiceError listing its problems (first ``max_errors``
    by row and column, then "... and N more"). Reads; stores nothing."""
    sha256, size = _sha256_and_utf8(file, file_name=file_name)
    if size == 0:
        raise ServiceError(f"The file {file_name} is empty. Nothing was stored.")
    header = _header(file, file_name=file_name, max_columns=max_columns)
    condition = "condition" if "condition" in header else "arm"
    likert_columns = [n for n in header if n.startswith(LIKERT_PREFIX)]
    used = [n for n in header if n in REQUIRED or n in OPTIONAL or n == condition or n in likert_columns]
    ignored = [n for n in header if n not in used]
    problems = _Problems(max_errors)
    typed = []
    for rows, chunk in _chunks(file, header=header, used=used, file_name=file_name, max_rows=max_rows):
        typed.append(_typed_chunk(chunk, rows, names={"condition": condition}, likert_columns=likert_columns,
                                  default_options=default_options, problems=problems))
    if not typed or not sum(len(t) for t in typed):
        raise ServiceError(f"The file {file_name} has a header row but no data rows: add one row per trial. "
                           "Nothing was stored.")
    problems.raise_if_any(file_name=file_name)
    rows = pd.concat(typed, ignore_index=True) if len(typed) > 1 else typed[0]
    _cross_row_problems(rows, condition=condition, likert_columns=likert_columns, problems=problems)
    problems.raise_if_any(file_name=file_name)
    return ParsedFile(file_name=file_name, sha256=sha256, header=header, used=used, ignored=ignored, rows=rows,
                      likert_items=[c[len(LIKERT_PREFIX):] for c in likert_columns],
                      has_response="response" in rows.columns)


# ---------------------------------------------------------------- settings from the form


def arm_names_parse(text: str) -> dict[str, str]:
    """The form's "code = name" lines (one per condition; blank lines ignored) as {code: name}."""
    names = {}
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        code, sep, name = line.partition("=")
        if not sep or not code.strip() or not name.strip():
            raise ServiceError(f"Arm names, line {number}: write one condition per line as code = name (for example "
                               f"2 = natural images); got '{line.strip()}'.")
        if code.strip() in names:
            raise ServiceError(f"Arm names, line {number}: the condition '{code.strip()}' is named twice.")
        names[code.strip()] = name.strip()
    return names


def external_rules_problems(rules: dict, *, has_response: bool) -> list[str]:
    """Exclusion rules an imported study cannot apply, in words (with the platform's own checks)."""
    from studyapp.services.exclusions import exclusion_rules_validate

    problems = exclusion_rules_validate(rules)
    for rule in rules or {}:
        if rule in RULES_NEEDING_PLATFORM_DATA:
            problems.append(f"The exclusion rule {rule} cannot be applied to data collected elsewhere: "
                            f"{RULES_NEEDING_PLATFORM_DATA[rule]}.")
    if "straightlining_max_run" in (rules or {}) and not has_response:
        problems.append("The exclusion rule straightlining_max_run needs the option each participant chose: the "
                        "file has no response column (the stored answer is then only right or wrong).")
    return problems


def _arms_plan(conditions: list[str], *, control: str, arm_names: dict[str, str]) -> list[tuple[str, str, str]]:
    """(condition code, arm name, kind) in arm order: the control first, then as the file has them."""
    problems = []
    if control and control not in conditions:
        problems.append(f"The control condition '{control}' is not in the file; its conditions: "
                        f"{', '.join(conditions)}.")
    unknown = [c for c in arm_names if c not in conditions]
    if unknown:
        problems.append(f"Arm names are given for condition{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(repr(c) for c in unknown)}, which the file does not have; its conditions: "
                        f"{', '.join(conditions)}.")
    ordered = ([control] if control in conditions else []) + [c for c in conditions if c != control]
    plan = [(c, arm_names.get(c, c), Arm.Kind.CONTROL if c == control else Arm.Kind.EXTERNAL) for c in ordered]
    names = [name for _, name, _ in plan]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append(f"Two conditions would get the same arm name ({', '.join(twice)}): give each its own name.")
    long = [n for n in names if len(n) > 80]
    if long:
        problems.append(f"Arm names are at most 80 characters: {', '.join(long)}.")
    if problems:
        raise ServiceError(problems)
    return plan


def _free_dataset_name(base: str) -> str:
    # A deleted study leaves its dataset (Study.dataset is PROTECT): the name may be taken.
    taken = set(Dataset.objects.filter(name__startswith=base[:100]).values_list("name", flat=True))
    return next(n for n in (base[:120], *(f"{base[:100]} ({k})" for k in range(2, 10_000))) if n not in taken)


def _free_slug(base: str) -> str:
    stem = (slugify(base) or "imported-study")[:70]
    taken = set(Study.objects.filter(slug__startswith=stem).values_list("slug", flat=True))
    return next(s for s in (stem, *(f"{stem}-{n}" for n in range(2, 10_000))) if s not in taken)


# ---------------------------------------------------------------- writing


def _no_input() -> bytes:
    """A valid .npy of no values: the item's input was not collected here (readers of Stimulus.data
    and Edit.data load it without failing, and find nothing)."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(0, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _payload_sha256(row: dict) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _nullable(value):
    return None if value is pd.NA or value is None or (isinstance(value, float) and np.isnan(value)) else int(value)


def _insert_rows(model, rows: list[dict], *, now) -> list[int]:
    """Insert ``rows`` of ``model`` (attname -> value; every other column takes the model's default,
    ``auto_now``/``auto_now_add`` columns ``now``) with multi-row INSERTs, returning the new ids in
    row order (as bulk_create does, RETURNING keeps the VALUES order).

    Why not bulk_create: it prepares every value of every field in Python, about 2,000 trials a
    second here, so a large file outlasted a web request. Here only UUID and JSON values go through
    their field (the database's spelling of them); the driver adapts the rest.
    """
    from django.db import connection

    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    adapt = {f.attname for f in fields if f.get_internal_type() in ("UUIDField", "JSONField")}
    table, quote = model._meta.db_table, connection.ops.quote_name
    per_statement = max(1, 30_000 // len(fields))  # PostgreSQL takes at most 65,535 parameters a statement
    ids = []
    with connection.cursor() as cursor:
        for start in range(0, len(rows), per_statement):
            params = []
            for row in rows[start:start + per_statement]:
                for f in fields:
                    if f.attname in row:
                        value = row[f.attname]
                    elif getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
                        value = now
                    else:
                        value = f.get_default()
                    params.append(f.get_db_prep_save(value, connection) if f.attname in adapt else value)
            n = len(params) // len(fields)
            values = ", ".join(["(" + ", ".join(["%s"] * len(fields)) + ")"] * n)
            cursor.execute(f"INSERT INTO {quote(table)} ({', '.join(quote(f.column) for f in fields)}) "
                           f"VALUES {values} RETURNING {quote(model._meta.pk.column)}", params)
            ids += [r[0] for r in cursor.fetchall()]
    return ids


def _write_trials(*, study: Study, parsed: ParsedFile, participants: dict[str, Participant],
                  stimuli: dict[str, int], edits: dict[str, int], now) -> None:
    """Trials and their answers in batches of WRITE_BATCH, so memory does not grow with the file."""
    rows = parsed.rows
    positions = rows.groupby("participant", sort=False).cumcount().to_numpy()
    columns = ["row", "participant", "phase", "task", "item", "correct", "rt_ms", "confidence", "n_options",
               *(["response"] if parsed.has_response else [])]
    for start in range(0, len(rows), WRITE_BATCH):
        batch = rows.iloc[start:start + WRITE_BATCH][columns].to_dict("records")
        trial_ids = _insert_rows(Trial, [
            {"participant_id": participants[r["participant"]].pk, "position": int(positions[start + i]),
             "phase": r["phase"], "task": r["task"], "stimulus_id": stimuli[r["item"]],
             "edit_id": edits.get(r["item"]) if r["task"] == "counterfactual_predict" else None,
             "n_options": _nullable(r["n_options"]),
             # The platform's learning phase shows the model's output (DESIGN.md).
             "show_model_output": r["phase"] == "learning"}
            for i, r in enumerate(batch)], now=now)
        responses = []
        for trial_id, r in zip(trial_ids, batch):
            answer = _nullable(r["response"]) if parsed.has_response else int(bool(r["correct"]))
            payload = {"row": int(r["row"]), "participant": r["participant"], "phase": r["phase"], "task": r["task"],
                       "item": r["item"], "answer": answer, "correct": bool(r["correct"]),
                       "rt_ms": _nullable(r["rt_ms"]), "confidence": _nullable(r["confidence"])}
            responses.append({
                "trial_id": trial_id, "answer": answer, "correct": bool(r["correct"]),
                "confidence": _nullable(r["confidence"]), "client_rt_ms": _nullable(r["rt_ms"]),
                "payload_sha256": _payload_sha256(payload),
                # Deterministic per study and row: the same file imported into another study gets
                # other keys (the column is unique across the installation).
                "idempotency_key": uuid.uuid5(ANSWER_NAMESPACE, f"{study.public_id}:{int(r['row'])}")})
        _insert_rows(Response, responses, now=now)


def external_study_import(*, file: BinaryIO, file_name: str, title: str, slug: str = "", description: str = "",
                          control: str = "", arm_names: dict[str, str] | None = None,
                          default_options: int | None = None, exclusion_rules: dict | None = None, owner=None,
                          max_rows: int = MAX_ROWS, max_columns: int = MAX_COLUMNS,
                          max_errors: int = MAX_ERRORS_SHOWN) -> Study:
    """A new draft study of ``source`` external holding the file's data (module docstring).

    One transaction: a file or a setting that is refused (ServiceError, every problem in words)
    leaves nothing behind, and so does any failure while writing. ``control``: the condition code
    of the control arm (none: no arm is the control); ``arm_names``: {condition code: arm name};
    ``default_options``: n_options for rows without one.
    """
    parsed = external_file_parse(file=file, file_name=file_name, default_options=default_options,
                                 max_rows=max_rows, max_columns=max_columns, max_errors=max_errors)
    rows = parsed.rows
    conditions = list(dict.fromkeys(rows["condition"].tolist()))
    arms_plan = _arms_plan(conditions, control=(control or "").strip(), arm_names=arm_names or {})
    rules = dict(exclusion_rules or {})
    problems = external_rules_problems(rules, has_response=parsed.has_response)
    if problems:
        raise ServiceError(problems)
    if slug and Study.objects.filter(slug=slug).exists():
        raise ServiceError(f"A study with the slug '{slug}' exists already: choose another, or leave it empty.")
    items = list(dict.fromkeys(rows["item"].tolist()))
    forward = rows.loc[(rows["task"] == "forward") & rows["phase"].isin(TEST_PHASES), "n_options"]
    options = int(forward.iloc[0]) if len(forward) else None
    phases = set(rows["phase"])
    now = timezone.now()
    with transaction.atomic():
        slug = slug or _free_slug(title)
        dataset = Dataset.objects.create(
            name=_free_dataset_name(f"{slug} (imported items)"), modality=DatasetModality.EXTERNAL, source=Dataset.Source.EXTERNAL,
            description=f"The items of the study '{title}', named as in {file_name}; collected elsewhere, so no "
                        "input or ground truth is stored.",
            input_shape=[], content_sha256=parsed.sha256, n_items=len(items),
            # The options of the forward trials (their count sets the chance level; see
            # studyapp.selectors.external_plan_model). Not class names: the file does not give them.
            class_names=[f"option {i + 1}" for i in range(options)] if options else [])
        study = Study.objects.create(
            title=title, slug=slug, description=description, source=Study.Source.EXTERNAL, model=None,
            dataset=dataset, owner=owner,
            config={"design": "within_pre_post" if {"pre_test", "post_test"} <= phases else "between",
                    "exclusion_rules": rules})
        no_input = _no_input()
        stimuli = dict(zip(items, (s.pk for s in Stimulus.objects.bulk_create(
            [Stimulus(dataset=dataset, index=i, source_name=item, label=None, split=Stimulus.Split.TEST,
                      data=no_input)
             for i, item in enumerate(items)], batch_size=WRITE_BATCH))))
        edited = list(dict.fromkeys(rows.loc[rows["task"] == "counterfactual_predict", "item"].tolist()))
        edits = dict(zip(edited, (e.pk for e in Edit.objects.bulk_create(
            [Edit(stimulus_id=stimuli[item], settings_sha256=parsed.sha256, position=0, kind=Edit.Kind.EXTERNAL,
                  params={"item": item}, data=no_input) for item in edited], batch_size=WRITE_BATCH))))
        arms = {code: Arm.objects.create(study=study, name=name, kind=kind, position=position)
                for position, (code, name, kind) in enumerate(arms_plan)}
        people = rows.groupby("participant", sort=False).agg(condition=("condition", "first"), n=("row", "size"))
        participants = dict(zip(people.index, Participant.objects.bulk_create(
            [Participant(study=study, arm=arms[p.condition], external_id=pid, source=Participant.Source.EXTERNAL,
                         status=Participant.Status.COMPLETED, step=Participant.Step.DONE, completed_at=now,
                         n_trials=int(p.n)) for pid, p in people.iterrows()], batch_size=WRITE_BATCH)))
        # The session times were not recorded here: start and completion are both the import's
        # moment (started_at is set on insert), so no export shows a session length as if measured.
        Participant.objects.filter(study=study).update(completed_at=F("started_at"))
        answers = []
        for item in parsed.likert_items:
            column = f"{LIKERT_PREFIX}{item}"
            ratings = rows.loc[rows[column].notna()].drop_duplicates("participant")[["participant", column]]
            answers += [QuestionnaireAnswer(participant=participants[pid], item=item, value=int(value),
                                            idempotency_key=uuid.uuid5(ANSWER_NAMESPACE, f"{study.public_id}:{pid}:{item}"))
                        for pid, value in ratings.itertuples(index=False)]
        QuestionnaireAnswer.objects.bulk_create(answers, batch_size=WRITE_BATCH)
        _write_trials(study=study, parsed=parsed, participants=participants, stimuli=stimuli, edits=edits, now=now)
        ExternalStudyImport.objects.create(
            study=study, file_name=file_name[:255], file_sha256=parsed.sha256, n_rows=len(rows),
            n_participants=len(participants), n_items=len(items), columns=parsed.used, ignored_columns=parsed.ignored,
            settings={"control": (control or "").strip() or None, "arm_names": {c: n for c, n, _ in arms_plan},
                      "default_options": default_options, "answers_from_file": parsed.has_response,
                      "answer_when_no_response_column": None if parsed.has_response else "correctness (1 right, 0 wrong)",
                      "likert_items": parsed.likert_items, "forward_options": options},
            imported_by=owner.get_username() if owner is not None else "", imported_at=now)
    return study


# ---------------------------------------------------------------- the plan


def external_plan_problems(*, study: Study) -> list[str]:
    """Every reason the plan of an imported study could not be analysed on its data, in words
    (empty: it can). Checked before Freeze and again under its lock: a plan that cannot run is
    never frozen."""
    from studyapp.selectors.plans import plan_control_arm, study_plan_document
    from studyapp.services.analysis import hypothesis_plan_problems

    plan = study_plan_document(study=study)
    problems = []
    hypotheses = plan["hypotheses"]
    if not hypotheses:
        problems.append("Add at least one hypothesis: the confirmatory analysis tests the hypotheses of the frozen "
                        "plan, and a plan without any has nothing to confirm.")
    arm_names = [a["name"] for a in plan["arms"]]
    control = plan_control_arm(plan)
    collected = set(Trial.objects.filter(participant__study=study).values_list("phase", "task").distinct())
    items = set(QuestionnaireAnswer.objects.filter(participant__study=study).values_list("item", flat=True).distinct())
    for h in hypotheses:
        found = list(hypothesis_plan_problems(h, arm_names, control))
        found.append(_outcome_problem(h, collected, items))
        if (h["comparison"] == "arm_vs_chance" and h["outcome"] != "likert"
                and not plan["model"]["class_names"]):
            found.append("it is tested against chance, but the file has no forward trials in pre_test, post_test or "
                         "test, whose options set the chance level; compare arms instead.")
        problems += [f"Hypothesis {h['label']}: {p}" for p in found if p]
    config = (plan["study"] or {}).get("config") or {}
    has_response = _has_response(study)
    problems += [f"Exclusion rules: {p}" for p in external_rules_problems(
        config.get("exclusion_rules") or {}, has_response=has_response)]
    for h in hypotheses:
        problems += [f"Hypothesis {h['label']}, exclusion rules: {p}"
                     for p in external_rules_problems(h.get("exclusion_rules") or {}, has_response=has_response)]
    return problems


def _has_response(study: Study) -> bool:
    record = ExternalStudyImport.objects.filter(study=study).values_list("settings", flat=True).first() or {}
    return bool(record.get("answers_from_file"))


def _outcome_problem(h: dict, collected: set[tuple[str, str]], likert_items: set[str]) -> str | None:
    """Whether the imported data hold the outcome the hypothesis is about."""
    outcome = h["outcome"]
    if outcome == "test_accuracy" and ("test", "forward") not in collected:
        return "its outcome is test-phase accuracy, but the file has no forward trials in the test phase."
    if outcome == "gain" and not {("pre_test", "forward"), ("post_test", "forward")} <= collected:
        return ("its outcome is the gain from pre-test to post-test, but the file does not have forward trials in "
                "both the pre_test and the post_test phase.")
    if outcome == "counterfactual_accuracy" and not any(
            task in COUNTERFACTUAL_TASKS and phase not in ("practice", "learning") for phase, task in collected):
        return "its outcome is counterfactual accuracy, but the file has no counterfactual trials outside learning " \
               "and practice."
    if outcome == "likert" and h.get("likert_item") not in likert_items:
        return (f"its outcome is the Likert item '{h.get('likert_item')}', which the file does not rate (its "
                f"items: {', '.join(sorted(likert_items)) or 'none'}).")
    return None
