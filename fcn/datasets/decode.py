"""Reading one example: decode an image and its annotation, check them, map values to train ids.

``read_example_dataset`` does it inside ``tf.data``, ``load_example``
eagerly, with the same code. A file that cannot be used (corrupt image,
unreadable annotation, an annotation that is an RGB picture or not an 8-bit
PNG, size mismatch, a value that is neither a class nor ignored) never stops
the stream and is never guessed at: its example arrives with ``error`` set and
every label pixel ignored. ``load_example`` raises ``DataError`` naming the
file instead.
"""

import io
import os
import re

import numpy as np
import tensorflow as tf
from PIL import Image

from fcn.datasets import ade20k
from fcn.datasets.classes import IGNORE_LABEL, ClassTable
from fcn.datasets.files import display_path, permission_denied
from fcn.errors import DataError

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


def as_class_table(classes) -> ClassTable:
    """A ClassTable as it is; an int as ADE20K's first ``classes`` classes."""
    if isinstance(classes, ClassTable):
        return classes
    return ade20k.class_table(int(classes))


def path_tensor(paths):
    """Paths as a string tensor of their file-system bytes.

    ``tf.constant`` refuses a str holding the surrogate escapes of a non-UTF-8
    file name; the bytes are the name as the file system has it.
    """
    return tf.constant([os.fsencode(p) for p in paths] if isinstance(paths, (list, tuple)) else os.fsencode(paths))

def decode_image(path):
    """Reads any image file as RGB uint8 (H, W, 3); returns (image, True). Raises on a corrupt file."""
    return decode_image_bytes(tf.io.read_file(path)), tf.constant(True)


def decode_image_bytes(data):
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
        return decode_image_bytes(tf.constant(contents)).numpy()
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
        image_read = decode_image(path_tensor(image_path))
    except tf.errors.OpError:
        image_read = _unreadable_image(image_path)
    try:
        annotation_read = _decode_annotation(path_tensor(annotation_path))
    except (tf.errors.OpError, ValueError):  # eagerly, a palette PNG's reader raises its own ValueError
        annotation_read = _unreadable_annotation(annotation_path)
    example = _checked_example(image_read, annotation_read, path_tensor(image_path), classes)
    error = int(example["error"])
    if error != ERROR_NONE:
        image_name, annotation_name = display_path(image_path), display_path(annotation_path)
        culprit = annotation_name if error in _ANNOTATION_ERRORS else image_name
        if error == ERROR_SIZE_MISMATCH:
            culprit = f"{annotation_name} (image {image_name})"
        raise DataError(f"{culprit}: {ERROR_MESSAGES[error]}")
    return example["image"].numpy(), example["label"].numpy()
