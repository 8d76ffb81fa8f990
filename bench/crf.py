"""Seconds per image of the CRF-RNN layer, against the lattices rebuilt at every filter call.

Times, in one run, mean-field inference (``fcn.crf``) at 500x375 (W x H) for
C = 21 and C = 150 classes, 5 iterations, batch 1 and 4, forward and
forward + backward (gradients for the unaries and the three weight matrices):

- ``once``: the layer as built. One permutohedral lattice (5-D bilateral
  features) per image and forward pass, shared by the normalisation, every
  iteration, every channel and the backward pass; the spatial kernel is
  filtered exactly (truncated separable Gaussian, ``crf.spatial_filter``),
  with no lattice.
- ``rebuilt``: the older design of sadeepj/crfasrnn_keras, whose
  ``HighDimFilter`` C++ op builds its lattice inside every call and whose
  registered gradient calls the op again (``backwards=True``), building it
  once more. Here every spatial filter call builds a 2-D lattice of
  (x, y) / theta_gamma and filters on it, and every bilateral call builds a
  5-D lattice of (x, y) / theta_alpha, RGB / theta_beta; each gradient call
  builds its own lattice again and applies the transposed filter. That is
  one build of each kind for the two normalisations, one of each per
  iteration forward and one of each per iteration backward: 2 + 2T = 12
  builds forward, 2 + 4T = 22 forward + backward, for T = 5 iterations.

Both columns use the same code for everything else (``permutohedral``'s
build and filter, ``crf.mean_field``), so the ratio measures the design
decision, not two implementations. Not reproduced: crfasrnn_keras normalises
by filtering a C-channel tensor of ones (here one channel, as ``mean_field``
does), which favours the baseline; and its lattice is a compiled C++ hash
table, whose build and filter costs, relative to each other, differ from
these TensorFlow ops' in a direction not measured here. The spatial term is
also not the same arithmetic in the two columns (lattice approximation versus
exact truncated filter). Then, in a fresh process, the peak resident memory
of forward + backward with C = 150 at 512x512, batch 1.

The functions are traced with the image size unknown; with static
shapes Grappler constant-folds what depends on the shape alone, and the 2-D
lattices of ``rebuilt`` were then never built at run time. Each ``rebuilt``
build waits for its call's input, as inside the C++ op; otherwise TensorFlow
runs all the builds early, in parallel with the first iterations. A profiler
trace at batch 1 counted 12 and 22 executed ``Unique`` ops (one per build) in
the two ``rebuilt`` functions, and 1 in each ``once`` function. With the
batch size known, ``permutohedral.build_lattice`` builds one lattice per image
in both columns.

Images are the three ADE20K validation samples of the test fixtures (and the
first one mirrored), resized; the unaries are random logits, which do not
change the cost. Only ratios within one run mean much: the machine is shared.

Usage, from the repo root::

    python bench/crf.py [--quick] [--repeats 3]
"""

import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the table readable

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fcn import crf, data, permutohedral  # noqa: E402

tf.get_logger().setLevel("ERROR")  # retracing notices: every configuration is a new function on purpose

SAMPLE_ROOT = os.path.join(REPO, "tests", "fixtures", "ADEChallengeData2016")
HEIGHT, WIDTH = 375, 500
NUM_ITERATIONS = 5


def sample_images(batch_size: int, height: int, width: int) -> tf.Tensor:
    """(batch_size, height, width, 3) uint8: the fixture images resized (then mirrored copies)."""
    images = [data.load_example(*pair)[0] for pair in data.list_split(SAMPLE_ROOT, "validation").pairs]
    images += [image[:, ::-1] for image in images]
    resized = [tf.cast(tf.round(tf.image.resize(image, (height, width))), tf.uint8) for image in images]
    return tf.stack(resized[:batch_size])


def rebuilding_filter(features: tf.Tensor):
    """A lattice filter over ``features`` (B, N, d) that builds its lattice inside every call.

    The forward call builds one lattice; its gradient builds another and
    applies the transposed filter, as the crfasrnn_keras op and its registered
    gradient do.
    """

    def build_when_called(values):
        # Inside the C++ op the build starts when the op runs, on the critical
        # path of its call. Without this dependency every build would depend on
        # the image alone, and TensorFlow would run them all early, in parallel
        # with the first iterations, on the otherwise idle second core.
        with tf.control_dependencies([values]):
            return permutohedral.build_lattice(tf.identity(features))

    def lattice_filter(values):
        @tf.custom_gradient
        def filtered(x):
            def gradient(upstream):
                return permutohedral.lattice_filter(build_when_called(upstream), upstream, transpose=True)

            return permutohedral.lattice_filter(build_when_called(x), x), gradient

        return filtered(values)

    return lattice_filter


def crf_functions(layer: crf.CrfRnn, rebuild: bool, batch_size: int):
    """(forward, forward_backward) tf.functions of (unaries, image) for batches of ``batch_size``."""

    def forward(unaries, image):
        if not rebuild:
            return layer([unaries, image])
        return crf.mean_field(
            unaries,
            spatial=rebuilding_filter(crf.spatial_features(image, layer.theta_gamma)),
            bilateral=rebuilding_filter(crf.bilateral_features(image, layer.theta_alpha, layer.theta_beta)),
            spatial_kernel_weights=tf.convert_to_tensor(layer.spatial_kernel_weights),
            bilateral_kernel_weights=tf.convert_to_tensor(layer.bilateral_kernel_weights),
            compatibility=tf.convert_to_tensor(layer.compatibility),
            num_iterations=layer.num_iterations,
        )

    def forward_backward(unaries, image, cotangent):
        with tf.GradientTape() as tape:
            tape.watch(unaries)
            loss = tf.reduce_sum(forward(unaries, image) * cotangent)
        return tape.gradient(loss, [unaries] + layer.trainable_weights)

    # Image size unknown when tracing, as in training on images of varying
    # size. With static shapes Grappler would fold the spatial lattice, which
    # depends on the shape alone, into constants: "rebuilt" would then never
    # build it. The batch size stays known, as with a fixed-size training batch.
    num_classes = layer.spatial_kernel_weights.shape[0]
    unaries_spec = tf.TensorSpec((batch_size, None, None, num_classes), tf.float32)
    image_spec = tf.TensorSpec((batch_size, None, None, 3), tf.uint8)
    return (
        tf.function(forward, input_signature=[unaries_spec, image_spec]),
        tf.function(forward_backward, input_signature=[unaries_spec, image_spec, unaries_spec]),
    )


