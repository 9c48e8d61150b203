r"""Randomness keyed by the data point: block seeds and per-point reparameterization noise.

**Blocks.** A resumable or sharded evaluation cuts its points into fixed blocks and seeds block b
by :func:`block_seed` (seed, b), so a block's numbers do not depend on which process scores it,
nor on how many blocks a restart found done.

**Points** (``train.per_point_noise``, on with more than one training process): every random
number of training point i in epoch e comes from generators seeded by (seed, e, i), one stream
for its preprocessing noise (dynamic binarization, dequantization, :data:`DATA_STREAM`) and one
for the guide's reparameterization noise ε (:data:`LATENT_STREAM`, drawn by
:class:`PointNoise`). A point gets the same draws whatever its batch position, share or world
size, so a 1-process and a W-process run compute the same gradients up to float summation
order, and a run resumes exactly on another number of processes.

This module is mathematics only: it knows nothing of processes or run folders (the lab's
:mod:`vaelab.runs.data_parallel` and :mod:`vaelab.runs.sharded` use it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.poutine.messenger import Messenger
from torch.distributions import Independent, Normal, TransformedDistribution
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from torch.distributions.utils import clamp_probs

from vaelab.inference.importance import DATA_PLATE
from vaelab.registry import ConfigError
from vaelab.seed import derived_generator, derived_seed

__all__ = ["DATA_STREAM", "LATENT_STREAM", "PointNoise", "block_seed", "point_generators",
           "reparameterized_sample"]

# streams of a data point's generators, unrelated to each other and to other draws
DATA_STREAM = 0xDA7A  #: preprocessing noise
LATENT_STREAM = 0x1A7E  #: the guide's reparameterization noise


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block`` of an evaluation seeded by ``seed``: mixed from both
    (:func:`vaelab.seed.derived_seed`), below 2^32 as NumPy wants."""
    return derived_seed(seed, block) % 2**32




def point_generators(seed: int, epoch: int, idx: torch.Tensor, stream: int) -> list:
    """One CPU generator per data point, seeded by (seed, epoch, index, stream)."""
    return [derived_generator(seed, epoch, i, stream) for i in idx.tolist()]


def reparameterized_sample(fn, noise: Callable[[str, torch.Size], torch.Tensor]) -> torch.Tensor:
    r"""``fn.rsample()`` with its standard noise taken from ``noise(kind, shape)`` (``kind``
    ``"normal"`` or ``"uniform"``, ``shape`` the full batch + event shape) instead of the global
    generator; the same formulas as torch's ``rsample``:

    * ``Normal``: :math:`z = μ + ε σ`, ε standard normal;
    * ``TransformedDistribution`` (the IAF guide): the base sample pushed through the transforms;
    * ``ExpRelaxedCategorical``: :math:`y = \mathrm{log\_softmax}((\ell + g) / τ)`,
      :math:`g = -\log(-\log u)`, u uniform;
    * ``Independent`` and Pyro's masked wrapper: their base distribution's.

    :raises ConfigError: any other distribution (its noise cannot be keyed by data point).
    """
    if isinstance(fn, (Independent, MaskedDistribution)):
        return reparameterized_sample(fn.base_dist, noise)
    if isinstance(fn, TransformedDistribution):
        z = reparameterized_sample(fn.base_dist, noise)
        for t in fn.transforms:
            z = t(z)
        return z
    shape = fn.batch_shape + fn.event_shape
    if isinstance(fn, Normal):
        eps = noise("normal", shape).to(fn.loc)  # (..., B, d)
        return fn.loc + eps * fn.scale
    if isinstance(fn, ExpRelaxedCategorical):
        u = clamp_probs(noise("uniform", shape).to(fn.logits))  # (..., B, N, K)
        scores = (fn.logits - (-u.log()).log()) / fn.temperature
        return scores - scores.logsumexp(dim=-1, keepdim=True)
    raise ConfigError(
        f"train.per_point_noise: the guide's latent site draws from {type(fn).__name__}, whose "
        "noise vaelab cannot key by data point (it can for the guide families normal, iaf and "
        "relaxed); train it in one process with train.per_point_noise = 'auto' or false")


class PointNoise(Messenger):
    r"""Draw the guide's latent sites from one generator per data point.

    For the site ``"z"`` in ``pyro.plate("data")`` (its distribution broadcast by every
    enclosing plate, e.g. to ``(K, B, d)`` under a particle plate), row n of the data dimension
    gets its standard noise from ``generators[n]``
    (:func:`reparameterized_sample`): point n's draws do not depend on the other points of the
    batch. Enter it *outside* the objective's call so that it sees the site after every plate;
    model sites replayed from the guide and enumerated sites are left alone. Successive guide
    runs within one use (several particles in a loop) continue each point's stream.

    :param generators: one per point of the batch, in batch order (:func:`point_generators`).
    :param sites: the names of the latent sites to draw (``None``: ``"z"``, ``"z_1"``, …).
    """

    def __init__(self, generators: Sequence[torch.Generator],
                 sites: frozenset[str] | None = None):
        super().__init__()
        self.generators, self.sites = list(generators), sites

    def _drawn(self, name: str) -> bool:
        """Whether site ``name`` is drawn here: one of ``sites``; by default ``"z"`` and the
        layers ``"z_1" … "z_L"`` of an L-layer model."""
        if self.sites is not None:
            return name in self.sites
        return name == "z" or (name.startswith("z_") and name[2:].isdigit())

    def _pyro_sample(self, msg) -> None:
        if (not self._drawn(msg["name"]) or msg["is_observed"] or msg["value"] is not None
                or msg["infer"].get("enumerate")):
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == DATA_PLATE), None)
        if frame is None:
            raise ConfigError(f"train.per_point_noise: site {msg['name']!r} is outside "
                              f"pyro.plate({DATA_PLATE!r}): its draw belongs to no data point")
        fn = msg["fn"]
        axis = len(fn.batch_shape) + frame.dim  # the data dimension of batch + event shape
        msg["value"] = reparameterized_sample(fn, lambda kind, shape: self.noise(kind, shape,
                                                                                 axis))

    def noise(self, kind: str, shape: torch.Size, axis: int) -> torch.Tensor:
        """Standard ``kind`` noise of ``shape``, slice n along ``axis`` from point n's stream."""
        if axis >= len(shape) or shape[axis] != len(self.generators):
            raise ValueError(f"PointNoise: {len(self.generators)} generators for a draw of shape "
                             f"{tuple(shape)} (data dimension {axis})")
        rest = shape[:axis] + shape[axis + 1:]
        draw = torch.randn if kind == "normal" else torch.rand
        return torch.stack([draw(rest, generator=g) for g in self.generators], dim=axis)


# --------------------------------------------------------------------------------------------
# training
