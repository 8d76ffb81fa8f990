"""crfasrnn_keras's released FCN-8s + CRF-RNN for Pascal VOC 2012, all in one place.

sadeepj/crfasrnn_keras published ``crfrnn_keras_model.h5`` (FCN-8s converted
from Caffe, and a CRF-RNN layer that needs that project's compiled op, batch
1). This module reads it without the op and in this project's own layers:

- its geometry (``build_crfasrnn_reference``): 100-pixel zero padding,
  'valid' fc6, learned transposed convolutions and fixed crops, no skip
  scaling, so that the file reproduces its outputs; its preprocessing
  (``crfasrnn_keras_inputs``: fitted into 500 x 500, padded with the mean
  colour) and its labels (``crfasrnn_keras_labels``: cropped and resized
  back, as its demo does);
- its weight file: structure check (it has no published hash), loading into
  that geometry (``load_crfasrnn_keras``) or into this project's FCN-8s +
  CRF-RNN to fine-tune from it (``load_crfasrnn_keras_into_fcn8s``, used by
  ``--init_from``);
- the released model as a ``--pretrained`` name (``PRETRAINED``, ``resolve``,
  ``labeller``, ``protocol``): ``--mode=predict|evaluate --pretrained
  crfasrnn_voc`` fetch it once into ``model.model_dir`` and run it as its
  authors did (``fcn/predict.py``, ``fcn/evaluate.py``).
"""

import dataclasses
import os

import h5py
import keras
import numpy as np

from fcn import backbones, download, errors
from fcn import crf as crf_lib
from fcn import model as model_lib
from fcn.datasets import voc
from fcn.datasets.classes import ClassTable
from fcn.errors import WeightsError
from fcn.weights import read_keras_h5_named

# ---------------------------------------------------------------------------
# Its geometry.

# The image size that project feeds: the longer side resized to 500, padded to 500 x 500.
CRFASRNN_SIZE = 500


def build_crfasrnn_reference(
    num_classes: int = 21,
    fc_channels: int = backbones.VGG_FC_CHANNELS,
    dropout: float = 0.5,
    crf: dict | None = None,
    name: str = "crfasrnn",
) -> keras.Model:
    """FCN-8s (+ CRF-RNN) in the geometry of crfasrnn_keras's released model, with its layer names.

    The reference FCN-8s as that project builds it (``src/crfrnn_model.py``):
    the preprocessed image zero-padded by 100 pixels, ``conv1_1`` and
    ``pool1`` 'valid', the other convolutions and poolings 'same', ``fc6`` a
    7x7 'valid' convolution, learned transposed convolutions (``score2`` 4x4/2
    with a bias, ``score4`` 4x4/2 and ``upsample`` 16x16/8 without), the skip
    scores ``score-pool4`` and ``score-pool3`` on the unscaled pools, cropped
    at offsets 5 and 9 to the upsampled maps, and the final scores cropped at
    offset 31 to the input's size. At 500 x 500 these are exactly that
    project's fixed ``Cropping2D`` layers ((5, 5), (9, 9), ((31, 37), (31, 37))).
    Its CRF-RNN stage reads the *preprocessed* image (BGR minus the mean, the
    padding 0), as the released model does; colour differences are those of
    the RGB image.

    Args:
      num_classes: 21 for the released Pascal VOC model.
      fc_channels: width of fc6 and fc7 (4096 in the released file).
      dropout: rate after fc6 and fc7 (training only).
      crf: None for the FCN alone, or the keyword arguments of
        ``crf.CrfRnn`` (the released model: ``theta_alpha=160, theta_beta=3,
        theta_gamma=3, num_iterations=10``); the layer is named ``crfrnn``.
      name: the model's name.

    Returns:
      A Keras model: images (B, H, W, 3) RGB 0..255 -> float32 logits
      (B, H, W, num_classes), refined by the CRF stage if any; the FCN's own
      logits are the output of the layer ``logits``. The released model is
      meant for 500 x 500 inputs (``crfasrnn_keras_inputs``).
    """
    images = keras.Input((None, None, 3), name="image")
    preprocessed = model_lib.VggPreprocess(name="preprocess")(images)
    x = keras.layers.ZeroPadding2D(100, name="pad100")(preprocessed)
    pools = {}
    for block, convolutions, filters in backbones.VGG16_BLOCKS:
        for i in range(1, convolutions + 1):
            padding = "valid" if (block, i) == (1, 1) else "same"
            x = keras.layers.Conv2D(filters, 3, padding=padding, activation="relu", name=f"conv{block}_{i}")(x)
        x = keras.layers.MaxPooling2D(2, strides=2, padding="valid" if block == 1 else "same", name=f"pool{block}")(x)
        pools[block] = x
    x = keras.layers.Conv2D(fc_channels, 7, activation="relu", name="fc6")(x)
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    x = keras.layers.Conv2D(fc_channels, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="drop7")(x)

    def score(layer_name):
        return keras.layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=layer_name)

    def upsample(size, stride, use_bias, layer_name):
        return keras.layers.Conv2DTranspose(
            num_classes, size, strides=stride, use_bias=use_bias, kernel_initializer=model_lib.BilinearUpsampling(), name=layer_name
        )

    score2 = upsample(4, 2, True, "score2")(score("score-fr")(x))
    score_pool4 = model_lib.CropToReference(5, name="score-pool4c")([score("score-pool4")(pools[4]), score2])
    score4 = upsample(4, 2, False, "score4")(keras.layers.Add(name="fuse-pool4")([score2, score_pool4]))
    score_pool3 = model_lib.CropToReference(9, name="score-pool3c")([score("score-pool3")(pools[3]), score4])
    upscore = upsample(16, 8, False, "upsample")(keras.layers.Add(name="fuse-pool3")([score4, score_pool3]))
    logits = model_lib.CropToReference(31, name="upscore")([upscore, images])
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    if crf is not None:
        logits = crf_lib.CrfRnn(name="crfrnn", **crf)([logits, preprocessed])
    return keras.Model(images, logits, name=name)


