"""Training FCN-8s: the Adam step, the loop, validation, TensorBoard and exact resume.

The pieces, in the order ``train`` uses them (flax's ImageNet example is the
model; every piece can be built twice in one process):

- ``setup_process(config)``: the process-wide settings (logical CPU devices,
  seeds, op determinism, the Keras precision policy) and the tf.distribute
  strategy. Called once by the entry point, never by the trainer.
- ``create_train_state(config, strategy)``: the model, Adam and the counters
  (step, examples consumed, best validation mIoU), as one checkpointable state.
- ``initialise(state, config, run_dir)``: resume from the run's newest intact
  checkpoint, or take another run's weights (``--init_from``), or load the
  pretrained VGG16 weights.
- ``make_train_step(state, config, strategy)``: the compiled step: softmax
  cross-entropy from logits averaged over the labelled pixels of the global
  batch (label 255 ignored), optional L2 weight decay, Adam. It always returns
  a ``StepOutput`` (the ``--debug`` activations and gradients are empty
  without ``--debug``).
- ``train(config, root, strategy)``: the loop and its cadence: summaries every
  ``summary_every`` steps, validation every ``val_every`` steps, a checkpoint
  every ``checkpoint_every`` steps (``fcn/checkpoints.py``: nothing non-finite
  is saved, a damaged newest checkpoint is passed over); SIGINT / SIGTERM
  finish the current step, save and return (``stop_requests``).

The input pipeline is stateless (see ``fcn/data.py``): resuming only needs the
number of examples consumed, so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
import tqdm

from fcn import checkpoints, data, datasets, metrics, summaries, weights
from fcn import model as model_lib
from fcn.config import Config
from fcn.optimizer import FusedAdam

# Layers whose outputs are ReLU activations, for --debug histograms.


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""


class NonFiniteLoss(ArithmeticError):
    """The weights of the current step give a NaN or infinite loss."""


@dataclasses.dataclass
class TrainResult:
    """How a call to ``train`` ended.

    Attributes:
      step: the step reached.
      status: ``finished``, ``interrupted`` or ``non_finite``.
      validation: the last validation results (empty if none ran).
      skipped: file -> error code of every unusable file met (training and validation).
      checkpoint: the newest checkpoint written or restored ("" if none).
    """

    step: int
    status: str
    validation: dict
    skipped: dict
    checkpoint: str = ""


# ---------------------------------------------------------------------------
# The process.


def setup_process(config: Config) -> tf.distribute.Strategy:
    """Applies the process-wide settings of ``config.train`` and returns its strategy.

    Logical CPU devices can only be set before TensorFlow initialises its
    devices, so this runs first, once per process.
    """
    train = config.train
    if train.cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * train.cpu_devices)
        except RuntimeError as error:
            raise TrainingError(f"train.cpu_devices={train.cpu_devices}: {error}") from None
    keras.utils.set_random_seed(train.seed)
    if train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy("float32" if train.mixed_precision == "float32" else f"mixed_{train.mixed_precision}")
    if train.strategy == "multi_worker" and "TF_CONFIG" in os.environ:
        configure_coordination_service(HEARTBEAT_TIMEOUT_MS)
    return make_strategy(config)


# A worker is declared dead by the coordination service after this long without a heartbeat
# (TensorFlow's default: 10 s). Longer than a loaded machine takes to end a finished worker's process
# and then the chief's (see ``finish_together``); the price: a silent worker is noticed 50 s later.
HEARTBEAT_TIMEOUT_MS = 60_000


def configure_coordination_service(heartbeat_timeout_ms: int) -> None:
    """Sets up TensorFlow's coordination service as ``MultiWorkerMirroredStrategy`` would, with another heartbeat timeout.

    The strategy configures the service itself only when nothing has; it
    offers no setting for the timeout, so this does it first, with the same
    values the strategy uses (the ``chief`` and ``worker`` jobs of
    ``TF_CONFIG``, led by the chief, or worker 0 without one). This is the one
    place that uses TensorFlow's internal API (``context.configure_coordination_service``,
    ``coordination_config_pb2``); it must run before the strategy is created.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster = resolver.cluster_spec()
    jobs = [job for job in ("chief", "worker") if job in cluster.jobs]
    if not jobs or resolver.task_type not in jobs or context.context().coordination_service is not None:
        return
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{jobs[0]}/replica:0/task:0",
        heartbeat_timeout_in_ms=heartbeat_timeout_ms,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job)) for job in jobs],
    )


