"""The image-folder pipeline at 224: peak memory, data wait, time to the first step, img/s.

Usage::

    python benchmarks/bench_data.py --root /tmp/npmobilenet-folders [--steps 20]

It generates two folders of 300x300 JPEGs in 10 classes under ``--root`` (2,000 and 20,000
images; kept for the next run), then runs each measurement in a fresh Python process, so the
peak resident memory (``VmHWM`` of ``/proc/self/status``) is that run's alone:

- ``rss``: peak memory of training alpha 0.25 at 224, batch 32, on each folder;
- ``ttfs``: seconds from constructing the folder to the end of the first training step, and
  its parts: the header scan, the normalisation statistics (64 images), the first batch, the
  first step (which includes loading the compiled kernels);
- ``wait``: the share of each step spent waiting for the next batch (after the first step),
  with the standard augmentation and 2 prefetch workers, and with 0 (decoding in the loop);
- ``img/s``: training images per second at alpha 0.25 and 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SIZES = (2_000, 20_000)
CLASSES = 10


def make_folder(root: str, n: int, side: int = 300, seed: int = 0) -> str:
    """``root/n<n>/<class>/<i>.jpg``: smooth random colour images (JPEGs of typical size)."""
    from PIL import Image

    folder = os.path.join(root, f"n{n}")
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = os.path.join(folder, f"c{i % CLASSES}", f"{i:06d}.jpg")
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # upsampled: photo-like blobs
        img = Image.fromarray(coarse).resize((side, side), Image.BICUBIC)
        img.save(path + ".tmp", "JPEG", quality=90)
        os.replace(path + ".tmp", path)
    return folder


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def train_steps(folder: str, alpha: float, steps: int, workers: int, batch: int = 32) -> dict:
    """Train ``steps`` steps on ``folder`` (224, standard augmentation); timings and memory."""
    from npmobilenet.data import DataLoader, LazyImageFolder, Normalize, train_transform
    from npmobilenet.data.transforms import Compose
    from npmobilenet.models import MobileNetV1
    from npmobilenet.optim import make_optimizer
    from npmobilenet.train import Trainer
    from npmobilenet.train.run import folder_stats

    start = time.perf_counter()
    data = LazyImageFolder(folder)
    scanned = time.perf_counter() - start
    mean, std = folder_stats(data, {"seed": 0, "resolution": 224, "workers": workers})
    stats = time.perf_counter() - start - scanned
    transform = Compose([train_transform(224), Normalize(mean, std)])
    loader = DataLoader(data, batch, shuffle=True, drop_last=True, transform=transform,
                        workers=workers)  # fmt: skip
    model = MobileNetV1(alpha=alpha, num_classes=data.num_classes, seed=0).train()
    trainer = Trainer(model, make_optimizer("sgd", model.parameters(), lr=0.01), loader,
                      progress="none", log=None)  # fmt: skip
    waits, computes, first = [], [], None
    batches = iter(loader)
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        trainer.train_step(x, y)
        t2 = time.perf_counter()
        if first is None:
            first, first_batch, first_step = t2 - start, t1 - t0, t2 - t1
        else:
            waits.append(t1 - t0)
            computes.append(t2 - t1)
    batches.close()
    wait, compute = sum(waits), sum(computes)
    return {
        "images": len(data), "alpha": alpha, "workers": workers, "scan_s": scanned,
        "stats_s": stats, "first_batch_s": first_batch, "first_step_s": first_step,
        "time_to_first_step_s": first, "wait_s_per_step": wait / steps,
        "compute_s_per_step": compute / steps, "wait_share": wait / (wait + compute),
        "images_per_s": steps * batch / (wait + compute), "peak_rss_mb": peak_rss_mb(),
    }  # fmt: skip


def run_case(folder: str, alpha: float, steps: int, workers: int) -> dict:
    """:func:`train_steps` in a fresh process (its own peak memory)."""
    argv = [sys.executable, __file__, "--case", folder, str(alpha), str(steps), str(workers)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/npmobilenet-folders")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--case", nargs=4, metavar=("FOLDER", "ALPHA", "STEPS", "WORKERS"),
                        help="run one measurement here and print it as JSON")  # fmt: skip
    args = parser.parse_args(argv)
    if args.case:
        folder, alpha, steps, workers = args.case
        print(json.dumps(train_steps(folder, float(alpha), int(steps), int(workers))))
        return
    folders = {}
    for n in SIZES:
        t = time.perf_counter()
        folders[n] = make_folder(args.root, n)
        print(f"folder of {n} images ready ({time.perf_counter() - t:.0f} s)", flush=True)
    cases = [(SIZES[0], 0.25, 2), (SIZES[1], 0.25, 2), (SIZES[1], 0.25, 0), (SIZES[1], 1.0, 2)]
    print(
        f"{'images':>7} {'alpha':>5} {'workers':>7} {'scan':>5} {'stats':>5} {'batch1':>6}"
        f" {'step1':>5} {'ttfs s':>6} {'wait/step s':>11} {'step s':>7} {'wait %':>6}"
        f" {'img/s':>6} {'peak RSS MB':>11}"
    )
    for n, alpha, workers in cases:
        r = run_case(folders[n], alpha, args.steps, workers)
        print(
            f"{r['images']:>7} {alpha:>5} {workers:>7} {r['scan_s']:>5.2f} {r['stats_s']:>5.2f}"
            f" {r['first_batch_s']:>6.2f} {r['first_step_s']:>5.2f}"
            f" {r['time_to_first_step_s']:>6.2f} {r['wait_s_per_step']:>11.3f}"
            f" {r['compute_s_per_step']:>7.3f} {100 * r['wait_share']:>6.1f}"
            f" {r['images_per_s']:>6.1f} {r['peak_rss_mb']:>11.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
