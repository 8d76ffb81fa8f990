"""Adam whose per-variable update is TensorFlow's fused ``ResourceApplyAdam`` kernel.

Keras' Adam writes the update as about ten element-wise ops per variable, each
a pass over the variable in memory; for FCN-8s's 135.7M parameters that was
the largest fixed cost of a training step on a CPU (``bench/layers.py``).
``ResourceApplyAdam`` computes the same formulas in one pass:

    alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m += (g - m) * (1 - beta_1)
    v += (g^2 - v) * (1 - beta_2)
    w -= alpha * m / (sqrt(v) + epsilon)

which is Keras' ``Adam.update_step`` (epsilon added to sqrt(v), not to v), so
the slots and the checkpoints are those of ``keras.optimizers.Adam`` and so are
the results up to rounding: the kernel forms 1 - beta_2 in float32, which moves
v by about 1e-5 relative (``tests/test_optimizer.py``). It needs no
compilation, so a run starts without XLA's compile time, and it works the same
under a tf.distribute strategy (Keras calls ``update_step`` per device there).
"""

import keras
import tensorflow as tf


def _handle(variable):
    """The resource handle of a Keras or TensorFlow variable (the local copy under a strategy's update)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


class FusedAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` (no amsgrad) with each variable's update as one fused kernel."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("FusedAdam does not implement amsgrad")

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype

        def constant(value):
            return tf.cast(value, dtype)

        step = constant(self.iterations + 1)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(constant(self.beta_1), step),
            beta2_power=tf.pow(constant(self.beta_2), step),
            lr=constant(learning_rate),
            beta1=constant(self.beta_1),
            beta2=constant(self.beta_2),
            epsilon=constant(self.epsilon),
            grad=constant(gradient),
        )


def make_optimizer(train) -> keras.optimizers.Optimizer:
    """The optimizer of ``train.optimizer`` (a ``TrainConfig``), at ``train.learning_rate``.

    ``adam`` is ``FusedAdam``; ``sgd`` is Keras' SGD, whose momentum slots
    (one per trainable variable, with ``train.momentum`` above 0) are part of
    the checkpoint like Adam's. Keras' SGD keeps the learning rate inside its
    velocity (``v = momentum * v - lr * g; w += v``), as TensorFlow's did:
    under a constant rate it is PyTorch's SGD exactly; under a decaying one the
    steps differ from PyTorch's by the rate's change over a step.
    """
    builders = {
        "adam": lambda: FusedAdam(learning_rate=train.learning_rate),
        "sgd": lambda: keras.optimizers.SGD(learning_rate=train.learning_rate, momentum=train.momentum, nesterov=train.nesterov),
    }
    return builders[train.optimizer]()


def set_learning_rate(optimizer: keras.optimizers.Optimizer, value: float) -> None:
    """Sets the rate the next ``apply_gradients`` uses (through a loss-scale wrapper too)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    inner.learning_rate.assign(value)
