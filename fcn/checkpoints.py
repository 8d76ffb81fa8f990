"""Checkpoints: finding, validating, saving and restoring them, for training and inference alike.

A run directory keeps ``checkpoints/ckpt-STEP`` (model, optimizer, counters;
the last ``train.keep_checkpoints``) and ``best/ckpt-STEP`` (the model with the
best validation mean IoU). The rules, which every mode goes through:

- Nothing non-finite is ever written: ``save`` checks every variable of the
  checkpoint first and raises ``NonFiniteError`` naming them.
- A checkpoint is found from its files, not from TensorFlow's ``checkpoint``
  index file alone (which ``save`` still writes for TensorFlow's tools): a
  damaged or missing index file cannot make a run forget its checkpoints.
- Before a checkpoint is trusted its files are checked (the ``.index`` table
  readable, every data shard present and long enough for the tensors it
  holds); on restore TensorFlow checks every tensor's CRC-32C, and the
  restored variables must be finite. A damaged newest checkpoint is reported
  by name and the newest intact one is used.
- A folder holding checkpoint files none of which is intact is an error,
  never an empty run: training cannot silently start again at step 0 over a
  run it failed to read.
- ``save`` removes what saves killed part-way leave behind (``ckpt-N_temp``
  folders, ``checkpoint.tmp*`` files, data files without an index) and the
  checkpoints of steps beyond the one saved (a run resumed from an older
  checkpoint continues from there).
"""

import dataclasses
import glob
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable

import numpy as np
import tensorflow as tf

from fcn.errors import CheckpointError

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
PREFIX = "ckpt"
STATE_FILE = "checkpoint"  # TensorFlow's index of a checkpoint folder
_NAME = re.compile(rf"^{PREFIX}-(\d+)(?:\.index|\.data-\d{{5}}-of-\d{{5}}|_temp)$")



class NoCheckpointError(CheckpointError):
    """There is no checkpoint where one was looked for."""


class DamagedCheckpointError(CheckpointError):
    """Checkpoint files exist but none of them can be trusted."""


class MismatchError(CheckpointError):
    """An intact checkpoint of another model (or optimizer) than the one restored into."""


class NonFiniteError(CheckpointError):
    """Variables hold NaN or Inf: they are not saved."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------------------
# Finding and checking.


def step_of(prefix: str) -> int:
    """The step number of a ``.../ckpt-STEP`` prefix."""
    return int(prefix.rsplit("-", 1)[1])


def checkpoint_steps(directory: str) -> list[int]:
    """Steps of every checkpoint with any file in ``directory`` (intact or not), newest first."""
    if not os.path.isdir(directory):
        return []
    steps = {int(m.group(1)) for m in map(_NAME.match, os.listdir(directory)) if m}
    return sorted(steps, reverse=True)


def problem(prefix: str) -> str | None:
    """Why the checkpoint at ``prefix`` cannot be trusted, or None if its files look whole.

    Cheap: reads the ``.index`` table and the sizes of the data files, not the
    tensors (restoring checks their checksums).
    """
    name = os.path.basename(prefix)
    if not os.path.isfile(prefix + ".index"):
        return f"{name}.index is missing (a save was interrupted, or the file was removed)"
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError, RuntimeError) as error:
        return f"{name}.index cannot be read ({_first_line(error)})"
    shards = glob.glob(glob.escape(prefix) + ".data-?????-of-?????")
    if not shards:
        return f"{name} has no data file ({name}.data-00000-of-NNNNN)"
    expected_shards = int(shards[0].rsplit("-of-", 1)[1])
    if len(shards) != expected_shards:
        return f"{name} has {len(shards)} of its {expected_shards} data files"
    # Every numeric tensor's bytes live in the data shards; strings (the object graph) add more.
    needed = sum(
        int(np.prod(shape, dtype=np.int64)) * dtypes[key].size for key, shape in shapes.items() if dtypes[key] != tf.string
    )
    present = sum(os.path.getsize(shard) for shard in shards)
    if present < needed:
        return f"{name}'s data is truncated ({present:,} bytes of at least {needed:,})"
    return None


def _first_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0]


@dataclasses.dataclass
class Candidates:
    """The checkpoints ``path`` designates, newest first.

    Attributes:
      prefixes: checkpoint prefixes to try in order.
      named: True when ``path`` was a prefix: only that checkpoint, no fallback.
      directory: the folder looked in.
    """

    prefixes: list[str]
    named: bool
    directory: str


def candidates(path: str) -> Candidates:
    """The checkpoints of a run directory, a checkpoint folder or a prefix.

    Raises:
      NoCheckpointError: nothing there that looks like a checkpoint.
    """
    for directory in (os.path.join(path, CHECKPOINTS_DIR), path):
        steps = checkpoint_steps(directory)
        if steps:
            return Candidates([os.path.join(directory, f"{PREFIX}-{step}") for step in steps], False, directory)
    if os.path.isfile(path + ".index") or glob.glob(glob.escape(path) + ".data-*"):
        return Candidates([path], True, os.path.dirname(path))
    if os.path.isfile(os.path.join(path, CHECKPOINTS_DIR, STATE_FILE)) or os.path.isfile(os.path.join(path, STATE_FILE)):
        # An index file naming checkpoints whose files are all gone.
        raise DamagedCheckpointError(
            f"{path}: its checkpoint index file is there but no checkpoint file is: nothing can be restored. "
            "Use another run directory, or remove the index file to start this one afresh"
        )
    raise NoCheckpointError(f"{path}: no checkpoint there (give a run directory, a checkpoint folder or a checkpoint prefix)")


def has_checkpoint_files(directory: str) -> bool:
    """Whether ``directory`` holds anything of a checkpoint (files of one, or TensorFlow's index file)."""
    return bool(checkpoint_steps(directory)) or os.path.isfile(os.path.join(directory, STATE_FILE))


# ---------------------------------------------------------------------------
# Restoring.


def non_finite(variables: Iterable[tf.Variable]) -> list[str]:
    """Names of the floating-point variables holding a NaN or an infinity."""
    floats = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
    if not floats:
        return []
    finite = tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in floats]).numpy()
    return [getattr(v, "path", v.name) for v, ok in zip(floats, finite) if not ok]


