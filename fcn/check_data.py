"""``--mode=check_data``: scans a dataset the way the pipeline reads it and reports every problem."""

import dataclasses
import os

import numpy as np
import tensorflow as tf
import tqdm

from fcn import config as config_lib
from fcn import datasets
from fcn.datasets import ade20k, decode
from fcn.datasets.classes import IGNORE_LABEL, read_label_png
from fcn.datasets.files import SPLITS, decode_path, display_path


@dataclasses.dataclass
class SplitReport:
    """What a scan found in one split.

    Attributes:
      split: ``training`` or ``validation``.
      pairs: number of image/annotation pairs.
      images_without_annotation: image files with no annotation.
      annotations_without_image: annotation files with no image.
      problems: (image path, ``data.ERROR_*`` code) of every unusable pair.
      label_pixels: pixel count per train id (0..num_classes-1) over the usable pairs.
      ignored_pixels: pixels of ignored values (ADE20K's 0 "other", 255) over the usable pairs.
      missing_folders: expected folders that do not exist.
      unreadable: (path, reason) of entries named like images or annotations
        that cannot be opened (a symbolic link loop, a folder named X.jpg).
      same_stem: groups of files sharing a stem (``X.jpg`` and ``X.png``),
        which the pipeline refuses to choose between.
      entries_without_files: entries of a split list (VOC) with neither image
        nor annotation.
      values_outside: image path -> the annotation values that are neither a
        class nor ignored, for the pairs refused for them.
    """

    split: str
    pairs: int = 0
    images_without_annotation: tuple[str, ...] = ()
    annotations_without_image: tuple[str, ...] = ()
    problems: list = dataclasses.field(default_factory=list)
    label_pixels: np.ndarray | None = None
    ignored_pixels: int = 0
    missing_folders: tuple[str, ...] = ()
    unreadable: tuple[tuple[str, str], ...] = ()
    same_stem: tuple[tuple[str, ...], ...] = ()
    entries_without_files: tuple[str, ...] = ()
    values_outside: dict = dataclasses.field(default_factory=dict)

    @property
    def no_pairs(self) -> bool:
        """No pairs, and no missing folder or listing problem that already explains why."""
        return self.pairs == 0 and not (self.missing_folders or self.unreadable or self.same_stem or self.entries_without_files)

    @property
    def nothing_labelled(self) -> bool:
        """Pairs were read, but not one pixel of them is a class: nothing to learn from or to score."""
        return self.pairs > 0 and len(self.problems) < self.pairs and int(self.label_pixels.sum()) == 0

    @property
    def error_count(self) -> int:
        """Problems as ``format_report`` lists them: one per file or group, plus an empty split."""
        return (
            len(self.images_without_annotation)
            + len(self.annotations_without_image)
            + len(self.problems)
            + len(self.missing_folders)
            + len(self.unreadable)
            + len(self.same_stem)
            + len(self.entries_without_files)
            + self.no_pairs
            + self.nothing_labelled
        )


def _summarise(example, num_classes):
    labels = tf.reshape(tf.cast(example["label"], tf.int32), [-1])
    counts = tf.math.bincount(labels, minlength=256, maxlength=256)
    return example["path"], example["error"], counts[:num_classes], counts[IGNORE_LABEL]


def check_split(root, split: str, num_classes: int = ade20k.NUM_CLASSES, progress: bool = True) -> SplitReport:
    """Reads every pair of one split through the pipeline's own reader.

    Args:
      root: a dataset root folder (ADE20K's classes, ``num_classes`` of them)
        or a ``datasets.Dataset`` (its own layout and class table).
    """
    dataset = root if isinstance(root, datasets.Dataset) else datasets.open_dataset(config_lib.DataConfig(num_classes=num_classes), root)
    classes = dataset.classes
    num_classes = classes.num_classes
    report = SplitReport(split=split, label_pixels=np.zeros(num_classes, np.int64))
    listing = dataset.list_split(split)
    report.missing_folders = listing.missing
    report.pairs = len(listing.pairs)
    report.images_without_annotation = listing.images_without_annotation
    report.annotations_without_image = listing.annotations_without_image
    report.entries_without_files = listing.entries_without_files
    report.unreadable = listing.unreadable
    report.same_stem = listing.same_stem
    if not listing.pairs:
        return report
    annotations = dict(listing.pairs)
    paths = [os.fsencode(p) for pair in listing.pairs for p in pair]  # bytes: any file name, UTF-8 or not
    dataset = tf.data.Dataset.from_tensor_slices((paths[0::2], paths[1::2]))
    dataset = dataset.interleave(
        lambda image, annotation: decode.read_example_dataset(image, annotation, classes).map(
            lambda example: _summarise(example, num_classes)
        ),
        cycle_length=tf.data.AUTOTUNE,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).prefetch(tf.data.AUTOTUNE)
    bar = tqdm.tqdm(dataset.as_numpy_iterator(), total=report.pairs, desc=f"checking {split}", unit="image", disable=not progress)
    for path, error, counts, ignored in bar:
        if error != decode.ERROR_NONE:
            report.problems.append((decode_path(path), int(error)))
            if error == decode.ERROR_LABEL_OUT_OF_RANGE:
                report.values_outside[decode_path(path)] = _values_outside(annotations[decode_path(path)], classes)
        else:
            report.label_pixels += counts
            report.ignored_pixels += int(ignored)
    return report


