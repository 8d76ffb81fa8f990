"""FCN-8s on VGG16 (Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation").

The network of the paper, "at-once" variant:

    VGG16 trunk (block1_conv1 .. block5_pool, max-pooling)
    fc6 7x7 x fc_channels, ReLU, dropout; fc7 1x1 x fc_channels, ReLU, dropout
    score_fr 1x1 -> upscore2 (4x4 / 2)                     + score_pool4(0.01 x pool4)  = fuse_pool4
    fuse_pool4 -> upscore_pool4 (4x4 / 2)                 + score_pool3(1e-4 x pool3)  = fuse_pool3
    fuse_pool3 -> upscore8 (fixed bilinear x 8, per channel) -> logits at the input's size
    optional: CRF-RNN ([logits, input image]) -> refined logits (``fcn/crf.py``)

Score layers start at zero and the transposed convolutions as bilinear
interpolation, so an untrained model outputs exactly zero logits. Layers not
taken from pretrained weights start from He initialisation, which suits the
deep ReLU stack when training from scratch (``vgg_weights="none"``). Instead of the
reference's 100-pixel padding, the preprocessed input is padded to a multiple
of 32 with zeros (the mean colour) at the bottom and right and the logits are
cropped back: any height and width work and the output has the input's size.

The model takes RGB images in 0..255 (uint8 or float) and applies the
convention its VGG16 weights expect (RGB -> BGR, ImageNet mean subtracted).
It returns float32 logits (B, H, W, num_classes); softmax is left to the loss.
"""

import os

import h5py
import keras
import numpy as np
from keras import ops

from fcn import crf as crf_lib

VGG_MEAN_BGR = (103.939, 116.779, 123.68)
# (block, convolutions, filters) of VGG16.
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
VGG16_CONV_LAYERS = tuple(f"block{b}_conv{i}" for b, n, _ in VGG16_BLOCKS for i in range(1, n + 1))
VGG16_FC_CHANNELS = 4096
STRIDE = 32  # the total downsampling of VGG16's five poolings

# Keras' published VGG16 ImageNet weights (the files keras.applications.VGG16 fetches).
KERAS_WEIGHTS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
KERAS_WEIGHTS = {
    "imagenet": ("vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
    "imagenet_notop": ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
}


class WeightsError(ValueError):
    """Pretrained weights that cannot be used; the message names the file and layer."""


# ---------------------------------------------------------------------------
# Layers.


@keras.saving.register_keras_serializable(package="fcn")
class VggPreprocess(keras.layers.Layer):
    """RGB in 0..255 -> BGR minus the ImageNet mean, the input convention of the VGG16 weights."""

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)  # (B, H, W, 3)
        return ops.flip(images, axis=-1) - ops.convert_to_tensor(VGG_MEAN_BGR, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="fcn")
class PadToMultiple(keras.layers.Layer):
    """Zero-pads height and width at the bottom and right up to a multiple of ``multiple``."""

    def __init__(self, multiple: int = STRIDE, **kwargs):
        super().__init__(**kwargs)
        self.multiple = multiple

    def call(self, images):
        shape = ops.shape(images)
        pad_h = (-shape[1]) % self.multiple
        pad_w = (-shape[2]) % self.multiple
        return ops.pad(images, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, None, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="fcn")
class CropToReference(keras.layers.Layer):
    """Crops ``inputs[0]`` to the height and width of ``inputs[1]``, from the top left."""

    def call(self, inputs):
        tensor, reference = inputs
        shape = ops.shape(reference)
        return tensor[:, : shape[1], : shape[2], :]

    def compute_output_shape(self, input_shapes):
        tensor_shape, reference_shape = input_shapes
        return (tensor_shape[0], reference_shape[1], reference_shape[2], tensor_shape[3])


