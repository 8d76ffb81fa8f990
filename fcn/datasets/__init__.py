"""Datasets: the layouts the framework reads, found, generated or downloaded by one registry.

A dataset is a layout (where the files are and how images and annotations
pair up) plus a class table (which annotation values are classes, their names
and colours, and which are ignored):

- ``classes.py``: ``ClassTable``, the one class table every output uses.
- ``files.py``: folder listings and split pairing; ``decode.py``: reading one
  example (TensorFlow; import it where examples are read).
- one file per layout, each owning its listing rules, built-in class table,
  sample-data writer and download archive: ``ade20k.py``, ``voc.py``,
  ``folder.py``. ``LAYOUTS`` below is the registry the config validates
  ``data.layout`` against; adding a layout is a new file and one line here.
- ``sample.py``: the synthetic sample scenes, written in any layout.

Inside the framework the splits are always ``training`` and ``validation``
and labels are train ids 0..C-1 with 255 (``IGNORE_LABEL``) for ignored
pixels. The functions here take the data section of the config
(``DataConfig``) as ``config``: ``data_dir``, ``layout``, ``num_classes`` and
the layout options.
"""

import dataclasses
import os

from fcn.datasets import ade20k, cityscapes, folder, sample, voc
from fcn.datasets.classes import CLASSES_FILE, ClassTable
from fcn.datasets.files import SplitListing, display_path
from fcn.datasets.layout import Dataset, Layout
from fcn.errors import ClassTableMismatchError, DataError, DatasetNotFoundError, FolderInUseError

# name -> layout. Auto-detection tries them in this order: a folder dataset is the one with classes.csv.
LAYOUTS = {
    "folder": folder.FolderLayout(),
    "ade20k": ade20k.Ade20kLayout(),
    "voc": voc.VocLayout(),
    "cityscapes": cityscapes.CityscapesLayout(),
}
DEFAULT_LAYOUT = "ade20k"  # what data.layout auto generates or downloads: the default recipe's


@dataclasses.dataclass(frozen=True)
class LayoutOptions:
    """The data options a dataset is opened with when no config is given (``DataConfig`` has the same fields)."""

    data_dir: str = "data"
    layout: str = "auto"
    voc_train_list: str = "train"
    num_classes: int = 0


def generate_sample_dataset(root: str, layout: str = DEFAULT_LAYOUT, **options) -> str:
    """Writes the synthetic sample data in ``layout`` into ``root`` (see ``sample.generate`` for ``options``)."""
    return sample.generate(root, layout=layout, writer=LAYOUTS[layout].sample_writer, **options)


def is_sample_complete(root: str, layout: str = DEFAULT_LAYOUT) -> bool:
    """Whether ``root`` holds a finished sample dataset of ``layout``."""
    return sample.is_complete(root, layout, LAYOUTS[layout].sample_writer)


def layouts_for(config) -> list[Layout]:
    """The layout ``data.layout`` names, or all of them in detection order for ``auto``."""
    if config.layout == "auto":
        return list(LAYOUTS.values())
    return [LAYOUTS[config.layout]]


def find_dataset(config) -> Dataset | None:
    """The dataset at or inside ``config.data_dir`` in the configured layout, or None."""
    for layout in layouts_for(config):
        root = layout.find_root(config.data_dir)
        if root is not None:
            return open_dataset(config, root, layout)
    return None


def open_dataset(config, root: str, layout: Layout | None = None) -> Dataset:
    """The dataset whose root is ``root`` (the layout detected unless configured).

    Raises:
      DataError: ``root`` holds no dataset of the layout, or its class table is
        unusable or disagrees with ``data.num_classes``.
    """
    if layout is None:
        layout = next((candidate for candidate in layouts_for(config) if candidate.is_root(root)), None)
        if layout is None:
            raise DataError(
                f"{display_path(root)} holds no dataset of the layout {config.layout} "
                f"({'; '.join(candidate.looks_for for candidate in layouts_for(config))})"
            )
    classes = layout.class_table(root, config)
    check_num_classes(config.num_classes, classes)
    return Dataset(layout, root, classes, config)


def as_dataset(root, config=None) -> Dataset:
    """``root`` as a Dataset: a Dataset as it is, a root folder opened with ``config`` (default: the defaults)."""
    if isinstance(root, Dataset):
        return root
    return open_dataset(config or LayoutOptions(), root)


def check_num_classes(num_classes: int, classes: ClassTable) -> None:
    """Refuses a ``data.num_classes`` other than 0 (follow the table) or the table's number of classes."""
    if num_classes not in (0, classes.num_classes):
        raise ClassTableMismatchError(
            f"data.num_classes is {num_classes}, but the class table ({classes.source}) has {classes.num_classes} "
            f"classes: set data.num_classes to {classes.num_classes}, or to 0 to follow the class table "
            f"(--set data.num_classes={classes.num_classes}); for a trained run, pass its --config LOGS_DIR/config.yaml"
        )


