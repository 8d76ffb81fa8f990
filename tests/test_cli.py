"""Tests of the command line (FCN.py), run as a user runs it."""

import os
import signal
import subprocess
import sys

import forkserver
import numpy as np
import pytest
from conftest import REPO, SAMPLE_ROOT, TERMINAL_LAUNCHER, write_pair

import FCN


def run(*args, cwd=None, timeout=300, forked=False):
    """``python FCN.py args`` in a new interpreter, or (``forked``) in a child of the fork server, which has
    TensorFlow imported already (``tests/forkserver.py``): for the tests about what FCN.py does, not how it starts."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", no_proxy="127.0.0.1,localhost")
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(name, None)  # the local test server must be reached directly
    command = [sys.executable, os.path.join(REPO, "FCN.py"), *args]
    if forked:
        return forkserver.run(command, cwd or REPO, env, timeout=timeout)
    return subprocess.run(command, cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=env)


def test_help_documents_every_flag():
    result = run("--help")
    assert result.returncode == 0
    for flag in list(FCN.FLAG_KEYS) + ["mode", "config", "set", "checkpoint", "output", "save_predictions", "image"]:
        assert f"--{flag}" in result.stdout
    for mode in FCN.MODES:
        assert mode in result.stdout


def test_bad_config_fails_before_any_work(tmp_path):
    result = run("--set", "train.batch_size=lots", "--logs_dir", str(tmp_path / "run"))
    assert result.returncode == FCN.EXIT_USAGE
    assert "train.batch_size must be an integer" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # starts a Python that imports TensorFlow
def test_train_without_dataset_explains_the_ways_out(tmp_path):
    result = run("--mode=train", "--data_dir", str(tmp_path / "nowhere"), "--logs_dir", str(tmp_path / "run"))
    assert result.returncode == FCN.EXIT_FAILED
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "nowhere") in result.stderr
    assert "--download" in result.stderr and "--config configs/sample.yaml" in result.stderr


@pytest.mark.slow  # starts a process
def test_check_data_reports_each_problem_and_fails(tmp_path, rng):
    root = str(tmp_path)
    image = rng.integers(0, 255, (32, 40, 3)).astype(np.uint8)
    label = rng.integers(1, 151, (32, 40)).astype(np.uint8)
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        write_pair(root, split, f"{prefix}_00000001", image, label)
    write_pair(root, "training", "ADE_train_00000002", image, None)  # no annotation
    write_pair(root, "training", "ADE_train_00000003", None, label)  # no image
    write_pair(root, "training", "ADE_train_00000004", image, np.where(label > 100, 151, label))
    write_pair(root, "validation", "ADE_val_00000002", image, label[:30])
    bad_jpeg, _ = write_pair(root, "validation", "ADE_val_00000003", image, label)
    with open(bad_jpeg, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = run("--mode=check_data", "--data_dir", root, forked=True)
    assert result.returncode == FCN.EXIT_FAILED
    out = result.stdout
    assert "training: 2 pairs, 1 usable" in out and "validation: 3 pairs, 1 usable" in out
    assert "images without annotation: 1" in out and "ADE_train_00000002.jpg" in out
    assert "annotations without image: 1" in out and "ADE_train_00000003.png" in out
    assert "label values above the number of classes: 1" in out and "ADE_train_00000004.jpg" in out
    assert "annotation size differs from the image size: 1" in out and "ADE_val_00000002.jpg" in out
    assert "image cannot be decoded" in out and "ADE_val_00000003.jpg" in out
    assert "5 problem(s) found" in out
    assert "checking training" in result.stderr  # the progress bar


@pytest.mark.slow  # starts a process
def test_check_data_on_the_real_samples(tmp_path):
    # The fixture holds only the validation split: the missing training folders are reported.
    result = run("--mode=check_data", "--data_dir", SAMPLE_ROOT, "--no_progress", forked=True)
    assert result.returncode == FCN.EXIT_FAILED
    assert "validation: 3 pairs, 3 usable, 15 classes present" in result.stdout
    assert "missing folders: 2" in result.stdout
    assert "2 problem(s) found" in result.stdout  # as many as listed


@pytest.mark.slow  # starts two processes
def test_download_flag_fetches_and_checks_the_dataset(tmp_path, rng):
    import threading

    from test_download import ZipServer, make_zip, sha1_of

    source = tmp_path / "source"
    image = rng.integers(0, 255, (24, 32, 3)).astype(np.uint8)
    label = rng.integers(0, 151, (24, 32)).astype(np.uint8)
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for i in (1, 2):
            write_pair(str(source), split, f"{prefix}_{i:08d}", image, label)
    files = {}
    for folder, _, names in os.walk(source):
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), source)
            files["ADEChallengeData2016/" + relative.replace(os.sep, "/")] = open(os.path.join(folder, name), "rb").read()
    payload = make_zip(files)
    server = ZipServer(payload)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        data_dir = tmp_path / "data"
        common = ["--mode=check_data", "--data_dir", str(data_dir), "--no_progress", "--set", f"data.download_url={server.url}"]
        wrong = run(*common, "--download", "--set", "data.download_sha1=" + "0" * 40, forked=True)
        assert wrong.returncode == FCN.EXIT_FAILED and "Traceback" not in wrong.stderr
        assert "0" * 40 in wrong.stderr and not (data_dir / "ADEChallengeData2016").exists()
        result = run(*common, "--download", "--set", f"data.download_sha1={sha1_of(payload)}", forked=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "training: 2 pairs, 2 usable" in result.stdout and "no problems found" in result.stdout
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_on_off_flags_take_true_and_false_values():
    parse = FCN.build_parser().parse_args
    # FCN.tensorflow's form --debug=True, and the plain switch.
    assert parse(["--debug=True"]).debug is True and parse(["--debug"]).debug is True
    assert parse(["--debug=False"]).debug is False and parse([]).debug is None
    for flag in ("debug", "download", "jit_compile", "crf", "no_progress"):
        assert getattr(parse([f"--{flag}=1"]), flag) is True
        assert getattr(parse([f"--{flag}=0"]), flag) is False
        assert getattr(parse([f"--{flag}=false"]), flag) is False
    assert parse(["--crf", "--mode", "predict"]).crf is True and parse([]).no_progress is False
    config = FCN.resolve_config(parse(["--debug=False", "--set", "train.debug=true"]))
    assert config.train.debug is False  # the flag, given as False, wins over --set


def test_bad_on_off_value_is_a_usage_error():
    result = run("--debug=maybe")
    assert result.returncode == FCN.EXIT_USAGE
    assert "expected True or False" in result.stderr and "Traceback" not in result.stderr


def test_bad_configurations_exit_2_with_a_message(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"logs_dir: caf\xe9\n")
    cases = [
        (["--set", "logs_dir="], "logs_dir must name a folder"),
        (["--logs_dir", str(a_file)], "is a file, not a folder"),
        (["--config", str(tmp_path)], "is a folder"),
        (["--config", str(latin1)], "is not UTF-8 text"),
        (["--seed", "-1"], "train.seed must be in 0..4294967295"),
        (["--seed", str(2**32)], "train.seed must be in 0..4294967295"),
        (["--mode=predict", "--image", "README.md", "--set", "evaluate.scales=nan"], "evaluate.scales must be a finite number"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.returncode == FCN.EXIT_USAGE, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
    assert a_file.read_text() == "keep"


def start_importing(tmp_path):
    """``python -X importtime FCN.py --mode=check_data`` on an empty folder, started as from a terminal.

    ``-X importtime`` writes a line to the pipe of standard error as each module is imported; a reader that
    stops reading holds the program there once the pipe is full (64 KiB, a few hundred lines), long before
    the ~3,600 lines of TensorFlow's import end. So a test that reads up to a module and then interrupts
    knows the program is still importing, whatever the load of the machine.
    """
    return subprocess.Popen(
        [sys.executable, "-c", TERMINAL_LAUNCHER, "-X", "importtime", os.path.join(REPO, "FCN.py"), "--mode=check_data",
         "--data_dir", str(tmp_path), "--no_progress"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )  # fmt: skip


def read_until_imported(process, module):
    """Reads the program's standard error up to the line reporting ``module`` imported; returns the lines read."""
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == module:
            return lines
    raise AssertionError(f"the program ended before importing {module}: {''.join(lines[-20:])}")


