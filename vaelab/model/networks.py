"""Multilayer perceptrons shared by the encoder and the decoder."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from torch import nn

__all__ = ["MLP", "ACTIVATIONS", "register_module"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


class MLP(nn.Sequential):
    r"""``in_features → hidden_sizes[0] → … → out_features`` with an activation between layers.

    ``hidden_sizes = []`` gives a single affine map (the linear VAE of probabilistic PCA).
    Any number of leading batch dimensions is accepted:
    ``(..., in_features) → (..., out_features)``.

    :param in_features: input width.
    :param hidden_sizes: hidden widths, in order from the input.
    :param out_features: output width.
    :param activation: a key of :data:`ACTIVATIONS`.
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        out_features: int,
        activation: str = "relu",
    ):
        widths = [in_features, *hidden_sizes, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features

    @property
    def linear_layers(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Module's name
        return super().forward(input)


def register_module(name: str, module: nn.Module) -> nn.Module:
    """``pyro.module(name, module)``, robust to Pyro's process-global param store.

    Another model built in the same process (a second VAE, a test, a benchmark) may have left
    tensors under the same names; plain ``pyro.module`` would then put *those* tensors in the
    trace (and SVI or the JIT would optimize or trace the wrong ones). Stale entries are dropped
    first, so the trace always holds this module's own parameters.
    """
    store = pyro.get_param_store()
    params = store._params  # unconstrained values; the identity map for real parameters
    for pname, p in module.named_parameters():
        full = f"{name}$$${pname}"
        old = params.get(full)
        if old is not None and old is not p:
            del store[full]
    return pyro.module(name, module)
