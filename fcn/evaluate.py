"""``--mode=evaluate``: the official benchmark numbers of a trained model on a whole split.

Every image is segmented with the test protocol of ``fcn.predict.Predictor``
(batch 1): fitted into ``evaluate.test_size`` (by default the training scale
``data.base_size``; ``none`` = its own size), optionally averaged over the
scales and flip of ``config.evaluate``, the logits resized back to the
image's own size; the labels are compared with the annotation there, at full
resolution: labels are never resized. Images of more than
``evaluate.max_pixels`` pixels are left out before decoding, named and
counted.
One confusion matrix is summed over the whole split (label 0 "other"
ignored) and every number is read from it by ``fcn.metrics.scores``: pixel
accuracy, mean class accuracy, mean IoU, frequency-weighted IoU, per-class IoU
and the challenge score (pixel accuracy + mean IoU) / 2.

Absent classes: a class that occurs neither in the ground truth nor in the
predictions of the split is left out of mean IoU (mmsegmentation's and Keras'
convention, ``metrics.scores(absent="ignore")``) and has ``null`` IoU in
``metrics.json``. The official CSAIL code counts it as 0 instead; on the full
ADE20K validation split every class occurs in the ground truth, so the two
agree there and differ only on subsets (the official number is then
``mean_iou x classes_present / 150``).

With the CRF stage (``model.crf``) the numbers are those of FCN + CRF at
``model.crf_test_iterations``; ``evaluate.compare_fcn`` also scores the FCN's
own logits in the same pass (``fcn_alone`` in ``metrics.json`` and a
comparison table).

Outputs, in the run's ``logs_dir`` or ``--output DIR``: the table printed,
``metrics.json``, ``confusion_matrix.npy`` (int64 (C, C), rows = ground truth)
and ``confusion_matrix.png``; with ``--save_predictions DIR`` one submission
PNG per image (same stem, the image's size, the class table's values: 1..150
for ADE20K, 0..20 for VOC). Files the
pipeline flags as unusable are excluded, counted and reported.

``evaluate_pretrained`` scores a released model (``--pretrained``, e.g.
crfasrnn_keras's FCN-8s + CRF-RNN on VOC val) with its own preprocessing
through the same loop and metrics.
"""

import dataclasses
import json
import math
import os

import numpy as np
import tensorflow as tf
import tqdm

from fcn import crfasrnn_keras, data, datasets, errors, inference, metrics, outputs
from fcn.config import Config
from fcn.datasets import decode
from fcn.datasets.classes import ClassTable
from fcn.datasets.files import decode_path, display_path

FIGURE_CLASSES = 30  # the confusion-matrix figure shows the most frequent classes only
METRICS_FILE = "metrics.json"
REPORT_FILES = (METRICS_FILE, "confusion_matrix.npy", "confusion_matrix.png")


@dataclasses.dataclass
class EvaluationResult:
    """The outcome of an evaluation.

    Attributes:
      scores: ``metrics.scores`` of the split's confusion matrix, keyed by class name.
      matrix: int64 (C, C), rows = ground truth, columns = prediction.
      images: images evaluated.
      skipped: the unusable files left out, with their reasons.
      checkpoint: the checkpoint prefix evaluated ("" when a predictor was given).
      too_large: image path -> message, the images above ``evaluate.max_pixels`` left out.
      protocol: how the images were segmented, for ``metrics.json`` (test size,
        scales, flip, CRF); None: the config's (``evaluate``, ``model.crf``).
      fcn_scores, fcn_matrix: with ``evaluate.compare_fcn``, the same for the
        FCN's logits before the CRF stage (``scores`` is then FCN + CRF).
    """

    scores: dict
    matrix: np.ndarray
    images: int
    skipped: data.SkipReport
    checkpoint: str = ""
    fcn_scores: dict | None = None
    fcn_matrix: np.ndarray | None = None
    too_large: dict = dataclasses.field(default_factory=dict)
    classes: ClassTable | None = None
    protocol: dict | None = None


