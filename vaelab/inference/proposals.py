r"""Importance-sampling proposals built from a guide (or the prior), as Pyro guides.

The estimator :math:`\hat p(x) = \frac1K \sum_k p(x, z_k) / r(z_k \mid x)`, :math:`z_k \sim r`,
is unbiased for any proposal :math:`r` whose support covers the posterior, but its variance is
finite only when :math:`r` has heavier tails than :math:`p(z \mid x)`. The trained guide
:math:`q_φ(z \mid x)` is fitted by minimising KL(q ‖ p), which makes it *narrower* than the
posterior, so IS with the guide itself can have infinite variance (Pareto k̂ > 0.5). Each
proposal here is a Pyro guide with the same sites as the guide it wraps, so
:func:`~vaelab.inference.importance.log_weights` and
:func:`~vaelab.inference.marginal.estimate_marginal` use it unchanged:

=================  ===============================================================
``guide``          :math:`r = q_φ(z \mid x)`
``inflated:s``     :math:`r = q_φ` with every scale multiplied by ``s`` (same family)
``student_t:ν``    :math:`r = \prod_i \mathrm{StudentT}(ν, μ_i, σ_i)` with the guide's
                   :math:`μ, σ`: polynomial tails
``prior``          :math:`r = p(z)`, so :math:`w = p(x \mid z)`: for comparison only
                   (its variance grows exponentially with the latent dimension)
=================  ===============================================================

``inflated`` and ``student_t`` need a location-scale guide site (Normal or StudentT, any
``.to_event``); the ``prior`` proposal is the model itself with its observed sites blocked, so it
fits any model (it runs the decoder once more per chunk: a price paid only for the comparison).

References:
  1. A. B. Owen. *Monte Carlo theory, methods and examples*, ch. 9 (defensive importance
     sampling, heavy-tailed proposals). 2013.
  2. A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. *Pareto Smoothed Importance
     Sampling*. JMLR 2024.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pydantic import Field
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from vaelab.registry import ConfigError, Options, Registry

__all__ = ["PROPOSALS", "parse_proposal", "make_proposal", "proposal_name"]

PROPOSALS: Registry[Callable] = Registry("IS proposal")


class InflatedOptions(Options):
    factor: float = Field(2.0, gt=0.0, description="multiplier of every guide scale")


class StudentTOptions(Options):
    df: float = Field(5.0, gt=0.0, description="degrees of freedom ν of the Student-t")


def _unwrap(
    fn: dist.TorchDistribution,
) -> tuple[torch.distributions.Normal | torch.distributions.StudentT, int]:
    """The location-scale base of an ``Independent``-wrapped site distribution, and its depth."""
    base, event_dims = fn, 0
    while isinstance(base, torch.distributions.Independent):
        event_dims += base.reinterpreted_batch_ndims
        base = base.base_dist
    if not isinstance(base, (torch.distributions.Normal, torch.distributions.StudentT)):
        raise ValueError(
            f"this IS proposal needs a location-scale guide site (Normal or StudentT), got "
            f"{type(base).__name__}; use --proposal guide or prior for this model"
        )
    return base, event_dims


def _rewrap(
    new: dist.TorchDistribution, event_dims: int, like: dist.TorchDistribution
) -> dist.TorchDistribution:
    new = new.to_event(event_dims) if event_dims else new
    return new if new.batch_shape == like.batch_shape else new.expand(like.batch_shape)


class _SwapLatent(Messenger):
    """Replace the distribution of each latent (unobserved) sample site by ``swap(fn)``."""

    def __init__(self, swap: Callable[[dist.TorchDistribution], dist.TorchDistribution]):
        super().__init__()
        self.swap = swap

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or site_is_subsample(msg):
            return
        msg["fn"] = self.swap(msg["fn"])


def _swapping(guide: Callable, swap: Callable) -> Callable:
    def proposal(*args, **kwargs):
        with _SwapLatent(swap):
            return guide(*args, **kwargs)

    return proposal


@PROPOSALS.register("guide")
def _guide(opts, model, guide):
    """The guide q(z|x) itself."""
    return guide


@PROPOSALS.register("inflated", InflatedOptions)
def _inflated(opts, model, guide):
    """The guide with every scale multiplied by ``factor`` (same family)."""
    s = opts.factor

    def swap(fn):
        base, event_dims = _unwrap(fn)
        if isinstance(base, torch.distributions.StudentT):
            new = dist.StudentT(base.df, base.loc, s * base.scale)
        else:
            new = dist.Normal(base.loc, s * base.scale)
        return _rewrap(new, event_dims, fn)

    return _swapping(guide, swap)


@PROPOSALS.register("student_t", StudentTOptions)
def _student_t(opts, model, guide):
    """∏ StudentT(ν, μ, σ) with the guide's location μ and scale σ (heavier tails)."""
    df = opts.df

    def swap(fn):
        base, event_dims = _unwrap(fn)
        loc = base.loc
        new = dist.StudentT(torch.full_like(loc, df), loc, base.scale)
        return _rewrap(new, event_dims, fn)

    return _swapping(guide, swap)


@PROPOSALS.register("prior")
def _prior(opts, model, guide):
    """The model's prior p(z): the model with its observed sites blocked."""
    return poutine.block(model, hide_fn=lambda msg: bool(msg.get("is_observed")))


_FIRST_OPTION = {"inflated": "factor", "student_t": "df"}


def parse_proposal(spec: str | dict | Options, key: str = "proposal") -> Options:
    """Parse ``"guide"``, ``"inflated:2.0"``, ``"student_t:5"``, ``"prior"`` or a table.

    :raises ConfigError: unknown name (with the choices and a close match) or bad value.
    """
    if isinstance(spec, str) and ":" in spec:
        name, _, value = spec.partition(":")
        name = name.strip()
        if name not in _FIRST_OPTION:
            PROPOSALS.entry(name, key)  # unknown name: raises with suggestions
            raise ConfigError(f"{key}: proposal {name!r} takes no value (got {spec!r})")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected {name}:NUMBER, got {spec!r}") from None
        spec = {"name": name, _FIRST_OPTION[name]: number}
    return PROPOSALS.parse(spec, key)


def proposal_name(opts: Options) -> str:
    """The compact spelling of parsed options: ``"inflated:2"``, ``"guide"``."""
    field = _FIRST_OPTION.get(opts.name)
    return opts.name if field is None else f"{opts.name}:{getattr(opts, field):g}"


def make_proposal(spec: str | dict | Options, model: Callable, guide: Callable) -> Callable:
    r"""The IS proposal named by ``spec`` for a (model, guide) pair, as a Pyro guide.

    :param spec: ``"guide"``, ``"inflated:FACTOR"``, ``"student_t:DF"``, ``"prior"``, or a table
        ``{name = ..., factor|df = ...}``.
    :param model: the Pyro model (used by ``prior``).
    :param guide: the Pyro guide, whose latent sites the proposal replaces.
    :returns: a callable with the guide's signature and sites.

    Example::

        proposal = make_proposal("student_t:5", vae.model, vae.guide)
        est = estimate_marginal(vae.model, proposal, x_test, num_samples=5000)
    """
    opts = parse_proposal(spec)
    return PROPOSALS.build(opts, model, guide)
