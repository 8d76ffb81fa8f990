"""Tests for fcn/metrics.py: hand-checked numbers, an independent reference, split totals, absent classes."""

import math

import numpy as np
import pytest
import tensorflow as tf

from fcn import metrics

IGNORE = 255


# -- an independent reference: per-class boolean masks, no bincount --------------------------------


def reference_matrix(label_maps, prediction_maps, num_classes):
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for labels, predictions in zip(label_maps, prediction_maps):
        for truth in range(num_classes):
            for guess in range(num_classes):
                matrix[truth, guess] += np.sum((labels == truth) & (predictions == guess))
    return matrix


def reference_scores(label_maps, prediction_maps, num_classes):
    """The official formulas: areas summed over the split per class, then divided."""
    intersection = np.zeros(num_classes)
    label_area = np.zeros(num_classes)
    prediction_area = np.zeros(num_classes)
    correct = labelled = 0
    for labels, predictions in zip(label_maps, prediction_maps):
        valid = (labels >= 0) & (labels < num_classes)
        correct += np.sum(valid & (labels == predictions))
        labelled += np.sum(valid)
        for c in range(num_classes):
            intersection[c] += np.sum(valid & (labels == c) & (predictions == c))
            label_area[c] += np.sum(labels == c)
            prediction_area[c] += np.sum(valid & (predictions == c))
    union = label_area + prediction_area - intersection
    ious = [intersection[c] / union[c] for c in range(num_classes) if union[c] > 0]
    accuracies = [intersection[c] / label_area[c] for c in range(num_classes) if label_area[c] > 0]
    pixel_accuracy = correct / labelled
    mean_iou = sum(ious) / len(ious)
    mean_iou_zero = sum(ious) / num_classes
    fw_iou = sum(label_area[c] * intersection[c] / union[c] for c in range(num_classes) if label_area[c] > 0) / labelled
    return {
        "pixel_accuracy": pixel_accuracy,
        "mean_accuracy": sum(accuracies) / len(accuracies),
        "mean_iou": mean_iou,
        "mean_iou_zero": mean_iou_zero,
        "fw_iou": fw_iou,
        "score": (pixel_accuracy + mean_iou) / 2,
    }


def random_maps(rng, sizes, label_classes, prediction_classes, ignore_fraction=0.1):
    label_maps, prediction_maps = [], []
    for height, width in sizes:
        labels = rng.integers(0, label_classes, (height, width)).astype(np.uint8)
        labels[rng.random((height, width)) < ignore_fraction] = IGNORE
        # Mostly right, so IoUs are spread out rather than all near 1 / C.
        predictions = np.where(
            rng.random((height, width)) < 0.6, labels, rng.integers(0, prediction_classes, (height, width))
        )
        predictions = np.where(predictions == IGNORE, rng.integers(0, prediction_classes, (height, width)), predictions)
        label_maps.append(labels)
        prediction_maps.append(predictions.astype(np.int64))
    return label_maps, prediction_maps


# -- 1. a tiny example checked by hand ----------------------------------------------------------


def test_hand_checked_example():
    labels = np.array([[0, 0, 1, IGNORE], [1, 2, 2, IGNORE]], np.uint8)
    predictions = np.array([[0, 1, 1, 0], [1, 2, 0, 2]], np.int32)
    # Counted pixels (truth, prediction): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0); the two 255 pixels drop out.
    #            pred 0  1  2      ground truth per class: 2 2 2, predicted: 2 3 1, diagonal: 1 2 1
    # truth 0        1  1  0
    # truth 1        0  2  0
    # truth 2        1  0  1
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]], np.int64)
    matrix = metrics.confusion_matrix(labels, predictions, 3)
    assert matrix.dtype == tf.int64
    np.testing.assert_array_equal(matrix.numpy(), expected)

    result = metrics.scores(matrix.numpy())
    # pixel accuracy = (1 + 2 + 1) / 6 = 2/3
    assert result["pixel_accuracy"] == pytest.approx(2 / 3, abs=1e-15)
    # union = gt + pred - diag = 3, 3, 2 -> IoU = 1/3, 2/3, 1/2; mean = 1.5 / 3 = 1/2
    assert result["per_class_iou"] == pytest.approx({0: 1 / 3, 1: 2 / 3, 2: 1 / 2}, abs=1e-15)
    assert result["mean_iou"] == pytest.approx(0.5, abs=1e-15)
    # accuracy = diag / gt = 1/2, 1, 1/2; mean = 2/3
    assert result["per_class_accuracy"] == pytest.approx({0: 0.5, 1: 1.0, 2: 0.5}, abs=1e-15)
    assert result["mean_accuracy"] == pytest.approx(2 / 3, abs=1e-15)
    # fw IoU = (2 * 1/3 + 2 * 2/3 + 2 * 1/2) / 6 = 3 / 6 = 1/2
    assert result["fw_iou"] == pytest.approx(0.5, abs=1e-15)
    # score = (2/3 + 1/2) / 2 = 7/12
    assert result["score"] == pytest.approx(7 / 12, abs=1e-15)
    # Every class is present, so the official convention gives the same mean.
    assert metrics.scores(expected, absent="zero")["mean_iou"] == pytest.approx(0.5, abs=1e-15)