def crfasrnn_keras_inputs(image) -> tuple[np.ndarray, tuple[int, int]]:
    """One image as crfasrnn_keras feeds its model (its ``util.get_preprocessed_image``), in RGB.

    The image is resized with PIL's bilinear filter so that it fits 500 x 500
    (scale ``min(500 / W, 500 / H)``, sizes truncated to integers, smaller
    images enlarged), then padded at the bottom and right up to 500 x 500
    with the ImageNet mean colour, which the model's preprocessing turns into
    the zeros that project pads with.

    Args:
      image: uint8 (H, W, 3) RGB.

    Returns:
      (float32 (500, 500, 3) RGB, (h, w) the resized image's size inside it).
    """
    from PIL import Image

    image = np.asarray(image)
    height, width = image.shape[:2]
    ratio = min(CRFASRNN_SIZE / width, CRFASRNN_SIZE / height)
    size = (int(width * ratio), int(height * ratio))
    resized = np.asarray(Image.fromarray(image[:, :, :3]).resize(size, resample=Image.BILINEAR), np.float32)
    padded = np.empty((CRFASRNN_SIZE, CRFASRNN_SIZE, 3), np.float32)
    padded[...] = np.asarray(backbones.VGG_MEAN_BGR[::-1], np.float32)
    padded[: size[1], : size[0]] = resized
    return padded, (size[1], size[0])


