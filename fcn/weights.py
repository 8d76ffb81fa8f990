"""Pretrained weights: Keras' VGG16 / VGG19 files, MatConvNet .mat files, crfasrnn_keras's released model.

Building a model (``fcn/model.py``) never touches the network or a file: the
entry points that want pretrained weights call ``load_vgg_weights`` on the
model they built. A file is checked against the model as a whole before
anything is copied: a layer of the file the model lacks, a layer of the model
the file lacks or a shape that differs refuses it, naming the file and every
such layer; a file is never loaded in part.

``load_crfasrnn_keras`` reads crfasrnn_keras's ``crfrnn_keras_model.h5``
(FCN-8s + CRF-RNN for Pascal VOC) into that project's geometry
(``model.build_crfasrnn_reference``) after checking the file's structure;
``load_crfasrnn_keras_into_fcn8s`` starts this project's FCN-8s (+ CRF-RNN)
from it for fine-tuning (``--init_from``); ``PRETRAINED`` describes where
the file is published and ``fetch_pretrained`` downloads it (resumable,
structure-checked, atomic).
"""

import dataclasses
import os

import h5py
import keras
import numpy as np

from fcn import errors
from fcn import model as model_lib
from fcn.errors import WeightsError

# Keras' published ImageNet weights (the files keras.applications.VGG16 / VGG19 fetch), under
# KERAS_WEIGHTS_ORIGIN + backbone + "/".
KERAS_WEIGHTS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/"
KERAS_WEIGHTS = {
    "vgg16": {
        "imagenet": ("vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
        "imagenet_notop": ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
    },
    "vgg19": {
        "imagenet": ("vgg19_weights_tf_dim_ordering_tf_kernels.h5", "cbe5617147190e668d6c5d5026f83318"),
        "imagenet_notop": ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6"),
    },
}
# MatConvNet's files (FCN.tensorflow downloads the VGG19 one); no published hash, so not fetched here.
MATCONVNET_URLS = {
    "vgg16": "http://www.vlfeat.org/matconvnet/models/beta16/imagenet-vgg-verydeep-16.mat",
    "vgg19": "http://www.vlfeat.org/matconvnet/models/beta16/imagenet-vgg-verydeep-19.mat",
}
# The ImageNet classifier of a VGG file (Keras' name, MatConvNet's name): FCN-8s replaces it with its score layers.
_CLASSIFIER_LAYERS = ("predictions", "fc8")



def fetch_keras_weights(which: str, model_dir: str | None = None, origin: str | None = None, backbone: str = "vgg16") -> str:
    """Downloads (once) and returns the path of Keras' VGG16 or VGG19 ImageNet weights.

    Keras' own download helper fetches the file and checks its published MD5.

    Args:
      which: ``imagenet`` (with the fully connected top) or ``imagenet_notop``.
      model_dir: the cache folder (default: Keras' ``~/.keras/models``).
      origin: the folder URL holding the backbones' folders (default: Keras' own).
      backbone: ``vgg16`` or ``vgg19``.

    Raises:
      WeightsError: the download failed or the file's MD5 does not match.
    """
    filename, md5 = KERAS_WEIGHTS[backbone][which]
    url = (origin or KERAS_WEIGHTS_ORIGIN).rstrip("/") + f"/{backbone}/" + filename
    return _fetch(url, filename, model_dir, md5, what=f"{which} {backbone.upper()} weights", fix="--vgg_weights")


def _fetch(url: str, filename: str, model_dir: str | None, md5: str | None, what: str, fix: str) -> str:
    if model_dir:
        # Keras silently falls back to /tmp when the cache folder does not exist yet.
        os.makedirs(model_dir, exist_ok=True)
        cache = {"cache_dir": os.path.abspath(model_dir), "cache_subdir": "."}
        cached = os.path.join(os.path.abspath(model_dir), filename)
    else:
        cache = {"cache_subdir": "models"}
        cached = os.path.join(os.path.expanduser("~"), ".keras", "models", filename)
    existed = os.path.exists(cached)
    try:
        if md5:
            return os.path.normpath(keras.utils.get_file(filename, url, file_hash=md5, hash_algorithm="md5", **cache))
        return os.path.normpath(keras.utils.get_file(filename, url, **cache))
    except Exception as error:  # Keras raises ValueError for a bad hash and various errors for the network
        if os.path.exists(cached) and (md5 or not existed):
            os.remove(cached)  # never keep a file that failed verification or arrived in part
        raise WeightsError(
            f"could not fetch {what} from {url} into {cached}: {error}. "
            f"Download {filename} yourself and pass its path to {fix}."
        ) from None


def read_keras_h5_named(path: str) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Reads layer weights with their names from a Keras ``.h5`` file, old (Keras 2) or new (Keras 3) format.

    Keras 2's ``save_weights`` / ``save`` layout (``layer_names`` and
    ``weight_names`` attributes, e.g. ``conv1_1/kernel:0``) names each weight;
    Keras 3's ``.weights.h5`` numbers them (``"0"``, ``"1"``, ...).

    Returns:
      layer name -> [(weight name, value)] in the file's order; layers without
      weights are left out.
    """
    layers = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:  # Keras 2 / legacy layout
            for layer_name in root.attrs["layer_names"]:
                layer_name = layer_name.decode() if isinstance(layer_name, bytes) else str(layer_name)
                group = root[layer_name]
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
                if names:
                    layers[layer_name] = [(n, np.asarray(group[n])) for n in names]
        elif "layers" in root:  # Keras 3 .weights.h5 layout

            def visit(_, node):
                if isinstance(node, h5py.Group) and "vars" in node and "name" in node["vars"].attrs:
                    variables = node["vars"]
                    if len(variables):
                        layers[str(node["vars"].attrs["name"])] = [
                            (str(i), np.asarray(variables[str(i)])) for i in range(len(variables))
                        ]

            root["layers"].visititems(visit)
        else:
            raise WeightsError(f"{path}: not a Keras weights file (no 'layer_names' attribute and no 'layers' group)")
    return layers


def read_keras_h5(path: str) -> dict[str, list[np.ndarray]]:
    """Reads layer weights from a Keras ``.h5`` file, old (Keras 2) or new (Keras 3) format.

    Returns:
      layer name -> its weights in order (kernel, bias).
    """
    return {layer: [value for _, value in weights] for layer, weights in read_keras_h5_named(path).items()}


def _mat_value(value):
    """Unwraps scipy.io's 1x1 object/cell arrays down to the value inside."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        value = str(value.item()) if value.size == 1 else "".join(value.ravel())
    return value


