import numpy as np
import pytest
import torch

from dimalign.embedding import SPoSE, VICE
from dimalign.embedding.checkpoint import CHECKPOINT_NAME
from triplet_helpers import random_triplets

# Fits of a few epochs on random triplets often keep no dimension; that
# warning is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore:the fit kept no dimension:UserWarning")


def planted_triplets(n_triplets=3000, seed=0):
    """Triplets chosen by argmax from a planted 2-group embedding of 30 objects."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((30, 2))
    truth[:15, 0] = rng.uniform(1.0, 2.0, 15)
    truth[15:, 1] = rng.uniform(1.0, 2.0, 15)
    raw = np.array([rng.choice(30, 3, replace=False) for _ in range(n_triplets)])
    rows = []
    for i, j, k in raw:
        pairs = [((i, j), k), ((i, k), j), ((j, k), i)]
        scores = [truth[a] @ truth[b] for (a, b), _ in pairs]
        (a, b), odd = pairs[int(np.argmax(scores))]
        rows.append((a, b, odd))
    return np.array(rows)


@pytest.mark.parametrize("prior", ["mixture", "authors"])
def test_closed_form_gradients_match_autograd(prior):
    model = VICE(n_dims=4, prior=prior, dtype="float64")
    params = model._init_parameters(10, torch.Generator().manual_seed(0))
    params = {name: (tensor.double() * 5).requires_grad_(True) for name, tensor in params.items()}
    params["log_scale"].data.fill_(-0.5)
    batch = torch.tensor([[0, 1, 2], [3, 4, 5], [0, 5, 9], [1, 2, 3], [0, 1, 2]])

    model._train_step(params, batch, 100, torch.Generator().manual_seed(5))
    closed_form = {name: tensor.grad.clone() for name, tensor in params.items()}
    for tensor in params.values():
        tensor.grad = None
    loss, _, _ = model._batch_loss(params, batch, 100, torch.Generator().manual_seed(5))
    loss.backward()

    for name, tensor in params.items():
        assert torch.allclose(tensor.grad, closed_form[name], atol=1e-12), name


def test_fit_learns_planted_structure():
    triplets = planted_triplets()
    train, val = triplets[:2500], triplets[2500:]
    model = VICE(n_dims=10, max_epochs=40, lr=0.01, batch_size=64, mc_samples=10, eval_every=20, random_state=0)
    model.fit(train, val, n_objects=30)
    assert model.score(val) > 0.8
    assert model.embedding_.shape == (30, model.n_dims_)
    assert (model.embedding_ >= 0).all()
    assert len(model.history_) == 40
    assert {"loss", "nll", "complexity", "train_accuracy", "n_dims"} <= set(model.history_[0])
    assert "val_accuracy" not in model.history_[0]
    assert {"val_accuracy", "val_nll"} <= set(model.history_[19])
    # score() receives the kept dimensions sorted by weight and the history
    # uses index order. The Monte Carlo draws must not depend on that order.
    assert model.score(val) == model.history_[-1]["val_accuracy"]
    kept = torch.as_tensor(model.kept_dims_)
    assert kept.numel() > 1
    val_t = torch.as_tensor(val)
    assert torch.equal(model._predict_log_proba(model._params, kept, val_t),
                       model._predict_log_proba(model._params, kept.flip(0), val_t))


def test_last_partial_batch_is_used():
    triplets = random_triplets(12, 100)
    model = VICE(n_dims=3, max_epochs=1, batch_size=30, random_state=0)
    steps = []
    original = model._train_step
    model._train_step = lambda params, batch, n_train, generator: (
        steps.append(batch.shape[0]) or original(params, batch, n_train, generator)
    )
    model.fit(triplets, n_objects=12)
    assert steps == [30, 30, 30, 10]


def test_same_seed_same_result_and_scoring_changes_nothing():
    triplets = random_triplets(15, 300)
    first = VICE(n_dims=5, max_epochs=3, random_state=3).fit(triplets, n_objects=15)
    score_before = first.score(triplets)
    second = VICE(n_dims=5, max_epochs=3, random_state=3).fit(triplets, n_objects=15)
    assert np.array_equal(first.loc_, second.loc_)
    assert first.score(triplets) == score_before == second.score(triplets)


def test_resume_equals_uninterrupted_run(tmp_path):
    triplets = random_triplets(15, 300)
    settings = {"n_dims": 5, "random_state": 1, "stability_epochs": 100}
    straight = VICE(max_epochs=4, **settings).fit(triplets, n_objects=15)

    VICE(max_epochs=2, checkpoint_dir=str(tmp_path), **settings).fit(triplets, n_objects=15)
    assert (tmp_path / CHECKPOINT_NAME).is_file()
    resumed = VICE(max_epochs=4, checkpoint_dir=str(tmp_path), resume=True, **settings)
    resumed.fit(triplets, n_objects=15)

    assert resumed.n_epochs_ == 4
    assert np.allclose(resumed.loc_, straight.loc_, atol=1e-6)
    assert np.allclose(resumed.scale_, straight.scale_, atol=1e-6)
    assert [row["epoch"] for row in resumed.history_] == [1, 2, 3, 4]


def test_checkpoint_of_other_n_dims_rejected(tmp_path):
    triplets = random_triplets(15, 200)
    VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(triplets, n_objects=15)
    with pytest.raises(ValueError, match=r"n_dims \(--n-dims\): checkpoint 5, now 6"):
        VICE(n_dims=6, max_epochs=2, checkpoint_dir=str(tmp_path), resume=True).fit(triplets, n_objects=15)


def test_checkpoint_mismatch_names_the_command_line_option(tmp_path):
    # The seed is random_state in Python and --seed on the command line; a
    # setting without an option (init_scale) is named once.
    triplets = random_triplets(15, 200)
    VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(triplets, n_objects=15)
    with pytest.raises(ValueError, match=r"random_state \(--seed\): checkpoint 0, now 1"):
        VICE(n_dims=5, max_epochs=2, random_state=1, checkpoint_dir=str(tmp_path), resume=True).fit(
            triplets, n_objects=15
        )
    with pytest.raises(ValueError, match=r"\(init_scale: checkpoint None, now 0.2\)"):
        VICE(n_dims=5, max_epochs=2, init_scale=0.2, checkpoint_dir=str(tmp_path), resume=True).fit(
            triplets, n_objects=15
        )


def test_checkpoint_not_resumed_unless_asked(tmp_path):
    triplets = random_triplets(15, 200)
    VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(triplets, n_objects=15)
    with pytest.raises(FileExistsError, match="pass resume=True"):
        VICE(n_dims=5, max_epochs=2, checkpoint_dir=str(tmp_path)).fit(triplets, n_objects=15)


def test_resume_on_other_data_rejected(tmp_path):
    VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(random_triplets(15, 200), n_objects=15)
    with pytest.raises(ValueError, match="other triplets"):
        VICE(n_dims=5, max_epochs=2, checkpoint_dir=str(tmp_path), resume=True).fit(
            random_triplets(15, 200, seed=9), n_objects=15
        )


def test_unknown_number_of_objects_rejected():
    with pytest.raises(ValueError, match="number of objects is unknown"):
        VICE(n_dims=2, max_epochs=1).fit(random_triplets(5, 10))


def test_index_out_of_range_names_row():
    triplets = np.array([[0, 1, 2], [0, 1, 7]])
    with pytest.raises(ValueError, match=r"row 1: object index 7 is out of range for 6 objects"):
        VICE(n_dims=2, max_epochs=1).fit(triplets, n_objects=6)


def test_unseen_object_scores_without_index_error():
    train = np.array([[0, 1, 2], [1, 2, 3], [2, 3, 4], [0, 3, 4]] * 10)
    model = VICE(n_dims=3, max_epochs=2).fit(train, n_objects=6)
    probability = model.predict_proba(np.array([[0, 1, 5]]))
    assert probability.shape == (1, 3)
    assert np.isfinite(probability).all()


def test_cuda_without_gpu_is_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        VICE(n_dims=2, max_epochs=1, device="cuda").fit(random_triplets(5, 10), n_objects=5)


def test_save_writes_run_files(tmp_path):
    model = VICE(n_dims=4, max_epochs=2).fit(random_triplets(12, 100), n_objects=12)
    model.save(tmp_path)
    assert {"embedding.npz", "config.toml", "history.csv"} <= {path.name for path in tmp_path.iterdir()}
    with np.load(tmp_path / "embedding.npz") as archive:
        assert archive["loc"].shape == (12, 4)
        assert archive["embedding"].shape == (12, model.n_dims_)


def test_spose_fits_non_negative_weights():
    triplets = planted_triplets()
    model = SPoSE(n_dims=8, max_epochs=30, lr=0.01, batch_size=64, l1=0.001).fit(
        triplets[:2500], triplets[2500:], n_objects=30
    )
    assert (model.weights_ >= 0).all()
    assert model.score(triplets[2500:]) > 0.8


def test_fit_without_dimensions_warns():
    """A Python warning, not only a log record: notebooks show no log records by default."""
    train = planted_triplets(500)
    with pytest.warns(UserWarning, match=r"the fit kept no dimension.* lower min_objects \(now 5; CLI: --min-objects\)"):
        model = SPoSE(n_dims=4, max_epochs=5, lr=0.05, l1=1000.0).fit(train, n_objects=30)
    assert model.n_dims_ == 0


def test_no_dimension_warning_at_min_objects_zero():
    """With min_objects already 0, the warning does not advise lowering it."""
    train = planted_triplets(500)
    with pytest.warns(UserWarning) as caught:
        model = SPoSE(n_dims=4, max_epochs=5, lr=0.05, l1=1000.0, min_objects=0).fit(train, n_objects=30)
    assert model.n_dims_ == 0
    messages = [str(item.message) for item in caught if "kept no dimension" in str(item.message)]
    assert messages == [
        "the fit kept no dimension: every object scores the same, and comparisons of this embedding will "
        "fail. Use more triplets or epochs, or, for SPoSE, a smaller l1 penalty"
    ]


def test_fit_warns_many_dimensions_per_object():
    """VICE's default of 150 dimensions on 12 objects keeps far more than half as many dimensions as objects."""
    with pytest.warns(UserWarning) as caught:
        model = VICE(max_epochs=2, random_state=0).fit(random_triplets(), n_objects=12)
    messages = [str(item.message) for item in caught if "dimensions for 12 objects" in str(item.message)]
    assert messages == [
        f"the fit kept {model.n_dims_} of 150 dimensions for 12 objects, so its dimensions are poorly "
        "determined, and matching them to another embedding finds high correlations by chance alone: fit "
        "with fewer initial dimensions (n_dims, CLI: --n-dims), at most 6 for these objects, or train longer"
    ]
    assert model.n_dims_ > 6


