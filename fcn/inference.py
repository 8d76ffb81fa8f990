"""Running a trained FCN-8s: restoring its weights and the test protocol, shared by every inference mode.

- ``restore_model`` rebuilds the run's FCN-8s from its config and restores a
  checkpoint (the newest intact one of ``logs_dir/checkpoints`` unless told
  otherwise; ``fcn/checkpoints.py`` finds and checks it);
- ``Predictor`` runs it on uint8 images of any size (batch dimension first)
  with the test protocol: each image fitted into the test size (the training
  scale ``data.base_size`` by default, or left at its own size with
  ``evaluate.test_size: none``), optionally averaging the softmax
  probabilities of several scales and of the horizontally flipped image, the
  logits resized back and the labels taken at the image's own size; compiled
  once for all sizes (``make_predictor`` builds it from a config). evaluate,
  visualize, predict and export all use it;
- ``read_image``, ``too_large``: the images inference accepts;
- ``write_label_png`` writes the submission format of the run's class table
  (``ClassTable``): a PNG of the image's size holding annotation values,
  8-bit greyscale 1..150 for ADE20K (train id + 1; 0 "other" is never
  predicted), a palette PNG in the VOC colour map with values 0..20 for VOC;
  ``overlay`` blends the labels' colours over the image.
"""

import os
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image

from fcn import checkpoints, datasets, errors
from fcn import model as model_lib
from fcn.config import Config
from fcn.datasets import ade20k, decode
from fcn.datasets.classes import IGNORE_LABEL, ClassTable
from fcn.datasets.files import display_path
from fcn.errors import InferenceError

OVERLAY_ALPHA = 0.5  # weight of the mask colour in the overlay
OVERLAY_ROWS = 512  # rows blended at a time


# ---------------------------------------------------------------------------
# Restoring a trained model.


def restore_model(config: Config, checkpoint: str = ""):
    """Builds the run's FCN-8s (with its CRF stage if ``model.crf``) and restores its trained weights.

    Args:
      config: the run's config (``data.num_classes`` and ``model.fc_channels``
        must be those of the checkpoint: pass the run's ``config.yaml``).
      checkpoint: a run directory, a checkpoint folder (``LOGS_DIR/checkpoints``,
        ``LOGS_DIR/best``) or a checkpoint prefix; empty = the run's newest
        intact checkpoint (a damaged newer one is reported and passed over).

    Returns:
      (keras model, the checkpoint prefix restored).

    Raises:
      InferenceError: no checkpoint, none intact, or one of another model configuration.
    """
    path = checkpoint or config.logs_dir
    classes = datasets.run_classes(config.logs_dir, config.data)  # the run's classes decide the model's outputs
    # Every weight comes from the checkpoint; the CRF stage runs its test-time iterations.
    model = model_lib.build_from_config(config.model, classes.num_classes, crf_iterations=config.model.crf_test_iterations)
    try:
        prefix = checkpoints.restore_model_weights(model, path)
    except checkpoints.NoCheckpointError:
        if checkpoint:
            raise InferenceError(
                f"--checkpoint {checkpoint}: no checkpoint there (give a run directory, a checkpoint folder "
                "such as LOGS_DIR/best, or a checkpoint prefix)"
            ) from None
        raise InferenceError(
            f"no checkpoint in {os.path.join(config.logs_dir, checkpoints.CHECKPOINTS_DIR)}: train first "
            "(--mode=train with the same --config / --logs_dir) or pass --checkpoint"
        ) from None
    except checkpoints.MismatchError as error:
        raise InferenceError(
            f"{error}. This config's model has num_classes={classes.num_classes}, "
            f"backbone={config.model.backbone}, fc_channels={config.model.fc_channels}, crf={config.model.crf}: pass the run's own config "
            "(--config LOGS_DIR/config.yaml)"
        ) from None
    except checkpoints.CheckpointError as error:
        raise InferenceError(str(error)) from None
    if not config.model.crf and checkpoints.holds_layer_weights(prefix, model_lib.CRF_WEIGHTS):
        # The FCN part restored on its own: running it would silently drop the trained CRF stage.
        raise InferenceError(
            f"{prefix} holds a model with the CRF stage: pass --crf, or the run's own config (--config LOGS_DIR/config.yaml)"
        )
    return model, prefix


