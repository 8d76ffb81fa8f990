"""Training FCN-8s: the Adam loop, validation, TensorBoard, checkpoints and exact resume.

``train(config, root)`` is ``python FCN.py --mode=train``:

- the step is a compiled ``tf.function``: softmax cross-entropy from logits,
  averaged over labelled pixels (label 255 ignored), optional L2 weight decay,
  Adam;
- every ``val_every`` steps the fixed validation subset gives loss, pixel
  accuracy and mean IoU (one confusion matrix over the subset);
- TensorBoard events go to ``logs_dir/train`` and ``logs_dir/validation``;
  ``--debug`` adds histograms on summary steps only, through a second compiled
  step, so ordinary steps pay nothing for it; with the CRF stage
  (``model.crf``) its parameters are written on summary steps;
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
import json
import math
import os
import shutil
import signal
import tempfile
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


def restore_model_weights(model, prefix: str) -> None:
    """Restores every weight of ``model`` from a checkpoint holding ``model=...``.

    The checkpoint's other objects (optimizer, counters, a CRF stage the model
    lacks) are left out.

    Raises:
      ValueError: a weight of the model that the checkpoint lacks or holds in
        another shape; the message is TensorFlow's first line.
    """
    try:
        tf.train.Checkpoint(model=model).restore(prefix).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise ValueError(str(error).splitlines()[0]) from None


def make_strategy(config) -> tf.distribute.Strategy:
    """The tf.distribute strategy that ``train.strategy`` names.

    Must run before TensorFlow initialises its devices when ``train.cpu_devices``
    splits the CPU.
    """
    train = config.train
    if train.cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * train.cpu_devices)
        except RuntimeError as error:
            raise TrainingError(f"train.cpu_devices={train.cpu_devices}: {error}") from None
    if train.strategy == "mirrored":
        devices = [d.strip() for d in train.devices.split(",") if d.strip()]
        if not devices and train.cpu_devices and not tf.config.list_physical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices or None)
    if train.strategy == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise TrainingError("--strategy multi_worker reads the cluster from the TF_CONFIG environment variable, which is not set")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief_task(config) -> bool:
    """Whether this process will be the chief, from the config and ``TF_CONFIG`` alone (no TensorFlow set-up).

    For messages printed before the strategy exists: with ``multi_worker`` the
    chief is the task of type ``chief``, or worker 0 when the cluster has none.
    """
    if config.train.strategy != "multi_worker":
        return True
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    except ValueError:
        return True  # make_strategy reports the problem
    task = tf_config.get("task", {})
    if "chief" in tf_config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes summaries, checkpoints and reports."""
    return bool(strategy.extended.should_checkpoint and strategy.extended.should_save_summary)


