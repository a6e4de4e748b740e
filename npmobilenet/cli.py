"""The ``npmobilenet`` command line.

Each subcommand is a pair of functions: ``add_<name>_command(subparsers)`` declares its parser
and sets ``func`` to ``<name>_command(args) -> exit code``. To add a command, write the pair and
append the ``add_`` function to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys

from npmobilenet.exercises.command import add_exercise_command
from npmobilenet.gradcheck.command import add_gradcheck_command


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (pointing at --help) instead of the usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, text: str):
    """``text`` as ``kind`` (int or float); a float must be finite."""
    try:
        v = kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def _ranged(kind, rule: str, test):
    """An argparse type: ``text`` as ``kind``, refused unless ``test(value)`` (``rule`` says
    what is expected, e.g. ">= 1")."""

    def parse(text: str):
        v = _number(kind, text)
        if not test(v):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return v

    return parse


_float = functools.partial(_number, float)
_positive_float = _ranged(float, "> 0", lambda v: v > 0)
_non_negative_float = _ranged(float, ">= 0", lambda v: v >= 0)
_fraction = _ranged(float, "in [0, 1]", lambda v: 0 <= v <= 1)
_non_negative_int = _ranged(int, ">= 0", lambda v: v >= 0)
_positive_int = _ranged(int, ">= 1", lambda v: v >= 1)


def _resolution(text: str) -> tuple[int, int]:
    """``224`` or ``224x160`` (height x width)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected R or HxW, got {text!r}")
    sizes = tuple(_positive_int(p) for p in parts)
    return (sizes[0], sizes[-1])


# --------------------------------------------------------------------------- summary
def add_summary_command(subparsers) -> None:
    p = subparsers.add_parser(
        "summary",
        help="print MobileNetV1's layers, parameters and mult-adds",
        description="Print a torchinfo-style table of MobileNetV1: output shape, parameters and"
        " mult-adds of every layer, totals, and the paper's Table 2 grouping by layer type."
        " Counting: conv + linear weight multiply-accumulates (no bias, batch norm, activation).",
    )
    p.add_argument("--alpha", type=_positive_float, default=1.0, help="width multiplier (1.0)")
    p.add_argument(
        "--resolution", type=_resolution, default=(224, 224), help="input size R or HxW (224)"
    )
    p.add_argument("--classes", type=_positive_int, default=1000, help="number of classes (1000)")
    p.add_argument("--in-channels", type=_positive_int, default=3, help="input channels (3)")
    p.add_argument(
        "--conv",
        choices=("separable", "full"),
        default="separable",
        help="depthwise-separable blocks, or the paper's full-conv baseline (Table 4)",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="also run one eval-mode forward of a zero image, printing each stage's shape",
    )
    p.set_defaults(func=summary_command)


def summary_command(args) -> int:
    import numpy as np

    from npmobilenet.memory import check_fits, estimate_bytes
    from npmobilenet.models import MobileNetV1

    h, w = args.resolution
    try:
        needed = estimate_bytes(
            args.alpha, args.classes, args.in_channels, h, w, batch_size=int(args.trace),
            conv=args.conv, training=False, op="npmobilenet summary",
        )  # fmt: skip
        check_fits("npmobilenet summary", needed, f"alpha {args.alpha:g} at {h}x{w}")
        model = MobileNetV1(
            alpha=args.alpha, num_classes=args.classes, in_channels=args.in_channels,
            conv=args.conv, seed=0,
        )  # fmt: skip
        print(model.summary(input_size=(args.in_channels, h, w)))
    except ValueError as e:
        message = str(e).removeprefix("npmobilenet summary: ")
        print(f"npmobilenet summary: error: {message}", file=sys.stderr)
        return 2
    if args.trace:
        print()
        model.eval().trace(np.zeros((1, args.in_channels, h, w), model.dtype))
    return 0