def native_resolution_dataset(root, split: str, num_classes, pairs=None) -> tf.data.Dataset:
    """Every pair of a split (or ``pairs`` of it) at its own size, in file-name order, as batches of one.

    Elements are the dicts of ``fcn/data.py`` with B = 1: ``image`` (1, H, W, 3)
    uint8, ``label`` (1, H, W) train ids, ``path``, ``error``. ``num_classes``:
    the class table (an int: ADE20K's first classes).
    """
    pairs = datasets.usable_pairs(root, split) if pairs is None else pairs
    dataset = tf.data.Dataset.from_tensor_slices(([p[0] for p in pairs], [p[1] for p in pairs]))
    dataset = dataset.interleave(
        lambda image_path, annotation_path: decode.read_example_dataset(
            image_path, annotation_path, decode.as_class_table(num_classes)
        ),
        cycle_length=2,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.batch(1).prefetch(2)


def evaluate_split(
    labels_fn, root, split: str, num_classes, save_predictions: str = "", progress: bool = True,
    max_pixels: int | None = None,
) -> EvaluationResult:
    """Segments every image of a split and scores the split at each image's own size.

    Args:
      labels_fn: uint8 images (1, H, W, 3) -> train ids (1, H, W), e.g.
        ``Predictor.labels``; or -> [FCN alone, FCN + CRF] train ids, which
        scores both (``fcn_scores``).
      root: the dataset root.
      split: ``training`` or ``validation``.
      num_classes: the run's ``ClassTable`` (an int C: ADE20K's first C classes).
      save_predictions: a folder for submission PNGs (the table's label values), or "".
      progress: show a progress bar.
      max_pixels: images with more pixels are left out (``too_large``) before
        they are decoded; None = no limit.
    """
    classes = decode.as_class_table(num_classes)
    num_classes = classes.num_classes
    dataset = datasets.as_dataset(root)
    pairs = dataset.usable_pairs(split)
    folder = None
    if save_predictions:  # claimed before any image is scored: nothing is written over a file fcn did not write
        folder = outputs.OutputFolder(save_predictions, "--save_predictions", writer="--mode=evaluate")
        folder.claim({image: [_stem(image) + ".png"] for image, _ in pairs}, [p for pair in pairs for p in pair], dataset.root)
    too_large = {}
    if max_pixels is not None:
        for image_path, _ in pairs:
            refused = inference.too_large(image_path, max_pixels)
            if refused:
                too_large[image_path] = refused
        pairs = tuple(pair for pair in pairs if pair[0] not in too_large)
        if not pairs:
            raise errors.DataError(
                f"every image of the {split} split has more than evaluate.max_pixels={max_pixels:,} pixels: nothing to "
                "score; raise it with --set evaluate.max_pixels=N if the memory allows (see docs/evaluation.md)"
            )
    count = len(pairs)
    dataset = native_resolution_dataset(root, split, classes, pairs)
    confusion = metrics.ConfusionMatrix(num_classes)
    fcn_confusion = None
    skipped = data.SkipReport()
    images = 0
    for example in tqdm.tqdm(dataset, total=count, desc=f"evaluating {split}", unit="image", disable=not progress, dynamic_ncols=True):
        if skipped.record(example):
            continue
        predictions = labels_fn(example["image"])  # (1, H, W) at the image's own size
        if isinstance(predictions, (list, tuple)):
            fcn_predictions, predictions = predictions
            if fcn_confusion is None:
                fcn_confusion = metrics.ConfusionMatrix(num_classes)
            fcn_confusion.update(example["label"], fcn_predictions)
        confusion.update(example["label"], predictions)
        images += 1
        if folder is not None:
            name = _stem(decode_path(example["path"][0])) + ".png"
            folder.record([name])
            inference.write_label_png(os.path.join(folder.path, name), predictions[0].numpy(), classes)
    matrix = confusion.matrix
    names = list(classes.names)
    return EvaluationResult(
        scores=metrics.scores(matrix, names),
        matrix=matrix,
        images=images,
        skipped=skipped,
        fcn_scores=None if fcn_confusion is None else metrics.scores(fcn_confusion.matrix, names),
        fcn_matrix=None if fcn_confusion is None else fcn_confusion.matrix,
        too_large=too_large,
        classes=classes,
    )


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _reports_folder(output_dir: str, root) -> outputs.OutputFolder:
    """A user's ``--output`` folder, claimed for the reports before any work."""
    folder = outputs.OutputFolder(output_dir, "--output", writer="--mode=evaluate")
    folder.claim({"evaluate": REPORT_FILES}, dataset_root=datasets.as_dataset(root).root)
    return folder


def evaluate(
    config: Config, root: str, checkpoint: str = "", output_dir: str = "", save_predictions: str = "", progress: bool = True
) -> EvaluationResult:
    """``--mode=evaluate``: restores the run's model, scores ``config.evaluate.split``, writes the reports.

    Args:
      config: the run's config.
      root: the dataset root.
      checkpoint: see ``inference.restore_model`` (default: the run's latest).
      output_dir: where the reports go (default ``config.logs_dir``).
      save_predictions: a folder for submission PNGs, or "".
      progress: show a progress bar.

    Raises:
      inference.InferenceError: no usable checkpoint.
    """
    folder = _reports_folder(output_dir, root) if output_dir else None
    predictor, prefix = inference.predictor_from_config(config, checkpoint, with_fcn=config.evaluate.compare_fcn)
    dataset = datasets.dataset_for_run(root, config.data, predictor.classes)
    result = evaluate_split(
        predictor.labels, dataset, config.evaluate.split, predictor.classes, save_predictions, progress,
        config.evaluate.max_pixels,
    )
    result.checkpoint = prefix
    write_reports(result, output_dir or config.logs_dir, config, folder)
    return result


def evaluate_pretrained(
    config: Config, root, source: str, output_dir: str = "", save_predictions: str = "", progress: bool = True
) -> EvaluationResult:
    """``--mode=evaluate --pretrained NAME|FILE``: a released model (``fcn/crfasrnn_keras.py``) scored on ``config.evaluate.split``.

    Each image goes through the model's own protocol (crfasrnn_keras's:
    fitted into 500 x 500 and padded, the labels cropped and resized back to
    the image's size), then ``evaluate_split`` scores it against the
    annotation at full resolution, the ignore label (255) left out, exactly
    as a run's evaluation. ``checkpoint`` is the model file; ``metrics.json``
    records the model's protocol.

    Args:
      config: the config (``data`` finds the dataset; ``model.model_dir`` is
        the download cache; ``evaluate.split``, ``evaluate.max_pixels``).
      root: the dataset root (or a Dataset).
      source: a ``crfasrnn_keras.PRETRAINED`` name or the path of such a file.
      output_dir: where the reports go (default
        ``<logs_dir>/pretrained_<name or file stem>``, never a run's own reports).
      save_predictions: a folder for submission PNGs, or "".
      progress: progress bars (download, evaluation).

    Raises:
      errors.ClassTableMismatchError: the dataset's classes are not the model's.
      errors.WeightsError: no such model, a failed download, a misfit file.
    """
    entry = crfasrnn_keras.entry_of(source)
    classes = crfasrnn_keras.class_table(entry)
    dataset = datasets.as_dataset(root, dataclasses.replace(config.data, num_classes=0))
    folder = _reports_folder(output_dir, dataset) if output_dir else None
    if not dataset.classes.same_classes(classes):
        raise errors.ClassTableMismatchError(
            f"--pretrained {source} predicts {classes.describe()}, but {display_path(dataset.root)} has "
            f"{dataset.classes.describe()}: point --data_dir at a {entry.dataset} dataset (e.g. --config configs/voc.yaml)"
        )
    path, entry = crfasrnn_keras.resolve(source, config.model.model_dir, progress)
    labels_of = crfasrnn_keras.labeller(path, entry)

    def labels_fn(images):  # (1, H, W, 3) uint8 -> (1, H, W) train ids
        return tf.convert_to_tensor(labels_of(np.asarray(images)[0])[None])

    result = evaluate_split(
        labels_fn, dataset, config.evaluate.split, classes, save_predictions, progress, config.evaluate.max_pixels
    )
    result.checkpoint = path
    result.protocol = crfasrnn_keras.protocol(entry)
    write_reports(result, output_dir or pretrained_output_dir(config, source), config, folder)
    return result


def pretrained_output_dir(config: Config, source: str) -> str:
    """The default folder of ``evaluate_pretrained``'s reports."""
    name = source if source in crfasrnn_keras.PRETRAINED else os.path.splitext(os.path.basename(source))[0]
    return os.path.join(config.logs_dir, f"pretrained_{name}")


# ---------------------------------------------------------------------------
# Reports.


def _json_number(value: float):
    return None if math.isnan(value) else value


def metrics_json(result: EvaluationResult, config: Config) -> dict:
    """The content of ``metrics.json``; undefined values (absent classes) are null."""
    scores = result.scores
    return {
        **_headline(scores),
        "per_class_iou": {name: _json_number(value) for name, value in scores["per_class_iou"].items()},
        "per_class_accuracy": {name: _json_number(value) for name, value in scores["per_class_accuracy"].items()},
        "classes_present": sum(not math.isnan(v) for v in scores["per_class_iou"].values()),
        **_present_classes_json(result),
        "absent_classes": "left out of mean_iou (mmsegmentation); the official code counts them as 0",
        "split": config.evaluate.split,
        "images": result.images,
        "skipped": {
            **{path: decode.ERROR_MESSAGES[error] for path, error in result.skipped.skipped.items()},
            **{path: message.split(": ", 1)[1] for path, message in result.too_large.items()},
        },
        "checkpoint": result.checkpoint,
        **(_protocol_json(config) if result.protocol is None else result.protocol),
        **({"fcn_alone": _headline(result.fcn_scores)} if result.fcn_scores is not None else {}),
    }


def _present_classes_json(result: EvaluationResult) -> dict:
    """``classes``: each class present in the ground truth or the predictions, under its class table's id
    (annotation value) and name, with its scores and pixels; ``classes_not_present``: how many others."""
    names = list(result.scores["per_class_iou"])
    ids = list(range(len(names))) if result.classes is None else list(result.classes.ids)
    truth, predicted = result.matrix.sum(axis=1), result.matrix.sum(axis=0)  # (C,) pixels per class
    listed = [
        {
            "id": int(ids[c]),
            "name": str(name),
            "iou": _json_number(result.scores["per_class_iou"][name]),
            "accuracy": _json_number(result.scores["per_class_accuracy"][name]),
            "ground_truth_pixels": int(truth[c]),
            "predicted_pixels": int(predicted[c]),
        }
        for c, name in enumerate(names)
        if truth[c] or predicted[c]
    ]
    return {"classes": listed, "classes_not_present": len(names) - len(listed)}


def _protocol_json(config: Config) -> dict:
    return {
        "test_size": _test_size_json(config),
        "scales": list(config.evaluate.scales),
        "flip": config.evaluate.flip,
        "mode": config.evaluate.mode,
        **({"window": list(config.evaluate.window), "stride": list(config.evaluate.stride)} if config.evaluate.mode == "slide" else {}),
        "crf": config.model.crf,
        "crf_iterations": config.model.crf_test_iterations if config.model.crf else 0,
    }


def _test_size_json(config: Config):
    """The network's input size rule: [long edge, short edge], or "own" (each image at its own size)."""
    size = config.evaluate.resolved_test_size(config.data.base_size)
    return "own" if size is None else list(size)


HEADLINE = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "score")


