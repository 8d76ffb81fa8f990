"""FusedAdam (fcn/optimizer.py) against Keras' own Adam."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fcn.optimizer import FusedAdam

SHAPES = [(3, 3, 4, 5), (5,), (7, 2)]


def variables(seed):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=shape).astype(np.float32)) for shape in SHAPES]


def gradient_steps(seed, steps=4):
    rng = np.random.default_rng(seed + 1)
    return [[rng.normal(size=shape).astype(np.float32) for shape in SHAPES] for _ in range(steps)]


def numpy_adam(weights, gradients, lr=1e-2, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Adam as written in Kingma and Ba's algorithm with Keras' epsilon placement, in float64."""
    weights = [np.asarray(w, np.float64) for w in weights]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    for t, step in enumerate(gradients, start=1):
        alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        for i, g in enumerate(step):
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g * g
            weights[i] = weights[i] - alpha * m[i] / (np.sqrt(v[i]) + epsilon)
    return weights, m, v


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_adam_follows_adam_and_keras(compiled):
    fused_vars, keras_vars = variables(0), variables(0)
    fused, reference = FusedAdam(learning_rate=1e-2), keras.optimizers.Adam(learning_rate=1e-2)
    fused.build(fused_vars)
    reference.build(keras_vars)

    def applier(optimizer, vars_):
        def apply(grads):
            optimizer.apply_gradients(zip(grads, vars_))

        return tf.function(apply) if compiled else apply

    apply_fused, apply_keras = applier(fused, fused_vars), applier(reference, keras_vars)
    steps = gradient_steps(0)
    for step in steps:
        apply_fused([tf.constant(g) for g in step])
        apply_keras([tf.constant(g) for g in step])
    expected, m, v = numpy_adam([w.numpy() for w in variables(0)], steps)
    assert int(fused.iterations.numpy()) == 4
    for i in range(len(SHAPES)):
        # Four steps of 1e-2 move the weights by ~4e-2: a wrong formula would be off by far more than 1e-6.
        np.testing.assert_allclose(fused_vars[i].numpy(), expected[i], rtol=0, atol=2e-6)
        np.testing.assert_allclose(fused_vars[i].numpy(), keras_vars[i].numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(fused._momentums[i].numpy(), m[i], rtol=1e-5, atol=1e-7)
        # The kernel rounds 1 - beta_2 in float32 (Keras in float64 before the cast): ~1.3e-5 relative in v.
        np.testing.assert_allclose(fused._velocities[i].numpy(), v[i], rtol=5e-5, atol=0)


def test_a_checkpoint_of_keras_adam_restores_into_fused_adam(tmp_path):
    """Runs written with keras.optimizers.Adam resume: the slots are the same objects."""
    old_vars = variables(0)
    old = keras.optimizers.Adam(learning_rate=1e-2)
    old.build(old_vars)
    old.apply_gradients(zip([tf.constant(g) for g in gradient_steps(0)[0]], old_vars))
    prefix = tf.train.Checkpoint(optimizer=old, weights=old_vars).save(str(tmp_path / "ckpt"))
    new_vars = variables(5)
    new = FusedAdam(learning_rate=1e-2)
    new.build(new_vars)
    tf.train.Checkpoint(optimizer=new, weights=new_vars).restore(prefix).assert_consumed()
    assert int(new.iterations.numpy()) == 1
    for a, b in zip(old.variables, new.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_amsgrad_is_refused():
    with pytest.raises(ValueError, match="amsgrad"):
        FusedAdam(amsgrad=True)


def test_under_loss_scaling_fused_adam_unscales_and_skips_as_keras_adam_does():
    """float16 training wraps the optimizer in Keras' LossScaleOptimizer: the gradients it hands on are
    unscaled, and a step with an infinite gradient is skipped (weights and slots untouched, scale halved)."""
    scale = 2.0**10
    fused_vars, keras_vars = variables(0), variables(0)
    fused = keras.optimizers.LossScaleOptimizer(FusedAdam(learning_rate=1e-2), initial_scale=scale)
    reference = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(learning_rate=1e-2), initial_scale=scale)
    fused.build(fused_vars)
    reference.build(keras_vars)

    def applier(optimizer, vars_):
        return tf.function(lambda grads: optimizer.apply_gradients(zip(grads, vars_)))

    apply_fused, apply_keras = applier(fused, fused_vars), applier(reference, keras_vars)
    steps = gradient_steps(0, steps=3)
    overflow = [np.where(np.arange(g.size).reshape(g.shape) == 0, np.inf, g).astype(np.float32) for g in steps[1]]
    for step in (steps[0], overflow, steps[2]):
        current = float(fused.dynamic_scale.numpy())
        assert current == float(reference.dynamic_scale.numpy())
        scaled = [tf.constant(g * current) for g in step]  # what the gradient of a loss scaled by it would be
        apply_fused(scaled)
        apply_keras(scaled)
    # Two applied steps (the overflow skipped), as plain Adam on the finite gradients.
    expected, _, _ = numpy_adam([w.numpy() for w in variables(0)], [steps[0], steps[2]])
    assert int(fused.inner_optimizer.iterations.numpy()) == 2
    assert float(fused.dynamic_scale.numpy()) == scale / 2 == float(reference.dynamic_scale.numpy())
    for i in range(len(SHAPES)):
        np.testing.assert_allclose(fused_vars[i].numpy(), expected[i], rtol=0, atol=2e-6)
        np.testing.assert_allclose(fused_vars[i].numpy(), keras_vars[i].numpy(), rtol=0, atol=1e-6)
        assert np.isfinite(fused.inner_optimizer._velocities[i].numpy()).all()