def make_strategy(config: Config) -> tf.distribute.Strategy:
    """The tf.distribute strategy that ``train.strategy`` names."""
    train = config.train
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


def is_chief_task(config: Config) -> bool:
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


# ---------------------------------------------------------------------------
# The state.


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint holds, and the checkpoint objects that write it.

    Attributes:
      model: FCN-8s (with its CRF stage if ``model.crf``).
      optimizer: Adam (wrapped for loss scaling under float16).
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
    """Builds the model (fresh weights), Adam with its slots, and the counters."""
    with strategy.scope():
        model = model_lib.build_from_config(config.model, config.data.num_classes)
        optimizer = FusedAdam(learning_rate=config.train.learning_rate)
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
        # The checkpoint holds the learning rate it was saved with; the config (and --learning_rate) decides.
        state.optimizer.learning_rate = train.learning_rate
        return prefix
    if train.init_from:
        _initialise_from(state.model, train.init_from, report)
    else:
        with strategy.scope():
            weights.load_vgg_weights(state.model, config.model.vgg_weights, config.model.model_dir)
    return ""


def _initialise_from(model: keras.Model, source: str, report) -> None:
    """Takes the model weights of another run (not its optimizer or step).

    Every FCN layer must find its weights there. The CRF stage takes its
    weights too when ``source`` has them, and otherwise keeps its initial
    values: an FCN run starts an FCN + CRF run. A Keras ``.h5`` file is
    crfasrnn_keras's released model (``weights.load_crfasrnn_keras_into_fcn8s``).
    """
    if weights.is_crfasrnn_keras_file(source):
        try:
            notes = weights.load_crfasrnn_keras_into_fcn8s(model, source)
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
            f"--init_from {source}: its weights do not fit this model (data.num_classes, model.fc_channels must "
            f"be those of its run): {error}"
        ) from None
    except checkpoints.CheckpointError as error:
        raise TrainingError(f"--init_from {source}: {error}") from None
    if has_crf and checkpoints.holds_layer_weights(prefix, model_lib.CRF_WEIGHTS):
        checkpoints.restore_model_weights(model, prefix, report=report)


# ---------------------------------------------------------------------------
# The step.


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


def weight_decay_loss(kernels, weight_decay: float):
    """L2 weight decay, ``weight_decay * sum(k**2) / 2`` over the convolution kernels."""
    return weight_decay * tf.add_n([tf.nn.l2_loss(k) for k in kernels])


@dataclasses.dataclass
class StepOutput:
    """What a training step returns, always in this shape.

    Attributes:
      loss: the global batch's mean loss over its labelled pixels (float32 scalar).
      predictions: the first local replica's predicted train ids (B', H, W).
      activations: layer name -> its ReLU output, with ``--debug``; else empty.
      gradients: one per trainable variable, with ``--debug``; else empty.
      finite: whether every weight and optimizer slot is finite after the update.
    """

    loss: tf.Tensor
    predictions: tf.Tensor
    activations: dict
    gradients: list
    finite: tf.Tensor


