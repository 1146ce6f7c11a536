"""Importing a zip of images: vetting the archive from its headers, labels.csv and classes.txt, decoding."""
from __future__ import annotations

import hashlib
import io
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

import numpy as np
from django.conf import settings
from PIL import Image, ImageOps, UnidentifiedImageError

from studyapp.models import Dataset
from studyapp.services.datasets import common
from studyapp.services.datasets.common import (DatasetValidationError, Progress, UploadCheck, check_extension,
                                               check_fixed_columns, decode_text, display_name, examples, line_count,
                                               mb, no_progress, quoted, read_csv, read_upload)
from studyapp.services.datasets.labels import check_class_list, labels_to_indices, parse_splits, split_items
from studyapp.services.datasets.store import Prepared, check_name, store

_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
_IMAGE_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def _is_junk(name: str) -> bool:
    parts = name.split("/")
    base = parts[-1].lower()
    return parts[0] == "__MACOSX" or base in _JUNK_NAMES or base.startswith("._")


def _unsafe_reason(name: str) -> str | None:
    if "\x00" in name:
        return "contains a NUL character"
    if "\\" in name:
        return "uses backslashes (\\) in its path"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "goes up a folder ('..')"
    return None


_EOCD = struct.Struct("<4s4H2LH")            # end of central directory record (22 bytes)
_ZIP64_LOCATOR = struct.Struct("<4sLQL")     # zip64 end of central directory locator (20 bytes)
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")    # zip64 end of central directory record (56 bytes)


def _entry_count_bound(data: bytes) -> int | None:
    """How many entries the zip's central directory holds at most, from its end records alone.

    zipfile parses every entry of the directory into a ZipInfo as soon as the archive is opened (a
    million empty entries: seconds and close to a gigabyte). The end-of-central-directory record (or
    its zip64 version) declares the count; a lying count does not help an attacker, because the
    signatures of the entries in the directory's byte range, which zipfile will parse, are counted
    too (at memchr speed). None when there is no end record (zipfile then says the file is no zip).
    """
    position = data.rfind(b"PK\x05\x06", max(0, len(data) - _EOCD.size - 0xFFFF))
    if position < 0 or position + _EOCD.size > len(data):
        return None
    *_, declared, directory_size, _offset, _comment = _EOCD.unpack_from(data, position)
    directory_end = position
    # Where zipfile looks for the zip64 records: right before the end record.
    locator = position - _ZIP64_LOCATOR.size
    record = locator - _ZIP64_EOCD.size
    if record >= 0 and data[locator:locator + 4] == b"PK\x06\x07" and data[record:record + 4] == b"PK\x06\x06":
        fields = _ZIP64_EOCD.unpack_from(data, record)
        declared, directory_size, directory_end = fields[7], fields[8], record
    signatures = data.count(b"PK\x01\x02", max(0, directory_end - directory_size), directory_end)
    return max(declared, signatures)


def _too_many_entries(count: int) -> DatasetValidationError:
    return DatasetValidationError(
        f"The archive has {count:,} entries; at most {common.MAX_ARCHIVE_ENTRIES:,} are allowed. Use fewer items.")


