"""Command line of fcn: FCN-8s scene parsing on MIT ADE20K.

Intentionally kept short: it parses flags, resolves the config and calls the
library function of the chosen mode. Everything else lives in ``fcn/``.

    python FCN.py --mode=train --config configs/sample.yaml
    python FCN.py --mode=check_data --data_dir data/ADEChallengeData2016
    python FCN.py --mode=evaluate --config configs/sample.yaml
    python FCN.py --mode=predict --config configs/sample.yaml --image photo.jpg
"""

try:  # a Ctrl-C in the first moments lands in these imports: a message, not a traceback
    import argparse
    import dataclasses
    import faulthandler
    import importlib
    import os
    import signal
    import sys

    # Keep TensorFlow's C++ start-up chatter off the console; on a machine with no NVIDIA device its one error line
    # (a failed cuInit: nothing to use) is noise too.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if os.path.exists("/dev/nvidiactl") else "3")
    from fcn import config as config_lib  # (after the environment is set)
    from fcn import errors
except KeyboardInterrupt:
    import sys

    print("FCN.py: interrupted while starting", file=sys.stderr)
    sys.exit(130)  # EXIT_INTERRUPTED, defined below

@dataclasses.dataclass(frozen=True)
class Mode:
    """One ``--mode``: the module whose ``run(config, args) -> int`` does the work, and its help."""

    module: str
    help: str
    pretrained: bool = False  # takes --pretrained (a released model instead of a run)


