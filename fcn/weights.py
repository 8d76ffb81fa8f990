"""Pretrained VGG16 weight files: fetching Keras' files, reading Keras .h5 and MatConvNet .mat, loading into FCN-8s.

Building a model (``fcn/model.py``) never touches the network or a file: the
entry points that want pretrained weights call ``load_vgg_weights`` on the
model they built.
"""

import os

import h5py
import keras
import numpy as np

from fcn.model import VGG16_CONV_LAYERS, VGG16_FC_CHANNELS

# Keras' published VGG16 ImageNet weights (the files keras.applications.VGG16 fetches).
KERAS_WEIGHTS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
KERAS_WEIGHTS = {
    "imagenet": ("vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
    "imagenet_notop": ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
}


class WeightsError(ValueError):
    """Pretrained weights that cannot be used; the message names the file and layer."""


def fetch_keras_weights(which: str, model_dir: str | None = None, origin: str | None = None) -> str:
    """Downloads (once) and returns the path of Keras' VGG16 ImageNet weights.

    Keras' own download helper fetches the file and checks its published MD5.

    Args:
      which: ``imagenet`` (with the fully connected top) or ``imagenet_notop``.
      model_dir: the cache folder (default: Keras' ``~/.keras/models``).
      origin: the folder URL the file is fetched from (default: Keras' own).

    Raises:
      WeightsError: the download failed or the file's MD5 does not match.
    """
    filename, md5 = KERAS_WEIGHTS[which]
    url = (origin or KERAS_WEIGHTS_ORIGIN).rstrip("/") + "/" + filename
    if model_dir:
        # Keras silently falls back to /tmp when the cache folder does not exist yet.
        os.makedirs(model_dir, exist_ok=True)
        cache = {"cache_dir": os.path.abspath(model_dir), "cache_subdir": "."}
        cached = os.path.join(os.path.abspath(model_dir), filename)
    else:
        cache = {"cache_subdir": "models"}
        cached = os.path.join(os.path.expanduser("~"), ".keras", "models", filename)
    try:
        return keras.utils.get_file(filename, url, file_hash=md5, hash_algorithm="md5", **cache)
    except Exception as error:  # Keras raises ValueError for a bad hash and various errors for the network
        if os.path.exists(cached):
            os.remove(cached)  # never keep a file that failed verification
        raise WeightsError(
            f"could not fetch {which} VGG16 weights from {url} into {cached}: {error}. "
            f"Download {filename} yourself and pass its path to --vgg_weights."
        ) from None


def read_keras_h5(path: str) -> dict[str, list[np.ndarray]]:
    """Reads layer weights from a Keras ``.h5`` file, old (Keras 2) or new (Keras 3) format.

    Returns:
      layer name -> its weights in order (kernel, bias).
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
                    layers[layer_name] = [np.asarray(group[n]) for n in names]
        elif "layers" in root:  # Keras 3 .weights.h5 layout

            def visit(_, node):
                if isinstance(node, h5py.Group) and "vars" in node and "name" in node["vars"].attrs:
                    variables = node["vars"]
                    if len(variables):
                        layers[str(node["vars"].attrs["name"])] = [np.asarray(variables[str(i)]) for i in range(len(variables))]

            root["layers"].visititems(visit)
        else:
            raise WeightsError(f"{path}: not a Keras weights file (no 'layer_names' attribute and no 'layers' group)")
    return layers


def _mat_value(value):
    """Unwraps scipy.io's 1x1 object/cell arrays down to the value inside."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        value = str(value.item()) if value.size == 1 else "".join(value.ravel())
    return value


def read_matconvnet(path: str) -> dict[str, list[np.ndarray]]:
    """Reads MatConvNet's ``imagenet-vgg-verydeep-16.mat`` into Keras layer names and layouts.

    MatConvNet stores kernels as (W, H, in, out) for RGB input; they are
    transposed to (H, W, in, out) and the first layer's input channels are
    reversed to the BGR order the model feeds. Names map conv1_1 ->
    block1_conv1, ..., fc6/fc7 stay.
    """
    import scipy.io  # only needed for this format

    try:
        contents = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=False)
    except Exception as error:  # scipy raises several kinds for a file that is not a .mat
        raise WeightsError(f"{path}: cannot be read as a MatConvNet .mat file ({error})") from None
    if "layers" not in contents:
        raise WeightsError(f"{path}: no 'layers' variable; expected MatConvNet's imagenet-vgg-verydeep-16.mat")
    layers = {}
    for entry in np.asarray(contents["layers"]).ravel():
        layer = _mat_value(entry)
        name = _mat_value(layer.name)
        if _mat_value(layer.type) != "conv":
            continue
        weights = np.asarray(layer.weights).ravel()
        kernel = np.transpose(np.asarray(weights[0], np.float32), (1, 0, 2, 3))  # (W, H, in, out) -> (H, W, in, out)
        bias = np.asarray(weights[1], np.float32).reshape(-1)
        if name.startswith("conv"):
            block, index = name[4:].split("_")
            name = f"block{block}_conv{index}"
        if name == "block1_conv1":
            kernel = kernel[:, :, ::-1, :]  # RGB -> BGR input channels
        layers[name] = [kernel, bias]
    return layers