def _archive_entries(data: bytes) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]:
    """Open the zip and vet every entry from its headers alone, before anything is decompressed."""
    head = data[:2048]
    if not data.startswith(common.ZIP_MAGIC) and b"," in head and b"\x00" not in head:
        raise DatasetValidationError(
            "The upload is a text table (CSV), not a zip archive of images. For a table of features, choose the kind "
            "'tabular'; for images, upload a zip with the images and labels.csv.")
    bound = _entry_count_bound(data)
    if bound is not None and bound > common.MAX_ARCHIVE_ENTRIES:
        raise _too_many_entries(bound)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise DatasetValidationError(
            f"The upload is not a readable zip archive ({exc}). Create it with your system's "
            f"'Compress' command or the zip tool and upload the .zip file.") from None
    if len(infos) > common.MAX_ARCHIVE_ENTRIES:
        raise _too_many_entries(len(infos))
    unsafe, links, encrypted, huge, bombs = [], [], [], [], []
    entries: dict[str, zipfile.ZipInfo] = {}
    duplicates: list[str] = []
    total = 0
    for info in infos:
        name = info.filename
        if stat.S_ISLNK(info.external_attr >> 16):
            links.append(quoted(name))
            continue
        reason = _unsafe_reason(name)
        if reason:
            unsafe.append(f"'{quoted(name)}' {reason}")
            continue
        if info.is_dir() or _is_junk(name):
            continue
        total += info.file_size
        if info.flag_bits & 0x1:
            encrypted.append(quoted(name))
        elif info.file_size > common.MAX_ENTRY_BYTES:
            huge.append(f"{quoted(name)} ({mb(info.file_size)})")
        elif (info.file_size > common.RATIO_CHECK_MIN_BYTES
              and info.file_size > common.MAX_COMPRESSION_RATIO * max(info.compress_size, 1)):
            bombs.append(f"{quoted(name)} ({mb(info.compress_size)} -> {mb(info.file_size)})")
        if name in entries:
            duplicates.append(quoted(name))
        entries[name] = info
    problems = []
    if links:
        problems.append(f"The archive contains symbolic links, which are refused: {examples(links)}. "
                        f"Put the image files themselves in the archive.")
    if unsafe:
        problems.append(f"The archive contains entries with unsafe paths, which are refused: {examples(unsafe)}. "
                        f"Re-create the archive from inside the folder that holds labels.csv and the images.")
    if encrypted:
        problems.append(f"The archive contains password-protected entries: {examples(encrypted)}. "
                        f"Upload an archive without a password.")
    if huge:
        problems.append(f"These archive entries are larger than {mb(common.MAX_ENTRY_BYTES)} each when unpacked: "
                        f"{examples(huge)}. Use smaller files.")
    if bombs:
        problems.append(f"These archive entries unpack to more than {common.MAX_COMPRESSION_RATIO} times their "
                        f"compressed size, which looks like a zip bomb, so the archive was not unpacked: "
                        f"{examples(bombs)}.")
    limit = common.MAX_UNCOMPRESSED_FACTOR * settings.MAX_UPLOAD_MB * 1024 * 1024
    if total > limit:
        problems.append(f"The archive would unpack to {mb(total)}, more than the limit of {mb(limit)} "
                        f"({common.MAX_UNCOMPRESSED_FACTOR} x MAX_UPLOAD_MB), so it was not unpacked. Use fewer or "
                        f"smaller images.")
    if duplicates:
        problems.append(f"The archive contains the same path more than once: {examples(sorted(set(duplicates)))}. "
                        f"Re-create the archive so each file appears once.")
    if problems:
        raise DatasetValidationError(problems)
    return archive, entries


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """Entry bytes, never more than its declared size (+1 byte, to notice a lying header)."""
    try:
        with archive.open(info) as handle:
            data = handle.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise DatasetValidationError(
            f"{info.filename} could not be read from the archive ({exc}): the archive is damaged. "
            f"Re-create it and upload it again.") from None
    if len(data) != info.file_size:
        raise DatasetValidationError(
            f"{info.filename} does not match the size recorded in the archive: the archive is damaged. "
            f"Re-create it and upload it again.")
    return data