def _headline(scores: dict) -> dict:
    return {key: _json_number(scores[key]) for key in HEADLINE}


def write_reports(result: EvaluationResult, output_dir: str, config: Config, folder: outputs.OutputFolder | None = None) -> dict[str, str]:
    """Writes ``metrics.json``, ``confusion_matrix.npy`` and ``confusion_matrix.png``.

    Args:
      folder: ``output_dir`` claimed for ``REPORT_FILES`` (a user's ``--output``), or None (the run directory).

    Returns:
      what -> path written.
    """
    if folder is not None:
        folder.record(REPORT_FILES)
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "metrics": os.path.join(output_dir, METRICS_FILE),
        "matrix": os.path.join(output_dir, "confusion_matrix.npy"),
        "figure": os.path.join(output_dir, "confusion_matrix.png"),
    }
    with open(paths["metrics"], "w", encoding="utf-8") as f:
        json.dump(metrics_json(result, config), f, indent=2, allow_nan=False)
        f.write("\n")
    np.save(paths["matrix"], result.matrix)
    colours = None if result.classes is None else result.classes.palette()
    figure = confusion_figure(result.matrix, list(result.scores["per_class_iou"]), colours=colours)  # names by train id
    figure.savefig(paths["figure"], dpi=100, bbox_inches="tight")
    return paths


