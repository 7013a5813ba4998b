"""The analysis functions take what a notebook holds: arrays, fitted estimators and loaded runs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from dimalign.analysis.matching import match_dimensions
from dimalign.analysis.relevance import compare_decisions, jackknife_relevance
from dimalign.analysis.similarity import (
    choice_probabilities,
    odd_one_out_accuracy,
    similarity_matrix,
    triplet_nll,
)
from dimalign.embedding import SPoSE
from dimalign.io.runs import EmbeddingResult
from dimalign.triplets import sample_triplets

N_OBJECTS = 15
TRIPLETS = sample_triplets(N_OBJECTS, 200, random_state=0)

# Each function with the embedding as its first argument, and how to compare two results.
CALLS = {
    "odd_one_out_accuracy": (lambda e: odd_one_out_accuracy(e, TRIPLETS), lambda r: r),
    "triplet_nll": (lambda e: triplet_nll(e, TRIPLETS), lambda r: r),
    "choice_probabilities": (lambda e: choice_probabilities(e, TRIPLETS), lambda r: r.tolist()),
    "similarity_matrix": (lambda e: similarity_matrix(e), lambda r: r.tolist()),
    "jackknife_relevance": (lambda e: jackknife_relevance(e, TRIPLETS), lambda r: r.most_relevant.tolist()),
    "compare_decisions": (lambda e: compare_decisions(e, e, TRIPLETS), lambda r: r.human_choice.tolist()),
    "match_dimensions": (lambda e: match_dimensions(e, e), lambda r: r.dnn_dims.tolist()),
}


@pytest.fixture(scope="module")
def fitted():
    return SPoSE(n_dims=3, max_epochs=3, min_objects=0, random_state=0).fit(TRIPLETS, n_objects=N_OBJECTS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_estimator_scores_like_its_embedding(name, fitted):
    call, comparable = CALLS[name]
    expected = comparable(call(fitted.embedding_))

    assert comparable(call(fitted)) == expected
    assert comparable(call(EmbeddingResult(fitted.embedding_))) == expected


@pytest.mark.parametrize("name", sorted(CALLS))
def test_unfitted_estimator_raises(name):
    call, _ = CALLS[name]
    with pytest.raises(NotFittedError, match="a SPoSE, is not fitted yet: call fit first"):
        call(SPoSE())


@pytest.mark.parametrize("name", sorted(CALLS))
def test_path_names_loader(name, tmp_path):
    """A file name is not read here: the error names the function that loads it."""
    call, _ = CALLS[name]
    path = tmp_path / "embedding.npy"
    with pytest.raises(ValueError, match=rf"got the path '{path}'.*dimalign.io.runs.load_embedding"):
        call(str(path))


# The functions that take dot products of embedding rows.
DOT_PRODUCT_CALLS = sorted(set(CALLS) - {"match_dimensions"})


@pytest.mark.parametrize("name", DOT_PRODUCT_CALLS)
def test_negative_weights_raise(name):
    """Ridge predictions can be negative, and their dot products would not be those of a non-negative embedding."""
    call, _ = CALLS[name]
    embedding = np.random.default_rng(0).gamma(1.0, 1.0, size=(N_OBJECTS, 3))
    embedding[4, 2] = -0.15
    embedding[7, 0] = -0.005

    # compare_decisions names the first of its two embeddings, which is the human one.
    source = "the human embedding" if name == "compare_decisions" else "the embedding"
    with pytest.raises(ValueError, match=(
        rf"^{source}: 2 negative weights, the lowest -0.15 at row 4, dimension 2; embeddings "
        r"must be non-negative: apply ReLU first, as VICE and SPoSE do \(numpy.maximum\(weights, 0\)\)$"
    )):
        call(embedding)


@pytest.mark.parametrize("name", DOT_PRODUCT_CALLS)
def test_rounding_negatives_used_unchanged(name):
    """Weights down to -0.01, such as those of the published SPoSE files, are accepted as given."""
    call, _ = CALLS[name]
    embedding = np.random.default_rng(0).gamma(1.0, 1.0, size=(N_OBJECTS, 3))
    embedding[7, 0] = -0.005

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call(embedding)


def test_compare_decisions_names_dnn_side():
    from dimalign.analysis.relevance import compare_decisions

    human = np.random.default_rng(0).gamma(1.0, 1.0, size=(N_OBJECTS, 3))
    dnn = human.copy()
    dnn[2, 1] = -0.5

    with pytest.raises(ValueError, match=r"^the DNN embedding: 1 negative weights, the lowest -0.5 at row 2"):
        compare_decisions(human, dnn, TRIPLETS)


def test_things48_takes_fitted_estimator(things_dir):
    from dimalign.analysis.things48 import load_things48, things48_correlation

    things48 = load_things48(things_dir)
    triplets = sample_triplets(1854, 300, random_state=0)
    model = SPoSE(n_dims=3, max_epochs=1, min_objects=0, random_state=0).fit(triplets, n_objects=1854)

    assert things48_correlation(model, data=things48) == things48_correlation(model.embedding_, data=things48)
    with pytest.raises(NotFittedError, match="a SPoSE, is not fitted yet"):
        things48_correlation(SPoSE(), data=things48)


@pytest.mark.parametrize("name", [
    "triplet_logits", "choice_log_probabilities", "choice_probabilities", "dot_similarity",
    "triplet_nll", "odd_one_out_accuracy", "similarity_matrix", "jackknife_relevance",
])
def test_functions_document_raised_errors(name):
    """help() in a notebook names the errors, such as an index outside the embedding."""
    from dimalign import analysis
    from dimalign.analysis import similarity

    function = getattr(similarity, name, None) or getattr(analysis, name)
    docstring = function.__doc__
    assert "Raises:" in docstring
    assert "ValueError:" in docstring.split("Raises:")[1]


def test_reproducibility_takes_fitted_models():
    """The runs of a seed sweep in a notebook are fitted models, not folders."""
    from dimalign.analysis.reproducibility import reproducibility

    models = [
        SPoSE(n_dims=3, max_epochs=2, min_objects=0, random_state=seed).fit(TRIPLETS, n_objects=N_OBJECTS)
        for seed in range(3)
    ]
    expected = reproducibility([model.embedding_ for model in models]).run_scores

    np.testing.assert_array_equal(reproducibility(models).run_scores, expected)
    results = [EmbeddingResult(model.embedding_) for model in models]
    np.testing.assert_array_equal(reproducibility(results).run_scores, expected)
    with pytest.raises(NotFittedError, match="run 1, a SPoSE, is not fitted yet"):
        reproducibility([models[0], SPoSE()])


def test_cumulative_rsa_takes_fitted_model(fitted):
    from dimalign.analysis.matching import cumulative_rsa

    human = similarity_matrix(fitted.embedding_ + 0.1)
    expected = cumulative_rsa(human, fitted.embedding_, order=[0, 1]).r

    np.testing.assert_array_equal(cumulative_rsa(human, fitted, order=[0, 1]).r, expected)


def test_bootstrap_rsa_embedding_names_fix(fitted):
    """bootstrap_rsa compares similarity matrices, so an embedding gets a hint to build one."""
    from dimalign.analysis.compare import bootstrap_rsa

    square = similarity_matrix(fitted.embedding_)
    with pytest.raises(ValueError, match=(
        r"^bootstrap_rsa compares similarity matrices \(n, n\), but the first input is an embedding "
        r"of shape \(15, 3\): pass similarity_matrix\(embedding\)$"
    )):
        bootstrap_rsa(fitted.embedding_, square, n_bootstrap=0)
    with pytest.raises(ValueError, match=(
        r"^bootstrap_rsa compares similarity matrices \(n, n\), but the second input is a fitted SPoSE: "
        r"pass similarity_matrix\(model\)$"
    )):
        bootstrap_rsa(square, fitted, n_bootstrap=0)


def test_things48_uses_dataframe_index(things_dir):
    """Rows labelled by THINGS id in another order are found by id, as with object_ids."""
    import pandas as pd

    from dimalign.analysis.evaluate import evaluate_embedding
    from dimalign.analysis.things48 import load_things48, things48_correlation

    things48 = load_things48(things_dir)
    embedding = np.loadtxt(things_dir / "spose_embedding_49d_sorted.txt")
    expected = things48_correlation(embedding, data=things48)
    # Python's sorted() order differs from the THINGS order for some ids.
    frame = pd.DataFrame(embedding, index=list(things48.concept_ids)).sort_index()

    assert things48_correlation(frame, data=things48) == pytest.approx(expected, abs=1e-12)
    metrics = evaluate_embedding(frame, TRIPLETS, things_dir=things_dir)
    assert metrics["things48_r"] == pytest.approx(expected, abs=1e-12)


def test_matching_rejects_dataframes_in_other_order(fitted):
    """Dimensions are correlated over objects by position, so two row orders would match wrong dimensions."""
    import pandas as pd

    names = [f"object{row:02d}" for row in range(N_OBJECTS)]
    human = pd.DataFrame(fitted.embedding_, index=names)
    dnn = human.iloc[::-1]
    with pytest.raises(ValueError, match=r"^human and dnn are DataFrames whose indexes list the same 15 "
                                         r"objects in another order: align them first, for example "
                                         r"dnn.loc\[human.index\]$"):
        match_dimensions(human, dnn)
    assert match_dimensions(human, dnn.loc[human.index]).dnn_dims.tolist() == \
        match_dimensions(fitted.embedding_, fitted.embedding_).dnn_dims.tolist()


def test_decisions_and_runs_reject_other_order(fitted):
    import pandas as pd

    from dimalign.analysis.reproducibility import reproducibility

    names = [f"object{row:02d}" for row in range(N_OBJECTS)]
    human = pd.DataFrame(fitted.embedding_, index=names)
    with pytest.raises(ValueError, match=r"^human and dnn are DataFrames whose indexes list the same 15 objects"):
        compare_decisions(human, human.iloc[::-1], TRIPLETS)
    with pytest.raises(ValueError, match=r"^run 0 and run 2 are DataFrames whose indexes list the same 15 objects "
                                         r"in another order: align them first, for example by reordering the rows "
                                         r"of run 2 to the index of run 0$"):
        reproducibility([human, human, human.iloc[::-1]])


def test_things48_index_not_ids_names_fix(things_dir):
    """A 1-based integer index is a label too, and the error says how to use the row order instead."""
    import pandas as pd

    from dimalign.analysis.things48 import load_things48, things48_correlation

    embedding = np.loadtxt(things_dir / "spose_embedding_49d_sorted.txt")
    frame = pd.DataFrame(embedding, index=range(1, 1855))
    with pytest.raises(ValueError, match=r"the DataFrame index of the embedding is not the THINGS concept ids "
                                         r"of unique_id.txt: pass object_ids, or frame.reset_index\(drop=True\) "
                                         r"when the rows follow unique_id.txt"):
        things48_correlation(frame, data=load_things48(things_dir))


def test_evaluate_index_not_ids_names_fix(things_dir):
    """evaluate_embedding skips the 48-object check with a warning that names the DataFrame index and the fix."""
    import pandas as pd

    from dimalign.analysis.evaluate import evaluate_embedding

    embedding = np.loadtxt(things_dir / "spose_embedding_49d_sorted.txt")
    frame = pd.DataFrame(embedding, index=range(1, 1855))
    with pytest.warns(UserWarning) as caught:
        metrics = evaluate_embedding(frame, TRIPLETS, things_dir=things_dir)

    skipped = [str(warning.message) for warning in caught if "48-object check" in str(warning.message)]
    assert skipped == [
        "skipped the 48-object check: the DataFrame index of the embedding is not the THINGS concept ids "
        "of unique_id.txt: pass object_ids, or frame.reset_index(drop=True) when the rows follow unique_id.txt"
    ]
    assert "things48_r" not in metrics


def _more_dot_product_calls():
    from dimalign.analysis.relevance import option_probabilities
    from dimalign.analysis.similarity import choice_log_probabilities, dot_similarity, triplet_logits

    return {
        "dot_similarity": dot_similarity,
        "triplet_logits": lambda e: triplet_logits(e, [[0, 1, 2]]),
        "choice_log_probabilities": lambda e: choice_log_probabilities(e, [[0, 1, 2]]),
        "option_probabilities": lambda e: option_probabilities(e, [[0, 1, 2]]),
        "odd_one_out_accuracy": lambda e: odd_one_out_accuracy(e, [[0, 1, 2]]),
    }


@pytest.mark.parametrize("name", sorted(_more_dot_product_calls()))
def test_negative_limit_is_inclusive(name):
    """-0.01 itself is accepted and the next lower float64 is rejected."""
    call = _more_dot_product_calls()[name]
    at_limit = np.array([[1.0, 0.0], [1.0, -0.01], [0.0, 1.0]])
    below_limit = at_limit.copy()
    below_limit[1, 1] = np.nextafter(-0.01, -1.0)

    call(at_limit)
    with pytest.raises(ValueError, match=r"^the embedding: 1 negative weights, the lowest -0\.01 at row 1, dimension 1"):
        call(below_limit)


def test_accuracy_with_rounding_negative():
    """A weight of -0.01 enters the dot products as it is: s_01 = 1, s_02 = 0, s_12 = -0.01."""
    from dimalign.analysis.similarity import triplet_logits

    embedding = np.array([[1.0, 0.0], [1.0, -0.01], [0.0, 1.0]])

    np.testing.assert_array_equal(triplet_logits(embedding, [[0, 1, 2]]), [[1.0, 0.0, -0.01]])
    assert float(odd_one_out_accuracy(embedding, [[0, 1, 2], [0, 2, 1], [1, 2, 0]])) == 1 / 3
