r"""Per-batch preprocessing: dynamic binarization and uniform dequantization.

Two stochastic views of data in [0, 1]:

* **dynamic binarization** (Salakhutdinov & Murray [1]): every time a batch is used,
  :math:`x' \sim \mathrm{Bernoulli}(x)`, so a Bernoulli decoder sees fresh binary samples of the
  grey levels each epoch;
* **uniform dequantization** (Theis et al. [2]) of 8-bit data given as :math:`x = k / 255`:
  :math:`x' = (k + u) / 256` with :math:`u \sim \mathcal{U}[0, 1)^D`, so a continuous density
  on :math:`[0, 1]^D` can model discrete levels :math:`k \in \{0, \dots, 255\}^D`.

With a continuous density :math:`p` on :math:`[0, 1]^D`, the probability of levels :math:`k` is
the mass of its cube :math:`C_k = \prod_i [k_i/256, (k_i + 1)/256)` of volume :math:`256^{-D}`:

.. math::

    \log P(k) = \log \int_{C_k} p(x')\,dx'
              = \log \mathbb{E}_u\big[p\big(\tfrac{k + u}{256}\big)\big] - D \log 256
              \;\ge\; \mathbb{E}_u\big[\log p\big(\tfrac{k + u}{256}\big)\big] - D \log 256

by Jensen's inequality. :meth:`Preprocessor.log_jacobian_per_point` is the
:math:`-D \log 256` term: add it to a continuous log-likelihood (or ELBO) of dequantized data to
get a lower bound in nats of the discrete data, which :func:`bits_per_dim` turns into bits per
dimension.

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
from vaelab.registry import ConfigError
from vaelab.seed import derived_generator

__all__ = ["Preprocessor", "bits_per_dim", "check_binary"]

_EVAL_STREAM = 0xE7A1  # the evaluation draw, unrelated to training and split draws
_LEVELS = 256


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
    * ``dequantize = true``: :math:`x' = (\mathrm{round}(255 x) + u) / 256`,
      :math:`u \sim \mathcal{U}[0, 1)^D`, with log-Jacobian :math:`-D \log 256` per point.

    Binarizing data that are already binary is a no-op (no random draw).

    :param cfg: the ``[data]`` section.
    :param splits: the loaded data (its ``binary`` and ``levels`` decide what is allowed).
    :raises ConfigError: dequantization together with binarization, of binary data or of data
        that are not 8-bit levels; binarization of values outside [0, 1]; static binarization
        of splits that :func:`~vaelab.data.load_dataset` did not binarize.

    Example::

        pre = Preprocessor(cfg.data, splits)
        g = torch.Generator().manual_seed(seed)
        for x in iterate_batches(splits.train, 100, shuffle=True, seed=seed, epoch=epoch):
            x = pre.train_batch(x, g)
    """

    def __init__(self, cfg: DataConfig, splits: DataSplits):
        self.name = splits.name
        self.dequantize = cfg.dequantize
        self.seed = cfg.split_seed
        if cfg.dequantize and cfg.binarize != "none":
            raise ConfigError(
                f"data.dequantize=true and data.binarize={cfg.binarize!r} exclude each other: "
                "dequantization models 8-bit levels with a density, binarization makes them 0/1"
            )
        if cfg.dequantize and (splits.binary or splits.levels != _LEVELS):
            kind = "binary" if splits.binary else f"not 8-bit grey levels (levels={splits.levels})"
            raise ConfigError(
                f"data.dequantize=true: data set {splits.name!r} is {kind}; dequantization "
                "applies to 8-bit data (levels=256) such as mnist or frey_faces"
            )
        if cfg.binarize == "static" and not splits.binary:
            raise ConfigError(
                f"data.binarize='static': data set {splits.name!r} is not binary; load it with "
                "vaelab.data.load_dataset(cfg.data), which binarizes it once"
            )
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
        return not (self.dynamic_binarize or self.dequantize)

    def _transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.is_identity:
            return x
        # drawn on the generator's device, so a CPU generator gives the same numbers for x on
        # any device
        u = torch.rand(x.shape, generator=generator, device=generator.device)  # (B, D)
        u = u.to(device=x.device, dtype=x.dtype)
        if self.dynamic_binarize:
            return (u < x).to(x.dtype)  # (B, D), P(x' = 1) = x
        return (torch.round(x * (_LEVELS - 1)) + u) / _LEVELS  # (B, D), in [k/256, (k+1)/256)

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
        r"""The term that turns a continuous log-density of a data point into discrete nats.

        :math:`-D \log 256` with dequantization (see the module docstring:
        :math:`\log P(k) \ge \mathbb{E}_u[\log p(x')] - D \log 256`), else 0. Add it to a
        log-likelihood or ELBO per data point.

        :param dim: :math:`D`, coordinates per data point.
        """
        return -dim * math.log(_LEVELS) if self.dequantize else 0.0

    def __repr__(self) -> str:
        kind = "dequantize" if self.dequantize else (
            "dynamic binarization" if self.dynamic_binarize else "identity")
        return f"Preprocessor({self.name!r}: {kind})"
