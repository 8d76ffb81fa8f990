"""Tests of training (fcn/train.py): in-process on the synthetic sample data, and the CLI where a process is needed."""

import glob
import os
import signal
import sys
import time

import forkserver
import numpy as np
import pytest
import tensorflow as tf
from conftest import NARROW_FLAGS, NARROW_OVERRIDES, REPO, run_fcn

from fcn import checkpoints, datasets, inference, summaries, train
from fcn import config as config_lib

# A small model and tiny crops keep each step well under a second on 2 CPU cores.
TINY = [
    "--config", "configs/sample.yaml", "--no_progress",
    "--crop_size", "32", "--batch_size", "2", *NARROW_FLAGS,
    "--set", "train.val_images=4", "--set", "data.val_size=48",
]
TINY_OVERRIDES = [
    ("data.crop_size", "32"), ("train.batch_size", 2), *NARROW_OVERRIDES, ("train.val_images", 4), ("data.val_size", "48"),
]
# A checkpoint at every step, the last two kept, no validation.
CHECKPOINTED = [("train.checkpoint_every", 1), ("train.keep_checkpoints", 2), ("train.val_every", 100000)]
LOSS, PIXEL_ACCURACY, MEAN_IOU = (summaries.scalar_tag(n) for n in ("loss", "pixel_accuracy", "mean_iou"))


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample") / "ADEChallengeData2016")
    datasets.generate_sample_dataset(root, num_train=24, num_val=8, progress=False)
    return root


def tiny_config(logs_dir, root, *overrides):
    """The sample config with the tiny settings, run directory ``logs_dir`` and dataset ``root``."""
    return config_lib.load_config(
        os.path.join(REPO, "configs", "sample.yaml"),
        [("data.data_dir", str(root)), ("logs_dir", str(logs_dir)), *TINY_OVERRIDES, *overrides],
    )


def train_here(config, root):
    """Trains in this process, as FCN.py does: process set-up, then the run."""
    return train.train(config, root, train.setup_process(config), progress=False)


def fcn_command(*args):
    return [sys.executable, os.path.join(REPO, "FCN.py"), *args]