def _read_weights(source: str, model_dir: str | None) -> tuple[str, dict[str, list[np.ndarray]]]:
    if source in KERAS_WEIGHTS:
        path = fetch_keras_weights(source, model_dir)
    else:
        path = source
    if not os.path.isfile(path):
        raise WeightsError(
            f"VGG16 weights {path!r} not found: --vgg_weights takes none, imagenet, imagenet_notop or the path "
            "of a Keras VGG16 .h5 file or MatConvNet's imagenet-vgg-verydeep-16.mat"
        )
    if path.endswith(".mat"):
        return path, read_matconvnet(path)
    try:
        return path, read_keras_h5(path)
    except OSError as error:
        raise WeightsError(f"{path}: cannot be read as an HDF5 (.h5) weights file ({error})") from None


def load_vgg_weights(model: keras.Model, source: str, model_dir: str | None = None) -> None:
    """Copies pretrained VGG16 weights into an FCN-8s built by ``build_fcn8s``.

    Conv layers are copied as they are; a file with the fully connected top
    gives fc6 (fc1 reshaped to 7x7x512x4096) and fc7 (fc2 as 1x1x4096x4096).

    Raises:
      WeightsError: naming the file and the layer, for a missing layer or a
        shape that does not fit.
    """
    if source in ("", "none"):
        return
    path, weights = _read_weights(source, model_dir)
    fc6 = model.get_layer("fc6")
    fc_kernel_shapes = {"fc6": tuple(fc6.kernel.shape), "fc7": tuple(model.get_layer("fc7").kernel.shape)}
    if "fc1" in weights and "fc6" not in weights:  # Keras' dense top
        weights["fc6"] = [weights["fc1"][0].reshape(7, 7, 512, -1), weights["fc1"][1]]
        weights["fc7"] = [weights["fc2"][0].reshape(1, 1, *weights["fc2"][0].shape), weights["fc2"][1]] if "fc2" in weights else None
    names = list(VGG16_CONV_LAYERS)
    if "fc6" in weights:
        names += ["fc6", "fc7"]
        if fc6.filters != VGG16_FC_CHANNELS:
            raise WeightsError(
                f"{path}: holds fc6/fc7 with {VGG16_FC_CHANNELS} channels but the model has model.fc_channels="
                f"{fc6.filters}; use fc_channels 4096, or imagenet_notop weights"
            )
    elif source == "imagenet":
        raise WeightsError(f"{path}: has no fully connected layers (fc1, fc2) although imagenet (with top) was asked for")
    for name in names:
        values = weights.get(name)
        if not values:
            raise WeightsError(f"{path}: layer {name} is missing (found: {', '.join(sorted(weights)) or 'no layers'})")
        layer = model.get_layer(name)
        expected = [tuple(v.shape) for v in layer.weights]
        found = [tuple(v.shape) for v in values]
        if expected != found:
            hint = f" (fc kernels should be {fc_kernel_shapes[name]})" if name in fc_kernel_shapes else ""
            raise WeightsError(f"{path}: layer {name} has weights of shapes {found}, the model needs {expected}{hint}")
        layer.set_weights(values)
