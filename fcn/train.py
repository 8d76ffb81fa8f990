"""Training FCN-8s: the Adam step, the loop, validation, TensorBoard and exact resume.

The pieces, in the order ``train`` uses them (flax's ImageNet example is the
model; every piece can be built twice in one process):

- ``setup_process(config)``: the process-wide settings (logical CPU devices,
  seeds, op determinism, the Keras precision policy) and the tf.distribute
  strategy (``fcn/distribute.py``). Called once by the entry point, never by
  the trainer.
- ``create_train_state`` and ``initialise`` (``fcn/train_state.py``): the
  model, Adam and the counters, resumed, taken from another run or started
  from pretrained weights.
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
import math
import os
import shutil
import signal
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
import tqdm

from fcn import backbones, checkpoints, data, datasets, distribute, metrics, outputs, run_log, schedules, summaries
from fcn import model as model_lib
from fcn.config import Config, save_config
from fcn.datasets.classes import IGNORE_LABEL
from fcn.errors import TrainingError
from fcn.optimizer import set_learning_rate
from fcn.train_state import TrainState, create_train_state, initialise


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
        distribute.configure_coordination_service(train.join_timeout, train.heartbeat_timeout)
    return distribute.make_strategy(config)


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
    labelled = labels != IGNORE_LABEL
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
        relu_layers = backbones.BACKBONES[config.model.backbone].layers + ("fc6", "fc7")
        probe = keras.Model(model.input, [model.output, {name: model.get_layer(name).output for name in relu_layers}])

    def update(gradients):
        optimizer.apply_gradients(zip(gradients, variables))
        # A step whose update overflows leaves NaN or Inf in the weights or in Adam's slots: caught at once,
        # not at the next checkpoint. One sum per variable: NaN and Inf survive a sum (Inf - Inf is NaN), so
        # a finite total means every value is finite, and a sum reads each value once, where an is_finite
        # pass also writes a boolean per value.
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
        self.chief = distribute.is_chief(strategy)
        self.progress = progress and self.chief
        # Only the chief writes into the run directory; the other workers must still
        # take part in every save (it may synchronise them), into a scratch folder.
        self.scratch_dir = None if self.chief else tempfile.mkdtemp(prefix="fcn-worker-")
        save_root = config.logs_dir if self.chief else self.scratch_dir
        self.checkpoint_dir = os.path.join(save_root, checkpoints.CHECKPOINTS_DIR)
        self.best_dir = os.path.join(save_root, checkpoints.BEST_DIR)
        self.started = time.perf_counter()
        self.state = create_train_state(config, strategy)
        self.last_checkpoint = initialise(self.state, config, strategy, report=self.report)
        self.start_step = int(self.state.step)
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
        if self.chief:
            run_log.append_history(self.config.logs_dir, "validation", step, values)
            run_log.write_curves(self.config.logs_dir)
        self.report(run_log.validation_line(step, values))
        if not self.chief:  # one line per validation, so that every worker's console shows it is alive
            print(f"{distribute.task_name()}: {run_log.validation_line(step, values)}", flush=True)
        return values

    def write_train_summaries(self, step: int, output: StepOutput, local_batch, images_per_second: float) -> None:
        train, writer = self.config.train, self.writers["train"]
        learning_rate = float(np.asarray(self.state.optimizer.learning_rate))
        summaries.write_scalars(
            writer, step, {"loss": float(output.loss), "learning_rate": learning_rate, "images_per_second": images_per_second}
        )
        if self.chief:
            run_log.append_history(self.config.logs_dir, "train", step, {"loss": output.loss, "learning_rate": learning_rate})
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
    chief = distribute.is_chief(strategy)
    # One training run per run directory: a second one is refused before it changes anything.
    with outputs.exclusive(config.logs_dir, "another training run", TrainingError) if chief else contextlib.nullcontext():
        # The dataset's class table decides the model's outputs; the run directory keeps it (classes.csv).
        dataset = datasets.as_dataset(root, config.data)
        resolved = dataclasses.replace(config, data=dataclasses.replace(config.data, num_classes=dataset.classes.num_classes))
        if chief and os.path.isfile(datasets.run_classes_path(config.logs_dir)):
            datasets.record_run_classes(config.logs_dir, dataset.classes)  # refuses another class table
        run = _Run(resolved, dataset, strategy, progress)
        if chief:  # written once the run is accepted: a refused resume leaves the run directory as it was
            datasets.record_run_classes(config.logs_dir, dataset.classes)
            save_config(config, config.logs_dir)
            run_log.accept_console_log()  # the run is accepted: LOGS_DIR/train.log gets its console
        try:
            result = _loop(run)
        finally:
            run.close()
        run.report(_summary(run, result))
    if result.status == "finished":
        distribute.finish_together(strategy, report=run.report)
    return result


def _loop(run: _Run) -> TrainResult:
    config, train, state = run.config, run.config.train, run.state
    start = int(state.step)
    if start >= train.max_steps:
        run.report(f"{run.last_checkpoint} is at step {start} >= --max_steps {train.max_steps}: nothing to do")
        return TrainResult(start, "finished", {}, {}, run.last_checkpoint)
    if train.strategy != "default":
        for line in distribute.describe(run.strategy, train.batch_size):
            run.report(line)
    if run.resumed_from:
        run.report(f"resuming from {run.resumed_from} at step {start}")
    validation = data.validation_dataset(config.data, run.root, train.batch_size, train.val_images)
    batches = _input_batches(config, run.root, run.strategy, int(state.examples_seen))
    status, last_validation = "finished", {}
    bar = tqdm.tqdm(total=train.max_steps, initial=start, unit="step", desc="training", disable=not run.progress, dynamic_ncols=True)
    timer_start, timer_images = time.perf_counter(), 0
    # A training split whose every pixel is ignored (all annotations unusable, or all "other") teaches nothing.
    split_size, labelled, examples = len(run.root.usable_pairs("training")), 0, 0
    with stop_requests() as stop, contextlib.closing(bar):
        try:
            if start == 0:
                last_validation = run.validate(validation, 0)
            while int(state.step) < train.max_steps:
                batch = next(batches)
                local_batch = {key: run.local(value) for key, value in batch.items()}
                if run.skipped.record(local_batch):
                    run.report_skipped()
                if not labelled:
                    labelled = int(np.count_nonzero(np.asarray(local_batch["label"]) != IGNORE_LABEL))
                    examples += train.batch_size
                    if not labelled and examples >= split_size:
                        raise TrainingError(
                            f"a whole pass over the {split_size} training pairs met no labelled pixel: every annotation is "
                            "unusable or all ignored, so there is nothing to learn from. --mode=check_data lists why"
                        )
                step = int(state.step) + 1
                summary_step = step % train.summary_every == 0 or step == train.max_steps
                set_learning_rate(state.optimizer, schedules.learning_rate(train, step))  # a function of the step alone
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
            run.report(_stopped_message(str(error), run.last_checkpoint, train))
    if run.skipped:
        run.report(run.skipped.summary())
    return TrainResult(int(state.step), status, last_validation, dict(run.skipped.skipped), run.last_checkpoint)


def _summary(run: _Run, result: TrainResult) -> str:
    """The end-of-run block (``run_log.summary``) of this start."""
    best_steps = checkpoints.checkpoint_steps(run.best_dir)
    train = run.config.train
    return run_log.summary(
        run.config.logs_dir, result.status, result.step, train.max_steps, run.start_step,
        float(run.state.best_mean_iou), best_steps[0] if best_steps else None,
        time.perf_counter() - run.started, (result.step - run.start_step) * train.batch_size, train.learning_rate,
    )  # fmt: skip


# Above this, weight decay alone can make the loss overflow: the advice names it rather than the learning rate.
LARGE_WEIGHT_DECAY = 0.01


def _stopped_message(what: str, last_checkpoint: str, train) -> str:
    cause = (f"a lower train.weight_decay (it is {train.weight_decay:g}; the usual values are 1e-4 to 5e-4)"
             if train.weight_decay > LARGE_WEIGHT_DECAY else "a lower --learning_rate")  # fmt: skip
    return (
        f"training stopped: {what}; nothing was saved after it. "
        f"The last good checkpoint is {last_checkpoint or '(none)'}; try {cause} (a rerun resumes from that checkpoint)."
    )


def run(config: Config, args) -> int:
    """``--mode=train``: trains (or resumes) the run of ``config``; exit status 1 when it stopped on a NaN loss."""
    progress = not args.no_progress
    chief = distribute.is_chief_task(config)  # only the chief writes into the run directory, and reports
    if chief:
        logs = config.logs_dir
        outputs.check_writable((logs, "--logs_dir"), (os.path.join(logs, checkpoints.CHECKPOINTS_DIR), "--logs_dir"),
                               (os.path.join(logs, checkpoints.BEST_DIR), "--logs_dir"), error=TrainingError)  # fmt: skip
    with run_log.console_log(config.logs_dir, enabled=chief):  # the console, also in LOGS_DIR/train.log
        dataset = datasets.prepare_dataset(config.data, progress=progress)
        if chief:
            path = os.path.join(config.logs_dir, "config.yaml")
            print(f"dataset: {dataset.root}\nrun directory: {config.logs_dir} (config: {path})")
            print(f"TensorBoard: tensorboard --logdir {config.logs_dir}")
        strategy = setup_process(config)
        try:
            result = train(config, dataset, strategy, progress=progress)
        except tf.errors.OpError as error:  # a collective whose peer is gone: one line, not TensorFlow's traceback
            if config.train.strategy != "multi_worker":
                raise
            raise distribute.lost_peer_error(error, sys.argv, config.train.heartbeat_timeout) from None
    return 1 if result.status == "non_finite" else 0
