"""Images/s of evaluate's Predictor beside the network's forward pass alone, in one process.

For each protocol (the ADE20K one, views fitted into 2048x512, and the image's
own size) and each set of views (single view; scales + horizontal flip), it
times ``Predictor.labels`` (resize, views, logits resized to the image size
band by band, argmax) on the three ADE20K fixture images (683x512, 512x683,
...), one image per call as ``evaluate`` runs it, and the forward pass alone
(``model(view, training=False)`` in a ``tf.function``) on the same network
input sizes: the Predictor's single-view throughput over the forward's says
what the work around the network costs. Measurements take turns (forward,
predictor, forward, ...) so that a change of load falls on both.

Usage, from the repo root::

    python bench/inference.py [--quick] [--single_view] [--smoke] [--repeats 2] [--summary FILE]

The full FCN-8s (fc6/fc7 4096, 150 classes, random weights); ``--quick``: the
first image only, the single-view rows and scales (0.75, 1.0, 1.25) + flip at
the protocol;
``--single_view``: the single-view rows only; ``--smoke``: fc6/fc7 64 wide, 5
classes, images cut to 96x64 and fitted into 192x64 (for the tests).
"""

import argparse
import statistics
import time

import common  # noqa: F401  (bench/ is on sys.path as the script's folder; common puts the repo there too)
import keras
import numpy as np
import tensorflow as tf

import device
from common import SAMPLE_ROOT, SAMPLE_SPLIT, print_table, wait_for
from fcn.model import build_fcn8s
from fcn.inference import Predictor
from fcn.datasets import decode
from fcn import datasets

PROTOCOL_SIZE = (2048, 512)
MULTI_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
QUICK_SCALES = (0.75, 1.0, 1.25)


def fixture_images(smoke: bool) -> list[np.ndarray]:
    """The ADE20K validation fixtures, uint8 (H, W, 3) each."""
    images = [decode.load_example(*pair)[0] for pair in datasets.list_split(SAMPLE_ROOT, SAMPLE_SPLIT).pairs]
    return [image[:64, :96] for image in images] if smoke else images


def in_turns(runs: dict, repeats: int) -> dict[str, float]:
    """One warm-up each, then ``repeats`` turns timing each run once; name -> median seconds."""
    for run in runs.values():
        wait_for(run())
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            wait_for(run())
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def measure(model, images, test_size, scales, flip: bool, repeats: int) -> tuple[float, float]:
    """(images/s of Predictor.labels, images/s of the forward alone on its views), one image per call."""
    predictor = Predictor(model, scales=scales, flip=flip, test_size=test_size)
    batches = [tf.constant(image[None]) for image in images]
    views = []  # the network inputs the predictor makes of each image, as float32
    for batch in batches:
        for scale in predictor.scales:
            size = predictor.view_size(tf.shape(batch)[1:3], scale)
            view = tf.image.resize(batch, size) if test_size is not None or scale != 1.0 else tf.cast(batch, tf.float32)
            views += [view] * (2 if flip else 1)
    forward = predictor._forward  # the one compiled network function the predictor calls
    seconds = in_turns(
        {
            "forward": lambda: [forward(view) for view in views],
            "predictor": lambda: [predictor.labels(batch) for batch in batches],
        },
        repeats,
    )
    return len(images) / seconds["predictor"], len(images) / seconds["forward"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="single view, and 3 scales + flip at the protocol only")
    parser.add_argument("--smoke", action="store_true", help="narrow model, 96x64 images, one repeat (for the tests)")
    parser.add_argument("--repeats", type=int, default=2, help="timed turns after one warm-up")
    parser.add_argument("--single_view", action="store_true", help="the single-view rows only")
    parser.add_argument("--summary", help="write the headline ratios to this JSON file (bench/all.py)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats = 1
    print(device.describe(), flush=True)
    load_at_start = common.load_average()
    keras.utils.set_random_seed(0)
    num_classes, fc_channels = (5, 64) if args.smoke else (150, 4096)
    model = build_fcn8s(num_classes, fc_channels=fc_channels)
    images = fixture_images(args.smoke)[: 1 if args.quick else None]
    # The smoke images (96x64) fitted into 2048x512 would be 768x512: fitted into 192x64 they keep their size.
    protocol, protocol_size = ("192x64 protocol (smoke)", (192, 64)) if args.smoke else ("2048x512 protocol", PROTOCOL_SIZE)
    settings = [(protocol, protocol_size, (1.0,), False), ("own size", None, (1.0,), False)]
    if args.single_view:
        pass
    elif args.quick or args.smoke:
        settings.append((protocol, protocol_size, QUICK_SCALES, True))
    else:
        settings += [(protocol, protocol_size, MULTI_SCALES, True), ("own size", None, MULTI_SCALES, True)]
    rows, summary = [], []
    for protocol, test_size, scales, flip in settings:
        predictor_rate, forward_rate = measure(model, images, test_size, scales, flip, args.repeats)
        views = f"scales {', '.join(f'{s:g}' for s in scales)}" + (" + flip" if flip else "")
        ratio = predictor_rate / forward_rate
        rows.append((protocol, views, f"{predictor_rate:.3f}", f"{forward_rate:.3f}", f"{ratio:.2f}"))
        summary.append((f"Predictor / forward alone, images/s, {protocol}, {views}", f"{ratio:.2f}"))
        summary.append((f"Predictor images/s, {protocol}, {views}", f"{predictor_rate:.3f}"))
        print(f"  {protocol}, {views}: predictor {predictor_rate:.3f} images/s, forward {forward_rate:.3f}", flush=True)
    print(f"FCN-8s ({num_classes} classes, fc6/fc7 {fc_channels}, random weights), {len(images)} fixture images "
          f"({', '.join(f'{i.shape[1]}x{i.shape[0]}' for i in images)}), one per call, median of {args.repeats} turns; "
          f"1-minute load average {load_at_start:.2f} at start, {common.load_average():.2f} at end")
    print_table(("protocol", "views", "Predictor images/s", "forward alone images/s", "Predictor / forward"), rows)
    common.write_summary(args.summary, "inference", summary)


if __name__ == "__main__":
    main()
