"""What every dataset layout provides, and a dataset on disk (a layout, its root and its class table).

A layout is one small class in a file of its own (``ade20k.py``, ``voc.py``,
``folder.py``, ``cityscapes.py``) and one line of ``LAYOUTS`` in
``fcn/datasets/__init__.py``; nothing else in the framework names a layout.
"""

import dataclasses
import os

from fcn.datasets.classes import ClassTable
from fcn.datasets.files import SplitListing, display_path
from fcn.datasets.sample import SampleWriter
from fcn.errors import DataError


class Layout:
    """One way of laying out a dataset on disk. Subclasses fill in the methods.

    Attributes:
      name: the value of ``data.layout``.
      looks_for: what a root holds, for messages.
      sample_writer: the class that writes the synthetic sample data in this
        layout (``fcn/datasets/sample.py``).

    A method taking ``config`` reads the layout options of the data config
    (``DataConfig``: ``num_classes``, ``voc_train_list``, the download keys).
    """

    name = ""
    looks_for = ""
    sample_writer: type[SampleWriter] = SampleWriter

    def candidates(self, data_dir: str) -> list[str]:
        """The folders ``data_dir`` may name or contain that could be the root."""
        raise NotImplementedError

    def is_root(self, folder: str) -> bool:
        raise NotImplementedError

    def find_root(self, data_dir: str) -> str | None:
        """The dataset root at or inside ``data_dir``, or None."""
        return next((c for c in self.candidates(data_dir) if self.is_root(c)), None)

    def list_split(self, root: str, split: str, config) -> SplitListing:
        raise NotImplementedError

    def class_table(self, root: str, config) -> ClassTable:
        raise NotImplementedError

    def sample_root(self, data_dir: str) -> str:
        """Where the synthetic sample data of this layout is written inside ``data_dir``."""
        raise NotImplementedError

    def download(self, config, progress: bool) -> str:
        raise DataError(f"--download has nothing to fetch for a {self.name} dataset: point --data_dir at it")

    def ways_out(self) -> list[str]:
        return []

    def no_pairs(self, root: str, split: str) -> str:
        """What an empty split looks like, for messages."""
        return (
            f"{os.path.join(root, 'images', split)}: no image with a matching annotation in "
            f"{os.path.join(root, 'annotations', split)}"
        )


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset on disk: its layout, root folder and class table.

    Attributes:
      layout: how its files are laid out.
      root: the folder of the layout (ADEChallengeData2016, VOC2012, a folder dataset).
      classes: its class table.
      config: the data config it was opened with (layout options).
    """

    layout: Layout
    root: str
    classes: ClassTable
    config: object

    def list_split(self, split: str) -> SplitListing:
        return self.layout.list_split(self.root, split, self.config)

    def usable_pairs(self, split: str) -> tuple[tuple[str, str], ...]:
        """The (image, annotation) pairs of a split.

        Raises:
          DataError: there are none, or some files cannot be used without
            guessing (a stem with two images, an unreadable entry, a list entry
            without its files): the message lists them and the fix.
        """
        listing = self.list_split(split)
        problems = listing.problems()
        root = display_path(self.root)
        if problems:
            shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
            raise DataError(
                f"{root} ({split} split): {len(problems)} file(s) cannot be used as they are:\n  "
                + "\n  ".join(shown)
                + f"\nFix them, then rerun; --mode=check_data --data_dir {root} lists every problem."
            )
        if not listing.pairs:
            raise DataError(f"{self.layout.no_pairs(self.root, split)}; run --mode=check_data --data_dir {root}")
        return listing.pairs
