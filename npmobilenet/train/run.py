"""A whole training run from a configuration: data, model, optimizer, schedule, loop, outputs.

:func:`train_run` is what ``npmobilenet train`` runs. The configuration is a plain dict
(:data:`DEFAULTS` plus the user's choices) that travels inside every checkpoint, so
``--resume`` rebuilds exactly the same run and ``evaluate`` / ``predict`` know the classes, the
input size and the normalisation.

The default recipe (built-in digits, alpha 0.25, 32x32, 15 epochs): SGD with Nesterov momentum
0.9, batch 64, a one-cycle schedule peaking at lr 0.2 (warm-up over the first quarter, cosine
decay to ~0), weight decay 5e-4 on the convolution and classifier weights only (none on
depthwise filters, batch norm and biases, as the paper recommends), no augmentation, one BLAS
thread. Seed 0 reaches 97.5% test accuracy in about 8 s on a 2-core machine.

Outputs in ``<out>``: ``checkpoint.safetensors`` (after every epoch), ``model.safetensors``
(the final weights, loadable by PyTorch; the configuration is in its header), ``metrics.json``,
``metrics.csv`` and, with matplotlib, ``curves.png`` and ``confusion.png``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import sys
import time

import numpy as np

from npmobilenet import __version__
from npmobilenet._checks import describe
from npmobilenet.data import (
    ArrayDataset,
    Compose,
    DataLoader,
    ImageFiles,
    LazyImageFolder,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    channel_stats,
    load_cifar10,
    load_digits_dataset,
    load_npz,
    train_transform,
)
from npmobilenet.data.dataset import resize_bilinear, to_channels
from npmobilenet.data.digits import stratified_test_indices
from npmobilenet.data.presets import eval_steps
from npmobilenet.io.weights import (
    MODEL_CONFIG,
    file_metadata,
    header_json,
    load_model,
    load_state_dict_file,
    save_state_dict,
)
from npmobilenet.memory import check_fits, estimate_bytes
from npmobilenet.models import MobileNetV1
from npmobilenet.optim import OPTIMIZERS, make_optimizer, paper_param_groups
from npmobilenet.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR
from npmobilenet.train.checkpoint import FORMAT, check_architecture, load_checkpoint
from npmobilenet.train.finetune import (
    freeze_features,
    load_init_weights,
    read_weights,
    weights_alpha,
)
from npmobilenet.train.metrics import format_confusion, write_metrics
from npmobilenet.train.plots import save_plots
from npmobilenet.train.trainer import Trainer, evaluate

CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"
CONFIG_KEY = "npmobilenet.config"
CONVENTION_KEYS = ("activation", "padding", "bn_eps")
# MobileNetV1 divides the input size by 32 (five stride-2 stages).
MIN_RESOLUTION = 32
SCHEDULES = ("onecycle", "cosine", "constant")

DEFAULTS = {
    "data": "digits",
    "alpha": 0.25,
    "resolution": 32,
    "channels": None,  # None: 1 for the grey digits, 3 otherwise
    "epochs": 15,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 0.2,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "depthwise_weight_decay": 0.0,
    "label_smoothing": 0.0,
    "schedule": "onecycle",
    "warmup": 0.25,  # one-cycle: the fraction of the steps spent warming up
    "max_grad_norm": None,
    # None: "standard" for image folders (RandomResizedCrop and flips), "none" for arrays,
    # whose "standard" is a random crop with padding resolution/8 (and flips, but not digits).
    "augment": None,
    "workers": None,  # threads decoding image folders ahead of the step; None: 2 for folders
    "cache_mb": 0,  # megabytes of decoded images an image folder may keep (uint8)
    "layout": None,  # .npz image layout: None refuses channels-last-looking x; "nchw", "nhwc"
    "dropout": 0.0,
    "test_fraction": 0.2,  # for data without a test split
    "seed": 0,
    # BLAS threads. Part of the recipe because the count changes the rounding of the GEMMs (so
    # a resume must use the same one) and 1 is the robust choice on a shared machine: with a
    # load of 7 on 2 cores, two epochs took 13-15 s with 1 thread and 10-41 s with 2, whose
    # threads spin waiting for each other while the scheduler runs someone else.
    "threads": 1,
    # Fine-tuning: start from these weights (a run folder or a safetensors file; see
    # finetune.py), train only the classifier.
    "init": None,
    "freeze_features": False,
    # The model's conventions, taken from the --init weights (a converted Keras or TF model
    # trains with its own padding rule, batch-norm epsilon and activation).
    "activation": "relu",
    "padding": "torch",
    "bn_eps": 1e-5,
    # The epoch the learning-rate schedule started at: 0, or the epochs of a finished run that
    # ``--resume --epochs N`` extended (the extra epochs get a schedule of their own).
    "schedule_start": 0,
}


# --------------------------------------------------------------------------------- config
def make_config(**overrides) -> dict:
    """:data:`DEFAULTS` updated with ``overrides`` (unknown keys are an error), checked."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"make_config: unknown setting(s) {unknown}; known: {sorted(DEFAULTS)}")
    config = {**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    check_config(config)
    return config


def check_config(config: dict) -> None:
    """Errors for settings that would otherwise fail deep inside a run."""
    op = "npmobilenet train"
    if not isinstance(config["batch_size"], int) or config["batch_size"] < 1:
        raise ValueError(f"{op}: batch size must be an integer >= 1, got {config['batch_size']!r}")
    if not isinstance(config["epochs"], int) or config["epochs"] < 1:
        raise ValueError(f"{op}: epochs must be an integer >= 1, got {config['epochs']!r}")
    r = config["resolution"]
    if not isinstance(r, int) or r < MIN_RESOLUTION:
        raise ValueError(
            f"{op}: resolution {r!r} is too small for MobileNetV1: its five stride-2 stages"
            f" divide the input size by 32, so it needs at least {MIN_RESOLUTION}x"
            f"{MIN_RESOLUTION} pixels (the paper uses 128-224)"
        )
    name = config["optimizer"]
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise ValueError(
            f"{op}: unknown optimizer {name!r}; choose one of {', '.join(sorted(OPTIMIZERS))}"
        )
    if config["schedule"] not in SCHEDULES:
        raise ValueError(
            f"{op}: unknown schedule {config['schedule']!r}; choose one of {', '.join(SCHEDULES)}"
        )
    check_data_settings(config)
    if not isinstance(config["threads"], int) or config["threads"] < 1:
        raise ValueError(f"{op}: threads must be an integer >= 1, got {config['threads']!r}")
    for key in ("lr", "alpha"):
        if not _real(config[key]) or not config[key] > 0:
            raise ValueError(f"{op}: {key} must be > 0, got {config[key]!r}")
    if not 0 <= config["weight_decay"]:
        raise ValueError(f"{op}: weight decay must be >= 0, got {config['weight_decay']!r}")
    for key in ("momentum", "weight_decay", "depthwise_weight_decay"):
        if not _real(config[key]) or not config[key] >= 0:
            raise ValueError(f"{op}: {key} must be a finite number >= 0, got {config[key]!r}")
    if not _real(config["warmup"]) or not 0 <= config["warmup"] <= 1:
        raise ValueError(f"{op}: warmup must be a fraction in [0, 1], got {config['warmup']!r}")
    g = config["max_grad_norm"]
    if g is not None and (not _real(g) or not g > 0):
        raise ValueError(f"{op}: max_grad_norm must be a finite number > 0, got {g!r}")
    if (
        isinstance(config["seed"], bool)
        or not isinstance(config["seed"], int)
        or config["seed"] < 0
    ):
        raise ValueError(f"{op}: seed must be an integer >= 0, got {config['seed']!r}")
    if not 0 <= config["label_smoothing"] <= 1:
        raise ValueError(
            f"{op}: label smoothing must be in [0, 1], got {config['label_smoothing']!r}"
        )


AUGMENT = {True: "standard", False: "none"}  # the flag's values before it took a name
RUNTIME_SETTINGS = ("workers", "cache_mb")  # change speed and memory, never the results


def check_data_settings(config: dict) -> None:
    """Normalise and check ``augment``, ``workers``, ``cache_mb``, ``layout``, ``channels``."""
    op = "npmobilenet train"
    config["augment"] = AUGMENT.get(config.get("augment"), config.get("augment"))
    if config["augment"] not in (None, "standard", "none"):
        raise ValueError(f"{op}: augment must be 'standard' or 'none', got {config['augment']!r}")
    for key, low in (("workers", 0), ("cache_mb", 0)):
        v = config.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            raise ValueError(f"{op}: {key} must be an integer >= {low}, got {v!r}")
    if config.get("layout") not in (None, "nchw", "nhwc"):
        raise ValueError(f"{op}: layout must be 'nchw' or 'nhwc', got {config['layout']!r}")
    if config.get("channels") not in (None, 1, 3):
        raise ValueError(f"{op}: channels must be 1 or 3, got {config['channels']!r}")


def _real(v) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------------- data
def load_data(config: dict, warn=print, progress=False):
    """``(train, test, summary)``: the configured data as :class:`ArrayDataset` s, or for an
    image folder as :class:`~npmobilenet.data.ImageFiles` decoded per batch.

    ``data`` is ``"digits"``, a folder of class subfolders of images, a CIFAR-10 binary folder
    (``data_batch_*.bin`` + ``test_batch.bin``) or an ``.npz`` (``x``, ``y``, optional
    ``x_test``, ``y_test``, ``classes``). Without a test part, a stratified
    ``test_fraction`` split (seeded by ``seed``) is held out. Unreadable images are skipped
    with a warning (passed to ``warn``) and counted in ``summary``. ``progress``: a bar while
    a folder's headers are read.
    """
    source, r, c = config["data"], config["resolution"], config["channels"]
    if source == "digits":
        train, test = load_digits_dataset(r, channels=c or 1, seed=config["seed"])
        return train, test, f"digits: {len(train)} train / {len(test)} test images, 10 classes"
    path = os.path.expanduser(os.fspath(source))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"npmobilenet train: --data {source!r}: no such file or folder (expected 'digits',"
            " an image folder, a CIFAR-10 binary folder or an .npz file)"
        )
    if os.path.isfile(path):
        if not path.endswith(".npz"):
            raise ValueError(
                f"npmobilenet train: --data {source!r} is a file but not an .npz; give an .npz"
                " with arrays x and y, or a folder of images"
            )
        train, test = load_npz(path, layout=config.get("layout"))
        c = c or train.x.shape[1]
        summary = f"{path}: {len(train)} images, {train.num_classes} classes"
    elif _is_cifar(path):
        c = c or 3
        train, test = load_cifar10(path, r, c)
        summary = f"CIFAR-10 {path}: {len(train)} train / {len(test)} test images"
    else:
        return _load_folder(path, config, warn, progress)
    check_finite(source, "training", "x", train.x)
    if test is not None:
        check_finite(source, "test", "x_test", test.x)
    n = len(train) + (len(test) if test is not None else 0)
    check_fits("npmobilenet train", 4 * n * c * r * r, f"{n} images at {r}x{r}x{c}")
    skipped = list(getattr(train, "skipped", []))
    if test is None:
        train, test = split(train, config["test_fraction"], config["seed"])
        summary += f"; held out {len(test)} for testing"
    train = _fit_images(train, r, c)
    train.skipped = skipped  # unreadable files, for metrics.json
    return train, _fit_images(test, r, c), summary


