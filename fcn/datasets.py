"""Datasets: the three layouts the framework reads, reading one example, and the class table.

A dataset is a layout (where the files are and how images and annotations
pair up) plus a class table (which annotation values are classes, their names
and colours, and which are ignored). This module is the one owner of both:

- ``ClassTable``: class names, their annotation values (``ids``), colours and
  the ignored values; it maps annotation values to train ids 0..C-1 and back,
  paints train-id maps, writes label PNGs and reads and writes ``classes.csv``.
  Every output of a run (evaluate's table and ``metrics.json``, the pictures,
  label PNGs, the SavedModel's labels) takes its classes from here.
- Layouts (one small class each, no branching elsewhere):

  ``ade20k``  ``ROOT/images/{training,validation}/*.jpg`` and
              ``ROOT/annotations/{training,validation}/*.png`` (8-bit greyscale,
              0 = "other", ignored; 1..150 the classes; train id = value - 1).
  ``voc``     ``VOC2012/JPEGImages/*.jpg``, ``VOC2012/SegmentationClass/*.png``
              (palette PNGs whose pixel values are the class indices 0..20,
              255 = ignored), split lists ``ImageSets/Segmentation/{train,val}.txt``;
              with ``data.voc_train_list=train_aug``, ``ImageSets/Segmentation/train_aug.txt``
              and ``SegmentationClassAug/`` (the SBD-augmented 10,582 images).
  ``folder``  ``ROOT/images/{training,validation}/*`` (any image format),
              ``ROOT/annotations/{training,validation}/*.png`` (8-bit greyscale or
              palette, same stems) and ``ROOT/classes.csv`` (``id,name,r,g,b``
              and an optional ``ignore`` column).

- ``Dataset``: a layout, its root and its class table; ``list_split`` pairs
  the files of a split, ``usable_pairs`` refuses a split that cannot be used
  without guessing.
- Reading one example (``read_example_dataset`` in ``tf.data``,
  ``load_example`` eagerly): decode, check, map annotation values to train ids.

Inside the framework the splits are always ``training`` and ``validation``
(VOC's ``train`` and ``val`` lists) and labels are train ids 0..C-1 with 255
(``IGNORE_LABEL``) for ignored pixels.

A file that cannot be used (corrupt image, unreadable annotation, an
annotation that is an RGB picture or not an 8-bit PNG, size mismatch, a value
that is neither a class nor ignored) never stops the stream and is never
guessed at: its example arrives with ``error`` set and every label pixel
ignored. ``load_example`` raises ``DataError`` naming the file instead.
"""

import collections
import csv
import dataclasses
import io
import os
import re

import numpy as np
import tensorflow as tf
from PIL import Image

from fcn import ade20k
from fcn.config import DataConfig

SPLITS = ("training", "validation")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FOLDER_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
IGNORE_LABEL = ade20k.IGNORE_LABEL
CLASSES_FILE = "classes.csv"  # a folder dataset's class table, and a run's (in logs_dir)
CLASSES_HEADER = ("id", "name", "r", "g", "b")

ERROR_NONE = 0
ERROR_UNREADABLE_IMAGE = 1
ERROR_UNREADABLE_ANNOTATION = 2
ERROR_ANNOTATION_FORMAT = 3
ERROR_SIZE_MISMATCH = 4
ERROR_LABEL_OUT_OF_RANGE = 5
ERROR_ANNOTATION_RGB = 6
ERROR_MESSAGES = {
    ERROR_UNREADABLE_IMAGE: "image cannot be decoded (corrupt or truncated file)",
    ERROR_UNREADABLE_ANNOTATION: "annotation cannot be decoded (corrupt or truncated PNG)",
    ERROR_ANNOTATION_FORMAT: "annotation is not an 8-bit single-channel (greyscale) PNG",
    ERROR_SIZE_MISMATCH: "annotation size differs from the image size",
    ERROR_LABEL_OUT_OF_RANGE: "annotation has values outside the class table (neither a class nor ignored), "
    "e.g. label values above the number of classes",
    ERROR_ANNOTATION_RGB: "annotation is an RGB image (colours, not class indices): save the class indices "
    "as an 8-bit greyscale or palette PNG",
}
# The file at fault for each error code (the image, or the annotation).
_ANNOTATION_ERRORS = (ERROR_UNREADABLE_ANNOTATION, ERROR_ANNOTATION_FORMAT, ERROR_LABEL_OUT_OF_RANGE, ERROR_ANNOTATION_RGB)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# How an annotation PNG stores its values (from its header).
_KIND_GREY = 0  # 8-bit greyscale: the values as they are
_KIND_PALETTE = 1  # palette (indexed) PNG: the indices are the values
_KIND_RGB = 2  # truecolour, with or without alpha: colours, not values
_KIND_OTHER = 3  # 16-bit, sub-8-bit greyscale, grey + alpha, not a PNG


class DataError(ValueError):
    """A dataset or file that cannot be used; the message names it and the fix."""


class DatasetNotFoundError(DataError):
    """No dataset of the expected layout where the config points."""


class ClassTableMismatchError(DataError):
    """The config's ``data.num_classes``, the dataset's and the run's class tables disagree."""


# ---------------------------------------------------------------------------
# The class table.


