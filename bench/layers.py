"""Where a training step's time goes: every convolution's three products, the update, the rest.

For FCN-8s (150 classes, fc6/fc7 4096) at one crop size and batch, times
each convolution layer's forward product, input gradient and kernel gradient
as the TensorFlow ops the training step runs for them, alone, on random
tensors of the layer's shapes:

- ``Conv2D``: ``tf.nn.conv2d``, ``Conv2DBackpropInput``, ``Conv2DBackpropFilter``;
- fc6 and fc7 (``PatchConv2D``, 7x7 and 1x1): the patch matrix and its
  product with the kernel, the products back to the patches plus the
  patches' own gradient (slices summed back; for fc7's 1x1 kernel the patch
  matrix is the input itself, nothing to gather), and the kernel's product
  with the patches; beside them, marked "not used", MatMul's own gradient
  for the input and the plain convolution (7x7, 1x1) each replaces;
- ``Conv2DTranspose``: the same three ops with their roles swapped.

block1_conv1's input gradient is not computed by a step (the images need no
gradient) and is left out. Then the Adam update of every trainable variable
with fixed gradients (the optimizer of ``fcn.train.create_train_state``)
with the step's finite check of weights and slots, as the step runs them
(``fcn.optimizer.FusedAdam``, one sum per variable) and, for comparison,
Keras' Adam as plain ops and compiled by XLA; and the
real step (``fcn.train.make_train_step``) itself, in the same process; "rest"
is the step minus the sum of the parts (bias, ReLU, pooling, dropout, loss,
upsampling, gradient sums, scheduling). Every row is set beside the 3x3
convolution peak of ``bench/model.py`` measured at the start and the end of
the run.

Each op is one warm-up and ``--repeats`` timed runs (median). Only the ratios
within one run mean anything: absolute times move with machine load.

Usage, from the repo root::

    python bench/layers.py [--size 256] [--batch 8] [--repeats 2] [--no_step] [--no_update] [--only fc6,fc7]
        [--step_repeats 1] [--conv2d_fc7_step]

``--conv2d_fc7_step`` also builds the step of the same network with fc7 a
plain keras ``Conv2D`` (as it was before it became a 1x1 ``PatchConv2D``; the
same weights, its own Adam) and times it in turns with the real step (order
alternating, ``--step_repeats`` each, after two warm-up rounds), so the whole
step is compared with its alternative in one process.
"""

import argparse
import dataclasses
import os
import statistics
import time
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the table readable

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import device  # noqa: E402  (bench/ is on sys.path as the script's folder)
from fcn import model as model_lib  # noqa: E402
from fcn import train  # noqa: E402
from fcn import train_state  # noqa: E402
from fcn.config import load_config  # noqa: E402
import common  # noqa: E402
from common import conv_flops, conv_layer_shapes, make_training_root, measure_peak, print_peaks, print_table, time_runs  # noqa: E402

NUM_CLASSES = 150


def random(shape, seed: int) -> tf.Tensor:
    return tf.random.stateless_normal(shape, seed=(seed, 0), dtype=tf.float32)