def _load_folder(path: str, config: dict, warn, progress: bool):
    """A lazy image folder split into train and test :class:`ImageFiles` (decoded per batch)."""
    folder = LazyImageFolder(path, channels=config["channels"], cache_mb=config.get("cache_mb", 0),
                             warn=lambda m: warn(f"warning: {m}"), progress=progress)  # fmt: skip
    test_idx = stratified_test_indices(folder.y, config["test_fraction"], config["seed"])
    train_idx = np.setdiff1d(np.arange(len(folder)), test_idx)
    if len(train_idx) == 0:
        raise ValueError(f"npmobilenet train: {len(folder)} image(s) are too few to split")
    summary = folder.summary + f"; held out {len(test_idx)} for testing"
    return folder.subset(train_idx), folder.subset(test_idx), summary


def is_folder(data) -> bool:
    """Whether a dataset is an image folder decoded per batch (not an array dataset)."""
    return isinstance(data, ImageFiles)


def channels_of(data) -> int:
    return data.channels if is_folder(data) else data.x.shape[1]


def folder_stats(data: ImageFiles, config: dict, sample: int = 64):
    """Per-channel mean and std of up to ``sample`` training images (seeded choice), after the
    evaluation resize and crop: the normalisation of a run on an image folder."""
    rng = np.random.default_rng([config["seed"], 1])
    idx = np.sort(rng.choice(len(data), min(sample, len(data)), replace=False))
    loader = DataLoader(data.subset(idx), 32, transform=eval_steps(config["resolution"]),
                        workers=_workers(config, data))  # fmt: skip
    total, total_sq, n = 0.0, 0.0, 0
    for x, _ in loader:  # (B, C, R, R)
        total = total + x.sum(axis=(0, 2, 3), dtype=np.float64)
        total_sq = total_sq + np.square(x, dtype=np.float64).sum(axis=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return mean.tolist(), std.tolist()


def _workers(config: dict, data) -> int:
    w = config.get("workers")
    return w if w is not None else (2 if is_folder(data) else 0)


def _augment(config: dict, data) -> str:
    a = config.get("augment")
    return a if a is not None else ("standard" if is_folder(data) else "none")


def check_run_fits(config: dict) -> None:
    """Refuse a model and batch size whose training step cannot fit in this machine's RAM."""
    a, r, bs = config["alpha"], config["resolution"], config["batch_size"]
    needed = estimate_bytes(a, 1000, config["channels"] or 3, r, r, bs, op="npmobilenet train")
    check_fits(
        "npmobilenet train", needed, f"a training step of alpha {a:g} at {r}x{r}, batch {bs}"
    )


def check_finite(source, split: str, key: str, x: np.ndarray) -> None:
    """Refuse images holding nan or inf, naming the data, the split and the first bad image."""
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)  # (N,): image holds nan/inf
    if bad.any():
        i = int(np.argmax(bad))
        value = x[i].reshape(-1)[np.argmax(~np.isfinite(x[i].reshape(-1)))]
        raise ValueError(
            f"npmobilenet train: --data {source}: the {split} split ({key}) holds a non-finite"
            f" value ({float(value)}) at image index {i} ({int(bad.sum())} image(s) affected);"
            " drop or repair those images"
        )


