"""The CRF-RNN stage inside FCN-8s: model, training through the CLI, inference, evaluation and visualize."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import NARROW_FLAGS, SAMPLE_ROOT, bilinear_resize, narrow_fcn8s, run_fcn
from PIL import Image
from test_evaluate import official_scores
from test_protocol import fit_factor

from fcn import checkpoints, crf, datasets, errors, inference, metrics, summaries
from fcn import config as config_lib
from fcn import model as model_lib
from fcn.datasets import ade20k, decode

TINY = ["--config", "configs/sample.yaml", "--no_progress", "--crop_size", "32", "--batch_size", "2", *NARROW_FLAGS,
        "--set", "train.val_images=2", "--set", "data.val_size=48"]
CRF = ["--crf", "--set", "model.crf_iterations=2", "--set", "model.crf_test_iterations=3"]


def randomise_scores(model, seed=0):
    """Random score_fr weights, so that the untrained FCN's logits vary over the image."""
    score = model.get_layer("score_fr")
    score.kernel.assign(np.random.default_rng(seed).normal(0, 1, score.kernel.shape).astype(np.float32))


@pytest.fixture(scope="module")
def image():
    """A 45x61 crop of a real ADE20K image, uint8 (1, H, W, 3)."""
    pair = datasets.list_split(SAMPLE_ROOT, "validation").pairs[0]
    return decode.load_example(*pair)[0][100:145, 200:261][None]


