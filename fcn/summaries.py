"""TensorBoard summaries of a run: scalars, coloured images and ``--debug`` histograms.

Train and validation events go to ``logs_dir/train`` and ``logs_dir/validation``
under the same tags, so TensorBoard draws both loss curves in one chart.
With the CRF stage, its parameters are written on every summary step
(``write_crf``).

TensorBoard orders charts by tag group (the part before the first ``/``),
alphabetically, and opens the first groups. The numbered groups put what
users look at first: ``1_metrics`` (loss, pixel accuracy, mean IoU), then
``2_training`` (speed, learning rate), then ``activations``, ``crf``,
``gradients`` and ``variables`` (``--debug`` and the CRF stage).
"""

import os

import numpy as np
import tensorflow as tf

from fcn.datasets import ade20k
from fcn.datasets.classes import ClassTable


def writers(logs_dir: str) -> dict[str, tf.summary.SummaryWriter]:
    """The ``train`` and ``validation`` event writers of a run."""
    return {name: tf.summary.create_file_writer(os.path.join(logs_dir, name)) for name in ("train", "validation")}


def colorize(labels: tf.Tensor, classes: ClassTable | None = None) -> tf.Tensor:
    """Train ids (B, H, W) -> uint8 RGB (B, H, W, 3) in the class table's colours (default ADE20K's); ignored (255) is black."""
    classes = classes or ade20k.class_table()
    lookup = tf.concat([tf.constant(classes.palette()), tf.zeros([256 - classes.num_classes, 3], tf.uint8)], axis=0)
    return tf.gather(lookup, tf.cast(labels, tf.int32))


# The training loop's keys -> TensorBoard tags.
SCALAR_TAGS = {
    "loss": "1_metrics/loss",
    "pixel_accuracy": "1_metrics/pixel_accuracy",
    "mean_iou": "1_metrics/mean_iou",
    "images_per_second": "2_training/images_per_second",
    "learning_rate": "2_training/learning_rate",
}


def scalar_tag(name: str) -> str:
    """The TensorBoard tag of a scalar the training loop names ``name``.

    A name holding a ``/`` is already a tag and is kept.

    Raises:
      KeyError: a bare name without a tag, so that no chart is silently misfiled.
    """
    if name in SCALAR_TAGS:
        return SCALAR_TAGS[name]
    if "/" in name:
        return name
    raise KeyError(f"no TensorBoard tag for the scalar {name!r}; known: {', '.join(SCALAR_TAGS)}")


def write_scalars(writer: tf.summary.SummaryWriter, step: int, values: dict) -> None:
    """Writes scalars under their tags (``SCALAR_TAGS``).

    Args:
      values: name -> number, names being the keys of ``SCALAR_TAGS`` (or tags).
    """
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(scalar_tag(name), value)


def write_images(writer, step: int, images, labels, predictions, max_outputs: int, classes=None) -> None:
    """Input, ground truth and prediction, the last two in the colours of the run's class table.

    Args:
      images: (B, H, W, 3) uint8 RGB.
      labels: (B, H, W) train ids, 255 ignored.
      predictions: (B, H, W) train ids.
      classes: the run's ``ClassTable`` (default ADE20K's).
    """
    with writer.as_default(step=step):
        tf.summary.image("input", images, max_outputs=max_outputs)
        tf.summary.image("ground_truth", colorize(labels, classes), max_outputs=max_outputs)
        tf.summary.image("prediction", colorize(predictions, classes), max_outputs=max_outputs)


HISTOGRAM_BUCKETS = 30


def histogram(tag: str, values, buckets: int = HISTOGRAM_BUCKETS) -> int:
    """Writes a TensorBoard histogram in memory linear in the number of values.

    ``tf.summary.histogram`` builds a (values x buckets) float64 table: 25 GB
    for fc6's kernel alone. Counting with ``tf.histogram_fixed_width`` needs
    one index per value. The written tensor has TensorBoard's histogram format:
    (buckets, 3) rows of [left edge, right edge, count].

    A histogram has no bucket for NaN or infinity: when there are such values
    their count is written as the scalar ``TAG/non_finite_values`` (which
    appears exactly when it matters) and the histogram shows the rest.

    Returns:
      The number of NaN and infinite values.
    """
    table, non_finite, finite = _histogram_table(tf.convert_to_tensor(values), buckets)
    non_finite = int(non_finite)
    if non_finite:
        tf.summary.scalar(f"{tag}/non_finite_values", non_finite)
    if int(finite):
        tf.summary.write(tag, table, metadata=_histogram_metadata())
    return non_finite


@tf.function(reduce_retracing=True)
def _histogram_table(values, buckets: int):
    """(buckets, 3) float64 [left, right, count] of the finite values, their count and the others'.

    One compiled call per tensor: an eager version (a masked copy of the
    finite values, then min, max and the counts, op by op) made a summary
    step of the full model several plain steps long. The usual case, every
    value finite, is told by one sum (any NaN or infinity makes ``sum(0 x
    values)`` NaN) and then needs no mask at all.
    """
    values = tf.reshape(tf.cast(values, tf.float32), [-1])
    size = tf.size(values, out_type=tf.int64)

    def masked_range():
        is_finite = tf.math.is_finite(values)
        low = tf.reduce_min(tf.where(is_finite, values, np.inf))
        high = tf.reduce_max(tf.where(is_finite, values, -np.inf))
        return low, high, tf.reduce_sum(tf.cast(is_finite, tf.int64))

    all_finite = tf.math.is_finite(tf.reduce_sum(values * 0.0))
    low, high, finite = tf.cond(all_finite, lambda: (tf.reduce_min(values), tf.reduce_max(values), size), masked_range)
    non_finite = size - finite
    low = tf.where(finite > 0, low, 0.0)  # nothing finite: any valid range, the table is not written
    high = tf.where(high > low, high, low + 1.0)  # a constant tensor still gets one visible bucket
    # Non-finite values are counted into the first bucket as `low`, then taken out of it again.
    counted = tf.cond(all_finite, lambda: values, lambda: tf.where(tf.math.is_finite(values), values, low))
    counts = _bucket_counts(counted, low, high, buckets)
    counts -= tf.cast(non_finite, counts.dtype) * tf.one_hot(0, buckets, dtype=counts.dtype)
    edges = tf.cast(tf.linspace(low, high, buckets + 1), tf.float64)
    return tf.stack([edges[:-1], edges[1:], tf.cast(counts, tf.float64)], axis=1), non_finite, finite


