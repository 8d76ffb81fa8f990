"""Tests of --mode=evaluate (fcn/evaluate.py): native resolution, one confusion matrix, reports, submission PNGs."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import NARROW_FLAGS, SAMPLE_ROOT, clear_argmax, multi_scale_probabilities, run_fcn, save_run, write_pair
from PIL import Image

from fcn import config as config_lib
from fcn import evaluate
from fcn.datasets import ade20k

SIZES = ((37, 53), (64, 48), (20, 90))  # (H, W): no two alike, none a multiple of 32


def official_scores(labels, predictions, num_classes=ade20k.NUM_CLASSES):
    """The official formula, per class and straight from the pixels (no confusion matrix).

    Args:
      labels: ADE20K label maps (0 = other, ignored; 1..150), full resolution.
      predictions: train-id maps (0..149) of the same sizes.

    Returns:
      dict as in metrics.json, NaN for classes absent from both.
    """
    labelled = np.concatenate([l.ravel() > 0 for l in labels])
    truth = np.concatenate([l.ravel().astype(int) - 1 for l in labels])[labelled]
    guess = np.concatenate([p.ravel().astype(int) for p in predictions])[labelled]
    iou, accuracy, frequency = [], [], []
    for c in range(num_classes):
        intersection = np.sum((truth == c) & (guess == c))
        union = np.sum((truth == c) | (guess == c))
        iou.append(intersection / union if union else math.nan)
        accuracy.append(intersection / np.sum(truth == c) if np.sum(truth == c) else math.nan)
        frequency.append(np.sum(truth == c) / truth.size)
    iou, accuracy, frequency = np.array(iou), np.array(accuracy), np.array(frequency)
    pixel_accuracy = np.mean(truth == guess)
    mean_iou = np.nanmean(iou)
    return {
        "pixel_accuracy": pixel_accuracy,
        "mean_accuracy": np.nanmean(accuracy),
        "mean_iou": mean_iou,
        "fw_iou": np.nansum(frequency * np.where(frequency > 0, iou, 0)),
        "score": (pixel_accuracy + mean_iou) / 2,
        "per_class_iou": dict(zip(ade20k.class_names(), iou)),
    }


def assert_metrics_match(written: dict, expected: dict):
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "score"):
        assert written[key] == pytest.approx(expected[key], rel=1e-12), key
    assert list(written["per_class_iou"]) == list(ade20k.class_names())
    for name, value in expected["per_class_iou"].items():
        if math.isnan(value):
            assert written["per_class_iou"][name] is None, name  # absent classes are null
        else:
            assert written["per_class_iou"][name] == pytest.approx(value, rel=1e-12), name


def numpy_confusion(labels, predictions, num_classes=ade20k.NUM_CLASSES):
    """(C, C) pixel counts, ground-truth train id by predicted train id, over the labelled pixels (label 0 ignored)."""
    truth = np.concatenate([l.ravel().astype(int) - 1 for l in labels])
    guess = np.concatenate([p.ravel().astype(int) for p in predictions])
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (truth[truth >= 0], guess[truth >= 0]), 1)
    return matrix


def assert_figure_shows(path, matrix):
    """The PNG at ``path`` is the confusion figure (ADE20K's names and colours) of ``matrix``, pixel for pixel.

    ``confusion_figure`` itself is checked against its input in
    ``test_confusion_figure_shows_the_30_most_frequent_classes_on_a_log_scale``; this checks which matrix
    was drawn into the file.
    """
    import io


    expected = io.BytesIO()
    figure = evaluate.confusion_figure(matrix, ade20k.class_names(), colours=ade20k.class_table().palette())
    figure.savefig(expected, dpi=100, bbox_inches="tight")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(expected)))


def colour_predictor(images):
    """A stand-in model whose predictions follow the red channel: train ids 0..4."""
    return tf.cast(images[..., 0], tf.int32) // 52  # (B, H, W)


def test_split_of_different_sizes_is_scored_at_full_resolution(tmp_path, rng):
    root = str(tmp_path / "data")
    labels, predictions = [], []
    for k, (height, width) in enumerate(SIZES):
        image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        label = rng.integers(0, 7, (height, width)).astype(np.uint8)  # 0 ignored; 6 never predicted
        write_pair(root, "validation", f"ADE_val_{k:08d}", image, label, image_format="PNG")  # lossless
        labels.append(label)
        predictions.append(image[..., 0].astype(int) // 52)
    write_pair(root, "validation", "ADE_val_00000099", np.zeros((8, 8, 3), np.uint8), np.ones((8, 9), np.uint8))
    submission = str(tmp_path / "submission")

    result = evaluate.evaluate_split(colour_predictor, root, "validation", ade20k.NUM_CLASSES, submission, progress=False)

    assert result.images == len(SIZES)
    assert list(result.skipped.skipped) == [os.path.join(root, "images", "validation", "ADE_val_00000099.jpg")]
    # Every labelled pixel of every image at its own size, and nothing else.
    assert result.matrix.sum() == sum(int(np.sum(l > 0)) for l in labels)
    config = config_lib.Config()
    paths = evaluate.write_reports(result, str(tmp_path / "out"), config)
    with open(paths["metrics"]) as f:
        written = json.load(f)
    assert_metrics_match(written, official_scores(labels, predictions))
    assert written["classes_present"] == 6 and written["images"] == 3
    assert "size differs" in next(iter(written["skipped"].values()))
    np.testing.assert_array_equal(np.load(paths["matrix"]), numpy_confusion(labels, predictions))
    assert_figure_shows(paths["figure"], numpy_confusion(labels, predictions))
    for k, prediction in enumerate(predictions):
        png = Image.open(os.path.join(submission, f"ADE_val_{k:08d}.png"))
        assert png.mode == "L" and png.size == (SIZES[k][1], SIZES[k][0])
        np.testing.assert_array_equal(np.asarray(png), prediction + 1)
    assert sorted(os.listdir(submission)) == [".fcn_outputs"] + [f"ADE_val_{k:08d}.png" for k in range(len(SIZES))]  # the list of fcn's own files


def test_evaluate_averages_the_scales_and_flip_of_the_config(tmp_path, rng):
    root = str(tmp_path / "ADEChallengeData2016")
    images, labels = [], []
    for k, (height, width) in enumerate(((38, 54), (30, 46))):
        images.append(rng.integers(0, 256, (height, width, 3)).astype(np.uint8))
        labels.append(rng.integers(0, 5, (height, width)).astype(np.uint8))
        write_pair(root, "validation", f"ADE_val_{k:08d}", images[-1], labels[-1], image_format="PNG")  # lossless
    logs = tmp_path / "run"
    _, model = save_run(logs, root)  # random score_fr weights: predictions vary over the image
    config = config_lib.load_config(
        str(logs / "config.yaml"), [("evaluate.scales", "0.5,1.5"), ("evaluate.flip", "true"), ("evaluate.test_size", "none")]
    )
    submission = tmp_path / "submission"

    result = evaluate.evaluate(config, root, output_dir=str(tmp_path / "out"), save_predictions=str(submission), progress=False)

    assert result.images == 2
    predictions = []
    for k, image in enumerate(images):
        expected, clear = clear_argmax(multi_scale_probabilities(model, image[None], (0.5, 1.5), flip=True)[0])
        written = np.asarray(Image.open(submission / f"ADE_val_{k:08d}.png")).astype(int) - 1
        np.testing.assert_array_equal(written[clear], expected[clear])
        predictions.append(written)
    with open(tmp_path / "out" / "metrics.json") as f:
        metrics_written = json.load(f)
    assert metrics_written["scales"] == [0.5, 1.5] and metrics_written["flip"] is True
    assert_metrics_match(metrics_written, official_scores(labels, predictions))  # scored from those predictions


def test_confusion_figure_shows_the_30_most_frequent_classes_on_a_log_scale():
    from matplotlib.colors import LogNorm

    # 40 classes with ground truth, class c with 1000 + 10 c pixels in a shuffled order of classes,
    # each with a few pixels predicted as the next class listed and 1 as the class 100 ids on.
    classes = np.random.default_rng(7).permutation(ade20k.NUM_CLASSES)[:40]
    matrix = np.zeros((ade20k.NUM_CLASSES, ade20k.NUM_CLASSES), np.int64)
    for rank, c in enumerate(classes):
        total = 1000 + 10 * (40 - rank)  # the first class listed is the most frequent
        matrix[c, classes[(rank + 1) % 40]] = 5 + rank
        matrix[c, (c + 100) % ade20k.NUM_CLASSES] += 1
        matrix[c, c] = total - matrix[c].sum()
    names = ade20k.class_names()

    figure = evaluate.confusion_figure(matrix, names)

    axes = figure.axes[0]
    top = classes[:30]
    assert [label.get_text() for label in axes.get_yticklabels()] == [names[c] for c in top]
    assert [label.get_text() for label in axes.get_xticklabels()] == [names[c] for c in top]
    (picture,) = axes.images
    assert isinstance(picture.norm, LogNorm) and (picture.norm.vmin, picture.norm.vmax) == (1e-4, 1.0)
    shown = picture.get_array()
    # Each row is a fraction of all the ground-truth pixels of its class, pixels predicted
    # as classes left out of the figure included; cells without pixels are blank (masked).
    expected = matrix[np.ix_(top, top)] / matrix[top].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(shown.filled(0.0), expected, rtol=1e-12)
    np.testing.assert_array_equal(np.ma.getmaskarray(shown), expected == 0)
    assert "30 most frequent classes" in axes.get_title() and "log scale" in axes.get_title()


def test_absent_class_convention_is_the_documented_one(tmp_path):
    matrix = np.zeros((150, 150), np.int64)
    matrix[0, 0], matrix[0, 1], matrix[2, 2] = 6, 2, 4  # classes 0, 1, 2 present; 147 absent
    result = evaluate.EvaluationResult(
        evaluate.metrics.scores(matrix, ade20k.class_names()), matrix, 1, evaluate.data.SkipReport()
    )
    written = evaluate.metrics_json(result, config_lib.Config())
    assert written["mean_iou"] == pytest.approx((6 / 8 + 0 + 1) / 3)  # absent classes left out, as mmsegmentation
    assert written["per_class_iou"]["building"] == 0.0 and written["per_class_iou"]["flag"] is None
    json.dumps(written, allow_nan=False)  # valid JSON: no NaN


def test_cli_evaluates_real_images_of_different_sizes(tmp_path):
    root = str(tmp_path / "ADEChallengeData2016")
    shutil.copytree(SAMPLE_ROOT, root)
    write_pair(root, "validation", "ADE_val_00000004", np.zeros((30, 40, 3), np.uint8), np.ones((30, 41), np.uint8))
    sky = ade20k.class_names().index("sky")
    logs = tmp_path / "run"
    save_run(logs, root, fixed_class=sky)
    output, submission = tmp_path / "out", tmp_path / "submission"

    result = run_fcn("--mode=evaluate", "--data_dir", root, "--logs_dir", str(logs), *NARROW_FLAGS,
                     "--output", str(output), "--save_predictions", str(submission), "--no_progress")

    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean IoU" in result.stdout and "sky" in result.stdout and "3 images evaluated" in result.stdout
    assert "ADE_val_00000004.jpg: annotation size differs from the image size" in result.stdout
    stems = [f"ADE_val_0000000{k}" for k in (1, 2, 3)]
    labels = [np.asarray(Image.open(os.path.join(root, "annotations", "validation", s + ".png"))) for s in stems]
    assert len({l.shape for l in labels}) == 3  # 683x512, 500x364, 400x300
    with open(output / "metrics.json") as f:
        written = json.load(f)
    assert_metrics_match(written, official_scores(labels, [np.full(l.shape, sky) for l in labels]))
    assert written["checkpoint"].endswith("ckpt-1") and written["split"] == "validation"
    sky_everywhere = [np.full(l.shape, sky) for l in labels]
    np.testing.assert_array_equal(np.load(output / "confusion_matrix.npy"), numpy_confusion(labels, sky_everywhere))
    assert_figure_shows(output / "confusion_matrix.png", numpy_confusion(labels, sky_everywhere))
    assert not (logs / "metrics.json").exists()
    for stem, label in zip(stems, labels):
        png = Image.open(submission / f"{stem}.png")
        image = Image.open(os.path.join(root, "images", "validation", stem + ".jpg"))
        assert png.mode == "L" and png.size == image.size
        values = np.asarray(png)
        assert values.min() >= 1 and values.max() <= 150
        np.testing.assert_array_equal(values, sky + 1)


def test_cli_without_checkpoint_says_what_to_do(tmp_path):
    result = run_fcn("--mode=evaluate", "--data_dir", SAMPLE_ROOT, "--logs_dir", str(tmp_path / "empty"), "--no_progress")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no checkpoint in" in result.stderr and "--checkpoint" in result.stderr