def read_matconvnet(path: str) -> dict[str, list[np.ndarray]]:
    """Reads MatConvNet's ``imagenet-vgg-verydeep-16.mat`` or ``-19.mat`` into Keras layer names and layouts.

    MatConvNet stores kernels as (W, H, in, out) for RGB input; they are
    transposed to (H, W, in, out) and the first layer's input channels are
    reversed to the BGR order the model feeds. Names map conv1_1 ->
    block1_conv1, ..., conv5_4 -> block5_conv4; fc6, fc7 (and the classifier
    fc8) stay.
    """
    import scipy.io  # only needed for this format

    try:
        contents = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=False)
    except Exception as error:  # scipy raises several kinds for a file that is not a .mat
        raise WeightsError(f"{path}: cannot be read as a MatConvNet .mat file ({error})") from None
    if "layers" not in contents:
        raise WeightsError(f"{path}: no 'layers' variable; expected MatConvNet's imagenet-vgg-verydeep-16.mat or -19.mat")
    layers = {}
    for entry in np.asarray(contents["layers"]).ravel():
        try:
            layer = _mat_value(entry)
            name = _mat_value(layer.name)
            if _mat_value(layer.type) != "conv":
                continue
            weights = np.asarray(layer.weights).ravel()
            kernel = np.transpose(np.asarray(weights[0], np.float32), (1, 0, 2, 3))  # (W, H, in, out) -> (H, W, in, out)
            bias = np.asarray(weights[1], np.float32).reshape(-1)
        except (AttributeError, IndexError, ValueError, TypeError) as error:
            raise WeightsError(f"{path}: a layer is not in MatConvNet's SimpleNN form (name, type, weights {{W, b}}): {error}") from None
        if name.startswith("conv"):
            block, index = name[4:].split("_")
            name = f"block{block}_conv{index}"
        if name == "block1_conv1":
            kernel = kernel[:, :, ::-1, :]  # RGB -> BGR input channels
        layers[name] = [kernel, bias]
    return layers


