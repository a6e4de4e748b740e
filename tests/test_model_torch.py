"""Whole-model parity with the reference PyTorch MobileNetV1 (tests/torch_reference.py):
identical state_dict keys, weights exchanged both ways, eval forward, and a training step
(forward, cross-entropy, backward: dx, every named gradient, updated running statistics)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOL
from torch_reference import build_seed_mobilenet

from npmobilenet import ops
from npmobilenet.models import MobileNetV1

pytestmark = [pytest.mark.torch, pytest.mark.kernels]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(torch):
    """Run the reference single-threaded, restoring the setting afterwards: on this shared
    2-core machine torch's two intra-op threads spin against the other jobs (an alpha-1 float64
    step took 7 s with two threads under load, 0.3 s with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# alpha, classes, in_channels, (H, W), activation, batch
CONFIGS = [
    (1.0, 1000, 3, (32, 32), "relu", 2),
    (0.75, 10, 1, (40, 48), "relu6", 3),
    (0.5, 7, 3, (64, 64), "relu", 2),
    (0.25, 2, 1, (36, 28), "relu6", 2),
]


def _pair(torch, alpha, classes, in_ch, activation, dtype, seed=0, dropout=0.0):
    """The torch reference with randomised BN parameters and statistics, and our model holding
    the same weights, moved torch -> npmobilenet through state_dict with no renaming."""
    torch.manual_seed(seed)
    ref = build_seed_mobilenet(torch, alpha, classes, in_ch, activation, dropout)
    ref = ref.double() if dtype == np.float64 else ref.float()
    with torch.no_grad():
        for mod in ref.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    ours = MobileNetV1(alpha, classes, in_ch, dropout, activation, dtype=dtype, seed=seed)
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    return ours, ref


def _input(shape, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _assert_close(ours, theirs, dtype, name="", scale_atol=True):
    """TOL[dtype], with atol relative to the reference's largest magnitude (gradients here
    span 1e-6 .. 1e4)."""
    tol = dict(TOL[dtype])
    if scale_atol:
        tol["atol"] = tol["atol"] * max(1.0, float(np.abs(theirs).max()))
    np.testing.assert_allclose(ours, theirs, **tol, err_msg=name)


@pytest.mark.parametrize("alpha", [1.0, 0.75, 0.5, 0.25])
def test_state_dict_keys_and_shapes_equal_the_seed_model(torch, alpha):
    ref = build_seed_mobilenet(torch, alpha=alpha, num_classes=10)
    ours = MobileNetV1(alpha=alpha, num_classes=10)
    theirs = ref.state_dict()
    assert list(ours.state_dict()) == list(theirs)  # same keys, same order
    for k, v in ours.state_dict().items():
        assert v.shape == tuple(theirs[k].shape), k
        assert str(v.dtype) == str(theirs[k].dtype).replace("torch.", ""), k
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]


@pytest.mark.parametrize("alpha,classes,in_ch,size,activation,batch", CONFIGS)
def test_eval_forward_float64(torch, alpha, classes, in_ch, size, activation, batch):
    ours, ref = _pair(torch, alpha, classes, in_ch, activation, np.float64)
    x = _input((batch, in_ch, *size), np.float64)
    with torch.no_grad():
        expected = ref.eval()(torch.from_numpy(x)).numpy()
    _assert_close(ours.eval().forward(x), expected, np.float64)


def _our_step(model, x, labels) -> dict:
    """Train-mode forward, mean cross-entropy, backward: every result by name."""
    model.train()
    logits = model.forward(x)
    loss, cache = ops.cross_entropy_forward(logits, labels)
    dx = model.backward(ops.cross_entropy_backward(1.0, cache))
    out = {"logits": logits, "loss": np.asarray(loss), "dx": dx}
    out.update({f"grad {n}": p.grad for n, p in model.named_parameters()})
    out.update({f"state {k}": v for k, v in model.state_dict().items()})  # stats after the step
    return out


def _torch_step(torch, model, x, labels) -> dict:
    model.train()
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = model(xt)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
    loss.backward()
    out = {"logits": logits.detach().numpy(), "loss": loss.detach().numpy(), "dx": xt.grad.numpy()}
    out.update({f"grad {n}": p.grad.numpy() for n, p in model.named_parameters()})
    out.update({f"state {k}": v.numpy() for k, v in model.state_dict().items()})
    return out


