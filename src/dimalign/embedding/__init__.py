"""Sparse non-negative embeddings fitted to odd-one-out triplets: VICE and SPoSE."""

from dimalign.embedding.runs import fit_run
from dimalign.embedding.spose import SPoSE
from dimalign.embedding.vice import VICE

__all__ = ["VICE", "SPoSE", "fit_run"]
