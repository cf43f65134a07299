"""Refit the kept weights of an unstructured cut by least squares, on calibration inputs.

A one-shot magnitude cut zeroes weights without changing the others, so every layer's output
drifts from the dense model's and the drift compounds with depth. Layer-wise reconstruction
(Optimal Brain Compression, Frantar & Alistarh 2022; SparseGPT, 2023) instead keeps the mask and
solves, for each output row of each layer, the kept weights whose output on calibration inputs
best matches the dense layer's. :func:`refit_masked_` does that in forward order, a window of
layers at a time: each layer is fitted on the inputs the *already refitted* windows before it
give it (``x_s``), against the dense layer's output on the dense inputs (``x_d``), so errors do
not pile up. For one output row ``w`` with kept positions ``K``::

    min_w  sum ||x_s[K]^T w - x_d^T w_dense||^2 + lam * ||w - w_now||^2   (w zero outside K)

whose normal equations ``(H_KK + lam) w = (C w_dense)_K + lam * w_now`` (``H = sum x_s x_s^T``,
``C = sum x_s x_d^T``) are solved for every row at once by conjugate gradients restricted to the
mask, with a Jacobi preconditioner. The ridge ``lam`` is relative to the mean input energy and
pulls towards the current weights, so directions the calibration images do not constrain keep
their trained values.

The targets are the dense model's pre-normalisation outputs, so the cut must still have the
dense model's batch norms: that is the case for a one-shot cut, where the job refits. Refitting
after training has moved them pulls the layers towards outputs the trained batch norms no longer
expect (yolov3-tiny at 90%, fine-tuned 31.97 AP50 -> 10.07 refitted afterwards, on a training
split).

It works on any model: the targets are ``Conv2d`` (grouped and depthwise included: each group
has its own ``H``) and ``Linear`` layers named by the masks; other masked parameters are left
as they are. Nothing is trained and the mask is kept exactly: a pruned weight stays zero.
Measured on yolov3-tiny and Yolo-Fastest (docs/detector_benchmark.md, "The refit of an
unstructured cut", session 23).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from yolo_prune.errors import PruneError
from yolo_prune.utils.linalg import conv_patches

logger = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


def is_filter_cut(masks: Mapping[str, torch.Tensor]) -> bool:
    """True when every mask keeps or removes whole output rows (a structured cut), False when
    some row is cut only in part (an unstructured cut, the one :func:`refit_masked_` refits)."""
    for mask in masks.values():
        if mask.dim() < 2:
            continue
        rows = mask.reshape(mask.shape[0], -1)
        if bool((rows.any(dim=1) & ~rows.all(dim=1)).any()):
            return False
    return True


def _fittable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | nn.Conv2d)


def _forward_order(model: nn.Module, names: list[str], image: torch.Tensor) -> list[str]:
    """``names`` (parameter names) in the order their modules first run."""
    order: list[str] = []
    hooks = []
    for name in names:
        module = model.get_submodule(name.rsplit(".", 1)[0])

        def record(_m: nn.Module, _i: tuple, name: str = name) -> None:
            if name not in order:
                order.append(name)

        hooks.append(module.register_forward_pre_hook(record))
    try:
        model(image)
    finally:
        for h in hooks:
            h.remove()
    return order


def _inputs_of(model: nn.Module, module_names: list[str], images: torch.Tensor) -> list:
    """The inputs ``model``'s modules ``module_names`` (in forward order) receive on ``images``;
    the forward pass stops once the last has its input."""
    seen: dict[str, torch.Tensor] = {}
    last = module_names[-1]

    def grab(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(_m: nn.Module, inputs: tuple) -> None:
            seen.setdefault(name, inputs[0])
            if name == last:
                raise _Stop

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(grab(n)) for n in module_names]
    try:
        model(images)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in module_names if n not in seen]
    if missing:
        raise PruneError(f"refit: {missing[0]} did not run in the forward pass")
    return [seen[n] for n in module_names]


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input rows ``[G, d, N]``: im2col patches per group for a conv (``d`` the
    group's ``in/groups * kh * kw``), the feature vectors for a linear layer (``G = 1``)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).T[None]
    patches = conv_patches(x, module)  # columns by input channel, so groups split them evenly
    b, _, positions = patches.shape
    g = module.groups
    patches = patches.reshape(b, g, -1, positions).permute(1, 2, 0, 3)
    return patches.reshape(g, patches.shape[1], b * positions)


def _solve_masked(
    h: torch.Tensor,
    rhs: torch.Tensor,
    start: torch.Tensor,
    mask: torch.Tensor,
    *,
    iters: int,
    tol: float,
) -> tuple[torch.Tensor, float]:
    """Solve ``X H = RHS`` row by row on each row's kept positions (``mask``), batched per
    group: ``h`` ``[G, d, d]`` (symmetric positive definite), ``rhs``/``start``/``mask``
    ``[G, r, d]``. Preconditioned conjugate gradients; returns ``X`` and the largest relative
    residual left."""
    m = mask.to(h.dtype)
    inv_diag = 1.0 / h.diagonal(dim1=1, dim2=2).unsqueeze(1)  # [G, 1, d]

    def apply(p: torch.Tensor) -> torch.Tensor:
        return torch.bmm(p, h) * m

    x = start * m
    b = rhs * m
    r = b - apply(x)
    z = r * inv_diag
    p = z.clone()
    rz = (r * z).sum(-1, keepdim=True)
    norm_b = b.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    tiny = torch.finfo(h.dtype).tiny
    worst = float((r.norm(dim=-1, keepdim=True) / norm_b).max()) if r.numel() else 0.0
    for _ in range(iters):
        if worst <= tol:
            break
        ap = apply(p)
        alpha = rz / (p * ap).sum(-1, keepdim=True).clamp_min(tiny)
        x = x + alpha * p
        r = r - alpha * ap
        worst = float((r.norm(dim=-1, keepdim=True) / norm_b).max())
        z = r * inv_diag
        rz_new = (r * z).sum(-1, keepdim=True)
        p = z + (rz_new / rz.clamp_min(tiny)) * p
        rz = rz_new
    return x * m, worst


@torch.no_grad()
def _refit_layer_(
    module: nn.Module,
    dense_module: nn.Module,
    mask: torch.Tensor,
    inputs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    ridge: float,
    rows_per_batch: int,
    generator: torch.Generator,
    iters: int,
    tol: float,
) -> float:
    """Refit one layer from its ``(x_s, x_d)`` input batches; returns CG's residual left."""
    weight, bias = module.weight, module.bias
    g = module.groups if isinstance(module, nn.Conv2d) else 1
    out = weight.shape[0]
    w_now = weight.reshape(g, out // g, -1)
    w_dense = dense_module.weight.reshape(g, out // g, -1)
    keep = mask.reshape(g, out // g, -1).bool()
    intercept = bias is not None and g == 1
    if intercept:  # [W | b] over [x | 1]: the bias is always kept
        w_now = torch.cat([w_now, bias.reshape(1, -1, 1)], 2)
        w_dense = torch.cat([w_dense, dense_module.bias.reshape(1, -1, 1)], 2)
        keep = torch.cat([keep, torch.ones(1, out, 1, dtype=torch.bool)], 2)
    d = w_now.shape[2]
    h = torch.zeros(g, d, d, dtype=torch.float64)
    c = torch.zeros(g, d, d, dtype=torch.float64)
    for x_s, x_d in inputs:
        same = x_s is x_d  # fitted on the dense inputs: C = H
        rows_s = _rows(module, x_s)
        rows_d = rows_s if same else _rows(dense_module, x_d)
        n = rows_s.shape[2]
        if n > rows_per_batch:  # the same sampled positions in both networks
            pick = torch.randperm(n, generator=generator)[:rows_per_batch]
            rows_s, rows_d = rows_s[:, :, pick], rows_d[:, :, pick]
        if intercept:
            ones = torch.ones(1, 1, rows_s.shape[2])
            rows_s, rows_d = torch.cat([rows_s, ones], 1), torch.cat([rows_d, ones], 1)
        # float32 products (BLAS speed), float64 sums
        hh = torch.bmm(rows_s, rows_s.transpose(1, 2)).double()
        h += hh
        c += hh if same else torch.bmm(rows_s, rows_d.transpose(1, 2)).double()
    lam = ridge * h.diagonal(dim1=1, dim2=2).sum(-1) / d  # [G]
    lam = lam.clamp_min(1e-12)[:, None, None]
    h = h + lam * torch.eye(d, dtype=h.dtype)
    rhs = torch.bmm(w_dense.double(), c.transpose(1, 2)) + lam * w_now.double()
    solved, left = _solve_masked(h.float(), rhs.float(), w_now.float(), keep, iters=iters, tol=tol)
    if intercept:
        bias.copy_(solved[0, :, -1])
        solved = solved[:, :, :-1]
    weight.copy_(solved.reshape(weight.shape))
    return left


@torch.no_grad()
def refit_masked_(
    model: nn.Module,
    dense: nn.Module,
    masks: Mapping[str, torch.Tensor],
    images: torch.Tensor,
    *,
    ridge: float = 1e-2,
    max_rows: int = 100_000,
    batch: int = 16,
    iters: int = 200,
    tol: float = 1e-4,
    window: int = 8,
    seed: int = 0,
) -> list[str]:
    """Refit, in place, the kept weights of ``model`` (``dense`` with the ``masks`` applied) so
    that each masked ``Conv2d``/``Linear`` layer reproduces ``dense``'s output on ``images``;
    see the module docstring. Returns the parameter names refitted, in forward order.

    ``images`` is a calibration batch in the model's input geometry (16-128 images); it is run
    ``batch`` at a time. ``max_rows`` bounds the output positions sampled per layer. The layers
    go ``window`` at a time, one forward pass per batch and network each: a window's first
    layer is fitted on the inputs the refitted model gives it, the others on the dense inputs
    (``window=1``: every layer on the refitted model's, with a pass per layer; a window of
    every layer: every layer on the dense inputs, one pass). Both models are put in eval mode;
    ``dense`` is not changed.

    Raises:
        PruneError: a mask's parameter is not in ``model``, or its layer never runs.
    """
    params = dict(model.named_parameters())
    names = []
    for name, mask in masks.items():
        if name not in params:
            raise PruneError(f"refit: {type(model).__name__} has no parameter {name!r}")
        module_name, _, leaf = name.rpartition(".")
        if leaf == "weight" and _fittable(model.get_submodule(module_name)) and not mask.all():
            names.append(name)
    if not names:
        return []
    model.eval()
    dense.eval()
    order = _forward_order(model, names, images[:1])
    gen = torch.Generator().manual_seed(seed)
    chunks = list(images.split(batch))
    per_batch = max(1, max_rows // len(chunks))
    for first in range(0, len(order), window):
        in_window = order[first : first + window]
        modules = [n.rpartition(".")[0] for n in in_window]
        # one pass per batch and network for the whole window: its first layer is fitted on the
        # inputs the refitted layers before it give; the others, whose inputs are not refitted
        # yet, on the dense inputs (as if the layers before them in the window matched dense)
        captured = [(_inputs_of(model, modules[:1], x)[0], _inputs_of(dense, modules, x))
                    for x in chunks]  # fmt: skip
        for i, (name, module_name) in enumerate(zip(in_window, modules, strict=True)):
            module = model.get_submodule(module_name)
            left = _refit_layer_(
                module, dense.get_submodule(module_name), masks[name].to(module.weight.device),
                ((xs if i == 0 else xd[i], xd[i]) for xs, xd in captured), ridge=ridge,
                rows_per_batch=per_batch, generator=gen, iters=iters, tol=tol,
            )  # fmt: skip
            if left > 10 * tol:
                logger.debug("refit %s: conjugate gradients stopped at residual %.2g", name, left)
    logger.info("refitted %d layers' kept weights on %d images", len(order), images.shape[0])
    return order
