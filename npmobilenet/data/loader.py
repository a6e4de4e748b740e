"""Mini-batches: seeded shuffling, ``drop_last``, batch transforms, exact resume.

Each pass over the loader (``for x, y in loader``) is one epoch. The order of epoch ``e`` is
``default_rng([seed, e]).permutation(N)``, and batch ``b`` of it is transformed with
``default_rng([seed, e, b])``: both depend only on ``(seed, epoch, batch)``, so the same seed
gives the same batches on every run, and a loader restored from :meth:`DataLoader.state_dict`
continues with exactly the batches an uninterrupted run would have produced.

Only one batch is gathered at a time (``dataset[indices]``); the dataset is never copied.

With ``workers > 0``, batches are gathered and transformed ahead of time by that many threads
(Pillow and NumPy release the GIL while decoding and resizing, so this overlaps with the
training step), at most ``prefetch`` batches ahead. Each batch still uses its own
``(seed, epoch, batch)`` generator and is yielded in order, so the batches are the same with
or without workers. Leaving the loop early (``break``, an error, Ctrl-C) cancels the batches
not yet started and waits for the running ones; an error in a worker is raised when its batch
is due.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from npmobilenet._checks import describe, integer


class DataLoader:
    """``DataLoader(dataset, batch_size, shuffle=False, drop_last=False, seed=0, transform=None,
    workers=0, prefetch=None)``.

    ``dataset``: anything with ``len()`` whose ``dataset[indices]`` returns ``(x, y)`` batches
    (e.g. :class:`~npmobilenet.data.dataset.ArrayDataset`, or a lazy image folder whose ``x``
    is a list of images). Yields ``x`` ``(B, C, H, W)`` (transformed by ``transform(x, rng)``)
    and ``y`` ``(B,)`` int64. ``workers``: threads preparing batches ahead (0: in the loop);
    ``prefetch``: how many batches ahead at most (default ``2 * workers``).
    """

    def __init__(self, dataset, batch_size, shuffle=False, drop_last=False, seed=0,
                 transform=None, workers=0, prefetch=None):  # fmt: skip
        _check_args(dataset, batch_size, shuffle, drop_last, seed, transform)
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.transform = transform
        self.workers = integer("DataLoader", "workers", workers, minimum=0)
        prefetch = 2 * self.workers if prefetch is None else prefetch
        self.prefetch = integer("DataLoader", "prefetch", prefetch, minimum=self.workers)
        self.epoch = 0  # the epoch the next batch belongs to
        self.batch = 0  # the index of the next batch within it

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch``, in the order they are batched."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def make_batch(self, epoch: int, order: np.ndarray, b: int):
        """Batch ``b`` of ``epoch``: gathered, transformed with its own generator."""
        bs = self.batch_size
        x, y = self.dataset[order[b * bs : (b + 1) * bs]]
        if self.transform is not None:
            x = self.transform(x, np.random.default_rng([self.seed, epoch, b]))
        return x, y.astype(np.int64, copy=False)

    def __iter__(self):
        """One epoch (the rest of it, after a mid-epoch resume)."""
        epoch, order = self.epoch, self.order(self.epoch)
        batches = range(self.batch, len(self))
        if self.workers == 0:
            made = (self.make_batch(epoch, order, b) for b in batches)
        else:
            made = self._prefetched(epoch, order, batches)
        try:
            for b in batches:
                batch = next(made)
                last = b + 1 == len(self)
                self.epoch, self.batch = (epoch + 1, 0) if last else (epoch, b + 1)
                yield batch
        finally:
            made.close()  # stops the workers when the loop is left early

    def _prefetched(self, epoch: int, order: np.ndarray, batches: range):
        """The batches, made by ``workers`` threads at most ``prefetch`` ahead, in order."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="npmobilenet-data")
        pending, todo = deque(), iter(batches)
        try:
            for b in todo:
                pending.append(pool.submit(self.make_batch, epoch, order, b))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                batch = pending.popleft().result()
                for b in todo:
                    pending.append(pool.submit(self.make_batch, epoch, order, b))
                    break
                yield batch
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def state_dict(self) -> dict:
        """``{"seed", "epoch", "batch"}``: where the next batch comes from (plain ints)."""
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`: the next batch is the one that was due then."""
        op = "DataLoader.load_state_dict"
        if not isinstance(state, dict) or set(state) != {"seed", "epoch", "batch"}:
            raise ValueError(f"{op}: expected keys seed, epoch, batch, got {describe(state)}")
        self.seed = integer(op, "seed", state["seed"], minimum=0)
        self.epoch = integer(op, "epoch", state["epoch"], minimum=0)
        self.batch = integer(op, "batch", state["batch"], minimum=0)
        if self.batch >= len(self):
            raise ValueError(f"{op}: batch {self.batch} is past the {len(self)} batches per epoch")


def _check_args(dataset, batch_size, shuffle, drop_last, seed, transform) -> None:
    op = "DataLoader"
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(f"{op}: dataset must support len() and indexing, got {describe(dataset)}")
    integer(op, "batch_size", batch_size, minimum=1)
    integer(op, "seed", seed, minimum=0)
    for name, flag in (("shuffle", shuffle), ("drop_last", drop_last)):
        if not isinstance(flag, bool):
            raise TypeError(f"{op}: {name} must be a bool, got {describe(flag)}")
    if transform is not None and not callable(transform):
        raise TypeError(f"{op}: transform must be callable or None, got {describe(transform)}")
    if len(dataset) == 0:
        raise ValueError(f"{op}: the dataset is empty")
    if drop_last and batch_size > len(dataset):
        raise ValueError(
            f"{op}: batch_size {batch_size} is larger than the dataset ({len(dataset)}"
            " samples) and drop_last=True, so there would be no batches"
        )
