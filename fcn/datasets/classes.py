"""The class table: which annotation values are classes, their names and colours, which are ignored.

No TensorFlow here: the table is data handed to the pipeline, the metrics and
every output (evaluate's table, ``metrics.json``, pictures, label PNGs, the
SavedModel's labels). Inside the framework classes are train ids 0..C-1 and
255 (``IGNORE_LABEL``) marks ignored pixels. Each layout builds its own table
(``fcn/datasets/ade20k.py``, ``voc.py``, ``cityscapes.py``); a folder dataset
and a run read theirs from ``classes.csv``.
"""

import csv
import dataclasses
import os

import numpy as np
from PIL import Image

from fcn.datasets.files import display_path, visible
from fcn.errors import DataError

IGNORE_LABEL = 255
CLASSES_FILE = "classes.csv"  # a folder dataset's class table, and a run's (in logs_dir)
CLASSES_HEADER = ("id", "name", "r", "g", "b")
DEFAULT_IGNORE_NAME = "ignored"  # an ignored value the class table gives no name
# A spreadsheet takes a cell starting with one of these for a formula; in CSV files fcn writes, such a name gets a
# leading quote, which reading drops again.
_FORMULA_STARTS = ("=", "+", "-", "@")


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
      ignore_names: (value, name) of ignored values that have a name (ADE20K's
        0 "other", a folder dataset's own rows); the others are "ignored".
    """

    names: tuple[str, ...]
    ids: tuple[int, ...]
    colours: tuple[tuple[int, int, int], ...]
    ignore_values: tuple[int, ...] = (IGNORE_LABEL,)
    palette_png: bool = True
    source: str = ""
    ignore_names: tuple[tuple[int, str], ...] = ()

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
        controlled = [n for n in self.names if any(ord(c) < 32 or ord(c) == 127 for c in n)]
        if controlled:
            raise DataError(
                f"{where}class name {visible(controlled[0])} holds a control character (a line break, a tab, an escape): "
                "names are one line of printable text"
            )
        both = sorted(set(self.ids) & set(self.ignore_values))
        if both:
            raise DataError(f"{where}value {both[0]} is both a class and ignored")
        if IGNORE_LABEL not in self.ignore_values:
            object.__setattr__(self, "ignore_values", tuple(sorted(set(self.ignore_values) | {IGNORE_LABEL})))

    # -- construction

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
        names, ids, colours, ignored, ignore_names, palette = [], [], [], [], [], None
        lines_of = {}  # id or name -> the line that first gave it
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
            if value == IGNORE_LABEL and flag not in ("1", "true", "yes"):
                raise DataError(
                    f"{where}: {IGNORE_LABEL} is always ignored and cannot be the class {visible(row[1])}: give the class "
                    f"another id in 0..254, or mark the row ignored (ignore column 1)"
                )
            if flag in ("1", "true", "yes"):
                if value in ignored:
                    raise DataError(f"{where}: value {value} is listed more than once")
                ignored.append(value)
                ignore_name = row[1][1:] if row[1][:1] == "'" and row[1][1:2] in _FORMULA_STARTS else row[1]
                if ignore_name and ignore_name != DEFAULT_IGNORE_NAME:
                    ignore_names.append((value, ignore_name))
                continue
            name = row[1][1:] if row[1][:1] == "'" and row[1][1:2] in _FORMULA_STARTS else row[1]
            for key, what in (((("id", value)), f"class id {value}"), (("name", name), f"class name {visible(name)}")):
                if key in lines_of:
                    raise DataError(f"{where}: {what} is already given on line {lines_of[key]}; ids and names must be distinct")
                lines_of[key] = number
            names.append(name)
            ids.append(value)
            colours.append((r, g, b))
        if not names:
            raise DataError(f"{path}: lists no class (one row per class: id,name,r,g,b)")
        return cls(tuple(names), tuple(ids), tuple(colours), tuple(sorted(set(ignored) | {IGNORE_LABEL})),
                   True if palette is None else palette, path, tuple(ignore_names))  # fmt: skip

    def write_csv(self, path: str) -> None:
        """Writes the table as ``classes.csv`` (atomically): classes in train-id order, then the ignored values."""
        temporary = path + ".tmp"
        with open(temporary, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow([*CLASSES_HEADER, "ignore", "format"])
            label_format = "palette" if self.palette_png else "grey"
            for name, value, colour in zip(self.names, self.ids, self.colours):
                writer.writerow([value, _csv_text(name), *colour, 0, label_format])
            for value in self.ignore_values:
                writer.writerow([value, _csv_text(self.ignore_name(value)), 0, 0, 0, 1, label_format])
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

    def ignore_name(self, value: int) -> str:
        """The dataset's name for an ignored annotation value ("ignored" when it gives none)."""
        return dict(self.ignore_names).get(value, DEFAULT_IGNORE_NAME)

    def ignored_description(self) -> str:
        """The ignored values with their names, e.g. ``0 (other), 255 (ignored)``."""
        return ", ".join(f"{value} ({self.ignore_name(value)})" for value in self.ignore_values)

    def describe(self) -> str:
        return f"{self.num_classes} classes ({self.source or 'class table'})"

    def difference(self, other: "ClassTable") -> str:
        """How this table reads annotations differently from ``other``, for messages (its side first)."""
        if self.ids != other.ids:
            if set(self.ids) == set(other.ids):
                return f"the same ids in another order: {list(self.ids)[:10]} against {list(other.ids)[:10]}"
            mine, theirs = sorted(set(self.ids) - set(other.ids)), sorted(set(other.ids) - set(self.ids))
            return f"class ids {mine[:10]} only here, {theirs[:10]} only there" if mine and theirs else (
                f"class ids {mine[:10]} only here" if mine else f"class ids {theirs[:10]} missing here")
        if set(self.ignore_values) != set(other.ignore_values):
            return f"ignored values {sorted(self.ignore_values)} against {sorted(other.ignore_values)}"
        renamed = [(a, b) for a, b in zip(self.names, other.names) if a != b]
        return "other names: " + ", ".join(f"{visible(a)} for {visible(b)}" for a, b in renamed[:5])

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


def read_label_png(path: str) -> np.ndarray:
    """The values of a label PNG as stored (palette indices, never their colours): uint8 (H, W).

    Raises:
      DataError: not a single-channel (greyscale or palette) image.
    """
    with Image.open(path) as picture:
        if picture.mode not in ("L", "P"):
            raise DataError(f"{display_path(path)}: a {picture.mode} image, not a greyscale or palette label PNG")
        return np.asarray(picture)


def _csv_text(name: str) -> str:
    """A class name as a CSV cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + name if name.startswith(_FORMULA_STARTS) else name
