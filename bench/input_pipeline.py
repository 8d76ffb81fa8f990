"""Images per second through the training input pipeline (decode + augment + batch).

Compares, in one run, ``fcn.data.training_dataset`` with a plain Python loop
that calls the same per-example functions eagerly one at a time, and sets both
beside the real training step (``fcn.train.make_train_step``, full FCN-8s,
float32) at the same crop size, measured in the same run by
``bench/train.py``'s measuring process: the pipeline keeps the step fed while
its images/s exceed the step's. Only the ratios within one run mean anything:
absolute rates move with machine load.

The data are the three real ADE20K validation pairs of the test fixtures,
linked into a temporary dataset root as the ``training`` split, which the
stream cycles endlessly. The augmentation is the full recipe
(``DataConfig()`` defaults).

Usage, from the repo root::

    python bench/input_pipeline.py [--seconds 20] [--batch_size 8] [--crop 512] [--step_batch 2] [--step_steps 1]
"""

import argparse
import collections
import dataclasses
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the table readable

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import device  # noqa: E402  (bench/ is on sys.path as the script's folder)
import common  # noqa: E402
from common import make_training_root, print_table  # noqa: E402
from fcn import data
from fcn.config import DataConfig  # noqa: E402
from fcn.datasets import decode
from fcn import datasets

WARMUP_BATCHES = 3


def training_step_images_per_second(
    crop: int, batch: int, steps: int, work_dir: str, fc_channels: int = 4096
) -> tuple[float, str]:
    """Images/s of the real float32 training step at ``crop`` x ``crop``, batch ``batch``.

    Measured by ``bench/train.py``'s ``measure`` in a fresh process (one
    warm-up, then the median of ``steps`` steps), on the full model with
    random weights and a fixed random batch, so the pipeline is not part of it.

    Returns:
      (images/s, "" or why the measurement failed).
    """
    import train as bench_train  # only when the step is timed: it sets up a process of its own
    from fcn.config import load_config

    config = load_config(None, bench_train.base_overrides(work_dir, fc_channels))
    memory_limit_gb = min(bench_train.MAX_MEMORY_FRACTION * bench_train.available_gb(), 10.0)
    _, results, failure = bench_train.measure(config, crop, batch, steps, memory_limit_gb)
    if failure or not results:
        return 0.0, failure or "no result"
    _, _, seconds, _, _, _ = results[0]
    return batch / seconds, ""


def time_batches(next_batch, seconds: float) -> tuple[int, int, float]:
    """Calls ``next_batch`` until ``seconds`` have passed.

    Args:
      next_batch: returns one batch as a dict holding ``image`` (B, H, W, 3).
      seconds: minimum time to measure; the last batch is always finished.

    Returns:
      (images, batches, elapsed seconds).
    """
    images = batches = 0
    start = time.perf_counter()
    while True:
        images += next_batch()["image"].shape[0]
        batches += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return images, batches, elapsed


def pipeline_batches(config: DataConfig, root: str, batch_size: int, seed: int):
    """The tf.data stream as numpy batches, failing on any skipped file."""
    report = data.SkipReport()
    for batch in data.training_dataset(config, root, batch_size, seed=seed):
        # The loop hands out numpy too; .numpy() also guarantees the work is done.
        batch = {key: value.numpy() for key, value in batch.items()}
        if report.record(batch):
            raise RuntimeError(report.summary())
        yield batch


def loop_batches(config: DataConfig, root: str, batch_size: int, seed: int, stage_seconds: dict):
    """The same stream made by a plain Python loop, one eager example at a time.

    Same file order (the pipeline's per-epoch permutation), same per-example
    seeds, same ``load_example`` and ``augment``: only the parallelism,
    prefetching and graph compilation of tf.data are missing. (Each eager op
    may still use TensorFlow's intra-op threads; the loop itself is serial.)

    Args:
      config: the data config.
      root: the dataset root.
      batch_size: examples per batch.
      seed: file order and augmentation seed.
      stage_seconds: accumulates seconds under ``read``, ``augment`` and
        ``stack``, to show where the serial loop spends its time.
    """
    pairs = datasets.list_split(root, "training").pairs
    images, labels = [], []
    epoch = 0
    while True:
        order = data._epoch_permutation(len(pairs), seed, tf.constant(epoch, tf.int64)).numpy()
        for position, index in enumerate(order):
            counter = epoch * len(pairs) + position
            start = time.perf_counter()
            image, label = decode.load_example(*pairs[index])
            read_done = time.perf_counter()
            example_seed = tf.constant([seed, counter], tf.int64)
            example = data.augment({"image": image, "label": label}, config, example_seed)
            images.append(example["image"].numpy())
            labels.append(example["label"].numpy())
            augment_done = time.perf_counter()
            stage_seconds["read"] += read_done - start
            stage_seconds["augment"] += augment_done - read_done
            if len(images) == batch_size:
                batch = {"image": np.stack(images), "label": np.stack(labels)}  # (B, H, W, 3), (B, H, W)
                stage_seconds["stack"] += time.perf_counter() - augment_done
                yield batch
                images, labels = [], []
        epoch += 1


def measure(batches, seconds: float, after_warmup=lambda: None) -> tuple[dict, int, int, float]:
    """Warms ``batches`` up, then times it.

    Args:
      batches: an iterator of batches.
      seconds: timed seconds after the warm-up.
      after_warmup: called between warm-up and timing (to reset counters).

    Returns:
      (the first batch, images, batches, elapsed seconds).
    """
    first = next(batches)
    # Later warm-up batches let tf.data's autotuner and the eager op caches settle.
    for _ in range(WARMUP_BATCHES - 1):
        next(batches)
    after_warmup()
    return (first, *time_batches(lambda: next(batches), seconds))


