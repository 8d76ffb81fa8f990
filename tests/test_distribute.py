"""Multi-device and multi-worker training (through the real command line, one process per device set-up); mixed precision and XLA in-process."""

import json
import os
import random
import socket
import sys

import forkserver
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, run_fcn
from test_train import LOSS, TINY, model_weights, read_events, run, tiny_config

from fcn import datasets, train, train_state

# Dropout off: replicas draw their own masks, so only a dropout-free model can match one device exactly.
COMMON = [*TINY, "--set", "model.dropout=0", "--set", "train.val_every=100000", "--set", "train.summary_every=1"]


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample") / "ADEChallengeData2016")
    datasets.generate_sample_dataset(root, num_train=16, num_val=4, progress=False)
    return root


# COMMON's settings, for runs in this process.
COMMON_OVERRIDES = [("model.dropout", 0.0), ("train.val_every", 100000), ("train.summary_every", 1), ("train.max_steps", 3)]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, sample_root):
    """The run every other set-up is compared with: COMMON, 3 steps, one device, trained in this process."""
    logs = tmp_path_factory.mktemp("one_device") / "run"
    config = tiny_config(logs, sample_root, *COMMON_OVERRIDES)
    assert train.train(config, sample_root, train.setup_process(config), progress=False).status == "finished"
    return str(logs)


def assert_same_training(reference_logs, other_logs):
    """Same per-step losses and the same weights (up to the order of floating-point sums)."""
    reference_losses = [float(v) for _, _, v in read_events(os.path.join(reference_logs, "train"))[LOSS]]
    other_losses = [float(v) for _, _, v in read_events(os.path.join(other_logs, "train"))[LOSS]]
    np.testing.assert_allclose(other_losses, reference_losses, rtol=1e-5)
    a, b = model_weights(reference_logs), model_weights(other_logs)
    assert a.keys() == b.keys() and len(a) > 20
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=2e-6, err_msg=name)


