"""Tests of dimension matching, cumulative RSA and top-object lists."""

from __future__ import annotations

import numpy as np
import pytest

from dimalign.analysis.matching import (
    correlate_columns,
    cumulative_rsa,
    dims_for_share,
    match_all,
    match_dimensions,
    matched_order,
    top_objects_for_pair,
    top_objects_table,
)

# Greedy takes 0.9 first and is left with 0.1; the optimal assignment takes 0.8 + 0.85.
CORRELATIONS = np.array([[0.9, 0.8, 0.0], [0.85, 0.1, 0.0]])


def test_correlate_columns_matches_corrcoef():
    rng = np.random.default_rng(0)
    a, b = rng.random((30, 3)), rng.random((30, 4))
    expected = np.corrcoef(a.T, b.T)[:3, 3:]
    np.testing.assert_allclose(correlate_columns(a, b), expected, atol=1e-12)


@pytest.mark.parametrize("scale", [1e200, 1e-300])
def test_correlate_columns_extreme_scale(scale):
    # Squared deviations of 1e200 overflow and those of 1e-300 underflow, but r does not depend on the scale.
    rng = np.random.default_rng(1)
    a, b = rng.random((30, 3)), rng.random((30, 4))
    expected = np.corrcoef(a.T, b.T)[:3, 3:]

    np.testing.assert_allclose(correlate_columns(scale * a, scale * b), expected, atol=1e-12)


def test_correlate_columns_near_float_maximum():
    # Columns of both signs near the float maximum have an infinite range, which must not warn.
    import warnings

    rng = np.random.default_rng(2)
    a, b = rng.uniform(-1.0, 1.0, (30, 3)), rng.uniform(-1.0, 1.0, (30, 4))
    expected = np.corrcoef(a.T, b.T)[:3, 3:]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        correlations = correlate_columns(1.7e308 * a, 1.7e308 * b)

    np.testing.assert_allclose(correlations, expected, atol=1e-12)


def test_correlate_columns_constant_is_zero():
    a = np.column_stack([np.arange(5.0), np.full(5, 2.0)])
    with pytest.warns(UserWarning, match="zero variance"):
        correlations = correlate_columns(a, a)
    assert correlations[1, 1] == 0.0
    assert correlations[0, 1] == 0.0
    assert correlations[0, 0] == 1.0


def test_match_with_replacement_takes_row_maximum():
    matching = match_dimensions(None, None, "with_replacement", correlations=CORRELATIONS)
    assert matching.human_dims.tolist() == [0, 1]
    assert matching.dnn_dims.tolist() == [0, 0]
    assert matching.correlations.tolist() == [0.9, 0.85]


def test_match_greedy_takes_highest_first():
    matching = match_dimensions(None, None, "greedy", correlations=CORRELATIONS)
    assert matching.human_dims.tolist() == [0, 1]
    assert matching.dnn_dims.tolist() == [0, 1]
    assert matching.correlations.tolist() == [0.9, 0.1]


def test_match_optimal_maximises_total():
    matching = match_dimensions(None, None, "optimal", correlations=CORRELATIONS)
    assert matching.human_dims.tolist() == [1, 0]
    assert matching.dnn_dims.tolist() == [0, 1]
    assert matching.correlations.sum() == pytest.approx(1.65)


def test_match_without_replacement_needs_enough_dnn_dims():
    with pytest.raises(ValueError, match="3 human and 2 DNN dimensions.*with_replacement.*swap"):
        match_dimensions(None, None, "greedy", correlations=np.zeros((3, 2)))


def test_match_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown matching method"):
        match_dimensions(None, None, "hungarian", correlations=CORRELATIONS)


def test_match_all_recovers_permutation():
    rng = np.random.default_rng(1)
    human = rng.gamma(1.0, size=(50, 4))
    dnn = human[:, [2, 3, 0, 1]] + 0.01 * rng.random((50, 4))
    results = match_all(human, dnn)
    assert sorted(results) == ["greedy", "optimal", "with_replacement"]
    for matching in results.values():
        pairs = dict(zip(matching.human_dims.tolist(), matching.dnn_dims.tolist()))
        assert pairs == {0: 2, 1: 3, 2: 0, 3: 1}
        assert np.all(np.diff(matching.correlations) <= 0)
    frame = results["greedy"].to_frame()
    assert frame.columns.tolist() == ["rank", "method", "human_dim", "dnn_dim", "r"]


def test_match_all_with_fewer_dnn_dims():
    rng = np.random.default_rng(2)
    with pytest.warns(UserWarning, match="3 human but only 2 DNN dimensions: only matching with replacement"):
        results = match_all(rng.random((20, 3)), rng.random((20, 2)))
    assert list(results) == ["with_replacement"]


