"""TensorBoard summaries of a run: scalars, coloured images and ``--debug`` histograms.

Train and validation events go to ``logs_dir/train`` and ``logs_dir/validation``
under the same tags, so TensorBoard draws both loss curves in one chart.
"""

import os

import tensorflow as tf

from fcn import ade20k


def writers(logs_dir: str) -> dict[str, tf.summary.SummaryWriter]:
    """The ``train`` and ``validation`` event writers of a run."""
    return {name: tf.summary.create_file_writer(os.path.join(logs_dir, name)) for name in ("train", "validation")}


def colorize(labels: tf.Tensor) -> tf.Tensor:
    """Train ids (B, H, W) -> uint8 RGB (B, H, W, 3) in the ADE20K colours; ignored (255) is black."""
    lookup = tf.concat([tf.constant(ade20k.palette()), tf.zeros([256 - ade20k.NUM_CLASSES, 3], tf.uint8)], axis=0)
    return tf.gather(lookup, tf.cast(labels, tf.int32))


def write_scalars(writer: tf.summary.SummaryWriter, step: int, values: dict) -> None:
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(name, value)


def write_images(writer, step: int, images, labels, predictions, max_outputs: int) -> None:
    """Input, ground truth and prediction, the last two in the ADE20K colours.

    Args:
      images: (B, H, W, 3) uint8 RGB.
      labels: (B, H, W) train ids, 255 ignored.
      predictions: (B, H, W) train ids.
    """
    with writer.as_default(step=step):
        tf.summary.image("input", images, max_outputs=max_outputs)
        tf.summary.image("ground_truth", colorize(labels), max_outputs=max_outputs)
        tf.summary.image("prediction", colorize(predictions), max_outputs=max_outputs)


def write_debug(writer, step: int, activations: dict, gradients: list, variables: list) -> None:
    """Histograms and zero fractions of ReLU activations, gradients and variables.

    Args:
      activations: layer name -> its ReLU output.
      gradients: one gradient per variable, in the order of ``variables``.
      variables: the trainable variables.
    """
    with writer.as_default(step=step):
        for name, activation in activations.items():
            tf.summary.histogram(f"activations/{name}", activation)
            tf.summary.scalar(f"activations/{name}/zero_fraction", tf.math.zero_fraction(activation))
        for variable, gradient in zip(variables, gradients):
            tf.summary.histogram(f"gradients/{variable.path}", gradient)
        tf.summary.scalar("gradients/global_norm", tf.linalg.global_norm(gradients))
        for variable in variables:
            tf.summary.histogram(f"variables/{variable.path}", variable)
