"""Optimizers against torch.optim (foreach=False): same weights, step for step, in float64."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from npmobilenet.nn.parameter import Parameter, pack
from npmobilenet.optim import (
    SGD,
    Adam,
    AdamW,
    RMSprop,
    join_arrays,
    make_optimizer,
    paper_param_groups,
    split_arrays,
)
from npmobilenet.optim.lr_scheduler import OneCycleLR, StepLR

SHAPES = [(4, 3, 3, 3), (4,), (4, 1, 3, 3), (10, 4)]
STEPS = 8
TOL64 = dict(rtol=1e-10, atol=1e-12)


def _weights(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _noise(seed=1):
    """A fixed gradient-noise sequence: grad_t = 0.5 * p + noise_t (depends on the weights)."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in SHAPES] for _ in range(2 * STEPS)]


def _set_grads(params, noise_t):
    for p, r in zip(params, noise_t):
        p.grad[...] = 0.5 * p.data + r


def _set_torch_grads(torch, tparams, noise_t):
    for p, r in zip(tparams, noise_t):
        p.grad = 0.5 * p.detach().clone() + torch.from_numpy(r)


def _groups(params, split):
    """All parameters in one group, or two groups with the hyper-parameter overrides ``split``."""
    if split is None:
        return list(params)
    return [{"params": params[:2]}, {"params": params[2:], **split}]


CONFIGS = [
    ("sgd", dict(lr=0.1), None),
    ("sgd", dict(lr=0.1, momentum=0.9), None),
    ("sgd", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2), None),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=4e-5), None),
    ("sgd", dict(lr=0.1, momentum=0.9), dict(lr=0.01, nesterov=True, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01), None),
    ("rmsprop", dict(lr=0.01, alpha=0.9, momentum=0.9, weight_decay=1e-3), None),
    ("rmsprop", dict(lr=0.005, momentum=0.5, centered=True, eps=1e-3), None),
    ("rmsprop", dict(lr=0.01, centered=True), dict(lr=0.001, momentum=0.9, alpha=0.7)),
    ("adam", dict(lr=0.01), None),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True), None),
    ("adam", dict(lr=0.01, betas=(0.3, 0.9), eps=1e-4), dict(lr=0.1, amsgrad=True)),
    ("adamw", dict(lr=0.01), None),
    ("adamw", dict(lr=0.02, weight_decay=0.3, amsgrad=True), dict(weight_decay=0.0)),
]
TORCH_NAMES = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW"}


def _torch_optimizer(torch, name, tparams, hp, split):
    groups = (
        tparams if split is None else [{"params": tparams[:2]}, {"params": tparams[2:], **split}]
    )
    return getattr(torch.optim, TORCH_NAMES[name])(groups, foreach=False, **hp)


def _params(packed: bool, dtype=np.float64) -> list[Parameter]:
    """Parameters of the SHAPES, packed side by side in one buffer (Module.pack_parameters:
    the optimizers then update them as one array) or each with arrays of its own."""
    params = [Parameter(w) for w in _weights(dtype=dtype)]
    if packed:
        pack(params)
    return params


@pytest.mark.torch
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("name,hp,split", CONFIGS)
def test_trajectory_matches_torch(torch, name, hp, split, packed):
    """Same initial weights and gradient rule: the same weights after every step."""
    params = _params(packed)
    data_ids = [id(p.data) for p in params]
    tparams = [torch.tensor(w, requires_grad=True) for w in _weights()]
    ours = make_optimizer(name, _groups(params, split), **hp)
    theirs = _torch_optimizer(torch, name, tparams, hp, split)
    for noise_t in _noise()[:STEPS]:
        _set_grads(params, noise_t)
        _set_torch_grads(torch, tparams, noise_t)
        ours.step()
        theirs.step()
        for p, t in zip(params, tparams):
            np.testing.assert_allclose(p.data, t.detach().numpy(), **TOL64)
    assert [id(p.data) for p in params] == data_ids  # updated in place
    # packed: updated as one array (RMSprop's own per-parameter step excepted)
    assert bool(ours._packed) == (packed and name != "rmsprop")