def test_fit_few_dimensions_no_warning():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = VICE(n_dims=6, max_epochs=2, random_state=0).fit(random_triplets(), n_objects=12)
    assert model.n_dims_ <= 6
    assert not [item for item in caught if "poorly determined" in str(item.message)]


def test_checkpoint_saved_on_gpu_resumes_on_cpu(tmp_path):
    """A checkpoint whose tensors are tagged as CUDA storage loads on a CPU-only machine."""
    triplets = random_triplets(15, 200)
    VICE(n_dims=4, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(triplets, n_objects=15)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)

    # Re-save with every storage tagged "cuda:0", as torch.save does on a GPU.
    def tag_as_cuda(storage):
        return "cuda:0"

    registry = torch.serialization._package_registry
    registry.insert(0, (-1, tag_as_cuda, lambda storage, location: None))
    try:
        torch.save(state, tmp_path / CHECKPOINT_NAME)
    finally:
        registry.pop(0)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)

    resumed = VICE(n_dims=4, max_epochs=2, checkpoint_dir=str(tmp_path), resume=True)
    resumed.fit(triplets, n_objects=15)
    assert resumed.n_epochs_ == 2


def test_resume_past_max_epochs_warns(tmp_path):
    triplets = random_triplets(15, 200)
    VICE(n_dims=5, max_epochs=3, checkpoint_dir=str(tmp_path)).fit(triplets, n_objects=15)
    with pytest.warns(UserWarning, match=r"has 3 epochs, not fewer than max_epochs=2: nothing is trained"):
        resumed = VICE(n_dims=5, max_epochs=2, checkpoint_dir=str(tmp_path), resume=True).fit(triplets, n_objects=15)
    assert resumed.n_epochs_ == 3


