"""Tests of --mode=visualize (fcn/visualize.py) and notebooks/colormap.ipynb: pictures and printed numbers checked against the model."""

import os
import re

import nbformat
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    REPO,
    SAMPLE_ROOT,
    TINY_TRAINING,
    clear_argmax,
    multi_scale_probabilities,
    narrow_fcn8s,
    run_fcn,
    save_run,
    write_pair,
)
from nbclient import NotebookClient
from PIL import Image
from test_protocol import protocol_logits

from fcn import config as config_lib
from fcn import data, datasets, evaluate, metrics, visualize
from fcn.datasets import ade20k, decode
from fcn.datasets.classes import IGNORE_LABEL

SAMPLE_TEST_SIZE = (160, 96)  # configs/sample.yaml: evaluate.test_size, its data.base_size

NOTEBOOK = os.path.join(REPO, "notebooks", "colormap.ipynb")
TINY = TINY_TRAINING


def restored_model(run_dir):
    """The run's latest weights in a freshly built FCN-8s, read with TensorFlow's own checkpoint API.

    Independent of the package's restoring code, so that expectations do not share it.
    """
    model = narrow_fcn8s(ade20k.NUM_CLASSES)
    prefix = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    tf.train.Checkpoint(model=model).restore(prefix).expect_partial().assert_existing_objects_matched()
    return model


def train_ids(ade20k_labels):
    """ADE20K label values (0 = other, 1..150) -> train ids (255 ignored, 0..149)."""
    values = np.asarray(ade20k_labels, np.int64)
    return np.where(values == 0, IGNORE_LABEL, values - 1)


def test_visualize_writes_coloured_images_of_a_seeded_batch(trained_run):
    root, logs = trained_run
    args = [*TINY, "--mode=visualize", "--data_dir", root, "--logs_dir", logs, "--set", "evaluate.visualize_images=2"]
    result = run_fcn(*args, "--seed", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    output = os.path.join(logs, "visualize")
    assert sorted(os.listdir(output)) == sorted(
        [f"{kind}_{k}.png" for kind in ("inp", "gt", "pred") for k in (0, 1)] + ["visualize.png"]
    )
    shown = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line[:3] in ("0: ", "1: ")]
    pairs = dict(datasets.list_split(root, "validation").pairs)
    model = restored_model(logs)
    assert len(shown) == 2 and all(path in pairs for path in shown)
    for k, image_path in enumerate(shown):
        image, label = decode.load_example(image_path, pairs[image_path])
        np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(output, f"inp_{k}.png"))), image)
        ground_truth = np.asarray(Image.open(os.path.join(output, f"gt_{k}.png")))
        np.testing.assert_array_equal(ground_truth, ade20k.class_table().colourise(label))  # label 0 ("other") black
        prediction = np.asarray(Image.open(os.path.join(output, f"pred_{k}.png")))
        # After one training step the class probabilities are all near 1/150: compare on the logits.
        # The sample config's protocol: the image fitted into evaluate.test_size [160, 96], logits resized back.
        expected, clear = clear_argmax(protocol_logits(model, image[None], SAMPLE_TEST_SIZE)[0], margin=2e-5, min_clear=0.5)
        np.testing.assert_array_equal(prediction[clear], ade20k.class_table().colourise(expected)[clear])
        assert np.mean(expected != label) > 0.5  # a prediction unlike the ground truth
    # visualize.png is the comparison figure of exactly those pictures, in that order, pixel for pixel
    # (comparison_figure's own layout is not what this checks).
    import io


    palette = ade20k.class_table().palette()  # (150, 3)
    train_id_of = {tuple(int(v) for v in colour): k for k, colour in enumerate(palette)}
    examples = [decode.load_example(path, pairs[path]) for path in shown]
    predictions = [np.vectorize(lambda r, g, b: train_id_of[(r, g, b)])(*np.moveaxis(
        np.asarray(Image.open(os.path.join(output, f"pred_{k}.png"))).astype(int), -1, 0)) for k in range(len(shown))]
    expected = io.BytesIO()
    visualize.comparison_figure([image for image, _ in examples], [label for _, label in examples], predictions,
                                titles=[os.path.basename(path) for path in shown]).savefig(expected, dpi=100)
    np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(output, "visualize.png"))), np.asarray(Image.open(expected)))
    # The same seed draws the same batch.
    again = run_fcn(*args, "--seed", "3", "--output", os.path.join(logs, "again"))
    assert again.returncode == 0
    assert [l for l in again.stdout.splitlines() if l[:3] in ("0: ", "1: ")] == [f"{k}: {p}" for k, p in enumerate(shown)]


def test_pictures_are_the_ground_truth_and_the_multi_scale_prediction(tmp_path):
    root = str(tmp_path / "ADEChallengeData2016")
    rng = np.random.default_rng(6)
    pairs = {}
    for k, (height, width) in enumerate(((38, 54), (46, 34), (30, 62))):
        image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        label = rng.integers(0, 6, (height, width)).astype(np.uint8)  # 0 "other" is drawn black
        image_path, _ = write_pair(root, "validation", f"ADE_val_{k:08d}", image, label, image_format="PNG")  # lossless
        pairs[image_path] = image, label
    logs = tmp_path / "run"
    _, model = save_run(logs, root)  # random score_fr weights: predictions vary over the image
    config = config_lib.load_config(
        str(logs / "config.yaml"),
        [("evaluate.scales", "0.5,1.5"), ("evaluate.flip", "true"), ("evaluate.visualize_images", "2"),
         ("evaluate.test_size", "none")],
    )

    result = visualize.visualize(config, root, str(tmp_path / "out"))

    assert len(result.shown) == 2 and set(result.shown) <= set(pairs)
    for k, image_path in enumerate(result.shown):
        image, label = pairs[image_path]
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"inp_{k}.png")), image)
        ground_truth = np.asarray(Image.open(tmp_path / "out" / f"gt_{k}.png"))
        np.testing.assert_array_equal(ground_truth, ade20k.class_table().colourise(train_ids(label)))
        expected, clear = clear_argmax(multi_scale_probabilities(model, image[None], (0.5, 1.5), flip=True)[0])
        prediction = np.asarray(Image.open(tmp_path / "out" / f"pred_{k}.png"))
        np.testing.assert_array_equal(prediction[clear], ade20k.class_table().colourise(expected)[clear])


