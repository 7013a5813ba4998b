"""Tests of the human-DNN comparison: alignment, similarity at scale, bootstrap RSA, CLI."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr

from dimalign.labeling.analysis import read_relevance
from dimalign.analysis import compare as compare_module
from dimalign.analysis.compare import (
    align_embeddings,
    align_objects,
    bootstrap_indices,
    bootstrap_rsa,
    compare,
    resampled_rsa,
    similarity_matrix_to_disk,
    variance_explained,
)
from dimalign.analysis.similarity import similarity_matrix
from dimalign.cli import main
from dimalign.io.objects import ObjectTable, read_object_table, write_object_table
from dimalign.io.runs import EmbeddingResult, load_embedding, save_embedding

IMAGE_FILES = ["bird.png", "cat.png", "dragonfly.png", "grace_hopper.png", "hot_dog.jpg", "owl.jpg", "parrot.jpg", "sunflower.png"]


def gamma_embedding(n_objects, n_dims, seed):
    return np.random.default_rng(seed).gamma(1.0, 1.0, size=(n_objects, n_dims))


# -- similarity on disk --------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_similarity_on_disk_matches_in_memory(tmp_path, scale):
    # scale 40 spans more than exp's range, so the per-element path runs.
    embedding = scale * gamma_embedding(23, 4, seed=0)
    on_disk = similarity_matrix_to_disk(embedding, tmp_path / "similarity.npy", block_size=5)
    assert isinstance(on_disk, np.memmap)
    np.testing.assert_allclose(on_disk, similarity_matrix(embedding), atol=1e-14, rtol=0)
    assert not (tmp_path / "similarity.partial.npy").exists()
    assert not (tmp_path / "similarity.partial.json").exists()


def test_similarity_on_disk_float32(tmp_path):
    embedding = gamma_embedding(15, 3, seed=1)
    on_disk = similarity_matrix_to_disk(embedding, tmp_path / "s.npy", dtype="float32")
    assert on_disk.dtype == np.float32
    np.testing.assert_allclose(on_disk, similarity_matrix(embedding), atol=1e-6)


def test_similarity_on_disk_resumes(tmp_path, monkeypatch):
    embedding = gamma_embedding(12, 3, seed=2)
    original = compare_module._similarity_block
    calls = {"n": 0}

    def failing_block(*args):
        calls["n"] += 1
        if calls["n"] == 6:  # row blocks 0 and 4 take 3 + 2 column blocks
            raise RuntimeError("interrupted")
        return original(*args)

    monkeypatch.setattr(compare_module, "_similarity_block", failing_block)
    with pytest.raises(RuntimeError, match="interrupted"):
        similarity_matrix_to_disk(embedding, tmp_path / "s.npy", block_size=4)
    progress = json.loads((tmp_path / "s.partial.json").read_text())
    assert progress["finished_row_blocks"] == [0, 4]

    monkeypatch.setattr(compare_module, "_similarity_block", original)
    finished = similarity_matrix_to_disk(embedding, tmp_path / "s.npy", block_size=4)
    np.testing.assert_allclose(finished, similarity_matrix(embedding), atol=1e-14, rtol=0)


def test_similarity_on_disk_resume_other_block_size(tmp_path, monkeypatch):
    # Row block 0 of size 4 is finished. Blocks of 8 would skip rows 4 to 7 as
    # done and leave zeros there, so the rows must be computed again.
    embedding = gamma_embedding(12, 3, seed=3)
    original = compare_module._similarity_block
    calls = {"n": 0}

    def failing_block(*args):
        calls["n"] += 1
        if calls["n"] == 4:  # row block 0 takes 3 column blocks
            raise RuntimeError("interrupted")
        return original(*args)

    monkeypatch.setattr(compare_module, "_similarity_block", failing_block)
    with pytest.raises(RuntimeError, match="interrupted"):
        similarity_matrix_to_disk(embedding, tmp_path / "s.npy", block_size=4)
    monkeypatch.setattr(compare_module, "_similarity_block", original)

    finished = similarity_matrix_to_disk(embedding, tmp_path / "s.npy", block_size=8)

    np.testing.assert_allclose(finished, similarity_matrix(embedding), atol=1e-14, rtol=0)


def test_similarity_on_disk_damaged_progress_restarts(tmp_path):
    embedding = gamma_embedding(12, 3, seed=4)
    np.save(tmp_path / "s.partial.npy", np.zeros((12, 12)))
    (tmp_path / "s.partial.json").write_text("{not json", encoding="utf-8")

    finished = similarity_matrix_to_disk(embedding, tmp_path / "s.npy", block_size=4)

    np.testing.assert_allclose(finished, similarity_matrix(embedding), atol=1e-14, rtol=0)


def test_similarity_on_disk_invalid_block_list_restarts(tmp_path):
    # The record matches this call, but its list of finished row blocks is damaged.
    embedding = gamma_embedding(12, 3, seed=4)
    record = compare_module._partial_record(embedding, "float64", 4, set())
    np.save(tmp_path / "s.partial.npy", np.zeros((12, 12)))
    (tmp_path / "s.partial.json").write_text(json.dumps({**record, "finished_row_blocks": None}), encoding="utf-8")

    finished = similarity_matrix_to_disk(embedding, tmp_path / "s.npy", block_size=4)

    np.testing.assert_allclose(finished, similarity_matrix(embedding), atol=1e-14, rtol=0)


def test_similarity_on_disk_rejects_negatives(tmp_path):
    """Its dot products are those of similarity_matrix, which rejects weights below -0.01."""
    embedding = gamma_embedding(12, 3, seed=2)
    embedding[4, 2] = -0.5

    with pytest.raises(ValueError, match=(
        r"^the embedding: 1 negative weights, the lowest -0.5 at row 4, dimension 2; embeddings must be "
        r"non-negative: apply ReLU first, as VICE and SPoSE do \(numpy.maximum\(weights, 0\)\)$"
    )):
        similarity_matrix_to_disk(embedding, tmp_path / "s.npy")
    assert list(tmp_path.iterdir()) == []


def test_similarity_on_disk_keeps_rounding_negatives(tmp_path):
    embedding = gamma_embedding(12, 3, seed=2)
    embedding[4, 2] = -0.005

    on_disk = similarity_matrix_to_disk(embedding, tmp_path / "s.npy")

    np.testing.assert_allclose(on_disk, similarity_matrix(embedding), atol=1e-14, rtol=0)


def test_similarity_on_disk_recomputes_for_other_embedding(tmp_path):
    first = gamma_embedding(12, 3, seed=10)
    second = gamma_embedding(12, 3, seed=11)
    path = tmp_path / "s.npy"
    similarity_matrix_to_disk(first, path)
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["embedding_shape"] == [12, 3]
    assert record["dtype"] == "float64"

    np.testing.assert_allclose(similarity_matrix_to_disk(second, path), similarity_matrix(second), atol=1e-14, rtol=0)
    np.testing.assert_allclose(
        similarity_matrix_to_disk(second, path, dtype="float32"), similarity_matrix(second), atol=1e-6, rtol=0
    )
    assert np.load(path).dtype == np.float32


def test_similarity_on_disk_reuses_recorded_matrix(tmp_path):
    embedding = gamma_embedding(12, 3, seed=12)
    path = tmp_path / "s.npy"
    similarity_matrix_to_disk(embedding, path)
    before = path.stat().st_mtime_ns
    similarity_matrix_to_disk(embedding, path)
    assert path.stat().st_mtime_ns == before

    # A matrix without its record cannot be checked, so it is computed again.
    np.save(path, np.zeros((12, 12)))
    (tmp_path / "s.json").unlink()
    np.testing.assert_allclose(similarity_matrix_to_disk(embedding, path), similarity_matrix(embedding), atol=1e-14, rtol=0)


def test_similarity_on_disk_accepts_reversed_view(tmp_path):
    embedding = gamma_embedding(12, 3, seed=14)
    view = embedding[:, ::-1]
    on_disk = similarity_matrix_to_disk(view, tmp_path / "s.npy")
    np.testing.assert_allclose(on_disk, similarity_matrix(view.copy()), atol=1e-14, rtol=0)


def test_compare_accepts_reversed_view(tmp_path):
    human = gamma_embedding(20, 4, seed=15)
    result = compare(human, human[:, ::-1], tmp_path / "out", n_bootstrap=0, triplets=np.array([[0, 1, 2]]))
    assert result.rsa.r == pytest.approx(1.0, abs=1e-12)
    matched = result.matchings["greedy"]
    assert sorted(zip(matched.human_dims.tolist(), matched.dnn_dims.tolist())) == [(0, 3), (1, 2), (2, 1), (3, 0)]


def test_similarity_on_disk_rejects_nan(tmp_path):
    embedding = gamma_embedding(12, 3, seed=13)
    embedding[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"embedding rows \[2\] contain NaN or inf"):
        similarity_matrix_to_disk(embedding, tmp_path / "s.npy")
    assert list(tmp_path.iterdir()) == []


def test_similarity_on_disk_numpy_block_size(tmp_path):
    # The progress record stores block_size as JSON, which has no numpy integers.
    embedding = gamma_embedding(12, 3, seed=5)

    finished = similarity_matrix_to_disk(embedding, tmp_path / "s.npy", block_size=np.int64(4))

    np.testing.assert_allclose(finished, similarity_matrix(embedding), atol=1e-14, rtol=0)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.json", "s.npy"]


def test_similarity_on_disk_rejects_negative_weights(tmp_path):
    # Checked like similarity_matrix, whose matrix this one must equal.
    embedding = gamma_embedding(12, 3, seed=13)
    embedding[2, 1] = -0.5
    with pytest.raises(ValueError, match=r"1 negative weights, the lowest -0.5 at row 2, dimension 1"):
        similarity_matrix_to_disk(embedding, tmp_path / "s.npy")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("block_size", "message"),
    [(2.5, "block_size must be an integer, got 2.5"), (True, "block_size must be an integer, got True"),
     (0, "block_size must be at least 1, got 0")],
)
def test_similarity_on_disk_rejects_invalid_block_size(tmp_path, block_size, message):
    # range() alone would raise a TypeError without the option's name for 2.5, and run True as blocks of 1.
    with pytest.raises(ValueError, match=message):
        similarity_matrix_to_disk(gamma_embedding(12, 3, seed=14), tmp_path / "s.npy", block_size=block_size)
    assert list(tmp_path.iterdir()) == []


def test_reference_matrix_near_float_maximum():
    # The spread of values near the float maximum with both signs overflows to inf, which is not constant.
    import warnings

    matrix = np.array([[0.0, 1.7e308, -1.7e308], [1.7e308, 0.0, 1e308], [-1.7e308, 1e308, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checked = compare_module.check_reference_matrix(matrix, ObjectTable(("a", "b", "c")))

    np.testing.assert_array_equal(checked, matrix)


# -- bootstrap RSA -------------------------------------------------------------


def test_bootstrap_matches_naive_resampling():
    a = similarity_matrix(gamma_embedding(30, 4, seed=3))
    b = similarity_matrix(gamma_embedding(30, 4, seed=3)[:, :2])
    result = bootstrap_rsa(a, b, n_bootstrap=25, random_state=7, batch_size=4)
    naive = [resampled_rsa(a, b, row) for row in bootstrap_indices(30, 25, 7)]
    np.testing.assert_allclose(result.samples, naive, atol=1e-12, rtol=0)

    from dimalign.analysis.rsa import rsa

    assert result.r == rsa(a, b)
    # The tails are 100 * (1 - 0.95) / 2, which is 2.5 only to the last bit or so.
    assert result.ci_low == pytest.approx(np.percentile(result.samples, 2.5), rel=1e-12, abs=0)
    assert result.ci_high == pytest.approx(np.percentile(result.samples, 97.5), rel=1e-12, abs=0)


def test_bootstrap_memory_does_not_grow_with_samples():
    """The resampled objects are drawn per batch, so a large --bootstrap costs time, not memory."""
    import tracemalloc

    a = similarity_matrix(gamma_embedding(100, 3, seed=8))
    b = similarity_matrix(gamma_embedding(100, 3, seed=9))
    n_bootstrap = 20_000
    tracemalloc.start()
    try:
        result = bootstrap_rsa(a, b, n_bootstrap=n_bootstrap, random_state=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # All indices at once would take n_bootstrap * 100 * 8 bytes = 16 MB.
    assert peak < 8_000_000
    np.testing.assert_array_equal(
        result.samples[:50], bootstrap_rsa(a, b, n_bootstrap=50, random_state=3).samples
    )


def test_bootstrap_leaves_out_same_object_pairs():
    a = similarity_matrix(gamma_embedding(8, 2, seed=4))
    b = similarity_matrix(gamma_embedding(8, 2, seed=5))
    indices = np.array([0, 0, 1, 2, 2, 2, 5, 7])
    # By hand: pairs of distinct objects among the resampled positions.
    first, second = [], []
    for p in range(8):
        for q in range(p + 1, 8):
            if indices[p] != indices[q]:
                first.append(a[indices[p], indices[q]])
                second.append(b[indices[p], indices[q]])
    assert resampled_rsa(a, b, indices) == pytest.approx(np.corrcoef(first, second)[0, 1], abs=1e-12)


def test_bootstrap_is_seeded():
    a = similarity_matrix(gamma_embedding(20, 3, seed=6))
    b = similarity_matrix(gamma_embedding(20, 3, seed=7))
    first = bootstrap_rsa(a, b, n_bootstrap=10, random_state=1)
    second = bootstrap_rsa(a, b, n_bootstrap=10, random_state=1)
    third = bootstrap_rsa(a, b, n_bootstrap=10, random_state=2)
    np.testing.assert_array_equal(first.samples, second.samples)
    assert not np.array_equal(first.samples, third.samples)


def test_bootstrap_spearman_runs():
    a = similarity_matrix(gamma_embedding(15, 3, seed=8))
    result = bootstrap_rsa(a, a ** 2, n_bootstrap=5, method="spearman")
    assert result.r == pytest.approx(1.0)
    assert result.ci_low == pytest.approx(1.0)


def test_bootstrap_counts_valid_samples():
    a = similarity_matrix(gamma_embedding(3, 2, seed=14))
    b = similarity_matrix(gamma_embedding(3, 2, seed=15))
    # A sample has a correlation only when it draws all 3 objects (3 distinct pairs).
    expected_valid = sum(len(set(row.tolist())) == 3 for row in bootstrap_indices(3, 50, 0))
    with pytest.warns(UserWarning, match=f"{50 - expected_valid} of 50 bootstrap samples had a constant"):
        result = bootstrap_rsa(a, b, n_bootstrap=50, random_state=0)
    summary = result.to_dict()
    assert summary["n_bootstrap"] == 50
    assert summary["n_bootstrap_valid"] == expected_valid
    assert result.n_valid == expected_valid


def test_bootstrap_warns_about_zero_width_interval():
    a = similarity_matrix(gamma_embedding(3, 2, seed=14))
    b = similarity_matrix(gamma_embedding(3, 2, seed=15))
    with pytest.warns(UserWarning, match="has zero width"):
        result = bootstrap_rsa(a, b, n_bootstrap=50, random_state=0)
    assert result.ci_low == result.ci_high


def test_bootstrap_single_sample_asks_for_more_samples():
    a = similarity_matrix(gamma_embedding(30, 3, seed=16))
    b = similarity_matrix(gamma_embedding(30, 3, seed=17))
    with pytest.warns(UserWarning, match=r"only 1 bootstrap sample.*--bootstrap") as records:
        result = bootstrap_rsa(a, b, n_bootstrap=1, random_state=0)
    assert result.ci_low == result.ci_high
    assert not any("compare more objects" in str(record.message) for record in records)


def test_variance_explained_identity():
    a = similarity_matrix(gamma_embedding(10, 2, seed=9))
    assert variance_explained(a, a) == pytest.approx(1.0)
    assert variance_explained(a, 2 * a + 1) == pytest.approx(1.0)


# -- object alignment ------------------------------------------------------------


def test_align_objects_reorders():
    reference = ObjectTable.from_ids(["ant", "bee", "cow"])
    other = ObjectTable.from_ids(["cow", "ant", "bee"])
    assert align_objects(reference, other).tolist() == [1, 2, 0]


def test_align_objects_lists_differences():
    reference = ObjectTable.from_ids([f"object{i:02d}" for i in range(30)] + ["x"])
    other = ObjectTable.from_ids([f"object{i:02d}" for i in range(30)] + ["y", "z"])
    with pytest.raises(ValueError, match=r"1 ids only in the human table \['x'\], 2 ids only in the DNN table \['y', 'z'\]"):
        align_objects(reference, other)
    with pytest.raises(ValueError, match="^the embedding and features object tables list different objects: "):
        align_objects(reference, other, names=("embedding", "features"), advice="use the same objects")


def test_align_objects_lists_first_twenty():
    reference = ObjectTable.from_ids([f"a{i:02d}" for i in range(25)])
    other = ObjectTable.from_ids([f"b{i:02d}" for i in range(25)])
    with pytest.raises(ValueError, match="25 ids only in the human table") as error:
        align_objects(reference, other)
    assert "a19" in str(error.value)
    assert "a20" not in str(error.value)


def test_align_embeddings_uses_tables():
    human = EmbeddingResult(np.array([[1.0], [2.0], [3.0]]))
    dnn = EmbeddingResult(np.array([[30.0], [10.0], [20.0]]))
    pair = align_embeddings(
        human, dnn,
        human_objects=ObjectTable.from_ids(["a", "b", "c"]),
        dnn_objects=ObjectTable.from_ids(["c", "a", "b"]),
    )
    assert pair.dnn[:, 0].tolist() == [10.0, 20.0, 30.0]


def test_align_embeddings_without_tables_needs_same_rows():
    with pytest.raises(ValueError, match="pass object tables"):
        align_embeddings(EmbeddingResult(np.ones((3, 1))), EmbeddingResult(np.ones((4, 1))))


# -- compare end to end ---------------------------------------------------------


def surrogate_pair(n_objects=40, seed=0):
    """A human embedding and a DNN surrogate: a non-negative factorisation of noisy human similarity."""
    from sklearn.decomposition import NMF

    rng = np.random.default_rng(seed)
    human = rng.gamma(0.5, 1.0, size=(n_objects, 4))
    noisy = human @ human.T + 0.3 * rng.random((n_objects, n_objects))
    dnn = NMF(n_components=5, init="nndsvda", max_iter=5000, tol=1e-3, random_state=0).fit_transform(noisy + noisy.T)
    return human, dnn


def write_side(directory, embedding, table=None):
    save_embedding(EmbeddingResult(embedding), directory)
    if table is not None:
        write_object_table(table, directory / "objects.tsv")
    return directory


def test_compare_writes_outputs(tmp_path, shared_data):
    human, dnn = surrogate_pair()
    ids = [f"object{i:02d}" for i in range(40)]
    sources = [IMAGE_FILES[i % len(IMAGE_FILES)] for i in range(40)]
    table = ObjectTable(tuple(ids), tuple(sources))
    # The DNN side lists its objects in reverse order; compare must realign them.
    write_side(tmp_path / "human", human, table)
    write_side(tmp_path / "dnn", dnn[::-1], ObjectTable(tuple(ids[::-1]), tuple(sources[::-1])))
    rng = np.random.default_rng(1)
    triplets = np.array([rng.choice(40, 3, replace=False) for _ in range(300)])
    reference = (similarity_matrix(human)[:10, :10], ObjectTable.from_ids(ids[:10]))

    result = compare(
        tmp_path / "human", tmp_path / "dnn", tmp_path / "out", triplets=triplets,
        images=shared_data / "images", n_bootstrap=50, top_k=3, reference=reference,
    )
    out = tmp_path / "out"
    summary = json.loads((out / "rsa.json").read_text())
    assert summary["r"] == pytest.approx(result.rsa.r)
    assert summary["ci_low"] <= summary["r"] <= summary["ci_high"]
    assert summary["r"] > 0.5
    assert summary["n_bootstrap"] == 50
    assert summary["n_dnn_dims_for_95_percent"] == result.cumulative.n_dims_for_share
    assert 0 < summary["reference"]["dnn_r2"] <= 1
    assert summary["reference"]["human_r2"] == pytest.approx(
        variance_explained(similarity_matrix(human, objects=range(10)), reference[0])
    )

    matching = pd.read_csv(out / "matching.csv")
    assert set(matching["method"]) == {"with_replacement", "greedy", "optimal"}
    assert len(matching) == 3 * 4
    cumulative = pd.read_csv(out / "cumulative_rsa.csv")
    assert cumulative["n_dims"].tolist() == [1, 2, 3, 4, 5]
    assert cumulative["r"].iloc[-1] == pytest.approx(result.rsa.r)
    top = pd.read_csv(out / "top_objects.csv")
    assert set(top["group"]) == {"both", "human_only", "dnn_only"}
    for name in ("matching.png", "matching.svg", "cumulative_rsa.png", "cumulative_rsa.svg"):
        assert (out / name).stat().st_size > 0
    grids = sorted((out / "top_objects").glob("pair_*.png"))
    assert len(grids) == 3 * 4
    with Image.open(grids[0]) as grid:
        assert grid.size[0] > 128

    relevance = pd.read_csv(out / "relevance_human.csv")
    assert relevance["share_most_relevant"].sum() == pytest.approx(1.0)
    for side in ("human", "dnn"):
        per_triplet = read_relevance(out / f"most_relevant_{side}.csv")
        assert per_triplet["triplet_index"].tolist() == list(range(len(per_triplet)))
        assert per_triplet["most_relevant_dim"].between(0, 4).all()
    assert (out / "disagreements.csv").is_file()
    assert (out / "agreement_different_dims.csv").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["step"] == "compare"
    assert "sha256" in manifest["inputs"]["human"]


def test_compare_outputs_all_documented(tmp_path):
    """Every column and key that compare writes is named in docs/compare.md."""
    human, dnn = surrogate_pair(n_objects=20)
    triplets = np.array([np.random.default_rng(row).choice(20, 3, replace=False) for row in range(50)])
    # Without object tables the rows are named by their index.
    reference = (similarity_matrix(human)[:10, :10], ObjectTable.from_ids([str(row) for row in range(10)]))
    compare(
        EmbeddingResult(human), EmbeddingResult(dnn), tmp_path / "out", triplets=triplets, n_bootstrap=20,
        reference=reference,
    )
    out = tmp_path / "out"
    docs = (Path(__file__).parents[2] / "docs" / "compare.md").read_text(encoding="utf-8")

    names = set()
    for csv_file in sorted(out.glob("*.csv")):
        names.update(f"{csv_file.name}:{column}" for column in pd.read_csv(csv_file).columns)
    for json_file in ("rsa.json", "relevance_summary.json"):
        content = json.loads((out / json_file).read_text())
        names.update(f"{json_file}:{key}" for key in content)
        names.update(f"{json_file}:reference.{key}" for key in content.get("reference", {}))
    with np.load(out / "triplet_relevance.npz") as archive:
        names.update(f"triplet_relevance.npz:{key}" for key in archive.files)
    def documented(name):
        key = name.split(":")[1].split(".")[-1]
        # The docs list the object columns with "(each with `_id`)" for their id columns.
        return f"`{key}`" in docs or (key.endswith("_id") and f"`{key.removesuffix('_id')}`" in docs)

    assert sorted(name for name in names if not documented(name)) == []


def test_compare_rejects_different_objects(tmp_path):
    human, dnn = surrogate_pair(n_objects=12)
    write_side(tmp_path / "human", human, ObjectTable.from_ids([f"a{i}" for i in range(12)]))
    write_side(tmp_path / "dnn", dnn, ObjectTable.from_ids([f"a{i}" for i in range(11)] + ["zebra"]))
    with pytest.raises(ValueError, match=r"only in the DNN table \['zebra'\]"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("n_objects", [1, 2])
def test_compare_rejects_fewer_than_three_objects(tmp_path, recwarn, n_objects):
    human = gamma_embedding(n_objects, 3, seed=19)
    with pytest.raises(ValueError, match=rf"comparison needs at least 3 objects, but the embeddings have {n_objects}"):
        compare(human, human, tmp_path / "out", n_bootstrap=0, top_k=1)
    assert not [warning for warning in recwarn if "All-NaN" in str(warning.message)]
    assert not (tmp_path / "out").exists()


def test_compare_top_k_above_object_count_names_option(tmp_path):
    write_surrogate_sides(tmp_path)
    with pytest.raises(ValueError, match=r"top_k=20 is invalid for 12 objects \(--top-k\): use 1..12"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, top_k=20)
    assert not (tmp_path / "out").exists()


def test_compare_rejects_embedding_without_dimensions(tmp_path):
    human, _ = surrogate_pair(n_objects=12)
    write_side(tmp_path / "human", human)
    write_side(tmp_path / "dnn", np.zeros((12, 0)))
    with pytest.raises(ValueError, match=r"the DNN embedding .*dnn.* has no dimension \(the fit pruned them all\)"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("side", "label"), [(0, "human"), (1, "DNN")])
def test_compare_names_negative_result_side(tmp_path, side, label):
    """An EmbeddingResult built in code is checked as an array is, before any output is written."""
    embeddings = [gamma_embedding(12, 3, seed=5), gamma_embedding(12, 3, seed=6)]
    embeddings[side][4, 2] = -0.5

    with pytest.raises(ValueError, match=rf"^the {label} embedding: 1 negative weights, the lowest -0.5 at row 4, "
                                         r"dimension 2; embeddings must be non-negative"):
        compare(EmbeddingResult(embeddings[0]), EmbeddingResult(embeddings[1]), tmp_path / "out", n_bootstrap=0)
    assert not (tmp_path / "out").exists()


def test_compare_names_nan_in_given_result(tmp_path):
    """NaN is not a negative weight, so the negative check leaves it to the NaN check."""
    human = gamma_embedding(12, 3, seed=5)
    human[2, 1] = np.nan

    with pytest.raises(ValueError, match=r"^the human embedding contains NaN or inf in 1 entries, the first at row 2, "
                                         r"column 1"):
        compare(EmbeddingResult(human), EmbeddingResult(gamma_embedding(12, 3, seed=6)), tmp_path / "out",
                n_bootstrap=0)
    assert not (tmp_path / "out").exists()


def write_surrogate_sides(tmp_path):
    """Write a 12-object surrogate human and DNN run into tmp_path/human and tmp_path/dnn."""
    human, dnn = surrogate_pair(n_objects=12)
    write_side(tmp_path / "human", human)
    write_side(tmp_path / "dnn", dnn)


def write_sides_with_images(tmp_path):
    """Write the surrogate runs with object tables whose sources are the shared photos (used in turn)."""
    write_surrogate_sides(tmp_path)
    table = ObjectTable(tuple(f"o{i}" for i in range(12)), tuple(IMAGE_FILES[i % 8] for i in range(12)))
    for side in ("human", "dnn"):
        write_object_table(table, tmp_path / side / "objects.tsv")


def failing_similarity(*args, **kwargs):
    raise RuntimeError("similarity failed")


def test_compare_cuda_without_gpu_writes_nothing(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_surrogate_sides(tmp_path)
    existing = tmp_path / "existing"
    existing.mkdir()
    for out in (tmp_path / "new", existing):
        with pytest.raises(ValueError, match="no CUDA GPU"):
            compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0, device="cuda")
    assert not (tmp_path / "new").exists()
    assert list(existing.iterdir()) == []


@pytest.mark.parametrize(
    ("option", "message"),
    [({"top_k": 0}, "top_k"), ({"n_bootstrap": -1}, "n_bootstrap"), ({"images": "missing"}, "image folder"),
     ({"triplets": np.array([[0, 1, 12]])}, "triplet indices")],
)
def test_compare_invalid_settings_write_nothing(tmp_path, option, message):
    write_surrogate_sides(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", **{"n_bootstrap": 0, **option})
    assert not (tmp_path / "out").exists()


def test_compare_failure_removes_created_folder(tmp_path):
    write_surrogate_sides(tmp_path)

    with pytest.raises(RuntimeError, match="similarity failed"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, similarity=failing_similarity)
    assert not (tmp_path / "out").exists()


def folder_contents(folder):
    """Map every file below ``folder`` (relative path) to its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_compare_failed_rerun_keeps_earlier_output(tmp_path, caplog):
    write_surrogate_sides(tmp_path)
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="dimalign"):
        compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0, triplets=np.array([[0, 1, 2]]))
    assert "(no bootstrap)" in caplog.text
    assert "nan" not in caplog.text
    before = folder_contents(out)
    assert "manifest.json" in before

    # The rerun fails in a slow step, after the cheap outputs are written.
    with pytest.raises(RuntimeError):
        compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0, similarity=failing_similarity)
    assert folder_contents(out) == before
    assert sorted(path.name for path in out.iterdir()) == sorted({name.split("/")[0] for name in before})