def make_train_step(state: TrainState, config: Config, strategy: tf.distribute.Strategy):
    """The compiled training step: ``step(images, labels, debug=config.train.debug) -> StepOutput``.

    With ``--debug`` there are two compiled steps: ``debug=True`` also returns
    the activations and gradients (for a summary step's histograms),
    ``debug=False`` is the plain step, so that the other steps cost what a
    plain step costs (handing every activation and gradient of the full model
    out of the step is memory and copies that only a summary step needs).

    Each replica's loss is its summed pixel losses divided by the labelled
    pixels of the whole global batch; the optimizer sums the replicas'
    gradients, which gives the gradient of the global-batch mean.
    """
    train = config.train
    model, optimizer = state.model, state.optimizer
    variables = model.trainable_variables
    kernels = [v for v in variables if v.path.endswith("kernel")]
    checked = variables + [v for v in optimizer.variables if tf.as_dtype(v.dtype).is_floating]
    probe = None
    if train.debug:
        relu_layers = model_lib.conv_layer_names(model_lib.backbone_of(model)) + ("fc6", "fc7")
        probe = keras.Model(model.input, [model.output, {name: model.get_layer(name).output for name in relu_layers}])

    def update(gradients):
        optimizer.apply_gradients(zip(gradients, variables))
        # A step whose update overflows leaves NaN or Inf in the weights or in Adam's slots: caught at once,
        # not at the next checkpoint. One sum per variable: NaN and Inf survive a sum (Inf - Inf is NaN), so
        # a finite total means every value is finite. For the full model's 407M weights and slots that is
        # 4x cheaper than an is_finite pass over every value (0.12 s against 0.53 s on a 2-core AVX2 EPYC).
        # Only a total beyond float32's range (weights of about 1e30) would be flagged without cause.
        total = tf.add_n([tf.reduce_sum(v) for v in checked])
        return 1.0 - tf.cast(tf.math.is_finite(total), tf.float32)

    def replica_step(images, labels, debug):
        replica_context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            if debug:
                logits, activations = probe(images, training=True)
            else:
                logits, activations = model(images, training=True), {}
            loss_sum, count = masked_cross_entropy_sum(labels, logits)
            global_count = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, count)
            loss = loss_sum / tf.maximum(global_count, 1.0)
            total = loss
            if train.weight_decay:
                # Each replica adds its share, so that the summed gradients carry it once.
                total += weight_decay_loss(kernels, train.weight_decay) / replica_context.num_replicas_in_sync
            scaled = optimizer.scale_loss(total)
        gradients = tape.gradient(scaled, variables)
        # Every gradient is computed before any weight changes. Without this barrier a layer's update
        # may run while the backward pass still reads its weights (fc6's kernel, to propagate into
        # pool5), so some gradients would see updated weights, at random: measured, runs of one config
        # then differed after their first step wherever gradients reach below fc6.
        with tf.control_dependencies(gradients):
            gradients = [tf.identity(g) for g in gradients]
        non_finite = update(gradients)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return loss, predictions, activations, gradients if debug else [], non_finite

    def first(value):
        return strategy.experimental_local_results(value)[0]

    def compile_step(debug: bool):
        compiled_replica_step = tf.function(
            lambda images, labels: replica_step(images, labels, debug), jit_compile=train.jit_compile or None
        )

        @tf.function
        def step(images, labels):
            loss, predictions, activations, gradients, non_finite = strategy.run(compiled_replica_step, args=(images, labels))
            return (
                strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                first(predictions),
                {name: first(value) for name, value in activations.items()},
                [first(g) for g in gradients],
                strategy.reduce(tf.distribute.ReduceOp.SUM, non_finite, axis=None) == 0.0,
            )

        return step

    steps = {debug: compile_step(debug) for debug in {False, train.debug}}
    return lambda images, labels, debug=train.debug: StepOutput(*steps[bool(debug) and train.debug](images, labels))


def make_eval_step(model: keras.Model, num_classes: int):
    """The compiled validation step: (summed loss, labelled pixels, confusion matrix, predictions)."""

    @tf.function
    def eval_step(images, labels):
        logits = model(images, training=False)
        loss_sum, count = masked_cross_entropy_sum(labels, logits)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return loss_sum, count, metrics.confusion_matrix(labels, predictions, num_classes), predictions

    return eval_step


def validate(eval_step, dataset, num_classes: int, skipped: data.SkipReport | None = None) -> tuple[dict, tuple | None]:
    """Loss, pixel accuracy and mean IoU over the validation subset, and its first batch with predictions.

    Unusable validation files (their pixels ignored) are recorded in ``skipped``.
    """
    matrix = np.zeros((num_classes, num_classes), np.int64)
    loss_sum = labelled = 0.0
    first = None
    for batch in dataset:
        if skipped is not None:
            skipped.record(batch)
        batch_loss, batch_count, batch_matrix, predictions = eval_step(batch["image"], batch["label"])
        loss_sum += float(batch_loss)
        labelled += float(batch_count)
        matrix += batch_matrix.numpy()
        if first is None:
            first = (batch["image"], batch["label"], predictions)
    result = metrics.scores(matrix)
    values = {"loss": loss_sum / max(labelled, 1.0), "pixel_accuracy": result["pixel_accuracy"], "mean_iou": result["mean_iou"]}
    return values, first


