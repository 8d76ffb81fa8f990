"""Several workers: a worker killed mid-run, what the other one says, and the rerun of every worker that resumes."""

import json
import os
import re
import socket
import subprocess
import time

import forkserver
import pytest
from conftest import REPO
from test_distribute import COMMON, free_ports, worker_command

from fcn import checkpoints, datasets, distribute, run_log


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample") / "ADEChallengeData2016")
    datasets.generate_sample_dataset(root, num_train=16, num_val=4, progress=False)
    return root


def start_cluster(tmp_path, ports, flags, linger):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(len(ports)):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "grpc_proxy"):
            env.pop(name, None)
        processes.append(forkserver.Process(worker_command(tmp_path, *flags, linger=linger), REPO, env))
    return processes


def finish_cluster(processes, timeout):
    """Every process's (stdout, stderr) once all have ended; after ``timeout`` s all are killed and the test fails with their output."""
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            process.wait(max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        outputs = [process.communicate() for process in processes]
        pytest.fail(f"the cluster did not end within {timeout} s:\n" + "\n".join(
            f"worker {index} (exit {process.returncode}):\n{out[-2000:]}\n{err[-3000:]}"
            for index, (process, (out, err)) in enumerate(zip(processes, outputs))))
    return [process.communicate() for process in processes]


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_with_one_line_and_a_rerun_resumes(tmp_path, sample_root):
    logs = str(tmp_path / "cluster")
    flags = [*COMMON, "--data_dir", sample_root, "--logs_dir", logs, "--strategy", "multi_worker",
             "--set", "train.checkpoint_every=1", "--set", "train.val_every=3"]
    ports = free_ports(2)
    # A short heartbeat timeout for the run that loses a worker: the chief notices within it.
    chief, worker = start_cluster(tmp_path, ports, [*flags, "--max_steps", "100000", "--set", "train.heartbeat_timeout=10"], linger=0)
    deadline = time.time() + 300
    while time.time() < deadline and len(run_log.read_history(logs).get("train", [])) < 4:
        time.sleep(0.5)  # waiting for training to be under way, not timing it
    worker.kill()  # kill -9
    stdout, stderr = chief.communicate(timeout=600)
    worker.communicate(timeout=60)
    assert chief.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("FCN.py: ")]
    assert len(lines) == 1, stderr[-3000:]
    assert re.match(r"FCN\.py: worker 0: lost worker 1 of the cluster \(no answer within the 10 s heartbeat timeout.*start every worker again with the same command: "
                    r"python \S*FCN\.py ", lines[0]), lines[0]
    assert "--strategy multi_worker" in lines[0]
    assert lines[0] in run_log_text(logs)
    # The chief named the cluster; worker 1 printed its validations.
    assert f"workers: worker 0 at 127.0.0.1:{ports[0]} (this process), worker 1 at 127.0.0.1:{ports[1]}" in stdout
    saved = checkpoints.checkpoint_steps(os.path.join(logs, checkpoints.CHECKPOINTS_DIR))[0]
    assert saved >= 3

    # Every worker started again with the same command resumes from the last checkpoint. (Slow process ends
    # are test_distribute's two-worker test: no linger here.)
    # Once so far in CI a rerun's worker 1 sent no heartbeat at all: both workers said the one line of a lost
    # worker after the 60 s timeout (never reproduced here, not even with the cores saturated by busy loops). What
    # that line tells the user is to start every worker again; the test does so, once, from the checkpoint then last.
    target = saved + 3
    for attempt in range(2):
        rerun = start_cluster(tmp_path, free_ports(2), [*flags, "--max_steps", str(target)], linger=0)
        outputs = finish_cluster(rerun, timeout=300)
        both = "\n".join(f"worker {index} (exit {process.returncode}):\n{err[-3000:]}" for index, (process, (_, err)) in enumerate(zip(rerun, outputs)))
        told_to_rerun = all(process.returncode == 1 and "of the cluster (no answer within the 60 s heartbeat timeout" in err
                            and "start every worker again with the same command" in err for process, (_, err) in zip(rerun, outputs))
        if attempt or not told_to_rerun:
            break
        saved = checkpoints.checkpoint_steps(os.path.join(logs, checkpoints.CHECKPOINTS_DIR))[0]
        assert saved < target, both
    assert [process.returncode for process in rerun] == [0, 0], both
    assert f"at step {saved}" in outputs[0][0]
    assert checkpoints.checkpoint_steps(os.path.join(logs, checkpoints.CHECKPOINTS_DIR))[0] == target
    assert re.search(r"^worker 1: step \d+: validation loss", outputs[1][0], flags=re.M), outputs[1][0][-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("blocked", [0, 1])
def test_a_worker_that_cannot_listen_ends_the_whole_cluster_with_one_line_each(tmp_path, sample_root, blocked):
    """The port of worker ``blocked`` is held by another program: neither worker waits for ever, each says why."""
    ports = free_ports(2)
    with socket.socket() as squatter:  # listens, but is no gRPC server
        squatter.bind(("127.0.0.1", ports[blocked]))
        squatter.listen()
        logs = str(tmp_path / "cluster")
        flags = [*COMMON, "--data_dir", sample_root, "--logs_dir", logs, "--strategy", "multi_worker", "--max_steps", "2",
                 "--set", "train.join_timeout=5"]
        processes = start_cluster(tmp_path, ports, flags, linger=0)
        outputs = [process.communicate(timeout=300) for process in processes]
    lines = [[line for line in err.splitlines() if line.startswith("FCN.py: ")] for _, err in outputs]
    for process, (_, err), own in zip(processes, outputs, lines):
        assert process.returncode == 1 and "Traceback" not in err, err[-3000:]
        assert len(own) == 1, err[-3000:]
    assert lines[blocked][0] == (
        f"FCN.py: worker {blocked}: could not listen at 127.0.0.1:{ports[blocked]}, this task's address in TF_CONFIG: "
        "the port is in use or the host is not this machine; free the port or change TF_CONFIG on every worker"
    )
    other = 1 - blocked
    if other == 0:  # the chief waited for worker 1's server
        assert lines[0][0].startswith(f"FCN.py: worker 0: worker 1 at 127.0.0.1:{ports[1]} did not start within train.join_timeout (5 s)")
    else:  # worker 1 waited for the chief
        assert lines[1][0].startswith(f"FCN.py: worker 1: the cluster did not start: worker 0 at 127.0.0.1:{ports[0]} "
                                      "did not answer within train.join_timeout (5 s)")
    assert not os.path.exists(os.path.join(logs, checkpoints.CHECKPOINTS_DIR))


def run_log_text(logs):
    with open(os.path.join(logs, run_log.LOG_FILE), encoding="utf-8") as f:
        return f.read()


def test_the_lost_peer_message_names_the_task_from_tensorflows_error(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}))
    error = RuntimeError(
        "Collective ops is aborted by: The following tasks are unhealthy (stopped sending heartbeats):\n"
        "/job:worker/replica:0/task:1\nThe tasks have crashed. [type.googleapis.com/tensorflow.CoordinationServiceError='']"
        " on /job:worker/replica:0/task:0"
    )
    message = str(distribute.lost_peer_error(error, ["FCN.py", "--logs_dir", "logs/a b"]))
    assert "\n" not in message
    assert message.startswith("worker 0: lost worker 1 of the cluster")
    assert message.endswith("start every worker again with the same command: python FCN.py --logs_dir 'logs/a b'")


def test_mirrored_says_how_many_devices_it_uses():
    import tensorflow as tf

    lines = distribute.describe(tf.distribute.MirroredStrategy(devices=["/cpu:0"]), 4)
    assert lines == ["MirroredStrategy: 1 replicas, 4 examples each per step; 1 device per worker: CPU:0"]