def test_resume_with_object_count_in_constructor(tmp_path):
    triplets = random_triplets(15, 200)
    VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(triplets, n_objects=15)
    resumed = VICE(n_dims=5, n_objects=15, max_epochs=2, checkpoint_dir=str(tmp_path), resume=True).fit(triplets)
    assert resumed.n_epochs_ == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"eval_every": 0}, "eval_every must be at least 1"),
     ({"checkpoint_every": 0}, "checkpoint_every must be at least 1"),
     ({"n_dims": 4.0}, "n_dims must be an integer, got 4.0"),
     ({"random_state": None}, "random_state must be an integer seed, got None"),
     ({"alpha": 1.5}, r"alpha must lie in \(0, 1\), got 1.5"),
     ({"lr": float("inf")}, r"lr must be a finite number in \(0, inf\), got inf"),
     ({"beta": float("nan")}, r"beta must be a finite number in \[0, inf\), got nan"),
     ({"beta": -1.0}, r"beta must lie in \[0, inf\), got -1.0"),
     ({"mc_samples": 2.5}, "mc_samples must be an integer, got 2.5"),
     ({"init_scale": 0.0}, r"init_scale must lie in \(0, inf\), got 0.0"),
     ({"spike": "a"}, "spike must be a finite number in .*, got 'a'"),
     ({"random_state": 2**70}, "random_state must be at most 9223372036854775807"),
     ({"device": 123}, "invalid device 123")],
)
def test_invalid_settings_fail_before_training(settings, message):
    model = VICE(max_epochs=1, **settings)
    with pytest.raises(ValueError, match=message):
        model.fit(random_triplets(15, 100), n_objects=15)
    assert not hasattr(model, "history_")


