"""One-cycle runs too short for a warm-up phase of more than one step train normally."""

from __future__ import annotations

import json

import numpy as np
import pytest

from npmobilenet.cli import main
from npmobilenet.data import load_digits_dataset


@pytest.mark.parametrize("n_train,batch,warmup", [(8, 2, None), (2, 2, "1")])
def test_four_step_and_one_step_one_cycle_runs(tmp_path, capsys, n_train, batch, warmup):
    """``--epochs 1`` with 4 batches and the default warm-up 0.25 (as ``--batch-size 360`` on
    the digits gives), and a single batch with ``--warmup 1``: both warm up in one step."""
    train, test = load_digits_dataset(32, channels=1)
    data = tmp_path / "d.npz"
    np.savez(data, x=train.x[:n_train], y=train.y[:n_train], x_test=test.x[:4], y_test=test.y[:4])
    argv = ["train", "--data", str(data), "--epochs", "1", "--batch-size", str(batch),
            "--out", str(tmp_path / "run"), "--progress", "none"]  # fmt: skip
    if warmup:
        argv += ["--warmup", warmup]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 1
    assert len(metrics["history"]["train_loss"]) == 1
    assert (
        np.isfinite(metrics["history"]["train_loss"][0]) and 0 < metrics["history"]["lr"][0] < 0.2
    )
