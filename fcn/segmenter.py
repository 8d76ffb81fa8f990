"""``fcn.Segmenter``: a trained model as one Python object, from a run or a released model file.

    from fcn import Segmenter

    segmenter = Segmenter.from_run("logs/sample")             # or Segmenter.from_pretrained("crfasrnn_voc")
    labels = segmenter("photo.jpg")                            # int32 (H, W) train ids, at the image's size
    names = [segmenter.classes.names[i] for i in np.unique(labels)]
    mask = segmenter.colourise(labels)                         # uint8 (H, W, 3) in the class colours
    blended = segmenter.overlay("photo.jpg", labels, alpha=0.5)
    probabilities = segmenter.probabilities("photo.jpg")       # float32 (H, W, C)
    batch = segmenter(["a.jpg", "b.png"])                      # a list in, a list out

A run's images go through the run's test protocol, the ``fcn.inference.Predictor``
that ``--mode=predict``, ``evaluate`` and ``export`` use (``evaluate.test_size``,
``scales``, ``flip``); a released model through its authors' own preprocessing,
as ``--mode=predict --pretrained`` does (``fcn.crfasrnn_keras``). Either way the
labels are those ``--mode=predict`` writes (its label PNG holds
``segmenter.classes.to_values(labels)``).

Images: a file path, the bytes of an image file, a PIL image or a uint8 array
(H, W, 3) RGB (grey (H, W) and RGBA are converted); a list of them is
segmented as a batch (images of one size are run together), and a uint8 array
(B, H, W, 3) gives a (B, H, W) array. An image of more than
``evaluate.max_pixels`` pixels is refused before it is decoded.
"""

import io
import os
import warnings

import numpy as np
from PIL import Image

from fcn import checkpoints, crfasrnn_keras, inference
from fcn import config as config_lib
from fcn.datasets.classes import ClassTable
from fcn.datasets.decode import decode_image_bytes

InferenceError = inference.InferenceError
CHECKPOINT_CHOICES = ("latest", "best")