def _bucket_counts(values, low, high, buckets: int):
    """``tf.histogram_fixed_width`` of 1-D ``values`` over [low, high], by halves.

    The op counts on one thread; the two halves of a tensor are independent
    ops, which the graph runs at once on two.
    """
    half = tf.size(values) // 2
    parts = tf.split(values, tf.stack([half, tf.size(values) - half]))
    return tf.add_n([tf.histogram_fixed_width(part, tf.stack([low, high]), nbins=buckets) for part in parts])


def _histogram_metadata():
    from tensorboard.plugins.histogram import metadata  # TensorBoard's own plugin format

    return metadata.create_summary_metadata(display_name=None, description=None)


def write_debug(writer, step: int, activations: dict, gradients: list, variables: list) -> None:
    """Histograms and zero fractions of ReLU activations, gradients and variables.

    Each group also gets ``GROUP/non_finite_values``, the number of NaN and
    infinite values over its tensors (0 while training is healthy); a tensor
    holding any has its own ``TAG/non_finite_values``.

    Args:
      activations: layer name -> its ReLU output.
      gradients: one gradient per variable, in the order of ``variables``.
      variables: the trainable variables.
    """
    with writer.as_default(step=step):
        non_finite = sum(histogram(f"activations/{name}", activation) for name, activation in activations.items())
        tf.summary.scalar("activations/non_finite_values", non_finite)
        for name, activation in activations.items():
            tf.summary.scalar(f"activations/{name}/zero_fraction", tf.math.zero_fraction(activation))
        non_finite = sum(histogram(f"gradients/{v.path}", g) for v, g in zip(variables, gradients))
        tf.summary.scalar("gradients/non_finite_values", non_finite)
        tf.summary.scalar("gradients/global_norm", tf.linalg.global_norm(gradients))
        non_finite = sum(histogram(f"variables/{variable.path}", variable) for variable in variables)
        tf.summary.scalar("variables/non_finite_values", non_finite)


def crf_parameter_summary(spatial_kernel_weights, bilateral_kernel_weights, compatibility) -> dict:
    """Scalar digests of the CRF stage's three C x C matrices (numpy arrays).

    Keys: the mean diagonal of each kernel weight matrix (the weight of a label's
    own filtered probability, 3 and 5 at initialisation), the mean absolute
    off-diagonal kernel weight (0 at initialisation), and the mean diagonal and
    off-diagonal of the compatibility (0 and 1 for the initial Potts model).
    """
    out = {}
    for name, matrix in (("spatial_kernel_weights", spatial_kernel_weights), ("bilateral_kernel_weights", bilateral_kernel_weights)):
        matrix = np.asarray(matrix, np.float64)
        off_diagonal = ~np.eye(matrix.shape[0], dtype=bool)
        out[f"crf/{name}/diagonal_mean"] = float(np.diagonal(matrix).mean())
        out[f"crf/{name}/off_diagonal_abs_mean"] = float(np.abs(matrix[off_diagonal]).mean()) if off_diagonal.any() else 0.0
    compatibility = np.asarray(compatibility, np.float64)
    off_diagonal = ~np.eye(compatibility.shape[0], dtype=bool)
    out["crf/compatibility/diagonal_mean"] = float(np.diagonal(compatibility).mean())
    out["crf/compatibility/off_diagonal_mean"] = float(compatibility[off_diagonal].mean()) if off_diagonal.any() else 0.0
    return out


def _matrix_image(matrix) -> np.ndarray:
    """(C, C) -> uint8 (1, C, C, 3): blue negative, white 0, red positive, scaled by the largest magnitude."""
    matrix = np.asarray(matrix, np.float64)
    scaled = matrix / max(np.abs(matrix).max(), 1e-12)  # -1..1
    red = np.where(scaled < 0, 1.0 + scaled, 1.0)
    blue = np.where(scaled > 0, 1.0 - scaled, 1.0)
    green = 1.0 - np.abs(scaled)
    return np.round(255 * np.stack([red, green, blue], axis=-1))[None].astype(np.uint8)


def write_crf(writer, step: int, layer) -> None:
    """The CRF stage's parameters: scalar digests, histograms and a picture of each C x C matrix.

    Args:
      layer: the model's ``crf.CrfRnn`` layer.
    """
    matrices = {
        "spatial_kernel_weights": layer.spatial_kernel_weights.numpy(),
        "bilateral_kernel_weights": layer.bilateral_kernel_weights.numpy(),
        "compatibility": layer.compatibility.numpy(),
    }
    with writer.as_default(step=step):
        for name, value in crf_parameter_summary(**matrices).items():
            tf.summary.scalar(name, value)
        for name, matrix in matrices.items():
            histogram(f"crf/{name}", matrix)
            tf.summary.image(f"crf/{name}", _matrix_image(matrix))
