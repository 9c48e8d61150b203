r"""Custom distributions for vaelab: 8-bit pixel likelihoods and log-space relaxed categoricals.

Pixel likelihoods
-----------------
Both pixel likelihoods live on the same support: the grid of ``num_levels`` points

.. math:: x_k = k \, \Delta, \qquad \Delta = \frac{1}{L - 1}, \qquad k = 0, \dots, L - 1,

i.e. 8-bit data given as ``level / 255`` (``L = 256``). Their ``log_prob`` is a log *probability
mass* on that grid, so bits/dim of :class:`DiscretizedLogistic` and :class:`PixelCategorical` are
directly comparable, and the likelihood registry can treat both uniformly on [0, 1]-scaled data.

Relaxed categorical latents
---------------------------
:class:`ExpRelaxedCategorical` is the log-space Concrete / Gumbel-softmax distribution: its samples
are the *logs* of points on the simplex and stay finite at every temperature (the simplex-space
``RelaxedOneHotCategorical`` underflows to exact zeros at low temperature). :func:`soft` and
:func:`straight_through` map a log-space sample to the soft and to the straight-through hard
one-hot sample; :func:`kl_categorical` is the exact KL between the unrelaxed categoricals (the
Jang et al. convention).

Count likelihoods
-----------------
:func:`count_distribution` builds the per-feature Poisson, negative binomial (mean μ, inverse
dispersion θ) and zero-inflated negative binomial of the count likelihoods from a log-mean,
reusing Pyro's own classes (``Poisson``, ``NegativeBinomial``, ``ZeroInflatedNegativeBinomial``).
:class:`LibraryScaledCounts` is the same family whose means are proportions times the observed
total of the row scored (single-cell VAEs with an observed library size [6]).

Categorical latents
-------------------
:class:`CategoricalProduct` is N independent one-hot categoricals of K classes as one event of
shape ``(N, K)`` (the hard latent of ``model.latent = "categorical"``), enumerating its joint
support of :math:`K^N` states in the order of :func:`joint_states`; :func:`logits_of` reads the
logits of any categorical-type distribution through its ``to_event`` / mask wrappers.

References

1. T. Salimans, A. Karpathy, X. Chen, D. P. Kingma, *PixelCNN++: Improving the PixelCNN with
   Discretized Logistic Mixture Likelihood and Other Modifications*, ICLR 2017.
2. D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling, *Improved
   Variational Inference with Inverse Autoregressive Flow*, NeurIPS 2016.
3. C. J. Maddison, A. Mnih, Y. W. Teh, *The Concrete Distribution: A Continuous Relaxation of
   Discrete Random Variables*, ICLR 2017.
4. E. Jang, S. Gu, B. Poole, *Categorical Reparameterization with Gumbel-Softmax*, ICLR 2017.
5. Y. Bengio, N. Léonard, A. Courville, *Estimating or Propagating Gradients Through Stochastic
   Neurons for Conditional Computation*, arXiv:1308.3432, 2013.
6. R. Lopez, J. Regier, M. B. Cole, M. I. Jordan, N. Yosef, *Deep generative modeling for
   single-cell transcriptomics*, Nature Methods 15, 2018 (scVI).
"""

from __future__ import annotations

import math
from numbers import Number

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution, TorchDistributionMixin
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.relaxed_categorical import (
    ExpRelaxedCategorical as _TorchExpRelaxedCategorical,
)
from torch.distributions.utils import broadcast_all, clamp_probs, lazy_property

__all__ = [
    "BernoulliImage",
    "CategoricalProduct",
    "DiscretizedLogistic",
    "COUNT_FAMILIES",
    "ExpRelaxedCategorical",
    "LibraryScaledCounts",
    "MAX_LOG_RATE",
    "PixelCategorical",
    "UnitGrid",
    "count_distribution",
    "joint_states",
    "kl_categorical",
    "logits_of",
    "soft",
    "straight_through",
]


# --------------------------------------------------------------------------------------------
# Support of the pixel likelihoods
# --------------------------------------------------------------------------------------------


class UnitGrid(constraints.Constraint):
    r"""Constrain to the grid :math:`\{k / (L - 1) : k = 0, \dots, L - 1\}` in [0, 1].

    A value passes when ``value * (L - 1)`` lies in ``[0, L - 1]`` and is within ``atol`` (in units
    of levels, i.e. a fraction of the bin width) of an integer. The tolerance absorbs the rounding
    of ``level / 255`` in float32 (about ``3e-5`` levels).

    :param int num_levels: number of grid points ``L`` (256 for 8-bit data).
    :param float atol: tolerance in units of one level.
    """

    is_discrete = True
    event_dim = 0

    def __init__(self, num_levels: int, atol: float = 1e-3):
        self.num_levels = int(num_levels)
        self.atol = float(atol)
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        scaled = value * (self.num_levels - 1)  # in units of levels
        on_grid = (scaled - scaled.round()).abs() <= self.atol
        in_range = (scaled >= -self.atol) & (scaled <= self.num_levels - 1 + self.atol)
        return on_grid & in_range

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_levels={self.num_levels})"


