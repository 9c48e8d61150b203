r"""``trace``: the standard ELBO, :class:`pyro.infer.Trace_ELBO`.

.. math::

    \mathcal{L}(x) = \mathbb{E}_{q_φ(z|x)}\big[\log p_θ(x \mid z)\big]
        - β\,\mathrm{KL}\big(q_φ(z \mid x)\,\|\,p(z)\big)

estimated with ``objective.num_particles`` vectorized draws; pathwise gradients for
reparameterized sites, REINFORCE for the others (Pyro keeps the score term, so this estimator does
not "stick the landing"; see ``stl``).

References:
  1. D. Kingma, M. Welling. *Auto-Encoding Variational Bayes*. ICLR 2014.
"""

from __future__ import annotations

from pyro.infer import JitTrace_ELBO, Trace_ELBO

from vaelab.inference.objectives._jit import TensorArgsMixin
from vaelab.inference.objectives.registry import OBJECTIVES, compiles


class JitTraceELBO(TensorArgsMixin, JitTrace_ELBO):
    """:class:`~pyro.infer.JitTrace_ELBO` called with the loop's (x, β, τ) arguments."""


@OBJECTIVES.register("trace")
@compiles
def build_trace(cfg, vae):
    """Trace_ELBO (JitTrace_ELBO with ``objective.jit``)."""
    cls = JitTraceELBO if cfg.jit else Trace_ELBO
    return cls(
        num_particles=cfg.num_particles,
        vectorize_particles=cfg.num_particles > 1,
        max_plate_nesting=1,
        ignore_jit_warnings=True,
    )
