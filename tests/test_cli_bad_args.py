"""Every command with bad arguments: a non-zero exit code, one line on stderr naming the command,
and no traceback. Run in-process (``main(argv)``), so the whole table takes seconds."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet.cli import main

MISSING = "/nonexistent/npmobilenet-test"

CASES = [
    ["frobnicate"],
    ["--no-such-flag"],
    ["train", "--epochs", "0"],
    ["train", "--epochs", "two"],
    ["train", "--alpha", "-1"],
    ["train", "--alpha", "nan"],
    ["train", "--lr", "inf"],
    ["train", "--lr", "0"],
    ["train", "--momentum", "-0.5"],
    ["train", "--weight-decay", "nan"],
    ["train", "--warmup", "2"],
    ["train", "--label-smoothing", "-1"],
    ["train", "--max-grad-norm", "0"],
    ["train", "--seed", "-1"],
    ["train", "--threads", "0"],
    ["train", "--batch-size", "1.5"],
    ["train", "--resolution", "16"],
    ["train", "--resolution", "100000"],
    ["train", "--optimizer", "adagrad"],
    ["train", "--schedule", "sometimes"],
    ["train", "--progress", "loud"],
    ["train", "--data", MISSING],
    ["train", "--data", "{text}"],
    ["train", "--resume", MISSING + "/checkpoint.safetensors"],
    ["train", "--resume", "{text}"],
    ["evaluate"],
    ["evaluate", "--checkpoint", MISSING],
    ["evaluate", "--checkpoint", "{text}"],
    ["evaluate", "--checkpoint", "{folder}"],
    ["predict", "--checkpoint", MISSING],
    ["predict", "--checkpoint", MISSING, "a.png"],
    ["predict", "--checkpoint", "{text}", "a.png"],
    ["predict", "--checkpoint", MISSING, "--top-k", "0", "a.png"],
    ["summary", "--alpha", "0"],
    ["summary", "--alpha", "0.01"],
    ["summary", "--alpha", "1e308"],
    ["summary", "--resolution", "0"],
    ["summary", "--resolution", "10x"],
    ["summary", "--resolution", "1x2x3"],
    ["summary", "--classes", "0"],
    ["summary", "--in-channels", "-3"],
    ["summary", "--conv", "dilated"],
    ["gradcheck", "--seed", "x"],
    ["gradcheck", "--seed", "-1"],
    ["gradcheck", "--bogus"],
]


@pytest.mark.parametrize("argv", CASES, ids=lambda a: " ".join(a))
def test_bad_arguments_give_one_line_and_no_traceback(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)  # default output folders land here, not in the repository
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    (tmp_path / "empty").mkdir()
    argv = [a.format(text=text, folder=tmp_path / "empty") for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("npmobilenet: compil")]
    assert len(lines) == 1, err
    assert lines[0].startswith("npmobilenet") and "error" in lines[0], err
    assert "Traceback" not in err and len(lines[0]) < 600
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.safetensors"))


def test_help_exits_zero(capsys):
    assert main(["train", "--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def test_npz_with_bad_values_via_the_cli(tmp_path, capsys):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.full((4, 1, 32, 32), np.nan, np.float32), y=np.arange(4) % 2)
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("npmobilenet: compil")]
    assert len(lines) == 1 and "non-finite" in lines[0]
