"""evaluate --data checks the data's class names against the model's."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet.cli import main
from npmobilenet.data import load_digits_dataset
from npmobilenet.train import train_run
from npmobilenet.train.run import evaluate_run

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch run on named digits; returns (run dir, folder for more .npz files, arrays)."""
    train, test = load_digits_dataset(32, channels=1)
    d = tmp_path_factory.mktemp("classes")
    arrays = dict(x=train.x[:96], y=train.y[:96], x_test=test.x[:40], y_test=test.y[:40])
    np.savez(d / "named.npz", **arrays, classes=np.array(NAMES))
    train_run({"data": str(d / "named.npz"), "epochs": 1, "batch_size": 32}, d / "run",
              progress="none", log=lambda _: None)  # fmt: skip
    return d / "run", d, arrays


def test_other_class_names_are_refused_with_both_lists(run, capsys):
    out, d, arrays = run
    letters = list("abcdefghij")
    np.savez(d / "letters.npz", **arrays, classes=np.array(letters))
    code = main(["evaluate", "--checkpoint", str(out), "--data", str(d / "letters.npz")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("npmobilenet: compil")]
    assert code == 2 and len(lines) == 1
    assert "a, b, c, d, e, f, g, h, i, j" in err and "zero, one, two" in err
    assert "--ignore-class-names" in err
    own = evaluate_run(out, log=lambda _: None)
    paired = evaluate_run(out, d / "letters.npz", log=lambda _: None, ignore_class_names=True)
    np.testing.assert_array_equal(paired["confusion"], own["confusion"])


def test_same_names_in_another_order_are_matched_by_name(run):
    out, d, arrays = run
    perm = np.random.default_rng(0).permutation(10)  # position in the file -> model class
    inverse = np.argsort(perm)
    shuffled = {**arrays, "y": inverse[arrays["y"]], "y_test": inverse[arrays["y_test"]]}
    np.savez(d / "shuffled.npz", **shuffled, classes=np.array(NAMES)[perm])
    own = evaluate_run(out, log=lambda _: None)
    matched = evaluate_run(out, d / "shuffled.npz", log=lambda _: None)
    np.testing.assert_array_equal(matched["confusion"], own["confusion"])
    assert matched["loss"] == own["loss"]


def test_different_class_count_is_refused_even_when_ignoring_names(run):
    out, d, arrays = run
    np.savez(d / "five.npz", x=arrays["x"], y=arrays["y"] % 5, x_test=arrays["x_test"],
             y_test=arrays["y_test"] % 5)  # fmt: skip
    with pytest.raises(ValueError, match=r"their counts differ"):
        evaluate_run(out, d / "five.npz", log=lambda _: None, ignore_class_names=True)
