import torch
from torch import nn

from yolo_prune.eval.profile import layer_stats, param_stats, weight_names


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8x3x3x3 = 216 weights, 8x8 output positions
        nn.ReLU(),
        nn.Conv2d(8, 4, 1, stride=2, groups=2),  # 4x4x1x1 = 16 weights, 4x4 positions
        nn.Flatten(),
        nn.Linear(64, 10),  # 640 weights
    )


def test_param_counts_and_sparsity():
    model = _net()
    with torch.no_grad():
        model[0].weight[:4].zero_()  # 108 zeros
    stats = param_stats(model)
    assert stats.total == 216 + 8 + 16 + 4 + 640 + 10
    assert stats.nonzero == stats.total - 108
    names = weight_names(model)
    assert names == ["0.weight", "2.weight", "4.weight"]
    w = param_stats(model, names)
    assert (w.total, w.nonzero) == (872, 764)
    assert abs(w.sparsity - 108 / 872) < 1e-12 and abs(w.compression - 872 / 764) < 1e-12
    per = layer_stats(model, names)
    assert per["0.weight"].sparsity == 0.5


def test_profile_works_on_a_darknet_model(repo_cfg):
    from yolo_prune.darknet import Darknet

    model = Darknet.from_cfg(repo_cfg / "lenet5.cfg")
    w = param_stats(model, weight_names(model))
    assert w.total == 430_500 and param_stats(model).total == 431_080
