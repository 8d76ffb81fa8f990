"""The errors fcn raises on purpose: one root, caught once by ``FCN.py``.

Every error here carries a message for the user that names the file, key or
flag at fault and the fix. ``exit_status`` is what ``FCN.py`` exits with:
1 for a failure of the work, 2 for a configuration or flag that cannot be used.
"""


class FcnError(Exception):
    """The root: an error whose message is meant for the user."""

    exit_status = 1


class UsageError(FcnError):
    """A flag, config or combination of them that cannot be used (exit status 2)."""

    exit_status = 2


class ConfigError(UsageError, ValueError):
    """A configuration file or override that cannot be used."""


class DataError(FcnError, ValueError):
    """A dataset or file that cannot be used; the message names it and the fix."""


class DatasetNotFoundError(DataError):
    """No dataset of the expected layout where the config points."""


class ClassTableMismatchError(DataError):
    """The config's ``data.num_classes``, the dataset's and the run's class tables disagree."""

    exit_status = 2


class FolderInUseError(DataError):
    """The folder meant for the sample data already holds other files."""


class DownloadError(FcnError, RuntimeError):
    """A dataset or weight file could not be downloaded, verified or unpacked."""


class WeightsError(FcnError, ValueError):
    """A weight file that cannot be used for the model."""


class CheckpointError(FcnError, RuntimeError):
    """A checkpoint that cannot be found, read or used."""


class TrainingError(FcnError, RuntimeError):
    """Training cannot start or go on; the message says why."""


class InferenceError(FcnError, RuntimeError):
    """Inference cannot run as asked (missing weights, an image it cannot use)."""
