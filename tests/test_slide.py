"""Sliding-window inference (evaluate.mode: slide) against a NumPy transcription of mmsegmentation's window grid."""

import keras
import numpy as np
import pytest

from fcn.datasets import ade20k
from fcn.inference import Predictor


def position_dependent_model(num_classes=4):
    """Logits that depend on the whole window (a 1x1 convolution plus the window's mean), not on the pixel alone."""
    images = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 128, offset=-1)(images)
    local = keras.layers.Conv2D(num_classes, 1, kernel_initializer="glorot_uniform", name="local")(x)
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    context = keras.layers.Conv2D(num_classes, 1, kernel_initializer="glorot_uniform", name="context")(pooled)
    return keras.Model(images, keras.layers.Add()([local, keras.layers.Rescaling(20.0)(context)]))


def reference_slide(model, image, window, stride):
    """mmsegmentation's slide_inference on one image, softmax probabilities averaged over the windows."""
    height, width = image.shape[:2]
    crop_h, crop_w = min(window[0], height), min(window[1], width)
    rows = max(height - crop_h + stride[0] - 1, 0) // stride[0] + 1
    columns = max(width - crop_w + stride[1] - 1, 0) // stride[1] + 1
    total, count = 0.0, np.zeros((height, width))
    for row in range(rows):
        for column in range(columns):
            y_end, x_end = min(row * stride[0] + crop_h, height), min(column * stride[1] + crop_w, width)
            y, x = max(y_end - crop_h, 0), max(x_end - crop_w, 0)
            logits = np.asarray(model(image[None, y:y_end, x:x_end].astype(np.float32)))[0].astype(np.float64)
            probabilities = np.exp(logits - logits.max(-1, keepdims=True))
            probabilities /= probabilities.sum(-1, keepdims=True)
            padded = np.zeros((height, width, logits.shape[-1]))
            padded[y:y_end, x:x_end] = probabilities
            total = total + padded
            count[y:y_end, x:x_end] += 1
    return total / count[..., None]


@pytest.mark.parametrize("size, window, stride", [((37, 53), (16, 20), (7, 9)), ((24, 30), (24, 16), (8, 16)), ((10, 12), (16, 20), (5, 5))])
def test_slide_matches_the_reference_grid(size, window, stride):
    keras.utils.set_random_seed(1)
    model = position_dependent_model()
    rng = np.random.default_rng(0)
    image = (rng.integers(0, 96, (*size, 3)) + np.linspace(0, 159, size[1])[None, :, None]).astype(np.uint8)  # brighter to the right
    expected = reference_slide(model, image, window, stride)
    predictor = Predictor(model, classes=ade20k.class_table(4), slide=(window, stride))
    probabilities = predictor.probabilities(image[None]).numpy()[0]
    np.testing.assert_allclose(probabilities, expected, atol=2e-5)
    labels = predictor.labels(image[None]).numpy()[0]
    clear = np.sort(expected, -1)[..., -1] - np.sort(expected, -1)[..., -2] > 1e-4
    np.testing.assert_array_equal(labels[clear], expected.argmax(-1)[clear])
    # The whole image at once differs: the windows see other context (the test would pass a whole-image predictor otherwise).
    whole = Predictor(model, classes=ade20k.class_table(4)).probabilities(image[None]).numpy()[0]
    if size[0] > window[0] or size[1] > window[1]:
        assert np.abs(whole - expected).max() > 1e-3
