"""Comparing a human and a DNN embedding of the same objects (``dimalign compare``).

The comparison runs these steps and writes each result into one output
directory:

1. Align the objects of both embeddings by their labels (object tables).
2. Match every human dimension to a DNN dimension (``matching.csv``, figure),
   and list the objects high on both dimensions of each pair, or on only one
   (``top_objects.csv``, image grids when images are given).
3. Build both model-predicted similarity matrices and correlate them (RSA)
   with a bootstrap over objects for a confidence interval (``rsa.json``).
4. Add the matched DNN dimensions one at a time and correlate again
   (``cumulative_rsa.csv``, figure, and the number of DNN dimensions that
   reach 95% of the full model's explained variance).
5. With triplets, explain both models' choices by jackknife relevance
   (``relevance_*.csv``, ``agreement_different_dims.csv``, ``disagreements.csv``).

This module also contains the parts needed at the scale of the THINGS images
(24,102 objects). One is a similarity matrix computed in row blocks into a
memory-mapped ``.npy`` file. The other is a bootstrap that weights object
pairs by how often resampling drew them, so that each sample is one matrix
product instead of a gather of all resampled pairs.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dimalign._checks import check_integer
from dimalign._progress import progress_disabled
from dimalign._warnings import warn
from dimalign.analysis.similarity import _as_embedding, _largest_safe_range
from dimalign.device import resolve_device
from dimalign.io.files import (
    MANIFEST_NAME,
    atomic_path,
    check_output_dir,
    check_unowned_files,
    check_writable,
    count_of,
    now_iso,
    is_same_file,
    report_leftover_stages,
    staged_outputs,
    write_json_atomic,
    write_manifest,
    write_text_atomic,
)
from dimalign.features.recorded import Decoding, recorded_decoding
from dimalign.io.objects import (
    OBJECT_TABLE_NAME,
    ObjectTable,
    find_image,
    index_object_ids,
    read_object_table,
)
from dimalign.io.runs import (
    EmbeddingResult,
    as_embedding_result,
    load_embedding,
)

logger = logging.getLogger(__name__)


# -- objects ------------------------------------------------------------------


def align_objects(
    reference: ObjectTable,
    other: ObjectTable,
    *,
    names: tuple[str, str] = ("human", "DNN"),
    advice: str = "compare embeddings of the same objects, or pass matching object tables",
) -> np.ndarray:
    """Find the row of ``other`` for every object of ``reference``, matched by object id.

    Args:
        reference (ObjectTable): The order to follow.
        other (ObjectTable): The table to reorder.
        names (tuple[str, str]): What to call the two tables in the error.
        advice (str): What the error tells the caller to do, in the terms of
            the calling command.

    Returns:
        np.ndarray: ``order`` with ``other.object_ids[order[i]] == reference.object_ids[i]``.

    Raises:
        ValueError: If the two tables do not hold the same set of ids. The
            message gives the count and the first 20 ids found only on each side.
    """
    only_reference = sorted(set(reference.object_ids) - set(other.object_ids))
    only_other = sorted(set(other.object_ids) - set(reference.object_ids))
    if only_reference or only_other:
        raise ValueError(
            f"the {names[0]} and {names[1]} object tables list different objects: "
            f"{len(only_reference)} ids only in the {names[0]} table {only_reference[:20]}, "
            f"{len(only_other)} ids only in the {names[1]} table {only_other[:20]}; {advice}"
        )
    return np.asarray(other.index_of(reference.object_ids), dtype=np.int64)


def find_object_table(path: str | os.PathLike) -> ObjectTable | None:
    """Return the object table of a run directory or next to an embedding file, if there is one.

    Args:
        path (str | os.PathLike): A run directory, or an embedding file whose
            folder may contain an ``objects.tsv``.

    Returns:
        ObjectTable | None: The table, or None when there is no ``objects.tsv``.
    """
    path = Path(path)
    candidate = path / OBJECT_TABLE_NAME if path.is_dir() else path.parent / OBJECT_TABLE_NAME
    return read_object_table(candidate) if candidate.is_file() else None


@dataclass
class AlignedPair:
    """Two embeddings of the same objects in the same row order.

    Attributes:
        human (np.ndarray): Shape ``(n_objects, n_human)``.
        dnn (np.ndarray): Shape ``(n_objects, n_dnn)``, rows reordered to the human order.
        objects (ObjectTable): The shared object table (human order).
        dnn_order (np.ndarray): Row of the original DNN embedding for each object.
        human_rows (np.ndarray | None): Row of the original human embedding for
            each object; None when every human row is kept in its order.
        n_human_only (int): Objects of the human table left out because the
            DNN table does not list them (only with ``shared_objects``).
        n_dnn_only (int): Objects of the DNN table left out likewise.
    """

    human: np.ndarray
    dnn: np.ndarray
    objects: ObjectTable
    dnn_order: np.ndarray
    human_rows: np.ndarray | None = None
    n_human_only: int = 0
    n_dnn_only: int = 0


def align_embeddings(
    human: EmbeddingResult,
    dnn: EmbeddingResult,
    *,
    human_objects: ObjectTable | None = None,
    dnn_objects: ObjectTable | None = None,
    table_sources: tuple[str | None, str | None] = (None, None),
    shared_objects: bool = False,
) -> AlignedPair:
    """Put the DNN embedding in the human row order.

    With an object table on each side, rows are matched by object id.
    Without any table, both must have the same number of rows, which are
    named by their index. A table on one side only is an error, because the
    rows would be matched by position without any check.
    With ``shared_objects``, both embeddings keep only the objects that both
    tables list, in the human order, and the others are left out and logged.

    Args:
        human (EmbeddingResult): Shape ``(n_objects, n_human)``; its order is kept.
        dnn (EmbeddingResult): Shape ``(n_objects, n_dnn)``.
        human_objects (ObjectTable | None): Names of the human rows.
        dnn_objects (ObjectTable | None): Names of the DNN rows.
        table_sources (tuple[str | None, str | None]): Where each table came
            from (a file, or how it was passed), named in the error for
            different object sets.
        shared_objects (bool): Keep the objects that both tables list and
            leave out the rest, instead of requiring the same object set.

    Returns:
        AlignedPair: Both embeddings in the human row order.

    Raises:
        ValueError: If the object sets differ (without ``shared_objects``) or
            have no id in common, the row counts do not fit, a table is
            missing, or an embedding has no dimension.
    """
    for label, result, table in (("human", human, human_objects), ("DNN", dnn, dnn_objects)):
        if result.embedding.shape[1] == 0:
            source = f" {result.path}" if result.path is not None else ""
            raise ValueError(
                f"the {label} embedding{source} has no dimension (the fit pruned them all), so there "
                "is nothing to compare; refit with a lower min_objects or more triplets"
            )
        if table is not None and len(table) != result.n_objects:
            raise ValueError(
                f"the {label} object table lists {len(table)} objects but the {label} "
                f"embedding has {result.n_objects} rows"
            )
    if shared_objects and (human_objects is None or dnn_objects is None):
        missing = " and ".join(
            label for label, table in (("human", human_objects), ("DNN", dnn_objects)) if table is None
        )
        raise ValueError(
            f"shared_objects matches the rows by object id, but the {missing} embedding has no object "
            "table: put an objects.tsv that names its rows next to it, or pass --objects (objects=)"
        )
    if human_objects is None and dnn_objects is None:
        if human.n_objects != dnn.n_objects:
            human_name = "the human embedding" + (f" {human.path}" if human.path is not None else "")
            dnn_name = "the DNN embedding" + (f" {dnn.path}" if dnn.path is not None else "")
            raise ValueError(
                f"{human_name} has {human.n_objects} rows and {dnn_name} has {dnn.n_objects}, and neither "
                "has an object table, so their rows cannot be matched: pass object tables to match them by "
                "id, an objects.tsv that names the rows in the folder of each embedding"
            )
        table = ObjectTable.from_ids([str(row) for row in range(human.n_objects)])
        return AlignedPair(human.embedding, dnn.embedding, table, np.arange(human.n_objects))
    if human_objects is None or dnn_objects is None:
        missing = "human" if human_objects is None else "DNN"
        raise ValueError(
            f"only the {'DNN' if missing == 'human' else 'human'} embedding has an object table, so the "
            f"{missing} rows cannot be matched to it by object id: pass an object table for both"
        )
    if shared_objects:
        return _align_shared_objects(human, dnn, human_objects, dnn_objects)
    advice = (
        "compare embeddings of the same objects, pass matching object tables, or pass --shared-objects "
        "(shared_objects=True) to compare only the objects that both tables list"
    )
    if None not in table_sources:
        named = {
            "objects argument": "the object table passed (objects=, CLI --objects)",
            INDEX_SOURCE: "the DataFrame index",
        }
        human_source, dnn_source = (named.get(source, source) for source in table_sources)
        advice += f". The human objects are named by {human_source} and the DNN objects by {dnn_source}"
    order = align_objects(human_objects, dnn_objects, advice=advice)
    if not np.array_equal(order, np.arange(order.size)):
        logger.info("reordered the DNN embedding's rows to the human object order")
    return AlignedPair(human.embedding, dnn.embedding[order], human_objects, order)


def _align_shared_objects(
    human: EmbeddingResult, dnn: EmbeddingResult, human_objects: ObjectTable, dnn_objects: ObjectTable
) -> AlignedPair:
    """Keep the objects that both tables list, in the human order, for :func:`align_embeddings`."""
    dnn_lookup = {name: row for row, name in enumerate(dnn_objects.object_ids)}
    human_rows = np.array(
        [row for row, name in enumerate(human_objects.object_ids) if name in dnn_lookup], dtype=np.int64
    )
    if human_rows.size == 0:
        raise ValueError(
            f"the human and DNN object tables share no object id: the human table starts with "
            f"{list(human_objects.object_ids[:5])} and the DNN table with {list(dnn_objects.object_ids[:5])}; "
            "object ids must be equal to match, so name the DNN objects by the human ids (for THINGS, "
            "the ids of unique_id.txt) with --objects when simulating, or pass a table with those ids. "
            "Features of several images per object are averaged first, as docs/features.md shows under "
            "'Your own photos of THINGS objects'"
        )

    kept = ObjectTable(
        tuple(human_objects.object_ids[row] for row in human_rows),
        tuple(human_objects.sources[row] for row in human_rows),
    )
    dnn_order = np.asarray(dnn_objects.index_of(kept.object_ids), dtype=np.int64)
    n_human_only = len(human_objects) - human_rows.size
    n_dnn_only = len(dnn_objects) - human_rows.size
    logger.info(
        "comparing the %s that both object tables list; left out %d human-only and %d DNN-only objects",
        count_of(human_rows.size, "object"), n_human_only, n_dnn_only,
    )

    # The smaller table is usually the subset that the user named, such as a DNN's photos of
    # THINGS objects, so an object of it that the other table lacks is likely misnamed.
    sides = (("human", human_objects, "DNN", dnn_objects), ("DNN", dnn_objects, "human", human_objects))
    for label, table, other_label, other in sides:
        if len(table) > len(other):
            continue
        other_ids = set(other.object_ids)
        left_out = [name for name in table.object_ids if name not in other_ids]
        if left_out:
            warn(
                f"left out {len(left_out)} of the {len(table)} objects of the {label} table because the "
                f"{other_label} table does not list them: {left_out[:20]}; check their ids against the "
                f"{other_label} table, since ids match only when they are equal"
            )

    return AlignedPair(
        human.embedding[human_rows], dnn.embedding[dnn_order], kept, dnn_order,
        human_rows=human_rows, n_human_only=n_human_only, n_dnn_only=n_dnn_only,
    )


# -- similarity matrices at scale ---------------------------------------------


def similarity_matrix_to_disk(
    embedding: np.ndarray,
    path: str | os.PathLike,
    *,
    block_size: int | None = None,
    device: str = "cpu",
    dtype: str = "float64",
) -> np.ndarray:
    """Compute the model-predicted similarity matrix in row blocks into a ``.npy`` file.

    ``S_ij = 1/(n-2) sum_{k not in {i,j}} exp(s_ij) / (exp(s_ij) + exp(s_ik) + exp(s_jk))``
    with ``s = Y Y^T``, the same matrix as
    :func:`dimalign.analysis.similarity.similarity_matrix` (diagonal 1).
    Blocks of rows are computed one after another and written to a
    memory-mapped file, so the result never has to fit in memory, and one
    block of rows is the unit of work on the GPU.

    An interrupted run resumes: the file is written as ``<path>.partial.npy``
    with the finished row blocks listed in ``<path>.partial.json``, and renamed
    to ``path`` when every row is done. It resumes only with the same
    embedding, ``dtype`` and ``block_size``, and starts over otherwise. The SHA-256 of the embedding, its
    shape and ``dtype`` are then kept in ``<path>.json`` (``<stem>.json`` next
    to ``<stem>.npy``). A finished ``path`` is reused only when that record
    matches this call. Otherwise it is computed again and replaced.

    Cost: time ``O(n^3 + n^2 d)``. Row block ``I`` computes the entries
    ``(I, J)`` for the column blocks ``J >= I`` and mirrors them into ``(J, I)``.
    So about ``n^3 / 2`` softmax terms are evaluated, each two additions and a
    reciprocal. It takes two exponentials instead when the dot products span
    more than a shared shift allows. The in-memory ``similarity_matrix`` needs ``n^3 / 6`` because
    it adds each unordered triple into three entries at once, which does not
    fit a resumable order of row blocks. Memory: the ``n x n`` exponentials in
    ``dtype`` (2.3 GB in float32 for 24,102 objects) and the memory map.

    Measured on 2,000 objects (the published VICE 42-d THINGS embedding plus
    146 repeated rows) with one torch thread on a shared 2-core x86_64 CPU:
    2.1 s in float32 and 4.5 s in float64, against 1.3 s and 2.3 s for
    ``similarity_matrix`` in the same run. Scaled by ``n^3`` to 24,102 objects
    (x1,750) that is about 1 h in float32 and 2.2 h in float64 on one CPU
    thread, an extrapolation that was not run. The CUDA path was not timed.

    Args:
        embedding (np.ndarray): Shape ``(n_objects, n_dims)``, at least 3 objects.
        path (str | os.PathLike): The ``.npy`` file to write.
        block_size (int | None): Objects per block along each of the three
            axes (a block holds ``block_size**3`` values). Defaults to 64 on
            CPU and 256 on CUDA. It is also the number of rows per resumable step.
        device (str): ``"cpu"``, ``"cuda"`` or ``"auto"``.
        dtype (str): ``"float64"`` or ``"float32"``, of the computation and the file.

    Returns:
        np.ndarray: The matrix, memory-mapped read-only from ``path``.

    Raises:
        ValueError: If the embedding is not 2-D with at least 3 objects,
            contains NaN or inf (naming the rows) or a weight below -0.01 (as
            in :func:`similarity_matrix`), ``dtype`` is invalid, or
            ``block_size`` is not an integer of 1 or more.
    """
    path = Path(path)
    weights = np.asarray(embedding, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[0] < 3:
        raise ValueError(f"need a 2-D embedding of at least 3 objects, got shape {weights.shape}")
    weights = _as_embedding(weights)
    if dtype not in ("float64", "float32"):
        raise ValueError(f"invalid dtype {dtype!r}: use 'float64' or 'float32'")
    record_file = similarity_record_path(path)
    expected_record = _progress_record(weights, weights.shape[0], dtype, set())
    del expected_record["finished_row_blocks"]
    if path.is_file():
        if _matches_record(record_file, expected_record):
            logger.info("similarity matrix %s was computed from the same embedding and dtype, reusing it", path)
            return np.load(path, mmap_mode="r")
        logger.info(
            "similarity matrix %s has no record of this embedding and dtype in %s, computing it again",
            path, record_file,
        )
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    torch_device = resolve_device(device)
    n_objects = weights.shape[0]
    if block_size is None:
        block_size = 256 if torch_device.type == "cuda" else 64
    check_integer("block_size", block_size, 1)
    # A Python int, because the progress record stores it as JSON.
    block_size = int(block_size)

    y = torch.as_tensor(weights, device=torch_device)
    logits = y @ y.T
    off_diagonal = ~torch.eye(n_objects, dtype=torch.bool, device=torch_device)
    peak = float(logits[off_diagonal].max())
    shared_shift = peak - float(logits[off_diagonal].min()) <= _largest_safe_range(torch_dtype)
    values = torch.exp(logits - peak).to(torch_dtype) if shared_shift else logits.to(torch_dtype)
    values.fill_diagonal_(0.0)
    del logits, off_diagonal

    partial = path.with_name(path.name.removesuffix(".npy") + ".partial.npy")
    progress_file = partial.with_suffix(".json")
    output, done = _open_partial(partial, progress_file, weights, dtype, block_size)
    starts = list(range(0, n_objects, block_size))
    for start in tqdm(starts, desc="similarity rows", unit="block", disable=progress_disabled()):
        if start in done:
            continue
        stop = min(start + block_size, n_objects)
        for column in range(start, n_objects, block_size):
            column_stop = min(column + block_size, n_objects)
            block = _similarity_block(values, (start, stop), (column, column_stop), block_size, shared_shift)
            block /= n_objects - 2
            if column == start:
                block.fill_diagonal_(1.0)
            block_np = block.cpu().numpy()
            output[start:stop, column:column_stop] = block_np
            output[column:column_stop, start:stop] = block_np.T
        output.flush()
        done.add(start)
        write_text_atomic(progress_file, json.dumps(_partial_record(weights, dtype, block_size, done)))

    del output
    # The old record goes before the rename, so a matrix without a matching
    # record is recomputed, never trusted.
    record_file.unlink(missing_ok=True)
    os.replace(partial, path)
    write_text_atomic(record_file, json.dumps(expected_record))
    progress_file.unlink()
    logger.info("wrote the %d x %d similarity matrix to %s (%s)", n_objects, n_objects, path, dtype)
    return np.load(path, mmap_mode="r")


def similarity_record_path(path: str | os.PathLike) -> Path:
    """Return the record file of a similarity matrix written by :func:`similarity_matrix_to_disk`.

    ``human_similarity.npy`` has its record in ``human_similarity.json``.

    Args:
        path (str | os.PathLike): The ``.npy`` file of the matrix.

    Returns:
        Path: The ``.json`` record next to it.
    """
    path = Path(path)
    return path.with_name(path.name.removesuffix(".npy") + ".json")


def _matches_record(record_file: Path, expected: dict[str, Any]) -> bool:
    if not record_file.is_file():
        return False
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and all(record.get(key) == value for key, value in expected.items())


def _similarity_block(
    values: torch.Tensor, rows: tuple[int, int], columns: tuple[int, int], block_size: int, shared_shift: bool
) -> torch.Tensor:
    """Sum over k (not i, not j) of p(k | i, j) for one block of rows and columns.

    ``values`` contains the shifted exponentials ``exp(s - max s)`` when
    ``shared_shift``, else the dot products themselves. Returns
    ``sum_k p(k | i, j)``, shape ``(rows, columns)``.
    """
    (start, stop), (column, column_stop) = rows, columns
    pair = values[start:stop, column:column_stop]
    totals = torch.zeros_like(pair)
    row_index = torch.arange(stop - start, device=values.device)
    column_index = torch.arange(column_stop - column, device=values.device)
    for third in range(0, values.shape[0], block_size):
        third_stop = min(third + block_size, values.shape[0])
        row_third = values[start:stop, third:third_stop][:, None, :]
        column_third = values[column:column_stop, third:third_stop][None, :, :]
        if shared_shift:
            terms = pair[:, :, None] + row_third
            terms += column_third
            terms.reciprocal_()
        else:
            # 1 / (1 + exp(s_ik - s_ij) + exp(s_jk - s_ij)) is finite for any range.
            terms = torch.exp(row_third - pair[:, :, None])
            terms += torch.exp(column_third - pair[:, :, None])
            terms += 1.0
            terms.reciprocal_()

        # Leave out k = i and k = j; blocks share one grid, so only equal blocks overlap.
        if third == start:
            terms[row_index, :, row_index] = 0.0
        if third == column:
            terms[:, column_index, column_index] = 0.0
        totals += terms.sum(dim=2)
    return pair * totals if shared_shift else totals


def _progress_record(weights: np.ndarray, n_objects: int, dtype: str, done: set[int]) -> dict[str, Any]:
    import hashlib

    return {
        "embedding_sha256": hashlib.sha256(np.ascontiguousarray(weights).tobytes()).hexdigest(),
        "embedding_shape": list(weights.shape),
        "n_objects": n_objects,
        "dtype": dtype,
        "finished_row_blocks": sorted(done),
    }


def _partial_record(weights: np.ndarray, dtype: str, block_size: int, done: set[int]) -> dict[str, Any]:
    """Return the progress record of a partial matrix.

    The finished row blocks are named by their first row, so they mark the
    right rows only for the ``block_size`` that wrote them.
    """
    return {**_progress_record(weights, weights.shape[0], dtype, done), "block_size": block_size}


def _is_block_list(blocks: Any) -> bool:
    """Return whether ``blocks`` is a list of row indices, as the progress record stores them."""
    return isinstance(blocks, list) and all(
        isinstance(start, int) and not isinstance(start, bool) and start >= 0 for start in blocks
    )


def _open_partial(
    partial: Path, progress_file: Path, weights: np.ndarray, dtype: str, block_size: int
) -> tuple[np.memmap, set[int]]:
    """Open the partial file to resume it, or create a new one."""
    expected = _partial_record(weights, dtype, block_size, set())
    if partial.is_file() and progress_file.is_file():
        try:
            record = json.loads(progress_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            record = None
            logger.warning("cannot read the progress record %s (%s); starting over", progress_file, error)
        blocks = record.get("finished_row_blocks", []) if isinstance(record, dict) else None
        if isinstance(record, dict) and not _is_block_list(blocks):
            logger.warning(
                "the progress record %s lists invalid finished row blocks (%s), so the matrix starts over",
                progress_file, repr(blocks)[:100],
            )
            record = None
        keys = ("embedding_sha256", "n_objects", "dtype", "block_size")
        if isinstance(record, dict) and all(record.get(key) == expected[key] for key in keys):
            done = set(blocks)
            logger.info("resuming %s: %d row blocks of %d rows already done", partial, len(done), block_size)
            return np.load(partial, mmap_mode="r+"), done
        if record is not None:
            recorded_block_size = record.get("block_size") if isinstance(record, dict) else None
            logger.warning(
                "%s belongs to another embedding, dtype or block size (recorded %s, now %d); starting over",
                partial, recorded_block_size, block_size,
            )
    n_objects = weights.shape[0]
    partial.parent.mkdir(parents=True, exist_ok=True)
    output = np.lib.format.open_memmap(partial, mode="w+", dtype=np.dtype(dtype), shape=(n_objects, n_objects))
    write_text_atomic(progress_file, json.dumps(expected))
    return output, set()


# -- RSA with a bootstrap over objects ----------------------------------------


def variance_explained(model_similarity: np.ndarray, reference_similarity: np.ndarray) -> float:
    """Return r², the share of variance in a reference similarity matrix that a model's explains.

    Both matrices cover the same objects in the same order. The upper
    triangle (without the diagonal) is correlated by Pearson's r.

    Args:
        model_similarity (np.ndarray): Shape ``(n, n)``.
        reference_similarity (np.ndarray): Shape ``(n, n)``.

    Returns:
        float: ``r**2`` in ``[0, 1]``.

    Raises:
        ValueError: If the matrices are invalid for :func:`dimalign.analysis.rsa.rsa`.
    """
    from dimalign.analysis.rsa import rsa

    return float(rsa(model_similarity, reference_similarity, method="pearson") ** 2)


@dataclass
class BootstrapRSA:
    """An RSA value with a percentile bootstrap interval over objects.

    Attributes:
        r (float): The correlation on all objects.
        ci_low (float): The lower end of the percentile interval.
        ci_high (float): The upper end of the percentile interval.
        ci_level (float): Its nominal coverage, such as 0.95.
        samples (np.ndarray): The bootstrap correlations, shape ``(n_bootstrap,)``.
            A sample whose resampled objects give a constant similarity is NaN.
        method (str): ``"pearson"`` or ``"spearman"``.
        random_state (int): Seed of the resampling.
    """

    r: float
    ci_low: float
    ci_high: float
    ci_level: float
    samples: np.ndarray = field(repr=False)
    method: str = "pearson"
    random_state: int = 0

    @property
    def n_valid(self) -> int:
        """Number of samples with a correlation (not NaN), the ones the interval uses."""
        return int(np.count_nonzero(~np.isnan(self.samples)))

    def to_dict(self) -> dict[str, Any]:
        """Return the summary without the samples.

        ``n_bootstrap`` is the number of samples drawn and
        ``n_bootstrap_valid`` the number with a correlation. Without valid
        samples the interval and ``bootstrap_sd`` are NaN, which
        :func:`dimalign.io.files.write_json_atomic` writes as ``null``.
        """
        valid = self.samples[~np.isnan(self.samples)]
        return {
            "method": self.method,
            "r": self.r,
            "r2": self.r**2,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "ci_level": self.ci_level,
            "n_bootstrap": int(self.samples.size),
            "n_bootstrap_valid": int(valid.size),
            "bootstrap_sd": float(np.std(valid, ddof=1)) if valid.size > 1 else math.nan,
            "random_state": self.random_state,
            "resampling": "objects with replacement; pairs of the same object left out",
        }


def bootstrap_indices(n_objects: int, n_bootstrap: int, random_state: int = 0) -> np.ndarray:
    """Draw the resampled objects of every bootstrap sample.

    Args:
        n_objects (int): Number of objects to resample.
        n_bootstrap (int): Number of samples.
        random_state (int): Seed of ``numpy.random.default_rng``.

    Returns:
        np.ndarray: Object indices drawn with replacement, int64, shape
        ``(n_bootstrap, n_objects)``.
    """
    rng = np.random.default_rng(random_state)
    return rng.integers(0, n_objects, size=(n_bootstrap, n_objects))


def resampled_rsa(a: np.ndarray, b: np.ndarray, indices: np.ndarray, method: str = "pearson") -> float:
    """Correlate two similarity matrices over the objects ``indices`` (with repeats).

    Every pair of positions ``p < q`` of the resampled list enters once,
    except pairs of the same object (``indices[p] == indices[q]``), which
    would be diagonal entries.

    Args:
        a (np.ndarray): Similarity matrix, shape ``(n, n)``.
        b (np.ndarray): Similarity matrix of the same objects, shape ``(n, n)``.
        indices (np.ndarray): Resampled object indices, shape ``(m,)``.
        method (str): ``"pearson"`` or ``"spearman"``.

    Returns:
        float: The correlation in ``[-1, 1]``.

    Raises:
        ValueError: If fewer than two pairs remain, or the values of a side
            are constant (:class:`dimalign.analysis.rsa.ConstantInputError`).
    """
    from dimalign.analysis.rsa import correlate_vectors

    rows, columns = np.triu_indices(indices.size, k=1)
    keep = indices[rows] != indices[columns]
    first, second = indices[rows[keep]], indices[columns[keep]]
    return correlate_vectors(a[first, second], b[first, second], method=method)


def _resampled_rsa_or_nan(a: np.ndarray, b: np.ndarray, indices: np.ndarray, method: str) -> float:
    """Return :func:`resampled_rsa`, or NaN for a sample whose similarities are constant.

    With fewer than 3 distinct objects a sample has at most one distinct
    pair, so its values are constant or too few, as :func:`_weighted_pearson`
    finds for Pearson's r.
    """
    from dimalign.analysis.rsa import ConstantInputError

    if np.unique(indices).size < 3:
        return math.nan
    try:
        return resampled_rsa(a, b, indices, method)
    except ConstantInputError:
        return math.nan


# Relative size below which a difference of two pair sums counts as rounding noise.
_CANCELLATION_TOLERANCE = 1e-10


def _weighted_pearson(a: np.ndarray, b: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Pearson r over object pairs weighted by ``counts_p * counts_q``, for every row of ``counts``.

    Resampling objects with replacement and keeping every pair of distinct
    objects is the same as weighting the pair ``{p, q}`` by how often it
    occurs, ``w_p w_q``. Sums over pairs ``p < q`` are then quadratic forms
    ``(w^T M w) / 2`` with zero-diagonal matrices ``M``, one matrix product
    per bootstrap batch instead of one pass over ``n^2`` pairs per sample.
    """
    upper = np.triu_indices(a.shape[0], k=1)
    # Centre both on their off-diagonal means: the correlation is unchanged, the sums cancel less.
    centred_a = a - a[upper].mean()
    centred_b = b - b[upper].mean()
    np.fill_diagonal(centred_a, 0.0)
    np.fill_diagonal(centred_b, 0.0)
    weights = counts.astype(np.float64)

    def pair_sum(matrix: np.ndarray) -> np.ndarray:
        return 0.5 * np.einsum("bn,bn->b", weights @ matrix, weights)

    n_pairs = 0.5 * (weights.sum(axis=1) ** 2 - (weights**2).sum(axis=1))
    sum_a, sum_b = pair_sum(centred_a), pair_sum(centred_b)
    sum_aa, sum_bb = pair_sum(centred_a * centred_a), pair_sum(centred_b * centred_b)
    sum_ab = pair_sum(centred_a * centred_b)
    covariance = n_pairs * sum_ab - sum_a * sum_b
    variance_a = n_pairs * sum_aa - sum_a**2
    variance_b = n_pairs * sum_bb - sum_b**2
    # A sample of one distinct pair has zero variance, but the difference of
    # the two sums leaves rounding noise of about eps times the sums.
    tolerance = _CANCELLATION_TOLERANCE * n_pairs
    constant = (variance_a <= tolerance * sum_aa) | (variance_b <= tolerance * sum_bb)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = covariance / np.sqrt(variance_a * variance_b)
    r[constant] = np.nan
    return np.clip(r, -1.0, 1.0)