def _strip_top_folder(entries: dict[str, zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """A zip made by compressing a folder has everything under one top-level folder: drop it."""
    tops = {name.split("/", 1)[0] if "/" in name else None for name in entries}
    if len(tops) == 1 and None not in tops:
        prefix = f"{tops.pop()}/"
        return {name[len(prefix):]: info for name, info in entries.items()}
    return entries


def _find_meta(entries: dict[str, zipfile.ZipInfo], filename: str) -> str | None:
    return next((name for name in entries if name.lower() == filename), None)


@dataclass
class _LabelRows:
    filenames: list[str]
    labels: list[str]
    splits: list[str] | None
    row_numbers: list[int]


_MAX_META_COLUMNS = 20  # labels.csv has at most 3; more is refused before its fields are parsed


def _parse_labels_csv(data: bytes) -> _LabelRows:
    # Each row names an image in the archive, so more rows than the archive may hold entries are refused
    # from a count of line ends, before the rows become Python strings.
    lines = line_count(data)
    if lines > common.MAX_ARCHIVE_ENTRIES + 1:
        raise DatasetValidationError(
            f"labels.csv has {lines:,} lines, but an archive holds at most {common.MAX_ARCHIVE_ENTRIES:,} images "
            f"(one row each). Use fewer items.")
    table = read_csv(data, filename="labels.csv", max_columns=_MAX_META_COLUMNS)
    col, problems = check_fixed_columns(
        table, filename="labels.csv", required=("filename", "label"), optional=("split",),
        missing_hint="The first row must be the header filename,label (optionally ,split).",
        unknown_hint=". It may only have the columns filename, label and (optionally) split; remove the others.")
    if problems:
        raise DatasetValidationError(problems)
    return _LabelRows(
        filenames=[PurePosixPath(r[col["filename"]].strip().replace("\\", "/")).as_posix() for r in table.rows],
        labels=[r[col["label"]].strip() for r in table.rows],
        splits=[r[col["split"]] for r in table.rows] if "split" in col else None,
        row_numbers=table.row_numbers)


def _parse_classes_txt(data: bytes) -> list[str]:
    lines = line_count(data)
    if lines > common.MAX_CLASSES + 1:
        raise DatasetValidationError(f"classes.txt has {lines:,} lines; a dataset may have at most "
                                     f"{common.MAX_CLASSES:,} classes, one per line.")
    names = [line.strip() for line in decode_text(data, filename="classes.txt").splitlines()]
    names = [n for n in names if n]
    problems = check_class_list(names, source="classes.txt")
    if problems:
        raise DatasetValidationError(problems)
    return names


def _check_listing(rows: _LabelRows, images: dict[str, zipfile.ZipInfo]) -> list[str]:
    problems = []
    rows_by_name: dict[str, list[int]] = defaultdict(list)
    for n, name in zip(rows.row_numbers, rows.filenames):
        rows_by_name[name].append(n)
    repeated = [(name, ns) for name, ns in rows_by_name.items() if len(ns) > 1]
    if repeated:
        listed = [f"'{quoted(name)}' (rows {examples(ns, 10)})" for name, ns in repeated[:common.EXAMPLES]]
        problems.append(f"labels.csv lists the same filename more than once: {examples(listed, total=len(repeated))}. "
                        f"Each image must have exactly one row.")
    blank = [n for n, name in zip(rows.row_numbers, rows.filenames) if name in ("", ".")]
    if blank:
        problems.append(f"labels.csv: the filename is empty in row(s) {examples(blank)}.")
    by_base: dict[str, list[str]] = defaultdict(list)
    for path in images:
        by_base[PurePosixPath(path).name.lower()].append(path)
    missing = [(name, ns) for name, ns in rows_by_name.items() if name not in images and name not in ("", ".")]
    if missing:
        listed = []
        for name, ns in missing[:common.EXAMPLES]:
            guess = by_base.get(PurePosixPath(name).name.lower(), [])
            hint = f" (did you mean '{quoted(guess[0])}'?)" if len(guess) == 1 else ""
            listed.append(f"'{quoted(name)}' (row {ns[0]}){hint}")
        problems.append(f"labels.csv lists {len(missing):,} image(s) that are not in the archive: "
                        f"{examples(listed, total=len(missing))}. Filenames are paths relative to the folder "
                        f"holding labels.csv; add the images or remove their rows.")
    unlisted = sorted(set(images) - set(rows_by_name))
    if unlisted:
        problems.append(f"The archive contains {len(unlisted):,} file(s) that labels.csv does not list: "
                        f"{examples([quoted(u) for u in unlisted[:common.EXAMPLES]], total=len(unlisted))}. "
                        f"Add a row for each image or remove the files.")
    return problems


class _ImageProblem(Exception):
    pass


class _TooLarge(_ImageProblem):
    """More pixels than MAX_IMAGE_PIXELS, found from the header: reported together, with one piece of advice."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__(f"{width}x{height}")


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels shown over white, as an image viewer or a web page would."""
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def _image_to_compact(image: Image.Image) -> np.ndarray:
    """(1, H, W) for grayscale images or (3, H, W) for colour ones, as uint8 (or uint16 for 16-bit images).

    Held in this compact form until it is stored: a quarter (or half) of its float32 size."""
    mode = image.mode
    if mode == "F":
        raise _ImageProblem("is a floating-point image, which is not supported; save it as an 8- or 16-bit PNG")
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)[None]
    if mode == "I":  # how Pillow opens many 16-bit grayscale PNGs
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise _ImageProblem("is a 32-bit integer image, which is not supported; save it as an 8- or 16-bit PNG")
        return values.astype(np.uint16)[None]
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"))[None]
    if mode in ("LA", "La"):
        return np.asarray(_flatten_alpha(image).convert("L"))[None]
    has_alpha = "A" in mode or "transparency" in image.info
    rgb = np.asarray(_flatten_alpha(image) if has_alpha else image.convert("RGB"))
    if mode in ("P", "PA") and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[None, :, :, 0])  # a palette of grays is a grayscale image
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def _too_large_problem(too_large: list[str]) -> str:
    side = int(common.MAX_IMAGE_PIXELS ** 0.5)
    return (f"{len(too_large):,} image(s) have more pixels than the limit of {common.MAX_IMAGE_PIXELS:,} per image "
            f"(about {side}x{side}): {examples(too_large)}. Each image is the model's input as it is and is "
            f"explained pixel by pixel, so resize them to the size the model was trained on (for example "
            f"224x224).")


