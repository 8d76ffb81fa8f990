"""FCN-8s on VGG16 or VGG19 (Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation").

The network of the paper, "at-once" variant:

    VGG16 trunk (block1_conv1 .. block5_pool, max-pooling), or VGG19's
      (blocks 3, 4 and 5 with a fourth convolution: block3_conv4, ...)
    fc6 7x7 x fc_channels, ReLU, dropout; fc7 1x1 x fc_channels, ReLU, dropout
    score_fr 1x1 -> upscore2 (4x4 / 2)                     + score_pool4(0.01 x pool4)  = fuse_pool4
    fuse_pool4 -> upscore_pool4 (4x4 / 2)                 + score_pool3(1e-4 x pool3)  = fuse_pool3
    fuse_pool3 -> upscore8 (fixed bilinear x 8, per channel) -> logits at the input's size
    optional: CRF-RNN ([logits, input image]) -> refined logits (``fcn/crf.py``)

Score layers start at zero and the transposed convolutions as bilinear
interpolation, so an untrained model outputs exactly zero logits. Layers not
taken from pretrained weights start from He initialisation, which suits the
deep ReLU stack when training from scratch. Building reads no file and fetches
nothing: pretrained VGG weights are loaded afterwards by
``fcn/weights.py``. Instead of the
reference's 100-pixel padding, the preprocessed input is padded to a multiple
of 32 with zeros (the mean colour) at the bottom and right and the logits are
cropped back: any height and width work and the output has the input's size.

The model takes RGB images in 0..255 (uint8 or float) and applies the
convention its VGG16 weights expect (RGB -> BGR, ImageNet mean subtracted).
It returns float32 logits (B, H, W, num_classes); softmax is left to the loss.

The geometry of crfasrnn_keras's released model is in ``fcn/crfasrnn_keras.py``.
"""

import keras
import numpy as np
from keras import ops

from fcn import backbones
from fcn import crf as crf_lib

STRIDE = backbones.STRIDE


# ---------------------------------------------------------------------------
# Layers.


