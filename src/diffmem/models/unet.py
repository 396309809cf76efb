"""The DDPM U-Net of Bonnaire et al. (2025): eps-prediction on images ``(B, C, H, W)``.

Layout, for base width ``W`` and channel multipliers ``(1, 2, 4)`` (levels at H, H/2, H/4):

- time: a frozen table of sinusoidal encodings of the integer steps ``0 .. T-1`` (``T x W``, built
  with :func:`diffmem.models.sinusoidal`, layout ``[cos | sin]``), then ``Linear(W, 4W) - SiLU -
  Linear(4W, 4W)``. Every residual block adds ``Linear(4W, c_out)(SiLU(emb))`` after its first conv.
- ``Conv3x3(C, W)``;
- down path: at each level 2 residual blocks to ``mult * W`` channels, then (except at the coarsest
  level) a stride-2 ``Conv3x3``; every block output and the input of every level is kept for the
  skips (DDPM style);
- bottleneck: a residual block followed by self-attention, then a plain residual block;
- up path: at each level (coarsest first) 3 residual blocks, each taking the concatenation of the
  running features with one kept skip, then (except at the finest level) nearest 2x upsampling
  followed by ``Conv3x3``;
- ``GroupNorm(8) - SiLU - Conv3x3(W, C)``.

Residual block: ``GroupNorm(8) - SiLU - Conv3x3 - (+ time) - GroupNorm(8) - SiLU - Dropout(0.1) -
Conv3x3``, plus the input (through a 1x1 conv when the channel count changes); at the two coarsest
levels (and in the first bottleneck block) it is followed by 4-head self-attention over the pixels,
``x + Attn(GroupNorm(8)(x))``, with a joint q/k/v projection and an output projection.

Parameter counting rule (the paper's): every ``nn.Parameter`` of the module, *including* the frozen
``T x W`` sinusoidal table, which is stored as a parameter with ``requires_grad=False`` so that it
is saved with the weights and ``sum(p.numel() for p in model.parameters())`` gives the paper's p,
while optimizers built over trainable parameters (``requires_grad``) never touch it.
With ``C = 1`` (``unet_param_count``):

====  ==========  =====  ==========
W     this code   paper  trainable
====  ==========  =====  ==========
8     263,089     0.26M  255,089
16    1,026,657   1.03M  1,010,657
32    4,055,233   4.06M  4,023,233
48    9,085,729   9.09M  9,037,729
64    16,118,145  16.1M  16,054,145
====  ==========  =====  ==========

All within 1.2% of the paper's figures (``tests/test_unet.py`` checks 3%).

Time input: ``t`` holds float diffusion step indices in ``[0, T)``, shape ``(B,)`` or a single value
broadcast over the batch (the interface of :class:`~diffmem.models.ResidualMLP`). Fractional steps
are linearly interpolated between neighbouring table rows (so integer steps read their row
exactly); steps in ``(T-1, T)`` read the last row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .mlp import sinusoidal

__all__ = ["UNet", "unet_param_count"]

GROUPS = 8


class _Attention(nn.Module):
    """Residual multi-head self-attention over the pixels of a feature map."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(GROUPS, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(seq).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, attention: bool, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(GROUPS, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.attn = _Attention(c_out, heads) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.attn(h + self.skip(x))