def _similarity_input(matrix: Any, position: str) -> np.ndarray:
    """Return a similarity matrix as float64, or raise ``ValueError`` for a model or an embedding."""
    if isinstance(matrix, EmbeddingResult):
        raise ValueError(
            f"bootstrap_rsa compares similarity matrices (n, n), but the {position} input is an "
            "EmbeddingResult: pass similarity_matrix(result.embedding)"
        )
    if hasattr(matrix, "get_params"):
        raise ValueError(
            f"bootstrap_rsa compares similarity matrices (n, n), but the {position} input is a fitted "
            f"{type(matrix).__name__}: pass similarity_matrix(model)"
        )
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim == 2 and array.shape[0] != array.shape[1]:
        raise ValueError(
            f"bootstrap_rsa compares similarity matrices (n, n), but the {position} input is an "
            f"embedding of shape {array.shape}: pass similarity_matrix(embedding)"
        )
    return array


def bootstrap_rsa(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    random_state: int = 0,
    method: str = "pearson",
    batch_size: int = 64,
) -> BootstrapRSA:
    """RSA of two similarity matrices with a percentile bootstrap over objects.

    Each sample resamples the objects with replacement, and the correlation
    uses every pair of distinct resampled objects (:func:`resampled_rsa`).
    For Pearson's r this is computed exactly with pair weights
    (:func:`_weighted_pearson`), for Spearman by resampling the values.
    ``scipy.stats.bootstrap`` is not used because it resamples the
    observations (here the object pairs) independently, while pairs that
    share an object are not independent, so the resampling unit is the object.

    Args:
        a (np.ndarray): Shape ``(n, n)``.
        b (np.ndarray): Shape ``(n, n)``, the same objects in the same order.
        n_bootstrap (int): Number of samples (0 for none).
        ci_level (float): Coverage of the interval, in (0, 1).
        random_state (int): Seed of the resampling.
        method (str): ``"pearson"`` or ``"spearman"``.
        batch_size (int): Samples per matrix product (Pearson).

    Returns:
        BootstrapRSA: The value and its interval (NaN without samples).

    Raises:
        ValueError: If the matrices are invalid for :func:`dimalign.analysis.rsa.rsa`,
            ``ci_level`` is outside (0, 1), or ``n_bootstrap``, ``batch_size``
            or ``random_state`` is not an integer in range.
    """
    from dimalign.analysis.rsa import rsa

    a = _similarity_input(a, "first")
    b = _similarity_input(b, "second")
    check_integer("n_bootstrap", n_bootstrap)
    check_integer("batch_size", batch_size, 1)
    _check_seed(random_state)
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level={ci_level} is invalid: use a value in (0, 1)")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap={n_bootstrap} is invalid: use 0 or more")
    if random_state < 0:
        raise ValueError(f"random_state={random_state} is invalid: use 0 or more")
    value = float(rsa(a, b, method=method))

    # Each batch is drawn when it is needed, so memory does not grow with
    # n_bootstrap. The rows are those of bootstrap_indices(n, n_bootstrap,
    # random_state), which tests check, because numpy's Generator.integers
    # draws its values one after another (numpy 2.4).
    rng = np.random.default_rng(random_state)
    samples = np.empty(n_bootstrap)
    for start in tqdm(range(0, n_bootstrap, batch_size), desc="bootstrap", unit="batch", disable=progress_disabled(), leave=False):
        batch = rng.integers(0, a.shape[0], size=(min(batch_size, n_bootstrap - start), a.shape[0]))
        if method == "pearson":
            counts = np.stack([np.bincount(row, minlength=a.shape[0]) for row in batch])
            samples[start : start + batch.shape[0]] = _weighted_pearson(a, b, counts)
        else:
            samples[start : start + batch.shape[0]] = [_resampled_rsa_or_nan(a, b, row, method) for row in batch]
    valid = samples[~np.isnan(samples)]
    if valid.size < n_bootstrap:
        warn(
            f"{n_bootstrap - valid.size} of {n_bootstrap} bootstrap samples had a constant "
            f"similarity and no correlation; the interval uses the other {valid.size}. With many "
            "invalid samples the objects are too few for a bootstrap interval",
            UserWarning,
        )
    tail = 100 * (1 - ci_level) / 2
    low, high = (np.percentile(valid, [tail, 100 - tail]) if valid.size else (math.nan, math.nan))
    # A perfect correlation (|r| = 1) in every sample is a real result, not a degenerate interval.
    if n_bootstrap == 1 and valid.size == 1 and abs(low) < 1.0:
        # One sample has zero width by construction, whatever the number of objects.
        warn(
            f"only 1 bootstrap sample (r = {low:.3f}), so the interval has zero width and says "
            "nothing about the uncertainty of r: draw more samples (--bootstrap 1000)",
            UserWarning,
        )
    elif valid.size and low == high and abs(low) < 1.0:
        warn(
            f"the bootstrap interval [{low:.3f}, {high:.3f}] has zero width: the {valid.size} "
            "valid samples give the same correlation, so the interval says nothing about its "
            "uncertainty; compare more objects",
            UserWarning,
        )
    return BootstrapRSA(
        r=value, ci_low=float(low), ci_high=float(high), ci_level=ci_level, samples=samples,
        method=method, random_state=random_state,
    )


