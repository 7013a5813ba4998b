"""Time one VICE training epoch against a reference in the style of the published code.

Setting (the speed target): 118,000 triplets of 1,854 objects, batch 256,
100 dimensions, float32 on the CPU. The triplets are the first 118,000 rows
of the real THINGS human judgements.

The reference re-implements the training step structure of the published VICE
code, measured in the same run: one-hot encoded batches multiplied into
``nn.Linear`` encoders for the means and log standard deviations, separate
noise for the batch rows and for the whole matrix, densities evaluated and
then logged, autograd for all gradients and the default Adam. It is timed on
``--reference-batches`` batches and extrapolated to a full epoch (printed as
such).

Usage:
    python benchmarks/bench_vice_epoch.py [--epochs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dimalign.embedding import VICE

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "things" / "human_triplets.txt"
TARGET_SECONDS = 1.0


class ReferenceVICE(torch.nn.Module):
    """Training step in the structure of the published VICE code (see the module docstring)."""

    def __init__(self, n_objects: int, n_dims: int, n_train: int) -> None:
        super().__init__()
        self.encoder_mu = torch.nn.Linear(n_objects, n_dims, bias=False)
        self.encoder_logsigma = torch.nn.Linear(n_objects, n_dims, bias=False)
        torch.nn.init.kaiming_normal_(self.encoder_mu.weight, mode="fan_out", nonlinearity="relu")
        torch.nn.init.constant_(self.encoder_logsigma.weight, -1.0 / float(self.encoder_mu.weight.std()))
        self.n_objects = n_objects
        self.n_train = n_train

    @staticmethod
    def normal_pdf(x, loc, scale):
        return torch.exp(-((x - loc) ** 2) / (2 * scale**2)) / (scale * math.sqrt(2 * math.pi))

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(batch.reshape(-1), self.n_objects).float()
        mu = self.encoder_mu(one_hot)
        sigma = torch.exp(self.encoder_logsigma(one_hot))
        z = F.relu(mu + sigma * torch.randn_like(sigma))
        anchor, positive, negative = torch.unbind(z.reshape(-1, 3, z.shape[-1]), dim=1)
        sims = torch.stack(
            ((anchor * positive).sum(-1), (anchor * negative).sum(-1), (positive * negative).sum(-1)), dim=-1
        )
        nll = (torch.logsumexp(sims, -1) - sims[:, 0]).mean()
        w_mu = self.encoder_mu.weight.T
        w_sigma = torch.exp(self.encoder_logsigma.weight.T)
        w_sampled = w_mu + w_sigma * torch.randn_like(w_sigma)
        log_q = self.normal_pdf(w_sampled, w_mu, w_sigma).log()
        prior = 0.5 * self.normal_pdf(w_sampled, 0.0, 0.25) + 0.5 * self.normal_pdf(w_sampled, 0.0, 2.0)
        return nll + (log_q.sum() - prior.log().sum()) / self.n_train


def time_reference(train: np.ndarray, batches: int) -> float:
    torch.manual_seed(0)
    model = ReferenceVICE(1854, 100, len(train))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    batch_tensor = torch.as_tensor(train[: 256 * (batches + 2)])
    steps = [batch_tensor[i * 256:(i + 1) * 256] for i in range(batches + 2)]
    for batch in steps[:2]:  # warm-up
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    started = time.perf_counter()
    for batch in steps[2:]:
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    per_batch = (time.perf_counter() - started) / batches
    return per_batch * math.ceil(len(train) / 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="dimalign epochs to time (median reported)")
    parser.add_argument("--reference-batches", type=int, default=60, help="reference batches to time")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train = np.loadtxt(DATA, dtype=np.int64)[:118_000]
    model = VICE(n_dims=100, batch_size=256, max_epochs=args.epochs + 1, stability_epochs=10_000, random_state=0)
    model.fit(train, n_objects=1854)
    # The first epoch includes one-time start-up costs; report the others.
    ours = statistics.median(row["seconds"] for row in model.history_[1:])
    reference = time_reference(train, args.reference_batches)

    print(f"torch threads: {torch.get_num_threads()}")
    print(f"dimalign VICE epoch (118,000 triplets, batch 256, 100 dims): {ours:.3f} s (median of {args.epochs})")
    print(f"reference epoch, extrapolated from {args.reference_batches} batches: {reference:.3f} s")
    print(f"speed-up over reference: {reference / ours:.1f}x")
    print(f"ratio to the 1.0 s target: {ours / TARGET_SECONDS:.2f} (<= 1 meets it)")


if __name__ == "__main__":
    main()