def test_compare_rerun_replaces_grids(tmp_path, shared_data):
    write_sides_with_images(tmp_path)
    out = tmp_path / "out"
    compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0, top_k=2, images=shared_data / "images")
    (out / "top_objects" / "notes.txt").write_text("kept")
    compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0, top_k=3, images=shared_data / "images")
    assert len(list((out / "top_objects").glob("pair_*.png"))) == 3 * 4
    assert (out / "top_objects" / "notes.txt").read_text() == "kept"
    assert not list(out.glob(".partial-*"))


def test_compare_missing_images_checked_before_writing(tmp_path, shared_data):
    write_sides_with_images(tmp_path)
    out = tmp_path / "out"
    compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0)
    before = folder_contents(out)
    empty_images = tmp_path / "no_images"
    empty_images.mkdir()
    for target in (out, tmp_path / "new"):
        with pytest.raises(FileNotFoundError, match=r"objects have no image under .*no_images"):
            compare(tmp_path / "human", tmp_path / "dnn", target, n_bootstrap=0, images=empty_images,
                    similarity=failing_similarity)
    assert folder_contents(out) == before
    assert not (tmp_path / "new").exists()


def test_compare_finds_images_named_by_relative_path(tmp_path, shared_data):
    """Object ids of dimalign extract are image paths relative to the image folder, as dimalign grids reads them."""
    write_surrogate_sides(tmp_path)
    images = tmp_path / "images"
    (images / "photos").mkdir(parents=True)
    for name in IMAGE_FILES:
        (images / "photos" / name).write_bytes((shared_data / "images" / name).read_bytes())
    ids = [f"photos/{IMAGE_FILES[i % 8]}" if i < 8 else f"photos/copy{i}/{IMAGE_FILES[i % 8]}" for i in range(12)]
    for i in range(8, 12):
        (images / "photos" / f"copy{i}").mkdir()
        (images / ids[i]).write_bytes((shared_data / "images" / IMAGE_FILES[i % 8]).read_bytes())
    for side in ("human", "dnn"):
        write_object_table(ObjectTable.from_ids(ids), tmp_path / side / "objects.tsv")

    compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, top_k=2, images=images)
    assert len(list((tmp_path / "out" / "top_objects").glob("pair_*.png"))) == 3 * 4


def test_compare_damaged_images_rejected_before_writing(tmp_path, shared_data):
    write_sides_with_images(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    for name in IMAGE_FILES:
        # Every image is cut short, so every grid needs a damaged file.
        (images / name).write_bytes((shared_data / "images" / name).read_bytes()[:300])
    out = tmp_path / "out"
    compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0)
    before = folder_contents(out)

    for target in (out, tmp_path / "new"):
        with pytest.raises(ValueError, match=r"images of the grids cannot be read.*images/\w+\.(png|jpg)") as error:
            compare(tmp_path / "human", tmp_path / "dnn", target, n_bootstrap=0, images=images, top_k=2,
                    similarity=failing_similarity)
        assert "replace" in str(error.value)
    assert folder_contents(out) == before
    assert not (tmp_path / "new").exists()


def test_compare_cli_empty_triplets_rejected_first(tmp_path, capsys):
    save_surrogate_files(tmp_path)
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(out), "--bootstrap", "0"]) == 0
    before = folder_contents(out)
    (tmp_path / "empty.txt").write_text("")
    for target in (out, tmp_path / "new"):
        code = main([
            "compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(target),
            "--bootstrap", "0", "--triplets", str(tmp_path / "empty.txt"),
        ])
        assert code == 1
        assert "empty.txt" in capsys.readouterr().err
    assert folder_contents(out) == before
    assert not (tmp_path / "new").exists()