# --------------------------------------------------------------------------- train
def add_train_command(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train MobileNetV1 (default: the built-in digits, about 8 s; 16 s the first time)",
        description="Train MobileNetV1 without autograd. With no arguments: the built-in"
        " handwritten digits, alpha 0.25, 32x32, the default recipe. Writes <out>/metrics.json,"
        " metrics.csv, model.safetensors, checkpoint.safetensors (every epoch) and, with"
        " matplotlib, curves.png and confusion.png. Unset flags take the recipe's defaults (or,"
        " with --resume, the checkpoint's settings).",
    )
    p.add_argument(
        "--data",
        help="'digits' (default), an image folder (one subfolder per"
        " class), a CIFAR-10 binary folder, or an .npz with x, y",
    )
    p.add_argument("--alpha", type=_positive_float, help="width multiplier (0.25)")
    p.add_argument("--resolution", type=_positive_int, help="input size R, images R x R (32)")
    p.add_argument("--epochs", type=_positive_int, help="epochs (see the recipe)")
    p.add_argument("--batch-size", type=_positive_int, help="batch size (64)")
    p.add_argument("--optimizer", help="sgd (Nesterov momentum), rmsprop, adam or adamw (sgd)")
    p.add_argument("--lr", type=_positive_float, help="peak learning rate")
    p.add_argument("--momentum", type=_non_negative_float, help="momentum (SGD, RMSprop) (0.9)")
    p.add_argument(
        "--weight-decay", type=_non_negative_float, help="weight decay, none on depthwise/BN"
    )
    p.add_argument("--schedule", help="onecycle (per batch), cosine (per epoch) or constant")
    p.add_argument("--warmup", type=_fraction, help="one-cycle warm-up fraction of the steps")
    p.add_argument("--label-smoothing", type=_fraction, help="label smoothing in [0, 1] (0)")
    p.add_argument("--max-grad-norm", type=_positive_float, help="clip gradients to this norm")
    p.add_argument(
        "--augment",
        choices=("standard", "none"),
        help="standard: for image folders RandomResizedCrop + flips (their default), for arrays"
        " padded random crops + flips (no flips for digits); none (the default for arrays)",
    )
    p.add_argument(
        "--workers", type=int, help="threads decoding image-folder batches ahead (2; 0: none)"
    )
    p.add_argument(
        "--cache-mb", type=int, help="keep decoded folder images (uint8) up to this many MB (0)"
    )
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 or 3 (default: from the data)")
    p.add_argument(
        "--layout",
        choices=("nchw", "nhwc"),
        help=".npz image layout of x (default: nchw, refusing arrays that look channels-last)",
    )
    p.add_argument(
        "--seed", type=_non_negative_int, help="seed for init, split, shuffling, dropout (0)"
    )
    p.add_argument("--out", help="output folder (default runs/<data name>, never overwritten)")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="CHECKPOINT",
        help="continue the run in --out (or from CHECKPOINT) exactly; with --epochs N larger"
        " than a finished run's epochs, extend it by a new schedule over the extra epochs",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="start from saved weights: a run folder or a safetensors file (as converted from"
        " PyTorch); a classifier for another number of classes is re-initialised, and --alpha"
        " defaults to the weights' width",
    )
    p.add_argument(
        "--freeze-features",
        action="store_true",
        default=None,
        help="train only the classifier (fc); the other weights stay as loaded (batch-norm"
        " running statistics still follow the new data, as in PyTorch)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        help="threads for BLAS and for splitting each training step over the batch (1: robust"
        " on a shared machine; the count changes float rounding)",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "plain", "none"),
        default="auto",
        help="a tqdm bar on a terminal (auto), always (bar), or plain lines",
    )
    p.set_defaults(func=train_command)


_TRAIN_SETTINGS = {  # argparse dest -> run configuration key
    "data": "data", "alpha": "alpha", "resolution": "resolution", "epochs": "epochs",
    "batch_size": "batch_size", "optimizer": "optimizer", "lr": "lr", "momentum": "momentum",
    "weight_decay": "weight_decay", "schedule": "schedule", "warmup": "warmup",
    "label_smoothing": "label_smoothing", "max_grad_norm": "max_grad_norm",
    "augment": "augment", "seed": "seed", "threads": "threads", "workers": "workers",
    "cache_mb": "cache_mb", "channels": "channels", "layout": "layout", "init": "init",
    "freeze_features": "freeze_features",
}  # fmt: skip


def _default_out(data) -> str:
    """``runs/<data name>``, or ``runs/<name>-2``, ``-3`` ... if that already holds a run."""
    import os

    name = "digits" if data in (None, "digits") else os.path.basename(os.path.normpath(data))
    name = os.path.splitext(name)[0] or "run"
    out, i = os.path.join("runs", name), 1
    while os.path.exists(os.path.join(out, "metrics.json")) or os.path.exists(
        os.path.join(out, "checkpoint.safetensors")
    ):
        i += 1
        out = os.path.join("runs", f"{name}-{i}")
    return out


