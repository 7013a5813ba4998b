"""Analyses of labels and ratings: word clouds, rater agreement, shares of visual and semantic dimensions.

The ratings follow the default question set of the labelling app: each
dimension is ``visual``, ``semantic``, ``mixed`` (visual-semantic) or
``unclear``, and expresses ``one`` concept, ``several`` concepts or ``none``.
Two raters' ratings are compared with percent agreement and Cohen's kappa,

    kappa = (p_o - p_e) / (1 - p_e),

where ``p_o`` is the fraction of dimensions both rated alike and ``p_e`` the
agreement expected by chance from each rater's category frequencies,
``p_e = sum_c p_a(c) * p_b(c)`` (Cohen 1960). The ratings are combined into
one resolved rating per dimension. The resolved kinds give the share of
visual and semantic dimensions of an embedding. Together with the jackknife
relevance of the comparison step, they also give the share of triplet choices
that each kind of dimension drives most.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import os
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dimalign.io.files import abbreviate, atomic_path, read_utf8_text
from dimalign.labeling.answers import remove_format_characters

logger = logging.getLogger(__name__)

#: The kinds of dimension in the default question set, in reporting order.
KINDS = ("visual", "semantic", "mixed", "unclear")

#: The interpretability answers of the default question set.
INTERPRETABILITY = ("one", "several", "none")

#: Resolved rating of a dimension whose raters disagree without a tie-breaker.
UNRESOLVED = "unresolved"

#: Kind of a dimension that no rater rated (in relevance shares).
NOT_RATED = "not rated"

#: Columns that a relevance file must have (see :func:`read_relevance`).
RELEVANCE_COLUMNS = ("triplet_index", "most_relevant_dim")

_WHITESPACE = re.compile(r"\s+")


# ---------------------------------------------------------------------------
# Labels and word clouds


def normalize_label(label: str) -> str:
    """Normalise a label for counting: NFC, without format characters, lower case, trimmed, single spaces.

    NFC makes ``café`` with a combining accent (U+0065 U+0301) and with
    ``é`` (U+00E9) one label. Format characters (Unicode category ``Cf``,
    such as the zero-width space U+200B or the soft hyphen U+00AD) draw
    nothing, so they are removed (see
    :func:`dimalign.labeling.answers.remove_format_characters`). Answers
    stored before the app normalised labels may contain either form and
    such characters.

    >>> normalize_label("  Red \u200b  Fruit ")
    'red fruit'
    """
    # NFC after the removal, because a format character between a letter and
    # a combining mark keeps them from composing.
    text = unicodedata.normalize("NFC", remove_format_characters(label))
    return _WHITESPACE.sub(" ", text.strip().lower())


def label_frequencies(labels: Iterable[str]) -> Counter:
    """Count normalised labels; empty labels are skipped.

    >>> label_frequencies(["Red", "red ", "round"]).most_common()
    [('red', 2), ('round', 1)]
    """
    counts: Counter = Counter()
    for label in labels:
        normalized = normalize_label(label)
        if normalized:
            counts[normalized] += 1
    return counts


def answer_label_counts(answers: Iterable[Iterable[str]]) -> Counter:
    """Count for each normalised label how many answers gave it.

    A label that one answer repeats, also in another case or spelling that
    :func:`normalize_label` makes equal (``Red`` and ``red``), counts once
    for that answer. A participant gives at most one answer per dimension,
    so for one dimension the count is the number of participants who gave
    the label.

    Args:
        answers (Iterable[Iterable[str]]): The labels of each answer.

    >>> answer_label_counts([["dup", "dup"], ["Red", "red"], ["red"]]).most_common()
    [('red', 2), ('dup', 1)]
    """
    counts: Counter = Counter()
    for labels in answers:
        counts.update({normalize_label(label) for label in labels} - {""})
    return counts


def top_labels(frequencies: Mapping[str, int], n: int = 5) -> list[tuple[str, int]]:
    """Return the ``n`` most frequent labels, ties broken alphabetically.

    >>> top_labels({"b": 2, "a": 2, "c": 1}, n=2)
    [('a', 2), ('b', 2)]
    """
    return sorted(frequencies.items(), key=lambda item: (-item[1], item[0]))[:n]


def format_top_labels(counts: Sequence[tuple[str, int]]) -> str:
    """Encode labels and their counts as the ``top_labels`` cell of ``dimensions.csv``.

    The cell is a JSON list of ``{"label": ..., "count": ...}`` objects, so a
    label that contains ``; `` or ``(3)`` reads back exactly.

    >>> format_top_labels([("red; round", 2)])
    '[{"label": "red; round", "count": 2}]'
    """
    return json.dumps([{"label": label, "count": int(count)} for label, count in counts], ensure_ascii=False)


def parse_top_labels(text: str) -> list[tuple[str, int]] | None:
    """Decode a ``top_labels`` cell of ``dimensions.csv`` into (label, count) pairs.

    Summaries written before the cell was JSON joined ``label (count)`` with
    ``; ``, which cannot be split exactly when a label contains ``; ``. Such
    text never ends with ``]``, so it is distinguished from JSON and returned
    as None instead of being split.

    Args:
        text (str): The cell.

    Returns:
        list[tuple[str, int]] | None: The pairs, or None for the older text format.

    Raises:
        ValueError: If the text starts with ``[`` and ends with ``]`` but is
            not a JSON list of objects with a string ``label`` and an integer ``count``.
    """
    if not (text.startswith("[") and text.endswith("]")):
        return None
    problem = None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        items, problem = None, f"not valid JSON ({error})"
    if problem is None and not isinstance(items, list):
        problem = "not a JSON list"
    pairs = []
    for item in items if problem is None else []:
        valid = (
            isinstance(item, dict)
            and isinstance(item.get("label"), str)
            and type(item.get("count")) is int
        )
        if not valid:
            problem = f"the entry {abbreviate(json.dumps(item, ensure_ascii=False))} has no string label and integer count"
            break
        pairs.append((item["label"], item["count"]))
    if problem is not None:
        raise ValueError(
            f"invalid top_labels value {abbreviate(text)!r}: {problem}. 'dimalign labels summarize' writes a "
            'JSON list such as [{"label": "red", "count": 3}]: summarise the study again'
        )
    return pairs


def describe_top_labels(text: str) -> str:
    """Return a ``top_labels`` cell as display text such as ``red (3); round (2)``.

    The display text is for titles only, because it joins labels with ``; ``.
    Text in the older format is returned unchanged.

    Raises:
        ValueError: If the cell is invalid JSON (see :func:`parse_top_labels`).
    """
    pairs = parse_top_labels(text)
    if pairs is None:
        return text
    return "; ".join(f"{label} ({count})" for label, count in pairs)


def write_word_cloud(
    frequencies: Mapping[str, int],
    path: str | os.PathLike,
    *,
    width: int = 600,
    height: int = 300,
    random_state: int = 0,
    context: str | None = None,
) -> Path:
    """Draw a word cloud of label frequencies and save it as a PNG file (atomically).

    Each label is one entry (multi-word labels stay together), sized by how
    many participants gave it. The font is chosen by :func:`choose_font`, so
    labels in scripts that wordcloud's own font lacks (such as Chinese) are
    drawn with an installed font that has them, or a warning names them.

    Args:
        frequencies (Mapping[str, int]): Count per label, such as from
            :func:`answer_label_counts`; must not be empty.
        path (str | os.PathLike): The PNG file.
        width (int): Image width in pixels.
        height (int): Image height in pixels.
        random_state (int): Seed of the word placement, so the same labels
            give the same image.
        context (str | None): What the cloud shows, for the log and for
            warnings about labels that no font can draw; ``path`` by default.

    Returns:
        Path: ``path``.

    Raises:
        ValueError: If ``frequencies`` has no positive count.
    """
    from wordcloud import WordCloud

    weights = {label: float(count) for label, count in frequencies.items() if count > 0}
    if not weights:
        raise ValueError(f"no labels to draw in {path}")
    font_path = choose_font(weights, context or str(path))
    cloud = WordCloud(
        font_path=font_path,
        width=width,
        height=height,
        background_color="white",
        random_state=random_state,
        prefer_horizontal=0.9,
        colormap="Dark2",  # dark qualitative colours stay readable on white
        max_words=len(weights),  # the default, 200, would drop the rarest labels
    ).generate_from_frequencies(weights)

    # wordcloud (1.9.6) places labels from the most frequent down and stops at the
    # first one that does not fit at its minimum font size, so every label
    # after it is left out too.
    drawn = {label for (label, _), *_ in cloud.layout_}
    left_out = [label for label, _ in top_labels(weights, n=len(weights)) if label not in drawn]
    if left_out:
        examples = ", ".join(repr(abbreviate(label)) for label in left_out[:3])
        logger.warning(
            "%s: %d of %d labels did not fit and are not drawn, such as %s; labels.csv lists every label",
            context or path, len(left_out), len(weights), examples,
        )
    with atomic_path(path) as temporary:
        cloud.to_image().save(temporary, format="PNG")
    return Path(path)


def choose_font(labels: Iterable[str], context: str = "word cloud") -> str:
    """Return a font file that has a glyph for every character of the labels.

    wordcloud's bundled DroidSansMono is preferred, so word clouds of Latin,
    Greek and Cyrillic labels look the same everywhere. When it lacks a
    character, the fonts that matplotlib lists (its bundled DejaVu fonts and
    the fonts installed on the system) are searched, regular ones first, and
    the first that covers every character is used. Nothing is downloaded.

    Args:
        labels (Iterable[str]): The labels to draw.
        context (str): What is drawn, for the log and the warning.

    Returns:
        str: The font file. When no font covers every character, the one
        that covers most, with a warning that names the labels it cannot draw.
    """
    from wordcloud.wordcloud import FONT_PATH

    labels = list(labels)
    needed = {character for label in labels for character in label if not character.isspace()}
    candidates = [FONT_PATH] + _fallback_fonts()
    best, best_missing = FONT_PATH, needed - _font_characters(FONT_PATH)
    if not best_missing:
        return FONT_PATH
    for candidate in candidates[1:]:
        missing = needed - _font_characters(candidate)
        if len(missing) < len(best_missing):
            best, best_missing = candidate, missing
        if not missing:
            logger.info("%s: drawn with %s, which has glyphs that %s lacks", context, candidate, FONT_PATH)
            return candidate
    undrawable = [label for label in labels if set(label) & best_missing]
    logger.warning(
        "%s: no installed font has glyphs for %r, so the labels %s show as boxes; install a font "
        "that covers them (for example Noto Sans CJK for Chinese, Japanese and Korean) and summarise again",
        context, "".join(sorted(best_missing)), undrawable,
    )
    return best


def _fallback_fonts() -> list[str]:
    from matplotlib import font_manager

    # matplotlib ships "Last Resort", whose glyphs for every character are
    # placeholder boxes, so it would hide the problem instead of solving it.
    entries = [
        entry for entry in font_manager.fontManager.ttflist
        if "last resort" not in entry.name.lower() and entry.fname.lower().endswith((".ttf", ".otf"))
    ]
    regular = sorted(
        entry.fname for entry in entries
        if entry.style == "normal" and entry.weight in (400, "normal", "regular")
    )
    others = sorted({entry.fname for entry in entries} - set(regular))
    return regular + others


@functools.lru_cache(maxsize=None)
def _font_characters(font_file: str) -> frozenset[str]:
    from fontTools.ttLib import TTFont, TTLibError

    try:
        with TTFont(font_file, lazy=True, fontNumber=0) as font:
            cmap = font.getBestCmap() or {}
    except (OSError, TTLibError) as error:
        logger.debug("skipping font %s: %s", font_file, error)
        return frozenset()
    return frozenset(chr(code) for code in cmap)


# ---------------------------------------------------------------------------
# Agreement between raters


@dataclass(frozen=True)
class Agreement:
    """Agreement of two raters on the dimensions both rated.

    Attributes:
        n (int): Number of dimensions rated by both.
        percent_agreement (float): Percentage (0-100) of those rated alike.
        kappa (float): Cohen's kappa; NaN when undefined (no common
            dimension, or both raters used one and the same category).
    """

    n: int
    percent_agreement: float
    kappa: float


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def rater_agreement(
    ratings_a: Sequence[str | None], ratings_b: Sequence[str | None], categories: Sequence[str] = KINDS
) -> Agreement:
    """Compute percent agreement and Cohen's kappa of two raters.

    Args:
        ratings_a (Sequence[str | None]): Rater A's rating per dimension; None
            (or NaN, or ``""``) where A gave none.
        ratings_b (Sequence[str | None]): Rater B's ratings, aligned with A's.
        categories (Sequence[str]): The allowed ratings (fixes kappa's label set).

    Returns:
        Agreement: Over the dimensions that both rated.

    Raises:
        ValueError: If the sequences differ in length or hold a rating outside ``categories``.

    >>> rater_agreement(["visual", "semantic"], ["visual", "visual"])
    Agreement(n=2, percent_agreement=50.0, kappa=0.0)
    """
    from sklearn.metrics import cohen_kappa_score

    if len(ratings_a) != len(ratings_b):
        raise ValueError(
            f"rater A has {len(ratings_a)} ratings but rater B {len(ratings_b)}: align them by dimension"
        )
    pairs = [(a, b) for a, b in zip(ratings_a, ratings_b) if not _is_missing(a) and not _is_missing(b)]
    unknown = sorted({value for pair in pairs for value in pair} - set(categories))
    if unknown:
        raise ValueError(f"ratings {unknown} are not among the categories {list(categories)}")
    if not pairs:
        return Agreement(n=0, percent_agreement=float("nan"), kappa=float("nan"))

    first = [a for a, _ in pairs]
    second = [b for _, b in pairs]
    percent = 100.0 * sum(a == b for a, b in pairs) / len(pairs)
    with warnings.catch_warnings():
        # Undefined kappa (p_e = 1) is reported as NaN, documented above.
        warnings.simplefilter("ignore")
        kappa = float(cohen_kappa_score(first, second, labels=list(categories)))
    return Agreement(n=len(pairs), percent_agreement=percent, kappa=kappa)


def resolve_ratings(
    ratings_a: Sequence[str | None],
    ratings_b: Sequence[str | None],
    ratings_c: Sequence[str | None] | None = None,
) -> list[str]:
    """Combine two raters' ratings, with an optional third rater as tie-breaker.

    Per dimension: if A and B agree, their rating wins. If they disagree and
    the third rater C agrees with one of them, that rating wins. Otherwise
    (no C, C missing, or C choosing a third option) the dimension is
    :data:`UNRESOLVED`. A dimension that A or B did not rate is unresolved too
    unless C matches the one rating given.

    >>> resolve_ratings(
    ...     ["visual", "visual", "mixed"],
    ...     ["visual", "semantic", "unclear"],
    ...     ["semantic", "semantic", "visual"],
    ... )
    ['visual', 'semantic', 'unresolved']
    """
    if len(ratings_a) != len(ratings_b) or (ratings_c is not None and len(ratings_c) != len(ratings_a)):
        raise ValueError("the raters' ratings differ in length: align them by dimension")
    third = ratings_c if ratings_c is not None else [None] * len(ratings_a)
    resolved = []
    for a, b, c in zip(ratings_a, ratings_b, third):
        if not _is_missing(a) and a == b:
            resolved.append(str(a))
        elif not _is_missing(c) and c in (a, b):
            resolved.append(str(c))
        else:
            resolved.append(UNRESOLVED)
    return resolved


# ---------------------------------------------------------------------------
# Shares of kinds of dimension


def kind_shares(
    kinds_by_embedding: Mapping[str, Sequence[str]], kinds: Sequence[str] = KINDS
) -> pd.DataFrame:
    """Count each kind of dimension per embedding and its share of the embedding's dimensions.

    Args:
        kinds_by_embedding (Mapping[str, Sequence[str]]): Resolved kind of
            every dimension, per embedding name.
        kinds (Sequence[str]): Kinds listed for every embedding, even with a
            count of 0. Other values found (:data:`UNRESOLVED`) get rows too.

    Returns:
        pd.DataFrame: Columns ``embedding``, ``kind``, ``n_dimensions``,
        ``share`` (fraction of the embedding's dimensions; sums to 1).
    """
    rows = []
    for embedding, values in kinds_by_embedding.items():
        counts = Counter(values)
        total = len(values)
        listed = list(kinds) + sorted(set(counts) - set(kinds))
        for kind in listed:
            count = counts.get(kind, 0)
            rows.append(
                {"embedding": embedding, "kind": kind, "n_dimensions": count,
                 "share": count / total if total else float("nan")}
            )
    return pd.DataFrame(rows, columns=["embedding", "kind", "n_dimensions", "share"])


def read_relevance(path: str | os.PathLike, n_dims: int | None = None) -> pd.DataFrame:
    """Read and check a jackknife relevance file of the comparison step.

    The file is a UTF-8 CSV with a header and one row per triplet. It needs
    at least the columns ``triplet_index`` (the triplet's row in the triplet
    file) and ``most_relevant_dim``. The latter is the embedding dimension
    whose removal lowers the probability of that triplet's choice most.
    Further columns are kept as text.

    Args:
        path (str | os.PathLike): The CSV file.
        n_dims (int | None): The embedding's number of dimensions; when
            given, every ``most_relevant_dim`` must be below it.

    Returns:
        pd.DataFrame: The table, with both columns as ``int64``.

    Raises:
        FileNotFoundError: If the file is missing.
        IsADirectoryError: If ``path`` is a folder.
        ValueError: Naming the file and the lines (1-based line numbers of
            the file, blank lines counted) if the file is empty, not UTF-8 or
            not CSV, has no rows, lacks a column or repeats one, has a row
            with more or fewer fields than the header, or if a value is not a
            non-negative integer, a dimension is outside the embedding, or a
            triplet index repeats.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"relevance file {path} is a folder: give the --relevance CSV file that "
            "`dimalign compare --triplets` wrote, such as most_relevant_human.csv"
        )
    if not path.exists():
        raise FileNotFoundError(
            f"relevance file {path} not found: check the --relevance path, or write the file with "
            "`dimalign compare --triplets`"
        )
    # Decoded here rather than by pandas, whose error gives the offset within a read chunk.
    text = read_utf8_text(path, advice="give the CSV that `dimalign compare --triplets` wrote",
                          description="relevance file ")
    header, rows, lines = _read_csv_rows(path, text)
    missing = [column for column in RELEVANCE_COLUMNS if column not in header]
    if missing:
        raise ValueError(
            f"relevance file {path} lacks the columns {missing} (found {header}): "
            f"write it with `dimalign compare --triplets` (most_relevant_human.csv or most_relevant_dnn.csv)"
        )
    if not rows:
        raise ValueError(f"relevance file {path} has a header but no rows: it lists no triplet")
    table = pd.DataFrame(rows, columns=header, dtype=str)

    for column in RELEVANCE_COLUMNS:
        text = table[column].str.strip()
        # Digits only, and at most 18 of them, so every value fits int64.
        bad = ~text.str.fullmatch(r"[0-9]{1,18}")
        if bad.any():
            raise ValueError(
                f"relevance file {path}, column {column}: {_lines_and_values(lines[bad], text[bad])} "
                "are not non-negative integers of at most 18 digits"
            )
        table[column] = text.astype(np.int64)

    if n_dims is not None:
        outside = (table["most_relevant_dim"] >= n_dims).to_numpy()
        if outside.any():
            values = table["most_relevant_dim"][outside]
            raise ValueError(
                f"relevance file {path}, column most_relevant_dim: {_lines_and_values(lines[outside], values)} "
                f"are not dimensions of the embedding, which has {n_dims} (0 to {n_dims - 1}): give the "
                "relevance file of this embedding"
            )
    repeated = table["triplet_index"].duplicated(keep=False).to_numpy()
    if repeated.any():
        values = table["triplet_index"][repeated]
        raise ValueError(
            f"relevance file {path}, column triplet_index: {_lines_and_values(lines[repeated], values)} "
            "repeat a triplet; each triplet must appear once"
        )
    return table


def _read_csv_rows(path: Path, text: str) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Split CSV text into its header, its rows and the file line on which each row starts.

    Blank lines are skipped, as pandas does. A row with more or fewer fields
    than the header is rejected, because pandas would silently take an extra
    leading field as the row index and shift every column.

    Returns:
        tuple: The header's column names, the rows (lists of str) and the
        1-based line numbers of the rows in the file.

    Raises:
        ValueError: If the text has no header, is not valid CSV, repeats a
            column name, or a row's field count differs from the header's.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    uneven: list[tuple[int, int]] = []
    previous_end = 0
    try:
        for fields in reader:
            first_line = previous_end + 1
            previous_end = reader.line_num
            if not fields:
                continue
            if header is None:
                header = fields
                continue
            if len(fields) != len(header):
                uneven.append((first_line, len(fields)))
                continue
            rows.append(fields)
            lines.append(first_line)
    except csv.Error as error:
        raise ValueError(
            f"relevance file {path} is not a valid CSV file (line {reader.line_num}: {error})"
        ) from None
    if header is None:
        raise ValueError(f"relevance file {path} is empty: write it with `dimalign compare --triplets`")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(f"relevance file {path} repeats the columns {repeated} in its header: name each column once")
    if uneven:
        counts = ", ".join(f"line {line} has {count}" for line, count in uneven[:10])
        more = f" and {len(uneven) - 10} more rows" if len(uneven) > 10 else ""
        raise ValueError(
            f"relevance file {path} has rows whose field count differs from the header's "
            f"{len(header)} ({counts}{more}): give every row one value per column"
        )
    return header, rows, np.asarray(lines, dtype=np.int64)


def _lines_and_values(lines: np.ndarray, values: pd.Series, limit: int = 10) -> str:
    """Describe up to ``limit`` offending cells as ``lines [3, 5] (values '40', '41')``."""
    shown = [str(value) for value in values.tolist()[:limit]]
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"lines {lines[:limit].tolist()}{more} (values {', '.join(repr(value) for value in shown)})"


def relevance_shares(
    most_relevant_dims: Sequence[int], kind_of_dimension: Mapping[int, str], kinds: Sequence[str] = KINDS
) -> pd.DataFrame:
    """Share of triplet choices driven most by each kind of dimension.

    Args:
        most_relevant_dims (Sequence[int]): The most relevant dimension of each
            triplet, or -1 (:data:`dimalign.analysis.relevance.NO_DIMENSION`)
            where several dimensions share the largest drop; those triplets
            are left out.
        kind_of_dimension (Mapping[int, str]): Resolved kind per dimension;
            dimensions missing here count as :data:`NOT_RATED`.
        kinds (Sequence[str]): Kinds listed even with a count of 0.

    Returns:
        pd.DataFrame: Columns ``kind``, ``n_triplets``, ``share`` (fraction of
        the triplets with a most relevant dimension; sums to 1).

    >>> relevance_shares([0, 0, 1, 2], {0: "visual", 1: "semantic"})["share"].tolist()
    [0.5, 0.25, 0.0, 0.0, 0.25]
    """
    dims = [int(dim) for dim in most_relevant_dims if int(dim) >= 0]
    counts = Counter(kind_of_dimension.get(dim, NOT_RATED) for dim in dims)
    total = len(dims)
    listed = list(kinds) + sorted(set(counts) - set(kinds))
    rows = [
        {"kind": kind, "n_triplets": counts.get(kind, 0),
         "share": counts.get(kind, 0) / total if total else float("nan")}
        for kind in listed
    ]
    return pd.DataFrame(rows, columns=["kind", "n_triplets", "share"])


# ---------------------------------------------------------------------------
# Ratings of many participants


#: Numeric code of each kind for :func:`human_semantic_score`; ``unclear`` has none.
SEMANTIC_CODE = {"visual": 0.0, "mixed": 0.5, "semantic": 1.0}


def human_semantic_score(kinds: Iterable[str]) -> float:
    """Average how semantic the raters found a dimension: visual 0, mixed 0.5, semantic 1.

    ``unclear`` ratings are left out; NaN when no rating is left.

    >>> human_semantic_score(["semantic", "mixed", "unclear"])
    0.75
    """
    codes = [SEMANTIC_CODE[kind] for kind in kinds if kind in SEMANTIC_CODE]
    return float(np.mean(codes)) if codes else float("nan")


def ratings_by_rater(
    answers: Iterable[Mapping], dimensions: Sequence[int], field: str
) -> dict[int, list[str | None]]:
    """Arrange answers as one list of ratings per participant, aligned with ``dimensions``.

    Args:
        answers (Iterable[Mapping]): Answer dictionaries with
            ``participant_id``, ``dimension`` and ``field``.
        dimensions (Sequence[int]): The order of the lists.
        field (str): ``"kind"`` or ``"interpretability"``.

    Returns:
        dict[int, list[str | None]]: None where a participant did not rate a dimension.
    """
    position = {int(dim): index for index, dim in enumerate(dimensions)}
    table: dict[int, list[str | None]] = {}
    for answer in answers:
        ratings = table.setdefault(int(answer["participant_id"]), [None] * len(dimensions))
        index = position.get(int(answer["dimension"]))
        if index is not None:
            ratings[index] = answer[field]
    return table
