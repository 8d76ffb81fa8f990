"""CRF-RNN: dense-CRF mean-field inference as a Keras layer (Zheng et al., ICCV 2015).

The CRF over the pixels of an image has the energy

    E(x) = sum_i psi_u(x_i) + sum_{i<j} mu(x_i, x_j) [w_s k_s(i, j) + w_b k_b(i, j)]

with psi_u = -unary logits, the spatial kernel
k_s = exp(-|p_i - p_j|^2 / (2 theta_gamma^2)) and the bilateral kernel
k_b = exp(-|p_i - p_j|^2 / (2 theta_alpha^2) - |I_i - I_j|^2 / (2 theta_beta^2))
(p pixel coordinates, I RGB in 0..255). ``CrfRnn`` unrolls a fixed number of
mean-field iterations; everything is differentiable with respect to the unaries
and the three C x C matrices of the layer.

Conventions (shared by the filters, the layer and the tests):

- Both filters are *unnormalised* Gaussian sums that **include j = i**
  (kernel value 1). The layer divides each by the same filter applied to
  ones, as the released Keras code does; it does not subtract the
  self-contribution (the paper's message passing excludes j = i). With the
  default parameters the self-weight is 1 / sum_j k_s(i, j) ~ 1/57 of the
  spatial normalisation and far less of the bilateral one, and a learned
  weight matrix absorbs it.
- The layer filters both kernels on permutohedral lattices
  (``fcn.permutohedral``), as the C++ DenseCRF does: the bilateral one on the
  lattice of (x, y, r, g, b), built per image, and the spatial one on the
  lattice of the pixel positions (``build_position_lattice``), built once per
  image size and shared by the batch. Their errors are bounded in
  tests/test_crf.py. On ADE_val_00000001 (683x512, C = 21) the position
  lattice filtered 7x faster than the exact separable filter below, and its
  normalised output differs from it by 0.002 on average (0.02 at most).
- ``spatial_filter``, the exact reference, sums the kernel truncated to
  |x_i - x_j| <= r and |y_i - y_j| <= r, r = ceil(4 theta_gamma) (the dropped
  tail is exp(-8) = 3e-4 of the peak at the edge, 6e-5 of the 1-D mass).
  Pixels outside the image contribute nothing.
- The compatibility ``mu[l, l']`` is the cost of label l at pixel i next to
  label l' at pixel j, so a positive entry penalises the pair. It starts as
  the Potts model, 1 - identity, and the refined logits are
  ``U' = U - pairwise``: lowering the logit of a label that disagrees with
  similar neighbours lowers the energy. (crfasrnn_keras starts from
  -identity; the two differ by a per-pixel constant, which softmax ignores,
  so the refined logits here are shifted by -(w_s + w_b) at initialisation.)
"""

import math

import keras
import numpy as np
import tensorflow as tf

from fcn import permutohedral

# Gaussian taps beyond this many standard deviations are dropped (spatial filter).
SPATIAL_TRUNCATION = 4.0
# Output rows per band-matrix product in the spatial filter.
_SPATIAL_BLOCK = 64


# ---------------------------------------------------------------------------
# Filters.


def spatial_features(image: tf.Tensor, theta: float) -> tf.Tensor:
    """(B, H, W, ...) -> (B, H * W, 2) pixel positions (x, y) divided by ``theta``, row-major."""
    shape = tf.shape(image)
    rows, cols = tf.meshgrid(tf.range(shape[1]), tf.range(shape[2]), indexing="ij")  # (H, W)
    positions = tf.cast(tf.reshape(tf.stack([cols, rows], axis=-1), (1, -1, 2)), tf.float32) / theta  # (1, H * W, 2)
    return tf.tile(positions, tf.stack([shape[0], 1, 1]))


def bilateral_features(image: tf.Tensor, theta_alpha: float, theta_beta: float) -> tf.Tensor:
    """(B, H, W, 3) RGB -> (B, H * W, 5) features (x, y, r, g, b) scaled by the kernel widths."""
    colours = tf.cast(image, tf.float32) / theta_beta  # (B, H, W, 3)
    colours = tf.reshape(colours, (tf.shape(image)[0], -1, 3))  # (B, H * W, 3)
    return tf.concat([spatial_features(image, theta_alpha), colours], axis=-1)


