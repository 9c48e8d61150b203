r"""``enum``: the exact ELBO of a small discrete latent space by enumeration,
:class:`pyro.infer.TraceEnum_ELBO`.

With the unrelaxed categorical guide (``guide.family = "categorical"``) the guide's ``"z"`` site
is enumerated in parallel over all :math:`S = K^N` joint states (the joint support of
:class:`~vaelab.model.distributions.CategoricalProduct`), so the ELBO and its gradient are exact
sums, with no sampling and no variance:

.. math:: \mathcal{L}(x) = \sum_{s=1}^{K^N} q_φ(s \mid x)
    \big[\log p(s) + \log p_θ(x \mid s) - \log q_φ(s \mid x)\big].

Every step runs the decoder :math:`K^N` times per data point (an ``(S, B, D)`` likelihood), so it
is refused unless :math:`K^N \le` :data:`MAX_ENUM_STATES`; N·K itself is small then too (e.g.
N = 3, K = 10 or N = 10, K = 2). Use ``graph`` (REINFORCE) or ``guide.family = "relaxed"`` for
larger latent spaces.

References:
  1. F. Obermeyer, E. Bingham, M. Jankowiak, J. Chiu, N. Pradhan, A. Rush, N. Goodman. *Tensor
     Variable Elimination for Plated Factor Graphs*. ICML 2019.
"""

from __future__ import annotations

from pyro.infer import TraceEnum_ELBO, config_enumerate

from vaelab.inference.objectives.registry import OBJECTIVES
from vaelab.model.latents import CategoricalLatent
from vaelab.registry import ConfigError

__all__ = ["MAX_ENUM_STATES", "EnumELBO", "build_enum"]

#: the largest number of joint latent states K^N that ``enum`` accepts
MAX_ENUM_STATES = 1024


class EnumELBO(TraceEnum_ELBO):
    """:class:`~pyro.infer.TraceEnum_ELBO` with every enumerable guide site enumerated in parallel
    (:func:`~pyro.infer.config_enumerate` applied to the guide)."""

    def loss(self, model, guide, *args, **kwargs):
        return super().loss(model, config_enumerate(guide, "parallel"), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return super().loss_and_grads(model, config_enumerate(guide, "parallel"), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return super().differentiable_loss(
            model, config_enumerate(guide, "parallel"), *args, **kwargs
        )


@OBJECTIVES.register("enum")
def build_enum(cfg, vae) -> EnumELBO:
    """Exact enumeration of all K^N latent states (TraceEnum_ELBO); small latent spaces only."""
    latent = vae.latent
    if not isinstance(latent, CategoricalLatent) or latent.relaxed:
        raise ConfigError(
            "objective.name = 'enum' enumerates the states of a discrete latent: it needs "
            "model.latent = 'categorical' with guide.family = 'categorical' (got latent "
            f"{type(latent).__name__}, guide family {type(vae.inference.posterior).__name__})"
        )
    N, K = latent.num_variables, latent.num_classes
    if latent.num_states > MAX_ENUM_STATES:
        raise ConfigError(
            f"objective.name = 'enum': model.latent has K^N = {K}^{N} = "
            f"{float(latent.num_states):.3g} joint states (N = {N}, K = {K}); exact enumeration "
            "runs the decoder once per state per data point and is allowed up to "
            f"{MAX_ENUM_STATES} states. Use objective.name = "
            "'graph' (REINFORCE with a baseline) or guide.family = 'relaxed' (Gumbel-softmax), "
            "or a smaller latent (fewer variables / classes)"
        )
    if cfg.num_particles != 1:
        raise ConfigError("objective.num_particles: 'enum' is exact, set it to 1")
    return EnumELBO(num_particles=1, max_plate_nesting=1, strict_enumeration_warning=True)