def fetch(structure):
    tf.nest.map_structure(lambda t: t.numpy(), structure, expand_composites=True)


def interleaved_seconds(functions, args, repeats: int) -> list[float]:
    """Fastest of ``repeats`` timed calls of each function, taking turns (after one warm-up call each).

    Taking turns and the minimum keep the comparison fair on a machine whose
    load changes while the benchmark runs.
    """
    for function in functions:
        fetch(function(*args))  # trace and warm up
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for i, function in enumerate(functions):
            start = time.perf_counter()
            fetch(function(*args))
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def time_table(class_counts, batch_sizes, repeats: int) -> None:
    print(f"seconds per {WIDTH}x{HEIGHT} image, {NUM_ITERATIONS} mean-field iterations, fastest of {repeats} runs")
    print(f"{'C':>4} {'batch':>5} {'pass':<17} {'once':>8} {'rebuilt':>8} {'speed-up':>9}")
    rng = np.random.default_rng(0)
    build_seconds = {}
    for num_classes in class_counts:
        for batch_size in batch_sizes:
            image = sample_images(batch_size, HEIGHT, WIDTH)
            if batch_size not in build_seconds:
                spec = tf.TensorSpec((batch_size, None, None, 3), tf.uint8)
                builds = [
                    tf.function(lambda image: permutohedral.build_lattice(crf.spatial_features(image, 3.0)), [spec]),
                    tf.function(lambda image: crf.build_image_lattice(image, 160.0, 3.0), [spec]),
                ]
                build_seconds[batch_size] = [t / batch_size for t in interleaved_seconds(builds, (image,), repeats)]
            unaries = tf.constant(rng.normal(0.0, 2.0, (batch_size, HEIGHT, WIDTH, num_classes)), tf.float32)
            cotangent = tf.constant(rng.normal(0.0, 1.0, unaries.shape), tf.float32)
            layer = crf.CrfRnn(num_iterations=NUM_ITERATIONS)
            layer.build([unaries.shape, image.shape])
            once = crf_functions(layer, rebuild=False, batch_size=batch_size)
            rebuilt = crf_functions(layer, rebuild=True, batch_size=batch_size)
            passes = (("forward", 0, (unaries, image)), ("forward+backward", 1, (unaries, image, cotangent)))
            for name, index, args in passes:
                fast, slow = (t / batch_size for t in interleaved_seconds([once[index], rebuilt[index]], args, repeats))
                row = f"{num_classes:>4} {batch_size:>5} {name:<17} {fast:>8.3f} {slow:>8.3f} {slow / fast:>8.1f}x"
                print(row, flush=True)
    for batch_size, (spatial, bilateral) in build_seconds.items():
        print(
            f"lattice builds alone, batch {batch_size}: spatial (2-D) {spatial:.3f} s, bilateral (5-D) {bilateral:.3f} s "
            f"per image; 'rebuilt' builds {NUM_ITERATIONS + 1} of each forward, {2 * NUM_ITERATIONS + 1} of each "
            "forward+backward; 'once' one bilateral"
        )


def _status_gib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), GiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    raise KeyError(field)


def peak_memory_child(num_classes: int, size: int) -> None:
    """Runs forward + backward once; prints peak RSS, RSS before the call (GiB) and seconds.

    VmHWM, not getrusage: ru_maxrss survives exec, so a child started by a big
    parent would report the parent's peak.
    """
    image = sample_images(1, size, size)
    rng = np.random.default_rng(0)
    unaries = tf.constant(rng.normal(0.0, 2.0, (1, size, size, num_classes)), tf.float32)
    layer = crf.CrfRnn(num_iterations=NUM_ITERATIONS)
    layer.build([unaries.shape, image.shape])
    _, forward_backward = crf_functions(layer, rebuild=False, batch_size=1)
    base = _status_gib("VmRSS")
    start = time.perf_counter()
    fetch(forward_backward(unaries, image, tf.ones_like(unaries)))
    elapsed = time.perf_counter() - start
    print(f"{_status_gib('VmHWM'):.2f} {base:.2f} {elapsed:.1f}")


def peak_memory(num_classes: int, size: int) -> None:
    command = [sys.executable, os.path.abspath(__file__), "--memory_child", f"{num_classes},{size}"]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
    peak, base, elapsed = (float(x) for x in output[-3:])
    print(
        f"peak RSS, forward+backward, C={num_classes}, {size}x{size}, batch 1, {NUM_ITERATIONS} iterations "
        f"(fresh process): {peak:.2f} GiB, of which {base:.2f} GiB before the call "
        f"(TensorFlow, inputs); first call, with tracing, {elapsed:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="C = 21, batch 1, two timed runs, no memory check")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the fastest is shown)")
    parser.add_argument("--memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(*(int(x) for x in args.memory_child.split(",")))
        return
    if args.quick:
        time_table([21], [1], repeats=2)
        return
    time_table([21, 150], [1, 4], repeats=args.repeats)
    peak_memory(150, 512)


if __name__ == "__main__":
    main()