def test_match_dimensions_rejects_nan():
    rng = np.random.default_rng(5)
    dnn = rng.random((10, 3))
    dnn[4, 2] = np.nan
    with pytest.raises(ValueError, match="the DNN embedding contains NaN or inf in 1 entries, the first at row 4, column 2"):
        match_dimensions(rng.random((10, 2)), dnn, "with_replacement")


def test_matched_order_deduplicates_and_appends():
    matching = match_dimensions(None, None, "with_replacement", correlations=CORRELATIONS)
    assert matched_order(matching, 3, CORRELATIONS).tolist() == [0, 1, 2]
    correlations = np.array([[0.1, 0.2, 0.9, 0.3]])
    matching = match_dimensions(None, None, "greedy", correlations=correlations)
    assert matched_order(matching, 4, correlations).tolist() == [2, 3, 1, 0]


def test_dims_for_share_threshold():
    r = np.array([0.5, 0.7, 0.78, 0.8])
    # 0.95 * 0.8^2 = 0.608; 0.78^2 = 0.6084 is the first to reach it.
    assert dims_for_share(r, 0.8, 0.95) == 3
    assert dims_for_share(r, 0.8, 1.0) == 4
    assert dims_for_share(np.array([0.1]), 0.8) is None


def dot_similarity(embedding):
    return embedding @ embedding.T


def test_cumulative_rsa_steps():
    rng = np.random.default_rng(3)
    human = rng.gamma(1.0, size=(25, 3))
    dnn = np.column_stack([human[:, 1], rng.random(25), human[:, 0], human[:, 2]])
    curve = cumulative_rsa(dot_similarity(human), dnn, [2, 0, 3, 1], similarity=dot_similarity)
    from dimalign.analysis.rsa import rsa

    assert curve.r[2] == pytest.approx(1.0)
    assert curve.r[0] == pytest.approx(rsa(dot_similarity(human), dot_similarity(dnn[:, [2]])))
    assert curve.r_full == pytest.approx(rsa(dot_similarity(human), dot_similarity(dnn)))
    assert curve.n_dims_for_share == dims_for_share(curve.r, curve.r_full)
    frame = curve.to_frame()
    assert frame["n_dims"].tolist() == [1, 2, 3, 4]
    assert frame["dnn_dim"].tolist() == [2, 0, 3, 1]


def test_cumulative_rsa_with_model_similarity():
    rng = np.random.default_rng(4)
    human = rng.gamma(1.0, size=(12, 2))
    dnn = human[:, ::-1].copy()
    from dimalign.analysis.similarity import similarity_matrix

    curve = cumulative_rsa(similarity_matrix(human), dnn, [1, 0])
    assert curve.r_full == pytest.approx(1.0)
    assert curve.r[1] == pytest.approx(1.0)
    assert curve.n_dims_for_share in (1, 2)


def test_top_objects_for_pair_groups():
    human = np.array([9.0, 8.0, 0.0, 1.0, 7.0])
    dnn = np.array([9.0, 0.0, 8.0, 1.0, 7.0])
    lists = top_objects_for_pair(human, dnn, k=2)
    assert lists["both"].tolist() == [0, 4]
    assert lists["human_only"].tolist()[0] == 1
    assert lists["dnn_only"].tolist()[0] == 2


def test_top_objects_table_names():
    human = np.array([[9.0], [8.0], [0.0], [1.0]])
    dnn = np.array([[9.0], [0.0], [8.0], [1.0]])
    matching = match_dimensions(human, dnn, "greedy")
    table = top_objects_table(human, dnn, matching, ["ant", "bee", "cow", "dog"], k=1)
    assert table["group"].tolist() == ["both", "human_only", "dnn_only"]
    assert table["object_id"].tolist() == ["ant", "bee", "cow"]


def test_top_objects_rejects_large_k():
    with pytest.raises(ValueError, match="k=5"):
        top_objects_for_pair(np.ones(3), np.ones(3), k=5)


def test_cumulative_rsa_constant_first_step_is_nan():
    from dimalign.analysis.similarity import similarity_matrix

    rng = np.random.default_rng(6)
    human = rng.gamma(1.0, size=(15, 2))
    # Dimension 0 is non-zero for one object only, so every pair has dot product 0.
    dnn = np.column_stack([np.eye(15)[0], human[:, 0], human[:, 1]])
    with pytest.warns(RuntimeWarning, match=r"first \[1\] added dimensions is constant"):
        curve = cumulative_rsa(similarity_matrix(human), dnn, [0, 1, 2])
    assert np.isnan(curve.r[0])
    assert curve.r[1] == pytest.approx(rsa_of(similarity_matrix(human), similarity_matrix(dnn[:, [0, 1]])))
    assert curve.r[2] == pytest.approx(curve.r_full)


