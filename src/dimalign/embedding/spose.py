"""SPoSE: sparse positive similarity embedding (Zheng et al., 2019; Hebart et al., 2020).

The deterministic baseline of VICE: one non-negative matrix W, fitted by Adam
to the loss

    mean triplet NLL  +  l1 * sum(|W|) / n_objects,

with W clamped to >= 0 after every step (projected gradient descent), and
pruned afterwards by a weight threshold.
"""

from __future__ import annotations

import numpy as np
import torch

from dimalign.embedding.base import TripletEmbedding, check_real
from dimalign.embedding.likelihood import choice_log_probabilities, nll_from_similarities, pair_similarities
from dimalign.embedding.pruning import spose_kept_dimensions
from dimalign.io.runs import EmbeddingResult


class SPoSE(TripletEmbedding):
    """Sparse positive embedding of objects from odd-one-out triplets.

    Args:
        n_dims (int): Initial number of dimensions.
        n_objects (int | None): Number of objects; may also be given to ``fit``.
        l1 (float): Weight of the L1 penalty, divided by ``n_objects`` as in
            the SPoSE reference code.
        lr (float): Adam learning rate.
        batch_size (int): Triplets per optimiser step.
        max_epochs (int): Upper bound on epochs.
        stability_epochs (int): Stop when the number of kept dimensions has
            not changed for this many epochs.
        prune_threshold (float): A weight above this counts towards keeping
            its dimension.
        min_objects (int): A dimension is kept when more than this many
            objects have a weight above ``prune_threshold``.
        init_mean (float): Mean of the initial weights.
        init_std (float): Standard deviation of the initial weights.
        random_state (int): Seed of every random draw of the fit.
        device (str): ``"cpu"``, ``"cuda"`` or ``"auto"``.
        dtype (str): ``"float32"`` or ``"float64"``.
        checkpoint_dir (str | None): Directory for ``checkpoint.pt``, used by
            one fit at a time. ``GridSearchCV`` and ``cross_val_score`` fit
            copies of one estimator, so they need None.
        checkpoint_every (int): Epochs between checkpoints.
        resume (bool): Continue from the checkpoint in ``checkpoint_dir``.
        eval_every (int): Epochs between evaluations on the validation set.
        tensorboard (bool): Write TensorBoard event files into ``checkpoint_dir``.
        verbose (bool): Log every epoch at INFO level and show a progress bar
            (hidden when the environment variable ``TQDM_DISABLE`` is set).

    Attributes:
        embedding_ (np.ndarray): Kept columns of W, sorted by decreasing total
            weight, shape ``(n_objects, n_dims_)``.
        kept_dims_ (np.ndarray): Columns of ``weights_`` kept, in that order.
        weights_ (np.ndarray): The unpruned W, ``(n_objects, n_dims)``.
        n_dims_ (int): Number of kept dimensions.
        history_ (list[dict]): Per-epoch loss, accuracy and kept dimensions.
        n_epochs_ (int): Epochs trained.
        converged_ (bool): Whether the kept dimensions were stable before
            ``max_epochs``.
        n_objects_ (int): Number of objects of the fit.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> triplets = np.array([rng.choice(12, 3, replace=False) for _ in range(300)])
        >>> model = SPoSE(n_dims=5, max_epochs=2, random_state=0).fit(triplets, n_objects=12)
        >>> model.weights_.shape, bool((model.weights_ >= 0).all())
        ((12, 5), True)
    """

    _estimator_name = "spose"

    def __init__(
        self,
        n_dims: int = 100,
        n_objects: int | None = None,
        *,
        l1: float = 0.008,
        lr: float = 0.001,
        batch_size: int = 256,
        max_epochs: int = 500,
        stability_epochs: int = 500,
        prune_threshold: float = 0.1,
        min_objects: int = 5,
        init_mean: float = 0.1,
        init_std: float = 0.01,
        random_state: int = 0,
        device: str = "cpu",
        dtype: str = "float32",
        checkpoint_dir: str | None = None,
        checkpoint_every: int = 50,
        resume: bool = False,
        eval_every: int = 1,
        tensorboard: bool = False,
        verbose: bool = False,
    ) -> None:
        self.n_dims = n_dims
        self.n_objects = n_objects
        self.l1 = l1
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.stability_epochs = stability_epochs
        self.prune_threshold = prune_threshold
        self.min_objects = min_objects
        self.init_mean = init_mean
        self.init_std = init_std
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.eval_every = eval_every
        self.tensorboard = tensorboard
        self.verbose = verbose

    def _check_settings(self) -> None:
        super()._check_settings()
        check_real("l1", self.l1, 0)
        check_real("prune_threshold", self.prune_threshold, 0)
        check_real("init_mean", self.init_mean)
        check_real("init_std", self.init_std, 0)

    def _init_parameters(self, n_objects, generator):
        # Drawn in float32 whatever torch's default dtype is, so that a seed gives the
        # same start in every session. A float64 fit converts the draws.
        weights = torch.randn(
            n_objects, self.n_dims, generator=generator, device=generator.device, dtype=torch.float32
        )
        return {"weights": (weights * self.init_std + self.init_mean).clamp_(min=0.0)}

    def _batch_loss(self, params, batch, n_train, generator):
        weights = params["weights"]
        logits = pair_similarities(weights, batch)
        nll = nll_from_similarities(logits).mean()
        penalty = weights.abs().sum() / weights.shape[0]
        return nll + self.l1 * penalty, {"nll": nll.detach()}, logits

    def _complexity_weight(self) -> float:
        return self.l1

    @torch.no_grad()
    def _complexity(self, params) -> float:
        weights = params["weights"]
        return float(weights.abs().sum()) / weights.shape[0]

    @torch.no_grad()
    def _after_step(self, params) -> None:
        params["weights"].clamp_(min=0.0)

    def _kept(self, params) -> np.ndarray:
        weights = params["weights"].detach().cpu().numpy()
        return spose_kept_dimensions(weights, self.prune_threshold, self.min_objects)

    def _predict_log_proba(self, params, kept, triplets):
        return choice_log_probabilities(params["weights"][:, kept], triplets)

    def _set_fitted(self, params) -> None:
        weights = params["weights"].detach().cpu().numpy().astype(np.float64)
        kept = spose_kept_dimensions(weights, self.prune_threshold, self.min_objects)
        order = np.argsort(-weights[:, kept].sum(axis=0), kind="stable")
        self._set_weights(weights, kept[order])

    def _set_weights(self, weights: np.ndarray, kept_dims: np.ndarray) -> None:
        """Set the fitted arrays from the float64 weights and the kept columns, strongest first."""
        self.kept_dims_ = kept_dims
        self.embedding_ = weights[:, kept_dims]
        self.weights_ = weights
        self.n_dims_ = int(kept_dims.size)

    def _result(self) -> EmbeddingResult:
        return EmbeddingResult(embedding=self.embedding_, kept_dims=self.kept_dims_, loc=self.weights_)

    # save stores weights_ as "loc", the name VICE uses for its unpruned parameters.
    _saved_arrays = ("embedding", "kept_dims", "loc")

    def _set_loaded(self, arrays: dict[str, np.ndarray]) -> None:
        # embedding_ is derived as fit derives it, because older builds
        # rounded the embedding in embedding.npz to float32.
        self._set_weights(arrays["loc"].astype(np.float64), arrays["kept_dims"].astype(np.int64))

    def _saved_parameters(self, saved) -> dict[str, np.ndarray]:
        # weights_ is the float64 copy of the fit's weights, so casting it
        # back to the fit's float type gives them exactly.
        weights = saved.arrays["loc"]
        negative = np.argwhere(weights < 0)
        if negative.size:
            # _after_step clamps the weights at 0 after every step of a fit.
            row, column = np.unravel_index(np.argmin(weights), weights.shape)
            raise ValueError(
                f"{saved.embedding_path} stores 'loc' with {len(negative)} negative weights, the lowest "
                f"{weights[row, column]:.6g} at row {row}, column {column}, but SPoSE weights are "
                "non-negative, so the file is damaged: save the estimator again"
            )
        if self.dtype == "float32" and not np.array_equal(weights.astype(np.float32), weights):
            # A float32 fit stores its weights as float64 copies of float32 numbers.
            raise ValueError(
                f"{saved.embedding_path} stores 'loc' weights that float32 cannot hold, but the dtype "
                f"setting in {saved.config_path} is 'float32', so the files do not belong together: set "
                'dtype = "float64" in [settings], or save the estimator again'
            )
        return {"weights": weights}
