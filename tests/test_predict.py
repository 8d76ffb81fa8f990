"""Tests of inference (fcn/predict.py), --mode=predict and --mode=export (fcn/export.py)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import NARROW_FLAGS, clear_argmax, multi_scale_probabilities, run_fcn, save_run
from PIL import Image

from fcn import config as config_lib
from fcn import export, inference, predict
from fcn.datasets import ade20k

# Multi-scale and flip inference as a user sets it: --set evaluate.scales=0.5,1.5 --set evaluate.flip=true,
# at each image's own size (the protocol at the training scale: tests/test_protocol.py).
SCALES = (0.5, 1.5)
OWN_SIZE = [("evaluate.test_size", "none")]
MULTI_SCALE = [("evaluate.scales", "0.5,1.5"), ("evaluate.flip", "true"), *OWN_SIZE]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory whose model predicts varying classes (random score_fr weights)."""
    logs = tmp_path_factory.mktemp("run")
    config, model = save_run(logs, tmp_path_factory.mktemp("no_data"))
    return logs, config, model


def test_single_view_is_the_models_softmax_at_the_images_size(tiny_run):
    _, _, model = tiny_run
    images = np.random.default_rng(0).integers(0, 256, (2, 37, 53, 3)).astype(np.uint8)
    predictor = inference.Predictor(model)
    logits = model(images).numpy()
    probabilities = predictor.probabilities(images).numpy()
    assert probabilities.shape == (2, 37, 53, 150)
    np.testing.assert_allclose(probabilities, tf.nn.softmax(logits).numpy(), atol=1e-6)
    np.testing.assert_array_equal(predictor.labels(images).numpy(), logits.argmax(-1))
    assert len(np.unique(logits.argmax(-1))) > 1  # the test model's predictions do vary


def test_multi_scale_and_flip_views_are_averaged_at_the_images_size(tiny_run):
    _, _, model = tiny_run
    image = np.random.default_rng(1).integers(0, 256, (1, 46, 70, 3)).astype(np.uint8)
    predictor = inference.Predictor(model, scales=(0.5, 1.0, 1.75), flip=True)
    expected = multi_scale_probabilities(model, image, (0.5, 1.0, 1.75), flip=True)  # (1, 46, 70, 150)

    probabilities = predictor.probabilities(image).numpy()

    assert probabilities.shape == (1, 46, 70, 150)
    np.testing.assert_allclose(probabilities, expected, atol=2e-4)  # float32 against float64
    # The views do change the answer: one view alone disagrees with their average on many pixels.
    assert np.mean(model(image).numpy().argmax(-1) != expected.argmax(-1)) > 0.05


def test_the_network_is_traced_once_for_all_views_and_both_methods():
    import keras

    class CountingModel:
        """A 1x1 convolution that counts the Python calls, i.e. the traces of the network."""

        def __init__(self):
            self.model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 1)])
            self.calls = 0

        def __call__(self, images, training=False):
            self.calls += 1
            return self.model(images, training=training)

    model = CountingModel()
    predictor = inference.Predictor(model, scales=(0.5, 1.0, 1.5), flip=True)  # 6 views
    images = np.random.default_rng(6).integers(0, 256, (1, 20, 28, 3)).astype(np.uint8)

    probabilities = predictor.probabilities(images).numpy()
    labels = predictor.labels(images[:, :15]).numpy()  # another size

    assert model.calls == 1  # a trace of FCN-8s takes seconds: not one per view, size and method
    np.testing.assert_allclose(probabilities, multi_scale_probabilities(model.model, images, (0.5, 1.0, 1.5), True), atol=1e-4)
    assert labels.shape == (1, 15, 28)


