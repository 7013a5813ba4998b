"""Figures of a study, drawn from its saved results with matplotlib.

Every ``plot_*`` function takes a :class:`~dimalign.report.results.StudyResults`
(or a study directory), writes ``<out_dir>/<stem>.png`` and ``.svg``, and
returns the matplotlib Figure, so that callers and tests can inspect it. The
figures are made without pyplot, so the caller's backend (a notebook's inline
one, for example) stays as it is and pyplot keeps no figure open.

A function whose inputs are missing raises ``FileNotFoundError`` naming the
file and the stage that writes it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from dimalign._warnings import warn
from dimalign.features.recorded import Decoding
from dimalign.io.files import atomic_path
from dimalign.report.results import (
    SIDE_NAMES,
    SIDES,
    StudyResults,
    category_blocks,
    undefined_share_reason,
)

logger = logging.getLogger(__name__)

SIDE_COLORS = {"human": "#1f6fb4", "dnn": "#e07b1a"}
KIND_COLORS = {
    "visual": "#e07b1a", "semantic": "#1f6fb4", "mixed": "#7d5ba6", "unclear": "#9e9e9e",
    "unresolved": "#cfcfcf", "not rated": "#efefef",
}
MATCHING_LABELS = {
    "with_replacement": "with replacement",
    "greedy": "without replacement (greedy)",
    "optimal": "without replacement (optimal)",
}


def _subplots(*grid: int, figsize: tuple[float, float], **options: Any) -> tuple[Figure, Any]:
    """Return a new figure of ``figsize`` inches and its axes, as ``pyplot.subplots`` would, without pyplot.

    ``Figure.savefig`` picks the canvas of each file format (Agg for PNG), so
    no backend has to be set, and pyplot does not keep the figure open.
    """
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*grid, **options)


_Plot = TypeVar("_Plot", bound=Callable[..., Figure])


def _plain_text(plot: _Plot) -> _Plot:
    """Draw the text of ``plot``'s figure as written, without matplotlib's mathtext.

    Object names, labels and category names come from the study's files.
    Matplotlib reads text between two ``$`` signs as a formula, so a name such
    as ``$5 or $10`` would be drawn in math italics, and ``$\\frac$`` raises a
    parse error when the figure is saved.
    """

    @functools.wraps(plot)
    def draw(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)

    return draw  # type: ignore[return-value]


def _results(results: StudyResults | str | os.PathLike) -> StudyResults:
    return results if isinstance(results, StudyResults) else StudyResults(results)


# matplotlib's warning about a character that its font cannot draw.
_MISSING_GLYPH = re.compile(r"^Glyph (\d+) .*missing from font")


def save_figure(figure: Figure, out_dir: str | os.PathLike, stem: str, dpi: int = 110) -> list[Path]:
    """Write ``figure`` as ``<stem>.png`` and ``<stem>.svg`` (atomically) and return both paths.

    matplotlib warns once per character that its font lacks, in each file;
    those warnings become one that lists the characters.
    """
    out_dir = Path(out_dir)
    paths = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for suffix in (".png", ".svg"):
            target = out_dir / f"{stem}{suffix}"
            with atomic_path(target) as temporary:
                figure.savefig(temporary, dpi=dpi, bbox_inches="tight", metadata=_metadata(suffix))
            paths.append(target)
    missing = []
    for warning in caught:
        match = _MISSING_GLYPH.match(str(warning.message))
        if match is None:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        elif chr(int(match.group(1))) not in missing:
            missing.append(chr(int(match.group(1))))
    if missing:
        warn(
            f"{stem}: the figure font has no glyph for {''.join(missing)!r}, so these characters show as "
            "boxes; install a font that covers them (for example Noto Sans CJK for Chinese, Japanese "
            "and Korean), add its name to matplotlib's font.sans-serif setting (matplotlibrc), and "
            "write the report again",
            UserWarning,
        )
    return paths


def _metadata(suffix: str) -> dict[str, Any]:
    # Without a date the SVG and PNG bytes depend only on the figure.
    return {"Date": None} if suffix == ".svg" else {}


# -- similarity matrices -------------------------------------------------------------


@_plain_text
def plot_similarity_matrices(
    results: StudyResults | str | os.PathLike, out_dir: str | os.PathLike, *, dpi: int = 110,
    stem: str = "similarity_matrices",
) -> Figure:
    """Draw the human and DNN similarity matrices side by side, objects sorted by category.

    Rows and columns follow the category blocks of
    :func:`~dimalign.report.results.category_blocks` (first category of each
    object, ``other`` last); white lines mark the block boundaries and the
    tick labels name the blocks. Without a category matrix the objects keep
    their order. Each matrix is coloured from its 1st to its 99th percentile
    off the diagonal, so both use their full colour range, and a colour bar
    beside each gives its scale: the probability that a pair is chosen as
    the most similar pair of a triplet, averaged over the third object.

    Reads ``compare/<side>_similarity.npy`` and ``compare/similarity_objects.npy``.
    """
    results = _results(results)
    sides = [side for side in SIDES if results.has("compare", f"{side}_similarity.npy")]
    if not sides:
        results.check_compare_wrote(
            "human_similarity.npy", "matrix_objects", "saves no similarity matrix", "--save-similarity"
        )
        results.path("compare", "human_similarity.npy")  # raises FileNotFoundError
    matrices = {side: results.similarity(side) for side in sides}
    rows = matrices[sides[0]][1]

    blocks = None
    if results.categories_path is not None:
        names, assignment = results.category_assignment()
        blocks = category_blocks(assignment[rows], names)
    order = blocks.order if blocks is not None else np.arange(rows.size)

    figure, axes = _subplots(1, len(sides), figsize=(6.2 * len(sides), 6.4), squeeze=False)
    for axis, side in zip(axes[0], sides):
        matrix = np.array(matrices[side][0][np.ix_(order, order)], dtype=np.float64)
        np.fill_diagonal(matrix, np.nan)
        low, high = np.nanpercentile(matrix, [1, 99])
        image = axis.imshow(matrix, cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
        axis.set_title(f"{SIDE_NAMES[side]} similarity ({rows.size} objects)")
        # extend="both": values beyond the percentiles take the end colours.
        bar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.02, extend="both")
        bar.set_label("p(pair chosen as most similar)")
        if blocks is not None:
            _mark_blocks(axis, blocks)
        else:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    save_figure(figure, out_dir, stem, dpi)
    return figure


def _mark_blocks(axis, blocks) -> None:
    for boundary in blocks.starts[1:]:
        axis.axhline(boundary - 0.5, color="white", linewidth=0.4)
        axis.axvline(boundary - 0.5, color="white", linewidth=0.4)
    centres = (blocks.starts + blocks.stops - 1) / 2.0
    axis.set_xticks(centres)
    axis.set_xticklabels(blocks.names, rotation=90, fontsize=5)
    axis.set_yticks(centres)
    axis.set_yticklabels(blocks.names, fontsize=5)
    axis.tick_params(length=0)


# -- matching and cumulative RSA ------------------------------------------------------


@_plain_text
def plot_matching(
    results: StudyResults | str | os.PathLike, out_dir: str | os.PathLike, *, dpi: int = 110,
    stem: str = "matching",
) -> Figure:
    """Draw the sorted matched-dimension correlations and the cumulative RSA curve.

    Left: the Pearson r of every matched human-DNN pair, sorted, one line
    per matching method (with replacement, and without replacement where
    computed). Right: the variance in the human similarity explained
    (``r_k²``) by the first ``k`` DNN dimensions in matched order (matched ones
    first, then the unmatched ones), with a line at 95%
    of the full DNN model's ``r²`` and the number of dimensions that reach it.
    Where that share means nothing (see
    :func:`~dimalign.report.results.undefined_share_reason`), the legend
    gives the reason in place of the line.

    Reads ``compare/matching.csv``, ``compare/cumulative_rsa.csv`` and ``compare/rsa.json``.
    """
    results = _results(results)
    matching = results.matching()
    cumulative = results.cumulative()
    rsa = results.rsa()

    figure, (left, right) = _subplots(1, 2, figsize=(11.0, 3.8))
    for method, rows in matching.groupby("method", sort=False):
        values = np.sort(rows["r"].to_numpy())[::-1]
        left.plot(np.arange(1, values.size + 1), values, marker="o", markersize=3, linewidth=1.2,
                  label=MATCHING_LABELS.get(method, method))
    left.axhline(0.0, color="0.6", linewidth=0.8)
    left.set_xlabel("matched pair (sorted by r)")
    left.set_ylabel("Pearson r of the pair")
    left.set_title("Human-DNN dimension matching")
    left.legend(frameon=False, fontsize=8)

    # Explained variance r² rather than its share of the full model's: the share
    # is unbounded when the full model explains almost nothing (short runs).
    steps = cumulative["n_dims"].to_numpy()
    right.plot(steps, cumulative["r2"].to_numpy(), marker="o", markersize=3, linewidth=1.2,
               color=SIDE_COLORS["dnn"], label="first k DNN dimensions, in matched order")
    # A share of the full model's r² means nothing when that r may be 0 or is
    # negative, because a dimension of the opposite sign would then seem to
    # reach it. The mark is drawn only where compare's rule defines the share.
    reason = undefined_share_reason(rsa)
    if reason is None:
        full_r2 = float(rsa.get("cumulative_full_r", rsa["r"])) ** 2
        right.axhline(0.95 * full_r2, color="#b22222", linestyle="--", linewidth=1.0,
                      label=f"95% of the full model's r² = {full_r2:.3f}")
    n_for_95 = rsa.get("n_dnn_dims_for_95_percent")
    if n_for_95 is not None:
        right.axvline(n_for_95, color="#b22222", linestyle=":", linewidth=1.0, label=f"{n_for_95} dimensions")
    right.set_xlabel("DNN dimensions added")
    right.set_ylabel("r² with the human similarity")
    right.set_title("Cumulative RSA with the human similarity")
    handles, labels = right.get_legend_handles_labels()
    if reason is not None:
        # A legend entry without a line, kept off the axes.
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(textwrap.fill(f"no 95% mark: {reason}", 45))
    right.legend(handles, labels, frameon=False, fontsize=8, loc="best")
    figure.tight_layout()
    save_figure(figure, out_dir, stem, dpi)
    return figure


# -- training curves ---------------------------------------------------------------------


@_plain_text
def plot_training_curves(
    results: StudyResults | str | os.PathLike, out_dir: str | os.PathLike, *, dpi: int = 110,
    stem: str = "training_curves",
) -> Figure:
    """Draw loss, accuracy and kept dimensions per epoch of every fit.

    Accuracy shows training accuracy (dashed) and validation accuracy (solid,
    at the epochs it was evaluated). Reads ``<side>_fit/history.csv``.
    """
    results = _results(results)
    sides = [side for side in SIDES if results.has(f"{side}_fit", "history.csv")]
    if not sides:
        results.path("human_fit", "history.csv")  # raises FileNotFoundError
    figure, (loss_axis, accuracy_axis, dims_axis) = _subplots(1, 3, figsize=(12.0, 3.4))
    for side in sides:
        history = results.history(side)
        color, name = SIDE_COLORS[side], SIDE_NAMES[side]
        loss_axis.plot(history["epoch"], history["loss"], color=color, label=name)
        accuracy_axis.plot(history["epoch"], history["train_accuracy"], color=color, linestyle="--",
                           label=f"{name} train")
        if "val_accuracy" in history:
            evaluated = history.dropna(subset=["val_accuracy"])
            accuracy_axis.plot(evaluated["epoch"], evaluated["val_accuracy"], color=color, marker="o",
                               markersize=3, label=f"{name} held out")
        dims_axis.plot(history["epoch"], history["n_dims"], color=color, label=name)
    for axis, title, label in (
        (loss_axis, "Training loss", "loss"),
        (accuracy_axis, "Odd-one-out accuracy", "accuracy"),
        (dims_axis, "Kept dimensions", "dimensions"),
    ):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(frameon=False, fontsize=8)
    # A count that changes by one dimension or less gets limits at whole
    # numbers, so that the axis marks them instead of fractions in between.
    low, high = dims_axis.get_ylim()
    if high - low < 2:
        dims_axis.set_ylim(math.floor(low), math.ceil(high))
    dims_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    save_figure(figure, out_dir, stem, dpi)
    return figure


# -- one dimension -------------------------------------------------------------------------


@_plain_text
def plot_dimension(
    results: StudyResults | str | os.PathLike, side: str, dim: int, out_dir: str | os.PathLike, *,
    top_k: int = 8, dpi: int = 110, stem: str | None = None,
) -> Figure:
    """Draw one dimension: its top objects, its word cloud (when labelled) and its best match.

    With an image folder the top objects are shown as images, otherwise as
    a bar chart of their weights with the object names. The title names the
    best match on the other side (see :meth:`StudyResults.best_match`).

    Reads ``<side>_fit/embedding.npz``, ``compare/matching.csv`` (when
    present) and the labels summary (when given).
    """
    results = _results(results)
    if side not in SIDES:
        raise ValueError(f"side {side!r} is invalid: use 'human' or 'dnn'")
    embedding = results.embedding(side)
    if not 0 <= dim < embedding.shape[1]:
        raise ValueError(f"{SIDE_NAMES[side]} dimension {dim} does not exist: the embedding has {embedding.shape[1]}")
    weights = embedding[:, dim]
    top = np.argsort(-weights, kind="stable")[: min(top_k, weights.size)]
    names = [results.objects.object_ids[row] for row in top]
    images = [results.image(int(row)) for row in top]
    labels = results.labels_of(side, dim)
    cloud = labels["wordcloud"] if labels else None

    show_images = all(path is not None for path in images)
    if results.images_dir is not None and not show_images:
        missing = [name for name, path in zip(names, images) if path is None]
        logger.warning(
            "%d of the %d top objects of %s dimension %d have no image under %s (%s), so the figure "
            "shows their weights as bars: name images <object_id>.jpg or fill the object table's "
            "source column", len(missing), len(names), SIDE_NAMES[side], dim, results.images_dir,
            ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
        )
    if show_images:
        widths = [1.0] * len(top)
    else:
        widths = [3.0]
    if cloud is not None:
        widths.append(2.4)
    n_columns = len(widths)
    figure, axes = _subplots(
        1, n_columns, figsize=(sum(widths) * 1.25 + 0.5, 2.9 if not show_images else 2.2),
        gridspec_kw={"width_ratios": widths}, squeeze=False,
    )
    axes = list(axes[0])
    if show_images:
        for axis, path, name, weight in zip(axes, images, names, weights[top]):
            _show_image(axis, path, results.decoding)
            axis.set_title(textwrap.shorten(name, 18), fontsize=7)
            axis.set_xlabel(f"weight {weight:.2f}", fontsize=7)
    else:
        axis = axes[0]
        positions = np.arange(len(top))[::-1]
        axis.barh(positions, weights[top], color=SIDE_COLORS[side])
        axis.set_yticks(positions)
        axis.set_yticklabels(names, fontsize=8)
        axis.set_xlabel("weight")
        axis.set_title("top objects", fontsize=9)
    if cloud is not None:
        _show_image(axes[-1], cloud)
        axes[-1].set_title("labels", fontsize=9)

    figure.suptitle(dimension_title(results, side, dim, labels), fontsize=10)
    figure.tight_layout()
    save_figure(figure, out_dir, stem or f"dimension_{side}_{dim:03d}", dpi)
    return figure


def dimension_title(results: StudyResults, side: str, dim: int, labels: dict[str, Any] | None = None) -> str:
    """Return a title such as ``human dimension 3 (animal) - best DNN match: dimension 5, r = 0.61``."""
    title = f"{SIDE_NAMES[side]} dimension {dim}"
    if labels and labels.get("top_labels"):
        title += f" ({textwrap.shorten(labels['top_labels'], 40)})"
    if results.has("compare", "matching.csv"):
        match = results.best_match(side, dim)
        if match is None:
            title += f" - no {SIDE_NAMES['dnn' if side == 'human' else 'human']} match"
        else:
            title += f" - best {SIDE_NAMES[match['other_side']]} match: dimension {match['other_dim']}, r = {match['r']:.2f}"
    return title


def _show_image(axis, path: Path, decoding: Decoding | None = None) -> None:
    """Draw an image file on ``axis``, decoded as ``dimalign extract`` decodes it.

    The background under transparent pixels and the EXIF orientation follow
    ``decoding`` (None: extract's defaults, white and EXIF applied), and
    16-bit scaling follows :func:`dimalign.features.decode.load_rgb`, so the
    figure shows the picture whose features were extracted.
    """
    from dimalign.features.decode import ImageReadError, load_rgb

    decoding = decoding or Decoding()
    try:
        image = load_rgb(path, decoding.background, decoding.exif_transpose)
    except ImageReadError as error:
        raise ValueError(f"{path} cannot be read as an image ({error.reason}); replace or remove it") from error
    image.thumbnail((256, 256))
    pixels = np.asarray(image)
    axis.imshow(pixels)
    axis.set_xticks([])
    axis.set_yticks([])


# -- kinds of dimensions ------------------------------------------------------------------


@_plain_text
def plot_kind_shares(
    results: StudyResults | str | os.PathLike, out_dir: str | os.PathLike, *, dpi: int = 110,
    stem: str = "kind_shares",
) -> Figure:
    """Draw the shares of visual, semantic and mixed dimensions, and of the triplet choices they drive.

    Left: share of each side's dimensions per resolved kind (``shares.csv``
    of the labels summary). Right, when relevance shares exist: share of the
    triplet choices whose most relevant dimension has each kind.
    """
    results = _results(results)
    panels = [("dimensions", results.kind_shares())]
    try:
        panels.append(("triplet choices", results.choice_shares()))
    except FileNotFoundError as error:
        logger.info("no triplet-choice shares: %s", error)

    figure, axes = _subplots(1, len(panels), figsize=(5.5 * len(panels), 2.6), squeeze=False)
    for axis, (what, table) in zip(axes[0], panels):
        sides = [side for side in SIDES if side in set(table["side"])]
        sides += sorted(set(table["side"]) - set(sides))
        for position, side in enumerate(sides):
            left = 0.0
            for row in table[table["side"] == side].itertuples():
                if row.share > 0:
                    axis.barh(position, row.share, left=left, color=KIND_COLORS.get(row.kind, "#777777"),
                              edgecolor="white", label=row.kind)
                    left += row.share
        axis.set_yticks(range(len(sides)))
        axis.set_yticklabels([SIDE_NAMES.get(side, side) for side in sides])
        axis.set_xlim(0, 1)
        axis.set_xlabel("share")
        axis.set_title(f"Kinds of dimensions: share of {what}")
        handles, labels = axis.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        axis.legend(unique.values(), unique.keys(), frameon=False, fontsize=7, ncol=3, loc="upper center",
                    bbox_to_anchor=(0.5, -0.3))
    figure.tight_layout()
    save_figure(figure, out_dir, stem, dpi)
    return figure


# -- disagreements -------------------------------------------------------------------------


@_plain_text
def plot_disagreements(
    results: StudyResults | str | os.PathLike, out_dir: str | os.PathLike, *, n_triplets: int = 6,
    dpi: int = 110, stem: str = "disagreements",
) -> Figure:
    """Draw the triplets where the human and the DNN model disagree most, with their most relevant dimensions.

    One row per triplet shows the three objects (images where given, names
    otherwise), with the human model's odd one out framed in blue and the
    DNN model's in orange. A text panel gives each model's most relevant
    dimension, its label (when labelled) and the drop in the choice's
    probability when that dimension is removed. Reads ``compare/disagreements.csv``.
    """
    results = _results(results)
    table = results.disagreements().head(n_triplets)
    if table.empty:
        raise FileNotFoundError(
            f"{results.path('compare', 'disagreements.csv')} lists no triplet: the models agree on every one"
        )
    figure, axes = _subplots(
        len(table), 4, figsize=(10.0, 1.55 * len(table) + 0.4), squeeze=False,
        gridspec_kw={"width_ratios": [1, 1, 1, 2.6]},
    )
    for row_axes, row in zip(axes, table.itertuples()):
        objects = [int(row.object_1), int(row.object_2), int(row.object_3)]
        for axis, obj in zip(row_axes[:3], objects):
            _draw_object(results, axis, obj)
            color = None
            if obj == int(row.human_odd_one_out):
                color = SIDE_COLORS["human"]
            elif obj == int(row.dnn_odd_one_out):
                color = SIDE_COLORS["dnn"]
            _frame(axis, color)
        text_axis = row_axes[3]
        text_axis.axis("off")
        text_axis.text(0.0, 0.5, _disagreement_text(results, row), fontsize=7.5, va="center", ha="left",
                       family="monospace", transform=text_axis.transAxes)
    figure.suptitle("Largest human-DNN disagreements (blue: human odd one out, orange: DNN odd one out)",
                    fontsize=10)
    figure.tight_layout()
    save_figure(figure, out_dir, stem, dpi)
    return figure


def _draw_object(results: StudyResults, axis, obj: int) -> None:
    name = results.objects.object_ids[obj]
    path = results.image(obj)
    if path is not None:
        _show_image(axis, path, results.decoding)
        axis.set_title(textwrap.shorten(name, 18), fontsize=7)
        return
    axis.set_xticks([])
    axis.set_yticks([])
    axis.text(0.5, 0.5, textwrap.fill(name, 14), ha="center", va="center", fontsize=9, transform=axis.transAxes)


def _frame(axis, color: str | None) -> None:
    """Frame an object's panel in ``color``; no frame for None (the pair both models kept)."""
    for spine in axis.spines.values():
        spine.set_visible(color is not None)
        if color is not None:
            spine.set_edgecolor(color)
            spine.set_linewidth(3.0)


def _disagreement_text(results: StudyResults, row) -> str:
    lines = []
    for side in SIDES:
        dim, drop = int(getattr(row, f"{side}_dim")), float(getattr(row, f"{side}_drop"))
        labels = results.labels_of(side, dim)
        label = f" ({textwrap.shorten(labels['top_labels'], 28)})" if labels and labels["top_labels"] else ""
        lines.append(f"{SIDE_NAMES[side]:>5}: dim {dim}{label}, drop {drop:.2f}")
    lines.append(f"p human {row.p_human:.2f}; p DNN of that choice {row.p_dnn_of_human_choice:.2f}")
    return "\n".join(lines)


__all__ = [
    "dimension_title",
    "plot_dimension",
    "plot_disagreements",
    "plot_kind_shares",
    "plot_matching",
    "plot_similarity_matrices",
    "plot_training_curves",
    "save_figure",
]