def conv_ops(layer, input_shape, output_shape, seed: int) -> dict[str, callable]:
    """Forward, input-gradient and kernel-gradient ops of one layer on its shapes: name -> no-argument function."""
    kernel = random(tuple(layer.kernel.shape), seed)
    x, dy = random(input_shape, seed + 1), random(output_shape, seed + 2)
    strides = [1, *layer.strides, 1]
    padding = layer.padding.upper()
    compiled = lambda f: tf.function(f, jit_compile=False)  # noqa: E731

    if isinstance(layer, keras.layers.Conv2DTranspose):
        # Keras' kernel is (kh, kw, out, in): the forward product is a Conv2D's input gradient.
        return {
            "forward": compiled(lambda: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=output_shape, filter=kernel, out_backprop=x, strides=strides, padding=padding)),
            "input gradient": compiled(lambda: tf.nn.conv2d(dy, kernel, strides, padding)),
            "kernel gradient": compiled(lambda: tf.raw_ops.Conv2DBackpropFilter(
                input=dy, filter_sizes=kernel.shape, out_backprop=x, strides=strides, padding=padding)),
        }
    if isinstance(layer, model_lib.PatchConv2D):
        # The layer's product (fcn.model._patch_product) is one 2-D MatMul of the flattened patches by the kernel
        # matrix; its gradients are (K dy^T)^T for the patches and patches^T dy for the kernel. TensorFlow's own
        # MatMul gradient would take dy K^T for the patches: timed beside it, as are the convolution's own ops.
        # A 1x1 kernel (fc7) has the input as its patch matrix: no patches' gradient of its own.
        matrix = tf.reshape(kernel, (-1, layer.filters))  # (kh*kw*in, out)
        flat_dy = tf.reshape(dy, (-1, layer.filters))  # (B*H*W, out)
        flat_patches = tf.reshape(layer._patches(x), (-1, matrix.shape[0]))  # (B*H*W, kh*kw*in)
        patches_shape = (*input_shape[:3], matrix.shape[0])

        def patches_gradient(patch_gradient):
            with tf.GradientTape() as tape:
                tape.watch(x)
                built = layer._patches(x)
            return tape.gradient(built, x, output_gradients=tf.reshape(patch_gradient, patches_shape))

        ops = {
            "forward": compiled(lambda: tf.matmul(tf.reshape(layer._patches(x), (-1, matrix.shape[0])), matrix)),
            "input gradient": compiled(
                lambda: patches_gradient(tf.transpose(tf.matmul(matrix, tf.transpose(flat_dy))))),
        }
        if layer.kernel_size != (1, 1):
            ops["  of which the patches' gradient"] = compiled(lambda: patches_gradient(flat_patches))
        ops.update({
            "input gradient as dy K^T, MatMul's own gradient (not used)": compiled(
                lambda: patches_gradient(tf.matmul(flat_dy, matrix, transpose_b=True))),
            "kernel gradient": compiled(lambda: tf.matmul(tf.transpose(flat_patches), flat_dy)),
            "forward as Conv2D (not used)": compiled(lambda: tf.nn.conv2d(x, kernel, strides, padding)),
            "input gradient as Conv2DBackpropInput (not used)": compiled(lambda: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=input_shape, filter=kernel, out_backprop=dy, strides=strides, padding=padding)),
            "kernel gradient as Conv2DBackpropFilter (not used)": compiled(lambda: tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=kernel.shape, out_backprop=dy, strides=strides, padding=padding)),
        })
        return ops
    ops = {"forward": compiled(lambda: tf.nn.conv2d(x, kernel, strides, padding))}
    if layer.name != "block1_conv1":
        ops["input gradient"] = compiled(lambda: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=input_shape, filter=kernel, out_backprop=dy, strides=strides, padding=padding))
    ops["kernel gradient"] = compiled(lambda: tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=kernel.shape, out_backprop=dy, strides=strides, padding=padding))
    return ops


def conv2d_fc7_state(state: train_state.TrainState, config) -> train_state.TrainState:
    """``state`` with fc7 a keras ``Conv2D`` (1x1, "same"), the same weights, and an Adam of its own."""

    def clone(layer):
        if layer.name == "fc7":
            return keras.layers.Conv2D(layer.filters, 1, padding="same", activation=layer.activation, name="fc7")
        return layer.__class__.from_config(layer.get_config())

    model = keras.models.clone_model(state.model, clone_function=clone)
    model.set_weights(state.model.get_weights())
    if type(model.get_layer("fc7")) is not keras.layers.Conv2D:
        raise SystemExit("--conv2d_fc7_step: the clone's fc7 is not a Conv2D")
    optimizer = keras.optimizers.Adam(learning_rate=config.train.learning_rate)
    optimizer.build(model.trainable_variables)
    return dataclasses.replace(state, model=model, optimizer=optimizer)


def alternate(runs: dict[str, callable], repeats: int) -> dict[str, list[float]]:
    """Two warm-up rounds, then ``repeats`` timed rounds, order alternating (A B, B A, ...): name -> seconds.

    The first call of one after the other's first calls can take twice its time (memory being laid out for
    two models): the second warm-up round takes that.
    """
    for run in (*runs.values(), *runs.values()):
        float(run())
    seconds = {name: [] for name in runs}
    for round_index in range(repeats):
        order = list(runs) if round_index % 2 == 0 else list(runs)[::-1]
        for name in order:
            start = time.perf_counter()
            float(runs[name]())
            seconds[name].append(time.perf_counter() - start)
    return seconds


