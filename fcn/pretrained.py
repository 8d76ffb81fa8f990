"""Released models of other projects, run as their authors ran them: ``--mode=predict|evaluate --pretrained NAME|FILE``.

``crfasrnn_voc`` is crfasrnn_keras's released FCN-8s + CRF-RNN for Pascal VOC
2012 (``weights.PRETRAINED``): fetched once into ``model.model_dir``, its
structure checked (it has no published hash), rebuilt in that project's own
geometry (``model.build_crfasrnn_reference``) with this project's CRF-RNN in
place of its compiled op. Each image goes through that project's
preprocessing (fitted into 500 x 500, padded), and the labels are cropped and
resized back to the image's size as its demo does; the outputs are those of
``--mode=predict``: the label PNG (a palette PNG of VOC values 0..20), the
mask and the overlay in the VOC colours. ``--mode=evaluate`` scores the same
labels (``evaluate.evaluate_pretrained``).
"""

import os

import numpy as np

from fcn import model as model_lib
from fcn import predict as predict_lib
from fcn import weights
from fcn.datasets import voc
from fcn.datasets.classes import ClassTable


def entry_of(source: str) -> weights.Pretrained:
    """The description of a ``PRETRAINED`` name or of a local file of one, without fetching anything.

    Raises:
      weights.WeightsError: an unknown name that is no file.
    """
    if source in weights.PRETRAINED:
        return weights.PRETRAINED[source]
    if os.path.isfile(source):
        return weights.PRETRAINED["crfasrnn_voc"]  # the one released file this project reads
    names = ", ".join(sorted(weights.PRETRAINED))
    raise weights.WeightsError(f"--pretrained {source}: neither a released model ({names}) nor an existing file")


def resolve(source: str, model_dir: str = "", progress: bool = True) -> tuple[str, weights.Pretrained]:
    """(path of the model file, its description) for a ``PRETRAINED`` name or a local file of one.

    Raises:
      weights.WeightsError: an unknown name that is no file, or a failed download.
    """
    entry = entry_of(source)
    if source in weights.PRETRAINED:
        return weights.fetch_pretrained(source, model_dir or None, progress), entry
    return source, entry


def class_table(entry: weights.Pretrained) -> ClassTable:
    """The classes a released model predicts."""
    if entry.dataset == "voc2012":
        return voc.class_table()
    raise weights.WeightsError(f"released model of an unknown label set {entry.dataset!r}")


def labeller(path: str, entry: weights.Pretrained):
    """``labels_of(uint8 (H, W, 3)) -> train ids (H, W)`` of the model in ``path``."""
    import tensorflow as tf

    net = weights.load_crfasrnn_keras(path, num_classes=entry.num_classes, num_iterations=entry.crf_iterations)
    forward = tf.function(lambda inputs: net(inputs, training=False), reduce_retracing=True)

    def labels_of(image):
        inputs, valid = model_lib.crfasrnn_keras_inputs(image)
        scores = forward(inputs[None])[0].numpy()
        return model_lib.crfasrnn_keras_labels(scores, valid, image.shape[:2]).astype(np.int32)

    return labels_of


def protocol(entry: weights.Pretrained) -> dict:
    """How a released model segments an image, for ``metrics.json``."""
    return {
        "test_size": list(entry.input_size),
        "preprocessing": f"as {entry.source.split(' ')[0]}: fitted into {entry.input_size[0]} x {entry.input_size[1]} "
        "(bilinear), padded with the mean colour; labels cropped to the image and resized back (nearest)",
        "scales": [1.0],
        "flip": False,
        "crf": True,
        "crf_iterations": entry.crf_iterations,
    }


def predict_images(source: str, paths, output_dir: str, model_dir: str = "", max_pixels: int = 40_000_000,
                   progress: bool = True) -> predict_lib.PredictResult:
    """``--mode=predict --pretrained SOURCE``: ``predict.predict_images`` with a released model.

    Raises:
      weights.WeightsError: no such model, a failed download, or a file whose structure does not fit.
      predict.InferenceError: a bad path, colliding names, or outputs that would write over other files.
    """
    files, unopenable = predict_lib.list_images(paths)
    written_before = predict_lib.check_outputs(files, output_dir)
    path, entry = resolve(source, model_dir, progress)
    classes = class_table(entry)
    result = predict_lib.PredictResult({}, dict(unopenable), path)
    predict_lib.write_predictions(files, output_dir, written_before, labeller(path, entry), classes, max_pixels, result, progress)
    return result
