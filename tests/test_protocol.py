"""The test protocol (fcn/predict.py ``Predictor`` with ``evaluate.test_size``) checked against an independent computation.

ADE20K's usual protocol (mmsegmentation's test pipeline): each image is resized to fit the test size
(long edge, short edge) keeping its aspect ratio, the model runs there, its logits are resized back
to the image's size and the labels are taken and scored there.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import NARROW_OVERRIDES, SAMPLE_ROOT, bilinear_resize, clear_argmax, multi_scale_probabilities, save_run

from fcn import config as config_lib
from fcn import datasets, errors, inference, predict
from fcn.datasets import decode

# The sample config's training scale: data.base_size [160, 96].
TEST_SIZE = (160, 96)
FIXTURE = os.path.join(SAMPLE_ROOT, "images", "validation", "ADE_val_00000003.jpg")  # 400 x 300


def fit_factor(height, width, test_size):
    """The protocol's resize factor, written out: the largest that fits (long, short) keeping the aspect ratio."""
    if test_size is None:
        return 1.0
    long_edge, short_edge = test_size
    return min(long_edge / max(height, width), short_edge / min(height, width))


def protocol_probabilities(model, images, test_size, scales=(1.0,), flip=False):
    """The protocol in numpy: each view resized to round(size x factor x scale), logits resized back, softmax, mean.

    Returns:
      float64 (B, H, W, C) at the images' own size.
    """
    factor = fit_factor(*np.shape(images)[1:3], test_size)
    return multi_scale_probabilities(model, images, [factor * scale for scale in scales], flip)