def _is_cifar(path: str) -> bool:
    return bool(
        glob.glob(os.path.join(path, "data_batch_*.bin"))
        or glob.glob(os.path.join(path, "cifar-10-batches-bin", "data_batch_*.bin"))
    )


def split(data: ArrayDataset, test_fraction: float, seed: int):
    """A stratified ``(train, test)`` split of ``data`` (the digits' split rule)."""
    test_idx = stratified_test_indices(data.y, test_fraction, seed)
    train_idx = np.setdiff1d(np.arange(len(data)), test_idx)
    if len(train_idx) == 0:
        raise ValueError(f"npmobilenet train: {len(data)} image(s) are too few to split")
    take = [(data.x[i], data.y[i]) for i in (train_idx, test_idx)]
    return tuple(ArrayDataset(x, y, data.classes, name="split") for x, y in take)


def _fit_images(data: ArrayDataset, r: int, c: int) -> ArrayDataset:
    """.npz images brought to ``c`` channels (grey <-> RGB) and ``r`` x ``r`` (bilinear)."""
    x = data.x
    if x.shape[2:] != (r, r):
        x = resize_bilinear(x, r)  # (N, C, r, r)
    if x.shape[1] != c:
        x = to_channels("npmobilenet train", x, c)  # (N, c, r, r)
    if x is data.x:
        return data
    return ArrayDataset(np.ascontiguousarray(x), data.y, data.classes, name="load_npz")