def write_triplet_folder(folder, triplets, ids):
    folder.mkdir()
    np.save(folder / "triplets.npy", triplets)
    write_object_table(ObjectTable.from_ids(ids), folder / "objects.tsv")
    return folder


def test_compare_triplet_folder_matched_by_id(tmp_path):
    """The indices of a triplet folder refer to its own objects.tsv, not to the human row order."""
    human, dnn = surrogate_pair(n_objects=20)
    ids = [f"a{i:02d}" for i in range(20)]
    write_side(tmp_path / "human", human, ObjectTable.from_ids(ids))
    write_side(tmp_path / "dnn", dnn, ObjectTable.from_ids(ids))
    in_human_order = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 19]])
    # The folder lists the objects in reverse, so human row r is its row 19 - r.
    folder = write_triplet_folder(tmp_path / "triplets", 19 - in_human_order, ids[::-1])
    command = ["compare", str(tmp_path / "human"), str(tmp_path / "dnn"), "--bootstrap", "0"]

    assert main([*command, "-o", str(tmp_path / "folder"), "--triplets", str(folder)]) == 0
    np.savetxt(tmp_path / "human_order.txt", in_human_order, fmt="%d")
    assert main([*command, "-o", str(tmp_path / "file"), "--triplets", str(tmp_path / "human_order.txt")]) == 0

    with np.load(tmp_path / "folder" / "triplet_relevance.npz") as archive:
        assert archive["triplets"].tolist() == in_human_order.tolist()
    for name in ("relevance_summary.json",):
        assert (tmp_path / "folder" / name).read_text() == (tmp_path / "file" / name).read_text()
    for name in ("relevance_human.csv", "relevance_dnn.csv", "disagreements.csv"):
        assert (tmp_path / "folder" / name).read_bytes() == (tmp_path / "file" / name).read_bytes()


def test_compare_val_file_uses_folder_table(tmp_path):
    """FOLDER/val.npy, which the error for a split folder recommends, keeps the folder's objects.tsv."""
    human, dnn = surrogate_pair(n_objects=20)
    ids = [f"a{i:02d}" for i in range(20)]
    write_side(tmp_path / "human", human, ObjectTable.from_ids(ids))
    write_side(tmp_path / "dnn", dnn, ObjectTable.from_ids(ids))
    in_human_order = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 19]])
    folder = write_triplet_folder(tmp_path / "split", 19 - in_human_order, ids[::-1])
    (folder / "triplets.npy").rename(folder / "val.npy")
    np.save(folder / "train.npy", np.array([[0, 1, 2]]))

    code = main([
        "compare", str(tmp_path / "human"), str(tmp_path / "dnn"), "-o", str(tmp_path / "out"),
        "--bootstrap", "0", "--triplets", str(folder / "val.npy"),
    ])

    assert code == 0
    with np.load(tmp_path / "out" / "triplet_relevance.npz") as archive:
        assert archive["triplets"].tolist() == in_human_order.tolist()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"]["triplet_objects"]["path"] == str(folder / "objects.tsv")


def test_compare_triplet_folder_other_objects(tmp_path, capsys):
    """A triplet folder whose objects.tsv lists objects that are not compared is an error naming it."""
    human, dnn = surrogate_pair(n_objects=20)
    ids = [f"a{i:02d}" for i in range(20)]
    write_side(tmp_path / "human", human, ObjectTable.from_ids(ids))
    write_side(tmp_path / "dnn", dnn, ObjectTable.from_ids(ids))
    other_ids = [f"b{i}" for i in range(30)]
    folder = write_triplet_folder(tmp_path / "triplets", np.array([[0, 1, 2], [3, 4, 25]]), other_ids)

    code = main([
        "compare", str(tmp_path / "human"), str(tmp_path / "dnn"), "-o", str(tmp_path / "out"),
        "--bootstrap", "0", "--triplets", str(folder),
    ])

    assert code == 1
    error = capsys.readouterr().err
    assert f"{folder / 'objects.tsv'} names 6 objects of the triplets that the compared embeddings do not contain" in error
    assert "['b0', 'b1', 'b2', 'b25', 'b3', 'b4']" in error
    assert "n_objects" not in error
    assert not (tmp_path / "out").exists()


def test_compare_rejects_empty_triplets(tmp_path):
    write_surrogate_sides(tmp_path)
    with pytest.raises(ValueError, match=r"no triplets \(shape \(0, 3\)\)"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0,
                triplets=np.zeros((0, 3), dtype=np.int64), similarity=failing_similarity)
    assert not (tmp_path / "out").exists()


def test_compare_tiny_weights_rejected_first(tmp_path, capsys):
    save_surrogate_files(tmp_path)
    human, _ = surrogate_pair(n_objects=20)
    np.save(tmp_path / "tiny.npy", 1e-7 * human)
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(out), "--bootstrap", "0"]) == 0
    before = folder_contents(out)
    assert main(["compare", str(tmp_path / "human.npy"), str(tmp_path / "tiny.npy"), "-o", str(out), "--bootstrap", "0"]) == 1
    assert f"the DNN embedding {tmp_path / 'tiny.npy'} predicts the same similarity" in capsys.readouterr().err
    assert folder_contents(out) == before


def test_compare_cli_keeps_input_inside_output(tmp_path, capsys):
    save_surrogate_files(tmp_path)
    out = tmp_path / "out"
    command = ["compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(out), "--bootstrap", "0"]
    assert main([*command, "--save-similarity"]) == 0
    write_object_table(ObjectTable.from_ids([str(row) for row in range(20)]), tmp_path / "reference.tsv")
    before = folder_contents(out)
    code = main([
        *command, "--reference-rsm", str(out / "human_similarity.npy"),
        "--reference-objects", str(tmp_path / "reference.tsv"),
    ])
    assert code == 1
    error = capsys.readouterr().err
    assert f"--reference-rsm {out / 'human_similarity.npy'} is an output of compare in {out}" in error
    assert folder_contents(out) == before


def test_compare_rejects_folder_of_other_step(tmp_path):
    write_surrogate_sides(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"step": "fit"}))
    with pytest.raises(FileExistsError, match="dimalign fit"):
        compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0)
    assert sorted(path.name for path in out.iterdir()) == ["manifest.json"]


def write_study_record(study):
    """A study folder with the pipeline.json of dimalign run and a finished compare stage."""
    (study / "compare").mkdir(parents=True)
    (study / "pipeline.json").write_text(json.dumps({"config": "study.toml", "stages": []}))
    manifest = {"step": "compare", "pipeline": {"stage": "compare", "hash": "abc"}}
    (study / "compare" / "manifest.json").write_text(json.dumps(manifest))
    return study


@pytest.mark.parametrize("stage", ["map", "evaluate", "report"])
def test_compare_rejects_stage_folder_of_other_kind(tmp_path, capsys, stage):
    write_surrogate_sides(tmp_path)
    study = write_study_record(tmp_path / "study")

    code = main(["compare", str(tmp_path / "human"), str(tmp_path / "dnn"), "-o", str(study / stage),
                 "--bootstrap", "0", "--top-k", "2"])

    assert code == 1
    error = capsys.readouterr().err
    assert f"{study / stage} is the folder of stage {stage} of the study {study}" in error
    assert "choose an output folder outside the study" in error
    assert not (study / stage).exists()


def test_compare_rejects_study_compare_stage(tmp_path, capsys):
    write_surrogate_sides(tmp_path)
    study = write_study_record(tmp_path / "study")
    before = (study / "compare" / "manifest.json").read_text()

    code = main(["compare", str(tmp_path / "human"), str(tmp_path / "dnn"), "-o", str(study / "compare"),
                 "--bootstrap", "0", "--top-k", "2"])

    assert code == 1
    error = capsys.readouterr().err
    assert f"{study / 'compare'} is the folder of stage compare of the study {study}" in error
    assert "dimalign run" in error
    assert (study / "compare" / "manifest.json").read_text() == before
    assert sorted(path.name for path in (study / "compare").iterdir()) == ["manifest.json"]


def test_compare_rejects_study_directory(tmp_path):
    write_surrogate_sides(tmp_path)
    study = write_study_record(tmp_path / "study")

    with pytest.raises(FileExistsError, match=r"is the directory of a study of dimalign run \(it contains pipeline.json\)"):
        compare(tmp_path / "human", tmp_path / "dnn", study, n_bootstrap=0, top_k=2)

    assert sorted(path.name for path in study.iterdir()) == ["compare", "pipeline.json"]


def test_compare_rejects_folder_with_stage_record(tmp_path):
    write_surrogate_sides(tmp_path)
    copied = write_study_record(tmp_path / "study") / "compare"
    (tmp_path / "study" / "pipeline.json").unlink()
    before = (copied / "manifest.json").read_text()

    with pytest.raises(FileExistsError) as caught:
        compare(tmp_path / "human", tmp_path / "dnn", copied, n_bootstrap=0, top_k=2)

    message = str(caught.value)
    assert f"{copied / 'manifest.json'} contains the stage record of dimalign run" in message
    assert "choose another output folder" in message
    assert (copied / "manifest.json").read_text() == before


def test_compare_accepts_folder_named_like_stage_outside_study(tmp_path):
    write_surrogate_sides(tmp_path)
    (tmp_path / "projects").mkdir()
    (tmp_path / "projects" / "pipeline.json").write_text(json.dumps({"name": "ci", "steps": ["build"]}))

    compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "projects" / "map", n_bootstrap=0, top_k=2)

    assert (tmp_path / "projects" / "map" / "manifest.json").is_file()


def test_compare_cli_missing_embedding_leaves_no_folder(tmp_path, capsys):
    human, _ = surrogate_pair(n_objects=12)
    np.save(tmp_path / "human.npy", human)
    out = tmp_path / "out"
    code = main(["compare", str(tmp_path / "human.npy"), str(tmp_path / "missing.npy"), "-o", str(out)])
    assert code == 1
    assert "missing.npy" in capsys.readouterr().err
    assert not out.exists()


def save_surrogate_files(tmp_path):
    """Save a 20-object surrogate pair as tmp_path/human.npy and tmp_path/dnn.npy; return the arrays."""
    human, dnn = surrogate_pair(n_objects=20)
    np.save(tmp_path / "human.npy", human)
    np.save(tmp_path / "dnn.npy", dnn)
    return human, dnn


def test_compare_cli(tmp_path):
    human, _ = save_surrogate_files(tmp_path)
    code = main([
        "compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(tmp_path / "out"),
        "--bootstrap", "20", "--seed", "3", "--similarity-objects", "15", "--cumulative-objects", "10",
        "--save-similarity",
    ])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "rsa.json").read_text())
    assert summary["similarity_objects"] == 15
    assert summary["cumulative_objects"] == 10
    assert summary["random_state"] == 3
    saved = np.load(tmp_path / "out" / "human_similarity.npy")
    np.testing.assert_allclose(saved, similarity_matrix(human), atol=1e-14)


def test_compare_cli_warns_once_per_input(tmp_path, capsys):
    # --triplets reads the human file for its row count before compare reads
    # it again, and the warning about its tiny negative weights came twice.
    human, _ = save_surrogate_files(tmp_path)
    human[0, 0] = -0.001
    np.save(tmp_path / "human.npy", human)
    np.savetxt(tmp_path / "triplets.txt", [[0, 1, 2], [3, 4, 5]], fmt="%d")
    code = main([
        "compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(tmp_path / "out"),
        "--bootstrap", "0", "--triplets", str(tmp_path / "triplets.txt"),
    ])
    assert code == 0
    assert capsys.readouterr().err.count("set 1 negative weights") == 1


def test_compare_cli_recomputes_saved_similarity(tmp_path):
    human, dnn = save_surrogate_files(tmp_path)
    np.save(tmp_path / "other.npy", dnn[:, ::-1] + 1.0)
    out = tmp_path / "out"
    for dnn_file in ("dnn.npy", "other.npy"):
        code = main([
            "compare", str(tmp_path / "human.npy"), str(tmp_path / dnn_file), "-o", str(out),
            "--bootstrap", "0", "--save-similarity",
        ])
        assert code == 0
    expected = similarity_matrix(dnn[:, ::-1] + 1.0)
    np.testing.assert_allclose(np.load(out / "dnn_similarity.npy"), expected, atol=1e-14, rtol=0)
    np.testing.assert_allclose(np.load(out / "human_similarity.npy"), similarity_matrix(human), atol=1e-14, rtol=0)


RELEVANCE_FILES = [
    "relevance_human.csv", "relevance_dnn.csv", "most_relevant_human.csv", "most_relevant_dnn.csv",
    "agreement_different_dims.csv", "disagreements.csv", "triplet_relevance.npz", "relevance_summary.json",
]


def test_compare_rerun_removes_earlier_outputs(tmp_path):
    write_surrogate_sides(tmp_path)
    out = tmp_path / "out"
    triplets = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0, triplets=triplets, save_similarity=True)
    assert all((out / name).is_file() for name in RELEVANCE_FILES)
    assert (out / "dnn_similarity.npy").is_file()

    compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0)
    left = sorted(path.name for path in out.iterdir())
    assert left == sorted([
        "cumulative_rsa.csv", "cumulative_rsa.png", "cumulative_rsa.svg", "manifest.json",
        "matching.csv", "matching_chance.csv", "matching.png", "matching.svg", "rsa.json", "top_objects.csv",
    ])


def test_compare_explicit_objects_win_over_neighbour_table(tmp_path):
    human, dnn = surrogate_pair(n_objects=20)
    ids = [f"e{i:02d}" for i in range(20)]
    write_side(tmp_path / "human", human, ObjectTable.from_ids(ids))
    (tmp_path / "dnn").mkdir()
    np.save(tmp_path / "dnn" / "dnn.npy", dnn)
    write_object_table(ObjectTable.from_ids([f"n{i:02d}" for i in range(20)][::-1]), tmp_path / "dnn" / "objects.tsv")
    explicit = ObjectTable.from_ids(ids)
    with pytest.warns(UserWarning, match=r"not with .*objects.tsv in the same folder, which differs: row 0 is 'n19'"):
        compare(tmp_path / "human", tmp_path / "dnn" / "dnn.npy", tmp_path / "out", objects=explicit,
                n_bootstrap=0, top_k=2)
    top = pd.read_csv(tmp_path / "out" / "top_objects.csv")
    assert top["object_id"].tolist() == [explicit.object_ids[row] for row in top["object_index"]]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["dnn_objects"] == "objects argument"


def test_compare_rejects_objects_with_shared_neighbour_table(tmp_path):
    save_surrogate_files(tmp_path)
    write_object_table(ObjectTable.from_ids([f"n{i:02d}" for i in range(20)][::-1]), tmp_path / "objects.tsv")
    explicit = ObjectTable.from_ids([f"e{i:02d}" for i in range(20)])

    with pytest.raises(ValueError) as caught:
        compare(tmp_path / "human.npy", tmp_path / "dnn.npy", tmp_path / "out", objects=explicit, n_bootstrap=0, top_k=2)

    message = str(caught.value)
    assert f"share the object table {tmp_path / 'objects.tsv'}" in message
    assert "row 0 is 'n19' in one and 'e00' in the other" in message
    assert "put each embedding file in its own folder" in message
    assert not (tmp_path / "out").exists()


def test_compare_objects_equal_to_shared_table_accepted(tmp_path):
    save_surrogate_files(tmp_path)
    ids = [f"n{i:02d}" for i in range(20)]
    write_object_table(ObjectTable.from_ids(ids), tmp_path / "objects.tsv")
    (tmp_path / "ids.txt").write_text("".join(f"{name}\n" for name in ids))

    code = main(["compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(tmp_path / "out"),
                 "--objects", str(tmp_path / "ids.txt"), "--bootstrap", "0", "--top-k", "2"])

    assert code == 0


def save_plain_sides_with_tables(tmp_path, human_ids, dnn_ids):
    """Save a 20-object surrogate pair as h/emb.npy and d/emb.npy, each with its own objects.tsv."""
    human, dnn = surrogate_pair(n_objects=20)
    for folder, embedding, ids in (("h", human, human_ids), ("d", dnn, dnn_ids)):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "emb.npy", embedding)
        write_object_table(ObjectTable.from_ids(ids), tmp_path / folder / "objects.tsv")


