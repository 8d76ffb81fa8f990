"""``--mode=visualize``: a trained model's predictions on a random batch of a split, in its class table's colours.

For the ``k``-th image of the batch it writes ``inp_k.png`` (the image),
``gt_k.png`` (the ground truth) and ``pred_k.png`` (the prediction at the
image's own size, with the protocol of ``--mode=evaluate``), both label maps in the colours of the run's
class table with ignored pixels (ADE20K's 0 "other", 255) black, and ``visualize.png``: one row per image with
image | ground truth | prediction and a legend of the classes present.
With the CRF stage (``model.crf``) the FCN's own prediction is shown beside
the CRF-refined one: ``pred_fcn_k.png`` holds it, ``pred_k.png`` the refined
labels, and the figure has the columns image | ground truth | FCN | FCN + CRF.
The batch is drawn from the split's files with ``train.seed`` (``--seed``):
the same seed shows the same images.
"""

import dataclasses
import os
import sys

import numpy as np

from fcn import datasets, errors, inference, outputs
from fcn.config import Config
from fcn.datasets import ade20k, decode
from fcn.datasets.classes import DEFAULT_IGNORE_NAME, IGNORE_LABEL

FIGURE_FILE = "visualize.png"


def legend_classes(*label_maps) -> list[int]:
    """Train ids present in any of the label maps (ignored 255 left out), ascending."""
    present = set()
    for label_map in label_maps:
        present.update(int(i) for i in np.unique(np.asarray(label_map)))
    return sorted(i for i in present if 0 <= i < IGNORE_LABEL)