def start(*args):
    """FCN.py in a child process of its own (forked with TensorFlow imported: ``tests/forkserver.py``)."""
    return forkserver.Process(fcn_command(*args), REPO, dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def run(*args, timeout=600):
    """FCN.py run to its end in a child process; a ``subprocess.CompletedProcess``."""
    return run_fcn(*args, timeout=timeout, subprocess_=True)


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


def latest(logs_dir, folder=checkpoints.CHECKPOINTS_DIR):
    return tf.train.latest_checkpoint(os.path.join(str(logs_dir), folder))


def model_weights(logs_dir):
    """The model's variables in a run's latest checkpoint (the trainable ones are saved under the optimizer)."""
    weights = checkpoint_weights(latest(logs_dir))
    return {
        name: value
        for name, value in weights.items()
        if name.startswith(("optimizer/_trainable_variables", "model/"))
    }


def assert_same_checkpoints(a, b, exclude=()):
    wa, wb = checkpoint_weights(a), checkpoint_weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 20
    for name in wa.keys() - set(exclude):
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


# ---------------------------------------------------------------------------
# Summaries, validation, retention.


@pytest.mark.slow  # a command-line training with --debug
def test_debug_run_writes_scalars_images_and_histograms(tmp_path, sample_root):
    logs = tmp_path / "run"
    config = tiny_config(logs, sample_root, ("train.max_steps", 4), ("train.debug", True), ("train.summary_every", 2),
                         ("train.val_every", 2), ("train.checkpoint_every", 1), ("train.keep_checkpoints", 2))
    result = train_here(config, sample_root)
    assert result.status == "finished" and result.step == 4
    events_train, validation = read_events(logs / "train"), read_events(logs / "validation")
    for name in ("loss", "learning_rate", "images_per_second"):
        tag = summaries.scalar_tag(name)
        assert [step for step, _, _ in events_train[tag]] == [2, 4]
        assert all(np.isfinite(v) for _, _, v in events_train[tag])
    assert np.isclose(events_train[summaries.scalar_tag("learning_rate")][0][2], 1e-4)
    for tag in ("input", "ground_truth", "prediction"):
        assert events_train[tag][0][1] == "images" and validation[tag][0][1] == "images"
    for tag in (LOSS, PIXEL_ACCURACY, MEAN_IOU):
        assert [step for step, _, _ in validation[tag]] == [0, 2, 4]  # validation at start, every 2 steps
        assert all(np.isfinite(v) for _, _, v in validation[tag])
    # The same tag in train/ and validation/ puts both loss curves in one chart.
    assert LOSS in events_train and LOSS in validation
    histograms = [tag for tag, values in events_train.items() if values[0][1] == "histograms"]
    assert "activations/block1_conv1" in histograms and "activations/fc7" in histograms
    assert any(tag.startswith("gradients/") for tag in histograms)
    assert any(tag.startswith("variables/") for tag in histograms)
    # ReLU outputs of a He-initialised layer: a good part are zero, a good part are not.
    assert 0.1 < events_train["activations/fc6/zero_fraction"][0][2] < 0.9
    assert events_train["gradients/global_norm"][0][2] > 0
    assert [step for step, _, _ in events_train["activations/fc6"]] == [2, 4]  # summary steps only
    # keep_checkpoints=2: the last two; best/: the step of the highest validation mIoU (the first of ties).
    assert checkpoints.checkpoint_steps(str(logs / "checkpoints")) == [4, 3]
    ious = {step: float(v) for step, _, v in validation[MEAN_IOU]}
    best_step = max(sorted(ious), key=lambda s: (ious[s], -s))
    assert checkpoints.step_of(latest(logs, "best")) == best_step


def test_no_histograms_without_debug(trained_run):
    _, logs = trained_run  # trained without --debug, summaries at every step
    events_train = read_events(os.path.join(logs, "train"))
    assert LOSS in events_train and "prediction" in events_train
    assert not [tag for tag, values in events_train.items() if values[0][1] == "histograms"]


# ---------------------------------------------------------------------------
# Resume and determinism.


@pytest.mark.slow  # trains 12 steps of a 256-wide model
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, sample_root):
    """A run stopped and resumed ends bit for bit where the uninterrupted run ends.

    Three trainers built in one process (nothing global in the trainer), at crop
    64 with the sample model's fc6 width, where the backward pass once raced with
    the updates. Crop 64: pool5 is 2x2, so gradients reach the VGG layers through
    fc6 (at crop 32 almost none do).
    """
    common = [("train.deterministic", True), ("train.checkpoint_every", 100), ("train.val_every", 100), ("data.photometric", True),
              ("data.crop_size", "64"), ("model.fc_channels", 256)]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train_here(tiny_config(whole, sample_root, *common, ("train.max_steps", 6)), sample_root).status == "finished"
    train_here(tiny_config(split, sample_root, *common, ("train.max_steps", 3)), sample_root)
    at_step_3 = checkpoint_weights(latest(split))
    resumed = train_here(tiny_config(split, sample_root, *common, ("train.max_steps", 6)), sample_root)
    assert resumed.step == 6 and resumed.checkpoint.endswith("ckpt-6")
    # Deterministic ops on one CPU: bit-identical. The best validation mIoU may differ:
    # the split run also validated at its end, step 3.
    assert_same_checkpoints(latest(whole), latest(split), exclude={"best_mean_iou/.ATTRIBUTES/VARIABLE_VALUE"})
    # And the resumed steps did train: the weights moved on from step 3, in the VGG layers too.
    at_step_6 = checkpoint_weights(latest(whole))
    for index in (0, 26):  # the model's trainable variables 0 and 26: block1_conv1's and fc6's kernels
        name = f"optimizer/_trainable_variables/{index}/.ATTRIBUTES/VARIABLE_VALUE"
        assert not np.array_equal(at_step_6[name], at_step_3[name]), index


# ---------------------------------------------------------------------------
# Checkpoints that cannot lie (the reproductions of the training-core issue).


