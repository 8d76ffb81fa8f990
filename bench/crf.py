"""CRF-RNN speed, side by side with pydensecrf2 (the C++ DenseCRF), and in training.

Three parts, in one run:

1. **Against pydensecrf2.** Mean-field inference, 5 iterations, theta_alpha
   160, theta_beta 3, theta_gamma 3, spatial weight 3, bilateral weight 5,
   Potts, both sides normalising by the filtered ones (pydensecrf2's
   ``NORMALIZE_AFTER``), on: the real ADE20K fixture image
   ``ADE_val_00000001.jpg`` (683x512) at C = 21 and C = 150, and a random-colour
   512x512 image at C = 21 (the worst case of the lattice: almost every pixel
   has vertices of its own). Both sides run in this process, taking turns; the
   median of ``--repeats`` calls is shown, with the median (and range) of the
   per-turn ratios, the fraction of pixels where the two give the same label
   and the load average after the case. Unaries: the image's ground-truth
   labels (modulo C) as one-hot maps, blurred (sigma 4 px), times 8, plus
   N(0, 2^2) noise, so that the CRF has something to do; our layer gets them
   as logits (its softmax is timed), pydensecrf2 as -log softmax computed
   before its timer starts (its lattice builds, inference and argmax are
   timed). Our side is a ``tf.function`` of the
   layer, traced for the image size (as ``keras.Model.predict`` does).
   pydensecrf2 is an optional dependency of this benchmark only
   (``pip install pydensecrf2``); without it our side is timed alone.

2. **Where the time goes**, per part of one forward pass, for each case: the
   bilateral lattice build (with the norm folded into its slice); splat, blur
   (all d + 1 directions) and slice of the bilateral lattice; each filter with
   its C x C product (the spatial one exact, two depthwise 1-D convolutions);
   the rest of an iteration (softmax, the spatial norm's scale, the sum) and
   its ratio to the bilateral filter; each timed alone on C channels
   (``tf.function``, median). Then the same stages inside the layer's own
   graph (``crf.dense_crf``, its name scopes ``crf.SCOPES``): the op time of
   each, summed over one traced run (``RunOptions.FULL_TRACE``), per
   iteration, and the rest over the bilateral filter there. Timed alone, a
   pass over the (H, W, C) values also pays for fresh output buffers, which
   the graph's ops mostly do not: the rest alone is several times its share
   of the pass.

3. **Training**: forward + backward (gradients for the unaries and the three
   C x C matrices) at C = 150, 500x375, batch 1 and 4, in seconds per image,
   beside the FCN-8s training step (``fcn.model.build_fcn8s(150)``, random
   weights, sparse softmax cross-entropy, Adam, ``tf.function``) at the same
   size, batch 1. Each runs in a fresh process (so that peak memory is its
   own): one warm-up call, then the median of ``--repeats``, and the peak
   resident memory (VmHWM) with the resident memory before the first call.

The device (``bench/device.py``: CPU model, vector extensions, GPUs, TensorFlow)
is printed first. Only ratios within one run mean much on a shared machine; the
load average is printed at the start and at the end.

Usage, from the repo root::

    pip install pydensecrf2   # optional, for the comparison
    python bench/crf.py [--quick] [--no_training] [--parts_only] [--smoke] [--summary FILE] [--repeats 3]

``--quick``: part 1 and 2 on the C = 21 fixture case only, no training part;
``--no_training``: parts 1 and 2 on every case; ``--smoke``: a 64x48 crop at
C = 5, one repeat, no training part (for the tests).
"""

import argparse
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the table readable

import numpy as np  # noqa: E402
import scipy.ndimage  # noqa: E402
import tensorflow as tf  # noqa: E402

import common  # noqa: E402  (bench/ is on sys.path as the script's folder)
import device  # noqa: E402
from fcn import crf, permutohedral
from fcn.datasets import decode
from fcn import datasets

tf.get_logger().setLevel("ERROR")  # retracing notices: every configuration is a new function on purpose

try:
    import pydensecrf.densecrf as densecrf
except ImportError:  # optional: our side still runs
    densecrf = None

SAMPLE_ROOT = os.path.join(REPO, "tests", "fixtures", "ADEChallengeData2016")
NUM_ITERATIONS = 5
THETA_ALPHA, THETA_BETA, THETA_GAMMA = 160.0, 3.0, 3.0
SPATIAL_WEIGHT, BILATERAL_WEIGHT = 3.0, 5.0
TRAIN_HEIGHT, TRAIN_WIDTH, TRAIN_CLASSES = 375, 500, 150