# ---------------------------------------------------------------------------
# The loop.


@contextlib.contextmanager
def stop_requests():
    """Within it, SIGINT and SIGTERM are recorded in the yielded list instead of stopping the process.

    A second Ctrl-C (or SIGTERM) stops at once with ``KeyboardInterrupt``.
    The previous handlers are back on exit.
    """
    requests = []

    def request_stop(signum, _frame):
        if requests:
            raise KeyboardInterrupt
        requests.append(signum)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requests
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _validation_line(step: int, values: dict) -> str:
    return (
        f"step {step}: validation loss {values['loss']:.4f}, pixel accuracy {values['pixel_accuracy']:.4f}, "
        f"mean IoU {values['mean_iou']:.4f}"
    )


def _input_batches(config: Config, root: str, strategy, start_example: int):
    train = config.train

    def input_pipeline(context: tf.distribute.InputContext):
        return data.training_dataset(
            config.data,
            root,
            train.batch_size,
            seed=train.seed,
            start_example=start_example,
            num_pipelines=context.num_input_pipelines,
            pipeline_index=context.input_pipeline_id,
            output_batch_size=context.get_per_replica_batch_size(train.batch_size),
        )

    return iter(strategy.distribute_datasets_from_function(input_pipeline))


class _Run:
    """One call of ``train``: the state, where it writes, and how it reports."""

    def __init__(self, config: Config, root: str, strategy: tf.distribute.Strategy, progress: bool):
        self.config, self.root, self.strategy = config, root, strategy
        self.classes = root.classes
        self.chief = is_chief(strategy)
        self.progress = progress and self.chief
        # Only the chief writes into the run directory; the other workers must still
        # take part in every save (it may synchronise them), into a scratch folder.
        self.scratch_dir = None if self.chief else tempfile.mkdtemp(prefix="fcn-worker-")
        save_root = config.logs_dir if self.chief else self.scratch_dir
        self.checkpoint_dir = os.path.join(save_root, checkpoints.CHECKPOINTS_DIR)
        self.best_dir = os.path.join(save_root, checkpoints.BEST_DIR)
        self.state = create_train_state(config, strategy)
        self.last_checkpoint = initialise(self.state, config, strategy, report=self.report)
        self.resumed_from = self.last_checkpoint
        self.train_step = make_train_step(self.state, config, strategy)
        self.eval_step = make_eval_step(self.state.model, config.data.num_classes)
        self.crf_layer = self.state.model.get_layer("crf") if model_lib.has_crf(self.state.model) else None
        self.skipped = data.SkipReport()  # unusable files of both splits, each reported once
        self.written: set[str] = set()  # checkpoints this process wrote
        self.writers = summaries.writers(config.logs_dir) if self.chief else {
            "train": tf.summary.create_noop_writer(), "validation": tf.summary.create_noop_writer()
        }

    def report(self, message: str) -> None:
        """Prints on the chief only, without breaking the progress bar."""
        if self.chief:
            tqdm.tqdm.write(message)

    def local(self, value):
        """The local replicas' parts of a distributed value, as one tensor."""
        parts = self.strategy.experimental_local_results(value)
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)

    def save(self, step: int) -> None:
        """A training checkpoint; raises ``checkpoints.NonFiniteError`` instead of saving NaN or Inf."""
        state = self.state
        self.last_checkpoint = checkpoints.save(
            state.checkpoint, self.checkpoint_dir, step, self.config.train.keep_checkpoints, state.variables()
        )
        self.written.add(self.last_checkpoint)

    def discard(self, step: int) -> None:
        """Removes this run's checkpoint of ``step``: its weights gave a non-finite loss."""
        prefix = os.path.join(self.checkpoint_dir, f"{checkpoints.PREFIX}-{step}")
        if prefix not in self.written:
            return
        checkpoints.discard(self.checkpoint_dir, step)
        self.written.discard(prefix)
        steps = checkpoints.checkpoint_steps(self.checkpoint_dir)
        self.last_checkpoint = os.path.join(self.checkpoint_dir, f"{checkpoints.PREFIX}-{steps[0]}") if steps else ""
        self.report(f"removed {prefix}: the step from its weights was not finite")

    def report_skipped(self) -> None:
        for line in self.skipped.new_messages():
            self.report(line)

    def validate(self, dataset, step: int) -> dict:
        """Validation written to TensorBoard; a new best mIoU saves the model to ``best/``."""
        values, first = validate(self.eval_step, dataset, self.config.data.num_classes, self.skipped)
        self.report_skipped()
        if not math.isfinite(values["loss"]):
            raise NonFiniteLoss(f"the validation loss became {values['loss']} at step {step}")
        writer = self.writers["validation"]
        summaries.write_scalars(writer, step, values)
        if first is not None:
            summaries.write_images(writer, step, *first, max_outputs=self.config.train.image_summaries, classes=self.classes)
        writer.flush()
        if values["mean_iou"] > float(self.state.best_mean_iou):
            self.state.best_mean_iou.assign(values["mean_iou"])
            state = self.state
            checkpoints.save(state.best_checkpoint, self.best_dir, step, 1, list(state.model.weights) + [state.step])
        self.report(_validation_line(step, values))
        return values

    def write_train_summaries(self, step: int, output: StepOutput, local_batch, images_per_second: float) -> None:
        train, writer = self.config.train, self.writers["train"]
        learning_rate = float(np.asarray(self.state.optimizer.learning_rate))
        summaries.write_scalars(
            writer, step, {"loss": float(output.loss), "learning_rate": learning_rate, "images_per_second": images_per_second}
        )
        summaries.write_images(
            writer, step, local_batch["image"], local_batch["label"], output.predictions, train.image_summaries, classes=self.classes
        )
        if self.crf_layer is not None:
            summaries.write_crf(writer, step, self.crf_layer)
        if train.debug:
            summaries.write_debug(writer, step, output.activations, output.gradients, self.state.model.trainable_variables)
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        if self.scratch_dir:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)


