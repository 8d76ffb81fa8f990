"""Steady-state speed of the real training step of ``fcn.train``: images/s and GFLOP/s.

Builds the training state of a resolved ``Config`` (``train.setup_process``,
``create_train_state``, ``make_train_step``: the full model, fc6/fc7 4096
wide, random weights, Adam) and times its compiled step on one fixed batch
of random uint8 images and labels, so the input pipeline is left out, at
256x256 batch 8 and 512x512 batch 2:

- ``debug False``: ``train_step``, the ordinary step;
- ``debug True`` (``--debug``): in turns in one process, the plain step of the
  same state, the ``--debug`` run's ordinary step and its summary step (which
  also returns the ReLU activations and the gradients) followed by
  ``summaries.write_debug`` of their histograms to an event writer, flushed;
  the last two are printed over the first.

Each measurement is one warm-up (tracing) and ``--steps`` timed steps, whose
median is reported. FLOPs come from ``bench/model.py``'s counter (training
step = 3x forward), and the same run measures that script's 3x3 convolution
peak at its start and end, so the fractions of the peak, plain and corrected
by the CPU share the process got, are comparable with ``bench/model.py``'s.
Only the ratios within one run mean anything: absolute rates move with
machine load.

A setting is a set of config overrides (``setting_options`` makes them from
the command line). Each setting and size runs in a fresh process, because
logical CPU devices can be set only once per process and because a step may
need more memory than the
machine has: the process is killed when its resident memory passes
``--max_memory_gb``, and the table says so instead of the machine's OOM killer
taking it (or another job).

Usage, from the repo root::

    python bench/train.py [--quick] [--debug] [--smoke] [--summary FILE] [--steps 2] [--max_memory_gb 10] [--shape 256x8 ...]
"""

import argparse
import dataclasses
import itertools
import math
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the table readable

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import device  # noqa: E402  (bench/ is on sys.path as the script's folder)
from fcn import summaries  # noqa: E402
from fcn.config import Config, load_config  # noqa: E402
from fcn import train  # noqa: E402
from fcn import train_state  # noqa: E402
import common  # noqa: E402
from common import (  # noqa: E402
    CORES,
    TRAIN_FLOPS_PER_FORWARD,
    check_flop_counter,
    conv_flops,
    make_training_root,
    measure_peak,
    print_peaks,
    print_table,
)

# (crop size, batch size): the same pixels per step.
SHAPES = ((256, 8), (512, 2))
MEMORY_POLL_SECONDS = 0.1
# Of the memory available at the start, so the limit stays below what the OOM killer would act on.
MAX_MEMORY_FRACTION = 0.8


# ---------------------------------------------------------------------------
# Settings.


def setting_options(args: argparse.Namespace) -> dict[str, tuple]:
    """Config key -> the values to measure; every combination is one setting.

    A new flag (a strategy, a precision, XLA) adds a key here, and the table
    a column for it.
    """
    options = {"train.debug": (True,) if args.debug or args.smoke else (False,) if args.quick or args.shape else (False, True)}
    if args.strategy:
        options["train.strategy"] = tuple(args.strategy)
    if args.cpu_devices:
        options["train.cpu_devices"] = (args.cpu_devices,)
    if args.mixed_precision:
        options["train.mixed_precision"] = tuple(args.mixed_precision)
    if args.jit_compile:
        options["train.jit_compile"] = (False, True)
    return options


def settings(options: dict[str, tuple]) -> list[tuple[tuple[str, object], ...]]:
    """Every combination of the option values, as (config key, value) pairs."""
    keys = list(options)
    return [tuple(zip(keys, values)) for values in itertools.product(*(options[key] for key in keys))]


def base_overrides(work_dir: str, fc_channels: int = 4096) -> list[tuple[str, object]]:
    """The full model with random weights, on a throwaway run directory and dataset root.

    The steps timed here take the batch they are given; the dataset root (the
    three sample images of ``tests/fixtures`` as the training split) is only
    there so that the config describes a run that could start.
    """
    root = make_training_root(os.path.join(work_dir, "data"))
    return [
        ("model.pretrained_weights", "none"),
        ("model.fc_channels", fc_channels),
        ("data.data_dir", root),
        ("logs_dir", os.path.join(work_dir, "logs")),
    ]


