"""The ADE20K input pipeline: finding the data, reading it, augmenting it, batching it.

Layout read (the official ADEChallengeData2016 zip)::

    ROOT/images/{training,validation}/ADE_*.jpg
    ROOT/annotations/{training,validation}/ADE_*.png   uint8, 0 = other, 1..150 = classes

Every element of the datasets made here is a dict:

    image  uint8  (B, H, W, 3)  RGB 0..255
    label  uint8  (B, H, W)     train ids 0..num_classes-1, 255 = ignored
    path   string (B,)          the image file
    error  int32  (B,)          0, or one of the ``ERROR_*`` codes below

A file that cannot be used (corrupt image, unreadable or non-greyscale
annotation, size mismatch, label above ``num_classes``) never stops the stream
and is never guessed at: its example arrives with ``error`` set, every label
pixel ignored, and its path, so that the consumer counts and reports it (see
``SkipReport``). ``load_example`` raises ``DataError`` naming the file instead.

A folder entry that cannot be paired without guessing (a stem present as both
``.jpg`` and ``.png``, a symbolic link that loops or points nowhere) is a
listing problem: ``list_split`` reports it, ``usable_pairs`` refuses the split
with a message naming it. File names need not be UTF-8: paths enter tensors as
their file-system bytes (``decode_path`` turns them back, ``display_path``
prints them).

Randomness is stateless: the file order of epoch ``e`` and the augmentation of
the ``k``-th example drawn are pure functions of (seed, e) and (seed, k). A run
resumed at example ``k`` therefore sees exactly the stream it would have seen,
without saving any iterator state.
"""

import collections
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from fcn import ade20k
from fcn.config import DataConfig

SPLITS = ("training", "validation")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IGNORE_LABEL = ade20k.IGNORE_LABEL
# ImageNet mean in RGB: padding with it is neutral once the model subtracts the mean.
PAD_COLOUR = (123.68, 116.779, 103.939)

