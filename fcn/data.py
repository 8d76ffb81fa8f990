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

Randomness is stateless: the file order of epoch ``e`` and the augmentation of
the ``k``-th example drawn are pure functions of (seed, e) and (seed, k). A run
resumed at example ``k`` therefore sees exactly the stream it would have seen,
without saving any iterator state.
"""

import collections
import dataclasses
import os

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


def prepare_dataset(config: DataConfig, progress: bool = True) -> str:
    """Finds the dataset, generating or downloading it when the config says so.

    Args:
      config: the data section of the run's config.
      progress: show progress bars.

    Returns:
      The dataset root (the folder with ``images/`` and ``annotations/``).

    Raises:
      DatasetNotFoundError: no dataset and neither ``synthetic`` nor
        ``download`` set; the message says where it looked and both ways out.
    """
    if config.synthetic:
        from fcn import sample_data  # only runs that use the sample data need it

        root = os.path.join(config.data_dir, "ADEChallengeData2016")
        if find_dataset_root(config.data_dir) in (None, root):
            return sample_data.generate_sample_dataset(root, progress=progress)
    root = find_dataset_root(config.data_dir)
    if root is not None:
        return root
    if config.download:
        from fcn import download

        return download.download_ade20k(config.data_dir, config.download_url, config.download_sha1, progress=progress)
    looked = [os.path.abspath(config.data_dir), os.path.abspath(os.path.join(config.data_dir, "ADEChallengeData2016"))]
    raise DatasetNotFoundError(
        "no ADE20K dataset found: looked for images/ and annotations/ in\n"
        + "".join(f"  {path}\n" for path in looked)
        + "Ways out:\n"
        "  --download                      fetch ADEChallengeData2016.zip (~923 MB) into --data_dir and extract it\n"
        "  --data_dir DIR                  point at an existing ADEChallengeData2016 folder\n"
        "  --config configs/sample.yaml    train on the small synthetic sample data instead"
    )


@dataclasses.dataclass(frozen=True)
class SplitListing:
    """The files of one split.

    Attributes:
      pairs: (image path, annotation path) of every image with an annotation,
        sorted by file name.
      images_without_annotation: image paths with no annotation PNG.
      annotations_without_image: annotation paths with no image.
    """

    pairs: tuple[tuple[str, str], ...]
    images_without_annotation: tuple[str, ...]
    annotations_without_image: tuple[str, ...]


def _files_by_stem(folder: str, extensions: tuple[str, ...]) -> dict[str, str]:
    if not os.path.isdir(folder):
        return {}
    files = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, extension = os.path.splitext(entry.name)
            if extension.lower() in extensions and entry.is_file():
                files[stem] = entry.path
    return files


def list_split(root: str, split: str) -> SplitListing:
    """Pairs the images and annotations of ``split`` by file stem."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images = _files_by_stem(os.path.join(root, "images", split), IMAGE_EXTENSIONS)
    annotations = _files_by_stem(os.path.join(root, "annotations", split), (".png",))
    return SplitListing(
        pairs=tuple((images[s], annotations[s]) for s in sorted(images.keys() & annotations.keys())),
        images_without_annotation=tuple(images[s] for s in sorted(images.keys() - annotations.keys())),
        annotations_without_image=tuple(annotations[s] for s in sorted(annotations.keys() - images.keys())),
    )


def usable_pairs(root: str, split: str) -> tuple[tuple[str, str], ...]:
    """The (image, annotation) pairs of a split; DataError naming the folders if there are none."""
    pairs = list_split(root, split).pairs
    if not pairs:
        raise DataError(
            f"{os.path.join(root, 'images', split)}: no image with a matching annotation in "
            f"{os.path.join(root, 'annotations', split)}; run --mode=check_data --data_dir {root}"
        )
    return pairs


# ---------------------------------------------------------------------------
# Reading one example.


def decode_image(path):
    """Reads any image file as RGB uint8 (H, W, 3); returns (image, True). Raises on a corrupt file."""
    data = tf.io.read_file(path)
    # The accurate integer IDCT decodes JPEGs as PIL and OpenCV do; TensorFlow's
    # default fast IDCT is off by a grey level or two on many pixels.
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )  # (H, W, 3)
    return image, tf.constant(True)


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
        image_read = decode_image(tf.constant(image_path))
    except tf.errors.OpError:
        image_read = _unreadable_image(image_path)
    try:
        annotation_read = _decode_annotation(tf.constant(annotation_path))
    except tf.errors.OpError:
        annotation_read = _unreadable_annotation(annotation_path)
    example = _checked_example(image_read, annotation_read, image_path, num_classes)
    error = int(example["error"])
    if error != ERROR_NONE:
        culprit = annotation_path if error in (ERROR_UNREADABLE_ANNOTATION, ERROR_ANNOTATION_FORMAT, ERROR_LABEL_OUT_OF_RANGE) else image_path
        if error == ERROR_SIZE_MISMATCH:
            culprit = f"{annotation_path} (image {image_path})"
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
    image_paths = tf.constant([p[0] for p in pairs])
    annotation_paths = tf.constant([p[1] for p in pairs])

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
    dataset = tf.data.Dataset.from_tensor_slices(([p[0] for p in pairs], [p[1] for p in pairs]))
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
    """Counts the examples a pipeline skipped, with their files and reasons.

    Feed it every batch (``record``); ``summary`` gives a report for the user.
    """

    def __init__(self):
        self.skipped: dict[str, int] = collections.OrderedDict()
        self.examples = 0

    def record(self, batch) -> int:
        """Notes the skipped examples of a batch; returns how many it had."""
        errors = np.asarray(batch["error"])
        paths = np.asarray(batch["path"])
        self.examples += errors.size
        bad = np.flatnonzero(errors)
        for i in bad:
            self.skipped[paths[i].decode()] = int(errors[i])
        return len(bad)

    def __len__(self):
        return len(self.skipped)

    def summary(self) -> str:
        """One line per skipped file, or an empty string."""
        if not self.skipped:
            return ""
        lines = [f"skipped {len(self.skipped)} unusable file(s) (their pixels were ignored):"]
        lines += [f"  {path}: {ERROR_MESSAGES[error]}" for path, error in self.skipped.items()]
        return "\n".join(lines)
