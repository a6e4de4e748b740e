"""What the user owns on disk: a replaced file keeps its mode, a read-only file is not replaced
unless asked, a symlink is written through, and temporary files of a killed save are removed.

Each test checks the file system itself (``os.stat``, ``os.readlink``, ``os.listdir``), not the
library's report of it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from npmobilenet.io import load_state_dict_file, save_state_dict
from npmobilenet.io.weights import remove_stale_partials
from npmobilenet.models import MobileNetV1
from npmobilenet.train import load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD, NEW = {"w": np.zeros(3, np.float32)}, {"w": np.arange(3, dtype=np.float32)}


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_replacing_a_file_keeps_its_mode(tmp_path, mode):
    path = tmp_path / "w.safetensors"
    save_state_dict(OLD, path)
    os.chmod(path, mode)
    save_state_dict(NEW, path)
    assert _mode(path) == mode
    np.testing.assert_array_equal(load_state_dict_file(path)["w"], NEW["w"])


def test_read_only_file_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "w.safetensors"
    save_state_dict(OLD, path)
    os.chmod(path, 0o444)
    before = path.read_bytes()
    with pytest.raises(PermissionError, match=r"refusing to replace .*w\.safetensors.*0444"):
        save_state_dict(NEW, path)
    assert path.read_bytes() == before and _mode(path) == 0o444
    assert os.listdir(tmp_path) == ["w.safetensors"]
    model = MobileNetV1(alpha=0.25, num_classes=3, seed=0)
    with pytest.raises(PermissionError, match="overwrite=True"):
        save_checkpoint(path, model, {"epoch": 1})
    assert path.read_bytes() == before
    save_state_dict(NEW, path, overwrite=True)
    np.testing.assert_array_equal(load_state_dict_file(path)["w"], NEW["w"])
    assert _mode(path) == 0o444  # replaced on request, still read-only


def test_symlink_is_written_through_to_its_target(tmp_path):
    target = tmp_path / "store" / "weights.safetensors"
    target.parent.mkdir()
    save_state_dict(OLD, target)
    os.chmod(target, 0o600)
    link = tmp_path / "latest.safetensors"
    relative = os.path.join("store", "weights.safetensors")
    os.symlink(relative, link)
    save_state_dict(NEW, link)
    assert os.path.islink(link) and os.readlink(link) == relative
    np.testing.assert_array_equal(load_state_dict_file(target)["w"], NEW["w"])
    assert _mode(target) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["latest.safetensors", "store"]
    assert os.listdir(target.parent) == ["weights.safetensors"]


def _stray(directory, name, age=60.0):
    p = directory / name
    p.write_bytes(b"half of a checkpoint")
    t = time.time() - age
    os.utime(p, (t, t))
    return p


def test_next_save_removes_stale_partials_and_nothing_else(tmp_path):
    stale = [_stray(tmp_path, ".tmp-abcd1234.partial"), _stray(tmp_path, ".tmp-x_9y8z7w.partial")]
    fresh = _stray(tmp_path, ".tmp-fresh000.partial", age=0.0)  # maybe a save in progress
    others = [
        _stray(tmp_path, n)
        for n in (
            ".tmp-abc.partial",
            "tmp-abcd1234.partial",
            ".tmp-abcd1234.partial.bak",
            "notes.partial",
        )
    ]
    save_state_dict(NEW, tmp_path / "w.safetensors")
    for p in stale:
        assert not p.exists()
    assert fresh.exists() and all(p.exists() for p in others)


def test_partial_locked_by_a_live_writer_is_kept(tmp_path):
    """A save in progress in another process holds a lock on its temporary file."""
    p = _stray(tmp_path, ".tmp-live0000.partial")
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR);"
        " fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(p)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert remove_stale_partials(tmp_path) == []
        assert p.exists()
    finally:
        holder.kill()
        holder.wait()
    assert remove_stale_partials(tmp_path) == [str(p)]


def test_killed_save_then_next_save_leaves_one_clean_file(tmp_path):
    """A real save killed mid-write (the checkpoint test hook), then a successful save."""
    path = tmp_path / "c.safetensors"
    code = (
        "import sys; from kill_during_save import killing_writer;"
        " from npmobilenet.models import MobileNetV1; from npmobilenet.train import checkpoint;"
        " checkpoint.atomic_write_bytes = killing_writer(1, checkpoint.atomic_write_bytes);"
        " checkpoint.save_checkpoint(sys.argv[1], MobileNetV1(alpha=0.25, num_classes=3, seed=0),"
        " {})"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    r = subprocess.run([sys.executable, "-c", code, str(path)], env=env, timeout=120)
    assert r.returncode == -9
    (partial,) = os.listdir(tmp_path)
    assert partial.startswith(".tmp-") and partial.endswith(".partial")
    t = time.time() - 60
    os.utime(tmp_path / partial, (t, t))
    save_checkpoint(path, MobileNetV1(alpha=0.25, num_classes=3, seed=0), {"epoch": 1})
    assert os.listdir(tmp_path) == ["c.safetensors"]
    assert load_checkpoint(path)["epoch"] == 1


# ----- predict --out: the same rules as weights -------------------------------------------


def _predictions(n=2, fail_at=None):
    from npmobilenet.train.predict import Prediction

    for i in range(n):
        if i == fail_at:
            raise RuntimeError("decoding stopped")
        yield Prediction(f"img{i}.png", [("cat", 0.75), ("dog", 0.25)], None)


@pytest.mark.parametrize("name", ["p.csv", "p.jsonl"])
def test_predictions_file_keeps_mode_symlink_and_read_only(tmp_path, name):
    from npmobilenet.train.predict import write_predictions

    target = tmp_path / "store" / name
    target.parent.mkdir()
    target.write_text("old results\n")
    os.chmod(target, 0o600)
    link = tmp_path / name
    os.symlink(target, link)
    assert write_predictions(_predictions(), link, 2) == (2, 0)
    assert os.path.islink(link) and os.readlink(link) == str(target)
    assert _mode(target) == 0o600 and "img1.png" in target.read_text()
    os.chmod(target, 0o444)
    with pytest.raises(PermissionError, match=r"predict: refusing to replace .*0444"):
        write_predictions(_predictions(3), link, 2)
    assert target.read_text().count("img") == 2 and _mode(target) == 0o444
    assert sorted(os.listdir(tmp_path)) == [name, "store"]
    assert os.listdir(target.parent) == [name]


def test_predictions_file_failing_midway_leaves_the_old_file(tmp_path):
    from npmobilenet.train.predict import write_predictions

    path = tmp_path / "p.csv"
    write_predictions(_predictions(), path, 2)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="decoding stopped"):
        write_predictions(_predictions(5, fail_at=3), path, 2)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["p.csv"]


# ----- convert / export-onnx never write over the file they read ----------------------------


def test_convert_and_export_onnx_refuse_to_replace_their_input(tmp_path, capsys):
    """``convert x.safetensors x.safetensors`` replaced the user's timm file with the converted
    one; ``export-onnx run run/model.safetensors`` replaced a run's weights with an ONNX graph."""
    from npmobilenet.cli import main

    fixtures = os.path.join(ROOT, "tests", "fixtures", "interop")
    timm = tmp_path / "timm.safetensors"
    timm.write_bytes(open(os.path.join(fixtures, "timm_mobilenetv1.safetensors"), "rb").read())
    os.symlink(timm, tmp_path / "link.safetensors")
    tf = tmp_path / "slim"
    shutil.copytree(os.path.join(fixtures, "slim_mobilenet_v1"), tf)
    converted = tmp_path / "run" / "model.safetensors"
    assert main(["convert", str(timm), str(converted)]) == 0
    cases = [
        ["convert", str(timm), str(timm)],
        ["convert", str(timm), str(tmp_path / "link.safetensors")],
        ["convert", str(tf / "model.ckpt"), str(tf / "model.ckpt.data-00000-of-00001")],
        ["export-onnx", str(converted), str(converted)],
        ["export-onnx", str(converted.parent), str(converted)],
    ]
    before = {p: p.read_bytes() for p in [timm, converted, *tf.iterdir()]}
    for args in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert f"{args[0]}: the output {args[2]} is the input file" in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert os.path.islink(tmp_path / "link.safetensors")


