"""``dimalign labels summarize``: the tables, word clouds and HTML page of one or more studies.

Output directory layout:

- ``wordclouds/<embedding>_dim<d>.png``: one word cloud per labelled dimension;
- ``dimensions.csv``: per dimension its answers, top labels, votes per kind,
  the human semantic score, the resolved ratings (and the semantic check);
- ``labels.csv``: every normalised label with the number of answers that
  gave it, per dimension;
- ``agreement.csv``: percent agreement and Cohen's kappa per rater pair and question;
- ``shares.csv``: share of visual, semantic, mixed and unclear dimensions per embedding;
- ``relevance_shares.csv``: with ``--relevance``, the share of triplets
  driven most by each kind of dimension;
- ``semantic.csv``: with ``--semantic``, the automatic semantic scores;
- ``summary.html``, ``summary.json`` and ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dimalign.io.files import (
    MANIFEST_NAME,
    abbreviate,
    acquire_lock,
    check_output_dir,
    now_iso,
    output_dir,
    read_manifest,
    release_lock,
    without_umask,
    write_manifest,
    write_text_atomic,
)
from dimalign.labeling import analysis
from dimalign.labeling.semantic import MAX_N_RANDOM
from dimalign.labeling.study import Study

logger = logging.getLogger(__name__)

_TEMPLATES = Path(__file__).resolve().parent / "templates"


def choose_raters(study: Study, raters: Sequence[int] | None = None) -> list[int]:
    """Return the participant ids whose ratings are compared and resolved.

    Args:
        study (Study): The study.
        raters (Sequence[int] | None): Two or three participant ids (the third
            breaks ties). When None, the first three participants (by id) who
            answered every dimension are used, or the first two if only two did.

    Returns:
        list[int]: Two or three ids, or an empty list (with a warning) when
        fewer than two participants completed the study and none were given.

    Raises:
        ValueError: If ``raters`` does not hold two or three existing, distinct participants.
    """
    participants = {participant.participant_id for participant in study.participants()}
    counts = Counter(answer["participant_id"] for answer in study.answers())
    if raters is not None:
        raters = [int(rater) for rater in raters]
        unknown = [rater for rater in raters if rater not in participants]
        if not 2 <= len(raters) <= 3 or len(set(raters)) != len(raters) or unknown:
            raise ValueError(
                f"raters {raters} of {study.path} are invalid: give two or three distinct participant ids "
                f"among {sorted(participants)}"
            )
        n_dimensions = len(study.dimensions)
        for rater in raters:
            if counts.get(rater, 0) < n_dimensions:
                # Agreement is computed over the dimensions both raters rated, and a
                # skipped dimension is resolved only if the tie-breaker matches the other rating.
                logger.warning(
                    "%s: rater %d rated %d of the %d dimensions, so agreement rests on fewer dimensions "
                    "and the others may stay unresolved", study.path, rater, counts.get(rater, 0), n_dimensions,
                )
        return raters
    if not counts:
        logger.warning(
            "the study %s has no answers yet, so every dimension is summarised with 0 answers and is "
            "unresolved", study.path,
        )
        return []
    complete = [pid for pid in sorted(participants) if counts.get(pid, 0) == len(study.dimensions)]
    if len(complete) < 2:
        logger.warning(
            "%s: only %d participants answered every dimension, so ratings are not compared or "
            "resolved; name the raters with --raters", study.path, len(complete),
        )
        return []
    return complete[:3]


def summarize_study(
    study: Study,
    wordcloud_dir: Path,
    *,
    raters: Sequence[int] | None = None,
    wordcloud_size: tuple[int, int] = (600, 300),
    random_state: int = 0,
    name: str | None = None,
) -> dict[str, Any]:
    """Compute the label and rating summaries of one study and draw its word clouds.

    Args:
        study (Study): The study.
        wordcloud_dir (Path): Folder of the word clouds, ``<name>_dim<d>.png``.
        raters (Sequence[int] | None): See :func:`choose_raters`.
        wordcloud_size (tuple[int, int]): Width and height in pixels.
        random_state (int): Seed of the word placement.
        name (str | None): Name of the embedding; the study's by default.

    Returns:
        dict: ``embedding``, ``raters``, ``dimensions`` (a DataFrame, one row
        per dimension), ``labels`` (DataFrame of label counts), ``agreement``
        (DataFrame) and ``resolved_kind`` (dict dimension -> kind).
    """
    name = study.embedding_name if name is None else name
    dimensions = list(study.dimensions)
    answers = study.answers()
    chosen = choose_raters(study, raters)

    # Labels and word clouds.
    by_dimension: dict[int, list[dict]] = {dim: [] for dim in dimensions}
    for answer in answers:
        by_dimension.setdefault(answer["dimension"], []).append(answer)
    label_rows = []
    dimension_rows = []
    for dimension in dimensions:
        dimension_answers = by_dimension[dimension]
        frequencies = analysis.answer_label_counts(answer["labels"] for answer in dimension_answers)
        label_rows += [
            {"embedding": name, "dimension": dimension, "label": label, "count": count}
            for label, count in analysis.top_labels(frequencies, n=len(frequencies))
        ]
        cloud = ""
        if frequencies:
            cloud_path = wordcloud_dir / f"{name}_dim{dimension}.png"
            analysis.write_word_cloud(
                frequencies, cloud_path, width=wordcloud_size[0], height=wordcloud_size[1],
                random_state=random_state, context=f"word cloud of {name}, dimension {dimension}",
            )
            cloud = f"{wordcloud_dir.name}/{cloud_path.name}"
        kinds = Counter(answer["kind"] for answer in dimension_answers)
        row = {
            "embedding": name,
            "dimension": dimension,
            "n_answers": len(dimension_answers),
            "top_labels": analysis.format_top_labels(analysis.top_labels(frequencies)),
            **{f"n_{kind}": kinds.get(kind, 0) for kind in analysis.KINDS},
            "human_semantic_score": analysis.human_semantic_score(
                answer["kind"] for answer in dimension_answers
            ),
            "wordcloud": cloud,
        }
        dimension_rows.append(row)

    # Agreement and resolved ratings.
    agreement_rows = []
    resolved: dict[str, list[str]] = {}
    for field, categories in (("kind", analysis.KINDS), ("interpretability", analysis.INTERPRETABILITY)):
        table = analysis.ratings_by_rater(answers, dimensions, field)
        if not chosen:
            resolved[field] = [analysis.UNRESOLVED] * len(dimensions)
            continue
        ratings = [table.get(rater, [None] * len(dimensions)) for rater in chosen]
        for (first, a), (second, b) in itertools.combinations(zip(chosen, ratings), 2):
            result = analysis.rater_agreement(a, b, categories)
            agreement_rows.append(
                {"embedding": name, "question": field, "rater_a": first, "rater_b": second, "n": result.n,
                 "percent_agreement": result.percent_agreement, "kappa": result.kappa}
            )
        tie_breaker = ratings[2] if len(ratings) > 2 else None
        resolved[field] = analysis.resolve_ratings(ratings[0], ratings[1], tie_breaker)
    for row, kind, interpretability in zip(dimension_rows, resolved["kind"], resolved["interpretability"]):
        row["resolved_kind"] = kind
        row["resolved_interpretability"] = interpretability

    logger.info(
        "summarised %s: %d answers from %d participants on %d dimensions; raters %s",
        name, len(answers), len({answer["participant_id"] for answer in answers}), len(dimensions), chosen,
    )
    return {
        "embedding": name,
        "raters": chosen,
        "dimensions": pd.DataFrame(dimension_rows),
        "labels": pd.DataFrame(label_rows, columns=["embedding", "dimension", "label", "count"]),
        "agreement": pd.DataFrame(
            agreement_rows,
            columns=["embedding", "question", "rater_a", "rater_b", "n", "percent_agreement", "kappa"],
        ),
        "resolved_kind": dict(zip(dimensions, resolved["kind"])),
    }


#: Name of this step in ``manifest.json``.
STEP = "labels summarize"

#: Top objects per dimension compared by the semantic check unless ``semantic_k`` is given.
DEFAULT_SEMANTIC_K = 10

#: Random object subsets of the semantic baseline unless ``n_random`` is given.
DEFAULT_N_RANDOM = 1000

#: Longest file name in bytes on common file systems (ext4, XFS, APFS).
MAX_FILE_NAME_BYTES = 255

#: Characters that an embedding name may not contain, because it becomes part of a file name.
_FORBIDDEN_NAME_CHARACTERS = ("/", "\\", "\0")


def summarize(
    study_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    relevance: Sequence[str | os.PathLike] = (),
    raters: Sequence[int] | None = None,
    semantic: bool = False,
    object_names: str | os.PathLike | None = None,
    semantic_k: int | None = None,
    n_random: int | None = None,
    wordcloud_size: tuple[int, int] = (600, 300),
    random_state: int = 0,
    sentence_model: Any = None,
    embedding_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write every summary of one or more studies into ``out_dir``.

    Every input is read and checked before anything is written. The summary
    is then written into a temporary folder next to ``out_dir`` and moved into
    place at the end, so a failure leaves ``out_dir`` as it was (or absent).
    A rerun into the folder of an earlier summary replaces that summary and
    removes its files that the new one does not write, such as the word
    clouds of dimensions no longer in a study. If that replacement fails part
    way, the files already replaced are restored. A run holds an exclusive
    lock on the file ``.<name>.lock`` next to ``out_dir`` while it writes, so
    a concurrent run into the same folder fails instead of mixing files.
    When ``out_dir`` is a symbolic link to a folder, the summary is written
    into that folder.

    Args:
        study_paths (Sequence[path]): Study databases, one per embedding, each given once.
        out_dir (path): Output directory: new, empty, or the folder of an
            earlier summary. Other files in an earlier summary's folder are kept.
        relevance (Sequence[path]): Jackknife relevance CSVs (see
            :func:`dimalign.labeling.analysis.read_relevance`), one per study
            in the same order, or none.
        raters (Sequence[int] | None): Participant ids of the raters in every
            study (see :func:`choose_raters`).
        semantic (bool): Run the automatic semantic check.
        object_names (path | None): Names of the objects for the semantic
            check (see :func:`dimalign.labeling.semantic.read_object_names`);
            derived from the object ids when None.
        semantic_k (int | None): Top objects per dimension in the semantic
            check, from 2 to the number of top objects stored per dimension;
            :data:`DEFAULT_SEMANTIC_K` when None. Only with ``semantic``.
        n_random (int | None): Random subsets in the semantic baseline, 2 to
            :data:`dimalign.labeling.semantic.MAX_N_RANDOM`;
            :data:`DEFAULT_N_RANDOM` when None. Only with ``semantic``.
        wordcloud_size (tuple[int, int]): Width and height of the word clouds in pixels.
        random_state (int): Seed of the word clouds and the semantic baseline (0 or more).
        sentence_model: A loaded sentence model, to avoid loading it again.
        embedding_names (Sequence[str] | None): Name of each study's embedding
            in the summary; by default the name stored in the study (its run
            folder or embedding file). Names must differ.

    Returns:
        dict: Headline numbers, also written to ``summary.json``.

    Raises:
        ValueError: If an option or input file is invalid, a study has no
            dimensions, an embedding name is too long for the word cloud file
            names, a semantic-check
            option is given without ``semantic``, a study is given twice, two embeddings have the same name, or the number of
            relevance files differs from the number of studies.
        FileExistsError: If ``out_dir`` is neither empty nor an earlier summary.
        RuntimeError: If another run is writing into ``out_dir``.
        OSError: If the summary cannot be written; the message names
            ``out_dir``, never the temporary folder.
    """
    started = now_iso()
    out_dir = Path(out_dir)
    _check_options(study_paths, relevance, embedding_names, semantic, semantic_k, n_random, random_state)
    _check_semantic_options(semantic, object_names, semantic_k, n_random)
    if semantic:
        semantic_k = DEFAULT_SEMANTIC_K if semantic_k is None else semantic_k
        n_random = DEFAULT_N_RANDOM if n_random is None else n_random
    target = _output_target(out_dir)
    _earlier_summary_files(target, out_dir)

    studies: list[Study] = []
    try:
        for path in study_paths:
            studies.append(Study(path))
            # One read transaction per study, so every table of the summary
            # comes from one snapshot, even while a server adds participants
            # and answers (WAL readers see the database as of their first read).
            studies[-1].connection.execute("BEGIN")
            if not studies[-1].dimensions:
                raise ValueError(
                    f"the study {path} has no dimensions, so there is nothing to summarise: set up a "
                    "study with at least one dimension"
                )
            _check_study_contents(studies[-1])
        names = _embedding_names(studies, embedding_names)
        relevance_tables = [
            analysis.read_relevance(path, n_dims=_embedding_dimension_count(study))
            for study, path in zip(studies, relevance)
        ]
        semantic_inputs = []
        if semantic:
            semantic_inputs = [
                _semantic_inputs(study, object_names, semantic_k) for study in studies
            ]
            if sentence_model is None:
                from dimalign.labeling.semantic import load_sentence_model

                sentence_model = load_sentence_model()

        with (
            output_dir(target.parent, remove_contents=False),
            _output_lock(target, out_dir),
            _staging_dir(target, out_dir) as staging,
        ):
            # Checked again under the lock: another run may have finished in between.
            earlier_files = _earlier_summary_files(target, out_dir)
            headline = _write_summary(
                staging, studies, names, relevance_tables, semantic_inputs,
                raters=raters, semantic_k=semantic_k, n_random=n_random, wordcloud_size=wordcloud_size,
                random_state=random_state, model=sentence_model,
            )
            write_manifest(
                staging,
                step=STEP,
                inputs={
                    **{f"study_{index}": path for index, path in enumerate(study_paths)},
                    **{f"relevance_{index}": path for index, path in enumerate(relevance)},
                    **({"object_names": object_names} if object_names else {}),
                },
                settings={
                    "raters": list(raters) if raters else None, "semantic": semantic,
                    "semantic_k": semantic_k, "n_random": n_random, "wordcloud_size": list(wordcloud_size),
                    "random_state": random_state, "embedding_names": names,
                },
                started=started,
                outputs=headline.pop("_outputs"),
            )
            _publish(staging, target, earlier_files, out_dir)
    finally:
        for study in studies:
            study.close()
    logger.info("wrote the label summary of %d studies to %s", len(names), out_dir)
    return headline


