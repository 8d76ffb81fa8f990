"""High-dimensional Gaussian filtering on a permutohedral lattice, in standard TensorFlow ops.

After Adams, Baek and Davis, "Fast High-Dimensional Filtering Using the
Permutohedral Lattice" (Eurographics 2010). Every point carries a feature vector
``f`` (already divided by the kernel's standard deviations) and the filter
approximates the Gaussian sum

    out_i = sum_j exp(-|f_i - f_j|^2 / 2) * values_j      (j = i included)

in time linear in the number of points:

1. the features are embedded in the hyperplane ``sum(x) = 0`` of R^(d+1),
   where the permutohedral lattice tiles space with simplices;
2. *splat*: each point adds its value to the d+1 vertices of its enclosing
   simplex, with its barycentric weights;
3. *blur*: ``[1 2 1] / 4`` along each of the d+1 lattice directions;
4. *slice*: each point reads the blurred values back with the same weights.

Splat, blur and slice are linear and depend only on the features, so
``build_lattice`` does all the geometry once (int64 vertex keys; vertices
numbered by ``tf.unique``, or by a table over the key range when that range is
small, as for features on a regular grid; neighbours by key
arithmetic and a binary search in the sorted keys) and returns them as sparse
matrices; ``lattice_filter`` is then d + 3 sparse-dense matrix products per
call, for any number of channels. A batch of known size gets one lattice per
feature set (image); a batch of unknown size is one lattice, in which the batch
index is the most significant digit of every vertex key, so that its feature
sets never share a vertex. Either way they are filtered independently.

The filter matrix is ``S^T B_d ... B_0 S`` with ``S`` the splat matrix and each
blur ``B_k`` symmetric, so its transpose is the same product with the blur
directions reversed: the gradient is one more filter call, and the backward
pass keeps nothing of the forward one (memory does not grow with lattice
vertices times channels per call). The lattice itself carries no gradient.
A channel product (``channel_weights``, the C x C matrices of the CRF) is
applied to the blurred vertices, before the slice: the filter acts on each
channel alone, so the two commute, and there are fewer vertices than points
(141k bilateral vertices for 350k pixels on ADE_val_00000001). ``normalised``
folds the division by the filter of ones into the slice, once per lattice.

Why sparse matrices: on this 2-core CPU (TF 2.21, 500x375 image, C = 21) they
beat every dense index formulation tried. Slice as d + 1 row gathers times
weights took 2-3x the ``sparse_dense_matmul``; splat by
``unsorted_segment_sum`` 10x, by sorted ``segment_sum`` 7x, as the adjoint of
the slice matrix 1-3x; blur as two neighbour gathers and an ``add_n`` made the
whole filter 1.2x (C = 21) to 1.6x (C = 150) slower, and the diagonal of the
blur as a scaled copy 1.8x. At these channel counts the cost is per stored
index, not per multiply-add: two chunks of 10-11 channels took 1.8x one of 21,
and 21 channels padded to 32 (TensorFlow's vectorised path from 32 on) 6x;
sorting the indices row-major, 1.1x. The same filter compiled with XLA
(gathers, ``unsorted_segment_sum``) took 9x. Also tried for the build and not
kept: a vectorised open-addressing hash (``tensor_scatter_nd_max`` rounds) 3-4x
slower than ``tf.unique``; the coordinate ranks by pairwise comparisons instead
of two ``top_k``, 1.8x slower.

Many channels: ``compressed`` adds CSR copies of the matrices, and float32
values of at least ``WIDE_CHANNELS`` channels then go through
``SparseMatrixMatMul``, all channels in one multithreaded pass, instead of
``CHANNEL_CHUNK``-channel chunks through the single-threaded
``sparse_dense_matmul``. On the idle 2-core Intel Xeon with AVX-512 and AMX
(683x512, one filter and its channel product): 183 ms against 287 ms at
C = 150 (CPU time 357 against 527 ms), 38 against 47 ms at C = 32; at C = 21
the CSR product was 1.9x slower, and widths off a multiple of ``ALIGN`` are
slow (C = 33: 128 ms against 78), so the CRF layer pads its class axis to a
multiple of 8. The CSR rows must be in order (``SparseTensorToCSRSparseMatrix``
does not check): ``compressed`` builds its blur copies row by row from each
vertex's neighbours, and the build leaves the blur matrices unordered (the
row-ordered construction made the build 1.1-1.3x slower for every caller).

Against the C++ DenseCRF (pydensecrf2), the CRF-RNN layer built on this filter
(5 iterations, ``python bench/crf.py --no_training --repeats 3``; pydensecrf2
time over ours, median of 3 turns), ADE_val_00000001 683x512 at C = 21, at
C = 150, random colours 512x512 at C = 21: on the idle 2-core Intel Xeon with
AVX-512 and AMX 1.56x, 1.84x, 1.04x and 1.26x, 1.86x, 1.18x (two runs, one
after the other; earlier runs of the same filter at C = 150: 2.12x, 2.08x,
2.06x, 1.88x, so about 2x, 1.84-2.12x over six runs). Labels equal on 100.00,
99.99, 99.99 % of the pixels. ``bench/README.md`` has the runs, their CPU times
and where the time goes.

No custom op, no ``py_function``, no strings: runs eagerly and in ``tf.function``
on any device. It does not compile with XLA (``tf.unique`` has a data-dependent
shape).
"""

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