HISTORY = {"epoch": [1, 2], "train_loss": [2.0, 1.0], "train_accuracy": [0.3, 0.6],
           "test_loss": [2.1, 1.2], "test_accuracy": [0.25, 0.5]}  # fmt: skip


def test_run_plots_keep_mode_and_symlink(tmp_path):
    from PIL import Image

    from npmobilenet.train.plots import save_plots

    store = tmp_path / "store"
    store.mkdir()
    (store / "curves.png").write_bytes(b"old")
    os.chmod(store / "curves.png", 0o600)
    os.symlink(store / "curves.png", tmp_path / "curves.png")
    (tmp_path / "confusion.png").write_bytes(b"old")
    os.chmod(tmp_path / "confusion.png", 0o640)
    save_plots(tmp_path, HISTORY, np.array([[3, 1], [0, 4]]), ["a", "b"])
    assert os.path.islink(tmp_path / "curves.png") and _mode(store / "curves.png") == 0o600
    assert _mode(tmp_path / "confusion.png") == 0o640
    for path in (store / "curves.png", tmp_path / "confusion.png"):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert sorted(os.listdir(tmp_path)) == ["confusion.png", "curves.png", "store"]


def test_run_plot_failing_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    """savefig wrote into curves.png itself: a crash mid-write left half a PNG."""
    from matplotlib.figure import Figure

    from npmobilenet.train.plots import plot_curves

    def half_then_fail(self, fname, **kw):
        if isinstance(fname, (str, os.PathLike)):
            with open(fname, "wb") as f:
                f.write(b"\x89PNG half")
        else:
            fname.write(b"\x89PNG half")
        raise MemoryError("rendering stopped")

    (tmp_path / "curves.png").write_bytes(b"the old curves")
    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    with pytest.raises(MemoryError, match="rendering stopped"):
        plot_curves(HISTORY, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes() == b"the old curves"
    assert os.listdir(tmp_path) == ["curves.png"]