def _check_options(
    study_paths: Sequence[str | os.PathLike],
    relevance: Sequence[str | os.PathLike],
    embedding_names: Sequence[str] | None,
    semantic: bool,
    semantic_k: int | None,
    n_random: int | None,
    random_state: int,
) -> None:
    """Check the options that need no file, so that a mistake is reported at once."""
    if not study_paths:
        raise ValueError("no study given: give one study database per embedding")
    if relevance and len(relevance) != len(study_paths):
        raise ValueError(
            f"{len(relevance)} relevance files for {len(study_paths)} studies: give one "
            "--relevance per study, in the same order"
        )
    if embedding_names is not None and len(embedding_names) != len(study_paths):
        raise ValueError(
            f"{len(embedding_names)} embedding names for {len(study_paths)} studies: give one name "
            "per study with --embedding-names, in the same order"
        )
    if random_state < 0:
        raise ValueError(f"invalid --seed {random_state}: use a seed of 0 or more")
    if semantic_k is not None and semantic_k < 2:
        raise ValueError(f"invalid --semantic-k {semantic_k}: compare at least 2 top objects")
    if n_random is not None and n_random < 2:
        raise ValueError(f"invalid --n-random {n_random}: use at least 2 random subsets")
    if n_random is not None and n_random > MAX_N_RANDOM:
        raise ValueError(
            f"invalid --n-random {n_random}: use at most {MAX_N_RANDOM} random subsets, because the time "
            "grows with their number while the baseline barely changes"
        )

    seen: dict[str, Path] = {}
    for path in map(Path, study_paths):
        key = str(path.resolve())
        if key in seen:
            spelling = f" (also as {seen[key]})" if str(seen[key]) != str(path) else ""
            raise ValueError(f"the study {path} is given twice{spelling}: give each study once")
        seen[key] = path