def bilateral_filter(values: tf.Tensor, image: tf.Tensor, theta_alpha: float, theta_beta: float) -> tf.Tensor:
    """Unnormalised bilateral Gaussian filter on a permutohedral lattice.

    Builds the lattice of ``image`` for this one call; to filter the same
    image repeatedly, build it once with ``build_image_lattice`` and call
    ``permutohedral.lattice_filter`` (as ``CrfRnn`` does).

    Args:
      values: (B, H, W, C) float32 or float64.
      image: (B, H, W, 3) RGB in 0..255, any numeric dtype.
      theta_alpha: spatial standard deviation, pixels.
      theta_beta: colour standard deviation, intensity levels.

    Returns:
      (B, H, W, C) ~ sum_j exp(-|p_i - p_j|^2 / (2 theta_alpha^2)
      - |I_i - I_j|^2 / (2 theta_beta^2)) values_j over each image, j = i
      included.
    """
    return permutohedral.lattice_filter(build_image_lattice(image, theta_alpha, theta_beta), values)


def build_image_lattice(image: tf.Tensor, theta_alpha: float, theta_beta: float) -> permutohedral.Lattice:
    """The permutohedral lattice of a batch of images for the bilateral kernel; (B, H, W, 3)."""
    return permutohedral.build_lattice(bilateral_features(image, theta_alpha, theta_beta))


def build_position_lattice(image: tf.Tensor, theta_gamma: float) -> permutohedral.Lattice:
    """The lattice of the pixel positions of one (H, W) image, for the spatial kernel.

    It depends on the image size only, so one lattice serves every image of
    the batch (``shared_lattice_filter``). ``image``: (B, H, W, ...), only its
    shape is used.
    """
    return permutohedral.build_lattice(spatial_features(image[:1], theta_gamma))


