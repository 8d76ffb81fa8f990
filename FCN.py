"""Command line of fcn: FCN-8s scene parsing on MIT ADE20K.

Intentionally kept short: it parses flags, resolves the config and calls the
library function of the chosen mode. Everything else lives in ``fcn/``.

    python FCN.py --mode=train --config configs/sample.yaml
    python FCN.py --mode=check_data --data_dir data/ADEChallengeData2016
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the console

from fcn import config as config_lib  # noqa: E402  (after the environment is set)

MODES = ("train", "visualize", "evaluate", "predict", "export", "check_data")
NOT_IMPLEMENTED = ("visualize", "evaluate", "predict", "export")

# Dedicated flags and the config keys they set (FCN.tensorflow's flags keep their meaning).
FLAG_KEYS = {
    "batch_size": "train.batch_size",
    "logs_dir": "logs_dir",
    "data_dir": "data.data_dir",
    "learning_rate": "train.learning_rate",
    "model_dir": "model.model_dir",
    "debug": "train.debug",
    "max_steps": "train.max_steps",
    "crop_size": "data.crop_size",
    "vgg_weights": "model.vgg_weights",
    "download": "data.download",
}

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_IMPLEMENTED = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="FCN.py",
        description="Fully convolutional networks (FCN-8s on VGG16) for scene parsing on MIT ADE20K.",
        epilog=(
            "Precedence, lowest first: built-in defaults (the full ADE20K recipe), --config FILE, "
            "--set KEY=VALUE, the dedicated flags. Every run writes its resolved config to LOGS_DIR/config.yaml."
        ),
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="train",
        help="train: train (resumes from LOGS_DIR); check_data: scan a dataset and report problems; "
        "visualize, evaluate, predict, export: not implemented yet. Default: train.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file with differences from the defaults, e.g. configs/sample.yaml")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override any config key, e.g. --set train.val_every=500 --set data.photometric=false (repeatable)",
    )
    parser.add_argument("--batch_size", type=int, help="global batch size (train.batch_size)")
    parser.add_argument("--logs_dir", help="run directory: checkpoints, TensorBoard events, config.yaml (logs_dir)")
    parser.add_argument(
        "--data_dir", help="the ADEChallengeData2016 folder, or a folder containing it (data.data_dir)"
    )
    parser.add_argument("--learning_rate", type=float, help="Adam learning rate (train.learning_rate)")
    parser.add_argument("--model_dir", help="where pretrained VGG16 weight files are cached (model.model_dir)")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=None,
        help="histograms of activations, gradients and variables in TensorBoard (train.debug)",
    )
    parser.add_argument("--max_steps", type=int, help="total training steps of the run (train.max_steps)")
    parser.add_argument("--crop_size", metavar="H[,W]", help="training crop, e.g. 512 or 384,512 (data.crop_size)")
    parser.add_argument(
        "--vgg_weights",
        metavar="none|imagenet|imagenet_notop|PATH",
        help="initial VGG16 weights: none, imagenet, imagenet_notop, or a Keras .h5 / MatConvNet .mat file (model.vgg_weights)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="when DATA_DIR holds no dataset, download and extract the official ADEChallengeData2016.zip (data.download)",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def resolve_config(args: argparse.Namespace) -> config_lib.Config:
    """Defaults, then the config file, then --set, then the dedicated flags."""
    overrides = [config_lib.parse_override(text) for text in args.overrides]
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append((key, value))
    return config_lib.load_config(args.config, overrides)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = resolve_config(args)
    except config_lib.ConfigError as error:
        print(f"FCN.py: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.mode in NOT_IMPLEMENTED:
        print(f"FCN.py: --mode={args.mode} is not implemented yet in fcn {version()}.", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED

    from fcn import data  # TensorFlow is imported only once there is work to do
    from fcn import download

    progress = not args.no_progress
    try:
        root = data.prepare_dataset(config.data, progress=progress)
        if args.mode == "check_data":
            return run_check_data(config, root, progress)
        return run_train(config, root, progress)
    except (data.DataError, download.DownloadError) as error:
        print(f"FCN.py: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("FCN.py: interrupted", file=sys.stderr)
        return 130


def version() -> str:
    import fcn

    return fcn.__version__


def run_check_data(config: config_lib.Config, root: str, progress: bool) -> int:
    from fcn import check_data

    reports = check_data.check_dataset(root, config.data.num_classes, progress=progress)
    print(check_data.format_report(root, reports))
    return EXIT_FAILED if any(r.error_count for r in reports) else EXIT_OK


def run_train(config: config_lib.Config, root: str, progress: bool) -> int:
    from fcn import model, train

    path = config_lib.save_config(config, config.logs_dir)
    print(f"dataset: {root}\nrun directory: {config.logs_dir} (config: {path})")
    print(f"TensorBoard: tensorboard --logdir {config.logs_dir}")
    try:
        result = train.train(config, root, progress=progress)
    except (train.TrainingError, model.WeightsError) as error:
        print(f"FCN.py: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if result.status == "non_finite" else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
