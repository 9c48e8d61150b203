r"""Mini-batches of an in-memory tensor, in an order fixed by ``(seed, epoch)``.

Data sets here fit in memory as one ``(N, D)`` tensor, so a batch is an index slice of it: no
per-item :class:`torch.utils.data.Dataset`, no worker processes. The shuffle permutation of epoch
``e`` comes from a dedicated generator seeded by ``(seed, e)``
(:func:`vaelab.seed.derived_generator`), never from the global RNG, so

* the same ``(seed, epoch)`` always gives the same batches, and
* a run resumed at epoch ``e``, batch ``b`` (``start_batch=b``) continues exactly where it stopped.

Example::

    for epoch in range(epochs):
        for x in iterate_batches(splits.train, 100, shuffle=True, seed=cfg.train.seed, epoch=epoch):
            ...  # x: (B, D)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from vaelab.seed import derived_generator

__all__ = ["batch_indices", "iterate_batches", "num_batches"]

_BATCH_STREAM = 0x0BA7C4  # keeps batch order unrelated to other draws made from the same seed


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """The number of batches :func:`iterate_batches` yields for ``n`` points.

    :param n: number of data points.
    :param batch_size: points per batch.
    :param drop_last: drop a final batch smaller than ``batch_size``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    return n // batch_size if drop_last else -(-n // batch_size)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool = False,
    start_batch: int = 0,
) -> Iterator[torch.Tensor]:
    """Index tensors of the batches of one epoch over ``n`` points.

    :param n: number of data points.
    :param batch_size: points per batch.
    :param shuffle: permute the points (by ``(seed, epoch)``); otherwise ``0, 1, ..., n-1``.
    :param seed: run seed.
    :param epoch: epoch number, the second key of the permutation.
    :param drop_last: drop a final batch smaller than ``batch_size``.
    :param start_batch: skip the first batches (exact resume inside an epoch).
    :returns: an iterator of int64 CPU tensors of shape ``(B,)``, together covering every index
        once (but the dropped tail).
    """
    count = num_batches(n, batch_size, drop_last)
    if shuffle:
        order = torch.randperm(n, generator=derived_generator(seed, epoch, _BATCH_STREAM))  # (n,)
    else:
        order = torch.arange(n)  # (n,)
    for b in range(max(start_batch, 0), count):
        yield order[b * batch_size : (b + 1) * batch_size]  # (B,)


def iterate_batches(
    x: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool = False,
    start_batch: int = 0,
) -> Iterator[torch.Tensor]:
    """Batches ``x[idx]`` of an in-memory tensor, for the indices of :func:`batch_indices`.

    :param x: data, shape ``(N, ...)``, on any device (the permutation is drawn on the CPU, so
        the order does not depend on the device).
    :param batch_size: points per batch.
    :param shuffle: permute the points by ``(seed, epoch)``.
    :param seed: run seed.
    :param epoch: epoch number.
    :param drop_last: drop a final batch smaller than ``batch_size``.
    :param start_batch: skip the first batches (exact resume inside an epoch).
    :returns: an iterator of tensors of shape ``(B, ...)`` on ``x``'s device.
    """
    for idx in batch_indices(
        x.shape[0], batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
        drop_last=drop_last, start_batch=start_batch,
    ):
        if shuffle:
            yield x[idx.to(x.device)]  # (B, ...)
        else:
            yield x[int(idx[0]) : int(idx[-1]) + 1]  # (B, ...), a view: no copy
