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

import os

import h5py
import keras
import numpy as np

from fcn import backbones
from fcn import model as model_lib
from fcn.errors import WeightsError

# Keras' published ImageNet weights (the files keras.applications.VGG16 / VGG19 fetch) are under
# KERAS_WEIGHTS_ORIGIN + backbone + "/" (their names and MD5s: ``backbones.BACKBONES``).
KERAS_WEIGHTS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/"
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
    filename, md5 = backbones.BACKBONES[backbone].keras_weights[which]
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
    entry = backbones.BACKBONES[backbone]
    if source in entry.keras_weights:
        path = fetch_keras_weights(source, model_dir, backbone=backbone)
    else:
        path = source
    if not os.path.isfile(path):
        raise WeightsError(
            f"{backbone.upper()} weights {path!r} not found: --vgg_weights takes none, imagenet, imagenet_notop or the "
            f"path of a Keras {backbone.upper()} .h5 file or MatConvNet's "
            f"{os.path.basename(entry.matconvnet_url)} ({entry.matconvnet_url})"
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
    """The backbone whose layers the file holds (the one with the most layers), or None."""
    fits = [entry for entry in backbones.BACKBONES.values() if set(entry.layers) <= set(names)]
    return max(fits, key=lambda entry: len(entry.layers)).name if fits else None


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
    wanted = list(backbones.BACKBONES[backbone].layers) + (["fc6", "fc7"] if has_top else [])
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
