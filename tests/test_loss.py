"""The training loss against NumPy: ignored pixels, the global-batch mean over replicas, weight decay."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

from fcn import config as config_lib
from fcn import train, train_state


def numpy_loss(labels, logits):
    """Mean softmax cross-entropy over the labelled pixels (label 255 ignored), and its gradient."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    labelled = labels != 255
    safe = np.where(labelled, labels, 0)
    picked = np.take_along_axis(log_probabilities, safe[..., None], -1)[..., 0]
    count = labelled.sum()
    loss = -(picked * labelled).sum() / count
    one_hot = np.eye(logits.shape[-1])[safe]
    gradient = (np.exp(log_probabilities) - one_hot) * labelled[..., None] / count
    return loss, gradient, count


@pytest.fixture
def batch():
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, (4, 5, 6, 7)).astype(np.float32)
    labels = rng.integers(0, 7, (4, 5, 6)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = 255  # ignored pixels
    labels[1] = 255  # an example without any labelled pixel
    return labels, logits


def test_masked_cross_entropy_matches_numpy_value_and_gradient(batch):
    labels, logits = batch
    expected, expected_gradient, count = numpy_loss(labels, logits)
    logits_tensor = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits_tensor)
        loss_sum, labelled = train.masked_cross_entropy_sum(tf.constant(labels), logits_tensor)
        loss = loss_sum / labelled
    assert int(labelled) == count
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    gradient = tape.gradient(loss, logits_tensor).numpy()
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-5, atol=1e-9)
    assert np.all(gradient[labels == 255] == 0)  # ignored pixels give nothing, not class 0's gradient


def tiny_state(*overrides, strategy=None):
    """A narrow FCN-8s, its Adam and a config, under ``strategy`` (default: one device).

    Every weight is random and non-zero (score layers and biases included), so that the logits depend on
    every layer, the loss is not flat, and a decay of the biases would move them.
    """
    config = config_lib.load_config(
        f"{REPO}/configs/sample.yaml",
        [("model.fc_channels", 8), ("model.width", 0.125), ("model.dropout", 0.0), ("data.data_dir", "unused"), *overrides],
    )
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(3)
    state = train_state.create_train_state(config, strategy)
    rng = np.random.default_rng(4)
    for variable in state.model.trainable_variables:
        if variable.path.endswith("bias") or variable.path.split("/")[0].startswith("score"):
            variable.assign(rng.normal(0, 0.1, variable.shape).astype(np.float32))
    return config, strategy, state


def test_the_train_step_reports_the_numpy_loss_of_its_logits(batch):
    config, strategy, state = tiny_state()
    rng = np.random.default_rng(5)
    images = tf.constant(rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8))
    labels = rng.integers(0, 150, (2, 32, 32)).astype(np.int32)
    labels[:, :8] = 255
    logits = state.model(images, training=True).numpy()  # no dropout: the step's own logits
    expected, _, _ = numpy_loss(labels, logits)
    output = train.make_train_step(state, config, strategy)(images, tf.constant(labels))
    np.testing.assert_allclose(float(output.loss), expected, rtol=1e-5)
    assert bool(output.finite) and output.predictions.shape == (2, 32, 32)


def test_two_replicas_report_the_mean_over_the_labelled_pixels_of_the_global_batch(two_replicas):
    """``make_train_step`` on two replicas: each divides by the global count of labelled pixels.

    The halves have different numbers of labelled pixels, so a per-replica mean (or the mean of the two)
    is another number. The update is the one a single device makes on the whole batch.
    """
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, 150, (4, 32, 32)).astype(np.int32)
    labels[0, :24] = 255  # replica 0 (examples 0, 1) has far fewer labelled pixels than replica 1
    labels[1] = 255
    labels[3, :, :5] = 255
    counts = [(labels[k : k + 2] != 255).sum() for k in (0, 2)]
    assert counts[0] < counts[1] / 2
    config, strategy, state = tiny_state(strategy=two_replicas)
    logits = state.model(images, training=True).numpy()  # no dropout: the step's own logits
    expected, _, _ = numpy_loss(labels, logits)
    per_replica_means = [numpy_loss(labels[k : k + 2], logits[k : k + 2])[0] for k in (0, 2)]
    assert min(abs(sum(per_replica_means) - expected), abs(np.mean(per_replica_means) - expected)) > 0.01

    def halves(array):
        return strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(array[2 * context.replica_id_in_sync_group : 2 * context.replica_id_in_sync_group + 2])
        )

    output = train.make_train_step(state, config, strategy)(halves(images), halves(labels))
    assert strategy.num_replicas_in_sync == 2
    np.testing.assert_allclose(float(output.loss), expected, rtol=1e-5)
    # The gradient of the global mean: the weights after the step are those of one device on the whole batch.
    config, one_device, single = tiny_state()
    train.make_train_step(single, config, one_device)(tf.constant(images), tf.constant(labels))
    for mirrored, plain in zip(state.model.trainable_variables, single.model.trainable_variables):
        np.testing.assert_allclose(mirrored.numpy(), plain.numpy(), rtol=1e-4, atol=1e-6, err_msg=plain.path)


def test_weight_decay_pulls_every_kernel_towards_zero_and_leaves_biases():
    """Adam's first step moves each weight by the learning rate against the sign of its gradient.

    With a weight decay that dominates the data gradient, that sign is the kernel's own: every
    kernel entry shrinks. Without it, most do not.
    """
    rng = np.random.default_rng(6)
    images = tf.constant(rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8))
    labels = tf.constant(rng.integers(0, 150, (2, 32, 32)).astype(np.int32))
    shrunk, biases_after = {}, {}
    for decay in (0.0, 1e4):
        config, strategy, state = tiny_state(("train.weight_decay", decay), ("train.learning_rate", 1e-4))
        kernels = {v.path: v.numpy() for v in state.model.trainable_variables if v.path.endswith("kernel")}
        train.make_train_step(state, config, strategy)(images, labels)
        after = {v.path: v.numpy() for v in state.model.trainable_variables}
        big = {name: np.abs(k) > 1e-2 for name, k in kernels.items()}  # where decay clearly dominates
        shrunk[decay] = np.mean(np.concatenate([(np.abs(after[n]) < np.abs(k))[big[n]] for n, k in kernels.items()]))
        biases_after[decay] = {name: value for name, value in after.items() if name.endswith("bias")}
    assert shrunk[1e4] > 0.999
    assert shrunk[0.0] < 0.7  # without decay: the data gradient's signs, no pull towards zero
    # Biases are not decayed: from the same non-zero start and batch they move exactly as without decay.
    assert min(np.abs(v).min() for v in biases_after[0.0].values()) > 0
    for name, value in biases_after[0.0].items():
        np.testing.assert_allclose(biases_after[1e4][name], value, rtol=1e-6, atol=1e-9, err_msg=name)
    # The decay term itself: weight_decay x k is its gradient.
    kernel = tf.Variable(np.random.default_rng(8).normal(size=(3, 3, 2, 4)).astype(np.float32))
    with tf.GradientTape() as tape:
        decay_loss = train.weight_decay_loss([kernel], 0.5)
    np.testing.assert_allclose(float(decay_loss), 0.5 * 0.5 * np.sum(kernel.numpy() ** 2), rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(decay_loss, kernel).numpy(), 0.5 * kernel.numpy(), rtol=1e-6)