def _check_num_levels(num_levels: int) -> int:
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
    return num_levels


def _log1mexp(x: Tensor) -> Tensor:
    r"""Stable :math:`\log(1 - e^{-x})` for :math:`x > 0` (Mächler 2012), with each branch fed
    only the inputs it is selected for, so neither yields an inf/NaN gradient."""
    small = x < math.log(2.0)
    x_small = torch.where(small, x, torch.full_like(x, math.log(2.0)))
    x_large = torch.where(small, torch.full_like(x, math.log(2.0)), x)
    return torch.where(small, torch.log(-torch.expm1(-x_small)), torch.log1p(-torch.exp(-x_large)))


# --------------------------------------------------------------------------------------------
# Discretized logistic
# --------------------------------------------------------------------------------------------


class DiscretizedLogistic(TorchDistribution):
    r"""Logistic distribution discretized onto the grid :math:`x_k = k \Delta`, :math:`\Delta =
    1/(L-1)`, with the edge bins of PixelCNN++ [1, 2].

    Level :math:`k` owns the bin :math:`[x_k - \Delta/2,\ x_k + \Delta/2]` of a continuous
    :math:`\mathrm{Logistic}(\mu, s)` variable :math:`Y`; the two edge levels also take the tails,
    so the :math:`L` probabilities sum to one exactly:

    .. math::

        P(k) = \begin{cases}
            \sigma\!\left(\frac{x_0 + \Delta/2 - \mu}{s}\right) & k = 0
                \quad (\text{all mass below}),\\
            \sigma\!\left(\frac{x_k + \Delta/2 - \mu}{s}\right)
                - \sigma\!\left(\frac{x_k - \Delta/2 - \mu}{s}\right) & 0 < k < L - 1,\\
            1 - \sigma\!\left(\frac{x_{L-1} - \Delta/2 - \mu}{s}\right) & k = L - 1
                \quad (\text{all mass above}).
        \end{cases}

    This is the PixelCNN++ convention rescaled from [-1, 1] (bin width 2/255) to [0, 1] (bin width
    1/255). The data are pixel levels divided by ``L - 1`` (``level / 255``), *not* the
    ``(level + 0.5) / 256`` centring used with uniform dequantization.

    **Numerics.** With :math:`a = (x_k + \Delta/2 - \mu)/s` and :math:`b = (x_k - \Delta/2 - \mu)/s`
    the interior mass is computed from the exact factorization

    .. math::

        \sigma(a) - \sigma(b) = \sigma(a)\,\sigma(-b)\,\bigl(1 - e^{-(a - b)}\bigr),
        \qquad a - b = \Delta / s,

    i.e. :math:`\log P(k) = \log\sigma(a) + \log\sigma(-b) + \log(1 - e^{-\Delta/s})`, every term
    in log-sigmoid / ``log1mexp`` form. It never underflows (the naive CDF difference is exactly
    zero in float32 once both CDFs round to 1, about 17 scales right of :math:`\mu`) and has no
    cancellation at large scales. It therefore replaces the PixelCNN++ fallback
    :math:`\log p_Y(x_k) + \log\Delta` (density at the bin centre times the bin width, used when
    the CDF difference is below 1e-5): it returns the exact bin mass where that fallback returns
    an approximation, and agrees with it to :math:`O((\Delta/s)^2)` in the tails.

    ``log_prob`` costs :math:`O(1)` per pixel. ``mean`` and ``variance`` are exact sums over the
    :math:`L` levels, accumulated 32 levels at a time; :meth:`log_prob_levels` returns the whole
    ``batch x L`` table.

    Example::

        >>> d = DiscretizedLogistic(torch.zeros(784), torch.full((784,), 0.1)).to_event(1)
        >>> x = torch.randint(0, 256, (8, 784)) / 255.0
        >>> d.log_prob(x).shape
        torch.Size([8])

    :param loc: location :math:`\mu` of the underlying logistic (unconstrained real; the bulk of
        the mass is on the grid when :math:`\mu \in [0, 1]`).
    :param scale: scale :math:`s > 0` of the underlying logistic.
    :param int num_levels: number of levels :math:`L` (256 for 8-bit data).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = False
    has_enumerate_support = True

    def __init__(self, loc, scale, num_levels: int = 256, *, validate_args=None):
        self.num_levels = _check_num_levels(num_levels)
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return UnitGrid(self.num_levels)

    @property
    def bin_width(self) -> float:
        r""":math:`\Delta = 1 / (L - 1)`."""
        return 1.0 / (self.num_levels - 1)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.num_levels = self.num_levels
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        super(DiscretizedLogistic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _level(self, value: Tensor) -> Tensor:
        """Grid index ``k = round(value * (L - 1))`` as a float tensor, clamped to the grid."""
        return (value * (self.num_levels - 1)).round().clamp(0, self.num_levels - 1)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        k = self._level(value)
        half = 0.5 * self.bin_width
        centered = k * self.bin_width - self.loc  # x_k - mu, snapped to the grid
        inv_scale = self.scale.reciprocal()
        a = (centered + half) * inv_scale  # standardized upper bin edge
        b = (centered - half) * inv_scale  # standardized lower bin edge
        log_cdf_upper = F.logsigmoid(a)  # log P(Y <= x_k + Delta/2): level 0
        log_sf_lower = F.logsigmoid(-b)  # log P(Y >= x_k - Delta/2): level L - 1
        log_interior = log_cdf_upper + log_sf_lower + _log1mexp(self.bin_width * inv_scale)
        return torch.where(
            k == 0,
            log_cdf_upper,
            torch.where(k == self.num_levels - 1, log_sf_lower, log_interior),
        )

    def log_prob_levels(self) -> Tensor:
        r"""Log-probabilities of every level, shape ``batch_shape + (L,)``."""
        grid = self.enumerate_support(expand=False)  # (L, 1, ..., 1)
        return self.log_prob(grid).movedim(0, -1)  # batch_shape + (L,)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        grid = torch.arange(self.num_levels, dtype=self.loc.dtype, device=self.loc.device)
        grid = (grid * self.bin_width).reshape((-1,) + (1,) * len(self.batch_shape))
        if expand:
            grid = grid.expand((-1,) + self.batch_shape)
        return grid

    def sample(self, sample_shape=torch.Size()):
        r"""Draw :math:`Y = \mu + s \log\frac{u}{1-u}`, :math:`u \sim U(0, 1)`, and return the grid
        point of its bin, :math:`\mathrm{clamp}(\mathrm{round}(Y (L-1)), 0, L-1) / (L-1)`."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = clamp_probs(torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device))
            y = self.loc + self.scale * (u.log() - torch.log1p(-u))
            return self._level(y) * self.bin_width

    def _expect(self, fn, chunk: int = 32) -> Tensor:
        r""":math:`\sum_k P(k) f(x_k)`, accumulated over chunks of ``chunk`` levels so the peak
        memory is ``chunk x batch`` rather than ``L x batch``."""
        total = torch.zeros((), dtype=self.loc.dtype, device=self.loc.device)
        for grid in self.enumerate_support(expand=False).split(chunk):  # (C, 1, ..., 1)
            total = total + (self.log_prob(grid).exp() * fn(grid)).sum(0)  # batch_shape
        return total.expand(self.batch_shape)

    @property
    def mean(self):
        r"""Exact mean :math:`\sum_k x_k P(k)` (a sum over the :math:`L` levels)."""
        return self._expect(lambda x: x)

    @property
    def variance(self):
        r"""Exact variance :math:`\sum_k (x_k - \mathbb{E}x)^2 P(k)` (two passes, no
        cancellation)."""
        mean = self.mean
        return self._expect(lambda x: (x - mean) ** 2)


