"""Scene-parsing metrics: one confusion matrix over a whole split, and the scores read from it.

The ADE20K (SceneParsing) benchmark totals intersections and unions over the
whole split before dividing; it does not average per-image scores. Everything
here therefore goes through a single (C, C) confusion matrix, rows = ground
truth, columns = prediction, summed over all images:

    pixel accuracy = sum(diag) / sum(all)                     (labelled pixels only)
    IoU[c]         = M[c, c] / (row[c] + column[c] - M[c, c])
    mean IoU       = mean of IoU[c] over classes (see "absent classes")
    score          = (pixel accuracy + mean IoU) / 2          (the challenge's final score)

Pixels whose label is the ignore label (255; ADE20K label 0 "other") are left
out entirely, whatever was predicted there.

Absent classes. A class that occurs neither in the ground truth nor in the
predictions has IoU 0 / 0. The two reference implementations differ:

- The official code counts it as 0. CSAILVision/sceneparsing
  ``evaluationCode/utils_eval.py`` (and ``intersectionAndUnion.m``) sums
  per-image intersection and union areas and documents
  ``IoU = sum(intersection) / sum(eps + union)``; the challenge README averages
  that "over all the 150 semantic categories". CSAILVision/semantic-segmentation-pytorch
  ``eval.py`` computes ``iou = intersection_meter.sum / (union_meter.sum + 1e-10)``
  and prints ``iou.mean()``. The epsilon turns 0 / 0 into 0, and the mean is
  over all C classes.
- mmsegmentation (``mmseg/evaluation/metrics/iou_metric.py``, ``IoUMetric``)
  sums the areas the same way, computes ``IoU = intersect / union`` (0 / 0 is
  NaN) and reports ``np.nanmean``, so absent classes are left out of the mean.
  ``keras.metrics.MeanIoU`` does the same.

``scores(..., absent="ignore")`` (the default) follows mmsegmentation,
``absent="zero"`` the official code (without its epsilon, whose effect on a
present class is below 1e-10 / union). A class that is only predicted has
IoU 0 under both. On the full ADE20K validation set every one of the 150
classes occurs in the ground truth (objectInfo150's ``Val`` column is at least
3 for every class), so no class is absent and the two conventions give the
same number; they differ only on subsets. Pixel accuracy is a split total in
both projects as well.
"""

import math

import numpy as np
import tensorflow as tf

from fcn.datasets.classes import IGNORE_LABEL

ABSENT_CONVENTIONS = ("ignore", "zero")


def _widen(values: tf.Tensor) -> tf.Tensor:
    """Casts to int32, or to int64 where int32 would wrap, so comparisons with C and 255 are exact.

    Comparing in uint8 would fail for C >= 256; int32 rather than int64 halves the
    memory traffic for the usual uint8 labels and int32 argmax ids.
    """
    if values.dtype in (tf.int64, tf.uint32, tf.uint64):
        return tf.cast(values, tf.int64) if values.dtype != tf.int64 else values
    return tf.cast(values, tf.int32)


def confusion_matrix(labels, predictions, num_classes: int, ignore_label: int = IGNORE_LABEL) -> tf.Tensor:
    """Counts (ground truth, prediction) pairs; works eagerly, in tf.function and in tf.data.

    Labels equal to ``ignore_label`` or outside 0..num_classes-1 are left out,
    whatever the prediction at those pixels. Predictions are argmax ids and so
    always in range; an out-of-range prediction at a counted pixel means a bug
    upstream and raises ``InvalidArgumentError`` instead of being dropped
    silently (as ``keras.metrics.MeanIoU`` would) or landing in another cell.

    Args:
      labels: integer tensor or array of any shape, e.g. (B, H, W), train ids.
      predictions: integer tensor or array of the same shape, class ids.
      num_classes: C.
      ignore_label: label value that is never counted.

    Returns:
      int64 tensor (C, C): rows = ground truth, columns = prediction.
    """
    labels = tf.convert_to_tensor(labels)
    predictions = tf.convert_to_tensor(predictions)
    if not (labels.dtype.is_integer and predictions.dtype.is_integer):
        raise TypeError(
            f"labels and predictions must be integers, got {labels.dtype.name} and {predictions.dtype.name}"
        )
    labels.shape.assert_is_compatible_with(predictions.shape)
    labels = tf.reshape(_widen(labels), [-1])  # (N,)
    predictions = tf.reshape(_widen(predictions), [-1])  # (N,)
    counted = (labels >= 0) & (labels < num_classes) & (labels != ignore_label)
    prediction_in_range = (predictions >= 0) & (predictions < num_classes)
    check = tf.debugging.Assert(
        tf.reduce_all(prediction_in_range | ~counted),
        ["confusion_matrix: prediction outside 0..num_classes-1 at a labelled pixel; num_classes =", num_classes],
    )
    cells = num_classes * num_classes
    with tf.control_dependencies([check]):
        # Counted pixels are in range, so int32 holds their index; uncounted pixels (whose
        # products may wrap) go to one extra bin that is cut off, which keeps the shape static.
        index = tf.cast(labels, tf.int32) * num_classes + tf.cast(predictions, tf.int32)
        index = tf.where(counted, index, cells)  # (N,)
        counts = tf.math.bincount(index, minlength=cells + 1, maxlength=cells + 1, dtype=tf.int64)  # (C*C + 1,)
    return tf.reshape(counts[:cells], [num_classes, num_classes])