# ---------------------------------------------------------------------------
# Inference.


# Values (pixels x classes x batch) of one band of the full-resolution score map: labels are taken band by
# band, so a large image never holds its whole (H, W, C) float map (64 MB of float32 per band).
BAND_VALUES = 1 << 24


class Predictor:
    """Inference at the scale the model was trained at, scored at the image's own size.

    Both methods take uint8 RGB images (B, H, W, 3) of any size and are compiled
    once for all sizes; the network is one compiled function shared by all the
    views and both methods.

    The protocol (mmsegmentation's ADE20K test pipeline): with ``test_size``
    (long edge, short edge), every view of the image is resized bilinearly to
    fit ``test_size x scale`` keeping its aspect ratio, i.e. by
    ``factor = min(long / max(H, W), short / min(H, W)) x scale`` to
    ``round(H x factor) x round(W x factor)``; without it (``None``), by
    ``scale`` alone (the image's own size at scale 1). The model runs on each
    view (and on its mirror image with ``flip``), its logits are mirrored back
    and resized bilinearly to (H, W), and the softmax probabilities of the
    views are averaged (mmsegmentation's ``aug_test``). Labels are the argmax
    at (H, W); with a single view, the argmax of the resized logits.

    Labels are computed in horizontal bands of ``band_values`` floats, so the
    full-resolution (B, H, W, C) map of a large image is never held; only
    ``probabilities`` returns it whole.

    With ``slide`` (``evaluate.mode: slide``, how Cityscapes is usually
    scored), the network runs on overlapping windows of each view instead of
    the whole view: windows of ``window`` (height, width) every ``stride``
    pixels, the last one of a row or column flush with the border
    (mmsegmentation's ``slide_inference``); the windows' softmax probabilities
    are averaged where they overlap, and their logarithm stands for the view's
    logits (same softmax, same argmax).

    A model with several outputs (``model.with_fcn_output``: the FCN's logits
    and the CRF-refined ones) gives a list of results, one per output, from
    one run of the network per view (or window).

    Args:
      model: an FCN-8s (images -> float32 logits (B, h, w, C)), or a model
        returning a list of such logits.
      scales: image scales of the views, relative to the test size.
      flip: add the horizontally flipped view of every scale.
      test_size: (long edge, short edge) the views are fitted into, or None
        for the image's own size.
      band_values: floats of one band of the full-resolution score map.
      classes: the run's ``ClassTable``: names, colours and the label
        values of train ids (default ADE20K's for the model's number of outputs).
      slide: None (the whole view at once), or ((window height, width),
        (stride rows, columns)).
    """

    def __init__(self, model, scales=(1.0,), flip: bool = False, test_size=None, band_values: int = BAND_VALUES,
                 classes: ClassTable | None = None, slide=None):
        self.model = model
        self.slide = None if slide is None else (tuple(int(v) for v in slide[0]), tuple(int(v) for v in slide[1]))
        self._classes = classes
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        self.test_size = None if test_size is None else tuple(int(s) for s in test_size)
        self.band_values = int(band_values)
        spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
        # The network as one function of any image size, called by every view: traced once, not once
        # per view and method (a trace of FCN-8s takes seconds, as long as running several views).
        self._forward = tf.function(
            lambda images: self.model(images, training=False),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
        )
        self.probabilities = tf.function(self._probabilities, input_signature=[spec])
        self.labels = tf.function(self._labels, input_signature=[spec])

    @property
    def classes(self) -> ClassTable:
        """The class table given, or ADE20K's for the model's number of outputs."""
        if self._classes is None:
            self._classes = ade20k.class_table(tf.nest.flatten(self.model.output_shape)[-1])
        return self._classes

    @property
    def single_view(self) -> bool:
        return self.scales == (1.0,) and not self.flip

    def _views(self) -> list[tuple[float, bool]]:
        """(scale, flipped) of every view."""
        return [(scale, flipped) for scale in self.scales for flipped in ((False, True) if self.flip else (False,))]

    def view_size(self, size, scale: float):
        """The network input size (h, w) of the view at ``scale`` of an image of ``size`` (H, W): int32 (2,)."""
        size = tf.cast(size, tf.float64)
        factor = tf.constant(scale, tf.float64)
        if self.test_size is not None:
            long_edge, short_edge = self.test_size
            fit = tf.minimum(long_edge / tf.reduce_max(size), short_edge / tf.reduce_min(size))
            factor = fit * scale
        return tf.maximum(tf.cast(tf.round(size * factor), tf.int32), 1)

    def _network_logits(self, images, scale, flipped):
        """The model's logits of one view at the network's resolution: uint8 (B, H, W, 3) -> (B, h, w, C)."""
        if self.test_size is None and scale == 1.0:
            inputs = tf.cast(images, tf.float32)
        else:  # bilinear from the uint8 image: no float copy of a large image
            inputs = tf.image.resize(images, self.view_size(tf.shape(images)[1:3], scale), method="bilinear")
        if flipped:
            inputs = tf.reverse(inputs, [2])
        logits = self._forward(inputs) if self.slide is None else self._slide_logits(inputs)
        return tf.nest.map_structure(lambda t: tf.reverse(t, [2]) if flipped else t, logits)

    def _slide_logits(self, inputs):
        """The view's log class probabilities from overlapping windows: float32 (B, H, W, 3) -> (B, H, W, C)."""
        (window_h, window_w), (stride_h, stride_w) = self.slide
        shape = tf.shape(inputs)
        height, width = shape[1], shape[2]
        crop_h, crop_w = tf.minimum(window_h, height), tf.minimum(window_w, width)
        rows = (tf.maximum(height - crop_h, 0) + stride_h - 1) // stride_h + 1
        columns = (tf.maximum(width - crop_w, 0) + stride_w - 1) // stride_w + 1
        structure = self.model.output
        sums = [tf.zeros([shape[0], height, width, int(t.shape[-1])]) for t in tf.nest.flatten(structure)]

        def body(k, sums, count):
            y_end = tf.minimum((k // columns) * stride_h + crop_h, height)
            x_end = tf.minimum((k % columns) * stride_w + crop_w, width)
            y, x = tf.maximum(y_end - crop_h, 0), tf.maximum(x_end - crop_w, 0)
            logits = tf.nest.flatten(self._forward(inputs[:, y:y_end, x:x_end]))  # (B, crop_h, crop_w, C) each
            pad = [[y, height - y_end], [x, width - x_end]]
            sums = [total + tf.pad(tf.nn.softmax(t), [[0, 0], *pad, [0, 0]]) for total, t in zip(sums, logits)]
            return k + 1, sums, count + tf.pad(tf.ones([y_end - y, x_end - x]), pad)

        _, sums, count = tf.while_loop(lambda k, *_: k < rows * columns, body, (0, sums, tf.zeros([height, width])))
        return tf.nest.pack_sequence_as(structure, [tf.math.log(total / count[None, :, :, None]) for total in sums])

    def _all_views(self, images):
        """(the nesting of the model's outputs, per view the flat list of its outputs at the network's resolution)."""
        outputs = [self._network_logits(images, scale, flipped) for scale, flipped in self._views()]
        return outputs[0], [tf.nest.flatten(view) for view in outputs]

    def _band(self, views, output: int, start, stop, size, softmax: bool):
        """Rows ``start:stop`` of output ``output`` at full resolution: (B, stop - start, width, C).

        Each view's logits are resized bilinearly (half-pixel centres, as
        ``tf.image.resize``) to the image's size, only for these rows; with
        several views (or ``softmax``) their softmax probabilities are averaged.
        """
        total = None
        for view in views:
            logits = view[output]  # (B, h, w, C)
            band = _resize_rows(logits, start, stop, size)  # (B, rows, W, C)
            if softmax or len(views) > 1:
                band = tf.nn.softmax(band)
            total = band if total is None else total + band
        return total / len(views) if len(views) > 1 else total

    def _probabilities(self, images):
        """uint8 (B, H, W, 3) -> float32 class probabilities (B, H, W, C), averaged over the views."""
        structure, views = self._all_views(images)
        size = tf.shape(images)[1:3]
        if self.test_size is None and self.single_view:
            return tf.nest.map_structure(tf.nn.softmax, structure)
        bands = [self._band(views, k, 0, size[0], size, softmax=True) for k in range(len(views[0]))]
        return tf.nest.pack_sequence_as(structure, bands)

    def _labels(self, images):
        """uint8 (B, H, W, 3) -> int32 train ids (B, H, W), taken band by band at full resolution."""
        structure, views = self._all_views(images)
        if self.test_size is None and self.single_view:  # the model's own output is at (H, W) already
            return tf.nest.map_structure(lambda t: tf.argmax(t, axis=-1, output_type=tf.int32), structure)
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        classes = tf.shape(views[0][0])[-1]
        band_rows = tf.maximum(self.band_values // tf.maximum(batch * width * classes, 1), 1)
        bands = (height + band_rows - 1) // band_rows
        outputs = len(views[0])

        def body(index, arrays):
            start = index * band_rows
            stop = tf.minimum(start + band_rows, height)
            new = []
            for k, array in enumerate(arrays):
                band = self._band(views, k, start, stop, shape[1:3], softmax=False)
                band = tf.argmax(band, axis=-1, output_type=tf.int32)  # (B, rows, W)
                new.append(array.write(index, tf.transpose(band, [1, 0, 2])))  # (rows, B, W): concat joins rows
            return index + 1, new

        arrays = [tf.TensorArray(tf.int32, size=bands, infer_shape=False) for _ in range(outputs)]
        _, arrays = tf.while_loop(lambda index, _: index < bands, body, (0, arrays))
        labels = [tf.transpose(array.concat(), [1, 0, 2]) for array in arrays]
        return tf.nest.pack_sequence_as(structure, labels)


def _resize_rows(values, start, stop, size):
    """Rows ``start:stop`` of ``values`` (B, h, w, C) resized bilinearly to ``size`` (H, W): (B, stop - start, W, C).

    Half-pixel centres without antialiasing, as ``tf.image.resize(method="bilinear")``:
    output pixel i samples the input at (i + 0.5) x h / H - 0.5, clamped to the border
    (equal to it up to float rounding); a band of rows is that band of the whole resize.
    """
    in_size = tf.cast(tf.shape(values)[1:3], tf.float32)
    scale = tf.cast(size, tf.float32) / in_size
    translation = tf.stack([-tf.cast(start, tf.float32), 0.0])
    return tf.raw_ops.ScaleAndTranslate(
        images=values, size=tf.stack([stop - start, size[1]]), scale=scale, translation=translation,
        kernel_type="triangle", antialias=False,
    )


def make_predictor(model, config: Config) -> Predictor:
    """A ``Predictor`` of ``model`` with the config's test protocol: ``evaluate.test_size``, ``scales``, ``flip``, ``mode``.

    The one place where evaluate, visualize, predict, export and the notebook
    get their protocol, so that they cannot disagree.
    """
    e = config.evaluate
    classes = datasets.run_classes(config.logs_dir, config.data)
    slide = (e.window, e.stride) if e.mode == "slide" else None
    return Predictor(model, e.scales, e.flip, e.resolved_test_size(config.data.base_size), classes=classes, slide=slide)


def predictor_from_config(config: Config, checkpoint: str = "", with_fcn: bool = False) -> tuple[Predictor, str]:
    """Restores the run's model into a ``Predictor`` with the config's protocol (``make_predictor``).

    Args:
      config, checkpoint: see ``restore_model``.
      with_fcn: for a model with the CRF stage, predict [FCN alone, FCN + CRF]
        (``model.with_fcn_output``); ignored without it.

    Returns:
      (predictor, the checkpoint prefix restored).
    """
    model, prefix = restore_model(config, checkpoint)
    if with_fcn and model_lib.has_crf(model):
        model = model_lib.with_fcn_output(model)
    return make_predictor(model, config), prefix


# ---------------------------------------------------------------------------
# Files.



def read_image(path: str) -> np.ndarray:
    """Reads an image file as the input pipeline does: uint8 RGB (H, W, 3).

    Raises:
      InferenceError: the file is missing or is not an image it can read.
    """
    try:
        return decode.read_image_file(path)
    except errors.DataError as error:
        raise InferenceError(str(error)) from None


def too_large(path: str, max_pixels: int, size=None) -> str:
    """Why an image is refused for its size, or "" when it has at most ``max_pixels`` pixels.

    The size is read from the file's header, before decoding (or given as
    ``size`` (H, W)), so a huge image costs no memory; a file whose header
    cannot be read is left to the decoder to report.
    """
    if size is None:
        bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # only the header is read: any size will do
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as picture:
                    width, height = picture.size
        except Exception:  # not an image PIL reads: the decoder names the problem
            return ""
        finally:
            Image.MAX_IMAGE_PIXELS = bomb_limit
    else:
        height, width = size
    if height * width <= max_pixels:
        return ""
    return (
        f"{display_path(path)}: {width}x{height} = {height * width:,} pixels, more than evaluate.max_pixels = "
        f"{max_pixels:,}: skipped (raise it with --set evaluate.max_pixels=N if the memory allows, see docs/evaluation.md)"
    )


def write_label_png(path: str, train_ids, classes: ClassTable | None = None) -> None:
    """Writes the submission format: the annotation values of the class table (``ClassTable.write_label_png``).

    ADE20K's (the default): 8-bit greyscale, values 1..150 (train id + 1);
    VOC's: a palette PNG in the VOC colour map, values 0..20.

    Args:
      path: the PNG to write.
      train_ids: integer array (H, W) of train ids 0..C-1.
      classes: the run's class table.
    """
    (classes or ade20k.class_table()).write_label_png(path, train_ids)


def write_rgb_png(path: str, rgb) -> None:
    Image.fromarray(np.asarray(rgb, np.uint8), mode="RGB").save(path)


def overlay(image, train_ids, alpha: float = OVERLAY_ALPHA, classes: ClassTable | None = None) -> np.ndarray:
    """The image blended with its label map in the class table's colours (default ADE20K's).

    Args:
      image: uint8 (H, W, 3).
      train_ids: integer (H, W); 255 (ignored) pixels are left as they are.

    Returns:
      uint8 (H, W, 3).
    """
    image, train_ids = np.asarray(image), np.asarray(train_ids)
    colours = classes or ade20k.class_table()
    result = np.empty(image.shape, np.uint8)
    for start in range(0, image.shape[0], OVERLAY_ROWS):  # float copies of a band of rows, not of a large image
        rows = slice(start, start + OVERLAY_ROWS)
        band = image[rows].astype(np.float32)
        blended = (1 - alpha) * band + alpha * colours.colourise(train_ids[rows]).astype(np.float32)
        keep = (train_ids[rows] == IGNORE_LABEL)[..., None]
        result[rows] = np.round(np.where(keep, band, blended))
    return result


def figure_text(text: str) -> str:
    """``text`` as matplotlib draws it literally: a ``$`` would start mathtext (and a bad formula raises)."""
    return text.replace("$", r"\$")