def execute_notebook(run_dir, monkeypatch) -> tuple[str, int]:
    """Runs the notebook headless as a user would.

    Returns:
      (its printed text, the number of pictures it displayed).
    """
    monkeypatch.setenv("FCN_RUN_DIR", run_dir)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    pictures = sum("image/png" in output.get("data", {}) for output in outputs)
    return "".join(output.get("text", "") for output in outputs if output.output_type == "stream"), pictures


def printed_accuracies(text) -> dict:
    """The notebook's per-image lines "NAME: WxH, pixel accuracy P" as {(NAME, "WxH"): P}."""
    found = re.findall(r"^(\S+): (\d+x\d+), pixel accuracy ([0-9.]+)$", text, flags=re.MULTILINE)
    return {(name, size): float(value) for name, size, value in found}


def expected_accuracies(root, predict_fn) -> dict:
    """Pixel accuracy over the labelled pixels of the split's first three images, keyed as printed."""
    expected = {}
    for image_path, annotation_path in datasets.list_split(root, "validation").pairs[:3]:
        image, label = decode.load_example(image_path, annotation_path)
        labelled = label != IGNORE_LABEL
        accuracy = np.mean(predict_fn(image)[labelled] == label[labelled])
        expected[(os.path.basename(image_path), f"{image.shape[1]}x{image.shape[0]}")] = accuracy
    return expected


@pytest.mark.slow  # starts a Jupyter kernel (a process importing TensorFlow)
def test_notebook_shows_a_trained_runs_predictions_and_evaluation(trained_run, tmp_path, monkeypatch):
    import shutil

    root, shared = trained_run
    logs = str(tmp_path / "run")
    shutil.copytree(shared, logs)  # the reports below are written into the run directory
    # The reports of --mode=evaluate, from a confusion matrix small enough to score by hand:
    # wall 6 right, 2 as building; building 3 right; sky 9 right, 1 as wall.
    matrix = np.zeros((ade20k.NUM_CLASSES, ade20k.NUM_CLASSES), np.int64)
    matrix[0, 0], matrix[0, 1], matrix[1, 1], matrix[2, 2], matrix[2, 0] = 6, 2, 3, 9, 1
    result = evaluate.EvaluationResult(metrics.scores(matrix, ade20k.class_names()), matrix, 1, data.SkipReport())
    evaluate.write_reports(result, logs, config_lib.load_config(os.path.join(logs, "config.yaml")))

    text, pictures = execute_notebook(logs, monkeypatch)

    assert "NOTE" not in text
    assert f"trained run: {tf.train.latest_checkpoint(os.path.join(logs, 'checkpoints'))}\n" in text
    model = restored_model(logs)
    expected = expected_accuracies(root, lambda image: protocol_logits(model, image[None], SAMPLE_TEST_SIZE)[0].argmax(-1))
    printed = printed_accuracies(text)
    assert printed.keys() == expected.keys()
    for key, accuracy in expected.items():
        assert printed[key] == pytest.approx(accuracy, abs=2e-3), key  # printed to 3 decimals
    headline = dict(line.split() for line in text.splitlines() if line.split()[:1] and line.split()[0] in evaluate.HEADLINE)
    # IoU: wall 6 / (8 + 7 - 6), building 3 / 5, sky 9 / 10; 18 of 21 pixels right.
    by_hand = {"pixel_accuracy": 18 / 21, "mean_accuracy": (6 / 8 + 1 + 0.9) / 3, "mean_iou": (6 / 9 + 0.6 + 0.9) / 3,
               "fw_iou": (8 * 6 / 9 + 3 * 0.6 + 10 * 0.9) / 21}
    by_hand["score"] = (by_hand["pixel_accuracy"] + by_hand["mean_iou"]) / 2
    assert {key: float(value) for key, value in headline.items()} == pytest.approx(by_hand, abs=5e-5)
    assert "best classes: sky 0.900, wall 0.667, building 0.600\n" in text
    assert pictures == 3  # the palette, the predictions, the confusion matrix


@pytest.mark.slow  # starts a Jupyter kernel (a process importing TensorFlow)
def test_notebook_without_a_trained_run_shows_the_untrained_models_output(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "no_run")
    text, pictures = execute_notebook(run_dir, monkeypatch)
    assert "NOTE: no trained run" in text and "UNTRAINED" in text
    # As it says, the untrained model predicts wall (train id 0) everywhere: the pixel accuracy of each
    # of the real ADE20K images is its share of labelled wall pixels.
    expected = expected_accuracies(SAMPLE_ROOT, lambda image: np.zeros(image.shape[:2], np.int64))
    printed = printed_accuracies(text)
    assert printed.keys() == expected.keys()
    for key, accuracy in expected.items():
        assert printed[key] == pytest.approx(accuracy, abs=5e-4), key
    assert f"no {os.path.join(run_dir, 'metrics.json')}: run python FCN.py --mode=evaluate" in text
    assert pictures == 2  # the palette and the predictions