def test_diverging_fit_names_epoch_and_learning_rate():
    with pytest.raises(RuntimeError, match=r"the fit diverged in epoch 1: .* lower the learning rate \(lr=1e\+30\)"):
        VICE(n_dims=4, max_epochs=3, lr=1e30).fit(planted_triplets(300), n_objects=30)


def test_posterior_predictive_stays_finite_for_large_gaps():
    model = VICE(n_dims=2, max_epochs=1, mc_samples=3, min_objects=0).fit(planted_triplets(300), n_objects=30)
    params = {"loc": torch.zeros_like(model._params["loc"]), "log_scale": torch.full_like(model._params["loc"], -20.0)}
    params["loc"][0, 0] = params["loc"][1, 0] = 30.0  # objects 0 and 1: similarity 900, the others 0
    log_proba = model._predict_log_proba(params, torch.tensor([0, 1]), torch.tensor([[0, 2, 1]]))
    assert torch.isfinite(log_proba).all()
    assert log_proba[0, 1] == pytest.approx(0.0)
    assert log_proba[0, 0] == pytest.approx(-900.0, rel=1e-4)


def test_unfitted_model_raises_not_fitted_error():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted yet"):
        VICE().score(np.array([[0, 1, 2]]))


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(random_triplets(15, 200), n_objects=15)
    checkpoint = tmp_path / CHECKPOINT_NAME
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot be read as a dimalign checkpoint"):
        VICE(n_dims=5, max_epochs=2, checkpoint_dir=str(tmp_path), resume=True).fit(
            random_triplets(15, 200), n_objects=15
        )


