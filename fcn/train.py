"""Training FCN-8s: the Adam loop, validation, TensorBoard, checkpoints and exact resume.

``train(config, root)`` is ``python FCN.py --mode=train``:

- the step is a compiled ``tf.function``: softmax cross-entropy from logits,
  averaged over labelled pixels (label 255 ignored), optional L2 weight decay,
  Adam;
- every ``val_every`` steps the fixed validation subset gives loss, pixel
  accuracy and mean IoU (one confusion matrix over the subset);
- TensorBoard events go to ``logs_dir/train`` and ``logs_dir/validation``;
  ``--debug`` adds histograms on summary steps only, through a second compiled
  step, so ordinary steps pay nothing for it;
- checkpoints (model, optimizer, step, examples consumed, best mIoU) go to
  ``logs_dir/checkpoints`` (the last ``keep_checkpoints``) and the best by
  validation mIoU to ``logs_dir/best``. TensorFlow writes a checkpoint's files
  before it atomically rewrites the ``checkpoint`` index, so a process killed
  mid-write leaves the previous checkpoint as the latest;
- the input pipeline is stateless (see ``fcn/data.py``): resuming only needs
  the number of examples consumed, so a resumed run sees exactly the batches
  an uninterrupted run would have seen;
- SIGINT / SIGTERM finish the current step, save a checkpoint and return;
  a non-finite loss stops the run without saving, naming the step.
"""

import dataclasses
import math
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf
import tqdm

from fcn import data, metrics, summaries
from fcn import model as model_lib
from fcn.config import Config

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
# Layers whose outputs are ReLU activations, for --debug histograms.
RELU_LAYERS = model_lib.VGG16_CONV_LAYERS + ("fc6", "fc7")


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""


@dataclasses.dataclass
class TrainResult:
    """How a call to ``train`` ended.

    Attributes:
      step: the step reached.
      status: ``finished``, ``interrupted`` or ``non_finite``.
      validation: the last validation results (empty if none ran).
      skipped: file -> reason of every unusable training file met.
    """

    step: int
    status: str
    validation: dict
    skipped: dict


def masked_cross_entropy_sum(labels, logits):
    """Summed softmax cross-entropy over labelled pixels, and their count.

    Args:
      labels: (B, H, W) train ids, 255 ignored.
      logits: (B, H, W, C) float32.

    Returns:
      (sum of the per-pixel losses, number of labelled pixels), float32 scalars.
    """
    labels = tf.cast(labels, tf.int32)
    labelled = labels != data.IGNORE_LABEL
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(labelled, labels, 0), logits=logits)
    return tf.reduce_sum(tf.where(labelled, losses, 0.0)), tf.reduce_sum(tf.cast(labelled, tf.float32))


def _find_checkpoint(path: str) -> str:
    """A checkpoint prefix from a prefix, a checkpoint folder or a run directory."""
    for candidate in (path, os.path.join(path, CHECKPOINTS_DIR)):
        if os.path.isdir(candidate):
            latest = tf.train.latest_checkpoint(candidate)
            if latest:
                return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    raise TrainingError(f"--init_from {path}: no checkpoint there (give a run directory, a checkpoint folder or a prefix)")