def train(config: Config, root: str, strategy: tf.distribute.Strategy | None = None, progress: bool = True) -> TrainResult:
    """Trains (or resumes training) as the config says; see the module docstring.

    Args:
      config: the run's config.
      root: the dataset root (or a ``datasets.Dataset``); its class table is
        written to ``LOGS_DIR/classes.csv`` and must match one already there.
      strategy: from ``setup_process`` (default: the current strategy).
      progress: show a progress bar.
    """
    strategy = strategy or tf.distribute.get_strategy()
    # The dataset's class table decides the model's outputs; the run directory keeps it (classes.csv).
    dataset = data.as_dataset(root, config.data)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, num_classes=dataset.classes.num_classes))
    if is_chief(strategy):
        datasets.record_run_classes(config.logs_dir, dataset.classes)
    run = _Run(config, dataset, strategy, progress)
    try:
        result = _loop(run)
    finally:
        run.close()
    if result.status == "finished":
        finish_together(strategy, report=run.report)
    return result


# How long the chief of a finished multi-worker run waits for the other workers' processes to end.
WORKERS_LEAVE_TIMEOUT = 300.0


def finish_together(strategy: tf.distribute.Strategy, timeout: float = WORKERS_LEAVE_TIMEOUT, report=print) -> None:
    """The workers of a finished multi-worker run leave together, the chief last.

    ``MultiWorkerMirroredStrategy`` runs TensorFlow's coordination service in
    the chief's process, and every worker's agent sends it a heartbeat every
    5 s until its process ends (TensorFlow 2.21 does not shut an agent down
    when Python exits). A worker that outlives the chief finds the service
    gone (``StartAbort UNAVAILABLE: Failed to send RPC to coordination
    service``); a chief that outlives a worker by the heartbeat timeout
    reports it unhealthy (``stopped sending heartbeats``; ``setup_process``
    sets the timeout to ``HEARTBEAT_TIMEOUT_MS``, TensorFlow's 10 s being
    shorter than the end of a process on a loaded machine). So every worker first waits for all the
    others to finish (one all-reduce), the other workers then return, and the
    chief returns once each of their servers' addresses (the cluster spec of
    ``TF_CONFIG``) refuses connections, i.e. their processes have ended; after
    ``timeout`` seconds it returns anyway.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    resolver = strategy.cluster_resolver
    own = (resolver.task_type, resolver.task_id)
    cluster = resolver.cluster_spec()
    addresses = [
        cluster.task_address(job, index)
        for job in cluster.jobs if job in ("chief", "worker")
        for index in cluster.task_indices(job) if (job, index) != own
    ]  # fmt: skip
    if not addresses:  # a cluster of one
        return
    _all_reduce_barrier(strategy)
    if not is_chief(strategy):
        return
    deadline = time.monotonic() + timeout
    for address in addresses:
        while _accepts_connections(address):
            if time.monotonic() > deadline:
                report(f"worker {address} still running {timeout:.0f} s after the run finished; the chief leaves now")
                return
            time.sleep(0.2)


def _all_reduce_barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns on every worker once all have called it (a sum over the replicas, compiled: no eager-collective warning)."""

    @tf.function
    def count():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)

    count()


