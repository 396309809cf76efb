"""Metrics: memorization fraction, Fréchet distance and KID in a stated feature space, losses at fixed t,
and the record of one measurement (:class:`Measurement`)."""

from .frechet import FrechetDistance, feature_space, frechet, frechet_distance
from .kid import kid, kid_from_features
from .losses import eps_loss, loss_at_time
from .memorization import (
    MemorizationFraction,
    MemorizationResult,
    bootstrap_mean_ci,
    distance_ratios,
    fraction_from_ratios,
    memorization_fraction,
    nearest_two,
)
from .record import Measurement

__all__ = [
    "FrechetDistance",
    "Measurement",
    "MemorizationFraction",
    "MemorizationResult",
    "bootstrap_mean_ci",
    "distance_ratios",
    "eps_loss",
    "feature_space",
    "fraction_from_ratios",
    "frechet",
    "frechet_distance",
    "kid",
    "kid_from_features",
    "loss_at_time",
    "memorization_fraction",
    "nearest_two",
]
