"""Tests of the chance level of matched correlations, the RSA method and the many-dimensions warning of compare."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from dimalign.analysis.compare import compare
from dimalign.analysis.matching import chance_matchings, match_dimensions
from dimalign.analysis.rsa import upper_triangle
from dimalign.analysis.similarity import similarity_matrix
from dimalign.cli import main


def gamma_embedding(n_objects, n_dims, seed):
    return np.random.default_rng(seed).gamma(1.0, 1.0, size=(n_objects, n_dims))


def related_pair(n_objects=30, seed=0):
    """Return a 3-d human embedding and a 6-d DNN embedding whose first 3 dimensions follow it."""
    human = gamma_embedding(n_objects, 3, seed)
    noise = gamma_embedding(n_objects, 6, seed + 1)
    dnn = noise.copy()
    dnn[:, :3] += 2.0 * human
    return human, dnn


# -- chance_matchings ---------------------------------------------------------


def test_chance_matchings_permute_dnn_rows():
    human, dnn = related_pair()
    chance = chance_matchings(human, dnn, ("greedy", "optimal"), n_permutations=3, random_state=5)

    generator = np.random.default_rng(5)
    for permutation in range(3):
        rows = generator.permutation(30)
        for method in ("greedy", "optimal"):
            expected = match_dimensions(human, dnn[rows], method).correlations
            np.testing.assert_allclose(chance[method][permutation], expected, rtol=0, atol=1e-12)
    assert chance["greedy"].shape == (3, 3)


def test_chance_matchings_without_permutations():
    human, dnn = related_pair()
    chance = chance_matchings(human, dnn, ("with_replacement",), n_permutations=0)
    assert chance["with_replacement"].shape == (0, 3)


@pytest.mark.parametrize("n_permutations", [-1, 2.5, True])
def test_chance_matchings_reject_bad_permutation_count(n_permutations):
    human, dnn = related_pair()
    with pytest.raises(ValueError, match="n_permutations"):
        chance_matchings(human, dnn, ("greedy",), n_permutations=n_permutations)


def test_chance_matchings_reject_nan_weights():
    human, dnn = related_pair()
    human[4, 1] = np.nan
    with pytest.raises(ValueError, match="human embedding contains NaN or inf in 1 entries, the first at row 4, column 1"):
        chance_matchings(human, dnn, ("greedy",), n_permutations=2)


def test_chance_matchings_reject_row_mismatch():
    human, dnn = related_pair()
    with pytest.raises(ValueError, match=r"same number of rows \(objects\), got \(30, 3\) and \(20, 6\)"):
        chance_matchings(human, dnn[:20], ("greedy",), n_permutations=2)


def test_chance_matchings_reject_unknown_method():
    human, dnn = related_pair()
    with pytest.raises(ValueError, match="unknown matching method 'hungarian'"):
        chance_matchings(human, dnn, ("greedy", "hungarian"), n_permutations=0)


def test_chance_matchings_reject_too_few_dnn_dims():
    human, dnn = related_pair()
    with pytest.raises(ValueError, match="got 6 human and 3 DNN dimensions"):
        chance_matchings(dnn, human, ("optimal",), n_permutations=0)


# -- compare: chance level ----------------------------------------------------


def test_compare_writes_chance_level(tmp_path):
    human, dnn = related_pair()
    result = compare(human, dnn, tmp_path / "out", n_bootstrap=0, top_k=2, chance_permutations=4, random_state=7)

    chance = chance_matchings(human, dnn, ("with_replacement", "greedy", "optimal"), n_permutations=4, random_state=7)
    assert sorted(result.chance) == ["greedy", "optimal", "with_replacement"]
    np.testing.assert_array_equal(result.chance["optimal"], chance["optimal"])
    table = pd.read_csv(tmp_path / "out" / "matching_chance.csv")
    assert list(table.columns) == ["rank", "method", "r_chance_mean", "r_chance_max"]
    greedy = table[table["method"] == "greedy"]
    assert greedy["rank"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(greedy["r_chance_mean"], chance["greedy"].mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(greedy["r_chance_max"], chance["greedy"].max(axis=0), atol=1e-12)

    summary = json.loads((tmp_path / "out" / "rsa.json").read_text())
    assert summary["chance_permutations"] == 4
    assert summary["matched_r_max_chance"] == pytest.approx(chance["greedy"].max(axis=1).mean(), abs=1e-12)
    assert summary["matched_r_median_chance"] == pytest.approx(np.median(chance["greedy"], axis=1).mean(), abs=1e-12)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["chance_permutations"] == 4


def test_compare_chance_keeps_other_numbers(tmp_path):
    human, dnn = related_pair()
    compare(human, dnn, tmp_path / "with", n_bootstrap=20, top_k=2)
    compare(human, dnn, tmp_path / "without", n_bootstrap=20, top_k=2, chance_permutations=0)

    for name in ("matching.csv", "cumulative_rsa.csv", "top_objects.csv"):
        assert (tmp_path / "with" / name).read_text() == (tmp_path / "without" / name).read_text()
    with_chance = json.loads((tmp_path / "with" / "rsa.json").read_text())
    without_chance = json.loads((tmp_path / "without" / "rsa.json").read_text())
    assert without_chance["matched_r_median_chance"] is None
    assert not (tmp_path / "without" / "matching_chance.csv").exists()
    chance_keys = {"chance_permutations", "matched_r_max_chance", "matched_r_median_chance"}
    for key in set(with_chance) - chance_keys:
        assert with_chance[key] == without_chance[key], key


def test_compare_rerun_removes_chance_file(tmp_path):
    human, dnn = related_pair()
    compare(human, dnn, tmp_path / "out", n_bootstrap=0, top_k=2)
    assert (tmp_path / "out" / "matching_chance.csv").is_file()

    compare(human, dnn, tmp_path / "out", n_bootstrap=0, top_k=2, chance_permutations=0)
    assert not (tmp_path / "out" / "matching_chance.csv").exists()


@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_compare_rejects_invalid_permutations(tmp_path, value):
    human, dnn = related_pair()
    with pytest.raises((ValueError, TypeError), match="chance_permutations"):
        compare(human, dnn, tmp_path / "out", n_bootstrap=0, top_k=2, chance_permutations=value)
    assert not (tmp_path / "out").exists()


def test_compare_warns_matching_at_chance(tmp_path):
    human = gamma_embedding(30, 3, seed=0)
    unrelated = gamma_embedding(30, 6, seed=1)
    with pytest.warns(UserWarning, match=r"the median matched r 0\.\d{3} of the greedy matching is not above"):
        compare(human, unrelated, tmp_path / "out", n_bootstrap=0, top_k=2)


def test_compare_related_pair_no_chance_warning(tmp_path):
    human, dnn = related_pair()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare(human, dnn, tmp_path / "out", n_bootstrap=0, top_k=2)
    assert not [warning for warning in caught if "chance level" in str(warning.message)]


# -- compare: many dimensions -------------------------------------------------


def test_compare_warns_many_dimensions(tmp_path):
    human = gamma_embedding(40, 3, seed=2)
    dnn = gamma_embedding(40, 25, seed=3)
    with pytest.warns(UserWarning, match="the DNN embedding has 25 dimensions for 40 compared objects"):
        compare(human, dnn, tmp_path / "out", n_bootstrap=0, top_k=2, chance_permutations=0)


def test_compare_half_dimensions_no_warning(tmp_path):
    human = gamma_embedding(40, 3, seed=2)
    dnn = gamma_embedding(40, 20, seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare(human, dnn, tmp_path / "out", n_bootstrap=0, top_k=2, chance_permutations=0)
    assert not [warning for warning in caught if "compared objects" in str(warning.message)]


# -- compare: RSA method ------------------------------------------------------


def test_compare_spearman_rsa_matches_scipy(tmp_path):
    human, dnn = related_pair()
    compare(human, dnn, tmp_path / "out", n_bootstrap=20, top_k=2, rsa_method="spearman")

    expected = spearmanr(upper_triangle(similarity_matrix(human)), upper_triangle(similarity_matrix(dnn))).statistic
    summary = json.loads((tmp_path / "out" / "rsa.json").read_text())
    assert summary["method"] == "spearman"
    assert summary["r"] == pytest.approx(expected, abs=1e-12)
    assert summary["cumulative_full_r"] == pytest.approx(expected, abs=1e-12)
    assert summary["n_bootstrap_valid"] == 20
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["rsa_method"] == "spearman"


def test_compare_pearson_rsa_by_default(tmp_path):
    human, dnn = related_pair()
    compare(human, dnn, tmp_path / "out", n_bootstrap=0, top_k=2)

    expected = np.corrcoef(upper_triangle(similarity_matrix(human)), upper_triangle(similarity_matrix(dnn)))[0, 1]
    summary = json.loads((tmp_path / "out" / "rsa.json").read_text())
    assert summary["method"] == "pearson"
    assert summary["r"] == pytest.approx(expected, abs=1e-12)


def test_compare_rejects_unknown_rsa_method(tmp_path):
    human, dnn = related_pair()
    with pytest.raises(ValueError, match=r"rsa_method='kendall' is invalid \(--rsa-method\): use one of pearson, spearman"):
        compare(human, dnn, tmp_path / "out", n_bootstrap=0, top_k=2, rsa_method="kendall")
    assert not (tmp_path / "out").exists()


def test_compare_cli_spearman_without_chance(tmp_path, capsys):
    human, dnn = related_pair()
    np.save(tmp_path / "human.npy", human)
    np.save(tmp_path / "dnn.npy", dnn)
    out = tmp_path / "out"

    code = main([
        "compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(out), "--bootstrap", "0",
        "--top-k", "2", "--rsa-method", "spearman", "--chance-permutations", "0",
    ])

    assert code == 0
    expected = spearmanr(upper_triangle(similarity_matrix(human)), upper_triangle(similarity_matrix(dnn))).statistic
    assert f"human-DNN RSA Spearman rho {expected:.3f}, 3 matched dimension pairs" in capsys.readouterr().out
    assert json.loads((out / "rsa.json").read_text())["method"] == "spearman"
    assert not (out / "matching_chance.csv").exists()