def restore(
    checkpoint: tf.train.Checkpoint,
    path: str,
    variables: Iterable[tf.Variable],
    partial: bool = False,
    report: Callable[[str], None] = _stderr,
) -> str:
    """Restores the newest intact checkpoint of ``path`` into ``checkpoint``.

    Args:
      checkpoint: what to restore into.
      path: a run directory, a checkpoint folder or a prefix (no fallback then).
      variables: the variables restored, checked to be finite afterwards.
      partial: the checkpoint may hold objects ``checkpoint`` lacks (restoring
        a model out of a training checkpoint); every object of ``checkpoint``
        must still be found there.
      report: prints the damaged checkpoints passed over.

    Returns:
      The prefix restored.

    Raises:
      NoCheckpointError, DamagedCheckpointError, MismatchError.
    """
    found = candidates(path)
    variables = list(variables)
    damaged = []
    for prefix in found.prefixes:
        reason = problem(prefix)
        if reason is None:
            reason = _read(checkpoint, prefix, partial)
        if reason is None:
            bad = non_finite(variables)
            reason = f"it holds NaN or Inf in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}" if bad else None
        if reason is None:
            if damaged:
                report(f"using {prefix}, the newest intact checkpoint")
            return prefix
        damaged.append(prefix)
        _silence_unrestored_warnings()
        report(f"checkpoint {prefix} is damaged and was not used: {reason}")
        if found.named:
            break
    raise DamagedCheckpointError(
        f"{found.directory}: no intact checkpoint ({len(damaged)} damaged: {', '.join(os.path.basename(p) for p in damaged)}). "
        "Nothing was changed; use another run directory, or move these files away to start afresh"
    )


def _read(checkpoint: tf.train.Checkpoint, prefix: str, partial: bool) -> str | None:
    """Reads ``prefix`` into ``checkpoint``; returns why the files are damaged, or None.

    Raises:
      MismatchError: the files are intact but hold another model.
    """
    status = None
    try:
        status = checkpoint.read(prefix)
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as error:
        _quiet(status)
        raise MismatchError(f"cannot restore {prefix}: it holds another model ({_first_line(error)})") from None
    except tf.errors.DataLossError as error:
        _quiet(status)
        return f"its data fails the checksum ({_first_line(error)})"
    except (tf.errors.OpError, IndexError, KeyError, OSError) as error:
        _quiet(status)
        return f"it cannot be read ({_first_line(error)})"
    return None


def _quiet(status) -> None:
    """A refused read's status leaves without TensorFlow's warning per value not restored: one message says why."""
    if status is not None:
        status.expect_partial()


def restore_model_weights(model, path: str, report: Callable[[str], None] = _stderr) -> str:
    """Restores every weight of ``model`` from a checkpoint holding ``model=...`` (training or best).

    The checkpoint's other objects (optimizer, counters, a CRF stage the model
    lacks) are left out.

    Returns:
      The prefix restored.
    """
    try:
        return restore(tf.train.Checkpoint(model=model), path, model.weights, partial=True, report=report)
    except CheckpointError:
        _silence_unrestored_warnings()
        raise


