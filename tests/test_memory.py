"""Huge arguments are refused up front with the memory they would need; the weight count the
estimate starts from equals the built model's."""

from __future__ import annotations

import numpy as np
import pytest

from npmobilenet.cli import main
from npmobilenet.memory import check_fits, estimate_bytes, human, layer_sizes
from npmobilenet.models import MobileNetV1

CASES = [(1.0, 3, "separable"), (0.25, 1, "separable"), (0.6, 3, "full"), (0.03125, 2, "separable")]


@pytest.mark.parametrize("alpha,in_ch,conv", CASES)
def test_weight_count_equals_the_built_model(alpha, in_ch, conv):
    model = MobileNetV1(alpha=alpha, num_classes=7, in_channels=in_ch, conv=conv)
    fc = model.fc.weight.data.size + model.fc.bias.data.size
    counted = sum(v.size for k, v in model.state_dict().items() if "num_batches" not in k) - fc
    assert layer_sizes(alpha, in_ch, 64, 64, conv)[0] == counted


def test_outputs_follow_the_stride_two_stages():
    _, outputs = layer_sizes(1.0, 3, 224, 224)
    assert outputs[0] == 32 * 112 * 112  # first_conv
    assert outputs[-1] == 1024 * 7 * 7  # the last pointwise convolution
    assert len(outputs) == 1 + 2 * 13


@pytest.mark.parametrize(
    "argv,words",
    [
        (["summary", "--alpha", "1e308"], ["alpha 1e+308", "infinite"]),
        (["summary", "--alpha", "1e6"], ["alpha 1e+06 at 224x224", "needs about", "RAM"]),
        (["summary", "--resolution", "100000", "--trace"], ["100000x100000", "TiB"]),
        (["train", "--resolution", "100000"], ["alpha 0.25 at 100000x100000", "TiB", "RAM"]),
        (["train", "--alpha", "1e300"], ["10^", "bytes"]),
    ],
)
def test_huge_arguments_are_refused_in_one_line(tmp_path, capsys, argv, words):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [
        ln for ln in captured.err.strip().splitlines() if not ln.startswith("npmobilenet: compil")
    ]
    assert len(lines) == 1 and "error" in lines[0], captured.err
    for w in words:
        assert w in lines[0]
    assert not (tmp_path / "run").exists()


def test_check_fits_compares_with_the_given_ram():
    need = estimate_bytes(0.25, 10, 1, 32, 32, 64)
    check_fits("op", need, "x", ram=need)
    with pytest.raises(ValueError, match=r"op: x needs about .* more than this machine's 1 KiB"):
        check_fits("op", need, "x", ram=1024)
    assert human(3 * 1024**3 // 2) == "1.5 GiB" and human(10**700).startswith("10^700")
    assert np.isfinite(float(need))