# Vertex keys are int64; keep a factor 2 of headroom below 2^63.
_MAX_KEY = 2.0**62
# Vertices are numbered with a table over the key range, instead of a hash,
# when the range is at most this many times the number of point-vertex keys
# and at most _MAX_TABLE entries (int32 keys and counts).
_DENSE_KEYS_PER_KEY = 4.0
_MAX_TABLE = 2**26


class LatticePart(NamedTuple):
    """The lattice of one or more feature sets, as sparse matrices.

    M is the number of lattice vertices of its B feature sets, P = B * N the
    number of their points (set major). All are float32 SparseTensors,
    applied with ``tf.sparse.sparse_dense_matmul``.

    Attributes:
      splat: (M, P), barycentric weights, points -> vertices.
      blur: d + 1 symmetric (M, M) matrices, [1 2 1] / 4 along each lattice
        direction, times the (d + 1)-th root of ``_normalisation(d)``.
      slice: (P, M), the transpose of ``splat``, its rows scaled by
        ``normalised``.
      slice_adjoint: the transpose of ``slice`` when ``normalised`` scaled
        it; None when it is ``splat``.
      splat_adjoint: the transpose of ``splat`` when ``slice`` is scaled;
        None when it is ``slice``.
      compressed: row-compressed copies of the five (``compressed``), or None.
      neighbours: (d + 1, M) int32, the next vertex along each lattice
        direction, -1 where there is none (what ``compressed`` orders the
        blur matrices' rows by).
    """

    splat: tf.SparseTensor
    blur: tuple
    slice: tf.SparseTensor
    slice_adjoint: tf.SparseTensor | None = None
    splat_adjoint: tf.SparseTensor | None = None
    compressed: "Compressed | None" = None
    neighbours: tf.Tensor | None = None


class Compressed(NamedTuple):
    """A part's matrices as float32 CSR matrices (``tf.raw_ops`` variants), adjoints resolved."""

    splat: tf.Tensor
    blur: tuple
    slice: tf.Tensor
    slice_adjoint: tf.Tensor
    splat_adjoint: tf.Tensor


class Lattice(NamedTuple):
    """What ``lattice_filter`` needs, built once per batch of feature sets.

    Attributes:
      parts: one ``LatticePart`` per feature set when the batch size is known
        when tracing, else a single one for the whole batch.
    """

    parts: tuple


def _embedding(d: int) -> np.ndarray:
    """(d, d + 1) map from features to the lattice hyperplane, scaled as Adams et al.

    Column i of the (unscaled) basis is (1, ..., 1, -(i + 1), 0, ..., 0) with
    i + 1 ones: orthogonal vectors of norm sqrt((i + 1)(i + 2)) spanning
    sum(x) = 0. Dividing by that norm makes the map an isometry; the factor
    sqrt(2/3) (d + 1) sets the lattice spacing so that blur plus splat/slice
    approximate a Gaussian of unit standard deviation in feature units.
    """
    embedding = np.zeros((d, d + 1), np.float64)
    for i in range(d):
        embedding[i, : i + 1] = 1.0
        embedding[i, i + 1] = -(i + 1.0)
        embedding[i] /= math.sqrt((i + 1.0) * (i + 2.0))
    return embedding * math.sqrt(2.0 / 3.0) * (d + 1)


def _normalisation(d: int) -> float:
    """Factor that turns the lattice's mass-preserving filter into the Gaussian sum.

    Splat and blur preserve mass, so in a region of uniform point density rho
    (points per unit feature volume) the lattice returns rho * V, with V the
    feature-space volume per lattice vertex, while the Gaussian sum is
    rho * (2 pi)^(d/2). The lattice (d + 1) A_d* has (d + 1)^(d - 1) sqrt(d + 1)
    hyperplane volume per vertex, and one feature unit is sqrt(2/3) (d + 1)
    hyperplane units, so V = (3/2)^(d/2) / sqrt(d + 1).
    """
    volume_per_vertex = 1.5 ** (d / 2.0) / math.sqrt(d + 1.0)
    return (2.0 * math.pi) ** (d / 2.0) / volume_per_vertex


