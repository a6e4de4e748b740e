"""The benchmark cases and how each library runs them (used by ``worker.py``).

A case is one workload at one size. Its variants are the ways to run it:

* inference cases: ``fused`` (``model.fuse()``, the package's inference path), ``eval``
  (``model.eval(); model(x)``, the module path) and ``torch`` (the reference implementation in
  eval mode under ``no_grad``);
* training cases: ``npmobilenet`` and ``torch``, one step each: ``zero_grad``, forward,
  cross-entropy, backward (no input gradient), ``SGD(lr=0.01, momentum=0.9)`` step.

Both libraries load the same weights (a safetensors file the parent writes once per case, with
non-trivial batch-norm statistics) and the same seeded batch, and report what they computed
(the first image's logits, or the first step's loss) so that the parent can check that they
agree before trusting the times.

FLOPs come from ``MobileNetV1.summary()``: 2 per multiply-add of one forward, times the batch;
a training step counts 3 forwards (the backward computes two products per forward one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npmobilenet import nn, ops
from npmobilenet.io import load_weights, save_weights
from npmobilenet.models import MobileNetV1
from npmobilenet.optim import SGD

LR, MOMENTUM = 0.01, 0.9  # the training steps' SGD, in both libraries


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "inference" or "train"
    batch: int
    res: int
    alpha: float = 1.0
    classes: int = 1000
    reps: int = 10  # timed calls per process

    @property
    def variants(self) -> tuple[str, ...]:
        return ("fused", "eval", "torch") if self.kind == "inference" else ("npmobilenet", "torch")

    def flops(self) -> float:
        """FLOPs of one call (see the module docstring)."""
        per_image = MobileNetV1(self.alpha, self.classes, seed=0).summary((3, self.res, self.res))
        forward = 2 * per_image.mult_adds * self.batch
        return forward * (3 if self.kind == "train" else 1)


CASES = {
    c.name: c
    for c in (
        Case("infer-b1-224", "inference", 1, 224, reps=20),
        Case("infer-b32-224", "inference", 32, 224, reps=4),
        Case("train-b16-224", "train", 16, 224, reps=4),
        Case("train-a0.25-32px-b64", "train", 64, 32, alpha=0.25, classes=10, reps=20),
    )
}


def write_weights(case: Case, path) -> None:
    """The case's weights (:func:`seeded_model`) as a safetensors file."""
    save_weights(seeded_model(case), path)


def seeded_model(case: Case) -> MobileNetV1:
    """The case's model: seeded weights and random batch-norm statistics and affine."""
    model = MobileNetV1(case.alpha, case.classes, seed=0)
    rng = np.random.default_rng(1)
    for _, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean[...] = rng.normal(0.0, 0.2, n)
            m.running_var[...] = rng.uniform(0.5, 2.0, n)
            m.weight.data[...] = rng.uniform(0.5, 1.5, n)
            m.bias.data[...] = rng.normal(0.0, 0.2, n)
    return model


def batch(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """The seeded images (N, 3, R, R) float32 and labels (N,)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.batch, 3, case.res, case.res), dtype=np.float32)
    return x, rng.integers(0, case.classes, case.batch)


def _no_clock(phase):
    pass


def ours(case: Case, variant: str, weights):
    """``(call, model)``: a zero-argument callable running one call of the case in npmobilenet
    (a training step takes an optional ``clock(phase)``, see ``breakdown.py``)."""
    model = MobileNetV1(case.alpha, case.classes, seed=0)
    load_weights(model, weights)
    x, y = batch(case)
    if variant == "fused":
        engine = model.eval().fuse()
        return (lambda: engine(x)), model
    if variant == "eval":
        model.eval()
        return (lambda: model(x)), model
    model.train()
    opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def step(clock=_no_clock):
        opt.zero_grad()
        clock("zero_grad")
        loss, cache = ops.cross_entropy_forward(model.forward(x), y)
        clock("forward")
        model.backward(ops.cross_entropy_backward(np.float32(1.0), cache), input_grad=False)
        clock("backward")
        opt.step()
        clock("step")
        return loss

    return step, model


def theirs(torch, case: Case, weights):
    """``(call, model)`` for the reference implementation in torch, on the same weights."""
    from safetensors.numpy import load_file
    from torch_reference import build_seed_mobilenet

    model = build_seed_mobilenet(torch, case.alpha, case.classes)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(weights).items()})
    x, y = batch(case)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    if case.kind == "inference":
        model.eval()

        def forward():
            with torch.no_grad():
                return model(xt).numpy()

        return forward, model
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def step(clock=_no_clock):
        opt.zero_grad()
        clock("zero_grad")
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        clock("forward")
        loss.backward()
        clock("backward")
        opt.step()
        clock("step")
        return float(loss.detach())

    return step, model


def fingerprint(case: Case, result) -> list[float]:
    """What a first call computed, to compare across processes: the first image's logits, or
    the training loss."""
    if case.kind == "train":
        return [float(result)]
    return np.asarray(result, dtype=np.float64)[0].tolist()