def comparison_figure(images, labels, predictions, names=None, titles=None, fcn_predictions=None, classes=None):
    """One row per image: image | ground truth | prediction, and a legend of the classes present.

    Args:
      images: uint8 (H, W, 3) arrays; sizes may differ.
      labels: train-id maps (H, W) of the same sizes (255 ignored, drawn black), or Nones.
      predictions: train-id maps (H, W) of the same sizes.
      names: class names by train id (default: ADE20K's).
      titles: an optional title per row (e.g. the file name).
      fcn_predictions: the FCN's own predictions when ``predictions`` are
        CRF-refined: shown in a column "FCN" before "FCN + CRF".
      classes: the run's ``ClassTable``: colours and names (default ADE20K's).

    Returns:
      a matplotlib Figure (no pyplot state, so it works headless and in notebooks).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    classes = classes or ade20k.class_table()
    names = list(names or classes.names)
    columns = [predictions] if fcn_predictions is None else [fcn_predictions, predictions]
    headings = ("image", "ground truth") + (("prediction",) if fcn_predictions is None else ("FCN", "FCN + CRF"))
    present = legend_classes(*[l for l in labels if l is not None], *[p for column in columns for p in column])
    aspects = [image.shape[0] / image.shape[1] for image in images]  # each row as tall as its image needs
    legend_rows = (len(present) + 1 + 5) // 6
    width = 4 * len(headings)
    height = sum(4 * aspect + 0.4 for aspect in aspects) + 0.3 * legend_rows + 0.3
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(len(images), len(headings), squeeze=False, height_ratios=aspects)
    for row, (image, label, *row_predictions) in enumerate(zip(images, labels, *columns)):
        panels = (image, None if label is None else classes.colourise(label), *map(classes.colourise, row_predictions))
        for column, (panel, heading) in enumerate(zip(panels, headings)):
            ax = axes[row, column]
            ax.axis("off")
            if panel is None:
                ax.text(0.5, 0.5, "no annotation", ha="center", va="center", transform=ax.transAxes)
                continue
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(inference.figure_text(titles[row]) if titles and column == 0 else heading, fontsize=9)
    handles = [Patch(facecolor=classes.palette()[i] / 255.0, edgecolor="grey", label=inference.figure_text(names[i])) for i in present]
    named = sorted({classes.ignore_name(value) for value in classes.ignore_values} - {DEFAULT_IGNORE_NAME})
    ignored = f"{' / '.join(named)} (ignored)" if named else DEFAULT_IGNORE_NAME
    handles.append(Patch(facecolor="black", label=inference.figure_text(ignored)))
    figure.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    return figure


@dataclasses.dataclass
class VisualizeResult:
    """What ``visualize`` wrote.

    Attributes:
      shown: the image files shown, in the order of ``k``.
      output_dir: the folder written.
      skipped: the unusable files drawn (not shown), with their reasons.
      checkpoint: the checkpoint prefix used.
    """

    shown: list
    output_dir: str
    skipped: dict
    checkpoint: str


def visualize(config: Config, root: str, output_dir: str = "", checkpoint: str = "") -> VisualizeResult:
    """``--mode=visualize``: see the module docstring.

    Args:
      config: the run's config (``evaluate.split``, ``evaluate.visualize_images``,
        ``train.seed``, the model shape and ``logs_dir``).
      root: the dataset root.
      output_dir: where to write (default ``LOGS_DIR/visualize``).
      checkpoint: see ``inference.restore_model``.

    Raises:
      inference.InferenceError: no usable checkpoint.
      errors.DataError: the split holds no pairs.
    """
    folder = None
    if output_dir:  # a user's folder: claimed before any work, nothing written over a file fcn did not write
        names = [f"{kind}_{k}.png" for k in range(config.evaluate.visualize_images) for kind in ("inp", "gt", "pred", "pred_fcn")]
        folder = outputs.OutputFolder(output_dir, "--output", writer="--mode=visualize")
        folder.claim({"visualize": names + [FIGURE_FILE]}, dataset_root=datasets.as_dataset(root).root)
    predictor, prefix = inference.predictor_from_config(config, checkpoint, with_fcn=True)
    classes = predictor.classes
    dataset = datasets.dataset_for_run(root, config.data, classes)
    pairs = dataset.usable_pairs(config.evaluate.split)
    order = np.random.default_rng(config.train.seed).permutation(len(pairs))
    output_dir = output_dir or os.path.join(config.logs_dir, "visualize")

    def write(name, picture):
        if folder is not None:
            folder.record([name])
        os.makedirs(output_dir, exist_ok=True)
        inference.write_rgb_png(os.path.join(output_dir, name), picture)

    images, labels, predictions, fcn_predictions, shown, skipped = [], [], [], [], [], {}
    for index in order:  # draws on past unusable files until the batch is full
        if len(shown) == config.evaluate.visualize_images:
            break
        image_path, annotation_path = pairs[index]
        refused = inference.too_large(image_path, config.evaluate.max_pixels)
        if refused:
            skipped[image_path] = refused
            continue
        try:
            image, label = decode.load_example(image_path, annotation_path, dataset.classes)
        except errors.DataError as error:
            skipped[image_path] = str(error)
            continue
        prediction = predictor.labels(image[None])  # (1, H, W), or [FCN alone, FCN + CRF]
        k = len(shown)
        if isinstance(prediction, (list, tuple)):
            fcn_prediction, prediction = (p[0].numpy() for p in prediction)
            write(f"pred_fcn_{k}.png", classes.colourise(fcn_prediction))
            fcn_predictions.append(fcn_prediction)
        else:
            prediction = prediction[0].numpy()  # (H, W)
        write(f"inp_{k}.png", image)
        write(f"gt_{k}.png", classes.colourise(label))
        write(f"pred_{k}.png", classes.colourise(prediction))
        images.append(image)
        labels.append(label)
        predictions.append(prediction)
        shown.append(image_path)
    if shown:
        figure = comparison_figure(
            images, labels, predictions, titles=[os.path.basename(p) for p in shown], fcn_predictions=fcn_predictions or None,
            classes=classes,
        )
        if folder is not None:
            folder.record([FIGURE_FILE])
        figure.savefig(os.path.join(output_dir, FIGURE_FILE), dpi=100)
    return VisualizeResult(shown, output_dir, skipped, prefix)


def run(config: Config, args) -> int:
    """``--mode=visualize``: pictures of a random validation batch; exit status 1 when none could be shown."""
    outputs.check_writable((args.output or os.path.join(config.logs_dir, "visualize"), "--output" if args.output else "--logs_dir"))
    dataset = datasets.prepare_dataset(config.data, progress=not args.no_progress)
    result = visualize(config, dataset, args.output, args.checkpoint)
    for reason in result.skipped.values():
        print(f"skipped {reason}", file=sys.stderr)
    print(f"checkpoint: {result.checkpoint}")
    if not result.shown:
        print(f"FCN.py: no image of the {config.evaluate.split} split could be shown (see above); nothing was written",
              file=sys.stderr)  # fmt: skip
        return 1
    for k, path in enumerate(result.shown):
        print(f"{k}: {path}")
    pictures = "inp,gt,pred_fcn,pred" if config.model.crf else "inp,gt,pred"
    print(f"written: {result.output_dir}/{{{pictures}}}_k.png and {FIGURE_FILE}")
    return 0
