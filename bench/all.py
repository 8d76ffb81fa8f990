"""Every bench's quick setting in one command, and one table of their headline ratios.

Runs each script of ``BENCHES`` in its own process (a bench may set
process-wide TensorFlow options, or spawn children of its own), with its quick
arguments and ``--summary FILE``, through which it hands back its headline
ratios; then prints one table, the device first (CPU model and vector
extensions, GPUs, TensorFlow), each ratio with its bench, the load average and
the seconds each bench took. A bench that fails is a row saying so, and the
exit status is 1.

Usage, from the repo root::

    python bench/all.py --quick [--out DIR/bench.md] [--only model crf]
    python bench/all.py --smoke [--only NAME]   # every bench's smoke setting (tests/test_bench.py)

The output of each bench goes to ``bench_NAME.log`` beside ``--out`` (or a
temporary folder, removed at the end, without it).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))

# Script name -> (quick arguments, or None when it has no quick figure; smoke arguments).
# The one place that lists the benches: adding one is one line.
BENCHES = {
    "model": (["--quick", "--repeats", "1"], ["--smoke"]),
    "train": (["--debug", "--shape", "256x2", "--steps", "2"], ["--smoke"]),
    "inference": (["--quick", "--repeats", "1"], ["--smoke"]),
    "crf": (["--quick", "--repeats", "2"], ["--smoke"]),
    "input_pipeline": (["--seconds", "5", "--crop", "256", "--batch_size", "4", "--step_batch", "0"], ["--smoke"]),
    "memory": (["--models", "sample", "--megapixels", "1"], ["--smoke"]),
    "layers": (None, ["--smoke"]),
    "compare_step": (None, ["--smoke"]),
    "serve": (["--quick"], ["--smoke"]),
    "device": (None, []),
}


def run_bench(name: str, arguments: list[str], log_dir: str) -> tuple[int, float, dict | None]:
    """Runs ``bench/NAME.py ARGUMENTS --summary ...``; returns (exit status, seconds, its summary or None)."""
    summary_path = os.path.join(log_dir, f"bench_{name}.json")
    if os.path.exists(summary_path):
        os.remove(summary_path)
    command = [sys.executable, os.path.join(BENCH, f"{name}.py"), *arguments]
    if name not in ("device", "compare_step", "memory", "serve"):  # the ones that have no ratio to hand back
        command += ["--summary", summary_path]
    start = time.perf_counter()
    with open(os.path.join(log_dir, f"bench_{name}.log"), "w") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=os.path.dirname(BENCH)).returncode
    seconds = time.perf_counter() - start
    summary = None
    if os.path.exists(summary_path):
        with open(summary_path) as file:
            summary = json.load(file)
    return status, seconds, summary


def table(results: list[tuple[str, int, float, dict | None]], log_dir: str) -> str:
    """The markdown report: the device, then one row per ratio (or per bench without one)."""
    sys.path.insert(0, BENCH)
    import device

    lines = [device.describe(), "", "| bench | figure | value | load average | bench seconds |", "| --- | --- | --- | --- | --- |"]
    for name, status, seconds, summary in results:
        if status != 0:
            lines.append(f"| {name} | FAILED (exit {status}, see {os.path.join(log_dir, f'bench_{name}.log')}) | | | {seconds:.0f} |")
        elif not summary or not summary["rows"]:
            lines.append(f"| {name} | ran (its table is in bench_{name}.log) | | | {seconds:.0f} |")
        else:
            for what, value in summary["rows"]:
                lines.append(f"| {name} | {what} | {value} | {summary['load']:.1f} | {seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="every bench's quick setting")
    mode.add_argument("--smoke", action="store_true", help="every bench's smoke setting (seconds each, for the tests)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="these benches only")
    parser.add_argument("--out", help="write the table to this file too; the benches' logs go beside it")
    args = parser.parse_args(argv)

    names = [name for name in BENCHES if not args.only or name in args.only]
    with tempfile.TemporaryDirectory(prefix="fcn-bench-all-") as scratch:
        log_dir = os.path.dirname(os.path.abspath(args.out)) if args.out else scratch
        os.makedirs(log_dir, exist_ok=True)
        results = []
        start = time.perf_counter()
        for name in names:
            quick, smoke = BENCHES[name]
            arguments = smoke if args.smoke else quick
            if arguments is None:
                continue
            status, seconds, summary = run_bench(name, arguments, log_dir)
            print(f"{name}: {'ok' if status == 0 else f'FAILED (exit {status})'} in {seconds:.0f} s", flush=True)
            results.append((name, status, seconds, summary))
        report = table(results, log_dir)
        report += f"\n`python bench/all.py {' '.join(argv if argv is not None else sys.argv[1:])}`: {time.perf_counter() - start:.0f} s\n"
        print(report)
        if args.out:
            with open(args.out, "w") as file:
                file.write(report)
    return 0 if all(status == 0 for _, status, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
