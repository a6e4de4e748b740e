"""User modules with skip connections, built from the public npmobilenet.nn modules, inside
MobileNetV1 and on their own, against the same networks in float64 PyTorch.

A skip connection reads its input and its gradient twice: these tests fail if the model's
array reuse or in-place gradients overwrite either behind the user's back."""

from __future__ import annotations

import numpy as np
import pytest
from torch_reference import build_seed_mobilenet

from npmobilenet import nn, ops, threads
from npmobilenet.models import MobileNetV1

pytestmark = [pytest.mark.torch, pytest.mark.kernels]


def _close(ours, theirs, msg=""):
    """float64 agreement to rounding: relative 1e-7, absolute 1e-9 of the largest value (the
    overwritten-gradient bug this guards against changes values by tens of percent)."""
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    atol = 1e-9 * max(1.0, float(np.abs(theirs).max(initial=0.0)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=atol, err_msg=msg)


class MyResidualBlock(nn.Module):
    """``y = x + bn(conv(x))``: plain forward(x) / backward(dout), as a user writes it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False, dtype=np.float64)
        self.bn = nn.BatchNorm2d(channels, dtype=np.float64)

    def forward(self, x):
        return x + self.bn(self.conv(x))

    def backward(self, dout):
        return dout + self.conv.backward(self.bn.backward(dout))

    def output_shape(self, in_shape):
        return in_shape


def _torch_residual(torch, channels):
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn = torch.nn.BatchNorm2d(channels)

        def forward(self, x):
            return x + self.bn(self.conv(x))

    return Residual()


def _sgd(params, lr=0.1):
    for p in params:
        p.data -= lr * p.grad


@pytest.fixture(params=["default", "split"])
def threading_mode(request, monkeypatch):
    """The model's default runner, and one that splits even these small arrays in three."""
    if request.param == "split":
        monkeypatch.setattr(threads, "MIN_SLICE_ELEMENTS", 1)
        return threads.Runner(3)
    return None


@pytest.mark.parametrize("recompute", [False, True])
def test_user_residual_block_inside_mobilenet_matches_torch_for_two_steps(
    torch, threading_mode, recompute
):
    """The exact fine-tuning idiom: m.depthwise_sep_conv2 = MyResidualBlock(...), two training
    steps with the model's workspace and threads; every gradient, dx, the running statistics
    and the logits match PyTorch in float64. With ``recompute_block_outputs`` the library
    blocks let their outputs go between them, never the output the user's block reads."""
    m = MobileNetV1(alpha=0.25, num_classes=5, dtype=np.float64, seed=0)
    m.depthwise_sep_conv2 = MyResidualBlock(32)
    m.recompute_block_outputs = recompute
    if threading_mode is not None:
        m.runner = threading_mode
    assert list(m._modules).index("depthwise_sep_conv2") == 3  # kept its place
    torch.manual_seed(0)
    ref = build_seed_mobilenet(torch, alpha=0.25, num_classes=5).double()
    ref.depthwise_sep_conv2 = _torch_residual(torch, 32).double()
    rng = np.random.default_rng(0)
    for step in range(2):
        # each step starts the reference from our weights: a BN over few values per channel
        # amplifies the 1e-13 differences of an SGD step taken on both sides
        ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in m.state_dict().items()})
        x = rng.standard_normal((3, 3, 32, 32))
        y = np.array([0, 3, 4])
        m.zero_grad()
        logits = m(x)
        loss, cache = ops.cross_entropy_forward(logits, y)
        dx = m.backward(ops.cross_entropy_backward(1.0, cache))
        xt = torch.from_numpy(x).requires_grad_(True)
        ref.zero_grad()
        out = ref(xt)
        torch.nn.functional.cross_entropy(out, torch.from_numpy(y)).backward()
        _close(logits, out, f"step {step} logits")
        _close(dx, xt.grad, f"step {step} dx")
        grads = {n: p.grad for n, p in ref.named_parameters()}
        for name, p in m.named_parameters():
            _close(p.grad, grads[name], f"step {step} {name}")
        ref_state = ref.state_dict()
        for name, v in m.state_dict().items():
            _close(v, ref_state[name], f"step {step} {name}")
        _sgd(m.parameters())


class InvertedResidual(nn.Module):
    """MobileNetV2's block from public modules: 1x1 expand, BN, ReLU6, 3x3 depthwise, BN,
    ReLU6, 1x1 project, BN, plus the input (stride 1, same channels)."""

    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        f64 = np.float64
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False, dtype=f64),
            nn.BatchNorm2d(hidden, dtype=f64),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False, dtype=f64),
            nn.BatchNorm2d(hidden, dtype=f64),
            nn.ReLU6(),
            nn.Conv2d(hidden, channels, 1, bias=False, dtype=f64),
            nn.BatchNorm2d(channels, dtype=f64),
        )

    def forward(self, x):
        return x + self.body(x)

    def backward(self, dout):
        return dout + self.body.backward(dout)


def _torch_inverted_residual(torch, channels, expand):
    t = torch.nn
    hidden = channels * expand

    class Block(t.Module):
        def __init__(self):
            super().__init__()
            self.body = t.Sequential(
                t.Conv2d(channels, hidden, 1, bias=False), t.BatchNorm2d(hidden), t.ReLU6(),
                t.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                t.BatchNorm2d(hidden), t.ReLU6(),
                t.Conv2d(hidden, channels, 1, bias=False), t.BatchNorm2d(channels),
            )  # fmt: skip

        def forward(self, x):
            return x + self.body(x)

    return Block().double()


@pytest.mark.parametrize("consume", [False, True])
def test_mobilenetv2_inverted_residual_block_matches_torch(torch, consume):
    """Forward and backward (dx, every gradient, running statistics) of the block, alone and
    followed by a ReLU6 in a Sequential whose caller gives its dout away (consume=True)."""
    rng = np.random.default_rng(1)
    block = InvertedResidual(4, 6)
    net = nn.Sequential(block, nn.ReLU6())
    ref = torch.nn.Sequential(_torch_inverted_residual(torch, 4, 6), torch.nn.ReLU6())
    with torch.no_grad():
        for mod in ref.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    net.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    x = rng.standard_normal((2, 4, 7, 7)) * 2
    dout = rng.standard_normal((2, 4, 7, 7))
    out = net(x)
    dx = net.backward(dout.copy(), consume=consume)
    xt = torch.from_numpy(x).requires_grad_(True)
    out_t = ref(xt)
    out_t.backward(torch.from_numpy(dout))
    _close(out, out_t, "out")
    _close(dx, xt.grad, "dx")
    grads = dict(ref.named_parameters())
    for name, p in net.named_parameters():
        _close(p.grad, grads[name].grad, name)
    ref_state = ref.state_dict()
    for name, v in net.state_dict().items():
        _close(v, ref_state[name], name)
