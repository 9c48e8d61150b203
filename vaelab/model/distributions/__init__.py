r"""Custom distributions for vaelab, one topic per module (as Pyro's ``pyro/distributions/``).

Pixel likelihoods
-----------------
Both pixel likelihoods live on the same support (:mod:`.unit_grid`): the grid of ``num_levels``
points

.. math:: x_k = k \, \Delta, \qquad \Delta = \frac{1}{L - 1}, \qquad k = 0, \dots, L - 1,

i.e. 8-bit data given as ``level / 255`` (``L = 256``). Their ``log_prob`` is a log *probability
mass* on that grid, so bits/dim of :class:`DiscretizedLogistic` (:mod:`.discretized_logistic`,
PixelCNN++'s edge bins [1, 2]) and :class:`PixelCategorical` (:mod:`.pixel_categorical`) are
directly comparable, and the likelihood registry can treat both uniformly on [0, 1]-scaled data.
:class:`BernoulliImage` (:mod:`.bernoulli_image`) is the binary-image likelihood with its event
sum fused.

Relaxed categorical latents
---------------------------
:class:`ExpRelaxedCategorical` (:mod:`.relaxed_categorical`) is the log-space Concrete /
Gumbel-softmax distribution [3, 4]: its samples are the *logs* of points on the simplex and stay
finite at every temperature (the simplex-space ``RelaxedOneHotCategorical`` underflows to exact
zeros at low temperature). :func:`soft` and :func:`straight_through` (:mod:`.straight_through`,
[4, 5]) map a log-space sample to the soft and to the straight-through hard one-hot sample;
:func:`kl_categorical` (:mod:`.discrete`) is the exact KL between the unrelaxed categoricals (the
Jang et al. convention).

Exponential draws
-----------------
:func:`exponential` (:mod:`.exponential`) draws Exp(1) variates bit for bit as torch's
``exponential_`` does, twice as fast on the CPU (the exponential races of fused IS and GR-MCK).

Count likelihoods
-----------------
:func:`count_distribution` (:mod:`.counts`) builds the per-feature Poisson, negative binomial
(mean μ, inverse dispersion θ) and zero-inflated negative binomial of the count likelihoods from
a log-mean, reusing Pyro's own classes (``Poisson``, ``NegativeBinomial``,
``ZeroInflatedNegativeBinomial``). :class:`LibraryScaledCounts` is the same family whose means
are proportions times the observed total of the row scored (single-cell VAEs with an observed
library size [6]).

Categorical latents
-------------------
:class:`CategoricalProduct` (:mod:`.categorical_product`) is N independent one-hot categoricals
of K classes as one event of shape ``(N, K)`` (the hard latent of ``model.latent =
"categorical"``), enumerating its joint support of :math:`K^N` states in the order of
:func:`joint_states`; :func:`logits_of` reads the logits of any categorical-type distribution
through its ``to_event`` / mask wrappers (both in :mod:`.discrete`).

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

from vaelab.model.distributions.bernoulli_image import BernoulliImage
from vaelab.model.distributions.categorical_product import CategoricalProduct
from vaelab.model.distributions.counts import (
    COUNT_FAMILIES,
    MAX_LOG_RATE,
    LibraryScaledCounts,
    count_distribution,
)
from vaelab.model.distributions.discrete import joint_states, kl_categorical, logits_of
from vaelab.model.distributions.discretized_logistic import DiscretizedLogistic
from vaelab.model.distributions.exponential import exponential
from vaelab.model.distributions.pixel_categorical import PixelCategorical
from vaelab.model.distributions.relaxed_categorical import ExpRelaxedCategorical
from vaelab.model.distributions.straight_through import soft, straight_through
from vaelab.model.distributions.unit_grid import UnitGrid

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
    "exponential",
    "joint_states",
    "kl_categorical",
    "logits_of",
    "soft",
    "straight_through",
]
