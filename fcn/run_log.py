"""What a training run tells about itself in its directory, readable without TensorBoard.

- ``train.log``: the whole console output of every accepted start of the
  run, appended, each start opened by a header line (``console_log``); a
  progress bar's redrawn line is kept once, as it last stood.
- ``history.jsonl``: one JSON line per training summary and per validation
  (``append_history``); a resumed run appends after it, and ``read_history``
  keeps, for each kind, the records of the latest start at each step.
- ``curves.png``: training and validation loss, and validation mean IoU, drawn
  from the history (``write_curves``) at each validation.
- The summary block printed at the end of every start (``summary``): how far
  the run got, its best validation and where its checkpoint is, and the
  commands to type next.
"""

import contextlib
import datetime
import json
import os
import sys

LOG_FILE = "train.log"
HISTORY_FILE = "history.jsonl"
CURVES_FILE = "curves.png"


# ---------------------------------------------------------------------------
# The console, into train.log.


class _LogFile:
    """``train.log``, opened only once the run is accepted; what comes before is held until then."""

    def __init__(self, path: str, header: str):
        self.path, self.held, self.file = path, [header], None

    def write(self, text: str) -> None:
        if self.file is None:
            self.held.append(text)
        else:
            self.file.write(text)

    def open(self) -> None:
        if self.file is None:
            self.file = open(self.path, "a", encoding="utf-8")
            self.file.write("".join(self.held))
            self.held = []
            self.file.flush()

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _Tee:
    """A text stream that writes to ``stream`` and, by whole lines, to ``log``."""

    def __init__(self, stream, log: _LogFile):
        self.stream, self.log, self.pending = stream, log, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.log.write(line.rsplit("\r", 1)[-1] + "\n")  # a redrawn line (a progress bar) as it last stood
        self.pending = self.pending.rsplit("\r", 1)[-1]
        if lines:
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def close_line(self) -> None:
        if self.pending.strip():
            self.log.write(self.pending + "\n")
        self.pending = ""

    def __getattr__(self, name):  # isatty, encoding, fileno...: the console's
        return getattr(self.stream, name)


_active: list[_LogFile] = []  # the log of the console_log in effect, if any


def accept_console_log() -> None:
    """The run is accepted: ``train.log`` is opened and gets the console so far (no-op outside ``console_log``).

    Until then nothing is written, so that a refused run leaves its run
    directory as it was.
    """
    if _active:
        os.makedirs(os.path.dirname(_active[-1].path) or ".", exist_ok=True)
        _active[-1].open()


@contextlib.contextmanager
def console_log(logs_dir: str, enabled: bool = True):
    """Within it, standard output and error are also appended to ``logs_dir/train.log``.

    A header line names the start (time, command line). The file is written
    from ``accept_console_log`` on (the console before it included). An error
    that ends an accepted start (an ``FcnError``, which ``FCN.py`` prints after
    this returns) is written to the log too.
    """
    if not enabled:
        yield
        return
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    log = _LogFile(os.path.join(logs_dir, LOG_FILE), f"==== {now} start: {' '.join(sys.argv) or 'python'} (pid {os.getpid()})\n")
    out, err = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    previous = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    _active.append(log)
    try:
        yield
    except Exception as error:
        from fcn.errors import FcnError

        if isinstance(error, FcnError):
            out.close_line(), err.close_line()
            log.write(f"FCN.py: {error}\n")
        raise
    finally:
        _active.pop()
        sys.stdout, sys.stderr = previous
        out.close_line(), err.close_line()
        log.close()


# ---------------------------------------------------------------------------
# The history and its curves.