# The modes, in the order --help lists them. Each module is imported only when its mode runs.
MODES = {
    "train": Mode("fcn.train", "train (resumes from LOGS_DIR)"),
    "evaluate": Mode("fcn.evaluate", "score a split at full resolution (metrics.json, confusion matrix)", True),
    "visualize": Mode("fcn.visualize", "a random validation batch in colour"),
    "predict": Mode("fcn.predict", "segment --image files", True),
    "export": Mode("fcn.export", "a SavedModel for serving"),
    "check_data": Mode("fcn.check_data", "scan a dataset and report problems"),
    "serve": Mode("fcn.serve", "a demo page and TF Serving's REST API on --host:--port", True),
    "config": Mode("fcn.print_config", "print the resolved configuration (what set each non-default key) and exit"),
}


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
    "pretrained_weights": "model.pretrained_weights",
    "download": "data.download",
    "seed": "train.seed",
    "strategy": "train.strategy",
    "mixed_precision": "train.mixed_precision",
    "jit_compile": "train.jit_compile",
    "crf": "model.crf",
    "init_from": "train.init_from",
}

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # FcnError.exit_status is one of the last two
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def on_off(text: str) -> bool:
    """The value of an on/off flag given as ``--flag=VALUE`` (FCN.tensorflow wrote ``--debug=True``)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False (or 1, 0), got {text!r}")


def add_switch(parser: argparse.ArgumentParser, flag: str, description: str, default=None) -> None:
    """An on/off flag that accepts ``--flag``, ``--flag=True`` and ``--flag=False`` (also 1 and 0).

    The default None means "not given", so that the config decides.
    """
    parser.add_argument(
        flag, nargs="?", const=True, default=default, type=on_off, metavar="True|False", help=description
    )


def height_width(text: str) -> tuple[int, int]:
    """``H`` or ``H,W`` as (H, W) of positive integers."""
    try:
        size = [int(n) for n in text.split(",")]
    except ValueError:
        size = []
    if len(size) not in (1, 2) or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected H or H,W (positive integers), got {text!r}")
    return size[0], size[-1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="FCN.py",
        description="Fully convolutional networks (FCN-8s on VGG16 or VGG19) for scene parsing.",
        epilog=(
            "Precedence, lowest first: built-in defaults (the full ADE20K recipe), --config FILE, "
            "--set KEY=VALUE, the dedicated flags. Every run writes its resolved config to LOGS_DIR/config.yaml."
        ),
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="train",
        help="; ".join(f"{name}: {mode.help}" for name, mode in MODES.items())
        + ". Default: train. evaluate, visualize, predict and export restore the latest checkpoint of LOGS_DIR "
        "(or --checkpoint) into the model of the config: pass the run's --config.",
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
        "--data_dir",
        help="the dataset: an ADEChallengeData2016 or VOC2012 folder, a folder dataset with classes.csv, or a folder "
        "containing one (data.data_dir; data.layout picks the layout, default auto)",
    )
    parser.add_argument("--learning_rate", type=float, help="base learning rate of train.optimizer and train.schedule (train.learning_rate)")
    parser.add_argument("--model_dir", help="where pretrained VGG weight files are cached (model.model_dir)")
    add_switch(parser, "--debug", "histograms of activations, gradients and variables in TensorBoard (train.debug)")
    parser.add_argument("--max_steps", type=int, help="total training steps of the run (train.max_steps)")
    parser.add_argument("--crop_size", metavar="H[,W]", help="training crop, e.g. 512 or 384,512 (data.crop_size)")
    parser.add_argument(
        "--pretrained_weights",
        "--vgg_weights",
        metavar="none|imagenet|imagenet_notop|PATH",
        help="initial VGG weights of model.backbone: none, imagenet, imagenet_notop, or a Keras .h5 / MatConvNet .mat file (model.pretrained_weights; --vgg_weights is the same flag)",
    )
    add_switch(
        parser,
        "--download",
        "when DATA_DIR holds no dataset, download and extract the official archive of data.layout: ADE20K's zip "
        "(the default), VOC 2012's tar with data.layout voc (data.download)",
    )
    parser.add_argument("--seed", type=int, help="seeds shuffling, augmentation, initialisation and the batch --mode=visualize draws (train.seed)")
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        default="",
        help="weights for evaluate, visualize, predict, export: a run directory, a checkpoint folder (e.g. LOGS_DIR/best) "
        "or a checkpoint prefix. Default: the latest checkpoint in LOGS_DIR/checkpoints",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        default="",
        help="where evaluate (default LOGS_DIR), visualize (LOGS_DIR/visualize), predict (LOGS_DIR/predictions) "
        "and export (LOGS_DIR/export) write",
    )
    parser.add_argument(
        "--save_predictions",
        metavar="DIR",
        default="",
        help="evaluate: also write one PNG per image in the challenge's submission format (same stem, the class table's label values: 1..150 for ADE20K, 0..20 for VOC)",
    )
    parser.add_argument("--image", metavar="PATH", nargs="+", default=[], help="predict: image files or folders of images")
    parser.add_argument(
        "--pretrained",
        metavar="NAME|FILE",
        default="",
        help="predict or evaluate with a released model instead of a run: crfasrnn_voc (crfasrnn_keras's FCN-8s + "
        "CRF-RNN for Pascal VOC, downloaded once into model.model_dir) or the path of its crfrnn_keras_model.h5; "
        "evaluate writes to LOGS_DIR/pretrained_NAME unless --output",
    )
    parser.add_argument(
        "--strategy",
        choices=config_lib.STRATEGIES,
        help="default: one device; mirrored: all local GPUs (or --set train.devices=...); "
        "multi_worker: the cluster in TF_CONFIG (train.strategy)",
    )
    parser.add_argument(
        "--mixed_precision",
        choices=config_lib.PRECISIONS,
        help="compute precision; variables, logits and the loss stay float32; float16 uses loss scaling (train.mixed_precision)",
    )
    add_switch(parser, "--jit_compile", "compile the training step with XLA (train.jit_compile)")
    add_switch(
        parser,
        "--crf",
        "append the CRF-RNN refinement stage, trained end to end (model.crf; see also model.crf_iterations, "
        "model.crf_test_iterations). Pass it to every mode of such a run, or use the run's config.yaml",
    )
    parser.add_argument(
        "--init_from",
        metavar="PATH",
        help="train: start from the model weights of this run directory or checkpoint (not its step), e.g. a trained "
        "FCN run to fine-tune with --crf, or crfasrnn_keras's crfrnn_keras_model.h5 (train.init_from)",
    )
    parser.add_argument("--format", choices=("saved_model", "tflite"), default="saved_model",
                        help="export: a SavedModel (TF Serving), or TensorFlow Lite for images of --input_size (LOGS_DIR/export_tflite)")
    parser.add_argument("--input_size", metavar="H[,W]", type=height_width, default=(512, 512), help="export --format tflite: the input's height and width")
    parser.add_argument("--host", default="127.0.0.1", help="serve: the address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8501, help="serve: the port (8501, TF Serving's REST port; 0: a free one)")
    parser.add_argument("--model_name", default="fcn", help="serve: NAME in the API's /v1/models/NAME:predict")
    add_switch(parser, "--no_progress", "no progress bars", default=False)
    parser.epilog += (
        " On/off flags take --flag, --flag=True or --flag=False (also 1, 0). Exit status: 0 success, "
        "1 a failure explained on stderr, 2 a bad configuration or flag, 130 interrupted."
    )
    return parser


def resolve_config(args: argparse.Namespace) -> config_lib.Config:
    """Defaults, then the config file, then --set, then the dedicated flags."""
    overrides = [(*config_lib.parse_override(text), f"--set {text}") for text in args.overrides]
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append((key, value, f"--{flag}"))
    config = config_lib.load_config(args.config, [(key, value) for key, value, _ in overrides])
    args.config_sources = config_lib.key_sources(args.config, overrides)  # for --mode=config
    return config


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("checkpoint", "output", "save_predictions", "pretrained"):  # ~ as a shell reads it, also in --flag=~/x
        setattr(args, flag, os.path.expanduser(getattr(args, flag)))
    args.image = [os.path.expanduser(path) for path in args.image]
    mode = MODES[args.mode]
    try:
        config = resolve_config(args)
        if args.pretrained and not mode.pretrained:
            takes = " and ".join(f"--mode={name}" for name, m in MODES.items() if m.pretrained)
            raise errors.UsageError(f"--pretrained is for {takes} (got --mode={args.mode})")
        if args.pretrained and args.checkpoint:
            raise errors.UsageError("--pretrained and --checkpoint both name the weights: pass one of them")
    except errors.UsageError as error:
        print(f"FCN.py: {error}", file=sys.stderr)
        return error.exit_status
    try:  # importing TensorFlow takes seconds: a Ctrl-C is likely to land here
        module = importlib.import_module(mode.module)
    except KeyboardInterrupt:
        print("FCN.py: interrupted while starting", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        return module.run(config, args)
    except errors.FcnError as error:
        print(f"FCN.py: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print("FCN.py: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _exit_at_once(signum, frame):
    os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    # A run that seems stuck: `kill -USR1 PID` prints where every thread of it is, and it goes on.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        status = main()
    except KeyboardInterrupt:  # between two of main's own handlers (parsing, reading the config)
        print("FCN.py: interrupted", file=sys.stderr)
        status = EXIT_INTERRUPTED
    # The work is done: a Ctrl-C while the interpreter and TensorFlow shut down ends the process at once.
    signal.signal(signal.SIGINT, _exit_at_once)
    sys.exit(status)
