"""Shared test helpers: the real ADE20K samples and small datasets written to disk."""

import os
import subprocess
import sys

import forkserver
import numpy as np
import pytest
from PIL import Image

from fcn import datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Two logical CPU devices in every process that runs tests, so that a MirroredStrategy of two replicas runs
# in-process (``two_replicas``). Devices can be split only before TensorFlow first uses them, hence before
# collection. Ops without a device still run on the first; the two share the process's thread pools.
CPU_REPLICAS = ("/cpu:0", "/cpu:1")


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # the pytest-xdist controller runs no test: it need not import TensorFlow
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * len(CPU_REPLICAS))


@pytest.fixture
def two_replicas():
    """A MirroredStrategy over the two logical CPU devices."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(list(CPU_REPLICAS))


# Starts Python as a shell in a terminal does: Ctrl-C at its default disposition. A test run started in the
# background (``pytest &`` in a script, some CI runners) ignores SIGINT, every child inherits that, and a
# Python started so never sees a Ctrl-C; this resets it, then becomes the interpreter the test asked for.
TERMINAL_LAUNCHER = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


# Three real ADE20K validation pairs, copied from the SceneParsing sample data.
SAMPLE_ROOT = os.path.join(REPO, "tests", "fixtures", "ADEChallengeData2016")

# The model the tests train and run: FCN-8s with an eighth of VGG16's channels and 16-wide fc6/fc7,
# from random weights. The same network as the full one at about 1/64 of its arithmetic.
NARROW_WIDTH = 0.125
NARROW_FC = 16
NARROW_OVERRIDES = [("model.fc_channels", NARROW_FC), ("model.width", NARROW_WIDTH), ("model.vgg_weights", "none")]
NARROW_FLAGS = [flag for key, value in NARROW_OVERRIDES for flag in ("--set", f"{key}={value}")]


def write_pair(root, split, stem, image, label, image_format="JPEG", image_mode=None):
    """Writes one ADE20K-layout pair and returns (image path, annotation path).

    Args:
      root: dataset root.
      split: training or validation.
      stem: file stem, e.g. ADE_train_00000001.
      image: uint8 array (H, W, 3) RGB, or None to skip the image.
      label: uint8 array (H, W) of ADE20K label values (0..150), or None.
      image_format: JPEG or PNG.
      image_mode: PIL mode to convert the image to before saving (L, RGBA, CMYK).
    """
    image_dir = os.path.join(root, "images", split)
    annotation_dir = os.path.join(root, "annotations", split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(annotation_dir, exist_ok=True)
    extension = ".jpg" if image_format == "JPEG" else ".png"
    image_path = os.path.join(image_dir, stem + extension)
    annotation_path = os.path.join(annotation_dir, stem + ".png")
    if image is not None:
        picture = Image.fromarray(np.asarray(image, np.uint8))
        if image_mode:
            picture = picture.convert(image_mode)
        picture.save(image_path, format=image_format, quality=95)
    if label is not None:
        Image.fromarray(np.asarray(label, np.uint8)).save(annotation_path)
    return image_path, annotation_path


@pytest.fixture(autouse=True)
def float32_policy():
    """``train.setup_process`` sets the process-wide precision policy: each test starts and ends with float32."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# The sample config on tiny crops, for training through the command line.
TINY_TRAINING = ["--config", "configs/sample.yaml", "--no_progress", "--crop_size", "32", "--batch_size", "2", *NARROW_FLAGS,
                 "--set", "train.val_images=2", "--set", "data.val_size=48"]  # fmt: skip


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(dataset root, run directory) after a 1-step sample training through the CLI (``TINY_TRAINING``, summaries
    at every step, no --debug).

    Trained once per test process, for the tests that only read a run: they must not change it.
    """

    root = str(tmp_path_factory.mktemp("sample") / "ADEChallengeData2016")
    datasets.generate_sample_dataset(root, num_train=8, num_val=6, progress=False)
    logs = str(tmp_path_factory.mktemp("trained_run"))
    result = run_fcn(*TINY_TRAINING, "--data_dir", root, "--logs_dir", logs, "--max_steps", "1", "--set", "train.summary_every=1")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, logs


def narrow_fcn8s(num_classes=150, **kwargs):
    """``build_fcn8s`` with the tests' narrow trunk (``NARROW_OVERRIDES``)."""
    from fcn import model as model_lib

    return model_lib.build_fcn8s(num_classes, **{"fc_channels": NARROW_FC, "width": NARROW_WIDTH, **kwargs})


def save_run(logs_dir, data_dir, fixed_class=None, seed=0, fc_channels=NARROW_FC):
    """A run directory with a tiny FCN-8s checkpoint, as inference modes find it.

    Writes ``logs_dir/config.yaml`` and ``logs_dir/checkpoints/ckpt-1`` holding
    ``tf.train.Checkpoint(model=...)``, as training does.

    Args:
      fixed_class: a train id the model then predicts at every pixel (its
        score_fr bias is the only non-zero score weight), or None for random
        score_fr weights, so predictions vary over the image.

    Returns:
      (the resolved config, the Keras model saved).
    """
    import keras
    import tensorflow as tf

    from fcn import config as config_lib
    from fcn import model as model_lib

    config = config_lib.load_config(
        None,
        [("logs_dir", str(logs_dir)), ("data.data_dir", str(data_dir)), *NARROW_OVERRIDES, ("model.fc_channels", fc_channels)],
    )
    keras.utils.set_random_seed(seed)
    model = model_lib.build_from_config(config.model, config.data.num_classes or 150)
    score = model.get_layer("score_fr")
    if fixed_class is None:
        kernel = np.random.default_rng(seed).normal(0, 1, score.kernel.shape).astype(np.float32)
        score.kernel.assign(kernel)
    else:
        bias = np.zeros(score.bias.shape, np.float32)
        bias[fixed_class] = 1.0  # bilinear upsampling keeps it positive everywhere; every other logit stays 0
        score.bias.assign(bias)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), os.path.join(str(logs_dir), "checkpoints"), 1)
    manager.save(checkpoint_number=1)
    config_lib.save_config(config, str(logs_dir))
    return config, model


