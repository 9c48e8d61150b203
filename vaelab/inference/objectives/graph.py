r"""``graph``: the score-function (REINFORCE) ELBO with a learned input-dependent baseline,
:class:`pyro.infer.TraceGraph_ELBO`.

For a non-reparameterized guide site (the unrelaxed categorical posterior, ``guide.family =
"categorical"``) the gradient of

.. math:: \mathcal{L}(x) = \mathbb{E}_{q_φ(z|x)}\big[\log p_θ(x, z) - \log q_φ(z \mid x)\big]

is estimated by

.. math:: \nabla_φ \mathcal{L} \approx \big(\log p_θ(x, z) - \log q_φ(z \mid x) - b(x)\big)\,
    \nabla_φ \log q_φ(z \mid x) + \nabla_φ\big[\log p_θ(x,z) - \log q_φ(z \mid x)\big],
    \qquad z \sim q_φ(z \mid x),

unbiased for any baseline b(x) that does not depend on z. Pyro's TraceGraph_ELBO keeps only the
cost terms downstream of z (Rao-Blackwellization by the dependency graph). The baseline is the
guide family's :class:`~vaelab.guide.relaxed.Baseline`, :math:`b(x) = c + C_ψ(\ell(x))` (NVIL
[2]): an MLP of the detached posterior logits, trained by Pyro's baseline loss
:math:`(\text{cost} - b(x))^2`, plus a running mean *c* of the learning signal that this objective
updates after every step. The baseline's parameters belong to the guide family, so the guide's
``pyro.module`` registers them (Pyro's ``nn_baseline`` never trains otherwise), the optimizer
steps them and checkpoints hold them. Pyro's decaying-average baseline is not used: it is stored
with the batch shape and raises on a smaller last batch.

Particles run in a Python loop (``vectorize_particles=False``): the baseline has the batch shape
of one particle. Guides without a ``baseline`` (reparameterized families) get plain
TraceGraph_ELBO, the same estimator as ``trace``.

References:
  1. R. J. Williams. *Simple Statistical Gradient-Following Algorithms for Connectionist
     Reinforcement Learning*. Machine Learning 1992.
  2. A. Mnih, K. Gregor. *Neural Variational Inference and Learning in Belief Networks*. ICML 2014.
  3. J. Schulman, N. Heess, T. Weber, P. Abbeel. *Gradient Estimation Using Stochastic
     Computation Graphs*. NeurIPS 2015.
"""

from __future__ import annotations

import pyro.poutine as poutine
from pyro.infer import TraceGraph_ELBO
from pyro.poutine.util import site_is_subsample
from torch import nn

from vaelab.inference.objectives.registry import OBJECTIVES
from vaelab.model.distributions import logits_of

__all__ = ["BaselineTraceGraphELBO", "build_graph"]


class BaselineTraceGraphELBO(TraceGraph_ELBO):
    r""":class:`~pyro.infer.TraceGraph_ELBO` that attaches ``baseline`` to every
    non-reparameterized guide site (``infer={"baseline": {"nn_baseline": ...}}``) and updates the
    baseline's running mean after each :meth:`loss_and_grads`.

    :param baseline: a module ``logits (B, N, K) → (B,)`` with ``update_center(float)``, or
        ``None`` for plain TraceGraph_ELBO.
    """

    def __init__(self, baseline: nn.Module | None = None, **kwargs):
        super().__init__(**kwargs)
        self.baseline = baseline

    def _with_baseline(self, guide):
        if self.baseline is None:
            return guide
        baseline = self.baseline

        def config(msg):
            if (
                msg["type"] != "sample"
                or msg["is_observed"]
                or site_is_subsample(msg)
                or msg["fn"].has_rsample
            ):
                return {}
            # the logits are detached by Pyro before they reach the baseline network
            logits = logits_of(msg["fn"])  # (B, N, K)
            return {"baseline": {"nn_baseline": baseline, "nn_baseline_input": logits}}

        return poutine.infer_config(guide, config)

    def loss(self, model, guide, *args, **kwargs):
        return super().loss(model, self._with_baseline(guide), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = super().loss_and_grads(model, self._with_baseline(guide), *args, **kwargs)
        if self.baseline is not None and args:
            # the learning signal per point is the sampled ELBO, −loss / B on average
            self.baseline.update_center(-loss / args[0].shape[0])
        return loss


@OBJECTIVES.register("graph")
def build_graph(cfg, vae) -> BaselineTraceGraphELBO:
    """TraceGraph_ELBO (REINFORCE) with the guide family's learned input-dependent baseline."""
    return BaselineTraceGraphELBO(
        baseline=getattr(vae.inference.posterior, "baseline", None),
        num_particles=cfg.num_particles,
        vectorize_particles=False,
        max_plate_nesting=1,
    )
