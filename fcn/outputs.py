"""Folders fcn writes into without ever writing over a file it did not write there.

Every mode that writes files a user names (``--output``, ``--save_predictions``)
claims the names it will write before any work: a name that exists and is not
in the folder's list of fcn's own files (``.fcn_outputs``), a name that is one
of the inputs, two inputs that would write the same name, or a folder inside
the dataset being read is refused with a message naming the file and the way
out, and nothing is written. The list grows before each file is written, so a
rerun may write over what an earlier run of fcn wrote there, and nothing else.
"""

import collections
import contextlib
import fcntl
import os

from fcn.datasets.files import display_path
from fcn.errors import InferenceError

LIST_FILE = ".fcn_outputs"


class OutputError(InferenceError):
    """An output folder or file fcn refuses to write; nothing was written."""


class OutputFolder:
    """The files one mode writes into one folder.

    Args:
      path: the folder (created by ``claim``).
      flag: the flag that named it, for messages (``--output``).
      list_file: the name of the folder's list of fcn's own files.
      writer: what writes there, for messages (``--mode=predict``).
    """

    def __init__(self, path: str, flag: str, list_file: str = LIST_FILE, writer: str = "fcn"):
        self.path, self.flag, self.list_file, self.writer = path, flag, list_file, writer
        self.ours = set()

    def _read_list(self) -> set[str]:
        listed = os.path.join(self.path, self.list_file)
        if not os.path.isfile(listed):
            return set()
        with open(listed, encoding="utf-8", errors="surrogateescape") as f:
            return {line.rstrip("\n") for line in f if line.strip()}

    def claim(self, names_by_input: dict, inputs=(), dataset_root: str = "") -> None:
        """Refuses, before any work, what would write over a file fcn did not write, an input, or a dataset.

        Args:
          names_by_input: input (a path, or a label for messages) -> the file
            names it writes into the folder.
          inputs: paths read by the run, which must never be written over.
          dataset_root: the root of the dataset read, in which nothing is written.

        Raises:
          OutputError: naming the file and the way out; nothing was written.
        """
        if os.path.lexists(self.path) and not os.path.isdir(self.path):
            raise OutputError(f"{self.flag} {display_path(self.path)} is not a folder: choose another {self.flag}")
        if dataset_root and _inside(self.path, dataset_root):
            raise OutputError(
                f"{self.flag} {display_path(self.path)} is inside the dataset {display_path(dataset_root)}: choose a "
                f"folder outside it (nothing was written)"
            )
        self.ours = self._read_list()
        real_inputs = {os.path.realpath(path) for path in inputs}
        writers = collections.defaultdict(list)
        for source, names in names_by_input.items():
            for name in names:
                writers[name].append(source)
        for name, sources in writers.items():
            target = os.path.join(self.path, name)
            if len(sources) > 1:
                raise OutputError(
                    f"{display_path(sources[0])} and {display_path(sources[1])} would both write "
                    f"{display_path(target)}: rename one of them, or run them with different {self.flag} folders "
                    "(nothing was written)"
                )
            if os.path.realpath(target) in real_inputs:
                raise OutputError(
                    f"{self.flag} {display_path(self.path)} would write over the input image {display_path(target)}: choose "
                    f"another {self.flag} folder (nothing was written)"
                )
            if os.path.lexists(target) and name not in self.ours:
                raise OutputError(
                    f"{display_path(target)} exists and was not written by {self.writer}: choose another {self.flag} folder, or "
                    "move the file away (nothing was written)"
                )

    def record(self, names) -> None:
        """Adds ``names`` to the folder's list before they are written (creates the folder)."""
        os.makedirs(self.path, exist_ok=True)
        new = [name for name in names if name not in self.ours]
        if new:
            with open(os.path.join(self.path, self.list_file), "a", encoding="utf-8", errors="surrogateescape") as f:
                f.writelines(name + "\n" for name in new)
            self.ours.update(new)


def check_writable(*folders: tuple[str, str], error=OutputError) -> None:
    """Refuses, before any work, a folder fcn would write into and cannot.

    Args:
      folders: (folder, the flag or key that names it) pairs. A folder that
        exists must be one this process may write into; one that does not, the
        nearest folder above it that exists. A symbolic link to nothing or in
        a loop, on the way or at the end, is refused too.
      error: the exception class raised.

    Raises:
      error: naming the folder, the flag and the fix.
    """
    for folder, flag in folders:
        probe = os.path.abspath(folder)
        while not os.path.exists(probe):  # False for a link to nothing and for a link loop
            if os.path.islink(probe):
                raise error(f"{flag} {display_path(folder)}: {display_path(probe)} is a symbolic link to nothing or in a "
                            "loop: remove it or fix where it points")  # fmt: skip
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        if not os.path.isdir(probe):
            raise error(f"{flag} {display_path(folder)}: {display_path(probe)} is a file, not a folder: choose another {flag}")
        if not os.access(probe, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            raise error(
                f"{flag} {display_path(folder)}: {display_path(probe)} is not writable (permission denied): choose another "
                f"{flag}, or give this user write access (e.g. chmod u+w {display_path(probe)})"
            )


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies under it (symbolic links resolved)."""
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@contextlib.contextmanager
def exclusive(folder: str, what: str, error=InferenceError):
    """Within it, this process is the only one of fcn working in ``folder`` (a run directory).

    An advisory lock (``flock``) on the folder itself, so that no file is
    added: the system releases it when the process ends, however it ends, so
    a killed run never leaves its folder locked. The message of the next one
    names the holder's process, read from ``/proc/locks`` where there is one.

    Raises:
      error: another process holds the folder.
    """
    os.makedirs(folder, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _lock_holder(os.fstat(handle).st_ino)
            raise error(
                f"{display_path(folder)} is in use by {what} ({f'process {holder}' if holder else 'another process'}): "
                "wait for it to end, or use another folder; nothing was changed"
            ) from None
        yield
    finally:
        os.close(handle)  # releases the lock


def _lock_holder(inode: int) -> str:
    """The process id holding an flock on the file of ``inode`` (from ``/proc/locks``), or ""."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()  # "1: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END"
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                    return fields[4]
    except OSError:
        pass
    return ""
