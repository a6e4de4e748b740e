"""Learning-rate schedules against torch.optim.lr_scheduler: the same float sequences."""

from __future__ import annotations

import json

import numpy as np
import pytest

from npmobilenet.nn.parameter import Parameter
from npmobilenet.optim import SGD, Adam, RMSprop, join_arrays, split_arrays
from npmobilenet.optim import lr_scheduler as ours

N_STEPS = 60


def _pair(torch, opt_name="SGD", groups=1, **hp):
    """Our optimizer and torch's with ``groups`` parameter groups of lr 0.1, 0.05, ..."""
    mine = [{"params": [Parameter(np.zeros(2))], "lr": 0.1 / (i + 1)} for i in range(groups)]
    theirs = [{"params": [torch.zeros(2, requires_grad=True)], "lr": 0.1 / (i + 1)}
              for i in range(groups)]  # fmt: skip
    cls = {"SGD": SGD, "Adam": Adam, "RMSprop": RMSprop}[opt_name]
    return cls(mine, lr=0.1, **hp), getattr(torch.optim, opt_name)(theirs, lr=0.1, **hp)


def _momenta(opt):
    return [g["betas"][0] if "betas" in g else g.get("momentum") for g in opt.param_groups]


def _sequence(opt, sched, n=N_STEPS):
    """(lr per group, momentum per group) after construction and after each of n steps."""
    seq = [(sched.get_last_lr(), _momenta(opt))]
    for _ in range(n):
        opt.step()
        sched.step()
        seq.append((sched.get_last_lr(), _momenta(opt)))
    return seq


SCHEDULES = [
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[5, 20, 20, 41], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.93)),
    ("CosineAnnealingLR", dict(T_max=25)),  # runs past T_max: torch's cosine turns upward
    ("CosineAnnealingLR", dict(T_max=17, eta_min=1e-3)),
    ("LinearLR", {}),
    ("LinearLR", dict(start_factor=0.01, end_factor=0.5, total_iters=30)),
    ("OneCycleLR", dict(max_lr=0.4, total_steps=N_STEPS)),
    ("OneCycleLR", dict(max_lr=[1.0, 0.3], epochs=6, steps_per_epoch=10, pct_start=0.25,
                        anneal_strategy="linear", div_factor=10.0, final_div_factor=100.0)),
    ("OneCycleLR", dict(max_lr=0.4, total_steps=N_STEPS, three_phase=True,
                        base_momentum=0.8, max_momentum=0.9)),
]  # fmt: skip


@pytest.mark.torch
@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
@pytest.mark.parametrize("name,kw", SCHEDULES)
def test_sequence_equals_torch(torch, name, kw, opt_name):
    """Every lr (and the one-cycle momentum / beta1) equals torch's, to the last bit."""
    mine, theirs = _pair(torch, opt_name, groups=2)
    seq_ours = _sequence(mine, getattr(ours, name)(mine, **kw))
    seq_torch = _sequence(theirs, getattr(torch.optim.lr_scheduler, name)(theirs, **kw))
    assert seq_ours == seq_torch


@pytest.mark.torch
def test_sequential_warmup_then_cosine_equals_torch(torch):
    seqs = []
    for mod, (opt, _) in ((ours, _pair(torch)), (torch.optim.lr_scheduler, _pair(torch)[::-1])):
        warm = mod.LinearLR(opt, start_factor=0.1, total_iters=5)
        cos = mod.CosineAnnealingLR(opt, T_max=30)
        seqs.append(_sequence(opt, mod.SequentialLR(opt, [warm, cos], milestones=[5]), n=35))
    assert seqs[0] == seqs[1]


@pytest.mark.torch
def test_rmsprop_momentum_is_cycled(torch):
    mine, theirs = _pair(torch, "RMSprop", momentum=0.5)
    seq_ours = _sequence(mine, ours.OneCycleLR(mine, max_lr=0.1, total_steps=20), n=20)
    seq_torch = _sequence(theirs, torch.optim.lr_scheduler.OneCycleLR(theirs, 0.1, 20), n=20)
    assert seq_ours == seq_torch