def test_crf_stage_refines_the_fcn_logits_with_the_input_image(image):
    keras.utils.set_random_seed(0)
    model = model_lib.build_fcn8s(6, fc_channels=8, crf=dict(num_iterations=3))
    randomise_scores(model)
    fcn_logits, refined = model_lib.with_fcn_output(model)(image)
    fcn_only = keras.Model(model.input, model.get_layer("logits").output)
    np.testing.assert_array_equal(fcn_logits.numpy(), fcn_only(image).numpy())
    assert float(tf.math.reduce_std(fcn_logits)) > 0.1
    # Independently: a fresh layer with the model's weights, on the FCN logits and the raw RGB image.
    layer = crf.CrfRnn(num_iterations=3)
    layer.build([fcn_logits.shape, image.shape])
    layer.set_weights(model.get_layer("crf").get_weights())
    expected = layer([fcn_logits, tf.cast(image, tf.float32)])
    np.testing.assert_allclose(model(image).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(refined.numpy(), model(image).numpy())
    assert np.abs(refined.numpy() - fcn_logits.numpy()).max() > 0.5  # the stage does change the logits
    assert model.output.dtype == "float32" and model(image).shape == (1, 45, 61, 6)
    with pytest.raises(ValueError, match="no CRF stage"):
        model_lib.with_fcn_output(fcn_only)


def test_model_with_crf_saves_and_reloads(tmp_path, image):
    keras.utils.set_random_seed(1)
    model = model_lib.build_fcn8s(4, fc_channels=8, crf=dict(num_iterations=2, theta_alpha=80.0))
    randomise_scores(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.get_layer("crf").theta_alpha == 80.0 and reloaded.get_layer("crf").num_iterations == 2
    np.testing.assert_allclose(reloaded(image).numpy(), model(image).numpy(), rtol=1e-6, atol=1e-6)


def test_config_rejects_crf_combinations_that_cannot_work():
    with pytest.raises(errors.ConfigError, match="jit_compile cannot compile the CRF"):
        config_lib.load_config(None, [("model.crf", "true"), ("train.jit_compile", "true")])
    with pytest.raises(errors.ConfigError, match="compare_fcn .* needs model.crf"):
        config_lib.load_config(None, [("evaluate.compare_fcn", "true")])
    with pytest.raises(errors.ConfigError, match="crf_theta"):
        config_lib.load_config(None, [("model.crf_theta_beta", "0")])


def test_crf_parameter_summary():
    c = 5
    spatial = 3.0 * np.eye(c)
    bilateral = 5.0 * np.eye(c) + 0.5 * (1 - np.eye(c))
    potts = 1.0 - np.eye(c)
    digest = summaries.crf_parameter_summary(spatial, bilateral, potts)
    assert digest == {
        "crf/spatial_kernel_weights/diagonal_mean": 3.0,
        "crf/spatial_kernel_weights/off_diagonal_abs_mean": 0.0,
        "crf/bilateral_kernel_weights/diagonal_mean": 5.0,
        "crf/bilateral_kernel_weights/off_diagonal_abs_mean": 0.5,
        "crf/compatibility/diagonal_mean": 0.0,
        "crf/compatibility/off_diagonal_mean": 1.0,
    }


# ---------------------------------------------------------------------------
# Through the command line: FCN run -> fine-tuned FCN + CRF run -> inference.


def read_scalars(directory):
    events = {}
    for path in tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                events.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return events


def restored_layers(run_dir):
    """layer name -> its weights, restored from the run's latest checkpoint into the run's model."""
    model, _ = inference.restore_model(config_lib.load_config(os.path.join(run_dir, "config.yaml")))
    return {layer.name: [w.numpy() for w in layer.weights] for layer in model.layers if layer.weights}


@pytest.fixture(scope="module")
def crf_runs(tmp_path_factory):
    """(dataset root, FCN run, FCN + CRF run fine-tuned from it), trained through the CLI."""
    root = str(tmp_path_factory.mktemp("sample") / "ADEChallengeData2016")
    datasets.generate_sample_dataset(root, num_train=8, num_val=4, progress=False)
    base = tmp_path_factory.mktemp("runs")
    fcn_run, crf_run = str(base / "fcn"), str(base / "crf")
    result = run_fcn(*TINY, "--data_dir", root, "--logs_dir", fcn_run, "--max_steps", "2", "--learning_rate", "1e-3")
    assert result.returncode == 0, result.stderr[-3000:]
    # One step that cannot move the weights: the copy of the FCN and the CRF's initial values stay visible.
    result = run_fcn(*TINY, *CRF, "--data_dir", root, "--logs_dir", crf_run, "--max_steps", "1",
                     "--init_from", fcn_run, "--learning_rate", "1e-30", "--set", "train.summary_every=1")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, fcn_run, crf_run


@pytest.mark.slow  # trains an FCN run, then an FCN + CRF run from it (crf_runs)
def test_fine_tuning_with_crf_starts_from_the_fcn_run(crf_runs):
    root, fcn_run, crf_run = crf_runs
    source, target = restored_layers(fcn_run), restored_layers(crf_run)
    assert set(target) == set(source) | {"crf"}
    for name, weights in source.items():
        for a, b in zip(weights, target[name]):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-12, err_msg=name)
    assert float(np.abs(source["score_fr"][0]).max()) > 0  # trained: not the zero initialisation
    spatial, bilateral, compatibility = target["crf"]
    c = 150
    # The initial values, moved by at most one Adam step of 1e-30.
    np.testing.assert_allclose(spatial, 3.0 * np.eye(c), atol=1e-12)
    np.testing.assert_allclose(bilateral, 5.0 * np.eye(c), atol=1e-12)
    np.testing.assert_allclose(compatibility, 1.0 - np.eye(c), atol=1e-12)
    config = config_lib.load_config(os.path.join(crf_run, "config.yaml"))
    assert config.model.crf and config.train.init_from == fcn_run
    scalars = read_scalars(os.path.join(crf_run, "train"))
    assert float(scalars["crf/spatial_kernel_weights/diagonal_mean"][-1][1]) == pytest.approx(3.0)
    assert float(scalars["crf/bilateral_kernel_weights/diagonal_mean"][-1][1]) == pytest.approx(5.0)
    assert float(scalars["crf/compatibility/off_diagonal_mean"][-1][1]) == pytest.approx(1.0)
    assert "crf/compatibility" in scalars  # the matrix as an image and a histogram (same tag, two plugins)


@pytest.mark.slow  # trains FCN + CRF runs (crf_runs)
def test_crf_is_trained_end_to_end_and_resumes(crf_runs):
    """Resuming the CRF run at a real learning rate moves both the FCN and the CRF weights."""
    root, _, crf_run = crf_runs
    before = restored_layers(crf_run)
    result = run_fcn("--config", os.path.join(crf_run, "config.yaml"), "--no_progress", "--max_steps", "3",
                     "--learning_rate", "1e-2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout
    after = restored_layers(crf_run)
    for a, b in zip(before["crf"], after["crf"]):  # gradients reach the three C x C matrices
        assert np.abs(a - b).max() > 1e-4
    assert not np.array_equal(before["fc6"][0], after["fc6"][0])  # and the FCN below them


@pytest.mark.slow  # trains FCN + CRF runs (crf_runs), then every inference mode
def test_inference_modes_use_fcn_and_crf(crf_runs, tmp_path):
    root, fcn_run, crf_run = crf_runs
    config = config_lib.load_config(os.path.join(crf_run, "config.yaml"))
    model, _ = inference.restore_model(config)
    assert model.get_layer("crf").num_iterations == 3  # model.crf_test_iterations
    # Without the CRF stage the FCN layers alone would restore: refused, not silently dropped.
    without_crf = config_lib.load_config(os.path.join(crf_run, "config.yaml"), [("model.crf", "false")])
    with pytest.raises(inference.InferenceError, match="holds a model with the CRF stage: pass --crf"):
        inference.restore_model(without_crf)
    fcn_run_config = config_lib.load_config(os.path.join(fcn_run, "config.yaml"))
    assert not checkpoints.holds_layer_weights(checkpoints.candidates(fcn_run_config.logs_dir).prefixes[0], model_lib.CRF_WEIGHTS)
    with pytest.raises(inference.InferenceError, match="crf=True"):
        inference.restore_model(config, checkpoint=fcn_run)  # and a CRF model needs the CRF weights
    both = inference.make_predictor(model_lib.with_fcn_output(model), config)  # the run's protocol: fit into [160, 96]
    assert both.test_size == (160, 96)

    # evaluate with compare_fcn: both sets of numbers, each from its own labels.
    out = str(tmp_path / "evaluation")
    result = run_fcn("--config", os.path.join(crf_run, "config.yaml"), "--no_progress", "--mode=evaluate",
                     "--set", "evaluate.compare_fcn=true", "--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FCN alone" in result.stdout and "FCN + CRF" in result.stdout
    written = json.load(open(os.path.join(out, "metrics.json")))
    fcn_matrix = metrics.ConfusionMatrix(150)
    crf_matrix = metrics.ConfusionMatrix(150)
    for image_path, annotation_path in datasets.list_split(root, "validation").pairs:
        image, label = decode.load_example(image_path, annotation_path)
        fcn_labels, crf_labels = both.labels(image[None])
        fcn_matrix.update(label[None], fcn_labels)
        crf_matrix.update(label[None], crf_labels)
    for key, value in metrics.scores(crf_matrix.matrix).items():
        if key in ("pixel_accuracy", "mean_iou", "score"):
            assert written[key] == pytest.approx(value, rel=1e-12), key
    for key, value in metrics.scores(fcn_matrix.matrix).items():
        if key in ("pixel_accuracy", "mean_iou", "score"):
            assert written["fcn_alone"][key] == pytest.approx(value, rel=1e-12), key
    assert written["crf"] is True and written["crf_iterations"] == 3
    # And against a computation that shares none of that code: the checkpoint read with TensorFlow's own
    # API into a fresh model, run eagerly on each image fitted into the test size (numpy resizes, as in
    # tests/test_protocol.py), its logits resized back, scored pixel by pixel with the official formula.
    fresh = narrow_fcn8s(
        150, crf=dict(num_iterations=3, theta_alpha=config.model.crf_theta_alpha,
                                      theta_beta=config.model.crf_theta_beta, theta_gamma=config.model.crf_theta_gamma)
    )
    tf.train.Checkpoint(model=fresh).restore(tf.train.latest_checkpoint(os.path.join(crf_run, "checkpoints"))).expect_partial()
    eager = model_lib.with_fcn_output(fresh)
    truths, fcn_eager, crf_eager = [], [], []
    for image_path, annotation_path in datasets.list_split(root, "validation").pairs:
        image = np.asarray(Image.open(image_path).convert("RGB"))
        truths.append(np.asarray(Image.open(annotation_path)))
        height, width = image.shape[:2]
        factor = fit_factor(height, width, (160, 96))
        scaled = bilinear_resize(image[None], max(round(height * factor), 1), max(round(width * factor), 1))
        fcn_logits, crf_logits = eager(np.asarray(scaled, np.float32))
        fcn_eager.append(bilinear_resize(fcn_logits.numpy(), height, width)[0].argmax(-1))
        crf_eager.append(bilinear_resize(crf_logits.numpy(), height, width)[0].argmax(-1))
    # Compiled and eager inference may break exact ties of the untrained CRF differently: a tolerance.
    for scores, expected in ((written, official_scores(truths, crf_eager)), (written["fcn_alone"], official_scores(truths, fcn_eager))):
        assert scores["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=0.02)
        assert scores["mean_iou"] == pytest.approx(expected["mean_iou"], abs=0.02)

    # visualize: the FCN's prediction beside the refined one.
    out = str(tmp_path / "pictures")
    result = run_fcn("--config", os.path.join(crf_run, "config.yaml"), "--no_progress", "--mode=visualize",
                     "--set", "evaluate.visualize_images=1", "--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == [".fcn_outputs", "gt_0.png", "inp_0.png", "pred_0.png", "pred_fcn_0.png", "visualize.png"]
    image = np.asarray(Image.open(os.path.join(out, "inp_0.png")))
    fcn_labels, crf_labels = (labels[0].numpy() for labels in both.labels(image[None]))
    np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(out, "pred_fcn_0.png"))), ade20k.class_table().colourise(fcn_labels))
    np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(out, "pred_0.png"))), ade20k.class_table().colourise(crf_labels))
