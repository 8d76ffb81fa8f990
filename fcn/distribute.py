"""Several devices and workers: the tf.distribute strategy of ``train.strategy`` and the multi-worker plumbing.

``default`` is one device; ``mirrored`` all local GPUs (or the devices of
``train.devices``, or logical CPU devices); ``multi_worker`` the cluster of the
``TF_CONFIG`` environment variable, with TensorFlow's coordination service
set up here so that a lost worker is noticed within ``train.heartbeat_timeout``,
and the workers of a finished run leaving together (``finish_together``).
The training step and loop are the same code under every strategy
(``fcn/train.py``).
"""

import json
import os
import re
import shlex
import socket
import time

import tensorflow as tf

from fcn.config import Config
from fcn.errors import TrainingError


def configure_coordination_service(join_timeout: float, heartbeat_timeout: float) -> None:
    """Sets up TensorFlow's coordination service as ``MultiWorkerMirroredStrategy`` would, with other timeouts.

    The strategy configures the service itself only when nothing has; it
    offers no setting for its timeouts (TensorFlow's defaults: an hour for the
    cluster to come together, 10 s of heartbeat, shorter than the end of a
    process on a loaded machine: see ``finish_together``), so this does it
    first, with the same values the strategy uses (the ``chief`` and
    ``worker`` jobs of ``TF_CONFIG``, led by the chief, or worker 0 without
    one). This is the one place that uses TensorFlow's internal API
    (``context.configure_coordination_service``, ``coordination_config_pb2``);
    it must run before the strategy is created.

    Args:
      join_timeout: seconds the leader waits for every worker to register.
      heartbeat_timeout: seconds without a heartbeat before a worker is lost.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster = resolver.cluster_spec()
    jobs = [job for job in ("chief", "worker") if job in cluster.jobs]
    if not jobs or resolver.task_type not in jobs or context.context().coordination_service is not None:
        return
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{jobs[0]}/replica:0/task:0",
        cluster_register_timeout_in_ms=int(join_timeout * 1000),
        heartbeat_timeout_in_ms=int(heartbeat_timeout * 1000),
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job)) for job in jobs],
    )


def make_strategy(config: Config) -> tf.distribute.Strategy:
    """The tf.distribute strategy that ``train.strategy`` names."""
    train = config.train
    if train.strategy == "mirrored":
        devices = [d.strip() for d in train.devices.split(",") if d.strip()]
        if not devices and train.cpu_devices and not tf.config.list_physical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices or None)
    if train.strategy == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise TrainingError("--strategy multi_worker reads the cluster from the TF_CONFIG environment variable, which is not set")
        _wait_for_the_cluster(train)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except tf.errors.OpError as error:  # e.g. this task's port is taken: one line, not TensorFlow's traceback
            raise _start_error(error, train.join_timeout) from None
    return tf.distribute.get_strategy()


def _start_error(error: tf.errors.OpError, join_timeout: float) -> TrainingError:
    """Why this task's part of the cluster did not start (its port, or no leader within the timeout), in one line."""
    try:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        cluster = resolver.cluster_spec()
        address = cluster.task_address(resolver.task_type, resolver.task_id)
        leader_job = "chief" if "chief" in cluster.jobs else "worker"
        leader = f"{leader_job} 0 at {cluster.task_address(leader_job, 0)}"
    except (ValueError, KeyError):
        address, leader = "?", "the chief"
    if "Could not start gRPC server" in str(error):
        return TrainingError(
            f"{task_name()}: could not listen at {address}, this task's address in TF_CONFIG: the port is in use or the "
            "host is not this machine; free the port or change TF_CONFIG on every worker"
        )
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    if isinstance(error, tf.errors.DeadlineExceededError):
        first = f"{leader} did not answer within train.join_timeout ({join_timeout:g} s)"
    return TrainingError(f"{task_name()}: the cluster did not start: {first}; start every worker of TF_CONFIG with the same command")


def _wait_for_the_cluster(train) -> None:
    """On the leader of the coordination service (the chief, or worker 0): returns once every other task listens.

    TensorFlow's leader, once started, waits for the missing tasks without end
    and without releasing Python's lock (its register timeout does not end that
    wait), so a worker that failed before its server started would hang it for
    good. The leader starts only once every other task's address (``TF_CONFIG``)
    accepts connections; after ``train.join_timeout`` seconds it gives up. The
    other tasks start at once: they wait for the leader inside TensorFlow.
    """
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster = resolver.cluster_spec()
    jobs = [job for job in ("chief", "worker") if job in cluster.jobs]
    if not jobs or (resolver.task_type, resolver.task_id) != (jobs[0], 0):
        return
    others = [(f"{job} {index}", cluster.task_address(job, index)) for job in jobs for index in cluster.task_indices(job)
              if (job, index) != (jobs[0], 0)]  # fmt: skip
    start, said = time.monotonic(), False
    while True:
        missing = [f"{name} at {address}" for name, address in others if not _serves_grpc(address)]
        if not missing:
            return
        waited = time.monotonic() - start
        if waited > train.join_timeout:
            raise TrainingError(
                f"{task_name()}: {', '.join(missing)} did not start within train.join_timeout ({train.join_timeout:g} s): "
                "start every worker of TF_CONFIG with the same command (a worker's own error, if any, is on its console)"
            )
        if waited > 10 and not said:
            print(f"waiting for {', '.join(missing)} to start (train.join_timeout: {train.join_timeout:g} s)", flush=True)
            said = True
        time.sleep(0.5)


