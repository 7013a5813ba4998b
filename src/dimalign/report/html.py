"""The self-contained HTML report of a study (``dimalign report``).

One file contains everything: CSS inline, figures as base64 PNG, the data of
the dimension browser as JSON in a ``<script type="application/json">``
element, and a short vanilla script. A Content-Security-Policy meta tag
allows only inline styles and scripts and ``data:`` images, so the page
makes no request of any kind and works offline.

Every text from the study (object names, labels, paths) is escaped with
:func:`html.escape`; the JSON data has ``<``, ``>`` and ``&`` written as
``\\u003c``, ``\\u003e`` and ``\\u0026``, so no ``</script>`` can end the
data block. The script inserts data with ``textContent``, never as HTML.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dimalign.analysis.noise_ceiling import MIN_RELIABLE_RESPONSES, MIN_RELIABLE_SETS
from dimalign.io.files import now_iso, output_dir, write_text_atomic
from dimalign.report import figures
from dimalign.report.config import format_toml_value
from dimalign.report.results import SIDE_NAMES, SIDES, StudyResults

logger = logging.getLogger(__name__)


@dataclass
class ReportResult:
    """Files and figures written by :func:`write_report`.

    Attributes:
        path (Path): The HTML file.
        figures (list[str]): Stems of the figures drawn (PNG and SVG each).
        skipped (dict[str, str]): Figures left out, with the reason.
        n_dimensions (int): Dimensions in the browser.
    """

    path: Path
    figures: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    n_dimensions: int = 0


#: Largest resolution of the PNG figures. 600 dpi is print quality, and the
#: similarity figure, 12.4 inches wide, is then already 7,440 pixels wide. A
#: typo such as 11000 for 110 would ask matplotlib for an image of gigabytes.
MAX_DPI = 600

#: Figures of the report: (stem, heading, caption, drawing function).
FIGURES: list[tuple[str, str, str, Callable[..., Any]]] = [
    ("similarity_matrices", "Similarity matrices",
     "Model-predicted similarity of every pair of objects, sorted by category (first category of "
     "each object; objects in none last). Lines mark the category boundaries.",
     figures.plot_similarity_matrices),
    ("matching", "Matched dimensions and cumulative RSA",
     "Left: correlation of each human dimension with its matched DNN dimension, sorted. Right: "
     "variance in the human similarity explained by the first k DNN dimensions in matched order (matched "
     "ones first, then the unmatched ones), with the mark "
     "at 95% of the full DNN model's, or the reason in the legend why that share means nothing.",
     figures.plot_matching),
    ("training_curves", "Training",
     "Loss, odd-one-out accuracy (training dashed, held out solid) and kept dimensions per epoch. A VICE "
     "fit scores its held-out triplets with the choice probabilities averaged over posterior samples, so "
     "its last held-out point can differ from the summary table's accuracy, which scores the posterior "
     "means in embedding.npz.",
     figures.plot_training_curves),
    ("kind_shares", "Visual and semantic dimensions",
     "Share of dimensions rated visual, semantic, mixed or unclear by the labelling study, and share of the "
     "triplet choices whose most relevant dimension is of each kind.",
     figures.plot_kind_shares),
    ("disagreements", "Largest disagreements",
     "Triplets where the human and the DNN model choose different odd ones out, with each model's "
     "most relevant dimension (the one whose removal lowers the probability of its choice most).",
     figures.plot_disagreements),
]


#: Title of a report whose study sets neither ``report.title`` nor ``study.name``.
DEFAULT_TITLE = "dimalign study"


def report_title(title: str | None, study_name: str | None) -> str:
    """Choose the report title as ``dimalign run`` and ``dimalign report`` both do.

    Args:
        title (str | None): The study file's ``report.title`` (or a title
            given explicitly); empty or None when unset.
        study_name (str | None): The study file's ``study.name``; empty or
            None when unset.

    Returns:
        str: ``title`` if set, else ``study_name`` if set, else :data:`DEFAULT_TITLE`.
    """
    return title or study_name or DEFAULT_TITLE


def write_report(
    results: StudyResults | str | os.PathLike,
    path: str | os.PathLike,
    *,
    figures_dir: str | os.PathLike | None = None,
    title: str = DEFAULT_TITLE,
    top_k: int = 8,
    n_disagreements: int = 6,
    dpi: int = 110,
) -> ReportResult:
    """Draw every figure the saved results allow and write the report.

    Args:
        results (StudyResults | path): The study.
        path (str | os.PathLike): The HTML file to write (atomically).
        figures_dir (path | None): Where the PNG and SVG files go; default
            ``<html stem>_figures`` next to the HTML file.
        title (str): Title of the report.
        top_k (int): Top objects per dimension.
        n_disagreements (int): Triplets in the disagreement figure.
        dpi (int): Resolution of the PNG figures.

    Returns:
        ReportResult: Files, figures and the figures left out.

    Raises:
        ValueError: If a count is below 1 or ``dpi`` is above :data:`MAX_DPI`.
        IsADirectoryError: If ``path`` is a folder.
    """
    for name, value in (("top_k", top_k), ("n_disagreements", n_disagreements), ("dpi", dpi)):
        if value < 1:
            raise ValueError(f"{name} = {value} is invalid: use 1 or more")
    if dpi > MAX_DPI:
        raise ValueError(f"dpi = {dpi} is invalid: use at most {MAX_DPI}")
    if not isinstance(results, StudyResults):
        results = StudyResults(results)
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the HTML file to write, such as {path / 'report.html'}")
    figures_dir = Path(figures_dir) if figures_dir is not None else path.with_name(f"{path.stem}_figures")
    # A figures folder that this call creates is removed again if a figure fails.
    with output_dir(figures_dir):
        return _write_report(results, path, figures_dir, title=title, top_k=top_k,
                             n_disagreements=n_disagreements, dpi=dpi)


def _write_report(
    results: StudyResults, path: Path, figures_dir: Path, *, title: str, top_k: int, n_disagreements: int, dpi: int
) -> ReportResult:
    report = ReportResult(path)
    # Labels of another fit fail here, before any figure is drawn.
    results.label_table()

    sections = []
    for stem, heading, caption, draw in FIGURES:
        options: dict[str, Any] = {"dpi": dpi}
        if stem == "disagreements":
            options["n_triplets"] = n_disagreements
        try:
            draw(results, figures_dir, **options)
        except FileNotFoundError as error:
            report.skipped[stem] = str(error)
            logger.info("figure %s left out: %s", stem, error)
            continue
        report.figures.append(stem)
        if stem == "similarity_matrices":
            caption = _similarity_caption(results, caption)
        sections.append(_figure_section(stem, heading, caption, figures_dir / f"{stem}.png"))

    dimensions = dimension_entries(results, figures_dir, top_k=top_k, dpi=dpi)
    report.n_dimensions = len(dimensions)
    written = {*report.figures, *(_dimension_stem(entry["id"]) for entry in dimensions)}
    _remove_stale_figures(figures_dir, written)
    document = render_document(
        title=title, results=results, figure_sections=sections, skipped=report.skipped, dimensions=dimensions,
    )
    write_text_atomic(path, document)
    logger.info(
        "wrote %s: %d figures, %d left out, %d dimensions in the browser",
        path, len(report.figures), len(report.skipped), len(dimensions),
    )
    return report


def _similarity_caption(results: StudyResults, caption: str) -> str:
    """Name the subset of objects in the similarity caption when the matrices do not cover them all."""
    side = next(side for side in SIDES if results.has("compare", f"{side}_similarity.npy"))
    n_rows = results.similarity(side)[1].size
    n_objects = len(results.objects)
    if n_rows >= n_objects:
        return caption
    return caption.replace(
        "every pair of objects",
        f"every pair of a subset of {n_rows:,} of the {n_objects:,} objects (compare.matrix_objects)",
    )


def _dimension_stem(entry_id: str) -> str:
    side, dim = entry_id.split("-")
    return f"dimension_{side}_{int(dim):03d}"


# The file stems a report writes into its figures folder. Only these are
# removed as stale, so other files in a --figures-dir are left alone.
_REPORT_STEM = re.compile(r"dimension_(?:human|dnn)_\d{3,}|" + "|".join(re.escape(stem) for stem, *_ in FIGURES))


def _remove_stale_figures(figures_dir: Path, written: set[str]) -> None:
    """Remove figure files of an earlier report that this report did not write again.

    A refit with fewer dimensions, or a figure left out this time, would
    otherwise leave its old PNG and SVG next to the new ones.
    """
    stale = sorted(
        entry for entry in figures_dir.iterdir()
        if entry.is_file() and entry.suffix in {".png", ".svg"}
        and _REPORT_STEM.fullmatch(entry.stem) and entry.stem not in written
    )
    for entry in stale:
        entry.unlink()
    if stale:
        logger.info("removed %d figure files of an earlier report from %s", len(stale), figures_dir)


# -- data of the dimension browser -------------------------------------------------------


def dimension_entries(
    results: StudyResults, figures_dir: Path, *, top_k: int = 8, dpi: int = 110
) -> list[dict[str, Any]]:
    """Collect the browser's data for every dimension of both sides, drawing each dimension's figure."""
    entries = []
    relevance = {side: _relevance_by_dim(results, side) for side in SIDES}
    ridge = _ridge_by_dim(results)
    for side in results.sides():
        embedding = results.embedding(side)
        for dim in range(embedding.shape[1]):
            weights = embedding[:, dim]
            top = np.argsort(-weights, kind="stable")[:top_k]
            labels = results.labels_of(side, dim)
            figures.plot_dimension(results, side, dim, figures_dir, top_k=top_k, dpi=dpi)
            match = results.best_match(side, dim) if results.has("compare", "matching.csv") else None
            entry = {
                "id": f"{side}-{dim}",
                "side": SIDE_NAMES[side],
                "dim": dim,
                "title": figures.dimension_title(results, side, dim, labels),
                "figure": _data_uri(figures_dir / f"dimension_{side}_{dim:03d}.png"),
                "top_objects": [
                    {"name": results.objects.object_ids[row], "weight": round(float(weights[row]), 4)}
                    for row in top
                ],
                "labels": labels["top_labels"] if labels else None,
                "kind": labels["kind"] if labels else None,
                "match": None if match is None else (
                    f"{SIDE_NAMES[match['other_side']]} dimension {match['other_dim']} "
                    f"(r = {match['r']:.3f}, matching {match['method'].replace('_', ' ')})"
                ),
                "relevance": relevance[side].get(dim),
                "ridge_cv_r2": ridge.get(side, {}).get(dim),
            }
            entries.append(entry)
    return entries


def _relevance_by_dim(results: StudyResults, side: str) -> dict[int, str]:
    if not results.has("compare", f"relevance_{side}.csv"):
        return {}
    table = results.relevance(side)
    # compare.relevance_triplets may explain only the first held-out triplets.
    n_triplets = results.relevance_triplet_count()
    triplets = "the held-out triplets" if n_triplets is None else f"{n_triplets:,} held-out human triplets"
    if results.human_embedding_given():
        # The human side is inputs.human_embedding, scored on every human triplet.
        triplets = "the human triplets" if n_triplets is None else f"{n_triplets:,} human triplets"
        triplets += " (not held out)"
    return {
        int(row.dim): (
            f"mean drop in choice probability {row.mean_drop:.4f}; most relevant dimension in "
            f"{100 * row.share_most_relevant:.1f}% of {triplets}"
        )
        for row in table.itertuples()
    }


def _ridge_by_dim(results: StudyResults) -> dict[str, dict[int, float | str]]:
    """Return the ridge R² of each dimension of the mapped side, the nested one first where the table has it."""
    if not results.has("map", "ridge_map.csv"):
        return {}
    table = results.ridge_table()
    nested = (pd.to_numeric(table["nested_cv_r2"], errors="coerce") if "nested_cv_r2" in table.columns
              else pd.Series(np.nan, index=table.index))
    values: dict[int, float | str] = {}
    for dim, chosen, nested_value in zip(table["dimension"], table["cv_r2"], nested):
        if np.isnan(nested_value):
            values[int(dim)] = round(float(chosen), 4)
        else:
            values[int(dim)] = f"{nested_value:.4f} nested, {chosen:.4f} at the penalty that the same folds chose"
    return {results.ridge_target(): values}


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def script_json(data: Any) -> str:
    """Serialise ``data`` for a ``<script type="application/json">`` block.

    ``<``, ``>`` and ``&`` become JSON escapes, so the text cannot close the
    block or open a comment, and ``JSON.parse`` restores them.

    Examples:
        >>> script_json({"name": "</script>"})
        '{"name": "\\\\u003c/script\\\\u003e"}'
    """
    text = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False, default=_json_default)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(value: Any) -> Any:
    """Replace NaN and infinities (not valid JSON) by None, recursively."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


