"""Peak resident memory of ``--mode=predict`` against the pixel count of the image.

For each model (``sample``: ``configs/sample.yaml``, fc6/fc7 256 wide, test
size (160, 96); ``full``: ``configs/ade20k.yaml``, the full FCN-8s with fc6/fc7
4096 wide, test size (2048, 512); ``full_own_size``: the same at each image's
own size, ``evaluate.test_size: none``), a run directory with a checkpoint of random
weights is written once, then ``python FCN.py --mode=predict`` runs in a child
process on one JPEG per size (generated here, in a temporary folder). The
child's peak resident set size comes from ``os.wait4`` (``ru_maxrss``, the
kernel's high-water mark of that process), so nothing is sampled and missed.
``evaluate.max_pixels`` is raised above the largest size so that no image is
refused. A child whose resident memory passes ``--max_memory_gb`` is killed
and its row marked, so that the shared machine's OOM killer never acts.

A straight line through the measured points (least squares) gives the fixed
cost (TensorFlow, the model) and the cost per pixel; the largest pixel count
that fits ``--budget_gb`` is extrapolated from it, and said to be.

Usage, from the repo root::

    python bench/memory.py [--megapixels 4 10 20 40] [--models sample full] [--budget_gb 8]
    python bench/memory.py --models full_own_size --megapixels 0.5 1 2
"""

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fcn import datasets
from fcn.datasets import ade20k

# Model -> (config file, its --set overrides). ``full_own_size`` runs the network at each image's own size
# (``evaluate.test_size: none``, the usual Pascal VOC protocol, as in configs/voc.yaml).
MODELS = {
    "sample": ("configs/sample.yaml", ()),
    "full": ("configs/ade20k.yaml", ()),
    "full_own_size": ("configs/ade20k.yaml", ("evaluate.test_size=none",)),
}
GIB = 1 << 30


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_jpeg(path: str, pixels: int, seed: int = 0) -> tuple[int, int]:
    """A 4:3 photograph-like JPEG (smooth colours and fine noise) of about ``pixels`` pixels; returns (W, H)."""
    width = int(round((pixels * 4 / 3) ** 0.5))
    height = int(round(pixels / width))
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    image = np.empty((height, width, 3), np.uint8)
    for channel in range(3):
        x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
        wave = 127 + 80 * np.sin(6.3 * (x * (channel + 1) + y * (3 - channel)))
        image[..., channel] = np.clip(wave + rng.normal(0, 12, (1, width)).astype(np.float32), 0, 255)
    Image.fromarray(image).save(path, quality=90)
    return width, height


def prepare_run(model: str, run_dir: str) -> None:
    """In a child process: the run directory predict reads (classes.csv, a checkpoint of random weights)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from fcn import checkpoints
    from fcn import config as config_lib
    from fcn import model as model_lib

    config = config_lib.load_config(os.path.join(REPO, MODELS[model][0]), [("model.pretrained_weights", "none"), ("logs_dir", run_dir)])
    classes = ade20k.class_table(config.data.num_classes or 150)
    datasets.record_run_classes(run_dir, classes)
    network = model_lib.build_from_config(config.model, classes.num_classes)
    checkpoint = tf.train.Checkpoint(model=network)
    checkpoints.save(checkpoint, os.path.join(run_dir, checkpoints.CHECKPOINTS_DIR), 1, 1, network.weights)


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(command: list[str], max_bytes: int) -> tuple[int, int, float, str]:
    """Runs ``command``; returns (exit status, peak RSS in bytes, seconds, the end of its stderr).

    The peak is the kernel's ``ru_maxrss`` of the child, from ``os.wait4``.
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        killed = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if not killed and rss_bytes(process.pid) > max_bytes:
                os.kill(process.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode("utf-8", "replace")[-2000:]
    seconds = time.perf_counter() - start
    code = -9 if killed else process.returncode
    return code, usage.ru_maxrss * 1024, seconds, tail


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, nargs="+", default=[4, 10, 20, 40])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["sample", "full"])
    parser.add_argument("--budget_gb", type=float, default=8.0, help="the memory budget the suggested limit fits (GiB)")
    parser.add_argument("--max_memory_gb", type=float, default=16.0, help="a child above this resident memory is killed (GiB)")
    parser.add_argument("--prepare", nargs=2, metavar=("MODEL", "RUN_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="the sample model on one 0.02 M pixel image (for the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.megapixels = ["sample"], [0.02]
    if args.prepare:
        prepare_run(*args.prepare)
        return 0

    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    max_bytes = int(min(args.max_memory_gb * GIB, 0.8 * available))
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"children killed above {max_bytes / GIB:.1f} GiB resident")
    work = tempfile.mkdtemp(prefix="fcn-memory-")
    try:
        images = {}
        for megapixels in args.megapixels:
            path = os.path.join(work, f"image_{megapixels:g}mp.jpg")
            width, height = write_jpeg(path, int(megapixels * 1e6))
            images[megapixels] = (path, width, height)
        print(f"{'model':<7} {'image':>12} {'pixels':>12} {'JPEG MB':>8} {'peak RSS GiB':>13} {'seconds':>8}")
        for model in args.models:
            run_dir = os.path.join(work, f"run_{model}")
            prepared = subprocess.run([sys.executable, os.path.abspath(__file__), "--prepare", model, run_dir], cwd=REPO,
                                      capture_output=True, text=True)
            if prepared.returncode != 0:
                print(f"{model}: the run directory could not be written:\n{prepared.stderr[-2000:]}")
                continue
            points = []
            for megapixels, (path, width, height) in images.items():
                output = os.path.join(work, f"out_{model}_{megapixels:g}")
                config_file, overrides = MODELS[model]
                command = [
                    sys.executable, os.path.join(REPO, "FCN.py"), "--mode=predict", "--config", config_file,
                    *[arg for override in overrides for arg in ("--set", override)],
                    "--vgg_weights", "none", "--logs_dir", run_dir, "--image", path, "--output", output,
                    "--no_progress", "--set", f"evaluate.max_pixels={10 * max(int(m * 1e6) for m in images)}",
                ]  # fmt: skip
                code, peak, seconds, tail = run_child(command, max_bytes)
                pixels = width * height
                note = "" if code == 0 else (" killed: over the memory cap" if code == -9 else f" exit {code}: {tail.strip().splitlines()[-1:]}")
                print(f"{model:<7} {width:>5}x{height:<6} {pixels:>12,} {os.path.getsize(path) / 1e6:>8.1f} "
                      f"{peak / GIB:>13.2f} {seconds:>8.0f}{note}", flush=True)
                if code == 0:
                    points.append((pixels, peak))
                shutil.rmtree(output, ignore_errors=True)
            if len(points) >= 2:
                pixels, peaks = np.array(points, np.float64).T
                slope, fixed = np.polyfit(pixels, peaks, 1)
                if slope <= 0:
                    print(f"{model}: no growth with the pixel count over these sizes (the fixed cost dominates)")
                    continue
                fits = (args.budget_gb * GIB - fixed) / slope
                beyond = "extrapolated" if fits > pixels.max() else "within the measured range"
                print(f"{model}: peak RSS ~ {fixed / GIB:.2f} GiB + {slope:.1f} bytes/pixel (least squares over "
                      f"{len(points)} sizes); {args.budget_gb:g} GiB holds ~{fits / 1e6:.0f} M pixels ({beyond})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