# -- the whole comparison -----------------------------------------------------

#: Every file that :func:`compare` may write, besides ``manifest.json`` and the
#: image grids in ``top_objects/``. Once a rerun into the same folder has
#: written its new files, it removes the earlier ones (see :func:`_retired_outputs`),
#: so that no result of an earlier comparison stays next to the new ones.
COMPARE_OUTPUTS = (
    "matching.csv", "matching_chance.csv", "matching.png", "matching.svg", "top_objects.csv", "rsa.json",
    "cumulative_rsa.csv", "cumulative_rsa.png", "cumulative_rsa.svg",
    "relevance_human.csv", "relevance_dnn.csv", "most_relevant_human.csv", "most_relevant_dnn.csv",
    "agreement_different_dims.csv", "disagreements.csv", "triplet_relevance.npz",
    "relevance_summary.json",
)
SIMILARITY_OUTPUTS = ("human_similarity.npy", "dnn_similarity.npy")

#: Correlations that ``compare`` offers for its RSA (``rsa_method``, CLI ``--rsa-method``).
RSA_METHODS = ("pearson", "spearman")

#: The source that the manifest records for the object table of a DataFrame input, its index.
INDEX_SOURCE = "DataFrame index"


def _fixed_output_names() -> list[str]:
    """Return the names of the files a comparison may write besides the manifest and the image grids."""
    names = list(COMPARE_OUTPUTS)
    for name in SIMILARITY_OUTPUTS:
        names += [name, similarity_record_path(name).name]
    return names