# ---------------------------------------------------------------------------
# The measuring process.


def random_batch(batch: int, size: int, num_classes: int, seed: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Random uint8 images (B, H, W, 3) and labels in 0..num_classes-1 (B, H, W), as the pipeline gives."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, (batch, size, size), dtype=np.uint8)
    return tf.constant(images), tf.constant(labels)


def steps_to_time(config: Config, state: train_state.TrainState, strategy, step, writer, images, labels) -> list[tuple[str, callable]]:
    """(name, step returning the loss) for what a run of ``config`` does each step.

    With ``--debug``: the plain step (``train.debug`` False, same state), the
    debug run's ordinary step and its summary step with the histograms
    written, so the three are timed in one process, in turns.
    """
    if not config.train.debug:
        return [("train_step", lambda: float(step(images, labels).loss))]
    plain_config = dataclasses.replace(config, train=dataclasses.replace(config.train, debug=False))
    plain = train.make_train_step(state, plain_config, strategy)
    written = []

    def summary_step():
        output = step(images, labels, debug=True)
        summaries.write_debug(writer, len(written), output.activations, output.gradients, state.model.trainable_variables)
        writer.flush()
        written.append(True)
        return float(output.loss)

    return [
        ("train_step (debug False)", lambda: float(plain(images, labels).loss)),
        ("--debug, other step", lambda: float(step(images, labels, debug=False).loss)),
        ("--debug, summary step + write_debug", summary_step),
    ]


def time_in_turns(runs: list[tuple[str, callable]], steps: int) -> dict[str, tuple[float, float, list]]:
    """One warm-up each, then ``steps`` turns in which each run is timed once.

    Returns:
      name -> (median seconds, CPU share, losses); turns keep a change of load
      from falling on one run only.
    """
    losses = {name: [run()] for name, run in runs}
    seconds = {name: [] for name, _ in runs}
    cpu = {name: 0.0 for name, _ in runs}
    for _ in range(steps):
        for name, run in runs:
            cpu_start, start = time.process_time(), time.perf_counter()
            losses[name].append(run())
            seconds[name].append(time.perf_counter() - start)
            cpu[name] += time.process_time() - cpu_start
    return {
        name: (statistics.median(seconds[name]), cpu[name] / (sum(seconds[name]) * CORES), losses[name])
        for name, _ in runs
    }


def run_measurements(config: Config, size: int, batch: int, steps: int, connection) -> None:
    """In a child process: builds the training state, times its step and sends the results.

    Sends ``("parameters", count)``, then ``("phase", "timing")`` and, for
    each timed step, ``("result", name, FLOPs, median seconds, CPU share,
    peak resident GB, all losses finite)``.
    """
    strategy = train.setup_process(config)
    state = train_state.create_train_state(config, strategy)
    step = train.make_train_step(state, config, strategy)
    connection.send(("parameters", state.model.count_params()))
    flops = TRAIN_FLOPS_PER_FORWARD * batch * sum(conv_flops(state.model, size, size).values())
    images, labels = random_batch(batch, size, config.data.num_classes or 150, seed=size + batch)
    # Split the global batch over the strategy's replicas, as the training loop's input does.
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch, drop_remainder=True)
    images, labels = next(iter(strategy.experimental_distribute_dataset(batches)))
    writers = summaries.writers(config.logs_dir)
    try:
        runs = steps_to_time(config, state, strategy, step, writers["train"], images, labels)
        connection.send(("phase", "timing " + ", ".join(name for name, _ in runs)))
        timings = time_in_turns(runs, steps)
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        for name, (seconds, cpu_share, losses) in timings.items():
            connection.send(("result", name, flops, seconds, cpu_share, peak_gb, all(map(math.isfinite, losses))))
    finally:
        for writer in writers.values():
            writer.close()
        connection.close()