@pytest.mark.slow  # trains up to 9 steps
def test_non_finite_weights_are_never_saved_and_a_rerun_recovers(tmp_path, sample_root):
    logs = tmp_path / "run"
    # Adam's first step moves every weight by about the learning rate: 1e30 gives a finite loss at
    # step 1 and weights whose loss is not finite.
    config = tiny_config(logs, sample_root, ("train.max_steps", 6), ("train.learning_rate", 1e30),
                         ("train.checkpoint_every", 1), ("train.val_every", 100000))
    result = train_here(config, sample_root)
    assert result.status == "non_finite" and result.step < 6
    for prefix in glob.glob(str(logs / "*" / "ckpt-*.index")):
        for name, value in checkpoint_weights(prefix[: -len(".index")]).items():
            assert value.dtype.kind != "f" or np.isfinite(value).all(), (prefix, name)
    # No checkpoint whose weights give a non-finite loss: a rerun at a sane rate trains on.
    rerun = train_here(tiny_config(logs, sample_root, ("train.max_steps", 3), ("train.checkpoint_every", 1),
                                   ("train.val_every", 100000)), sample_root)
    assert rerun.status == "finished" and rerun.step == 3
    assert np.isfinite(rerun.validation["loss"])


def test_saving_refuses_non_finite_variables(tmp_path):
    good = tf.Variable(np.ones(3, np.float32))
    bad = tf.Variable(np.array([1.0, np.nan, 2.0], np.float32), name="bad")
    checkpoint = tf.train.Checkpoint(good=good, bad=bad)
    with pytest.raises(checkpoints.NonFiniteError, match=r"step 7: 1 variables hold NaN or Inf \(bad"):
        checkpoints.save(checkpoint, str(tmp_path), 7, 3, [good, bad])
    assert not os.listdir(tmp_path)


def test_restore_refuses_a_non_finite_checkpoint_written_behind_saves_back(tmp_path, capsys):
    """``save`` never writes NaN; a checkpoint holding one anyway (another tool, a bad disk) is not restored."""
    directory = str(tmp_path / "checkpoints")
    weights = tf.Variable(np.arange(4, dtype=np.float32), name="weights")
    checkpoint = tf.train.Checkpoint(weights=weights)
    checkpoints.save(checkpoint, directory, 1, 3, [weights])  # intact
    weights.assign([0.0, np.nan, 2.0, 3.0])
    checkpoint.write(os.path.join(directory, "ckpt-2"))  # TensorFlow's own write: no check
    assert np.isnan(tf.train.load_checkpoint(os.path.join(directory, "ckpt-2")).get_tensor("weights/.ATTRIBUTES/VARIABLE_VALUE")[1])

    weights.assign([9.0, 9.0, 9.0, 9.0])
    assert checkpoints.restore(checkpoint, directory, [weights]).endswith("ckpt-1")  # the newest finite one
    np.testing.assert_array_equal(weights.numpy(), [0.0, 1.0, 2.0, 3.0])
    assert "ckpt-2 is damaged and was not used: it holds NaN or Inf in weights" in capsys.readouterr().err
    # Named alone, or the only one left: an error, never NaN weights.
    with pytest.raises(checkpoints.DamagedCheckpointError):
        checkpoints.restore(checkpoint, os.path.join(directory, "ckpt-2"), [weights])
    os.remove(os.path.join(directory, "ckpt-1.index"))
    with pytest.raises(checkpoints.DamagedCheckpointError):
        checkpoints.restore(checkpoint, directory, [weights])


@pytest.fixture(scope="module")
def trained_with_checkpoints(tmp_path_factory, sample_root):
    """A run directory with the checkpoints of steps 2 and 3 (trained once per module)."""
    logs = tmp_path_factory.mktemp("checkpointed") / "run"
    train_here(tiny_config(logs, sample_root, *CHECKPOINTED, ("train.max_steps", 3)), sample_root)
    assert checkpoints.checkpoint_steps(str(logs / "checkpoints")) == [3, 2]
    return logs


