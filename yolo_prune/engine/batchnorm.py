"""Re-estimate a model's batch-norm statistics for its current weights.

A batch norm's running mean and variance are moving averages over the training steps, so they
describe the weights of the last few hundred steps, not the weights that are evaluated: an EMA
of the weights never ran a forward pass at all, and the weights of a freshly pruned network
move fast. Measured on Yolo-Fastest cut by 27% and refitted (AP50 on 32 held-out training
images): one epoch of SGD at lr 1e-4 left the training loss where it was, but the eval-mode
network fell from AP50 4.33 to 0.38; the same weights with their statistics re-estimated scored
4.24. As in SWA's ``update_bn`` (Izmailov et al. 2018) and the "adaptive batch norm" of EagleEye
(Li et al. 2020), the statistics are recomputed exactly, as plain averages over a pass of
un-augmented training batches; unlike ``update_bn``, dropout stays off, so the statistics are
those of the network as it is evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_batchnorm_(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every batch norm's running statistics by their average over ``batches`` (model
    inputs) passed through ``model`` in eval mode except for the batch norms; in place.

    Returns the number of batch-norm layers recalibrated (0: the model has none, nothing run).
    The model's train/eval mode and the layers' momentum are restored.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    norms = [m for m in norms if m.track_running_stats]
    if not norms:
        return 0
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise ValueError("recalibrate_batchnorm_: no batches given")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    try:
        device = next(model.parameters()).device
        model(first.to(device))
        for x in it:
            model(x.to(device))
    finally:
        for m, training in modes.items():
            m.training = training
        for m, momentum in momenta.items():
            m.momentum = momentum
    return len(norms)
