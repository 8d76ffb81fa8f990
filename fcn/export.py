"""``--mode=export``: a versioned TensorFlow SavedModel of a trained FCN-8s for serving.

Layout (what TensorFlow Serving reads: one numbered folder per version)::

    BASE/1/            the first export: saved_model.pb, variables/, classes.txt
    BASE/2/            the next export of the same BASE (a new version; earlier ones are kept)

``BASE`` is ``--output`` (default ``LOGS_DIR/export``). Each export writes the
next free version number (one more than the highest there) and never deletes
or replaces anything: it writes into a fresh temporary folder inside ``BASE``,
marked as its own, and renames it to ``BASE/N`` when complete, so an
interrupted export never leaves a half SavedModel that looks whole (the
marked leftovers of a killed export are removed by the next one). A ``BASE``
holding anything but version folders is refused before any work.

Signatures, both taking (declared in the SavedModel, as ``saved_model_cli show --all`` prints it)

    images         uint8   (batch, height, width, 3)   RGB, any height and width

``serving_default`` returns the labels only (small enough to send back over
the network):

    labels         uint8   (batch, height, width)      annotation values of the run's class table, as in its
                                                       annotation PNGs (ADE20K 1..150 = train id + 1, VOC 0..20,
                                                       a folder dataset's ids)

``probabilities`` returns the same ``labels`` and the full map:

    probabilities  float32 (batch, height, width, C)   softmax class probabilities, channel c = train id c

Both compute what ``--mode=evaluate`` computes, with the protocol of
``config.evaluate`` (``fcn.inference.Predictor``): the image fitted into
``evaluate.test_size`` (by default the training scale ``data.base_size``),
the ``scales`` and ``flip`` views, their logits resized back inside the
signature, the labels at the input's own size. ``serving_default`` takes its
labels band by band and never holds the (height, width, C) map. The inputs are
checked inside the graph: another rank, another number of channels, an empty
image, or more than ``evaluate.max_pixels`` pixels fail with an
``InvalidArgumentError`` naming the expected ``(batch, height, width, 3) uint8``
(or the limit). Load it without this package::

    model = tf.saved_model.load("BASE/1")
    labels = model.signatures["serving_default"](images=tf.constant(batch))["labels"]   # batch: uint8 (B, H, W, 3)

The SavedModel stores each weight once (``variables/`` is the size of the
weights): see ``_ServingModule``.

``--format tflite`` writes ``BASE/N/model.tflite`` instead (``BASE`` default
``LOGS_DIR/export_tflite``): the ``serving_default`` computation in TensorFlow
Lite's built-in ops, for uint8 (1, H, W, 3) images of one size (``tflite_model``)::

    interpreter = tf.lite.Interpreter("BASE/1/model.tflite")   # or ai_edge_litert's Interpreter
    interpreter.allocate_tensors()
    images, labels = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(images["index"], image[None])         # image: uint8 (H, W, 3) of that size
    interpreter.invoke()
    values = interpreter.get_tensor(labels["index"])[0]         # uint8 (H, W) annotation values

The class names, one per line in train-id order, are written beside the SavedModel as
``BASE/N/classes.txt``, and the whole class table (annotation value, name, colour, the
ignored values) as ``BASE/N/classes.csv``.
"""

import os
import re
import shutil
import tempfile

import tensorflow as tf
from tensorflow.python.framework import convert_to_constants

from fcn import inference, outputs
from fcn.config import Config

SIGNATURE = "serving_default"
PROBABILITIES_SIGNATURE = "probabilities"
SHAPE_MESSAGE = "images must be uint8 of shape (batch, height, width, 3): RGB, at least one image of 1 x 1 pixels; got shape"
# Marks a temporary folder being written by export, so that one left by a killed export can be removed.
PARTIAL_MARKER = ".fcn_export_partial"
PARTIAL_PREFIX = ".partial-"
# The signatures' input, typed so that saved_model_cli and TF Serving show the contract.
IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
FORMATS = ("saved_model", "tflite")
TFLITE_FILE = "model.tflite"
TFLITE_SIZE = (512, 512)  # (height, width) of --format tflite's input unless told otherwise


def _versions(base: str) -> list[int]:
    return sorted(int(entry) for entry in os.listdir(base) if entry.isdigit() and os.path.isdir(os.path.join(base, entry)))


def _check_base(base: str) -> None:
    """Refuses a ``BASE`` that holds anything but export versions: an export never writes into a user's folder.

    Raises:
      InferenceError: ``base`` is a file, an unversioned SavedModel, or a
        folder holding other files or folders (named).
    """
    if os.path.exists(base) and not os.path.isdir(base):
        raise inference.InferenceError(f"{base} exists and is not a folder: give a new folder or a folder of earlier exports")
    if not os.path.isdir(base):
        return
    if tf.saved_model.contains_saved_model(base):
        raise inference.InferenceError(
            f"{base} is a SavedModel without a version folder (an older export): TensorFlow Serving reads BASE/1, BASE/2, ... "
            f"Move its files into {os.path.join(base, '1')}, or give another --output (nothing was written)"
        )
    ours = lambda entry: entry.startswith(PARTIAL_PREFIX) and os.path.isfile(os.path.join(base, entry, PARTIAL_MARKER))
    others = sorted(e for e in os.listdir(base) if not (e.isdigit() and os.path.isdir(os.path.join(base, e))) and not ours(e))
    if others:
        raise inference.InferenceError(
            f"{base} holds files that are not export versions ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}): "
            "give a new or empty folder, or a folder of earlier exports (nothing was written)"
        )


