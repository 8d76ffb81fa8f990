"""Tests of the TensorBoard summaries (fcn/summaries.py)."""

import glob

import numpy as np
import pytest
import tensorflow as tf

from fcn import summaries
from fcn.datasets import ade20k


def read_tensors(directory):
    out = {}
    for path in glob.glob(f"{directory}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out[value.tag] = (value.metadata.plugin_data.plugin_name, tf.make_ndarray(value.tensor))
    return out


def test_histogram_counts_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(40, 50, 7)).astype(np.float32)
    values[0, 0, :3] = [np.nan, np.inf, -np.inf]  # left out of the buckets, counted in a scalar
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default(step=3):
        assert summaries.histogram("weights", values) == 3
        assert summaries.histogram("constant", np.full(10, 2.5, np.float32)) == 0
    writer.close()
    tensors = read_tensors(str(tmp_path))
    plugin, table = tensors["weights"]
    assert plugin == "histograms" and table.shape == (30, 3)
    finite = values[np.isfinite(values)]
    expected, edges = np.histogram(finite, bins=30, range=(finite.min(), finite.max()))
    np.testing.assert_allclose(table[:, 0], edges[:-1], rtol=1e-6)
    np.testing.assert_allclose(table[:, 1], edges[1:], rtol=1e-6)
    # Bucket boundaries may fall differently by a value or two in float32.
    assert table[:, 2].sum() == finite.size
    assert np.abs(table[:, 2] - expected).max() <= 2
    _, constant = tensors["constant"]
    assert constant[:, 2].sum() == 10 and constant[0, 0] == 2.5
    assert float(tensors["weights/non_finite_values"][1]) == 3 and "constant/non_finite_values" not in tensors


def test_colorize_uses_the_ade20k_palette():
    labels = tf.constant([[0, 149], [255, 6]], tf.uint8)
    colours = summaries.colorize(labels).numpy()
    np.testing.assert_array_equal(colours[0, 0], ade20k.palette()[0])
    np.testing.assert_array_equal(colours[0, 1], ade20k.palette()[149])
    np.testing.assert_array_equal(colours[1, 0], [0, 0, 0])
    np.testing.assert_array_equal(colours[1, 1], [140, 140, 140])  # road


def test_debug_view_counts_nan_and_inf(tmp_path):
    import keras

    kernel = keras.Variable(np.array([[1.0, np.nan], [2.0, 3.0]], np.float32), name="kernel")
    gradient = tf.constant([[np.inf, np.nan], [np.nan, np.nan]])
    writer = tf.summary.create_file_writer(str(tmp_path))
    summaries.write_debug(writer, 1, {"relu1": tf.constant([0.0, 1.0])}, [gradient], [kernel])
    writer.close()
    tensors = read_tensors(str(tmp_path))
    scalar = lambda tag: float(tensors[tag][1])
    assert scalar("activations/non_finite_values") == 0
    assert scalar("gradients/non_finite_values") == 4 and scalar(f"gradients/{kernel.path}/non_finite_values") == 4
    assert f"gradients/{kernel.path}" not in tensors  # nothing finite to draw, but the count shows it
    assert scalar("variables/non_finite_values") == 1 and f"variables/{kernel.path}" in tensors


def test_scalar_tags_put_loss_accuracy_and_miou_first(tmp_path):
    keys = ["loss", "pixel_accuracy", "mean_iou", "learning_rate", "images_per_second"]
    for name in ("train", "validation"):
        writer = tf.summary.create_file_writer(str(tmp_path / name))
        summaries.write_scalars(writer, 1, {key: 0.5 for key in keys})
        writer.close()
    train, validation = read_tensors(str(tmp_path / "train")), read_tensors(str(tmp_path / "validation"))
    assert set(train) == set(validation) == {
        "1_metrics/loss", "1_metrics/pixel_accuracy", "1_metrics/mean_iou",
        "2_training/learning_rate", "2_training/images_per_second",
    }
    # TensorBoard orders charts by group, the part before the first '/': the metrics come
    # first, then speed and learning rate, then the --debug and CRF groups.
    groups = sorted({tag.split("/")[0] for tag in train} | {"activations", "gradients", "variables", "crf"})
    assert groups == ["1_metrics", "2_training", "activations", "crf", "gradients", "variables"]
    with pytest.raises(KeyError, match="no TensorBoard tag for the scalar 'los'"):
        summaries.scalar_tag("los")