def _next_vertex_key_offsets(d: int, strides: tf.Tensor) -> tf.Tensor:
    """(d + 1 remainders, d + 1 directions) int64: key(next vertex) - key(vertex).

    A vertex's coordinates c (d + 1 integers summing to zero) are all congruent
    to its remainder k modulo d + 1; its key stores k and q_i = floor(c_i / (d + 1))
    for the first d coordinates (see ``build_lattice``). The next vertex along
    direction j is c + 1 everywhere except c_j - d.
    """
    digit_change = np.zeros((d + 1, d + 1, d), np.int64)  # (k, j, i): change of q_i
    remainder_change = np.ones((d + 1, d + 1), np.int64)  # (k, j): change of k
    remainder_change[d, :] = -d  # k = d wraps to 0 and every q_i moves up by one
    digit_change[d, :, :] = 1
    for j in range(d):
        digit_change[:, j, j] -= 1  # c_j - d = (c_j + 1) - (d + 1): one step of q_j down
    return tf.constant(remainder_change) + tf.einsum("kji,i->kj", tf.constant(digit_change), strides)


def build_lattice(features: tf.Tensor) -> Lattice:
    """Builds the permutohedral lattice of B sets of N feature vectors.

    Args:
      features: (B, N, d) float, d static, already scaled so that the kernel is
        exp(-|f_i - f_j|^2 / 2). No gradient flows through the lattice.

    Returns:
      A ``Lattice`` for ``lattice_filter``.
    """
    features = tf.stop_gradient(tf.cast(features, tf.float32))  # (B, N, d)
    if features.shape[-1] is None:
        raise ValueError("build_lattice needs a static feature dimension.")
    # One lattice per feature set when B is static: smaller hash tables, vertex
    # arrays that stay in cache, and sets that build and filter in parallel.
    # At 500x375, batch 4, alone: build 1.5x, filter (C = 21) 2x faster; the
    # whole CRF-RNN forward only 1.0-1.1x (loaded machine).
    batch_size = features.shape[0]
    if batch_size is not None and batch_size > 1:
        return Lattice(tuple(_build_part(features[i : i + 1]) for i in range(batch_size)))
    return Lattice((_build_part(features),))