def test_compare_rejects_objects_differing_from_own_tables(tmp_path):
    # Renaming both plain files with one table would match their rows by position.
    ids = [f"n{i:02d}" for i in range(20)]
    save_plain_sides_with_tables(tmp_path, ids, ids[::-1])
    (tmp_path / "ids.txt").write_text("".join(f"{name}\n" for name in ids))

    with pytest.raises(ValueError) as caught:
        compare(tmp_path / "h" / "emb.npy", tmp_path / "d" / "emb.npy", tmp_path / "out",
                objects=read_object_table(tmp_path / "ids.txt"), n_bootstrap=0, top_k=2)

    message = str(caught.value)
    assert str(tmp_path / "h" / "objects.tsv") in message
    assert str(tmp_path / "d" / "objects.tsv") in message
    assert "row 0 is 'n19' in one and 'n00' in the other" in message
    assert "leave out --objects" in message
    assert not (tmp_path / "out").exists()


def test_compare_cli_rejects_objects_differing_from_own_tables(tmp_path, capsys):
    ids = [f"n{i:02d}" for i in range(20)]
    save_plain_sides_with_tables(tmp_path, ids[::-1], ids[::-1])
    (tmp_path / "ids.txt").write_text("".join(f"{name}\n" for name in ids))

    code = main(["compare", str(tmp_path / "h" / "emb.npy"), str(tmp_path / "d" / "emb.npy"), "-o",
                 str(tmp_path / "out"), "--objects", str(tmp_path / "ids.txt"), "--bootstrap", "0", "--top-k", "2"])

    assert code == 1
    assert str(tmp_path / "h" / "objects.tsv") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compare_objects_equal_to_own_tables_accepted(tmp_path):
    ids = [f"n{i:02d}" for i in range(20)]
    save_plain_sides_with_tables(tmp_path, ids, ids)
    (tmp_path / "ids.txt").write_text("".join(f"{name}\n" for name in ids))

    code = main(["compare", str(tmp_path / "h" / "emb.npy"), str(tmp_path / "d" / "emb.npy"), "-o",
                 str(tmp_path / "out"), "--objects", str(tmp_path / "ids.txt"), "--bootstrap", "0", "--top-k", "2"])

    assert code == 0


def test_compare_rejects_objects_differing_from_run_table(tmp_path):
    human, dnn = surrogate_pair(n_objects=12)
    ids = [f"a{i:02d}" for i in range(12)]
    write_side(tmp_path / "human", human, ObjectTable.from_ids(ids))
    write_side(tmp_path / "dnn", dnn, ObjectTable.from_ids(ids))
    with pytest.raises(ValueError, match=r"both have their own objects.tsv, so the object table passed .* applies to neither, and it differs from both: row 0 is 'a00'"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", objects=ObjectTable.from_ids(ids[::-1]), n_bootstrap=0)
    assert not (tmp_path / "out").exists()


def shuffled_plain_dnn(tmp_path):
    """Write a human run with objects.tsv and a plain DNN file with shuffled rows and its own id list.

    Returns the RSA r of the unshuffled pair, which every correct alignment reproduces.
    """
    human, dnn = surrogate_pair(n_objects=12)
    ids = [f"a{i:02d}" for i in range(12)]
    write_side(tmp_path / "human", human, ObjectTable.from_ids(ids))
    order = np.random.default_rng(5).permutation(12)
    np.save(tmp_path / "plain.npy", dnn[order])
    (tmp_path / "plain_ids.txt").write_text("".join(f"{ids[row]}\n" for row in order))
    saved_human = load_embedding(tmp_path / "human").embedding
    return compare(
        EmbeddingResult(saved_human), EmbeddingResult(dnn), tmp_path / "unshuffled", n_bootstrap=0
    ).rsa.r


def test_compare_objects_apply_to_plain_side_only(tmp_path):
    from dimalign.io.objects import read_object_table

    expected = shuffled_plain_dnn(tmp_path)
    result = compare(
        tmp_path / "human", tmp_path / "plain.npy", tmp_path / "out", n_bootstrap=0,
        objects=read_object_table(tmp_path / "plain_ids.txt"),
    )
    assert result.rsa.r == pytest.approx(expected, abs=1e-12)
    settings = json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]
    assert settings["human_objects"] == str(tmp_path / "human" / "objects.tsv")
    assert settings["dnn_objects"] == "objects argument"


@pytest.mark.parametrize("source", ["neighbour", "explicit"])
def test_compare_names_table_of_other_length(tmp_path, source):
    human, dnn = surrogate_pair(n_objects=12)
    ids = [f"a{i:02d}" for i in range(12)]
    write_side(tmp_path / "human", human, ObjectTable.from_ids(ids))
    (tmp_path / "dnn").mkdir()
    np.save(tmp_path / "dnn" / "plain.npy", dnn)
    short = tmp_path / ("dnn/objects.tsv" if source == "neighbour" else "ids.txt")
    short.write_text("".join(f"{name}\n" for name in ids[:11]))
    objects = None if source == "neighbour" else read_object_table(short)
    expected = str(short) if source == "neighbour" else "the object table passed"

    with pytest.raises(ValueError, match=r"lists 11 objects but the DNN embedding .*plain\.npy has 12 rows") as error:
        compare(tmp_path / "human", tmp_path / "dnn" / "plain.npy", tmp_path / "out", n_bootstrap=0, objects=objects)
    assert expected in str(error.value)
    assert "every row" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_compare_cli_objects_for_plain_dnn(tmp_path):
    expected = shuffled_plain_dnn(tmp_path)
    code = main([
        "compare", str(tmp_path / "human"), str(tmp_path / "plain.npy"), "-o", str(tmp_path / "out"),
        "--objects", str(tmp_path / "plain_ids.txt"), "--bootstrap", "0",
    ])
    assert code == 0
    assert json.loads((tmp_path / "out" / "rsa.json").read_text())["r"] == pytest.approx(expected, abs=1e-12)


def test_compare_rejects_plain_side_without_ids(tmp_path):
    shuffled_plain_dnn(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"the DNN embedding .*plain.npy has no object table, but the other input has one "
        r"\(.*human/objects.tsv\), so the DNN rows cannot be matched to it by object id",
    ):
        compare(tmp_path / "human", tmp_path / "plain.npy", tmp_path / "out", n_bootstrap=0)
    assert not (tmp_path / "out").exists()


def test_align_embeddings_rejects_one_table():
    with pytest.raises(ValueError, match="only the human embedding has an object table, so the DNN rows"):
        align_embeddings(
            EmbeddingResult(np.ones((3, 1))), EmbeddingResult(np.ones((3, 1))),
            human_objects=ObjectTable.from_ids(["a", "b", "c"]),
        )


def test_compare_checks_reference_before_similarity(tmp_path):
    write_surrogate_sides(tmp_path)
    matrix = similarity_matrix(gamma_embedding(5, 2, seed=16))
    matrix[2, 4] = np.nan
    reference = (matrix, ObjectTable.from_ids([str(row) for row in range(5)]))
    with pytest.raises(ValueError, match=r"contains NaN or inf at 1 positions, the first \(row, column\) \[\(2, 4\)\]"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, reference=reference,
                similarity=failing_similarity)
    assert not (tmp_path / "out").exists()


def test_compare_cli_names_bad_reference_file(tmp_path, capsys):
    save_surrogate_files(tmp_path)
    matrix = similarity_matrix(gamma_embedding(8, 2, seed=17))
    matrix[2, 5] = np.nan
    np.save(tmp_path / "reference.npy", matrix)
    write_object_table(ObjectTable.from_ids([str(row) for row in range(8)]), tmp_path / "reference.tsv")
    code = main([
        "compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(tmp_path / "out"),
        "--reference-rsm", str(tmp_path / "reference.npy"), "--reference-objects", str(tmp_path / "reference.tsv"),
    ])
    assert code == 1
    assert f"{tmp_path / 'reference.npy'} contains NaN or inf at 1 positions, the first (row, column) [(2, 5)]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compare_cli_names_reference_objects_missing_from_embeddings(tmp_path, capsys):
    save_surrogate_files(tmp_path)
    np.save(tmp_path / "reference.npy", similarity_matrix(gamma_embedding(5, 2, seed=18)))
    (tmp_path / "reference.txt").write_text("0\n1\n2\n98\n99\n")
    code = main([
        "compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(tmp_path / "out"),
        "--reference-rsm", str(tmp_path / "reference.npy"), "--reference-objects", str(tmp_path / "reference.txt"),
    ])
    assert code == 1
    error = capsys.readouterr().err
    assert "2 of the 5 reference objects are not in the compared embeddings: ['98', '99']" in error
    assert "--reference-objects" in error
    assert not (tmp_path / "out").exists()


def test_compare_reports_reference_sign(tmp_path):
    write_surrogate_sides(tmp_path)
    human, dnn = surrogate_pair(n_objects=12)
    rows = list(range(6))
    reference = (1.0 - similarity_matrix(human, objects=rows), ObjectTable.from_ids([str(row) for row in rows]))
    with pytest.warns(UserWarning, match="may be a dissimilarity matrix"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, reference=reference)
    scores = json.loads((tmp_path / "out" / "rsa.json").read_text())["reference"]
    assert scores["human_r"] == pytest.approx(-1.0)
    assert scores["human_r2"] == pytest.approx(1.0)
    assert scores["dnn_r"] < 0


def reject_constant(name):
    """Reject the NaN and Infinity constants that strict JSON parsers reject."""
    raise ValueError(f"invalid JSON constant {name}")


def test_compare_cli_without_bootstrap_writes_null(tmp_path):
    save_surrogate_files(tmp_path)
    code = main([
        "compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(tmp_path / "out"),
        "--bootstrap", "0",
    ])
    assert code == 0

    rsa_text = (tmp_path / "out" / "rsa.json").read_text()
    summary = json.loads(rsa_text, parse_constant=reject_constant)
    assert summary["n_bootstrap"] == 0
    assert summary["ci_low"] is None
    assert summary["ci_high"] is None
    assert summary["bootstrap_sd"] is None
    assert -1 <= summary["r"] <= 1

    manifest_text = (tmp_path / "out" / "manifest.json").read_text()
    manifest = json.loads(manifest_text, parse_constant=reject_constant)
    assert manifest["outputs"]["summary"]["ci_low"] is None
    assert manifest["outputs"]["summary"]["ci_high"] is None


# -- constant similarity and bad inputs named before any output -----------------


def test_compare_cli_names_constant_dnn_file(tmp_path, capsys):
    save_surrogate_files(tmp_path)
    (tmp_path / "z").mkdir()
    np.save(tmp_path / "z" / "zeros.npy", np.zeros((20, 3)))
    code = main(["compare", str(tmp_path / "human.npy"), str(tmp_path / "z" / "zeros.npy"), "-o", str(tmp_path / "cz")])
    assert code == 1
    error = capsys.readouterr().err
    assert f"the DNN embedding {tmp_path / 'z' / 'zeros.npy'} predicts the same similarity for every pair" in error
    assert "every off-diagonal dot product is 0 " in error
    assert not (tmp_path / "cz").exists()


def test_compare_names_overflowing_dot_products(tmp_path, recwarn):
    human = gamma_embedding(12, 3, seed=20)
    with pytest.raises(ValueError, match=r"the DNN embedding has dot products beyond float64 \(largest weight \d\.\d+e\+160\)"):
        compare(human, human * 1e160, tmp_path / "out", n_bootstrap=0, similarity=failing_similarity)
    assert not [warning for warning in recwarn if "overflow" in str(warning.message)]
    assert not (tmp_path / "out").exists()


def test_compare_rejects_equal_rows_before_slow_steps(tmp_path):
    write_surrogate_sides(tmp_path)
    write_side(tmp_path / "flat", np.tile([[0.5, 2.0]], (12, 1)))
    with pytest.raises(ValueError, match=r"the human run .*flat predicts the same similarity .* dot product is 4.25 "):
        compare(tmp_path / "flat", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, similarity=failing_similarity)
    assert not (tmp_path / "out").exists()


def test_compare_constant_rerun_keeps_earlier_results(tmp_path):
    save_surrogate_files(tmp_path)
    np.save(tmp_path / "zeros.npy", np.zeros((20, 3)))
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(out), "--bootstrap", "0"]) == 0
    before = sorted(path.name for path in out.iterdir())
    rsa_text = (out / "rsa.json").read_text()

    assert main(["compare", str(tmp_path / "human.npy"), str(tmp_path / "zeros.npy"), "-o", str(out), "--bootstrap", "0"]) == 1
    assert sorted(path.name for path in out.iterdir()) == before
    assert (out / "rsa.json").read_text() == rsa_text


@pytest.mark.parametrize("option", ["--similarity-objects", "--cumulative-objects"])
def test_compare_constant_subset_keeps_earlier_results(tmp_path, capsys, option):
    """Two non-zero rows make the whole set vary, but a 4-object subset without them is constant."""
    # Seed 0 draws the objects 5, 9, 11 and 14, all zero rows.
    assert np.sort(np.random.default_rng(0).choice(20, size=4, replace=False)).tolist() == [5, 9, 11, 14]
    save_surrogate_files(tmp_path)
    sparse = np.zeros((20, 3))
    sparse[0], sparse[1] = [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]
    np.save(tmp_path / "sparse.npy", sparse)
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(out), "--bootstrap", "0"]) == 0
    rsa_text = (out / "rsa.json").read_text()

    status = main(["compare", str(tmp_path / "human.npy"), str(tmp_path / "sparse.npy"), "-o", str(out),
                   "--bootstrap", "0", option, "4", "--seed", "0"])
    assert status == 1
    assert f"sparse.npy on the {option} subset predicts the same similarity" in capsys.readouterr().err
    assert (out / "rsa.json").read_text() == rsa_text


def test_compare_subset_of_orthogonal_rows(tmp_path):
    """A subset whose dot products are all 0 still varies through the third objects outside it."""
    rng = np.random.default_rng(0)
    n_objects = 12
    # The objects that _similarity_subset draws for 3 objects and seed 0.
    subset = np.sort(np.random.default_rng(0).choice(n_objects, size=3, replace=False))
    assert subset.tolist() == [6, 7, 8]
    human = rng.gamma(1.0, 1.0, size=(n_objects, 6))
    human[subset] = 0.0
    human[6, 0], human[7, 1], human[8, 2] = 1.0, 1.0, 2.0
    dnn = human + 0.1 * rng.random(human.shape)

    result = compare(human, dnn, tmp_path / "out", similarity_objects=3, n_bootstrap=0)

    # S_ij by a plain loop over the third objects k, as in the module docstring.
    def subset_similarity(embedding):
        dots = embedding @ embedding.T
        values = []
        for a, b in ((6, 7), (6, 8), (7, 8)):
            others = [k for k in range(n_objects) if k not in (a, b)]
            logits = np.stack([np.full(len(others), dots[a, b]), dots[a, others], dots[b, others]])
            values.append(np.mean(np.exp(logits[0]) / np.exp(logits).sum(axis=0)))
        return np.array(values)

    expected = np.corrcoef(subset_similarity(human), subset_similarity(dnn))[0, 1]
    assert result.rsa.r == pytest.approx(expected, abs=1e-12)
    assert result.rsa.r == pytest.approx(0.6333365126355952, abs=1e-12)


def test_compare_names_side_of_constant_similarity(tmp_path):
    write_surrogate_sides(tmp_path)

    def constant_for_dnn(embedding, objects=None, device="cpu"):
        if embedding.shape[1] == 5:
            return np.full((embedding.shape[0],) * 2, 0.25)
        return similarity_matrix(embedding, objects=objects)

    with pytest.raises(ValueError, match=r"the similarity matrix of the DNN run .*dnn is constant over the compared objects"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, similarity=constant_for_dnn)


def test_compare_rejects_constant_reference_first(tmp_path):
    write_surrogate_sides(tmp_path)
    matrix = np.full((5, 5), 0.4)
    np.fill_diagonal(matrix, 1.0)
    reference = (matrix, ObjectTable.from_ids([str(row) for row in range(5)]))
    with pytest.raises(ValueError, match=r"the reference matrix has the same value 0.4 at every position above the diagonal"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, reference=reference,
                similarity=failing_similarity)
    assert not (tmp_path / "out").exists()