def _output_names(out_dir: Path) -> list[Path]:
    """Return the paths in ``out_dir`` that a comparison writes, replaces or removes.

    These are the fixed names (whether or not they exist), the manifest and
    the image grids that exist in ``top_objects/``.
    """
    names = [*_fixed_output_names(), MANIFEST_NAME]
    return [out_dir / name for name in names] + sorted((out_dir / "top_objects").glob("pair_*.png"))


def _reject_inputs_among_outputs(inputs: dict[str, Any], out_dir: Path) -> None:
    """Raise ``ValueError`` if an input file is one that the comparison replaces or removes in ``out_dir``.

    An input such as ``--reference-rsm OUT/human_similarity.npy`` from an
    earlier comparison would otherwise be deleted by the rerun.
    """
    outputs = [path for path in _output_names(out_dir) if path.is_file()]
    for label, raw_path in inputs.items():
        path = Path(raw_path)
        if not path.is_file():
            continue
        for output in outputs:
            if is_same_file(path, output):
                sides = {"human": "the human input", "dnn": "the DNN input"}
                option = sides.get(label, "--" + label.replace("_", "-"))
                raise ValueError(
                    f"{option} {path} is an output of compare in {out_dir}, which this comparison "
                    "replaces or removes: copy it out of that folder and pass the copy, or choose "
                    "another -o"
                )


def _reject_paths_in_the_way(out_dir: Path, *, grids: bool) -> None:
    """Raise ``FileExistsError`` where something in ``out_dir`` would block the final moves.

    A folder named like an output file, or a file named ``top_objects`` when
    image grids are written (``grids``), would otherwise stop the comparison
    after all its work.
    """
    for name in [*_fixed_output_names(), MANIFEST_NAME]:
        path = out_dir / name
        if path.is_dir():
            raise FileExistsError(
                f"{path} is a folder, but compare writes a file there: move it away, or choose another -o"
            )
    grid_dir = out_dir / "top_objects"
    if grids and grid_dir.exists() and not grid_dir.is_dir():
        raise FileExistsError(
            f"{grid_dir} is a file, but compare writes its image grids into a folder there: move it "
            "away, or choose another -o"
        )


def _link_earlier_similarity(earlier: Path, staged: Path) -> None:
    """Make a saved similarity matrix of an earlier comparison, and its record, available in the stage.

    :func:`similarity_matrix_to_disk` then reuses it when its record matches.
    A hard link costs nothing, and a recomputation replaces the link in the
    stage, never the earlier file. Where links are not supported the file is copied.
    """
    import shutil

    for source, target in ((earlier, staged), (similarity_record_path(earlier), similarity_record_path(staged))):
        if not source.is_file():
            return
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def _retired_outputs() -> list[str]:
    """Return the glob patterns of the files of an earlier comparison that a rerun must not leave.

    With ``save_similarity`` the saved similarity matrices are new outputs
    too, so they replace the earlier ones instead of being removed.
    """
    return [*_fixed_output_names(), "top_objects/pair_*.png"]


@dataclass
class ComparisonResult:
    """Headline numbers of :func:`compare` (everything is also on disk).

    Attributes:
        rsa (BootstrapRSA): Human-DNN RSA with its interval.
        matchings (dict): :class:`~dimalign.analysis.matching.Matching` per method.
        cumulative (CumulativeRSA): The cumulative RSA curve.
        n_objects (int): Objects compared.
        outputs (dict): Output file names by role.
        chance (dict[str, np.ndarray]): Per matching method, the matched
            correlations of each row permutation of the DNN embedding, sorted
            in decreasing order, shape ``(chance_permutations, n_human)``.
    """

    rsa: BootstrapRSA
    matchings: dict
    cumulative: Any
    n_objects: int
    outputs: dict[str, Any]
    chance: dict[str, np.ndarray] = field(default_factory=dict)