def _decode_image(data: bytes, *, reserve: Callable[[int, int], None]) -> np.ndarray:
    """The image as a compact (C, H, W) array; ``reserve(width, height)`` is called from the header,
    before the pixels are decoded, and raises when the import's memory budget would be exceeded."""
    with warnings.catch_warnings():
        # Pillow's decompression-bomb warning becomes an error: a backstop behind MAX_IMAGE_PIXELS.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > common.MAX_IMAGE_PIXELS:
                    raise _TooLarge(width, height)
                image.verify()
            with Image.open(io.BytesIO(data)) as image:
                if getattr(image, "n_frames", 1) > 1:
                    raise _ImageProblem(f"has {image.n_frames} frames (animation or multi-page file); "
                                        f"save a single frame")
                reserve(width, height)
                image.load()
                image = ImageOps.exif_transpose(image)  # the orientation a viewer shows
                return _image_to_compact(image)
        except (_ImageProblem, DatasetValidationError):
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _ImageProblem("has too many pixels (Pillow's decompression-bomb check); resize it") from None
        except UnidentifiedImageError:
            if data.startswith(_IMAGE_SIGNATURES):
                raise _ImageProblem("is damaged or truncated (its header cannot be read)") from None
            raise _ImageProblem("is not an image format that can be read (use PNG, JPEG, BMP, GIF, TIFF "
                                "or WebP)") from None
        except Exception as exc:  # crafted or damaged files fail in many ways inside decoders
            raise _ImageProblem(f"is damaged or truncated ({type(exc).__name__}: {exc})") from None


class DecodedImages:
    """The decoded images as model inputs: float32 (C, H, W) in [0, 1], made one at a time on access.

    ``store`` writes each as soon as it is made, so the float32 arrays, a stacked copy of them and their
    ``.npy`` bytes are never all in memory together (four 4096x4096 images once took 9 GB that way).
    """

    def __init__(self, compact: list[np.ndarray], *, channels: int) -> None:
        self._compact = compact
        self._channels = channels
        first = compact[0]
        self.shape = (len(compact), channels, *first.shape[1:])

    def __len__(self) -> int:
        return len(self._compact)

    def __getitem__(self, i: int) -> np.ndarray:
        values = self._compact[i]
        if values.shape[0] < self._channels:
            # Mixed grayscale and colour: everything is stored as RGB so every item has the same shape.
            values = np.repeat(values, self._channels, axis=0)
        scale = np.float32(65535.0 if values.dtype == np.uint16 else 255.0)
        return values.astype(np.float32) / scale

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))


def _decode_all(archive: zipfile.ZipFile, images: dict[str, zipfile.ZipInfo],
                filenames: list[str], *, progress: Progress = no_progress) -> DecodedImages:
    compact: list[np.ndarray] = []
    bad: list[str] = []
    too_large: list[str] = []
    sizes: dict[tuple[int, int], list[str]] = defaultdict(list)
    budget = {"reserved": 0}

    def reserve(width: int, height: int) -> None:
        # Counted from the header before decoding, at the worst case (stored as float32 RGB), so the image
        # that would exceed the budget is never decoded.
        budget["reserved"] += width * height * 3 * 4
        if budget["reserved"] > common.MAX_DECODED_BYTES:
            raise DatasetValidationError(
                f"The images would take more than {mb(common.MAX_DECODED_BYTES)} once decoded as the model's "
                f"float32 input (the limit for one dataset; it is reached at image "
                f"{len(compact) + len(bad) + len(too_large) + 1:,} "
                f"of {len(filenames):,}). Use fewer or smaller images.")

    for done, name in enumerate(filenames):
        progress("decoding images", done, len(filenames))
        try:
            values = _decode_image(_read_entry(archive, images[name]), reserve=reserve)
        except _TooLarge as exc:
            too_large.append(f"{quoted(name)} ({exc})")
            continue
        except _ImageProblem as exc:
            bad.append(f"{quoted(name)} {exc}")
            continue
        sizes[(values.shape[2], values.shape[1])].append(quoted(name))
        compact.append(values)
    problems = [_too_large_problem(too_large)] if too_large else []
    if bad:
        problems.append(f"{len(bad):,} image(s) could not be used: {examples(bad, sep='; ')}.")
    if len(sizes) > 1:
        ordered = sorted(sizes.items(), key=lambda kv: -len(kv[1]))
        described = "; ".join(f"{w}x{h}: {len(names):,} image(s), e.g. {examples(names, 3)}"
                              for (w, h), names in ordered[:common.EXAMPLES])
        more = f"; and {len(ordered) - common.EXAMPLES:,} more sizes" if len(ordered) > common.EXAMPLES else ""
        problems.append(f"The images have different sizes ({described}{more}). Resize them all to the same "
                        f"width and height.")
    if problems:
        raise DatasetValidationError(problems)
    return DecodedImages(compact, channels=max(values.shape[0] for values in compact))