def protocol_logits(model, images, test_size):
    """The single view in numpy: the logits of the image resized to the test size, resized back (B, H, W, C)."""
    height, width = np.shape(images)[1:3]
    factor = fit_factor(height, width, test_size)
    scaled = bilinear_resize(images, max(round(height * factor), 1), max(round(width * factor), 1))
    return bilinear_resize(np.asarray(model(np.asarray(scaled, np.float32), training=False)), height, width)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An FCN-8s whose predictions vary over the image (random score_fr weights)."""
    _, model = save_run(tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("no_data"))
    return model


@pytest.fixture(scope="module")
def fixture_image():
    return decode.read_image_file(FIXTURE)[None]  # (1, 300, 400, 3)


def test_single_view_is_resize_to_the_test_size_run_resize_back_softmax(tiny_model, fixture_image):
    assert fit_factor(300, 400, TEST_SIZE) == 96 / 300  # the short edge binds: the network sees 96 x 128
    predictor = inference.Predictor(tiny_model, test_size=TEST_SIZE)

    probabilities = predictor.probabilities(fixture_image).numpy()
    labels = predictor.labels(fixture_image).numpy()

    expected = protocol_probabilities(tiny_model, fixture_image, TEST_SIZE)
    assert probabilities.shape == labels.shape + (150,) and labels.shape == (1, 300, 400)  # the image's own size
    np.testing.assert_allclose(probabilities, expected, atol=2e-4)
    best, clear = clear_argmax(expected, margin=4e-4, min_clear=0.5)
    np.testing.assert_array_equal(labels[clear], best[clear])
    # One resize code for both methods; the labels came in 2 bands of rows (BAND_VALUES), the probabilities whole.
    assert 300 * 400 * 150 > inference.BAND_VALUES
    np.testing.assert_array_equal(labels, probabilities.argmax(-1))
    # The protocol does change the answer: the model at the image's own size disagrees on most pixels.
    own_size = tiny_model(fixture_image).numpy().argmax(-1)
    assert np.mean(own_size != labels) > 0.3


def test_scales_and_flip_are_relative_to_the_test_size(tiny_model, fixture_image):
    fixture_image = fixture_image[:, :150, :200]  # a quarter of the pixels to compare; fitted as 96 x 128 all the same
    assert fit_factor(150, 200, TEST_SIZE) == 96 / 150
    scales = (0.75, 1.25)
    predictor = inference.Predictor(tiny_model, scales=scales, flip=True, test_size=TEST_SIZE)

    probabilities = predictor.probabilities(fixture_image).numpy()
    labels = predictor.labels(fixture_image).numpy()

    expected = protocol_probabilities(tiny_model, fixture_image, TEST_SIZE, scales, flip=True)
    np.testing.assert_allclose(probabilities, expected, atol=2e-4)
    best, clear = clear_argmax(expected, margin=4e-4, min_clear=0.5)
    assert labels.shape == (1, 150, 200)
    np.testing.assert_array_equal(labels[clear], best[clear])
    # The network ran at round(96 x 0.75) x round(128 x 0.75) and round(96 x 1.25) x round(128 x 1.25).
    assert [tuple(predictor.view_size((150, 200), s).numpy()) for s in scales] == [(72, 96), (120, 160)]


def test_own_size_keeps_whole_image_inference(tiny_model):
    images = np.random.default_rng(0).integers(0, 256, (1, 37, 53, 3)).astype(np.uint8)
    config = config_lib.load_config(None, [("evaluate.test_size", "none"), *NARROW_OVERRIDES])
    predictor = inference.make_predictor(tiny_model, config)
    assert predictor.test_size is None
    np.testing.assert_array_equal(predictor.labels(images).numpy(), tiny_model(images).numpy().argmax(-1))


def test_labels_band_by_band_are_the_whole_maps_argmax(tiny_model, fixture_image):
    """A band of 3 rows (100 bands of the 300-row image) gives the labels of one band of the whole image."""
    classes = 150
    whole = inference.Predictor(tiny_model, scales=(0.5, 1.0), test_size=TEST_SIZE, band_values=10**9)
    banded = inference.Predictor(tiny_model, scales=(0.5, 1.0), test_size=TEST_SIZE, band_values=3 * 400 * classes)
    np.testing.assert_array_equal(banded.labels(fixture_image).numpy(), whole.probabilities(fixture_image).numpy().argmax(-1))


def test_the_config_default_follows_data_base_size():
    config = config_lib.load_config(None)
    assert config.evaluate.test_size == "base_size" and config.evaluate.resolved_test_size(config.data.base_size) == (2048, 512)
    moved = config_lib.load_config(None, [("data.base_size", "1024,256")])
    assert moved.evaluate.resolved_test_size(moved.data.base_size) == (1024, 256)
    sample = config_lib.load_config(os.path.join(os.path.dirname(SAMPLE_ROOT), "..", "..", "configs", "sample.yaml"))
    assert sample.evaluate.resolved_test_size(sample.data.base_size) == tuple(sample.data.base_size) == (160, 96)
    for own in ("none", "0,0", None):
        config = config_lib.load_config(None, [("evaluate.test_size", own)])
        assert config.evaluate.resolved_test_size(config.data.base_size) is None
    for bad, message in (("big", "evaluate.test_size must be a pair"), ("-5,3", "two positive sizes"),
                         ("1,2,3", "evaluate.test_size must be a pair")):
        with pytest.raises(errors.ConfigError, match=message):
            config_lib.load_config(None, [("evaluate.test_size", bad)])


def test_evaluate_predict_and_the_savedmodel_run_the_configs_test_size(tmp_path):
    """The three modes on the real fixture images, each against the protocol computed in numpy at the config's
    test size (160 x 96, not the images' own). The largest image is above evaluate.max_pixels and is refused by
    each mode, which goes on with the next image."""
    import json
    import shutil

    from PIL import Image

    from fcn import evaluate, export

    root = str(tmp_path / "ADEChallengeData2016")
    shutil.copytree(SAMPLE_ROOT, root)
    logs = tmp_path / "run"
    _, model = save_run(logs, root)
    # 683 x 512 = 349,696 pixels is above the limit; 500 x 364 and 400 x 300 are below.
    config = config_lib.load_config(str(logs / "config.yaml"), [("evaluate.test_size", "160,96"), ("evaluate.max_pixels", 200_000)])
    images = {k: os.path.join(root, "images", "validation", f"ADE_val_0000000{k}.jpg") for k in (1, 2, 3)}

    evaluated = evaluate.evaluate(config, root, output_dir=str(tmp_path / "out"), save_predictions=str(tmp_path / "sub"),
                                  progress=False)
    predicted = predict.predict_images(config, [images[1], images[3]], str(tmp_path / "pred"), progress=False)
    version, _ = export.export(config, str(tmp_path / "export"))
    serving = tf.saved_model.load(version).signatures["serving_default"]

    message = "683x512 = 349,696 pixels, more than evaluate.max_pixels = 200,000: skipped"
    assert evaluated.images == 2 and list(evaluated.too_large) == [images[1]] and message in evaluated.too_large[images[1]]
    assert sorted(os.listdir(tmp_path / "sub")) == [".fcn_outputs", "ADE_val_00000002.png", "ADE_val_00000003.png"]
    assert list(predicted.failed) == [images[1]] and message in predicted.failed[images[1]]
    assert list(predicted.written) == [images[3]]  # the image after the refused one
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than evaluate.max_pixels = 200,000|more than evaluate.max_pixels = 200000"):
        serving(images=tf.constant(decode.read_image_file(images[1])[None]))

    for k in (2, 3):
        image = decode.read_image_file(images[k])[None]  # (1, H, W, 3)
        # Labels are the argmax of the resized logits (here ~1e3): compared where float32's rounding cannot swap
        # the best two.
        logits = protocol_logits(model, image, TEST_SIZE)[0]
        expected, clear = clear_argmax(logits, margin=1e-5 * np.abs(logits).max(), min_clear=0.9)
        # The test size is what decides: the model at the image's own size disagrees on most pixels.
        assert np.mean(tiny_model_labels(model, image)[clear] != expected[clear]) > 0.3
        stem = f"ADE_val_0000000{k}"
        outputs = {"evaluate": np.asarray(Image.open(tmp_path / "sub" / f"{stem}.png")).astype(int) - 1}  # values 1..150
        if k == 3:
            outputs["predict"] = np.asarray(Image.open(tmp_path / "pred" / f"{stem}.png")).astype(int) - 1
        outputs["export"] = serving(images=tf.constant(image))["labels"].numpy()[0].astype(int) - 1
        for mode, labels in outputs.items():
            assert labels.shape == expected.shape, mode
            np.testing.assert_array_equal(labels[clear], expected[clear], err_msg=f"{mode}, {stem}")
    with open(tmp_path / "out" / "metrics.json") as f:
        written = json.load(f)
    assert written["test_size"] == [160, 96] and message in written["skipped"][images[1]]


def tiny_model_labels(model, images):
    """The model's labels at the images' own size (no protocol)."""
    return np.asarray(model(images, training=False)).argmax(-1)[0]


# ---------------------------------------------------------------------------
# What the protocol is for: a model trained at one scale, shown images at another.

STRIPES = 96  # image side; the training scale (data.base_size) fits it exactly


def stripes_scene(rng):
    """A 96x96 grey image of two regions told apart only by the scale of their texture.

    Label 1 (ADE20K wall): stripes 2 pixels wide; label 2 (building): stripes 6
    pixels wide; the same two grey levels, one random border (vertical or
    horizontal), one random phase. Shown at half size, the wide stripes are as
    wide as the narrow ones were in training.
    """
    position = np.arange(STRIPES)
    border = rng.integers(24, 72)
    label = np.where(position < border, 1, 2)[None, :].repeat(STRIPES, 0)
    if rng.random() < 0.5:
        label = label.T
    if rng.random() < 0.5:
        label = 3 - label
    phase = rng.integers(0, 12)
    narrow, wide = ((position + phase) // 2) % 2, ((position + phase) // 6) % 2
    stripes = np.where(label == 1, narrow[None, :], wide[None, :])
    return (60 + 140 * stripes)[..., None].repeat(3, -1).astype(np.uint8), label.astype(np.uint8)


@pytest.mark.slow
def test_a_model_trained_at_one_scale_scores_higher_on_half_size_images_with_the_protocol(tmp_path):
    """Half-size validation images, fitted back into the training scale, score as the model was trained to.

    Texture scale is the only cue of the stripes data, so a model shown the
    images at half their training size without the protocol mistakes the wide
    stripes for the narrow ones. Measured (80 steps of the narrow backbone,
    width 0.125, AMD EPYC): pixel accuracy 0.97 at the training size; at half
    size 0.93 with the protocol, 0.70 without; mean IoU 0.87 against 0.51. (On the sample data, whose classes differ in
    colour as much as in texture, an 80-step model scores within 0.01 at half
    size with and without the protocol: the stripes make the scale the cue.)
    """
    from conftest import write_pair
    from PIL import Image

    from fcn import metrics, train

    root = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split, count, prefix in (("training", 32, "ADE_train"), ("validation", 8, "ADE_val")):
        for k in range(count):
            write_pair(str(root), split, f"{prefix}_{k + 1:08d}", *stripes_scene(rng), image_format="PNG")
    config = config_lib.load_config(None, [
        ("data.data_dir", str(root)), ("logs_dir", str(tmp_path / "run")), ("data.base_size", "96,96"),
        ("data.ratio_range", "1,1"), ("data.crop_size", "64,64"), ("data.val_size", "96,96"), ("data.photometric", "false"),
        ("model.vgg_weights", "none"), ("model.fc_channels", 16), ("model.width", 0.125), ("train.batch_size", 4),
        ("train.learning_rate", 1e-3), ("train.max_steps", 80), ("train.val_every", 100000), ("train.summary_every", 1000), ("train.val_images", 4),
    ])
    assert config.evaluate.resolved_test_size(config.data.base_size) == (96, 96)  # the protocol's default: the training scale
    train.train(config, str(root), train.setup_process(config), progress=False)
    model, _ = inference.restore_model(config)

    def scores(test_size, factor):
        predictor = inference.Predictor(model, test_size=test_size)
        matrix = metrics.ConfusionMatrix(150)
        for image_path, annotation_path in datasets.list_split(str(root), "validation").pairs:
            image, label = decode.load_example(image_path, annotation_path)
            side = round(STRIPES * factor)
            image = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
            label = np.asarray(Image.fromarray(label.astype(np.uint8)).resize((side, side), Image.NEAREST))
            matrix.update(label[None], predictor.labels(image[None]))
        return metrics.scores(matrix.matrix)

    trained = scores((96, 96), 1.0)
    assert trained["pixel_accuracy"] > 0.9  # it learned the two textures at their scale
    protocol, own_size = scores((96, 96), 0.5), scores(None, 0.5)
    assert protocol["pixel_accuracy"] > own_size["pixel_accuracy"] + 0.15, (protocol, own_size)
    assert protocol["mean_iou"] > own_size["mean_iou"] + 0.15, (protocol, own_size)