def _check_semantic_options(
    semantic: bool, object_names: str | os.PathLike | None, semantic_k: int | None, n_random: int | None
) -> None:
    """Reject options of the semantic check given without ``--semantic``, which would be ignored."""
    if semantic:
        return
    given = {"--object-names": object_names, "--semantic-k": semantic_k, "--n-random": n_random}
    for option, value in given.items():
        if value is not None:
            raise ValueError(
                f"{option} {value} is an option of the semantic check, which runs only with --semantic: "
                f"add --semantic, or drop {option}"
            )


def _embedding_names(studies: Sequence[Study], names: Sequence[str] | None) -> list[str]:
    """Return each study's embedding name, checked to be distinct and usable in file names."""
    chosen = list(names) if names is not None else [study.embedding_name for study in studies]
    for name in chosen:
        if not name.strip() or any(character in name for character in _FORBIDDEN_NAME_CHARACTERS):
            raise ValueError(
                f"invalid embedding name {name!r}: a name must not be empty or contain / or \\ because "
                "it becomes part of the word cloud file names"
            )
    for study, name in zip(studies, chosen):
        # atomic_path writes each word cloud as .<name>_dim<d>.<8 random characters>.tmp.png first.
        name_bytes = len(name.encode())
        longest = f".{name}_dim{max(study.dimensions, default=0)}.xxxxxxxx.tmp.png"
        allowed = MAX_FILE_NAME_BYTES - (len(longest.encode()) - name_bytes)
        if name_bytes > allowed:
            raise ValueError(
                f"invalid embedding name {abbreviate(name)!r} of {study.path}: it is {name_bytes} bytes, but the word "
                f"cloud files NAME_dim<d>.png, written under a longer temporary name first, must fit in "
                f"{MAX_FILE_NAME_BYTES} bytes, so use at most {allowed} bytes: give a shorter name with "
                "--embedding-names"
            )
    by_name: dict[str, Study] = {}
    for study, name in zip(studies, chosen):
        if name in by_name:
            raise ValueError(
                f"the studies {by_name[name].path} and {study.path} both label an embedding named "
                f"{name!r}, so their rows could not be told apart: name the embeddings with "
                f"--embedding-names, such as --embedding-names {name}-a,{name}-b"
            )
        by_name[name] = study
    return chosen


