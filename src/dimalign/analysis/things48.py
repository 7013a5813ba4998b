"""The 48-object check: predicted similarity against a fully sampled human RDM.

Hebart et al. (2020) collected odd-one-out
judgements for every triplet of 48 THINGS objects, which gives a human
dissimilarity matrix (RDM) without any model in between. An embedding of all
1,854 THINGS objects predicts a similarity for each pair of the 48, and its
Pearson correlation with ``1 - RDM`` over the upper triangle measures how well
the embedding reproduces human similarity.

Files read from a THINGS data directory:

- ``RDM48_triplet.mat``: MATLAB file with one 48 x 48 dissimilarity matrix.
- ``words48.csv``: the 48 object names in the matrix's row order, header
  ``Word,exclude``. The ``exclude`` column marks five objects (clothes, tea,
  knob, camera, file) with 1. The check uses all 48 unless ``exclude_flagged=True``.
- ``unique_id.txt``: the 1,854 THINGS concept ids, the row order of embeddings.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io

from dimalign.analysis.rsa import rsa
from dimalign.analysis.similarity import similarity_matrix
from dimalign.io.files import read_utf8_text
from dimalign.io.objects import index_object_ids, read_object_table
from dimalign.io.runs import embedding_weights

logger = logging.getLogger(__name__)

#: The error for a DataFrame embedding whose index is not the THINGS concept ids.
INDEX_NOT_THINGS_IDS = (
    "the DataFrame index of the embedding is not the THINGS concept ids of unique_id.txt: "
    "pass object_ids, or frame.reset_index(drop=True) when the rows follow unique_id.txt"
)

RDM_FILE = "RDM48_triplet.mat"
WORDS_FILE = "words48.csv"
CONCEPTS_FILE = "unique_id.txt"

NAME_ALIASES: Mapping[str, str] = {"camera": "camera1", "file": "file1"}
"""Words in ``words48.csv`` whose THINGS concept id differs beyond spaces.

THINGS numbers the senses of a homonym. ``camera1`` is the photographic
camera and ``camera2`` the television camera. ``file1`` is the steel hand tool
and ``file2`` the folder for papers. The 48-object set uses ``camera1`` and
``file1``.
"""


@dataclass(frozen=True)
class Things48:
    """The 48-object human dissimilarity matrix and where its objects sit in THINGS.

    Attributes:
        words (tuple[str, ...]): The 48 names as written in ``words48.csv``.
        indices (np.ndarray): Row of each object in the 1,854 THINGS concepts, shape ``(48,)``.
        rdm (np.ndarray): Human dissimilarities, shape ``(48, 48)``, zero diagonal.
        excluded (np.ndarray): The ``exclude`` flag of each object, bool, shape ``(48,)``.
        n_concepts (int): Number of THINGS concepts in ``unique_id.txt`` (1,854),
            the rows an embedding needs.
        concept_ids (tuple[str, ...]): The THINGS concept ids in the order
            of ``unique_id.txt`` (empty when not loaded).
    """

    words: tuple[str, ...]
    indices: np.ndarray
    rdm: np.ndarray
    excluded: np.ndarray
    n_concepts: int
    # Left out of the repr, which a notebook shows: 1,854 ids are about 22,000 characters.
    concept_ids: tuple[str, ...] = field(default=(), repr=False)

    def rows_in(self, object_ids: Sequence[str]) -> np.ndarray | None:
        """Find the rows of the 48 objects in an embedding whose rows are ``object_ids``.

        Args:
            object_ids (Sequence[str]): The THINGS concept id of each embedding row.

        Returns:
            np.ndarray | None: int64 rows, shape ``(48,)``, or None when
            ``object_ids`` are not the THINGS concepts (in any order), so that
            the third object of the predicted similarity would not run over
            all of them.
        """
        if not self.concept_ids or sorted(object_ids) != sorted(self.concept_ids):
            return None
        position = {name: row for row, name in enumerate(object_ids)}
        return np.asarray([position[self.concept_ids[index]] for index in self.indices], dtype=np.int64)


def read_rdm48(path: str | os.PathLike) -> np.ndarray:
    """Read the single 48 x 48 matrix of ``RDM48_triplet.mat``.

    Args:
        path (str | os.PathLike): The MATLAB file.

    Returns:
        np.ndarray: The dissimilarities, float64, shape ``(48, 48)``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a MATLAB file, contains no 48 x 48
            matrix or more than one, or the matrix contains NaN or inf.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"48-object RDM {path} not found")
    try:
        contents = scipy.io.loadmat(path)
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, EOFError) as error:
        raise ValueError(
            f"{path} cannot be read as a MATLAB file ({type(error).__name__}: {error}), so it may be "
            "damaged: copy RDM48_triplet.mat from the THINGS data again"
        ) from error
    matrices = {
        name: value
        for name, value in contents.items()
        if not name.startswith("__") and isinstance(value, np.ndarray) and value.shape == (48, 48)
    }
    if len(matrices) != 1:
        variables = {name: getattr(value, "shape", None) for name, value in contents.items() if not name.startswith("__")}
        raise ValueError(
            f"{path} must contain exactly one 48 x 48 matrix, found {len(matrices)} "
            f"among its variables {variables}"
        )
    ((name, matrix),) = matrices.items()
    matrix = np.asarray(matrix, dtype=np.float64)
    if not np.isfinite(matrix).all():
        raise ValueError(f"{path}: matrix {name!r} contains NaN or inf")
    return matrix