def compare(
    human: str | os.PathLike | EmbeddingResult | np.ndarray | Any,
    dnn: str | os.PathLike | EmbeddingResult | np.ndarray | Any,
    out_dir: str | os.PathLike,
    *,
    objects: ObjectTable | None = None,
    triplets: np.ndarray | None = None,
    triplet_objects: ObjectTable | str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    decoding: Decoding | None = None,
    n_bootstrap: int = 1000,
    random_state: int = 0,
    top_k: int = 10,
    similarity_objects: int | None = None,
    cumulative_objects: int | None = None,
    reference: tuple[np.ndarray, ObjectTable] | None = None,
    save_similarity: bool = False,
    device: str = "cpu",
    inputs: dict[str, str | os.PathLike] | None = None,
    similarity: Callable[..., np.ndarray] | None = None,
    shared_objects: bool = False,
    chance_permutations: int = 10,
    rsa_method: str = "pearson",
) -> ComparisonResult:
    """Compare a human and a DNN embedding and write every result into ``out_dir``.

    Args:
        human (path | EmbeddingResult | np.ndarray | pd.DataFrame | estimator):
            Human run directory or embedding file, an array
            ``(n_objects, n_dims)``, or a fitted VICE or SPoSE. A DataFrame
            whose index is not the default ``0 .. n - 1`` has its index as
            object table, so its rows are matched to the other input's by
            that index, like a run's ``objects.tsv``.
        dnn (path | EmbeddingResult | np.ndarray | estimator): The DNN side,
            in the same forms.
        out_dir (str | os.PathLike): Output directory.
        objects (ObjectTable | None): Object table for each input that is
            neither a run directory with its own ``objects.tsv`` nor a
            DataFrame with a labelled index. When one input
            has no table at all, it names that input only. Otherwise it wins
            over the ``objects.tsv`` next to a plain embedding file (with a
            warning when they differ). When both inputs are plain files
            with an ``objects.tsv`` next to them, a table that differs from
            either is an error. An input without any table next to one
            with a table is an error, because rows are never matched by
            position when ids exist on one side.
        triplets (np.ndarray | None): Triplets for the jackknife relevance;
            None skips it. Their indices are rows of the human embedding
            unless ``triplet_objects`` names them.
        triplet_objects (ObjectTable | path | None): The object table (or its
            file) whose rows the triplet indices refer to, such as the
            ``objects.tsv`` of a ``dimalign simulate`` folder. The triplets
            are then matched to the human rows by object id.
        images (path | None): Image folder for the top-object grids: an
            object's image is its table ``source`` relative to this folder
            (the ``object_id`` itself when the source is empty), else
            ``<object_id>.jpg/.jpeg/.png``, else the first image in the
            subfolder ``<object_id>/``.
        decoding (Decoding | None): Background colour and EXIF handling of
            the images. None uses those recorded by the extraction behind
            ``human`` or ``dnn`` (see
            :func:`dimalign.features.recorded.recorded_decoding`), else
            ``dimalign extract``'s defaults.
        n_bootstrap (int): Bootstrap samples of the RSA.
        random_state (int): Seed of the bootstrap and of the object subset.
        top_k (int): Objects per list of each matched pair.
        similarity_objects (int | None): Compute the similarity matrices, the
            RSA and the cumulative RSA on a random subset of this many objects
            (the third object ``k`` of the similarity still runs over all
            objects). None uses all objects. The cumulative RSA rebuilds one
            matrix per DNN dimension, so this bounds its cost.
        cumulative_objects (int | None): A separate random subset for the
            cumulative RSA alone (its full-model correlation is then computed
            on that subset too). None uses the objects of the RSA.
        reference (tuple[np.ndarray, ObjectTable] | None): A ground-truth
            similarity matrix and its objects; the variance that each model's
            similarity explains in it is reported.
        save_similarity (bool): Also write both full similarity matrices as
            ``.npy`` (row blocks, memory-mapped).
        device (str): Torch device for similarities and the jackknife.
        inputs (dict | None): Input files to record in the manifest.
        similarity (Callable | None): Replaces
            :func:`dimalign.analysis.similarity.similarity_matrix` (tests).
        shared_objects (bool): Compare only the objects that both object
            tables list, such as the THINGS objects among a DNN's photos, and
            leave out the others (logged and counted in the manifest). The
            third object of each similarity then runs over these objects only.
            Both inputs need object tables. Triplet indices without
            ``triplet_objects`` stay rows of the whole human embedding.
        chance_permutations (int): Row permutations of the DNN embedding
            whose matched correlations give the chance level of the matching
            (``matching_chance.csv``). 0 skips it.
        rsa_method (str): Correlation of the RSA, its bootstrap, the
            cumulative RSA and the reference scores: ``"pearson"`` or
            ``"spearman"`` (average ranks for ties). The Spearman bootstrap
            ranks each resample anew, so it is much slower.

    Returns:
        ComparisonResult: Headline numbers.

    Raises:
        ValueError: For inputs that do not fit (different objects, tables on
            one side only, triplet indices out of range or a triplet that
            repeats an object, a reference matrix
            that is not square, not finite or constant) and for an embedding
            whose similarity is constant (equal off-diagonal dot products).
            These, missing images, an input file that is one of the outputs
            in ``out_dir`` and empty triplets are checked before anything is
            written, and the messages name the input. A failed call leaves an
            earlier comparison in ``out_dir`` whole.
        FileExistsError: If ``out_dir`` contains the output of another step, or
            is a folder that ``dimalign run`` owns (a study directory, a
            stage folder of a study, or a folder with a stage record).
    """
    from dimalign.analysis import matching as matching_module

    started = now_iso()
    out_dir = Path(out_dir)
    check_output_dir(out_dir, "compare")
    # The compare command runs this check before it loads the inputs; it is repeated here
    # for callers of the library. dimalign run compares into a hidden work folder, which it passes.
    from dimalign.report.pipeline import check_outside_study_folders

    check_outside_study_folders(out_dir, "compare")
    check_writable(out_dir)
    report_leftover_stages(out_dir)
    # A rerun replaces the files of an earlier comparison; in any other folder
    # a file of the same name is the user's and stays.
    check_unowned_files(
        out_dir, [path.relative_to(out_dir) for path in _output_names(out_dir) if path.name != MANIFEST_NAME],
        "compare",
    )
    resolve_device(device)
    _check_compare_settings(n_bootstrap, top_k, images, random_state)
    check_integer("chance_permutations", chance_permutations)
    if rsa_method not in RSA_METHODS:
        raise ValueError(
            f"rsa_method={rsa_method!r} is invalid (--rsa-method): use one of {', '.join(RSA_METHODS)}"
        )
    if chance_permutations < 0:
        raise ValueError(
            f"chance_permutations={chance_permutations} is invalid (--chance-permutations): use 0 or more"
        )
    if triplet_objects is not None and triplets is None:
        raise ValueError(
            "triplet_objects names the rows of triplets, but no triplets are given: pass the triplets "
            "too, or leave out triplet_objects"
        )
    if similarity is None:
        from dimalign.analysis.similarity import similarity_matrix as similarity

    if reference is not None:
        reference = (check_reference_matrix(*reference), reference[1])
    human_side, dnn_side = _load_side(human, "human"), _load_side(dnn, "DNN")
    (human_table, human_table_source), (dnn_table, dnn_table_source) = _choose_tables(human_side, dnn_side, objects)
    human_result, dnn_result = human_side.result, dnn_side.result
    _check_table_lengths(((human_side, human_table, human_table_source), (dnn_side, dnn_table, dnn_table_source)))
    pair = align_embeddings(
        human_result, dnn_result, human_objects=human_table, dnn_objects=dnn_table,
        table_sources=(human_table_source, dnn_table_source), shared_objects=shared_objects,
    )
    names = list(pair.objects.object_ids)
    n_objects = len(names)
    if n_objects < 3:
        # S_ij averages over a third object k, and a correlation needs at least 3 pairs.
        raise ValueError(
            f"the comparison needs at least 3 objects, but the embeddings have {n_objects}: the "
            "similarity of two objects is their odd-one-out probability against a third one; "
            "pass embeddings of 3 or more objects"
        )
    if top_k > n_objects:
        raise ValueError(f"top_k={top_k} is invalid for {n_objects} objects (--top-k): use 1..{n_objects}")
    subset = _similarity_subset(n_objects, similarity_objects, random_state)
    cumulative_subset = subset
    if cumulative_objects is not None:
        cumulative_subset = _similarity_subset(n_objects, cumulative_objects, random_state, "cumulative_objects")
    if triplets is not None:
        if triplet_objects is None and pair.human_rows is not None:
            # The indices are rows of the whole human embedding, whose table names them.
            triplet_objects = human_table
        if triplet_objects is not None:
            triplets = _triplets_in_human_order(triplets, triplet_objects, pair.objects, human_table is not None)
        _check_triplets(triplets, n_objects)
    if reference is not None:
        _reference_rows(pair, reference)
    # The subsets are drawn now, so a constant similarity on one of them is
    # found before anything is written to out_dir.
    for rows, scope in ((None, ""), (subset, " on the --similarity-objects subset"),
                        (cumulative_subset, " on the --cumulative-objects subset")):
        for side, embedding in ((human_side, pair.human), (dnn_side, pair.dnn)):
            _check_similarity_varies(embedding, side.name + scope, rows)
    input_paths = {
        **dict(inputs or {}),
        **({"human": human_result.path} if human_result.path else {}),
        **({"dnn": dnn_result.path} if dnn_result.path else {}),
    }
    _reject_inputs_among_outputs(input_paths, out_dir)
    _reject_paths_in_the_way(out_dir, grids=images is not None)
    logger.info(
        "comparing %d objects: human %d dimensions, DNN %d dimensions",
        n_objects, pair.human.shape[1], pair.dnn.shape[1],
    )
    _warn_many_dimensions(pair)
    outputs: dict[str, Any] = {}

    # Matching and the objects behind each pair are cheap, so they run before
    # anything is written, and the images of those objects are looked up now.
    # The correlations are computed once, so a constant dimension is warned about once.
    correlations = matching_module.correlate_columns(pair.human, pair.dnn, name_a="human", name_b="DNN")
    matchings = matching_module.match_all(pair.human, pair.dnn, correlations=correlations)
    primary = matchings.get("greedy", matchings["with_replacement"])
    chance = matching_module.chance_matchings(
        pair.human, pair.dnn, tuple(matchings), n_permutations=chance_permutations, random_state=random_state
    )
    top_table = matching_module.top_objects_table(pair.human, pair.dnn, primary, names, k=top_k)
    pictures = None
    if images is not None:
        if decoding is None:
            paths = [side for side in (human, dnn) if isinstance(side, (str, os.PathLike))]
            decoding = recorded_decoding(*paths) or Decoding()
        pictures = _read_grid_images(top_table, pair.objects, Path(images), decoding)

    # Every input is valid from here on. The outputs are written into a hidden
    # folder inside out_dir and moved over the earlier comparison only when all
    # are written, manifest.json last, so a failed or interrupted rerun leaves
    # the earlier comparison whole and removes what it wrote. Earlier files
    # that the new comparison does not write (relevance files, similarity
    # matrices, image grids) go aside with the replaced ones, so that no
    # result of an earlier comparison stays next to the new ones. A folder
    # that this call creates is removed again if a step fails, unless another
    # program wrote into it meanwhile.
    with staged_outputs(out_dir, retire=_retired_outputs()) as stage:
        matching_table = pd.concat([matching.to_frame() for matching in matchings.values()], ignore_index=True)
        _write_csv(matching_table, stage / "matching.csv")
        _write_csv(top_table, stage / "top_objects.csv")
        outputs.update(matching="matching.csv", top_objects="top_objects.csv")
        if chance_permutations:
            _write_csv(_chance_table(chance), stage / "matching_chance.csv")
            outputs["matching_chance"] = "matching_chance.csv"
        if pictures is not None:
            outputs["top_object_grids"] = _write_pair_grids(top_table, pictures, stage)

        # Similarity matrices, RSA with bootstrap, and the cumulative RSA.
        logger.info(
            "computing the human and DNN similarity matrices of %d objects",
            n_objects if subset is None else subset.size,
        )
        human_similarity = similarity(pair.human, objects=subset, device=device)
        dnn_similarity = similarity(pair.dnn, objects=subset, device=device)
        rsa_result = _named_bootstrap_rsa(
            human_similarity, dnn_similarity, (human_side.name, dnn_side.name), n_bootstrap, random_state,
            rsa_method,
        )
        order = matching_module.matched_order(primary, pair.dnn.shape[1], correlations)
        if cumulative_objects is None:
            human_reference, dnn_full = human_similarity, dnn_similarity
        else:
            human_reference = similarity(pair.human, objects=cumulative_subset, device=device)
            dnn_full = similarity(pair.dnn, objects=cumulative_subset, device=device)
        # The interval comes first, so that the curve's log line states the
        # number of dimensions for 95% only when the full r differs from 0.
        full_r_interval = _full_r_interval(
            rsa_result if cumulative_objects is None else None,
            (human_reference, dnn_full, n_bootstrap, random_state),
            rsa_method,
        )
        cumulative = matching_module.cumulative_rsa(
            human_reference, pair.dnn, order,
            similarity=lambda embedding: similarity(embedding, objects=cumulative_subset, device=device),
            full_similarity=dnn_full, r_full_interval=full_r_interval, method=rsa_method,
        )
        _warn_undefined_share(cumulative, n_bootstrap, rsa_result.ci_level)
        _write_csv(cumulative.to_frame(), stage / "cumulative_rsa.csv")
        outputs["cumulative_rsa"] = "cumulative_rsa.csv"

        summary = {
            **rsa_result.to_dict(),
            "n_objects": n_objects,
            "similarity_objects": "all" if subset is None else int(subset.size),
            "cumulative_objects": "all" if cumulative_subset is None else int(cumulative_subset.size),
            "variance_explained_in_human_similarity_by_dnn": rsa_result.r**2,
            "cumulative_matching": primary.method,
            "n_dnn_dims_for_95_percent": cumulative.n_dims_for_share,
            "cumulative_full_r": cumulative.r_full,
            "cumulative_full_r_ci_low": (cumulative.r_full_interval or (math.nan, math.nan))[0],
            "cumulative_full_r_ci_high": (cumulative.r_full_interval or (math.nan, math.nan))[1],
            "n_dnn_dims": int(pair.dnn.shape[1]),
            "n_human_dims": int(pair.human.shape[1]),
            "matched_r_max": float(primary.correlations.max()),
            "matched_r_median": float(np.median(primary.correlations)),
            **_chance_summary(chance[primary.method], chance_permutations),
        }
        if reference is not None:
            summary["reference"] = _reference_scores(pair, reference, similarity, device, rsa_method)
        write_json_atomic(stage / "rsa.json", summary)
        outputs["rsa"] = "rsa.json"

        if save_similarity:
            for label, embedding in (("human", pair.human), ("dnn", pair.dnn)):
                name = f"{label}_similarity.npy"
                _link_earlier_similarity(out_dir / name, stage / name)
                similarity_matrix_to_disk(embedding, stage / name, device=device)
                outputs[f"{label}_similarity"] = name

        from dimalign.analysis import figures_compare

        outputs["figures"] = figures_compare.write_comparison_figures(matchings, cumulative, stage)

        if triplets is not None:
            logger.info("explaining both models' choices on %d triplets by jackknife relevance", len(triplets))
            outputs.update(_write_relevance(
                pair, np.asarray(triplets), primary, matchings["with_replacement"], names, stage, device
            ))

        write_manifest(
            stage,
            step="compare",
            inputs=input_paths,
            settings={
                "n_bootstrap": n_bootstrap, "random_state": random_state, "top_k": top_k,
                "similarity_objects": similarity_objects, "cumulative_objects": cumulative_objects,
                "device": device,
                "matching_for_cumulative_rsa": primary.method, "triplets": triplets is not None,
                "images": str(images) if images is not None else None,
                **(decoding.to_json() if decoding is not None else {}),
                "decoding_source": decoding.source if decoding is not None else None,
                "human_objects": human_table_source, "dnn_objects": dnn_table_source,
                "shared_objects": shared_objects, "chance_permutations": chance_permutations,
                "rsa_method": rsa_method,
                "n_human_only_objects": pair.n_human_only, "n_dnn_only_objects": pair.n_dnn_only,
            },
            started=started,
            outputs={**outputs, "summary": summary},
        )

    if n_bootstrap == 0:
        interval = " (no bootstrap)"
    elif math.isnan(rsa_result.ci_low):
        interval = " (no bootstrap sample gave a correlation)"
    else:
        interval = (
            f", {100 * rsa_result.ci_level:.0f}% interval [{rsa_result.ci_low:.3f}, {rsa_result.ci_high:.3f}]"
        )
    n_for_share = cumulative.n_dims_for_share
    if not cumulative.share_defined:
        share_text = f"no share of the full r² is meaningful, because {_undefined_share_reason(cumulative, rsa_result)}"
    elif n_for_share is None:
        share_text = "95% of the full r² not reached by any prefix of DNN dimensions"
    else:
        share_text = f"{count_of(n_for_share, 'DNN dimension')} for 95% of the full r²"
    statistic = "r" if rsa_method == "pearson" else "Spearman rho"
    logger.info(
        "human-DNN RSA %s = %.3f%s; matched r up to %.3f; %s",
        statistic, rsa_result.r, interval, primary.correlations.max(), share_text,
    )
    if chance_permutations:
        _report_chance(primary, chance[primary.method])
    return ComparisonResult(rsa_result, matchings, cumulative, n_objects, outputs, chance)