# --------------------------------------------------------------------------------- parts
def build_model(config: dict) -> MobileNetV1:
    return MobileNetV1(
        alpha=config["alpha"], num_classes=len(config["classes"]), in_channels=config["channels"],
        dropout=config["dropout"], seed=config["seed"], **conventions(config),
    )  # fmt: skip


def conventions(config: dict) -> dict:
    """The model conventions of a run (those of its --init weights; PyTorch's by default)."""
    return {k: config.get(k, DEFAULTS[k]) for k in CONVENTION_KEYS}


def build_optimizer(config: dict, model):
    """The configured optimizer over the paper's weight-decay groups."""
    groups = paper_param_groups(
        model.named_parameters(), config["weight_decay"], config["depthwise_weight_decay"]
    )
    for g in groups:
        del g["names"]
    name = config["optimizer"].lower()
    hparams = {"lr": config["lr"]}
    if name == "sgd":
        hparams.update(momentum=config["momentum"], nesterov=config["momentum"] > 0)
    elif name == "rmsprop":
        hparams.update(momentum=config["momentum"])
    return make_optimizer(name, groups, **hparams)


def build_scheduler(config: dict, optimizer, steps_per_epoch: int):
    """The configured schedule over the epochs from ``schedule_start`` to ``epochs``."""
    epochs = config["epochs"] - config["schedule_start"]
    if config["schedule"] == "onecycle":
        cycle = config["optimizer"].lower() != "sgd" or config["momentum"] > 0
        return OneCycleLR(
            optimizer, max_lr=config["lr"], epochs=epochs,
            steps_per_epoch=steps_per_epoch, pct_start=config["warmup"], cycle_momentum=cycle,
            max_momentum=config["momentum"] or 0.95, base_momentum=0.85,
        )  # fmt: skip
    if config["schedule"] == "cosine":
        return CosineAnnealingLR(optimizer, T_max=epochs)
    return None