def _check_study_contents(study: Study) -> None:
    """Raise ValueError if answers or grids of a study contradict its settings.

    The app and its foreign keys prevent all of these, so they come from an
    edit by hand (with foreign keys off). Each would be summarised silently
    wrong otherwise: an answer to a dimension outside the study made its
    participant look complete, and a kind outside the question set was left
    out of the counts.
    """
    dimensions = list(study.dimensions)
    participants = {participant.participant_id for participant in study.participants()}
    kinds = study.questions.kind_values
    interpretability = study.questions.interpretability_values
    with_grid = {row[0] for row in study.connection.execute("SELECT dimension FROM dimensions").fetchall()}

    problems = [
        f"dimension {dimension}: the study has no grid for it in its dimensions table"
        for dimension in dimensions if dimension not in with_grid
    ]
    for answer in study.answers():
        where = f"participant {answer['participant_id']}, dimension {answer['dimension']}"
        if answer["dimension"] not in dimensions:
            problems.append(f"{where}: the study labels dimensions {dimensions} only")
        if answer["participant_id"] not in participants:
            problems.append(f"{where}: the study has no participant {answer['participant_id']}")
        if answer["kind"] not in kinds:
            problems.append(f"{where}: kind {abbreviate(answer['kind'])!r} is not one of {list(kinds)}")
        if answer["interpretability"] not in interpretability:
            problems.append(
                f"{where}: interpretability {abbreviate(answer['interpretability'])!r} is not one of "
                f"{list(interpretability)}"
            )
    if problems:
        counted = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        raise ValueError(
            f"the study {study.path} does not fit its own answers or settings ({counted}, such as "
            f"{'; '.join(problems[:3])}). The app never writes such rows, so they were edited by hand: "
            "correct or delete those rows, then summarise again"
        )