def load_average() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def noisy_unaries(label: np.ndarray, num_classes: int, rng) -> np.ndarray:
    """(H, W, C) float32 logits: blurred one-hot labels (mod C) times 8, plus N(0, 2^2) noise."""
    one_hot = np.eye(num_classes, dtype=np.float32)[label.astype(np.int64) % num_classes]
    blurred = scipy.ndimage.gaussian_filter(one_hot, (4.0, 4.0, 0.0))
    return (8.0 * blurred + rng.normal(0.0, 2.0, one_hot.shape)).astype(np.float32)


def cases(quick: bool, smoke: bool = False):
    """[(name, image uint8 (H, W, 3), unaries float32 (H, W, C))]."""
    rng = np.random.default_rng(0)
    image, label = decode.load_example(*datasets.list_split(SAMPLE_ROOT, "validation").pairs[0])
    if smoke:
        image, label = image[200:248, 300:364], label[200:248, 300:364]
        return [("ADE_val_00000001.jpg crop 64x48, C = 5", image, noisy_unaries(label, 5, rng))]
    height, width = image.shape[:2]
    result = [(f"ADE_val_00000001.jpg {width}x{height}, C = 21", image, noisy_unaries(label, 21, rng))]
    if quick:
        return result
    result.append((f"ADE_val_00000001.jpg {width}x{height}, C = 150", image, noisy_unaries(label, 150, rng)))
    random_image = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    random_label = tf.image.resize(label[..., None], (512, 512), method="nearest").numpy()[..., 0]
    result.append(("random colours 512x512, C = 21", random_image, noisy_unaries(random_label, 21, rng)))
    return result


def pydensecrf_energy(unaries: np.ndarray) -> np.ndarray:
    """(C, H W) float32 unary energies for pydensecrf2: -log softmax of the (H, W, C) logits."""
    num_classes = unaries.shape[-1]
    shifted = unaries - unaries.max(axis=-1, keepdims=True)
    energy = np.log(np.exp(shifted).sum(axis=-1, keepdims=True)) - shifted
    return np.ascontiguousarray(energy.reshape(-1, num_classes).T)