# --------------------------------------------------------------------------------------------
# 256-way categorical on [0, 1]-scaled pixels
# --------------------------------------------------------------------------------------------


class PixelCategorical(TorchDistribution):
    r"""Categorical over the grid :math:`x_k = k / (L - 1)` in [0, 1], parameterized by logits.

    :math:`\log P(x) = \mathrm{log\_softmax}(\ell)_{k(x)}` with :math:`k(x) = \mathrm{round}(x (L -
    1))`; samples are returned as :math:`k / (L - 1)`. It is the ordinary ``Categorical`` with its
    values rescaled to the same support as :class:`DiscretizedLogistic`, so the likelihood
    registry can feed both the same ``level / 255`` data. The event shape is ``()``: a pixel is
    one draw, the logits carry one extra trailing dimension of size :math:`L`.

    .. note:: The logits are ``L`` times the size of the data: 256x the memory of a Bernoulli
        decoder. Chunk the batch or the particles accordingly.

    :param logits: unnormalized log-probabilities, shape ``batch_shape + (L,)``, e.g.
        ``(B, D, 256)``.
    :param int num_levels: number of levels :math:`L`; must equal ``logits.shape[-1]``.
    """

    arg_constraints = {"logits": constraints.real_vector}
    has_rsample = False
    has_enumerate_support = True

    def __init__(self, logits, num_levels: int = 256, *, validate_args=None):
        self.num_levels = _check_num_levels(num_levels)
        if logits.dim() < 1 or logits.shape[-1] != self.num_levels:
            raise ValueError(
                f"logits must have a trailing dimension of size num_levels={self.num_levels}, "
                f"got shape {tuple(logits.shape)}"
            )
        self.logits = logits - logits.logsumexp(dim=-1, keepdim=True)  # normalized
        super().__init__(self.logits.shape[:-1], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return UnitGrid(self.num_levels)

    @lazy_property
    def probs(self) -> Tensor:
        return self.logits.exp()  # batch_shape + (L,)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PixelCategorical, _instance)
        batch_shape = torch.Size(batch_shape)
        new.num_levels = self.num_levels
        new.logits = self.logits.expand(batch_shape + (self.num_levels,))
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(batch_shape + (self.num_levels,))
        super(PixelCategorical, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _grid(self) -> Tensor:
        levels = torch.arange(self.num_levels, dtype=self.logits.dtype, device=self.logits.device)
        return levels / (self.num_levels - 1)  # (L,)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        k = (value * (self.num_levels - 1)).round().clamp(0, self.num_levels - 1).long()
        k = k.unsqueeze(-1)  # sample_shape + batch_shape + (1,)
        k, log_pmf = torch.broadcast_tensors(k, self.logits)
        return log_pmf.gather(-1, k[..., :1]).squeeze(-1)

    def sample(self, sample_shape=torch.Size()):
        sample_shape = torch.Size(sample_shape)
        with torch.no_grad():
            probs_2d = self.probs.reshape(-1, self.num_levels)  # (prod(batch), L)
            k = torch.multinomial(probs_2d, sample_shape.numel(), replacement=True).T
            k = k.reshape(self._extended_shape(sample_shape))
            return k.to(self.logits.dtype) / (self.num_levels - 1)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        grid = self._grid().reshape((-1,) + (1,) * len(self.batch_shape))
        if expand:
            grid = grid.expand((-1,) + self.batch_shape)
        return grid

    @property
    def mean(self):
        return (self.probs * self._grid()).sum(-1)

    @property
    def variance(self):
        grid = self._grid()
        mean = (self.probs * grid).sum(-1, keepdim=True)
        return (self.probs * (grid - mean) ** 2).sum(-1)

    def entropy(self):
        return -(self.probs * self.logits).sum(-1)


# --------------------------------------------------------------------------------------------
# Log-space relaxed categorical
# --------------------------------------------------------------------------------------------


class ExpRelaxedCategorical(_TorchExpRelaxedCategorical, TorchDistributionMixin):
    r"""Log-space Concrete / Gumbel-softmax distribution ("ExpConcrete", [3, Appendix C]),
    usable in ``pyro.sample`` (``.to_event``, ``.expand``, ``.mask``).

    A sample is the *log* of a relaxed one-hot vector,

    .. math::

        y = \mathrm{log\_softmax}\!\left(\frac{\ell + g}{\tau}\right), \qquad
        g_k \overset{iid}{\sim} \mathrm{Gumbel}(0, 1),

    finite at every temperature :math:`\tau` (``exp(y)`` is the ``RelaxedOneHotCategorical``
    sample, which underflows to exact zeros at low :math:`\tau`). The log-density is torch's

    .. math::

        \log p(y) = \log\Gamma(K) + (K - 1)\log\tau
            + \sum_{k=1}^{K}\Bigl[\ell_k - \tau y_k
            - \mathrm{logsumexp}_i(\ell_i - \tau y_i)\Bigr].

    .. note:: **Base measure.** This is the density of the log-ratio coordinates
        :math:`z = (y_k - y_K)_{k < K}` with respect to Lebesgue measure on
        :math:`\mathbb{R}^{K-1}` (the Concrete density on the simplex times
        :math:`\prod_{k=1}^K x_k`), *not* of the first :math:`K - 1` coordinates of :math:`y`.
        For :math:`K = 2` it is exactly the logistic density of :math:`y_1 - y_2 \sim
        \mathrm{Logistic}((\ell_1 - \ell_2)/\tau,\ 1/\tau)`. It depends on :math:`y` only through
        log-ratios (adding a constant to ``value`` does not change it). Density ratios, hence the
        relaxed KL and the ELBO of a relaxed model [3], are unaffected as long as prior and guide
        both use this class.

    .. note:: The temperature must be a *scalar* (0-dim tensor or Python number): a batched
        temperature gives wrong ``log_prob`` shapes in torch (pytorch issue 37162). Pass it as a
        tensor to avoid JIT recompilation per value.

    Example::

        >>> tau = torch.tensor(0.5)
        >>> with pyro.plate("data", 32):
        ...     y = pyro.sample("z", ExpRelaxedCategorical(tau, logits=torch.zeros(32, 4, 10))
        ...                     .to_event(1))  # 4 categorical latents of 10 classes each
        >>> straight_through(y).shape  # hard one-hot forward, soft gradient backward
        torch.Size([32, 4, 10])

    :param temperature: relaxation temperature :math:`\tau > 0`, a scalar.
    :param probs: event probabilities, shape ``batch_shape + (K,)``.
    :param logits: unnormalized log-probabilities :math:`\ell`, shape ``batch_shape + (K,)``.
    :raises ValueError: if ``temperature`` is not a scalar.
    """

    arg_constraints = {
        "probs": constraints.simplex,
        "logits": constraints.real_vector,
        "temperature": constraints.positive,
    }

    def __init__(self, temperature, *, logits=None, probs=None, validate_args=None):
        param = logits if logits is not None else probs
        if isinstance(temperature, Number):
            dtype = param.dtype if isinstance(param, Tensor) else torch.get_default_dtype()
            device = param.device if isinstance(param, Tensor) else None
            temperature = torch.tensor(float(temperature), dtype=dtype, device=device)
        if not isinstance(temperature, Tensor) or temperature.dim() != 0:
            shape = tuple(temperature.shape) if isinstance(temperature, Tensor) else None
            raise ValueError(
                "ExpRelaxedCategorical: temperature must be a scalar (0-dim tensor or number); "
                f"got {type(temperature).__name__} of shape {shape}. Batched temperatures give "
                "wrong log_prob shapes (pytorch issue 37162); use temperature.reshape(()) for a "
                "one-element tensor."
            )
        super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        # torch's expand carries the (scalar) temperature over; we only supply the instance of
        # this class, which torch cannot create itself because __init__ is overridden.
        new = self._get_checked_instance(ExpRelaxedCategorical, _instance)
        return super().expand(batch_shape, _instance=new)


def soft(log_sample: Tensor) -> Tensor:
    r"""Soft relaxed one-hot sample :math:`x = \exp(y)` of a log-space sample ``y`` (a point of the
    simplex, last dimension).

    :param log_sample: log-space sample of :class:`ExpRelaxedCategorical`, shape ``(..., K)``.
    :returns: ``exp(log_sample)``, same shape.
    """
    return log_sample.exp()


def straight_through(log_sample: Tensor) -> Tensor:
    r"""Straight-through Gumbel-softmax [4, 5]: hard one-hot forward, soft gradient backward.

    .. math:: h + \bigl(x - \mathrm{stopgrad}(x)\bigr), \qquad x = \exp(y),\quad
        h = \mathrm{one\_hot}(\arg\max_k y_k).

    The bracket is exactly zero in floating point, so the forward value is *exactly* one-hot;
    the gradient is that of the soft sample :math:`x`. :math:`\arg\max_k y_k = \arg\max_k (\ell_k
    + g_k)`, so the hard sample is an exact ``Categorical(logits)`` draw (Gumbel-max) at every
    temperature.

    :param log_sample: log-space sample of :class:`ExpRelaxedCategorical`, shape ``(..., K)``.
    :returns: one-hot tensor of shape ``(..., K)`` carrying the gradient of ``exp(log_sample)``.
    """
    x = soft(log_sample)  # (..., K)
    index = log_sample.argmax(dim=-1, keepdim=True)  # (..., 1)
    hard = torch.zeros_like(x).scatter_(-1, index, 1.0)  # (..., K)
    return hard + (x - x.detach())


def kl_categorical(q_logits: Tensor, p_logits: Tensor) -> Tensor:
    r"""Exact KL divergence between the unrelaxed categoricals,

    .. math:: \mathrm{KL}(q \,\|\, p) = \sum_{k} q_k (\log q_k - \log p_k),

    summed over the last dimension (the Jang et al. [4] convention for a relaxed latent; terms
    with :math:`q_k = 0` contribute 0, :math:`p_k = 0 < q_k` gives ``inf``).

    :param q_logits: unnormalized log-probabilities of :math:`q`, shape ``(..., K)``.
    :param p_logits: unnormalized log-probabilities of :math:`p`, broadcastable to ``q_logits``.
    :returns: KL divergence of shape ``broadcast(...)`` (last dimension summed out).
    """
    log_q = q_logits.log_softmax(dim=-1)  # (..., K)
    log_p = p_logits.log_softmax(dim=-1)  # (..., K)
    q = log_q.exp()
    log_ratio = torch.where(q > 0, log_q - log_p, torch.zeros_like(log_q))
    return (q * log_ratio).sum(-1)


def logits_of(fn) -> Tensor:
    """The logits of a (possibly masked / ``to_event``-wrapped) categorical-type distribution."""
    while not hasattr(fn, "logits") and hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn.logits


# --------------------------------------------------------------------------------------------
# N independent one-hot categoricals as one event
# --------------------------------------------------------------------------------------------


class CategoricalProduct(TorchDistribution):
    r"""N independent one-hot categoricals of K classes as one event of shape ``(N, K)``.

    .. math:: \log q(z) = \sum_{n=1}^{N} \sum_{k=1}^{K} z_{nk} \log \mathrm{softmax}(\ell_n)_k

    Unlike ``OneHotCategorical(logits).to_event(1)``, it enumerates its *joint* support: the
    :math:`S = K^N` one-hot configurations, in the order of ``itertools.product(range(K),
    repeat=N)`` (variable 1 most significant), so :class:`~pyro.infer.TraceEnum_ELBO` can sum
    over all states of one ``"z"`` site. Not reparameterizable (score-function gradients).

    :param logits: unnormalized log-probabilities :math:`\ell`, shape ``batch_shape + (N, K)``.
    """

    arg_constraints = {"logits": constraints.independent(constraints.real, 2)}
    support = constraints.independent(constraints.one_hot, 1)
    has_enumerate_support = True
    has_rsample = False

    def __init__(self, logits: Tensor, validate_args=None):
        if logits.dim() < 2:
            raise ValueError(f"logits must have shape (..., N, K), got {tuple(logits.shape)}")
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # (..., N, K), normalized
        super().__init__(logits.shape[:-2], logits.shape[-2:], validate_args=validate_args)

    @property
    def num_states(self) -> int:
        """:math:`K^N`, the number of joint states."""
        N, K = self.event_shape
        return K**N

    @lazy_property
    def probs(self) -> Tensor:
        return self.logits.exp()  # (..., N, K)

    @property
    def mean(self) -> Tensor:
        return self.probs

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(CategoricalProduct, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(CategoricalProduct, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            index = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            return F.one_hot(index, self.event_shape[-1]).to(self.logits.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (value * self.logits).sum((-2, -1))  # (..., *batch)

    def entropy(self) -> Tensor:
        return -(self.probs * self.logits).sum((-2, -1))

    def enumerate_support(self, expand: bool = True) -> Tensor:
        N, K = self.event_shape
        states = joint_states(N, K, dtype=self.logits.dtype, device=self.logits.device)  # (S, N, K)
        states = states.reshape((-1,) + (1,) * len(self.batch_shape) + (N, K))
        if expand:
            states = states.expand((-1,) + self.batch_shape + (N, K))
        return states


def joint_states(
    num_variables: int,
    num_classes: int,
    start: int = 0,
    stop: int | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""One-hot joint states ``start .. stop-1`` of N variables with K classes, ``(S, N, K)``.

    State :math:`s` has class :math:`\lfloor s / K^{N-n} \rfloor \bmod K` for variable
    :math:`n = 1..N` (the ``itertools.product`` order).
    """
    N, K = num_variables, num_classes
    stop = K**N if stop is None else stop
    s = torch.arange(start, stop, device=device)  # (S,)
    powers = K ** torch.arange(N - 1, -1, -1, device=device)  # (N,)
    index = (s.unsqueeze(-1) // powers) % K  # (S, N)
    return F.one_hot(index, K).to(dtype or torch.get_default_dtype())  # (S, N, K)


# --------------------------------------------------------------------------------------------
# Pixel likelihood of binary images
# --------------------------------------------------------------------------------------------


class BernoulliImage(TorchDistribution):
    r"""Independent Bernoulli(σ(ℓ_d)) pixels as one distribution over an image (event ``(D,)``).

    .. math:: \log p(x \mid ℓ) = \sum_{d=1}^{D} x_d ℓ_d - \operatorname{softplus}(ℓ_d)

    The same density as ``Bernoulli(logits=ℓ).to_event(1)`` with the event sum fused into one
    contraction: no full-size ``(K, B, D)`` negation or ``binary_cross_entropy_with_logits``
    temporary, which is what makes importance sampling over many particles memory-bound
    (``benchmarks/marginal.py``).

    :param logits: ``(..., D)`` real logits ℓ.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.boolean, 1)
    has_enumerate_support = False

    def __init__(self, logits: torch.Tensor, validate_args=None):
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return BernoulliImage(
            self.logits.expand(batch_shape + self.event_shape), validate_args=self._validate_args
        )

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def variance(self) -> torch.Tensor:
        p = torch.sigmoid(self.logits)
        return p * (1 - p)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return torch.bernoulli(torch.sigmoid(self.logits).expand(shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        dot = torch.einsum("...d,...d->...", self.logits, value.to(self.logits.dtype))  # Σ x ℓ
        return dot - torch.nn.functional.softplus(self.logits).sum(-1)  # (...,)


# --------------------------------------------------------------------------------------------
# Count distributions: Poisson, negative binomial, zero-inflated negative binomial
# --------------------------------------------------------------------------------------------

#: the families of :func:`count_distribution`
COUNT_FAMILIES = ("poisson", "negative_binomial", "zero_inflated_negative_binomial")
#: a Poisson log-rate is clamped to [−80, 80] before ``exp``: e^80 ≈ 5.5e34 and e^−80 ≈ 1.8e-35
#: are finite and normal in float32, so a wild draw of z, or a feature that is always 0 in the
#: training data (whose log-rate the optimizer drives down without end), gives a very small,
#: finite log-probability instead of ``inf − inf`` or ``0 · log 0`` (NaN gradients)
MAX_LOG_RATE = 80.0


def count_distribution(
    family: str,
    log_mean: Tensor,
    inverse_dispersion: Tensor | None = None,
    gate_logits: Tensor | None = None,
) -> TorchDistribution:
    r"""A per-feature count distribution with mean :math:`\mu = e^{\eta}`, ``batch_shape`` that
    of ``log_mean`` (η) and ``event_shape == ()``. Pyro's own classes, parameterized by the mean:

    * ``poisson``: :class:`pyro.distributions.Poisson` with rate
      :math:`e^{\mathrm{clamp}(\eta, -80, 80)}` (:data:`MAX_LOG_RATE`);
    * ``negative_binomial``: :class:`pyro.distributions.NegativeBinomial` with
      ``total_count`` θ and ``logits`` :math:`\eta - \log\theta`, i.e. the scVI
      parameterisation [6] by mean μ and inverse dispersion θ:

      .. math::

          P(x) = \frac{\Gamma(x + \theta)}{\Gamma(\theta)\, x!}
              \Big(\frac{\theta}{\theta + \mu}\Big)^{\theta}
              \Big(\frac{\mu}{\theta + \mu}\Big)^{x}, \qquad
          \mathbb{E}x = \mu, \quad \mathrm{Var}\,x = \mu + \mu^2 / \theta.

      (Pyro's ``GammaPoisson(θ, θ/μ)`` is the same law; torch's logits form evaluates it with
      log-sigmoids, without the :math:`\log(1 + \theta/\mu)` rounding at large μ.)
    * ``zero_inflated_negative_binomial``:
      :class:`pyro.distributions.ZeroInflatedNegativeBinomial`, the same NB mixed with a point
      mass at 0 of weight :math:`\pi = \sigma(g)`, ``gate_logits`` g:
      :math:`P(0) = \pi + (1 - \pi) P_{NB}(0)`, :math:`P(x) = (1 - \pi) P_{NB}(x)` for x > 0.

    Argument validation is off (the likelihood checks the data once, before training).

    :param family: one of :data:`COUNT_FAMILIES`.
    :param log_mean: η = log μ, ``(..., D)``.
    :param inverse_dispersion: θ > 0, broadcastable to ``log_mean`` (NB and ZINB).
    :param gate_logits: g, the shape of ``log_mean`` (ZINB).
    """
    if family == "poisson":
        rate = log_mean.clamp(-MAX_LOG_RATE, MAX_LOG_RATE).exp()
        return dist.Poisson(rate, validate_args=False)
    if inverse_dispersion is None:
        raise ValueError(f"count family {family!r} needs inverse_dispersion")
    theta = inverse_dispersion.expand_as(log_mean)
    logits = log_mean - theta.log()
    if family == "negative_binomial":
        return dist.NegativeBinomial(total_count=theta, logits=logits, validate_args=False)
    if family == "zero_inflated_negative_binomial":
        if gate_logits is None:
            raise ValueError("count family 'zero_inflated_negative_binomial' needs gate_logits")
        return dist.ZeroInflatedNegativeBinomial(
            total_count=theta, logits=logits, gate_logits=gate_logits, validate_args=False
        )
    raise ValueError(f"unknown count family {family!r}; families: {', '.join(COUNT_FAMILIES)}")


class LibraryScaledCounts(TorchDistribution):
    r"""Counts :math:`x \in \mathbb{N}^D` whose means are proportions times the row's observed
    total (the library size of single-cell data, scVI with ``use_observed_lib_size`` [6]):

    .. math::

        \ell = \sum_{d=1}^{D} x_d, \qquad \mu_d = \rho_d\, \ell, \qquad
        x_d \mid \mu_d \sim F(\mu_d, \ldots) \text{ independently},

    with ρ on the simplex (``log_proportions``, e.g. a decoder's log-softmax) and F one of the
    families of :func:`count_distribution` (sharing θ and the gate logits). The event is the
    whole row, ``event_shape == (D,)``: ℓ is read from the value being scored.

    .. note:: ℓ is treated as an observed covariate, so :meth:`log_prob` is
        :math:`\log p(x \mid z, \ell = \sum_d x_d)`: it is not normalized over
        :math:`\mathbb{N}^D` (the total is not modelled), which is what single-cell VAEs report.
        Compare it only with models conditioned the same way. A row of zeros gets
        :math:`\ell = 10^{-8}` (every mean ≈ 0, so its probability ≈ 1).

    :meth:`sample` and :attr:`mean` need the total of the rows to draw: pass ``library``.

    :param log_proportions: :math:`\log\rho`, ``batch_shape + (D,)``, normalized over D.
    :param str family: one of :data:`COUNT_FAMILIES`.
    :param inverse_dispersion: θ, broadcastable to ``log_proportions`` (NB, ZINB).
    :param gate_logits: zero-inflation logits, ``batch_shape + (D,)`` (ZINB).
    :param library: ℓ for :meth:`sample` and :attr:`mean`, broadcastable to ``batch_shape``.
    """

    support = constraints.independent(constraints.nonnegative_integer, 1)
    has_rsample = False
    #: ℓ of an all-zero row, so that log ℓ stays finite
    MIN_LIBRARY = 1e-8

    def __init__(self, log_proportions: Tensor, family: str, inverse_dispersion=None,
                 gate_logits=None, library=None, validate_args=None):
        if family not in COUNT_FAMILIES:
            raise ValueError(f"unknown count family {family!r}; families: "
                             f"{', '.join(COUNT_FAMILIES)}")
        if log_proportions.dim() < 1:
            raise ValueError("log_proportions must have shape batch_shape + (D,)")
        self.family = family
        self.log_proportions = log_proportions
        self.inverse_dispersion = inverse_dispersion
        self.gate_logits = gate_logits
        self.library = None if library is None else torch.as_tensor(
            library, dtype=log_proportions.dtype, device=log_proportions.device)
        shape = log_proportions.shape
        super().__init__(shape[:-1], shape[-1:], validate_args=validate_args)

    @property
    def arg_constraints(self) -> dict[str, constraints.Constraint]:
        """The constraints of the parameters given (θ, the gate and ℓ are optional)."""
        given: dict[str, constraints.Constraint] = {"log_proportions": constraints.real_vector}
        if self.inverse_dispersion is not None:
            given["inverse_dispersion"] = constraints.positive
        if self.gate_logits is not None:
            given["gate_logits"] = constraints.real
        if self.library is not None:
            given["library"] = constraints.nonnegative
        return given

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LibraryScaledCounts, _instance)
        batch_shape = torch.Size(batch_shape)
        full = batch_shape + self.event_shape
        new.family = self.family
        new.log_proportions = self.log_proportions.expand(full)
        new.inverse_dispersion = self.inverse_dispersion
        new.gate_logits = None if self.gate_logits is None else self.gate_logits.expand(full)
        new.library = None if self.library is None else self.library.expand(batch_shape)
        super(LibraryScaledCounts, new).__init__(batch_shape, self.event_shape,
                                                 validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _per_feature(self, log_library: Tensor) -> TorchDistribution:
        """F with log-mean ``log ρ + log ℓ``; ``log_library`` broadcastable to ``(..., 1)``."""
        log_mean = self.log_proportions + log_library  # (..., D)
        gate = None if self.gate_logits is None else self.gate_logits.expand_as(log_mean)
        return count_distribution(self.family, log_mean, self.inverse_dispersion, gate)

    def _library(self) -> Tensor:
        if self.library is None:
            raise ValueError("LibraryScaledCounts: sampling or the mean needs the row totals; "
                             "pass library= (the total count of each row)")
        return self.library.expand(self.batch_shape).unsqueeze(-1)  # (..., 1)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        total = value.sum(-1, keepdim=True).clamp(min=self.MIN_LIBRARY)  # (..., 1)
        return self._per_feature(total.log()).log_prob(value).sum(-1)  # (...,)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            base = self._per_feature(self._library().clamp(min=self.MIN_LIBRARY).log())
            return base.sample(sample_shape)

    @property
    def mean(self) -> Tensor:
        return self._per_feature(self._library().clamp(min=self.MIN_LIBRARY).log()).mean

    @property
    def variance(self) -> Tensor:
        return self._per_feature(self._library().clamp(min=self.MIN_LIBRARY).log()).variance