def _embedding_dimension_count(study: Study) -> int | None:
    recorded = study.n_embedding_dims
    if recorded is None:
        logger.warning(
            "%s does not record how many dimensions its embedding has (it was set up by an older "
            "dimalign), so most_relevant_dim is not checked against that count", study.path,
        )
        return None
    return recorded


def _semantic_inputs(
    study: Study, object_names: str | os.PathLike | None, k: int
) -> tuple[list[str], dict[int, np.ndarray]]:
    """Read and check the object names and top objects of one study for the semantic check."""
    from dimalign.labeling import semantic

    object_ids = study.object_ids()
    if object_names is not None:
        names = semantic.read_object_names(object_names, object_ids)
        source = f"from {object_names}"
    else:
        names = [semantic.object_name(object_id) for object_id in object_ids]
        source = f"derived from the object ids of {study.path}"
    semantic.check_object_names(names, k, source)
    tops = {dimension: study.top_objects(dimension) for dimension in study.dimensions}
    available = min(len(top) for top in tops.values())
    if k > available:
        raise ValueError(
            f"invalid --semantic-k {k}: the study {study.path} stores {available} top objects per "
            f"dimension, so use at most {available}"
        )
    return names, tops


def _output_target(out_dir: Path) -> Path:
    """Return the folder the summary is written to: ``out_dir``, or the folder a link there points to.

    Raises:
        FileNotFoundError: If ``out_dir`` is a symbolic link to nothing.
    """
    if not out_dir.is_symlink():
        return out_dir
    target = Path(os.path.realpath(out_dir))
    if not target.exists():
        raise FileNotFoundError(
            f"the output folder {out_dir} is a symbolic link to {target}, which does not exist: "
            "create that folder, or choose another output folder"
        )
    return target


