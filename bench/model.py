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

    python bench/model.py [--quick] [--smoke] [--summary FILE] [--repeats 2] [--train_budget 120]

``--smoke`` runs every code path at 32x32, batch 1, on a narrow model (fc6/fc7
64 wide, 5 classes) in seconds: it is what the test suite runs.
"""

import argparse

import common  # noqa: F401  (bench/ is on sys.path as the script's folder; common puts the repo there too)
import keras
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import device  # noqa: E402
from common import (  # noqa: E402
    CORES,
    TRAIN_FLOPS_PER_FORWARD,
    check_flop_counter,
    conv_flops,
    measure_peak,
    print_peaks,
    print_table,
    time_runs,
)
from fcn.model import build_fcn8s  # noqa: E402

NUM_CLASSES = 150
SIZES = (256, 512)
BATCHES = (1, 8)


# ---------------------------------------------------------------------------
# The step.


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


def random_batch(batch: int, size: int, num_classes: int, seed: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Random RGB images in 0..255 (B, H, W, 3) and labels in 0..num_classes-1 (B, H, W)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, (batch, size, size), dtype=np.int32)
    return tf.constant(images), tf.constant(labels)


# ---------------------------------------------------------------------------
# Main.


def main(argv=None) -> None:
    """Runs the measurements and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only 256x256, batch 1 and 8")
    parser.add_argument("--smoke", action="store_true", help="32x32 batch 1, narrow model, one repeat (for the tests)")
    parser.add_argument("--summary", help="write the headline ratios to this JSON file (bench/all.py)")
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
    load_at_start = common.load_average()
    check_flop_counter()
    # Measured at the start and at the end, so a burst of other jobs during
    # one of them does not set the yardstick for the whole run.
    peaks = [measure_peak()]

    keras.utils.set_random_seed(0)
    num_classes, fc_channels = (5, 64) if args.smoke else (NUM_CLASSES, 4096)
    model = build_fcn8s(num_classes, fc_channels=fc_channels)
    optimizer = keras.optimizers.Adam(learning_rate=1e-4)
    # Built outside tf.function so the Adam slots (2 x 141M floats) are not created while tracing.
    optimizer.build(model.trainable_variables)

    sizes = (32,) if args.smoke else SIZES[:1] if args.quick else SIZES
    batches = (1,) if args.smoke else BATCHES
    rows, notes = [], []
    # Seconds per training FLOP of the last measured step of each batch size,
    # to predict the next size: batch 1 has fixed costs (the Adam update of
    # 141M parameters, the fc6 kernel gradient) that batch 8 spreads out.
    seconds_per_train_flop = {}
    for size in sizes:
        per_image_flops = sum(conv_flops(model, size, size).values())
        for batch in batches:
            images, labels = random_batch(batch, size, num_classes, seed=size + batch)
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
    load_at_end = common.load_average()

    # Wall-clock fractions use the best peak of the run. The CPU-normalised
    # ones divide every rate by the CPU share it ran with, which cancels other
    # jobs to first order but also hides the model's own serial stretches.
    peak_rate = max(rate for rate, _, _ in peaks)
    peak_rate_per_cpu = max(rate / cpu_share for rate, _, cpu_share in peaks)

    print(f"FCN-8s (build_fcn8s({num_classes}, fc_channels={fc_channels}), random weights, {model.count_params():,} parameters)")
    print(device.describe())
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {CORES} CPU cores, float32, jit_compile False")
    print(
        f"median of {args.repeats} timed runs after 1 warm-up; 1-minute load average {load_at_start:.2f} at start, "
        f"{load_at_end:.2f} at end (this process counts as up to {CORES})"
    )
    print()
    table, summary = [], []
    for size, batch, forward_flops, forward, train_flops, train in rows:
        summary.append((f"FCN-8s forward {size}x{size} batch {batch} / 3x3 conv peak", f"{forward_flops / forward[0] / 1e9 / peak_rate:.2f}"))
        if train is not None:
            summary.append((f"FCN-8s training step {size}x{size} batch {batch} / peak", f"{train_flops / train[0] / 1e9 / peak_rate:.2f}"))
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
    common.write_summary(args.summary, "model", summary)


if __name__ == "__main__":
    main()