def interrupt_and_wait(process):
    """Sends SIGINT; returns the rest of standard error once the program has ended."""
    try:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    return stderr


@pytest.mark.slow  # starts a Python that imports TensorFlow
def test_ctrl_c_while_starting_is_one_line_and_status_130(tmp_path):
    process = start_importing(tmp_path)
    # Interrupt once TensorFlow's native library is loaded: the slow part of starting.
    read_until_imported(process, "tensorflow.python.pywrap_tensorflow")
    stderr = interrupt_and_wait(process)
    assert process.returncode == FCN.EXIT_INTERRUPTED, stderr[-3000:]
    assert "Traceback" not in stderr and "FCN.py: interrupted while starting" in stderr
    assert "no ADE20K dataset" not in stderr  # the work never started


@pytest.mark.slow  # starts six Pythons
def test_ctrl_c_in_the_first_moments_never_prints_a_traceback(tmp_path):
    """Seeded moments from FCN.py's first import (``-X importtime`` reports ``argparse``; before it the
    interpreter is still starting or compiling the script) to well into the imports: a message, never a
    traceback. Whatever the delay, the program is still importing (``start_importing``)."""
    import time

    rng = np.random.default_rng(0)
    for delay in sorted(rng.uniform(0.0, 0.5, size=6)):
        process = start_importing(tmp_path)
        read_until_imported(process, "argparse")
        time.sleep(delay)
        stderr = interrupt_and_wait(process)
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, (delay, stderr[-3000:])
        assert process.returncode == FCN.EXIT_INTERRUPTED, (delay, process.returncode, stderr[-3000:])
        assert "FCN.py: interrupted" in stderr and "no ADE20K dataset" not in stderr