def _earlier_summary_files(out_dir: Path, given_dir: Path) -> list[Path]:
    """Return the files of an earlier summary in ``out_dir``, or raise if the folder contains other things.

    Args:
        out_dir (Path): The folder the summary is written to.
        given_dir (Path): The output folder as the caller gave it, for messages.

    Raises:
        NotADirectoryError: If ``out_dir`` is a file.
        FileExistsError: If ``out_dir`` is neither empty nor the folder of an
            earlier summary, or contains the output of another step.
    """
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise NotADirectoryError(f"the output folder {given_dir} is a file: choose a folder name")
    if not any(out_dir.iterdir()):
        return []
    check_output_dir(given_dir, STEP)
    if not (out_dir / MANIFEST_NAME).is_file():
        raise FileExistsError(
            f"the output folder {given_dir} is not empty and contains no earlier summary (no {MANIFEST_NAME}): "
            "choose a new or empty folder"
        )
    outputs = read_manifest(out_dir).get("outputs", {})
    listed = [outputs.get(key, []) for key in ("files", "wordclouds")] if isinstance(outputs, dict) else None
    if listed is None or not all(
        isinstance(names, list) and all(isinstance(name, str) for name in names) for names in listed
    ):
        # A string would be read as a list of one-letter file names, and every
        # listed file that this run does not write again is removed.
        shown = abbreviate(repr(outputs))
        raise ValueError(
            f"{given_dir / MANIFEST_NAME} lists its outputs in an unexpected form ({shown}), not as lists "
            "of file names, so the earlier summary's files cannot be told from other files: move that "
            "folder away, or choose a new output folder"
        )
    names = [*listed[0], *listed[1], MANIFEST_NAME]
    if "wordclouds" not in outputs:
        # Summaries before the manifest listed word clouds wrote them all to wordclouds/.
        names += [f"wordclouds/{path.name}" for path in (out_dir / "wordclouds").glob("*_dim*.png")]
    files = []
    for name in names:
        relative = Path(str(name))
        # The manifest is data read from disk, so no name may lead out of the folder.
        if relative.is_absolute() or ".." in relative.parts:
            continue
        if (out_dir / relative).is_file():
            files.append(out_dir / relative)
    return files