ERROR_NONE = 0
ERROR_UNREADABLE_IMAGE = 1
ERROR_UNREADABLE_ANNOTATION = 2
ERROR_ANNOTATION_FORMAT = 3
ERROR_SIZE_MISMATCH = 4
ERROR_LABEL_OUT_OF_RANGE = 5
ERROR_MESSAGES = {
    ERROR_UNREADABLE_IMAGE: "image cannot be decoded (corrupt or truncated file)",
    ERROR_UNREADABLE_ANNOTATION: "annotation cannot be decoded (corrupt or truncated PNG)",
    ERROR_ANNOTATION_FORMAT: "annotation is not an 8-bit single-channel (greyscale) PNG",
    ERROR_SIZE_MISMATCH: "annotation size differs from the image size",
    ERROR_LABEL_OUT_OF_RANGE: "annotation has label values above the number of classes",
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_INT64_MAX = np.iinfo(np.int64).max


class DataError(ValueError):
    """A dataset or file that cannot be used; the message names it and the fix."""


class DatasetNotFoundError(DataError):
    """No ADEChallengeData2016 layout where the config points."""


# ---------------------------------------------------------------------------
# Finding the data.


def find_dataset_root(data_dir: str) -> str | None:
    """Returns the folder holding ``images/`` and ``annotations/``, or None.

    ``data_dir`` may be that folder or a folder containing ``ADEChallengeData2016``.
    """
    for candidate in (data_dir, os.path.join(data_dir, "ADEChallengeData2016")):
        if os.path.isdir(os.path.join(candidate, "images")) and os.path.isdir(os.path.join(candidate, "annotations")):
            return candidate
    return None


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
      The dataset root (the folder with ``images/`` and ``annotations/``).

    Raises:
      DatasetNotFoundError: no dataset and neither ``synthetic`` nor
        ``download`` set; the message says where it looked and both ways out.
      DataError: ``data_dir/ADEChallengeData2016`` holds something that is
        neither a dataset nor the sample data (it is left untouched).
    """
    root = find_dataset_root(config.data_dir)
    if root is not None:
        return root
    if config.synthetic and generate_sample:
        from fcn import sample_data  # only runs that use the sample data need it

        target = os.path.join(config.data_dir, "ADEChallengeData2016")
        try:
            return sample_data.generate_sample_dataset(target, progress=progress)
        except sample_data.FolderInUseError as error:
            raise DataError(f"{error}. Point --data_dir at another folder for the sample data.") from None
    if config.download:
        from fcn import download

        return download.download_ade20k(config.data_dir, config.download_url, config.download_sha1, progress=progress)
    looked = [os.path.abspath(config.data_dir), os.path.abspath(os.path.join(config.data_dir, "ADEChallengeData2016"))]
    note = ""
    if config.synthetic:
        note = "--mode=check_data only checks: it does not generate the sample data (--mode=train does)\n"
    raise DatasetNotFoundError(
        "no ADE20K dataset found: looked for images/ and annotations/ in\n"
        + "".join(f"  {path}\n" for path in looked)
        + note
        + "Ways out:\n"
        "  --download                      fetch ADEChallengeData2016.zip (~923 MB) into --data_dir and extract it\n"
        "  --data_dir DIR                  point at an existing ADEChallengeData2016 folder\n"
        "  --config configs/sample.yaml    train on the small synthetic sample data instead"
    )


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
        cannot be opened: a symbolic link looping or pointing nowhere, or a
        name that is not a file.
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


def _entry_problem(entry: os.DirEntry) -> str:
    """Why a folder entry named like an image cannot be read as a file, or ""."""
    try:
        if entry.is_file():
            return ""
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
    """

    pairs: tuple[tuple[str, str], ...]
    images_without_annotation: tuple[str, ...]
    annotations_without_image: tuple[str, ...]
    unreadable: tuple[tuple[str, str], ...] = ()
    same_stem: tuple[tuple[str, ...], ...] = ()

    def problems(self) -> list[str]:
        """One line per entry that training and evaluation cannot use as it is (not unpaired files)."""
        lines = [f"{display_path(path)}: {reason}" for path, reason in self.unreadable]
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


def list_split(root: str, split: str) -> SplitListing:
    """Pairs the images and annotations of ``split`` by file stem."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, shared_images, bad_images = _files_by_stem(os.path.join(root, "images", split), IMAGE_EXTENSIONS)
    annotations, shared_annotations, bad_annotations = _files_by_stem(os.path.join(root, "annotations", split), (".png",))
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
    )


def usable_pairs(root: str, split: str) -> tuple[tuple[str, str], ...]:
    """The (image, annotation) pairs of a split.

    Raises:
      DataError: there are none, or some files cannot be paired without
        guessing (a stem with two images, an unreadable entry): the message
        lists them and the fix, since leaving them out would go unnoticed.
    """
    listing = list_split(root, split)
    problems = listing.problems()
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise DataError(
            f"{display_path(root)} ({split} split): {len(problems)} file(s) cannot be used as they are:\n  "
            + "\n  ".join(shown)
            + f"\nFix them, then rerun; --mode=check_data --data_dir {display_path(root)} lists every problem."
        )
    if not listing.pairs:
        raise DataError(
            f"{os.path.join(root, 'images', split)}: no image with a matching annotation in "
            f"{os.path.join(root, 'annotations', split)}; run --mode=check_data --data_dir {root}"
        )
    return listing.pairs


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


def _decode_annotation(path):
    data = tf.io.read_file(path)
    # Only an 8-bit greyscale PNG (colour type 0) holds label values as they are; a
    # palette or RGB PNG would be expanded to colours and silently mislabelled.
    header = tf.io.decode_raw(tf.strings.substr(data, 0, 26), tf.uint8)
    is_greyscale_png = tf.logical_and(
        tf.equal(tf.strings.substr(data, 0, 8), _PNG_SIGNATURE),
        tf.logical_and(tf.equal(header[24], 8), tf.equal(header[25], 0)),
    )
    label = tf.io.decode_png(data, channels=0, dtype=tf.uint8)[..., 0]  # (H, W)
    return label, is_greyscale_png, tf.constant(True)


def _unreadable_annotation(path):
    return tf.fill([1, 1], tf.constant(IGNORE_LABEL, tf.uint8)), tf.constant(False), tf.constant(False)


def _with_fallback(decode, fallback, path) -> tf.data.Dataset:
    """One-element dataset: decode(path), or fallback(path) if decoding raised.

    Decoding ops raise on corrupt files and graph code cannot catch; a dataset
    can (``ignore_errors``), which turns the failure into a flag.
    """
    source = tf.data.Dataset.from_tensors(path)
    return source.map(decode).ignore_errors().concatenate(source.map(fallback)).take(1)


def _checked_example(image_read, annotation_read, image_path, num_classes):
    """Validates a decoded pair and maps labels to train ids."""
    image, image_ok = image_read
    raw_label, is_greyscale_png, annotation_ok = annotation_read
    same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(raw_label)))
    in_range = tf.reduce_max(tf.cast(raw_label, tf.int32)) <= num_classes
    error = tf.case(
        [
            (tf.logical_not(image_ok), lambda: ERROR_UNREADABLE_IMAGE),
            (tf.logical_not(annotation_ok), lambda: ERROR_UNREADABLE_ANNOTATION),
            (tf.logical_not(is_greyscale_png), lambda: ERROR_ANNOTATION_FORMAT),
            (tf.logical_not(same_size), lambda: ERROR_SIZE_MISMATCH),
            (tf.logical_not(in_range), lambda: ERROR_LABEL_OUT_OF_RANGE),
        ],
        default=lambda: ERROR_NONE,
    )

    def usable():
        # 0 ("other") is ignored; 1..K become train ids 0..K-1.
        label = tf.where(raw_label == 0, tf.constant(IGNORE_LABEL, tf.uint8), raw_label - 1)
        return image, label

    def unusable():
        return tf.zeros([1, 1, 3], tf.uint8), tf.fill([1, 1], tf.constant(IGNORE_LABEL, tf.uint8))

    image, label = tf.cond(tf.equal(error, ERROR_NONE), usable, unusable)
    return {"image": image, "label": label, "path": image_path, "error": tf.cast(error, tf.int32)}


def read_example_dataset(image_path, annotation_path, num_classes: int) -> tf.data.Dataset:
    """A one-element dataset with the checked example of one file pair (unbatched dict)."""
    return tf.data.Dataset.zip(
        _with_fallback(decode_image, _unreadable_image, image_path),
        _with_fallback(_decode_annotation, _unreadable_annotation, annotation_path),
    ).map(lambda image_read, annotation_read: _checked_example(image_read, annotation_read, image_path, num_classes))


def load_example(image_path: str, annotation_path: str, num_classes: int = ade20k.NUM_CLASSES):
    """Reads one pair eagerly, exactly as the pipeline does.

    Returns:
      (image uint8 (H, W, 3) RGB, label uint8 (H, W) train ids, 255 ignored).

    Raises:
      DataError: naming the file and what is wrong with it.
    """
    # Eagerly, decoding errors can be caught directly (the pipeline needs ignore_errors).
    try:
        image_read = decode_image(_path_tensor(image_path))
    except tf.errors.OpError:
        image_read = _unreadable_image(image_path)
    try:
        annotation_read = _decode_annotation(_path_tensor(annotation_path))
    except tf.errors.OpError:
        annotation_read = _unreadable_annotation(annotation_path)
    example = _checked_example(image_read, annotation_read, _path_tensor(image_path), num_classes)
    error = int(example["error"])
    if error != ERROR_NONE:
        image_name, annotation_name = display_path(image_path), display_path(annotation_path)
        culprit = annotation_name if error in (ERROR_UNREADABLE_ANNOTATION, ERROR_ANNOTATION_FORMAT, ERROR_LABEL_OUT_OF_RANGE) else image_name
        if error == ERROR_SIZE_MISMATCH:
            culprit = f"{annotation_name} (image {image_name})"
        raise DataError(f"{culprit}: {ERROR_MESSAGES[error]}")
    return example["image"].numpy(), example["label"].numpy()


# ---------------------------------------------------------------------------
# Augmentation.


def _uniform(seed, low=0.0, high=1.0):
    return tf.random.stateless_uniform([], seed=seed, minval=low, maxval=high)


def _resize_pair(image, label, size):
    """Bilinear for the image, nearest for the label, so labels stay class ids."""
    image = tf.image.resize(image, size, method="bilinear")  # (h, w, 3) float32
    label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]  # (h, w) uint8
    return image, label


def random_rescale(image, label, base_size, ratio_range, seed):
    """Fits the pair into ``base_size`` x a random ratio, keeping the aspect ratio.

    Args:
      image: (H, W, 3) float32.
      label: (H, W) uint8.
      base_size: (long edge, short edge) at ratio 1.
      ratio_range: (low, high) of the uniform ratio.
      seed: stateless seed, shape (2,).
    """
    ratio = _uniform(seed, ratio_range[0], ratio_range[1])
    shape = tf.cast(tf.shape(label), tf.float32)
    long_edge, short_edge = tf.reduce_max(shape), tf.reduce_min(shape)
    scale = tf.minimum(base_size[0] * ratio / long_edge, base_size[1] * ratio / short_edge)
    size = tf.maximum(tf.cast(tf.floor(shape * scale + 0.5), tf.int32), 1)
    return _resize_pair(image, label, size)


def random_crop(image, label, crop_size, cat_max_ratio, seed):
    """Crops at most ``crop_size``, re-drawing crops dominated by one class.

    A crop is re-drawn up to 10 times while one class covers more than
    ``cat_max_ratio`` of its labelled pixels (the common ADE20K recipe).
    """
    crop_h = tf.minimum(crop_size[0], tf.shape(label)[0])
    crop_w = tf.minimum(crop_size[1], tf.shape(label)[1])
    max_y = tf.shape(label)[0] - crop_h
    max_x = tf.shape(label)[1] - crop_w

    def offsets(attempt):
        attempt_seed = tf.random.experimental.stateless_fold_in(seed, attempt)
        yx = tf.random.stateless_uniform([2], seed=attempt_seed, maxval=1.0)
        return (
            tf.cast(yx[0] * tf.cast(max_y + 1, tf.float32), tf.int32),
            tf.cast(yx[1] * tf.cast(max_x + 1, tf.float32), tf.int32),
        )

    def acceptable(y, x):
        crop = tf.cast(label[y : y + crop_h, x : x + crop_w], tf.int32)
        counts = tf.math.bincount(tf.reshape(crop, [-1]), minlength=256, maxlength=256)[:IGNORE_LABEL]
        present = tf.math.count_nonzero(counts)
        largest = tf.cast(tf.reduce_max(counts), tf.float32)
        labelled = tf.cast(tf.maximum(tf.reduce_sum(counts), 1), tf.float32)
        return tf.logical_and(present > 1, largest / labelled < cat_max_ratio)

    y, x = offsets(0)
    if cat_max_ratio < 1.0:
        attempt = tf.constant(0)
        attempt, y, x = tf.while_loop(
            lambda a, y, x: tf.logical_and(a < 10, tf.logical_not(acceptable(y, x))),
            lambda a, y, x: (a + 1, *offsets(a + 1)),
            (attempt, y, x),
        )
    return image[y : y + crop_h, x : x + crop_w], label[y : y + crop_h, x : x + crop_w]


def random_flip(image, label, probability, seed):
    """Horizontal flip of both, with the given probability."""
    flip = _uniform(seed) < probability
    return tf.cond(
        flip,
        lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])),
        lambda: (image, label),
    )


def photometric_distortion(image, seed):
    """Random brightness, contrast, saturation and hue, each with probability 1/2.

    Ranges of the common ADE20K recipe: brightness +-32, contrast x0.5..1.5,
    saturation x0.5..1.5, hue +-18 degrees on OpenCV's 0..180 scale (+-0.1 turn).

    Args:
      image: (H, W, 3) float32 RGB in 0..255.
      seed: stateless seed, shape (2,).

    Returns:
      (H, W, 3) float32 in 0..255.
    """
    seeds = tf.random.experimental.stateless_split(seed, 10)

    def maybe(index, transform, image):
        return tf.cond(_uniform(seeds[index]) < 0.5, lambda: transform(image), lambda: image)

    def brightness(image):
        return tf.clip_by_value(image + _uniform(seeds[1], -32.0, 32.0), 0.0, 255.0)

    def contrast(image):
        return tf.clip_by_value(image * _uniform(seeds[3], 0.5, 1.5), 0.0, 255.0)

    def saturation(image):
        return tf.image.adjust_saturation(image / 255.0, _uniform(seeds[5], 0.5, 1.5)) * 255.0

    def hue(image):
        return tf.image.adjust_hue(image / 255.0, _uniform(seeds[7], -0.1, 0.1)) * 255.0

    contrast_first = _uniform(seeds[8]) < 0.5
    image = maybe(0, brightness, image)
    image = tf.cond(contrast_first, lambda: maybe(2, contrast, image), lambda: image)
    image = maybe(4, saturation, image)
    image = maybe(6, hue, image)
    image = tf.cond(contrast_first, lambda: image, lambda: maybe(9, contrast, image))
    return tf.clip_by_value(image, 0.0, 255.0)


def pad_to(image, label, size):
    """Pads bottom and right up to ``size``: image with the mean colour, label with 255."""
    pad_h = tf.maximum(size[0] - tf.shape(label)[0], 0)
    pad_w = tf.maximum(size[1] - tf.shape(label)[1], 0)
    channels = [
        tf.pad(image[..., c], [[0, pad_h], [0, pad_w]], constant_values=PAD_COLOUR[c]) for c in range(3)
    ]
    image = tf.stack(channels, axis=-1)
    label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=IGNORE_LABEL)
    return tf.ensure_shape(image, [size[0], size[1], 3]), tf.ensure_shape(label, [size[0], size[1]])


def augment(example, config: DataConfig, seed):
    """The training transform: rescale, crop, flip, photometric distortion, pad.

    Args:
      example: dict with ``image`` (H, W, 3) uint8 and ``label`` (H, W) uint8.
      config: the data config.
      seed: stateless seed, shape (2,); the same seed gives the same result.

    Returns:
      The example with ``image`` (crop_h, crop_w, 3) uint8 and ``label``
      (crop_h, crop_w) uint8, pixel-aligned.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = tf.cast(example["image"], tf.float32)
    label = example["label"]
    image, label = random_rescale(image, label, config.base_size, config.ratio_range, seeds[0])
    image, label = random_crop(image, label, config.crop_size, config.cat_max_ratio, seeds[1])
    image, label = random_flip(image, label, config.flip_prob, seeds[2])
    if config.photometric:
        image = photometric_distortion(image, seeds[3])
    image, label = pad_to(image, label, config.crop_size)
    image = tf.cast(tf.round(image), tf.uint8)
    return dict(example, image=image, label=label)


def fit_and_pad(example, size):
    """The validation transform: fit inside ``size`` keeping the aspect ratio, then pad."""
    image = tf.cast(example["image"], tf.float32)
    label = example["label"]
    shape = tf.cast(tf.shape(label), tf.float32)
    scale = tf.reduce_min(tf.constant(size, tf.float32) / shape)
    new_size = tf.clip_by_value(tf.cast(tf.floor(shape * scale + 0.5), tf.int32), 1, tf.constant(size))
    image, label = _resize_pair(image, label, new_size)
    image, label = pad_to(image, label, size)
    return dict(example, image=tf.cast(tf.round(image), tf.uint8), label=label)


# ---------------------------------------------------------------------------
# Datasets.


def _epoch_permutation(num_examples: int, seed: int, epoch):
    return tf.argsort(tf.random.stateless_uniform([num_examples], seed=tf.stack([tf.cast(seed, tf.int64), epoch])))


def training_dataset(
    config: DataConfig,
    root: str,
    batch_size: int,
    seed: int = 0,
    start_example: int = 0,
    split: str = "training",
    num_pipelines: int = 1,
    pipeline_index: int = 0,
    output_batch_size: int | None = None,
) -> tf.data.Dataset:
    """The endless, shuffled, augmented training stream.

    File names are permuted per epoch; only the images in flight are decoded,
    in parallel, and batches are prefetched.

    Under a distribution strategy each input pipeline (one per worker) reads
    its own slice of every global batch, so the examples of a global step are
    the same whatever the number of workers and devices.

    Args:
      config: the data config.
      root: the dataset root (see ``prepare_dataset``).
      batch_size: examples per global batch (all of the same crop size).
      seed: seeds the file order and the augmentation.
      start_example: the number of examples already consumed (``step x
        batch_size`` when resuming); the stream continues exactly there.
      split: the split to stream.
      num_pipelines: input pipelines sharing each global batch.
      pipeline_index: which of them this one is (0-based).
      output_batch_size: size of the batches produced (default: this
        pipeline's share, ``batch_size // num_pipelines``); a per-replica
        batch size splits the share into consecutive replica batches.

    Returns:
      A dataset of batched dicts (see the module docstring).
    """
    if batch_size % num_pipelines:
        raise ValueError(f"batch size {batch_size} is not divisible by the {num_pipelines} input pipelines")
    share = batch_size // num_pipelines
    output_batch_size = output_batch_size or share
    if share % output_batch_size:
        raise ValueError(f"a pipeline's {share} examples per step do not split into batches of {output_batch_size}")
    pairs = usable_pairs(root, split)
    count = len(pairs)
    image_paths = _path_tensor([p[0] for p in pairs])
    annotation_paths = _path_tensor([p[1] for p in pairs])

    def epoch_examples(epoch):
        order = _epoch_permutation(count, seed, epoch)
        counters = tf.data.Dataset.range(epoch * count, (epoch + 1) * count)
        return tf.data.Dataset.zip(counters, tf.data.Dataset.from_tensor_slices(order))

    def read_and_augment(counter, index):
        example_seed = tf.stack([tf.constant(seed, tf.int64), counter])
        return read_example_dataset(
            tf.gather(image_paths, index), tf.gather(annotation_paths, index), config.num_classes
        ).map(lambda example: augment(example, config, example_seed))

    dataset = tf.data.Dataset.range(start_example // count, _INT64_MAX).flat_map(epoch_examples)
    dataset = dataset.skip(start_example % count)
    if num_pipelines > 1:  # keep this pipeline's slice of each global batch, before any decoding
        start, stop = pipeline_index * share, (pipeline_index + 1) * share
        dataset = dataset.batch(batch_size, drop_remainder=True).map(lambda c, i: (c[start:stop], i[start:stop])).unbatch()
    dataset = dataset.interleave(
        read_and_augment, cycle_length=tf.data.AUTOTUNE, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return dataset.batch(output_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def validation_dataset(
    config: DataConfig, root: str, batch_size: int, num_images: int = 0, split: str = "validation"
) -> tf.data.Dataset:
    """A fixed validation subset at ``config.val_size``, for monitoring training.

    Args:
      config: the data config.
      root: the dataset root.
      batch_size: examples per batch (the last batch may be smaller).
      num_images: the first ``num_images`` pairs by file name; 0 = all.
      split: the split to read.

    Returns:
      A finite dataset of batched dicts, the same every time it is iterated.
    """
    pairs = usable_pairs(root, split)
    if num_images:
        pairs = pairs[:num_images]
    dataset = tf.data.Dataset.from_tensor_slices((_path_tensor([p[0] for p in pairs]), _path_tensor([p[1] for p in pairs])))
    dataset = dataset.interleave(
        lambda image_path, annotation_path: read_example_dataset(image_path, annotation_path, config.num_classes).map(
            lambda example: fit_and_pad(example, config.val_size)
        ),
        cycle_length=tf.data.AUTOTUNE,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class SkipReport:
    """The unusable examples a consumer met, with their files and reasons, each file reported once.

    Feed it every batch of every split (``record``); ``new_messages`` gives the
    lines of files not reported yet, ``summary`` the whole list.
    """

    def __init__(self):
        self.skipped: dict[str, int] = collections.OrderedDict()
        self.examples = 0
        self._reported = 0

    def record(self, batch) -> int:
        """Notes the skipped examples of a batch (training or validation); returns how many it had.

        Args:
          batch: a dict with ``error`` (B,) and ``path`` (B,) as the datasets
            of this module make them (numpy or tensors).
        """
        errors = np.asarray(batch["error"]).reshape(-1)
        paths = np.asarray(batch["path"]).reshape(-1)
        self.examples += errors.size
        bad = np.flatnonzero(errors)
        for i in bad:
            self.skipped.setdefault(decode_path(paths[i]), int(errors[i]))
        return len(bad)

    def new_messages(self) -> list[str]:
        """One line per file first met since the last call (files already reported are left out)."""
        fresh = list(self.skipped.items())[self._reported :]
        self._reported = len(self.skipped)
        return [_skip_line(path, error) for path, error in fresh]

    def __len__(self):
        return len(self.skipped)

    def summary(self) -> str:
        """One line per skipped file, or an empty string."""
        if not self.skipped:
            return ""
        lines = [f"skipped {len(self.skipped)} unusable file(s) (their pixels were ignored):"]
        lines += [f"  {display_path(path)}: {ERROR_MESSAGES[error]}" for path, error in self.skipped.items()]
        return "\n".join(lines)


def _skip_line(path: str, error: int) -> str:
    return f"skipped {display_path(path)}: {ERROR_MESSAGES[error]} (its pixels are ignored)"
