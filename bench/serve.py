"""Serving latency and throughput of ``--mode=serve`` for a 512x512 image, over real HTTP on 127.0.0.1.

Builds a run of the full FCN-8s (VGG16, fc6/fc7 4096 wide, 150 classes, random
weights; the default test protocol: the image fitted into ``data.base_size``,
one view), serves it with ``fcn.serve.Server`` (waitress, its default threads)
on a free port of 127.0.0.1, and times

- latency: requests one after the other, through the page's ``POST /segment``
  (a JPEG file) and through the TF Serving API's ``POST /v1/models/fcn:predict``
  (the image as JSON lists), the median and the slowest;
- throughput: the same page request sent by 1, 2 and 4 clients at once, images
  answered per second.

A 512x512 image at the default protocol is one 512x512 forward pass; the time
is that of the model plus decoding, the label PNG and the mask (page) or the
JSON conversion both ways (API). All traffic stays on 127.0.0.1 and every
request has a time limit.

Usage, from the repo root::

    python bench/serve.py [--quick] [--smoke] [--export] [--fc_channels N]

``--export`` first measures ``--mode=export`` of the same run: the SavedModel's
and the TFLite model's size against the weights', and their latency.
``--quick``: fewer requests, clients 1 and 2. ``--smoke``: a tiny model (fc6/fc7
16 wide) on a 64x64 image at its own size, two requests each: checks that the script runs.
"""

import argparse
import concurrent.futures
import io
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the table readable

import device  # noqa: E402  (bench/ is on sys.path as the script's folder)
import numpy as np  # noqa: E402
import requests  # noqa: E402
import tensorflow as tf  # noqa: E402
from input_pipeline import print_table  # noqa: E402
from PIL import Image  # noqa: E402

from fcn import backbones  # noqa: E402
from fcn import config as config_lib  # noqa: E402
from fcn import model as model_lib  # noqa: E402
from fcn import serve  # noqa: E402
from fcn.segmenter import Segmenter  # noqa: E402

TIMEOUT = 600  # seconds one request may take
NO_PROXY = {"http": None, "https": None}


def make_run(logs_dir: str, fc_channels: int, overrides=()) -> config_lib.Config:
    """A run directory holding a random-weight FCN-8s checkpoint and its config, as training leaves one."""
    config = config_lib.load_config(
        None, [("logs_dir", logs_dir), ("model.fc_channels", fc_channels), ("model.pretrained_weights", "none"), *overrides]
    )
    model = model_lib.build_fcn8s(config.data.num_classes or 150, fc_channels=fc_channels)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), os.path.join(logs_dir, "checkpoints"), 1).save(checkpoint_number=1)
    config_lib.save_config(config, logs_dir)
    return config


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def measure_export(config: config_lib.Config, image: np.ndarray, repeats: int) -> None:
    """--mode=export's SavedModel and TFLite sizes against the weights', and the latency of each on ``image``."""
    from fcn import export

    weights = os.path.join(config.logs_dir, "checkpoints")
    version, _ = export.export(config)
    tflite_version, _ = export.export(config, format="tflite", tflite_size=image.shape[:2])
    tflite = os.path.join(tflite_version, export.TFLITE_FILE)
    model = model_lib.build_fcn8s(config.data.num_classes or 150, fc_channels=config.model.fc_channels)
    parameters = sum(int(np.prod(w.shape)) for w in model.weights)
    print(f"\nexport of {parameters:,} parameters ({4 * parameters / 1e6:.1f} MB of float32; checkpoint {folder_bytes(weights) / 1e6:.1f} MB)")
    serving = tf.saved_model.load(version).signatures["serving_default"]
    interpreter = tf.lite.Interpreter(tflite, num_threads=device.cores())
    interpreter.allocate_tensors()
    inputs, outputs = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run_tflite():
        interpreter.set_tensor(inputs["index"], image[None])
        interpreter.invoke()
        return interpreter.get_tensor(outputs["index"])

    batch = tf.constant(image[None])
    same = np.array_equal(run_tflite(), serving(images=batch)["labels"].numpy())
    saved_times = [timed(lambda: serving(images=batch)) for _ in range(repeats)]
    tflite_times = [timed(run_tflite) for _ in range(repeats)]
    rows = [("SavedModel", f"{folder_bytes(version) / 1e6:.1f}", f"{folder_bytes(os.path.join(version, 'variables')) / 1e6:.1f}",
             f"{statistics.median(saved_times):.3f}"),
            ("TFLite", f"{os.path.getsize(tflite) / 1e6:.1f}", "", f"{statistics.median(tflite_times):.3f}")]
    print_table(("format", "MB", "variables MB", f"median s ({image.shape[0]}x{image.shape[1]})"), rows)
    print(f"TFLite labels equal to the SavedModel's: {same}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, 1 and 2 clients")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on a 64x64 image, two requests each")
    parser.add_argument("--export", action="store_true", help="also --mode=export's sizes and the TFLite model's latency")
    parser.add_argument("--fc_channels", type=int, help="fc6/fc7 width (default 4096, --smoke 16)")
    args = parser.parse_args(argv)
    size, fc_channels = (64, 16) if args.smoke else (512, backbones.VGG_FC_CHANNELS)
    fc_channels = args.fc_channels or fc_channels
    repeats = 2 if args.smoke else 3 if args.quick else 6
    clients = (1, 2) if args.smoke or args.quick else (1, 2, 4)
    print(device.describe())

    image = np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    body = json.dumps({"instances": [image.tolist()]}).encode()

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as logs_dir:
        # --smoke: the image at its own size (the default protocol would enlarge it to 512 x 512).
        overrides = [("evaluate.test_size", "none")] if args.smoke else []
        config = make_run(logs_dir, fc_channels, overrides)
        segmenter = Segmenter.from_config(config)
        if args.export:
            measure_export(config, image, repeats)
        server = serve.Server(serve.create_app(segmenter), "127.0.0.1", 0).start()
        try:
            session = requests.Session()

            def page():
                answer = session.post(server.url + "/segment", data=jpeg, timeout=TIMEOUT, proxies=NO_PROXY)
                answer.raise_for_status()

            def api():
                answer = session.post(server.url + "/v1/models/fcn:predict", data=body, timeout=TIMEOUT, proxies=NO_PROXY,
                                      headers={"Content-Type": "application/json"})
                answer.raise_for_status()

            page()  # the first request compiles the network
            direct = [timed(lambda: segmenter(image)) for _ in range(repeats)]
            latencies = {"segmenter (no HTTP)": direct, "POST /segment (JPEG)": [timed(page) for _ in range(repeats)],
                         "POST /v1/models/fcn:predict (JSON)": [timed(api) for _ in range(repeats)]}
            rows = [(name, f"{statistics.median(t):.3f}", f"{max(t):.3f}", str(len(t))) for name, t in latencies.items()]
            print(f"\nlatency, {size}x{size} image, one request at a time (JSON request {len(body) / 1e6:.1f} MB)")
            print_table(("path", "median s", "max s", "requests"), rows)

            rows = []
            for count in clients:
                requests_sent = repeats * count
                with concurrent.futures.ThreadPoolExecutor(count) as pool:
                    start = time.perf_counter()
                    list(pool.map(lambda _: page(), range(requests_sent)))
                    wall = time.perf_counter() - start
                rows.append((str(count), str(requests_sent), f"{wall:.2f}", f"{requests_sent / wall:.2f}"))
            print(f"\nthroughput of POST /segment, {size}x{size} JPEG, server threads {serve.THREADS}")
            print_table(("clients", "requests", "wall s", "images/s"), rows)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
