"""Refit a shrunk Darknet to its dense original on calibration images (no training).

After channels are removed, every convolution downstream sees other inputs than the dense
network gave it. Following channel pruning by least squares (He et al. 2017) and ThiNet (Luo et
al. 2017), :func:`reconstruct_` walks both networks layer by layer on the same calibration batch
and refits each convolution of the shrunk one so that, on *its own* (already refitted) inputs,
its pre-normalisation outputs match the dense convolution's outputs on the dense inputs. Errors
thus do not pile up with depth. The fit is ridge regression pulled towards the current weights,
so directions the calibration images do not constrain keep their trained values, and it has an
intercept, which goes into the batch-norm mean (or the bias): it replaces the constant that
:func:`~yolo_prune.darknet.surgery.fold_pruned_` folded in, measured instead of assumed.
Depthwise and grouped convolutions and ``[connected]`` layers are left as they are. Each batch
norm's running statistics are then set to those its input has on the calibration images, its
scale and shift changed to keep the function, so that fine-tuning (batch statistics) trains the
network that was refitted (running statistics).
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import torch

from yolo_prune.darknet.channels import ChannelMap, build_channel_map
from yolo_prune.darknet.layers import YoloLayer
from yolo_prune.darknet.model import Darknet
from yolo_prune.errors import PruneError
from yolo_prune.utils.linalg import NormalEquations, conv_patches

logger = logging.getLogger(__name__)


@torch.no_grad()
def _refit_conv_(
    small: torch.nn.Module,
    dense: torch.nn.Module,
    x_small: torch.Tensor,
    x_dense: torch.Tensor,
    kept: list[int],
    *,
    ridge: float,
    max_rows: int,
    generator: torch.Generator,
) -> None:
    """Refit ``small``'s conv and its intercept in place."""
    conv_s, conv_d = small.conv, dense.conv
    idx = torch.tensor(kept, dtype=torch.long)
    target = conv_d(x_dense)[:, idx]  # [B, K, H, W], with the bias where there is one
    b, k = target.shape[:2]
    target = target.reshape(b, k, -1)
    patches = conv_patches(x_small, conv_s)  # [B, D, L]
    positions = patches.shape[2]
    per_image = max(1, min(positions, max_rows // b))
    eq = NormalEquations(patches.shape[1], k)
    for i in range(b):
        sel = torch.randperm(positions, generator=generator)[:per_image]
        eq.add_(patches[i][:, sel].T, target[i][:, sel].T)
    # the intercept's current value: what the small layer adds to its conv output to reach the
    # dense layer's normalisation (the folded constant, or its own bias)
    if small.bn is not None:
        prior_bias = dense.bn.running_mean[idx] - small.bn.running_mean
    else:
        prior_bias = conv_s.bias.clone()
    prior_weight = conv_s.weight.reshape(k, -1)
    weight, bias = eq.solve(prior_weight, prior_bias, ridge=ridge)
    conv_s.weight.copy_(weight.reshape(conv_s.weight.shape))
    if small.bn is not None:
        small.bn.running_mean.copy_(dense.bn.running_mean[idx] - bias)
    else:
        conv_s.bias.copy_(bias)


@torch.no_grad()
def _renormalize_(bn: torch.nn.BatchNorm2d, y: torch.Tensor) -> None:
    """Make ``bn``'s running statistics those of its input ``y`` [B, C, H, W], in place, with
    its scale and shift changed so that its eval-mode output stays the same.

    The refit moves a layer's intercept into the running mean and changes its weights, so the
    running statistics stop describing what the layer outputs: in training mode batch norm
    normalises by the batch's own statistics instead, and the network trained is another one
    than the network evaluated (Yolo-Fastest, cut 27% by L1 and refitted: loss 109 in training
    mode against 56 in eval mode, and fine-tuning fell to AP50 0). With the statistics measured
    on the calibration images, both modes compute the same function on data like them.
    """
    mean = y.mean(dim=(0, 2, 3))
    var = y.var(dim=(0, 2, 3), unbiased=False)
    old_std = torch.sqrt(bn.running_var + bn.eps)
    new_std = torch.sqrt(var + bn.eps)
    if bn.affine:
        bn.bias.add_(bn.weight * (mean - bn.running_mean) / old_std)
        bn.weight.mul_(new_std / old_std)
    else:  # no parameters to absorb the change: leave the statistics as they are
        return
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)


@torch.no_grad()
def reconstruct_(
    small: Darknet,
    dense: Darknet,
    images: torch.Tensor,
    pruned: set[int],
    cmap: ChannelMap | None = None,
    *,
    ridge: float = 1e-2,
    max_rows: int = 200_000,
    seed: int = 0,
    renormalize: bool = True,
    skip: Collection[int] = (),
) -> Darknet:
    """Refit ``small`` (``dense`` shrunk without the ``pruned`` groups) in place.

    Args:
        small: the shrunk model (:func:`~yolo_prune.darknet.surgery.shrink`).
        dense: the model before pruning; left unchanged.
        images: calibration batch ``[B, 3, H, W]`` at the models' input size, pre-processed as
            for inference (RGB in [0, 1], letterboxed); 16-64 images are typical.
        pruned: the group ids that were removed; ``cmap``: the dense model's channel map.
        ridge: pull towards the current weights, relative to the mean input energy.
        max_rows: most output positions sampled per layer (over the whole batch).
        renormalize: set each batch norm's running statistics to its input's on ``images``,
            keeping the function (False: leave them, as before; for tests).
        skip: layers left as they are (a removed residual branch, which must stay zero).

    Returns:
        ``small``, in eval mode.
    """
    cmap = cmap or build_channel_map(dense.graph)
    if len(small.layers) != len(dense.layers):
        raise PruneError("reconstruct_: the two models do not have the same layers")
    keep_out = [cmap.kept(ids, pruned) for ids in cmap.outputs]
    small.eval()
    dense.eval()
    gen = torch.Generator().manual_seed(seed)
    saved_s: dict[int, torch.Tensor] = {}
    saved_d: dict[int, torch.Tensor] = {}
    prev_s = prev_d = images
    refitted = 0
    for i, spec in enumerate(dense.graph.layers):
        srcs = dense.sources[i]
        in_s = [prev_s if s == i - 1 else saved_s[s] for s in srcs] if srcs else [images]
        in_d = [prev_d if s == i - 1 else saved_d[s] for s in srcs] if srcs else [images]
        layer_s, layer_d = small.layers[i], dense.layers[i]
        refit = spec.kind == "convolutional" and i not in skip
        if refit and layer_s.conv.groups == 1:
            _refit_conv_(layer_s, layer_d, in_s[0], in_d[0], keep_out[i], ridge=ridge,
                         max_rows=max_rows, generator=gen)  # fmt: skip
            refitted += 1
        if refit and renormalize and layer_s.bn is not None:
            _renormalize_(layer_s.bn, layer_s.conv(in_s[0]))
        if isinstance(layer_d, YoloLayer):  # as Darknet.forward: a head passes its input on
            out_s, out_d = in_s[0], in_d[0]
        else:
            out_s, out_d = layer_s(in_s), layer_d(in_d)
        if i in dense._keep:
            saved_s[i], saved_d[i] = out_s, out_d
        prev_s, prev_d = out_s, out_d
    logger.info("reconstructed %d convolutions on %d images", refitted, images.shape[0])
    return small
