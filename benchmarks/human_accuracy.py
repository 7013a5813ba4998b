"""Held-out accuracy of VICE and SPoSE fits on the real THINGS human triplets.

The file ``human_triplets.txt`` (131,552 judgements) is split 90/10 by
unordered object set with a fixed seed (``dimalign.io.triplets.split_triplets``).
The chosen estimator is fitted to the 90% and scored on the 10% every
``--eval-every`` epochs. Printed at the end, as JSON: the held-out accuracy
of the final fit (posterior predictive for VICE), the best accuracy seen
during the fit and its epoch, the kept dimensions and the epochs.

``--start-from EMBEDDING`` is a diagnostic for VICE: the posterior means start
at a given embedding (for example the published SPoSE 49-d one), the remaining
dimensions at -0.5, every posterior sd at ``--start-sd``. Where the objective
then takes the fit shows where its optimum lies on this amount of data,
independent of how a fit from random values reaches it.

``--method spose --l2 L2`` adds a Gaussian penalty ``L2 * sum(W**2) / n_train``
to the SPoSE loss: the maximum a posteriori fit of a non-negative embedding
under a normal prior of sd ``(2 * L2) ** -0.5``. With ``--l1 0`` it is the
deterministic counterpart of VICE's prior (``prior="authors"`` is one Gaussian
of sd about 0.35, which is ``--l2 4``), a check of what a regularised point
estimate reaches on the same split.

Usage:
    python benchmarks/human_accuracy.py [--method vice] [--beta 1] [--max-epochs 100]
    python benchmarks/human_accuracy.py --start-from ../shared/data/things/spose_embedding_49d_sorted.txt
    python benchmarks/human_accuracy.py --method spose --l1 0.008
    python benchmarks/human_accuracy.py --method spose --l1 0 --l2 5 --max-epochs 150
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from dimalign.embedding import SPoSE, VICE
from dimalign.io.triplets import load_triplets, split_triplets

THINGS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "things"


class WarmStartVICE(VICE):
    """VICE whose posterior means start at a given embedding (diagnostic only)."""

    start: np.ndarray | None = None
    start_sd: float = 0.1

    def _init_parameters(self, n_objects: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        params = super()._init_parameters(n_objects, generator)
        start = torch.as_tensor(self.start, dtype=params["loc"].dtype)
        if start.shape[0] != n_objects or start.shape[1] > self.n_dims:
            raise ValueError(
                f"invalid --start-from embedding of shape {tuple(start.shape)}: expected {n_objects} rows "
                f"and at most --n-dims ({self.n_dims}) columns. Pass an embedding of the THINGS objects "
                f"or raise --n-dims."
            )
        loc = torch.full((n_objects, self.n_dims), -0.5, dtype=start.dtype)
        loc[:, : start.shape[1]] = start
        return {"loc": loc, "log_scale": torch.full_like(loc, math.log(self.start_sd))}


class GaussianSPoSE(SPoSE):
    """SPoSE with an added Gaussian penalty ``l2 * sum(W**2) / n_train`` (diagnostic only)."""

    l2: float = 0.0

    def _batch_loss(self, params, batch, n_train, generator):
        loss, parts, logits = super()._batch_loss(params, batch, n_train, generator)
        weights = params["weights"]
        return loss + self.l2 * (weights * weights).sum() / n_train, parts, logits

    def _complexity_weight(self) -> float:
        return 1.0

    @torch.no_grad()
    def _complexity(self, params) -> float:
        # The whole penalty, so that the logged loss is the loss minimised.
        weights = params["weights"]
        l2 = self.l2 * float((weights * weights).sum()) / self._n_train
        return self.l1 * super()._complexity(params) + l2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=THINGS)
    parser.add_argument("--method", choices=("vice", "spose"), default="vice")
    parser.add_argument("--n-dims", type=int, default=None, help="default: 150 for VICE, 100 for SPoSE")
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--beta", type=float, default=1.0, help="VICE: weight of the complexity term")
    parser.add_argument("--l1", type=float, default=0.008, help="SPoSE: weight of the L1 penalty")
    parser.add_argument("--l2", type=float, default=0.0,
                        help="SPoSE: weight of a Gaussian penalty sum(W**2) / n_train")
    parser.add_argument("--start-from", type=Path, default=None, help="VICE: embedding file to start at")
    parser.add_argument("--start-sd", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    triplets = load_triplets(args.data_dir / "human_triplets.txt", object_table=args.data_dir / "unique_id.txt")
    train, val = split_triplets(triplets, 0.1, random_state=0)
    n_objects = 1854
    common = {"max_epochs": args.max_epochs, "batch_size": args.batch_size, "lr": args.lr,
              "random_state": args.seed, "eval_every": args.eval_every, "verbose": True}
    if args.method == "spose":
        model = GaussianSPoSE(n_dims=args.n_dims or 100, l1=args.l1, **common)
        model.l2 = args.l2
    elif args.start_from is not None:
        model = WarmStartVICE(n_dims=args.n_dims or 150, beta=args.beta, **common)
        model.start = np.loadtxt(args.start_from) if args.start_from.suffix != ".npy" else np.load(args.start_from)
        model.start_sd = args.start_sd
    else:
        model = VICE(n_dims=args.n_dims or 150, beta=args.beta, **common)

    started = time.perf_counter()
    model.fit(train, val, n_objects=n_objects)
    seconds = time.perf_counter() - started
    scored = [row for row in model.history_ if "val_accuracy" in row]
    best = max(scored, key=lambda row: row["val_accuracy"])
    results = {
        "method": args.method,
        "settings": {key: value for key, value in vars(args).items() if key not in ("data_dir", "out")},
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "final_val_accuracy": model.score(val),
        "final_train_accuracy": scored[-1]["train_accuracy"],
        "kept_dims": model.n_dims_,
        "epochs": model.n_epochs_,
        "best_val_accuracy": best["val_accuracy"],
        "best_epoch": best["epoch"],
        "dims_at_best": best["n_dims"],
        "seconds": seconds,
    }
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
