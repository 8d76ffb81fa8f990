"""Child processes of FCN.py that skip the start of an interpreter and of TensorFlow.

A test that needs its own process (signals, kill -9, op determinism, logical
devices, a tf.distribute cluster) would otherwise pay ~8 s of CPU for
``import tensorflow`` in every child. The server here imports TensorFlow, Keras
and ``fcn`` once, without starting TensorFlow's runtime (no op runs, no device is
listed), and forks a child for each request: the child is a real process with
its own pid, signals, standard streams, working directory and environment, and
runs ``FCN.py`` as ``python FCN.py ...`` would (``__name__ == "__main__"``).
What TensorFlow sets up at run time (devices, determinism, a cluster, thread
pools) starts in the child.

Each request forks twice: the server forks a watcher, which forks the program
and reports its pid and then its wait status over the request's connection. The
server itself never waits on a program, so any number can run at once.

The tests use ``Process`` (like ``subprocess.Popen``) and ``run`` (like
``subprocess.run``); one server per test process starts on first use. Run as a
script, this file is the server.
"""

import atexit
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback

_HEADER = struct.Struct("!I")


def _read_exactly(connection, size):
    chunks = []
    while size:
        chunk = connection.recv(size)
        if not chunk:
            raise EOFError("the connection closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------
# The server.


def _run_program(request):
    """In the forked program: FCN.py's command line, as a fresh interpreter would run it; never returns."""
    import runpy

    code = 0
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as the interpreter does for a script
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:  # as the interpreter does: the traceback on stderr, status 1
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()  # what the interpreter runs at exit (os._exit below skips it)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _serve_one(connection, request, streams):
    """In the watcher: starts the program, reports its pid, waits, reports its wait status; never returns."""
    try:
        pid = os.fork()
        if pid == 0:
            connection.close()
            for target, fd in enumerate(streams):
                os.dup2(fd, target)
                os.close(fd)
            _run_program(request)
        for fd in streams:
            os.close(fd)
        connection.sendall(f"{pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        connection.sendall(f"{status}\n".encode())
    finally:
        os._exit(0)


def serve(path):
    """Imports what FCN.py needs, then forks a program for each request on the Unix socket ``path``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tensorflow  # noqa: F401  (the point: imported once, here)

    import FCN  # noqa: F401

    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.settimeout(2.0)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        _reap_watchers()
        try:
            connection, _ = listener.accept()
        except socket.timeout:
            if os.getppid() != parent:  # the test process is gone (killed, not stopped): so is the server
                return
            continue
        connection.settimeout(None)
        try:
            header, streams, _, _ = socket.recv_fds(connection, _HEADER.size, 3)
            if len(header) < _HEADER.size:
                header += _read_exactly(connection, _HEADER.size - len(header))
            request = json.loads(_read_exactly(connection, _HEADER.unpack(header)[0]))
        except (OSError, EOFError, ValueError):
            connection.close()
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            _serve_one(connection, request, streams)
        connection.close()
        for fd in streams:
            os.close(fd)


def _reap_watchers():
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


# ---------------------------------------------------------------------------
# The client.


class Server:
    """A running server (started on first use, stopped at exit)."""

    def __init__(self):
        self._directory = tempfile.mkdtemp(prefix="fcn-forkserver-")
        self.path = os.path.join(self._directory, "socket")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        with tempfile.TemporaryFile() as errors:
            self._process = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), self.path],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, env=env,
            )
            if self._process.stdout.readline().strip() != b"ready":
                self._process.wait()
                errors.seek(0)
                raise RuntimeError(f"the fork server did not start (status {self._process.returncode}):\n"
                                   + errors.read().decode(errors="replace")[-3000:])
        atexit.register(self.stop)

    def stop(self):
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        try:
            os.remove(self.path)
            os.rmdir(self._directory)
        except OSError:
            pass


_server = None


def server():
    global _server
    if _server is None or _server._process.poll() is not None:
        _server = Server()
    return _server


class Process:
    """A ``subprocess.Popen``-like handle on FCN.py run by the fork server.

    Standard output and error go to temporary files (no pipe to fill);
    ``communicate`` returns them as text. ``returncode`` is the exit status, or
    minus the signal that ended the program, as with ``subprocess.Popen``.
    """

    def __init__(self, command, cwd, env):
        """``command``: ``[sys.executable, "FCN.py", ...]`` as for ``subprocess.Popen``."""
        self.args = list(command)
        if self.args[0] != sys.executable:
            raise ValueError(f"the fork server runs Python scripts with {sys.executable}, not {self.args[0]}")
        self.returncode = None
        self._stdout = tempfile.TemporaryFile()
        self._stderr = tempfile.TemporaryFile()
        self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._connection.connect(server().path)
        body = json.dumps({"argv": self.args[1:], "cwd": str(cwd), "env": dict(env)}).encode()
        with open(os.devnull, "rb") as stdin:
            socket.send_fds(self._connection, [_HEADER.pack(len(body))],
                            [stdin.fileno(), self._stdout.fileno(), self._stderr.fileno()])
        self._connection.sendall(body)
        self._buffer = b""
        self.pid = int(self._read_line(120.0))  # the server forks at once; a hung one fails the test

    def _read_line(self, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            self._connection.settimeout(remaining)
            try:
                chunk = self._connection.recv(64)
            except (socket.timeout, BlockingIOError):
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            if not chunk:
                raise RuntimeError("the fork server's watcher closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def wait(self, timeout=None):
        if self.returncode is None:
            status = int(self._read_line(timeout))
            self.returncode = os.waitstatus_to_exitcode(status)
            self._connection.close()
        return self.returncode

    def poll(self):
        if self.returncode is None:
            try:
                self.wait(0.0)
            except subprocess.TimeoutExpired:
                pass
        return self.returncode

    def send_signal(self, signum):
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def communicate(self, timeout=None):
        self.wait(timeout)
        outputs = []
        for stream in (self._stdout, self._stderr):
            stream.seek(0)
            outputs.append(stream.read().decode(errors="replace"))
            stream.close()
        return tuple(outputs)


def run(command, cwd, env, timeout=None):
    """Like ``subprocess.run(command, capture_output=True, text=True)``, through the server."""
    process = Process(command, cwd, env)
    try:
        stdout, stderr = process.communicate(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


if __name__ == "__main__":
    serve(sys.argv[1])