def resident_gb(pid: int) -> float:
    """Resident memory of a process, in GiB (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def available_gb() -> float:
    """MemAvailable of /proc/meminfo, in GiB."""
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def measure(config: Config, size: int, batch: int, steps: int, memory_limit_gb: float) -> tuple[int, list, str]:
    """Runs ``run_measurements`` in a fresh process, killing it above ``memory_limit_gb``.

    Returns:
      (parameters, results as sent, "" or why the process died: "out of memory: ..." or "failed: ...").
    """
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow, not a fork of this one
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=run_measurements, args=(config, size, batch, steps, sender))
    process.start()
    sender.close()
    parameters, results, phase, failure = 0, [], "building the training state", ""

    def handle(message):
        nonlocal parameters, phase
        if message[0] == "parameters":
            parameters = message[1]
        elif message[0] == "phase":
            phase = message[1]
        else:
            results.append(message[1:])

    while process.is_alive():
        if receiver.poll(MEMORY_POLL_SECONDS):
            try:
                handle(receiver.recv())
            except EOFError:
                break
        rss = resident_gb(process.pid)
        if rss > memory_limit_gb:
            process.kill()
            failure = f"out of memory: killed in {phase}, resident {rss:.1f} GB > limit {memory_limit_gb:.1f} GB"
            break
    process.join()
    while receiver.poll():
        try:
            handle(receiver.recv())
        except EOFError:
            break
    if not failure and process.exitcode != 0:
        failure = f"failed: in {phase}, exit code {process.exitcode}"
    return parameters, results, failure


# ---------------------------------------------------------------------------
# Main.


def debug_ratios(rows, table_print: bool) -> list[tuple[str, str]]:
    """The --debug run's other step and summary step over the plain step of the same process."""
    seconds = {(size, batch, name): timing[0] for _, size, batch, name, _, timing in rows if not isinstance(timing, str)}
    ratios = []
    for (size, batch, name), value in seconds.items():
        plain = seconds.get((size, batch, "train_step (debug False)"))
        if plain and name.startswith("--debug"):
            ratios.append((f"{name} / plain step, {size}x{size} batch {batch}", f"{value / plain:.2f}"))
    if table_print and ratios:
        print()
        print_table(("same process, in turns", "ratio"), ratios)
    return ratios