def voc_colormap(size: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: index bits interleaved into the high bits of R, G and B.

    Bit ``3k`` of the index goes to bit ``7 - k`` of red, bit ``3k + 1`` to
    green, bit ``3k + 2`` to blue (the devkit's ``VOClabelcolormap``).

    Returns:
      uint8 (size, 3).
    """
    index = np.arange(size)
    colours = np.zeros((size, 3), np.int64)
    for k in range(8):
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * k + channel)) & 1) << (7 - k)
    return colours.astype(np.uint8)


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """The classes of a dataset, in train-id order.

    Attributes:
      names: class names; train id ``c`` is ``names[c]``.
      ids: the annotation value of each class (as in the annotation PNGs and
        in every label file the framework writes).
      colours: RGB (0..255) of each class.
      ignore_values: annotation values whose pixels are ignored in training
        and evaluation (255 always is).
      palette_png: annotations may be palette PNGs, and label PNGs are written
        as palette PNGs in the table's colours (VOC); otherwise only 8-bit
        greyscale is read and written (ADE20K's format).
      source: where the table comes from, for messages.
    """

    names: tuple[str, ...]
    ids: tuple[int, ...]
    colours: tuple[tuple[int, int, int], ...]
    ignore_values: tuple[int, ...] = (IGNORE_LABEL,)
    palette_png: bool = True
    source: str = ""

    def __post_init__(self):
        where = f"{self.source}: " if self.source else ""
        if not self.names:
            raise DataError(f"{where}the class table has no classes")
        if not len(self.names) == len(self.ids) == len(self.colours):
            raise DataError(f"{where}the class table needs one name, id and colour per class")
        if len(self.names) > 254:
            raise DataError(f"{where}{len(self.names)} classes: at most 254 fit in 8-bit labels beside 255 (ignored)")
        for value in self.ids:
            if not 0 <= value <= 254:
                raise DataError(f"{where}class id {value} is outside 0..254 (255 is always ignored)")
        duplicates = sorted({v for v in self.ids if self.ids.count(v) > 1})
        if duplicates:
            raise DataError(f"{where}class id {duplicates[0]} is listed more than once")
        named = sorted({n for n in self.names if self.names.count(n) > 1})
        if named:
            raise DataError(f"{where}class name {named[0]!r} is used more than once; names must be distinct")
        if any(not n.strip() for n in self.names):
            raise DataError(f"{where}a class has an empty name")
        both = sorted(set(self.ids) & set(self.ignore_values))
        if both:
            raise DataError(f"{where}value {both[0]} is both a class and ignored")
        if IGNORE_LABEL not in self.ignore_values:
            object.__setattr__(self, "ignore_values", tuple(sorted(set(self.ignore_values) | {IGNORE_LABEL})))

    # -- construction

    @classmethod
    def ade20k(cls, num_classes: int = ade20k.NUM_CLASSES) -> "ClassTable":
        """ADE20K's table: values 1..num_classes (train id + 1), 0 ("other") ignored."""
        names = list(ade20k.class_names()[:num_classes])
        colours = [tuple(int(c) for c in row) for row in ade20k.palette()[:num_classes]]
        extra = voc_colormap()
        for value in range(len(names) + 1, num_classes + 1):  # beyond ADE20K's 150: numbered classes
            names.append(f"class_{value}")
            colours.append(tuple(int(c) for c in extra[value]))
        return cls(tuple(names), tuple(range(1, num_classes + 1)), tuple(colours), (0, IGNORE_LABEL), False, "ADE20K")

    @classmethod
    def voc(cls) -> "ClassTable":
        """PASCAL VOC 2012: values 0..20 (background and the 20 object classes), 255 ignored."""
        colours = voc_colormap()[: len(VOC_CLASSES)]
        return cls(VOC_CLASSES, tuple(range(len(VOC_CLASSES))), tuple(tuple(int(c) for c in row) for row in colours),
                   (IGNORE_LABEL,), True, "PASCAL VOC 2012")  # fmt: skip

    @classmethod
    def read_csv(cls, path: str) -> "ClassTable":
        """Reads a ``classes.csv``: header ``id,name,r,g,b`` (optional further columns ``ignore``, ``format``).

        A row with ``ignore`` set (1, true, yes) declares an ignored value rather
        than a class, e.g. ``0,unlabelled,0,0,0,1``. The ``format`` column of a
        run's file records how label PNGs are written (``palette`` or ``grey``).

        Raises:
          DataError: naming the file, the row and the fix.
        """
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.reader(f))
        except OSError as error:
            raise DataError(f"{path}: cannot be read ({error.strerror})") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text; save it as UTF-8 CSV") from None
        rows = [row for row in rows if any(cell.strip() for cell in row)]
        header = [cell.strip().lower() for cell in rows[0]] if rows else []
        if tuple(header[:5]) != CLASSES_HEADER:
            raise DataError(
                f"{path}: the first line must be the header id,name,r,g,b (optionally followed by ignore), "
                f"got {','.join(rows[0]) if rows else 'an empty file'}"
            )
        ignore_column = header.index("ignore") if "ignore" in header else None
        format_column = header.index("format") if "format" in header else None
        names, ids, colours, ignored, palette = [], [], [], [], None
        for number, row in enumerate(rows[1:], start=2):
            row = [cell.strip() for cell in row] + [""] * (len(header) - len(row))
            where = f"{path}, line {number}"
            try:
                value, r, g, b = int(row[0]), int(row[2]), int(row[3]), int(row[4])
            except ValueError:
                raise DataError(f"{where}: id, r, g and b must be integers, got {','.join(row)}") from None
            if not 0 <= value <= 255 or not all(0 <= c <= 255 for c in (r, g, b)):
                raise DataError(f"{where}: id must be in 0..254 and r, g, b in 0..255, got {','.join(row)}")
            flag = row[ignore_column].lower() if ignore_column is not None else ""
            if flag not in ("", "0", "1", "true", "false", "yes", "no"):
                raise DataError(f"{where}: ignore must be 1/0 (or true/false), got {flag!r}")
            if format_column is not None and row[format_column]:
                palette = row[format_column].lower() == "palette"
            if flag in ("1", "true", "yes") or value == IGNORE_LABEL:
                if value in ignored:
                    raise DataError(f"{where}: value {value} is listed more than once")
                ignored.append(value)
                continue
            names.append(row[1])
            ids.append(value)
            colours.append((r, g, b))
        if not names:
            raise DataError(f"{path}: lists no class (one row per class: id,name,r,g,b)")
        return cls(tuple(names), tuple(ids), tuple(colours), tuple(sorted(set(ignored) | {IGNORE_LABEL})),
                   True if palette is None else palette, path)  # fmt: skip

    def write_csv(self, path: str) -> None:
        """Writes the table as ``classes.csv`` (atomically): classes in train-id order, then the ignored values."""
        temporary = path + ".tmp"
        with open(temporary, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow([*CLASSES_HEADER, "ignore", "format"])
            label_format = "palette" if self.palette_png else "grey"
            for name, value, colour in zip(self.names, self.ids, self.colours):
                writer.writerow([value, name, *colour, 0, label_format])
            for value in self.ignore_values:
                writer.writerow([value, "ignored", 0, 0, 0, 1, label_format])
        os.replace(temporary, path)

    # -- facts

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self) -> np.ndarray:
        """Class colours by train id: uint8 (C, 3)."""
        return np.asarray(self.colours, np.uint8).reshape(-1, 3)

    def same_classes(self, other: "ClassTable") -> bool:
        """Whether both read annotations the same way (ids, in order, and ignored values)."""
        return self.ids == other.ids and set(self.ignore_values) == set(other.ignore_values)

    def describe(self) -> str:
        return f"{self.num_classes} classes ({self.source or 'class table'})"

    # -- mappings

    def value_lookup(self) -> np.ndarray:
        """Annotation value (0..255) -> train id: int32 (256,); ignored values give 255, others -1."""
        lookup = np.full(256, -1, np.int32)
        lookup[list(self.ignore_values)] = IGNORE_LABEL
        lookup[list(self.ids)] = np.arange(self.num_classes)
        return lookup

    def to_train_ids(self, values) -> np.ndarray:
        """Annotation values -> train ids (uint8; ignored 255).

        Raises:
          DataError: a value that is neither a class nor ignored.
        """
        mapped = self.value_lookup()[np.asarray(values).astype(np.intp)]
        if (mapped < 0).any():
            bad = sorted(set(np.asarray(values)[mapped < 0].tolist()))
            raise DataError(f"values {bad[:10]} are neither classes nor ignored in the class table ({self.describe()})")
        return mapped.astype(np.uint8)

    def to_values(self, train_ids) -> np.ndarray:
        """Train ids -> annotation values (uint8); 255 (ignored) stays 255.

        Raises:
          ValueError: a train id outside 0..C-1 and not 255 (a bug upstream).
        """
        train_ids = np.asarray(train_ids)
        lookup = np.full(256, -1, np.int32)
        lookup[: self.num_classes] = self.ids
        lookup[IGNORE_LABEL] = IGNORE_LABEL
        mapped = lookup[np.clip(train_ids, 0, 255).astype(np.intp)]
        if ((train_ids < 0) | (train_ids > 255) | (mapped < 0)).any():
            raise ValueError(f"train ids outside 0..{self.num_classes - 1} (and not 255)")
        return mapped.astype(np.uint8)

    def colourise(self, train_ids) -> np.ndarray:
        """Paints a train-id map (..., H, W) in the class colours: uint8 (..., H, W, 3); ignored and unknown ids black."""
        lookup = np.zeros((256, 3), np.uint8)
        lookup[: self.num_classes] = self.palette()
        ids = np.asarray(train_ids)
        return lookup[np.where((ids >= 0) & (ids < 256), ids, IGNORE_LABEL).astype(np.intp)]

    def png_palette(self) -> np.ndarray:
        """The 256-colour palette of label PNGs: each class's colour at its value (VOC's map elsewhere)."""
        colours = voc_colormap().copy()
        colours[list(self.ids)] = self.palette()
        return colours

    def write_label_png(self, path: str, train_ids) -> None:
        """Writes a train-id map (H, W) as a label PNG of annotation values.

        8-bit greyscale (ADE20K's submission format), or with ``palette_png``
        a palette PNG in the class colours (VOC's format): the pixel values are
        the annotation values either way.
        """
        values = self.to_values(train_ids)
        if self.palette_png:
            picture = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
            picture.putpalette(self.png_palette().reshape(-1).tolist())
            picture.save(path, bits=8)
        else:
            Image.fromarray(values, mode="L").save(path)


def as_class_table(classes) -> ClassTable:
    """A ClassTable as it is; an int as ADE20K's first ``classes`` classes (the framework's older signatures)."""
    if isinstance(classes, ClassTable):
        return classes
    return ClassTable.ade20k(int(classes))


def read_label_png(path: str) -> np.ndarray:
    """The values of a label PNG as stored (palette indices, never their colours): uint8 (H, W).

    Raises:
      DataError: not a single-channel (greyscale or palette) image.
    """
    with Image.open(path) as picture:
        if picture.mode not in ("L", "P"):
            raise DataError(f"{display_path(path)}: a {picture.mode} image, not a greyscale or palette label PNG")
        return np.asarray(picture)


# ---------------------------------------------------------------------------
# Paths and folder listings.


def display_path(path) -> str:
    """A path as text that can always be printed: undecodable name bytes appear as \\xNN escapes.

    Args:
      path: str (possibly holding the surrogate escapes ``os`` functions return
        for non-UTF-8 names) or bytes (as in the ``path`` tensors).
    """
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    return raw.decode("utf-8", "backslashreplace")


def decode_path(value) -> str:
    """A ``path`` tensor element (bytes) as a str the ``os`` functions accept, whatever its bytes."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    return os.fsdecode(value) if isinstance(value, bytes) else str(value)


def _path_tensor(paths):
    """Paths as a string tensor of their file-system bytes.

    ``tf.constant`` refuses a str holding the surrogate escapes of a non-UTF-8
    file name; the bytes are the name as the file system has it.
    """
    return tf.constant([os.fsencode(p) for p in paths] if isinstance(paths, (list, tuple)) else os.fsencode(paths))


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """The image files of one folder.

    Attributes:
      files: readable files with one of the extensions, sorted by name.
      unreadable: (path, reason) of entries with one of the extensions that
        cannot be opened: a symbolic link looping or pointing nowhere, a
        name that is not a file, a file this user may not read.
    """

    files: tuple[str, ...]
    unreadable: tuple[tuple[str, str], ...]


def scan_image_folder(folder: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> FolderScan:
    """Lists the image files of ``folder`` (not recursive) without ever raising on an entry.

    Args:
      folder: the folder; a missing folder (or a file in its place) gives an empty scan.
      extensions: lower-case extensions with the dot.

    Raises:
      DataError: the folder itself cannot be read.
    """
    files, unreadable = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if os.path.splitext(entry.name)[1].lower() not in extensions:
                    continue
                reason = _entry_problem(entry)
                if reason:
                    unreadable.append((entry.path, reason))
                else:
                    files.append(entry.path)
    except (FileNotFoundError, NotADirectoryError):  # reported as a missing folder by check_data
        return FolderScan((), ())
    except OSError as error:
        raise DataError(f"{display_path(folder)}: cannot list this folder ({error.strerror})") from None
    return FolderScan(tuple(sorted(files)), tuple(sorted(unreadable)))


def permission_denied(path) -> str:
    """What to say of a file this user may not read (after its path and a colon)."""
    return f"cannot read it: permission denied (give this user read access, e.g. chmod a+r {display_path(path)})"


def _entry_problem(entry: os.DirEntry) -> str:
    """Why a folder entry named like an image cannot be read as a file, or ""."""
    try:
        if entry.is_file():
            return "" if os.access(entry.path, os.R_OK) else permission_denied(entry.path)
        if entry.is_dir():
            return "a folder, not a file: rename or move it"
    except OSError as error:  # a symbolic link loop (ELOOP) raises here
        return f"cannot be opened ({error.strerror}): remove it or fix the link"
    if entry.is_symlink():
        return "a symbolic link to nothing: remove it or fix the link"
    return "not a regular file: remove it"


@dataclasses.dataclass(frozen=True)
class SplitListing:
    """The files of one split.

    Attributes:
      pairs: (image path, annotation path) of every image with an annotation,
        sorted by file name.
      images_without_annotation: image paths with no annotation PNG.
      annotations_without_image: annotation paths with no image.
      unreadable: (path, reason) of entries named like images or annotations
        that cannot be opened (see ``scan_image_folder``).
      same_stem: groups of files of one folder sharing a stem, e.g.
        ``X.jpg`` and ``X.png``; no pair is made for such a stem, since
        picking one would silently depend on the folder order.
      listed: the split is a list of names (VOC): its entries must all have
        their files.
      entries_without_files: list entries with neither image nor annotation.
      missing: folders or list files of the layout that do not exist.
    """

    pairs: tuple[tuple[str, str], ...]
    images_without_annotation: tuple[str, ...]
    annotations_without_image: tuple[str, ...]
    unreadable: tuple[tuple[str, str], ...] = ()
    same_stem: tuple[tuple[str, ...], ...] = ()
    listed: bool = False
    entries_without_files: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        """One line per entry that training and evaluation cannot use as it is.

        Unpaired files are not problems of a layout that pairs files by name;
        in a layout whose split is a list of names (VOC), every entry of the
        list without its image or annotation is one.
        """
        lines = [f"{display_path(path)}: {reason}" for path, reason in self.unreadable]
        if self.listed:
            lines += [f"{display_path(p)}: listed in the split, but its annotation is missing" for p in self.images_without_annotation]
            lines += [f"{display_path(p)}: listed in the split, but its image is missing" for p in self.annotations_without_image]
            lines += [f"{entry}: listed in the split, but neither its image nor its annotation exists" for entry in self.entries_without_files]
            lines += [f"{display_path(p)}: missing" for p in self.missing]
        lines += [
            " and ".join(display_path(p) for p in group) + ": the same name with different extensions; "
            "keep one (rename or remove the others)"
            for group in self.same_stem
        ]
        return lines


def _files_by_stem(folder: str, extensions: tuple[str, ...]):
    """(stem -> path of stems with one file, groups sharing a stem, unreadable entries)."""
    scan = scan_image_folder(folder, extensions)
    by_stem = collections.defaultdict(list)
    for path in scan.files:
        by_stem[os.path.splitext(os.path.basename(path))[0]].append(path)
    unique = {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}
    shared = tuple(tuple(paths) for stem, paths in sorted(by_stem.items()) if len(paths) > 1)
    return unique, shared, scan.unreadable



def _files_by_stem_paired(root: str, split: str, image_extensions: tuple[str, ...]) -> SplitListing:
    """Pairs ``ROOT/images/SPLIT/*`` with ``ROOT/annotations/SPLIT/*.png`` by file stem."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    image_dir, annotation_dir = os.path.join(root, "images", split), os.path.join(root, "annotations", split)
    images, shared_images, bad_images = _files_by_stem(image_dir, image_extensions)
    annotations, shared_annotations, bad_annotations = _files_by_stem(annotation_dir, (".png",))
    # A stem whose image is ambiguous is neither paired nor "without image".
    ambiguous = {os.path.splitext(os.path.basename(group[0]))[0] for group in shared_images + shared_annotations}
    images = {stem: path for stem, path in images.items() if stem not in ambiguous}
    annotations = {stem: path for stem, path in annotations.items() if stem not in ambiguous}
    return SplitListing(
        pairs=tuple((images[s], annotations[s]) for s in sorted(images.keys() & annotations.keys())),
        images_without_annotation=tuple(images[s] for s in sorted(images.keys() - annotations.keys())),
        annotations_without_image=tuple(annotations[s] for s in sorted(annotations.keys() - images.keys())),
        unreadable=bad_images + bad_annotations,
        same_stem=shared_images + shared_annotations,
        missing=tuple(folder for folder in (image_dir, annotation_dir) if not os.path.isdir(folder)),
    )


# ---------------------------------------------------------------------------
# Layouts: where the files of a dataset are, and its class table.


class Layout:
    """One way of laying out a dataset on disk. Subclasses fill in the methods.

    Attributes:
      name: the value of ``data.layout``.
      looks_for: what a root holds, for messages.
    """

    name = ""
    looks_for = ""

    def candidates(self, data_dir: str) -> list[str]:
        """The folders ``data_dir`` may name or contain that could be the root."""
        raise NotImplementedError

    def is_root(self, folder: str) -> bool:
        raise NotImplementedError

    def find_root(self, data_dir: str) -> str | None:
        """The dataset root at or inside ``data_dir``, or None."""
        return next((c for c in self.candidates(data_dir) if self.is_root(c)), None)

    def list_split(self, root: str, split: str, config: DataConfig) -> SplitListing:
        raise NotImplementedError

    def class_table(self, root: str, config: DataConfig) -> ClassTable:
        raise NotImplementedError

    def sample_root(self, data_dir: str) -> str:
        """Where the synthetic sample data of this layout is written inside ``data_dir``."""
        raise NotImplementedError

    def download(self, config: DataConfig, progress: bool) -> str:
        raise DataError(f"--download has nothing to fetch for a {self.name} dataset: point --data_dir at it")

    def ways_out(self) -> list[str]:
        return []

    def no_pairs(self, root: str, split: str) -> str:
        """What an empty split looks like, for messages."""
        return (
            f"{os.path.join(root, 'images', split)}: no image with a matching annotation in "
            f"{os.path.join(root, 'annotations', split)}"
        )


class Ade20kLayout(Layout):
    """ADEChallengeData2016: images/ and annotations/ by split, 8-bit greyscale values 0..150."""

    name = "ade20k"
    looks_for = "images/ and annotations/ (ADEChallengeData2016)"

    def candidates(self, data_dir):
        return [data_dir, os.path.join(data_dir, "ADEChallengeData2016")]

    def is_root(self, folder):
        return os.path.isdir(os.path.join(folder, "images")) and os.path.isdir(os.path.join(folder, "annotations"))

    def list_split(self, root, split, config):
        return _files_by_stem_paired(root, split, IMAGE_EXTENSIONS)

    def class_table(self, root, config):
        return ClassTable.ade20k(config.num_classes or ade20k.NUM_CLASSES)

    def sample_root(self, data_dir):
        return os.path.join(data_dir, "ADEChallengeData2016")

    def download(self, config, progress):
        from fcn import download

        return download.download_ade20k(config.data_dir, config.download_url, config.download_sha1, progress=progress)

    def ways_out(self):
        return ["--download                      fetch ADEChallengeData2016.zip (~923 MB) into --data_dir and extract it",
                "--data_dir DIR                  point at an existing ADEChallengeData2016 folder"]  # fmt: skip


class FolderLayout(Ade20kLayout):
    """Any dataset: images/ and annotations/ by split, and classes.csv at the root."""

    name = "folder"
    looks_for = f"images/, annotations/ and {CLASSES_FILE}"

    def candidates(self, data_dir):
        return [data_dir]

    def is_root(self, folder):
        return super().is_root(folder) and os.path.isfile(os.path.join(folder, CLASSES_FILE))

    def list_split(self, root, split, config):
        return _files_by_stem_paired(root, split, FOLDER_IMAGE_EXTENSIONS)

    def class_table(self, root, config):
        return ClassTable.read_csv(os.path.join(root, CLASSES_FILE))

    def sample_root(self, data_dir):
        return data_dir

    def download(self, config, progress):
        return Layout.download(self, config, progress)

    def ways_out(self):
        return [f"--data_dir DIR                  a folder with images/, annotations/ and {CLASSES_FILE} (see README)"]


VOC_LISTS = {"train": "SegmentationClass", "trainval": "SegmentationClass", "train_aug": "SegmentationClassAug"}


class VocLayout(Layout):
    """PASCAL VOC 2012: JPEGImages/, SegmentationClass/ (palette PNGs), ImageSets/Segmentation/*.txt."""

    name = "voc"
    looks_for = "JPEGImages/ and ImageSets/Segmentation/ (VOC2012)"

    def candidates(self, data_dir):
        return [data_dir, os.path.join(data_dir, "VOC2012"), os.path.join(data_dir, "VOCdevkit", "VOC2012")]

    def is_root(self, folder):
        return os.path.isdir(os.path.join(folder, "JPEGImages")) and os.path.isdir(
            os.path.join(folder, "ImageSets", "Segmentation")
        )

    def list_split(self, root, split, config):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        list_name = config.voc_train_list if split == "training" else "val"
        list_path = os.path.join(root, "ImageSets", "Segmentation", list_name + ".txt")
        annotation_dir = os.path.join(root, VOC_LISTS.get(list_name, "SegmentationClass"))
        missing = tuple(p for p in (os.path.join(root, "JPEGImages"), annotation_dir) if not os.path.isdir(p))
        if not os.path.isfile(list_path):
            return SplitListing((), (), (), listed=True, missing=missing + (list_path,))
        try:
            with open(list_path, "rb") as f:
                lines = [os.fsdecode(line.strip()) for line in f.read().splitlines() if line.strip()]
        except PermissionError:
            raise DataError(f"{display_path(list_path)}: {permission_denied(list_path)}") from None
        pairs, without_annotation, without_image, without_files = [], [], [], []
        unreadable = []
        for entry in sorted(set(lines)):
            fields = entry.split()
            if len(fields) == 2:  # "/JPEGImages/X.jpg /SegmentationClassAug/X.png", as SBD-augmented lists are written
                image_path, annotation_path = (os.path.join(root, field.lstrip("/")) for field in fields)
            else:
                image_path = os.path.join(root, "JPEGImages", entry + ".jpg")
                annotation_path = os.path.join(annotation_dir, entry + ".png")
            has_image, has_annotation = os.path.isfile(image_path), os.path.isfile(annotation_path)
            if has_image and has_annotation:
                denied = [(p, permission_denied(p)) for p in (image_path, annotation_path) if not os.access(p, os.R_OK)]
                if denied:
                    unreadable.extend(denied)
                else:
                    pairs.append((image_path, annotation_path))
            elif has_image:
                without_annotation.append(image_path)
            elif has_annotation:
                without_image.append(annotation_path)
            else:
                without_files.append(f"{display_path(list_path)}: {entry}")
        return SplitListing(
            pairs=tuple(sorted(pairs)),
            images_without_annotation=tuple(without_annotation),
            annotations_without_image=tuple(without_image),
            unreadable=tuple(unreadable),
            listed=True,
            entries_without_files=tuple(without_files),
            missing=missing,
        )

    def class_table(self, root, config):
        return ClassTable.voc()

    def no_pairs(self, root, split):
        return f"{display_path(root)}: the {split} split lists no image"

    def sample_root(self, data_dir):
        return os.path.join(data_dir, "VOC2012")

    def download(self, config, progress):
        from fcn import download

        return download.download_voc(config.data_dir, config.voc_download_url, config.voc_download_md5, progress=progress)

    def ways_out(self):
        return ["--download                      fetch VOCtrainval_11-May-2012.tar (~2 GB) into --data_dir and extract it",
                "--data_dir DIR                  point at a VOC2012 folder, VOCdevkit, or the folder holding it"]  # fmt: skip


# Auto-detection tries them in this order: a folder dataset is the one with classes.csv.
LAYOUTS = {layout.name: layout for layout in (FolderLayout(), Ade20kLayout(), VocLayout())}


def layouts_for(config: DataConfig) -> list[Layout]:
    """The layout ``data.layout`` names, or all of them in detection order for ``auto``."""
    if config.layout == "auto":
        return list(LAYOUTS.values())
    return [LAYOUTS[config.layout]]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset on disk: its layout, root folder and class table.

    Attributes:
      layout: how its files are laid out.
      root: the folder of the layout (ADEChallengeData2016, VOC2012, a folder dataset).
      classes: its class table.
      config: the data config it was opened with (layout options).
    """

    layout: Layout
    root: str
    classes: ClassTable
    config: DataConfig

    def list_split(self, split: str) -> SplitListing:
        return self.layout.list_split(self.root, split, self.config)

    def usable_pairs(self, split: str) -> tuple[tuple[str, str], ...]:
        """The (image, annotation) pairs of a split.

        Raises:
          DataError: there are none, or some files cannot be used without
            guessing (a stem with two images, an unreadable entry, a list entry
            without its files): the message lists them and the fix.
        """
        listing = self.list_split(split)
        problems = listing.problems()
        root = display_path(self.root)
        if problems:
            shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
            raise DataError(
                f"{root} ({split} split): {len(problems)} file(s) cannot be used as they are:\n  "
                + "\n  ".join(shown)
                + f"\nFix them, then rerun; --mode=check_data --data_dir {root} lists every problem."
            )
        if not listing.pairs:
            raise DataError(f"{self.layout.no_pairs(self.root, split)}; run --mode=check_data --data_dir {root}")
        return listing.pairs


def find_dataset(config: DataConfig) -> Dataset | None:
    """The dataset at or inside ``config.data_dir`` in the configured layout, or None."""
    for layout in layouts_for(config):
        root = layout.find_root(config.data_dir)
        if root is not None:
            return open_dataset(config, root, layout)
    return None


def open_dataset(config: DataConfig, root: str, layout: Layout | None = None) -> Dataset:
    """The dataset whose root is ``root`` (the layout detected unless configured).

    Raises:
      DataError: ``root`` holds no dataset of the layout, or its class table is
        unusable or disagrees with ``data.num_classes``.
    """
    if layout is None:
        layout = next((candidate for candidate in layouts_for(config) if candidate.is_root(root)), None)
        if layout is None:
            raise DataError(
                f"{display_path(root)} holds no dataset of the layout {config.layout} "
                f"({'; '.join(candidate.looks_for for candidate in layouts_for(config))})"
            )
    classes = layout.class_table(root, config)
    check_num_classes(config.num_classes, classes)
    return Dataset(layout, root, classes, config)


def as_dataset(root, config: DataConfig | None = None) -> Dataset:
    """``root`` as a Dataset: a Dataset as it is, a root folder opened with ``config`` (default: the defaults)."""
    if isinstance(root, Dataset):
        return root
    return open_dataset(config or DataConfig(), root)


def check_num_classes(num_classes: int, classes: ClassTable) -> None:
    """Refuses a ``data.num_classes`` other than 0 (follow the table) or the table's number of classes."""
    if num_classes not in (0, classes.num_classes):
        raise ClassTableMismatchError(
            f"data.num_classes is {num_classes}, but the class table ({classes.source}) has {classes.num_classes} "
            f"classes: set data.num_classes to {classes.num_classes}, or to 0 to follow the class table "
            f"(--set data.num_classes={classes.num_classes}); for a trained run, pass its --config LOGS_DIR/config.yaml"
        )


def prepare_dataset(config: DataConfig, progress: bool = True, generate_sample: bool = True) -> str:
    """Finds the dataset, generating or downloading it when the config says so.

    A dataset already at ``data_dir`` is always used as it is, also with
    ``synthetic`` set: the sample data is generated only where there is none.

    Args:
      config: the data section of the run's config.
      progress: show progress bars.
      generate_sample: False for a caller that only reads (``--mode=check_data``):
        ``synthetic`` then generates nothing, so a mistyped ``data_dir`` is reported.

    Returns:
      The dataset root.

    Raises:
      DatasetNotFoundError: no dataset and neither ``synthetic`` nor
        ``download`` set; the message says where it looked and the ways out.
      DataError: the sample data's folder holds something that is neither a
        dataset nor the sample data (it is left untouched).
    """
    dataset = find_dataset(config)
    if dataset is not None:
        return dataset.root
    layout = LAYOUTS["ade20k" if config.layout == "auto" else config.layout]  # auto: ADE20K, the default recipe
    if config.synthetic and generate_sample:
        from fcn import sample_data  # only runs that use the sample data need it

        try:
            return sample_data.generate_sample_dataset(layout.sample_root(config.data_dir), progress=progress, layout=layout.name)
        except sample_data.FolderInUseError as error:
            raise DataError(f"{error}. Point --data_dir at another folder for the sample data.") from None
    if config.download:
        return layout.download(config, progress)
    looked = [
        f"  {display_path(os.path.abspath(candidate))}   ({candidate_layout.looks_for})\n"
        for candidate_layout in layouts_for(config)
        for candidate in candidate_layout.candidates(config.data_dir)
    ]
    what = "ADE20K" if config.layout in ("auto", "ade20k") else f"{config.layout}-layout"
    note = ""
    if config.synthetic:
        note = "--mode=check_data only checks: it does not generate the sample data (--mode=train does)\n"
    ways = layout.ways_out() + [
        "--set data.layout=LAYOUT          ade20k, voc or folder (default auto: any of them)",
        "--config configs/sample.yaml    train on the small synthetic sample data instead",
    ]
    raise DatasetNotFoundError(
        f"no {what} dataset found: looked in\n" + "".join(looked) + note + "Ways out:\n" + "\n".join(f"  {way}" for way in ways)
    )


# ---------------------------------------------------------------------------
# A run's class table.


def run_classes_path(logs_dir: str) -> str:
    return os.path.join(logs_dir, CLASSES_FILE)


def run_classes(logs_dir: str, config: DataConfig) -> ClassTable:
    """The class table of a run: the one it recorded, else its dataset's, else ADE20K's.

    Training writes ``LOGS_DIR/classes.csv`` when it starts, so a run's
    classes are known where its dataset is absent. A run directory without
    that file (a run of an earlier version) takes the table of the dataset at
    ``data_dir``, and without one ADE20K's (what earlier versions trained on),
    unless ``data.layout`` names another layout.

    Raises:
      DataError: an unreadable ``classes.csv``, no table to be found, or a
        ``data.num_classes`` that disagrees with the table.
    """
    path = run_classes_path(logs_dir)
    if os.path.isfile(path):
        classes = ClassTable.read_csv(path)
    else:
        dataset = find_dataset(config)
        if dataset is not None:
            classes = dataset.classes
        elif config.layout in ("auto", "ade20k"):
            classes = ClassTable.ade20k(config.num_classes or ade20k.NUM_CLASSES)
        else:
            raise DataError(
                f"the class table of this run is unknown: {path} does not exist (training writes it) and there is no "
                f"{config.layout} dataset at {config.data_dir}; pass the run's --logs_dir or --data_dir"
            )
    check_num_classes(config.num_classes, classes)
    return classes


def dataset_for_run(root, config: DataConfig, classes: ClassTable) -> Dataset:
    """The dataset at ``root`` (a folder or a Dataset), checked to have the run's classes.

    Raises:
      ClassTableMismatchError: the dataset's annotation values are not the
        run's classes (scoring or showing it would mislabel every pixel).
    """
    dataset = as_dataset(root, config)
    if not dataset.classes.same_classes(classes):
        raise ClassTableMismatchError(
            f"{display_path(dataset.root)} has {dataset.classes.describe()}, but the run was trained on "
            f"{classes.describe()}: point --data_dir at the run's dataset"
        )
    return dataset


def record_run_classes(logs_dir: str, classes: ClassTable) -> str:
    """Writes the run's ``classes.csv``, or checks the one there is the same table.

    Raises:
      ClassTableMismatchError: the run was trained on other classes.
    """
    path = run_classes_path(logs_dir)
    if os.path.isfile(path):
        recorded = ClassTable.read_csv(path)
        if recorded.same_classes(classes) and recorded.names == classes.names:
            return path
        raise ClassTableMismatchError(
            f"{path}: this run was trained on another class table ({recorded.describe()}) than the dataset's "
            f"({classes.describe()}); train into another --logs_dir"
        )
    os.makedirs(logs_dir, exist_ok=True)
    classes.write_csv(path)
    return path




# ---------------------------------------------------------------------------
# Reading one example.


def decode_image(path):
    """Reads any image file as RGB uint8 (H, W, 3); returns (image, True). Raises on a corrupt file."""
    return _decode_image_bytes(tf.io.read_file(path)), tf.constant(True)


def _decode_image_bytes(data):
    """JPEG, PNG, GIF or BMP file contents -> RGB uint8 (H, W, 3)."""
    # The accurate integer IDCT decodes JPEGs as PIL and OpenCV do; TensorFlow's
    # default fast IDCT is off by a grey level or two on many pixels.
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )  # (H, W, 3)


def read_image_file(path: str) -> np.ndarray:
    """Reads one image file eagerly, decoded exactly as the pipeline decodes it.

    Args:
      path: the file; a str from ``os`` functions may hold a non-UTF-8 name.

    Returns:
      uint8 RGB (H, W, 3).

    Raises:
      DataError: naming the file: it cannot be opened, or it is not an image
        this reader can decode (JPEG, PNG, GIF, BMP), with the decoder's reason.
    """
    try:
        with open(path, "rb") as f:
            contents = f.read()
    except PermissionError:
        raise DataError(f"{display_path(path)}: {permission_denied(path)}") from None
    except OSError as error:
        raise DataError(f"{display_path(path)}: cannot be read ({error.strerror})") from None
    try:
        return _decode_image_bytes(tf.constant(contents)).numpy()
    except tf.errors.OpError as error:
        raise DataError(
            f"{display_path(path)}: not an image it can read: {_decoder_reason(error)} (JPEG, PNG, GIF and BMP files are read)"
        ) from None


def _decoder_reason(error: tf.errors.OpError) -> str:
    """The decoder's own words, without TensorFlow's op and device decorations."""
    text = re.sub(r"\{\{[^}]*\}\}", "", error.message)
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text, flags=re.S)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].rstrip(".") if lines else "the decoder rejected it"


def _unreadable_image(path):
    return tf.zeros([1, 1, 3], tf.uint8), tf.constant(False)


def _annotation_kind(data):
    """How a PNG holds its values, from its header (bit depth at byte 24, colour type at byte 25)."""
    header = tf.io.decode_raw(tf.strings.substr(data, 0, 26), tf.uint8)
    is_png = tf.logical_and(tf.equal(tf.strings.substr(data, 0, 8), _PNG_SIGNATURE), tf.size(header) >= 26)
    header = tf.pad(header, [[0, 26 - tf.minimum(tf.size(header), 26)]])
    bit_depth, colour_type = header[24], header[25]
    return tf.case(
        [
            (tf.logical_not(is_png), lambda: _KIND_OTHER),
            (tf.logical_and(tf.equal(colour_type, 0), tf.equal(bit_depth, 8)), lambda: _KIND_GREY),
            (tf.equal(colour_type, 3), lambda: _KIND_PALETTE),
            (tf.logical_or(tf.equal(colour_type, 2), tf.equal(colour_type, 6)), lambda: _KIND_RGB),
        ],
        default=lambda: _KIND_OTHER,
    )


def _palette_indices(contents: bytes) -> np.ndarray:
    """The pixel values of a palette PNG: its indices, never the colours they stand for."""
    if isinstance(contents, np.ndarray):  # how tf.numpy_function passes a string scalar
        contents = contents.item()
    try:
        with Image.open(io.BytesIO(contents)) as picture:
            if picture.mode != "P":
                raise ValueError(f"expected a palette PNG, got mode {picture.mode}")
            return np.asarray(picture, np.uint8)
    except Exception as error:  # noqa: BLE001  any failure of PIL is an unreadable file, one exception type
        raise ValueError(f"cannot decode the palette PNG: {error}") from None


def _decode_annotation(path):
    """Reads an annotation PNG: (values (H, W) uint8, kind, True).

    An 8-bit greyscale PNG holds the values as they are. TensorFlow's PNG
    decoder expands a palette PNG to its colours, so a palette PNG is read by
    PIL, which gives the indices. An RGB PNG is decoded (for its size) but its
    kind marks it unusable: colours are never turned into classes.
    """
    data = tf.io.read_file(path)
    kind = _annotation_kind(data)

    def palette():
        indices = tf.numpy_function(_palette_indices, [data], tf.uint8, stateful=False)
        return tf.ensure_shape(indices, [None, None])

    def other():
        return tf.io.decode_png(data, channels=0, dtype=tf.uint8)[..., 0]  # (H, W)

    label = tf.cond(tf.equal(kind, _KIND_PALETTE), palette, other)
    return label, kind, tf.constant(True)


def _unreadable_annotation(path):
    return tf.fill([1, 1], tf.constant(IGNORE_LABEL, tf.uint8)), tf.constant(_KIND_OTHER), tf.constant(False)


def _with_fallback(decode, fallback, path) -> tf.data.Dataset:
    """One-element dataset: decode(path), or fallback(path) if decoding raised.

    Decoding ops raise on corrupt files and graph code cannot catch; a dataset
    can (``ignore_errors``), which turns the failure into a flag.
    """
    source = tf.data.Dataset.from_tensors(path)
    return source.map(decode).ignore_errors().concatenate(source.map(fallback)).take(1)


def _checked_example(image_read, annotation_read, image_path, classes):
    """Validates a decoded pair and maps annotation values to train ids with the class table's lookup."""
    classes = as_class_table(classes)
    image, image_ok = image_read
    raw_label, kind, annotation_ok = annotation_read
    same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(raw_label)))
    readable_kinds = (_KIND_GREY, _KIND_PALETTE) if classes.palette_png else (_KIND_GREY,)
    format_ok = tf.reduce_any(tf.equal(kind, readable_kinds))
    # Where palette PNGs are read, an RGB picture is named as such; ADE20K's reader keeps its one format error.
    is_rgb = tf.logical_and(tf.constant(classes.palette_png), tf.equal(kind, _KIND_RGB))
    train_ids = tf.gather(tf.constant(classes.value_lookup()), tf.cast(raw_label, tf.int32))  # -1: not in the table
    in_table = tf.reduce_all(train_ids >= 0)
    error = tf.case(
        [
            (tf.logical_not(image_ok), lambda: ERROR_UNREADABLE_IMAGE),
            (tf.logical_not(annotation_ok), lambda: ERROR_UNREADABLE_ANNOTATION),
            (is_rgb, lambda: ERROR_ANNOTATION_RGB),
            (tf.logical_not(format_ok), lambda: ERROR_ANNOTATION_FORMAT),
            (tf.logical_not(same_size), lambda: ERROR_SIZE_MISMATCH),
            (tf.logical_not(in_table), lambda: ERROR_LABEL_OUT_OF_RANGE),
        ],
        default=lambda: ERROR_NONE,
    )

    def usable():
        # Classes become train ids 0..C-1; ignored values (ADE20K's 0 "other", 255) become 255.
        return image, tf.cast(train_ids, tf.uint8)

    def unusable():
        return tf.zeros([1, 1, 3], tf.uint8), tf.fill([1, 1], tf.constant(IGNORE_LABEL, tf.uint8))

    image, label = tf.cond(tf.equal(error, ERROR_NONE), usable, unusable)
    return {"image": image, "label": label, "path": image_path, "error": tf.cast(error, tf.int32)}


def read_example_dataset(image_path, annotation_path, classes) -> tf.data.Dataset:
    """A one-element dataset with the checked example of one file pair (unbatched dict).

    Args:
      classes: the dataset's ClassTable (an int: ADE20K's first ``classes`` classes).
    """
    return tf.data.Dataset.zip(
        _with_fallback(decode_image, _unreadable_image, image_path),
        _with_fallback(_decode_annotation, _unreadable_annotation, annotation_path),
    ).map(lambda image_read, annotation_read: _checked_example(image_read, annotation_read, image_path, classes))


def load_example(image_path: str, annotation_path: str, classes=ade20k.NUM_CLASSES):
    """Reads one pair eagerly, exactly as the pipeline does.

    Args:
      classes: the dataset's ClassTable (an int: ADE20K's first ``classes`` classes).

    Returns:
      (image uint8 (H, W, 3) RGB, label uint8 (H, W) train ids, 255 ignored).

    Raises:
      DataError: naming the file and what is wrong with it.
    """
    for path in (image_path, annotation_path):
        if os.path.isfile(path) and not os.access(path, os.R_OK):
            raise DataError(f"{display_path(path)}: {permission_denied(path)}")
    # Eagerly, decoding errors can be caught directly (the pipeline needs ignore_errors).
    try:
        image_read = decode_image(_path_tensor(image_path))
    except tf.errors.OpError:
        image_read = _unreadable_image(image_path)
    try:
        annotation_read = _decode_annotation(_path_tensor(annotation_path))
    except (tf.errors.OpError, ValueError):  # eagerly, a palette PNG's reader raises its own ValueError
        annotation_read = _unreadable_annotation(annotation_path)
    example = _checked_example(image_read, annotation_read, _path_tensor(image_path), classes)
    error = int(example["error"])
    if error != ERROR_NONE:
        image_name, annotation_name = display_path(image_path), display_path(annotation_path)
        culprit = annotation_name if error in _ANNOTATION_ERRORS else image_name
        if error == ERROR_SIZE_MISMATCH:
            culprit = f"{annotation_name} (image {image_name})"
        raise DataError(f"{culprit}: {ERROR_MESSAGES[error]}")
    return example["image"].numpy(), example["label"].numpy()




# ---------------------------------------------------------------------------
# Shorthands taking a root folder or a Dataset.


def find_dataset_root(data_dir: str, config: DataConfig | None = None) -> str | None:
    """The root of the dataset at or inside ``data_dir`` (any layout unless ``config`` names one), or None."""
    dataset = find_dataset(dataclasses.replace(config or DataConfig(), data_dir=data_dir, num_classes=0))
    return None if dataset is None else dataset.root


def list_split(root, split: str, config: DataConfig | None = None) -> SplitListing:
    """Pairs the images and annotations of ``split`` (``root``: a root folder or a Dataset)."""
    return as_dataset(root, config).list_split(split)


def usable_pairs(root, split: str, config: DataConfig | None = None) -> tuple[tuple[str, str], ...]:
    """``Dataset.usable_pairs`` of ``root`` (a root folder or a Dataset)."""
    return as_dataset(root, config).usable_pairs(split)