def _warn_many_dimensions(pair: AlignedPair) -> None:
    """Warn for each embedding with more than half as many dimensions as compared objects."""
    from dimalign.embedding.base import MAX_DIMENSIONS_PER_OBJECT

    n_objects = pair.human.shape[0]
    for label, embedding in (("human", pair.human), ("DNN", pair.dnn)):
        n_dims = embedding.shape[1]
        if n_dims > MAX_DIMENSIONS_PER_OBJECT * n_objects:
            warn(
                f"the {label} embedding has {n_dims} dimensions for {n_objects} compared objects, so its "
                "dimensions are poorly determined and matching finds high correlations by chance alone: "
                "read the matched correlations against their chance level (matching_chance.csv), and "
                "compare more objects or an embedding with fewer dimensions (dimalign fit --n-dims)",
                UserWarning,
            )


def _chance_table(chance: dict[str, np.ndarray]) -> pd.DataFrame:
    """Return the chance level of each rank and method: the mean and the maximum over the permutations."""
    frames = [
        pd.DataFrame({
            "rank": np.arange(1, values.shape[1] + 1),
            "method": method,
            "r_chance_mean": values.mean(axis=0),
            "r_chance_max": values.max(axis=0),
        })
        for method, values in chance.items()
    ]
    return pd.concat(frames, ignore_index=True)


def _chance_summary(values: np.ndarray, n_permutations: int) -> dict[str, Any]:
    """Return the chance level of ``matched_r_max`` and ``matched_r_median`` for ``rsa.json``."""
    if not n_permutations:
        return {"chance_permutations": 0, "matched_r_max_chance": None, "matched_r_median_chance": None}
    return {
        "chance_permutations": n_permutations,
        "matched_r_max_chance": float(values.max(axis=1).mean()),
        "matched_r_median_chance": float(np.median(values, axis=1).mean()),
    }


def _report_chance(primary: Any, values: np.ndarray) -> None:
    """Log the chance level of the matched correlations, and warn when the real median does not exceed it."""
    medians = np.median(values, axis=1)
    real_median = float(np.median(primary.correlations))
    logger.info(
        "%s matching: matched r median %.3f, max %.3f; chance level from %s of the DNN rows: "
        "median %.3f, max %.3f (means over the permutations)",
        primary.method, real_median, float(primary.correlations.max()),
        count_of(values.shape[0], "permutation"), float(medians.mean()), float(values.max(axis=1).mean()),
    )
    if real_median <= medians.max():
        warn(
            f"the median matched r {real_median:.3f} of the {primary.method} matching is not above the "
            f"median of every one of {count_of(values.shape[0], 'row permutation')} of the DNN embedding "
            f"(up to {float(medians.max()):.3f}), so the matched pairs are at chance level as a whole: "
            "compare more objects, or fit embeddings with fewer dimensions",
            UserWarning,
        )


def _undefined_share_reason(cumulative: Any, rsa_result: BootstrapRSA) -> str:
    """Say why the share of the full DNN model's r² means nothing, as the warning of the cumulative RSA does."""
    if not cumulative.r_full > 0:
        return f"the full DNN model's r = {cumulative.r_full:.3f} is not above 0"
    low, high = cumulative.r_full_interval
    if math.isnan(low):
        return "no bootstrap sample of the full DNN model's r gave a correlation"
    return (
        f"the {100 * rsa_result.ci_level:.0f}% interval [{low:.3f}, {high:.3f}] of the full DNN model's r "
        "contains 0"
    )


@dataclass
class _Side:
    """One loaded input of :func:`compare` and the object table found with it.

    Attributes:
        label (str): ``"human"`` or ``"DNN"``.
        result (EmbeddingResult): The embedding.
        location (Path | None): Where it was loaded from.
        own (ObjectTable | None): The ``objects.tsv`` of a run directory, the
            one lying next to a plain embedding file, or the index of a
            DataFrame.
        own_file (Path | None): The path of ``own``; None for a DataFrame index.
        from_index (bool): Whether ``own`` is the index of a DataFrame.
    """

    label: str
    result: EmbeddingResult
    location: Path | None
    own: ObjectTable | None
    own_file: Path | None
    from_index: bool = False

    @property
    def is_run(self) -> bool:
        """Whether the input is a run directory with its own ``objects.tsv``."""
        return self.own is not None and self.location is not None and self.location.is_dir()

    @property
    def names_own_rows(self) -> bool:
        """Whether the input's own table names its rows for sure: a run directory or a DataFrame index."""
        return self.is_run or self.from_index

    @property
    def own_source(self) -> str:
        """Where ``own`` came from, as the manifest records it."""
        return INDEX_SOURCE if self.from_index else str(self.own_file)

    @property
    def name(self) -> str:
        """The input as errors name it: ``"the DNN embedding plain.npy"``."""
        kind = "run" if self.location is not None and self.location.is_dir() else "embedding"
        return f"the {self.label} {kind}" + (f" {self.location}" if self.location is not None else "")


def _full_r_interval(
    rsa_result: BootstrapRSA | None, bootstrap_inputs: tuple, method: str = "pearson"
) -> tuple[float, float] | None:
    """Return the bootstrap interval of the cumulative curve's full r.

    Args:
        rsa_result (BootstrapRSA | None): The RSA of the same objects, whose
            interval is reused; None when the curve has its own subset.
        bootstrap_inputs (tuple): ``(human_similarity, dnn_similarity,
            n_bootstrap, random_state)`` of the curve's objects, bootstrapped
            when ``rsa_result`` is None.
        method (str): ``"pearson"`` or ``"spearman"``.

    Returns:
        tuple[float, float] | None: The interval (NaN when no sample gave a
        correlation), or None with ``n_bootstrap`` 0.
    """
    human_similarity, dnn_similarity, n_bootstrap, random_state = bootstrap_inputs
    if n_bootstrap == 0:
        return None
    if rsa_result is None:
        rsa_result = bootstrap_rsa(
            human_similarity, dnn_similarity, n_bootstrap=n_bootstrap, random_state=random_state, method=method
        )
    return (rsa_result.ci_low, rsa_result.ci_high)


def _warn_undefined_share(cumulative: Any, n_bootstrap: int, ci_level: float) -> None:
    """Warn, naming the outputs, when the interval of the full r contains 0 or could not be computed."""
    interval = cumulative.r_full_interval
    if cumulative.share_defined or not cumulative.r_full > 0 or interval is None:
        return
    if math.isnan(interval[0]):
        warn(
            f"none of the {n_bootstrap} bootstrap samples of the full DNN model's r (r = "
            f"{cumulative.r_full:.3f}) gave a correlation, so it is unknown whether that r differs "
            "from 0 and no share of its r² is meaningful: n_dnn_dims_for_95_percent is null and "
            "share_of_full_r2 is empty. Compare more objects (--cumulative-objects, "
            "--similarity-objects)",
            UserWarning,
        )
        return
    warn(
        f"the {100 * ci_level:.0f}% interval "
        f"[{interval[0]:.3f}, {interval[1]:.3f}] of the full DNN model's r contains 0 (r = "
        f"{cumulative.r_full:.3f}), so no share of its r² is meaningful: "
        "n_dnn_dims_for_95_percent is null and share_of_full_r2 is empty",
        UserWarning,
    )


def _named_bootstrap_rsa(
    human_similarity: np.ndarray, dnn_similarity: np.ndarray, names: tuple[str, str], n_bootstrap: int, random_state: int,
    method: str = "pearson",
) -> BootstrapRSA:
    """Run :func:`bootstrap_rsa`, naming the input whose similarity matrix is constant."""
    from dimalign.analysis.rsa import ConstantInputError

    try:
        return bootstrap_rsa(
            human_similarity, dnn_similarity, n_bootstrap=n_bootstrap, random_state=random_state, method=method
        )
    except ConstantInputError as error:
        constant = names[error.input_index or 0]
        raise ValueError(
            f"the similarity matrix of {constant} is constant over the compared objects, so no RSA "
            f"can be computed ({error})"
        ) from error


def _load_side(side: str | os.PathLike | EmbeddingResult | np.ndarray | Any, label: str) -> _Side:
    """Load one embedding with the ``objects.tsv`` of its run directory or of its folder."""
    if isinstance(side, (str, os.PathLike)):
        result = load_embedding(side)
        location = Path(side)
    elif index_object_ids(side) is not None:
        result = as_embedding_result(side, f"the {label} embedding")
        return _Side(label, result, None, ObjectTable(index_object_ids(side)), None, from_index=True)
    else:
        result = as_embedding_result(side, f"the {label} embedding")
        location = Path(result.path) if result.path is not None else None
    if location is None:
        return _Side(label, result, None, None, None)
    own_file = location / OBJECT_TABLE_NAME if location.is_dir() else location.parent / OBJECT_TABLE_NAME
    if not own_file.is_file():
        return _Side(label, result, location, None, None)
    return _Side(label, result, location, read_object_table(own_file), own_file)


def _choose_tables(
    human: _Side, dnn: _Side, objects: ObjectTable | None
) -> list[tuple[ObjectTable | None, str | None]]:
    """Choose the object table of each side, and where it came from.

    A run directory's rows follow its own ``objects.tsv``. So the explicit
    table (``objects=``, CLI ``--objects``) applies only to the other sides.
    When one side has no table at all, the explicit table names that side
    alone, and a plain embedding file keeps the ``objects.tsv`` next to it.
    When both sides have a table, the explicit one overrides the neighbouring
    ``objects.tsv`` of a plain file, which may belong to another file in the
    folder, with a warning when the two differ.

    Returns:
        list: ``(table, source)`` for the human and the DNN side; ``source`` is
        a path, ``"objects argument"`` or None.

    Raises:
        ValueError: If one side has object ids and the other has none, so the
            rows could only be matched by position, if the explicit table
            applies to neither side and differs from both run tables, or if
            both sides are plain files with an ``objects.tsv`` next to them
            (one shared or one each) and the explicit table differs from one.
    """
    _reject_objects_for_own_tables(human, dnn, objects)
    chosen = []
    # When an input has no table of its own, the explicit table names that
    # input (as the error below suggests), so it must not also rename a plain file
    # whose own table could name its rows: that file would then be matched to
    # the other by position.
    some_side_without_table = human.own is None or dnn.own is None
    for side in (human, dnn):
        if side.names_own_rows or (side.own is not None and (objects is None or some_side_without_table)):
            chosen.append((side.own, side.own_source))
            continue
        if objects is not None and side.own is not None and tuple(side.own.object_ids) != tuple(objects.object_ids):
            warn(
                f"{side.name} is read with the explicit object table (objects=, CLI --objects), not "
                f"with {side.own_file} in the same folder, which differs: {_table_difference(side.own, objects)}",
                UserWarning,
            )
        chosen.append((objects, "objects argument") if objects is not None else (None, None))

    if objects is not None and human.names_own_rows and dnn.names_own_rows:
        own_ids = {tuple(human.own.object_ids), tuple(dnn.own.object_ids)}
        tables = (
            "objects.tsv" if human.is_run and dnn.is_run
            else "object table (a run's objects.tsv or a DataFrame index)"
        )
        if tuple(objects.object_ids) not in own_ids:
            raise ValueError(
                f"{human.name} and {dnn.name} both have their own {tables}, so the object table passed "
                "(objects=, CLI --objects) applies to neither, and it differs from both: "
                f"{_table_difference(human.own, objects)}. Leave out --objects"
            )
        logger.info("both inputs have their own %s; the explicit object table is not used", tables)

    for (table, _), (other_table, other_source), side in ((chosen[0], chosen[1], human), (chosen[1], chosen[0], dnn)):
        if table is None and other_table is not None:
            fix = f"pass the table that names the {side.label} rows (objects=, CLI --objects)"
            if other_source == INDEX_SOURCE:
                # A DataFrame filtered or sorted in pandas keeps its integer index, which then names its rows.
                other_label = "DNN" if side is human else "human"
                fix += (
                    f", pass the {side.label} embedding as a DataFrame with such an index, or call "
                    f"reset_index(drop=True) on the {other_label} DataFrame to pair the rows by position"
                )
            raise ValueError(
                f"{side.name} has no object table, but the other input has one ({other_source}), so "
                f"the {side.label} rows cannot be matched to it by object id: {fix}"
            )
    return chosen