def update_ops(state: train_state.TrainState) -> dict[str, callable]:
    """The update of all trainable variables with fixed gradients: as the step runs it, and the alternatives.

    The step (``fcn.train.make_train_step``) runs ``fcn.optimizer.FusedAdam``
    (one ``ResourceApplyAdam`` kernel per variable) and then checks weights and
    slots with one sum per variable. Beside them, not used: Keras' own Adam
    as plain ops and compiled by XLA (on a second set of slots), and the finite
    check as ``is_finite`` of every value.
    """
    variables = state.model.trainable_variables
    gradients = [1e-3 * random(tuple(v.shape), 100 + i) for i, v in enumerate(variables)]
    checked = variables + [v for v in state.optimizer.variables if tf.as_dtype(v.dtype).is_floating]
    keras_adam = keras.optimizers.Adam(learning_rate=1e-4)
    keras_adam.build(variables)

    def apply(optimizer):
        def run():
            optimizer.apply_gradients(zip(gradients, variables))
            return tf.constant(0)

        return run

    def check():
        return tf.math.is_finite(tf.add_n([tf.reduce_sum(v) for v in checked]))

    def check_every_value():
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in checked])

    def apply_and_check():
        apply(state.optimizer)()
        return check()

    return {
        "Adam update (fused) + finite check (sums), as the step runs it": tf.function(apply_and_check),
        "of which the fused Adam update": tf.function(apply(state.optimizer)),
        "of which the finite check, one sum per variable": tf.function(check),
        "finite check, is_finite of every value (not used)": tf.function(check_every_value),
        "Keras Adam update, plain ops (not used)": tf.function(apply(keras_adam)),
        "Keras Adam update, compiled by XLA (not used)": tf.function(apply(keras_adam), jit_compile=True),
    }