def reference_command(tmp_path, reference_file):
    """The compare command line of save_surrogate_files' pair with a reference matrix file."""
    write_object_table(ObjectTable.from_ids([str(row) for row in range(8)]), tmp_path / "reference.tsv")
    return [
        "compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(tmp_path / "out"),
        "--reference-rsm", str(reference_file), "--reference-objects", str(tmp_path / "reference.tsv"),
    ]


def test_compare_cli_missing_reference_file(tmp_path, capsys):
    save_surrogate_files(tmp_path)
    assert main(reference_command(tmp_path, tmp_path / "nope.npy")) == 1
    error = capsys.readouterr().err
    assert f"--reference-rsm file {tmp_path / 'nope.npy'} not found: pass a .npy similarity matrix" in error
    assert "Errno" not in error
    assert not (tmp_path / "out").exists()


def test_compare_cli_text_reference_file(tmp_path, capsys):
    save_surrogate_files(tmp_path)
    np.savetxt(tmp_path / "reference.txt", np.eye(8))
    assert main(reference_command(tmp_path, tmp_path / "reference.txt")) == 1
    error = capsys.readouterr().err
    assert f"--reference-rsm file {tmp_path / 'reference.txt'} is not a .npy array of numbers" in error
    assert "allow_pickle" not in error
    assert not (tmp_path / "out").exists()


def test_compare_cli_triplet_range_names_human_rows(tmp_path, capsys):
    save_surrogate_files(tmp_path)
    (tmp_path / "t.txt").write_text("0 1 2\n3 4 20\n5 21 6\n")
    code = main([
        "compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(tmp_path / "out"),
        "--triplets", str(tmp_path / "t.txt"),
    ])
    assert code == 1
    error = capsys.readouterr().err
    assert (
        f"--triplets {tmp_path / 't.txt'}, row 1: object index 20 is out of range for the 20 objects of the "
        "human embedding (indices 0 to 19); 2 rows have such indices"
    ) in error
    assert "--n-objects" not in error
    assert not (tmp_path / "out").exists()


def test_compare_cli_triplets_warn_once_about_negative_weights(tmp_path, capsys):
    """The human file is read once to bound the triplet indices, and once more to compare."""
    human, dnn = save_surrogate_files(tmp_path)
    human[0, 0] = -1e-4
    np.savetxt(tmp_path / "human.txt", human)
    (tmp_path / "t.txt").write_text("0 1 2\n3 4 5\n")
    code = main([
        "compare", str(tmp_path / "human.txt"), str(tmp_path / "dnn.npy"), "-o", str(tmp_path / "out"),
        "--triplets", str(tmp_path / "t.txt"), "--bootstrap", "0",
    ])
    assert code == 0
    assert capsys.readouterr().err.count("set 1 negative weights") == 1


# -- map CLI ---------------------------------------------------------------------


def features_of_model(tmp_path, model):
    """A feature folder of 30 objects whose extract manifest records ``model``, and a run of them."""
    rng = np.random.default_rng(0)
    feature_dir = tmp_path / "features"
    feature_dir.mkdir()
    np.save(feature_dir / "features.npy", rng.normal(size=(30, 12)))
    (feature_dir / "manifest.json").write_text(json.dumps({
        "step": "extract",
        "settings": {"model": model, "weights": "random", "seed": 0, "layer": "fc:input", "pooling": "flatten"},
    }))
    ids = ObjectTable.from_ids([f"object{i:02d}" for i in range(30)])
    write_object_table(ids, feature_dir / "objects.tsv")
    write_side(tmp_path / "run", rng.random((30, 2)), ids)
    return feature_dir


def test_map_rejects_other_model_name(tmp_path, capsys):
    feature_dir = features_of_model(tmp_path, "resnet18")
    argv = ["map", str(feature_dir), "--embedding", str(tmp_path / "run"), "--alpha-range", "0.1", "10", "3"]

    status = main([*argv, "-o", str(tmp_path / "map"), "--model-name", "efficientnet_lite0"])
    error = capsys.readouterr().err
    same = main([*argv, "-o", str(tmp_path / "same"), "--model-name", "resnet18"])

    assert status == 1
    assert error.endswith(
        f"error: --model-name efficientnet_lite0 contradicts the model resnet18 that "
        f"{feature_dir / 'manifest.json'} records for the features, so gradcam, maximize and manipulate "
        "would explain another network; leave out --model-name, or map features of efficientnet_lite0\n"
    )
    assert not (tmp_path / "map").exists()
    assert same == 0


def test_map_accepts_prefixed_model_name(tmp_path):
    """--model-name resnet18 names the network that extract recorded as torchvision:resnet18."""
    feature_dir = features_of_model(tmp_path, "torchvision:resnet18")

    status = main([
        "map", str(feature_dir), "--embedding", str(tmp_path / "run"), "--alpha-range", "0.1", "10", "3",
        "-o", str(tmp_path / "map"), "--model-name", "resnet18",
    ])

    assert status == 0
    assert json.loads((tmp_path / "map" / "manifest.json").read_text())["settings"]["model_name"] == "resnet18"


def test_map_cli_aligns_objects(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 12))
    embedding = features[:, :3] @ rng.random((3, 2)) + 10.0 + 0.3 * rng.normal(size=(30, 2))
    ids = [f"object{i:02d}" for i in range(30)]
    feature_dir = tmp_path / "features"
    feature_dir.mkdir()
    np.save(feature_dir / "features.npy", features[::-1])
    write_object_table(ObjectTable.from_ids(ids[::-1]), feature_dir / "objects.tsv")
    write_side(tmp_path / "run", embedding, ObjectTable.from_ids(ids))

    code = main([
        "map", str(feature_dir), "--embedding", str(tmp_path / "run"), "-o", str(tmp_path / "map"),
        "--alpha-range", "0.001", "1000", "13", "--layer", "fc", "--model-name", "toy",
    ])
    assert code == 0
    from dimalign.analysis.ridge import RidgeMap

    ridge = RidgeMap.load(tmp_path / "map")
    assert ridge.layer == "fc"
    assert ridge.model_name == "toy"
    assert ridge.cv_r2_.min() > 0.5
    # The same fit on the features in the embedding's row order.
    direct = RidgeMap(alphas=np.logspace(-3, 3, 13)).fit(features, embedding)
    np.testing.assert_allclose(ridge.alpha_, direct.alpha_, rtol=1e-9)
    np.testing.assert_allclose(ridge.predict(features), direct.predict(features), rtol=1e-6)
    table = pd.read_csv(tmp_path / "map" / "ridge_map.csv")
    assert table.columns.tolist() == ["dimension", "alpha", "cv_r2", "nested_cv_r2"]
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert len(manifest["inputs"]["features"]["sha256"]) == 64