def _matconvnet_name(name: str) -> str:
    """block3_conv4 -> conv3_4 (MatConvNet's name); other names unchanged."""
    if name.startswith("block") and "_conv" in name:
        block, index = name[5:].split("_conv")
        return f"conv{block}_{index}"
    return name


def _read_weights(source: str, model_dir: str | None, backbone: str) -> tuple[str, dict[str, list[np.ndarray]], dict[str, str]]:
    """(path, layer -> weights under the model's names, model's name -> the file's own name)."""
    if source in KERAS_WEIGHTS[backbone]:
        path = fetch_keras_weights(source, model_dir, backbone=backbone)
    else:
        path = source
    if not os.path.isfile(path):
        raise WeightsError(
            f"{backbone.upper()} weights {path!r} not found: --vgg_weights takes none, imagenet, imagenet_notop or the "
            f"path of a Keras {backbone.upper()} .h5 file or MatConvNet's "
            f"{os.path.basename(MATCONVNET_URLS[backbone])} ({MATCONVNET_URLS[backbone]})"
        )
    if path.endswith(".mat"):
        weights = read_matconvnet(path)
        return path, weights, {name: _matconvnet_name(name) for name in weights}
    try:
        weights = read_keras_h5(path)
    except OSError as error:
        raise WeightsError(f"{path}: cannot be read as an HDF5 (.h5) weights file ({error})") from None
    return path, weights, {name: name for name in weights}


def _backbone_of_file(names) -> str | None:
    for backbone in ("vgg19", "vgg16"):
        if set(model_lib.conv_layer_names(backbone)) <= set(names):
            return backbone
    return None


