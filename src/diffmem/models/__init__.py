"""Denoisers: every model maps ``(x, t)`` with x of shape ``(B, *data_shape)`` to eps of that shape."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .mlp import ResidualMLP, mlp_param_count, sinusoidal
from .unet import UNet, unet_param_count

__all__ = ["MODELS", "ResidualMLP", "UNet", "build", "mlp_param_count", "sinusoidal", "unet_param_count"]

MODELS = ("mlp", "unet")


def build(name: str, shape: Sequence[int], width: int) -> nn.Module:
    """Build the named architecture for data of shape ``shape`` (C, H, W) with base width ``width``."""
    if name == "mlp":
        return ResidualMLP(shape, width=width)
    if name == "unet":
        from .unet import UNet

        if len(shape) != 3:
            raise ValueError(f"the U-Net needs image data of shape (C, H, W), got {tuple(shape)}")
        return UNet(in_channels=shape[0], width=width)
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