def test_map_cli_objects_name_feature_rows(tmp_path):
    """--objects names the rows of a feature file without a table, such as the shared VGG-16 factors."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 12))
    embedding = features[:, :3] @ rng.random((3, 2)) + 10.0 + 0.3 * rng.normal(size=(30, 2))
    ids = [f"object{i:02d}" for i in range(30)]
    np.save(tmp_path / "features.npy", features[::-1])
    (tmp_path / "feature_ids.txt").write_text("".join(f"{name}\n" for name in ids[::-1]))
    write_side(tmp_path / "run", embedding, ObjectTable.from_ids(ids))
    command = ["map", str(tmp_path / "features.npy"), "--embedding", str(tmp_path / "run"),
               "--alpha-range", "0.001", "1000", "13"]

    assert main([*command, "-o", str(tmp_path / "without")]) == 1
    assert main([*command, "-o", str(tmp_path / "map"), "--objects", str(tmp_path / "feature_ids.txt")]) == 0

    from dimalign.analysis.ridge import RidgeMap

    ridge = RidgeMap.load(tmp_path / "map")
    direct = RidgeMap(alphas=np.logspace(-3, 3, 13)).fit(features, embedding)
    np.testing.assert_allclose(ridge.alpha_, direct.alpha_, rtol=1e-9)
    np.testing.assert_allclose(ridge.predict(features), direct.predict(features), rtol=1e-6)
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["inputs"]["objects"]["path"] == str(tmp_path / "feature_ids.txt")


def test_map_cli_objects_must_fit_features(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.ones((3, 2)))
    (tmp_path / "ids.txt").write_text("a\nb\n")
    write_side(tmp_path / "run", np.ones((3, 1)), ObjectTable.from_ids(["a", "b", "c"]))

    code = main(["map", str(tmp_path / "features.npy"), "--embedding", str(tmp_path / "run"),
                 "-o", str(tmp_path / "map"), "--objects", str(tmp_path / "ids.txt")])

    assert code == 1
    assert (f"--objects {tmp_path / 'ids.txt'} lists 2 objects but the features {tmp_path / 'features.npy'} "
            "have 3 rows; pass an object table with one name per feature row, in row order") in capsys.readouterr().err
    assert not (tmp_path / "map").exists()


def test_map_keeps_user_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    feature_dir = tmp_path / "features"
    feature_dir.mkdir()
    np.save(feature_dir / "features.npy", rng.normal(size=(30, 4)))
    write_side(tmp_path / "run", rng.gamma(1.0, 1.0, size=(30, 2)))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "ridge_map.csv").write_text("my own table")
    argv = ["map", str(feature_dir), "--embedding", str(tmp_path / "run"), "-o", str(out)]

    assert main(argv) == 1
    assert f"{out / 'ridge_map.csv'} exists, but {out} contains no earlier dimalign map output" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["ridge_map.csv"]
    assert (out / "ridge_map.csv").read_text() == "my own table"

    # A rerun of map into its own folder replaces its files.
    (out / "ridge_map.csv").unlink()
    assert main(argv) == 0
    assert main(argv) == 0


def test_map_cli_rejects_different_objects(tmp_path, capsys):
    feature_dir = tmp_path / "features"
    feature_dir.mkdir()
    np.save(feature_dir / "features.npy", np.ones((3, 2)))
    write_object_table(ObjectTable.from_ids(["a", "b", "c"]), feature_dir / "objects.tsv")
    write_side(tmp_path / "run", np.ones((3, 1)), ObjectTable.from_ids(["a", "b", "d"]))
    code = main(["map", str(feature_dir), "--embedding", str(tmp_path / "run"), "-o", str(tmp_path / "map")])
    assert code == 1
    error = capsys.readouterr().err
    assert "only in the features table ['c']; map features and an embedding of the same objects" in error


def test_map_cli_rejects_embedding_without_dimensions(tmp_path, capsys):
    feature_dir = tmp_path / "features"
    feature_dir.mkdir()
    np.save(feature_dir / "features.npy", np.random.default_rng(0).normal(size=(3, 2)))
    write_side(tmp_path / "run", np.zeros((3, 0)))
    code = main(["map", str(feature_dir), "--embedding", str(tmp_path / "run"), "-o", str(tmp_path / "map")])
    assert code == 1
    error = capsys.readouterr().err
    assert f"the embedding {tmp_path / 'run'} has no dimension (the fit pruned them all)" in error
    assert "zero-size" not in error
    assert not (tmp_path / "map").exists()


def test_map_cli_keeps_fit_manifest(tmp_path, capsys):
    feature_dir = tmp_path / "features"
    feature_dir.mkdir()
    np.save(feature_dir / "features.npy", np.random.default_rng(0).normal(size=(3, 2)))
    write_object_table(ObjectTable.from_ids(["a", "b", "c"]), feature_dir / "objects.tsv")
    run = tmp_path / "run"
    write_side(run, np.ones((3, 1)), ObjectTable.from_ids(["a", "b", "c"]))
    (run / "manifest.json").write_text(json.dumps({"step": "fit"}))

    code = main(["map", str(feature_dir), "--embedding", str(run), "-o", str(run)])

    assert code == 1
    assert "already contains the output of dimalign fit" in capsys.readouterr().err
    assert json.loads((run / "manifest.json").read_text()) == {"step": "fit"}


def write_extract_folder(folder, features, ids, layers=("avgpool",)):
    """A feature folder as dimalign extract writes it for one layer, with its manifest."""
    folder.mkdir()
    np.save(folder / "features.npy", features)
    write_object_table(ObjectTable.from_ids(ids), folder / "objects.tsv")
    settings = {"model": "efficientnet_lite0", "weights": "pretrained", "seed": 0, "layers": list(layers),
                "pools": ["flatten"] * len(layers), "layer": layers[0], "pooling": "flatten"}
    (folder / "manifest.json").write_text(json.dumps({"step": "extract", "settings": settings}))


def write_map_inputs(tmp_path):
    """An extract folder of 12 objects (layer avgpool) and a run of the same objects."""
    rng = np.random.default_rng(0)
    ids = [f"o{i}" for i in range(12)]
    write_extract_folder(tmp_path / "features", rng.normal(size=(12, 4)), ids)
    write_side(tmp_path / "run", rng.random((12, 2)), ObjectTable.from_ids(ids))


def test_map_cli_rejects_layer_not_extracted(tmp_path, capsys):
    write_map_inputs(tmp_path)

    code = main(["map", str(tmp_path / "features"), "--embedding", str(tmp_path / "run"),
                 "-o", str(tmp_path / "map"), "--layer", "blocks.3"])

    assert code == 1
    error = capsys.readouterr().err
    assert (f"the features {tmp_path / 'features'} contain layer(s) avgpool (from the manifest.json of "
            "dimalign extract), not 'blocks.3'") in error
    assert not (tmp_path / "map").exists()


def test_map_cli_records_extracted_layer(tmp_path):
    write_map_inputs(tmp_path)

    code = main(["map", str(tmp_path / "features"), "--embedding", str(tmp_path / "run"),
                 "-o", str(tmp_path / "map"), "--layer", "avgpool"])

    assert code == 0
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["settings"]["features_source"]["layer"] == "avgpool"


def write_two_layer_folder(folder, ids):
    """A dimalign extract folder with the layers avgpool and head, one .npy file each."""
    rng = np.random.default_rng(1)
    folder.mkdir()
    np.save(folder / "features_avgpool.npy", rng.normal(size=(len(ids), 4)))
    np.save(folder / "features_head.npy", rng.normal(size=(len(ids), 3)))
    write_object_table(ObjectTable.from_ids(ids), folder / "objects.tsv")
    manifest = {
        "step": "extract",
        "settings": {"model": "efficientnet_lite0", "weights": "pretrained", "seed": 0,
                     "layers": ["avgpool", "head"], "pools": ["flatten", "gap"]},
        "outputs": {"files": {"avgpool": "features_avgpool.npy", "head": "features_head.npy"}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_map_cli_rejects_file_of_another_layer(tmp_path, capsys):
    ids = [f"o{i}" for i in range(12)]
    write_two_layer_folder(tmp_path / "features", ids)
    write_side(tmp_path / "run", np.random.default_rng(0).random((12, 2)), ObjectTable.from_ids(ids))
    feature_file = tmp_path / "features" / "features_head.npy"

    code = main(["map", str(feature_file), "--embedding", str(tmp_path / "run"), "-o", str(tmp_path / "map"),
                 "--layer", "avgpool"])

    assert code == 1
    assert (f"the features {feature_file} are layer 'head' (from the manifest.json of dimalign extract), "
            "not 'avgpool'") in capsys.readouterr().err
    assert not (tmp_path / "map").exists()


def test_map_cli_takes_layer_of_named_file(tmp_path):
    ids = [f"o{i}" for i in range(12)]
    write_two_layer_folder(tmp_path / "features", ids)
    write_side(tmp_path / "run", np.random.default_rng(0).random((12, 2)), ObjectTable.from_ids(ids))

    code = main(["map", str(tmp_path / "features" / "features_head.npy"), "--embedding", str(tmp_path / "run"),
                 "-o", str(tmp_path / "map")])

    assert code == 0
    source = json.loads((tmp_path / "map" / "manifest.json").read_text())["settings"]["features_source"]
    assert source["layer"] == "head"
    assert source["pooling"] == "gap"


def test_map_cli_records_image_decoding(tmp_path):
    ids = [f"o{i}" for i in range(12)]
    write_two_layer_folder(tmp_path / "features", ids)
    manifest_path = tmp_path / "features" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["settings"].update(background=[0, 0, 0], exif_transpose=False)
    manifest_path.write_text(json.dumps(manifest))
    write_side(tmp_path / "run", np.random.default_rng(0).random((12, 2)), ObjectTable.from_ids(ids))

    code = main(["map", str(tmp_path / "features" / "features_head.npy"), "--embedding", str(tmp_path / "run"),
                 "-o", str(tmp_path / "map")])

    assert code == 0
    source = json.loads((tmp_path / "map" / "manifest.json").read_text())["settings"]["features_source"]
    assert source["background"] == [0, 0, 0]
    assert source["exif_transpose"] is False


def test_map_cli_names_nonfinite_feature_rows(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ids = [f"o{i}" for i in range(12)]
    features = rng.normal(size=(12, 4))
    features[[2, 9], 1] = [np.inf, np.nan]
    write_extract_folder(tmp_path / "features", features, ids)
    # The embedding lists the objects in reverse, so its row 2 is the features' row 9.
    write_side(tmp_path / "run", rng.random((12, 2)), ObjectTable.from_ids(ids[::-1]))

    code = main(["map", str(tmp_path / "features"), "--embedding", str(tmp_path / "run"),
                 "-o", str(tmp_path / "map")])

    assert code == 1
    error = capsys.readouterr().err
    assert (f"the features {tmp_path / 'features' / 'features.npy'} contain NaN or inf in 2 rows, "
            "first rows [2, 9] (o2, o9)") in error
    assert not (tmp_path / "map").exists()


def test_map_cli_rejects_features_without_columns(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.zeros((12, 0)))
    write_side(tmp_path / "run", np.random.default_rng(0).random((12, 2)))

    code = main(["map", str(tmp_path / "features.npy"), "--embedding", str(tmp_path / "run"),
                 "-o", str(tmp_path / "map")])

    assert code == 1
    assert f"the features {tmp_path / 'features.npy'} have no column (shape (12, 0))" in capsys.readouterr().err



@pytest.mark.parametrize("table_side", ["features", "embedding"])
def test_map_cli_rejects_table_on_one_side(tmp_path, capsys, table_side):
    rng = np.random.default_rng(0)
    ids = [f"o{i}" for i in range(12)]
    feature_dir = tmp_path / "features"
    feature_dir.mkdir()
    # The features list their objects in reverse, which only their table records.
    np.save(feature_dir / "features.npy", rng.normal(size=(12, 4)))
    embedding_table = None
    if table_side == "features":
        write_object_table(ObjectTable.from_ids(ids[::-1]), feature_dir / "objects.tsv")
    else:
        embedding_table = ObjectTable.from_ids(ids)
    write_side(tmp_path / "run", rng.random((12, 2)), embedding_table)

    code = main(["map", str(feature_dir), "--embedding", str(tmp_path / "run"), "-o", str(tmp_path / "map")])

    assert code == 1
    error = capsys.readouterr().err
    if table_side == "features":
        assert (f"the features have an object table ({feature_dir / 'objects.tsv'}) but the embedding "
                f"{tmp_path / 'run'} has none") in error
        assert f"put an objects.tsv that names the embedding rows in {tmp_path / 'run'}" in error
    else:
        assert (f"the embedding has an object table ({tmp_path / 'run' / 'objects.tsv'}) but the "
                f"features {feature_dir} have none") in error
        assert (f"pass the table that names the feature rows with --objects, or put it as objects.tsv in "
                f"{feature_dir}") in error
    assert not (tmp_path / "map").exists()



def test_map_help_names_object_tables():
    import argparse

    from dimalign.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    description = commands.choices["map"].description
    # map has no --objects option, so the help must say where the tables come from.
    assert "objects.tsv" in description
    assert "both inputs or neither" in description


def test_map_cli_rejects_embedding_table_of_other_length(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ids = [f"o{i}" for i in range(12)]
    write_extract_folder(tmp_path / "features", rng.normal(size=(12, 4)), ids)
    # Ten embedding rows under a table of twelve objects.
    write_side(tmp_path / "run", rng.random((10, 2)), ObjectTable.from_ids(ids))

    code = main(["map", str(tmp_path / "features"), "--embedding", str(tmp_path / "run"),
                 "-o", str(tmp_path / "map")])

    assert code == 1
    error = capsys.readouterr().err
    assert (f"the object table {tmp_path / 'run' / 'objects.tsv'} lists 12 objects, but the embedding "
            f"{tmp_path / 'run' / 'embedding.npz'} has 10 rows") in error
    assert not (tmp_path / "map").exists()



def test_map_cli_failed_save_leaves_nothing(tmp_path, capsys, monkeypatch):
    from dimalign.analysis import ridge as ridge_module

    write_map_inputs(tmp_path)
    argv = ["map", str(tmp_path / "features"), "--embedding", str(tmp_path / "run"), "-o", str(tmp_path / "map")]

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(ridge_module, "write_manifest", full_disk)
        assert main(argv) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "map").exists()

    assert main(argv) == 0


def test_map_cli_failed_rerun_keeps_earlier_map(tmp_path, capsys, monkeypatch):
    from dimalign.analysis import ridge as ridge_module

    write_map_inputs(tmp_path)
    out = tmp_path / "map"
    argv = ["map", str(tmp_path / "features"), "--embedding", str(tmp_path / "run"), "-o", str(out)]
    assert main(argv) == 0
    earlier = {path.name: path.read_bytes() for path in out.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(ridge_module, "write_ridge_table", full_disk)
        assert main([*argv, "--alphas", "0.1", "1", "10"]) == 1
    assert "No space left on device" in capsys.readouterr().err

    assert {path.name: path.read_bytes() for path in out.iterdir()} == earlier


# -- real THINGS data -------------------------------------------------------------

# A short VICE fit (about 45 s with one torch thread on a 2-core CPU): it keeps
# few dimensions, so the numbers differ from a full fit (see docs/compare.md).
DNN_VICE_SETTINGS = {
    "n_dims": 60, "batch_size": 2048, "lr": 0.005, "max_epochs": 30, "mc_samples": 5, "eval_every": 10,
}


@pytest.mark.slow
def test_compare_real_things(tmp_path, things_dir):
    from dimalign.analysis.sweep import sweep
    from dimalign.analysis.things48 import load_things48
    from dimalign.io.objects import read_object_table
    from dimalign.io.triplets import load_triplets
    from dimalign.parallel import limit_torch_threads
    from dimalign.triplets import sample_triplets, simulate_choices

    # DNN side: VICE fitted to odd-one-out choices simulated from VGG-16-like features.
    table = read_object_table(things_dir / "unique_id.txt")
    factors = np.load(things_dir / "vgg16_srf_factors_rank200.npy")
    triplets = simulate_choices(factors, sample_triplets(1854, 100_000, random_state=0), random_state=0).triplets
    sweep(
        triplets[:90_000], triplets[90_000:], tmp_path / "dnn", seeds=[0], n_objects=1854,
        settings=DNN_VICE_SETTINGS, object_table=table,
    )

    # Human side: the published VICE 42-d embedding; ground truth: the 48-object RDM.
    things48 = load_things48(things_dir)
    reference = (1.0 - things48.rdm, ObjectTable.from_ids([table.object_ids[row] for row in things48.indices]))
    human_triplets = load_triplets(things_dir / "human_triplets.txt", 1854)[:20_000]
    with limit_torch_threads(1):
        result = compare(
            things_dir / "vice_embedding_42d.npy", tmp_path / "dnn" / "runs" / "seed_0", tmp_path / "out",
            objects=table, triplets=human_triplets, n_bootstrap=200, reference=reference,
        )

    summary = json.loads((tmp_path / "out" / "rsa.json").read_text())
    print(json.dumps(summary, indent=2))
    assert summary["n_objects"] == 1854
    assert 0.2 < summary["r"] < 0.95
    assert summary["ci_low"] < summary["r"] < summary["ci_high"]
    # Published human VICE 42-d on the 48 objects: r = 0.882, so r² = 0.778.
    assert summary["reference"]["human_r2"] == pytest.approx(0.7778, abs=1e-3)
    assert summary["reference"]["dnn_r2"] < summary["reference"]["human_r2"]
    assert summary["matched_r_max"] > 0.4
    assert summary["n_dnn_dims_for_95_percent"] is not None
    assert result.cumulative.r[-1] == pytest.approx(result.rsa.r)
    relevance = json.loads((tmp_path / "out" / "relevance_summary.json").read_text())
    assert 0.33 < relevance["choice_agreement"] < 1.0


@pytest.mark.parametrize(
    "alpha_range", [["1", "10", "-5"], ["10", "1", "3"], ["0", "1", "3"], ["1", "10", "1e9"], ["1", "10", "2.5"]],
)
def test_map_cli_rejects_bad_alpha_range(tmp_path, capsys, alpha_range):
    status = main(["map", str(tmp_path / "missing_features.npy"), "--embedding", str(tmp_path / "missing"),
                   "-o", str(tmp_path / "map"), "--alpha-range", *alpha_range])
    assert status == 1
    assert "--alpha-range" in capsys.readouterr().err
    assert not (tmp_path / "map").exists()


def test_map_cli_rejects_seed_without_shuffle(tmp_path, capsys):
    status = main(["map", str(tmp_path / "features.npy"), "--embedding", str(tmp_path / "run"),
                   "-o", str(tmp_path / "map"), "--seed", "5"])

    assert status == 1
    assert "--seed 5 only seeds --shuffle: drop it, or add --shuffle" in capsys.readouterr().err
    assert not (tmp_path / "map").exists()


def test_map_cli_rejects_swapped_inputs(tmp_path, capsys):
    ids = [f"o{i}" for i in range(12)]
    write_extract_folder(tmp_path / "features", np.random.default_rng(0).normal(size=(12, 4)), ids)
    np.save(tmp_path / "embedding.npy", np.random.default_rng(1).random((12, 2)))

    status = main(["map", str(tmp_path / "embedding.npy"), "--embedding", str(tmp_path / "features" / "features.npy"),
                   "-o", str(tmp_path / "map")])

    assert status == 1
    assert (f"--embedding {tmp_path / 'features' / 'features.npy'} is in the output folder of dimalign extract, "
            "so it contains features, not an embedding") in capsys.readouterr().err
    assert not (tmp_path / "map").exists()


def test_compare_accepts_arrays_and_estimators(tmp_path):
    """A notebook passes fitted models or arrays; the result equals that of the saved runs."""
    from dimalign.embedding import SPoSE

    human, dnn = surrogate_pair(n_objects=12)
    write_side(tmp_path / "human", human)
    write_side(tmp_path / "dnn", dnn)
    from_files = compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "files", n_bootstrap=20)

    # The runs store float32 weights, so the arrays are read back from them.
    saved_human = load_embedding(tmp_path / "human").embedding
    saved_dnn = load_embedding(tmp_path / "dnn").embedding
    from_arrays = compare(saved_human, saved_dnn, tmp_path / "arrays", n_bootstrap=20)
    assert from_arrays.rsa.r == from_files.rsa.r
    assert from_arrays.rsa.ci_low == from_files.rsa.ci_low
    estimator = SPoSE(n_dims=4, n_objects=12)
    estimator.embedding_ = saved_human
    from_estimator = compare(estimator, tmp_path / "dnn", tmp_path / "estimator", n_bootstrap=20)
    assert from_estimator.rsa.r == from_files.rsa.r


def test_compare_rejects_unfitted_estimator_and_negative_array(tmp_path):
    from sklearn.exceptions import NotFittedError

    from dimalign.embedding import VICE

    human, dnn = surrogate_pair(n_objects=12)
    with pytest.raises(NotFittedError, match="the human embedding, a VICE, is not fitted yet"):
        compare(VICE(), dnn, tmp_path / "out", n_bootstrap=0)
    negative = dnn.copy()
    negative[3, 1] = -0.5
    with pytest.raises(ValueError, match=r"the DNN embedding: 1 negative weights, the lowest -0.5 at row 3"):
        compare(human, negative, tmp_path / "out", n_bootstrap=0)
    assert not (tmp_path / "out").exists()


def test_compare_rejects_complex_and_text_arrays(tmp_path):
    """numpy drops the imaginary part when it casts to float, so a complex array would lose data."""
    human, dnn = surrogate_pair(n_objects=12)
    message = r"embedding: an embedding must contain real numbers, got dtype"
    with pytest.raises(ValueError, match=rf"^the DNN {message} complex128; pass a float array"):
        compare(human, dnn + 1j, tmp_path / "out", n_bootstrap=0)
    with pytest.raises(ValueError, match=rf"^the human {message} <U1; pass a float array"):
        compare(np.full((12, 2), "x"), dnn, tmp_path / "out", n_bootstrap=0)
    assert not (tmp_path / "out").exists()


def test_compare_logs_dimension_count_for_share(tmp_path, caplog):
    embedding = gamma_embedding(12, 1, seed=5)

    with caplog.at_level("INFO", logger="dimalign.analysis.compare"):
        compare(embedding, embedding, tmp_path / "out", n_bootstrap=0)

    assert "; 1 DNN dimension for 95% of the full r²" in caplog.text


def test_compare_summary_labels_interval(tmp_path, caplog):
    human, dnn = surrogate_pair(n_objects=20)

    with caplog.at_level("INFO", logger="dimalign.analysis.compare"):
        result = compare(EmbeddingResult(human), EmbeddingResult(dnn), tmp_path / "out", n_bootstrap=20)

    expected = (
        f"human-DNN RSA r = {result.rsa.r:.3f}, 95% interval [{result.rsa.ci_low:.3f}, "
        f"{result.rsa.ci_high:.3f}]; matched r up to"
    )
    assert expected in caplog.text


def test_compare_cli_rejects_split_folder_as_triplets(tmp_path, capsys):
    """A folder would load train.npy, so the jackknife would explain training triplets."""
    write_surrogate_sides(tmp_path)
    split = tmp_path / "split"
    split.mkdir()
    np.save(split / "train.npy", np.array([[0, 1, 2], [3, 4, 5]]))
    np.save(split / "val.npy", np.array([[6, 7, 8]]))

    status = main(["compare", str(tmp_path / "human"), str(tmp_path / "dnn"), "-o", str(tmp_path / "out"),
                   "--triplets", str(split), "--bootstrap", "0"])

    assert status == 1
    assert (f"--triplets {split} is a folder, which loads train.npy, the training triplets of a split, not the "
            f"held-out {split / 'val.npy'}: pass the triplet file to explain itself") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_similarity_subset_above_object_count_says_all(caplog):
    from dimalign.analysis.compare import _similarity_subset

    with caplog.at_level(logging.INFO, logger="dimalign"):
        assert _similarity_subset(10, 50, 0) is None
    assert "similarity_objects=50 covers all 10 objects: using every object" in caplog.text


def test_bootstrap_spearman_constant_samples_are_nan():
    a = similarity_matrix(gamma_embedding(3, 2, seed=14))
    b = similarity_matrix(gamma_embedding(3, 2, seed=15))
    # As for Pearson, a sample without all 3 objects has no correlation and is NaN, not an error.
    indices = bootstrap_indices(3, 50, 0)
    complete = np.array([len(set(row.tolist())) == 3 for row in indices])
    with pytest.warns(UserWarning, match=f"{50 - complete.sum()} of 50 bootstrap samples had a constant"):
        result = bootstrap_rsa(a, b, n_bootstrap=50, random_state=0, method="spearman")
    assert np.array_equal(np.isnan(result.samples), ~complete)
    upper = np.triu_indices(3, k=1)
    expected = spearmanr(a[upper], b[upper])[0]
    np.testing.assert_allclose(result.samples[complete], expected, atol=1e-12)


def test_compare_leaves_tied_triplets_out_of_relevance(tmp_path):
    human, dnn = surrogate_pair(n_objects=12)
    # Two equal human dimensions tie in every triplet where they lead.
    human = np.column_stack([human[:, 0], human[:, 0], 0.01 * human[:, 1]])
    write_side(tmp_path / "human", human)
    write_side(tmp_path / "dnn", dnn)
    triplets = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
    with pytest.warns(UserWarning, match="no single most relevant dimension"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, triplets=triplets)
    out = tmp_path / "out"
    summary = json.loads((out / "relevance_summary.json").read_text())
    assert summary["n_human_without_most_relevant_dim"] > 0
    per_triplet = pd.read_csv(out / "most_relevant_human.csv")
    assert len(per_triplet) == 4 - summary["n_human_without_most_relevant_dim"]
    assert (per_triplet["most_relevant_dim"] >= 0).all()
    with np.load(out / "triplet_relevance.npz") as archive:
        assert np.count_nonzero(archive["human_most_relevant"] == -1) == summary["n_human_without_most_relevant_dim"]


def test_compare_objects_name_only_side_without_table(tmp_path):
    """--objects, as the error for a side without ids suggests, names that side, not a plain file with its own table."""
    human, dnn = surrogate_pair(n_objects=12)
    ids = [f"a{i:02d}" for i in range(12)]
    expected = compare(EmbeddingResult(human), EmbeddingResult(dnn), tmp_path / "unshuffled", n_bootstrap=0).rsa.r
    (tmp_path / "h").mkdir()
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "h" / "emb.npy", human)
    write_object_table(ObjectTable.from_ids(ids), tmp_path / "h" / "objects.tsv")
    order = np.random.default_rng(5).permutation(12)
    np.save(tmp_path / "d" / "emb.npy", dnn[order])
    (tmp_path / "d_ids.txt").write_text("".join(f"{ids[row]}\n" for row in order))
    command = ["compare", str(tmp_path / "h" / "emb.npy"), str(tmp_path / "d" / "emb.npy"), "--bootstrap", "0"]

    assert main([*command, "-o", str(tmp_path / "first")]) == 1
    assert main([*command, "-o", str(tmp_path / "out"), "--objects", str(tmp_path / "d_ids.txt")]) == 0
    assert json.loads((tmp_path / "out" / "rsa.json").read_text())["r"] == pytest.approx(expected, abs=1e-12)
    settings = json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]
    assert settings["human_objects"] == str(tmp_path / "h" / "objects.tsv")
    assert settings["dnn_objects"] == "objects argument"


def test_compare_share_null_near_zero_r(tmp_path):
    # The DNN side is the human embedding with its rows shuffled: r = 0.04,
    # 95% interval [-0.08, 0.23], while its first dimension alone has r = 0.25.
    human = np.random.default_rng(1).gamma(0.5, 1.0, size=(30, 4))
    dnn = human[np.random.default_rng(11).permutation(30)]
    with pytest.warns(UserWarning, match=r"interval \[-0.08\d*, 0.23\d*\] of the full DNN model's r contains 0"):
        result = compare(EmbeddingResult(human), EmbeddingResult(dnn), tmp_path / "out", n_bootstrap=100)
    assert result.rsa.ci_low < 0 < result.rsa.ci_high
    summary = json.loads((tmp_path / "out" / "rsa.json").read_text())
    assert summary["n_dnn_dims_for_95_percent"] is None
    assert pd.read_csv(tmp_path / "out" / "cumulative_rsa.csv")["share_of_full_r2"].isna().all()


def test_compare_log_gives_null_share_reason(tmp_path, caplog):
    human = np.random.default_rng(1).gamma(0.5, 1.0, size=(30, 4))
    dnn = human[np.random.default_rng(11).permutation(30)]

    with caplog.at_level("INFO", logger="dimalign.analysis.compare"), pytest.warns(UserWarning):
        compare(EmbeddingResult(human), EmbeddingResult(dnn), tmp_path / "out", n_bootstrap=100)

    summary = [record.getMessage() for record in caplog.records if "human-DNN RSA r =" in record.getMessage()]
    assert len(summary) == 1
    assert "not reached" not in summary[0]
    assert re.search(
        r"; no share of the full r² is meaningful, because the 95% interval \[-0\.08\d, 0\.23\d\] of the "
        r"full DNN model's r contains 0$",
        summary[0],
    )


def test_compare_log_no_share_count(tmp_path, caplog):
    """No log line counts DNN dimensions for 95% when the interval of the full r contains 0."""
    human = np.random.default_rng(1).gamma(0.5, 1.0, size=(30, 4))
    dnn = human[np.random.default_rng(11).permutation(30)]

    with caplog.at_level("INFO", logger="dimalign"), pytest.warns(UserWarning):
        result = compare(EmbeddingResult(human), EmbeddingResult(dnn), tmp_path / "out", n_bootstrap=100)

    assert result.cumulative.n_dims_for_share is None
    assert result.cumulative.r_full_interval == (result.rsa.ci_low, result.rsa.ci_high)
    assert "reach" not in caplog.text
    curve_lines = [record.getMessage() for record in caplog.records if "cumulative RSA: full r" in record.getMessage()]
    assert curve_lines == [
        f"cumulative RSA: full r = {result.cumulative.r_full:.3f}, but its bootstrap interval "
        f"[{result.rsa.ci_low:.3f}, {result.rsa.ci_high:.3f}] contains 0, so no share of its r² is "
        "meaningful and no number of DNN dimensions for 95% is given"
    ]


def test_compare_share_interval_on_cumulative_subset(tmp_path):
    human = np.random.default_rng(1).gamma(0.5, 1.0, size=(30, 4))
    dnn = human[np.random.default_rng(11).permutation(30)]
    with pytest.warns(UserWarning, match="of the full DNN model's r contains 0"):
        compare(EmbeddingResult(human), EmbeddingResult(dnn), tmp_path / "out", n_bootstrap=100, cumulative_objects=25)
    summary = json.loads((tmp_path / "out" / "rsa.json").read_text())
    assert summary["n_dnn_dims_for_95_percent"] is None
    assert summary["cumulative_full_r_ci_low"] < 0


def test_compare_share_without_valid_interval_says_so(tmp_path):
    """Three objects give every bootstrap sample fewer than three distinct objects, so no interval."""
    human = np.random.default_rng(1).gamma(0.5, 1.0, size=(30, 4))
    dnn = human[:, ::-1]
    with pytest.warns(UserWarning) as records:
        compare(EmbeddingResult(human), EmbeddingResult(dnn), tmp_path / "out", n_bootstrap=5, cumulative_objects=3)
    messages = [str(record.message) for record in records]
    share = [message for message in messages if "n_dnn_dims_for_95_percent is null" in message]
    assert len(share) == 1
    assert "nan" not in share[0]
    assert "contains 0" not in share[0]
    assert "none of the 5 bootstrap samples" in share[0]
    summary = json.loads((tmp_path / "out" / "rsa.json").read_text())
    assert summary["n_dnn_dims_for_95_percent"] is None
    assert summary["cumulative_full_r_ci_low"] is None


def test_compare_cumulative_objects_error_names_option(tmp_path):
    write_surrogate_sides(tmp_path)
    with pytest.raises(ValueError, match=r"cumulative_objects=0 is invalid \(--cumulative-objects\): use at least 3"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, cumulative_objects=0)
    with pytest.raises(ValueError, match=r"similarity_objects=2 is invalid \(--similarity-objects\)"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, similarity_objects=2)
    assert not (tmp_path / "out").exists()


def test_compare_cli_negative_seed_names_option(tmp_path, capsys):
    save_surrogate_files(tmp_path)
    code = main(["compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(tmp_path / "out"),
                 "--seed", "-1"])
    assert code == 1
    assert "random_state=-1 is invalid (--seed): use 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compare_no_dissimilarity_warning_near_zero(tmp_path):
    import warnings

    write_surrogate_sides(tmp_path)
    # A reference built to correlate with both models' similarities at r between -0.1 and 0:
    # noise orthogonal to both, minus a small share of each.
    rows = np.arange(8)
    upper = np.triu_indices(8, k=1)
    models = [
        similarity_matrix(load_embedding(tmp_path / side).embedding, objects=rows)[upper] for side in ("human", "dnn")
    ]
    standardized = [(values - values.mean()) / values.std() for values in models]
    design = np.column_stack([np.ones(len(upper[0])), *standardized])
    noise = np.random.default_rng(5).standard_normal(len(upper[0]))
    residual = noise - design @ np.linalg.lstsq(design, noise, rcond=None)[0]
    values = residual / residual.std() - 0.03 * (standardized[0] + standardized[1])
    matrix = np.zeros((8, 8))
    matrix[upper] = values
    reference = (matrix + matrix.T, ObjectTable.from_ids([str(row) for row in rows]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, reference=reference)
    scores = json.loads((tmp_path / "out" / "rsa.json").read_text())["reference"]
    assert -0.1 < scores["human_r"] < 0
    assert -0.1 < scores["dnn_r"] < 0
    assert not any("dissimilarity" in str(warning.message) for warning in caught)


def test_compare_warns_about_asymmetric_reference(tmp_path):
    write_surrogate_sides(tmp_path)
    human, _ = surrogate_pair(n_objects=12)
    matrix = similarity_matrix(human, objects=range(6))
    matrix[1, 4] += 0.3
    reference = (matrix, ObjectTable.from_ids([str(row) for row in range(6)]))
    with pytest.warns(UserWarning, match=r"the reference matrix \(--reference-rsm\) is not symmetric: the largest difference is 0.3\d* at \(row, column\) \(1, 4\)"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, reference=reference)


@pytest.mark.parametrize("fail_at", [1, 3, 8])
def test_compare_stop_during_moves_keeps_earlier_output(tmp_path, monkeypatch, fail_at):
    # A stop while the new files are moved in (here an OSError from the
    # fail_at-th move) puts back every file of the earlier comparison, also
    # those the rerun does not write (relevance files, similarity matrices).
    import os

    import dimalign.io.files as files

    write_surrogate_sides(tmp_path)
    out = tmp_path / "out"
    triplets = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0, triplets=triplets, save_similarity=True)
    before = folder_contents(out)

    real_replace, calls = os.replace, []

    def failing_replace(source, target):
        # Count only the moves of new files from the hidden folder into out.
        if Path(source).parent.name.startswith(".partial-") and Path(target).parent == out:
            calls.append(target)
            if len(calls) == fail_at:
                raise OSError("disk full")
        real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0)
    assert len(calls) == fail_at
    monkeypatch.undo()

    assert folder_contents(out) == before
    assert not list(out.glob(".partial-*"))


@pytest.mark.parametrize("blocked", ["top_objects", "rsa.json"])
def test_compare_output_path_in_the_way_rejected_first(tmp_path, shared_data, blocked):
    # A file named top_objects, or a folder named like an output file, would
    # make the final moves fail after all the work.
    write_sides_with_images(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    if blocked == "top_objects":
        (out / blocked).write_text("the user's file")
    else:
        (out / blocked).mkdir()
    with pytest.raises(FileExistsError, match=rf"{blocked} .*move it away, or choose another"):
        compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0, top_k=2,
                images=shared_data / "images", similarity=failing_similarity)
    assert sorted(path.name for path in out.iterdir()) == [blocked]


def test_compare_keeps_user_file(tmp_path):
    # In a folder without an earlier comparison, rsa.json is the user's own
    # file; a rerun into its own folder still replaces it.
    write_surrogate_sides(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "rsa.json").write_text("my notes")
    with pytest.raises(FileExistsError, match=r"rsa.json exists, but .* contains no earlier dimalign compare"):
        compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0, top_k=2)
    assert sorted(path.name for path in out.iterdir()) == ["rsa.json"]
    assert (out / "rsa.json").read_text() == "my notes"

    (out / "rsa.json").unlink()
    compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0, top_k=2)
    compare(tmp_path / "human", tmp_path / "dnn", out, n_bootstrap=0, top_k=2)
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--alphas", "1", "-5"], "--alphas -5 is invalid"),
     (["--alphas", "nan"], "--alphas nan is invalid"),
     (["--alpha-range", "1", "inf", "3"], "--alpha-range 1 inf 3 is invalid"),
     (["--alpha-range", "inf", "inf", "1"], "--alpha-range inf inf 1 is invalid"),
     (["--alphas", "1", "1"], "--alphas 1 1 repeats the penalty 1: list each penalty once"),
     (["--alphas", "0.1", "1", "10", "1"], "--alphas 0.1 1 10 1 repeats the penalty 1: list each penalty once"),
     (["--alpha-range", "1", "1", "3"], "--alpha-range 1 1 3 repeats the penalty 1: use N = 1 for a single penalty")],
)
def test_map_cli_checks_grid_before_reading_inputs(tmp_path, capsys, options, message):
    status = main(["map", str(tmp_path / "missing_features.npy"), "--embedding", str(tmp_path / "missing"),
                   "-o", str(tmp_path / "map"), *options])

    assert status == 1
    error = capsys.readouterr().err
    assert message in error
    assert "not found" not in error
    assert "invalid value encountered" not in error
    assert not (tmp_path / "map").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_map_cli_rejects_seed_out_of_range(tmp_path, capsys, seed):
    status = main(["map", str(tmp_path / "missing_features.npy"), "--embedding", str(tmp_path / "missing"),
                   "-o", str(tmp_path / "map"), "--shuffle", "--seed", seed])

    assert status == 1
    assert f"--seed {seed} is invalid: use an integer from 0 to 4294967295" in capsys.readouterr().err
    assert not (tmp_path / "map").exists()


def test_map_cli_rejects_missing_layer_file_beside_others(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ids = [f"o{i}" for i in range(12)]
    feature_dir = tmp_path / "features"
    feature_dir.mkdir()
    np.save(feature_dir / "features.npy", rng.normal(size=(12, 4)))
    np.save(feature_dir / "features_head.npy", rng.normal(size=(12, 3)))
    write_object_table(ObjectTable.from_ids(ids), feature_dir / "objects.tsv")
    write_side(tmp_path / "run", rng.random((12, 2)), ObjectTable.from_ids(ids))

    code = main(["map", str(feature_dir), "--embedding", str(tmp_path / "run"), "-o", str(tmp_path / "map"),
                 "--layer", "haed"])

    assert code == 1
    assert (f"{feature_dir} has no features_haed.npy for --layer haed, but has features_head.npy") in (
        capsys.readouterr().err)
    assert not (tmp_path / "map").exists()


def test_map_cli_warns_about_leftover_stage(tmp_path, capsys):
    write_map_inputs(tmp_path)
    out = tmp_path / "map"
    argv = ["map", str(tmp_path / "features"), "--embedding", str(tmp_path / "run"), "-o", str(out)]
    assert main(argv) == 0
    # The hidden folder of a map run killed with SIGKILL.
    (out / ".partial-killed").mkdir()
    (out / ".partial-killed" / "ridge_map.npz").write_bytes(b"half")
    capsys.readouterr()

    assert main(argv) == 0

    error = capsys.readouterr().err
    assert f"{out / '.partial-killed'} (4 bytes) is the hidden folder of an interrupted dimalign run" in error


def test_map_cli_single_penalty_no_grid_warnings(tmp_path, capsys):
    write_map_inputs(tmp_path)
    status = main(["map", str(tmp_path / "features"), "--embedding", str(tmp_path / "run"),
                   "-o", str(tmp_path / "map"), "--alphas", "1"])

    assert status == 0
    error = capsys.readouterr().err
    assert error.count("a single ridge penalty (1) was given, so no penalty is chosen by cross-validation") == 1
    assert "value of the grid" not in error


def test_map_cli_rejects_study_stage_folder(tmp_path, capsys):
    write_map_inputs(tmp_path)
    study = write_study_record(tmp_path / "study")

    status = main(["map", str(tmp_path / "features"), "--embedding", str(tmp_path / "run"),
                   "-o", str(study / "map")])

    assert status == 1
    assert f"{study / 'map'} is the folder of stage map of the study {study}" in capsys.readouterr().err
    assert not (study / "map").exists()


def test_compare_rejects_repeated_object_before_writing(tmp_path):
    # The row checks cover integer triplets too, so the error comes before the similarity matrices.
    write_surrogate_sides(tmp_path)
    with pytest.raises(ValueError, match=r"triplets: a triplet needs three distinct objects, but 1 of 2 rows repeat "
                                         r"an object \(row 1: \[3, 3, 2\]\)"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0,
                triplets=np.array([[0, 1, 2], [3, 3, 2]]), similarity=failing_similarity)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["similarity_objects", "cumulative_objects"])
@pytest.mark.parametrize("size", [5.5, 100.5])
def test_compare_rejects_fractional_subset_size(tmp_path, option, size):
    # numpy's choice() would reject 5.5 without the option's name, and 100.5 would quietly mean every object.
    write_surrogate_sides(tmp_path)
    with pytest.raises(ValueError, match=f"{option} must be an integer, got {size}"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0,
                similarity=failing_similarity, **{option: size})
    assert not (tmp_path / "out").exists()


def test_compare_rejects_fractional_triplets_before_writing(tmp_path):
    write_surrogate_sides(tmp_path)
    with pytest.raises(ValueError, match=r"triplets, row 1, column 2: value 2.5 is not an integer object index"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0,
                triplets=np.array([[0, 1, 2], [0, 1, 2.5]]), similarity=failing_similarity)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"n_bootstrap": 2.5}, r"n_bootstrap must be an integer, got 2.5"),
     ({"n_bootstrap": True}, r"n_bootstrap must be an integer, got True"),
     ({"batch_size": 0}, r"batch_size must be at least 1, got 0"),
     ({"random_state": None}, r"random_state must be an integer seed, got None")],
)
def test_bootstrap_rsa_rejects_invalid_settings(settings, message):
    a = np.random.default_rng(0).random((6, 6))
    with pytest.raises(ValueError, match=message):
        bootstrap_rsa(a + a.T, a @ a.T, **{"n_bootstrap": 5, **settings})


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"n_bootstrap": 2.5}, r"n_bootstrap must be an integer, got 2.5"),
     ({"top_k": 2.5}, r"top_k must be an integer, got 2.5"),
     ({"random_state": None}, r"random_state must be an integer seed, got None")],
)
def test_compare_rejects_non_integer_settings_before_writing(tmp_path, settings, message):
    write_surrogate_sides(tmp_path)
    with pytest.raises(ValueError, match=message):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", similarity=failing_similarity, **settings)
    assert not (tmp_path / "out").exists()


def test_compare_grids_use_recorded_background(tmp_path, record_extraction):
    write_surrogate_sides(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(images / "clear.png")
    table = ObjectTable(tuple(f"o{i}" for i in range(12)), ("clear.png",) * 12)
    for side in ("human", "dnn"):
        write_object_table(table, tmp_path / side / "objects.tsv")
    record_extraction(tmp_path / "dnn", background=[0, 128, 0], exif_transpose=True)

    compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, top_k=2, images=images)

    grid = Image.open(tmp_path / "out" / "top_objects" / "pair_01_both.png")
    # Title bar (25 px), padding (4 px) and border (1 px), then the middle of the 128 px cell.
    assert grid.getpixel((4 + 1 + 64, 25 + 4 + 1 + 64)) == (0, 128, 0)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["background"] == [0, 128, 0]


def test_compare_background_needs_images(tmp_path, capsys):
    write_surrogate_sides(tmp_path)

    status = main(["compare", str(tmp_path / "human"), str(tmp_path / "dnn"), "-o", str(tmp_path / "out"),
                   "--background", "black"])

    assert status != 0
    assert "pass --images" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compare_matches_dataframes_by_index(tmp_path):
    """A DataFrame's index names its rows, so rows in another order are matched by that name."""
    human, dnn = surrogate_pair(n_objects=12)
    names = [f"object{row:02d}" for row in range(12)]
    by_position = compare(human, dnn, tmp_path / "arrays", n_bootstrap=20)

    reversed_dnn = pd.DataFrame(dnn, index=names).iloc[::-1]
    by_index = compare(pd.DataFrame(human, index=names), reversed_dnn, tmp_path / "frames", n_bootstrap=20)

    assert by_index.rsa.r == pytest.approx(by_position.rsa.r, abs=1e-12)
    manifest = json.loads((tmp_path / "frames" / "manifest.json").read_text())
    assert manifest["settings"]["human_objects"] == "DataFrame index"
    assert manifest["settings"]["dnn_objects"] == "DataFrame index"