class Segmenter:
    """Segments images with a trained model: labels, probabilities, colours and overlays.

    Build one with ``from_run``, ``from_config``, ``from_model`` or ``from_pretrained``. It
    holds the model: build it once and call it for every image (the network is
    compiled at the first call for all image sizes).

    Attributes:
      classes: the model's ``ClassTable`` (names, colours, and the
        annotation values of the train ids the labels hold).
      max_pixels: images with more pixels (height x width) are refused.
      source: the checkpoint prefix or model file the weights came from.
    """

    def __init__(self, backend, classes: ClassTable, max_pixels: int, source: str):
        self._backend = backend
        self.classes = classes
        self.max_pixels = int(max_pixels)
        self.source = source

    # -- building ---------------------------------------------------------------

    @classmethod
    def from_run(cls, logs_dir: str, checkpoint: str = "latest", overrides=()) -> "Segmenter":
        """The model of a training run, with the run's own config (``LOGS_DIR/config.yaml``).

        Args:
          logs_dir: the run directory.
          checkpoint: ``"latest"`` (the newest intact checkpoint), ``"best"``
            (the best validation mean IoU, ``LOGS_DIR/best``), or the path of a
            run directory, checkpoint folder or checkpoint prefix.
          overrides: (key, value) pairs applied over the run's config, e.g.
            ``[("evaluate.flip", True)]`` for another test protocol.

        Raises:
          InferenceError: no config or no usable checkpoint, with the way out.
        """
        path = os.path.join(logs_dir, "config.yaml")
        if not os.path.isfile(path):
            raise InferenceError(f"{path} does not exist: give the directory of a training run (it writes config.yaml)")
        config = config_lib.load_config(path, [("logs_dir", str(logs_dir)), *overrides])
        if checkpoint == "latest":
            checkpoint = ""
        elif checkpoint == "best":
            checkpoint = os.path.join(logs_dir, checkpoints.BEST_DIR)
        return cls.from_config(config, checkpoint)

    @classmethod
    def from_config(cls, config: config_lib.Config, checkpoint: str = "") -> "Segmenter":
        """The model of ``config.logs_dir`` restored into the config's model, as ``--mode=predict`` does.

        Args:
          config: a resolved config (what ``FCN.py`` builds from its flags).
          checkpoint: see ``inference.restore_model`` ("" = the newest intact one).
        """
        predictor, prefix = inference.predictor_from_config(config, checkpoint)
        return cls(_RunBackend(predictor), predictor.classes, config.evaluate.max_pixels, prefix)

    @classmethod
    def from_model(cls, model, config: config_lib.Config) -> "Segmenter":
        """A Keras FCN-8s already built (trained or not) with the test protocol of ``config`` (``inference.make_predictor``)."""
        predictor = inference.make_predictor(model, config)
        return cls(_RunBackend(predictor), predictor.classes, config.evaluate.max_pixels, model.name)

    @classmethod
    def from_pretrained(cls, name: str = "crfasrnn_voc", model_dir: str = "", max_pixels: int | None = None,
                        progress: bool = True) -> "Segmenter":
        """A released model: ``crfasrnn_voc`` (crfasrnn_keras's FCN-8s + CRF-RNN for Pascal VOC), or its file.

        Args:
          name: a name of ``crfasrnn_keras.PRETRAINED`` (fetched once into
            ``model_dir``) or the path of a ``crfrnn_keras_model.h5``.
          model_dir: the cache folder (default: ``model.model_dir``'s default).
          max_pixels: the size limit (default: ``evaluate.max_pixels``'s default).
          progress: show the download's progress.

        Raises:
          errors.WeightsError: an unknown name, a failed download, or a file of another structure.
        """
        path, entry = crfasrnn_keras.resolve(name, model_dir or config_lib.ModelConfig().model_dir, progress)
        if max_pixels is None:
            max_pixels = config_lib.EvaluateConfig().max_pixels
        return cls(_ReleasedBackend(path, entry), crfasrnn_keras.class_table(entry), max_pixels, path)

    # -- segmenting -------------------------------------------------------------

    def __call__(self, images):
        """Labels at each image's own size: int32 (H, W) train ids (index ``classes.names``).

        Args:
          images: one image (see the module docstring), a list of them, or a
            uint8 array (B, H, W, 3).

        Returns:
          int32 (H, W) for one image; a list of them for a list; (B, H, W) for a 4-D array.

        Raises:
          InferenceError: an image that cannot be read or is above ``max_pixels``.
        """
        return self._map(images, self._backend.labels)

    def probabilities(self, images):
        """Class probabilities at each image's own size: float32 (H, W, C), channel c = train id c.

        The labels are their argmax (up to ties). Takes what ``__call__`` takes
        and returns one array per image the same way, (B, H, W, C) for a 4-D array.
        """
        return self._map(images, self._backend.probabilities)

    def colourise(self, labels) -> np.ndarray:
        """Labels (..., H, W) in the class colours: uint8 (..., H, W, 3)."""
        return self.classes.colourise(labels)

    def overlay(self, image, labels, alpha: float = inference.OVERLAY_ALPHA) -> np.ndarray:
        """The image with its labels' colours blended in: ``(1 - alpha) x image + alpha x colour``, uint8 (H, W, 3)."""
        return inference.overlay(self.read(image), labels, alpha, self.classes)

    def class_shares(self, labels) -> list[tuple[int, float]]:
        """(train id, share of the pixels) of the classes present in ``labels``, largest first."""
        labels = np.asarray(labels)
        counts = np.bincount(labels[labels < self.classes.num_classes].ravel(), minlength=self.classes.num_classes)
        total = max(int(labels.size), 1)
        return [(int(c), counts[c] / total) for c in np.argsort(-counts, kind="stable") if counts[c]]

    def read(self, image) -> np.ndarray:
        """One image as the model takes it: uint8 RGB (H, W, 3), checked against ``max_pixels``.

        Raises:
          InferenceError: not an image, an unreadable file, an empty image or one above ``max_pixels``.
        """
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            refused = inference.too_large(path, self.max_pixels)
            if refused:
                raise InferenceError(refused)
            return self._checked(inference.read_image(path))
        if isinstance(image, (bytes, bytearray, memoryview)):
            return self._checked(self._decode(bytes(image)))
        if isinstance(image, Image.Image):
            self._check_size(image.size[1], image.size[0])
            return np.asarray(image.convert("RGB"))
        return self._checked(_rgb_array(image))

    # -- helpers ----------------------------------------------------------------

    def _map(self, images, run):
        if isinstance(images, (list, tuple)):
            return run([self.read(image) for image in images])
        if not isinstance(images, (str, bytes, os.PathLike, Image.Image)) and getattr(images, "ndim", None) == 4:
            array = np.asarray(images)  # (B, H, W, 3): a numpy array or a tensor
            return np.stack(run([self.read(image) for image in array]))
        return run([self.read(images)])[0]

    def _check_size(self, height: int, width: int) -> None:
        if height < 1 or width < 1:
            raise InferenceError(f"an empty image ({width}x{height} pixels)")
        if height * width > self.max_pixels:
            raise InferenceError(
                f"a {width}x{height} image = {height * width:,} pixels, more than evaluate.max_pixels = {self.max_pixels:,}"
            )

    def _checked(self, image: np.ndarray) -> np.ndarray:
        self._check_size(*image.shape[:2])
        return image

    def _decode(self, contents: bytes) -> np.ndarray:
        """The contents of an image file, sized from the header, then decoded as the input pipeline decodes files."""
        import tensorflow as tf

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(contents)) as picture:
                    width, height = picture.size
        except Image.DecompressionBombError:
            raise InferenceError(f"an image of more than evaluate.max_pixels = {self.max_pixels:,} pixels") from None
        except Exception:
            width = height = None  # not a format PIL reads: the decoder says what is wrong
        if width is not None:
            self._check_size(height, width)  # before decoding: bounds the memory a request can take
        try:
            return decode_image_bytes(tf.constant(contents)).numpy()
        except tf.errors.OpError as error:
            reason = error.message.split("\n")[0].split("[[")[0].strip().rstrip(";")
            raise InferenceError(f"not an image it can read (JPEG, PNG, GIF and BMP are read): {reason}") from None


