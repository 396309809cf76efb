"""Metrics: memorization fraction, Fréchet distance in a stated feature space, losses at fixed t."""

from .frechet import FrechetDistance, feature_space, frechet, frechet_distance
from .losses import eps_loss, loss_at_time
from .memorization import MemorizationFraction, MemorizationResult, bootstrap_mean_ci, memorization_fraction, nearest_two

__all__ = [
    "FrechetDistance",
    "feature_space",
    "frechet",
    "frechet_distance",
    "MemorizationFraction",
    "MemorizationResult",
    "bootstrap_mean_ci",
    "memorization_fraction",
    "nearest_two",
    "eps_loss",
    "loss_at_time",
]