class Trainer:
    """Holds a run's model, optimizer, checkpoints and compiled steps."""

    def __init__(self, config: Config, root: str):
        self.config = config
        self.root = root
        train = config.train
        keras.utils.set_random_seed(train.seed)
        if train.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.checkpoint_dir = os.path.join(config.logs_dir, CHECKPOINTS_DIR)
        resuming = tf.train.latest_checkpoint(self.checkpoint_dir) is not None
        # A resumed run takes its weights from the checkpoint: no need to fetch VGG16 weights.
        self.model = model_lib.build_fcn8s(
            config.data.num_classes,
            vgg_weights="none" if resuming or train.init_from else config.model.vgg_weights,
            fc_channels=config.model.fc_channels,
            dropout=config.model.dropout,
            model_dir=config.model.model_dir,
        )
        self.optimizer = keras.optimizers.Adam(learning_rate=train.learning_rate)
        self.optimizer.build(self.model.trainable_variables)  # slots must exist before a restore
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.examples_seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples_seen")
        self.best_mean_iou = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_mean_iou")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            step=self.step,
            examples_seen=self.examples_seen,
            best_mean_iou=self.best_mean_iou,
            # Dropout's random state: without it a resumed run would draw other masks.
            dropout_seeds=[layer.seed_generator.state for layer in self.model.layers if isinstance(layer, keras.layers.Dropout)],
        )
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.checkpoint_dir, max_to_keep=train.keep_checkpoints)
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model, step=self.step), os.path.join(config.logs_dir, BEST_DIR), max_to_keep=1
        )
        self.resumed_from = None
        if resuming:
            self.resumed_from = self.manager.latest_checkpoint
            try:
                self.checkpoint.restore(self.resumed_from).assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as error:
                raise TrainingError(
                    f"cannot resume from {self.resumed_from}: {error}. The run directory {config.logs_dir} holds a run "
                    "of another model configuration; use a new --logs_dir or the config.yaml written there."
                ) from None
        elif train.init_from:
            source = _find_checkpoint(train.init_from)
            tf.train.Checkpoint(model=self.model).restore(source).expect_partial()
            self.resumed_from = None
            self.initialised_from = source
        self.variables = self.model.trainable_variables
        self.kernels = [v for v in self.variables if v.path.endswith("kernel")]
        self.train_step = tf.function(self._train_step)
        self.summary_step = tf.function(self._summary_step)
        self.eval_step = tf.function(self._eval_step)
        if train.debug:
            outputs = {name: self.model.get_layer(name).output for name in RELU_LAYERS}
            self.probe = keras.Model(self.model.input, [self.model.output, outputs])

    # -- compiled steps ---------------------------------------------------------

    def _loss(self, images, labels, training):
        logits = self.model(images, training=training)
        loss_sum, count = masked_cross_entropy_sum(labels, logits)
        return loss_sum / tf.maximum(count, 1.0), logits

    def _regularised(self, loss):
        if self.config.train.weight_decay:
            loss += self.config.train.weight_decay * tf.add_n([tf.nn.l2_loss(k) for k in self.kernels])
        return loss

    def _train_step(self, images, labels):
        with tf.GradientTape() as tape:
            loss, _ = self._loss(images, labels, training=True)
            total = self._regularised(loss)
        gradients = tape.gradient(total, self.variables)
        self.optimizer.apply_gradients(zip(gradients, self.variables))
        return loss

    def _summary_step(self, images, labels):
        """A training step that also returns what the summaries show."""
        with tf.GradientTape() as tape:
            if self.config.train.debug:
                logits, activations = self.probe(images, training=True)
                loss_sum, count = masked_cross_entropy_sum(labels, logits)
                loss = loss_sum / tf.maximum(count, 1.0)
            else:
                loss, logits = self._loss(images, labels, training=True)
                activations = {}
            total = self._regularised(loss)
        gradients = tape.gradient(total, self.variables)
        self.optimizer.apply_gradients(zip(gradients, self.variables))
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return loss, predictions, activations, gradients if self.config.train.debug else []

    def _eval_step(self, images, labels):
        logits = self.model(images, training=False)
        loss_sum, count = masked_cross_entropy_sum(labels, logits)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        matrix = metrics.confusion_matrix(labels, predictions, self.config.data.num_classes)
        return loss_sum, count, matrix, predictions

    # -- the loop ------------------------------------------------------------------

    def validate(self, dataset, writer) -> dict:
        """Loss, pixel accuracy and mean IoU over the validation subset, written to TensorBoard."""
        num_classes = self.config.data.num_classes
        matrix = np.zeros((num_classes, num_classes), np.int64)
        loss_sum = labelled = 0.0
        first = None
        for batch in dataset:
            batch_loss, batch_count, batch_matrix, predictions = self.eval_step(batch["image"], batch["label"])
            loss_sum += float(batch_loss)
            labelled += float(batch_count)
            matrix += batch_matrix.numpy()
            if first is None:
                first = (batch["image"], batch["label"], predictions)
        result = metrics.scores(matrix)
        values = {
            "loss": loss_sum / max(labelled, 1.0),
            "pixel_accuracy": result["pixel_accuracy"],
            "mean_iou": result["mean_iou"],
        }
        step = int(self.step)
        summaries.write_scalars(writer, step, values)
        if first is not None:
            summaries.write_images(writer, step, *first, max_outputs=self.config.train.image_summaries)
        writer.flush()
        if values["mean_iou"] > float(self.best_mean_iou):
            self.best_mean_iou.assign(values["mean_iou"])
            self.best_manager.save(checkpoint_number=step)
        return values

    def run(self, progress: bool = True) -> TrainResult:
        config, train = self.config, self.config.train
        writers = summaries.writers(config.logs_dir)
        validation = data.validation_dataset(config.data, self.root, train.batch_size, train.val_images)
        start = int(self.step)
        if start >= train.max_steps:
            print(f"{self.manager.latest_checkpoint} is at step {start} >= --max_steps {train.max_steps}: nothing to do")
            return TrainResult(start, "finished", {}, {})
        if self.resumed_from:
            print(f"resuming from {self.resumed_from} at step {start}")
        stream = data.training_dataset(
            config.data, self.root, train.batch_size, seed=train.seed, start_example=int(self.examples_seen)
        )
        batches = iter(stream)
        skipped = data.SkipReport()
        last_validation = {}
        if start == 0:
            last_validation = self.validate(validation, writers["validation"])
            print(_validation_line(0, last_validation))
        stop_signal = []

        def request_stop(signum, _frame):
            if stop_signal:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            stop_signal.append(signum)

        previous_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm.tqdm(total=train.max_steps, initial=start, unit="step", desc="training", disable=not progress, dynamic_ncols=True)
        status = "finished"
        timer_start, timer_images = time.perf_counter(), 0
        try:
            while int(self.step) < train.max_steps:
                batch = next(batches)
                if skipped.record(batch):
                    tqdm.tqdm.write(skipped.summary())
                step = int(self.step) + 1
                summary_now = step % train.summary_every == 0 or step == train.max_steps
                if summary_now:
                    loss, predictions, activations, gradients = self.summary_step(batch["image"], batch["label"])
                else:
                    loss = self.train_step(batch["image"], batch["label"])
                loss = float(loss)
                if not math.isfinite(loss):
                    status = "non_finite"
                    tqdm.tqdm.write(
                        f"training stopped: the loss became {loss} at step {step}; nothing was saved after it. "
                        f"The last good checkpoint is {self.manager.latest_checkpoint or '(none)'}; "
                        "try a lower --learning_rate."
                    )
                    break
                self.step.assign(step)
                self.examples_seen.assign_add(train.batch_size)
                timer_images += train.batch_size
                elapsed = time.perf_counter() - timer_start
                images_per_second = timer_images / max(elapsed, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", images_per_s=f"{images_per_second:.2f}")
                if summary_now:
                    summaries.write_scalars(
                        writers["train"],
                        step,
                        {"loss": loss, "learning_rate": float(self.optimizer.learning_rate), "images_per_second": images_per_second},
                    )
                    summaries.write_images(
                        writers["train"], step, batch["image"], batch["label"], predictions, train.image_summaries
                    )
                    if train.debug:
                        summaries.write_debug(writers["train"], step, activations, gradients, self.variables)
                    writers["train"].flush()
                    timer_start, timer_images = time.perf_counter(), 0
                if step % train.val_every == 0 or step == train.max_steps:
                    last_validation = self.validate(validation, writers["validation"])
                    tqdm.tqdm.write(_validation_line(step, last_validation))
                if step % train.checkpoint_every == 0 or step == train.max_steps:
                    self.manager.save(checkpoint_number=step)
                if stop_signal:
                    status = "interrupted"
                    path = self.manager.save(checkpoint_number=step)
                    tqdm.tqdm.write(f"{signal.Signals(stop_signal[0]).name}: stopped at step {step}, checkpoint {path}")
                    break
        finally:
            bar.close()
            for s, handler in previous_handlers.items():
                signal.signal(s, handler)
            for writer in writers.values():
                writer.close()
        if skipped:
            print(skipped.summary())
        return TrainResult(int(self.step), status, last_validation, dict(skipped.skipped))


def _validation_line(step: int, values: dict) -> str:
    return (
        f"step {step}: validation loss {values['loss']:.4f}, pixel accuracy {values['pixel_accuracy']:.4f}, "
        f"mean IoU {values['mean_iou']:.4f}"
    )


def train(config: Config, root: str, progress: bool = True) -> TrainResult:
    """Trains (or resumes training) as the config says; see the module docstring."""
    return Trainer(config, root).run(progress)