def _rgb_array(image) -> np.ndarray:
    """An array-like image as uint8 RGB (H, W, 3): grey (H, W) or (H, W, 1) repeated, RGBA's alpha dropped."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise InferenceError(
            f"images are uint8 RGB 0..255; got an array of {array.dtype} (convert, e.g. (x * 255).round().astype(np.uint8))"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InferenceError(f"an image is an array (height, width, 3) (or grey, or RGBA); got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


class _RunBackend:
    """A run's model through its ``Predictor``: images of one size are run as one batch."""

    def __init__(self, predictor: inference.Predictor):
        self.predictor = predictor

    def _batched(self, images: list, function) -> list:
        results = [None] * len(images)
        by_size = {}
        for k, image in enumerate(images):
            by_size.setdefault(image.shape, []).append(k)
        for indices in by_size.values():
            outputs = function(np.stack([images[k] for k in indices])).numpy()  # (B, H, W[, C])
            for k, output in zip(indices, outputs):
                results[k] = output
        return results

    def labels(self, images: list) -> list:
        return self._batched(images, self.predictor.labels)

    def probabilities(self, images: list) -> list:
        return self._batched(images, self.predictor.probabilities)


class _ReleasedBackend:
    """A released crfasrnn_keras model, each image prepared as its authors did (``fcn.crfasrnn_keras``)."""

    def __init__(self, path: str, entry: crfasrnn_keras.Pretrained):
        import tensorflow as tf

        self.net = crfasrnn_keras.load_crfasrnn_keras(path, num_classes=entry.num_classes, num_iterations=entry.crf_iterations)
        self._forward = tf.function(lambda inputs: self.net(inputs, training=False), reduce_retracing=True)

    def _scores(self, images: list):
        """(the model's (N, 500, 500, C) logits, each image's (valid size, original size))."""
        prepared = [crfasrnn_keras.crfasrnn_keras_inputs(image) for image in images]
        scores = self._forward(np.stack([inputs for inputs, _ in prepared])).numpy()
        return scores, [(valid, image.shape[:2]) for (_, valid), image in zip(prepared, images)]

    def labels(self, images: list) -> list:
        scores, sizes = self._scores(images)
        return [crfasrnn_keras.crfasrnn_keras_labels(s, valid, size).astype(np.int32) for s, (valid, size) in zip(scores, sizes)]

    def probabilities(self, images: list) -> list:
        """The softmax cropped to the image and resized back by nearest neighbour, as its labels are."""
        scores, sizes = self._scores(images)
        results = []
        for logits, ((h, w), (height, width)) in zip(scores, sizes):
            logits = logits[:h, :w].astype(np.float64)
            exponentials = np.exp(logits - logits.max(-1, keepdims=True))
            cropped = (exponentials / exponentials.sum(-1, keepdims=True)).astype(np.float32)
            channels = [Image.fromarray(cropped[:, :, c], "F").resize((width, height), Image.NEAREST) for c in range(cropped.shape[2])]
            results.append(np.stack([np.asarray(c) for c in channels], axis=-1))
        return results
