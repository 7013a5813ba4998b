"""VICE: variational interpretable concept embeddings (Muttenthaler et al., 2022).

VICE learns a mean-field Gaussian posterior q(W) = prod N(w_od; mu_od, sigma_od^2)
over an ``n_objects x n_dims`` matrix. The embedding used in the likelihood
is ReLU(W), so weights are non-negative. The loss of a batch is

    mean triplet NLL  +  beta * (log q(W) - log p(W)) / n_train,

with W = mu + sigma * eps one reparameterised sample of the whole matrix
(a one-sample estimate of the KL divergence between q and the prior, spread
over the training set), and p the spike-and-slab prior of
:mod:`dimalign.embedding.priors`. Dimensions are pruned with the
Benjamini-Hochberg rule of :mod:`dimalign.embedding.pruning`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dimalign.embedding.base import TripletEmbedding, check_integer, check_real
from dimalign.embedding.likelihood import nll_from_similarities, pair_similarities
from dimalign.embedding.priors import LOG_SQRT_2PI, PRIORS, spike_slab_log_prob
from dimalign.embedding.pruning import vice_kept_dimensions
from dimalign.io.runs import EmbeddingResult


class VICE(TripletEmbedding):
    """Sparse, non-negative, variational embedding of objects from odd-one-out triplets.

    Args:
        n_dims (int): Initial number of dimensions before pruning.
        n_objects (int | None): Number of objects; may also be given to ``fit``.
        pi (float): Prior weight of the spike component.
        spike (float): Standard deviation of the spike.
        slab (float): Standard deviation of the slab.
        prior (str): ``"mixture"`` (the log of the spike-and-slab mixture) or
            ``"authors"`` (the pi-weighted sum of the two log densities, as
            the published code of Mahner et al. computes it). The latter acts
            like a single Gaussian of sd about 0.35; see
            :func:`dimalign.embedding.priors.spike_slab_log_prob`.
        beta (float): Weight of the complexity (KL) term.
        lr (float): Adam learning rate.
        batch_size (int): Triplets per optimiser step.
        max_epochs (int): Upper bound on epochs.
        stability_epochs (int): Stop when the number of kept dimensions has
            not changed for this many epochs.
        mc_samples (int): Monte Carlo samples of W averaged in the posterior
            predictive used for evaluation.
        alpha (float): False discovery rate of the pruning rule.
        min_objects (int): A dimension is kept when more than this many
            objects have a significantly positive weight.
        init_scale (float | None): Standard deviation of the initial means;
            None uses He initialisation over ``n_dims`` (sqrt(2 / n_dims)), as
            the VICE reference code does.
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
        embedding_ (np.ndarray): ReLU of the posterior means of the kept
            dimensions, columns sorted by decreasing total weight,
            shape ``(n_objects, n_dims_)``.
        scales_ (np.ndarray): Posterior standard deviations of those weights.
        kept_dims_ (np.ndarray): Columns of ``loc_`` kept, in the order of
            ``embedding_``.
        loc_ (np.ndarray): Unpruned posterior means, ``(n_objects, n_dims)``.
        scale_ (np.ndarray): Unpruned posterior standard deviations.
        n_dims_ (int): Number of kept dimensions.
        history_ (list[dict]): Per-epoch loss, accuracy and kept dimensions.
        n_epochs_ (int): Epochs trained.
        converged_ (bool): Whether the kept dimensions were stable before
            ``max_epochs``.
        n_objects_ (int): Number of objects of the fit.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> triplets = np.array([rng.choice(12, 3, replace=False) for _ in range(300)])
        >>> model = VICE(n_dims=5, max_epochs=2, random_state=0).fit(triplets, n_objects=12)
        >>> model.loc_.shape
        (12, 5)
    """

    _estimator_name = "vice"
    _n_parameter_tensors = 2  # loc and log_scale

    def __init__(
        self,
        n_dims: int = 150,
        n_objects: int | None = None,
        *,
        pi: float = 0.5,
        spike: float = 0.25,
        slab: float = 2.0,
        prior: str = "mixture",
        beta: float = 1.0,
        lr: float = 0.001,
        batch_size: int = 256,
        max_epochs: int = 1000,
        stability_epochs: int = 500,
        mc_samples: int = 20,
        alpha: float = 0.05,
        min_objects: int = 5,
        init_scale: float | None = None,
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
        self.pi = pi
        self.spike = spike
        self.slab = slab
        self.prior = prior
        self.beta = beta
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.stability_epochs = stability_epochs
        self.mc_samples = mc_samples
        self.alpha = alpha
        self.min_objects = min_objects
        self.init_scale = init_scale
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
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}: use one of {PRIORS}")
        check_real("pi", self.pi, 0, 1, low_open=True, high_open=True)
        check_real("spike", self.spike, 0, low_open=True)
        check_real("slab", self.slab, 0, low_open=True)
        if not self.spike < self.slab:
            raise ValueError(f"need 0 < spike < slab, got spike={self.spike}, slab={self.slab}")
        check_real("beta", self.beta, 0)
        check_integer("mc_samples", self.mc_samples, 1)
        check_real("alpha", self.alpha, 0, 1, low_open=True, high_open=True)
        if self.init_scale is not None:
            check_real("init_scale", self.init_scale, 0, low_open=True)

    def _init_parameters(self, n_objects: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        scale = self.init_scale if self.init_scale is not None else math.sqrt(2.0 / self.n_dims)
        # Drawn in float32 whatever torch's default dtype is, so that a seed gives the
        # same start in every session. A float64 fit converts the draws.
        loc = torch.randn(
            n_objects, self.n_dims, generator=generator, device=generator.device, dtype=torch.float32
        ) * scale
        # The reference code starts every log sigma at -1 / std(mu): small,
        # nearly deterministic weights that the entropy term then widens.
        log_scale = torch.full_like(loc, -1.0 / float(loc.std()))
        return {"loc": loc, "log_scale": log_scale}

    def _batch_loss(self, params, batch, n_train, generator):
        loc, log_scale = params["loc"], params["log_scale"]
        noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        sample = loc + log_scale.exp() * noise
        logits = pair_similarities(torch.relu(sample), batch)
        nll = nll_from_similarities(logits).mean()
        # log q(W) at the reparameterised sample: (W - mu) / sigma is the noise.
        log_q = -(log_scale.sum() + 0.5 * (noise * noise).sum() + noise.numel() * LOG_SQRT_2PI)
        log_p = spike_slab_log_prob(sample, self.pi, self.spike, self.slab, self.prior).sum()
        complexity = (log_q - log_p) / n_train
        loss = nll + self.beta * complexity
        return loss, {"nll": nll.detach(), "complexity": complexity.detach()}, logits

    def _prior_gradient_factor(self, sample: torch.Tensor) -> torch.Tensor:
        """Return h(W) = -d log p(W) / dW, elementwise.

        For the mixture, log p(w) = log((1 - pi) N(w; 0, slab^2)) + softplus(x)
        with x = log(pi / (1 - pi)) + log(slab / spike) - c w^2 and
        c = (1 / spike^2 - 1 / slab^2) / 2, so
        h(w) = w / slab^2 + 2 c w sigmoid(x). For the authors' variant,
        h(w) = w (pi / spike^2 + (1 - pi) / slab^2).
        """
        if self.prior == "authors":
            return sample * (self.pi / self.spike**2 + (1.0 - self.pi) / self.slab**2)
        curvature = 0.5 * (1.0 / self.spike**2 - 1.0 / self.slab**2)
        offset = math.log(self.pi / (1.0 - self.pi)) + math.log(self.slab / self.spike)
        # In place, in the rounding order of sample * (1/slab^2 + 2c * sigmoid(offset - c*w*w)):
        # one buffer instead of seven halves the time of this step.
        factor = sample.mul(curvature).mul_(sample).neg_().add_(offset).sigmoid_()
        return factor.mul_(2.0 * curvature).add_(1.0 / self.slab**2).mul_(sample)

    def _train_step(self, params, batch, n_train, generator):
        # Gradients in closed form: autograd records about 20 elementwise
        # operations over the whole matrix per step and made an epoch about
        # three times slower. tests/embedding/test_vice.py checks these
        # gradients against autograd on _batch_loss.
        loc, log_scale = params["loc"], params["log_scale"]
        with torch.no_grad():
            noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
            scaled_noise = noise.mul_(log_scale.exp())
            sample = loc + scaled_noise

            # Triplet NLL of the batch and its gradient with respect to W.
            rows = sample[batch]  # (B, 3, D)
            positive = rows > 0
            first, second, third = torch.relu(rows).unbind(1)
            logits = torch.stack(
                ((first * second).sum(-1), (first * third).sum(-1), (second * third).sum(-1)), dim=-1
            )
            log_norm = torch.logsumexp(logits, dim=-1)
            nll = (log_norm - logits[:, 0]).mean()
            weight = torch.exp(logits - log_norm[:, None]) / batch.shape[0]
            weight[:, 0] -= 1.0 / batch.shape[0]
            w_ij, w_ik, w_jk = weight[:, 0:1], weight[:, 1:2], weight[:, 2:3]
            row_grads = torch.stack(
                (w_ij * second + w_ik * third, w_ij * first + w_jk * third, w_ik * first + w_jk * second), dim=1
            ) * positive
            grad_sample = torch.zeros_like(loc)
            grad_sample.index_add_(0, batch.reshape(-1), row_grads.reshape(-1, loc.shape[1]))

            # Complexity: d/dW of -log p(W) is h(W); d log q / d log sigma is -1.
            kl_weight = self.beta / n_train
            grad_sample.add_(self._prior_gradient_factor(sample), alpha=kl_weight)
            loc.grad = grad_sample
            log_scale.grad = scaled_noise.mul_(grad_sample).sub_(kl_weight)
        return nll, logits

    def _complexity_weight(self) -> float:
        return self.beta

    @torch.no_grad()
    def _complexity(self, params) -> float:
        # The same one-sample estimate of (log q - log p) / n_train that the
        # loss adds, drawn from a separate generator so that logging never
        # changes training.
        loc, log_scale = params["loc"], params["log_scale"]
        generator = torch.Generator(device=loc.device).manual_seed(int(self.random_state) + 104729)
        noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        sample = loc + log_scale.exp() * noise
        log_q = -(log_scale + 0.5 * noise * noise + LOG_SQRT_2PI)
        log_p = spike_slab_log_prob(sample, self.pi, self.spike, self.slab, self.prior)
        return float((log_q - log_p).sum()) / self._n_train

    def _kept(self, params) -> np.ndarray:
        loc = params["loc"].detach().cpu().numpy()
        scale = params["log_scale"].detach().exp().cpu().numpy()
        return vice_kept_dimensions(loc, scale, alpha=self.alpha, min_objects=self.min_objects)

    def _predict_log_proba(self, params, kept, triplets):
        # Posterior predictive: average the choice probabilities over samples
        # of the kept dimensions, drawn from a generator used only here. The
        # columns go in index order, so that the same fit scores the same
        # whether the kept dimensions come sorted by weight (score) or not.
        kept = torch.sort(kept).values
        loc = params["loc"][:, kept]
        scale = params["log_scale"][:, kept].exp()
        generator = torch.Generator(device=loc.device).manual_seed(int(self.random_state) + 7919)
        # log of the mean probability, summed in log space so that a probability
        # that underflows in one sample does not make the average -inf.
        log_sum = torch.full((triplets.shape[0], 3), -math.inf, dtype=loc.dtype, device=loc.device)
        for _ in range(self.mc_samples):
            noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
            sample = torch.relu(loc + scale * noise)
            log_sum = torch.logaddexp(log_sum, torch.log_softmax(pair_similarities(sample, triplets), dim=-1))
        return log_sum - math.log(self.mc_samples)

    def _set_fitted(self, params) -> None:
        loc = params["loc"].detach().cpu().numpy().astype(np.float64)
        scale = params["log_scale"].detach().exp().cpu().numpy().astype(np.float64)
        kept = vice_kept_dimensions(loc, scale, alpha=self.alpha, min_objects=self.min_objects)
        order = np.argsort(-np.maximum(loc[:, kept], 0.0).sum(axis=0), kind="stable")
        self._set_posterior(loc, scale, kept[order])

    def _set_posterior(self, loc: np.ndarray, scale: np.ndarray, kept_dims: np.ndarray) -> None:
        """Set the fitted arrays from the float64 posterior and the kept columns, strongest first."""
        self.kept_dims_ = kept_dims
        self.embedding_ = np.maximum(loc[:, kept_dims], 0.0)
        self.scales_ = scale[:, kept_dims]
        self.loc_ = loc
        self.scale_ = scale
        self.n_dims_ = int(kept_dims.size)

    def _result(self) -> EmbeddingResult:
        # The posterior predictive takes exp of log_scale in the fit's float
        # type, and the log of scale_ need not give it back exactly, so
        # log_scale is saved too. An estimator loaded from an older folder
        # has none to save.
        log_scale = None if self._params is None else self._params["log_scale"].cpu().numpy()
        return EmbeddingResult(
            embedding=self.embedding_, scales=self.scales_, kept_dims=self.kept_dims_,
            loc=self.loc_, scale=self.scale_, log_scale=log_scale,
        )

    _saved_arrays = ("embedding", "kept_dims", "loc", "scale")

    def _set_loaded(self, arrays: dict[str, np.ndarray]) -> None:
        # embedding_ is derived as fit derives it, because older builds
        # rounded the embedding in embedding.npz to float32.
        self._set_posterior(
            arrays["loc"].astype(np.float64), arrays["scale"].astype(np.float64),
            arrays["kept_dims"].astype(np.int64),
        )

    def _saved_parameters(self, saved) -> dict[str, np.ndarray] | None:
        # Folders saved before log_scale was stored load without parameters.
        if "log_scale" not in saved.arrays:
            return None
        log_scale = saved.arrays["log_scale"]
        if log_scale.dtype != np.dtype(self.dtype):
            # Predicting in another float type would give other probabilities without an error.
            raise ValueError(
                f"{saved.embedding_path} stores 'log_scale' in {log_scale.dtype}, but the dtype setting in "
                f"{saved.config_path} is {self.dtype!r}, so the files do not belong together: set "
                f'dtype = "{log_scale.dtype}" in [settings], or save the estimator again'
            )
        # fit derives scale_ as exp(log_scale) on its device. The tolerance,
        # about 8 units in the last place of float32, allows a GPU to round
        # exp differently from the CPU. NOTE: not yet checked with a GPU fit.
        scale = torch.as_tensor(log_scale).exp().numpy().astype(np.float64)
        if not np.allclose(saved.arrays["scale"], scale, rtol=1e-6, atol=0.0):
            raise ValueError(
                f"{saved.embedding_path} stores a 'scale' that is not exp('log_scale'), so the file is "
                "damaged: save the estimator again"
            )
        return {"loc": saved.arrays["loc"], "log_scale": log_scale}

    def _missing_parameters_message(self, method: str) -> str:
        return (
            f"{self._params_source} has no 'log_scale', the exact posterior scales that {method} "
            "samples from, because an older dimalign saved it: fit again and save, or score the "
            "posterior means with dimalign.analysis.similarity.odd_one_out_accuracy(model.embedding_, triplets)"
        )