def train_command(args) -> int:
    import os
    import time

    from npmobilenet.train import NonFiniteLossError, train_run

    config = {key: getattr(args, dest) for dest, key in _TRAIN_SETTINGS.items()}
    resume = None
    if args.resume is not None:
        out = args.out or os.path.join(
            "runs",
            "digits"
            if args.data in (None, "digits")
            else os.path.basename(os.path.normpath(args.data)),
        )
        resume = os.path.join(out, "checkpoint.safetensors") if args.resume is True else args.resume
        out = args.out or os.path.dirname(resume) or "."
    else:
        out = args.out or _default_out(args.data)
    started = time.time()
    try:
        train_run(
            config,
            out,
            resume=resume,
            progress=args.progress,
            overwrite=args.overwrite,
            log=lambda line: print(line, flush=True),
        )
    except NonFiniteLossError as e:
        print(f"npmobilenet train: {e}", file=sys.stderr)
        last = os.path.join(out, "checkpoint.safetensors")
        if os.path.exists(last):
            print(f"npmobilenet train: the last good checkpoint is kept: {last}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, ImportError) as e:
        message = str(e).removeprefix("npmobilenet train: ")
        print(f"npmobilenet train: error: {message}", file=sys.stderr)
        return 2
    except BaseException as e:
        if not _interrupted(e):
            raise
        print(_interrupt_message(out, resume, started), file=sys.stderr)
        return 130
    return 0


def _interrupted(e: BaseException) -> bool:
    """A Ctrl-C: a KeyboardInterrupt, possibly wrapped (a compiled kernel interrupted mid-call
    surfaces as a SystemError whose context is the KeyboardInterrupt)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _interrupt_message(out: str, resume, started: float) -> str:
    """One line: where the last complete checkpoint of this run is, and how to continue."""
    import os
    import shlex

    from npmobilenet.train.checkpoint import checkpoint_epoch

    path = os.path.join(out, "checkpoint.safetensors")
    ours = os.path.isfile(path) and (
        os.path.getmtime(path) >= started - 1
        or os.path.abspath(path) == os.path.abspath(resume or "")
    )
    if not ours:
        return "npmobilenet train: interrupted before the first epoch ended; no checkpoint written"
    epoch = checkpoint_epoch(path)
    after = f" (after epoch {epoch})" if epoch is not None else ""
    return (
        f"npmobilenet train: interrupted; the last complete checkpoint is {path}{after};"
        f" continue with: npmobilenet train --resume {shlex.quote(path)}"
    )


# --------------------------------------------------------------------------- evaluate
def add_evaluate_command(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="accuracy, loss and confusion matrix of a trained model",
        description="Evaluate a run (its folder, model.safetensors or checkpoint.safetensors) on"
        " the test split of its data, or of --data.",
    )
    p.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    p.add_argument("--data", help="data to evaluate on (default: the run's own test split)")
    p.add_argument(
        "--ignore-class-names",
        action="store_true",
        help="evaluate --data whose class names differ from the model's, pairing the classes"
        " by position",
    )
    p.set_defaults(func=evaluate_command)


def evaluate_command(args) -> int:
    from npmobilenet.train import evaluate_run

    try:
        evaluate_run(args.checkpoint, data=args.data, ignore_class_names=args.ignore_class_names)
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"npmobilenet evaluate: error: {e}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------------- predict
def add_predict_command(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="top-k classes of image files or folders",
        description="Classify images with a trained run, in batches: each image is resized"
        " (shorter side to resolution / 0.875), centre-cropped and normalised with the run's"
        " statistics (or a --preset). Missing or unreadable files are reported, not fatal.",
    )
    p.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    p.add_argument("--top-k", type=_positive_int, default=3, help="classes to show (3)")
    p.add_argument("--out", help="write the results to this .csv or .jsonl instead of printing")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch (32)")
    p.add_argument("--workers", type=int, default=2, help="threads decoding ahead (2)")
    p.add_argument(
        "--preset",
        choices=("timm", "torchvision", "keras", "tf"),
        help="the preprocessing of published weights instead of the run's own",
    )
    p.set_defaults(func=predict_command)


def predict_command(args) -> int:
    from npmobilenet.train import load_run
    from npmobilenet.train.predict import predict_files, write_predictions

    try:
        model, config = load_run(args.checkpoint)
        k = min(args.top_k, len(config["classes"]))
        preds = predict_files(model, config, args.images, top_k=k, batch_size=args.batch_size,
                              preset=args.preset, workers=max(args.workers, 0),
                              progress=args.out is not None)  # fmt: skip
        if args.out is not None:
            rows, errors = write_predictions(preds, args.out, k)
        else:
            rows, errors = _print_predictions(preds)
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"npmobilenet predict: error: {e}", file=sys.stderr)
        return 2
    if args.out is not None:
        print(f"wrote {rows} prediction(s) to {args.out}")
    if errors == rows:
        print(f"npmobilenet predict: error: none of the {rows} file(s) could be read",
              file=sys.stderr)  # fmt: skip
        return 2
    if errors:
        print(f"npmobilenet predict: {errors} of {rows} file(s) could not be read (reported in"
              " the output)", file=sys.stderr)  # fmt: skip
    return 0


def _print_predictions(preds) -> tuple[int, int]:
    rows = errors = 0
    for pred in preds:
        print(pred.path)
        if pred.error is not None:
            print(f"  error: {pred.error}")
        for name, p in pred.top:
            print(f"  {name:<20} {100 * p:6.2f}%")
        rows, errors = rows + 1, errors + (pred.error is not None)
    return rows, errors


# --------------------------------------------------------------------------- convert
def add_convert_command(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert timm / Keras / Hugging Face / TF-Slim / ONNX MobileNetV1 weights",
        description="Read a MobileNetV1 written by another library and save it as npmobilenet"
        " weights (safetensors, PyTorch key names) that record the model's conventions, class"
        " names and preprocessing: predict, evaluate and train --init take the result directly.",
    )
    p.add_argument("src", metavar="SRC", help="file, folder (Hugging Face) or TF checkpoint prefix")
    p.add_argument("out", metavar="OUT.safetensors", help="the weights file to write")
    p.add_argument(
        "--from",
        dest="source",
        default="auto",
        choices=("auto", "timm", "keras", "hf", "tf", "onnx"),
        help="the library that wrote SRC (auto: from the path and tensor names)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a read-only OUT")
    p.set_defaults(func=convert_command)


def convert_command(args) -> int:
    from npmobilenet.interop import convert

    try:
        model = convert(args.src, args.out, args.source, overwrite=args.overwrite)
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"npmobilenet convert: error: {e}", file=sys.stderr)
        return 2
    cfg = model.config
    print(f"wrote {args.out}: MobileNetV1 alpha {cfg['alpha']:g}, {cfg['num_classes']} classes,"
          f" {cfg['activation']}, padding {cfg['padding']}, bn_eps {cfg['bn_eps']:g}")  # fmt: skip
    return 0


# --------------------------------------------------------------------------- export-onnx
def add_export_onnx_command(subparsers) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="write a model as ONNX (for onnxruntime and other ONNX engines)",
        description="Export weights (a run folder or a .safetensors file that records its model,"
        " such as convert's output) as an ONNX graph with inputs (N, C, H, W) of any size.",
    )
    p.add_argument("weights", metavar="WEIGHTS", help="run folder or .safetensors file")
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset (17)")
    p.set_defaults(func=export_onnx_command)


def export_onnx_command(args) -> int:
    from npmobilenet.interop import export_onnx
    from npmobilenet.interop.convert import refuse_overwriting_input, source_files
    from npmobilenet.train import load_run

    try:
        refuse_overwriting_input("export-onnx", args.out, source_files(args.weights))
        model, _ = load_run(args.weights)
        export_onnx(model, args.out, opset=args.opset)
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"npmobilenet export-onnx: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


COMMANDS = [
    add_train_command,
    add_evaluate_command,
    add_predict_command,
    add_convert_command,
    add_export_onnx_command,
    add_summary_command,
    add_gradcheck_command,
    add_exercise_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="npmobilenet",
        description="MobileNetV1 from scratch in NumPy and Numba.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (2 for a usage error, 130 after Ctrl-C)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else 2
    if args.version or args.command is None:
        from npmobilenet import __version__

        print(f"npmobilenet {__version__}")
        if args.command is None and not args.version:
            parser.print_help()
        return 0
    from npmobilenet.compile_notice import announce_compilation

    try:
        with announce_compilation():  # says so when Numba compiles (a first run), silent otherwise
            return args.func(args)
    except (ValueError, TypeError, OSError) as e:  # a command without its own error handling
        print(f"npmobilenet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BaseException as e:
        if not _interrupted(e):
            raise
        print(f"npmobilenet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