@keras.saving.register_keras_serializable(package="fcn")
class Scale(keras.layers.Layer):
    """Multiplies by a fixed factor (the 0.01 and 0.0001 skip scaling of at-once FCN-8s)."""

    def __init__(self, factor: float, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * ops.cast(self.factor, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="fcn")
class PatchConv2D(keras.layers.Conv2D):
    """A stride-1, "same"-padded Conv2D computed as image patches times the kernel matrix.

    The same weights (``kernel`` (kh, kw, in, out), ``bias``) and the same
    output as ``Conv2D``; for fc6 (7x7x512 -> 4096 on a feature map a few
    cells wide) the patch matrix turns the kernel gradient into one large
    matrix product, which the CPU convolution kernels do several times slower.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, padding="same", **kwargs)
        if self.strides != (1, 1) or self.dilation_rate != (1, 1) or self.data_format != "channels_last":
            raise ValueError("PatchConv2D supports stride 1, no dilation, channels_last only")

    def call(self, inputs):
        patches = self._patches(inputs)  # (B, H, W, kh*kw*in)
        kernel = ops.reshape(self.kernel, (-1, self.filters))  # (kh*kw*in, out), the patches' order
        outputs = ops.matmul(patches, ops.cast(kernel, patches.dtype))
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, outputs.dtype)
        return self.activation(outputs) if self.activation is not None else outputs

    def _patches(self, inputs):
        """(B, H, W, in) -> (B, H, W, kh*kw*in), zero-padded "same" windows in the kernel's (kh, kw, in) order.

        Shifted slices of the padded input, concatenated: unlike
        ``extract_patches``, whose gradient is a slow scatter on the CPU, their
        gradient is plain slicing and padding.
        """
        height, width = self.kernel_size
        top, left = (height - 1) // 2, (width - 1) // 2
        padded = ops.pad(inputs, [[0, 0], [top, height - 1 - top], [left, width - 1 - left], [0, 0]])
        rows, cols = ops.shape(inputs)[1], ops.shape(inputs)[2]
        return ops.concatenate(
            [padded[:, i : i + rows, j : j + cols, :] for i in range(height) for j in range(width)], axis=-1
        )

    def get_config(self):
        config = super().get_config()
        del config["padding"]  # always "same"
        return config


def bilinear_kernel(size: int) -> np.ndarray:
    """1-D bilinear interpolation weights for upsampling by ``size // 2``."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    return 1 - np.abs(np.arange(size) - centre) / factor


def bilinear_matrix(size, factor: int, dtype="float32"):
    """(size * factor, size): the 1-D bilinear transposed convolution as a matrix.

    Entry (o, i) is the weight of input i in output o for the 2 x factor tap
    ``bilinear_kernel``, stride ``factor``, "same" padding (factor // 2 before),
    as Keras' ``Conv2DTranspose`` computes it; inputs beyond the edges are
    zeros. ``size`` may be a symbolic dimension.
    """
    taps = 2 * factor
    outputs = ops.expand_dims(ops.arange(size * factor), 1)  # (size * factor, 1)
    inputs = ops.expand_dims(ops.arange(size), 0)  # (1, size)
    tap = outputs + factor // 2 - factor * inputs  # (size * factor, size)
    kernel = ops.convert_to_tensor(bilinear_kernel(taps), dtype)
    inside = ops.logical_and(tap >= 0, tap < taps)
    return ops.where(inside, ops.take(kernel, ops.clip(tap, 0, taps - 1)), ops.zeros((), dtype))


@keras.saving.register_keras_serializable(package="fcn")
class BilinearUpsample(keras.layers.Layer):
    """Fixed bilinear upsampling by ``factor``, each channel on its own; no weights.

    The same output as a ``Conv2DTranspose(C, 2 * factor, strides=factor,
    padding="same")`` whose kernel is bilinear per channel and zero across
    channels (FCN's frozen upscore8), computed as two products with the
    ``bilinear_matrix`` of each axis instead of a dense C x C convolution:
    about C times fewer operations (150 for ADE20K) and no frozen C x C kernel.
    """

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, inputs):
        shape = ops.shape(inputs)  # (B, h, w, C)
        batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
        along_width = ops.matmul(bilinear_matrix(width, self.factor, self.compute_dtype), inputs)  # (B, h, W, C)
        rows = ops.reshape(along_width, (batch, height, -1))  # (B, h, W * C)
        along_height = ops.matmul(bilinear_matrix(height, self.factor, self.compute_dtype), rows)  # (B, H, W * C)
        return ops.reshape(along_height, (batch, height * self.factor, width * self.factor, channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        scaled = [None if size is None else size * self.factor for size in (height, width)]
        return (batch, *scaled, channels)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="fcn")
class BilinearUpsampling(keras.initializers.Initializer):
    """Initialises a Conv2DTranspose kernel (kh, kw, out, in) to per-channel bilinear interpolation."""

    def __call__(self, shape, dtype=None):
        height, width, out_channels, in_channels = shape
        if out_channels != in_channels:
            raise ValueError(f"bilinear upsampling maps each channel to itself; got kernel shape {shape}")
        kernel = np.zeros(shape, np.float32)
        weights = np.outer(bilinear_kernel(height), bilinear_kernel(width))
        kernel[:, :, np.arange(out_channels), np.arange(in_channels)] = weights[:, :, None]
        return ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {}


# ---------------------------------------------------------------------------
# The model.


def build_fcn8s(
    num_classes: int = 150,
    vgg_weights: str = "none",
    fc_channels: int = VGG16_FC_CHANNELS,
    dropout: float = 0.5,
    model_dir: str | None = None,
    name: str = "fcn8s",
    crf: dict | None = None,
) -> keras.Model:
    """Builds FCN-8s on VGG16.

    Args:
      num_classes: output channels (150 for ADE20K).
      vgg_weights: ``none`` (random), ``imagenet`` (Keras' VGG16 with top:
        conv layers, fc1 -> fc6, fc2 -> fc7), ``imagenet_notop`` (conv layers
        only), or a path to one of those ``.h5`` files (either Keras format) or
        to MatConvNet's ``imagenet-vgg-verydeep-16.mat``.
      fc_channels: width of fc6 and fc7; pretrained fc weights need 4096.
      dropout: dropout rate after fc6 and fc7.
      model_dir: where ``imagenet`` weights are downloaded and cached
        (default: Keras' cache, ``~/.keras/models``).
      name: the model's name.
      crf: None, or the keyword arguments of ``crf.CrfRnn`` to append the
        CRF-RNN stage; it refines the logits with the input image itself (RGB
        0..255 at the logits' size). The FCN's own logits stay available as
        the output of the layer named ``logits`` (see ``with_fcn_output``).

    Returns:
      A Keras model: images (B, H, W, 3) RGB 0..255 -> float32 logits
      (B, H, W, num_classes).
    """
    images = keras.Input((None, None, 3), name="image")
    x = VggPreprocess(name="preprocess")(images)
    x = PadToMultiple(STRIDE, name="pad")(x)
    pools = {}
    for block, convolutions, filters in VGG16_BLOCKS:
        for i in range(1, convolutions + 1):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", activation="relu", kernel_initializer="he_normal", name=f"block{block}_conv{i}"
            )(x)
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
        pools[block] = x
    x = PatchConv2D(fc_channels, 7, activation="relu", kernel_initializer="he_normal", name="fc6")(x)
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    x = keras.layers.Conv2D(fc_channels, 1, activation="relu", kernel_initializer="he_normal", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="drop7")(x)

    def score(name):
        return keras.layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=name)

    def upsample(factor, name):
        return keras.layers.Conv2DTranspose(
            num_classes,
            2 * factor,
            strides=factor,
            padding="same",
            use_bias=False,
            kernel_initializer=BilinearUpsampling(),
            name=name,
        )

    upscore2 = upsample(2, "upscore2")(score("score_fr")(x))  # (B, H/16, W/16, C)
    score_pool4 = score("score_pool4")(Scale(0.01, name="scale_pool4")(pools[4]))
    fuse_pool4 = keras.layers.Add(name="fuse_pool4")([upscore2, score_pool4])
    upscore_pool4 = upsample(2, "upscore_pool4")(fuse_pool4)  # (B, H/8, W/8, C)
    score_pool3 = score("score_pool3")(Scale(0.0001, name="scale_pool3")(pools[3]))
    fuse_pool3 = keras.layers.Add(name="fuse_pool3")([upscore_pool4, score_pool3])
    upscore8 = BilinearUpsample(8, name="upscore8")(fuse_pool3)  # (B, H', W', C), H' = H padded
    logits = CropToReference(name="crop")([upscore8, images])
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    if crf is not None:
        logits = crf_lib.CrfRnn(name="crf", **crf)([logits, images])
    model = keras.Model(images, logits, name=name)
    load_vgg_weights(model, vgg_weights, model_dir)
    return model


