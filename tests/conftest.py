import os

import pytest
import torch

# Deterministic, single-threaded torch: small models are fastest that way, and resume tests compare bits.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def tiny_train_kwargs():
    """A tiny but real training configuration (digits, small MLP)."""
    return dict(n=16, width=32, steps=60, checkpoints=4, first_checkpoint=10, resume_every=20, log_every=10)