def _accepts_connections(address: str) -> bool:
    """Whether a server listens at ``HOST:PORT``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except OSError:
        return False


def _loop(run: _Run) -> TrainResult:
    config, train, state = run.config, run.config.train, run.state
    start = int(state.step)
    if start >= train.max_steps:
        run.report(f"{run.last_checkpoint} is at step {start} >= --max_steps {train.max_steps}: nothing to do")
        return TrainResult(start, "finished", {}, {}, run.last_checkpoint)
    if run.strategy.num_replicas_in_sync > 1:
        run.report(
            f"{type(run.strategy).__name__}: {run.strategy.num_replicas_in_sync} replicas, "
            f"{train.batch_size // run.strategy.num_replicas_in_sync} examples each per step"
        )
    if run.resumed_from:
        run.report(f"resuming from {run.resumed_from} at step {start}")
    validation = data.validation_dataset(config.data, run.root, train.batch_size, train.val_images)
    batches = _input_batches(config, run.root, run.strategy, int(state.examples_seen))
    status, last_validation = "finished", {}
    bar = tqdm.tqdm(total=train.max_steps, initial=start, unit="step", desc="training", disable=not run.progress, dynamic_ncols=True)
    timer_start, timer_images = time.perf_counter(), 0
    with stop_requests() as stop, contextlib.closing(bar):
        try:
            if start == 0:
                last_validation = run.validate(validation, 0)
            while int(state.step) < train.max_steps:
                batch = next(batches)
                local_batch = {key: run.local(value) for key, value in batch.items()}
                if run.skipped.record(local_batch):
                    run.report_skipped()
                step = int(state.step) + 1
                summary_step = step % train.summary_every == 0 or step == train.max_steps
                output = run.train_step(batch["image"], batch["label"], debug=summary_step)
                loss = float(output.loss)
                if not math.isfinite(loss) or not bool(output.finite):
                    # Step s starts from the weights of step s - 1: a checkpoint of them is not a good one.
                    run.discard(step - 1)
                    what = f"the loss became {loss}" if not math.isfinite(loss) else f"the update made weights non-finite (loss {loss:.4g})"
                    raise NonFiniteLoss(f"{what} at step {step}")
                state.step.assign(step)
                state.examples_seen.assign_add(train.batch_size)
                timer_images += train.batch_size
                images_per_second = timer_images / max(time.perf_counter() - timer_start, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", images_per_s=f"{images_per_second:.2f}")
                if summary_step:
                    run.write_train_summaries(step, output, local_batch, images_per_second)
                    timer_start, timer_images = time.perf_counter(), 0
                if step % train.val_every == 0 or step == train.max_steps:
                    last_validation = run.validate(validation, step)
                if step % train.checkpoint_every == 0 or step == train.max_steps or stop:
                    run.save(step)
                if stop:
                    status = "interrupted"
                    run.report(f"{signal.Signals(stop[0]).name}: stopped at step {step}, checkpoint {run.last_checkpoint}")
                    break
        except (NonFiniteLoss, checkpoints.NonFiniteError) as error:
            status = "non_finite"
            run.report(_stopped_message(str(error), run.last_checkpoint))
    if run.skipped:
        run.report(run.skipped.summary())
    return TrainResult(int(state.step), status, last_validation, dict(run.skipped.skipped), run.last_checkpoint)


def _stopped_message(what: str, last_checkpoint: str) -> str:
    return (
        f"training stopped: {what}; nothing was saved after it. "
        f"The last good checkpoint is {last_checkpoint or '(none)'}; try a lower --learning_rate "
        "(a rerun resumes from that checkpoint)."
    )
