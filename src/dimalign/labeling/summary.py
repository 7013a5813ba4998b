"""``dimalign labels summarize``: the tables, word clouds and HTML page of one or more studies.

Output directory layout:

- ``wordclouds/<embedding>_dim<d>.png``: one word cloud per labelled dimension;
- ``dimensions.csv``: per dimension its answers, top labels, votes per kind,
  the human semantic score, the resolved ratings (and the semantic check);
- ``labels.csv``: every normalised label with its count per dimension;
- ``agreement.csv``: percent agreement and Cohen's kappa per rater pair and question;
- ``shares.csv``: share of visual, semantic, mixed and unclear dimensions per embedding;
- ``relevance_shares.csv``: with ``--relevance``, the share of triplets
  driven most by each kind of dimension;
- ``semantic.csv``: with ``--semantic``, the automatic semantic scores;
- ``summary.html``, ``summary.json`` and ``manifest.json``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dimalign.io.files import atomic_path, check_output_dir, now_iso, write_manifest, write_text_atomic
from dimalign.labeling import analysis
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
    if raters is not None:
        raters = [int(rater) for rater in raters]
        unknown = [rater for rater in raters if rater not in participants]
        if not 2 <= len(raters) <= 3 or len(set(raters)) != len(raters) or unknown:
            raise ValueError(
                f"raters {raters} of {study.path} are invalid: give two or three distinct participant ids "
                f"among {sorted(participants)}"
            )
        return raters
    counts = Counter(answer["participant_id"] for answer in study.answers())
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
) -> dict[str, Any]:
    """Compute the label and rating summaries of one study and draw its word clouds.

    Returns:
        dict: ``embedding``, ``raters``, ``dimensions`` (a DataFrame, one row
        per dimension), ``labels`` (DataFrame of label counts), ``agreement``
        (DataFrame) and ``resolved_kind`` (dict dimension -> kind).
    """
    name = study.embedding_name
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
        frequencies = analysis.label_frequencies(
            label for answer in dimension_answers for label in answer["labels"]
        )
        label_rows += [
            {"embedding": name, "dimension": dimension, "label": label, "count": count}
            for label, count in analysis.top_labels(frequencies, n=len(frequencies))
        ]
        cloud = ""
        if frequencies:
            cloud_path = wordcloud_dir / f"{name}_dim{dimension}.png"
            analysis.write_word_cloud(
                frequencies, cloud_path, width=wordcloud_size[0], height=wordcloud_size[1],
                random_state=random_state,
            )
            cloud = f"{wordcloud_dir.name}/{cloud_path.name}"
        kinds = Counter(answer["kind"] for answer in dimension_answers)
        row = {
            "embedding": name,
            "dimension": dimension,
            "n_answers": len(dimension_answers),
            "top_labels": "; ".join(
                f"{label} ({count})" for label, count in analysis.top_labels(frequencies)
            ),
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


def summarize(
    study_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    relevance: Sequence[str | os.PathLike] = (),
    raters: Sequence[int] | None = None,
    semantic: bool = False,
    object_names: str | os.PathLike | None = None,
    semantic_k: int = 10,
    n_random: int = 1000,
    wordcloud_size: tuple[int, int] = (600, 300),
    random_state: int = 0,
    sentence_model: Any = None,
) -> dict[str, Any]:
    """Write every summary of one or more studies into ``out_dir``.

    Args:
        study_paths (Sequence[path]): Study databases, one per embedding.
        out_dir (path): Output directory (created; existing files of the same
            names are replaced).
        relevance (Sequence[path]): Jackknife relevance CSVs (see
            :func:`dimalign.labeling.analysis.read_relevance`), one per study
            in the same order, or none.
        raters (Sequence[int] | None): Participant ids of the raters in every
            study (see :func:`choose_raters`).
        semantic (bool): Run the automatic semantic check.
        object_names (path | None): Names of the objects for the semantic
            check (see :func:`dimalign.labeling.semantic.read_object_names`);
            derived from the object ids when None.
        semantic_k (int): Top objects per dimension in the semantic check.
        n_random (int): Random subsets in the semantic baseline.
        wordcloud_size (tuple[int, int]): Width and height of the word clouds in pixels.
        random_state (int): Seed of the word clouds and the semantic baseline.
        sentence_model: A loaded sentence model, to avoid loading it again.

    Returns:
        dict: Headline numbers, also written to ``summary.json``.

    Raises:
        ValueError: If the number of relevance files differs from the number of studies.
    """
    started = now_iso()
    out_dir = Path(out_dir)
    check_output_dir(out_dir, "labels summarize")
    if relevance and len(relevance) != len(study_paths):
        raise ValueError(
            f"{len(relevance)} relevance files for {len(study_paths)} studies: give one "
            "--relevance per study, in the same order"
        )
    wordcloud_dir = out_dir / "wordclouds"
    wordcloud_dir.mkdir(parents=True, exist_ok=True)

    results = []
    relevance_tables = []
    semantic_tables = []
    correlations = []
    for index, path in enumerate(study_paths):
        with Study(path) as study:
            result = summarize_study(
                study, wordcloud_dir, raters=raters, wordcloud_size=wordcloud_size, random_state=random_state
            )
            if semantic:
                table, correlation = _semantic_check(
                    study, result, object_names=object_names, k=semantic_k, n_random=n_random,
                    random_state=random_state, model=sentence_model,
                )
                semantic_tables.append(table)
                correlations.append(correlation)
        if relevance:
            table = analysis.read_relevance(relevance[index])
            shares = analysis.relevance_shares(table["most_relevant_dim"].tolist(), result["resolved_kind"])
            shares.insert(0, "embedding", result["embedding"])
            relevance_tables.append(shares)
        results.append(result)

    dimensions = pd.concat([result["dimensions"] for result in results], ignore_index=True)
    if semantic_tables:
        semantic_table = pd.concat(semantic_tables, ignore_index=True)
        dimensions = dimensions.merge(
            semantic_table[["embedding", "dimension", "semantic_z", "label_similarity"]],
            on=["embedding", "dimension"], how="left",
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
    if relevance_tables:
        outputs["relevance_shares.csv"] = pd.concat(relevance_tables, ignore_index=True)
    if semantic_tables:
        outputs["semantic.csv"] = semantic_table
    for file_name, frame in outputs.items():
        with atomic_path(out_dir / file_name) as temporary:
            frame.to_csv(temporary, index=False)

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
    if relevance_tables:
        headline["relevance_shares"] = outputs["relevance_shares.csv"].to_dict(orient="records")
    write_text_atomic(out_dir / "summary.json", json.dumps(_finite(headline), indent=2) + "\n")
    write_text_atomic(out_dir / "summary.html", _render_html(outputs, headline))
    write_manifest(
        out_dir,
        step="labels summarize",
        inputs={
            **{f"study_{index}": path for index, path in enumerate(study_paths)},
            **{f"relevance_{index}": path for index, path in enumerate(relevance)},
            **({"object_names": object_names} if object_names else {}),
        },
        settings={
            "raters": list(raters) if raters else None, "semantic": semantic, "semantic_k": semantic_k,
            "n_random": n_random, "wordcloud_size": list(wordcloud_size), "random_state": random_state,
        },
        started=started,
        outputs={"files": sorted(outputs) + ["summary.json", "summary.html"]},
    )
    logger.info("wrote the label summary of %d studies to %s", len(results), out_dir)
    return headline


def _semantic_check(
    study: Study,
    result: dict[str, Any],
    *,
    object_names: str | os.PathLike | None,
    k: int,
    n_random: int,
    random_state: int,
    model: Any,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    from dimalign.labeling import semantic

    object_ids = study.object_ids()
    if object_names is not None:
        names = semantic.read_object_names(object_names, object_ids)
    else:
        names = [semantic.object_name(object_id) for object_id in object_ids]
    labels: dict[int, list[str]] = {}
    for answer in study.answers():
        labels.setdefault(answer["dimension"], []).extend(answer["labels"])
    tops = {dimension: study.top_objects(dimension) for dimension in study.dimensions}
    k = min(k, min(len(top) for top in tops.values()))
    table = semantic.semantic_scores(
        tops, names, labels=labels, k=k, n_random=n_random, random_state=random_state, model=model
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
