"""The train / validation / test splits of a data set, as one validated object."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from vaelab.data.errors import DataError
from vaelab.data.values import KINDS

__all__ = ["SPLITS", "DataSplits"]

SPLITS = ("train", "valid", "test")


@dataclass(repr=False)
class DataSplits:
    r"""Train, validation and test data of one data set, flattened to ``(N, D)`` float32.

    :param train: shape ``(N_train, D)``.
    :param valid: shape ``(N_valid, D)``.
    :param test: shape ``(N_test, D)``.
    :param name: the data set's registry name.
    :param image_shape: ``(H, W)`` with ``H * W = D`` for image data, else ``None``.
    :param binary: every value is 0 or 1.
    :param levels: the number of discrete values a coordinate takes, data given as
        ``level / (levels - 1)``: 256 for 8-bit grey levels, 2 for binary data, ``None`` for
        counts and continuous data.
    :param labels: int64 class labels of shape ``(N_split,)`` by split name; may be empty.
    :param values: how the numbers were read, one of ``binary``, ``levels``, ``counts``,
        ``real`` (:mod:`vaelab.data.values`); ``None``: derived from ``binary`` and ``levels``.
    """

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    name: str
    image_shape: tuple[int, int] | None = None
    binary: bool = False
    levels: int | None = None
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    values: str | None = None

    def __post_init__(self) -> None:
        if self.values is None:
            self.values = "binary" if self.binary else "levels" if self.levels else "real"
        if self.values not in KINDS:
            raise DataError(f"data set {self.name!r}: values must be one of {', '.join(KINDS)}, "
                            f"got {self.values!r}")
        dims = {s: tuple(self.split(s).shape) for s in SPLITS}
        if any(len(d) != 2 for d in dims.values()) or len({d[1] for d in dims.values()}) != 1:
            raise DataError(f"data set {self.name!r}: splits must be (N, D) with one D, got {dims}")
        if any(self.split(s).dtype != torch.float32 for s in SPLITS):
            raise DataError(f"data set {self.name!r}: splits must be float32")
        if self.image_shape is not None and math.prod(self.image_shape) != self.dim:
            raise DataError(
                f"data set {self.name!r}: image_shape {self.image_shape} does not hold D={self.dim}"
            )
        for s, y in self.labels.items():
            if s not in SPLITS or y.shape != (self.split(s).shape[0],):
                raise DataError(f"data set {self.name!r}: labels[{s!r}] do not match the split")

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one data point: ``(C, H, W)`` for images (C = 1 for the grey and binary
        sets), ``(D,)`` for tables; ``D = prod(shape)``."""
        if self.image_shape is not None:
            return (1, *self.image_shape)
        return (self.dim,)

    @property
    def dim(self) -> int:
        """D, the number of coordinates of a data point."""
        return self.train.shape[1]

    def split(self, name: str) -> torch.Tensor:
        """The split ``"train"``, ``"valid"`` or ``"test"``."""
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        """Number of points per split."""
        return {s: self.split(s).shape[0] for s in SPLITS}

    def replace(self, **changes: object) -> DataSplits:
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        sizes = "/".join(str(n) for n in self.sizes().values())
        return (
            f"DataSplits(name={self.name!r}, train/valid/test={sizes}, D={self.dim}, "
            f"image_shape={self.image_shape}, values={self.values!r}, binary={self.binary}, "
            f"levels={self.levels}, labels={sorted(self.labels)})"
        )