def main(argv=None) -> None:
    """Runs the measurements and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="square crop size")
    parser.add_argument("--batch", type=int, default=8, help="batch size")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per op, after one warm-up")
    parser.add_argument("--step_repeats", type=int, default=1, help="timed runs of the whole step, after one warm-up")
    parser.add_argument("--no_step", action="store_true", help="leave out the whole step (and so the 'rest' row)")
    parser.add_argument("--no_update", action="store_true", help="leave out the Adam update and the finite check")
    parser.add_argument("--only", default="", help="comma-separated layer names to time (default: all)")
    parser.add_argument("--conv2d_fc7_step", action="store_true",
                        help="also time the step with fc7 a keras Conv2D, in turns with the real step")
    parser.add_argument("--smoke", action="store_true", help="32x32 batch 1, VGG an eighth wide, fc6/fc7 64 wide, one run each (for the tests)")
    parser.add_argument("--summary", help="write the headline ratios to this JSON file (bench/all.py)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.batch, args.repeats, args.step_repeats, args.conv2d_fc7_step = 32, 1, 1, 1, True

    with tempfile.TemporaryDirectory(prefix="fcn-bench-layers-") as work_dir:
        config = load_config(None, [
            ("model.fc_channels", 64 if args.smoke else 4096),
            *([("model.width", 0.125), ("model.pretrained_weights", "none")] if args.smoke else []),
            ("data.data_dir", make_training_root(os.path.join(work_dir, "data"))),
            ("logs_dir", os.path.join(work_dir, "logs")),
        ])
        strategy = train.setup_process(config)  # before anything initialises TensorFlow's devices
        tf.get_logger().setLevel("ERROR")
        load_at_start = os.getloadavg()[0]
        peaks = [measure_peak()]
        state = train_state.create_train_state(config, strategy)
        model = state.model
        only = {name for name in args.only.split(",") if name}
        forward_flops = {name: flops * args.batch for name, flops in conv_flops(model, args.size, args.size).items()}

        rows = []  # (layer, what, FLOPs or 0, seconds)
        for index, (layer, input_shape, output_shape) in enumerate(conv_layer_shapes(model, args.size, args.size)):
            if only and layer.name not in only:
                continue
            input_shape = (args.batch, *input_shape[1:])
            output_shape = (args.batch, *output_shape[1:])
            for what, op in conv_ops(layer, input_shape, output_shape, seed=10 * index).items():
                seconds, _ = time_runs(op, args.repeats)
                rows.append((layer.name, what, forward_flops[layer.name], seconds))
                print(f"  {layer.name} {what}: {seconds:.3f} s", flush=True)

        if not args.no_update:
            for what, op in update_ops(state).items():
                seconds, _ = time_runs(op, args.repeats)
                rows.append(("all variables", what, 0, seconds))
                print(f"  {what}: {seconds:.3f} s", flush=True)

        step_seconds = peer_seconds = None
        if not args.no_step:
            step = train.make_train_step(state, config, strategy)
            images = tf.cast(tf.random.stateless_uniform((args.batch, args.size, args.size, 3), (1, 2), 0, 256, tf.int32), tf.uint8)
            labels = tf.cast(tf.random.stateless_uniform((args.batch, args.size, args.size), (3, 4), 0, NUM_CLASSES, tf.int32), tf.uint8)
            if args.conv2d_fc7_step:
                peer = train.make_train_step(conv2d_fc7_state(state, config), config, strategy)
                turns = alternate({"step": lambda: step(images, labels).loss,
                                   "peer": lambda: peer(images, labels).loss}, args.step_repeats)
                step_seconds, peer_seconds = (statistics.median(turns[name]) for name in ("step", "peer"))
                ratios = [b / a for a, b in zip(turns["step"], turns["peer"])]
                print(f"  training step: {' '.join(f'{x:.2f}' for x in turns['step'])} s; with fc7 as Conv2D: "
                      f"{' '.join(f'{x:.2f}' for x in turns['peer'])} s", flush=True)
            else:
                step_seconds, _ = time_runs(lambda: step(images, labels).loss, args.step_repeats)
                print(f"  training step: {step_seconds:.3f} s", flush=True)
        peaks.append(measure_peak())
        load_at_end = os.getloadavg()[0]

    peak_rate = max(rate for rate, _, _ in peaks)
    print()
    print(device.describe())
    print(
        f"FCN-8s ({model.count_params():,} parameters) at {args.size}x{args.size}, batch {args.batch}, float32; "
        f"median of {args.repeats} runs per op after 1 warm-up; 1-minute load average {load_at_start:.2f} at start, "
        f"{load_at_end:.2f} at end"
    )
    print()
    counted = [row for row in rows if row_counted(row[1])]
    parts_seconds = sum(seconds for _, _, _, seconds in counted)
    table = []
    for layer, what, flops, seconds in rows:
        flops = 0 if "of which" in what else flops
        rate = flops / seconds / 1e9 if flops else 0.0
        share = f"{seconds / step_seconds:.1%}" if step_seconds and row_counted(what) else ""
        table.append((layer, what, f"{flops / 1e9:.1f}" if flops else "", f"{seconds:.3f}",
                      f"{rate:.0f}" if flops else "", f"{rate / peak_rate:.2f}" if flops else "", share))
    conv_seconds = sum(seconds for _, _, flops, seconds in counted if flops)
    conv_flops_total = sum(flops for _, _, flops, _ in counted if flops)
    table.append(("all convolutions", "sum", f"{conv_flops_total / 1e9:.0f}", f"{conv_seconds:.2f}",
                  f"{conv_flops_total / conv_seconds / 1e9:.0f}", f"{conv_flops_total / conv_seconds / 1e9 / peak_rate:.2f}",
                  f"{conv_seconds / step_seconds:.1%}" if step_seconds else ""))
    if step_seconds:
        step_flops = 3 * sum(forward_flops.values())
        table.append(("training step", "make_train_step", f"{step_flops / 1e9:.0f}", f"{step_seconds:.2f}",
                      f"{step_flops / step_seconds / 1e9:.0f}", f"{step_flops / step_seconds / 1e9 / peak_rate:.2f}", "100%"))
        table.append(("rest", "step - sum of the parts", "", f"{step_seconds - parts_seconds:.2f}", "", "",
                      f"{(step_seconds - parts_seconds) / step_seconds:.1%}"))
        if peer_seconds:
            table.append(("training step", "with fc7 as Conv2D (not used)", f"{step_flops / 1e9:.0f}",
                          f"{peer_seconds:.2f}", f"{step_flops / peer_seconds / 1e9:.0f}",
                          f"{step_flops / peer_seconds / 1e9 / peak_rate:.2f}", ""))
    print_table(("layer", "op", "GFLOP", "s", "GFLOP/s", "/peak", "of step"), table)
    summary = [(f"all convolutions {args.size}x{args.size} batch {args.batch} / 3x3 conv peak",
                f"{conv_flops_total / conv_seconds / 1e9 / peak_rate:.2f}")]
    if step_seconds:
        summary.append((f"all convolutions / training step {args.size}x{args.size} batch {args.batch}",
                        f"{conv_seconds / step_seconds:.2f}"))
    common.write_summary(args.summary, "layers", summary)
    print()
    if peer_seconds:
        print(f"step with fc7 as Conv2D / step, per turn ({args.step_repeats} turns, order alternating): "
              f"{' '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f}")
    print_peaks(peaks, peak_rate, max(rate / share for rate, _, share in peaks))
    print("GFLOP: 2 x multiply-adds of the layer's forward product; each gradient counts the same. The training step "
          "counts 3 x the forward FLOPs of all layers (bench/model.py's convention; block1_conv1's input gradient, "
          "counted there, is not computed).")


def row_counted(what: str) -> bool:
    """Whether a row is part of the step as it runs (not an alternative, not a part of another row)."""
    return "(not used)" not in what and " as " not in what.replace("as the step runs it", "") and "of which" not in what


if __name__ == "__main__":
    main()