def main(argv=None) -> None:
    """Runs both measurements and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per measurement (after warm-up)")
    parser.add_argument("--batch_size", type=int, default=8, help="images per batch")
    parser.add_argument("--crop", type=int, default=512, help="square crop size")
    parser.add_argument("--seed", type=int, default=0, help="file order and augmentation seed")
    parser.add_argument(
        "--step_batch", type=int, default=2, help="batch of the training step timed at the same crop (0: not timed)"
    )
    parser.add_argument("--step_steps", type=int, default=1, help="timed training steps, after one warm-up")
    parser.add_argument("--smoke", action="store_true", help="64x64 crops, batch 2, 1 s, a narrow model's step (for the tests)")
    parser.add_argument("--summary", help="write the headline ratios to this JSON file (bench/all.py)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.batch_size, args.crop, args.step_batch, args.step_steps = 1.0, 2, 64, 1, 1
    if args.step_batch < 0 or args.step_steps < 1:
        parser.error("--step_batch must be at least 0 and --step_steps at least 1")
    load_at_start = common.load_average()

    config = dataclasses.replace(DataConfig(), crop_size=(args.crop, args.crop))
    with tempfile.TemporaryDirectory(prefix="fcn_bench_") as directory:
        root = make_training_root(directory)
        pipeline_first, pipeline_images, _, pipeline_seconds = measure(
            pipeline_batches(config, root, args.batch_size, args.seed), args.seconds
        )
        stage_seconds = collections.Counter()
        loop_first, loop_images, _, loop_seconds = measure(
            loop_batches(config, root, args.batch_size, args.seed, stage_seconds), args.seconds, stage_seconds.clear
        )
        step_rate, step_failure = 0.0, "not timed (--step_batch 0)"
        if args.step_batch:
            step_rate, step_failure = training_step_images_per_second(
                args.crop, args.step_batch, args.step_steps, os.path.join(directory, "step"), 64 if args.smoke else 4096
            )
    load_at_end = os.getloadavg()[0]

    # Both start at example 0 with the same seeds, so a mismatch means the loop
    # is not doing the pipeline's work and the ratio would be meaningless.
    same_work = all(np.array_equal(pipeline_first[key], loop_first[key]) for key in ("image", "label"))
    if not same_work:
        raise SystemExit("the plain loop's first batch differs from the pipeline's: the two do not do the same work, "
                         "so their rates cannot be compared")
    pipeline_rate = pipeline_images / pipeline_seconds
    loop_rate = loop_images / loop_seconds

    cores = device.cores()
    print(device.describe())
    print(f"Input pipeline: 3 ADE20K sample images cycled, crop {args.crop}x{args.crop}, batch {args.batch_size},")
    print("full recipe augmentation (rescale 0.5-2.0 of (2048, 512), crop, cat_max_ratio 0.75, flip, photometric)")
    print(f"TensorFlow {tf.__version__}, {cores} CPU cores, {args.seconds:g} s timed after {WARMUP_BATCHES} warm-up batches")
    print(f"first batch identical in pipeline and loop: {'yes' if same_work else 'NO'}")
    print(f"1-minute load average {load_at_start:.2f} at start, {load_at_end:.2f} at end")
    print()
    # The loop's stages show why it is slow: load_example builds a one-element
    # tf.data dataset per file, which costs more than the augmentation itself.
    stage_ms = {stage: f"{1000 * stage_seconds[stage] / loop_images:.1f}" for stage in ("read", "augment", "stack")}
    step_rows, ratio_rows = [], []
    if step_rate:
        step_name = f"training step {args.crop}x{args.crop}, batch {args.step_batch} (same run)"
        step_rows = [(step_name, f"{step_rate:.3f}", f"{1000 / step_rate:.0f}", "", "")]
        ratio_rows = [("pipeline / training step", f"{pipeline_rate / step_rate:.0f}x", "", "", "")]
    print_table(
        ("", "images/s", "ms/image", "images", "seconds"),
        [
            ("tf.data pipeline (training_dataset)", f"{pipeline_rate:.2f}", f"{1000 / pipeline_rate:.1f}",
             str(pipeline_images), f"{pipeline_seconds:.1f}"),
            ("plain Python loop (eager, one at a time)", f"{loop_rate:.2f}", f"{1000 / loop_rate:.1f}",
             str(loop_images), f"{loop_seconds:.1f}"),
            ("  of which read (load_example)", "", stage_ms["read"], "", ""),
            ("  of which augment", "", stage_ms["augment"], "", ""),
            ("  of which stack into batches", "", stage_ms["stack"], "", ""),
            *step_rows,
            ("", "", "", "", ""),
            ("pipeline / loop", f"{pipeline_rate / loop_rate:.1f}x", "", "", ""),
            *ratio_rows,
        ],
    )
    summary = [("input pipeline / plain loop, images/s", f"{pipeline_rate / loop_rate:.1f}")]
    if step_rate:
        summary.append((f"input pipeline / training step {args.crop}x{args.crop}, images/s", f"{pipeline_rate / step_rate:.1f}"))
    common.write_summary(args.summary, "input_pipeline", summary)
    if step_rate:
        print(
            f"training step: fcn.train.make_train_step, full FCN-8s float32, {args.crop}x{args.crop} batch "
            f"{args.step_batch}, median of {args.step_steps} step(s) after 1 warm-up, in a fresh process while the "
            "pipeline was not running"
        )
    else:
        print(f"training step: {step_failure}")


if __name__ == "__main__":
    main()