@pytest.mark.parametrize("damage", ["drop_history", "drop_epoch", "shrink_params"])
def test_incomplete_checkpoint_is_a_clear_error(tmp_path, damage):
    """A checkpoint of the right format whose entries are missing or of other shapes names the file."""
    triplets = random_triplets(15, 200)
    VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(triplets, n_objects=15)
    path = tmp_path / CHECKPOINT_NAME
    state = torch.load(path, weights_only=True)
    if damage == "shrink_params":
        state["params"] = {name: tensor[:, :3] for name, tensor in state["params"].items()}
        message = r"checkpoint\.pt stores parameter '\w+' of shape \(15, 3\), but this fit has \(15, 5\)"
    else:
        key = damage.removeprefix("drop_")
        del state[key]
        message = rf"checkpoint\.pt lacks the entries \['{key}'\] of a dimalign checkpoint"
    torch.save(state, path)

    with pytest.raises(ValueError, match=message):
        VICE(n_dims=5, max_epochs=2, checkpoint_dir=str(tmp_path), resume=True).fit(triplets, n_objects=15)


def test_checkpoint_of_other_object_count(tmp_path):
    triplets = random_triplets(15, 200)
    VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(triplets, n_objects=15)

    with pytest.raises(ValueError, match=r"has 15 objects, this fit has 16: resume with the object count"):
        VICE(n_dims=5, max_epochs=2, checkpoint_dir=str(tmp_path), resume=True).fit(triplets, n_objects=16)

def test_interrupted_refit_leaves_the_model_unfitted(monkeypatch):
    """A refit stopped mid-training must not keep the old embedding beside the new settings."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    model = VICE(n_dims=3, max_epochs=1).fit(random_triplets(20, 200), n_objects=20)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(VICE, "_train_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        model.fit(random_triplets(30, 200), n_objects=30)
    assert not hasattr(model, "n_objects_")
    with pytest.raises(NotFittedError):
        check_is_fitted(model)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"l1": float("nan")}, "l1 must be a finite number"),
     ({"l1": float("inf")}, "l1 must be a finite number"),
     ({"prune_threshold": float("nan")}, "prune_threshold must be a finite number"),
     ({"init_std": -0.1}, r"init_std must lie in \[0, inf\), got -0.1")],
)
def test_invalid_spose_settings_fail_before_training(settings, message):
    with pytest.raises(ValueError, match=message):
        SPoSE(max_epochs=1, **settings).fit(random_triplets(15, 100), n_objects=15)


@pytest.mark.parametrize(
    ("n_objects", "message"),
    [(20.0, "n_objects must be an integer, got 20.0"),
     ("20", "n_objects must be an integer, got '20'"),
     (-5, "n_objects must be at least 1, got -5")],
)
def test_object_count_must_be_a_positive_integer(n_objects, message):
    with pytest.raises(ValueError, match=message):
        VICE(n_dims=3, max_epochs=1).fit(random_triplets(20, 100), n_objects=n_objects)


def test_whole_floats_are_triplets_and_fractions_are_not():
    """np.loadtxt returns floats: whole values load like integers everywhere."""
    triplets = random_triplets(15, 200)
    model = SPoSE(n_dims=3, max_epochs=2).fit(triplets.astype(float), n_objects=15)
    assert model.score(triplets.astype(float)) == model.score(triplets)
    with pytest.raises(ValueError, match=r"scored triplets, row 0, column 0: value 0.5 is not an integer"):
        model.score(np.array([[0.5, 1, 2]]))


def tensorboard_losses(directory):
    """Return (step, loss) of every loss event that TensorBoard shows for ``directory``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars("loss")]