def _remove_killed_exports(base: str) -> None:
    """Removes the temporary folders of earlier exports that were killed (they carry the marker)."""
    for entry in os.listdir(base):
        path = os.path.join(base, entry)
        if entry.startswith(PARTIAL_PREFIX) and os.path.isfile(os.path.join(path, PARTIAL_MARKER)):
            shutil.rmtree(path, ignore_errors=True)


def checked_images(images, max_pixels: int):
    """``images`` of any shape, checked: uint8 (B, H, W, 3) with H x W <= max_pixels, else InvalidArgumentError."""
    shape = tf.shape(images)
    padded = tf.concat([shape, tf.ones([4], tf.int32)], 0)  # indexable whatever the rank
    good_shape = tf.reduce_all([tf.equal(tf.rank(images), 4), tf.equal(padded[3], 3), padded[0] >= 1, padded[1] >= 1,
                                padded[2] >= 1])  # at least one image: an empty batch failed deep in the convolutions
    pixels = tf.cast(padded[1], tf.int64) * tf.cast(padded[2], tf.int64)
    with tf.control_dependencies([tf.debugging.Assert(good_shape, [SHAPE_MESSAGE, shape])]):
        small_enough = tf.debugging.Assert(
            pixels <= max_pixels,
            [f"images of more than evaluate.max_pixels = {max_pixels} pixels (height x width) are refused; got shape", shape],
        )
    with tf.control_dependencies([small_enough]):
        images = tf.identity(images)
    return tf.ensure_shape(images, [None, None, None, 3])


class _ServingModule(tf.Module):
    """What the SavedModel holds: the model's weights, once, and the two signature functions.

    ``keras.export.ExportArchive.track(model)`` also keeps Keras' own lists of
    the variables (``_all_variables`` beside ``variables``), which the
    SavedModel writer stores as second copies of every weight: an export twice
    the size of the weights. A plain ``tf.Module`` tracking the variables in
    one list stores each once.
    """

    def __init__(self, predictor: inference.Predictor, max_pixels: int):
        super().__init__(name="fcn")
        self.weights = list(predictor.model.weights)  # each once; the functions below capture exactly these
        values = tf.constant(predictor.classes.ids, tf.uint8)  # train id -> annotation value

        @tf.function(input_signature=[IMAGES_SPEC])
        def serve_labels(images):
            labels = predictor.labels(checked_images(images, max_pixels))  # (B, H, W) train ids
            return {"labels": tf.gather(values, labels)}

        @tf.function(input_signature=[IMAGES_SPEC])
        def serve_probabilities(images):
            probabilities = predictor.probabilities(checked_images(images, max_pixels))  # (B, H, W, C)
            labels = tf.gather(values, tf.argmax(probabilities, axis=-1, output_type=tf.int32))
            return {"labels": labels, "probabilities": probabilities}

        self.serve_labels = serve_labels
        self.serve_probabilities = serve_probabilities

    def signatures(self) -> dict:
        return {
            SIGNATURE: self.serve_labels.get_concrete_function(),
            PROBABILITIES_SIGNATURE: self.serve_probabilities.get_concrete_function(),
        }


def tflite_model(module: _ServingModule, size: tuple[int, int]) -> bytes:
    """The labels signature as a TensorFlow Lite flat buffer of TFLite's built-in ops, for one input size.

    TFLite needs the convolutions' input shapes known when it converts; the
    network pads its input to a multiple of its stride with sizes computed
    from the image, so the model is converted for ``size``: input ``images``
    uint8 (1, height, width, 3), output ``labels`` uint8 (1, height, width),
    annotation values as in the SavedModel. ``module`` is that of a
    single-view ``Predictor`` at the image's own size (the band loop and the
    resizing of the test protocol have no TFLite built-in ops): the caller
    resizes its images to ``size``, the protocol's view of them. On an image
    whose view is the image itself (e.g. 512 x 512 for the default
    ``evaluate.test_size``) the labels are the SavedModel's.

    Raises:
      InferenceError: TensorFlow's converter refused the model (its message is kept).
    """
    spec = tf.TensorSpec([1, int(size[0]), int(size[1]), 3], tf.uint8, name="images")
    fixed = tf.function(lambda images: module.serve_labels(images), input_signature=[spec]).get_concrete_function()
    # The weights as constants: TFLite's built-in convolutions take constant filters.
    frozen = convert_to_constants.convert_variables_to_constants_v2(fixed)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        return converter.convert()
    except Exception as error:  # the converter's errors have no common base class
        text = str(error)
        missing = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text))
                         | set(re.findall(r"^\s*tf\.(\w+)\(", text, flags=re.MULTILINE)))
        reason = f"no built-in op for {', '.join(missing)}" if missing else text.strip().splitlines()[-1][:500]
        raise inference.InferenceError(
            f"TensorFlow Lite cannot convert this model: {reason}; the SavedModel (--format saved_model) runs it (nothing was written)"
        ) from None