def test_compare_dataframe_index_against_array(tmp_path):
    """An array has no row names, so matching it to a labelled DataFrame would go by position."""
    human, dnn = surrogate_pair(n_objects=12)
    names = [f"object{row:02d}" for row in range(12)]
    with pytest.raises(ValueError, match=r"the DNN embedding has no object table, but the other input "
                                         r"has one \(DataFrame index\)"):
        compare(pd.DataFrame(human, index=names), dnn, tmp_path / "out", n_bootstrap=0)
    table = ObjectTable(tuple(names[::-1]))
    result = compare(pd.DataFrame(human, index=names), dnn[::-1], tmp_path / "out", objects=table, n_bootstrap=20)
    assert result.rsa.r == pytest.approx(compare(human, dnn, tmp_path / "plain", n_bootstrap=20).rsa.r, abs=1e-12)


def test_compare_default_index_is_positional(tmp_path):
    """A DataFrame built from an array without an index has no row names, so its rows match by position."""
    human, dnn = surrogate_pair(n_objects=12)
    framed = compare(pd.DataFrame(human), pd.DataFrame(dnn), tmp_path / "frames", n_bootstrap=20)
    assert framed.rsa.r == compare(human, dnn, tmp_path / "arrays", n_bootstrap=20).rsa.r