def build_from_config(model_config, num_classes: int, vgg_weights: str | None = None, crf_iterations: int | None = None):
    """``build_fcn8s`` as a run's ``ModelConfig`` describes it.

    Args:
      model_config: ``config.model``.
      num_classes: ``config.data.num_classes``.
      vgg_weights: overrides ``model_config.vgg_weights`` (``none`` when the
        weights come from a checkpoint).
      crf_iterations: overrides ``model_config.crf_iterations``.
    """
    crf = None
    if model_config.crf:
        crf = dict(
            theta_alpha=model_config.crf_theta_alpha,
            theta_beta=model_config.crf_theta_beta,
            theta_gamma=model_config.crf_theta_gamma,
            num_iterations=model_config.crf_iterations if crf_iterations is None else crf_iterations,
        )
    return build_fcn8s(
        num_classes,
        vgg_weights=model_config.vgg_weights if vgg_weights is None else vgg_weights,
        fc_channels=model_config.fc_channels,
        dropout=model_config.dropout,
        model_dir=model_config.model_dir,
        crf=crf,
    )


def has_crf(model: keras.Model) -> bool:
    return any(isinstance(layer, crf_lib.CrfRnn) for layer in model.layers)


def with_fcn_output(model: keras.Model) -> keras.Model:
    """The same model (shared weights) returning [FCN logits, CRF-refined logits]."""
    if not has_crf(model):
        raise ValueError(f"model {model.name} has no CRF stage")
    return keras.Model(model.input, [model.get_layer("logits").output, model.output], name=model.name + "_with_fcn")


# ---------------------------------------------------------------------------
# Pretrained weights.


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