def confusion_figure(matrix, names, top: int = FIGURE_CLASSES, colours=None):
    """The confusion matrix of the ``top`` classes with the most ground-truth pixels.

    With ``colours`` (uint8 (C, 3), the class table's), a swatch of each
    class's colour stands beside its name on both axes.

    Each row is divided by all pixels of its ground-truth class, including
    those predicted as classes not shown, so a shown row sums to at most 1.
    Colours are on a log scale from 1e-4 to 1; empty cells are blank.

    Returns:
      a matplotlib Figure (no pyplot state, so it works headless).
    """
    from matplotlib import colors
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, np.float64)
    rows = counts.sum(axis=1)  # (C,) ground-truth pixels per class
    shown = [i for i in np.argsort(-rows, kind="stable")[:top] if rows[i] > 0]
    normalised = counts[shown][:, shown] / np.maximum(rows[shown], 1)[:, None]  # (N, N)
    size = 3 + 0.28 * max(len(shown), 1)
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.add_subplot()
    image = axes.imshow(
        np.ma.masked_equal(normalised, 0.0), norm=colors.LogNorm(vmin=1e-4, vmax=1.0), cmap="viridis", interpolation="nearest"
    )
    labels = [inference.figure_text(names[i]) for i in shown]
    axes.set_xticks(range(len(shown)), labels, rotation=90, fontsize=8)
    axes.set_yticks(range(len(shown)), labels, fontsize=8)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title(f"confusion matrix, {len(shown)} most frequent classes\n(fraction of each ground-truth class, log scale)")
    if colours is not None:
        from matplotlib.patches import Rectangle

        axes.tick_params(pad=10)
        for position, i in enumerate(shown):
            colour = np.asarray(colours[i], np.float64) / 255.0
            for transform, xy, width, height in (
                (axes.get_yaxis_transform(), (-0.025, position - 0.5), 0.02, 1.0),  # x in axes fraction, y in rows
                (axes.get_xaxis_transform(), (position - 0.5, -0.025), 1.0, 0.02),
            ):
                axes.add_patch(Rectangle(xy, width, height, transform=transform, clip_on=False, facecolor=colour,
                                         edgecolor="none", gid=f"class_colour_{i}"))  # fmt: skip
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    return figure