class _Down(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Up(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """The paper's DDPM U-Net (see the module docstring for the layout and the counting rule).

    ``forward(x, t)``: x of shape ``(B, in_channels, H, W)`` with H and W divisible by
    ``2 ** (len(channel_mults) - 1)`` (4 by default: 8x8 runs at 8, 4, 2), t float step indices in
    ``[0, T)`` of shape ``(B,)`` or a single value; returns the eps-prediction, shaped like x.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 32,
        *,
        channel_mults: Sequence[int] = (1, 2, 4),
        attention: Sequence[bool] = (False, True, True),
        num_res_blocks: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        T: int = 1000,
    ) -> None:
        super().__init__()
        width, in_channels = int(width), int(in_channels)
        mults = tuple(int(m) for m in channel_mults)
        attn = tuple(bool(a) for a in attention)
        if width < GROUPS or width % GROUPS:
            raise ValueError(
                f"width must be a positive multiple of {GROUPS} (GroupNorm with {GROUPS} groups), got {width}; "
                f"try {max(GROUPS, width - width % GROUPS)}"
            )
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not mults or any(m < 1 for m in mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive integers, got {channel_mults}")
        if len(attn) != len(mults):
            raise ValueError(f"attention needs one flag per level ({len(mults)}), got {attention}")
        if num_res_blocks < 1 or heads < 1 or T < 1:
            raise ValueError(f"num_res_blocks, heads and T must be >= 1, got {num_res_blocks}, {heads}, {T}")
        for m in mults:
            if (m * width) % heads:
                raise ValueError(f"channel count {m * width} is not divisible by heads={heads}; pick a width that is")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.width, self.T = in_channels, width, int(T)
        self.factor = 2 ** (len(mults) - 1)
        emb_dim = 4 * width

        table = sinusoidal(torch.arange(self.T, dtype=torch.float32), width)
        self.time_table = nn.Parameter(table, requires_grad=False)
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
        self.down = nn.ModuleList()
        skips, c = [width], width
        for level, m in enumerate(mults):
            for _ in range(num_res_blocks):
                self.down.append(_ResBlock(c, m * width, emb_dim, dropout, attn[level], heads))
                c = m * width
                skips.append(c)
            if level != len(mults) - 1:
                self.down.append(_Down(c))
                skips.append(c)
        self.mid = nn.ModuleList(
            [_ResBlock(c, c, emb_dim, dropout, True, heads), _ResBlock(c, c, emb_dim, dropout, False, heads)]
        )
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(_ResBlock(c + skips.pop(), m * width, emb_dim, dropout, attn[level], heads))
                c = m * width
            if level != 0:
                self.up.append(_Up(c))
        self.out = nn.Sequential(nn.GroupNorm(GROUPS, c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))

    def time_embedding(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """Sinusoidal row for each step (interpolated between integer steps), shape (batch, width)."""
        t = torch.as_tensor(t, device=self.time_table.device)
        if t.numel() == 1:
            t = t.reshape(1).expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},) or hold a single value, got shape {tuple(t.shape)}")
        t = t.to(torch.float64)
        if not bool(((t >= 0) & (t < self.T)).all()):
            raise ValueError(
                f"t must hold diffusion step indices in [0, {self.T}), "
                f"got values in [{float(t.min())}, {float(t.max())}]"
            )
        lo = t.floor().clamp(max=self.T - 1)
        hi = (lo + 1).clamp(max=self.T - 1)
        frac = (t - lo).clamp(max=1.0).to(self.time_table.dtype)[:, None]
        return torch.lerp(self.time_table[lo.long()], self.time_table[hi.long()], frac)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(
                f"the U-Net halves the image {self.factor.bit_length() - 1} times, so H and W must be divisible by "
                f"{self.factor}; got {x.shape[2]}x{x.shape[3]} (pad or resize the images)"
            )
        emb = F.silu(self.time_mlp(self.time_embedding(t, x.shape[0]).to(x.dtype)))
        h = self.inp(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, _ResBlock) else layer(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(layer, _ResBlock) else layer(h)
        return self.out(h)


def unet_param_count(width: int, in_channels: int = 1, include_time_table: bool = True) -> int:
    """Parameters of ``UNet(in_channels, width)``, counted from the module; with
    ``include_time_table`` the frozen ``1000 x width`` sinusoidal table is counted (the paper's rule),
    otherwise only the trainable parameters."""
    with torch.device("meta"):
        model = UNet(in_channels=in_channels, width=width)
    return sum(p.numel() for p in model.parameters() if include_time_table or p.requires_grad)
