"""Checkpoints: exact resume, atomic writes that survive a kill, clear errors for bad files.

The runs are tiny (a digits subset in an .npz, alpha 0.25, 32x32, a few batches per epoch) so
the whole file takes seconds; exactness is checked with float32 equality of every array.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import digits_npz

from npmobilenet.data import DataLoader, load_digits_dataset
from npmobilenet.io import load_state_dict_file
from npmobilenet.models import MobileNetV1
from npmobilenet.optim import SGD
from npmobilenet.optim.lr_scheduler import OneCycleLR
from npmobilenet.train import Trainer, load_checkpoint, save_checkpoint, train_run
from npmobilenet.train.metrics import without_timings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """160 train / 40 test digits at 32x32, grey, saved as an .npz."""
    return digits_npz(tmp_path_factory.mktemp("data"), 160, 40)


def quiet(*_):
    pass


def digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_cli(args, kill_at_write=None):
    """``npmobilenet ARGS`` in a fresh process; killed mid-way through its ``kill_at_write``-th
    file write when that is given (``tests/kill_during_save.py``)."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    if kill_at_write is None:
        code = ["-c", "import sys; from npmobilenet.cli import main; sys.exit(main(sys.argv[1:]))"]
    else:
        code = [os.path.join(ROOT, "tests", "kill_during_save.py"), str(kill_at_write)]
    return subprocess.run(
        [sys.executable, *code, *args], env=env, capture_output=True, text=True, timeout=300
    )


def tiny_trainer(seed=0, dropout=0.3):
    """A 16x16 model with dropout (so the generator state matters) on 96 digits."""
    train, _ = load_digits_dataset(16, channels=1)
    x, y = train.x[:96], train.y[:96]
    from npmobilenet.data import ArrayDataset

    data = ArrayDataset(x, y, train.classes)
    model = MobileNetV1(alpha=0.25, num_classes=10, in_channels=1, dropout=dropout, seed=seed)
    opt = SGD(list(model.parameters()), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    loader = DataLoader(data, 32, shuffle=True, seed=seed)
    sched = OneCycleLR(opt, max_lr=0.05, epochs=3, steps_per_epoch=len(loader))
    return Trainer(model, opt, loader, None, sched, progress="none", log=None)


@pytest.mark.slow
def test_trainer_resume_equals_uninterrupted(tmp_path):
    full = tiny_trainer()
    full.fit(3)

    first = tiny_trainer()
    first.fit(2, checkpoint_path=tmp_path / "ckpt.safetensors")
    second = tiny_trainer(seed=0)
    for p in second.model.parameters():  # prove the weights come from the checkpoint
        p.data[...] = 0
    second.load_checkpoint(tmp_path / "ckpt.safetensors")
    assert second.epoch == 2
    second.fit(3)

    want, got = full.model.state_dict(), second.model.state_dict()
    assert list(want) == list(got)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    timeless = {"history": second.history}, {"history": full.history}
    assert without_timings(timeless[0]) == without_timings(timeless[1])
    assert second.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]


@pytest.mark.slow
def test_checkpoint_round_trip_holds_every_part(tmp_path):
    t = tiny_trainer()
    t.fit(1)
    path = tmp_path / "c.safetensors"
    t.save_checkpoint(path)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1
    assert ckpt["model_config"]["alpha"] == 0.25
    assert ckpt["train_loader"] == t.train_loader.state_dict()
    assert ckpt["generators"]["dropout"] == t.model.dropout.rng.bit_generator.state
    for k, v in t.model.state_dict().items():
        np.testing.assert_array_equal(ckpt["model"][k], v)
        assert ckpt["model"][k].dtype == v.dtype
    buffers = ckpt["optimizer"]["state"]
    assert len(buffers) == len(list(t.model.parameters()))
    assert all(isinstance(s["momentum_buffer"], np.ndarray) for s in buffers.values())


@pytest.mark.slow
def test_cli_killed_mid_save_then_resume_is_exact(tmp_path, small_npz):
    """Kill the process half-way through writing epoch 3's checkpoint: epoch 2's survives,
    and --resume from it ends with the uninterrupted run's exact weights and metrics."""
    common = ["--data", small_npz, "--epochs", "3", "--batch-size", "32", "--progress", "plain"]
    full = tmp_path / "full"
    res = run_cli(["train", *common, "--out", str(full)])
    assert res.returncode == 0, res.stderr

    part = tmp_path / "part"
    res = run_cli(["train", *common, "--out", str(part)], kill_at_write=3)
    assert res.returncode == -9, (res.returncode, res.stderr)  # SIGKILL
    assert any(n.startswith(".tmp-") for n in os.listdir(part))  # the half-written temp file
    assert not (part / "model.safetensors").exists()
    ckpt = load_checkpoint(part / "checkpoint.safetensors")  # still the complete epoch-2 file
    assert ckpt["epoch"] == 2

    res = run_cli(["train", "--resume", "--out", str(part), "--progress", "plain"])
    assert res.returncode == 0, res.stderr
    assert "resumed from" in res.stdout and "after epoch 2" in res.stdout
    want = load_state_dict_file(full / "model.safetensors")
    got = load_state_dict_file(part / "model.safetensors")
    assert sorted(want) == sorted(got)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    with open(full / "metrics.json") as f, open(part / "metrics.json") as g:
        assert without_timings(json.load(g)) == without_timings(json.load(f))


@pytest.mark.slow
def test_truncated_checkpoint_is_refused_and_nothing_overwritten(tmp_path, small_npz):
    out = tmp_path / "run"
    train_run({"data": small_npz, "epochs": 1, "batch_size": 80}, out, progress="none", log=quiet)
    ckpt = out / "checkpoint.safetensors"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    before = {n: digest(out / n) for n in os.listdir(out)}
    with pytest.raises(ValueError, match=r"not a readable checkpoint \(truncated or corrupt"):
        train_run({}, out, resume=ckpt, progress="none", log=quiet)
    assert {n: digest(out / n) for n in os.listdir(out)} == before


def test_checkpoint_of_another_architecture_names_the_mismatch(tmp_path):
    t = tiny_trainer()
    t.save_checkpoint(tmp_path / "c.safetensors")
    other = tiny_trainer()
    other.model = MobileNetV1(alpha=0.5, num_classes=10, in_channels=1, seed=0)
    with pytest.raises(ValueError, match=r"different architecture \(alpha: .* 0\.25.* 0\.5"):
        other.load_checkpoint(tmp_path / "c.safetensors")
    wide = MobileNetV1(alpha=0.25, num_classes=7, in_channels=3, seed=0)
    other.model = wide
    with pytest.raises(ValueError, match=r"num_classes: .*10.*7; in_channels: .*1.*3"):
        other.load_checkpoint(tmp_path / "c.safetensors")


def test_weights_file_is_not_a_checkpoint(tmp_path):
    from npmobilenet.io import save_weights

    save_weights(MobileNetV1(alpha=0.25, num_classes=10, seed=0), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="not an npmobilenet checkpoint"):
        load_checkpoint(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_save_replaces_atomically_and_keeps_permissions(tmp_path):
    t = tiny_trainer()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, t.model, {"epoch": 0})
    t.fit(1)
    save_checkpoint(path, t.model, {"epoch": 1})
    assert load_checkpoint(path)["epoch"] == 1
    assert [n for n in os.listdir(tmp_path)] == ["c.safetensors"]  # no temp file left
    assert os.stat(path).st_mode & 0o044  # readable by others, as an ordinary file
