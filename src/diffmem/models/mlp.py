"""The residual MLP of the Gaussian-mixture experiment of Bonnaire et al. (2025, supplementary).

Layout: Linear d->W; three residual blocks ``h <- h + L2(GELU(L1(LayerNorm(h + e(t)))))`` with the
sinusoidal time encoding ``e(t)`` (width W, no parameters) added in each block; Linear W->d.
Parameter count ``p = W(2d + 13) + d + 6W^2`` for three blocks (``mlp_param_count``).

Optionally conditional: ``num_classes`` adds a learned embedding of the condition (index
``num_classes`` is the empty/null condition used for classifier-free guidance), added to e(t).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ResidualMLP", "mlp_param_count", "sinusoidal"]


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal encoding of step indices ``t`` (shape (B,)) into (B, dim): [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


def mlp_param_count(d: int, width: int, blocks: int = 3, skip: bool = False) -> int:
    """Trainable parameters of the unconditional ResidualMLP: W(2d + 1 + 4*blocks) + d + 2*blocks*W^2,
    plus W + 1 with the skip."""
    return width * (2 * d + 1 + 4 * blocks) + d + 2 * blocks * width * width + (width + 1 if skip else 0)


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(nn.functional.gelu(self.fc1(self.norm(h + e))))


class ResidualMLP(nn.Module):
    """eps-prediction network on inputs of any shape ``(B, *shape)`` (flattened internally)."""

    def __init__(
        self,
        shape: Sequence[int],
        width: int = 256,
        blocks: int = 3,
        num_classes: int | None = None,
        skip: bool = False,
    ):
        super().__init__()
        if width < 2 or blocks < 1:
            raise ValueError(f"width must be >= 2 and blocks >= 1, got width={width}, blocks={blocks}")
        self.shape = tuple(int(s) for s in shape)
        self.d = int(math.prod(self.shape))
        self.width = int(width)
        self.num_classes = num_classes
        self.inp = nn.Linear(self.d, width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(blocks))
        self.out = nn.Linear(width, self.d)
        self.cond = nn.Embedding(num_classes + 1, width) if num_classes else None
        # input-to-output skip: eps_hat += g(t) * x_t with a learned scalar gain g of the time
        # embedding, zero at initialisation. Without it, d values pass through `width` units and
        # the near-identity eps_hat ~ x_t of large t cannot be represented when d > width.
        self.gain = nn.Linear(width, 1) if skip else None
        if self.gain is not None:
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.gain.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        e = sinusoidal(t.reshape(-1).expand(b) if t.numel() == 1 else t, self.width).to(x.dtype)
        gain = self.gain(e) if self.gain is not None else None
        if self.cond is not None:
            if cond is None:
                cond = torch.full((b,), int(self.num_classes or 0), dtype=torch.long, device=x.device)
            e = e + self.cond(cond)
        elif cond is not None:
            raise ValueError("this model is unconditional; build it with num_classes to pass a condition")
        h = self.inp(x.reshape(b, self.d))
        for block in self.blocks:
            h = block(h, e)
        out = self.out(h)
        if gain is not None:
            out = out + gain * x.reshape(b, self.d)
        return out.reshape(x.shape)
