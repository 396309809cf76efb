"""Train the digits feature network behind ``frechet[digits-cnn]`` and write its weights.

    python scripts/train_digits_features.py [--out src/diffmem/metrics/weights]

A small CNN (diffmem.metrics.frechet.DigitsCNN) is trained to classify the 1797 scikit-learn
digits (pixels / 16, shape (1, 8, 8)) with light augmentation (random shifts of one pixel and
additive noise), deterministically on CPU (seed 0, ~1 minute). Its 64-d penultimate layer is the
feature space. The script prints the held-out accuracy of a 5/6 : 1/6 split run first, then
trains on all images and writes ``digits_features.safetensors`` and ``digits_features.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from diffmem import io as dio
from diffmem.metrics.frechet import WEIGHTS, DigitsCNN


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    shifts = torch.randint(-1, 2, (2,), generator=g).tolist()
    x = torch.roll(x, shifts=shifts, dims=(2, 3))
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def fit(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> DigitsCNN:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = DigitsCNN()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(net(augment(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return net.eval()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "diffmem" / "metrics" / "weights"
    )
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = np.random.default_rng(0).permutation(len(x))
    cut = len(x) * 5 // 6
    net = fit(x[perm[:cut]], y[perm[:cut]], args.epochs)
    with torch.no_grad():
        acc = (net(x[perm[cut:]]).argmax(1) == y[perm[cut:]]).float().mean().item()
    print(f"held-out accuracy (trained on {cut}, tested on {len(x) - cut}): {acc:.4f}")
    net = fit(x, y, args.epochs)
    with torch.no_grad():
        train_acc = (net(x).argmax(1) == y).float().mean().item()
    print(f"final network, accuracy on all digits: {train_acc:.4f}")
    dio.save_tensors(args.out / WEIGHTS, {k: v.contiguous() for k, v in net.state_dict().items()})
    dio.write_json(
        args.out / WEIGHTS.replace(".safetensors", ".json"),
        {
            "network": "diffmem.metrics.frechet.DigitsCNN",
            "feature_dim": DigitsCNN.feature_dim,
            "trained_on": "all 1797 scikit-learn digits, pixels/16, shape (1, 8, 8)",
            "epochs": args.epochs,
            "heldout_accuracy_5_6_split": acc,
            "accuracy_all": train_acc,
            "script": "scripts/train_digits_features.py",
        },
    )
    print(f"wrote {args.out / WEIGHTS}")


if __name__ == "__main__":
    main()
