"""FCN-8s forward and training-step time on the CPU, as GFLOP/s and as a fraction of a convolution peak.

Times the full model of ``fcn.model.build_fcn8s`` (150 classes, fc6/fc7 4096
wide, random weights) at 256x256 and 512x512 with batch 1 and 8, and in the
same run a large 3x3 convolution as this machine's practical peak. Only the
ratios within one run mean anything: absolute rates move with machine load.
Each measurement also reports the share of the CPU the process got, and the
fractions of the peak are given a second time normalised by that share, which
keeps them comparable when other jobs run on the same machine.

FLOPs are counted from the layer shapes (2 x multiply-adds of every Conv2D and
Conv2DTranspose; pooling, ReLU, biases and the loss are left out). The training
step is counted as 3x the forward FLOPs, the usual approximation: the forward
pass plus the two backward products (gradient of the input and of the kernel)
per layer, each about as costly as the forward one.

Usage, from the repo root::

    python bench/model.py [--quick] [--repeats 2] [--train_budget 120]
"""

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the table readable

import device  # noqa: E402  (bench/ is on sys.path as the script's folder)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from input_pipeline import print_table  # noqa: E402

from fcn.model import build_fcn8s  # noqa: E402

NUM_CLASSES = 150
SIZES = (256, 512)
BATCHES = (1, 8)
TRAIN_FLOPS_PER_FORWARD = 3
# /work/shared/REFERENCE.md, "Measured on a 2-core development machine":
# this convolution reached ~145-152 GFLOP/s there.
PEAK_INPUT_SHAPE = (8, 64, 64, 256)  # (B, H, W, C)
PEAK_FILTERS = 256
PEAK_KERNEL = 3
PEAK_REPEATS = 5
CORES = device.cores()


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


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer):
    """The training step: forward, sparse softmax cross-entropy, gradients, Adam.

    A fresh ``tf.function`` per input shape, so each measurement's warm-up is
    its own tracing and no retracing warnings appear.
    """
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=False)
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)  # (B, H, W, num_classes)
            loss = loss_fn(labels, logits)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return train_step


def random_batch(batch: int, size: int, seed: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Random RGB images in 0..255 (B, H, W, 3) and labels in 0..num_classes-1 (B, H, W)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, (batch, size, size), dtype=np.int32)
    return tf.constant(images), tf.constant(labels)


# ---------------------------------------------------------------------------
# Main.


def print_peaks(peaks, peak_rate: float, peak_rate_per_cpu: float) -> None:
    """Prints the convolution peaks measured at the start and the end of a run, and the one used."""
    batch, height, width, in_channels = PEAK_INPUT_SHAPE
    for when, (rate, seconds, cpu_share) in zip(("start", "end"), peaks):
        print(
            f"peak at {when}: 3x3 conv {batch}x{height}x{width}x{in_channels} -> {PEAK_FILTERS} filters, "
            f"{seconds:.3f} s, {rate:.0f} GFLOP/s (median of {PEAK_REPEATS}), CPU {cpu_share:.2f}"
        )
    print(f"peak used: {peak_rate:.0f} GFLOP/s wall clock, {peak_rate_per_cpu:.0f} GFLOP/s per full CPU share")


