"""Tests of the TensorBoard summaries (fcn/summaries.py)."""

import glob

import numpy as np
import tensorflow as tf

from fcn import ade20k, summaries


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
    values[0, 0, :3] = [np.nan, np.inf, -np.inf]  # non-finite values are left out, not counted
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default(step=3):
        summaries.histogram("weights", values)
        summaries.histogram("constant", np.full(10, 2.5, np.float32))
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


def test_colorize_uses_the_ade20k_palette():
    labels = tf.constant([[0, 149], [255, 6]], tf.uint8)
    colours = summaries.colorize(labels).numpy()
    np.testing.assert_array_equal(colours[0, 0], ade20k.palette()[0])
    np.testing.assert_array_equal(colours[0, 1], ade20k.palette()[149])
    np.testing.assert_array_equal(colours[1, 0], [0, 0, 0])
    np.testing.assert_array_equal(colours[1, 1], [140, 140, 140])  # road
