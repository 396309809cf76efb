"""Denoisers: every model maps ``(x, t)`` with x of shape ``(B, *data_shape)`` to eps of that shape."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .mlp import ResidualMLP, mlp_param_count, sinusoidal
from .unet import UNet, unet_param_count

__all__ = [
    "MODELS",
    "SKIPS",
    "ResidualMLP",
    "UNet",
    "build",
    "mlp_param_count",
    "mlp_skip",
    "sinusoidal",
    "unet_param_count",
]

MODELS = ("mlp", "unet")


SKIPS = ("auto", "on", "off")


def mlp_skip(skip: str, d: int, width: int) -> bool:
    """Whether the MLP gets its input-to-output skip: ``"on"``, ``"off"``, or ``"auto"``: on exactly
    when the data have more values per example than the MLP is wide (d > width)."""
    if skip not in SKIPS:
        raise ValueError(f"skip must be one of {SKIPS}, got {skip!r}")
    return skip == "on" or (skip == "auto" and d > width)


def build(name: str, shape: Sequence[int], width: int, skip: str = "auto") -> nn.Module:
    """Build the named architecture for data of shape ``shape`` (C, H, W) with base width ``width``
    (``skip``: the MLP's input-to-output skip, see :func:`mlp_skip`)."""
    if name == "mlp":
        d = 1
        for s in shape:
            d *= int(s)
        return ResidualMLP(shape, width=width, skip=mlp_skip(skip, d, width))
    if name == "unet":
        from .unet import UNet

        if len(shape) != 3:
            raise ValueError(f"the U-Net needs image data of shape (C, H, W), got {tuple(shape)}")
        return UNet(in_channels=shape[0], width=width)
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