# -- the document ---------------------------------------------------------------------------


def _figure_section(stem: str, heading: str, caption: str, png: Path) -> str:
    return (
        f'<section class="figure" id="figure-{html.escape(stem)}">\n'
        f"<h2>{html.escape(heading)}</h2>\n"
        f'<figure><img src="{_data_uri(png)}" alt="{html.escape(heading)}">\n'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>\n</section>"
    )


def _format(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "n/a"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ceiling(value: Any) -> str:
    if not value:
        return "n/a"
    counts = f"{value['n_responses']} responses in {value['n_sets']} repeated sets"
    # The same minimum as the warning of triplet_noise_ceiling, which only the log shows.
    if value["n_responses"] < MIN_RELIABLE_RESPONSES or value["n_sets"] < MIN_RELIABLE_SETS:
        counts += ", too few to compare with accuracies"
    return f"{value['value']:.3f} ({counts})"


def summary_rows(numbers: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Return the rows of the summary table: (quantity, human, DNN) as text."""
    dnn_ceiling = "n/a"
    if numbers.get("dnn_noise_ceiling"):
        dnn_ceiling = _ceiling(numbers["dnn_noise_ceiling"])
    elif "dnn_n_triplets" in numbers:
        # The simulated triplets are unique, so only an evaluated DNN side gets this reason.
        dnn_ceiling = "n/a (no triplet judged twice)"
    rows = [
        ("Dimensions kept", _format(numbers.get("human_n_dims")), _format(numbers.get("dnn_n_dims"))),
        ("Epochs trained", _format(numbers.get("human_n_epochs")), _format(numbers.get("dnn_n_epochs"))),
        ("Training triplets", _format(numbers.get("human_n_train")), _format(numbers.get("dnn_n_train"))),
        ("Held-out triplets", _format(numbers.get("human_n_triplets")), _format(numbers.get("dnn_n_triplets"))),
        ("Held-out odd-one-out accuracy", _format(numbers.get("human_accuracy")),
         _format(numbers.get("dnn_accuracy"))),
        ("Noise ceiling", _ceiling(numbers.get("human_noise_ceiling")), dnn_ceiling),
        ("48-object correlation (Pearson r)", _format(numbers.get("human_things48_r")),
         _format(numbers.get("dnn_things48_r"))),
    ]
    if "dnn_on_human_accuracy" in numbers:
        rows.append(("DNN embedding on held-out human triplets (accuracy)", "", _format(numbers["dnn_on_human_accuracy"])))
    if numbers.get("human_embedding_given"):
        rows = _mark_not_held_out(rows)
    rsa = numbers.get("rsa")
    if rsa:
        level = f"{100 * rsa['ci_level']:.0f}%" if rsa.get("ci_level") else "CI"
        text = f"{_format(rsa.get('r'))} [{level} CI {_format(rsa.get('ci_low'))}, {_format(rsa.get('ci_high'))}]"
        if numbers.get("similarity_objects") not in (None, "all"):
            text += f" on {numbers['similarity_objects']} objects"
        rows.append(("Human-DNN RSA (Pearson r)", text, ""))
    if "n_dnn_dims_for_95_percent" in numbers:
        value = numbers["n_dnn_dims_for_95_percent"]
        if value is not None:
            text = _format(value)
        elif numbers.get("share_undefined"):
            text = f"n/a: {numbers['share_undefined']}"
        else:
            text = "not reached"
        rows.append(("DNN dimensions for 95% of the RSA's r²", "", text))
    # The map predicts the dimensions of one side, set by map.target.
    ridge_rows = (
        ("ridge_nested_cv_r2_median", "Ridge map from features, median nested cross-validated R²"),
        ("ridge_cv_r2_median", "Ridge map from features, median cross-validated R²"),
    )
    for key, name in ridge_rows:
        if key in numbers:
            value = _format(numbers[key])
            human, dnn = (value, "") if numbers.get("ridge_target") == "human" else ("", value)
            rows.append((name, human, dnn))
    return rows


def _mark_not_held_out(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Mark the summary cells that score the human triplets of a given embedding, which are not held out."""
    marks = {
        "Held-out triplets": (" (all, not held out)", ""),
        "Held-out odd-one-out accuracy": (" (not held out)", ""),
        "DNN embedding on held-out human triplets (accuracy)": ("", " (human triplets not held out)"),
    }
    marked = []
    for name, human, dnn in rows:
        human_mark, dnn_mark = marks.get(name, ("", ""))
        if human_mark and human not in ("", "n/a"):
            human += human_mark
        if dnn_mark and dnn not in ("", "n/a"):
            dnn += dnn_mark
        marked.append((name, human, dnn))
    return marked


def _accuracy_note(numbers: dict[str, Any]) -> str:
    """Return the note under the summary table that names the triplets each accuracy scores."""
    if numbers.get("human_embedding_given") and numbers.get("human_accuracy") is not None:
        return (
            '<p class="meta">The human embedding is the given inputs.human_embedding, not a fit. Its accuracy '
            "and the row of the DNN embedding on human triplets score all of inputs.human_triplets, which are "
            "not held out: a published embedding may have been trained on these triplets, so its accuracy "
            "may be optimistic. Chance is 1/3.</p>"
        )
    if numbers.get("human_accuracy") is None or numbers.get("dnn_accuracy") is None:
        return ""
    return (
        '<p class="meta">Each fit is scored on its own held-out triplets: human judgements for the human '
        "embedding, choices simulated from the DNN features for the DNN embedding. So the two held-out "
        "accuracies are not comparable, and the row of the DNN embedding on held-out human triplets "
        "compares the DNN with humans. Accuracies score the weights in embedding.npz, which are the "
        "posterior means for a VICE fit. Chance is 1/3.</p>"
    )


def render_document(
    *, title: str, results: StudyResults, figure_sections: list[str], skipped: dict[str, str],
    dimensions: list[dict[str, Any]],
) -> str:
    """Assemble the HTML document."""
    numbers = results.headline()

    table_rows = "\n".join(
        f"<tr><th scope=\"row\">{html.escape(name)}</th><td>{html.escape(human)}</td><td>{html.escape(dnn)}</td></tr>"
        for name, human, dnn in summary_rows(numbers)
    )

    changes = results.setting_changes()
    change_block = ""
    if changes:
        items = "\n".join(
            f"<li><code>{html.escape(str(change['key']))}</code>: {html.escape(format_toml_value(change['before']))} "
            f"&rarr; {html.escape(format_toml_value(change['after']))} ({html.escape(str(change['kind']))})</li>"
            for change in changes
        )
        change_block = (
            '<section class="note" id="changed-settings"><h2>Settings changed for this run</h2>'
            f"<p>These values were set with <code>--set</code> instead of the study file "
            f"{html.escape(Path(str(results.record.get('config', ''))).name)}; shortened settings give quicker, less "
            f"converged results.</p><ul>{items}</ul></section>"
        )

    if not results.run_finished():
        change_block = (
            '<section class="note" id="unfinished-run"><h2>The last run did not finish</h2>'
            "<p>The last <code>dimalign run</code> of this study stopped before its end. The results "
            "below come from the stages it finished and from earlier runs; rerun the study to bring "
            "every stage up to date.</p></section>" + change_block
        )

    skipped_block = ""
    if skipped:
        items = "\n".join(
            f"<li><strong>{html.escape(stem)}</strong>: {html.escape(relative_paths(reason, results))}</li>"
            for stem, reason in skipped.items()
        )
        skipped_block = f'<section class="note" id="skipped"><h2>Figures left out</h2><ul>{items}</ul></section>'

    browser = _browser_section(dimensions, fitted_sides=results.sides())
    # The panel's img already contains the first figure, and the script reads it
    # from there, so the data block leaves it out.
    script_data = [{**dimensions[0], "figure": None}, *dimensions[1:]] if dimensions else []
    config = results.record.get("config")
    meta = f"Study directory {html.escape(results.study_dir.resolve().name)}"
    if config:
        meta += f", study file {html.escape(Path(str(config)).name)}"
    meta += f". Written {html.escape(now_iso())}."

    body = "\n".join(
        [
            f"<header><h1>{html.escape(title)}</h1><p class=\"meta\">{meta}</p></header>",
            change_block,
            '<section id="summary"><h2>Summary</h2><table class="summary"><thead><tr><th></th>'
            "<th scope=\"col\">Human</th><th scope=\"col\">DNN</th></tr></thead><tbody>"
            f"{table_rows}</tbody></table>{_accuracy_note(numbers)}</section>",
            *figure_sections,
            browser,
            skipped_block,
        ]
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n</main>\n"
        f"<script type=\"application/json\" id=\"dimension-data\">{script_json(script_data)}</script>\n"
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def relative_paths(text: str, results: StudyResults) -> str:
    """Write the paths in ``text`` from the name of the study's folder that contains them.

    The report is meant to be sent or zipped, so a message such as
    ``/home/ada/things-study/compare/rsa.json not found`` shows as
    ``things-study/compare/rsa.json not found``. The folders are the study
    directory, the labels summary, the image folder and the folder of the
    category matrix. A path outside them stays as written.

    Examples:
        >>> relative_paths("/data/study/compare/rsa.json not found", StudyResults("/data/study"))
        'study/compare/rsa.json not found'
    """
    folders = [results.study_dir, results.labels_dir, results.images_dir]
    if results.categories_path is not None:
        folders.append(results.categories_path.parent)
    prefixes: dict[str, str] = {}
    for folder in folders:
        if folder is None:
            continue
        resolved = folder.resolve()
        for spelling in {str(resolved), str(folder.absolute())}:
            if resolved.name:
                prefixes[spelling + os.sep] = resolved.name + "/"
    # Longest first, so a labels folder inside the study directory keeps its own name.
    for prefix in sorted(prefixes, key=len, reverse=True):
        text = text.replace(prefix, prefixes[prefix])
    return text


def _browser_section(dimensions: list[dict[str, Any]], fitted_sides: list[str]) -> str:
    if not dimensions:
        if fitted_sides:
            names = " and the ".join(SIDE_NAMES[side] for side in fitted_sides)
            text = (
                f"The {names} fit{'s' if len(fitted_sides) > 1 else ''} kept no dimension: pruning removed "
                "them all. Refit with more triplets or epochs, or a lower min_objects."
            )
        else:
            text = "No fitted embedding in this study."
        return f'<section id="dimensions"><h2>Dimensions</h2><p>{html.escape(text)}</p></section>'
    groups = []
    for side in (SIDE_NAMES[name] for name in SIDES):
        options = "".join(
            f'<option value="{html.escape(entry["id"])}">{html.escape(_option_text(entry))}</option>'
            for entry in dimensions if entry["side"] == side
        )
        if options:
            groups.append(f'<optgroup label="{html.escape(side)}">{options}</optgroup>')
    # The panel starts with the first dimension, as the script's show() fills
    # it, so that the page is valid HTML (an img requires src) and readable
    # without script.
    first = dimensions[0]
    labels = "not labelled"
    if first.get("labels"):
        labels = first["labels"] + (f" ({first['kind']})" if first.get("kind") else "")
    top_objects = "".join(
        f"<li>{html.escape(str(item['name']))} ({item['weight']:.3f})</li>" for item in first["top_objects"]
    )
    return (
        '<section id="dimensions"><h2>Dimension browser</h2>'
        '<div class="controls"><button type="button" id="dimension-previous">&larr; previous</button>'
        '<label for="dimension-select">Dimension</label>'
        f'<select id="dimension-select">{"".join(groups)}</select>'
        '<button type="button" id="dimension-next">next &rarr;</button></div>'
        f'<article id="dimension-panel"><h3 id="dimension-title">{html.escape(first["title"])}</h3>'
        f'<img id="dimension-figure" src="{html.escape(first["figure"])}" '
        f'alt="{html.escape("Top objects of " + first["title"])}">'
        '<dl>'
        f'<dt>Labels</dt><dd id="dimension-labels">{html.escape(labels)}</dd>'
        f'<dt>Best match</dt><dd id="dimension-match">{_panel_text(first["match"])}</dd>'
        f'<dt>Relevance</dt><dd id="dimension-relevance">{_panel_text(first["relevance"])}</dd>'
        '<dt>Predicted from DNN features (ridge, cross-validated R²)</dt>'
        f'<dd id="dimension-ridge">{_panel_text(first["ridge_cv_r2"])}</dd>'
        f'</dl><h4>Top objects</h4><ol id="dimension-objects">{top_objects}</ol></article></section>'
    )


def _panel_text(value: Any) -> str:
    """Escape one value of the dimension panel, with ``n/a`` for a missing one as the script writes it."""
    return "n/a" if value is None or value == "" else html.escape(str(value))


def _option_text(entry: dict[str, Any]) -> str:
    text = f"{entry['side']} dimension {entry['dim']}"
    if entry.get("labels"):
        text += f": {entry['labels'][:40]}"
    return text


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d1d1f;
  background: #fafafa; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem; }
h1 { font-size: 1.7rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
.meta { color: #555; font-size: 0.85rem; }
table.summary { border-collapse: collapse; background: #fff; }
table.summary th, table.summary td { border: 1px solid #ddd; padding: 0.35rem 0.7rem; text-align: left; }
table.summary thead th { background: #f0f0f0; }
figure { margin: 0; background: #fff; border: 1px solid #e3e3e3; padding: 0.6rem; }
figure img, #dimension-figure { max-width: 100%; height: auto; display: block; }
figcaption { color: #444; font-size: 0.9rem; margin-top: 0.4rem; }
.note { background: #fff8e1; border: 1px solid #f0d98c; padding: 0.4rem 1rem; margin-top: 1.2rem; }
.controls { display: flex; gap: 0.6rem; align-items: center; flex-wrap: wrap; margin-bottom: 0.8rem; }
select, button { font: inherit; padding: 0.25rem 0.5rem; }
#dimension-panel { background: #fff; border: 1px solid #e3e3e3; padding: 0.8rem 1rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; }
dt { font-weight: 600; }
dd { margin: 0; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("dimension-data").textContent);
  var select = document.getElementById("dimension-select");
  if (!select || data.length === 0) { return; }
  // The first figure is only in the panel's img, which the HTML shows without script.
  data[0].figure = document.getElementById("dimension-figure").getAttribute("src");
  var byId = {};
  data.forEach(function (entry) { byId[entry.id] = entry; });
  function text(id, value) {
    document.getElementById(id).textContent = (value === null || value === undefined || value === "") ? "n/a" : String(value);
  }
  function show(id) {
    var entry = byId[id];
    if (!entry) { return; }
    select.value = id;
    text("dimension-title", entry.title);
    var figure = document.getElementById("dimension-figure");
    figure.src = entry.figure;
    figure.alt = "Top objects of " + entry.title;
    text("dimension-labels", entry.labels ? entry.labels + (entry.kind ? " (" + entry.kind + ")" : "") : "not labelled");
    text("dimension-match", entry.match);
    text("dimension-relevance", entry.relevance);
    text("dimension-ridge", entry.ridge_cv_r2);
    var list = document.getElementById("dimension-objects");
    while (list.firstChild) { list.removeChild(list.firstChild); }
    entry.top_objects.forEach(function (item) {
      var row = document.createElement("li");
      row.textContent = item.name + " (" + item.weight.toFixed(3) + ")";
      list.appendChild(row);
    });
  }
  function step(offset) {
    var index = select.selectedIndex + offset;
    if (index < 0) { index = select.options.length - 1; }
    if (index >= select.options.length) { index = 0; }
    show(select.options[index].value);
  }
  select.addEventListener("change", function () { show(select.value); });
  document.getElementById("dimension-previous").addEventListener("click", function () { step(-1); });
  document.getElementById("dimension-next").addEventListener("click", function () { step(1); });
  show(data[0].id);
}());
"""


__all__ = [
    "DEFAULT_TITLE", "FIGURES", "ReportResult", "dimension_entries", "render_document", "report_title",
    "script_json", "summary_rows", "write_report",
]