def _build_part(features: tf.Tensor) -> LatticePart:
    """``build_lattice`` for (B, N, d) float32 features, B sets in one lattice."""
    d = features.shape[-1]
    batch_size, num_points = tf.shape(features)[0], tf.shape(features)[1]
    points = tf.reshape(features, (-1, d))  # (P, d)

    # Position in the hyperplane, and its nearest "remainder-0" lattice point
    # (all coordinates multiples of d + 1), kept in units of d + 1.
    elevated = tf.matmul(points, tf.constant(_embedding(d), tf.float32))  # (P, d + 1)
    nearest = tf.round(elevated / (d + 1))  # (P, d + 1)
    # Coordinates by decreasing residual (ties by index), and each one's rank in that order.
    by_rank = tf.math.top_k(elevated - nearest * (d + 1), k=d + 1).indices  # (P, d + 1)
    rank = tf.math.top_k(-by_rank, k=d + 1).indices  # (P, d + 1), the inverse permutation
    # The nearest point need not lie in the hyperplane: moving the coordinates of
    # extreme rank by d + 1 brings the sum to zero and rotates the ranks.
    excess = tf.reduce_sum(tf.cast(nearest, tf.int32), axis=1, keepdims=True)  # (P, 1)
    shifted_rank = rank + excess
    nearest = nearest - tf.cast(shifted_rank > d, tf.float32) + tf.cast(shifted_rank < 0, tf.float32)
    by_rank = tf.gather(by_rank, tf.math.floormod(tf.range(d + 1) - excess, d + 1), batch_dims=1)  # (P, d + 1)

    # Barycentric weight of the vertex of remainder k: differences of the sorted
    # residuals (Adams et al.'s slot arithmetic, without the scatter).
    residual = (elevated - nearest * (d + 1)) / (d + 1)  # (P, d + 1)
    sorted_residual = tf.gather(residual, by_rank, batch_dims=1)  # (P, d + 1), decreasing
    weights = tf.concat(
        [
            1.0 + sorted_residual[:, d:] - sorted_residual[:, :1],
            sorted_residual[:, d - 1 :: -1] - sorted_residual[:, d:0:-1],
        ],
        axis=1,
    )  # (P, d + 1)

    # Vertex k has coordinates c_i = (d + 1) nearest_i + k, minus d + 1 for the k
    # coordinates of highest rank. Its key is the mixed-radix int64 number
    # (batch index, q_{d-1}, ..., q_0, k) with q_i = floor(c_i / (d + 1)) for the
    # first d coordinates (the last is minus their sum), q shifted to >= 1 with
    # one spare value either side so that neighbour keys never carry.
    nearest = tf.cast(nearest, tf.int64)
    lowest = tf.reduce_min(nearest[:, :d], axis=0) - 1  # (d,) lowest q
    radices = tf.reduce_max(nearest[:, :d], axis=0) - lowest + 3  # (d,)
    strides = (d + 1) * tf.math.cumprod(radices, exclusive=True)  # (d,)
    batch_stride = (d + 1) * tf.reduce_prod(radices)
    key_range = tf.cast(batch_stride, tf.float64) * tf.cast(batch_size, tf.float64)
    check = tf.debugging.assert_less(
        key_range,
        tf.constant(_MAX_KEY, tf.float64),
        message="permutohedral lattice keys overflow int64: the features span too wide a range "
        "(kernel widths too small for the image size or colour range)",
    )
    with tf.control_dependencies([check]):
        batch_index = tf.repeat(tf.range(tf.cast(batch_size, tf.int64)), num_points)  # (P,)
    base_keys = tf.reduce_sum((nearest[:, :d] - lowest + 1) * strides, axis=1) + batch_index * batch_stride  # (P,)
    rank_strides = tf.gather(tf.concat([strides, [0]], axis=0), by_rank)  # (P, d + 1), 0 for the last coordinate
    lowered = tf.cumsum(rank_strides[:, ::-1], axis=1, exclusive=True)  # (P, k): the k highest-rank q_i drop by one
    keys = base_keys[:, None] + tf.range(d + 1, dtype=tf.int64) - lowered  # (P, d + 1)

    # Vertices, and the next vertex along each direction (key arithmetic, then a
    # lookup of that key; a key that is no vertex is not found).
    offsets = _next_vertex_key_offsets(d, strides)  # (k, j)
    flat_keys = tf.reshape(keys, [-1])

    def hashed():
        # Vertices numbered in order of first appearance: pixels in raster order
        # then touch nearby rows of the vertex arrays, which keeps splat, blur
        # and slice cache-friendly. Neighbours by binary search in the sorted
        # vertex keys: on ADE_val_00000001 (141k vertices, 850k neighbour keys)
        # 1.9x faster than a second tf.unique over vertex and neighbour keys; on
        # 512x512 random colours (1.4M vertices) the same (2-core AVX2 EPYC,
        # loaded). Same lattice.
        unique_keys, vertex = tf.unique(flat_keys, out_idx=tf.int32)  # (M,), (P * (d + 1),)
        next_keys = tf.reshape(unique_keys[:, None] + tf.gather(offsets, tf.math.floormod(unique_keys, d + 1)), [-1])
        order = tf.argsort(unique_keys)
        sorted_keys = tf.gather(unique_keys, order)
        last = tf.maximum(tf.size(unique_keys) - 1, 0)
        position = tf.minimum(tf.searchsorted(sorted_keys, next_keys, out_type=tf.int32), last)
        found = tf.equal(tf.gather(sorted_keys, position), next_keys)  # (M (d + 1),)
        return unique_keys, vertex, tf.gather(order, position), found

    def dense():
        # Few possible keys (the lattice of pixel positions: about 3 N): a table
        # over the whole key range instead of a hash; vertices in key order.
        # On 683x512 positions (1.05M keys, range 132k) this replaces a
        # tf.unique that took most of the build.
        table_size = tf.cast(key_range, tf.int32)
        present = tf.math.bincount(tf.cast(flat_keys, tf.int32), minlength=table_size, maxlength=table_size) > 0
        numbers = tf.cumsum(tf.cast(present, tf.int32), exclusive=True)  # (R,): vertex number of each key
        unique_keys = tf.where(present)[:, 0]  # (M,), increasing
        next_keys = unique_keys[:, None] + tf.gather(offsets, tf.math.floormod(unique_keys, d + 1))
        next_keys = tf.reshape(tf.cast(next_keys, tf.int32), [-1])  # within the range: no key carries
        return unique_keys, tf.gather(numbers, tf.cast(flat_keys, tf.int32)), tf.gather(numbers, next_keys), tf.gather(present, next_keys)

    num_keys = tf.cast(tf.size(flat_keys), tf.float64)
    use_table = tf.logical_and(key_range <= _DENSE_KEYS_PER_KEY * num_keys, key_range <= _MAX_TABLE)
    unique_keys, vertex, following, found = tf.cond(use_table, dense, hashed)
    num_vertices = tf.size(unique_keys)
    following = tf.reshape(following, (-1, d + 1))  # (M, d + 1), valid where found
    present = tf.transpose(tf.reshape(found, (-1, d + 1)))  # (d + 1, M)

    # Blur along direction j: B_j = s (I / 2 + (N_j + N_j^T) / 4), N_j[v, next_j(v)] = 1;
    # a missing neighbour contributes nothing. Each B_j is exactly symmetric, and
    # s^(d + 1) is the normalisation constant, so that slice is exactly splat^T.
    # The edges of all directions come from one tf.where, direction-major; the
    # entries are left unordered (sparse_dense_matmul does not need an order).
    # ``compressed`` builds its row-ordered copies from ``neighbours``.
    scale = _blur_scale(d)
    vertices = tf.range(num_vertices, dtype=tf.int64)
    diagonal = tf.stack([vertices, vertices], axis=1)
    edges = tf.where(present)  # (E, 2): direction, vertex
    edge_count = tf.reduce_sum(tf.cast(present, tf.int32), axis=1)  # (d + 1,)
    source = edges[:, 1]
    target = tf.cast(tf.gather_nd(following, tf.reverse(edges, [1])), tf.int64)
    blur = []
    ends = tf.unstack(tf.cumsum(edge_count), num=d + 1)
    for start, stop in zip([0] + ends[:-1], ends):
        pairs = tf.stack([source[start:stop], target[start:stop]], axis=1)  # (E_j, 2)
        indices = tf.concat([diagonal, pairs, pairs[:, ::-1]], axis=0)
        blur_weights = tf.concat(
            [tf.fill([num_vertices], 0.5 * scale), tf.fill([2 * (stop - start)], 0.25 * scale)], axis=0
        )
        blur.append(tf.SparseTensor(indices, blur_weights, tf.cast([num_vertices, num_vertices], tf.int64)))
    neighbours = tf.where(present, tf.transpose(following), -1)  # (d + 1, M), -1 where there is none

    # Splat (vertex-major) and slice (point-major) as sparse matrices, left
    # unordered: sparse_dense_matmul does not need it and sorting costs more.
    num_points_total = tf.shape(points, out_type=tf.int64)[0]
    point_index = tf.repeat(tf.range(num_points_total), d + 1)  # (P * (d + 1),)
    vertex = tf.cast(vertex, tf.int64)
    flat_weights = tf.reshape(weights, [-1])
    vertex_rows = tf.cast(num_vertices, tf.int64)
    splat = tf.SparseTensor(tf.stack([vertex, point_index], axis=1), flat_weights, [vertex_rows, num_points_total])
    slice_ = tf.SparseTensor(tf.stack([point_index, vertex], axis=1), flat_weights, [num_points_total, vertex_rows])
    return LatticePart(splat, tuple(blur), slice_, neighbours=neighbours)