def test_resume_logs_each_epoch_once_to_tensorboard(tmp_path):
    triplets = random_triplets(15, 200)
    settings = {"n_dims": 5, "checkpoint_dir": str(tmp_path), "tensorboard": True}
    VICE(max_epochs=2, **settings).fit(triplets, n_objects=15)
    checkpoint_of_epoch_2 = (tmp_path / CHECKPOINT_NAME).read_bytes()
    VICE(max_epochs=3, resume=True, **settings).fit(triplets, n_objects=15)
    # A run killed after logging epoch 3 and before its checkpoint.
    (tmp_path / CHECKPOINT_NAME).write_bytes(checkpoint_of_epoch_2)

    resumed = VICE(max_epochs=4, resume=True, **settings).fit(triplets, n_objects=15)

    logged = tensorboard_losses(tmp_path / "tensorboard")
    assert [step for step, _ in logged] == [1, 2, 3, 4]
    expected = [np.float32(row["loss"]) for row in resumed.history_]
    assert [np.float32(loss) for _, loss in logged] == expected


def test_tensorboard_missing_is_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    model = VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(tmp_path), tensorboard=True)
    with pytest.raises(RuntimeError, match="needs the tensorboard package, which is not installed"):
        model.fit(random_triplets(15, 200), n_objects=15)


@pytest.mark.parametrize(
    ("first_val", "resumed_val", "message"),
    [
        ("a", "b", "was validated on other triplets than this fit"),
        ("a", None, "was fitted with validation triplets, but this fit has none"),
        (None, "a", "was fitted without validation triplets, but this fit has some"),
    ],
)
def test_resume_on_other_validation_rejected(tmp_path, first_val, resumed_val, message):
    triplets = random_triplets(15, 200)
    validation = {"a": random_triplets(15, 40, seed=1), "b": random_triplets(15, 40, seed=2), None: None}
    VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(
        triplets, validation[first_val], n_objects=15
    )
    resumed = VICE(n_dims=5, max_epochs=2, checkpoint_dir=str(tmp_path), resume=True)
    with pytest.raises(ValueError, match=message):
        resumed.fit(triplets, validation[resumed_val], n_objects=15)


def test_resume_with_same_validation_accepted(tmp_path):
    triplets, validation = random_triplets(15, 200), random_triplets(15, 40, seed=1)
    VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(triplets, validation, n_objects=15)
    resumed = VICE(n_dims=5, max_epochs=2, checkpoint_dir=str(tmp_path), resume=True)
    resumed.fit(triplets, validation, n_objects=15)
    assert [("val_accuracy" in row) for row in resumed.history_] == [True, True]


def test_resume_without_checkpoint_logs_new_fit(tmp_path, caplog):
    model = VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(tmp_path / "run"), resume=True)
    with caplog.at_level("INFO", logger="dimalign"):
        model.fit(random_triplets(15, 200), n_objects=15)
    assert f"no checkpoint in {tmp_path / 'run'} to resume from: starting a new fit" in caplog.text


@pytest.mark.parametrize(("max_epochs", "words"), [(1, "after 1 epoch ("), (2, "after 2 epochs (")])
def test_pruning_log_counts_epochs(caplog, max_epochs, words):
    with caplog.at_level("INFO", logger="dimalign"):
        VICE(n_dims=5, max_epochs=max_epochs).fit(random_triplets(15, 200), n_objects=15)
    assert f"dimensions {words}reached max_epochs)" in caplog.text


