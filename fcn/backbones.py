"""Backbones: the trunks FCN-8s is built on, one entry each in ``BACKBONES``.

An entry says all the framework needs of its trunk: how to build it (the
three taps FCN-8s fuses: ``pool3`` at 1/8 of the input, ``pool4`` at 1/16,
``top`` at 1/32), the input convention its pretrained weights expect, its
layers that pretrained weights fill (also the ReLU outputs ``--debug``
histograms), and its weight files. ``model.backbone`` is validated against
this dict, ``fcn/model.py`` builds FCN-8s from any entry, and
``fcn/weights.py`` reads its files. Adding a backbone is one entry, also from
outside ``fcn/`` (``BACKBONES["mine"] = Backbone(...)`` before the config is
loaded).

Nothing here imports TensorFlow until a trunk is built: the config reads this
registry before any work starts.
"""

import dataclasses
from collections.abc import Callable

# The input convention of the VGG weights (Keras' and MatConvNet's): BGR, ImageNet mean subtracted.
VGG_MEAN_BGR = (103.939, 116.779, 123.68)
# (block, convolutions, filters) of VGG16 and VGG19: three 3x3 convolutions more in blocks 3 to 5.
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
VGG19_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))
VGG_FC_CHANNELS = 4096  # fc1 / fc2 of both, FCN-8s' fc6 / fc7
STRIDE = 32  # the downsampling of ``top``; FCN-8s pads the input to a multiple of it


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One trunk.

    Attributes:
      name: the value of ``model.backbone``.
      build: ``build(x, width) -> {"pool3": ..., "pool4": ..., "top": ...}``:
        Keras layers applied to the preprocessed input ``x`` (B, H, W, 3), H
        and W multiples of ``STRIDE``; the taps at 1/8, 1/16 and 1/32 of its
        size. ``width`` (``model.width``) multiplies its channels: 1 is the
        trunk itself, the one pretrained weights fit. fc6 and fc7 follow
        ``top`` in ``fcn/model.py``.
      layers: names of its layers that pretrained weights fill, in order.
      mean_bgr: its preprocessing: RGB 0..255 -> BGR minus this mean.
      keras_weights: ``imagenet`` / ``imagenet_notop`` -> (file name, MD5) of
        Keras' published files (``model.pretrained_weights``).
      matconvnet_url: MatConvNet's file of the same network, for messages.
    """

    name: str
    build: Callable
    layers: tuple[str, ...]
    mean_bgr: tuple[float, float, float] = VGG_MEAN_BGR
    keras_weights: dict = dataclasses.field(default_factory=dict)
    matconvnet_url: str = ""


def vgg_layer_names(blocks) -> tuple[str, ...]:
    """The convolutions of a VGG trunk, in order (Keras' names: block1_conv1, ...)."""
    return tuple(f"block{b}_conv{i}" for b, n, _ in blocks for i in range(1, n + 1))


def vgg_trunk(blocks) -> Callable:
    """The ``build`` of a VGG trunk: 3x3 ReLU convolutions and 2x2 max-pooling per block, Keras' layer names."""

    def build(x, width: float = 1.0) -> dict:
        import keras  # here, not at the top: the config reads this module without TensorFlow

        pools = {}
        for block, convolutions, filters in blocks:
            for i in range(1, convolutions + 1):
                x = keras.layers.Conv2D(max(1, round(filters * width)), 3, padding="same", activation="relu",
                                        kernel_initializer="he_normal", name=f"block{block}_conv{i}")(x)  # fmt: skip
            x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
            pools[block] = x
        return {"pool3": pools[3], "pool4": pools[4], "top": pools[5]}

    return build


BACKBONES = {
    "vgg16": Backbone(
        "vgg16", vgg_trunk(VGG16_BLOCKS), vgg_layer_names(VGG16_BLOCKS),
        keras_weights={
            "imagenet": ("vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
            "imagenet_notop": ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
        },
        matconvnet_url="http://www.vlfeat.org/matconvnet/models/beta16/imagenet-vgg-verydeep-16.mat",
    ),
    "vgg19": Backbone(  # FCN.tensorflow's trunk
        "vgg19", vgg_trunk(VGG19_BLOCKS), vgg_layer_names(VGG19_BLOCKS),
        keras_weights={
            "imagenet": ("vgg19_weights_tf_dim_ordering_tf_kernels.h5", "cbe5617147190e668d6c5d5026f83318"),
            "imagenet_notop": ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6"),
        },
        matconvnet_url="http://www.vlfeat.org/matconvnet/models/beta16/imagenet-vgg-verydeep-19.mat",
    ),
}  # fmt: skip