@pytest.mark.slow  # starts a Python that imports TensorFlow
def test_check_data_creates_nothing(tmp_path):
    typo = tmp_path / "typo"
    result = run("--mode=check_data", "--config", "configs/sample.yaml", "--data_dir", str(typo), "--no_progress", forked=True)
    assert result.returncode == FCN.EXIT_FAILED, result.stdout + result.stderr
    assert "no ADE20K dataset found" in result.stderr and str(typo) in result.stderr
    assert "does not generate the sample data" in result.stderr and "Traceback" not in result.stderr
    assert not typo.exists()


def test_check_data_lists_unopenable_and_ambiguous_files(tmp_path, rng, capsys):
    root = str(tmp_path)
    image = rng.integers(0, 255, (24, 32, 3)).astype(np.uint8)
    label = rng.integers(1, 151, (24, 32)).astype(np.uint8)
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        write_pair(root, split, f"{prefix}_00000001", image, label)
    write_pair(root, "training", "ADE_train_00000002", image, label)
    write_pair(root, "training", "ADE_train_00000002", image, label, image_format="PNG")  # same stem, .jpg and .png
    os.symlink("L.jpg", os.path.join(root, "images", "training", "L.jpg"))  # ln -s L.jpg L.jpg
    write_pair(root, "validation", os.fsdecode(b"B17_\xff\xfe"), image, label)  # a non-UTF-8 name is fine
    status = FCN.main(["--mode=check_data", "--data_dir", root, "--no_progress"])
    out = capsys.readouterr().out
    assert status == FCN.EXIT_FAILED
    assert "training: 1 pairs, 1 usable" in out and "validation: 2 pairs, 2 usable" in out
    assert "files that cannot be opened: 1" in out and "L.jpg: cannot be opened (Too many levels of symbolic links)" in out
    assert "names used by more than one file (keep one: rename or remove the others): 1" in out
    assert "ADE_train_00000002.jpg and " in out and "ADE_train_00000002.png" in out
    assert "2 problem(s) found" in out


def test_check_data_counts_what_it_lists(capsys):
    from fcn import check_data

    reports = check_data.check_dataset(SAMPLE_ROOT, progress=False)
    text = check_data.format_report(SAMPLE_ROOT, reports)
    listed = [line for line in text.splitlines() if line.startswith("    ")]
    assert len(listed) == 2 and "2 problem(s) found" in text  # the two missing training folders
