"""Ctrl-C during training: one line naming the last complete checkpoint and the exact command
to continue, exit code 130, no traceback. A real process receives a real SIGINT."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from npmobilenet.data import load_digits_dataset
from npmobilenet.train import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")
def test_sigint_mid_training_names_checkpoint_and_resume_command(tmp_path):
    train, test = load_digits_dataset(32, channels=1)
    data = tmp_path / "d.npz"
    np.savez(data, x=train.x[:128], y=train.y[:128], x_test=test.x[:32], y_test=test.y[:32])
    out = tmp_path / "run"
    code = "import sys; from npmobilenet.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "500",
            "--batch-size", "32", "--progress", "none"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    ckpt = out / "checkpoint.safetensors"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch: a kernel call or a save is likely running
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    # (the first run of a fresh install also announces its kernel compilation on stderr)
    lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith("npmobilenet: compil")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    epoch = load_checkpoint(ckpt)["epoch"]
    assert epoch >= 1 and re.search(rf"epoch +{epoch}/500 ", stdout)
    assert f"the last complete checkpoint is {ckpt} (after epoch {epoch})" in lines[0]
    command = lines[0].split("continue with: ", 1)[1]
    assert shlex.split(command) == ["npmobilenet", "train", "--resume", str(ckpt)]
