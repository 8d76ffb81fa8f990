"""The state of a training run and where its first weights come from.

- ``create_train_state(config, strategy)``: the model, the optimizer (Adam or SGD) and the counters
  (step, examples consumed, best validation mIoU), as one checkpointable state.
- ``initialise(state, config, strategy)``: resume from the run's newest intact
  checkpoint, or take another run's weights (``--init_from``, also
  crfasrnn_keras's released file), or load the backbone's pretrained weights
  (``model.pretrained_weights``).
"""

import dataclasses
import os

import keras
import tensorflow as tf

from fcn import checkpoints, crfasrnn_keras, schedules, weights
from fcn import model as model_lib
from fcn.config import Config
from fcn.datasets import ade20k
from fcn.errors import TrainingError
from fcn.optimizer import make_optimizer, set_learning_rate


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint holds, and the checkpoint objects that write it.

    Attributes:
      model: FCN-8s (with its CRF stage if ``model.crf``).
      optimizer: Adam or SGD (``train.optimizer``; wrapped for loss scaling under float16).
      step, examples_seen, best_mean_iou: host-side counters.
      checkpoint: model, optimizer, counters and dropout's random state.
      best_checkpoint: the model and step, for ``LOGS_DIR/best``.
    """

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    examples_seen: tf.Variable
    best_mean_iou: tf.Variable
    checkpoint: tf.train.Checkpoint
    best_checkpoint: tf.train.Checkpoint

    def variables(self) -> list:
        """Every variable ``checkpoint`` writes."""
        seeds = [layer.seed_generator.state for layer in _dropout_layers(self.model)]
        counters = [self.step, self.examples_seen, self.best_mean_iou]
        return list(self.model.weights) + list(self.optimizer.variables) + seeds + counters


def _dropout_layers(model):
    # A layer with rate 0 has no random state.
    return [layer for layer in model.layers if getattr(layer, "seed_generator", None) is not None]


def create_train_state(config: Config, strategy: tf.distribute.Strategy) -> TrainState:
    """Builds the model (fresh weights), the optimizer with its slots, and the counters.

    The model has ``data.num_classes`` outputs: ``train`` sets it from the
    dataset's class table; left at 0, the default recipe's (ADE20K's 150).
    """
    with strategy.scope():
        model = model_lib.build_from_config(config.model, config.data.num_classes or ade20k.NUM_CLASSES)
        optimizer = make_optimizer(config.train)
        if config.train.mixed_precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)  # slots must exist before a restore
    # Plain variables, read and written by the loop, not by replicas.
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    examples_seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples_seen")
    best_mean_iou = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_mean_iou")
    checkpoint = tf.train.Checkpoint(
        model=model,
        optimizer=optimizer,
        step=step,
        examples_seen=examples_seen,
        best_mean_iou=best_mean_iou,
        # Dropout's random state: without it a resumed run would draw other masks.
        dropout_seeds=[layer.seed_generator.state for layer in _dropout_layers(model)],
    )
    best_checkpoint = tf.train.Checkpoint(model=model, step=step)
    return TrainState(model, optimizer, step, examples_seen, best_mean_iou, checkpoint, best_checkpoint)


def initialise(state: TrainState, config: Config, strategy: tf.distribute.Strategy, report=print) -> str:
    """Resumes the run, or starts it from ``--init_from`` or the pretrained VGG16 weights.

    Returns:
      The checkpoint resumed from, or "" for a new run.

    Raises:
      TrainingError: the run directory holds checkpoints none of which is
        intact, or a run of another model configuration; ``--init_from`` does
        not fit.
      weights.WeightsError: unusable pretrained weights.
    """
    train = config.train
    checkpoint_dir = os.path.join(config.logs_dir, checkpoints.CHECKPOINTS_DIR)
    if checkpoints.has_checkpoint_files(checkpoint_dir):
        try:
            prefix = checkpoints.restore(state.checkpoint, checkpoint_dir, state.variables(), report=report)
        except checkpoints.MismatchError as error:
            raise TrainingError(
                f"{error}. The run directory {config.logs_dir} holds a run of another model "
                "configuration; use a new --logs_dir, or the config.yaml written there"
            ) from None
        except checkpoints.CheckpointError as error:
            raise TrainingError(f"cannot resume: {error}") from None
        # The checkpoint holds the learning rate it was saved with; the schedule of the config decides.
        set_learning_rate(state.optimizer, schedules.learning_rate(train, int(state.step) + 1))
        return prefix
    if train.init_from:
        _initialise_from(state.model, train.init_from, report)
    else:
        with strategy.scope():
            weights.load_vgg_weights(state.model, config.model.pretrained_weights, config.model.model_dir)
    return ""


def _initialise_from(model: keras.Model, source: str, report) -> None:
    """Takes the model weights of another run (not its optimizer or step).

    Every FCN layer must find its weights there. The CRF stage takes its
    weights too when ``source`` has them, and otherwise keeps its initial
    values: an FCN run starts an FCN + CRF run. A Keras ``.h5`` file is
    crfasrnn_keras's released model (``crfasrnn_keras.load_crfasrnn_keras_into_fcn8s``).
    """
    if crfasrnn_keras.is_crfasrnn_keras_file(source):
        try:
            notes = crfasrnn_keras.load_crfasrnn_keras_into_fcn8s(model, source)
        except weights.WeightsError as error:
            raise TrainingError(f"--init_from {source}: {error}") from None
        report(f"initialised from {source} (crfasrnn_keras's FCN-8s + CRF-RNN)")
        for note in notes:
            report(f"  {note}")
        return
    has_crf = model_lib.has_crf(model)
    fcn_view = keras.Model(model.input, model.get_layer("logits").output) if has_crf else model
    try:
        prefix = checkpoints.restore_model_weights(fcn_view, source, report=report)
    except checkpoints.MismatchError as error:
        raise TrainingError(
            f"--init_from {source}: its weights do not fit this model (data.num_classes, model.fc_channels and "
            f"model.backbone must be those of its run): {error}"
        ) from None
    except checkpoints.CheckpointError as error:
        raise TrainingError(f"--init_from {source}: {error}") from None
    if has_crf and checkpoints.holds_layer_weights(prefix, model_lib.CRF_WEIGHTS):
        checkpoints.restore_model_weights(model, prefix, report=report)