def main(argv=None) -> None:
    """Runs the measurements and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only 256x256 batch 8, without --debug")
    parser.add_argument("--debug", action="store_true", help="only the --debug setting: the plain, other and summary steps in turns")
    parser.add_argument("--smoke", action="store_true", help="32x32 batch 1, fc6/fc7 64 wide, --debug, one step (for the tests)")
    parser.add_argument("--summary", help="write the headline ratios to this JSON file (bench/all.py)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per measurement, after one warm-up")
    parser.add_argument(
        "--strategy", nargs="+", choices=("default", "mirrored"), help="measure each of these strategies (train.strategy)"
    )
    parser.add_argument("--cpu_devices", type=int, default=0, help="split the CPU into N logical devices (train.cpu_devices)")
    parser.add_argument(
        "--mixed_precision", nargs="+", choices=("float32", "bfloat16", "float16"), help="measure each precision"
    )
    parser.add_argument("--jit_compile", action="store_true", help="measure with and without XLA")
    parser.add_argument(
        "--shape", nargs="+", metavar="SIZExBATCH", help="crop sizes and batches to measure instead, e.g. 128x2 256x1 (without the --debug rows)"
    )
    parser.add_argument(
        "--max_memory_gb",
        type=float,
        default=10.0,
        help=f"kill a measurement whose process uses more (also capped at {MAX_MEMORY_FRACTION:g} x available memory)",
    )
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")  # tf.profiler's v1 deprecation notices
    if args.smoke:
        args.steps = 1
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    shapes = ((32, 1),) if args.smoke else SHAPES[:1] if args.quick else SHAPES
    if args.shape:
        try:
            shapes = tuple(tuple(int(n) for n in item.lower().split("x")) for item in args.shape)
        except ValueError:
            parser.error(f"--shape takes SIZExBATCH, e.g. 256x8, got {' '.join(args.shape)}")
        if any(len(shape) != 2 or min(shape) < 1 for shape in shapes):
            parser.error(f"--shape takes SIZExBATCH, e.g. 256x8, got {' '.join(args.shape)}")
    options = setting_options(args)
    memory_limit_gb = min(args.max_memory_gb, MAX_MEMORY_FRACTION * available_gb())

    load_at_start = common.load_average()
    check_flop_counter()
    # At the start and the end, as in bench/model.py, so one burst of other jobs does not set the yardstick.
    peaks = [measure_peak()]
    rows, notes = [], []
    parameters = 0
    with tempfile.TemporaryDirectory(prefix="fcn-bench-train-") as work_dir:
        base = base_overrides(work_dir, 64 if args.smoke else 4096)
        for overrides in settings(options):
            config = load_config(None, base + list(overrides))  # a bad setting fails here, before any child
            for size, batch in shapes:
                count, results, failure = measure(config, size, batch, args.steps, memory_limit_gb)
                parameters = count or parameters
                for name, flops, seconds, cpu_share, peak_gb, finite in results:
                    rows.append((overrides, size, batch, name, flops, (seconds, cpu_share, peak_gb)))
                    if not finite:
                        notes.append(f"{dict(overrides)} {size}x{size} {name}: a non-finite loss (the timing stands)")
                if failure:
                    status = "(killed)" if failure.startswith("out of memory") else "(failed)"
                    rows.append((overrides, size, batch, status, 0, failure))
                    notes.append(f"{dict(overrides)} {size}x{size} batch {batch}: {failure}")
    peaks.append(measure_peak())
    load_at_end = common.load_average()

    peak_rate = max(rate for rate, _, _ in peaks)
    peak_rate_per_cpu = max(rate / cpu_share for rate, _, cpu_share in peaks)

    print(f"fcn.train.make_train_step, full FCN-8s (fc6/fc7 4096, vgg_weights none, {parameters:,} parameters), Adam")
    print(device.describe())
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {CORES} CPU cores, "
        "one fixed random batch (no input pipeline)"
    )
    print(
        f"median of {args.steps} timed steps after 1 warm-up, one process per setting and size; 1-minute load average "
        f"{load_at_start:.2f} at start, {load_at_end:.2f} at end (this benchmark counts as up to {CORES})"
    )
    print()
    table = []
    for overrides, size, batch, name, flops, timing in rows:
        cells = [*(str(value) for _, value in overrides), f"{size}x{size}", str(batch), name]
        if isinstance(timing, str):  # why the process died
            cells += ["", timing.split(":")[0], "", "", "", "", "", ""]
        else:
            seconds, cpu_share, peak_gb = timing
            rate = flops / seconds / 1e9
            cells += [
                f"{flops / 1e9:.0f}",
                f"{seconds:.2f}",
                f"{batch / seconds:.2f}",
                f"{rate:.0f}",
                f"{rate / peak_rate:.2f}",
                f"{cpu_share:.2f}",
                f"{rate / cpu_share / peak_rate_per_cpu:.2f}",
                f"{peak_gb:.1f}",
            ]
        table.append(tuple(cells))
    print_table(
        (*(key.split(".")[-1] for key in options), "size", "batch", "timed",
         "GFLOP", "s/step", "images/s", "GFLOP/s", "/peak", "CPU", "/peak per CPU", "peak GB"),
        table,
    )
    summary = debug_ratios(rows, table_print=True)
    for overrides, size, batch, name, flops, timing in rows:
        if name == "train_step" and not isinstance(timing, str):
            summary.append((f"training step {size}x{size} batch {batch} {dict(overrides)} / 3x3 conv peak",
                            f"{flops / timing[0] / 1e9 / peak_rate:.2f}"))
    common.write_summary(args.summary, "train", summary)
    print()
    print_peaks(peaks, peak_rate, peak_rate_per_cpu)
    for note in notes:
        print(note)
    print(
        "timed: train_step = the step of fcn.train.make_train_step (with --debug it also returns the activations and "
        "gradients); + write_debug = summaries.write_debug of them and a flush (the scalars and images of a summary step left out)."
    )
    print(
        f"CPU: the measuring process's CPU time / (wall time x {CORES} cores) over the timed steps; below ~0.9 it "
        "waited, for other jobs or for serial work. '/peak per CPU' divides both rates by their CPU share. "
        "peak GB: the process's peak resident memory up to the end of that row."
    )
    print(
        "FLOPs: 2 x multiply-adds of the Conv2D/Conv2DTranspose layers (bench/model.py's counter); "
        f"training step = {TRAIN_FLOPS_PER_FORWARD} x forward, an approximation (the histograms are not counted)."
    )


if __name__ == "__main__":
    main()
