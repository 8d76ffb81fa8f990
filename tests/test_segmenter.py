"""fcn.Segmenter: the labels of --mode=predict from Python, for a run and for crfasrnn_keras's file (fcn/segmenter.py)."""

import glob
import io
import os

import numpy as np
import pytest
from conftest import SAMPLE_ROOT, run_fcn, save_run
from PIL import Image

from fcn import Segmenter, inference
from fcn.datasets import voc

FIXTURE_IMAGES = sorted(glob.glob(os.path.join(SAMPLE_ROOT, "images", "validation", "*.jpg")))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run (random score weights: the labels vary over an image) and its Segmenter."""
    logs = tmp_path_factory.mktemp("run")
    save_run(logs, tmp_path_factory.mktemp("no_data"))
    return logs, Segmenter.from_run(str(logs))


@pytest.fixture(scope="module")
def small(run):
    """The same run fitting every image into 128 x 96 (then scored at the image's size): quick to call often."""
    logs, _ = run
    return Segmenter.from_run(str(logs), overrides=[("evaluate.test_size", [128, 96])])


def test_labels_are_those_predict_writes_for_a_run(run, small, tmp_path):
    logs, _ = run
    segmenter = small
    output = tmp_path / "predictions"
    result = run_fcn("--mode=predict", "--config", str(logs / "config.yaml"), "--logs_dir", str(logs), "--image", *FIXTURE_IMAGES,
                     "--output", str(output), "--no_progress", "--set", "evaluate.test_size=128,96")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(FIXTURE_IMAGES) == 3
    for path in FIXTURE_IMAGES:
        stem = os.path.splitext(os.path.basename(path))[0]
        labels = segmenter(path)
        written = np.asarray(Image.open(output / f"{stem}.png"))
        image = np.asarray(Image.open(path).convert("RGB"))
        assert labels.shape == image.shape[:2] and labels.dtype == np.int32
        assert len(np.unique(labels)) > 3  # a varied map: a real comparison
        np.testing.assert_array_equal(segmenter.classes.to_values(labels), written)
        np.testing.assert_array_equal(segmenter.colourise(labels), np.asarray(Image.open(output / f"{stem}_mask.png")))
        np.testing.assert_array_equal(segmenter.overlay(path, labels), np.asarray(Image.open(output / f"{stem}_overlay.png")))


def test_a_path_bytes_pil_image_and_array_give_the_same_labels_and_a_list_is_a_batch(small):
    segmenter = small
    path = FIXTURE_IMAGES[0]
    expected = segmenter(path)
    with open(path, "rb") as f:
        contents = f.read()
    picture = Image.open(path)
    array = np.asarray(picture.convert("RGB"))
    for image in (contents, picture, array):
        np.testing.assert_array_equal(segmenter(image), expected)
    # A list: the two images of one size run as one batch, the third alone; answers in the order given.
    other = np.ascontiguousarray(array[::-1])
    batch = segmenter([array, FIXTURE_IMAGES[1], other])
    assert isinstance(batch, list) and len(batch) == 3
    np.testing.assert_array_equal(batch[0], expected)
    np.testing.assert_array_equal(batch[1], segmenter(FIXTURE_IMAGES[1]))
    np.testing.assert_array_equal(batch[2], segmenter(other))
    stacked = segmenter(np.stack([array, other]))
    assert stacked.shape == (2, *array.shape[:2])
    np.testing.assert_array_equal(stacked[1], batch[2])
    # Grey and RGBA images are converted as the input pipeline converts them.
    np.testing.assert_array_equal(segmenter(np.dstack([array, np.full(array.shape[:2], 7, np.uint8)])), expected)


def test_probabilities_sum_to_one_and_their_argmax_is_the_labels(small):
    segmenter = small
    image = np.asarray(Image.open(FIXTURE_IMAGES[2]).convert("RGB"))
    probabilities = segmenter.probabilities(image)
    assert probabilities.shape == (*image.shape[:2], 150) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    second, first = np.sort(probabilities, axis=-1)[..., -2:].transpose(2, 0, 1)
    clear = first - second > 1e-4
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(probabilities.argmax(-1)[clear], segmenter(image)[clear])


def test_class_shares_and_the_class_table(run):
    _, segmenter = run
    labels = np.array([[3, 3, 3], [3, 7, 0]], np.int32)
    assert segmenter.class_shares(labels) == [(3, 4 / 6), (0, 1 / 6), (7, 1 / 6)]
    assert segmenter.classes.names[0] == "wall" and segmenter.classes.num_classes == 150
    assert segmenter.source.endswith("ckpt-1")


def test_bad_inputs_are_refused_with_a_message(run, tmp_path):
    logs, _ = run
    small = Segmenter.from_run(str(logs), overrides=[("evaluate.max_pixels", 600)])
    assert small(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30)  # 600 pixels: the limit
    with pytest.raises(inference.InferenceError, match=r"a 30x21 image = 630 pixels, more than evaluate.max_pixels = 600"):
        small(np.zeros((21, 30, 3), np.uint8))
    big = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(big)
    with pytest.raises(inference.InferenceError, match=r"big.png: 40x40 = 1,600 pixels, more than evaluate.max_pixels"):
        small(str(big))
    with pytest.raises(inference.InferenceError, match=r"1,600 pixels, more than evaluate.max_pixels"):
        small(big.read_bytes())  # refused from the header
    with pytest.raises(inference.InferenceError, match=r"images are uint8 RGB 0..255; got an array of float32"):
        small(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(inference.InferenceError, match=r"not an image it can read"):
        small(b"plain text, not an image")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), np.uint8)).save(buffer, "JPEG")
    with pytest.raises(inference.InferenceError, match=r"not an image it can read"):
        small(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # a truncated JPEG
    with pytest.raises(inference.InferenceError, match=r"config.yaml does not exist"):
        Segmenter.from_run(str(tmp_path))
    with pytest.raises(inference.InferenceError, match=r"no checkpoint there"):
        Segmenter.from_run(str(logs), checkpoint="best")  # this run never validated


@pytest.fixture(scope="module")
def released_file(tmp_path_factory):
    """A crfrnn_keras_model.h5 in crfasrnn_keras's layout, random weights, as tests/test_crfasrnn.py writes it."""
    from test_crfasrnn import write_released_file

    return write_released_file(tmp_path_factory.mktemp("crfasrnn"))[1]


@pytest.mark.slow  # 500 x 500 through VGG16 and a 10-iteration CRF, three times
def test_labels_are_those_predict_writes_for_the_released_file(released_file, tmp_path):
    image = FIXTURE_IMAGES[0]
    output = tmp_path / "predictions"
    result = run_fcn("--mode=predict", "--pretrained", released_file, "--image", image, "--output", str(output), "--no_progress")
    assert result.returncode == 0, result.stderr[-3000:]
    segmenter = Segmenter.from_pretrained(released_file)
    assert segmenter.classes.names == voc.class_table().names
    labels = segmenter(image)
    stem = os.path.splitext(os.path.basename(image))[0]
    written = np.asarray(Image.open(output / f"{stem}.png"))
    assert labels.shape == written.shape and len(np.unique(labels)) > 1
    np.testing.assert_array_equal(labels, written)  # VOC's values are its train ids
    probabilities = segmenter.probabilities(image)
    assert probabilities.shape == (*labels.shape, 21)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert np.mean(probabilities.argmax(-1) == labels) > 0.999
