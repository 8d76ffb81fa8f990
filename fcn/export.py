"""``--mode=export``: a TensorFlow SavedModel of a trained FCN-8s for serving.

The SavedModel's ``serving_default`` signature takes

    images         uint8   (B, H, W, 3)   RGB, any height and width

and returns

    labels         uint8   (B, H, W)      annotation values of the run's class table, as in its
                                          annotation PNGs (ADE20K 1..150 = train id + 1, VOC 0..20,
                                          a folder dataset's ids)
    probabilities  float32 (B, H, W, C)   softmax class probabilities, channel c = train id c

computed exactly as ``--mode=evaluate`` does (the scales and flip of
``config.evaluate``; by default the model's own softmax at the image's size).
Load it without this package::

    serving = tf.saved_model.load(EXPORT_DIR).signatures["serving_default"]
    outputs = serving(images=tf.constant(batch))   # batch: uint8 (B, H, W, 3)

The class names, one per line in train-id order, are written beside it as
``classes.txt``, and the whole class table (annotation value, name, colour, the
ignored values) as ``classes.csv``.
"""

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from fcn import predict as predict_lib
from fcn.config import Config

SIGNATURE = "serving_default"


# What an export writes into its folder: nothing else in a folder is ever deleted by a re-export.
EXPORT_CONTENTS = frozenset(
    {"saved_model.pb", "fingerprint.pb", "variables", "assets", "classes.txt", "classes.csv", "keras_metadata.pb"}
)
# Marks a folder being written by export, so that one left by a killed export can be removed.
PARTIAL_MARKER = ".fcn_export_partial"


def _check_replaceable(export_dir: str) -> None:
    """Refuses to replace anything but an earlier export: never deletes a folder or file of something else.

    Raises:
      InferenceError: ``export_dir`` is a file, a folder that is not a
        SavedModel, or a SavedModel folder holding files an export does not write.
    """
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise predict_lib.InferenceError(f"{export_dir} exists and is not a folder")
    if not os.path.isdir(export_dir) or not os.listdir(export_dir):
        return
    if not tf.saved_model.contains_saved_model(export_dir):
        raise predict_lib.InferenceError(f"{export_dir} exists and is not a SavedModel: give a new or empty folder")
    others = sorted(set(os.listdir(export_dir)) - EXPORT_CONTENTS)
    if others:
        raise predict_lib.InferenceError(
            f"{export_dir} holds files an export does not write ({', '.join(others)}): a new export would delete them. "
            "Move them away, or give another --output"
        )


def _remove_killed_exports(parent: str, name: str) -> None:
    """Removes the temporary folders of earlier exports of ``name`` that were killed (they carry the marker)."""
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if entry.startswith(f".{name}.partial-") and os.path.isfile(os.path.join(path, PARTIAL_MARKER)):
            shutil.rmtree(path, ignore_errors=True)


def export_predictor(predictor: predict_lib.Predictor, export_dir: str) -> str:
    """Writes ``predictor`` as a SavedModel (see the module docstring) into ``export_dir``.

    The folder is written beside its final place and renamed into it, so an
    interrupted export never leaves a half SavedModel that looks whole.

    Returns:
      ``export_dir``.
    """

    values = tf.constant(predictor.classes.ids, tf.uint8)  # train id -> annotation value

    def serve(images):
        probabilities = predictor.probabilities(images)  # (B, H, W, C)
        labels = tf.gather(values, tf.argmax(probabilities, axis=-1, output_type=tf.int32))  # (B, H, W)
        return {"labels": labels, "probabilities": probabilities}

    archive = keras.export.ExportArchive()
    archive.track(predictor.model)
    archive.add_endpoint(SIGNATURE, serve, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    # A symbolic link to a folder stays one: the folder it points to is what is replaced.
    target = os.path.realpath(export_dir)
    _check_replaceable(target)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    _remove_killed_exports(parent, name)
    temporary = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)  # a new name: never a user's folder
    open(os.path.join(temporary, PARTIAL_MARKER), "w").close()
    archive.write_out(os.path.join(temporary, "model"), verbose=False)
    model_dir = os.path.join(temporary, "model")
    with open(os.path.join(model_dir, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(predictor.classes.names) + "\n")
    predictor.classes.write_csv(os.path.join(model_dir, "classes.csv"))
    if os.path.exists(target):
        shutil.rmtree(target)
    os.replace(model_dir, target)
    shutil.rmtree(temporary, ignore_errors=True)
    return os.path.abspath(export_dir)


def export(config: Config, output_dir: str = "", checkpoint: str = "") -> tuple[str, str]:
    """``--mode=export``: restores the run's model and exports it.

    Args:
      config: the run's config.
      output_dir: the SavedModel folder (default ``LOGS_DIR/export``); replaced if it exists.
      checkpoint: see ``predict.restore_model``.

    Returns:
      (the SavedModel folder, the checkpoint prefix exported).

    Raises:
      predict.InferenceError: no usable checkpoint.
    """
    export_dir = output_dir or os.path.join(config.logs_dir, "export")
    _check_replaceable(os.path.realpath(export_dir))  # before the work
    predictor, prefix = predict_lib.predictor_from_config(config, checkpoint)
    return export_predictor(predictor, export_dir), prefix