def shared_lattice_filter(
    lattice: permutohedral.Lattice, values: tf.Tensor, channel_weights: tf.Tensor = None
) -> tf.Tensor:
    """Filters each image of (B, H, W, C) values with the one lattice of a single image.

    The batch is folded into the channels, (1, H * W, B * C), so that the
    lattice is traversed once per call whatever the batch size.
    ``channel_weights`` (L, C), optional, as in ``permutohedral.lattice_filter``:
    the output is then (B, H, W, L).
    """
    shape = tf.shape(values)
    batch, channels = values.shape[0], values.shape[-1]
    folded_channels = batch * channels if batch is not None and channels is not None else shape[0] * shape[3]
    folded = tf.transpose(tf.reshape(values, tf.stack([shape[0], -1, shape[3]])), [1, 0, 2])  # (H W, B, C)
    folded = tf.reshape(folded, tf.stack([1, -1, folded_channels]))  # (1, H W, B C)
    filtered = permutohedral.lattice_filter(lattice, folded, channel_weights=channel_weights)  # (1, H W, B L)
    filtered = tf.transpose(tf.reshape(filtered, tf.stack([-1, shape[0], tf.shape(filtered)[-1] // shape[0]])), [1, 0, 2])
    return tf.reshape(filtered, tf.concat([shape[:-1], [-1]], axis=0))  # (B, H, W, L)


def spatial_radius(theta_gamma: float) -> int:
    """Truncation radius of the spatial kernel, in pixels."""
    return int(math.ceil(SPATIAL_TRUNCATION * theta_gamma))


def _gaussian_band(theta_gamma: float, block: int) -> np.ndarray:
    """(block, block + 2r): row i holds the Gaussian taps centred on column i + r."""
    radius = spatial_radius(theta_gamma)
    offsets = np.arange(-radius, radius + 1)
    taps = np.exp(-(offsets**2) / (2.0 * theta_gamma**2))
    band = np.zeros((block, block + 2 * radius))
    for row in range(block):
        band[row, row : row + 2 * radius + 1] = taps
    return band


def _gaussian_along_axis1(x: tf.Tensor, theta_gamma: float) -> tf.Tensor:
    """Truncated Gaussian sum along axis 1 of (B, L, M), zeros outside.

    Blocks of ``_SPATIAL_BLOCK`` outputs are one product of a small band matrix
    with the block's window (the block plus r rows either side): a GEMM instead
    of 2r + 1 shifted copies, which is what makes it fast on a CPU.
    """
    radius = spatial_radius(theta_gamma)
    block = _SPATIAL_BLOCK
    batch, length, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    num_blocks = (length + block - 1) // block
    padded = tf.pad(x, [[0, 0], [radius, num_blocks * block - length + radius], [0, 0]])
    window_rows = tf.range(num_blocks)[:, None] * block + tf.range(block + 2 * radius)[None, :]
    windows = tf.gather(padded, tf.reshape(window_rows, [-1]), axis=1)
    windows = tf.reshape(windows, (batch, num_blocks, block + 2 * radius, width))
    band = tf.constant(_gaussian_band(theta_gamma, block), x.dtype)  # (block, block + 2r)
    filtered = tf.matmul(band, windows)  # (B, num_blocks, block, M)
    return tf.reshape(filtered, (batch, num_blocks * block, width))[:, :length]


def _separable_gaussian(values: tf.Tensor, theta_gamma: float) -> tf.Tensor:
    shape = tf.shape(values)  # (B, H, W, C)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    rows = _gaussian_along_axis1(tf.reshape(values, (batch, height, -1)), theta_gamma)
    columns = tf.transpose(tf.reshape(rows, shape), [0, 2, 1, 3])  # (B, W, H, C)
    columns = _gaussian_along_axis1(tf.reshape(columns, (batch, width, -1)), theta_gamma)
    return tf.transpose(tf.reshape(columns, (batch, width, height, channels)), [0, 2, 1, 3])


def spatial_filter(values: tf.Tensor, theta_gamma: float) -> tf.Tensor:
    """Unnormalised spatial Gaussian filter, exact for the truncated kernel.

    Args:
      values: (B, H, W, C) float32 or float64.
      theta_gamma: standard deviation, pixels.

    Returns:
      (B, H, W, C): sum_j exp(-|p_i - p_j|^2 / (2 theta_gamma^2)) values_j over
      the pixels j of the same image with |x_i - x_j| <= r and |y_i - y_j| <= r,
      r = ``spatial_radius(theta_gamma)``; j = i included.
    """

    # The operator is symmetric (symmetric taps, zero padding): its gradient is
    # itself, and nothing needs to be kept for the backward pass.
    def gaussian(x):
        return permutohedral.in_channel_chunks(lambda part: _separable_gaussian(part, theta_gamma), x)

    @tf.custom_gradient
    def filtered(x):
        return gaussian(x), gaussian

    return filtered(tf.convert_to_tensor(values))


# ---------------------------------------------------------------------------
# Mean-field inference.


def mean_field(
    unaries,
    spatial,
    bilateral,
    spatial_kernel_weights,
    bilateral_kernel_weights,
    compatibility,
    num_iterations: int,
):
    """Unrolled mean-field inference of the dense CRF.

    Args:
      unaries: (B, H, W, C) unary logits U.
      spatial: callable ``(values, weights)``: the unnormalised spatial filter
        of (B, H, W, K) values, followed by the channel product with (L, K)
        weights when they are not None: (B, H, W, L), out[..., l] =
        sum_k weights[l, k] filtered[..., k].
      bilateral: callable, the same for the bilateral kernel.
      spatial_kernel_weights: (C, C), message l from the filtered label k.
      bilateral_kernel_weights: (C, C).
      compatibility: (C, C), mu[l, l'] (see the module docstring).
      num_iterations: mean-field iterations; 0 returns the unaries.

    Returns:
      (B, H, W, C) refined logits U - pairwise.
    """
    # Built from the shape alone, so that no gradient is traced through the norms.
    ones = tf.ones(tf.concat([tf.shape(unaries)[:-1], [1]], axis=0), unaries.dtype)  # (B, H, W, 1)
    spatial_norm = spatial(ones, None)
    bilateral_norm = bilateral(ones, None)
    # pairwise = mu W_s spatial(q) / spatial_norm + mu W_b bilateral(q) / bilateral_norm.
    # The C x C products go into the filters, which apply them to the lattice
    # vertices (fewer than the pixels: 141k and 45k for 350k on
    # ADE_val_00000001), and each filter's output is divided by its norm
    # afterwards (a per-pixel scale commutes with the channel product).
    spatial_weights = tf.matmul(compatibility, spatial_kernel_weights)  # (C, C), l <- k
    bilateral_weights = tf.matmul(compatibility, bilateral_kernel_weights)
    logits = unaries
    for _ in range(num_iterations):
        q = tf.nn.softmax(logits)  # (B, H, W, C)
        pairwise = spatial(q, spatial_weights) / spatial_norm + bilateral(q, bilateral_weights) / bilateral_norm
        logits = unaries - pairwise
    return logits


def _potts(shape, dtype=None):
    return keras.ops.ones(shape, dtype) - keras.ops.eye(shape[0], dtype=dtype)


@keras.saving.register_keras_serializable(package="fcn")
class CrfRnn(keras.layers.Layer):
    """CRF-RNN refinement of segmentation logits.

    Call on ``[unary_logits (B, H, W, C), image (B, H, W, 3) RGB 0..255]``;
    returns refined logits (B, H, W, C), float32. Computes in float32 even under
    a mixed-precision policy (pass ``dtype="float64"`` for numerical checks).
    The bilateral lattice of each image and the lattice of the pixel positions
    are built once per call and reused by every channel and iteration; images
    of a batch are filtered independently.

    Trainable weights: ``spatial_kernel_weights`` and ``bilateral_kernel_weights``
    (C x C, identity x ``spatial_weight`` / ``bilateral_weight`` at
    initialisation) and ``compatibility`` (C x C, Potts 1 - identity).

    Args:
      theta_alpha: bilateral kernel, spatial standard deviation (pixels).
      theta_beta: bilateral kernel, colour standard deviation (0..255 levels).
      theta_gamma: spatial kernel standard deviation (pixels).
      num_iterations: mean-field iterations; the ``num_iterations`` call
        argument overrides it for one call (e.g. 10 at test time).
      spatial_weight: initial diagonal of ``spatial_kernel_weights``.
      bilateral_weight: initial diagonal of ``bilateral_kernel_weights``.
    """

    def __init__(
        self,
        theta_alpha: float = 160.0,
        theta_beta: float = 3.0,
        theta_gamma: float = 3.0,
        num_iterations: int = 5,
        spatial_weight: float = 3.0,
        bilateral_weight: float = 5.0,
        **kwargs,
    ):
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = "float32"  # not the global (possibly mixed) policy
        super().__init__(autocast=False, **kwargs)
        self.theta_alpha = float(theta_alpha)
        self.theta_beta = float(theta_beta)
        self.theta_gamma = float(theta_gamma)
        self.num_iterations = int(num_iterations)
        self.spatial_weight = float(spatial_weight)
        self.bilateral_weight = float(bilateral_weight)
        self.supports_jit = False  # tf.unique in the lattice build has a data-dependent shape

    def build(self, input_shape):
        unary_shape, _ = input_shape
        num_classes = unary_shape[-1]
        if num_classes is None:
            raise ValueError("CrfRnn needs the number of classes (last unary dimension) to be known.")
        self.spatial_kernel_weights = self.add_weight(
            name="spatial_kernel_weights",
            shape=(num_classes, num_classes),
            initializer=keras.initializers.Identity(gain=self.spatial_weight),
        )
        self.bilateral_kernel_weights = self.add_weight(
            name="bilateral_kernel_weights",
            shape=(num_classes, num_classes),
            initializer=keras.initializers.Identity(gain=self.bilateral_weight),
        )
        self.compatibility = self.add_weight(name="compatibility", shape=(num_classes, num_classes), initializer=_potts)

    def call(self, inputs, num_iterations=None):
        unaries, image = inputs
        unaries = tf.cast(unaries, self.compute_dtype)  # (B, H, W, C)
        lattice = build_image_lattice(image, self.theta_alpha, self.theta_beta)
        positions = build_position_lattice(image, self.theta_gamma)
        return mean_field(
            unaries,
            spatial=lambda values, weights: shared_lattice_filter(positions, values, weights),
            bilateral=lambda values, weights: permutohedral.lattice_filter(lattice, values, channel_weights=weights),
            spatial_kernel_weights=tf.convert_to_tensor(self.spatial_kernel_weights),
            bilateral_kernel_weights=tf.convert_to_tensor(self.bilateral_kernel_weights),
            compatibility=tf.convert_to_tensor(self.compatibility),
            num_iterations=self.num_iterations if num_iterations is None else int(num_iterations),
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            theta_alpha=self.theta_alpha,
            theta_beta=self.theta_beta,
            theta_gamma=self.theta_gamma,
            num_iterations=self.num_iterations,
            spatial_weight=self.spatial_weight,
            bilateral_weight=self.bilateral_weight,
        )
        return config