def _reject_objects_for_own_tables(human: _Side, dnn: _Side, objects: ObjectTable | None) -> None:
    """Raise ``ValueError`` if an explicit table differs from the ``objects.tsv`` of a plain file when both have one.

    When both inputs are plain embedding files with an ``objects.tsv`` next to
    them, an explicit table would rename both sides and so match their rows
    by position, or it could be meant for one side only. Either way the call
    is ambiguous, so it is rejected unless the table equals each side's own.
    """
    if objects is None or human.names_own_rows or dnn.names_own_rows:
        return
    if human.own is None or dnn.own is None:
        return
    differing = [side for side in (human, dnn) if tuple(side.own.object_ids) != tuple(objects.object_ids)]
    if not differing:
        return

    if human.own_file.resolve() == dnn.own_file.resolve():
        raise ValueError(
            f"{human.name} and {dnn.name} share the object table {human.own_file}, and the object table "
            f"passed (objects=, CLI --objects) differs from it: {_table_difference(human.own, objects)}. "
            "It is unclear which side the passed table names. To match the rows by object id, put each "
            "embedding file in its own folder with an objects.tsv that names its rows, and leave out "
            f"--objects. To rename both sides, replace {human.own_file} with the passed table. To use "
            "the shared table for both, leave out --objects"
        )
    differences = "; ".join(
        f"{side.own_file}: {_table_difference(side.own, objects)}" for side in differing
    )
    raise ValueError(
        f"{human.name} and {dnn.name} each have an object table next to them ({human.own_file} and "
        f"{dnn.own_file}), and the object table passed (objects=, CLI --objects) differs from "
        f"{'both' if len(differing) == 2 else 'one of them'} ({differences}). Used for both sides, it "
        "would match their rows by position, not by object id. To match the rows by object id with "
        "their own tables, leave out --objects. To rename a side, replace its objects.tsv with the "
        "passed table"
    )


def _check_table_lengths(sides: Sequence[tuple[_Side, ObjectTable | None, str | None]]) -> None:
    """Raise ``ValueError`` if a chosen object table does not list one object per row of its side.

    Args:
        sides: ``(side, table, source)`` per input, as :func:`_choose_tables`
            returns the table and its source.
    """
    for side, table, source in sides:
        if table is None or len(table) == side.result.n_objects:
            continue
        named = "the object table passed (objects=, CLI --objects)" if source == "objects argument" else source
        raise ValueError(
            f"{named} lists {len(table)} objects but {side.name} has {side.result.n_objects} rows: "
            f"the table must name every row of the {side.label} embedding, in order"
        )


def _table_difference(first: ObjectTable, second: ObjectTable) -> str:
    """Describe the first difference of two object tables in a few words."""
    if len(first) != len(second):
        return f"{len(first)} objects against {len(second)}"
    row = next(
        index for index, (a, b) in enumerate(zip(first.object_ids, second.object_ids)) if a != b
    )
    return f"row {row} is {first.object_ids[row]!r} in one and {second.object_ids[row]!r} in the other"


def _similarity_subset(
    n_objects: int, size: int | None, random_state: int, name: str = "similarity_objects"
) -> np.ndarray | None:
    """Draw ``size`` objects, or return None for all; ``name`` is the setting that errors and logs name."""
    if size is not None:
        check_integer(name, size)
    if size is not None and size >= n_objects:
        logger.info("%s=%d covers all %d objects: using every object", name, size, n_objects)
    if size is None or size >= n_objects:
        return None
    if size < 3:
        option = "--" + name.replace("_", "-")
        raise ValueError(f"{name}={size} is invalid ({option}): use at least 3")
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n_objects, size=size, replace=False))


def _check_seed(random_state: Any) -> None:
    """Raise ValueError unless ``random_state`` is an integer seed, which the manifest can record."""
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise ValueError(
            f"random_state must be an integer seed, got {random_state!r}: the bootstrap is "
            "repeatable only from a fixed seed"
        )


def _check_compare_settings(
    n_bootstrap: int, top_k: int, images: str | os.PathLike | None, random_state: int
) -> None:
    # The types first, so that the range checks below compare numbers.
    check_integer("n_bootstrap", n_bootstrap)
    check_integer("top_k", top_k)
    _check_seed(random_state)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap={n_bootstrap} is invalid (--bootstrap): use 0 (no interval) or more")
    if random_state < 0:
        raise ValueError(f"random_state={random_state} is invalid (--seed): use 0 or more")
    if top_k < 1:
        raise ValueError(f"top_k={top_k} is invalid (--top-k): use 1 or more")
    if images is not None and not Path(images).is_dir():
        raise FileNotFoundError(f"image folder {images} not found")


def _check_triplets(triplets: np.ndarray, n_objects: int) -> None:
    array = np.asarray(triplets)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"triplets must have shape (n, 3), got {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(
            f"no triplets (shape {array.shape}), so there is no choice to explain: pass at least "
            "one triplet, or leave out the triplets (--triplets) to skip the jackknife relevance"
        )
    # Whole floats (np.loadtxt) pass. A fractional or NaN value, a negative
    # index and a row that repeats an object are named, before any slow step.
    from dimalign.io.triplets import validate_triplets

    array = validate_triplets(array, None, source="triplets")
    if array.size and (array.min() < 0 or array.max() >= n_objects):
        raise ValueError(
            f"triplet indices range from {array.min()} to {array.max()}, but the compared "
            f"embeddings have {n_objects} objects (valid indices 0 to {n_objects - 1})"
        )


def _triplets_in_human_order(
    triplets: np.ndarray, triplet_objects: ObjectTable | str | os.PathLike, objects: ObjectTable, has_ids: bool
) -> np.ndarray:
    """Convert triplet indices from the rows of ``triplet_objects`` to the human rows, by object id.

    Args:
        triplets (np.ndarray): Shape ``(n, 3)``, indices into ``triplet_objects``.
        triplet_objects (ObjectTable | path): The table the indices refer to.
        objects (ObjectTable): The compared objects in the human row order.
        has_ids (bool): Whether ``objects`` comes from object tables. Without
            tables the rows are named by position, so the triplet rows are
            taken as the same objects when the counts agree.

    Raises:
        ValueError: If the triplets name objects that are not compared, or,
            without object tables, the counts differ. The message names the table.
    """
    from dimalign.io.triplets import validate_triplets

    source = "the triplet object table"
    if not isinstance(triplet_objects, ObjectTable):
        source = str(triplet_objects)
        triplet_objects = read_object_table(triplet_objects)
    array = validate_triplets(np.asarray(triplets), len(triplet_objects), source="triplets")
    if not has_ids:
        if len(triplet_objects) != len(objects):
            raise ValueError(
                f"{source} lists {len(triplet_objects)} objects, but the compared embeddings have "
                f"{len(objects)} rows and no object tables, so the triplet indices cannot be matched to "
                "their rows: put an objects.tsv that names the rows next to each embedding, or pass --objects"
            )
        return array
    lookup = {name: row for row, name in enumerate(objects.object_ids)}
    used_ids = {triplet_objects.object_ids[index] for index in np.unique(array).tolist()}
    missing = sorted(name for name in used_ids if name not in lookup)
    if missing:
        raise ValueError(
            f"{source} names {len(missing)} objects of the triplets that the compared embeddings do not "
            f"contain: {missing[:20]}; pass triplets of the compared objects, or compare embeddings that "
            "contain these objects"
        )
    rows = np.array([lookup.get(name, -1) for name in triplet_objects.object_ids], dtype=np.int64)
    converted = rows[array]
    if not np.array_equal(converted, array):
        logger.info("matched the %d triplets of %s to the human rows by object id", len(array), source)
    return converted


def _dot_product_spread(embedding: np.ndarray, block_size: int = 1024) -> tuple[float, float]:
    """Return the smallest and largest off-diagonal dot product ``y_i · y_j``, in row blocks.

    Costs ``O(n^2 d)`` time and ``O(block_size n)`` memory, against the
    ``O(n^3)`` of a similarity matrix.
    """
    n_objects = embedding.shape[0]
    low, high = math.inf, -math.inf
    for start in range(0, n_objects, block_size):
        block = embedding[start : start + block_size] @ embedding.T
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = np.nan
        low, high = min(low, float(np.nanmin(block))), max(high, float(np.nanmax(block)))
    return low, high


def _outside_spread(embedding: np.ndarray, rows: np.ndarray, block_size: int = 1024) -> tuple[float, float]:
    """Compare the dot products of the ``rows`` objects with every object outside them.

    Returns:
        tuple[float, float]: The largest spread over ``rows`` of ``y_i · y_k``
        for one outside object ``k``, and the largest absolute ``y_i · y_k``.
    """
    outside = np.setdiff1d(np.arange(embedding.shape[0]), rows)
    spread, largest = 0.0, 0.0
    for start in range(0, outside.size, block_size):
        block = embedding[rows] @ embedding[outside[start : start + block_size]].T
        spread = max(spread, float(np.ptp(block, axis=0).max()))
        largest = max(largest, float(np.abs(block).max()))
    return spread, largest


