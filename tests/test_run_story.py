"""What a run tells at its end and keeps in its directory: the summary, train.log, history.jsonl, curves.png."""

import io
import json
import os
import re
import signal
import time

import numpy as np
import pytest
from conftest import run_fcn
from PIL import Image
from test_train import MEAN_IOU, TINY, read_events, start

from fcn import datasets, run_log

STORY = ["--set", "train.val_every=2", "--set", "train.summary_every=1", "--set", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample") / "ADEChallengeData2016")
    datasets.generate_sample_dataset(root, num_train=16, num_val=4, progress=False)
    return root


def best_validation(logs):
    """(best mean IoU, its step) from the TensorBoard events: the first step reaching the maximum."""
    values = sorted((step, float(value)) for step, _, value in read_events(os.path.join(logs, "validation"))[MEAN_IOU])
    best = max(value for _, value in values)
    return best, next(step for step, value in values if value == best)


def log_text(logs):
    with open(os.path.join(logs, "train.log"), encoding="utf-8") as f:
        return f.read()


def starts(text):
    """The header lines of train.log, one per start."""
    return re.findall(r"^==== \S+ start: .*$", text, flags=re.M)


def assert_curves(logs):
    with Image.open(os.path.join(logs, "curves.png")) as picture:
        assert picture.format == "PNG" and picture.size == (1000, 400)
        pixels = np.asarray(picture.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # lines and text, not a blank canvas


@pytest.mark.slow  # two command-line trainings, 4 then 2 steps, with validations
def test_finished_then_resumed_run_tells_its_story(tmp_path, sample_root):
    logs = str(tmp_path / "run")
    first = run_fcn(*TINY, *STORY, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", "4")
    assert first.returncode == 0, first.stderr[-3000:]
    best, best_step = best_validation(logs)
    config, best_dir = os.path.join(logs, "config.yaml"), os.path.join(logs, "best")
    assert f"==== run {logs}: finished at step 4 of 4" in first.stdout
    assert "this start: steps 0 -> 4 in " in first.stdout
    assert f"best validation mean IoU: {best:.4f} at step {best_step}, checkpoint {best_dir}" in first.stdout
    assert os.path.isfile(os.path.join(best_dir, f"ckpt-{best_step}.index"))
    assert re.search(r"last validation: step 4: validation loss \d+\.\d{4}, pixel accuracy", first.stdout)
    assert f"python FCN.py --mode=evaluate --config {config} --checkpoint {best_dir}" in first.stdout
    text = log_text(logs)
    assert len(starts(text)) == 1 and text.startswith(starts(text)[0])
    assert "step 2: validation loss" in text and f"==== run {logs}: finished at step 4 of 4" in text
    assert_curves(logs)
    history = run_log.read_history(logs)
    assert [r["step"] for r in history["validation"]] == [0, 2, 4]
    assert [r["step"] for r in history["train"]] == [1, 2, 3, 4]

    resumed = run_fcn(*TINY, *STORY, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", "6")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "finished at step 6 of 6" in resumed.stdout and "this start: steps 4 -> 6 in " in resumed.stdout
    best, best_step = best_validation(logs)
    assert f"best validation mean IoU: {best:.4f} at step {best_step}, checkpoint {best_dir}" in resumed.stdout
    text = log_text(logs)
    assert len(starts(text)) == 2
    assert text.index("finished at step 4 of 4") < text.index("resuming from") < text.index("finished at step 6 of 6")
    assert [r["step"] for r in run_log.read_history(logs)["validation"]] == [0, 2, 4, 6]
    assert_curves(logs)


@pytest.mark.slow  # a command-line training
def test_a_non_finite_loss_ends_with_the_summary_and_a_lower_rate(tmp_path, sample_root):
    logs = str(tmp_path / "run")
    result = run_fcn(*TINY, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", "6", "--learning_rate", "1e30",
                     "--set", "train.checkpoint_every=1", "--set", "train.val_every=100000")
    assert result.returncode == 1
    assert re.search(rf"==== run {re.escape(logs)}: stopped \(non-finite loss\) at step \d of 6", result.stdout)
    assert f"python FCN.py --mode=train --config {os.path.join(logs, 'config.yaml')} --learning_rate 1e+29" in result.stdout
    assert "stopped (non-finite loss)" in log_text(logs)


@pytest.mark.slow
def test_an_interrupted_run_says_how_to_resume(tmp_path, sample_root):
    logs = str(tmp_path / "run")
    process = start(*TINY, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", "100000",
                    "--set", "train.summary_every=1", "--set", "train.val_every=100000", "--set", "train.checkpoint_every=100000")
    deadline = time.time() + 240
    while time.time() < deadline and len(run_log.read_history(logs).get("train", [])) < 2:
        time.sleep(0.5)  # waiting for training to be under way, not timing it
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    match = re.search(rf"==== run {re.escape(logs)}: interrupted at step (\d+) of 100000", stdout)
    assert match and int(match.group(1)) >= 2
    assert f"python FCN.py --mode=train --config {os.path.join(logs, 'config.yaml')}    # resume" in stdout
    text = log_text(logs)
    assert match.group(0) in text and "SIGTERM: stopped at step" in text


def test_history_of_a_resumed_run_drops_what_came_after_its_checkpoint(tmp_path):
    for kind, step in [("train", 1), ("train", 2), ("train", 3), ("validation", 2), ("train", 2), ("train", 3), ("train", 4)]:
        run_log.append_history(str(tmp_path), kind, step, {"loss": step})
    with open(tmp_path / "history.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # cut short by a kill
    history = run_log.read_history(str(tmp_path))
    assert [r["step"] for r in history["train"]] == [1, 2, 3, 4]
    assert [r["step"] for r in history["validation"]] == [2]
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"kind": "train", "step": 1, "loss": 1.0}


def test_a_refused_start_writes_no_log(tmp_path):
    with run_log.console_log(str(tmp_path)):
        print("refused before the run was accepted")
    assert not os.path.exists(tmp_path / "train.log")


def test_the_log_keeps_a_redrawn_progress_line_once(tmp_path, monkeypatch):
    console = io.StringIO()
    monkeypatch.setattr("sys.stdout", console)
    with run_log.console_log(str(tmp_path)):
        print("first line")
        run_log.accept_console_log()
        print("\rtraining 1/3", end="")
        print("\rtraining 2/3", end="")
        print("\rtraining 3/3")
        print("no newline at the end", end="")
    assert console.getvalue() == "first line\n\rtraining 1/3\rtraining 2/3\rtraining 3/3\nno newline at the end"
    lines = log_text(str(tmp_path)).splitlines()
    assert starts(lines[0]) == [lines[0]]
    assert lines[1:] == ["first line", "training 3/3", "no newline at the end"]