def rsa_of(first, second):
    from dimalign.analysis.rsa import rsa

    return rsa(first, second)


def test_cumulative_rsa_logs_progress(caplog, monkeypatch):
    """One matrix per step can take minutes in all on THINGS, so the log reports how far the curve has come."""
    import dimalign.analysis.matching as matching_module

    clock = iter(range(0, 10_000, 20))
    monkeypatch.setattr(matching_module.time, "monotonic", lambda: next(clock))
    rng = np.random.default_rng(8)
    dnn = rng.gamma(1.0, size=(12, 8))

    with caplog.at_level("INFO", logger="dimalign.analysis.matching"):
        cumulative_rsa(dot_similarity(dnn), dnn, list(range(8)), similarity=dot_similarity)

    assert "cumulative RSA: rebuilding the DNN similarity matrix for 8 prefixes of DNN dimensions" in caplog.text
    assert "cumulative RSA: 3 of 8 steps done" in caplog.text


def test_cumulative_rsa_logs_negative_full_r(caplog):
    """A DNN whose similarity is the reverse of the human one has no meaningful share."""
    rng = np.random.default_rng(7)
    dnn = rng.gamma(1.0, size=(10, 2))
    human_similarity = -dot_similarity(dnn)

    with caplog.at_level("INFO", logger="dimalign.analysis.matching"):
        curve = cumulative_rsa(human_similarity, dnn, [0, 1], similarity=dot_similarity)

    assert curve.n_dims_for_share is None
    assert curve.r_full == pytest.approx(-1.0)
    assert (
        "cumulative RSA: full r = -1.000 is not above 0, so no share of its r² is meaningful and no number "
        "of DNN dimensions for 95% is given"
    ) in caplog.text
    assert "reach" not in caplog.text
    assert "None" not in caplog.text


@pytest.mark.parametrize("n_dims, expected", [(1, "1 DNN dimension reaches it"), (4, "4 DNN dimensions reach it"), (None, None)])
def test_cumulative_rsa_figure_labels(n_dims, expected):
    from dimalign.analysis.figures_compare import cumulative_rsa_labels
    from dimalign.analysis.matching import CumulativeRSA

    curve = CumulativeRSA(dnn_dims=np.arange(4), r=np.full(4, 0.5), r_full=0.4, share=0.95, n_dims_for_share=n_dims)

    share_label, dims_label = cumulative_rsa_labels(curve)

    assert share_label == "95% of the full r² (0.160)"
    assert dims_label == expected


def test_dims_for_share_needs_positive_full_r():
    assert dims_for_share(np.array([0.5, 0.6]), 0.0) is None
    assert dims_for_share(np.array([0.5, 0.6]), -0.3) is None


def test_cumulative_share_undefined_when_interval_holds_zero():
    from dimalign.analysis.figures_compare import cumulative_rsa_labels
    from dimalign.analysis.matching import CumulativeRSA

    curve = CumulativeRSA(
        dnn_dims=np.arange(3), r=np.array([0.25, 0.1, 0.04]), r_full=0.04, share=0.95, n_dims_for_share=None,
        r_full_interval=(-0.08, 0.23),
    )
    assert not curve.share_defined
    assert curve.to_frame()["share_of_full_r2"].isna().all()
    share_label, dims_label = cumulative_rsa_labels(curve)
    assert "its interval [-0.080, 0.230] contains 0" in share_label
    assert dims_label is None


def test_match_dimensions_warning_names_caller():
    """A warning raised two calls deep still points at the user's line."""
    rng = np.random.default_rng(3)
    dnn = rng.random((20, 4))
    dnn[:, 1] = 0.5
    with pytest.warns(UserWarning, match="1 dimension.* of the DNN embedding have zero variance") as caught:
        match_dimensions(rng.random((20, 3)), dnn, "with_replacement")
    assert [warning.filename for warning in caught] == [__file__]


@pytest.mark.parametrize(
    ("order", "message"),
    [([0, 7], r"order names DNN dimension 7 at position 1, but the DNN embedding has 4 dimensions \(0 to 3\)"),
     ([0, -1], r"order names DNN dimension -1 at position 1"),
     ([0.5, 1], r"order must be integer DNN dimensions, got 0.5 at position 0"),
     ([2, 0, 2], r"order names DNN dimension 2 twice \(positions 0 and 2\)"),
     ([], r"order is empty: name at least one DNN dimension")],
)
def test_cumulative_rsa_rejects_invalid_order(order, message):
    """A fractional dimension was truncated to another one, and one out of range raised IndexError."""
    rng = np.random.default_rng(3)
    human = rng.gamma(1.0, size=(10, 3))
    with pytest.raises(ValueError, match=message):
        cumulative_rsa(dot_similarity(human), rng.gamma(1.0, size=(10, 4)), order, similarity=dot_similarity)