def main(argv=None) -> None:
    """Runs the measurements and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only 256x256, batch 1 and 8")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement, after one warm-up")
    parser.add_argument(
        "--train_budget",
        type=float,
        default=120.0,
        help="skip a training measurement whose warm-up + repeats are estimated to take longer (seconds)",
    )
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")  # tf.profiler's v1 deprecation notices
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    # Other jobs on a shared machine slow every row; the load average says whether some were running.
    load_at_start = os.getloadavg()[0]
    check_flop_counter()
    # Measured at the start and at the end, so a burst of other jobs during
    # one of them does not set the yardstick for the whole run.
    peaks = [measure_peak()]

    keras.utils.set_random_seed(0)
    model = build_fcn8s(NUM_CLASSES, vgg_weights="none")
    optimizer = keras.optimizers.Adam(learning_rate=1e-4)
    # Built outside tf.function so the Adam slots (2 x 141M floats) are not created while tracing.
    optimizer.build(model.trainable_variables)

    sizes = SIZES[:1] if args.quick else SIZES
    rows, notes = [], []
    # Seconds per training FLOP of the last measured step of each batch size,
    # to predict the next size: batch 1 has fixed costs (the Adam update of
    # 141M parameters, the fc6 kernel gradient) that batch 8 spreads out.
    seconds_per_train_flop = {}
    for size in sizes:
        per_image_flops = sum(conv_flops(model, size, size).values())
        for batch in BATCHES:
            images, labels = random_batch(batch, size, seed=size + batch)
            forward_flops = per_image_flops * batch
            train_flops = TRAIN_FLOPS_PER_FORWARD * forward_flops

            forward_step = tf.function(lambda images: model(images, training=False), jit_compile=False)
            forward = time_runs(lambda: forward_step(images), args.repeats)

            train = None
            estimate = None
            if batch in seconds_per_train_flop:
                estimate = seconds_per_train_flop[batch] * train_flops * (args.repeats + 1)
            if estimate is not None and estimate > args.train_budget:
                notes.append(
                    f"{size}x{size} batch {batch} training step skipped: warm-up + {args.repeats} runs estimated at "
                    f"~{estimate:.0f} s (> --train_budget {args.train_budget:g} s), scaled by FLOPs from the "
                    "smaller size's measured step"
                )
            else:
                train_step = make_train_step(model, optimizer)
                train = time_runs(lambda: train_step(images, labels).numpy(), args.repeats)
                seconds_per_train_flop[batch] = train[0] / train_flops
            rows.append((size, batch, forward_flops, forward, train_flops, train))
    peaks.append(measure_peak())
    load_at_end = os.getloadavg()[0]

    # Wall-clock fractions use the best peak of the run. The CPU-normalised
    # ones divide every rate by the CPU share it ran with, which cancels other
    # jobs to first order but also hides the model's own serial stretches.
    peak_rate = max(rate for rate, _, _ in peaks)
    peak_rate_per_cpu = max(rate / cpu_share for rate, _, cpu_share in peaks)

    print(f"FCN-8s (build_fcn8s({NUM_CLASSES}, vgg_weights='none'), fc6/fc7 4096, {model.count_params():,} parameters)")
    print(device.describe())
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {CORES} CPU cores, float32, jit_compile False")
    print(
        f"median of {args.repeats} timed runs after 1 warm-up; 1-minute load average {load_at_start:.2f} at start, "
        f"{load_at_end:.2f} at end (this process counts as up to {CORES})"
    )
    print()
    table = []
    for size, batch, forward_flops, forward, train_flops, train in rows:
        cells = [f"{size}x{size}", str(batch)]
        for flops, timing in ((forward_flops, forward), (train_flops, train)):
            cells.append(f"{flops / 1e9:.0f}")
            if timing is None:
                cells += ["skipped", "", "", "", ""]
                continue
            seconds, cpu_share = timing
            rate = flops / seconds / 1e9
            cells += [
                f"{seconds:.2f}",
                f"{rate:.0f}",
                f"{rate / peak_rate:.2f}",
                f"{cpu_share:.2f}",
                f"{rate / cpu_share / peak_rate_per_cpu:.2f}",
            ]
        table.append(tuple(cells))
    print_table(
        ("size", "batch",
         "fwd GFLOP", "fwd s", "fwd GFLOP/s", "fwd/peak", "fwd CPU", "fwd/peak per CPU",
         "train GFLOP", "train s", "train GFLOP/s", "train/peak", "train CPU", "train/peak per CPU"),
        table,
    )
    print()
    print_peaks(peaks, peak_rate, peak_rate_per_cpu)
    for note in notes:
        print(note)
    print(
        f"CPU: this process's CPU time / (wall time x {CORES} cores) over the timed runs; below ~0.9 it waited, "
        "for other jobs or for serial work. 'per CPU' fractions divide both rates by their CPU share: a "
        "load-robust estimate that also hides serial work."
    )
    print(
        "FLOPs: 2 x multiply-adds of the Conv2D/Conv2DTranspose layers (checked against tf.profiler on a 3x3 conv); "
        f"training step = {TRAIN_FLOPS_PER_FORWARD} x forward (forward + input and kernel gradients), an approximation."
    )


if __name__ == "__main__":
    main()