def pydensecrf_labels(image: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """pydensecrf2's labels (H, W) for the same CRF as ``crf.CrfRnn`` at its initial weights.

    Timed from the energies on: the lattice builds, the inference and the argmax.
    """
    height, width = image.shape[:2]
    num_classes = energy.shape[0]
    model = densecrf.DenseCRF2D(width, height, num_classes)
    model.setUnaryEnergy(energy)
    model.addPairwiseGaussian(
        sxy=THETA_GAMMA, compat=SPATIAL_WEIGHT, kernel=densecrf.DIAG_KERNEL, normalization=densecrf.NORMALIZE_AFTER
    )
    model.addPairwiseBilateral(
        sxy=THETA_ALPHA,
        srgb=THETA_BETA,
        rgbim=np.ascontiguousarray(image),
        compat=BILATERAL_WEIGHT,
        kernel=densecrf.DIAG_KERNEL,
        normalization=densecrf.NORMALIZE_AFTER,
    )
    return np.asarray(model.inference(NUM_ITERATIONS)).reshape(num_classes, height, width).argmax(axis=0)


def new_layer(num_classes: int) -> crf.CrfRnn:
    layer = crf.CrfRnn(
        theta_alpha=THETA_ALPHA,
        theta_beta=THETA_BETA,
        theta_gamma=THETA_GAMMA,
        num_iterations=NUM_ITERATIONS,
        spatial_weight=SPATIAL_WEIGHT,
        bilateral_weight=BILATERAL_WEIGHT,
    )
    layer.build([(None, None, None, num_classes), (None, None, None, 3)])
    return layer


def fetch(structure):
    # A CSR matrix (a variant) has no NumPy value: computing it was the point.
    return tf.nest.map_structure(
        lambda t: None if t is None or t.dtype == tf.variant else t.numpy(), structure, expand_composites=True
    )


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def median_seconds(function, args, repeats: int) -> float:
    fetch(function(*args))  # trace and warm up
    return float(np.median([timed(lambda: fetch(function(*args)))[0] for _ in range(repeats)]))


def side_by_side(case_list, repeats: int) -> None:
    print(f"\n1. {NUM_ITERATIONS} mean-field iterations, one image, median of {repeats} (seconds)")
    if densecrf is None:
        print("   pydensecrf2 is not installed (pip install pydensecrf2): timing our layer alone")
    print("| case | ours | pydensecrf2 | pydensecrf2 / ours (median of the runs' ratios, range) | same label | load average "
          "| CPU time, ours | CPU time, pydensecrf2 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    summary = []
    for name, image, unaries in case_list:
        layer = new_layer(unaries.shape[-1])
        forward = tf.function(lambda u, i: tf.argmax(layer([u, i]), axis=-1))
        inputs = (tf.constant(unaries[None]), tf.constant(image[None]))
        ours_labels = forward(*inputs).numpy()[0]  # trace and warm up
        energy = pydensecrf_energy(unaries) if densecrf is not None else None
        ours, theirs, ours_cpu, theirs_cpu = [], [], [], []  # wall and CPU (all threads of the process) seconds
        for _ in range(repeats):  # taking turns, so that both see the same load
            cpu = time.process_time()
            ours.append(timed(lambda: forward(*inputs).numpy())[0])
            ours_cpu.append(time.process_time() - cpu)
            if densecrf is not None:
                cpu = time.process_time()
                seconds, their_labels = timed(pydensecrf_labels, image, energy)
                theirs_cpu.append(time.process_time() - cpu)
                theirs.append(seconds)
        load = load_average().split()[0]
        if densecrf is None:
            print(f"| {name} | {np.median(ours):.2f} s | - | - | - | {load} | {np.median(ours_cpu):.2f} s | - |", flush=True)
            continue
        ratios = np.array(theirs) / np.array(ours)
        same = np.mean(ours_labels == their_labels)
        print(
            f"| {name} | {np.median(ours):.2f} s | {np.median(theirs):.2f} s | {np.median(ratios):.2f} "
            f"({ratios.min():.2f}-{ratios.max():.2f}) | {100 * same:.2f} % | {load} | {np.median(ours_cpu):.2f} s "
            f"| {np.median(theirs_cpu):.2f} s |",
            flush=True,
        )
        summary += [(f"pydensecrf2 / ours, time, {name}", f"{np.median(ratios):.2f}"),
                    (f"same label as pydensecrf2, %, {name}", f"{100 * same:.2f}")]
    return summary


def parts(case_list, repeats: int) -> None:
    print(f"\n2. Where the time goes: each part timed alone on the case's C channels, median of {repeats} (seconds)")
    print("| case | bilateral lattice build | splat | blur (6 directions) | slice "
          "| bilateral filter + C x C product | spatial filter + C x C product | softmax, norms, rest "
          "| rest / bilateral filter | sum per forward pass |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    summary = []
    rng = np.random.default_rng(1)
    for name, image, unaries in case_list:
        # As the layer runs: many classes padded to a multiple of ALIGN and the
        # bilateral filter through the lattice's CSR copies (run eagerly here: a
        # CSR matrix captured by a tf.function would be converted again in it).
        wide = unaries.shape[-1] >= permutohedral.WIDE_CHANNELS
        num_classes = unaries.shape[-1] + (-unaries.shape[-1] % permutohedral.ALIGN if wide else 0)
        image_batch = tf.constant(image[None])
        values = tf.constant(rng.random((1,) + unaries.shape[:2] + (num_classes,)), tf.float32)

        @tf.function
        def build(images):  # as the layer builds it: with the norm folded into the slice
            lattice = permutohedral.normalised(crf.build_image_lattice(images, THETA_ALPHA, THETA_BETA))
            return permutohedral.compressed(lattice) if wide else lattice

        lattice = build(image_batch)
        part = lattice.parts[0]
        flat = tf.reshape(values, (-1, num_classes))
        weights = tf.constant(rng.normal(size=(num_classes, num_classes)), tf.float32)

        def chunked(function):
            if wide:
                return function
            return tf.function(lambda x: permutohedral.in_channel_chunks(function, x))

        def product(matrix, x):
            if wide:
                return tf.raw_ops.SparseMatrixMatMul(a=getattr(part.compressed, matrix), b=x)
            return tf.sparse.sparse_dense_matmul(getattr(part, matrix), x)

        def blur_all(x):
            for blur in part.compressed.blur if wide else part.blur:
                x = tf.raw_ops.SparseMatrixMatMul(a=blur, b=x) if wide else tf.sparse.sparse_dense_matmul(blur, x)
            return x

        splat = chunked(lambda x: product("splat", x))
        vertex_values = splat(flat)
        scales = [tf.constant(1.0 / (rng.random((1,) + unaries.shape[:2] + (1,)) + 1.0), tf.float32)]

        def bilateral_filter(x):
            return permutohedral.lattice_filter(lattice, x, channel_weights=weights)

        def spatial_filter(x):
            return crf.spatial_message(x, THETA_GAMMA, weights)

        def rest(logits, spatial, bilateral):  # as in crf.mean_field and the spatial norm, the filters' outputs given
            return tf.add_n([logits, spatial * scales[0], bilateral]), tf.nn.softmax(logits)

        seconds = {
            "build": median_seconds(build, (image_batch,), repeats),
            "splat": median_seconds(splat, (flat,), repeats),
            "blur": median_seconds(chunked(blur_all), (vertex_values,), repeats),
            "slice": median_seconds(chunked(lambda x: product("slice", x)), (vertex_values,), repeats),
            "bilateral": median_seconds(bilateral_filter if wide else tf.function(bilateral_filter), (values,), repeats),
            "spatial": median_seconds(tf.function(spatial_filter), (values,), repeats),
            "rest": median_seconds(tf.function(rest), (values, values, values), repeats),
        }
        # One build; per iteration one filter of each kind and the rest (the
        # two normalisations filter one channel, left out here).
        total = seconds["build"] + NUM_ITERATIONS * (
            seconds["bilateral"] + seconds["spatial"] + seconds["rest"]
        )
        print(
            f"| {name} | {seconds['build']:.3f} | {seconds['splat']:.3f} "
            f"| {seconds['blur']:.3f} | {seconds['slice']:.3f} | {seconds['bilateral']:.3f} | {seconds['spatial']:.3f} "
            f"| {seconds['rest']:.3f} | {seconds['rest'] / seconds['bilateral']:.2f} "
            f"| build + {NUM_ITERATIONS} x (filters + rest) = {total:.2f} |",
            flush=True,
        )
    return summary


def _scope(node_name: str) -> str:
    """The ``crf.SCOPES`` stage of a traced op: its first name scope that is one (``rest_3`` is ``rest``)."""
    for part in node_name.split("/"):
        stem = re.sub(r"_\d+$", "", part)
        if stem in crf.SCOPES:
            return stem
    return "other"


def in_the_graph(case_list, repeats: int) -> list:
    """Op time per stage of ``crf.dense_crf`` (what the layer runs), from one traced run of its graph."""
    print("\n2b. In the layer's own graph: op seconds per stage of one forward pass, from a traced run after "
          f"{repeats} untraced ones (two cores run ops side by side, so op seconds can exceed the wall time)")
    print("| case | wall time, traced run | lattices and norms (once) | spatial filter + C x C product + norm, "
          "per iteration | bilateral filter + C x C product, per iteration | softmax and sum (the rest), per iteration "
          "| rest / bilateral filter |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary = []
    for name, image, unaries in case_list:
        num_classes = unaries.shape[-1]
        identity = np.eye(num_classes, dtype=np.float32)
        with tf.Graph().as_default():
            unary_input = tf.compat.v1.placeholder(tf.float32, (1, None, None, num_classes))
            image_input = tf.compat.v1.placeholder(tf.uint8, (1, None, None, 3))
            refined = crf.dense_crf(unary_input, image_input, tf.constant(SPATIAL_WEIGHT * identity),
                                    tf.constant(BILATERAL_WEIGHT * identity), tf.constant(1 - identity),
                                    THETA_ALPHA, THETA_BETA, THETA_GAMMA, NUM_ITERATIONS)
            labels = tf.argmax(refined, axis=-1)
            with tf.compat.v1.Session() as session:
                feed = {unary_input: unaries[None], image_input: image[None]}
                for _ in range(max(repeats, 1)):
                    session.run(labels, feed)
                metadata = tf.compat.v1.RunMetadata()
                options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
                wall, _ = timed(lambda: session.run(labels, feed, options=options, run_metadata=metadata))
        seconds = dict.fromkeys((*crf.SCOPES, "other"), 0.0)
        for device_stats in metadata.step_stats.dev_stats:
            for node in device_stats.node_stats:
                seconds[_scope(node.node_name)] += node.op_end_rel_micros / 1e6
        per_iteration = {stage: seconds[stage] / NUM_ITERATIONS for stage in ("spatial", "bilateral", "rest")}
        ratio = per_iteration["rest"] / per_iteration["bilateral"]
        print(f"| {name} | {wall:.2f} s | {seconds['lattice'] + seconds['other']:.3f} | {per_iteration['spatial']:.3f} "
              f"| {per_iteration['bilateral']:.3f} | {per_iteration['rest']:.3f} | {ratio:.2f} |", flush=True)
        summary.append((f"CRF rest / bilateral filter per iteration, in the graph, {name}", f"{ratio:.2f}"))
    return summary


def _status_gib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), GiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    raise KeyError(field)


def training_child(kind: str, batch_size: int, repeats: int) -> None:
    """Times one training-side computation in this fresh process; prints seconds per image, peak and base GiB."""
    rng = np.random.default_rng(0)
    shape = (batch_size, TRAIN_HEIGHT, TRAIN_WIDTH)
    images = tf.constant(rng.integers(0, 256, shape + (3,)), tf.uint8)
    if kind == "crf":
        image, _ = decode.load_example(*datasets.list_split(SAMPLE_ROOT, "validation").pairs[0])
        resized = tf.cast(tf.round(tf.image.resize(image, (TRAIN_HEIGHT, TRAIN_WIDTH))), tf.uint8)
        images = tf.stack([resized if i % 2 == 0 else resized[:, ::-1] for i in range(batch_size)])
        unaries = tf.constant(rng.normal(0.0, 2.0, shape + (TRAIN_CLASSES,)), tf.float32)
        cotangent = tf.constant(rng.normal(0.0, 1.0, unaries.shape), tf.float32)
        layer = new_layer(TRAIN_CLASSES)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(unaries)
                loss = tf.reduce_sum(layer([unaries, images]) * cotangent)
            return tape.gradient(loss, [unaries] + layer.trainable_weights)

    else:
        import keras

        from fcn import model as model_lib

        model = model_lib.build_fcn8s(TRAIN_CLASSES)
        optimizer = keras.optimizers.Adam(1e-4)
        labels = tf.constant(rng.integers(0, TRAIN_CLASSES, shape), tf.int32)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

    base = _status_gib("VmRSS")
    seconds = median_seconds(step, (), repeats) / batch_size
    print(f"{seconds:.4f} {_status_gib('VmHWM'):.3f} {base:.3f}")


def training(repeats: int) -> None:
    print(
        f"\n3. Training at {TRAIN_WIDTH}x{TRAIN_HEIGHT}, C = {TRAIN_CLASSES}: seconds per image (median of {repeats} "
        "after a warm-up), each in a fresh process"
    )
    print("| computation | batch | s per image | peak resident memory | of which before the first call |")
    print("| --- | --- | --- | --- | --- |")
    rows = (("CRF-RNN forward + backward", "crf", 1), ("CRF-RNN forward + backward", "crf", 4),
            ("FCN-8s training step (build_fcn8s(150), Adam)", "fcn", 1))
    per_image = {}
    for title, kind, batch_size in rows:
        command = [sys.executable, os.path.abspath(__file__), "--training_child", f"{kind},{batch_size},{repeats}"]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
        seconds, peak, base = (float(x) for x in output[-3:])
        per_image[kind, batch_size] = seconds
        print(f"| {title} | {batch_size} | {seconds:.2f} | {peak:.2f} GiB | {base:.2f} GiB |", flush=True)
    return [(f"CRF forward + backward / FCN-8s step, per image, {TRAIN_WIDTH}x{TRAIN_HEIGHT}, C = {TRAIN_CLASSES}, batch {b}",
             f"{per_image['crf', b] / per_image['fcn', 1]:.2f}") for b in (1, 4)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the C = 21 fixture case only, no training part")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the median is shown)")
    parser.add_argument("--no_training", action="store_true", help="parts 1 and 2 only")
    parser.add_argument("--parts_only", action="store_true", help="part 2 only (where the time goes), every case")
    parser.add_argument("--training_only", action="store_true", help="part 3 only (training at 500x375, C = 150)")
    parser.add_argument("--smoke", action="store_true", help="a 64x48 crop at C = 5, one repeat, no training (for the tests)")
    parser.add_argument("--summary", help="write the headline ratios to this JSON file (bench/all.py)")
    parser.add_argument("--training_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.no_training = 1, True
    if args.training_child:
        kind, batch_size, repeats = args.training_child.split(",")
        training_child(kind, int(batch_size), int(repeats))
        return
    print(device.describe())
    print(f"load average at start: {load_average()}")
    summary = []
    if not args.training_only:
        case_list = cases(args.quick, args.smoke)
        if not args.parts_only:
            summary += side_by_side(case_list, args.repeats)
        summary += parts(case_list, args.repeats)
        summary += in_the_graph(case_list, args.repeats)
    if args.training_only or not (args.quick or args.no_training or args.parts_only):
        summary += training(args.repeats)
    summary.append(("load average at the end", load_average().split()[0]))
    common.write_summary(args.summary, "crf", summary)
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