@pytest.mark.parametrize("alpha,classes,in_ch,size,activation,batch", CONFIGS)
def test_training_step_float64(torch, alpha, classes, in_ch, size, activation, batch):
    """Logits, loss, dx, every gradient and the updated running statistics.

    Tolerance: rtol 1e-8, atol 1e-9 x the array's largest magnitude. Training-mode batch norm
    amplifies float64 rounding (at 32x32 the last one normalises two values per channel), and
    torch itself, run twice with different reduction orders, differs from us by up to ~1e-10
    relative to the largest logit; eval mode is compared at TOL[float64].
    """
    ours, ref = _pair(torch, alpha, classes, in_ch, activation, np.float64)
    x = _input((batch, in_ch, *size), np.float64)
    labels = np.arange(batch) % classes
    got, expected = _our_step(ours, x, labels), _torch_step(torch, ref, x, labels)
    assert list(got) == list(expected)
    for name, a in got.items():
        b = expected[name]
        assert a.dtype == b.dtype, name
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-9 * scale, err_msg=name)
    assert all(int(v) == 1 for k, v in got.items() if k.endswith("num_batches_tracked"))


def _rel_err(a, truth) -> float:
    return float(np.linalg.norm(a - truth) / max(np.linalg.norm(truth), 1e-30))


@pytest.mark.parametrize("alpha,classes,in_ch,size,activation,batch", CONFIGS[2:])
def test_training_step_float32(torch, alpha, classes, in_ch, size, activation, batch):
    """float32 against the float64 truth (the torch model's own weights in double): our error,
    array by array (relative Frobenius norm), is within 4x torch's float32 error + 3e-4 (both
    are ~1e-4 on gradients; the constant covers arrays where torch's rounding happens to cancel).

    Elementwise comparisons of float32 runs are meaningless here: a ReLU input within
    rounding of 0 can flip and move single gradient entries by 40%.
    """
    import copy

    ours, ref = _pair(torch, alpha, classes, in_ch, activation, np.float32)
    truth_model = copy.deepcopy(ref).double()
    x = _input((batch, in_ch, *size), np.float32)
    labels = np.arange(batch) % classes
    got = _our_step(ours, x, labels)
    theirs = _torch_step(torch, ref, x, labels)
    truth = _torch_step(torch, truth_model, x.astype(np.float64), labels)
    for name, a in got.items():
        assert a.dtype == theirs[name].dtype, name
        if name.endswith("num_batches_tracked"):
            assert int(a) == int(truth[name]) == 1
            continue
        ours_err, torch_err = _rel_err(a, truth[name]), _rel_err(theirs[name], truth[name])
        assert ours_err <= 4 * torch_err + 3e-4, (name, ours_err, torch_err)


def test_224_batch_1_eval_forward_float32(torch):
    ours, ref = _pair(torch, 1.0, 1000, 3, "relu", np.float32)
    x = _input((1, 3, 224, 224), np.float32)
    with torch.no_grad():
        expected = ref.eval()(torch.from_numpy(x)).numpy()
    _assert_close(ours.eval().forward(x), expected, np.float32)


def test_our_weights_load_into_torch(torch):
    ours = MobileNetV1(alpha=0.5, num_classes=10, seed=5, dtype=np.float64)
    x = _input((4, 3, 32, 32), np.float64)
    ours.forward(x)  # a training forward: running statistics move away from 0 / 1
    ref = build_seed_mobilenet(torch, alpha=0.5, num_classes=10).double()
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    with torch.no_grad():
        expected = ref.eval()(torch.from_numpy(x)).numpy()
    _assert_close(ours.eval().forward(x), expected, np.float64)


def test_dropout_in_eval_is_identity_like_torch(torch):
    ours, ref = _pair(torch, 0.25, 10, 3, "relu", np.float64, dropout=0.5)
    x = _input((2, 3, 32, 32), np.float64)
    with torch.no_grad():
        expected = ref.eval()(torch.from_numpy(x)).numpy()
    _assert_close(ours.eval().forward(x), expected, np.float64)


def test_training_step_without_input_grad_float64(torch):
    """``backward(..., input_grad=False)`` returns None and leaves every gradient torch's."""
    ours, ref = _pair(torch, 0.25, 10, 3, "relu", np.float64)
    x = _input((3, 3, 40, 40), np.float64)
    labels = np.array([0, 4, 9])
    expected = _torch_step(torch, ref, x, labels)
    loss, cache = ops.cross_entropy_forward(ours.train().forward(x), labels)
    assert ours.backward(ops.cross_entropy_backward(1.0, cache), input_grad=False) is None
    for name, p in ours.named_parameters():
        want = expected[f"grad {name}"]
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(p.grad, want, rtol=1e-8, atol=1e-9 * scale, err_msg=name)