def run_fcn(*args, timeout=600, subprocess_=None):
    """Runs FCN.py's command line as a user does; returns a ``subprocess.CompletedProcess``.

    ``FCN.main`` runs in this process, with its standard output and error
    captured, which spares each call the start of an interpreter and of
    TensorFlow. A training run that changes what cannot be undone in a process
    (logical devices, op determinism, a cluster) runs in a child process, as
    does any call with ``subprocess_=True``: a child forked from a process that
    has TensorFlow imported (``tests/forkserver.py``). The precision policy
    training sets is reset after every test (``float32_policy``).
    """
    import contextlib
    import io

    mode = "train"
    for k, arg in enumerate(args):
        if arg.startswith("--mode="):
            mode = arg.split("=", 1)[1]
        elif arg == "--mode" and k + 1 < len(args):
            mode = args[k + 1]
    if subprocess_ is None:
        lasting = ("train.deterministic=true", "train.cpu_devices", "--strategy", "train.strategy")
        subprocess_ = mode == "train" and any(key in arg for arg in args for key in lasting)
    command = [sys.executable, os.path.join(REPO, "FCN.py"), *args]
    if subprocess_:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        return forkserver.run(command, REPO, env, timeout=timeout)
    import FCN

    stdout, stderr = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(REPO)  # as the child process would: relative paths (configs/...) are the repository's
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                status = FCN.main(list(args))
            except SystemExit as exit_:  # argparse's usage errors
                status = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(command, status, stdout.getvalue(), stderr.getvalue())


def bilinear_resize(array, height, width):
    """Bilinear resize of a (B, h, w, C) array to (B, height, width, C), written out in numpy.

    Half-pixel centres without antialiasing, the convention of TensorFlow 2's
    ``tf.image.resize(method="bilinear")``: output pixel i samples the input at
    (i + 0.5) * h / height - 0.5, clamped to the border. Independent of
    TensorFlow, so that tests of multi-scale inference do not share its code.
    """
    array = np.asarray(array, np.float64)

    def taps(size, source_size):  # per output index: lower and upper source index, weight of the upper
        position = np.clip((np.arange(size) + 0.5) * (source_size / size) - 0.5, 0, source_size - 1)
        lower = np.floor(position).astype(int)
        return lower, np.minimum(lower + 1, source_size - 1), position - lower

    top, bottom, row_weight = taps(height, array.shape[1])
    left, right, column_weight = taps(width, array.shape[2])
    row_weight = row_weight[None, :, None, None]
    rows = array[:, top] * (1 - row_weight) + array[:, bottom] * row_weight  # (B, height, w, C)
    column_weight = column_weight[None, None, :, None]
    return rows[:, :, left] * (1 - column_weight) + rows[:, :, right] * column_weight


def multi_scale_probabilities(model, images, scales=(1.0,), flip=False):
    """The documented multi-scale and flip inference, computed view by view in numpy.

    For every scale (and, with ``flip``, for the mirrored image too) the image
    is resized to round(size x scale), the model runs on it, its logits are
    mirrored back and resized to the image's size, and their softmax is taken;
    the result is the mean of those probabilities over the views.

    Args:
      model: images float32 (B, h, w, 3) -> logits (B, h, w, C).
      images: uint8 (B, H, W, 3).

    Returns:
      float64 (B, H, W, C).
    """
    images = np.asarray(images, np.float64)
    height, width = images.shape[1:3]
    views = []
    for scale in scales:
        scaled = bilinear_resize(images, max(round(height * scale), 1), max(round(width * scale), 1))
        for flipped in (False, True) if flip else (False,):
            view = scaled[:, :, ::-1] if flipped else scaled
            logits = np.asarray(model(np.ascontiguousarray(view, np.float32), training=False), np.float64)
            logits = bilinear_resize(logits[:, :, ::-1] if flipped else logits, height, width)
            exponentials = np.exp(logits - logits.max(-1, keepdims=True))
            views.append(exponentials / exponentials.sum(-1, keepdims=True))
    return np.mean(views, axis=0)


def clear_argmax(probabilities, margin=1e-3, min_clear=0.8):
    """The argmax of ``probabilities`` (..., C) and where it is clear of near ties.

    float32 inference and a float64 reference round differently (by up to
    about 1e-4 in a probability), which may swap classes whose probabilities
    are that close; tests compare labels only where the best class leads the
    second by more than ``margin``, and assert that this is most pixels.

    Returns:
      (labels (...), boolean mask (...) of the pixels with a clear best class).
    """
    probabilities = np.asarray(probabilities)
    second, first = np.moveaxis(np.sort(probabilities, axis=-1)[..., -2:], -1, 0)
    clear = first - second > margin
    assert clear.mean() >= min_clear, f"only {clear.mean():.3f} of the pixels have a clear best class"
    return probabilities.argmax(-1), clear


def file_digests(folder) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``: what a test compares before and after."""
    import hashlib

    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return found
