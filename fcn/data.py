"""The input pipeline: streaming, augmenting and batching the examples of a dataset.

Finding the files of a dataset, reading one example and the class table belong
to ``fcn/datasets/``. ``root`` arguments take a ``datasets.Dataset`` or a
dataset root folder (its layout detected).

Every element of the datasets made here is a dict:

    image  uint8  (B, H, W, 3)  RGB 0..255
    label  uint8  (B, H, W)     train ids 0..num_classes-1, 255 = ignored
    path   string (B,)          the image file
    error  int32  (B,)          0, or one of the ``ERROR_*`` codes of fcn/datasets/decode.py

A file that cannot be used (corrupt image, unreadable annotation or one that
is not an 8-bit greyscale or palette PNG, size mismatch, a value outside the
class table) never stops the stream and is never guessed at: its example
arrives with ``error`` set, every label pixel ignored, and its path, so that
the consumer counts and reports it (see ``SkipReport``).

Randomness is stateless: the file order of epoch ``e`` and the augmentation of
the ``k``-th example drawn are pure functions of (seed, e) and (seed, k). A run
resumed at example ``k`` therefore sees exactly the stream it would have seen,
without saving any iterator state.
"""

import collections

import numpy as np
import tensorflow as tf

from fcn.config import DataConfig
from fcn.datasets import as_dataset
from fcn.datasets.classes import IGNORE_LABEL
from fcn.datasets.decode import ERROR_MESSAGES, path_tensor, read_example_dataset
from fcn.datasets.files import decode_path, display_path

# ImageNet mean in RGB: padding with it is neutral once the model subtracts the mean.
PAD_COLOUR = (123.68, 116.779, 103.939)
_INT64_MAX = np.iinfo(np.int64).max


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
    dataset = as_dataset(root, config)
    pairs = dataset.usable_pairs(split)
    count = len(pairs)
    image_paths = path_tensor([p[0] for p in pairs])
    annotation_paths = path_tensor([p[1] for p in pairs])

    def epoch_examples(epoch):
        order = _epoch_permutation(count, seed, epoch)
        counters = tf.data.Dataset.range(epoch * count, (epoch + 1) * count)
        return tf.data.Dataset.zip(counters, tf.data.Dataset.from_tensor_slices(order))

    def read_and_augment(counter, index):
        example_seed = tf.stack([tf.constant(seed, tf.int64), counter])
        return read_example_dataset(
            tf.gather(image_paths, index), tf.gather(annotation_paths, index), dataset.classes
        ).map(lambda example: augment(example, config, example_seed))

    stream = tf.data.Dataset.range(start_example // count, _INT64_MAX).flat_map(epoch_examples)
    stream = stream.skip(start_example % count)
    if num_pipelines > 1:  # keep this pipeline's slice of each global batch, before any decoding
        start, stop = pipeline_index * share, (pipeline_index + 1) * share
        stream = stream.batch(batch_size, drop_remainder=True).map(lambda c, i: (c[start:stop], i[start:stop])).unbatch()
    stream = stream.interleave(
        read_and_augment, cycle_length=tf.data.AUTOTUNE, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return stream.batch(output_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


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
    dataset = as_dataset(root, config)
    classes, pairs = dataset.classes, dataset.usable_pairs(split)
    if num_images:
        pairs = pairs[:num_images]
    dataset = tf.data.Dataset.from_tensor_slices((path_tensor([p[0] for p in pairs]), path_tensor([p[1] for p in pairs])))
    dataset = dataset.interleave(
        lambda image_path, annotation_path: read_example_dataset(image_path, annotation_path, classes).map(
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