def crfasrnn_keras_labels(scores, valid_size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """Labels of one image from the model's (500, 500, C) output, as crfasrnn_keras makes them.

    The argmax over classes, cropped to the resized image (``valid_size``, the
    second value of ``crfasrnn_keras_inputs``) and resized back to the
    original (H, W) by nearest neighbour (PIL resizes its palette image so).
    """
    from PIL import Image

    labels = np.asarray(scores).argmax(-1).astype(np.uint8)[: valid_size[0], : valid_size[1]]
    height, width = original_size
    return np.asarray(Image.fromarray(labels).resize((width, height), resample=Image.NEAREST))


# ---------------------------------------------------------------------------
# Its weight file.


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A published trained model this project can load.

    Attributes:
      url: where the file is published.
      filename: its name in the cache folder.
      md5: its published MD5, or "" when none is published (the file's
        structure is then checked before use).
      num_classes: output classes.
      dataset: the label set (``voc2012``: Pascal VOC's 21 classes, 0 = background).
      input_size: (height, width) the model is meant to be fed
        (``model.crfasrnn_keras_inputs``).
      crf_iterations: mean-field iterations of its CRF stage at test time.
      source: the project that published it.
    """

    url: str
    filename: str
    md5: str
    num_classes: int
    dataset: str
    input_size: tuple[int, int]
    crf_iterations: int
    source: str


PRETRAINED = {
    "crfasrnn_voc": Pretrained(
        url="https://github.com/sadeepj/crfasrnn_keras/releases/download/v1.0/crfrnn_keras_model.h5",
        filename="crfrnn_keras_model.h5",
        md5="",
        num_classes=21,
        dataset="voc2012",
        input_size=(CRFASRNN_SIZE, CRFASRNN_SIZE),
        crf_iterations=10,
        source="sadeepj/crfasrnn_keras release v1.0 (FCN-8s + CRF-RNN, Pascal VOC 2012, converted from the Caffe model)",
    ),
}

# The released model's CRF parameters (its src/crfrnn_model.py), its spatial kernel filtered as its C++ op does: on a
# lattice of the pixel positions, whose approximation the released weights were trained with.
CRFASRNN_CRF = {"theta_alpha": 160.0, "theta_beta": 3.0, "theta_gamma": 3.0, "spatial_kernel": "lattice"}
# The CRF weights of its file, in the order its layer creates them, and ours.
_CRFASRNN_CRF_WEIGHTS = (
    ("spatial_ker_weights", "spatial_kernel_weights"),
    ("bilateral_ker_weights", "bilateral_kernel_weights"),
    ("compatibility_matrix", "compatibility"),
)


def crfasrnn_keras_layout(num_classes: int, fc_channels: int) -> dict[str, list[tuple[int, ...]]]:
    """Layer name -> weight shapes of crfasrnn_keras's model file (the released one: 21 classes, fc 4096)."""
    layout = {}
    previous = 3
    for block, convolutions, filters in backbones.VGG16_BLOCKS:
        for i in range(1, convolutions + 1):
            layout[f"conv{block}_{i}"] = [(3, 3, previous, filters), (filters,)]
            previous = filters
    c, f = num_classes, fc_channels
    layout.update({
        "fc6": [(7, 7, 512, f), (f,)],
        "fc7": [(1, 1, f, f), (f,)],
        "score-fr": [(1, 1, f, c), (c,)],
        "score2": [(4, 4, c, c), (c,)],
        "score-pool4": [(1, 1, 512, c), (c,)],
        "score4": [(4, 4, c, c)],
        "score-pool3": [(1, 1, 256, c), (c,)],
        "upsample": [(16, 16, c, c)],
        "crfrnn": [(c, c)] * 3,
    })
    return layout


def check_crfasrnn_keras(path: str, num_classes: int | None = None, fc_channels: int | None = None):
    """Reads a crfasrnn_keras model file and checks its structure against the released model's.

    The file has no published hash: instead every layer name and weight shape
    is checked (Keras 2 ``save_weights`` / ``save`` layouts and Keras 3
    ``.weights.h5`` are read). The class count is taken from ``score-fr`` and
    the fc width from ``fc6`` unless given, then every other layer must agree:
    any fc width is accepted (the released file's is 4096), so that small
    files of the same structure can stand in for it.

    Returns:
      (layer -> weights in our order, num_classes, fc_channels); the CRF
      weights come in the order (spatial, bilateral, compatibility).

    Raises:
      WeightsError: naming the file and every layer that is missing, extra or
        of another shape.
    """
    if not os.path.isfile(path):
        raise WeightsError(
            f"crfasrnn_keras model {path!r} not found: download {PRETRAINED['crfasrnn_voc'].url} "
            "or pass the path of crfrnn_keras_model.h5"
        )
    try:
        named = read_keras_h5_named(path)
    except OSError as error:
        raise WeightsError(f"{path}: cannot be read as an HDF5 (.h5) Keras weights file ({error})") from None
    if num_classes is None:
        score = named.get("score-fr")
        num_classes = int(score[-1][1].shape[-1]) if score else 21
    if fc_channels is None:
        fc6 = named.get("fc6")
        fc_channels = int(fc6[0][1].shape[-1]) if fc6 else backbones.VGG_FC_CHANNELS
    layout = crfasrnn_keras_layout(num_classes, fc_channels)
    problems = [f"layer {name} of the file is not in the model" for name in named if name not in layout]
    weights = {}
    for name, shapes in layout.items():
        if name not in named:
            problems.append(f"layer {name} is missing")
            continue
        entries = named[name]
        if name == "crfrnn":
            entries = _crf_in_order(entries)
            if entries is None:
                problems.append(
                    f"layer crfrnn holds weights {[n for n, _ in named[name]]}, expected "
                    + ", ".join(n for n, _ in _CRFASRNN_CRF_WEIGHTS)
                )
                continue
        found = [tuple(v.shape) for _, v in entries]
        if found != shapes:
            problems.append(f"layer {name} has weights of shapes {found}, expected {shapes}")
            continue
        weights[name] = [np.asarray(v, np.float32) for _, v in entries]
    if problems:
        raise WeightsError(
            f"{path} is not a crfasrnn_keras FCN-8s + CRF-RNN model file ({num_classes} classes, fc width "
            f"{fc_channels}); nothing was loaded:\n  " + "\n  ".join(problems)
        )
    non_finite = [name for name, values in weights.items() if not all(np.isfinite(v).all() for v in values)]
    if non_finite:
        raise WeightsError(f"{path}: layers {', '.join(non_finite)} hold NaN or infinite values; download the file again")
    return weights, num_classes, fc_channels


def _crf_in_order(entries):
    """The CRF weights as (spatial, bilateral, compatibility), by their names, or by position when unnamed."""
    names = [name for name, _ in entries]
    if len(entries) != 3:
        return None
    if all(name.isdigit() for name in names):  # Keras 3 numbers its variables in creation order
        return entries
    ordered = []
    for file_name, _ in _CRFASRNN_CRF_WEIGHTS:
        matches = [entry for entry in entries if entry[0].split("/")[-1].split(":")[0] == file_name]
        if len(matches) != 1:
            return None
        ordered.extend(matches)
    return ordered


def load_crfasrnn_keras(
    path: str,
    num_classes: int | None = None,
    fc_channels: int | None = None,
    num_iterations: int = 10,
) -> keras.Model:
    """crfasrnn_keras's FCN-8s + CRF-RNN from its model file (``crfrnn_keras_model.h5``).

    The file's structure is checked first (``check_crfasrnn_keras``); the
    model is ``model.build_crfasrnn_reference`` with theta 160 / 3 / 3 and
    ``num_iterations`` mean-field iterations (10, the released model's), and
    takes RGB 0..255 images, 500 x 500 as ``model.crfasrnn_keras_inputs``
    prepares them. The CRF matrices map as they are: that project's layer
    computes ``U - compatibility_matrix (spatial_ker_weights S +
    bilateral_ker_weights B)``, as ``crf.mean_field`` does with
    ``compatibility``, ``spatial_kernel_weights``, ``bilateral_kernel_weights``;
    only the initial values differ (-identity there, 1 - identity here).

    Args:
      path: the file.
      num_classes: expected classes (21 for the released model); None accepts
        the file's.
      fc_channels: expected fc6/fc7 width (4096 released); None accepts the file's.
      num_iterations: mean-field iterations.

    Raises:
      WeightsError: a file that is not such a model, naming what does not fit.
    """
    weights, num_classes, fc_channels = check_crfasrnn_keras(path, num_classes, fc_channels)
    net = build_crfasrnn_reference(
        num_classes, fc_channels=fc_channels, crf=dict(CRFASRNN_CRF, num_iterations=num_iterations)
    )
    for name, values in weights.items():
        net.get_layer(name).set_weights(values)
    return net


# Our FCN-8s layer <- crfasrnn_keras's layer, for ``--init_from`` (``load_crfasrnn_keras_into_fcn8s``).
_FCN8S_FROM_CRFASRNN = {
    **{f"block{b}_conv{i}": f"conv{b}_{i}" for b, n, _ in backbones.VGG16_BLOCKS for i in range(1, n + 1)},
    "fc6": "fc6",
    "fc7": "fc7",
    "score_fr": "score-fr",
    "upscore2": "score2",
    "score_pool4": "score-pool4",
    "upscore_pool4": "score4",
    "score_pool3": "score-pool3",
}


def is_crfasrnn_keras_file(source: str) -> bool:
    """Whether ``--init_from SOURCE`` names a Keras weights file (crfasrnn_keras's) rather than a run or checkpoint."""
    return os.path.isfile(source) and (source.endswith((".h5", ".hdf5")) or h5py.is_hdf5(source))


def load_crfasrnn_keras_into_fcn8s(model: keras.Model, path: str) -> list[str]:
    """Starts this project's FCN-8s (+ CRF-RNN) from crfasrnn_keras's model file, for fine-tuning (``--init_from``).

    The file's structure is checked (``check_crfasrnn_keras``), then its
    classes and fc width against the model's: a file that does not fit is
    refused, naming every layer, and nothing is copied. What carries over:

    - ``conv1_1`` .. ``conv5_3`` -> ``block1_conv1`` .. ``block5_conv3``,
      ``fc6``, ``fc7``, ``score-fr`` -> ``score_fr``, as they are;
    - ``score2`` -> ``upscore2``; its bias (the model's transposed
      convolutions have none) is added to ``score_pool4``'s bias, with which
      it is summed at ``fuse_pool4``: the same sums;
    - ``score4`` -> ``upscore_pool4``;
    - ``score-pool4`` / ``score-pool3`` -> ``score_pool4`` / ``score_pool3``,
      kernels divided by the model's skip scaling (0.01 x pool4, 1e-4 x
      pool3), so the skip scores are the file's (the scaling only changes
      how fast training moves them);
    - ``crfrnn``'s ``spatial_ker_weights``, ``bilateral_ker_weights`` and
      ``compatibility_matrix`` -> ``spatial_kernel_weights``,
      ``bilateral_kernel_weights`` and ``compatibility`` as they are: that
      layer computes ``U - compatibility_matrix (spatial S + bilateral B)``
      as ``crf.mean_field`` does (only the initial values differ, -identity
      there and 1 - identity here). Without ``model.crf`` they are not used.

    What does not: the final ``upsample`` (a learned 16 x 16 / 8 transposed
    convolution there, the fixed bilinear ``upscore8`` here) carries over
    only when it is bilinear; and the geometry differs (no 100-pixel
    padding, a 'same' fc6, 'same' transposed convolutions and one crop at
    the end instead of 'valid' ones and the fixed crops 5, 9 and 31), so the
    score maps are not aligned on the same pixels as there, and borders see
    other padding: the model starts from the released weights, but its
    outputs are not the released model's. ``model.build_crfasrnn_reference``
    (``--pretrained``) is the exact one.

    Returns:
      notes on what did not carry over exactly, one per line.

    Raises:
      WeightsError: naming the file and every layer that does not fit.
    """
    values, file_classes, file_fc = check_crfasrnn_keras(path)
    backbone = model_lib.backbone_of(model)
    num_classes = model.get_layer("score_fr").filters
    fc_channels = model.get_layer("fc6").filters
    problems = []
    if backbone != "vgg16":
        extra = sorted(set(backbones.BACKBONES[backbone].layers) - set(_FCN8S_FROM_CRFASRNN))
        problems.append(f"model.backbone={backbone}: the file has VGG16's conv1_1 .. conv5_3, nothing for {', '.join(extra)}")
    if file_classes != num_classes or file_fc != fc_channels:
        expected = crfasrnn_keras_layout(num_classes, fc_channels)
        for name, shapes in crfasrnn_keras_layout(file_classes, file_fc).items():
            if shapes != expected[name]:
                problems.append(f"layer {name} has weights of shapes {shapes}, the model needs {expected[name]}")
        if file_classes != num_classes:
            problems.append(f"the file scores {file_classes} classes (Pascal VOC's 21), the model {num_classes}: train on its "
                            f"dataset (--config configs/voc.yaml)")
        if file_fc != fc_channels:
            problems.append(f"the file's fc6/fc7 are {file_fc} wide: set model.fc_channels={file_fc}")
    if problems:
        raise WeightsError(f"{path} does not fit this FCN-8s; nothing was loaded:\n  " + "\n  ".join(problems))

    notes = []
    new = {ours: list(values[theirs]) for ours, theirs in _FCN8S_FROM_CRFASRNN.items()}
    kernel2, bias2 = new["upscore2"]
    new["upscore2"] = [kernel2]
    for layer, scale in (("score_pool4", "scale_pool4"), ("score_pool3", "scale_pool3")):
        factor = float(model.get_layer(scale).factor)
        kernel, bias = new[layer]
        new[layer] = [(kernel / np.float32(factor)).astype(np.float32), bias]
    new["score_pool4"][1] = (new["score_pool4"][1] + bias2).astype(np.float32)
    upsample = values["upsample"][0]
    bilinear = np.asarray(model_lib.BilinearUpsampling()(upsample.shape))
    deviation = float(np.abs(upsample - bilinear).max())
    if deviation > 1e-6:
        notes.append(f"upsample: not used; its kernel is {deviation:.3g} at most from bilinear, and upscore8 here is "
                     "fixed bilinear")
    if model_lib.has_crf(model):
        new["crf"] = list(values["crfrnn"])
    else:
        notes.append("crfrnn: not used (model.crf is off)")
    shapes = {name: [tuple(v.shape) for v in model.get_layer(name).weights] for name in new}
    wrong = [name for name in new if shapes[name] != [tuple(v.shape) for v in new[name]]]
    if wrong:  # a model not built by build_fcn8s
        raise WeightsError(f"{path}: layers {', '.join(wrong)} of the model have other weight shapes; nothing was loaded")
    for name, arrays in new.items():
        model.get_layer(name).set_weights(arrays)
    notes.append("geometry: this FCN-8s has no 100-pixel padding and no fixed crops (5, 9, 31), so it starts from "
                 "the file's weights but does not reproduce the released model's outputs (--pretrained does)")
    return notes


def fetch_pretrained(name: str, model_dir: str | None = None, progress: bool = True) -> str:
    """Downloads (once) a ``PRETRAINED`` model file into ``model_dir`` and returns its path.

    ``download.download_file`` fetches it: the bytes arrive in
    ``<file>.partial``, a call after an interruption continues it (HTTP
    Range), and only a file whose structure is that of the released model
    (``check_crfasrnn_keras``; and its MD5, when one is published) is renamed
    to its final name; a file that fails is deleted. A file already in the
    cache is returned as it is (its structure is checked again when loaded).

    Args:
      name: a key of ``PRETRAINED``.
      model_dir: the cache folder (default: Keras' ``~/.keras/models``).
      progress: show a progress bar.

    Raises:
      WeightsError: the download failed (what arrived is kept for the next
        call) or the file is not the released model (it is deleted).
    """


    entry = PRETRAINED[name]
    folder = os.path.abspath(model_dir) if model_dir else os.path.join(os.path.expanduser("~"), ".keras", "models")
    path = os.path.join(folder, entry.filename)
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)

    def check(partial: str) -> None:
        if entry.md5 and download.file_digest(partial, "md5") != entry.md5:
            raise WeightsError(f"the file downloaded from {entry.url} does not have the published MD5 {entry.md5}; it was deleted")
        try:
            check_crfasrnn_keras(partial, num_classes=entry.num_classes)
        except WeightsError as error:
            raise WeightsError(
                f"the file downloaded from {entry.url} is not the released {name} model, so it was deleted and "
                f"nothing was put in {folder}: {error}"
            ) from None

    manual = f"Rerun to resume, or download {entry.filename} yourself and pass its path to --pretrained."
    try:
        return download.download_file(entry.url, path, check, progress, hint=manual)
    except errors.DownloadError as error:
        raise WeightsError(f"could not fetch the {name} model from {entry.url} into {path}: {error}") from None


# ---------------------------------------------------------------------------
# The released model as a --pretrained name.


def entry_of(source: str) -> Pretrained:
    """The description of a ``PRETRAINED`` name or of a local file of one, without fetching anything.

    Raises:
      WeightsError: an unknown name that is no file.
    """
    if source in PRETRAINED:
        return PRETRAINED[source]
    if os.path.isfile(source):
        return PRETRAINED["crfasrnn_voc"]  # the one released file this project reads
    names = ", ".join(sorted(PRETRAINED))
    raise WeightsError(f"--pretrained {source}: neither a released model ({names}) nor an existing file")


def resolve(source: str, model_dir: str = "", progress: bool = True) -> tuple[str, Pretrained]:
    """(path of the model file, its description) for a ``PRETRAINED`` name or a local file of one.

    Raises:
      WeightsError: an unknown name that is no file, or a failed download.
    """
    entry = entry_of(source)
    if source in PRETRAINED:
        return fetch_pretrained(source, model_dir or None, progress), entry
    return source, entry


def class_table(entry: Pretrained) -> ClassTable:
    """The classes a released model predicts."""
    if entry.dataset == "voc2012":
        return voc.class_table()
    raise WeightsError(f"released model of an unknown label set {entry.dataset!r}")


def labeller(path: str, entry: Pretrained):
    """``labels_of(uint8 (H, W, 3)) -> train ids (H, W)`` of the model in ``path``."""
    import tensorflow as tf

    net = load_crfasrnn_keras(path, num_classes=entry.num_classes, num_iterations=entry.crf_iterations)
    forward = tf.function(lambda inputs: net(inputs, training=False), reduce_retracing=True)

    def labels_of(image):
        inputs, valid = crfasrnn_keras_inputs(image)
        scores = forward(inputs[None])[0].numpy()
        return crfasrnn_keras_labels(scores, valid, image.shape[:2]).astype(np.int32)

    return labels_of


def protocol(entry: Pretrained) -> dict:
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