@dataclass
class _Vetted:
    """An archive whose every check short of decoding the images has passed."""

    zip_file: zipfile.ZipFile
    images: dict[str, zipfile.ZipInfo]
    rows: _LabelRows
    class_names: list[str]
    labels: np.ndarray
    file_splits: list[str] | None


def _vet(data: bytes) -> _Vetted:
    """Everything but decoding: the archive's entries from its headers, labels.csv and classes.txt, the
    listing against the files, the labels and the splits. Only the two small files are decompressed."""
    zip_file, entries = _archive_entries(data)
    entries = _strip_top_folder(entries)
    labels_name = _find_meta(entries, "labels.csv")
    if labels_name is None:
        deeper = [n for n in entries if PurePosixPath(n).name.lower() == "labels.csv"]
        where = (f" It was found at {examples(deeper, 2)}, but it must be at the top of the archive (or inside "
                 f"a single top-level folder)." if deeper else "")
        raise DatasetValidationError(
            f"The archive has no labels.csv.{where} Add a file labels.csv with the header filename,label and "
            f"one row per image (optionally a split column with train/test).")
    rows = _parse_labels_csv(_read_entry(zip_file, entries.pop(labels_name)))
    classes_name = _find_meta(entries, "classes.txt")
    given_classes = _parse_classes_txt(_read_entry(zip_file, entries.pop(classes_name))) if classes_name else None
    if not rows.filenames:
        raise DatasetValidationError("labels.csv has no rows: the dataset would be empty. Add one row per image.")
    problems = _check_listing(rows, entries)
    class_names, labels, label_problems = labels_to_indices(
        rows.labels, rows.row_numbers, class_names=given_classes, filename="labels.csv",
        class_source="classes.txt")
    problems += label_problems
    file_splits, split_problems = parse_splits(rows.splits, rows.row_numbers, filename="labels.csv")
    problems += split_problems
    if problems:
        raise DatasetValidationError(problems)
    return _Vetted(zip_file=zip_file, images=entries, rows=rows, class_names=class_names, labels=labels,
                   file_splits=file_splits)


def images_upload_check(*, archive: bytes | IO[bytes]) -> UploadCheck:
    """The checks of :func:`dataset_import_images` that decode no image, so that a request can refuse at
    once what the import would refuse for the archive itself (its size, its entry count from the end
    record, unsafe or oversized entries) or for labels.csv and classes.txt. Raises DatasetValidationError."""
    check_extension(display_name(archive, default="archive"), kind="images")
    data = read_upload(archive, what="archive")
    vetted = _vet(data)
    return UploadCheck(filename=display_name(archive, default="archive"), n_bytes=len(data),
                       n_items=len(vetted.images))


def dataset_import_images(*, name: str, archive: bytes | IO[bytes], description: str = "",
                          progress: Progress = no_progress,
                          finish: Callable[[Dataset], None] | None = None) -> Dataset:
    """Import a zip of images with labels.csv (filename,label[,split]) and optional classes.txt.

    ``progress`` hears what the import is doing; ``finish`` runs inside the transaction that writes the
    dataset (see :func:`studyapp.services.datasets.store.store`)."""
    name = check_name(name)
    data = read_upload(archive, what="archive")
    progress("reading labels.csv", 0, 0)
    vetted = _vet(data)
    arrays = _decode_all(vetted.zip_file, vetted.images, vetted.rows.filenames, progress=progress)
    splits, split_info = split_items(vetted.labels, from_file=vetted.file_splits)
    return store(Prepared(
        name=name, modality="image", source=Dataset.Source.UPLOAD, description=description,
        class_names=vetted.class_names, arrays=arrays, labels=vetted.labels, splits=splits, split_info=split_info,
        source_names=vetted.rows.filenames, content_sha256=hashlib.sha256(data).hexdigest(), value_range=[0.0, 1.0]),
        progress=progress, finish=finish)