def is_chief_task(config: Config) -> bool:
    """Whether this process will be the chief, from the config and ``TF_CONFIG`` alone (no TensorFlow set-up).

    For messages printed before the strategy exists: with ``multi_worker`` the
    chief is the task of type ``chief``, or worker 0 when the cluster has none.
    """
    if config.train.strategy != "multi_worker":
        return True
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    except ValueError:
        return True  # make_strategy reports the problem
    task = tf_config.get("task", {})
    if "chief" in tf_config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes summaries, checkpoints and reports."""
    return bool(strategy.extended.should_checkpoint and strategy.extended.should_save_summary)


# How long the chief of a finished multi-worker run waits for the other workers' processes to end.
WORKERS_LEAVE_TIMEOUT = 300.0


def finish_together(strategy: tf.distribute.Strategy, timeout: float = WORKERS_LEAVE_TIMEOUT, report=print) -> None:
    """The workers of a finished multi-worker run leave together, the chief last.

    ``MultiWorkerMirroredStrategy`` runs TensorFlow's coordination service in
    the chief's process, and every worker's agent sends it a heartbeat every
    5 s until its process ends (TensorFlow 2.21 does not shut an agent down
    when Python exits). A worker that outlives the chief finds the service
    gone (``StartAbort UNAVAILABLE: Failed to send RPC to coordination
    service``); a chief that outlives a worker by the heartbeat timeout
    reports it unhealthy (``stopped sending heartbeats``; ``setup_process``
    sets it to ``train.heartbeat_timeout``, TensorFlow's 10 s being
    shorter than the end of a process on a loaded machine). So every worker first waits for all the
    others to finish (one all-reduce), the other workers then return, and the
    chief returns once each of their servers' addresses (the cluster spec of
    ``TF_CONFIG``) refuses connections, i.e. their processes have ended; after
    ``timeout`` seconds it returns anyway.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    resolver = strategy.cluster_resolver
    own = (resolver.task_type, resolver.task_id)
    cluster = resolver.cluster_spec()
    addresses = [
        cluster.task_address(job, index)
        for job in cluster.jobs if job in ("chief", "worker")
        for index in cluster.task_indices(job) if (job, index) != own
    ]  # fmt: skip
    if not addresses:  # a cluster of one
        return
    _all_reduce_barrier(strategy)
    if not is_chief(strategy):
        return
    deadline = time.monotonic() + timeout
    for address in addresses:
        while _accepts_connections(address):
            if time.monotonic() > deadline:
                report(f"worker {address} still running {timeout:.0f} s after the run finished; the chief leaves now")
                return
            time.sleep(0.2)


def _all_reduce_barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns on every worker once all have called it (a sum over the replicas, compiled: no eager-collective warning)."""

    @tf.function
    def count():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)

    count()


def _accepts_connections(address: str) -> bool:
    """Whether a server listens at ``HOST:PORT``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except OSError:
        return False


# What an HTTP/2 client sends first: the connection preface and an empty SETTINGS frame.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _serves_grpc(address: str) -> bool:
    """Whether an HTTP/2 server (TensorFlow's gRPC server) answers at ``HOST:PORT``, not just any listening socket."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2) as connection:
            connection.settimeout(2)
            connection.sendall(_HTTP2_HELLO)
            header = connection.recv(9)
            return len(header) >= 4 and header[3] == 4  # the server's first frame is its SETTINGS
    except OSError:
        return False


def describe(strategy: tf.distribute.Strategy, batch_size: int) -> list[str]:
    """Lines naming the replicas, the local devices and (several workers) every worker of the cluster."""
    replicas = strategy.num_replicas_in_sync
    devices = [device.split("/device:")[-1] for device in strategy.extended.worker_devices]
    lines = [
        f"{type(strategy).__name__}: {replicas} replicas, {batch_size // replicas} examples each per step; "
        f"{len(devices)} device{'s' if len(devices) != 1 else ''} per worker: {', '.join(devices)}"
    ]
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        resolver = strategy.cluster_resolver
        cluster, own = resolver.cluster_spec(), (resolver.task_type, resolver.task_id)
        tasks = [
            f"{job} {index} at {cluster.task_address(job, index)}{' (this process)' if (job, index) == own else ''}"
            for job in cluster.jobs if job in ("chief", "worker")
            for index in cluster.task_indices(job)
        ]  # fmt: skip
        lines.append(f"workers: {', '.join(tasks)}")
    return lines


def task_name() -> str:
    """This process's task in ``TF_CONFIG`` (``worker 1``), for the lines a non-chief worker prints."""
    try:
        task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    except ValueError:
        task = {}
    return f"{task.get('type', 'worker')} {task.get('index', 0)}"


_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


def lost_peer_error(error: Exception, command: list[str], heartbeat_timeout: float = 60.0) -> TrainingError:
    """The one-line error of a worker whose collective failed because a peer stopped.

    Args:
      error: TensorFlow's error (``UnavailableError`` and the like), whose
        message names the unhealthy tasks.
      command: this process's command line, which every worker reruns to resume.
      heartbeat_timeout: ``train.heartbeat_timeout``, named in the message.
    """
    own = task_name()
    lost = sorted({f"{job} {index}" for job, index in _TASK.findall(str(error))} - {own})
    who = " and ".join(lost) if lost else "another worker"
    return TrainingError(
        f"{own}: lost {who} of the cluster (no answer within the {heartbeat_timeout:g} s heartbeat timeout, or "
        f"its process ended); training stopped. To resume from the last checkpoint, start every worker again with the "
        f"same command: python {shlex.join(command)}"
    )