def test_compare_filtered_dataframe_names_fix(tmp_path):
    """A filtered DataFrame keeps its integer index, which then names its rows, unlike the array it is paired with."""
    human, dnn = surrogate_pair(n_objects=12)
    kept = pd.DataFrame(human).iloc[2:]

    with pytest.raises(ValueError) as caught:
        compare(kept, dnn[2:], tmp_path / "out", n_bootstrap=0)

    assert str(caught.value) == (
        "the DNN embedding has no object table, but the other input has one (DataFrame index), so the "
        "DNN rows cannot be matched to it by object id: pass the table that names the DNN rows "
        "(objects=, CLI --objects), pass the DNN embedding as a DataFrame with such an index, or "
        "call reset_index(drop=True) on the human DataFrame to pair the rows by position"
    )
    assert not (tmp_path / "out").exists()


def test_compare_row_count_error_names_files(tmp_path, capsys):
    human, dnn = save_surrogate_files(tmp_path)
    np.save(tmp_path / "dnn19.npy", dnn[:19])

    code = main([
        "compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn19.npy"), "-o", str(tmp_path / "out"),
        "--bootstrap", "0",
    ])

    assert code == 1
    error = capsys.readouterr().err
    assert (
        f"the human embedding {tmp_path / 'human.npy'} has 20 rows and the DNN embedding "
        f"{tmp_path / 'dnn19.npy'} has 19"
    ) in error
    assert "objects.tsv" in error
    assert not (tmp_path / "out").exists()


def test_compare_one_out_of_range_row(tmp_path, capsys):
    save_surrogate_files(tmp_path)
    np.savetxt(tmp_path / "triplets.txt", np.array([[0, 1, 2], [3, 4, 25]]), fmt="%d")

    code = main([
        "compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(tmp_path / "out"),
        "--bootstrap", "0", "--triplets", str(tmp_path / "triplets.txt"),
    ])

    assert code == 1
    assert "1 row has such indices" in capsys.readouterr().err


def test_compare_zero_dimension_warned_once(tmp_path):
    human, dnn = surrogate_pair(n_objects=20)
    dnn[:, 1] = 0.0
    triplets = np.array([[0, 1, 2], [3, 4, 5]])

    with pytest.warns(UserWarning) as records:
        compare(EmbeddingResult(human), EmbeddingResult(dnn), tmp_path / "out", triplets=triplets, n_bootstrap=0)

    zero_variance = [str(record.message) for record in records if "zero variance" in str(record.message)]
    assert zero_variance == [
        "1 dimension(s) of the DNN embedding have zero variance over these objects (columns [1]); their "
        "correlations are set to 0"
    ]


def test_compare_different_objects_names_tables(tmp_path, capsys):
    human, dnn = surrogate_pair(n_objects=20)
    write_side(tmp_path / "human", human, ObjectTable.from_ids([f"a{i:02d}" for i in range(20)]))
    write_side(tmp_path / "dnn", dnn, ObjectTable.from_ids([f"b{i:02d}" for i in range(20)]))

    code = main([
        "compare", str(tmp_path / "human"), str(tmp_path / "dnn"), "-o", str(tmp_path / "out"), "--bootstrap", "0",
    ])

    assert code == 1
    error = capsys.readouterr().err
    assert "the human and DNN object tables list different objects" in error
    assert (
        f"The human objects are named by {tmp_path / 'human' / 'objects.tsv'} and the DNN objects by "
        f"{tmp_path / 'dnn' / 'objects.tsv'}"
    ) in error


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--bootstrap", "-5"], "n_bootstrap=-5 is invalid (--bootstrap): use 0 (no interval) or more"),
     (["--top-k", "0"], "top_k=0 is invalid (--top-k): use 1 or more")],
)
def test_compare_cli_setting_errors_name_option(tmp_path, capsys, option, message):
    save_surrogate_files(tmp_path)

    code = main(["compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(tmp_path / "out"), *option])

    assert code == 1
    assert message in capsys.readouterr().err


def test_compare_triplet_objects_without_triplets(tmp_path):
    human, dnn = surrogate_pair(n_objects=12)
    with pytest.raises(ValueError, match="triplet_objects names the rows of triplets, but no triplets are given"):
        compare(
            EmbeddingResult(human), EmbeddingResult(dnn), tmp_path / "out", n_bootstrap=0,
            triplet_objects=ObjectTable.from_ids([str(row) for row in range(12)]),
        )
    assert not (tmp_path / "out").exists()


def test_map_cli_names_overflowing_features(tmp_path, capsys):
    feature_dir = tmp_path / "features"
    feature_dir.mkdir()
    np.save(feature_dir / "features.npy", np.random.default_rng(0).random((8, 3)) * 1e300)
    write_side(tmp_path / "run", np.random.default_rng(1).random((8, 2)))

    code = main(["map", str(feature_dir), "--embedding", str(tmp_path / "run"), "-o", str(tmp_path / "map")])

    assert code == 1
    error = capsys.readouterr().err
    assert f"the features {feature_dir / 'features.npy'}: the squared deviations of feature columns [0, 1, 2] " in error
    assert "divide the features by a constant" in error
    assert "eigh" not in error
    assert not (tmp_path / "map").exists()


def test_map_cli_row_mismatch_names_files(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((5, 3)))
    np.save(tmp_path / "embedding.npy", np.random.default_rng(1).random((6, 2)))

    code = main(["map", str(tmp_path / "features.npy"), "--embedding", str(tmp_path / "embedding.npy"),
                 "-o", str(tmp_path / "map")])

    assert code == 1
    assert (
        f"the features {tmp_path / 'features.npy'} have 5 rows and the embedding "
        f"{tmp_path / 'embedding.npy'} 6; without object tables"
    ) in capsys.readouterr().err
    assert not (tmp_path / "map").exists()


def test_compare_cli_prints_result(tmp_path, capsys):
    save_surrogate_files(tmp_path)
    out = tmp_path / "out"
    for quiet in ([], ["-q"]):
        code = main([*quiet, "compare", str(tmp_path / "human.npy"), str(tmp_path / "dnn.npy"), "-o", str(out),
                     "--bootstrap", "0"])

        assert code == 0
        r = json.loads((out / "rsa.json").read_text())["r"]
        matching = pd.read_csv(out / "matching.csv")
        n_pairs = int((matching["method"] == "greedy").sum())
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"wrote {out}: human-DNN RSA r {r:.3f}, {n_pairs} matched dimension pairs"
        )


# -- comparing the objects that both tables list --------------------------------


def shared_objects_sides(tmp_path):
    """A human side of 40 objects and a DNN side of 25 of them, reversed, plus 3 objects of its own."""
    human, dnn = surrogate_pair(n_objects=40)
    human_ids = [f"object{i:02d}" for i in range(40)]
    shared_rows = list(range(5, 30))
    dnn_ids = [human_ids[row] for row in shared_rows][::-1] + ["extra0", "extra1", "extra2"]
    dnn_rows = np.vstack([dnn[shared_rows][::-1], gamma_embedding(3, dnn.shape[1], seed=4)])
    write_side(tmp_path / "human", human, ObjectTable.from_ids(human_ids))
    write_side(tmp_path / "dnn", dnn_rows, ObjectTable.from_ids(dnn_ids))
    return human[shared_rows], dnn[shared_rows], [human_ids[row] for row in shared_rows]


def test_compare_shared_objects_restricts_both(tmp_path):
    human, dnn, ids = shared_objects_sides(tmp_path)
    result = compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, shared_objects=True)

    upper = np.triu_indices(25, k=1)
    expected = np.corrcoef(similarity_matrix(human)[upper], similarity_matrix(dnn)[upper])[0, 1]
    assert result.n_objects == 25
    assert result.rsa.r == pytest.approx(expected, abs=1e-12)
    summary = json.loads((tmp_path / "out" / "rsa.json").read_text())
    assert summary["n_objects"] == 25
    settings = json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]
    assert settings["shared_objects"] is True
    assert settings["n_human_only_objects"] == 15
    assert settings["n_dnn_only_objects"] == 3
    top = pd.read_csv(tmp_path / "out" / "top_objects.csv")
    assert set(top["object_id"]) <= set(ids)


def test_compare_shared_objects_maps_human_triplets(tmp_path):
    shared_objects_sides(tmp_path)
    # Rows of the human embedding: objects 5 to 29 are shared, and they become rows 0 to 24.
    triplets = np.array([[5, 6, 7], [29, 10, 8]])
    compare(
        tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, shared_objects=True,
        triplets=triplets,
    )
    with np.load(tmp_path / "out" / "triplet_relevance.npz") as archive:
        assert archive["triplets"].tolist() == [[0, 1, 2], [24, 5, 3]]


def test_compare_shared_objects_rejects_dropped_triplet(tmp_path):
    shared_objects_sides(tmp_path)
    with pytest.raises(ValueError, match=r"\['object00'\]"):
        compare(
            tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, shared_objects=True,
            triplets=np.array([[0, 6, 7]]),
        )
    assert not (tmp_path / "out").exists()


def test_compare_shared_objects_needs_tables(tmp_path):
    human, dnn = surrogate_pair(n_objects=12)
    with pytest.raises(ValueError, match="shared_objects matches the rows by object id"):
        compare(human, dnn, tmp_path / "out", n_bootstrap=0, shared_objects=True)
    assert not (tmp_path / "out").exists()


def test_compare_no_shared_object_shows_ids(tmp_path):
    human, dnn = surrogate_pair(n_objects=12)
    write_side(tmp_path / "human", human, ObjectTable.from_ids([f"a{i}" for i in range(12)]))
    write_side(tmp_path / "dnn", dnn, ObjectTable.from_ids([f"a{i}.jpg" for i in range(12)]))
    with pytest.raises(ValueError, match=r"share no object id.*'a0'.*'a0\.jpg'"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, shared_objects=True)
    assert not (tmp_path / "out").exists()


def test_compare_different_objects_suggests_option(tmp_path):
    shared_objects_sides(tmp_path)
    with pytest.raises(ValueError, match=r"--shared-objects"):
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0)


def test_compare_cli_shared_objects(tmp_path, capsys):
    human, dnn, ids = shared_objects_sides(tmp_path)
    (tmp_path / "human.txt").write_text("".join(" ".join(map(str, row)) + "\n" for row in load_embedding(tmp_path / "human").embedding))
    human_ids = tmp_path / "ids.txt"
    human_ids.write_text("".join(f"object{i:02d}\n" for i in range(40)))
    code = main([
        "compare", str(tmp_path / "human.txt"), str(tmp_path / "dnn"), "--objects", str(human_ids),
        "--shared-objects", "-o", str(tmp_path / "out"), "--bootstrap", "0",
    ])
    assert code == 0
    assert json.loads((tmp_path / "out" / "rsa.json").read_text())["n_objects"] == 25


def test_compare_shared_objects_warns_few_misses(tmp_path):
    human, dnn = surrogate_pair(n_objects=12)
    human_ids = [f"a{i}" for i in range(12)]
    write_side(tmp_path / "human", human, ObjectTable.from_ids(human_ids))
    write_side(tmp_path / "dnn", dnn[:10], ObjectTable.from_ids(human_ids[:9] + ["a_9"]))

    with pytest.warns(UserWarning) as record:
        compare(tmp_path / "human", tmp_path / "dnn", tmp_path / "out", n_bootstrap=0, top_k=2, shared_objects=True)

    messages = [str(warning.message) for warning in record]
    assert (
        "left out 1 of the 10 objects of the DNN table because the human table does not list them: "
        "['a_9']; check their ids against the human table, since ids match only when they are equal"
    ) in messages
    assert not [message for message in messages if "of the 12 objects of the human table" in message]