def _values_outside(annotation: str, classes) -> list[int]:
    """The values of an annotation PNG that its class table does not know (at most 10)."""
    try:
        values = np.unique(read_label_png(annotation))
    except Exception:  # noqa: BLE001  unreadable: the decoder already named the problem
        return []
    return [int(v) for v in values if classes.value_lookup()[v] < 0][:10]


def check_dataset(root, num_classes: int = ade20k.NUM_CLASSES, progress: bool = True) -> list[SplitReport]:
    """Scans both splits of the dataset at ``root`` (a root folder or a ``datasets.Dataset``)."""
    return [check_split(root, split, num_classes, progress) for split in SPLITS]


def format_class_table(classes, reports: list[SplitReport]) -> str:
    """The class table (annotation value, name, colour) with each class's labelled pixels in each split.

    Args:
      classes: the dataset's ``ClassTable``.
      reports: the splits' reports (``label_pixels`` by train id).
    """
    width = max(len("name"), *(len(name) for name in classes.names))
    splits = [report.split for report in reports]
    header = f"  {'id':>3}  {'name':<{width}}  {'colour':<15}" + "".join(f"  {split:>12}" for split in splits)
    lines = [f"classes: {classes.describe()}; ignored values: {classes.ignored_description()}", header]
    for train_id, (value, name, colour) in enumerate(zip(classes.ids, classes.names, classes.colours)):
        counts = "".join(
            f"  {int(report.label_pixels[train_id]) if report.label_pixels is not None else 0:>12}" for report in reports
        )
        lines.append(f"  {value:>3}  {name:<{width}}  {str(tuple(colour)):<15}{counts}")
    ignored = "".join(f"  {report.ignored_pixels:>12}" for report in reports)
    lines.append(f"  {'-':>3}  {'(ignored)':<{width}}  {'':<15}{ignored}")
    return "\n".join(lines)


def format_report(root: str, reports: list[SplitReport], limit: int = 20, classes=None) -> str:
    """A human-readable report; lists at most ``limit`` files per kind of problem.

    With ``classes`` (the dataset's ``ClassTable``) it opens with the class
    table and each class's pixels per split (``format_class_table``).
    """
    lines = [f"dataset: {os.path.abspath(root)}"]
    if classes is not None:
        lines.append(format_class_table(classes, reports))

    def listing(title, paths):
        if paths:
            lines.append(f"  {title}: {len(paths)}")
            lines.extend(f"    {display_path(p)}" for p in paths[:limit])
            if len(paths) > limit:
                lines.append(f"    ... and {len(paths) - limit} more")

    for report in reports:
        labelled = int(report.label_pixels.sum()) if report.label_pixels is not None else 0
        classes_present = int(np.count_nonzero(report.label_pixels)) if report.label_pixels is not None else 0
        lines.append(
            f"{report.split}: {report.pairs} pairs, {report.pairs - len(report.problems)} usable, "
            f"{classes_present} classes present, {labelled} labelled and {report.ignored_pixels} ignored pixels"
        )
        listing("missing folders", [p for p in report.missing_folders if not os.path.splitext(p)[1]])
        listing("missing split lists", [p for p in report.missing_folders if os.path.splitext(p)[1]])
        if report.no_pairs:
            lines.append("  no image/annotation pairs")
        if report.nothing_labelled:
            lines.append("  no labelled pixel: every pixel of the usable pairs is ignored, nothing to learn from or score")
        listing(
            "files that cannot be opened",
            [f"{display_path(path)}: {reason}" for path, reason in report.unreadable],
        )
        listing(
            "names used by more than one file (keep one: rename or remove the others)",
            [" and ".join(display_path(p) for p in group) for group in report.same_stem],
        )
        listing("split list entries with neither image nor annotation", list(report.entries_without_files))
        listing("images without annotation", list(report.images_without_annotation))
        listing("annotations without image", list(report.annotations_without_image))
        for code, message in decode.ERROR_MESSAGES.items():
            listing(message, [path + (f" (values {report.values_outside[path]})" if report.values_outside.get(path) else "")
                              for path, error in report.problems if error == code])  # fmt: skip
    errors = sum(r.error_count for r in reports)
    lines.append(f"{errors} problem(s) found" if errors else "no problems found")
    return "\n".join(lines)


def run(config, args) -> int:
    """``--mode=check_data``: scans both splits of the dataset; exit status 1 when any file is unusable."""
    dataset = datasets.prepare_dataset(config.data, progress=not args.no_progress, generate_sample=False)
    reports = check_dataset(dataset, progress=not args.no_progress)
    print(format_report(dataset.root, reports, classes=dataset.classes))
    return 1 if any(r.error_count for r in reports) else 0