@pytest.mark.parametrize("name,kw", SCHEDULES)
def test_state_dict_json_round_trip_resumes_exactly(name, kw):
    """Stop after 23 steps, save optimizer + scheduler (JSON + arrays), resume in fresh objects."""

    def fresh():
        opt = SGD([{"params": [Parameter(np.zeros(2))], "lr": 0.1 / (i + 1)} for i in range(2)],
                  lr=0.1)  # fmt: skip
        return opt, getattr(ours, name)(opt, **kw)

    opt, sched = fresh()
    full = _sequence(opt, sched)
    opt, sched = fresh()
    head = _sequence(opt, sched, n=23)
    tree, arrays = split_arrays({"opt": opt.state_dict(), "sched": sched.state_dict()})
    saved = join_arrays(json.loads(json.dumps(tree)), arrays)
    opt2, sched2 = fresh()
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    tail = _sequence(opt2, sched2, n=N_STEPS - 23)
    assert head + tail[1:] == full


def test_one_cycle_past_total_steps_is_an_error():
    opt = SGD([Parameter(np.zeros(2))], lr=0.1)
    sched = ours.OneCycleLR(opt, max_lr=1.0, total_steps=3)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match=r"OneCycleLR: stepped 4 times but total_steps is 3"):
        sched.step()


def _opt():
    return SGD([Parameter(np.zeros(2))], lr=0.1)


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: ours.StepLR("sgd", step_size=2), TypeError, r"StepLR: optimizer must be an"),
        (lambda: ours.StepLR(_opt(), step_size=0), ValueError, r"StepLR: step_size must be >= 1"),
        (lambda: ours.ExponentialLR(_opt(), gamma=-1), ValueError, r"gamma must be >= 0"),
        (lambda: ours.CosineAnnealingLR(_opt(), T_max=2.5), TypeError, r"T_max must be an int"),
        (lambda: ours.LinearLR(_opt(), start_factor=0), ValueError, r"start_factor must be > 0"),
        (lambda: ours.OneCycleLR(_opt(), max_lr=1.0), ValueError,
         r"give total_steps, or both epochs and steps_per_epoch"),
        (lambda: ours.OneCycleLR(_opt(), 1.0, 10, anneal_strategy="exp"), ValueError,
         r"anneal_strategy must be 'cos' or 'linear'"),
        (lambda: ours.OneCycleLR(_opt(), [1.0, 2.0], 10), ValueError,
         r"max_lr has 2 values but the optimizer has 1 parameter groups"),
        (lambda: ours.MultiStepLR(_opt(), milestones=[3, -1]), ValueError, r"must be >= 0"),
        (lambda: ours.SequentialLR(_opt(), [], []), ValueError, r"schedulers is empty"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_one_cycle_one_step_warm_up_ends_at_the_peak(anneal):
    """4 steps with pct_start 0.25: a zero-length warm-up (torch divides by zero there). Step 0
    is the peak, then the anneal runs over steps 0..3 to max_lr / 25 / 1e4, by the formula."""
    opt = _opt()
    sched = ours.OneCycleLR(opt, max_lr=0.2, total_steps=4, pct_start=0.25, anneal_strategy=anneal)
    lrs, momenta = [sched.get_last_lr()[0]], [opt.param_groups[0]["momentum"]]
    for _ in range(3):
        sched.step()
        lrs.append(sched.get_last_lr()[0])
        momenta.append(opt.param_groups[0]["momentum"])
    lo = 0.2 / 25 / 1e4
    for t, (lr, m) in enumerate(zip(lrs, momenta)):
        frac = (1 - np.cos(np.pi * t / 3)) / 2 if anneal == "cos" else t / 3
        assert lr == pytest.approx(0.2 + (lo - 0.2) * frac, rel=1e-12)
        assert m == pytest.approx(0.85 + (0.95 - 0.85) * frac, rel=1e-12)


def test_one_cycle_single_step_with_full_warm_up_is_the_peak():
    opt = _opt()
    sched = ours.OneCycleLR(opt, max_lr=0.3, total_steps=1, pct_start=1.0)
    assert sched.get_last_lr() == [0.3]