@contextlib.contextmanager
def _output_lock(out_dir: Path, given_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` next to ``out_dir`` for the block.

    Raises:
        RuntimeError: If another run holds the lock.
    """
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    busy = (
        f"another `dimalign labels summarize` is writing to {given_dir}: wait until it has "
        "finished, or choose another output folder"
    )
    try:
        descriptor = acquire_lock(lock_path, busy)
    except OSError as error:
        raise _output_error(error, given_dir) from error
    try:
        yield
    finally:
        release_lock(lock_path, descriptor)


@contextlib.contextmanager
def _staging_dir(out_dir: Path, given_dir: Path) -> Iterator[Path]:
    """Yield a new temporary folder next to ``out_dir``, removed when the block ends unless moved."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    except OSError as error:
        raise _output_error(error, given_dir) from error
    try:
        # mkdtemp makes the folder private to its owner; the summary folder gets
        # the permissions of an ordinary mkdir (0o777 minus the umask).
        os.chmod(staging, without_umask(0o777))
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _output_error(error: OSError, given_dir: Path, file: Path | None = None, note: str = "") -> OSError:
    """Return ``error`` as the same type, naming the output folder instead of a temporary path."""
    reason = error.strerror or str(error)
    where = f" ({reason} for {file})" if file is not None else f" ({reason})"
    return type(error)(f"cannot write the summary to {given_dir}{where}: choose a folder you can write to{note}")


def _publish(staging: Path, out_dir: Path, earlier_files: Sequence[Path], given_dir: Path) -> None:
    """Move the staged summary into ``out_dir`` and remove the earlier summary's other files.

    A new or empty ``out_dir`` is replaced by the staged folder in one
    rename. Into the folder of an earlier summary the files are moved one by
    one. Every destination is checked before the first move. Each replaced
    or stale file is set aside next to the staging folder, and after a
    failed move every file set aside is put back, so the earlier summary stays whole.
    """
    if not out_dir.exists() or not any(out_dir.iterdir()):
        # A rename replaces an empty folder on POSIX, so the summary appears at once.
        try:
            os.replace(staging, out_dir)
        except OSError as error:
            raise _output_error(error, given_dir) from error
        return

    new_files = sorted(path.relative_to(staging) for path in staging.rglob("*") if path.is_file())
    _check_destinations(out_dir, new_files, given_dir)
    written = {out_dir / relative for relative in new_files}
    stale = [path for path in earlier_files if path not in written]
    set_aside = staging.parent / f"{staging.name}.earlier"
    moved: list[tuple[Path, Path | None]] = []
    created: list[Path] = []
    current = out_dir
    try:
        set_aside.mkdir()
        for relative in new_files:
            current = out_dir / relative
            saved = _move_aside(current, set_aside / relative) if os.path.lexists(current) else None
            moved.append((current, saved))
            if not current.parent.exists():
                current.parent.mkdir(parents=True)
                created.append(current.parent)
            os.replace(staging / relative, current)
        for path in stale:
            current = path
            moved.append((path, _move_aside(path, set_aside / path.relative_to(out_dir))))
    except OSError as error:
        failed = given_dir / current.relative_to(out_dir)
        try:
            _put_back(moved, created)
        except OSError as restore_error:
            # The files set aside are the only copy of the earlier summary now, so they are kept.
            note = f"; restoring the earlier summary failed too ({restore_error}), so its files are in {set_aside}"
            raise _output_error(error, given_dir, failed, note) from error
        shutil.rmtree(set_aside, ignore_errors=True)
        raise _output_error(error, given_dir, failed, " (the earlier summary was kept)") from error
    shutil.rmtree(set_aside, ignore_errors=True)
    if stale:
        logger.info("removed %d files of the earlier summary in %s", len(stale), given_dir)
    clouds = out_dir / "wordclouds"
    if clouds.is_dir() and not any(clouds.iterdir()):
        clouds.rmdir()


def _check_destinations(out_dir: Path, new_files: Sequence[Path], given_dir: Path) -> None:
    """Raise, before anything is moved, if a staged file cannot replace what is at its place."""
    for relative in new_files:
        for parent in reversed(relative.parents[:-1]):
            if os.path.lexists(out_dir / parent) and not (out_dir / parent).is_dir():
                raise NotADirectoryError(
                    f"cannot write the summary to {given_dir}: {given_dir / parent} is not a folder. Move it "
                    "away or choose another output folder (the earlier summary was kept)"
                )
        destination = out_dir / relative
        if destination.is_dir() and not destination.is_symlink():
            raise IsADirectoryError(
                f"cannot write the summary to {given_dir}: {given_dir / relative} is a folder. Move it away "
                "or choose another output folder (the earlier summary was kept)"
            )


def _move_aside(path: Path, saved: Path) -> Path:
    saved.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, saved)
    return saved


def _put_back(moved: Sequence[tuple[Path, Path | None]], created: Sequence[Path]) -> None:
    """Undo :func:`_publish`: remove the new files and return the files set aside, last first."""
    for destination, saved in reversed(moved):
        if saved is None:
            destination.unlink(missing_ok=True)
        else:
            os.replace(saved, destination)
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _write_summary(
    out_dir: Path,
    studies: Sequence[Study],
    names: Sequence[str],
    relevance_tables: Sequence[pd.DataFrame],
    semantic_inputs: Sequence[tuple[list[str], dict[int, np.ndarray]]],
    *,
    raters: Sequence[int] | None,
    semantic_k: int | None,
    n_random: int | None,
    wordcloud_size: tuple[int, int],
    random_state: int,
    model: Any,
) -> dict[str, Any]:
    """Compute and write every table, word cloud and page of checked inputs into ``out_dir``.

    Returns:
        dict: The headline numbers, plus ``_outputs``: the files written, for the manifest.
    """
    wordcloud_dir = out_dir / "wordclouds"
    wordcloud_dir.mkdir()
    results = []
    semantic_tables = []
    correlations = []
    relevance_shares = []
    for index, (study, name) in enumerate(zip(studies, names)):
        result = summarize_study(
            study, wordcloud_dir, raters=raters, wordcloud_size=wordcloud_size, random_state=random_state,
            name=name,
        )
        if semantic_inputs:
            object_names, tops = semantic_inputs[index]
            table, correlation = _semantic_check(
                study, result, object_names=object_names, tops=tops, k=semantic_k, n_random=n_random,
                random_state=random_state, model=model,
            )
            semantic_tables.append(table)
            correlations.append(correlation)
        if relevance_tables:
            shares = analysis.relevance_shares(
                relevance_tables[index]["most_relevant_dim"].tolist(), result["resolved_kind"]
            )
            shares.insert(0, "embedding", name)
            relevance_shares.append(shares)
        results.append(result)

    dimensions = pd.concat([result["dimensions"] for result in results], ignore_index=True)
    if semantic_tables:
        semantic_table = pd.concat(semantic_tables, ignore_index=True)
        dimensions = dimensions.merge(
            semantic_table[["embedding", "dimension", "semantic_z", "label_similarity"]],
            on=["embedding", "dimension"], how="left", validate="one_to_one",
        )
    shares = analysis.kind_shares(
        {result["embedding"]: list(result["resolved_kind"].values()) for result in results}
    )
    outputs = {
        "dimensions.csv": dimensions,
        "labels.csv": pd.concat([result["labels"] for result in results], ignore_index=True),
        "agreement.csv": pd.concat([result["agreement"] for result in results], ignore_index=True),
        "shares.csv": shares,
    }
    if relevance_shares:
        outputs["relevance_shares.csv"] = pd.concat(relevance_shares, ignore_index=True)
    if semantic_tables:
        outputs["semantic.csv"] = semantic_table
    for file_name, frame in outputs.items():
        frame.to_csv(out_dir / file_name, index=False)

    headline = {
        "embeddings": [result["embedding"] for result in results],
        "raters": {result["embedding"]: result["raters"] for result in results},
        "shares": {
            embedding: dict(zip(group["kind"], group["share"].round(6)))
            for embedding, group in shares.groupby("embedding", sort=False)
        },
        "agreement": outputs["agreement.csv"].to_dict(orient="records"),
        "semantic_correlation": correlations,
    }
    if relevance_shares:
        headline["relevance_shares"] = outputs["relevance_shares.csv"].to_dict(orient="records")
    write_text_atomic(out_dir / "summary.json", json.dumps(_finite(headline), indent=2) + "\n")
    write_text_atomic(out_dir / "summary.html", _render_html(outputs, headline))
    headline["_outputs"] = {
        "files": sorted(outputs) + ["summary.json", "summary.html"],
        "wordclouds": sorted(
            f"{wordcloud_dir.name}/{path.name}" for path in wordcloud_dir.iterdir() if path.is_file()
        ),
    }
    return headline


def _semantic_check(
    study: Study,
    result: dict[str, Any],
    *,
    object_names: Sequence[str],
    tops: dict[int, np.ndarray],
    k: int,
    n_random: int,
    random_state: int,
    model: Any,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    from dimalign.labeling import semantic

    labels: dict[int, list[list[str]]] = {}
    for answer in study.answers():
        labels.setdefault(answer["dimension"], []).append(list(answer["labels"]))
    table = semantic.semantic_scores(
        tops, object_names, labels=labels, k=k, n_random=n_random, random_state=random_state, model=model
    )
    table.insert(0, "embedding", result["embedding"])
    human = result["dimensions"].set_index("dimension")["human_semantic_score"]
    table["human_semantic_score"] = table["dimension"].map(human)
    table["resolved_kind"] = table["dimension"].map(result["resolved_kind"])
    correlation = semantic.rating_correlation(table["semantic_z"], table["human_semantic_score"])
    correlation["embedding"] = result["embedding"]
    return table, correlation


def _finite(value: Any) -> Any:
    """Replace NaN by None so that the JSON file is valid JSON."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _render_html(outputs: dict[str, pd.DataFrame], headline: dict[str, Any]) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    environment = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(["html"]))
    dimensions = outputs["dimensions.csv"].replace({np.nan: None}).to_dict(orient="records")
    for row in dimensions:
        row["top_label_counts"] = analysis.parse_top_labels(row["top_labels"])
    return environment.get_template("summary.html").render(
        dimensions=dimensions,
        shares=outputs["shares.csv"].to_dict(orient="records"),
        agreement=outputs["agreement.csv"].replace({np.nan: None}).to_dict(orient="records"),
        relevance=(
            outputs["relevance_shares.csv"].to_dict(orient="records")
            if "relevance_shares.csv" in outputs
            else []
        ),
        correlations=headline["semantic_correlation"],
        raters=headline["raters"],
        kinds=analysis.KINDS,
        style=(_TEMPLATES.parent / "static" / "style.css").read_text(encoding="utf-8"),
    )