def test_checkpoint_write_on_full_disk_names_file(tmp_path):
    """A file size limit fails writes with EFBIG, as a full disk fails them with ENOSPC."""
    import resource
    import signal
    import subprocess
    import sys

    def limit_file_size():
        # Without SIGXFSZ ignored, the write would kill the process instead of failing.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))

    script = (
        "import sys, torch\n"
        "from dimalign.embedding.checkpoint import save_checkpoint\n"
        "try:\n"
        "    save_checkpoint({'params': {'loc': torch.zeros(100, 100)}}, sys.argv[1])\n"
        "except OSError as error:\n"
        "    print(error)\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
        preexec_fn=limit_file_size, timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == f"[Errno 27] File too large: '{tmp_path / CHECKPOINT_NAME}'"
    assert list(tmp_path.iterdir()) == []


def test_resume_of_converged_run_warns(tmp_path):
    triplets = random_triplets(15, 200)
    settings = {"n_dims": 5, "min_objects": 0, "stability_epochs": 2, "checkpoint_dir": str(tmp_path)}
    first = VICE(max_epochs=10, **settings).fit(triplets, n_objects=15)
    assert first.converged_
    with pytest.warns(UserWarning, match="has converged: its kept dimensions did not change for 2 epochs"):
        resumed = VICE(max_epochs=20, resume=True, **settings).fit(triplets, n_objects=15)
    assert resumed.n_epochs_ == first.n_epochs_


def test_checkpoint_of_other_device_warning_names_caller(tmp_path):
    """The warning about a new random stream points at the user's fit, not into the library."""
    triplets = random_triplets(15, 200)
    VICE(n_dims=4, max_epochs=1, checkpoint_dir=str(tmp_path)).fit(triplets, n_objects=15)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    state["generator_device"] = "cuda"
    torch.save(state, tmp_path / CHECKPOINT_NAME)

    resumed = VICE(n_dims=4, max_epochs=2, checkpoint_dir=str(tmp_path), resume=True)
    with pytest.warns(UserWarning, match="checkpoint RNG state is from cuda, this run is on cpu") as caught:
        resumed.fit(triplets, n_objects=15)
    assert [warning.filename for warning in caught] == [__file__]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [({"checkpoint_dir": "PATH"}, {"checkpoint_dir": "PATH"}),
     ({"n_dims": np.int64(4), "lr": np.float32(0.5)}, {"n_dims": 4, "lr": 0.5})],
)
def test_save_writes_path_and_numpy_settings(tmp_path, settings, expected):
    """A notebook passes pathlib paths and numpy scalars; config.toml stores them as plain values."""
    import tomllib
    from pathlib import Path

    settings = {key: (Path(tmp_path / "checkpoints") if value == "PATH" else value) for key, value in settings.items()}
    expected = {key: (str(tmp_path / "checkpoints") if value == "PATH" else value) for key, value in expected.items()}
    model = VICE(**{"n_dims": 4, "max_epochs": 1, **settings}).fit(random_triplets(12, 100), n_objects=12)
    model.save(tmp_path / "run")
    stored = tomllib.loads((tmp_path / "run" / "config.toml").read_text())["settings"]
    for key, value in expected.items():
        assert stored[key] == value, key


# -- memory estimate ------------------------------------------------------------


def test_fit_memory_estimate_counts_adam_state():
    from dimalign.embedding.base import estimate_fit_memory

    # Parameters, gradients and Adam's two moments: 4 copies of each tensor.
    assert estimate_fit_memory(1854, 100, 2, torch.float32) == 4 * 2 * 1854 * 100 * 4
    assert estimate_fit_memory(1854, 100, 1, torch.float64) == 4 * 1 * 1854 * 100 * 8


def test_available_memory_of_cpu_is_positive():
    from dimalign.device import available_memory

    available = available_memory(torch.device("cpu"))
    assert available is None or available > 0


def test_available_memory_of_cuda_counts_cached_blocks(monkeypatch):
    """Memory that torch's caching allocator keeps reserved but unused, such as after an earlier fit, is reusable."""
    from dimalign.device import available_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 10 * 2**30)

    assert available_memory(torch.device("cuda", 0)) == 21 * 2**30


@pytest.mark.parametrize(("estimator", "tensors"), [(VICE, 2), (SPoSE, 1)])
def test_fit_too_large_for_memory_fails_first(monkeypatch, no_parameter_allocation, estimator, tensors):
    from dimalign.embedding import base

    monkeypatch.setattr(base, "available_memory", lambda device: 2 * 2**30)
    model = estimator(n_dims=100_000_000)

    with pytest.raises(ValueError) as caught:
        model.fit(random_triplets(12, 50), n_objects=12)

    message = str(caught.value)
    expected = 4 * tensors * 12 * 100_000_000 * 4 / 1e9
    assert f"n_dims=100000000 needs at least {expected:.1f} GB" in message
    assert "but 2.1 GB of memory is available" in message
    assert "(CLI: --n-dims)" in message