class _UnrestoredValues(logging.Filter):
    """Drops TensorFlow's warnings about a checkpoint object deleted with values not restored."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Value in checkpoint could not be found", "Detecting that an object or model"))


def _silence_unrestored_warnings() -> None:
    """After a refused read, TensorFlow warns once per value when the checkpoint goes (about 100 lines for
    FCN-8s, printed after fcn's own message); the error already said what was used and why."""
    logger = tf.get_logger()
    if not any(isinstance(f, _UnrestoredValues) for f in logger.filters):
        logger.addFilter(_UnrestoredValues())


def holds_layer_weights(prefix: str, names: frozenset[str]) -> bool:
    """True if some object of the checkpoint has children with all of ``names`` (e.g. a CRF layer's weights)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(prefix).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    return any(names <= {child.local_name for child in node.children} for node in graph.nodes)


# ---------------------------------------------------------------------------
# Saving.


def save(checkpoint: tf.train.Checkpoint, directory: str, step: int, keep: int, variables: Iterable[tf.Variable]) -> str:
    """Writes ``directory/ckpt-STEP`` and keeps the newest ``keep`` checkpoints there.

    Args:
      checkpoint: what to write.
      directory: the checkpoint folder.
      step: the training step (the prefix's number).
      keep: how many checkpoints to keep (newest by step).
      variables: every variable ``checkpoint`` writes, checked finite first.

    Returns:
      The prefix written.

    Raises:
      NonFiniteError: some variable holds NaN or Inf; nothing was written.
    """
    bad = non_finite(variables)
    if bad:
        raise NonFiniteError(
            f"step {step}: {len(bad)} variables hold NaN or Inf ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
            "they were not saved"
        )
    os.makedirs(directory, exist_ok=True)
    remove_leftovers(directory)
    # ``write`` leaves out ``save_counter`` unless it exists: with it, TensorFlow's usual
    # ``Checkpoint(...).restore(path).assert_existing_objects_matched()`` accepts these files.
    checkpoint.save_counter.assign_add(1)
    prefix = checkpoint.write(os.path.join(directory, f"{PREFIX}-{step}"))
    # Steps beyond this one belong to a run that was resumed from an older checkpoint.
    steps = [s for s in checkpoint_steps(directory) if s <= step]
    kept, dropped = steps[:keep], steps[keep:] + [s for s in checkpoint_steps(directory) if s > step]
    _write_state(directory, [f"{PREFIX}-{s}" for s in reversed(kept)])
    for s in dropped:
        _remove_checkpoint(directory, s)
    return prefix


def discard(directory: str, step: int) -> None:
    """Removes the checkpoint of ``step`` from ``directory`` and from its index file."""
    _remove_checkpoint(directory, step)
    remaining = [f"{PREFIX}-{s}" for s in reversed(checkpoint_steps(directory))]
    if remaining:
        _write_state(directory, remaining)
    elif os.path.exists(os.path.join(directory, STATE_FILE)):
        os.remove(os.path.join(directory, STATE_FILE))


def _write_state(directory: str, names: list[str]) -> None:
    """TensorFlow's ``checkpoint`` index file (for ``tf.train.latest_checkpoint`` and TensorBoard), written atomically.

    Names are relative to the folder, so a run directory can be moved.
    """
    lines = [f"model_checkpoint_path: {json.dumps(names[-1])}"] + [f"all_model_checkpoint_paths: {json.dumps(n)}" for n in names]
    temporary = os.path.join(directory, f"{STATE_FILE}.tmp{os.getpid()}")
    with open(temporary, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(temporary, os.path.join(directory, STATE_FILE))


def remove_leftovers(directory: str) -> list[str]:
    """Removes what killed saves leave in a checkpoint folder; returns the names removed."""
    removed = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.startswith(STATE_FILE + ".tmp") or (name.endswith("_temp") and _NAME.match(name)):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(name)
    for step in checkpoint_steps(directory):
        prefix = os.path.join(directory, f"{PREFIX}-{step}")
        if not os.path.exists(prefix + ".index"):
            removed += [os.path.basename(p) for p in _checkpoint_files(directory, step)]
            _remove_checkpoint(directory, step)
    return removed


def _checkpoint_files(directory: str, step: int) -> list[str]:
    prefix = glob.escape(os.path.join(directory, f"{PREFIX}-{step}"))
    return glob.glob(prefix + ".index") + glob.glob(prefix + ".data-?????-of-?????") + glob.glob(prefix + "_temp")


def _remove_checkpoint(directory: str, step: int) -> None:
    for path in _checkpoint_files(directory, step):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