def read_words48(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read ``words48.csv`` and return the names and their ``exclude`` flags.

    Args:
        path (str | os.PathLike): The CSV file, header ``Word,exclude``.

    Returns:
        tuple[list[str], np.ndarray]: The names without surrounding spaces, in
        file order, and a bool flag per name, shape ``(n_words,)``. A flag is
        True unless the ``exclude`` cell is empty or ``0``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not UTF-8 or has no ``Word`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"48-object word list {path} not found")
    # A byte order mark (which spreadsheet programs write) would hide the Word header.
    text = read_utf8_text(
        path, advice="save the word list as UTF-8 (or plain ASCII)", description="48-object word list "
    )
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or "Word" not in reader.fieldnames:
        raise ValueError(f"{path}: expected a header with a 'Word' column, got {reader.fieldnames}")
    words, flags = [], []
    for row in reader:
        words.append(row["Word"].strip())
        flags.append((row.get("exclude") or "").strip() not in ("", "0"))
    return words, np.asarray(flags, dtype=bool)


def match_concept_ids(
    words: Sequence[str],
    concept_ids: Sequence[str],
    aliases: Mapping[str, str] = NAME_ALIASES,
) -> np.ndarray:
    """Find the THINGS row of each word.

    A word is looked up through ``aliases`` first, then with spaces replaced by
    underscores (``music box`` -> ``music_box``).

    Args:
        words (Sequence[str]): The object names of ``words48.csv``.
        concept_ids (Sequence[str]): The THINGS concept ids of ``unique_id.txt``.
        aliases (Mapping[str, str]): Concept id of each word that differs beyond spaces.

    Returns:
        np.ndarray: int64 rows into ``concept_ids``, one per word, shape ``(n_words,)``.

    Raises:
        ValueError: Listing every word that is not found.
    """
    lookup = {name: row for row, name in enumerate(concept_ids)}
    rows, missing = [], []
    for word in words:
        concept = aliases.get(word, word).replace(" ", "_")
        if concept in lookup:
            rows.append(lookup[concept])
        else:
            missing.append(word)
    if missing:
        raise ValueError(
            f"{len(missing)} of the 48 objects are not THINGS concept ids: {missing}. "
            "Add them to the alias table (NAME_ALIASES) with their concept id."
        )
    return np.asarray(rows, dtype=np.int64)


def load_things48(things_dir: str | os.PathLike) -> Things48:
    """Load the 48-object RDM, its names and their THINGS rows from a data directory.

    Args:
        things_dir (str | os.PathLike): THINGS data directory with
            ``RDM48_triplet.mat``, ``words48.csv`` and ``unique_id.txt``.

    Returns:
        Things48: The RDM, the 48 names and their rows in ``unique_id.txt``.

    Raises:
        FileNotFoundError: If the directory, or one of its three files, does not exist.
        ValueError: If a file cannot be read, or the names do not match the
            RDM or the THINGS concept ids.
    """
    things_dir = Path(things_dir)
    _check_things48_files(things_dir)
    rdm = read_rdm48(things_dir / RDM_FILE)
    words, excluded = read_words48(things_dir / WORDS_FILE)
    if len(words) != rdm.shape[0]:
        raise ValueError(
            f"{things_dir / WORDS_FILE} lists {len(words)} names but the RDM has "
            f"{rdm.shape[0]} rows"
        )
    _reject_repeated_words(words, things_dir / WORDS_FILE)
    concepts = read_object_table(things_dir / CONCEPTS_FILE)
    try:
        indices = match_concept_ids(words, concepts.object_ids)
    except ValueError as error:
        raise ValueError(
            f"{things_dir / WORDS_FILE} does not match {things_dir / CONCEPTS_FILE}: {error} "
            "If a file was edited, copy both from the THINGS data again."
        ) from error
    return Things48(
        words=tuple(words),
        indices=indices,
        rdm=rdm,
        excluded=excluded,
        n_concepts=len(concepts),
        concept_ids=tuple(concepts.object_ids),
    )


def _reject_repeated_words(words: Sequence[str], path: Path) -> None:
    """Raise ``ValueError`` if a name appears twice, which would pair one RDM row with another object's row."""
    first_row: dict[str, int] = {}
    for row, word in enumerate(words, start=1):
        if word in first_row:
            raise ValueError(
                f"{path} lists {word!r} on rows {first_row[word]} and {row} (counting data rows "
                "from 1), but the 48 objects are distinct: copy words48.csv from the THINGS data again"
            )
        first_row[word] = row


def _check_things48_files(things_dir: Path) -> None:
    """Raise ``FileNotFoundError`` naming the directory, or the first of its three files, that is missing."""
    needed = (
        f"The 48-object check needs {RDM_FILE}, {WORDS_FILE} and {CONCEPTS_FILE} from the THINGS "
        "data: pass the folder that contains them (CLI: --things-dir), or leave it out to skip the check"
    )
    names = (RDM_FILE, WORDS_FILE, CONCEPTS_FILE)
    if things_dir.is_file():
        raise FileNotFoundError(
            f"THINGS data directory {things_dir} is a file, not a folder: pass the folder that contains "
            f"it, {things_dir.parent}. {needed}"
        )
    if not things_dir.is_dir():
        raise FileNotFoundError(f"THINGS data directory {things_dir} not found. {needed}")
    for name in names:
        if not (things_dir / name).is_file():
            # Users often pass the data folder one level up (data/ instead of data/things/).
            try:
                subfolders = sorted(entry for entry in things_dir.iterdir() if entry.is_dir())
            except OSError:
                subfolders = []
            complete = [folder for folder in subfolders if all((folder / file).is_file() for file in names)]
            if complete:
                raise FileNotFoundError(
                    f"{things_dir} lacks {name}, but its subfolder {complete[0]} has all three files: "
                    f"pass that folder. {needed}"
                )
            raise FileNotFoundError(f"{things_dir} lacks {name}. {needed}")


def things48_correlation(
    embedding: np.ndarray,
    things_dir: str | os.PathLike | None = None,
    data: Things48 | None = None,
    exclude_flagged: bool = False,
    method: str = "pearson",
    device: str = "cpu",
    object_ids: Sequence[str] | None = None,
) -> float:
    """Correlate an embedding's predicted similarities with the 48-object human RDM.

    The predicted similarity of a pair averages over all 1,854 THINGS objects as
    the third object (:func:`similarity_matrix` with ``objects=``), and the
    human similarity is ``1 - RDM``.

    Args:
        embedding (np.ndarray | estimator | EmbeddingResult): Shape
            ``(1854, n_dims)``, in the order of ``object_ids`` or, without
            them, of ``unique_id.txt``. A fitted VICE or SPoSE gives its
            ``embedding_``.
        things_dir (path | None): Directory with the three files. It is ignored
            when ``data`` is given.
        data (Things48 | None): Already loaded data.
        exclude_flagged (bool): Leave out the objects flagged in the
            ``exclude`` column (43 objects remain).
        method (str): ``"pearson"`` (default) or ``"spearman"``.
        device (str): Torch device for the similarity computation.
        object_ids (Sequence[str] | None): The THINGS concept id of each
            embedding row, such as the run's ``objects.tsv``. The 48 objects
            are found by id. None takes the index of a DataFrame embedding
            (unless it is the default ``0 .. n - 1``), else the order of
            ``unique_id.txt``.

    Returns:
        float: The correlation over the upper triangle.

    Raises:
        ValueError: If the embedding does not have one row per THINGS
            concept, or ``object_ids`` are not the THINGS concept ids.
    """
    if data is None:
        if things_dir is None:
            raise ValueError("things48_correlation needs things_dir or data, but both are None")
        data = load_things48(things_dir)
    from_index = object_ids is None and index_object_ids(embedding) is not None
    if from_index:
        object_ids = index_object_ids(embedding)
    embedding = np.asarray(embedding_weights(embedding), dtype=np.float64)
    if embedding.ndim != 2 or embedding.shape[0] != data.n_concepts:
        raise ValueError(
            f"the 48-object check needs an embedding of all THINGS concepts in the order of "
            f"unique_id.txt ({data.n_concepts} rows), got shape {embedding.shape}"
        )

    rows = data.indices
    if object_ids is not None:
        if len(object_ids) != embedding.shape[0]:
            raise ValueError(
                f"{len(object_ids)} object ids were given for an embedding of {embedding.shape[0]} rows"
            )
        rows = data.rows_in(object_ids)
        if rows is None and from_index:
            raise ValueError(INDEX_NOT_THINGS_IDS)
        if rows is None:
            raise ValueError(
                "the object ids of the embedding are not the THINGS concept ids of unique_id.txt, "
                "so the 48-object check does not apply"
            )

    keep = ~data.excluded if exclude_flagged else np.ones(len(data.words), dtype=bool)
    predicted = similarity_matrix(embedding, objects=rows[keep], device=device)
    human = 1.0 - data.rdm[np.ix_(keep, keep)]
    value = rsa(predicted, human, method=method)
    logger.info("48-object check: %s r = %.4f over %d objects", method, value, int(keep.sum()))
    return value