def test_fit_within_memory_runs(monkeypatch):
    from dimalign.embedding import base

    monkeypatch.setattr(base, "available_memory", lambda device: 2 * 2**30)
    VICE(n_dims=4, max_epochs=1).fit(random_triplets(12, 50), n_objects=12)


def test_busy_checkpoint_dir_rejected(tmp_path):
    """A second process that fits into the checkpoint_dir of a running fit fails and writes nothing."""
    import subprocess
    import sys

    triplets = random_triplets(15, 200)
    np.save(tmp_path / "triplets.npy", triplets)
    folder = tmp_path / "checkpoints"
    script = (
        "import logging, sys, numpy as np\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "from dimalign.embedding import VICE\n"
        "VICE(n_dims=5, max_epochs=int(sys.argv[3]), stability_epochs=10**6, checkpoint_every=1,\n"
        "     checkpoint_dir=sys.argv[2], resume=True, verbose=True).fit(np.load(sys.argv[1]), n_objects=15)\n"
    )
    arguments = [sys.executable, "-c", script, str(tmp_path / "triplets.npy"), str(folder)]
    running = subprocess.Popen(arguments + [str(10**6)], stdout=subprocess.PIPE, text=True)
    try:
        # The log line of epoch 2 comes after the lock is taken and the first checkpoint is written.
        for line in running.stdout:
            if line.startswith("epoch 2:"):
                break
        second = subprocess.run(arguments + ["3"], capture_output=True, text=True, timeout=300)
        assert running.poll() is None
    finally:
        running.kill()
        running.wait(timeout=60)
        running.stdout.close()

    assert second.returncode == 1
    last_line = second.stderr.strip().splitlines()[-1]
    assert last_line == (
        f"RuntimeError: {folder} is the checkpoint_dir of another fit that is running, which holds "
        f"{folder / '.checkpoint.lock'}: give each fit its own checkpoint_dir, or wait for that fit to "
        "finish and pass resume=True to continue it"
    )
    # The killed fit left its checkpoint, and its lock no longer blocks a resume.
    with pytest.warns(UserWarning, match="nothing is trained"):
        resumed = VICE(n_dims=5, max_epochs=1, checkpoint_dir=str(folder), resume=True).fit(triplets, n_objects=15)
    assert resumed.n_epochs_ >= 1


def test_cuda_without_gpu_creates_no_checkpoint_dir(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    folder = tmp_path / "new" / "checkpoints"
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        VICE(n_dims=2, max_epochs=1, device="cuda", checkpoint_dir=str(folder)).fit(
            random_triplets(5, 10), n_objects=5
        )
    assert list(tmp_path.iterdir()) == []


def test_interrupt_before_checkpoint_removes_new_folder(tmp_path, monkeypatch):
    """A fit stopped before its first checkpoint removes the checkpoint_dir it created, and its lock."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(VICE, "_train_epoch", interrupt)
    folder = tmp_path / "new" / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        VICE(n_dims=2, max_epochs=1, checkpoint_dir=str(folder)).fit(random_triplets(15, 20), n_objects=15)
    assert list(tmp_path.iterdir()) == []

    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(KeyboardInterrupt):
        VICE(n_dims=2, max_epochs=1, checkpoint_dir=str(existing)).fit(random_triplets(15, 20), n_objects=15)
    assert list(tmp_path.iterdir()) == [existing]
    assert list(existing.iterdir()) == []


def test_checkpoint_dir_file_rejected(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with pytest.raises(NotADirectoryError) as caught:
        VICE(n_dims=2, max_epochs=1, checkpoint_dir=str(path)).fit(random_triplets(15, 20), n_objects=15)
    assert str(caught.value) == (
        f"checkpoint_dir {path} is a file, but a fit writes its checkpoint.pt into a folder of that "
        "name: pass the path of a folder, or None for a fit without checkpoints"
    )
    assert path.read_text() == "mine"
