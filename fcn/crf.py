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
- The layer filters the bilateral kernel on the permutohedral lattice of
  (x, y, r, g, b) (``fcn.permutohedral``), built once per image and call, as
  the C++ DenseCRF does; its error is bounded in tests/test_crf.py. The
  spatial kernel needs no lattice: it is separable, and ``spatial_filter``
  computes it exactly as two depthwise 1-D convolutions, truncated to
  |x_i - x_j| <= r and |y_i - y_j| <= r, r = ceil(4 theta_gamma) (the last
  tap kept is exp(-8) = 3e-4 of the peak, the 1-D mass dropped 6e-5; against
  the untruncated kernel the normalised output moves by 1.1e-5 at most,
  tests/test_crf.py). Pixels outside the image contribute nothing.
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

# Gaussian taps beyond this many standard deviations are dropped (spatial
# filter): the last tap kept is exp(-8) = 3.4e-4 of the centre, and the 1-D
# mass dropped 6e-5 of the whole (tests/test_crf.py bounds the error against
# the untruncated kernel).
SPATIAL_TRUNCATION = 4.0


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


def spatial_radius(theta_gamma: float) -> int:
    """Truncation radius of the spatial kernel, in pixels: ``ceil(SPATIAL_TRUNCATION * theta_gamma)``."""
    return int(math.ceil(SPATIAL_TRUNCATION * theta_gamma))


def gaussian_taps(theta_gamma: float) -> np.ndarray:
    """(2r + 1,) float64 taps exp(-k^2 / (2 theta_gamma^2)), k = -r..r, r = ``spatial_radius``."""
    offsets = np.arange(-spatial_radius(theta_gamma), spatial_radius(theta_gamma) + 1)
    return np.exp(-(offsets**2) / (2.0 * theta_gamma**2))


def _along_width(values: tf.Tensor, taps: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) -> the same, each channel convolved with ``taps`` along W, zeros outside.

    A depthwise convolution with a (1, 2r + 1) kernel: along the innermost
    spatial axis it is several times faster on a CPU than along H (measured with
    oneDNN), so the H pass is one too (``_along_height``).
    """
    kernel = tf.tile(tf.reshape(taps, (1, -1, 1, 1)), tf.stack([1, 1, tf.shape(values)[-1], 1]))  # (1, 2r + 1, C, 1)
    return tf.nn.depthwise_conv2d(values, kernel, strides=[1, 1, 1, 1], padding="SAME")


def _along_height(values: tf.Tensor, taps: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) -> the same, convolved with ``taps`` along H, zeros outside.

    The same memory read as (B, 1, H, W * C): a convolution along its innermost
    spatial axis, each of the W * C columns a channel of its own: no transpose
    there and back (two passes over the values fewer).
    """
    shape = tf.shape(values)
    columns = tf.reshape(values, tf.stack([shape[0], 1, shape[1], shape[2] * shape[3]]))  # (B, 1, H, W * C)
    return tf.reshape(_along_width(columns, taps), shape)


def _separable_gaussian(values: tf.Tensor, taps: tf.Tensor) -> tf.Tensor:
    return _along_height(_along_width(values, taps), taps)


def spatial_filter(values: tf.Tensor, theta_gamma: float) -> tf.Tensor:
    """Unnormalised spatial Gaussian filter, exact for the truncated kernel.

    The kernel exp(-|p_i - p_j|^2 / (2 theta_gamma^2)) is the product of a
    Gaussian along x and one along y, so the filter is two depthwise 1-D
    convolutions (2r + 1 taps each, r = ``spatial_radius``), multithreaded on a
    CPU and parallel on a GPU, with no lattice to build.

    Args:
      values: (B, H, W, C) float32 or float64.
      theta_gamma: standard deviation, pixels.

    Returns:
      (B, H, W, C): sum_j exp(-|p_i - p_j|^2 / (2 theta_gamma^2)) values_j over
      the pixels j of the same image with |x_i - x_j| <= r and |y_i - y_j| <= r;
      j = i included, pixels outside the image contribute nothing.
    """
    values = tf.convert_to_tensor(values)
    taps = tf.constant(gaussian_taps(theta_gamma), values.dtype)

    # The operator is symmetric (symmetric taps, zero padding): its gradient is
    # itself, and nothing needs to be kept for the backward pass.
    @tf.custom_gradient
    def filtered(x):
        return _separable_gaussian(x, taps), lambda upstream: _separable_gaussian(upstream, taps)

    return filtered(values)