@pytest.mark.torch
@pytest.mark.parametrize(
    "name,hp",
    [("sgd", dict(nesterov=True, momentum=0.9, weight_decay=5e-4)), ("adam", {})],
)
def test_one_cycle_drives_lr_and_momentum_like_torch(torch, name, hp):
    """A scheduler writes lr (and SGD momentum / Adam beta1) into param_groups each step."""
    params = [Parameter(w) for w in _weights()]
    tparams = [torch.tensor(w, requires_grad=True) for w in _weights()]
    ours = make_optimizer(name, params, lr=0.01, **hp)
    theirs = _torch_optimizer(torch, name, tparams, dict(lr=0.01, **hp), None)
    s_ours = OneCycleLR(ours, max_lr=0.2, total_steps=2 * STEPS)
    s_theirs = torch.optim.lr_scheduler.OneCycleLR(theirs, max_lr=0.2, total_steps=2 * STEPS)
    for noise_t in _noise():
        _set_grads(params, noise_t)
        _set_torch_grads(torch, tparams, noise_t)
        ours.step()
        theirs.step()
        s_ours.step()
        s_theirs.step()
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p.data, t.detach().numpy(), **TOL64)


def _run(opt, sched, params, noise):
    for noise_t in noise:
        _set_grads(params, noise_t)
        opt.step()
        sched.step()


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam", "adamw"])
def test_state_dict_round_trip_through_json_continues_identically(name, packed):
    """Stop mid-run, save (JSON + arrays), load into a fresh optimizer: the same end weights."""
    hp = {"sgd": dict(momentum=0.9, nesterov=True), "rmsprop": dict(centered=True, momentum=0.9),
          "adam": dict(amsgrad=True), "adamw": {}}[name]  # fmt: skip
    noise = _noise()
    full = _params(packed)
    opt = make_optimizer(name, paper_param_groups(zip("abcd", full), 1e-2), lr=0.01, **hp)
    _run(opt, StepLR(opt, step_size=3, gamma=0.5), full, noise)

    first = _params(packed)
    opt1 = make_optimizer(name, paper_param_groups(zip("abcd", first), 1e-2), lr=0.01, **hp)
    sched1 = StepLR(opt1, step_size=3, gamma=0.5)
    _run(opt1, sched1, first, noise[:STEPS])
    tree, arrays = split_arrays({"opt": opt1.state_dict(), "sched": sched1.state_dict()})
    saved = join_arrays(json.loads(json.dumps(tree)), {k: v.copy() for k, v in arrays.items()})

    second = [Parameter(p.data.copy()) for p in first]
    if packed:
        pack(second)
    opt2 = make_optimizer(name, paper_param_groups(zip("abcd", second), 1e-2), lr=0.5)
    sched2 = StepLR(opt2, step_size=3, gamma=0.5)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    _run(opt2, sched2, second, noise[STEPS:])
    for a, b in zip(full, second):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam", "adamw"])
def test_float32_stays_float32(name):
    params = [Parameter(w) for w in _weights(dtype=np.float32)]
    opt = make_optimizer(name, params, lr=0.01)
    _set_grads(params, [r.astype(np.float32) for r in _noise()[0]])
    opt.step()
    assert all(p.data.dtype == np.float32 for p in params)
    assert all(v.dtype == np.float32 for s in opt.state.values() for v in s.values()
               if isinstance(v, np.ndarray))  # fmt: skip