@pytest.fixture
def run_with_checkpoints(tmp_path, sample_root, trained_with_checkpoints):
    """A copy of ``trained_with_checkpoints`` for one test to damage, and the config that wrote it."""
    import shutil

    logs = tmp_path / "run"
    shutil.copytree(trained_with_checkpoints, logs)
    return logs, tiny_config(logs, sample_root, *CHECKPOINTED, ("train.max_steps", 3))


def data_file(logs, step):
    (path,) = glob.glob(str(logs / "checkpoints" / f"ckpt-{step}.data-*"))
    return path


def resume_to(logs, sample_root, steps, capsys):
    result = train_here(tiny_config(logs, sample_root, *CHECKPOINTED, ("train.max_steps", steps)), sample_root)
    return result, capsys.readouterr()


@pytest.mark.slow  # trains, damages a checkpoint, trains on
def test_truncated_newest_checkpoint_is_named_and_the_older_one_used(run_with_checkpoints, sample_root, capsys):

    logs, config = run_with_checkpoints
    path = data_file(logs, 3)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    # Inference falls back too, and says so.
    model, prefix = inference.restore_model(config)
    assert prefix.endswith("ckpt-2")
    assert "ckpt-3 is damaged" in capsys.readouterr().err
    result, output = resume_to(logs, sample_root, 4, capsys)
    assert "ckpt-3 is damaged and was not used" in output.out + output.err and "truncated" in output.out + output.err
    assert "resuming from" in output.out and "ckpt-2 at step 2" in output.out
    assert result.step == 4


@pytest.mark.slow  # trains, damages a checkpoint, trains on
def test_corrupt_checkpoint_data_fails_its_checksum_and_is_not_another_configuration(run_with_checkpoints, sample_root, capsys):
    logs, _ = run_with_checkpoints
    path = data_file(logs, 3)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # same length, other bytes: only the checksums can tell
        f.seek(size // 3)
        f.write(os.urandom(64))
    result, output = resume_to(logs, sample_root, 4, capsys)
    text = output.out + output.err
    assert "ckpt-3 is damaged" in text and "checksum" in text and "another model configuration" not in text
    assert "ckpt-2 at step 2" in output.out and result.step == 4


@pytest.mark.slow  # trains, damages a checkpoint, trains on
def test_missing_newest_index_never_restarts_from_step_0(run_with_checkpoints, sample_root, capsys):
    logs, _ = run_with_checkpoints
    os.remove(logs / "checkpoints" / "ckpt-3.index")
    result, output = resume_to(logs, sample_root, 4, capsys)
    assert "ckpt-3.index is missing" in output.out + output.err
    assert "ckpt-2 at step 2" in output.out and result.step == 4


@pytest.mark.slow  # trains, damages a checkpoint, trains on
def test_garbage_checkpoint_index_file_does_not_lose_the_run(run_with_checkpoints, sample_root, capsys):
    logs, _ = run_with_checkpoints
    (logs / "checkpoints" / "checkpoint").write_bytes(b"\x00garbage{{{")
    result, output = resume_to(logs, sample_root, 4, capsys)
    assert "resuming from" in output.out and "ckpt-3 at step 3" in output.out and result.step == 4
    assert latest(logs).endswith("ckpt-4")  # the index file is written anew


@pytest.mark.slow  # trains, then damages every checkpoint
def test_no_intact_checkpoint_is_an_error_not_a_new_run(run_with_checkpoints, sample_root, capsys):
    logs, config = run_with_checkpoints
    for step in (2, 3):
        with open(data_file(logs, step), "r+b") as f:
            f.truncate(100)
    before = sorted(os.listdir(logs / "checkpoints"))
    with pytest.raises(train.TrainingError, match=r"cannot resume: .*no intact checkpoint \(2 damaged: ckpt-3, ckpt-2\)"):
        train_here(config, sample_root)
    assert sorted(os.listdir(logs / "checkpoints")) == before  # nothing removed or overwritten
    # The CLI: a message and exit status 1, no traceback.
    result = run(*TINY, "--data_dir", sample_root, "--logs_dir", str(logs), "--max_steps", "4")
    assert result.returncode == 1 and "no intact checkpoint" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # trains in a child process
def test_another_configuration_is_named_as_such(run_with_checkpoints, sample_root):
    logs, _ = run_with_checkpoints
    other = tiny_config(logs, sample_root, ("train.max_steps", 4), ("model.fc_channels", 8))
    with pytest.raises(train.TrainingError, match="holds a run of another model configuration"):
        train_here(other, sample_root)


@pytest.mark.slow  # trains, then trains on over the leftovers
def test_leftovers_of_killed_saves_are_removed_at_the_next_save(run_with_checkpoints, sample_root, capsys):
    logs, _ = run_with_checkpoints
    folder = logs / "checkpoints"
    (folder / "ckpt-9_temp").mkdir()
    (folder / "ckpt-9_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x" * 1000)
    (folder / "checkpoint.tmp1234abcd").write_text("partial")
    (folder / "ckpt-7.data-00000-of-00001").write_bytes(b"y" * 1000)  # data written, index never
    user_file = folder / "notes.txt"
    user_file.write_text("mine")
    resume_to(logs, sample_root, 4, capsys)
    assert sorted(os.listdir(folder)) == sorted(
        ["checkpoint", "notes.txt", "ckpt-3.index", "ckpt-4.index", os.path.basename(data_file(logs, 3)),
         os.path.basename(data_file(logs, 4))]
    )
    assert user_file.read_text() == "mine"


# ---------------------------------------------------------------------------
# Processes: signals and kill -9.


def test_first_signal_asks_to_stop_and_a_second_stops_at_once():
    previous = signal.getsignal(signal.SIGINT)
    with train.stop_requests() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop == [signal.SIGTERM]  # recorded: the loop finishes its step and saves
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: at once
    assert signal.getsignal(signal.SIGINT) is previous


@pytest.mark.slow
def test_sigterm_saves_and_the_run_resumes(tmp_path, sample_root):
    logs = str(tmp_path / "run")
    process = start(*TINY, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", "100000",
                    "--set", "train.checkpoint_every=100000", "--set", "train.val_every=100000", "--set", "train.summary_every=5")
    # Wait until training is under way: the first train summary is written at step 5.
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if LOSS in read_events(os.path.join(logs, "train")):
                break
        except tf.errors.DataLossError:  # a record still being written
            pass
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "SIGTERM: stopped at step" in stdout + stderr
    stopped_at = checkpoints.step_of(latest(logs))
    assert stopped_at >= 5
    resumed = run_fcn(*TINY, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", str(stopped_at + 2),
                      "--set", "train.val_every=100000")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped_at}" in resumed.stdout
    assert latest(logs).endswith(f"ckpt-{stopped_at + 2}")