# Channels filtered per pass. Vertex arrays of (M, 24) float32 stay in the CPU
# cache, where (M, 150) do not: at 500x375, C = 150 filters 2-3x faster in chunks.
CHANNEL_CHUNK = 24
# Row length, in values, that TensorFlow's CSR product handles fastest.
ALIGN = 8
# From this many channels a lattice with CSR copies (``compressed``) filters
# all channels in one pass through them.
WIDE_CHANNELS = 32


def in_channel_chunks(function, values: tf.Tensor) -> tf.Tensor:
    """Applies a channel-wise independent ``function`` to (..., C) values in chunks of channels."""
    channels = values.shape[-1]
    if channels is None or channels <= CHANNEL_CHUNK:
        return function(values)
    num_chunks = -(-channels // CHANNEL_CHUNK)
    sizes = [channels // num_chunks + (i < channels % num_chunks) for i in range(num_chunks)]
    return tf.concat([function(part) for part in tf.split(values, sizes, axis=-1)], axis=-1)


def _cast(matrix: tf.SparseTensor, dtype) -> tf.SparseTensor:
    return tf.SparseTensor(matrix.indices, tf.cast(matrix.values, dtype), matrix.dense_shape)


def _splat_blur(part: LatticePart, values: tf.Tensor, reverse: bool) -> tf.Tensor:
    """Splat and blur, (P, C) -> (M, C). ``reverse`` blurs in the transposed order."""
    vertex_values = tf.sparse.sparse_dense_matmul(_cast(part.splat, values.dtype), values)
    for blur in reversed(part.blur) if reverse else part.blur:
        vertex_values = tf.sparse.sparse_dense_matmul(_cast(blur, values.dtype), vertex_values)
    return vertex_values


def _slice(part: LatticePart, vertex_values: tf.Tensor) -> tf.Tensor:
    """(M, C) -> (P, C)."""
    return tf.sparse.sparse_dense_matmul(_cast(part.slice, vertex_values.dtype), vertex_values)


def _wide(part: LatticePart, values: tf.Tensor) -> bool:
    """Whether (rows, C) ``values`` go through the part's CSR copies, in one pass over all channels."""
    channels = values.shape[-1]
    return part.compressed is not None and values.dtype == tf.float32 and channels is not None and channels >= WIDE_CHANNELS


def _csr_product(matrix: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    return tf.raw_ops.SparseMatrixMatMul(a=matrix, b=values)


def _csr_blur(matrices: Compressed, vertex_values: tf.Tensor, reverse: bool) -> tf.Tensor:
    for blur in reversed(matrices.blur) if reverse else matrices.blur:
        vertex_values = _csr_product(blur, vertex_values)
    return vertex_values


def _gradient_matrices(part: LatticePart) -> Compressed:
    """The CSR copies for a gradient function: the forward's, unless it is traced in a graph of its own.

    Gradients taken in the forward's graph (a ``tf.function`` and its tape)
    or eagerly use the forward's copies. ``tf.saved_model.save`` traces each
    custom gradient as a function of its own, which cannot capture a CSR
    matrix (a variant tensor): there the copies are made again from the
    sparse matrices.
    """
    return _compressed_here(part).compressed


def _to_vertices(part: LatticePart, values: tf.Tensor, reverse: bool) -> tf.Tensor:
    """Splat and blur of (P, C) values, by channel chunks; its gradient is slice after the reversed blur."""
    if _wide(part, values):
        matrices = part.compressed

        @tf.custom_gradient
        def wide(x):
            def gradient(upstream):  # (M, C) -> (P, C)
                here = _gradient_matrices(part)
                return _csr_product(here.splat_adjoint, _csr_blur(here, upstream, not reverse))

            return _csr_blur(matrices, _csr_product(matrices.splat, x), reverse), gradient

        return wide(values)

    @tf.custom_gradient
    def forward(x):
        adjoint = part.slice if part.splat_adjoint is None else part.splat_adjoint

        def gradient(upstream):  # (M, C) -> (P, C): (B S)^T = S^T B^T, each B_j symmetric
            return in_channel_chunks(
                lambda chunk: tf.sparse.sparse_dense_matmul(_cast(adjoint, chunk.dtype), _blur_only(part, chunk, not reverse)),
                upstream,
            )

        return in_channel_chunks(lambda chunk: _splat_blur(part, chunk, reverse), x), gradient

    return forward(values)


def _blur_only(part: LatticePart, vertex_values: tf.Tensor, reverse: bool) -> tf.Tensor:
    for blur in reversed(part.blur) if reverse else part.blur:
        vertex_values = tf.sparse.sparse_dense_matmul(_cast(blur, vertex_values.dtype), vertex_values)
    return vertex_values


def _from_vertices(part: LatticePart, vertex_values: tf.Tensor) -> tf.Tensor:
    """Slice of (M, C) vertex values, by channel chunks; its gradient is the splat."""
    if _wide(part, vertex_values):
        matrices = part.compressed

        @tf.custom_gradient
        def wide(z):
            return _csr_product(matrices.slice, z), lambda upstream: _csr_product(_gradient_matrices(part).slice_adjoint, upstream)

        return wide(vertex_values)

    @tf.custom_gradient
    def forward(z):
        adjoint = part.splat if part.slice_adjoint is None else part.slice_adjoint

        def gradient(upstream):  # (P, C) -> (M, C)
            return in_channel_chunks(
                lambda chunk: tf.sparse.sparse_dense_matmul(_cast(adjoint, chunk.dtype), chunk), upstream
            )

        return in_channel_chunks(lambda chunk: _slice(part, chunk), z), gradient

    return forward(vertex_values)


def normalised(lattice: Lattice) -> Lattice:
    """The lattice whose filter is divided, point by point, by its filter of ones.

    The division is folded into the slice matrix (each point's row scaled by
    1 / filter(1) at that point), so a caller that filters the same features
    many times, as mean field does, pays for the norm once, not once per
    call. ``lattice_filter`` of the result, its gradient included, is the
    normalised filter; its ``transpose`` option is not (it raises).
    """
    parts = []
    for part in lattice.parts:
        ones = tf.ones(tf.stack([part.slice.dense_shape[0], 1]), tf.float32)  # (P, 1)
        scale = 1.0 / _slice(part, _splat_blur(part, ones, reverse=False))[:, 0]  # (P,)
        rows, columns = part.slice.indices[:, 0], part.splat.indices[:, 1]
        scaled_slice = tf.SparseTensor(part.slice.indices, part.slice.values * tf.gather(scale, rows), part.slice.dense_shape)
        adjoint = tf.SparseTensor(part.splat.indices, part.splat.values * tf.gather(scale, columns), part.splat.dense_shape)
        scaled = part._replace(slice=scaled_slice, slice_adjoint=adjoint, splat_adjoint=part.slice, compressed=None)
        parts.append(scaled if part.compressed is None else _compress(scaled))
    return Lattice(tuple(parts))


def _csr(matrix: tf.SparseTensor) -> tf.Tensor:
    """float32 CSR copy of a SparseTensor whose entries are in row order (any column order within a row).

    The conversion does not check the row order, and a product with rows out
    of order is silently wrong: every matrix given here is built row by row.
    """
    return tf.raw_ops.SparseTensorToCSRSparseMatrix(
        indices=matrix.indices, values=tf.cast(matrix.values, tf.float32), dense_shape=matrix.dense_shape
    )


def _csr_transpose(matrix: tf.Tensor) -> tf.Tensor:
    return tf.raw_ops.SparseMatrixTranspose(input=matrix, type=tf.float32)


def _blur_scale(d: int) -> float:
    """The factor of each blur matrix: the (d + 1)-th root of ``_normalisation(d)``."""
    return _normalisation(d) ** (1.0 / (d + 1))


def _row_ordered_blur(neighbours: tf.Tensor, j: int) -> tf.SparseTensor:
    """Blur matrix j of a part, its entries in row order, as a CSR copy needs them.

    Each row holds its vertex's previous vertex, itself and its next one along
    direction j (the same entries as the part's blur matrix j, ordered);
    ``neighbours`` is the part's (d + 1, M) next vertex along each direction.
    """
    scale = _blur_scale(neighbours.shape[0] - 1)
    num_vertices = tf.shape(neighbours)[1]
    vertices = tf.range(num_vertices)
    next_vertex = neighbours[j]  # (M,)
    has_next = next_vertex >= 0
    previous_vertex = tf.tensor_scatter_nd_update(
        tf.fill([num_vertices], -1), tf.boolean_mask(next_vertex, has_next)[:, None], tf.boolean_mask(vertices, has_next)
    )
    columns = tf.stack([previous_vertex, vertices, next_vertex], axis=1)  # (M, 3), -1 where there is none
    stored = tf.reshape(columns >= 0, [-1])
    rows = tf.boolean_mask(tf.repeat(vertices, 3), stored)
    indices = tf.cast(tf.stack([rows, tf.boolean_mask(tf.reshape(columns, [-1]), stored)], axis=1), tf.int64)
    row_weights = tf.constant([0.25 * scale, 0.5 * scale, 0.25 * scale], tf.float32)
    values = tf.boolean_mask(tf.tile(row_weights, [num_vertices]), stored)
    return tf.SparseTensor(indices, values, tf.cast([num_vertices, num_vertices], tf.int64))


def _compress(part: LatticePart) -> LatticePart:
    # The slice (and the unscaled slice of a normalised lattice) is point-major,
    # each blur vertex-major; the splat and the adjoints are their transposes.
    slice_ = _csr(part.slice)
    if part.slice_adjoint is None:  # unnormalised: slice = splat^T
        unscaled_slice, slice_adjoint = slice_, _csr_transpose(slice_)
        splat = slice_adjoint
    else:
        unscaled_slice, slice_adjoint = _csr(part.splat_adjoint), _csr_transpose(slice_)
        splat = _csr_transpose(unscaled_slice)
    # The blur matrices' entries are unordered; a CSR copy needs its rows in order (and
    # SparseTensorToCSRSparseMatrix does not check): they are built again row by row.
    blur = tuple(_csr(_row_ordered_blur(part.neighbours, j)) for j in range(len(part.blur)))
    matrices = Compressed(splat, blur, slice_, slice_adjoint, unscaled_slice)
    return part._replace(compressed=matrices)


def _compressed_here(part: LatticePart) -> LatticePart:
    """The part, its CSR copies made again in this graph if they were captured from outside it.

    A CSR matrix that enters a graph as a capture (built eagerly, or returned
    by another ``tf.function``) has lost the shape information its product
    needs; the sparse matrices it came from have not.
    """
    if part.compressed is None or tf.executing_eagerly():
        return part
    try:
        if part.compressed.slice.graph is tf.compat.v1.get_default_graph():
            return part
    except AttributeError:  # an eager tensor, captured by this graph
        pass
    return _compress(part)


def compressed(lattice: Lattice) -> Lattice:
    """The lattice with CSR copies of its matrices, for filtering many channels at once.

    ``lattice_filter`` then takes float32 values of at least ``WIDE_CHANNELS``
    channels through TensorFlow's CSR product (``SparseMatrixMatMul``), all
    channels in one multithreaded pass, instead of channel chunks through
    ``sparse_dense_matmul``; narrower or float64 values take the chunks as
    before. Same filter, same gradient. Worth it when a caller filters many
    channels (ADE20K's 150 classes), not for a few: the copies cost about
    what one wide filter call saves (``bench/README.md``).
    """
    return Lattice(tuple(_compress(part) for part in lattice.parts))


def lattice_filter(
    lattice: Lattice, values: tf.Tensor, transpose: bool = False, channel_weights: tf.Tensor = None
) -> tf.Tensor:
    """Gaussian-filters values with a lattice from ``build_lattice``.

    Args:
      lattice: the lattice of the B feature sets.
      values: (B, N, C) float32 or float64, or (B, ...spatial, C) with the
        spatial axes in the order of the features' N axis.
      transpose: apply the transposed filter (blur directions reversed), which
        is the filter's gradient.
      channel_weights: optional (L, K) matrix, K dividing C: the output is then
        out[..., g L + l] = sum_k channel_weights[l, k] filtered[..., g K + k]
        for each group g of K channels. It is applied to the blurred lattice
        vertices, before the slice (the filter acts on each channel alone, so
        the two commute): M x K x L multiply-adds instead of N x K x L, M the
        number of vertices.

    Returns:
      The shape of ``values`` (last axis C / K x L with ``channel_weights``),
      approximately sum_j exp(-|f_i - f_j|^2 / 2) values_j within each batch
      element, j = i included. Differentiable with respect to values and
      channel_weights; the backward pass is the transposed filter and keeps
      only the (M, C) vertex values when ``channel_weights`` is given.
    """
    values = tf.convert_to_tensor(values)
    channels = values.shape[-1] if values.shape[-1] is not None else tf.shape(values)[-1]
    parts = tuple(_compressed_here(part) for part in lattice.parts)
    if transpose and any(part.slice_adjoint is not None for part in parts):
        raise ValueError("lattice_filter(transpose=True) of a normalised lattice is not its transpose")

    def apply_part(part, part_values):  # (..., C) of one part
        flat = tf.reshape(part_values, (-1, channels))  # (P, C)
        weights = None if channel_weights is None else tf.cast(channel_weights, flat.dtype)
        # The CSR products run several times faster on rows of a multiple of
        # ALIGN values (33 channels: 1.9x the time of 32): pad with zero
        # channels, and zero rows of the channel product, then drop them.
        kept = None
        if _wide(part, flat) and (weights is None or weights.shape[-1] == channels):
            outputs = channels if weights is None else weights.shape[0]
            if outputs is not None and (channels % ALIGN or outputs % ALIGN):
                kept = outputs
                flat = tf.pad(flat, [[0, 0], [0, -channels % ALIGN]])
                if weights is not None:
                    weights = tf.pad(weights, [[0, -outputs % ALIGN], [0, -channels % ALIGN]])
        output = mix_and_slice(part, _to_vertices(part, flat, transpose), weights)  # (P, C')
        return output if kept is None else output[:, :kept]

    def mix_and_slice(part, vertex_values, weights):  # (M, C) -> (P, C'), the channel product on the vertices
        if weights is not None:
            if weights.shape[-1] is not None and vertex_values.shape[-1] == weights.shape[-1]:
                vertex_values = tf.matmul(vertex_values, weights, transpose_b=True)  # (M, L)
            else:
                grouped = tf.reshape(vertex_values, tf.stack([tf.shape(vertex_values)[0], -1, tf.shape(weights)[1]]))
                mixed = tf.matmul(grouped, weights[None], transpose_b=True)  # (M, G, L)
                vertex_values = tf.reshape(mixed, tf.stack([tf.shape(vertex_values)[0], -1]))
                if None not in (values.shape[-1], weights.shape[0], weights.shape[1]):
                    vertex_values = tf.ensure_shape(vertex_values, (None, values.shape[-1] // weights.shape[1] * weights.shape[0]))
        return _from_vertices(part, vertex_values)  # (P, C')

    batched = tf.reshape(values, tf.stack([tf.shape(values)[0], -1, channels]))  # (B, N, C)
    if len(parts) == 1:
        output = apply_part(parts[0], batched)
        output = tf.reshape(output, tf.stack([tf.shape(values)[0], tf.shape(batched)[1], -1]))
    else:
        output = tf.stack([apply_part(part, x) for part, x in zip(parts, tf.unstack(batched, len(parts)))])
    return tf.reshape(output, tf.concat([tf.shape(values)[:-1], tf.shape(output)[-1:]], axis=0))
