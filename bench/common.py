"""What the bench scripts share: the table printer, timers, the convolution peak, FLOP counts, a training root.

Every script in ``bench/`` imports this module (``bench/`` is on ``sys.path``
as the script's folder); none imports another script's module for a helper.
"""

import json
import os
import shutil
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the tables readable

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import device  # noqa: E402

SAMPLE_ROOT = os.path.join(REPO, "tests", "fixtures", "ADEChallengeData2016")
SAMPLE_SPLIT = "validation"
TRAIN_FLOPS_PER_FORWARD = 3
# A 3x3 convolution that runs near the machine's practical peak (REFERENCE.md).
PEAK_INPUT_SHAPE = (8, 64, 64, 256)  # (B, H, W, C)
PEAK_FILTERS = 256
PEAK_KERNEL = 3
PEAK_REPEATS = 5
CORES = device.cores()


def load_average() -> float:
    """The 1-minute load average: every figure is printed with it."""
    return os.getloadavg()[0]


def write_summary(path: str | None, bench: str, rows: list[tuple[str, str]]) -> None:
    """Writes a script's headline figures for ``bench/all.py``: [(what, value)] as JSON; no-op without a path."""
    if path:
        with open(path, "w") as file:
            json.dump({"bench": bench, "device": device.describe(), "load": load_average(), "rows": rows}, file)


# ---------------------------------------------------------------------------
# Tables and data.


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Prints rows with the first column left-aligned and the rest right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        print("  ".join(cells).rstrip())


def make_training_root(directory: str) -> str:
    """Lays out the sample pairs as the ``training`` split under ``directory``.

    Symlinks where the file system allows them, copies otherwise, so the
    fixtures are never modified.

    Returns:
      The dataset root.
    """
    for kind in ("images", "annotations"):
        source_dir = os.path.join(SAMPLE_ROOT, kind, SAMPLE_SPLIT)
        target_dir = os.path.join(directory, kind, "training")
        os.makedirs(target_dir)
        for name in sorted(os.listdir(source_dir)):
            source, target = os.path.join(source_dir, name), os.path.join(target_dir, name)
            try:
                os.symlink(source, target)
            except OSError:
                shutil.copyfile(source, target)
    return directory


# ---------------------------------------------------------------------------
# FLOPs from the layer shapes.


def conv_layer_shapes(model: keras.Model, height: int, width: int) -> list[tuple[keras.layers.Layer, tuple, tuple]]:
    """Input and output shapes of every (transposed) convolution for one input size.

    The model takes any height and width, so its layers hold no spatial sizes;
    tracing a probe model that returns each layer's input and output gives them
    without computing anything.

    Args:
      model: a functional model.
      height: input image height.
      width: input image width.

    Returns:
      (layer, input shape, output shape) for each Conv2D and Conv2DTranspose,
      shapes as (1, H, W, C) tuples.
    """
    convs = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))]
    probe = keras.Model(model.inputs, [tensor for layer in convs for tensor in (layer.input, layer.output)])
    spec = tf.TensorSpec((1, height, width, model.inputs[0].shape[-1]), tf.float32)
    outputs = tf.nest.flatten(tf.function(probe).get_concrete_function(spec).structured_outputs)
    return [(layer, tuple(i.shape), tuple(o.shape)) for layer, i, o in zip(convs, outputs[::2], outputs[1::2])]


def conv_flops(model: keras.Model, height: int, width: int) -> dict[str, int]:
    """Forward FLOPs of each convolution for one image of ``height`` x ``width``.

    A convolution does kh * kw * cin multiply-adds for each of its output
    values; a transposed convolution scatters each input value through the
    whole kh * kw * cout kernel. One multiply-add counts as 2 FLOPs.

    Returns:
      layer name -> FLOPs per image.
    """
    flops = {}
    for layer, input_shape, output_shape in conv_layer_shapes(model, height, width):
        kernel_height, kernel_width = layer.kernel_size
        in_channels, out_channels = input_shape[-1], layer.filters
        # Conv2DTranspose is not a Conv2D subclass in Keras 3, so the test is unambiguous.
        _, positions_h, positions_w, _ = input_shape if isinstance(layer, keras.layers.Conv2DTranspose) else output_shape
        flops[layer.name] = positions_h * positions_w * kernel_height * kernel_width * in_channels * out_channels * 2
    return flops