def prepare_dataset(config, progress: bool = True, generate_sample: bool = True) -> Dataset:
    """Finds the dataset, generating or downloading it when the config says so.

    A dataset already at ``data_dir`` is always used as it is, also with
    ``synthetic`` set: the sample data is generated only where there is none.

    Args:
      config: the data section of the run's config.
      progress: show progress bars.
      generate_sample: False for a caller that only reads (``--mode=check_data``):
        ``synthetic`` then generates nothing, so a mistyped ``data_dir`` is reported.

    Returns:
      The Dataset (its layout, root and class table).

    Raises:
      DatasetNotFoundError: no dataset and neither ``synthetic`` nor
        ``download`` set; the message says where it looked and the ways out.
      DataError: the sample data's folder holds something that is neither a
        dataset nor the sample data (it is left untouched).
    """
    dataset = find_dataset(config)
    if dataset is not None:
        return dataset
    layout = LAYOUTS[DEFAULT_LAYOUT if config.layout == "auto" else config.layout]
    if config.synthetic and generate_sample:
        try:
            root = generate_sample_dataset(layout.sample_root(config.data_dir), layout.name, progress=progress)
        except FolderInUseError as error:
            raise FolderInUseError(f"{error}. Point --data_dir at another folder for the sample data.") from None
        return open_dataset(config, root, layout)
    if config.download:
        return open_dataset(config, layout.download(config, progress), layout)
    looked = [
        f"  {display_path(os.path.abspath(candidate))}   ({candidate_layout.looks_for})\n"
        for candidate_layout in layouts_for(config)
        for candidate in candidate_layout.candidates(config.data_dir)
    ]
    what = "ADE20K" if config.layout in ("auto", "ade20k") else f"{config.layout}-layout"
    note = ""
    if config.synthetic:
        note = "--mode=check_data only checks: it does not generate the sample data (--mode=train does)\n"
    ways = layout.ways_out() + [
        f"--set data.layout=LAYOUT          {', '.join(LAYOUTS)} (default auto: any of them)",
        "--config configs/sample.yaml    train on the small synthetic sample data instead",
    ]
    raise DatasetNotFoundError(
        f"no {what} dataset found: looked in\n" + "".join(looked) + note + "Ways out:\n" + "\n".join(f"  {way}" for way in ways)
    )


# ---------------------------------------------------------------------------
# A run's class table.


def run_classes_path(logs_dir: str) -> str:
    return os.path.join(logs_dir, CLASSES_FILE)


def run_classes(logs_dir: str, config) -> ClassTable:
    """The class table of a run: the one it recorded, else its dataset's, else ADE20K's.

    Training writes ``LOGS_DIR/classes.csv`` when it starts, so a run's
    classes are known where its dataset is absent. A run directory without
    that file (a run of an earlier version) takes the table of the dataset at
    ``data_dir``, and without one ADE20K's (what earlier versions trained on),
    unless ``data.layout`` names another layout.

    Raises:
      DataError: an unreadable ``classes.csv``, no table to be found, or a
        ``data.num_classes`` that disagrees with the table.
    """
    path = run_classes_path(logs_dir)
    if os.path.isfile(path):
        classes = ClassTable.read_csv(path)
    else:
        dataset = find_dataset(config)
        if dataset is not None:
            classes = dataset.classes
        elif config.layout in ("auto", "ade20k"):
            classes = ade20k.class_table(config.num_classes or ade20k.NUM_CLASSES)
        else:
            raise DataError(
                f"the class table of this run is unknown: {path} does not exist (training writes it) and there is no "
                f"{config.layout} dataset at {config.data_dir}; pass the run's --logs_dir or --data_dir"
            )
    check_num_classes(config.num_classes, classes)
    return classes


def dataset_for_run(root, config, classes: ClassTable) -> Dataset:
    """The dataset at ``root`` (a folder or a Dataset), checked to have the run's classes.

    Raises:
      ClassTableMismatchError: the dataset's annotation values are not the
        run's classes (scoring or showing it would mislabel every pixel).
    """
    dataset = as_dataset(root, config)
    if not dataset.classes.same_classes(classes):
        raise ClassTableMismatchError(
            f"{display_path(dataset.root)} has {dataset.classes.describe()}, but the run was trained on "
            f"{classes.describe()} ({dataset.classes.difference(classes)}): point --data_dir at the run's dataset"
        )
    return dataset


def record_run_classes(logs_dir: str, classes: ClassTable) -> str:
    """Writes the run's ``classes.csv``, or checks the one there is the same table.

    Raises:
      ClassTableMismatchError: the run was trained on other classes.
    """
    path = run_classes_path(logs_dir)
    if os.path.isfile(path):
        recorded = ClassTable.read_csv(path)
        if recorded.same_classes(classes) and recorded.names == classes.names:
            return path
        raise ClassTableMismatchError(
            f"{path}: this run was trained on another class table ({recorded.describe()}) than the dataset's "
            f"({classes.describe()}; {recorded.difference(classes)}); train into another --logs_dir"
        )
    os.makedirs(logs_dir, exist_ok=True)
    classes.write_csv(path)
    return path


def find_dataset_root(data_dir: str, config=None) -> str | None:
    """The root of the dataset at or inside ``data_dir`` (any layout unless ``config`` names one), or None."""
    dataset = find_dataset(dataclasses.replace(config or LayoutOptions(), data_dir=data_dir, num_classes=0))
    return None if dataset is None else dataset.root


def list_split(root, split: str, config=None) -> SplitListing:
    """Pairs the images and annotations of ``split`` (``root``: a root folder or a Dataset)."""
    return as_dataset(root, config).list_split(split)


def usable_pairs(root, split: str, config=None) -> tuple[tuple[str, str], ...]:
    """``Dataset.usable_pairs`` of ``root`` (a root folder or a Dataset)."""
    return as_dataset(root, config).usable_pairs(split)