SGD_RULES = [
    dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2, nesterov=False),
    dict(lr=0.2, momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hp", SGD_RULES)
def test_sgd_one_pass_is_the_numpy_rule_bit_for_bit(monkeypatch, dtype, hp):
    """SGD's one-pass kernel (every step after the first, with momentum) against the NumPy
    rule, operation for operation: the same weights and momentum buffer to the last bit."""
    from npmobilenet.optim import sgd

    calls = []
    kernel = sgd.sgd_momentum_step
    monkeypatch.setattr(sgd, "sgd_momentum_step", lambda *a: calls.append(1) or kernel(*a))
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal((7, 5, 3)).astype(dtype)
    fast, slow, states = p0.copy(), p0.copy(), ({}, {})
    work = [np.empty_like(p0) for _ in range(2)]
    for _ in range(4):
        g = (rng.standard_normal(p0.shape) * 10.0 ** rng.integers(-3, 3, p0.shape)).astype(dtype)
        sgd.sgd_update(fast, g, states[0], work, **hp)
        sgd.sgd_update_numpy(slow, g, states[1], work, **hp)
        np.testing.assert_array_equal(fast, slow)
        np.testing.assert_array_equal(states[0]["momentum_buffer"], states[1]["momentum_buffer"])
    assert fast.dtype == dtype and len(calls) == 3  # the first step creates the buffer


def test_sgd_one_pass_leaves_numpy_scalars_and_strided_arrays_to_numpy(monkeypatch):
    """A NumPy float64 hyper-parameter makes NumPy compute a float32 step in float64, and a
    strided array is no flat stream: both take the NumPy rule (and still match it)."""
    from npmobilenet.optim import sgd

    monkeypatch.setattr(sgd, "sgd_momentum_step", None)  # would raise if called
    hp = dict(SGD_RULES[2], lr=np.float64(0.1))
    rng = np.random.default_rng(4)
    for p0 in (rng.standard_normal(50).astype(np.float32), rng.standard_normal((6, 8))[:, ::2]):
        fast, slow = np.asfortranarray(p0), p0.copy()  # (a 2-D Fortran array: not C-ordered)
        states, work = ({}, {}), [np.empty(p0.shape, p0.dtype) for _ in range(2)]
        for _ in range(3):
            g = rng.standard_normal(p0.shape).astype(p0.dtype)
            step_hp = hp if p0.dtype == np.float32 else SGD_RULES[0]
            sgd.sgd_update(fast, g, states[0], work, **step_hp)
            sgd.sgd_update_numpy(slow, g, states[1], work, **step_hp)
        np.testing.assert_array_equal(fast, slow)


def test_frozen_parameter_is_not_updated_and_zero_grad_clears():
    frozen = Parameter(np.ones(3), requires_grad=False)
    live = Parameter(np.ones(3))
    opt = SGD([frozen, live], lr=1.0)
    frozen.grad[...] = live.grad[...] = 2.0
    opt.step()
    np.testing.assert_array_equal(frozen.data, [1, 1, 1])
    np.testing.assert_array_equal(live.data, [-1, -1, -1])
    opt.zero_grad()
    assert not frozen.grad.any() and not live.grad.any()


@pytest.mark.torch
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("name,hp,split", CONFIGS)
def test_frozen_parameters_are_skipped_entirely_like_torch(torch, name, hp, split, packed):
    """Parameters 1 and 3 frozen for the middle steps: no update, no weight decay, no state
    change (momentum, averages, step count), while torch skips them (their grad is None)."""
    params = _params(packed)
    tparams = [torch.tensor(w, requires_grad=True) for w in _weights()]
    ours = make_optimizer(name, _groups(params, split), **hp)
    theirs = _torch_optimizer(torch, name, tparams, hp, split)
    noise = _noise()[:STEPS]
    for step, noise_t in enumerate(noise):
        frozen = 2 <= step < 6
        for i in (1, 3):
            params[i].requires_grad = not frozen
        before = [(p.data.copy(), _copied(ours.state.get(id(p), {}))) for p in params]
        _set_grads(params, noise_t)  # frozen parameters get a gradient too: it must be ignored
        _set_torch_grads(torch, tparams, noise_t)
        if frozen:
            tparams[1].grad = tparams[3].grad = None
        ours.step()
        theirs.step()
        for i, (p, t) in enumerate(zip(params, tparams)):
            np.testing.assert_allclose(p.data, t.detach().numpy(), **TOL64)
            if frozen and i in (1, 3):
                np.testing.assert_array_equal(p.data, before[i][0])  # bit-identical
                _assert_same_state(ours.state.get(id(p), {}), before[i][1])


def _copied(state: dict) -> dict:
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in state.items()}


