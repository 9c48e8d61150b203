"""Pyro's JIT objectives: argument handling, the allowlist, and the compiled-equals-eager check.

``torch.jit.trace`` takes tensors only, and Pyro compiles one graph per argument count; a Python
float β or a ``None`` temperature would break it, and a float changing every warm-up step would
recompile. :class:`TensorArgsMixin` drops trailing defaults and turns β into a tensor, so the
loop can call every objective the same way: ``loss_and_grads(model, guide, x, beta, temperature)``;
its ``loss_and_grads_deferred`` leaves the loss on the device (no per-step host synchronisation).

``objective.jit = "auto"`` compiles only what is known to trace correctly: the components in
:data:`JIT_ALLOWLIST`, each of which ``tests/inference/test_jit.py`` trains compiled and eager to
the same parameters (a user's component class may declare ``jit_safe = True``);
:func:`jit_blockers` lists the components that are not, and :func:`compiled_matches_eager`
checks the first batch before training relies on the graph.
"""

from __future__ import annotations

import torch

from vaelab.seed import get_rng_state, set_rng_state

__all__ = [
    "JIT_ALLOWLIST",
    "TensorArgsMixin",
    "compiled_matches_eager",
    "jit_blockers",
    "tensor_args",
]


def tensor_args(x, beta=1.0, temperature=None) -> tuple:
    """``(x,)``, ``(x, β)`` or ``(x, β, τ)`` as tensors, omitting trailing defaults."""
    if temperature is not None:
        return x, torch.as_tensor(beta, dtype=x.dtype), torch.as_tensor(temperature)
    if isinstance(beta, (int, float)) and beta == 1.0:
        return (x,)
    return x, torch.as_tensor(beta, dtype=x.dtype)


class TensorArgsMixin:
    """Mix into a ``Jit*_ELBO`` before the Pyro class: converts the loop's arguments."""

    def loss(self, model, guide, *args, **kwargs):
        return super().loss(model, guide, *tensor_args(*args), **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return super().loss_and_grads(
            model, guide, *tensor_args(*args), **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return super().differentiable_loss(
            model, guide, *tensor_args(*args), **kwargs)

    def loss_and_grads_deferred(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``loss_and_grads`` without reading the loss back to the host (Pyro's ends in
        ``.item()``, a device synchronisation on a GPU): the gradients, and the loss as a
        detached scalar tensor on the model's device."""
        args = tensor_args(*args)
        both = getattr(super(), "loss_and_surrogate_loss", None)  # JitTrace_ELBO's two graphs
        if both is not None:
            loss, surrogate = both(model, guide, *args, **kwargs)
        else:
            loss = surrogate = super().differentiable_loss(  # type: ignore[misc]
                model, guide, *args, **kwargs)
        surrogate.backward()
        return loss.detach()


#: component classes whose compiled objective is tested equal to the eager one
JIT_ALLOWLIST = frozenset({
    "GaussianLatent", "CategoricalLatent",
    "StandardNormalPrior", "LearnedNormalPrior", "LaplacePrior", "CategoricalPrior",
    "BernoulliLikelihood", "NormalLikelihood",
    "NormalPosterior", "RelaxedPosterior",
})


def jit_blockers(vae) -> list[str]:
    """The components of ``vae`` not on :data:`JIT_ALLOWLIST` (nor declaring ``jit_safe``)."""
    parts = {
        "latent type": vae.generative.latent,
        "prior": vae.generative.prior,
        "likelihood": vae.generative.likelihood,
        "guide family": vae.inference.posterior,
    }
    return [f"{role} {type(m).__name__}" for role, m in parts.items()
            if type(m).__name__ not in JIT_ALLOWLIST and not getattr(type(m), "jit_safe", False)]


def compiled_matches_eager(compiled, eager, vae, argsets: list[tuple], rtol: float = 1e-5) -> bool:
    """Compile ``compiled`` for every argument pattern training will call it with (``argsets``,
    e.g. ``[(x,), (x, 0.5)]``: Pyro compiles one graph per argument count), then say whether
    its loss on ``argsets[0]`` equals the eager one's on the same draws.

    Compiling runs the function several times; doing it here, with the global RNG state
    restored afterwards and the gradients cleared, makes training draw exactly what the eager
    objective would draw.
    """
    state = get_rng_state()
    try:
        for args in argsets:
            set_rng_state(state)
            compiled.loss_and_grads(vae.model, vae.guide, *args)
        set_rng_state(state)
        want = eager.loss_and_grads(vae.model, vae.guide, *argsets[0])
        set_rng_state(state)
        got = compiled.loss_and_grads(vae.model, vae.guide, *argsets[0])
    finally:
        set_rng_state(state)
        for p in vae.parameters():
            p.grad = None
    return abs(got - want) <= rtol * (1.0 + abs(want))