def test_predict_mode_averages_the_scales_and_flip_of_the_config(tmp_path, tiny_run):
    logs, _, model = tiny_run
    config = config_lib.load_config(str(logs / "config.yaml"), MULTI_SCALE)
    image = np.random.default_rng(4).integers(0, 256, (38, 62, 3)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")

    result = predict.predict_images(config, [str(tmp_path / "photo.png")], str(tmp_path / "out"), progress=False)

    assert list(result.written) == [str(tmp_path / "photo.png")] and not result.failed
    expected, clear = clear_argmax(multi_scale_probabilities(model, image[None], SCALES, flip=True)[0])
    written = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    np.testing.assert_array_equal(written[clear], expected[clear] + 1)
    mask = np.asarray(Image.open(tmp_path / "out" / "photo_mask.png"))
    np.testing.assert_array_equal(mask[clear], ade20k.palette()[expected[clear]])


def test_predict_on_a_folder_of_images_of_different_sizes(tmp_path, tiny_run):
    logs, _, model = tiny_run
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(2)
    images = {"a": rng.integers(0, 256, (50, 70, 3)), "b": rng.integers(0, 256, (33, 21, 3))}
    Image.fromarray(images["a"].astype(np.uint8)).save(folder / "a.png")
    Image.fromarray(images["b"].astype(np.uint8)).save(folder / "b.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    output = tmp_path / "out"

    result = run_fcn("--mode=predict", "--logs_dir", str(logs), *NARROW_FLAGS, "--image", str(folder),
                     "--output", str(output), "--no_progress", "--set", "evaluate.test_size=none")

    assert result.returncode == 1 and "Traceback" not in result.stderr  # one image could not be read
    assert "broken.jpg: not an image it can read" in result.stderr
    assert sorted(os.listdir(output)) == [
        ".fcn_predictions", "a.png", "a_mask.png", "a_overlay.png", "b.png", "b_mask.png", "b_overlay.png"
    ]
    for stem, image in images.items():
        height, width, _ = image.shape
        labels = Image.open(output / f"{stem}.png")
        assert labels.mode == "L" and labels.size == (width, height)
        values = np.asarray(labels)
        assert values.min() >= 1 and values.max() <= 150
        expected = model(image[None].astype(np.uint8)).numpy()[0].argmax(-1)
        np.testing.assert_array_equal(values, expected + 1)
        mask = np.asarray(Image.open(output / f"{stem}_mask.png"))
        np.testing.assert_array_equal(mask, ade20k.palette()[expected])
        overlay = np.asarray(Image.open(output / f"{stem}_overlay.png"))
        assert overlay.shape == (height, width, 3)
        np.testing.assert_allclose(overlay, 0.5 * image + 0.5 * mask, atol=1)


def test_export_round_trip_reproduces_the_keras_model(tmp_path, tiny_run):
    logs, _, model = tiny_run
    export_dir = tmp_path / "export"

    result = run_fcn("--mode=export", "--logs_dir", str(logs), *NARROW_FLAGS, "--output", str(export_dir),
                     "--set", "evaluate.test_size=none")

    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(export_dir) == ["1"] and tf.saved_model.contains_saved_model(str(export_dir / "1"))  # TF Serving's layout
    assert f"SavedModel: {export_dir / '1'}" in result.stdout
    assert (export_dir / "1" / "classes.txt").read_text().splitlines() == list(ade20k.class_names())
    loaded = tf.saved_model.load(str(export_dir / "1"))
    serving, full = loaded.signatures["serving_default"], loaded.signatures["probabilities"]
    rng = np.random.default_rng(3)
    for shape in ((1, 41, 29, 3), (2, 64, 96, 3)):  # any size, any batch
        images = rng.integers(0, 256, shape).astype(np.uint8)
        outputs, both = serving(images=tf.constant(images)), full(images=tf.constant(images))
        logits = model(images).numpy()
        assert list(outputs) == ["labels"]  # the default signature sends the labels only
        assert outputs["labels"].dtype == tf.uint8 and outputs["labels"].shape == shape[:3]
        np.testing.assert_array_equal(outputs["labels"].numpy(), logits.argmax(-1) + 1)
        np.testing.assert_array_equal(both["labels"].numpy(), outputs["labels"].numpy())
        np.testing.assert_allclose(both["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), atol=1e-6)
    # An existing folder of other files is never written into.
    refused = run_fcn("--mode=export", "--logs_dir", str(logs), *NARROW_FLAGS, "--output", str(logs))
    assert refused.returncode == 1 and "holds files that are not export versions (checkpoints, config.yaml)" in refused.stderr
    assert (logs / "config.yaml").exists()


def test_checkpoint_of_another_model_names_the_fix(tmp_path, tiny_run):
    logs, _, _ = tiny_run
    result = run_fcn("--mode=export", "--logs_dir", str(logs), *NARROW_FLAGS, "--set", "model.fc_channels=8", "--output", str(tmp_path / "x"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot restore" in result.stderr and "--config LOGS_DIR/config.yaml" in result.stderr


def test_export_averages_the_scales_and_flip_of_the_config(tmp_path, tiny_run):
    logs, _, model = tiny_run
    config = config_lib.load_config(str(logs / "config.yaml"), MULTI_SCALE)

    export_dir, _ = export.export(config, str(tmp_path / "export"))

    serving = tf.saved_model.load(export_dir).signatures["probabilities"]
    images = np.random.default_rng(5).integers(0, 256, (2, 34, 50, 3)).astype(np.uint8)
    outputs = serving(images=tf.constant(images))
    expected = multi_scale_probabilities(model, images, SCALES, flip=True)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=2e-4)
    labels, clear = clear_argmax(expected)
    np.testing.assert_array_equal(outputs["labels"].numpy()[clear], labels[clear] + 1)


def test_predict_reports_unopenable_and_odd_files_and_goes_on(tmp_path, tiny_run):
    """A symbolic link loop, a non-UTF-8 file name and a text file given as an image: messages, no traceback."""
    logs, _, model = tiny_run
    config = config_lib.load_config(str(logs / "config.yaml"), OWN_SIZE)
    folder = tmp_path / "photos"
    folder.mkdir()
    image = np.random.default_rng(3).integers(0, 256, (24, 40, 3)).astype(np.uint8)
    Image.fromarray(image).save(folder / "a.png")
    odd_name = os.fsdecode(b"B17_\xff\xfe.png")
    Image.fromarray(image).save(os.path.join(folder, odd_name))
    os.symlink("L.jpg", folder / "L.jpg")  # a link to itself
    readme = tmp_path / "README.md"
    readme.write_text("# not an image")
    output = tmp_path / "out"
    result = predict.predict_images(config, [str(folder), str(readme)], str(output), progress=False)
    assert sorted(os.path.basename(p) for p in result.written) == sorted(["a.png", odd_name])
    assert set(result.failed) == {str(folder / "L.jpg"), str(readme)}
    assert "L.jpg" in result.failed[str(folder / "L.jpg")]
    assert "README.md: not an image it can read" in result.failed[str(readme)]
    assert "{{function_node" not in result.failed[str(readme)]
    expected = model(image[None]).numpy()[0].argmax(-1) + 1
    for stem in ("a", os.path.splitext(odd_name)[0]):
        np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(output, stem + ".png"))), expected)


def test_predict_never_writes_over_an_input_or_a_file_it_did_not_write(tmp_path, tiny_run):
    logs, _, _ = tiny_run
    config = config_lib.load_config(str(logs / "config.yaml"), OWN_SIZE)
    folder = tmp_path / "photos"
    folder.mkdir()
    image = np.random.default_rng(4).integers(0, 256, (20, 30, 3)).astype(np.uint8)
    Image.fromarray(image).save(folder / "photo.png")
    (folder / "photo_mask.png").write_bytes(b"the user's own mask")
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    # --output the input's own folder: photo.png would become its label map.
    with pytest.raises(inference.InferenceError, match=r"would write over the input image .*photo.png"):
        predict.predict_images(config, [str(folder / "photo.png")], str(folder), progress=False)
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    # A folder with a file of the user's where an output would go.
    output = tmp_path / "out"
    output.mkdir()
    (output / "photo_overlay.png").write_bytes(b"mine")
    with pytest.raises(inference.InferenceError, match=r"photo_overlay.png exists and was not written by --mode=predict"):
        predict.predict_images(config, [str(folder / "photo.png")], str(output), progress=False)
    assert (output / "photo_overlay.png").read_bytes() == b"mine" and sorted(os.listdir(output)) == ["photo_overlay.png"]
    # Its own earlier outputs are written over: a rerun works.
    fresh = tmp_path / "fresh"
    for _ in range(2):
        result = predict.predict_images(config, [str(folder / "photo.png")], str(fresh), progress=False)
        assert list(result.written.values()) == [str(fresh / "photo.png")]
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before


def test_export_writes_versions_and_never_deletes_what_it_did_not_write(tmp_path):
    # The versioning does not depend on the network: a one-layer model keeps each SavedModel written quick.
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    predictor = inference.Predictor(model)

    def export_to(base):
        return export.export_predictor(predictor, str(base), 10_000)

    base = tmp_path / "serving"
    # What a killed export left: its marked temporary folder, removed by the next export.
    (base / ".partial-killed").mkdir(parents=True)
    (base / ".partial-killed" / export.PARTIAL_MARKER).write_text("")
    assert export_to(str(base)) == str(base / "1")
    assert export_to(str(base)) == str(base / "2")  # the next version; the first is kept
    assert sorted(os.listdir(base)) == ["1", "2"]
    assert all(tf.saved_model.contains_saved_model(str(base / v)) for v in ("1", "2"))
    # A gap or a higher version: one more than the highest.
    os.rename(base / "2", base / "7")
    assert export_to(str(base)) == str(base / "8")
    # A file of the user's inside BASE, or an unversioned SavedModel as BASE: refused, nothing deleted or added.
    (base / "notes.txt").write_text("my notes")
    with pytest.raises(inference.InferenceError, match=r"holds files that are not export versions \(notes.txt\)"):
        export_to(str(base))
    assert sorted(os.listdir(base)) == ["1", "7", "8", "notes.txt"] and (base / "notes.txt").read_text() == "my notes"
    os.rename(base / "1", tmp_path / "old")
    with pytest.raises(inference.InferenceError, match=r"is a SavedModel without a version folder .* Move its files into"):
        export_to(str(tmp_path / "old"))
    assert "1" not in os.listdir(tmp_path / "old")
    with pytest.raises(inference.InferenceError, match=r"exists and is not a folder"):
        export_to(str(base / "notes.txt"))
    # A symbolic link as --output: versions go into the folder it points to, the link stays.
    real = tmp_path / "storage" / "model"
    real.parent.mkdir()
    link = tmp_path / "link"
    os.symlink(real, link)
    assert export_to(str(link)) == str(link / "1")
    assert os.path.islink(link) and sorted(os.listdir(real)) == ["1"]
    assert os.listdir(real.parent) == ["model"]


@pytest.mark.parametrize("shape", [(1, 20, 30, 1), (1, 20, 30, 4), (20, 30, 3), (1, 0, 30, 3)])
def test_export_refuses_other_shapes_naming_the_expected_one(exported_own_size, shape):
    loaded = tf.saved_model.load(exported_own_size)
    for name in ("serving_default", "probabilities"):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must be uint8 of shape \(batch, height, width, 3\)"):
            loaded.signatures[name](images=tf.zeros(shape, tf.uint8))


def test_export_refuses_images_above_max_pixels(exported_own_size):
    serving = tf.saved_model.load(exported_own_size).signatures["serving_default"]
    assert serving(images=tf.zeros((1, 20, 30, 3), tf.uint8))["labels"].shape == (1, 20, 30)  # 600 = the limit
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"more than evaluate.max_pixels = 600 pixels"):
        serving(images=tf.zeros((1, 21, 30, 3), tf.uint8))


@pytest.fixture(scope="module")
def exported_own_size(tiny_run, tmp_path_factory):
    logs, _, _ = tiny_run
    config = config_lib.load_config(str(logs / "config.yaml"), [*OWN_SIZE, ("evaluate.max_pixels", 600)])
    return export.export(config, str(tmp_path_factory.mktemp("export")))[0]


def test_a_jpeg_above_the_default_max_pixels_is_refused_from_its_header_and_the_next_image_is_predicted(tmp_path, tiny_run, monkeypatch):
    logs, _, model = tiny_run
    config = config_lib.load_config(str(logs / "config.yaml"), OWN_SIZE)
    limit = config.evaluate.max_pixels
    assert limit == config_lib.EvaluateConfig().max_pixels == 100_000_000  # the default applies
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("L", (12000, 10000), 128).save(folder / "big.jpg", quality=50)  # a real 12000x10000 JPEG
    image = np.random.default_rng(5).integers(0, 256, (20, 30, 3)).astype(np.uint8)
    Image.fromarray(image).save(folder / "small.png")  # after big.jpg in the folder's order
    decoded = []
    read_image = inference.read_image
    monkeypatch.setattr(predict, "read_image", lambda path: decoded.append(os.path.basename(path)) or read_image(path))
    result = predict.predict_images(config, [str(folder)], str(tmp_path / "out"), progress=False)
    assert decoded == ["small.png"]  # the large file was refused before any decoding
    assert result.failed == {
        str(folder / "big.jpg"): f"{folder / 'big.jpg'}: 12000x10000 = 120,000,000 pixels, more than evaluate.max_pixels = "
        "100,000,000: skipped (raise it with --set evaluate.max_pixels=N if the memory allows, see docs/evaluation.md)"
    }
    expected = model(image[None]).numpy()[0].argmax(-1) + 1
    np.testing.assert_array_equal(np.asarray(Image.open(result.written[str(folder / "small.png")])), expected)
