r"""Per-batch preprocessing: dynamic binarization, uniform dequantization, standardization.

Two stochastic views of data in [0, 1]:

* **dynamic binarization** (Salakhutdinov & Murray [1]): every time a batch is used,
  :math:`x' \sim \mathrm{Bernoulli}(x)`, so a Bernoulli decoder sees fresh binary samples of the
  grey levels each epoch;
* **uniform dequantization** (Theis et al. [2]) of data of L levels given as
  :math:`x = k / (L - 1)` (8-bit: L = 256): :math:`x' = (k + u) / L` with
  :math:`u \sim \mathcal{U}[0, 1)^D`, so a continuous density on :math:`[0, 1]^D` can model
  discrete levels :math:`k \in \{0, \dots, L - 1\}^D`.

With a continuous density :math:`p` on :math:`[0, 1]^D`, the probability of levels :math:`k` is
the mass of its cube :math:`C_k = \prod_i [k_i/L, (k_i + 1)/L)` of volume :math:`L^{-D}`:

.. math::

    \log P(k) = \log \int_{C_k} p(x')\,dx'
              = \log \mathbb{E}_u\big[p\big(\tfrac{k + u}{L}\big)\big] - D \log L
              \;\ge\; \mathbb{E}_u\big[\log p\big(\tfrac{k + u}{L}\big)\big] - D \log L

by Jensen's inequality. :meth:`Preprocessor.log_jacobian_per_point` is the
:math:`-D \log L` term: add it to a continuous log-likelihood (or ELBO) of dequantized data to
get a lower bound in nats of the discrete data, which :func:`bits_per_dim` turns into bits per
dimension.

One deterministic view, for real-valued data (``data.standardize = true``): each feature is
**standardized** with the mean :math:`m_d` and standard deviation :math:`s_d` of the training
split, :math:`y = (x - m) / s` (a constant feature keeps :math:`s_d = 1`). The model is a
density of y; the density of the data in their own units is, exactly,

.. math:: \log p_X(x) = \log p_Y\big((x - m)/s\big) - \sum_{d=1}^{D} \log s_d,

and :meth:`Preprocessor.log_jacobian_per_point` is the :math:`-\sum_d \log s_d` term. The
statistics are recomputed from the training split whenever a run is loaded (the split is a
deterministic function of the config and the file), so a loaded run scores new points exactly
as training saw them.

All draws come from the :class:`torch.Generator` the caller passes, never from the global RNG.

References

1. R. Salakhutdinov, I. Murray. *On the Quantitative Analysis of Deep Belief Networks*. ICML 2008.
2. L. Theis, A. van den Oord, M. Bethge. *A Note on the Evaluation of Generative Models*. ICLR 2016.
"""

from __future__ import annotations

import math

import torch

from vaelab.config import DataConfig
from vaelab.data.splits import DataSplits
from vaelab.devices import to_device
from vaelab.notes import note
from vaelab.registry import ConfigError
from vaelab.seed import derived_generator

__all__ = ["Preprocessor", "bits_per_dim", "check_binary", "standardization"]

_EVAL_STREAM = 0xE7A1  # the evaluation draw, unrelated to training and split draws