def _check_similarity_varies(embedding: np.ndarray, name: str, rows: np.ndarray | None = None) -> None:
    """Raise if an embedding predicts the same similarity for every pair of objects.

    ``S_ij`` depends only on the off-diagonal dot products, so when they are
    all equal (every row the same, all rows zero, or rows with no dimension in
    common) the similarity matrix is constant and its RSA undefined. The
    tolerance is that of :func:`dimalign.analysis.rsa.correlate_vectors`,
    relative to the largest dot product or to 1, whichever is larger.

    For a subset ``rows`` the third object ``k`` still runs over all objects.
    Equal dot products within the subset then make its similarity constant
    only when every subset object also has the same dot product with each
    object outside it. Otherwise ``S_ij`` varies through those third objects.
    """
    from dimalign.analysis.rsa import CONSTANT_TOLERANCE

    embedding = np.asarray(embedding, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        low, high = _dot_product_spread(embedding if rows is None else embedding[rows])
    if not math.isfinite(high):
        # A dot product above about 1.8e308 is inf, and every similarity built from it is NaN.
        raise ValueError(
            f"{name} has dot products beyond float64 (largest weight {float(np.abs(embedding).max()):.3g}), "
            "so its similarities are undefined: check that it is the right file, or divide its "
            "weights by a common factor"
        )
    # The similarity depends on exp(s_ab), so dot products that differ by less
    # than a few epsilon in absolute terms (weights of about 1e-7) give exp()
    # values equal to float64 precision, whatever their relative spread.
    epsilon = CONSTANT_TOLERANCE * np.finfo(np.float64).eps
    if high - low > epsilon * max(1.0, abs(low), abs(high)):
        return
    if rows is None:
        raise ValueError(
            f"{name} predicts the same similarity for every pair of objects, because every "
            f"off-diagonal dot product is {high:.6g} (rows all equal, all zero, or without a "
            "shared dimension), so no RSA can be computed: check that it is the right file"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        spread, largest = _outside_spread(embedding, rows)
    if spread <= epsilon * max(1.0, abs(high), largest):
        raise ValueError(
            f"{name} predicts the same similarity for every pair of objects, because every "
            f"off-diagonal dot product among them is {high:.6g} and each of them has the same dot "
            "product with every other object (rows all equal, all zero, or without a shared "
            "dimension), so no RSA can be computed: check that it is the right file"
        )


def check_reference_matrix(
    matrix: np.ndarray, table: ObjectTable, source: str | os.PathLike = "the reference matrix"
) -> np.ndarray:
    """Check a ground-truth similarity matrix before any slow step and return it as float64.

    Args:
        matrix (np.ndarray): Shape ``(n, n)``, similarities (not dissimilarities).
        table (ObjectTable): Its ``n`` objects in row order.
        source (str | os.PathLike): Name of the matrix in errors, such as its file.

    Returns:
        np.ndarray: The matrix as float64, shape ``(n, n)``.

    Raises:
        ValueError: If the matrix is not square, does not fit the table,
            has NaN or inf off the diagonal (the message lists the first
            ``(row, column)`` positions), or is constant above the diagonal
            (within the rounding tolerance of
            :func:`dimalign.analysis.rsa.correlate_vectors`).
    """
    array = np.asarray(matrix)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{source} must contain numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"{source} must be a square similarity matrix, got shape {array.shape}")
    if array.shape[0] != len(table):
        raise ValueError(
            f"{source} has shape {array.shape} but its object table lists {len(table)} objects"
        )
    bad = ~np.isfinite(array)
    np.fill_diagonal(bad, False)
    if bad.any():
        positions = [(int(row), int(column)) for row, column in np.argwhere(bad)[:10]]
        raise ValueError(
            f"{source} contains NaN or inf at {int(bad.sum())} positions, the first (row, column) "
            f"{positions}; fill or remove those objects first"
        )
    from dimalign.analysis.rsa import CONSTANT_TOLERANCE, upper_triangle

    values = upper_triangle(array)
    # Values near the float maximum with both signs have an infinite spread, which is not constant.
    with np.errstate(over="ignore"):
        spread = float(np.ptp(values)) if values.size else 0.0
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    if spread <= CONSTANT_TOLERANCE * np.finfo(np.float64).eps * largest:
        first = float(values[0]) if values.size else math.nan
        raise ValueError(
            f"{source} has the same value {first:.6g} at every position above the diagonal, so "
            "no correlation with it can be computed: pass a similarity matrix whose entries vary"
        )
    return array


def _warn_if_asymmetric(matrix: np.ndarray, source: str | os.PathLike) -> None:
    """Warn, naming the largest difference, when a finite square matrix is not symmetric.

    Only the entries above the diagonal enter the RSA, so those below would be ignored.
    """
    difference = np.abs(matrix - matrix.T)
    np.fill_diagonal(difference, 0.0)
    difference[~np.isfinite(difference)] = 0.0
    largest = float(difference.max()) if difference.size else 0.0
    scale = float(np.max(np.abs(matrix[np.isfinite(matrix)]))) if difference.size else 0.0
    if largest <= _ASYMMETRY_TOLERANCE * scale:
        return
    row, column = sorted(int(index) for index in np.unravel_index(np.argmax(difference), difference.shape))
    warn(
        f"{source} is not symmetric: the largest difference is {largest:.6g} at (row, column) "
        f"({row}, {column}), {matrix[row, column]:.6g} against {matrix[column, row]:.6g} at "
        f"({column}, {row}). Only the entries above the diagonal are used: check that it is a "
        "similarity matrix, or pass (M + M.T) / 2",
        UserWarning,
    )


def _reference_rows(pair: AlignedPair, reference: tuple[np.ndarray, ObjectTable]) -> np.ndarray:
    """Return the rows of the reference objects in ``pair`` (the matrix is already checked)."""
    matrix, table = reference
    compared = set(pair.objects.object_ids)
    missing = [name for name in table.object_ids if name not in compared]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(table)} reference objects are not in the compared embeddings: "
            f"{missing[:20]}; pass a reference matrix (--reference-rsm, --reference-objects) of "
            "objects that both embeddings contain"
        )
    return pair.objects.index_of(table.object_ids)


# Both models must correlate below this with the reference matrix for the
# warning that it may be a dissimilarity matrix. Correlations near 0 of either
# sign are what unrelated matrices give, and a 1 - RDM mix-up gives r well below it.
_DISSIMILARITY_WARNING_R = -0.1

# Relative asymmetry, of the largest absolute entry, above which a reference
# matrix is reported as not symmetric. Float32 rounding stays below it.
_ASYMMETRY_TOLERANCE = 1e-6


def _reference_scores(
    pair: AlignedPair, reference: tuple[np.ndarray, ObjectTable], similarity: Callable[..., np.ndarray], device: str,
    method: str = "pearson",
) -> dict[str, Any]:
    """Variance explained by each model's similarity in a ground-truth matrix of a subset of objects."""
    from dimalign.analysis.rsa import rsa

    matrix, table = reference
    matrix = np.asarray(matrix, dtype=np.float64)
    _warn_if_asymmetric(matrix, "the reference matrix (--reference-rsm)")
    rows = _reference_rows(pair, reference)
    human_r = float(rsa(similarity(pair.human, objects=rows, device=device), matrix, method=method))
    dnn_r = float(rsa(similarity(pair.dnn, objects=rows, device=device), matrix, method=method))
    if human_r < _DISSIMILARITY_WARNING_R and dnn_r < _DISSIMILARITY_WARNING_R:
        # r² hides the sign, so a dissimilarity matrix would score like a similarity matrix.
        warn(
            f"the reference matrix correlates negatively with both models' similarities (human "
            f"r = {human_r:.3f}, DNN r = {dnn_r:.3f}); it may be a dissimilarity matrix (RDM): "
            "pass 1 - RDM as --reference-rsm",
            UserWarning,
        )
    return {
        "n_objects": len(table),
        "human_r": human_r,
        "human_r2": human_r**2,
        "dnn_r": dnn_r,
        "dnn_r2": dnn_r**2,
    }


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)


# Side of the square each picture of a top-object grid is drawn into, in pixels.
_GRID_CELL_SIZE = 128


def _read_grid_images(top_table: pd.DataFrame, objects: ObjectTable, images: Path,
                      decoding: Decoding) -> dict[int, Any]:
    """Decode the image of every object in ``top_table``, shrunk to a grid cell, by its row.

    Every file is found and decoded here, before anything is written, so a
    missing or damaged image stops the comparison before its slow steps.

    Raises:
        FileNotFoundError: Listing the objects without an image.
        ValueError: Listing the image files that cannot be decoded.
    """
    from dimalign.interpret.grid_images import load_grid_images

    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} not found")
    # An id without a source is also tried as a path relative to the folder,
    # because dimalign extract names objects by their relative image paths.
    paths = {
        row: find_image(images, objects.object_ids[row], objects.sources[row] or objects.object_ids[row])
        for row in sorted(set(top_table["object_index"].tolist()))
    }
    missing = [objects.object_ids[row] for row, path in paths.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} objects have no image under {images}: {missing[:20]}; name images "
            "<object_id>.jpg, or fill the source column of the object table with image paths "
            "relative to the folder"
        )
    return load_grid_images(paths, _GRID_CELL_SIZE, decoding)


def _write_pair_grids(top_table: pd.DataFrame, pictures: dict[int, Any], out_dir: Path) -> list[str]:
    """Draw one image grid per matched pair and group (both, human only, DNN only).

    ``pictures`` maps each object row of ``top_table`` to its decoded image (:func:`_read_grid_images`).
    """
    from dimalign.interpret.grid_images import GridCell, compose_grid

    grid_dir = out_dir / "top_objects"
    grid_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (rank, group), rows in top_table.groupby(["pair_rank", "group"], sort=True):
        cells = [GridCell(pictures[row.object_index], str(row.object_id)) for row in rows.itertuples()]
        first = rows.iloc[0]
        title = (
            f"pair {rank}: human dim {first.human_dim}, DNN dim {first.dnn_dim} "
            f"(r = {first.r:.2f}), {group.replace('_', ' ')}"
        )
        grid = compose_grid(cells, n_cols=min(5, len(cells)), title=title, cell_size=_GRID_CELL_SIZE)
        name = f"pair_{rank:02d}_{group}.png"
        with atomic_path(grid_dir / name) as temporary:
            grid.save(temporary)
        written.append(f"top_objects/{name}")
    logger.info("wrote %d top-object grids to %s", len(written), grid_dir)
    return written


def _write_relevance(
    pair: AlignedPair, triplets: np.ndarray, primary: Any, best: Any, names: Sequence[str], out_dir: Path,
    device: str,
) -> dict[str, str]:
    from dimalign.analysis import relevance

    comparison = relevance.compare_decisions(pair.human, pair.dnn, triplets, device=device)
    # Each human dimension's best DNN dimension (``best``, the matching with
    # replacement) decides whether two dimensions correspond.
    human_to_dnn = np.empty(pair.human.shape[1], dtype=np.int64)
    human_to_dnn[best.human_dims] = best.dnn_dims

    files = {
        "relevance_human": ("relevance_human.csv", comparison.human.by_dimension()),
        "relevance_dnn": ("relevance_dnn.csv", comparison.dnn.by_dimension()),
        "agreement_different_dims": (
            "agreement_different_dims.csv",
            relevance.agreement_on_different_dimensions(comparison, human_to_dnn, names=names),
        ),
        "disagreements": ("disagreements.csv", relevance.largest_disagreements(comparison, names=names)),
    }
    # Per-triplet most relevant dimension of each side, in the CSV layout that
    # `dimalign labels summarize --relevance` reads. That reader accepts
    # dimensions only, so triplets without a single most relevant one are left out.
    for side, result in (("human", comparison.human), ("dnn", comparison.dnn)):
        assigned = np.flatnonzero(result.most_relevant != relevance.NO_DIMENSION)
        files[f"most_relevant_{side}"] = (
            f"most_relevant_{side}.csv",
            pd.DataFrame({
                "triplet_index": assigned,
                "most_relevant_dim": np.asarray(result.most_relevant[assigned], dtype=np.int64),
            }),
        )
    for filename, frame in files.values():
        _write_csv(frame, out_dir / filename)
    with atomic_path(out_dir / "triplet_relevance.npz") as temporary:
        np.savez_compressed(
            temporary,
            triplets=comparison.triplets,
            human_choice=comparison.human_choice,
            dnn_choice=comparison.dnn_choice,
            human_probabilities=comparison.human_probabilities,
            dnn_probabilities=comparison.dnn_probabilities,
            human_most_relevant=comparison.human.most_relevant,
            dnn_most_relevant=comparison.dnn.most_relevant,
        )
    tied = comparison.n_tied_choices
    write_json_atomic(
        out_dir / "relevance_summary.json",
        {
            "n_triplets": int(triplets.shape[0]),
            "choice_agreement": comparison.choice_agreement,
            "n_human_tied_choices": tied["human"],
            "n_dnn_tied_choices": tied["dnn"],
            "n_agree_on_different_dims": int(
                np.sum(relevance.agree_on_different_dimensions(comparison, human_to_dnn))
            ),
            "n_human_without_most_relevant_dim": comparison.human.n_tied,
            "n_dnn_without_most_relevant_dim": comparison.dnn.n_tied,
            "matching_for_correspondence": "with_replacement",
            "primary_matching": primary.method,
        },
    )
    return {key: filename for key, (filename, _) in files.items()} | {
        "triplet_relevance": "triplet_relevance.npz",
        "relevance_summary": "relevance_summary.json",
    }


__all__ = [
    "AlignedPair",
    "BootstrapRSA",
    "ComparisonResult",
    "align_embeddings",
    "align_objects",
    "bootstrap_indices",
    "bootstrap_rsa",
    "compare",
    "find_object_table",
    "resampled_rsa",
    "similarity_matrix_to_disk",
    "variance_explained",
]