@pytest.mark.slow
def test_kill_9_during_saves_always_resumes_to_the_uninterrupted_weights(tmp_path, sample_root):
    """Seeded trials: each kill lands somewhere in a stream of saves (one per step); every rerun
    resumes from an intact checkpoint, and the run ends with the weights of a run never killed."""
    steps = 8  # two kills, about 3 steps apart, and steps left for the last run
    args = [*TINY, "--data_dir", sample_root, "--max_steps", str(steps), "--set", "train.deterministic=true",
            "--set", "train.checkpoint_every=1", "--set", "train.keep_checkpoints=2", "--set", "train.val_every=100000",
            "--set", "model.dropout=0",
            "--set", "model.width=1"]  # VGG16's trunk: checkpoints large enough that kills land in their writes
    reference = str(tmp_path / "reference")
    assert run(*args, "--logs_dir", reference).returncode == 0
    logs = str(tmp_path / "killed")
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(2):
        process = start(*args, "--logs_dir", logs)
        # Two new checkpoints: the time between them is one step and its save; the kill lands at a random
        # point of the next one (a fixed delay would outlast the run on a fast machine).
        last = checkpoints.checkpoint_steps(os.path.join(logs, "checkpoints"))
        times = []
        deadline = time.time() + 240
        while time.time() < deadline and len(times) < 2 and process.poll() is None:
            now = checkpoints.checkpoint_steps(os.path.join(logs, "checkpoints"))
            if now != last:
                last = now
                times.append(time.time())
            time.sleep(0.02)
        if len(times) == 2:
            time.sleep(rng.uniform(0.0, times[1] - times[0]))  # somewhere in the stream of checkpoint writes
        if process.poll() is None:
            process.kill()
            kills += 1
        _, stderr = process.communicate()
        assert "Traceback" not in stderr, stderr[-3000:]
    assert kills == 2
    final = run(*args, "--logs_dir", logs)
    assert final.returncode == 0, final.stderr[-3000:]
    assert_same_checkpoints(latest(reference), latest(logs), exclude={"best_mean_iou/.ATTRIBUTES/VARIABLE_VALUE"})