def check_flop_counter() -> None:
    """Asserts that the counter agrees with the hand formula and tf.profiler on a plain 3x3 conv.

    Raises:
      AssertionError: if any of the three counts differ.
    """
    height, width, in_channels, out_channels = 16, 12, 8, 4
    images = keras.Input((None, None, in_channels))
    model = keras.Model(images, keras.layers.Conv2D(out_channels, 3, padding="same", name="conv")(images))
    counted = conv_flops(model, height, width)["conv"]
    by_hand = height * width * 3 * 3 * in_channels * out_channels * 2

    graph = tf.function(model).get_concrete_function(tf.TensorSpec((1, height, width, in_channels))).graph
    options = {**tf.compat.v1.profiler.ProfileOptionBuilder.float_operation(), "output": "none"}
    profile = tf.compat.v1.profiler.profile(graph=graph, options=options)
    # The profiler also counts the bias addition, which the counter leaves out.
    profiled = sum(
        node.float_ops for node in profile.children if graph.get_operation_by_name(node.name).type == "Conv2D"
    )
    assert counted == by_hand == profiled, f"FLOP counter {counted}, hand formula {by_hand}, tf.profiler {profiled}"


# ---------------------------------------------------------------------------
# Timing.


def wait_for(value) -> None:
    """Returns once every tensor in ``value`` has been computed.

    On a GPU ops run asynchronously, so a timer stopped when an op returns
    would time the launch only; reading one element of each output waits for
    it at the cost of a one-value copy (on the CPU the value is already there).
    """
    for tensor in tf.nest.flatten(value):
        if isinstance(tensor, tf.Tensor):
            tf.reshape(tensor, [-1])[:1].numpy()


def time_runs(run, repeats: int) -> tuple[float, float]:
    """Calls ``run`` once to warm up (tracing), then ``repeats`` more times, waiting for its outputs.

    Returns:
      (median seconds of the timed runs, CPU share of the timed runs): the
      process's CPU time over wall time x cores, so 1.0 means this process had
      every core to itself and less means it waited (other jobs, or serial work).
    """
    wait_for(run())
    seconds = []
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    for _ in range(repeats):
        start = time.perf_counter()
        wait_for(run())
        seconds.append(time.perf_counter() - start)
    cpu_share = (time.process_time() - cpu_start) / ((time.perf_counter() - wall_start) * CORES)
    return statistics.median(seconds), cpu_share


def measure_peak(repeats: int = PEAK_REPEATS) -> tuple[float, float, float]:
    """GFLOP/s of one large 3x3 convolution, the practical peak of this machine.

    Args:
      repeats: timed runs after one warm-up.


    Returns:
      (GFLOP/s, median seconds, CPU share as in ``time_runs``).
    """
    batch, height, width, in_channels = PEAK_INPUT_SHAPE
    rng = np.random.default_rng(0)
    images = tf.constant(rng.standard_normal(PEAK_INPUT_SHAPE, np.float32))  # (B, H, W, Cin)
    kernel = tf.constant(rng.standard_normal((PEAK_KERNEL, PEAK_KERNEL, in_channels, PEAK_FILTERS), np.float32))
    convolve = tf.function(lambda: tf.nn.conv2d(images, kernel, strides=1, padding="SAME"), jit_compile=False)
    flops = batch * height * width * PEAK_KERNEL * PEAK_KERNEL * in_channels * PEAK_FILTERS * 2
    seconds, cpu_share = time_runs(convolve, repeats)
    return flops / seconds / 1e9, seconds, cpu_share


def print_peaks(peaks, peak_rate: float, peak_rate_per_cpu: float) -> None:
    """Prints the convolution peaks measured at the start and the end of a run, and the one used."""
    batch, height, width, in_channels = PEAK_INPUT_SHAPE
    for when, (rate, seconds, cpu_share) in zip(("start", "end"), peaks):
        print(
            f"peak at {when}: 3x3 conv {batch}x{height}x{width}x{in_channels} -> {PEAK_FILTERS} filters, "
            f"{seconds:.3f} s, {rate:.0f} GFLOP/s (median of {PEAK_REPEATS}), CPU {cpu_share:.2f}"
        )
    print(f"peak used: {peak_rate:.0f} GFLOP/s wall clock, {peak_rate_per_cpu:.0f} GFLOP/s per full CPU share")
