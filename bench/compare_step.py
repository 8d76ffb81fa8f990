"""The training step of this tree against another source tree's, in alternating fresh processes.

Each turn runs one process per tree (this one and ``--baseline``, e.g. an
older commit unpacked with ``git archive <commit> | tar -x -C DIR``), in the
order A, B, then B, A, so that a change in the machine's load falls on both
sides. A process builds the full FCN-8s training state of that tree
(``fcn.train``: fc6/fc7 4096, random weights, float32 unless ``--set``
says otherwise), times one warm-up and ``--steps`` steps of its
``make_train_step`` on a fixed random batch, and the 3x3 convolution peak of
``bench/model.py`` right before and after (the higher one is used). The table gives each side's median step, the
per-turn ratios baseline / this tree, and each step as a fraction of the peak
measured in the same process.

Usage, from the repo root::

    python bench/compare_step.py --baseline DIR [--size 256] [--batch 8] [--turns 2] [--steps 1]
        [--set train.jit_compile=true ...]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)

import device  # noqa: E402  (bench/ is on sys.path as the script's folder)
from common import PEAK_REPEATS, print_table  # noqa: E402

# Run in the child with the tree under test first on sys.path; prints one JSON line.
CHILD = r"""
import json, os, sys, tempfile, time
tree, bench, size, batch, steps, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6])
peak_repeats = int(sys.argv[7])
sys.path[:0] = [tree]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
from fcn import train
from fcn.config import load_config
sys.path.append(bench)  # bench/model.py of this tree, for the peak and the FLOP counter
from common import conv_flops, measure_peak
with tempfile.TemporaryDirectory() as work:
    from common import make_training_root
    root = make_training_root(os.path.join(work, "data"))
    config = load_config(None, [("model.vgg_weights", "none"), ("model.fc_channels", 4096), ("data.data_dir", root),
                                ("logs_dir", os.path.join(work, "logs"))] + [tuple(o) for o in overrides])
    strategy = train.setup_process(config)
    import tensorflow as tf
    try:  # the state moved to fcn/train_state.py; an older tree has it in fcn/train.py
        from fcn.train_state import create_train_state
    except ImportError:
        create_train_state = train.create_train_state
    state = create_train_state(config, strategy)
    step = train.make_train_step(state, config, strategy)
    rng = np.random.default_rng(size + batch)
    images = tf.constant(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    labels = tf.constant(rng.integers(0, config.data.num_classes or 150, (batch, size, size), dtype=np.uint8))
    before, _, _ = measure_peak(peak_repeats)
    start = time.perf_counter(); float(step(images, labels).loss); warmup = time.perf_counter() - start
    seconds = []
    for _ in range(steps):
        start = time.perf_counter(); float(step(images, labels).loss); seconds.append(time.perf_counter() - start)
    peak = max(before, measure_peak(peak_repeats)[0])
    flops = 3 * batch * sum(conv_flops(state.model, size, size).values())
    print("RESULT " + json.dumps({"seconds": seconds, "warmup": warmup, "peak": peak, "flops": flops}))
"""


def run_side(tree: str, args, overrides) -> dict:
    """One fresh process timing ``tree``'s step; its result line as a dict."""
    command = [sys.executable, "-c", CHILD, tree, BENCH, str(args.size), str(args.batch), str(args.steps),
               json.dumps(overrides), "1" if args.smoke else str(PEAK_REPEATS)]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    for line in finished.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"the step of {tree} failed (exit {finished.returncode}):\n{finished.stderr[-3000:]}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="another source tree of this project (holding fcn/); required but with --smoke")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--turns", type=int, default=2, help="turns; each runs both sides once, order alternating")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per process, after one warm-up")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for both sides")
    parser.add_argument("--smoke", action="store_true",
                        help="this tree against itself, 32x32 batch 1, VGG an eighth wide, fc6/fc7 64 wide, one turn, "
                             "one process whose result stands for both sides (for the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.baseline = args.baseline or REPO
        args.size, args.batch, args.turns, args.steps = 32, 1, 1, 1
        args.set = args.set + ["model.fc_channels=64", "model.width=0.125"]
    if not args.baseline:
        parser.error("--baseline is required")
    if not os.path.isdir(os.path.join(args.baseline, "fcn")):
        parser.error(f"--baseline {args.baseline}: no fcn/ package there")
    overrides = [item.split("=", 1) for item in args.set]
    sides = {"this tree": REPO, "baseline": os.path.abspath(args.baseline)}
    results = {name: [] for name in sides}
    loads = [os.getloadavg()[0]]
    for turn in range(args.turns):
        order = list(sides) if turn % 2 == 0 else list(sides)[::-1]
        for name in order:
            if args.smoke and results["this tree"] and sides[name] == REPO:
                result = results["this tree"][-1]  # the same tree: the smoke setting times it once
            else:
                result = run_side(sides[name], args, overrides)
            results[name].append(result)
            loads.append(os.getloadavg()[0])
            print(f"turn {turn + 1} {name}: {statistics.median(result['seconds']):.2f} s/step, "
                  f"peak {result['peak']:.0f} GFLOP/s, load {loads[-1]:.2f}", flush=True)

    print()
    print(device.describe())
    print(f"training step, full FCN-8s, {args.size}x{args.size} batch {args.batch}, overrides {args.set or 'none'}; "
          f"{args.turns} turns of one process per side (order alternating), median of {args.steps} step(s) after 1 "
          f"warm-up each; 1-minute load average {min(loads):.2f}-{max(loads):.2f}")
    rows = []
    for name, runs in results.items():
        step = statistics.median(statistics.median(r["seconds"]) for r in runs)
        fraction = statistics.median(r["flops"] / statistics.median(r["seconds"]) / 1e9 / r["peak"] for r in runs)
        rows.append((name, f"{step:.2f}", " ".join(f"{statistics.median(r['seconds']):.2f}" for r in runs),
                     f"{fraction:.2f}", f"{statistics.median(r['warmup'] for r in runs):.1f}"))
    ratios = [statistics.median(b["seconds"]) / statistics.median(a["seconds"])
              for a, b in zip(results["this tree"], results["baseline"])]
    print_table(("side", "s/step (median)", "per turn", "/peak (same process)", "warm-up s"), rows)
    print(f"baseline / this tree per turn: {' '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {statistics.median(ratios):.2f}x faster)")


if __name__ == "__main__":
    main()