@pytest.mark.slow
def test_mirrored_over_two_cpus_matches_one_device(tmp_path, sample_root, one_device):
    one, two = one_device, str(tmp_path / "two")
    result = run(*COMMON, "--data_dir", sample_root, "--logs_dir", two, "--max_steps", "3",
                 "--strategy", "mirrored", "--set", "train.cpu_devices=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy: 2 replicas, 1 examples each per step" in result.stdout
    assert_same_training(one, two)
    # A checkpoint written under one strategy resumes under another.
    resumed = run_fcn(*COMMON, "--data_dir", sample_root, "--logs_dir", two, "--max_steps", "4")
    assert resumed.returncode == 0 and "at step 3" in resumed.stdout, resumed.stderr[-3000:]


def free_ports(count):
    """``count`` free ports below the system's ephemeral range.

    Ports the system hands out itself (``bind`` to port 0, the local end of
    every outgoing connection, gRPC's among them) come from the ephemeral
    range: one chosen there could be taken again before a worker listens on it.
    """
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    rng, ports = random.Random(), []
    while len(ports) < count:
        port = rng.randrange(max(low - 12000, 1024), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


# Each process stays alive LINGER seconds after FCN.py returns, longer than TensorFlow's default heartbeat
# interval (5 s) and timeout (10 s) of the coordination service, which the chief hosts: a worker outliving the
# chief would find it gone; a chief outliving a worker by the timeout would report the worker dead.
# (The chief waits for the worker's end, then lingers: a run lasts about 2 x LINGER longer.)
LINGER = 11
SHUTDOWN_ERRORS = ("StartAbort", "Failed to send RPC to coordination service", "Connection refused")


def worker_command(directory, *flags, linger=0.0):
    """FCN.py's command line, in a Python that sleeps ``linger`` seconds after FCN.py has finished.

    The wrapper script is written to ``directory``.
    """
    script = os.path.join(str(directory), f"linger_{linger:g}.py")
    if not os.path.exists(script):
        # Written whole under another name, then renamed: a worker started a moment ago may be reading it
        # (a file truncated for rewriting would run as an empty script: exit 0, nothing done).
        with open(script + ".part", "w") as file:
            file.write(
                "import atexit, runpy, sys, time\n"
                f"atexit.register(time.sleep, {linger})\n"
                "sys.argv = sys.argv[1:]\n"
                "runpy.run_path(sys.argv[0], run_name='__main__')\n"
            )
        os.replace(script + ".part", script)
    return [sys.executable, script, os.path.join(REPO, "FCN.py"), *flags]


@pytest.mark.slow
def test_two_workers_train_like_one_device_and_only_the_chief_writes(tmp_path, sample_root, one_device):
    reference = one_device
    logs = str(tmp_path / "cluster")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "grpc_proxy"):
            env.pop(name, None)
        command = worker_command(tmp_path, *COMMON, "--data_dir", sample_root, "--logs_dir", logs, "--max_steps", "3",
                                 "--strategy", "multi_worker", linger=LINGER)
        processes.append(forkserver.Process(command, REPO, env))  # forked with TensorFlow imported, not yet started
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert_same_training(reference, logs)
    # One writer of summaries and checkpoints: the chief (worker 0).
    assert len([f for f in os.listdir(os.path.join(logs, "train")) if f.startswith("events")]) == 1
    assert tf.train.latest_checkpoint(os.path.join(logs, "checkpoints")).endswith("ckpt-3")
    assert "step 0: validation" in outputs[0][0]
    # Worker 1 prints one line per validation, under its name, and nothing else of the chief's.
    assert [line.split(":")[1] for line in outputs[1][0].splitlines()] == [" step 0", " step 3"], outputs[1][0]
    assert "run directory:" in outputs[0][0] and "run directory:" not in outputs[1][0]
    assert "CollectiveAllReduceStrategy: 2 replicas" in outputs[0][0]
    # No worker finds the chief gone, and the chief reports no worker dead.
    for index, (_, stderr) in enumerate(outputs):
        for error in SHUTDOWN_ERRORS:
            assert error not in stderr, f"worker {index}: {stderr[-3000:]}"


def losses_of(logs_dir):
    return [float(v) for _, _, v in read_events(os.path.join(str(logs_dir), "train"))[LOSS]]


@pytest.mark.slow  # trains two 3-step runs
def test_bfloat16_takes_effect_in_the_trainer_and_tracks_float32(tmp_path, sample_root, one_device):
    config = tiny_config(tmp_path / "bf16", sample_root, *COMMON_OVERRIDES, ("train.mixed_precision", "bfloat16"))
    strategy = train.setup_process(config)
    state = train_state.create_train_state(config, strategy)
    # The trainer's own model computes in bfloat16, keeps float32 variables and returns float32 logits.
    assert state.model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert state.model.get_layer("fc6").compute_dtype == "bfloat16"
    assert state.model.get_layer("block1_conv1").kernel.dtype == "float32"
    assert state.model(np.zeros((1, 32, 32, 3), np.uint8)).dtype == tf.float32
    assert train.train(config, sample_root, strategy, progress=False).status == "finished"
    bf16, f32 = losses_of(tmp_path / "bf16"), losses_of(one_device)
    assert len(bf16) == 3
    # bfloat16 keeps 8 bits of mantissa: close to float32's losses, not equal to them.
    np.testing.assert_allclose(bf16, f32, rtol=0.02)
    assert bf16 != f32
    assert all(w.dtype == np.float32 for w in model_weights(tmp_path / "bf16").values())


@pytest.mark.slow  # trains in a child process, and the 3-step run it is compared with
def test_xla_step_takes_effect_and_matches_the_plain_step(tmp_path, sample_root, one_device):
    # A child process: op determinism, which other tests may have switched on in this one for good, makes XLA
    # refuse the max-pool gradient.
    xla = str(tmp_path / "xla")
    result = run(*COMMON, "--data_dir", sample_root, "--logs_dir", xla, "--max_steps", "3", "--jit_compile")
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = model_weights(one_device), model_weights(xla)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-3, atol=1e-5, err_msg=name)
    # XLA fuses and reorders the arithmetic: a compiled step does not round exactly as the plain one.
    assert any(not np.array_equal(a[name], b[name]) for name in a)