def _assert_same_state(state: dict, before: dict) -> None:
    assert state.keys() == before.keys()
    for k, v in state.items():
        np.testing.assert_array_equal(v, before[k])


def test_paper_param_groups_split_by_shape():
    named = {
        "stem.weight": Parameter(np.zeros((8, 3, 3, 3))),
        "bn.weight": Parameter(np.zeros(8)),
        "dw.weight": Parameter(np.zeros((8, 1, 3, 3))),
        "pw.weight": Parameter(np.zeros((16, 8, 1, 1))),
        "fc.bias": Parameter(np.zeros(10)),
        "fc.weight": Parameter(np.zeros((10, 16))),
    }
    groups = paper_param_groups(named, 4e-5, depthwise_weight_decay=1e-6)
    by_decay = {g["weight_decay"]: g["names"] for g in groups}
    assert by_decay == {
        4e-5: ["stem.weight", "pw.weight", "fc.weight"],
        1e-6: ["dw.weight"],
        0.0: ["bn.weight", "fc.bias"],
    }
    assert [len(g["params"]) for g in groups] == [3, 1, 2]
    assert len(paper_param_groups(list(named.items())[:2], 0.1)) == 2  # empty group left out


# ----- bad input ----------------------------------------------------------------------------


def _p():
    return [Parameter(np.zeros(3))]


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: SGD(_p(), lr=-0.1), ValueError, r"SGD: lr must be >= 0"),
        (lambda: SGD(_p(), lr="fast"), TypeError, r"SGD: lr must be a real number, got str"),
        (lambda: SGD(_p(), lr=0.1, nesterov=True), ValueError, r"nesterov=True requires momentum"),
        (lambda: SGD(_p(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError,
         r"dampening == 0"),
        (lambda: SGD([], lr=0.1), ValueError, r"SGD: params is empty"),
        (lambda: SGD([np.zeros(3)], lr=0.1), TypeError, r"params\[0\] must be an npmobilenet"),
        (lambda: SGD(5, lr=0.1), TypeError, r"SGD: params must be an iterable"),
        (lambda: SGD([{"params": []}], lr=0.1), ValueError, r"empty 'params' list"),
        (lambda: SGD(_p() * 2, lr=0.1), ValueError, r"appears in more than one group"),
        (lambda: Adam(_p(), betas=(0.9, 1.0)), ValueError, r"Adam: betas\[1\] must be in \[0, 1\)"),
        (lambda: AdamW(_p(), betas=(-0.1, 0.9)), ValueError, r"AdamW: betas\[0\] must be in"),
        (lambda: Adam(_p(), betas=0.9), TypeError, r"Adam: betas must be a pair"),
        (lambda: Adam(_p(), eps=-1e-8), ValueError, r"Adam: eps must be >= 0"),
        (lambda: RMSprop(_p(), eps=-1.0), ValueError, r"RMSprop: eps must be >= 0"),
        (lambda: RMSprop(_p(), weight_decay=-1.0), ValueError, r"weight_decay must be >= 0"),
        (lambda: RMSprop(_p(), lr=float("nan")), ValueError, r"RMSprop: lr must be finite"),
        (lambda: make_optimizer("lamb", _p()), ValueError,
         r"unknown optimizer 'lamb'; choose one of \['adam', 'adamw', 'rmsprop', 'sgd'\]"),
        (lambda: make_optimizer("sgd", _p(), lr=0.1, betas=(0.9, 0.99)), TypeError,
         r"SGD does not take \['betas'\]"),
        (lambda: paper_param_groups([("w", np.zeros(3))], 0.1), TypeError,
         r"expected \(name, Parameter\) pairs"),
        (lambda: paper_param_groups({}, 0.1), ValueError, r"named_parameters is empty"),
        (lambda: paper_param_groups({"w": _p()[0]}, -1), ValueError, r"weight_decay must be >= 0"),
    ],
)  # fmt: skip
def test_bad_hyper_parameters_are_named(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_load_state_dict_mismatch_is_named():
    opt = Adam([Parameter(np.zeros(3))])
    opt.param_groups[0]["params"][0].grad[...] = 1.0
    opt.step()
    saved = opt.state_dict()
    with pytest.raises(ValueError, match=r"groups of sizes \[1\], this optimizer has \[2\]"):
        Adam([Parameter(np.zeros(3)), Parameter(np.zeros(2))]).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"state 'exp_avg' has shape \(3,\) but its parameter"):
        Adam([Parameter(np.zeros(4))]).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"keys 'state' and 'param_groups'"):
        Adam([Parameter(np.zeros(3))]).load_state_dict({"state": {}})