def check_binary(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is exactly 0 or 1 (``True`` for an empty tensor)."""
    return bool(((x == 0) | (x == 1)).all())


def bits_per_dim(nats_per_point: float | torch.Tensor, dim: int) -> float | torch.Tensor:
    r"""Convert a negative log-likelihood in nats per data point to bits per dimension.

    .. math:: \mathrm{bpd} = \frac{-\log P(x)}{D \log 2}

    :param nats_per_point: :math:`-\log P(x)` in nats (a float or a tensor of them); for
        dequantized data, the discrete one, i.e. already including
        :meth:`Preprocessor.log_jacobian_per_point`.
    :param dim: :math:`D`, coordinates per data point.
    """
    return nats_per_point / (dim * math.log(2.0))


class Preprocessor:
    r"""The per-batch transform a ``[data]`` config asks for, checked against the data.

    * ``binarize = "none"``: identity;
    * ``binarize = "static"``: identity (:func:`~vaelab.data.load_dataset` drew once);
    * ``binarize = "dynamic"``: :math:`x' \sim \mathrm{Bernoulli}(x)`;
    * ``dequantize = true``: :math:`x' = (\mathrm{round}((L - 1) x) + u) / L`,
      :math:`u \sim \mathcal{U}[0, 1)^D`, with log-Jacobian :math:`-D \log L` per point (L the
      data's levels, 256 for 8-bit data);
    * ``standardize = true``: :math:`y = (x - m) / s` with the training split's per-feature
      mean and standard deviation (:attr:`mean`, :attr:`scale`), log-Jacobian
      :math:`-\sum_d \log s_d` per point.

    Binarizing data that are already binary is a no-op (no random draw).

    :param cfg: the ``[data]`` section.
    :param splits: the loaded data (its ``binary`` and ``levels`` decide what is allowed; its
        training split gives the standardization).
    :raises ConfigError: dequantization together with binarization, of binary data or of data
        that are not levels; binarization of values outside [0, 1]; static binarization
        of splits that :func:`~vaelab.data.load_dataset` did not binarize; standardization
        together with binarization or dequantization.

    Example::

        pre = Preprocessor(cfg.data, splits)
        g = torch.Generator().manual_seed(seed)
        for x in iterate_batches(splits.train, 100, shuffle=True, seed=seed, epoch=epoch):
            x = pre.train_batch(x, g)
    """

    def __init__(self, cfg: DataConfig, splits: DataSplits):
        self.name = splits.name
        self.dequantize = cfg.dequantize
        self.standardize = cfg.standardize
        self.seed = cfg.split_seed
        self.levels = splits.levels or 0  # L of the dequantization
        if cfg.dequantize and cfg.binarize != "none":
            raise ConfigError(
                f"data.dequantize=true and data.binarize={cfg.binarize!r} exclude each other: "
                "dequantization models 8-bit levels with a density, binarization makes them 0/1"
            )
        if cfg.dequantize and (splits.binary or not splits.levels):
            kind = "binary" if splits.binary else f"{splits.values} data, not levels"
            raise ConfigError(
                f"data.dequantize=true: data set {splits.name!r} is {kind}; dequantization "
                "applies to data of L > 2 levels such as mnist or frey_faces (8-bit, L = 256) "
                "or counts read with data.values = 'levels'"
            )
        if cfg.standardize and (cfg.dequantize or cfg.binarize != "none"):
            other = "data.dequantize=true" if cfg.dequantize else f"data.binarize={cfg.binarize!r}"
            raise ConfigError(
                f"data.standardize=true and {other} exclude each other: standardization is for "
                "real-valued data, modelled by a density in standardized units"
            )
        if cfg.binarize == "static" and not splits.binary:
            raise ConfigError(
                f"data.binarize='static': data set {splits.name!r} is not binary; load it with "
                "vaelab.data.load_dataset(cfg.data), which binarizes it once"
            )
        #: the training split's per-feature mean m and scale s (``standardize``), ``(D,)``
        self.mean: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        if cfg.standardize:
            self.mean, self.scale = standardization(splits)
        #: whether batches get a fresh Bernoulli draw (False for binary data: nothing to draw)
        self.dynamic_binarize = cfg.binarize == "dynamic" and not splits.binary
        if self.dynamic_binarize:
            x = splits.train
            if x.numel() and (x.min() < 0 or x.max() > 1):
                raise ConfigError(
                    f"data.binarize='dynamic' needs values in [0, 1]; data set {splits.name!r} "
                    f"spans [{x.min().item():g}, {x.max().item():g}]"
                )

    @property
    def is_identity(self) -> bool:
        """Whether batches pass through unchanged."""
        return not (self.dynamic_binarize or self.dequantize or self.standardize)

    def _transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.is_identity:
            return x
        if self.mean is not None and self.scale is not None:
            mean, scale = self.mean.to(x), self.scale.to(x)
            return (x - mean) / scale  # (B, D), no random draw
        # drawn on the generator's device, so a CPU generator gives the same numbers for x on
        # any device
        u = torch.rand(x.shape, generator=generator, device=generator.device)  # (B, D)
        u = to_device(u, x.device).to(x.dtype)  # pinned, asynchronous to a GPU
        if self.dynamic_binarize:
            return (u < x).to(x.dtype)  # (B, D), P(x' = 1) = x
        L = self.levels
        return (torch.round(x * (L - 1)) + u) / L  # (B, D), in [k/L, (k+1)/L)

    def train_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A fresh random view of a training batch.

        :param x: a batch, shape ``(B, D)``, values in [0, 1].
        :param generator: the training RNG (one per run, saved with the checkpoint for exact
            resume).
        :returns: shape ``(B, D)``, same dtype and device as ``x``.
        """
        return self._transform(x, generator)

    def eval_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The evaluation view of a batch: the same transform, from an evaluation generator.

        Seed ``generator`` once per evaluation pass, e.g. with :meth:`eval_generator`, and walk
        the split in a fixed order: every evaluation then sees the same single draw
        (binarization or dequantization noise), so scores of different epochs and models are
        comparable. :meth:`eval_split` gives a draw that does not depend on the batching.

        :param x: a batch, shape ``(B, D)``.
        :param generator: the evaluation RNG.
        """
        return self._transform(x, generator)

    def eval_generator(self, seed: int | None = None) -> torch.Generator:
        """A CPU generator for one evaluation pass, seeded from ``seed`` (default:
        ``data.split_seed``), unrelated to any training draw."""
        return derived_generator(self.seed if seed is None else seed, _EVAL_STREAM)

    def eval_split(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """One fixed seeded draw for a whole split ``(N, D)``, independent of batch size."""
        return self._transform(x, self.eval_generator(seed))

    def log_jacobian_per_point(self, dim: int) -> float:
        r"""The term that turns a log-density of the preprocessed data into the units of the
        data.

        :math:`-D \log L` with dequantization (see the module docstring:
        :math:`\log P(k) \ge \mathbb{E}_u[\log p(x')] - D \log L`, nats of the discrete data);
        :math:`-\sum_d \log s_d` with standardization (exact: nats of a density in the data's
        own units); else 0. Add it to a log-likelihood or ELBO per data point.

        :param dim: :math:`D`, coordinates per data point.
        """
        if self.dequantize:
            return -dim * math.log(self.levels)
        if self.scale is not None:
            if self.scale.numel() != dim:
                raise ValueError(f"log_jacobian_per_point: the standardization has "
                                 f"{self.scale.numel()} features, not {dim}")
            return -float(self.scale.double().log().sum())
        return 0.0

    def __repr__(self) -> str:
        kind = ("dequantize" if self.dequantize else "standardize" if self.standardize else
                "dynamic binarization" if self.dynamic_binarize else "identity")
        return f"Preprocessor({self.name!r}: {kind})"


def standardization(splits: DataSplits) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-feature mean :math:`m` and scale :math:`s` of the training split, float32 ``(D,)``.

    :math:`s_d` is the standard deviation (computed in float64, divisor N); a feature constant on
    the training split (or a split of one point) keeps :math:`s_d = 1`, with a note. An empty
    training split gives m = 0, s = 1 (training refuses it later, in one line).
    """
    x = splits.train.double()  # (N, D)
    if x.shape[0] == 0:
        return torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    mean = x.mean(0)
    scale = x.std(0, correction=0)
    constant = scale <= 1e-12 * mean.abs().clamp(min=1.0)
    if bool(constant.any()):
        cols = constant.nonzero().flatten().tolist()
        shown = ", ".join(str(c) for c in cols[:5]) + (", ..." if len(cols) > 5 else "")
        note(f"data.standardize: {len(cols)} feature(s) of data set {splits.name!r} are "
             f"constant on the training split (columns {shown}, from 0); their scale is 1")
        scale = torch.where(constant, torch.ones_like(scale), scale)
    return mean.float(), scale.float()