def summary(result: EvaluationResult) -> str:
    """The per-class table and summary lines, then the skipped files."""
    ids = None if result.classes is None else result.classes.ids  # the dataset's own ids, not train ids
    text = metrics.format_table(result.scores, class_ids=ids, present_only=True) + f"\n\n{result.images} images evaluated"
    if result.fcn_scores is not None:
        rows = [("FCN alone", result.fcn_scores), ("FCN + CRF", result.scores)]
        text += "\n\n" + f"{'(%)':<10} {'pixel acc':>9} {'mean IoU':>9} {'score':>9}"
        for name, scores in rows:
            text += "\n" + f"{name:<10}" + "".join(f" {100 * scores[key]:>9.2f}" for key in ("pixel_accuracy", "mean_iou", "score"))
    if result.skipped:
        text += "\n" + result.skipped.summary()
    if result.too_large:
        text += f"\n{len(result.too_large)} image(s) too large, left out:\n  " + "\n  ".join(result.too_large.values())
    return text


def run(config: Config, args) -> int:
    """``--mode=evaluate``: scores a split of the dataset with a run's checkpoint or a released model."""
    progress = not args.no_progress
    outputs.check_writable((args.output or config.logs_dir, "--output" if args.output else "--logs_dir"),
                           *([(args.save_predictions, "--save_predictions")] if args.save_predictions else []))  # fmt: skip
    if args.pretrained:  # the released model's classes decide, not data.num_classes
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, num_classes=0))
    dataset = datasets.prepare_dataset(config.data, progress=progress)
    if args.pretrained:
        output = args.output or pretrained_output_dir(config, args.pretrained)
        result = evaluate_pretrained(config, dataset, args.pretrained, args.output, args.save_predictions, progress)
        print(f"model: {result.checkpoint}\nsplit: {config.evaluate.split} ({dataset.root})\n")
    else:
        output = args.output or config.logs_dir
        result = evaluate(config, dataset, args.checkpoint, args.output, args.save_predictions, progress=progress)
        print(f"checkpoint: {result.checkpoint}\nsplit: {config.evaluate.split} ({dataset.root})\n")
    print(summary(result))
    print(f"\nwritten: {os.path.join(output, METRICS_FILE)}, confusion_matrix.png, confusion_matrix.npy")
    if args.save_predictions:
        print(f"submission PNGs: {args.save_predictions}")
    return 0