# ---------------------------------------------------------------------------
# Starting from another run, and learning.


@pytest.mark.slow  # trains two runs
def test_init_from_starts_from_another_runs_weights(tmp_path, sample_root, trained_with_checkpoints):
    source = trained_with_checkpoints
    target = tmp_path / "target"
    result = train_here(tiny_config(target, sample_root, ("train.max_steps", 1), ("train.init_from", str(source)),
                                    ("train.learning_rate", 1e-30)), sample_root)
    assert result.step == 1
    a, b = model_weights(source), model_weights(target)
    # One step at a learning rate of 1e-30 leaves the copied weights as they were (within float rounding).
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-12, err_msg=name)
    with pytest.raises(train.TrainingError, match="no checkpoint there"):
        train_here(tiny_config(tmp_path / "x", sample_root, ("train.init_from", str(tmp_path / "nothing"))), sample_root)
    # A source of another shape: the first layer that does not fit is named.
    with pytest.raises(train.TrainingError, match=r"--init_from .*do not fit this model.*fc6"):
        train_here(tiny_config(tmp_path / "y", sample_root, ("train.init_from", str(source)), ("model.fc_channels", 8)),
                   sample_root)


@pytest.mark.slow
def test_training_learns_the_sample_data(tmp_path):
    """From random weights, 80 steps on the sample data lift validation mIoU well above its start (the real CLI).

    At step 0 the score layers are zero, every pixel is predicted as class 0 (wall):
    mIoU ~0.014 and pixel accuracy ~0.17 on the 16 validation images. A model that
    only learned the class frequencies would predict one class: its mIoU stays
    below 0.05. Measured with the shipped sample config: mIoU 0.14-0.21 and pixel
    accuracy 0.40-0.51 after 50-75 steps.

    The same run is the quick start's first command on a fresh machine: the
    sample config generates its dataset where ``--data_dir`` points, and that
    dataset passes ``--mode=check_data``.
    """
    data_dir, logs = tmp_path / "sample", str(tmp_path / "run")
    result = run_fcn("--config", "configs/sample.yaml", "--no_progress", "--data_dir", str(data_dir),
                     "--logs_dir", logs, "--max_steps", "80", "--set", "train.val_every=80", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorboard --logdir" in result.stdout
    # The resolved config is written into the run directory, and the last checkpoint is of step 80.
    written = config_lib.load_config(os.path.join(logs, "config.yaml"))
    assert written.train.max_steps == 80 and written.train.val_every == 80 and written.data.data_dir == str(data_dir)
    assert written.model.fc_channels == 256 and written.data.crop_size == (64, 64)  # configs/sample.yaml's
    step = tf.train.load_checkpoint(latest(logs)).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")
    assert latest(logs).endswith("ckpt-80") and step == 80
    assert len(os.listdir(data_dir / "ADEChallengeData2016" / "images" / "training")) == 64
    validation = read_events(os.path.join(logs, "validation"))
    (start_step, _, start_iou), (end_step, _, end_iou) = validation[MEAN_IOU]
    (_, _, start_accuracy), (_, _, end_accuracy) = validation[PIXEL_ACCURACY]
    assert (start_step, end_step) == (0, 80)
    assert start_iou < 0.03 and start_accuracy < 0.25
    assert end_iou > 0.1 and end_iou > 4 * start_iou
    assert end_accuracy > 0.35
    # The generated data passes the dataset check.
    check = run_fcn("--mode=check_data", "--data_dir", str(data_dir), "--no_progress")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "training: 64 pairs, 64 usable" in check.stdout and "no problems found" in check.stdout