def spatial_message(values: tf.Tensor, theta_gamma: float, channel_weights: tf.Tensor = None) -> tf.Tensor:
    """``spatial_filter`` followed by the channel product with (L, C) ``channel_weights`` when given: (B, H, W, L)."""
    filtered = spatial_filter(values, theta_gamma)
    if channel_weights is None:
        return filtered
    return tf.einsum("bhwc,lc->bhwl", filtered, tf.cast(channel_weights, filtered.dtype))


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
      spatial: callable ``(values, weights)``: the spatial filter of
        (B, H, W, K) values divided, pixel by pixel, by the filter of ones,
        followed by the channel product with (L, K) weights: (B, H, W, L),
        out[..., l] = sum_k weights[l, k] filtered[..., k].
      bilateral: callable, the same for the bilateral kernel.
      spatial_kernel_weights: (C, C), message l from the filtered label k.
      bilateral_kernel_weights: (C, C).
      compatibility: (C, C), mu[l, l'] (see the module docstring).
      num_iterations: mean-field iterations; 0 returns the unaries.

    Returns:
      (B, H, W, C) refined logits U - pairwise.
    """
    # pairwise = mu W_s spatial(q) / spatial_norm + mu W_b bilateral(q) / bilateral_norm.
    # The C x C products go into the filters (the bilateral one applies its
    # product to the lattice vertices, fewer than the pixels). The products are
    # negated here, once, so that an iteration is one sum: U - pairwise in a
    # single pass.
    with tf.name_scope("lattice"):
        spatial_weights = -tf.matmul(compatibility, spatial_kernel_weights)  # (C, C), l <- k
        bilateral_weights = -tf.matmul(compatibility, bilateral_kernel_weights)
    logits = unaries
    for _ in range(num_iterations):
        with tf.name_scope("rest"):
            q = tf.nn.softmax(logits)  # (B, H, W, C)
        with tf.name_scope("spatial"):
            spatial_message_ = spatial(q, spatial_weights)
        with tf.name_scope("bilateral"):
            bilateral_message = bilateral(q, bilateral_weights)
        with tf.name_scope("rest"):
            logits = tf.add_n([unaries, spatial_message_, bilateral_message])
    return logits


SPATIAL_KERNELS = ("exact", "lattice")
# Logit of the classes that pad the class axis to a multiple of permutohedral.ALIGN.
_ABSENT_LOGIT = -1e30


def _potts(shape, dtype=None):
    return keras.ops.ones(shape, dtype) - keras.ops.eye(shape[0], dtype=dtype)


# Name scopes of dense_crf's stages (bench/crf.py sums the op time of each).
SCOPES = ("lattice", "spatial", "bilateral", "rest")


def dense_crf(
    unaries: tf.Tensor,
    image: tf.Tensor,
    spatial_kernel_weights: tf.Tensor,
    bilateral_kernel_weights: tf.Tensor,
    compatibility: tf.Tensor,
    theta_alpha: float,
    theta_beta: float,
    theta_gamma: float,
    num_iterations: int,
    spatial_kernel: str = "exact",
) -> tf.Tensor:
    """What ``CrfRnn`` computes, its weights given: (B, H, W, C) refined logits.

    Args:
      unaries: (B, H, W, C) unary logits, float32 or float64.
      image: (B, H, W, 3) RGB 0..255.
      spatial_kernel_weights, bilateral_kernel_weights, compatibility: (C, C),
        of the unaries' dtype.
      theta_alpha, theta_beta, theta_gamma, spatial_kernel: as ``CrfRnn``'s.
      num_iterations: mean-field iterations.

    Its ops are in the name scopes of ``SCOPES``: the lattices and norms,
    then per iteration the two filters (with their C x C products) and the
    rest (softmax, the sum).
    """
    num_classes = unaries.shape[-1]
    weights = [spatial_kernel_weights, bilateral_kernel_weights, compatibility]
    padding = 0
    with tf.name_scope("lattice"):
        # Both norms once per call: the bilateral one folded into the lattice's
        # slice, the spatial one a per-pixel scale (built from the shape alone,
        # so no gradient is traced through it).
        lattice = permutohedral.normalised(build_image_lattice(image, theta_alpha, theta_beta))
        if num_classes >= permutohedral.WIDE_CHANNELS and unaries.dtype == tf.float32:
            # Many classes: the bilateral filter goes through CSR copies of the
            # lattice, fastest on a multiple of ALIGN channels. Classes added
            # with logits of -1e30 and zero weights have probability 0, send
            # and receive no message, and are dropped at the end.
            lattice = permutohedral.compressed(lattice)
            padding = -num_classes % permutohedral.ALIGN
            if padding:
                unaries = tf.pad(unaries, [[0, 0], [0, 0], [0, 0], [0, padding]], constant_values=_ABSENT_LOGIT)
                weights = [tf.pad(w, [[0, padding], [0, padding]]) for w in weights]
        if spatial_kernel == "lattice":
            positions = permutohedral.normalised(permutohedral.build_lattice(spatial_features(image, theta_gamma)))
            spatial = lambda values, weights: permutohedral.lattice_filter(positions, values, channel_weights=weights)  # noqa: E731
        else:
            ones = tf.ones(tf.concat([tf.shape(unaries)[:-1], [1]], axis=0), unaries.dtype)  # (B, H, W, 1)
            spatial_scale = 1.0 / spatial_filter(ones, theta_gamma)
            spatial = lambda values, weights: spatial_message(values, theta_gamma, weights) * spatial_scale  # noqa: E731
    refined = mean_field(
        unaries,
        spatial=spatial,
        bilateral=lambda values, weights: permutohedral.lattice_filter(lattice, values, channel_weights=weights),
        spatial_kernel_weights=weights[0],
        bilateral_kernel_weights=weights[1],
        compatibility=weights[2],
        num_iterations=num_iterations,
    )
    return refined[..., :num_classes] if padding else refined


@keras.saving.register_keras_serializable(package="fcn")
class CrfRnn(keras.layers.Layer):
    """CRF-RNN refinement of segmentation logits.

    Call on ``[unary_logits (B, H, W, C), image (B, H, W, 3) RGB 0..255]``;
    returns refined logits (B, H, W, C), float32. Computes in float32 even under
    a mixed-precision policy (pass ``dtype="float64"`` for numerical checks).
    The bilateral lattice of each image is built once per call and reused by
    every channel and iteration; images of a batch are filtered independently.

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
      spatial_kernel: ``exact`` (the separable Gaussian, ``spatial_filter``)
        or ``lattice`` (a permutohedral lattice of the pixel positions, as the
        C++ DenseCRF and crfasrnn_keras's op filter it: an approximation, kept
        so that crfasrnn_keras's released model gives its own outputs).
    """

    def __init__(
        self,
        theta_alpha: float = 160.0,
        theta_beta: float = 3.0,
        theta_gamma: float = 3.0,
        num_iterations: int = 5,
        spatial_weight: float = 3.0,
        bilateral_weight: float = 5.0,
        spatial_kernel: str = "exact",
        **kwargs,
    ):
        if spatial_kernel not in SPATIAL_KERNELS:
            raise ValueError(f"spatial_kernel must be one of {', '.join(SPATIAL_KERNELS)}, got {spatial_kernel!r}")
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = "float32"  # not the global (possibly mixed) policy
        super().__init__(autocast=False, **kwargs)
        self.theta_alpha = float(theta_alpha)
        self.theta_beta = float(theta_beta)
        self.theta_gamma = float(theta_gamma)
        self.num_iterations = int(num_iterations)
        self.spatial_weight = float(spatial_weight)
        self.bilateral_weight = float(bilateral_weight)
        self.spatial_kernel = spatial_kernel
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
        return dense_crf(
            tf.cast(unaries, self.compute_dtype),
            image,
            *(tf.convert_to_tensor(w) for w in (self.spatial_kernel_weights, self.bilateral_kernel_weights, self.compatibility)),
            theta_alpha=self.theta_alpha,
            theta_beta=self.theta_beta,
            theta_gamma=self.theta_gamma,
            num_iterations=self.num_iterations if num_iterations is None else int(num_iterations),
            spatial_kernel=self.spatial_kernel,
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
            spatial_kernel=self.spatial_kernel,
        )
        return config