def load_vgg_weights(model: keras.Model, source: str, model_dir: str | None = None) -> None:
    """Copies pretrained VGG16 or VGG19 weights into an FCN-8s built by ``build_fcn8s``.

    The backbone is the model's (``model.backbone_of``); ``imagenet`` and
    ``imagenet_notop`` fetch Keras' file for it. Conv layers are copied as
    they are; a file with the fully connected top gives fc6 (fc1 reshaped to
    7x7x512xF) and fc7 (fc2 as 1x1xFxF). The ImageNet classifier
    (``predictions``, MatConvNet's ``fc8``) is not used.

    Raises:
      WeightsError: naming the file and every layer that does not fit: layers
        of the file the model lacks, layers of the model the file lacks (the
        fully connected top may be absent as a whole), shapes that differ.
        Nothing is copied then.
    """
    if source in ("", "none"):
        return
    backbone = model_lib.backbone_of(model)
    path, weights, file_names = _read_weights(source, model_dir, backbone)
    for keras_name, fcn_name, shape in (("fc1", "fc6", (7, 7, 512, -1)), ("fc2", "fc7", None)):
        if keras_name in weights and fcn_name not in weights:  # Keras' dense top
            kernel, *rest = weights.pop(keras_name)
            if shape is None and kernel.ndim == 2:
                kernel = kernel.reshape(1, 1, *kernel.shape)
            elif shape is not None and kernel.ndim == 2 and kernel.shape[0] == 7 * 7 * 512:
                kernel = kernel.reshape(shape)
            weights[fcn_name] = [kernel, *rest]
            file_names[fcn_name] = file_names.pop(keras_name)
    has_top = "fc6" in weights or "fc7" in weights
    if source == "imagenet" and not has_top:
        raise WeightsError(f"{path}: has no fully connected layers (fc1, fc2) although imagenet (with top) was asked for")
    wanted = list(model_lib.conv_layer_names(backbone)) + (["fc6", "fc7"] if has_top else [])
    problems = []
    for name in weights:
        if name not in wanted and name not in _CLASSIFIER_LAYERS:
            problems.append(f"layer {file_names[name]} of the file is not in the model")
    fc_mismatch = False
    for name in wanted:
        if name not in weights:
            problems.append(f"layer {name} is missing" + (f" ({_matconvnet_name(name)})" if path.endswith(".mat") else ""))
            continue
        expected = [tuple(v.shape) for v in model.get_layer(name).weights]
        found = [tuple(v.shape) for v in weights[name]]
        if expected != found:
            label = file_names[name] if file_names[name] == name else f"{file_names[name]} (for {name})"
            problems.append(f"layer {label} has weights of shapes {found}, the model needs {expected}")
            fc_mismatch |= name in ("fc6", "fc7")
    if problems:
        hints = []
        file_backbone = _backbone_of_file(weights)
        if file_backbone and file_backbone != backbone:
            hints.append(f"these are {file_backbone.upper()} weights: set model.backbone={file_backbone} "
                         f"(--set model.backbone={file_backbone}) or pass {backbone.upper()} weights")
        if fc_mismatch:
            fc6 = model.get_layer("fc6")
            width = weights["fc6"][0].shape[-1] if "fc6" in weights else "?"
            hints.append(f"the file's fc6/fc7 are {width} wide and the model has model.fc_channels={fc6.filters}: "
                         f"set model.fc_channels={width}, or use imagenet_notop weights")
        raise WeightsError(
            f"{path} does not fit this FCN-8s (model.backbone={backbone}); nothing was loaded:\n  "
            + "\n  ".join(problems + hints)
        )
    for name in wanted:
        model.get_layer(name).set_weights(weights[name])


# ---------------------------------------------------------------------------
# crfasrnn_keras's released FCN-8s + CRF-RNN (Pascal VOC).


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
        input_size=(model_lib.CRFASRNN_SIZE, model_lib.CRFASRNN_SIZE),
        crf_iterations=10,
        source="sadeepj/crfasrnn_keras release v1.0 (FCN-8s + CRF-RNN, Pascal VOC 2012, converted from the Caffe model)",
    ),
}

# The released model's CRF parameters (its src/crfrnn_model.py).
CRFASRNN_CRF = {"theta_alpha": 160.0, "theta_beta": 3.0, "theta_gamma": 3.0}
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
    for block, convolutions, filters in model_lib.VGG16_BLOCKS:
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
        fc_channels = int(fc6[0][1].shape[-1]) if fc6 else model_lib.VGG16_FC_CHANNELS
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
    net = model_lib.build_crfasrnn_reference(
        num_classes, fc_channels=fc_channels, crf=dict(CRFASRNN_CRF, num_iterations=num_iterations)
    )
    for name, values in weights.items():
        net.get_layer(name).set_weights(values)
    return net


# Our FCN-8s layer <- crfasrnn_keras's layer, for ``--init_from`` (``load_crfasrnn_keras_into_fcn8s``).
_FCN8S_FROM_CRFASRNN = {
    **{f"block{b}_conv{i}": f"conv{b}_{i}" for b, n, _ in model_lib.VGG16_BLOCKS for i in range(1, n + 1)},
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
        extra = sorted(set(model_lib.conv_layer_names(backbone)) - set(_FCN8S_FROM_CRFASRNN))
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
    from fcn import download

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