# -- 2. random maps against the reference -------------------------------------------------------


@pytest.mark.parametrize(
    "label_classes, prediction_classes",
    [(7, 7), (5, 6)],  # all classes present; class 5 only predicted and class 6 absent
)
def test_random_maps_match_reference(rng, label_classes, prediction_classes):
    num_classes = 7
    sizes = [(13, 17), (32, 24), (5, 40), (48, 31), (1, 1)]
    label_maps, prediction_maps = random_maps(rng, sizes, label_classes, prediction_classes)
    accumulator = metrics.ConfusionMatrix(num_classes)
    for labels, predictions in zip(label_maps, prediction_maps):
        accumulator.update(labels, predictions)
    expected_matrix = reference_matrix(label_maps, prediction_maps, num_classes)
    np.testing.assert_array_equal(accumulator.matrix, expected_matrix)

    expected = reference_scores(label_maps, prediction_maps, num_classes)
    result = metrics.scores(accumulator.matrix)
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "score"):
        assert result[key] == pytest.approx(expected[key], abs=1e-12), key
    zero = metrics.scores(accumulator.matrix, absent="zero")
    assert zero["mean_iou"] == pytest.approx(expected["mean_iou_zero"], abs=1e-12)
    if label_classes == num_classes:
        assert zero["mean_iou"] == pytest.approx(result["mean_iou"], abs=1e-15)
    else:
        assert zero["mean_iou"] < result["mean_iou"] - 1e-3


def test_accumulator_sums_updates(rng):
    label_maps, prediction_maps = random_maps(rng, [(9, 11), (20, 7), (16, 16)], 7, 7)
    accumulator = metrics.ConfusionMatrix(7)
    own = accumulator.update(label_maps[0], prediction_maps[0])
    np.testing.assert_array_equal(own, reference_matrix(label_maps[:1], prediction_maps[:1], 7))
    for labels, predictions in zip(label_maps[1:], prediction_maps[1:]):
        accumulator.update(tf.constant(labels), tf.constant(predictions))  # tensors work too
    np.testing.assert_array_equal(accumulator.matrix, reference_matrix(label_maps, prediction_maps, 7))
    assert accumulator.matrix.dtype == np.int64


# -- 3. split totals, not per-image averages ----------------------------------------------------


def test_split_total_differs_from_per_image_average():
    # Image A: four pixels of class 0, all right: mIoU 1, accuracy 1.
    # Image B: truth (0, 1), prediction (1, 1): IoU 0 and 1/2, mIoU 1/4, accuracy 1/2.
    # Per-image averages: mIoU 5/8, accuracy 3/4.
    # Split: M = [[4, 1], [0, 1]]; IoU 4/5 and 1/2 -> mIoU 13/20; accuracy 5/6.
    images = [(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.int64)), (np.array([[0, 1]]), np.array([[1, 1]]))]
    accumulator = metrics.ConfusionMatrix(2)
    per_image = []
    for labels, predictions in images:
        per_image.append(metrics.scores(accumulator.update(labels, predictions)))
    assert np.mean([r["mean_iou"] for r in per_image]) == pytest.approx(5 / 8)
    assert np.mean([r["pixel_accuracy"] for r in per_image]) == pytest.approx(3 / 4)
    np.testing.assert_array_equal(accumulator.matrix, [[4, 1], [0, 1]])
    result = metrics.scores(accumulator.matrix)
    assert result["mean_iou"] == pytest.approx(13 / 20, abs=1e-15)
    assert result["pixel_accuracy"] == pytest.approx(5 / 6, abs=1e-15)


# -- 4. absent classes ---------------------------------------------------------------------------