class Trainer:
    """Holds a run's strategy, model, optimizer, checkpoints and compiled steps."""

    def __init__(self, config: Config, root: str):
        self.config = config
        self.root = root
        train = config.train
        self.strategy = make_strategy(config)
        self.chief = is_chief(self.strategy)
        keras.utils.set_random_seed(train.seed)
        if train.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.mixed_precision.set_global_policy("float32" if train.mixed_precision == "float32" else f"mixed_{train.mixed_precision}")
        self.checkpoint_dir = os.path.join(config.logs_dir, CHECKPOINTS_DIR)
        # Only the chief writes into the run directory; the other workers must still
        # take part in every save (it may synchronise them), into a scratch folder.
        self.scratch_dir = None if self.chief else tempfile.mkdtemp(prefix="fcn-worker-")
        save_root = config.logs_dir if self.chief else self.scratch_dir
        resuming = tf.train.latest_checkpoint(self.checkpoint_dir) is not None
        with self.strategy.scope():
            # A resumed run takes its weights from the checkpoint: no need to fetch VGG16 weights.
            self.model = model_lib.build_from_config(
                config.model, config.data.num_classes, vgg_weights="none" if resuming or train.init_from else None
            )
            optimizer = keras.optimizers.Adam(learning_rate=train.learning_rate)
            if train.mixed_precision == "float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)  # slots must exist before a restore
        # Host-side counters: plain variables, read and written by the loop, not by replicas.
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
            # (A layer with rate 0 has no random state.)
            dropout_seeds=[
                layer.seed_generator.state for layer in self.model.layers if getattr(layer, "seed_generator", None) is not None
            ],
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(save_root, CHECKPOINTS_DIR), max_to_keep=train.keep_checkpoints
        )
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model, step=self.step), os.path.join(save_root, BEST_DIR), max_to_keep=1
        )
        self.resumed_from = None
        if resuming:
            self.resumed_from = tf.train.latest_checkpoint(self.checkpoint_dir)
            try:
                self.checkpoint.restore(self.resumed_from).assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as error:
                raise TrainingError(
                    f"cannot resume from {self.resumed_from}: {error}. The run directory {config.logs_dir} holds a run "
                    "of another model configuration; use a new --logs_dir or the config.yaml written there."
                ) from None
            # The checkpoint holds the learning rate it was saved with; the config (and --learning_rate) decides.
            self.optimizer.learning_rate = train.learning_rate
        elif train.init_from:
            source = _find_checkpoint(train.init_from)
            self._initialise_from(source)
        self.crf_layer = self.model.get_layer("crf") if model_lib.has_crf(self.model) else None
        self.variables = self.model.trainable_variables
        self.kernels = [v for v in self.variables if v.path.endswith("kernel")]
        if train.debug:
            outputs = {name: self.model.get_layer(name).output for name in RELU_LAYERS}
            self.probe = keras.Model(self.model.input, [self.model.output, outputs])
        replica_step = tf.function(self._replica_step, jit_compile=train.jit_compile or None)
        self.train_step = tf.function(lambda images, labels: self._distributed_step(replica_step, images, labels, False))
        self.summary_step = tf.function(lambda images, labels: self._distributed_step(self._replica_step, images, labels, True))
        self.eval_step = tf.function(self._eval_step)

    def _initialise_from(self, source: str) -> None:
        """Takes the model weights of checkpoint ``source`` (not its optimizer or step).

        Every FCN layer must find its weights there. The CRF stage takes its
        weights too when ``source`` has them, and otherwise keeps its initial
        values: an FCN run starts an FCN + CRF run.
        """
        fcn_view = keras.Model(self.model.input, self.model.get_layer("logits").output) if model_lib.has_crf(self.model) else self.model
        try:
            restore_model_weights(fcn_view, source)
        except ValueError as error:
            raise TrainingError(
                f"--init_from {source}: its weights do not fit this model (data.num_classes, model.fc_channels must "
                f"be those of its run): {error}"
            ) from None
        if fcn_view is not self.model:
            tf.train.Checkpoint(model=self.model).restore(source).expect_partial()

    # -- compiled steps ---------------------------------------------------------

    def _replica_step(self, images, labels, with_outputs=False):
        """One replica's share of a step.

        The loss is the replica's summed pixel losses over the labelled pixels of
        the whole global batch; the optimizer sums the replicas' gradients, which
        gives the gradient of the global-batch mean.
        """
        replica_context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            activations = {}
            if with_outputs and self.config.train.debug:
                logits, activations = self.probe(images, training=True)
            else:
                logits = self.model(images, training=True)
            loss_sum, count = masked_cross_entropy_sum(labels, logits)
            global_count = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, count)
            loss = loss_sum / tf.maximum(global_count, 1.0)
            total = loss
            if self.config.train.weight_decay:
                # Each replica adds its share, so that the summed gradients carry it once.
                decay = self.config.train.weight_decay * tf.add_n([tf.nn.l2_loss(k) for k in self.kernels])
                total += decay / tf.cast(replica_context.num_replicas_in_sync, tf.float32)
            scaled = self.optimizer.scale_loss(total)
        gradients = tape.gradient(scaled, self.variables)
        self.optimizer.apply_gradients(zip(gradients, self.variables))
        if not with_outputs:
            return loss
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return loss, predictions, activations, gradients if self.config.train.debug else []

    def _distributed_step(self, replica_step, images, labels, with_outputs):
        """Runs a step on every replica; returns the global loss (and replica 0's outputs for summaries)."""
        results = self.strategy.run(replica_step, args=(images, labels) + ((True,) if with_outputs else ()))
        if not with_outputs:
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, results, axis=None)
        loss, predictions, activations, gradients = results
        first = lambda value: self.strategy.experimental_local_results(value)[0]
        return (
            self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            first(predictions),
            {name: first(value) for name, value in activations.items()},
            [first(g) for g in gradients],
        )

    def _eval_step(self, images, labels):
        logits = self.model(images, training=False)
        loss_sum, count = masked_cross_entropy_sum(labels, logits)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        matrix = metrics.confusion_matrix(labels, predictions, self.config.data.num_classes)
        return loss_sum, count, matrix, predictions

    # -- the loop ------------------------------------------------------------------

    def _report(self, message: str) -> None:
        """Prints on the chief only, without breaking the progress bar."""
        if self.chief:
            tqdm.tqdm.write(message)

    def _local(self, value):
        """The local replicas' parts of a distributed value, as one tensor."""
        parts = self.strategy.experimental_local_results(value)
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)

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
        progress = progress and self.chief
        writers = summaries.writers(config.logs_dir) if self.chief else {
            "train": tf.summary.create_noop_writer(), "validation": tf.summary.create_noop_writer()
        }
        validation = data.validation_dataset(config.data, self.root, train.batch_size, train.val_images)
        start = int(self.step)
        if start >= train.max_steps:
            self._report(f"{self.manager.latest_checkpoint} is at step {start} >= --max_steps {train.max_steps}: nothing to do")
            return TrainResult(start, "finished", {}, {})
        if self.strategy.num_replicas_in_sync > 1:
            self._report(
                f"{type(self.strategy).__name__}: {self.strategy.num_replicas_in_sync} replicas, "
                f"{train.batch_size // self.strategy.num_replicas_in_sync} examples each per step"
            )
        if self.resumed_from:
            self._report(f"resuming from {self.resumed_from} at step {start}")
        start_example = int(self.examples_seen)

        def input_pipeline(context: tf.distribute.InputContext):
            return data.training_dataset(
                config.data,
                self.root,
                train.batch_size,
                seed=train.seed,
                start_example=start_example,
                num_pipelines=context.num_input_pipelines,
                pipeline_index=context.input_pipeline_id,
                output_batch_size=context.get_per_replica_batch_size(train.batch_size),
            )

        batches = iter(self.strategy.distribute_datasets_from_function(input_pipeline))
        skipped = data.SkipReport()
        last_validation = {}
        if start == 0:
            last_validation = self.validate(validation, writers["validation"])
            self._report(_validation_line(0, last_validation))
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
                local_batch = {key: self._local(value) for key, value in batch.items()}
                if skipped.record(local_batch):
                    self._report(skipped.summary())
                step = int(self.step) + 1
                summary_now = step % train.summary_every == 0 or step == train.max_steps
                if summary_now:
                    loss, predictions, activations, gradients = self.summary_step(batch["image"], batch["label"])
                else:
                    loss = self.train_step(batch["image"], batch["label"])
                loss = float(loss)
                if not math.isfinite(loss):
                    status = "non_finite"
                    self._report(
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
                        {"loss": loss, "learning_rate": float(np.asarray(self.optimizer.learning_rate)), "images_per_second": images_per_second},
                    )
                    summaries.write_images(
                        writers["train"], step, local_batch["image"], local_batch["label"], predictions, train.image_summaries
                    )
                    if self.crf_layer is not None:
                        summaries.write_crf(writers["train"], step, self.crf_layer)
                    if train.debug:
                        summaries.write_debug(writers["train"], step, activations, gradients, self.variables)
                    writers["train"].flush()
                    timer_start, timer_images = time.perf_counter(), 0
                if step % train.val_every == 0 or step == train.max_steps:
                    last_validation = self.validate(validation, writers["validation"])
                    self._report(_validation_line(step, last_validation))
                if step % train.checkpoint_every == 0 or step == train.max_steps:
                    self.manager.save(checkpoint_number=step)
                if stop_signal:
                    status = "interrupted"
                    path = self.manager.save(checkpoint_number=step)
                    self._report(f"{signal.Signals(stop_signal[0]).name}: stopped at step {step}, checkpoint {path}")
                    break
        finally:
            bar.close()
            for s, handler in previous_handlers.items():
                signal.signal(s, handler)
            for writer in writers.values():
                writer.close()
            if self.scratch_dir:
                shutil.rmtree(self.scratch_dir, ignore_errors=True)
        if skipped:
            self._report(skipped.summary())
        return TrainResult(int(self.step), status, last_validation, dict(skipped.skipped))


def _validation_line(step: int, values: dict) -> str:
    return (
        f"step {step}: validation loss {values['loss']:.4f}, pixel accuracy {values['pixel_accuracy']:.4f}, "
        f"mean IoU {values['mean_iou']:.4f}"
    )


def train(config: Config, root: str, progress: bool = True) -> TrainResult:
    """Trains (or resumes training) as the config says; see the module docstring."""
    return Trainer(config, root).run(progress)
