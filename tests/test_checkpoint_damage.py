"""Damaged checkpoints: a clear ValueError naming the file, and a trainer left bit-identical.

Each case writes a real checkpoint file with one part damaged, then loads it into a trainer that
has already trained an epoch; every array and value of that trainer is compared before and after.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from npmobilenet.data import ArrayDataset, DataLoader, load_digits_dataset
from npmobilenet.models import MobileNetV1
from npmobilenet.optim import SGD
from npmobilenet.optim.lr_scheduler import OneCycleLR
from npmobilenet.train import Trainer, load_checkpoint, save_checkpoint


def _trainer(seed):
    train, _ = load_digits_dataset(16, channels=1)
    data = ArrayDataset(train.x[:64], train.y[:64], train.classes)
    model = MobileNetV1(alpha=0.25, num_classes=10, in_channels=1, dropout=0.2, seed=seed)
    opt = SGD(list(model.parameters()), lr=0.05, momentum=0.9, nesterov=True)
    loader = DataLoader(data, 32, shuffle=True, seed=seed)
    sched = OneCycleLR(opt, max_lr=0.05, epochs=3, steps_per_epoch=len(loader))
    return Trainer(model, opt, loader, None, sched, progress="none", log=None)


def _snapshot(t):
    """Everything a load could change, as plain copies."""
    return copy.deepcopy({
        "model": {k: v.copy() for k, v in t.model.state_dict().items()},
        "optimizer": t.optimizer.state_dict(), "groups": [
            {k: v for k, v in g.items() if k != "params"} for g in t.optimizer.param_groups],
        "scheduler": t.scheduler.state_dict(), "loader": t.train_loader.state_dict(),
        "generators": {n: m.rng.bit_generator.state for n, m in t.model.named_modules()
                       if hasattr(m, "rng")},
        "history": t.history, "epoch": t.epoch,
    })  # fmt: skip


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict) and k == "model":
            for name in a[k]:
                assert a[k][name].dtype == b[k][name].dtype
                np.testing.assert_array_equal(a[k][name], b[k][name], err_msg=name)
        elif k == "optimizer":
            assert a[k]["param_groups"] == b[k]["param_groups"]
            assert a[k]["state"].keys() == b[k]["state"].keys()
            for i in a[k]["state"]:
                for name, v in a[k]["state"][i].items():
                    np.testing.assert_array_equal(v, b[k]["state"][i][name])
        else:
            assert a[k] == b[k], k


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A genuine checkpoint after one epoch of a seed-0 trainer, as loaded from its file."""
    t = _trainer(0)
    t.fit(1)
    path = tmp_path_factory.mktemp("ckpt") / "good.safetensors"
    t.save_checkpoint(path)
    return load_checkpoint(path)


def _damage_optimizer_index(s):
    s["optimizer"]["state"]["999"] = s["optimizer"]["state"]["0"]


def _damage_optimizer_shape(s):
    s["optimizer"]["state"]["3"]["momentum_buffer"] = np.zeros(7, np.float32)


def _damage_group_lr(s):
    s["optimizer"]["param_groups"][0]["lr"] = "fast"


def _damage_loader(s):
    s["train_loader"]["batch"] = 10**6


def _damage_scheduler(s):
    s["scheduler"]["last_epoch"] = "x"


def _damage_generator(s):
    s["generators"][next(iter(s["generators"]))] = {"a": 1}


def _damage_last_model_array(s):
    key = list(s["model"])[-1]
    s["model"][key] = np.zeros((3, 3), np.float32)


DAMAGES = [
    (_damage_optimizer_index, r"state key str '999' is not a parameter position 0\.\.\d+"),
    (_damage_optimizer_shape, r"momentum_buffer' has shape \(7,\)"),
    (_damage_group_lr, r"lr"),
    (lambda s: s.update(history=[1, 2, 3]), r"history must be a dict"),
    (lambda s: s["history"].update(train_loss=[]), r"history 'train_loss' must be a list of 1"),
    (lambda s: s.update(epoch="abc"), r"epoch must be an integer >= 0, got str 'abc'"),
    (lambda s: s.update(epoch=-5), r"epoch must be an integer >= 0, got int -5"),
    (lambda s: s.update(epoch=2.0), r"epoch must be an integer"),
    (_damage_loader, r"batch 1000000 is past"),
    (_damage_scheduler, r"last_epoch should be like int"),
    (_damage_generator, r"generator .* is damaged"),
    (_damage_last_model_array, r"shape \(3, 3\) in the state"),
]


class _Arrays:
    """Stands in for a model in save_checkpoint: a config and (possibly damaged) arrays."""

    def __init__(self, config, arrays):
        self.config, self.arrays = config, arrays

    def state_dict(self):
        return self.arrays


@pytest.mark.parametrize("damage,match", DAMAGES)
def test_damaged_checkpoint_is_refused_naming_the_file_and_changes_nothing(
    tmp_path, saved, damage, match
):
    full = copy.deepcopy({k: v for k, v in saved.items() if k != "model_config"})
    damage(full)
    path = tmp_path / "damaged.safetensors"
    save_checkpoint(path, _Arrays(saved["model_config"], full.pop("model")), full)

    victim = _trainer(1)
    victim.fit(2)  # a different, advanced state, so a partial load would show
    before = _snapshot(victim)
    with pytest.raises(ValueError, match=match) as info:
        victim.load_checkpoint(path)
    assert str(path) in str(info.value)
    _assert_identical(before, _snapshot(victim))


def test_good_checkpoint_still_loads_exactly(saved, tmp_path):
    t = _trainer(0)
    t.fit(1)
    path = tmp_path / "c.safetensors"
    t.save_checkpoint(path)
    other = _trainer(1)
    other.fit(2)
    other.load_checkpoint(path)
    _assert_identical(_snapshot(t), _snapshot(other))