@keras.saving.register_keras_serializable(package="fcn")
class VggPreprocess(keras.layers.Layer):
    """RGB in 0..255 -> BGR minus a mean (the ImageNet mean), the input convention of the VGG weights."""

    def __init__(self, mean_bgr=backbones.VGG_MEAN_BGR, **kwargs):
        super().__init__(**kwargs)
        self.mean_bgr = tuple(float(m) for m in mean_bgr)

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)  # (B, H, W, 3)
        return ops.flip(images, axis=-1) - ops.convert_to_tensor(self.mean_bgr, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mean_bgr": list(self.mean_bgr)}

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
    """Crops ``inputs[0]`` to the height and width of ``inputs[1]``, starting ``offset`` rows and columns in.

    ``offset`` 0 crops from the top left; the reference FCN geometry (Caffe's
    ``Crop`` layers) uses offsets 5, 9 and 31.
    """

    def __init__(self, offset: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.offset = int(offset)

    def call(self, inputs):
        tensor, reference = inputs
        shape = ops.shape(reference)
        start = self.offset
        return tensor[:, start : start + shape[1], start : start + shape[2], :]

    def compute_output_shape(self, input_shapes):
        tensor_shape, reference_shape = input_shapes
        return (tensor_shape[0], reference_shape[1], reference_shape[2], tensor_shape[3])

    def get_config(self):
        config = super().get_config()
        if self.offset:
            config["offset"] = self.offset
        return config


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


@ops.custom_gradient
def _patch_product(patches, kernel):
    """``patches @ kernel`` for (B, H, W, P) by (P, out), with the patches' gradient computed transposed.

    The gradient of a plain product would take the patches' gradient as
    ``dy @ kernel^T``; on a CPU that product of a few rows (one per fc6 or
    fc7 position) by the transposed 25088 x 4096 or 4096 x 4096 kernel runs
    slower on CPUs than the same product written ``(kernel @ dy^T)^T``
    (``python bench/layers.py`` measures both). The same multiply-adds: only
    the rounding order may differ.
    """
    rows = ops.reshape(patches, (-1, ops.shape(kernel)[0]))  # (B*H*W, P)
    outputs = ops.reshape(ops.matmul(rows, kernel), (*ops.shape(patches)[:-1], ops.shape(kernel)[1]))

    def gradient(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        upstream_rows = ops.reshape(upstream, (-1, ops.shape(kernel)[1]))  # (B*H*W, out)
        patches_gradient = ops.transpose(ops.matmul(kernel, ops.transpose(upstream_rows)))  # (B*H*W, P)
        kernel_gradient = ops.matmul(ops.transpose(rows), upstream_rows)  # (P, out)
        return ops.reshape(patches_gradient, ops.shape(patches)), kernel_gradient

    return outputs, gradient


@keras.saving.register_keras_serializable(package="fcn")
class PatchConv2D(keras.layers.Conv2D):
    """A stride-1, "same"-padded Conv2D computed as image patches times the kernel matrix.

    The same weights (``kernel`` (kh, kw, in, out), ``bias``) and the same
    output as ``Conv2D``; for fc6 (7x7x512 -> 4096 on a feature map a few
    cells wide) the patch matrix turns the kernel gradient into one large
    matrix product, which the CPU convolution kernels do several times slower.
    With a 1x1 kernel (fc7, 4096 -> 4096) the input itself is the patch matrix:
    the layer is one matrix product and its two gradients are products too,
    which ``Conv2D``'s 1x1 backprop kernels compute slower on CPUs
    (``python bench/layers.py``; figures in ``bench/README.md``).
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, padding="same", **kwargs)
        if self.strides != (1, 1) or self.dilation_rate != (1, 1) or self.data_format != "channels_last":
            raise ValueError("PatchConv2D supports stride 1, no dilation, channels_last only")

    def call(self, inputs):
        patches = self._patches(inputs)  # (B, H, W, kh*kw*in)
        kernel = ops.reshape(self.kernel, (-1, self.filters))  # (kh*kw*in, out), the patches' order
        outputs = _patch_product(patches, ops.cast(kernel, patches.dtype))
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
        if (height, width) == (1, 1):
            return inputs  # each position is its own window: nothing to pad or gather
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
    fc_channels: int = backbones.VGG_FC_CHANNELS,
    dropout: float = 0.5,
    name: str = "fcn8s",
    crf: dict | None = None,
    backbone: str = "vgg16",
    width: float = 1.0,
) -> keras.Model:
    """Builds FCN-8s on a backbone of ``BACKBONES``, with fresh weights (see ``fcn.weights`` for pretrained ones).

    Args:
      num_classes: output channels (150 for ADE20K).
      fc_channels: width of fc6 and fc7; pretrained fc weights need 4096.
      dropout: dropout rate after fc6 and fc7.
      name: the model's name.
      crf: None, or the keyword arguments of ``crf.CrfRnn`` to append the
        CRF-RNN stage; it refines the logits with the input image itself (RGB
        0..255 at the logits' size). The FCN's own logits stay available as
        the output of the layer named ``logits`` (see ``with_fcn_output``).
      backbone: a name of ``backbones.BACKBONES``: ``vgg16`` or ``vgg19``
        (three more convolutions, block3_conv4, block4_conv4 and
        block5_conv4). Layer names are Keras' VGG names for both, and a VGG16
        model has the layers (and layer order) it always had, so existing
        checkpoints restore.
      width: multiplies the channels of every trunk convolution (rounded, at
        least 1). 1 is the trunk itself, the only width pretrained weights fit;
        a narrow trunk (e.g. 0.125) is the same network at a fraction of the
        arithmetic, for tests.

    Returns:
      A Keras model: images (B, H, W, 3) RGB 0..255 -> float32 logits
      (B, H, W, num_classes).
    """
    if backbone not in backbones.BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(backbones.BACKBONES)}, got {backbone!r}")
    trunk = backbones.BACKBONES[backbone]
    images = keras.Input((None, None, 3), name="image")
    x = VggPreprocess(trunk.mean_bgr, name="preprocess")(images)
    x = PadToMultiple(STRIDE, name="pad")(x)
    taps = trunk.build(x, width)  # pool3 (1/8), pool4 (1/16), top (1/32)
    x = PatchConv2D(fc_channels, 7, activation="relu", kernel_initializer="he_normal", name="fc6")(taps["top"])
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    # fc7 is a 1x1 convolution: as a PatchConv2D it is one matrix product (same weights, same checkpoints).
    x = PatchConv2D(fc_channels, 1, activation="relu", kernel_initializer="he_normal", name="fc7")(x)
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
    score_pool4 = score("score_pool4")(Scale(0.01, name="scale_pool4")(taps["pool4"]))
    fuse_pool4 = keras.layers.Add(name="fuse_pool4")([upscore2, score_pool4])
    upscore_pool4 = upsample(2, "upscore_pool4")(fuse_pool4)  # (B, H/8, W/8, C)
    score_pool3 = score("score_pool3")(Scale(0.0001, name="scale_pool3")(taps["pool3"]))
    fuse_pool3 = keras.layers.Add(name="fuse_pool3")([upscore_pool4, score_pool3])
    upscore8 = BilinearUpsample(8, name="upscore8")(fuse_pool3)  # (B, H', W', C), H' = H padded
    logits = CropToReference(name="crop")([upscore8, images])
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    if crf is not None:
        logits = crf_lib.CrfRnn(name="crf", **crf)([logits, images])
    return keras.Model(images, logits, name=name)


def build_from_config(model_config, num_classes: int, crf_iterations: int | None = None) -> keras.Model:
    """``build_fcn8s`` as a run's ``ModelConfig`` describes it (fresh weights; nothing is read or fetched).

    Args:
      model_config: ``config.model``.
      num_classes: ``config.data.num_classes``.
      crf_iterations: overrides ``model_config.crf_iterations`` (inference
        runs ``crf_test_iterations``).
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
        num_classes, fc_channels=model_config.fc_channels, dropout=model_config.dropout, crf=crf, backbone=model_config.backbone,
        width=model_config.width,
    )


def backbone_of(model: keras.Model) -> str:
    """The backbone a model was built on: the entry of ``BACKBONES`` with the most layers, all in the model."""
    names = {layer.name for layer in model.layers}
    fits = [entry for entry in backbones.BACKBONES.values() if set(entry.layers) <= names]
    return max(fits, key=lambda entry: len(entry.layers)).name if fits else ""


# The weights of a ``CrfRnn`` layer, by their names in a checkpoint.
CRF_WEIGHTS = frozenset({"spatial_kernel_weights", "bilateral_kernel_weights", "compatibility"})


def has_crf(model: keras.Model) -> bool:
    return any(isinstance(layer, crf_lib.CrfRnn) for layer in model.layers)


def with_fcn_output(model: keras.Model) -> keras.Model:
    """The same model (shared weights) returning [FCN logits, CRF-refined logits]."""
    if not has_crf(model):
        raise ValueError(f"model {model.name} has no CRF stage")
    return keras.Model(model.input, [model.get_layer("logits").output, model.output], name=model.name + "_with_fcn")
