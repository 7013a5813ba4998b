"""VICE and SPoSE as a scikit-learn user calls them: global torch state, input forms and model selection."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

from dimalign.embedding import SPoSE, VICE
from triplet_helpers import N_OBJECTS, random_triplets

# Fits of two epochs keep few or no dimensions. That warning is tested in test_vice.py.
pytestmark = pytest.mark.filterwarnings("ignore:the fit kept no dimension:UserWarning")

ESTIMATORS = [VICE, SPoSE]


def tiny(estimator, **settings):
    return estimator(**{"n_dims": 3, "max_epochs": 2, "min_objects": 0, **settings})


def unpruned(model) -> np.ndarray:
    """Return the unpruned fitted parameters, which every random draw of the fit changes."""
    return model.loc_ if isinstance(model, VICE) else model.weights_


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_ignores_default_dtype(estimator, dtype):
    """A notebook that calls torch.set_default_dtype gets the fit of the same seed."""
    triplets = random_triplets()
    reference = tiny(estimator, dtype=dtype).fit(triplets, n_objects=N_OBJECTS)

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = tiny(estimator, dtype=dtype).fit(triplets, n_objects=N_OBJECTS)
    finally:
        torch.set_default_dtype(previous)

    np.testing.assert_array_equal(unpruned(model), unpruned(reference))
    assert model.score(triplets) == reference.score(triplets)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_fit_inside_no_grad(estimator, context):
    """fit computes its own gradients, so a surrounding no_grad or inference_mode block does not matter."""
    triplets = random_triplets()
    reference = tiny(estimator).fit(triplets, n_objects=N_OBJECTS)

    with context():
        model = tiny(estimator).fit(triplets, n_objects=N_OBJECTS)
        score = model.score(triplets)

    np.testing.assert_array_equal(unpruned(model), unpruned(reference))
    assert score == reference.score(triplets)
    assert torch.is_grad_enabled()
    # A later fit outside the block works on the estimator fitted inside it.
    assert model.fit(triplets, n_objects=N_OBJECTS).score(triplets) == score


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_fit_keeps_global_state(estimator):
    """fit and predict draw from their own seeded generators and restore what they change."""
    torch.manual_seed(11)
    np.random.seed(11)
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()
    threads = torch.get_num_threads()
    default_dtype = torch.get_default_dtype()

    model = tiny(estimator).fit(random_triplets(), random_triplets(seed=1), n_objects=N_OBJECTS)
    model.predict_proba(random_triplets(seed=2))
    model.score(random_triplets(seed=2))

    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0]
    np.testing.assert_array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]
    assert torch.get_num_threads() == threads
    assert torch.get_default_dtype() == default_dtype
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_numpy_settings_resume(estimator, tmp_path):
    """A grid such as numpy.logspace sets numpy scalars, and torch.load must read them back from the checkpoint."""
    triplets = random_triplets()
    settings = {"n_dims": np.int64(3), "lr": np.float64(0.01), "random_state": np.int64(2)}
    uninterrupted = tiny(estimator, max_epochs=3, n_dims=3, lr=0.01, random_state=2).fit(triplets, n_objects=N_OBJECTS)
    tiny(estimator, checkpoint_dir=tmp_path, **settings).fit(triplets, n_objects=np.int64(N_OBJECTS))

    resumed = tiny(estimator, max_epochs=3, checkpoint_dir=tmp_path, resume=True, **settings)
    resumed.fit(triplets, n_objects=np.int64(N_OBJECTS))

    assert resumed.n_epochs_ == 3
    np.testing.assert_array_equal(unpruned(resumed), unpruned(uninterrupted))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_seed_repeats_in_new_process(estimator, tmp_path):
    """A fit in a fresh interpreter, whose torch state starts anew, gives the same bits."""
    triplets = random_triplets()
    model = tiny(estimator, random_state=4).fit(triplets, n_objects=N_OBJECTS)
    np.save(tmp_path / "triplets.npy", triplets)
    script = (
        "import sys, numpy as np\n"
        f"from dimalign.embedding import {estimator.__name__} as Estimator\n"
        "model = Estimator(n_dims=3, max_epochs=2, min_objects=0, random_state=4)\n"
        "model.fit(np.load(sys.argv[1]), n_objects=12)\n"
        "np.save(sys.argv[2], model.loc_ if hasattr(model, 'loc_') else model.weights_)\n"
    )

    finished = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "triplets.npy"), str(tmp_path / "fitted.npy")],
        capture_output=True, text=True, timeout=300,
    )

    assert finished.returncode == 0, finished.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "fitted.npy"), unpruned(model))


def as_array(triplets) -> np.ndarray:
    return triplets.numpy() if isinstance(triplets, torch.Tensor) else np.asarray(triplets)


def read_only(triplets: np.ndarray) -> np.ndarray:
    copy = triplets.copy()
    copy.setflags(write=False)
    return copy


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize(
    "convert",
    [torch.as_tensor, lambda t: torch.as_tensor(t, dtype=torch.int32), read_only, np.asfortranarray,
     lambda t: np.ascontiguousarray(t[::-1])[::-1], lambda t: np.ascontiguousarray(t[:, ::-1])[:, ::-1],
     lambda t: t.astype(">i8"), lambda t: pd.DataFrame(t).astype("Int64")],
    ids=["tensor", "int32-tensor", "read-only", "Fortran", "negative-row-stride", "negative-column-stride",
         "big-endian", "nullable-Int64-DataFrame"],
)
def test_array_layouts_fit_alike(estimator, convert):
    triplets = random_triplets()
    reference = tiny(estimator).fit(triplets, triplets[:20], n_objects=N_OBJECTS)
    converted = convert(triplets)
    before = as_array(converted).copy()

    model = tiny(estimator).fit(converted, converted[:20], n_objects=N_OBJECTS)

    np.testing.assert_array_equal(unpruned(model), unpruned(reference))
    assert model.history_[-1]["val_accuracy"] == reference.history_[-1]["val_accuracy"]
    assert model.score(converted) == reference.score(triplets)
    np.testing.assert_array_equal(model.predict(converted), reference.predict(triplets))
    np.testing.assert_array_equal(model.predict_proba(converted), reference.predict_proba(triplets))
    np.testing.assert_array_equal(as_array(converted), before)


@pytest.fixture(scope="module")
def human_triplets(things_dir):
    """The first 1,500 real human triplets of the THINGS data."""
    return np.loadtxt(things_dir / "human_triplets.txt", dtype=np.int64, max_rows=1500)


def real(estimator, **settings):
    return estimator(**{"n_dims": 10, "max_epochs": 3, "min_objects": 0, "n_objects": 1854, **settings})


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_cross_val_score_is_held_out(estimator, human_triplets):
    """cross_val_score passes no y, so fit gets no validation triplets and score is the held-out accuracy."""
    scores = cross_val_score(real(estimator), human_triplets, cv=3)

    expected = []
    for train, test in KFold(3).split(human_triplets):
        model = real(estimator).fit(human_triplets[train])
        expected.append(model.score(human_triplets[test]))
    assert scores.tolist() == expected
    parallel = cross_val_score(real(estimator), human_triplets, cv=3, n_jobs=2)
    assert parallel.tolist() == expected


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_grid_search_refits_best(estimator, human_triplets):
    search = GridSearchCV(real(estimator), {"lr": [0.001, 0.01]}, cv=2, n_jobs=2).fit(human_triplets)

    best = real(estimator, **search.best_params_).fit(human_triplets)
    np.testing.assert_array_equal(unpruned(search.best_estimator_), unpruned(best))
    assert search.score(human_triplets) == best.score(human_triplets)
    assert search.cv_results_["mean_test_score"].shape == (2,)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_label_vector_as_val_explained(estimator, human_triplets):
    """cross_val_score(model, X, y) passes y as val, and the error asks to leave y out."""
    labels = np.full(len(human_triplets), 2)
    expected = (
        "val has shape (1000,), but it takes validation triplets of shape (n, 3). scikit-learn passes y "
        "there, but the odd one out is the last column of each triplet: call cross_val_score or "
        "GridSearchCV without y"
    )

    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        cross_val_score(real(estimator), human_triplets, labels, cv=3, error_score="raise")


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_fitted_attributes_documented(estimator):
    """help(model) lists every fitted attribute under Attributes, as name (type): text."""
    model = tiny(estimator).fit(random_triplets(), n_objects=N_OBJECTS)
    fitted = sorted(name for name in vars(model) if name.endswith("_") and not name.startswith("_"))
    docstring = inspect.getdoc(estimator)
    section = docstring.split("Attributes:")[1].split("\n\n")[0]

    documented = sorted(re.findall(r"^    (\w+) \([^)]+\):", section, flags=re.MULTILINE))

    assert documented == fitted


def test_grid_search_shared_checkpoint_explained(tmp_path):
    """GridSearchCV fits clones of one estimator, so every fit gets the same checkpoint_dir."""
    model = tiny(VICE, n_objects=N_OBJECTS, checkpoint_dir=str(tmp_path / "checkpoints"))
    search = GridSearchCV(model, {"lr": [0.01, 0.02]}, cv=2, error_score="raise")

    with pytest.raises(FileExistsError) as caught:
        search.fit(random_triplets(n_triplets=200))

    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'checkpoints' / 'checkpoint.pt'} belongs to another fit (")
    assert "give each fit its own checkpoint_dir" in message
    assert "checkpoint_dir=None" in message


def test_grid_search_without_checkpoint_dir(tmp_path):
    """The advice of the error above works: checkpoint_dir=None lets the search run."""
    model = tiny(VICE, n_objects=N_OBJECTS, checkpoint_dir=None)
    search = GridSearchCV(model, {"lr": [0.01, 0.02]}, cv=2, error_score="raise")

    search.fit(random_triplets(n_triplets=200))

    assert search.best_params_["lr"] in (0.01, 0.02)
