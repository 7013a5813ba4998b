"""Figures of the human-DNN comparison: matched correlations and the cumulative RSA.

Each figure is written as PNG and SVG by a ``matplotlib.figure.Figure``
made without pyplot, so no display is needed and the caller's backend stays.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dimalign.io.files import atomic_path

logger = logging.getLogger(__name__)

METHOD_LABELS = {
    "greedy": "without replacement (greedy)",
    "optimal": "optimal assignment",
    "with_replacement": "with replacement",
}


def _new_figure() -> tuple[Any, Any]:
    """Return a 6 x 3.6 inch figure and its axes, made without pyplot.

    ``Figure.savefig`` picks the canvas of each file format (Agg for PNG), so
    the caller's backend, such as a notebook's inline one, stays as it is,
    and pyplot never keeps the figure open.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 3.6))
    return figure, figure.subplots()


def _save(figure, out_dir: Path, stem: str) -> list[str]:
    names = []
    for suffix in (".png", ".svg"):
        with atomic_path(out_dir / f"{stem}{suffix}") as temporary:
            figure.savefig(temporary, dpi=150, bbox_inches="tight")
        names.append(f"{stem}{suffix}")
    return names


def plot_matching(matchings: Mapping[str, object], out_dir: str | Path, stem: str = "matching") -> list[str]:
    """Plot each method's matched correlations, sorted from highest to lowest.

    Args:
        matchings (Mapping[str, Matching]): By method name.
        out_dir (str | Path): Output folder.
        stem (str): File name without suffix.

    Returns:
        list[str]: The files written (PNG and SVG).
    """
    figure, axis = _new_figure()
    for method, matching in matchings.items():
        correlations = np.asarray(matching.correlations)
        axis.plot(
            np.arange(1, correlations.size + 1), correlations, marker="o", markersize=3,
            linewidth=1.2, label=METHOD_LABELS.get(method, method),
        )
    axis.set_xlabel("human dimension (sorted by matched r)")
    axis.set_ylabel("Pearson r with matched DNN dimension")
    axis.set_ylim(min(0.0, axis.get_ylim()[0]), 1.0)
    axis.axhline(0.0, color="0.6", linewidth=0.8)
    axis.legend(frameon=False, fontsize=8)
    axis.set_title("Human-DNN dimension matching")
    return _save(figure, Path(out_dir), stem)


def cumulative_rsa_labels(cumulative) -> tuple[str, str | None]:
    """Return the legend labels of the share line and of the dimension mark.

    Args:
        cumulative (CumulativeRSA): The curve.

    Returns:
        tuple[str, str | None]: The share line's label, and the mark's label
        or None when no prefix reaches the share or the share is undefined.
    """
    if not cumulative.share_defined:
        interval = cumulative.r_full_interval
        if cumulative.r_full > 0 and interval is not None:
            reason = f"its interval [{interval[0]:.3f}, {interval[1]:.3f}] contains 0"
        else:
            reason = "it is not above 0"
        return f"full r = {cumulative.r_full:.3f}, no share of its r², because {reason}", None
    share_label = f"{100 * cumulative.share:.0f}% of the full r² ({cumulative.r_full**2:.3f})"
    n_dims = cumulative.n_dims_for_share
    if n_dims is None:
        return share_label, None
    if n_dims == 1:
        return share_label, "1 DNN dimension reaches it"
    return share_label, f"{n_dims} DNN dimensions reach it"


def plot_cumulative_rsa(cumulative, out_dir: str | Path, stem: str = "cumulative_rsa") -> list[str]:
    """Plot the explained variance as DNN dimensions are added, with the 95% mark.

    See :func:`cumulative_rsa_figure` for the axes.

    Args:
        cumulative (CumulativeRSA): The curve.
        out_dir (str | Path): Output folder.
        stem (str): File name without suffix.

    Returns:
        list[str]: The files written (PNG and SVG).
    """
    return _save(cumulative_rsa_figure(cumulative), Path(out_dir), stem)


def cumulative_rsa_figure(cumulative) -> Any:
    """Draw the cumulative RSA curve.

    The y axis is ``r_k^2 / r_full^2``, the share of the full DNN embedding's
    explained variance that the first ``k`` DNN dimensions reach. The
    matched dimensions come first and the unmatched ones follow, as
    :func:`dimalign.analysis.matching.matched_order` orders them. When that
    share is undefined (``cumulative.share_defined``), the y axis is ``r_k``.

    Args:
        cumulative (CumulativeRSA): The curve.

    Returns:
        matplotlib.figure.Figure: The figure, made without pyplot.
    """
    r = np.asarray(cumulative.r)
    steps = np.arange(1, r.size + 1)
    figure, axis = _new_figure()
    share_label, dims_label = cumulative_rsa_labels(cumulative)
    if cumulative.share_defined:
        axis.plot(steps, r**2 / cumulative.r_full**2, marker="o", markersize=3, linewidth=1.2, color="C0")
        axis.axhline(cumulative.share, color="C3", linestyle="--", linewidth=1.0, label=share_label)
        if dims_label is not None:
            axis.axvline(cumulative.n_dims_for_share, color="C3", linestyle=":", linewidth=1.0, label=dims_label)
        # Keep the share line off the frame when the whole curve lies above it.
        axis.set_ylim(bottom=min(axis.get_ylim()[0], cumulative.share - 0.1))
        axis.set_ylabel("share of the full model's r²")
    else:
        # Without a full r above 0 the share is meaningless, so plot r itself.
        axis.plot(steps, r, marker="o", markersize=3, linewidth=1.2, color="C0")
        axis.axhline(cumulative.r_full, color="C3", linestyle="--", linewidth=1.0, label=share_label)
        axis.axhline(0.0, color="0.6", linewidth=0.8)
        axis.set_ylabel("r with the human similarity")
    axis.set_xlabel("DNN dimensions added (matched ones first, then the unmatched)")
    # The curve can pass 100%, so a fixed corner may cover it.
    axis.legend(frameon=False, fontsize=8, loc="best")
    axis.set_title("Cumulative RSA with the human similarity")
    return figure


def write_comparison_figures(matchings: Mapping[str, object], cumulative, out_dir: str | Path) -> list[str]:
    """Write the matching and cumulative RSA figures and return their file names.

    Args:
        matchings (Mapping[str, Matching]): By method name.
        cumulative (CumulativeRSA): The cumulative RSA curve.
        out_dir (str | Path): Output folder.

    Returns:
        list[str]: The four files written (PNG and SVG of each figure).
    """
    names = plot_matching(matchings, out_dir) + plot_cumulative_rsa(cumulative, out_dir)
    logger.info("wrote figures %s to %s", ", ".join(names), out_dir)
    return names


__all__ = ["plot_cumulative_rsa", "plot_matching", "write_comparison_figures"]
