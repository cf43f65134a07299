"""Least squares from streamed rows, for refitting a layer to calibration data.

Model-agnostic tensor maths shared by the pruning engine and the Darknet surgery (which may not
import each other): accumulate ``X^T X`` and ``X^T Y`` over batches of rows, then solve a ridge
problem pulled towards a prior, not towards zero, so that directions the calibration data do not
constrain keep their old weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class NormalEquations:
    """``min_W ||X W^T + b - Y||^2 + lam * (||W - W0||^2 + ||b - b0||^2)`` from streamed rows.

    Args:
        in_features: columns of ``X`` (D).
        out_features: columns of ``Y`` (K).
    """

    def __init__(self, in_features: int, out_features: int):
        d = in_features + 1  # a column of ones carries the bias
        self.xtx = torch.zeros(d, d, dtype=torch.float64)
        self.xty = torch.zeros(d, out_features, dtype=torch.float64)
        self.rows = 0

    @torch.no_grad()
    def add_(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``x`` ``[N, D]`` with targets ``y`` ``[N, K]``."""
        # float32 products (BLAS speed), float64 sums: the rows of one batch are few enough
        x1 = torch.cat([x.float(), torch.ones(x.shape[0], 1)], dim=1)
        self.xtx += (x1.T @ x1).double()
        self.xty += (x1.T @ y.float()).double()
        self.rows += x.shape[0]

    @torch.no_grad()
    def solve(
        self, prior_weight: torch.Tensor, prior_bias: torch.Tensor, *, ridge: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fitted ``(weight [K, D], bias [K])``, float32.

        ``ridge`` is relative: ``lam = ridge * trace(X^T X) / D``, so it does not depend on the
        scale of the inputs or the number of rows.
        """
        d = self.xtx.shape[0] - 1
        lam = ridge * float(self.xtx[:d, :d].diagonal().sum()) / max(d, 1)
        lam = max(lam, 1e-12)
        prior = torch.cat([prior_weight.double().T, prior_bias.double()[None]], dim=0)
        a = self.xtx + lam * torch.eye(d + 1, dtype=torch.float64)
        sol = torch.linalg.solve(a, self.xty + lam * prior)
        return sol[:d].T.float().contiguous(), sol[d].float()


def conv_patches(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """The im2col rows of ``x`` ``[B, C, H, W]`` for ``conv`` (groups=1): ``[B, C*kh*kw, L]``,
    ``L`` output positions, columns in the order of ``conv.weight[o].flatten()``."""
    return F.unfold(
        x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride
    )