def export_predictor(predictor: inference.Predictor, base: str, max_pixels: int, format: str = "saved_model",
                     tflite_size: tuple[int, int] = TFLITE_SIZE) -> str:
    """Writes ``predictor`` as the next version of ``base`` (see the module docstring).

    Args:
      format: ``saved_model``, or ``tflite`` (``model.tflite`` for images of ``tflite_size``, see ``tflite_model``).

    Returns:
      the version folder written, ``base/N``.
    """
    if format not in FORMATS:
        raise inference.InferenceError(f"unknown export format {format!r}: {', '.join(FORMATS)}")
    if format == "tflite":
        if not predictor.single_view:
            raise inference.InferenceError(
                "--format tflite runs the network on one view: this config averages evaluate.scales / evaluate.flip "
                "(pass --set evaluate.scales=1.0 --set evaluate.flip=false)"
            )
        # The network at its input's own size: the images are resized to it beforehand, by the caller.
        predictor = inference.Predictor(predictor.model, classes=predictor.classes)
    module = _ServingModule(predictor, max_pixels)
    # A symbolic link to a folder stays one: versions are written into the folder it points to.
    target = os.path.realpath(base)
    _check_base(target)
    os.makedirs(target, exist_ok=True)
    _remove_killed_exports(target)
    temporary = tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=target)  # a new name: never a user's folder
    open(os.path.join(temporary, PARTIAL_MARKER), "w").close()
    model_dir = os.path.join(temporary, "model")
    try:
        if format == "saved_model":
            tf.saved_model.save(module, model_dir, signatures=module.signatures())
        else:
            flat_buffer = tflite_model(module, tflite_size)
            os.makedirs(model_dir)
            with open(os.path.join(model_dir, TFLITE_FILE), "wb") as f:
                f.write(flat_buffer)
    except inference.InferenceError:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    with open(os.path.join(model_dir, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(predictor.classes.names) + "\n")
    predictor.classes.write_csv(os.path.join(model_dir, "classes.csv"))
    version = (_versions(target) or [0])[-1] + 1
    while True:  # another export may have taken the number meanwhile: never write into an existing folder
        try:
            os.mkdir(os.path.join(target, str(version)))
        except FileExistsError:
            version += 1
            continue
        break
    os.replace(model_dir, os.path.join(target, str(version)))  # onto the empty folder just made
    shutil.rmtree(temporary, ignore_errors=True)
    return os.path.join(os.path.abspath(base), str(version))


def export(config: Config, output_dir: str = "", checkpoint: str = "", format: str = "saved_model",
           tflite_size: tuple[int, int] = TFLITE_SIZE) -> tuple[str, str]:
    """``--mode=export``: restores the run's model and exports it as the next version of ``output_dir``.

    Args:
      config: the run's config.
      output_dir: ``BASE`` (default ``LOGS_DIR/export``, or ``LOGS_DIR/export_tflite`` for TFLite).
      checkpoint: see ``inference.restore_model``.
      format: ``saved_model`` or ``tflite`` (see ``export_predictor``).
      tflite_size: (height, width) of the TFLite model's input.

    Returns:
      (the version folder written, the checkpoint prefix exported).

    Raises:
      inference.InferenceError: no usable checkpoint, a ``BASE`` that holds other files, or a
        model TensorFlow Lite cannot convert.
    """
    base = output_dir or os.path.join(config.logs_dir, "export" if format == "saved_model" else "export_tflite")
    outputs.check_writable((base, "--output" if output_dir else "--logs_dir"))
    _check_base(os.path.realpath(base))  # before the work
    predictor, prefix = inference.predictor_from_config(config, checkpoint)
    return export_predictor(predictor, base, config.evaluate.max_pixels, format, tflite_size), prefix


def run(config: Config, args) -> int:
    """``--mode=export``: a SavedModel of the run's predictor, or with ``--format tflite`` a TensorFlow Lite model."""
    path, checkpoint = export(config, args.output, args.checkpoint, args.format, args.input_size)
    if args.format == "tflite":
        height, width = args.input_size
        print(f"checkpoint: {checkpoint}\nTFLite: {os.path.join(path, TFLITE_FILE)} "
              f"(uint8 images (1, {height}, {width}, 3) -> label values)")  # fmt: skip
        return 0
    print(f"checkpoint: {checkpoint}\nSavedModel: {path} (signatures {SIGNATURE}: uint8 images -> label values; "
          f"{PROBABILITIES_SIGNATURE}: label values and class probabilities)")  # fmt: skip
    return 0
