"""Tests of training (fcn/train.py) through the real command line, on the synthetic sample data."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from fcn import sample_data

# A small model and tiny crops keep each step well under a second on 2 CPU cores.
TINY = [
    "--config", "configs/sample.yaml", "--no_progress",
    "--crop_size", "32", "--batch_size", "2",
    "--set", "model.fc_channels=16", "--set", "train.val_images=4", "--set", "data.val_size=48",
]


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample") / "ADEChallengeData2016")
    sample_data.generate_sample_dataset(root, num_train=24, num_val=8, progress=False)
    return root


def fcn_command(*args):
    return [sys.executable, os.path.join(REPO, "FCN.py"), *args]


def run(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(fcn_command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def read_events(directory):
    """tag -> list of (step, kind, value) from every event file in ``directory``."""
    events = {}
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                tensor = tf.make_ndarray(value.tensor)
                events.setdefault(value.tag, []).append((event.step, plugin, tensor))
    return events


def checkpoint_weights(prefix):
    """Every variable of a checkpoint (model, optimizer state, counters), by name."""
    reader = tf.train.load_checkpoint(prefix)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if "OBJECT_GRAPH" not in name and not name.startswith("save_counter")  # how often this process saved
    }


def model_weights(logs_dir):
    """The model's variables in a run's latest checkpoint (the trainable ones are saved under the optimizer)."""
    weights = checkpoint_weights(tf.train.latest_checkpoint(os.path.join(logs_dir, "checkpoints")))
    return {
        name: value
        for name, value in weights.items()
        if name.startswith(("optimizer/_trainable_variables", "model/"))
    }


def test_debug_run_writes_scalars_images_and_histograms(tmp_path, sample_root):
    logs = str(tmp_path / "run")
    result = run(*TINY, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", "4", "--debug",
                 "--set", "train.summary_every=2", "--set", "train.val_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    train, validation = read_events(os.path.join(logs, "train")), read_events(os.path.join(logs, "validation"))
    for tag in ("loss", "learning_rate", "images_per_second"):
        assert [step for step, _, _ in train[tag]] == [2, 4]
        assert all(np.isfinite(v) for _, _, v in train[tag])
    assert np.isclose(train["learning_rate"][0][2], 1e-4)
    for tag in ("input", "ground_truth", "prediction"):
        assert train[tag][0][1] == "images" and validation[tag][0][1] == "images"
    for tag in ("loss", "pixel_accuracy", "mean_iou"):
        assert [step for step, _, _ in validation[tag]] == [0, 2, 4]  # validation at start, every 2 steps
        assert all(np.isfinite(v) for _, _, v in validation[tag])
    # The same tag in train/ and validation/ puts both loss curves in one chart.
    assert "loss" in train and "loss" in validation
    histograms = [tag for tag, values in train.items() if values[0][1] == "histograms"]
    assert "activations/block1_conv1" in histograms and "activations/fc7" in histograms
    assert any(tag.startswith("gradients/") for tag in histograms)
    assert any(tag.startswith("variables/") for tag in histograms)
    assert all(np.isfinite(v).all() for tag in histograms for _, _, v in train[tag])
    assert 0 <= train["activations/fc6/zero_fraction"][0][2] <= 1
    assert train["gradients/global_norm"][0][2] > 0
    assert [step for step, _, _ in train["activations/fc6"]] == [2, 4]  # summary steps only
    assert os.path.exists(os.path.join(logs, "config.yaml"))
    assert tf.train.latest_checkpoint(os.path.join(logs, "checkpoints")).endswith("ckpt-4")
    assert tf.train.latest_checkpoint(os.path.join(logs, "best")) is not None


def test_no_histograms_without_debug(tmp_path, sample_root):
    logs = str(tmp_path / "run")
    result = run(*TINY, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", "2", "--set", "train.summary_every=1")
    assert result.returncode == 0, result.stderr[-3000:]
    train = read_events(os.path.join(logs, "train"))
    assert "loss" in train and "prediction" in train
    assert not [tag for tag, values in train.items() if values[0][1] == "histograms"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, sample_root):
    common = [*TINY, "--data_dir", sample_root, "--set", "train.deterministic=true", "--set", "train.checkpoint_every=100",
              "--set", "train.val_every=100", "--set", "data.photometric=true"]
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    assert run(*common, "--logs_dir", whole, "--max_steps", "10").returncode == 0
    first = run(*common, "--logs_dir", split, "--max_steps", "6")
    assert first.returncode == 0
    second = run(*common, "--logs_dir", split, "--max_steps", "10")
    assert second.returncode == 0 and "resuming from" in second.stdout and "at step 6" in second.stdout
    a = checkpoint_weights(tf.train.latest_checkpoint(os.path.join(whole, "checkpoints")))
    b = checkpoint_weights(tf.train.latest_checkpoint(os.path.join(split, "checkpoints")))
    assert a.keys() == b.keys() and len(a) > 20
    # Deterministic ops on one CPU: bit-identical. The best validation mIoU may differ:
    # the split run also validated at its end, step 6.
    for name in a.keys() - {"best_mean_iou/.ATTRIBUTES/VARIABLE_VALUE"}:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # And the runs did train: the weights moved away from a fresh start.
    assert run(*common, "--logs_dir", str(tmp_path / "fresh"), "--max_steps", "1").returncode == 0
    c = checkpoint_weights(tf.train.latest_checkpoint(os.path.join(tmp_path, "fresh", "checkpoints")))
    assert any(not np.array_equal(a[name], c[name]) for name in a)


def test_sigterm_saves_and_the_run_resumes(tmp_path, sample_root):
    logs = str(tmp_path / "run")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(
        fcn_command(*TINY, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", "100000",
                    "--set", "train.checkpoint_every=100000", "--set", "train.val_every=100000", "--set", "train.summary_every=5"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    # Wait until training is under way: the first train summary is written at step 5.
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if "loss" in read_events(os.path.join(logs, "train")):
                break
        except tf.errors.DataLossError:  # a record still being written
            pass
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "SIGTERM: stopped at step" in stdout + stderr
    latest = tf.train.latest_checkpoint(os.path.join(logs, "checkpoints"))
    stopped_at = int(latest.rsplit("-", 1)[1])
    assert stopped_at >= 5
    resumed = run(*TINY, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", str(stopped_at + 2),
                  "--set", "train.val_every=100000")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped_at}" in resumed.stdout
    assert tf.train.latest_checkpoint(os.path.join(logs, "checkpoints")).endswith(f"ckpt-{stopped_at + 2}")


def test_killed_during_checkpoint_writes_leaves_a_restorable_latest(tmp_path, sample_root):
    logs = str(tmp_path / "run")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    args = [*TINY, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", "100000",
            "--set", "train.checkpoint_every=1", "--set", "train.keep_checkpoints=2", "--set", "train.val_every=100000"]
    rng = np.random.default_rng(0)
    for attempt in range(3):
        process = subprocess.Popen(fcn_command(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 240
        while time.time() < deadline and not tf.train.latest_checkpoint(os.path.join(logs, "checkpoints")):
            time.sleep(0.2)
        time.sleep(rng.uniform(0.5, 3.0))  # somewhere in the stream of checkpoint writes
        process.kill()
        process.wait()
        latest = tf.train.latest_checkpoint(os.path.join(logs, "checkpoints"))
        assert latest is not None
        weights = checkpoint_weights(latest)  # reads every tensor: fails on a half-written checkpoint
        assert all(np.isfinite(w).all() for w in weights.values() if w.dtype.kind == "f")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, sample_root):
    logs = str(tmp_path / "run")
    result = run(*TINY, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", "50", "--learning_rate", "1e30",
                 "--set", "train.checkpoint_every=1", "--set", "train.val_every=100000")
    assert result.returncode == 1
    message = result.stdout + result.stderr
    assert "training stopped: the loss became" in message
    bad_step = int(message.split("at step ")[-1].split(";")[0])
    latest = tf.train.latest_checkpoint(os.path.join(logs, "checkpoints"))
    assert latest.endswith(f"ckpt-{bad_step - 1}")


def test_init_from_starts_from_another_runs_weights(tmp_path, sample_root):
    source = str(tmp_path / "source")
    assert run(*TINY, "--data_dir", sample_root, "--logs_dir", source, "--max_steps", "2").returncode == 0
    target = str(tmp_path / "target")
    result = run(*TINY, "--data_dir", sample_root, "--logs_dir", target, "--max_steps", "1",
                 "--set", f"train.init_from={source}", "--set", "train.learning_rate=1e-30")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" not in result.stdout
    a = model_weights(source)
    b = model_weights(target)
    # One step at a learning rate of 1e-30 leaves the copied weights as they were (within float rounding).
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-12, err_msg=name)
    missing = run(*TINY, "--data_dir", sample_root, "--logs_dir", str(tmp_path / "x"), "--max_steps", "1",
                  "--set", f"train.init_from={tmp_path / 'nothing'}")
    assert missing.returncode == 1 and "no checkpoint there" in missing.stderr


def test_training_learns_the_sample_data(tmp_path):
    """From random weights, 80 steps on the sample data lift validation mIoU well above its start.

    At step 0 the score layers are zero, every pixel is predicted as class 0 (wall):
    mIoU ~0.014 and pixel accuracy ~0.17 on the 16 validation images. A model that
    only learned the class frequencies would predict one class: its mIoU stays
    below 0.05. Measured with the shipped sample config: mIoU 0.14-0.21 and pixel
    accuracy 0.40-0.51 after 50-75 steps.
    """
    logs = str(tmp_path / "run")
    result = run("--config", "configs/sample.yaml", "--no_progress", "--data_dir", str(tmp_path / "sample"),
                 "--logs_dir", logs, "--max_steps", "80", "--set", "train.val_every=80", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    validation = read_events(os.path.join(logs, "validation"))
    (start_step, _, start_iou), (end_step, _, end_iou) = validation["mean_iou"]
    (_, _, start_accuracy), (_, _, end_accuracy) = validation["pixel_accuracy"]
    assert (start_step, end_step) == (0, 80)
    assert start_iou < 0.03 and start_accuracy < 0.25
    assert end_iou > 0.1 and end_iou > 4 * start_iou
    assert end_accuracy > 0.35
