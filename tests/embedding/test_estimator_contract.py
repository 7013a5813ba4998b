"""The scikit-learn estimator contract of VICE and SPoSE, as a notebook uses it."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from dimalign.embedding import SPoSE, VICE
from triplet_helpers import N_OBJECTS, random_triplets

# Fits of two epochs keep few or no dimensions; that warning is tested in test_vice.py.
pytestmark = pytest.mark.filterwarnings("ignore:the fit kept no dimension:UserWarning")

ESTIMATORS = [VICE, SPoSE]


def tiny(estimator, **settings):
    return estimator(**{"n_dims": 3, "max_epochs": 2, "min_objects": 0, **settings})


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_clone_and_params_round_trip(estimator):
    model = tiny(estimator, lr=0.01, batch_size=17, random_state=5)
    copy = clone(model)
    assert copy is not model
    assert copy.get_params() == model.get_params()
    assert model.set_params(n_dims=4) is model
    assert model.get_params()["n_dims"] == 4
    # scikit-learn wraps a long repr; the settings that differ from the defaults are shown.
    assert " ".join(repr(model).split()) == f"{estimator.__name__}(batch_size=17, lr=0.01, max_epochs=2, min_objects=0, n_dims=4, random_state=5)"


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_init_stores_settings_unchanged(estimator):
    """Validation and conversion happen in fit, so get_params returns the very objects passed."""
    odd = {"n_dims": "three", "lr": np.float32(0.5), "random_state": None, "device": "nowhere"}
    model = estimator(**odd)
    for name, value in odd.items():
        assert getattr(model, name) is value
    with pytest.raises(ValueError, match="n_dims must be an integer, got 'three'"):
        model.fit(random_triplets(), n_objects=N_OBJECTS)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("method", ["score", "predict_proba"])
def test_use_before_fit_raises_not_fitted_error(estimator, method):
    model = tiny(estimator)
    with pytest.raises(NotFittedError, match=f"this {estimator.__name__} is not fitted yet: call fit first"):
        getattr(model, method)(random_triplets(n_triplets=3))
    with pytest.raises(NotFittedError):
        check_is_fitted(model)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_fitted_attributes_end_in_underscore(estimator):
    model = tiny(estimator)
    settings = set(vars(model))
    assert model.fit(random_triplets(), n_objects=N_OBJECTS) is model
    added = set(vars(model)) - settings
    public = {name for name in added if not name.startswith("_")}
    assert public and all(name.endswith("_") for name in public), public
    check_is_fitted(model)
    assert model.get_params() == tiny(estimator).get_params()


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_refit_replaces_the_earlier_fit(estimator):
    model = tiny(estimator).fit(random_triplets(), n_objects=N_OBJECTS)
    model.set_params(n_dims=4, max_epochs=3).fit(random_triplets(20, seed=1), n_objects=20)
    assert model.n_objects_ == 20
    assert model.embedding_.shape[0] == 20
    assert len(model.history_) == 3
    assert model.n_epochs_ == 3


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_fit_depends_only_on_seed(estimator):
    triplets = random_triplets()
    first = tiny(estimator, random_state=1).fit(triplets, n_objects=N_OBJECTS)
    again = tiny(estimator, random_state=1).fit(triplets, n_objects=N_OBJECTS)
    other = tiny(estimator, random_state=2).fit(triplets, n_objects=N_OBJECTS)
    attribute = "loc_" if estimator is VICE else "weights_"
    assert np.array_equal(getattr(first, attribute), getattr(again, attribute))
    assert not np.array_equal(getattr(first, attribute), getattr(other, attribute))


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("random_state", [None, np.random.RandomState(0), np.random.default_rng(0)])
def test_random_state_must_be_an_integer_seed(estimator, random_state):
    """A fit is reproducible and resumable from its checkpoint only with a fixed integer seed."""
    model = tiny(estimator, random_state=random_state)
    with pytest.raises(ValueError, match="random_state must be an integer seed, got"):
        model.fit(random_triplets(), n_objects=N_OBJECTS)
    assert tiny(estimator, random_state=np.int64(3)).fit(random_triplets(), n_objects=N_OBJECTS).n_epochs_ == 2


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize(
    "convert",
    [lambda t: t.astype(np.int32), lambda t: t.astype(np.uint16), lambda t: t.astype(np.float64),
     lambda t: t.tolist(), lambda t: pd.DataFrame(t, columns=["i", "j", "k"])],
    ids=["int32", "uint16", "whole-float64", "list", "DataFrame"],
)
def test_triplet_types_fit_like_int64(estimator, convert):
    triplets = random_triplets()
    reference = tiny(estimator).fit(triplets, n_objects=N_OBJECTS)
    model = tiny(estimator).fit(convert(triplets), convert(triplets[:20]), n_objects=N_OBJECTS)
    np.testing.assert_array_equal(model.embedding_, reference.embedding_)
    assert model.score(convert(triplets)) == reference.score(triplets)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_pickled_fit_in_new_process(estimator, tmp_path):
    triplets = random_triplets()
    model = tiny(estimator).fit(triplets, n_objects=N_OBJECTS)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    np.save(tmp_path / "triplets.npy", triplets)
    script = (
        "import pickle, sys, numpy as np\n"
        "model = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "print(repr(model.score(np.load(sys.argv[2]))), model.n_dims_)\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model.pkl"), str(tmp_path / "triplets.npy")],
        capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == [repr(model.score(triplets)), str(model.n_dims_)]


@pytest.mark.parametrize(("estimator", "settings", "weight"), [
    (VICE, {}, ""),
    (VICE, {"beta": 0.5}, "0.5 x "),
    (SPoSE, {"l1": 0.01}, "0.01 x "),
])
def test_epoch_log_shows_loss_terms(estimator, settings, weight, caplog):
    """The logged loss is the NLL plus the weighted complexity, and the line shows that sum."""
    model = tiny(estimator, verbose=True, random_state=0, **settings)

    with caplog.at_level("INFO", logger="dimalign.embedding.base"):
        model.fit(random_triplets(), n_objects=N_OBJECTS)

    row = model.history_[-1]
    assert row["loss"] == pytest.approx(row["nll"] + float(weight.split(" ")[0] or 1) * row["complexity"])
    expected = (
        f"epoch 2: loss {row['loss']:.4f} (nll {row['nll']:.4f} + {weight}complexity {row['complexity']:.4f}), "
        f"train accuracy {row['train_accuracy']:.4f}"
    )
    assert any(record.getMessage().startswith(expected) for record in caplog.records)


@pytest.mark.parametrize(("method", "errors"), [
    ("fit", ["ValueError", "FileExistsError", "RuntimeError"]),
    ("predict_proba", ["NotFittedError", "ValueError"]),
    ("predict", ["NotFittedError", "ValueError"]),
    ("score", ["NotFittedError", "ValueError"]),
])
def test_methods_document_raised_errors(method, errors):
    """help() in a notebook lists what each method raises, including a diverged fit."""
    docstring = getattr(VICE, method).__doc__
    assert "Raises:" in docstring
    raises = docstring.split("Raises:")[1]
    for error in errors:
        assert f"{error}:" in raises, error


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_empty_validation_split_names_fix(estimator):
    """split_triplets with val_fraction=0 returns an empty validation part, which fit rejects."""
    from dimalign.io.triplets import split_triplets

    train, val = split_triplets(random_triplets(), val_fraction=0.0)
    with pytest.raises(ValueError, match=r"^validation triplets are empty: pass val=None to fit without "
                                         r"validation triplets$"):
        tiny(estimator).fit(train, val, n_objects=N_OBJECTS)
    with pytest.raises(ValueError, match=r"^training triplets are empty$"):
        tiny(estimator).fit(train[:0], n_objects=N_OBJECTS)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_predict_agrees_with_score(estimator):
    """Without tied probabilities, score is the share of rows whose predicted odd one out is column 2."""
    triplets = random_triplets()
    model = tiny(estimator, n_dims=6, max_epochs=5).fit(triplets, n_objects=N_OBJECTS)
    log_proba = np.log(model.predict_proba(triplets))
    tied = (log_proba == log_proba.max(axis=1, keepdims=True)).sum(axis=1) > 1
    assert not tied.any()

    predicted = model.predict(triplets)

    assert predicted.shape == (len(triplets),)
    assert predicted.dtype == np.int64
    assert set(predicted.tolist()) <= {0, 1, 2}
    assert model.score(triplets) == np.mean(predicted == 2)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_predict_picks_least_similar_object(estimator):
    """The predicted odd one out is the object outside the pair of highest probability."""
    triplets = random_triplets()
    model = tiny(estimator, n_dims=6, max_epochs=5).fit(triplets, n_objects=N_OBJECTS)
    # Columns of predict_proba: pairs (0, 1), (0, 2), (1, 2), whose odd ones out are 2, 1, 0.
    expected = 2 - np.argmax(model.predict_proba(triplets), axis=1)

    np.testing.assert_array_equal(model.predict(triplets), expected)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_predict_ties_take_first_position(estimator):
    """A fit without kept dimensions ties all three pairs, so predict returns 0 and score is 1/3."""
    triplets = random_triplets()
    model = tiny(estimator, max_epochs=1, min_objects=N_OBJECTS - 1).fit(triplets, n_objects=N_OBJECTS)
    assert model.n_dims_ == 0

    np.testing.assert_array_equal(model.predict(triplets), np.zeros(len(triplets), dtype=np.int64))
    assert model.score(triplets) == 1 / 3


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("n_triplets", [9, 11, 18, 120])
def test_all_tied_score_is_one_third(estimator, n_triplets):
    """A float mean of n copies of 1/3 misses 1/3 for most n, such as 9, so the shares are summed exactly."""
    model = tiny(estimator, max_epochs=1, min_objects=N_OBJECTS - 1).fit(random_triplets(), n_objects=N_OBJECTS)
    assert model.n_dims_ == 0

    assert model.score(random_triplets(n_triplets=n_triplets)) == 1 / 3


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_predict_before_fit_raises(estimator):
    with pytest.raises(NotFittedError, match=f"this {estimator.__name__} is not fitted yet: call fit first"):
        tiny(estimator).predict(random_triplets(n_triplets=3))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_save_rejects_folder_with_manifest(estimator, tmp_path):
    """save writes no manifest.json, so the manifest of an earlier step would describe other files."""
    from dimalign.io.files import write_manifest

    model = tiny(estimator).fit(random_triplets(), n_objects=N_OBJECTS)
    write_manifest(tmp_path, step="fit", outputs={"n_dims": 7})
    before = sorted(path.name for path in tmp_path.iterdir())

    with pytest.raises(FileExistsError, match=(
        rf"^{tmp_path / 'manifest.json'} belongs to a 'dimalign fit' output\. save writes no manifest, "
        r"so this one would describe other files: save into another folder, or use "
        r"dimalign.embedding.fit_run, which writes a run with its manifest$"
    )):
        model.save(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == before


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_save_twice_replaces_files(estimator, tmp_path):
    first = tiny(estimator).fit(random_triplets(), n_objects=N_OBJECTS)
    second = tiny(estimator, n_dims=4, random_state=3).fit(random_triplets(), n_objects=N_OBJECTS)
    first.save(tmp_path)

    assert second.save(tmp_path) == tmp_path

    from dimalign.io.runs import load_embedding
    np.testing.assert_array_equal(load_embedding(tmp_path).embedding, second.embedding_)


@pytest.mark.parametrize("method", ["predict", "predict_proba"])
def test_prediction_errors_name_method(method):
    model = tiny(SPoSE).fit(random_triplets(), n_objects=N_OBJECTS)

    with pytest.raises(ValueError, match=(
        rf"^the triplets passed to {method}, row 0: object index 12 is out of range for 12 objects"
    )):
        getattr(model, method)([[0, 1, 12]])


def write_spose_folder(folder, weights):
    """Write a saved SPoSE fit of the given float32 weights, all of whose dimensions are kept."""
    import tomli_w

    from dimalign.io.runs import EmbeddingResult, save_embedding

    n_objects, n_dims = weights.shape
    settings = SPoSE(n_dims=n_dims, min_objects=0).get_params()
    config = {
        "estimator": "spose",
        "settings": {key: "" if value is None else value for key, value in settings.items()},
        "fitted": {"n_objects": n_objects, "n_dims": n_dims, "n_epochs": 1, "converged": False},
    }
    (folder / "config.toml").write_text(tomli_w.dumps(config))
    (folder / "history.csv").write_text("epoch\n1\n")
    save_embedding(EmbeddingResult(embedding=weights, kept_dims=np.arange(n_dims), loc=weights), folder)
    return folder


def test_predict_sees_ties_of_predict_proba(tmp_path):
    """Log-probabilities one float32 step apart can round to one probability, and predict and score see that tie."""
    weights = np.array([[3.421503782272339], [0.21808841824531555], [0.21808840334415436]])
    model = SPoSE.load(write_spose_folder(tmp_path, weights))
    triplets = np.array([[0, 1, 2]])

    proba = model.predict_proba(triplets)

    assert proba[0, 0] == proba[0, 1]
    assert proba[0, 1] > proba[0, 2]
    # Pairs (0, 1) and (0, 2) tie, leaving out columns 2 and 1: predict returns the lower.
    assert model.predict(triplets).tolist() == [1]
    assert model.score(triplets) == 0.5