def test_absent_and_prediction_only_classes():
    labels = np.array([0, 0, 1, 1])
    predictions = np.array([0, 2, 1, 1])
    # M (4 classes) = [[1, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # IoU: class 0 1/2, class 1 2/2, class 2 (only predicted) 0/1 = 0, class 3 (absent) 0/0.
    matrix = metrics.confusion_matrix(labels, predictions, 4).numpy()
    names = ("wall", "building", "sky", "floor")
    ignore = metrics.scores(matrix, class_names=names)
    zero = metrics.scores(matrix, class_names=names, absent="zero")
    for result in (ignore, zero):
        assert list(result["per_class_iou"]) == list(names)
        assert result["per_class_iou"]["wall"] == 0.5
        assert result["per_class_iou"]["building"] == 1.0
        assert result["per_class_iou"]["sky"] == 0.0
        assert math.isnan(result["per_class_iou"]["floor"])
        # accuracy only exists for classes with ground truth
        assert math.isnan(result["per_class_accuracy"]["sky"]) and math.isnan(result["per_class_accuracy"]["floor"])
        assert result["mean_accuracy"] == 0.75
    assert ignore["mean_iou"] == pytest.approx(1.5 / 3, abs=1e-15)  # mmseg: nanmean over 3 classes
    assert zero["mean_iou"] == pytest.approx(1.5 / 4, abs=1e-15)  # official: absent counts 0, mean over 4
    assert zero["score"] == pytest.approx((3 / 4 + 1.5 / 4) / 2, abs=1e-15)

    with pytest.raises(ValueError, match="absent must be one of .*got 'nan'"):
        metrics.scores(matrix, absent="nan")
    with pytest.raises(ValueError, match=r"need 4 distinct class names, got 3 \(3 distinct\)"):
        metrics.scores(matrix, class_names=names[:3])


def test_empty_matrix_gives_nan_without_warnings():
    with np.errstate(all="raise"):
        result = metrics.scores(np.zeros((3, 3), np.int64))
    assert math.isnan(result["pixel_accuracy"]) and math.isnan(result["mean_iou"])
    assert metrics.scores(np.zeros((3, 3)), absent="zero")["mean_iou"] == 0.0


# -- 5. TensorFlow: tf.function, batches, exact large counts --------------


def test_confusion_matrix_in_tf_function_and_tf_data(rng):
    label_maps, prediction_maps = random_maps(rng, [(12, 10)] * 4, 7, 7)
    labels = tf.constant(np.stack(label_maps))  # (4, 12, 10) uint8
    predictions = tf.constant(np.stack(prediction_maps).astype(np.int32))  # (4, 12, 10)
    expected = reference_matrix(label_maps, prediction_maps, 7)

    compiled = tf.function(lambda l, p: metrics.confusion_matrix(l, p, 7))
    np.testing.assert_array_equal(compiled(labels, predictions).numpy(), expected)

    dataset = tf.data.Dataset.from_tensor_slices((labels, predictions)).batch(3)
    summed = dataset.map(lambda l, p: metrics.confusion_matrix(l, p, 7)).reduce(
        tf.zeros((7, 7), tf.int64), lambda total, matrix: total + matrix
    )
    np.testing.assert_array_equal(summed.numpy(), expected)


def test_counts_stay_exact_beyond_float32_precision():
    labels = np.zeros((5000, 4000), np.uint8)  # 2 * 10**7 pixels
    labels[0, :3] = 1
    predictions = tf.zeros(labels.shape, tf.int32)
    accumulator = metrics.ConfusionMatrix(2)
    accumulator.update(labels, predictions)
    accumulator.update(labels, predictions)
    exact = 2 * (5000 * 4000 - 3)  # 39,999,994 is not a float32 number
    assert accumulator.matrix[0, 0] == exact and accumulator.matrix[1, 0] == 6
    # So a float32 accumulator would have failed this test.
    assert int(np.float32(exact // 2) + np.float32(exact // 2)) != exact


# -- 6. the ignore label --------------------------------------------------------------------------


def test_ignored_and_out_of_range_labels_are_never_counted():
    labels = np.array([IGNORE, IGNORE, IGNORE, 3, 200, 1], np.int32)
    # At ignored pixels the prediction may be anything, even 255 or negative: never counted, no error.
    predictions = np.array([IGNORE, 0, -1, 0, 0, 1], np.int32)
    matrix = metrics.confusion_matrix(labels, predictions, 3).numpy()
    np.testing.assert_array_equal(matrix, [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    # Negative labels are out of range too, and a custom ignore label works.
    matrix = metrics.confusion_matrix(np.array([-1, 2, 0]), np.array([0, 0, 0]), 3, ignore_label=2).numpy()
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_out_of_range_prediction_at_a_labelled_pixel_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="prediction outside 0..num_classes-1 at a labelled pixel"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(TypeError, match="labels and predictions must be integers, got float64 and int64"):
        metrics.confusion_matrix(np.array([0.0, 1.0]), np.array([0, 1]), 3)


# -- format_table ---------------------------------------------------------------------------------


def test_format_table():
    matrix = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    table = metrics.format_table(metrics.scores(matrix), ("wall", "building", "sky"))
    lines = table.splitlines()
    assert lines[0].split() == ["id", "class", "IoU", "acc"]
    assert lines[1].split() == ["0", "wall", "50.00", "50.00"]
    assert lines[2].split() == ["1", "building", "66.67", "100.00"]
    assert lines[3].split() == ["2", "sky", "-", "-"]
    assert "mean IoU" in table and "score" in table and "pixel accuracy" in table
    named = metrics.scores(matrix, class_names=("wall", "building", "sky"))
    assert metrics.format_table(named) == table