def append_history(logs_dir: str, kind: str, step: int, values: dict) -> None:
    """Appends one record (``kind`` ``train`` or ``validation``) to ``logs_dir/history.jsonl``."""
    record = {"kind": kind, "step": int(step), **{name: float(value) for name, value in values.items()}}
    with open(os.path.join(logs_dir, HISTORY_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_history(logs_dir: str) -> dict[str, list[dict]]:
    """kind -> its records by step, as the run now stands.

    A resumed run goes back to its checkpoint's step: a record at step s
    replaces every earlier record of its kind at steps s and beyond (what
    the run did after its last checkpoint, before it was stopped).
    """
    history: dict[str, list[dict]] = {}
    path = os.path.join(logs_dir, HISTORY_FILE)
    if not os.path.isfile(path):
        return history
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
                kind, step = record["kind"], int(record["step"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a killed process
            records = [r for r in history.get(kind, []) if r["step"] < step]
            history[kind] = records + [record]
    return history


def write_curves(logs_dir: str) -> str:
    """Draws ``curves.png`` from the history: losses (training, validation) and validation mean IoU.

    Returns:
      The path written.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend, nothing shown

    history = read_history(logs_dir)
    train, validation = history.get("train", []), history.get("validation", [])
    figure = Figure(figsize=(10, 4), dpi=100, layout="tight")
    loss_axes, iou_axes = figure.subplots(1, 2)
    if train:
        loss_axes.plot([r["step"] for r in train], [r["loss"] for r in train], label="training", linewidth=1)
    if validation:
        steps = [r["step"] for r in validation]
        loss_axes.plot(steps, [r["loss"] for r in validation], "o-", label="validation", markersize=3)
        iou_axes.plot(steps, [r["mean_iou"] for r in validation], "o-", color="tab:green", markersize=3)
    loss_axes.set(title="loss", xlabel="step")
    loss_axes.legend(loc="upper right")
    iou_axes.set(title="validation mean IoU", xlabel="step")
    for axes in (loss_axes, iou_axes):
        axes.grid(alpha=0.3)
    path = os.path.join(logs_dir, CURVES_FILE)
    temporary = path + ".tmp.png"
    figure.savefig(temporary)
    os.replace(temporary, path)  # a reader never sees half a picture
    return path


# ---------------------------------------------------------------------------
# The summary.


def validation_line(step: int, values: dict) -> str:
    """The console line of one validation."""
    return (
        f"step {step}: validation loss {values['loss']:.4f}, pixel accuracy {values['pixel_accuracy']:.4f}, "
        f"mean IoU {values['mean_iou']:.4f}"
    )


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def summary(
    logs_dir: str,
    status: str,
    step: int,
    max_steps: int,
    start_step: int,
    best_mean_iou: float,
    best_step: int | None,
    seconds: float,
    images: int,
    learning_rate: float,
) -> str:
    """The block printed at the end of every start of a run.

    Args:
      status: ``finished``, ``interrupted`` or ``non_finite``.
      step: the step reached; ``start_step`` the one this start resumed at.
      best_mean_iou, best_step: the best validation so far and its step (None: none yet).
      seconds, images: wall time of this start and the images it trained on.
      learning_rate: ``train.learning_rate``, for the advice after a non-finite loss.
    """
    config = os.path.join(logs_dir, "config.yaml")
    best_dir = os.path.join(logs_dir, "best")
    how = {"finished": "finished", "interrupted": "interrupted", "non_finite": "stopped (non-finite loss)"}[status]
    speed = f"{images / seconds:.2f} images/s" if seconds > 0 and images else "no training step"
    lines = [
        f"==== run {logs_dir}: {how} at step {step} of {max_steps}",
        f"this start: steps {start_step} -> {step} in {_duration(seconds)} ({speed}, start-up and validations included)",
    ]
    if best_step is not None:
        lines.append(f"best validation mean IoU: {best_mean_iou:.4f} at step {best_step}, checkpoint {best_dir}")
    else:
        lines.append("best validation mean IoU: none yet (no validation ran)")
    validations = read_history(logs_dir).get("validation", [])
    if validations:
        lines.append(f"last validation: {validation_line(validations[-1]['step'], validations[-1])}")
    lines.append(f"curves: {os.path.join(logs_dir, CURVES_FILE)}; log: {os.path.join(logs_dir, LOG_FILE)}")
    lines.append("next:")
    train = f"python FCN.py --mode=train --config {config}"
    if status == "interrupted":
        lines.append(f"  {train}    # resume from the last checkpoint")
    elif status == "non_finite":
        lines.append(f"  {train} --learning_rate {learning_rate / 10:g}    # resume at a lower rate")
    if best_step is not None:
        for mode, extra in (("evaluate", ""), ("visualize", ""), ("predict", " --image PHOTO.jpg")):
            lines.append(f"  python FCN.py --mode={mode} --config {config} --checkpoint {best_dir}{extra}")
    if status == "finished":
        lines.append(f"  {train} --max_steps {2 * max_steps}    # train on")
    return "\n".join(lines)
