"""Loading a saved VICE or SPoSE back as a fitted estimator."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.utils.validation import check_is_fitted

from dimalign.embedding import SPoSE, VICE
from dimalign.io.files import write_manifest
from triplet_helpers import N_OBJECTS, random_triplets

# Short fits keep few dimensions. That warning is tested in test_vice.py.
pytestmark = pytest.mark.filterwarnings("ignore:the fit kept no dimension:UserWarning")

ESTIMATORS = [VICE, SPoSE]


def fitted(estimator, **settings):
    settings = {"n_dims": 6, "max_epochs": 5, "min_objects": 0, "random_state": 3, **settings}
    train, val = random_triplets(), random_triplets(seed=1)
    return estimator(**settings).fit(train, val, n_objects=N_OBJECTS)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_loaded_predictions_match_saved(estimator, dtype, tmp_path):
    model = fitted(estimator, dtype=dtype, lr=0.05)
    assert model.n_dims_ > 0
    triplets = random_triplets(seed=2)
    model.save(tmp_path)

    loaded = estimator.load(tmp_path)

    check_is_fitted(loaded)
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(triplets), model.predict_proba(triplets))
    np.testing.assert_array_equal(loaded.predict(triplets), model.predict(triplets))
    assert loaded.score(triplets) == model.score(triplets)
    np.testing.assert_array_equal(loaded.embedding_, model.embedding_)
    np.testing.assert_array_equal(loaded.kept_dims_, model.kept_dims_)
    assert loaded.n_dims_ == model.n_dims_
    assert loaded.n_objects_ == model.n_objects_
    assert loaded.n_epochs_ == model.n_epochs_
    assert loaded.converged_ == model.converged_
    assert loaded.history_ == model.history_


def test_loaded_vice_keeps_posterior(tmp_path):
    model = fitted(VICE, lr=0.05)
    model.save(tmp_path)

    loaded = VICE.load(tmp_path)

    np.testing.assert_array_equal(loaded.loc_, model.loc_)
    np.testing.assert_array_equal(loaded.scale_, model.scale_)
    np.testing.assert_array_equal(loaded.scales_, model.scales_)


def test_loaded_spose_keeps_weights(tmp_path):
    model = fitted(SPoSE, lr=0.05)
    model.save(tmp_path)

    np.testing.assert_array_equal(SPoSE.load(tmp_path).weights_, model.weights_)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_load_in_new_process(estimator, tmp_path):
    model = fitted(estimator, lr=0.05)
    triplets = random_triplets(seed=2)
    model.save(tmp_path / "run")
    np.save(tmp_path / "triplets.npy", triplets)
    script = (
        "import sys, numpy as np\n"
        f"from dimalign.embedding import {estimator.__name__} as Estimator\n"
        "model = Estimator.load(sys.argv[1])\n"
        "print(repr(model.score(np.load(sys.argv[2]))), model.n_dims_)\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run"), str(tmp_path / "triplets.npy")],
        capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == [repr(model.score(triplets)), str(model.n_dims_)]


def test_load_fit_run_folder(tmp_path):
    """A run of dimalign fit has a manifest.json of step fit, which load accepts."""
    from dimalign.embedding import fit_run

    train, val = random_triplets(), random_triplets(seed=1)
    model = fit_run(
        VICE(n_dims=6, max_epochs=3, min_objects=0, lr=0.05), train, val, tmp_path / "run",
        n_objects=N_OBJECTS,
    )

    loaded = VICE.load(tmp_path / "run")

    assert loaded.get_params() == model.get_params()
    assert loaded.score(val) == model.score(val)


@pytest.mark.parametrize(("saved", "loader"), [(SPoSE, VICE), (VICE, SPoSE)])
def test_load_other_estimator_rejected(saved, loader, tmp_path):
    fitted(saved).save(tmp_path)
    name, other = loader.__name__, saved.__name__
    with pytest.raises(ValueError, match=(
        rf"^{tmp_path / 'config.toml'} contains a {other} fit, not a {name} fit: load the folder "
        rf"with {other}\.load$"
    )):
        loader.load(tmp_path)


@pytest.mark.parametrize("step", ["extract", "map", "simulate"])
def test_load_other_step_rejected(step, tmp_path):
    np.save(tmp_path / "features.npy", np.zeros((3, 2)))
    write_manifest(tmp_path, step=step, outputs={})
    with pytest.raises(ValueError, match=(
        rf"^{tmp_path} is the output of 'dimalign {step}', not a fitted embedding: pass a folder "
        r"that VICE\.save or 'dimalign fit' wrote$"
    )):
        VICE.load(tmp_path)


def test_load_sweep_folder_names_run(tmp_path):
    """A sweep or study folder contains runs, and the error names one to load."""
    fitted(VICE).save(tmp_path / "runs" / "seed_0")
    write_manifest(tmp_path, step="sweep", outputs={})
    with pytest.raises(ValueError, match=(
        rf"^{tmp_path} is the output of 'dimalign sweep', not a fitted embedding: pass one of the "
        rf"runs inside it, such as {tmp_path / 'runs' / 'seed_0'}$"
    )):
        VICE.load(tmp_path)


def test_load_missing_folder_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=(
        rf"^{tmp_path / 'nowhere'} not found: pass a folder that SPoSE\.save or 'dimalign fit' wrote$"
    )):
        SPoSE.load(tmp_path / "nowhere")


def test_load_file_instead_of_folder(tmp_path):
    fitted(SPoSE).save(tmp_path)
    with pytest.raises(ValueError, match=(
        rf"^{tmp_path / 'embedding.npz'} is a file, not a run folder: pass the folder that "
        rf"contains it, {tmp_path}$"
    )):
        SPoSE.load(tmp_path / "embedding.npz")


def test_load_embedding_file_names_reader(tmp_path):
    """A plain embedding file, such as a published SPoSE embedding, is no saved fit."""
    path = tmp_path / "spose_embedding_49d_sorted.txt"
    np.savetxt(path, np.ones((4, 2)))
    with pytest.raises(ValueError, match=(
        rf"^{path} is a file, not the folder of a saved fit: read an embedding file with "
        r"dimalign\.io\.runs\.load_embedding, which returns its array without an estimator$"
    )):
        SPoSE.load(path)


def test_load_folder_without_config_named(tmp_path):
    from dimalign.io.runs import EmbeddingResult, save_embedding

    save_embedding(EmbeddingResult(embedding=np.ones((4, 2))), tmp_path)
    with pytest.raises(FileNotFoundError, match=(
        rf"^{tmp_path} has embedding\.npz but no config\.toml, so the settings of its fit are "
        r"unknown: read the embedding alone with dimalign\.io\.runs\.load_embedding$"
    )):
        VICE.load(tmp_path)


def test_load_empty_folder_named(tmp_path):
    """The advice names what load takes: a folder of a saved fit, not an embedding file."""
    with pytest.raises(FileNotFoundError, match=(
        rf"^{tmp_path} is a folder without embedding\.npz, so it is not a run directory of 'dimalign fit': "
        r"pass a folder that VICE\.save or 'dimalign fit' wrote$"
    )):
        VICE.load(tmp_path)


@pytest.mark.parametrize("text", ["estimator = \n", "not toml at all [", "estimator = 'vice'\n"])
def test_load_damaged_config_named(text, tmp_path):
    fitted(VICE).save(tmp_path)
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ValueError, match=(
        rf"^{tmp_path / 'config.toml'} cannot be read as the config\.toml of a saved fit \(.+\), "
        r"so the file is damaged: save the estimator again, or read the embedding alone with "
        r"dimalign\.io\.runs\.load_embedding$"
    )):
        VICE.load(tmp_path)


def test_load_invalid_setting_named(tmp_path):
    fitted(VICE).save(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(config.read_text().replace("mc_samples = 20", "mc_samples = 0"))
    with pytest.raises(ValueError, match=rf"^{config}: mc_samples must be at least 1, got 0"):
        VICE.load(tmp_path)


def test_load_unknown_setting_named(tmp_path):
    fitted(SPoSE).save(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(config.read_text().replace("[settings]\n", "[settings]\nwarp = 9\n"))
    with pytest.raises(ValueError, match=(
        rf"^{config} has the setting 'warp', which SPoSE does not take: the file was written by "
        r"another version of dimalign or edited; remove the setting$"
    )):
        SPoSE.load(tmp_path)


def test_load_damaged_embedding_named(tmp_path):
    fitted(VICE).save(tmp_path)
    path = tmp_path / "embedding.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=(
        rf"^{path} cannot be read as the embedding\.npz of a saved fit \(.+\), so the file is "
        r"damaged: save the estimator again$"
    )):
        VICE.load(tmp_path)


def test_load_ignores_extra_arrays(tmp_path):
    """Arrays that a fit does not write, even pickled ones, are not read."""
    model = fitted(SPoSE)
    model.save(tmp_path)
    path = tmp_path / "embedding.npz"
    with np.load(path) as archive:
        arrays = dict(archive)
    np.savez(path, **arrays, notes=np.array([{"by": "hand"}], dtype=object))

    loaded = SPoSE.load(tmp_path)

    np.testing.assert_array_equal(loaded.embedding_, model.embedding_)


def test_load_npy_named_npz_says_why(tmp_path):
    fitted(SPoSE).save(tmp_path)
    path = tmp_path / "embedding.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.ones((3, 2)))
    with pytest.raises(ValueError) as error:
        SPoSE.load(tmp_path)
    assert str(error.value) == (
        f"{path} cannot be read as the embedding.npz of a saved fit: it is a .npy file, not a .npz "
        "archive: give it a name ending in .npy"
    )


def test_load_embedding_of_other_shape_named(tmp_path):
    fitted(SPoSE).save(tmp_path)
    path = tmp_path / "embedding.npz"
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["loc"] = arrays["loc"][:5]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=(
        rf"^{path} stores 'loc' of shape \(5, 6\), but config\.toml describes a fit of 12 objects "
        r"and 6 dimensions, \d+ of them kept, so the files do not belong together: save the estimator again$"
    )):
        SPoSE.load(tmp_path)


def test_load_missing_history_named(tmp_path):
    fitted(SPoSE).save(tmp_path)
    (tmp_path / "history.csv").unlink()
    with pytest.raises(FileNotFoundError, match=(
        rf"^{tmp_path / 'history.csv'} not found: the folder is incomplete, so save the estimator again$"
    )):
        SPoSE.load(tmp_path)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary", b"epoch,loss\n1,0.5\x00\n", b"epoch,loss\n1,fast\n"])
def test_load_damaged_history_named(content, tmp_path):
    fitted(SPoSE).save(tmp_path)
    path = tmp_path / "history.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=(
        rf"^{path} cannot be read as the history\.csv of a saved fit \(.+\), so the file is damaged: "
        r"save the estimator again$"
    )):
        SPoSE.load(tmp_path)


def test_old_vice_folder_loads_without_prediction(tmp_path):
    """Folders saved before log_scale was written load, but cannot reproduce the posterior predictive."""
    model = fitted(VICE, lr=0.05)
    model.save(tmp_path)
    path = tmp_path / "embedding.npz"
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "log_scale"}
    np.savez(path, **arrays)

    loaded = VICE.load(tmp_path)

    np.testing.assert_array_equal(loaded.embedding_, model.embedding_)
    np.testing.assert_array_equal(loaded.scale_, model.scale_)
    for method in ("predict_proba", "predict", "score"):
        with pytest.raises(ValueError, match=(
            rf"^{path} has no 'log_scale', the exact posterior scales that {method} samples from, "
            r"because an older dimalign saved it: fit again and save, or score the posterior means "
            r"with dimalign\.analysis\.similarity\.odd_one_out_accuracy\(model\.embedding_, triplets\)$"
        )):
            getattr(loaded, method)(random_triplets(n_triplets=4))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_float32_embedding_of_older_build(estimator, tmp_path):
    """Older builds rounded the embedding in embedding.npz to float32. load derives it from the unpruned parameters."""
    model = fitted(estimator, lr=0.05, dtype="float64")
    model.save(tmp_path)
    path = tmp_path / "embedding.npz"
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["embedding"] = arrays["embedding"].astype(np.float32)
    assert not np.array_equal(arrays["embedding"], model.embedding_)
    np.savez(path, **arrays)

    loaded = estimator.load(tmp_path)

    assert loaded.embedding_.dtype == np.float64
    np.testing.assert_array_equal(loaded.embedding_, model.embedding_)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_loaded_fit_starts_over(estimator, tmp_path):
    """fit on a loaded estimator starts a new fit from the seed, as on any estimator."""
    model = fitted(estimator, lr=0.05)
    model.save(tmp_path)
    loaded = estimator.load(tmp_path)

    loaded.fit(random_triplets(), random_triplets(seed=1), n_objects=N_OBJECTS)

    np.testing.assert_array_equal(loaded.embedding_, model.embedding_)
    # Each row also records the epoch's duration, which differs between the fits.
    untimed = [[{key: value for key, value in row.items() if key != "seconds"} for row in fit.history_]
               for fit in (loaded, model)]
    assert untimed[0] == untimed[1]
    assert loaded.n_epochs_ == 5


def test_load_on_other_device(tmp_path):
    """device= replaces the saved device, for a fit saved on a GPU and loaded without one."""
    model = fitted(SPoSE, lr=0.05)
    model.save(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(config.read_text().replace('device = "cpu"', 'device = "cuda"'))
    triplets = random_triplets(seed=2)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=(
            rf"^{config}: the fit was saved with device 'cuda', which this machine cannot use \(.+\): "
            r"pass device='cpu' to load$"
        )):
            SPoSE.load(tmp_path)

    loaded = SPoSE.load(tmp_path, device="cpu")

    assert loaded.device == "cpu"
    np.testing.assert_array_equal(loaded.predict_proba(triplets), model.predict_proba(triplets))


def test_loaded_fit_run_resumes_checkpoint(tmp_path):
    """A dimalign fit run names its folder as checkpoint_dir, so resume=True trains the loaded fit on."""
    from dimalign.embedding import fit_run

    train, val = random_triplets(), random_triplets(seed=1)
    settings = {"n_dims": 6, "min_objects": 0, "lr": 0.05}
    fit_run(VICE(max_epochs=3, **settings), train, val, tmp_path / "run", n_objects=N_OBJECTS)
    uninterrupted = VICE(max_epochs=5, **settings).fit(train, val, n_objects=N_OBJECTS)
    loaded = VICE.load(tmp_path / "run")

    with pytest.raises(FileExistsError, match="checkpoint.pt exists: pass resume=True"):
        loaded.fit(train, val, n_objects=N_OBJECTS)
    loaded = VICE.load(tmp_path / "run").set_params(resume=True, max_epochs=5)
    loaded.fit(train, val, n_objects=N_OBJECTS)

    assert loaded.n_epochs_ == 5
    np.testing.assert_array_equal(loaded.loc_, uninterrupted.loc_)
    assert loaded.score(val) == uninterrupted.score(val)


def rewrite_arrays(folder, **changes):
    """Replace arrays of a saved embedding.npz with the results of ``changes[name](array)``."""
    path = folder / "embedding.npz"
    with np.load(path) as archive:
        arrays = dict(archive)
    for name, change in changes.items():
        arrays[name] = change(arrays[name])
    np.savez(path, **arrays)
    return path


def with_nan(array):
    array = array.copy()
    array[1, 2] = np.nan
    return array


@pytest.mark.parametrize(("estimator", "name"), [
    (VICE, "loc"), (VICE, "log_scale"), (VICE, "scale"), (SPoSE, "loc"),
])
def test_load_nan_array_named(estimator, name, tmp_path):
    fitted(estimator, lr=0.05).save(tmp_path)
    path = rewrite_arrays(tmp_path, **{name: with_nan})
    with pytest.raises(ValueError, match=(
        rf"^{path} stores '{name}' with 1 NaN or infinite values, the first at row 1, column 2, "
        r"so the file is damaged: save the estimator again$"
    )):
        estimator.load(tmp_path)


def test_load_text_array_named(tmp_path):
    fitted(VICE, lr=0.05).save(tmp_path)
    path = rewrite_arrays(tmp_path, log_scale=lambda array: array.astype(str))
    with pytest.raises(ValueError, match=(
        rf"^{path} stores 'log_scale' of dtype <U\d+, not floating point numbers, so the file is "
        r"damaged: save the estimator again$"
    )):
        VICE.load(tmp_path)


def test_load_repeated_kept_dims_named(tmp_path):
    fitted(SPoSE, lr=0.05).save(tmp_path)
    path = rewrite_arrays(tmp_path, kept_dims=np.zeros_like)
    with pytest.raises(ValueError, match=(
        rf"^{path} stores 'kept_dims' \[0(, 0)*\], which repeat a column, so the file is damaged: "
        r"save the estimator again$"
    )):
        SPoSE.load(tmp_path)


def test_load_negative_spose_weights_named(tmp_path):
    """SPoSE clamps its weights at 0 after every step, so a negative weight is damage."""
    fitted(SPoSE, lr=0.05).save(tmp_path)

    def make_negative(weights):
        # 10 weights of -0.25 (flat positions 3, 10, ..., 66) and a lowest one at row 2, column 3.
        position = np.arange(weights.size).reshape(weights.shape)
        weights = np.where(position % 7 == 3, -0.25, weights)
        return np.where(position == 15, -0.5, weights)

    path = rewrite_arrays(tmp_path, loc=make_negative)
    with pytest.raises(ValueError, match=(
        rf"^{path} stores 'loc' with 11 negative weights, the lowest -0\.5 at row 2, column 3, but "
        r"SPoSE weights are non-negative, so the file is damaged: save the estimator again$"
    )):
        SPoSE.load(tmp_path)


@pytest.mark.parametrize("change", ["negate", "shift"])
def test_load_scale_unlike_log_scale(change, tmp_path):
    """scale is exp(log_scale), so a scale that differs from it shows damage."""
    fitted(VICE, lr=0.05).save(tmp_path)
    edit = {"negate": lambda scale: -scale, "shift": lambda scale: scale * 1.5}[change]
    path = rewrite_arrays(tmp_path, scale=edit)
    with pytest.raises(ValueError, match=(
        rf"^{path} stores a 'scale' that is not exp\('log_scale'\), so the file is damaged: "
        r"save the estimator again$"
    )):
        VICE.load(tmp_path)


def test_load_log_scale_of_other_dtype(tmp_path):
    """A float64 log_scale with the dtype setting removed would predict in float32."""
    fitted(VICE, lr=0.05, dtype="float64").save(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(config.read_text().replace('dtype = "float64"\n', ""))
    with pytest.warns(UserWarning, match="lacks the settings"), pytest.raises(ValueError, match=(
        rf"^{tmp_path / 'embedding.npz'} stores 'log_scale' in float64, but the dtype setting in "
        rf"{config} is 'float32', so the files do not belong together: set dtype = \"float64\" in "
        r"\[settings\], or save the estimator again$"
    )):
        VICE.load(tmp_path)


def test_load_missing_setting_warns(tmp_path):
    """A setting that config.toml lacks takes its default, with a warning that names it."""
    model = fitted(VICE, lr=0.05, mc_samples=7)
    model.save(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(config.read_text().replace("mc_samples = 7\n", "").replace("lr = 0.05\n", ""))
    with pytest.warns(UserWarning, match=(
        rf"^{config} lacks the settings \['lr', 'mc_samples'\], so they take their defaults "
        r"\(lr=0\.001, mc_samples=20\): add them to \[settings\] if the fit used other values$"
    )):
        loaded = VICE.load(tmp_path)

    assert loaded.mc_samples == 20
    assert loaded.lr == 0.001


def test_load_missing_n_dims_named(tmp_path):
    fitted(SPoSE).save(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(config.read_text().replace("n_dims = 6\nn_objects", "n_objects", 1))
    with pytest.warns(UserWarning, match="lacks the settings"), pytest.raises(ValueError, match=(
        rf"^{tmp_path / 'embedding.npz'} stores 'loc' of shape \(12, 6\), but {config} lacks the "
        r"n_dims setting, whose default is 100: add n_dims = 6 to \[settings\]$"
    )):
        SPoSE.load(tmp_path)


@pytest.mark.parametrize(("old", "new", "problem"), [
    ('estimator = "vice"\n', 'estimator = "vice"\nversion = 2\n', r"unknown key 'version'"),
    ("converged = ", "n_kept = 3\nconverged = ", r"unknown key 'fitted\.n_kept'"),
    ("n_epochs = 5", "n_epochs = -5", r"fitted\.n_epochs is -5, below 0"),
    ("n_objects = 12\nn_dims", "n_objects = 0\nn_dims", r"fitted\.n_objects is 0, below 1"),
], ids=["top-level key", "fitted key", "negative epochs", "no objects"])
def test_load_edited_config_named(old, new, problem, tmp_path):
    fitted(VICE).save(tmp_path)
    config = tmp_path / "config.toml"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError, match=(
        rf"^{config} cannot be read as the config\.toml of a saved fit \({problem}\), so the file is "
        r"damaged: save the estimator again, or read the embedding alone with "
        r"dimalign\.io\.runs\.load_embedding$"
    )):
        VICE.load(tmp_path)


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("verbose = false", 'verbose = "yes"', r"verbose must be True or False, got 'yes'"),
    ("resume = false", "resume = 1", r"resume must be True or False, got 1"),
    ("tensorboard = false", "tensorboard = 0", r"tensorboard must be True or False, got 0"),
    ('checkpoint_dir = ""', "checkpoint_dir = 5", r"checkpoint_dir must be a folder path or None, got 5"),
], ids=["verbose", "resume", "tensorboard", "checkpoint_dir"])
def test_load_wrong_setting_type_named(old, new, problem, tmp_path):
    fitted(SPoSE).save(tmp_path)
    config = tmp_path / "config.toml"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))
    with pytest.raises(ValueError, match=rf"^{config}: {problem}$"):
        SPoSE.load(tmp_path)


def test_fit_rejects_flag_of_other_type():
    with pytest.raises(ValueError, match=r"^verbose must be True or False, got 'yes'$"):
        SPoSE(verbose="yes").fit(random_triplets(), n_objects=N_OBJECTS)


@pytest.mark.parametrize("name", [None, "embedding.npz", "config.toml", "history.csv"])
def test_load_broken_link_named(name, tmp_path):
    run = tmp_path / "run"
    fitted(SPoSE).save(run)
    link = tmp_path / "linked" if name is None else run / name
    target = tmp_path / "moved"
    if name is not None:
        link.unlink()
    link.symlink_to(target)

    with pytest.raises(FileNotFoundError) as error:
        SPoSE.load(link if name is None else run)

    assert str(error.value) == (
        f"{link} is a symbolic link to the missing {target}: restore the target, or point the link "
        "to where it moved"
    )


def test_load_moved_run_warns(tmp_path):
    """A moved run keeps the old checkpoint_dir, where fit with resume=True finds no checkpoint."""
    from dimalign.embedding import fit_run

    fit_run(SPoSE(n_dims=6, max_epochs=2, min_objects=0), random_triplets(), None, tmp_path / "run",
            n_objects=N_OBJECTS)
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)

    with pytest.warns(UserWarning) as record:
        loaded = SPoSE.load(moved)

    assert [str(warning.message) for warning in record] == [
        f"{moved / 'config.toml'} sets checkpoint_dir to {tmp_path / 'run'}, not to this folder, so "
        f"fit with resume=True would not find its checkpoint.pt: call "
        f"set_params(checkpoint_dir={str(moved)!r}) before fit to train on from it"
    ]
    assert loaded.checkpoint_dir == str(tmp_path / "run")


def test_load_relative_run_from_elsewhere(tmp_path, monkeypatch):
    """dimalign fit -o runs/x records a relative checkpoint_dir, which only its working directory resolves."""
    from dimalign.embedding import fit_run

    monkeypatch.chdir(tmp_path)
    fit_run(SPoSE(n_dims=6, max_epochs=2, min_objects=0), random_triplets(), None, "run", n_objects=N_OBJECTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SPoSE.load("run")
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")

    with pytest.warns(UserWarning, match=(
        rf"^{tmp_path / 'run' / 'config.toml'} sets checkpoint_dir to run, not to this folder"
    )):
        SPoSE.load(tmp_path / "run")


def test_load_spose_float64_as_float32(tmp_path):
    """Weights of a float64 fit are no float32 numbers, so a float32 dtype setting contradicts them."""
    fitted(SPoSE, lr=0.05, dtype="float64").save(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(config.read_text().replace('dtype = "float64"', 'dtype = "float32"'))
    with pytest.raises(ValueError, match=(
        rf"^{tmp_path / 'embedding.npz'} stores 'loc' weights that float32 cannot hold, but the dtype "
        rf"setting in {config} is 'float32', so the files do not belong together: set "
        r"dtype = \"float64\" in \[settings\], or save the estimator again$"
    )):
        SPoSE.load(tmp_path)


def test_load_edited_run_warns(tmp_path):
    """A dimalign fit run records checksums of its files, so a hand-edited config.toml is named."""
    from dimalign.embedding import fit_run

    run = tmp_path / "run"
    fit_run(SPoSE(n_dims=6, max_epochs=2, min_objects=0), random_triplets(), None, run, n_objects=N_OBJECTS)
    config = run / "config.toml"
    config.write_text(config.read_text().replace("batch_size = 256", "batch_size = 128"))

    with pytest.warns(UserWarning, match=(
        rf"^{config} does not match the sha256 that {run / 'manifest.json'} records \(recorded \w+, "
        r"now \w+\), so it was replaced or damaged after the fit: load uses the file as it is now$"
    )):
        loaded = SPoSE.load(run)

    assert loaded.batch_size == 128


def test_load_device_object_saves(tmp_path):
    """device= may be a torch.device, which config.toml stores as its name."""
    model = fitted(SPoSE, lr=0.05)
    model.save(tmp_path / "first")
    loaded = SPoSE.load(tmp_path / "first", device=torch.device("cpu"))

    loaded.save(tmp_path / "second")

    assert SPoSE.load(tmp_path / "second").device == "cpu"


def test_interrupted_save_keeps_earlier_files(tmp_path, monkeypatch):
    """Ctrl-C while save replaces an earlier save leaves the earlier files, not a mix of two fits."""
    import dimalign.embedding.base

    triplets = random_triplets()
    VICE(n_dims=3, max_epochs=1, min_objects=0).fit(triplets, n_objects=N_OBJECTS).save(tmp_path / "run")
    names = ("embedding.npz", "config.toml", "history.csv")
    earlier = {name: (tmp_path / "run" / name).read_bytes() for name in names}
    later = VICE(n_dims=3, max_epochs=2, min_objects=0).fit(triplets, n_objects=N_OBJECTS)
    write_text_atomic = dimalign.embedding.base.write_text_atomic

    def interrupt_at_history(path, text):
        if path.name == "history.csv":
            raise KeyboardInterrupt
        return write_text_atomic(path, text)

    monkeypatch.setattr(dimalign.embedding.base, "write_text_atomic", interrupt_at_history)
    with pytest.raises(KeyboardInterrupt):
        later.save(tmp_path / "run")

    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == sorted(names)
    for name in names:
        assert (tmp_path / "run" / name).read_bytes() == earlier[name], name
    assert VICE.load(tmp_path / "run").n_epochs_ == 1