def test_top_objects_rejects_fractional_k():
    with pytest.raises(ValueError, match="k must be an integer, got 2.5"):
        top_objects_for_pair(np.arange(5.0), np.arange(5.0), k=2.5)


def test_comparison_figures_keep_caller_backend(tmp_path):
    # A notebook's inline backend must survive a comparison, so the figures may not call matplotlib.use.
    import subprocess
    import sys

    script = """
import sys
import matplotlib
matplotlib.use("pdf")
import numpy as np
from dimalign.analysis.figures_compare import write_comparison_figures
from dimalign.analysis.matching import CumulativeRSA, match_all

rng = np.random.default_rng(0)
curve = CumulativeRSA(dnn_dims=np.arange(3), r=np.array([0.3, 0.5, 0.6]), r_full=0.6, share=0.95,
                      n_dims_for_share=3)
names = write_comparison_figures(match_all(rng.random((10, 2)), rng.random((10, 3))), curve, sys.argv[1])
print(matplotlib.get_backend(), sorted(names))
"""
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            check=True)

    assert result.stdout.split()[0] == "pdf"
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "cumulative_rsa.png", "cumulative_rsa.svg", "matching.png", "matching.svg",
    ]


def share_curve_inputs():
    """A human similarity and a DNN whose third dimension alone reproduces it (full r about 0.95)."""
    rng = np.random.default_rng(3)
    human = rng.gamma(1.0, size=(25, 3))
    dnn = np.column_stack([human[:, 1], rng.random(25), human[:, 0], human[:, 2]])
    return dot_similarity(human), dnn


def test_cumulative_rsa_log_states_interval(caplog):
    human_similarity, dnn = share_curve_inputs()

    with caplog.at_level("INFO", logger="dimalign.analysis.matching"):
        curve = cumulative_rsa(
            human_similarity, dnn, [2, 0, 3, 1], similarity=dot_similarity, r_full_interval=(0.6, 0.99)
        )

    assert curve.r_full_interval == (0.6, 0.99)
    assert curve.n_dims_for_share == 3
    assert (
        f"cumulative RSA: full r = {curve.r_full:.3f}, bootstrap interval [0.600, 0.990]; the first 3 of 4 "
        "DNN dimensions in matched order together reach 95% of the full r²"
    ) in caplog.text


def test_cumulative_rsa_interval_with_zero(caplog):
    """A count from the point estimate is never logged when the interval of the full r contains 0."""
    human_similarity, dnn = share_curve_inputs()

    with caplog.at_level("INFO", logger="dimalign.analysis.matching"):
        curve = cumulative_rsa(
            human_similarity, dnn, [2, 0, 3, 1], similarity=dot_similarity, r_full_interval=(-0.1, 0.99)
        )

    assert curve.n_dims_for_share is None
    assert not curve.share_defined
    assert "reach" not in caplog.text
    assert (
        f"cumulative RSA: full r = {curve.r_full:.3f}, but its bootstrap interval [-0.100, 0.990] contains 0, "
        "so no share of its r² is meaningful and no number of DNN dimensions for 95% is given"
    ) in caplog.text


def test_cumulative_figure_axis_names_order():
    """The curve adds the unmatched DNN dimensions after the matched ones, and the x axis label states it."""
    from dimalign.analysis.figures_compare import cumulative_rsa_figure
    from dimalign.analysis.matching import CumulativeRSA

    curve = CumulativeRSA(dnn_dims=np.arange(4), r=np.full(4, 0.5), r_full=0.5, share=0.95, n_dims_for_share=1)

    axis = cumulative_rsa_figure(curve).axes[0]

    assert axis.get_xlabel() == "DNN dimensions added (matched ones first, then the unmatched)"
    assert axis.get_ylabel() == "share of the full model's r²"


def test_match_all_one_dnn_dimension():
    rng = np.random.default_rng(3)
    with pytest.warns(UserWarning, match="3 human but only 1 DNN dimension: only matching with replacement"):
        matchings = match_all(rng.random((10, 3)), rng.random((10, 1)))
    assert list(matchings) == ["with_replacement"]
    assert matchings["with_replacement"].dnn_dims.tolist() == [0, 0, 0]