def test_packed_model_steps_like_an_unpacked_one_as_children_change():
    """MobileNetV1 packs its parameters (one buffer for the weights, one for the gradients) and
    SGD then updates them as one array. Training steps with a classifier replaced, a weight
    array reassigned and a block frozen along the way give the same weights, bit for bit, as
    the same model whose parameters each hold arrays of their own; so does a deep copy of the
    packed model (whose arrays are copies, each on its own)."""
    from npmobilenet import MobileNetV1, ops
    from npmobilenet.nn import Linear
    from npmobilenet.nn.parameter import packed_runs

    packed, plain = (MobileNetV1(alpha=0.25, num_classes=4, seed=0, dtype=np.float64)
                     for _ in range(2))  # fmt: skip
    for p in plain.parameters():
        p.data, p.grad = p.data.copy(), p.grad.copy()
    copied = copy.deepcopy(packed)
    models = [plain, packed, copied]
    assert [len(r) for r, _, _ in packed_runs(packed.parameters())] == [83]
    for m in (plain, copied):
        assert {len(r) for r, _, _ in packed_runs(m.parameters())} == {1}
    opts = [SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) for m in models]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 32, 32)), np.array([0, 1, 2, 3])
    for step in range(5):
        for m, opt in zip(models, opts):
            if step == 2:
                m.fc = Linear(m.fc.in_features, 4, dtype=np.float64, rng=1)
                opt.add_param_group({"params": list(m.fc.parameters())})
                w = m.first_conv.conv.weight
                w.data = w.data.copy()
            if step == 3:
                m.freeze("depthwise_sep_conv3")
            m.zero_grad()
            _, cache = ops.cross_entropy_forward(m(x), y)
            m.backward(ops.cross_entropy_backward(1.0, cache), input_grad=False)
            opt.step()
        for m in (packed, copied):
            for (name, a), b in zip(m.named_parameters(), plain.parameters()):
                np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    assert len(list(packed_runs(packed.parameters()))) > 3  # the runs the changes cut
    assert opts[1]._packed and not opts[0]._packed  # (one updated run by run, one per parameter)


def test_a_packed_run_steps_with_the_state_it_is_given_not_the_views_it_kept():
    """After load_state_dict, or a state entry replaced by hand (the first parameter's), a run
    of packed parameters steps with that state, as the same optimizer on unpacked ones does."""
    hp = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    packed, plain = _params(True), _params(False)
    donor = SGD(_params(False), **hp)
    for noise_t in _noise()[:4]:
        _set_grads(donor.param_groups[0]["params"], [2.0 * r for r in noise_t])
        donor.step()
    opts = [SGD(ps, **hp) for ps in (packed, plain)]
    for edit in ("load", "replace"):
        for opt, ps in zip(opts, (packed, plain)):
            for noise_t in _noise()[:2]:  # both hold their own momentum buffers by now
                _set_grads(ps, noise_t)
                opt.step()
            if edit == "load":
                opt.load_state_dict(donor.state_dict())
            else:
                opt.state[id(ps[0])]["momentum_buffer"] = np.full(SHAPES[0], 3.0)
            _set_grads(ps, _noise()[5])
            opt.step()
        assert opts[0]._packed
        for a, b in zip(packed, plain):
            np.testing.assert_array_equal(a.data, b.data)
