"""Every component registry, populated in one place.

Components register themselves with a decorator where they are defined (``@PRIORS.register``);
this module imports each defining module once, so that importing it is what fills the
registries. Nothing else imports a module for its registration side effect.
"""

from __future__ import annotations

import vaelab.data.datasets
import vaelab.guide.iaf
import vaelab.guide.posteriors
import vaelab.guide.relaxed
import vaelab.inference.objectives
import vaelab.inference.proposals
import vaelab.model.latents
import vaelab.model.likelihoods
import vaelab.model.networks
import vaelab.model.priors

__all__ = [
    "DATASETS", "FAMILIES", "LATENTS", "LIKELIHOODS", "NETWORKS", "OBJECTIVES", "PRIORS",
    "PROPOSALS",
]

DATASETS = vaelab.data.datasets.DATASETS
FAMILIES = vaelab.guide.posteriors.FAMILIES
LATENTS = vaelab.model.latents.LATENTS
LIKELIHOODS = vaelab.model.likelihoods.LIKELIHOODS
NETWORKS = vaelab.model.networks.NETWORKS
OBJECTIVES = vaelab.inference.objectives.OBJECTIVES
PRIORS = vaelab.model.priors.PRIORS
PROPOSALS = vaelab.inference.proposals.PROPOSALS