def build_loaders(config: dict, train, test):
    """Shuffled, normalised (augmented if asked) training batches; plain test batches.

    Image folders: ``train_transform`` (``augment`` "standard") or the evaluation resize and
    crop, both prefetched by ``workers`` threads. Arrays: a padded random crop and flips."""
    norm = Normalize(config["mean"], config["std"])
    bs, workers = config["batch_size"], _workers(config, train)
    # Batch norm needs two images per batch when the last feature map is 1x1.
    drop_last = len(train) % bs == 1 and len(train) > 1
    if is_folder(train):
        r = config["resolution"]
        steps = train_transform(r) if _augment(config, train) == "standard" else eval_steps(r)
        train_loader = DataLoader(train, bs, shuffle=True, drop_last=drop_last,
                                  seed=config["seed"], transform=Compose([steps, norm]),
                                  workers=workers)  # fmt: skip
        return train_loader, eval_loader(config, test, workers)
    steps = [norm]
    if _augment(config, train) == "standard":
        r = config["resolution"]
        steps = [RandomCrop(r, padding=max(1, r // 8))]
        if config["data"] != "digits":
            steps.append(RandomHorizontalFlip())
        steps.append(norm)
    train_loader = DataLoader(train, bs, shuffle=True, drop_last=drop_last, seed=config["seed"],
                              transform=Compose(steps))  # fmt: skip
    return train_loader, eval_loader(config, test, 0)


def eval_loader(config: dict, test, workers: int) -> DataLoader:
    """Evaluation batches: the evaluation resize and crop for folders, then normalised."""
    norm = Normalize(config["mean"], config["std"])
    if is_folder(test):
        steps = Compose([eval_steps(config["resolution"]), norm])
        return DataLoader(test, max(config["batch_size"], 64), transform=steps, workers=workers)
    return DataLoader(test, max(config["batch_size"], 256), transform=norm)


# --------------------------------------------------------------------------------- the run
def train_run(config: dict, out_dir, resume=None, progress="auto", log=print, overwrite=False):
    """Train as configured, writing into ``out_dir``; returns the metrics dict.

    ``resume``: a checkpoint path; the run continues from it with ITS configuration (settings
    given in ``config`` must agree with it) and ends with exactly the weights an uninterrupted
    run would have. A finished run given more ``epochs`` is extended: its weights, optimizer
    state and history continue, and the extra epochs get a new schedule of their own (a new
    one-cycle, or a cosine restart from the peak rate). ``config["init"]``: start a new run from
    saved weights (:mod:`npmobilenet.train.finetune`). Nothing is written until the data, the
    model and any checkpoint have been read and checked; an ``out_dir`` that already holds a
    run is refused unless ``overwrite`` or resuming.
    """
    start = time.perf_counter()
    ckpt, init, extend = None, None, False
    if resume is not None:
        ckpt = load_checkpoint(resume)
        config, extend = _resume_config(ckpt, config, resume)
        same_dir = os.path.abspath(os.path.dirname(os.fspath(resume))) == os.path.abspath(out_dir)
        if not same_dir:
            _check_out_dir(out_dir, overwrite)
    else:
        if config.get("init") is not None:
            init = read_weights(config["init"])
            if config.get("alpha") is None:  # the weights' width, not the recipe's
                config = {**config, "alpha": weights_alpha(*init)}
            saved = init[1] or {}
            config = {**config, **{k: saved[k] for k in CONVENTION_KEYS if k in saved}}
        config = make_config(**config)
        if config["data"] != "digits":  # found again from any working directory
            config["data"] = os.path.abspath(os.path.expanduser(os.fspath(config["data"])))
        _check_out_dir(out_dir, overwrite)
    check_run_fits(config)
    bar = progress == "bar" or (progress == "auto" and sys.stderr.isatty())
    train, test, summary = load_data(config, warn=log, progress=bar)
    log(summary)
    if ckpt is not None:
        check_same_data(config, train, test, resume)
    config.update(channels=channels_of(train), classes=list(train.classes),
                  augment=_augment(config, train), images=[len(train), len(test)])  # fmt: skip
    if "mean" not in config:
        mean, std = folder_stats(train, config) if is_folder(train) else channel_stats(train)
        config.update(mean=mean, std=[max(s, 1e-6) for s in std])
    model = build_model(config)
    if init is not None:
        load_init_weights(model, init[0], config["init"], log)
        log(f"initialised from {config['init']}")
    if config["freeze_features"]:
        log(f"training only {', '.join(freeze_features(model))} (features frozen)")
    train_loader, test_loader = build_loaders(config, train, test)
    optimizer = build_optimizer(config, model)
    scheduler = None if extend else build_scheduler(config, optimizer, len(train_loader))
    trainer = Trainer(model, optimizer, train_loader, test_loader, scheduler,
                      scheduler_interval="batch" if config["schedule"] == "onecycle" else "epoch",
                      label_smoothing=config["label_smoothing"],
                      max_grad_norm=config["max_grad_norm"], progress=progress, log=log,
                      config=config)  # fmt: skip
    if ckpt is not None:
        check_architecture(ckpt["model_config"], model.config, f"checkpoint {resume}")
        trainer.load_state_dict(ckpt, source=os.fspath(resume))
        log(f"resumed from {resume} after epoch {trainer.epoch}")
    if extend:
        trainer.scheduler = _extension_schedule(config, optimizer, len(train_loader), log)
    log(_describe_run(config, model))
    os.makedirs(out_dir, exist_ok=True)
    last = {}
    with _blas_threads(config["threads"], log):
        trainer.fit(config["epochs"], checkpoint_path=os.path.join(out_dir, CHECKPOINT),
                    on_epoch_end=lambda _, test: last.update(test=test))  # fmt: skip
    test_result = last["test"] if last else trainer.evaluate(test_loader)
    save_model(os.path.join(out_dir, MODEL), model, config)
    seconds = time.perf_counter() - start
    metrics = {
        "test_accuracy": test_result["accuracy"],
        "test_loss": test_result["loss"],
        "epochs": trainer.epoch,
        "seconds": seconds,
        "train_images": len(train),
        "test_images": len(test),
        "history": trainer.history,
        "confusion_matrix": test_result["confusion"].tolist(),
        "classes": config["classes"],
        "skipped_files": list(getattr(train, "skipped", [])),
        "config": config,
        "version": __version__,
    }
    write_metrics(out_dir, metrics)
    log(format_confusion(test_result["confusion"], config["classes"]))
    log(save_plots(out_dir, trainer.history, test_result["confusion"], config["classes"]))
    n_right = int(np.trace(test_result["confusion"]))
    log(f"test accuracy {100 * test_result['accuracy']:.2f}% ({n_right}/{test_result['n']})"
        f" after {trainer.epoch} epochs in {seconds:.1f} s; wrote {out_dir}/")  # fmt: skip
    return metrics


@contextlib.contextmanager
def _blas_threads(n: int, log):
    """``n`` threads for the run: BLAS limited to ``n`` (when threadpoolctl is installed; else a
    one-line note), and each training step split across ``n`` (``npmobilenet.threads``)."""
    from npmobilenet import threads as blas

    saved = blas.num_threads()
    blas.set_threads(n)
    try:
        if not blas.blas_info():
            log(f"note: threadpoolctl is not installed, so BLAS keeps its own thread count"
                f" (set OPENBLAS_NUM_THREADS={n} for the recipe's)")  # fmt: skip
            yield
            return
        with blas.blas_threads(n):
            yield
    finally:
        blas.set_threads(saved)


def _describe_run(config: dict, model) -> str:
    n_params = sum(p.data.size for p in model.parameters())
    r = config["resolution"]
    return (
        f"MobileNetV1 alpha {config['alpha']} ({n_params:,} parameters), {r}x{r}x"
        f"{config['channels']}, {config['optimizer']} lr {config['lr']} {config['schedule']},"
        f" batch {config['batch_size']}, {config['epochs']} epochs, seed {config['seed']}"
    )


def _resume_config(ckpt: dict, given: dict, path) -> tuple[dict, bool]:
    """``(the checkpoint's configuration, whether the run is extended)``; explicitly given
    settings must agree with it, except more ``epochs`` for a finished run."""
    saved = ckpt.get("config")
    if not isinstance(saved, dict) or "data" not in saved:
        raise ValueError(f"checkpoint {path} holds no run configuration; cannot resume from it")
    saved = {**DEFAULTS, **saved}  # settings added since the checkpoint was written
    extend = given.get("epochs") is not None and given["epochs"] != saved["epochs"]
    if extend:
        saved = _extended(saved, int(ckpt["epoch"]), given["epochs"], path)
    clash = [
        f"{k}: checkpoint {saved.get(k)!r}, given {v!r}"
        for k, v in given.items()
        if v is not None
        and k in DEFAULTS
        and k not in RUNTIME_SETTINGS
        and AUGMENT.get(saved.get(k), saved.get(k)) != AUGMENT.get(v, v)
    ]
    if clash:
        raise ValueError(
            f"--resume continues the run saved in {path} with its own settings, but these"
            f" differ: {'; '.join(clash)} (drop those flags, or start a new run with --out)"
        )
    runtime = {k: given[k] for k in RUNTIME_SETTINGS if given.get(k) is not None}
    return {**saved, **runtime}, extend


def check_same_data(saved: dict, train, test, path) -> None:
    """A resumed run's data must be the data it was trained on: the same class names in the
    same order (else every label would silently mean another class) and, when the checkpoint
    records them, as many train and test images (else the batches, the schedule and the test
    numbers no longer continue the run). Otherwise a ValueError."""
    classes = list(train.classes)
    if saved.get("classes") is not None and classes != saved["classes"]:

        def show(names):
            return ", ".join(map(str, names[:10])) + (" ..." if len(names) > 10 else "")

        raise ValueError(
            f"--resume: the run in {path} was trained on classes [{show(saved['classes'])}],"
            f" its data {saved['data']!r} now has [{show(classes)}]; resume on the data it was"
            " trained on, or start a new run from its weights with --init"
        )
    images = [len(train), len(test)]
    if saved.get("images") is not None and images != saved["images"]:
        raise ValueError(
            f"--resume: the run in {path} was trained on {saved['images'][0]} train and"
            f" {saved['images'][1]} test images, its data {saved['data']!r} now has {images[0]}"
            f" and {images[1]}; resume on the data it was trained on, or start a new run from"
            " its weights with --init"
        )


def _extended(saved: dict, done: int, epochs: int, path) -> dict:
    """The configuration of a finished ``done``-epoch run extended to ``epochs``."""
    if done < saved["epochs"]:
        raise ValueError(
            f"--resume --epochs {epochs}: the run in {path} stopped after {done} of its"
            f" {saved['epochs']} epochs; finish it first (--resume without --epochs), then"
            " extend it"
        )
    if epochs <= done:
        raise ValueError(
            f"--resume --epochs {epochs}: the run in {path} has already trained {done} epochs;"
            f" give more than {done} to extend it"
        )
    return {**saved, "epochs": epochs, "schedule_start": done}


def _extension_schedule(config: dict, optimizer, steps_per_epoch: int, log):
    """A new schedule for the extra epochs, starting from the configured learning rate."""
    for group in optimizer.param_groups:  # the finished schedule left lr near 0
        group["lr"] = group.get("initial_lr", config["lr"])
    extra = config["epochs"] - config["schedule_start"]
    log(f"extending the finished {config['schedule_start']}-epoch run to {config['epochs']}"
        f" epochs: a new {config['schedule']} schedule over the {extra} extra epochs")  # fmt: skip
    return build_scheduler(config, optimizer, steps_per_epoch)


def _check_out_dir(out_dir, overwrite: bool) -> None:
    names = (CHECKPOINT, MODEL, "metrics.json")
    existing = [f for f in names if os.path.exists(os.path.join(out_dir, f))]
    if existing and not overwrite:
        raise FileExistsError(
            f"npmobilenet train: {out_dir} already holds a run ({', '.join(existing)}); pass"
            " --resume to continue it, --out NEW_DIR for a new one, or --overwrite to replace it"
        )


# --------------------------------------------------------------------------------- saved runs
def save_model(path, model, config: dict) -> None:
    """The weights (PyTorch key names) with the run configuration in the header."""
    metadata = {
        "producer": f"npmobilenet {__version__}",
        CONFIG_KEY: json.dumps(config),
        "npmobilenet.model_config": json.dumps(model.config),
    }
    save_state_dict(model.state_dict(), path, metadata)


def load_run(path):
    """``(model in eval mode, config)`` from a run folder, a checkpoint or a model file.

    A weights file of :func:`npmobilenet.io.save_weights` (a model config, no run) gets a run
    configuration with its class names (``model.labels``) at 224x224 with ImageNet's
    normalisation (``predict --preset`` chooses another)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (MODEL, CHECKPOINT):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f"{path} holds neither {MODEL} nor {CHECKPOINT}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    meta = file_metadata(path)
    if CONFIG_KEY in meta:
        config = header_json("load_run", path, meta, CONFIG_KEY)
        state = load_state_dict_file(path)
        saved_model = header_json("load_run", path, meta, MODEL_CONFIG) or {}
    elif MODEL_CONFIG in meta and FORMAT not in meta:  # save_weights: the model, no run
        from npmobilenet.interop.convert import run_config

        model = load_model(path)
        return model, run_config(model, "torchvision")
    else:
        ckpt = load_checkpoint(path)
        config, state, saved_model = ckpt.get("config"), ckpt["model"], ckpt["model_config"]
    config = saved_run_config(path, config)
    model = build_model(config)
    check_architecture(saved_model, model.config, path)
    check_finite_weights(path, state)
    model.load_state_dict(state)
    return model.eval(), config


def check_finite_weights(path, state: dict) -> None:
    """Refuse weights holding nan or inf, naming the first such array: the model's outputs
    would not be finite (predict would rank classes by nan%). A run never saves them (training
    stops when its loss or its test outputs stop being finite), so the file is damaged."""
    for key, value in state.items():
        floats = isinstance(value, np.ndarray) and value.dtype.kind == "f"
        if floats and not np.isfinite(value).all():
            n = int(value.size - np.isfinite(value).sum())
            raise ValueError(
                f"load_run: {path}: {key} holds {n} nan or inf value(s) of {value.size}: the"
                " weights are damaged, so the model's outputs would mean nothing"
            )


# What a saved run configuration must record: every run and converted file writes them.
SAVED_RUN_KEYS = ("classes", "resolution", "channels", "mean", "std", "alpha")


def saved_run_config(path, config) -> dict:
    """The run configuration read from ``path``, completed with the defaults of settings added
    since it was written and checked where :func:`load_run`'s callers rely on it (an edited or
    damaged file gets a ValueError naming the file and the setting)."""
    op = "load_run"
    missing = [k for k in SAVED_RUN_KEYS if k not in config] if isinstance(config, dict) else []
    if not isinstance(config, dict) or missing:
        raise ValueError(
            f"{op}: {path} holds no run configuration (classes, resolution, normalisation)"
            + (f"; it lacks {', '.join(missing)}" if missing and "classes" in config else "")
        )
    config = {**DEFAULTS, **config}  # settings added since the file was written

    def check(key, ok: bool, want: str) -> None:
        if not ok:
            raise ValueError(
                f"{op}: {path}: the run configuration's {key} must be {want}, got"
                f" {describe(config.get(key))}"
            )

    classes = config["classes"]
    names = isinstance(classes, list) and len(classes) > 0
    check("classes", names and all(isinstance(c, str) for c in classes), "a list of class names")
    for key, low in (("resolution", MIN_RESOLUTION), ("channels", 1)):
        v = config[key]
        check(key, isinstance(v, int) and not isinstance(v, bool) and v >= low,
              f"an integer >= {low}")  # fmt: skip
    for key in ("mean", "std"):
        v = config.get(key)
        check(key, isinstance(v, list) and len(v) > 0 and all(map(_real, v)),
              "a list of finite numbers, one per channel")  # fmt: skip
    check("std", all(s > 0 for s in config["std"]), "positive")
    check("alpha", _real(config["alpha"]) and config["alpha"] > 0, "a number > 0")
    return config


def evaluate_run(path, data=None, log=print, ignore_class_names=False) -> dict:
    """Accuracy, loss and confusion matrix of a saved run on its test split (or on ``data``).

    The data's class names must be the model's: the same names in another order are matched by
    name; different names are refused (listing both) unless ``ignore_class_names``, which pairs
    the classes by position (the counts must still agree).
    """
    model, config = load_run(path)
    if data is not None:
        config = {**config, "data": data}
    elif config.get("data") is None:
        raise ValueError(
            f"evaluate: {path} records no data of its own (converted or saved weights, not a"
            " training run); give the images to evaluate on with --data (data=...)"
        )
    _, test, summary = load_data(config, warn=log)
    test = match_classes(test, config["classes"], ignore_class_names)
    result = evaluate(model, eval_loader(config, test, _workers(config, test)),
                      len(config["classes"]))  # fmt: skip
    if not np.isfinite(result["loss"]):
        raise ValueError(
            f"the loss of {path} on its test images is {result['loss']}: the model's outputs"
            " are not finite (damaged weights?), so its accuracy means nothing"
        )
    log(f"{summary}; evaluated {result['n']} test images")
    log(format_confusion(result["confusion"], config["classes"]))
    log(f"accuracy {100 * result['accuracy']:.2f}%  loss {result['loss']:.4f}")
    return result


def match_classes(data, classes: list, ignore_names: bool = False):
    """``data`` labelled by the model's ``classes``: relabelled by name when the names are the
    same in another order; by position only when ``ignore_names``; otherwise a ValueError."""
    if data.classes == classes:
        return data
    if sorted(data.classes) == sorted(classes) and len(set(classes)) == len(classes):
        index = np.array([classes.index(name) for name in data.classes])  # data -> model label
        if is_folder(data):
            return ImageFiles(data.files, index[data.y], classes, data.channels, data.cache,
                              data.warn, data.skipped)  # fmt: skip
        return ArrayDataset(data.x, index[data.y], classes, name="evaluate")
    if ignore_names and len(data.classes) == len(classes):
        return data

    def show(names):
        return ", ".join(names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "")

    raise ValueError(
        f"the data's classes [{show(data.classes)}] are not the model's [{show(classes)}];"
        + (
            " pass --ignore-class-names to pair them by position"
            if len(data.classes) == len(classes)
            else " their counts differ, so they cannot be paired"
        )
    )


def predict_images(path, images, top_k=5):
    """``[(image, [(class, probability), ...]), ...]``: the top-k classes of each image file
    (folders expand to their images); a missing or unreadable file is an error."""
    from npmobilenet.train.predict import predict_files

    model, config = load_run(path)
    for image in images:
        if not os.path.exists(image):
            raise FileNotFoundError(f"no such image: {image}")
    out = []
    for pred in predict_files(model, config, images, top_k=top_k, workers=0):
        if pred.error is not None:
            raise ValueError(f"{pred.path} is {pred.error}")
        out.append((pred.path, pred.top))
    return out


__all__ = [
    "DEFAULTS",
    "make_config",
    "load_data",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "build_loaders",
    "train_run",
    "save_model",
    "load_run",
    "evaluate_run",
    "predict_images",
]