class ConfusionMatrix:
    """Accumulates a confusion matrix in numpy (int64) over many eager updates.

    Keras-independent: call ``update`` on each image or batch of an evaluation
    loop, then ``scores(accumulator.matrix)``. Inside a ``tf.function``, sum
    ``confusion_matrix`` outputs (int64: exact far beyond float32's 2**24).
    """

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL):
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self._matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, labels, predictions) -> np.ndarray:
        """Adds one image or batch; numpy arrays or eager tensors of equal shape.

        Returns:
          this update's own (C, C) int64 matrix, for per-image reporting.
        """
        matrix = confusion_matrix(labels, predictions, self.num_classes, self.ignore_label).numpy()
        self._matrix += matrix
        return matrix

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the counts so far: int64 (C, C), rows = ground truth."""
        return self._matrix.copy()


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (without numpy warnings)."""
    return np.divide(numerator, denominator, out=np.full(numerator.shape, np.nan), where=denominator > 0)


def scores(matrix, class_names=None, absent: str = "ignore") -> dict:
    """The benchmark numbers from a split's confusion matrix.

    Args:
      matrix: (C, C) counts, rows = ground truth, columns = prediction.
      class_names: optional C names; they key the per-class dicts instead of 0..C-1.
      absent: how a class absent from both ground truth and predictions enters
        mean IoU: "ignore" leaves it out (mmsegmentation, keras MeanIoU),
        "zero" counts it as IoU 0 (the official CSAIL code). See the module docstring.

    Returns:
      dict of floats ``pixel_accuracy``, ``mean_accuracy`` (over classes with
      ground truth), ``mean_iou``, ``fw_iou`` (IoU weighted by ground-truth
      frequency), ``score`` = (pixel_accuracy + mean_iou) / 2, and dicts
      ``per_class_iou`` (NaN for absent classes) and ``per_class_accuracy``
      (NaN for classes without ground truth). With no counted pixel at all the
      summary numbers are NaN (mean IoU is 0 under absent="zero").
    """
    if absent not in ABSENT_CONVENTIONS:
        raise ValueError(f"absent must be one of {ABSENT_CONVENTIONS}, got {absent!r}")
    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"expected a square (C, C) matrix, got shape {counts.shape}")
    num_classes = counts.shape[0]
    if class_names is None:
        keys = list(range(num_classes))
    else:
        keys = list(class_names)
        if len(keys) != num_classes or len(set(keys)) != num_classes:
            raise ValueError(f"need {num_classes} distinct class names, got {len(keys)} ({len(set(keys))} distinct)")

    counts = counts.astype(np.float64)  # exact below 2**53 pixels
    intersection = np.diag(counts)  # (C,)
    ground_truth = counts.sum(axis=1)  # (C,)
    predicted = counts.sum(axis=0)  # (C,)
    union = ground_truth + predicted - intersection  # (C,)
    total = ground_truth.sum()

    iou = _divide(intersection, union)  # (C,) NaN where absent
    accuracy = _divide(intersection, ground_truth)  # (C,) NaN without ground truth
    present = union > 0
    if absent == "zero":
        mean_iou = float(np.where(present, iou, 0.0).sum() / num_classes) if num_classes else math.nan
    else:
        mean_iou = float(iou[present].mean()) if present.any() else math.nan
    labelled = ground_truth > 0
    mean_accuracy = float(accuracy[labelled].mean()) if labelled.any() else math.nan
    pixel_accuracy = float(intersection.sum() / total) if total > 0 else math.nan
    fw_iou = float((ground_truth[labelled] * iou[labelled]).sum() / total) if total > 0 else math.nan
    return {
        "pixel_accuracy": pixel_accuracy,
        "mean_accuracy": mean_accuracy,
        "mean_iou": mean_iou,
        "fw_iou": fw_iou,
        "score": (pixel_accuracy + mean_iou) / 2,
        "per_class_iou": {key: float(value) for key, value in zip(keys, iou)},
        "per_class_accuracy": {key: float(value) for key, value in zip(keys, accuracy)},
    }


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


def format_table(result: dict, class_names=None, class_ids=None, present_only: bool = False) -> str:
    """A per-class table (id, name, IoU %, accuracy %) followed by the summary lines.

    Args:
      result: output of ``scores``, keyed by index or by name.
      class_names: names to print, in train-id order; defaults to the result's keys.
      class_ids: the id printed for each class (a class table's annotation
        values); defaults to the train ids 0..C-1.
      present_only: list only the classes present in the ground truth or the
        predictions (IoU defined) and count the others in one line.

    Returns:
      multi-line string; "-" marks an undefined (NaN) value.
    """
    per_class_iou = result["per_class_iou"]
    per_class_accuracy = result["per_class_accuracy"]
    keys = list(per_class_iou)
    names = [str(key) for key in keys] if class_names is None else [str(name) for name in class_names]
    ids = list(range(len(keys))) if class_ids is None else list(class_ids)
    if not len(names) == len(ids) == len(keys):
        raise ValueError(f"{len(names)} class names and {len(ids)} ids for {len(keys)} classes")
    rows = [(i, key, name) for i, key, name in zip(ids, keys, names) if not (present_only and math.isnan(per_class_iou[key]))]
    width = max([len("class")] + [len(name) for _, _, name in rows])
    lines = [f"{'id':>3}  {'class':<{width}}  {'IoU':>6}  {'acc':>6}"]
    for index, key, name in rows:
        lines.append(
            f"{index:>3}  {name:<{width}}  {_percent(per_class_iou[key]):>6}  {_percent(per_class_accuracy[key]):>6}"
        )
    if len(rows) < len(keys):
        lines.append(f"({len(keys) - len(rows)} more classes, absent from both the ground truth and the predictions)")
    lines.append("")
    for label, key in (
        ("pixel accuracy", "pixel_accuracy"),
        ("mean accuracy", "mean_accuracy"),
        ("mean IoU", "mean_iou"),
        ("fw IoU", "fw_iou"),
        ("score", "score"),
    ):
        lines.append(f"{label:<15} {_percent(result[key]):>6}")
    return "\n".join(lines)
