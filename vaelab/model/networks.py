"""Multilayer perceptrons shared by the encoder and the decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "ACTIVATIONS"]

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
    Any number of leading batch dimensions is accepted: ``(..., in_features) → (..., out_features)``.

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
