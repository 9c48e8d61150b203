"""The processes of a ``torchrun`` job: their place (:class:`World`), the process group
(:func:`join`, :func:`leave`), and work shared among them in blocks (:func:`share`,
:func:`gather`, :func:`on_main`, :func:`score_rounds`, :func:`score_blocks`).

With one process every function here is the plain computation: nothing is joined, nothing is
exchanged. A failed collective (a peer killed) becomes :class:`PeerLost`, one line.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

__all__ = ["PeerLost", "World", "collective", "gather", "join", "leave", "on_main",
           "score_blocks", "score_rounds", "share"]


class PeerLost(RuntimeError):
    """A collective operation failed: another process of the torchrun job stopped."""


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job: ``rank`` of ``size`` processes, ``local_rank``
    on its machine (one process: 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        """From torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (absent: one process)."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                   int(env.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes, logs and prints."""
        return self.rank == 0


def join(device: torch.device) -> World:
    """torchrun's :class:`World`, its process group joined (once) when it has more than one
    process: NCCL when ``device`` is a CUDA device (each process on GPU ``LOCAL_RANK``), gloo
    otherwise; the rendezvous is torchrun's (``MASTER_ADDR``, ``MASTER_PORT``)."""
    world = World.from_env()
    if world.size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world


def leave(synchronize: bool = False) -> None:
    """Leave the process group, if this process joined one.

    :param synchronize: first wait for the other processes at a barrier (for gloo
        ``monitored_barrier``, 60 s at most), so that none tears its connections down while
        another still uses them; for a process whose command succeeded. A barrier that fails
        (a peer gone) is passed over: leaving goes on.

    The garbage is collected first, so that no
    :class:`~torch.nn.parallel.DistributedDataParallel` module left in a reference cycle
    outlives the group into the interpreter's finalization.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if synchronize:
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=60))
            else:
                dist.barrier()
        except RuntimeError:  # a peer failed or is gone: nothing to wait for
            pass
    dist.destroy_process_group()


def share(n: int, world: World) -> slice:
    r"""The contiguous share of ``n`` items of process ``world.rank``:
    :math:`[\lfloor r n / W \rfloor, \lfloor (r + 1) n / W \rfloor)`. The shares of the W
    processes cover 0..n−1 once each (no padding, no duplicate); their sizes differ by at most
    one (a share is empty when n < W)."""
    return slice(world.rank * n // world.size, (world.rank + 1) * n // world.size)


#: set when a collective failed because a peer stopped (:class:`PeerLost`): the job is ending
peer_lost = False


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn the failure of a collective (a peer killed or failed) into :class:`PeerLost`."""
    try:
        yield
    except RuntimeError as err:
        text = str(err)
        if isinstance(err, PeerLost) or not (isinstance(err, dist.DistError)
                                             or "peer" in text.lower()):
            raise
        # gloo's "[.../pair.cc:537] Read error [HOST]:PORT: Connection reset by peer. This is
        # typically caused by ...": its first sentence, without the source location
        detail = re.sub(r"^\[[^\]]*\]\s*", "", text.strip()).split(". ")[0].splitlines()
        global peer_lost
        peer_lost = True  # torchrun's SIGTERM that follows is part of this failure, not news
        raise PeerLost(f"{what} failed: another process of this torchrun job stopped "
                       f"({detail[0][:160] if detail else type(err).__name__})") from err


def gather(items: list, world: World) -> list:
    """Every process's ``items`` (picklable), concatenated in rank order, on every process."""
    if world.size == 1:
        return list(items)
    out: list[Any] = [None] * world.size
    with collective("gathering results"):
        dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def on_main(read: Callable[[], Any], world: World, what: str = "sharing rank 0's state") -> Any:
    """``read()`` run by rank 0 alone (it reads the folders) and its result, or the exception it
    raised, on every process (picklable): every process returns it, or raises it, alike (one
    process: ``read()``)."""
    if world.size == 1:
        return read()
    box: list[Any] = [None]
    if world.is_main:
        try:
            box[0] = (True, read())
        except Exception as err:  # noqa: BLE001 - handed to every process, raised there
            box[0] = (False, err)
    with collective(what):
        dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def score_rounds(score: Callable[[int], Any], todo: Sequence[int], world: World,
                 keep: Callable[[int, Any], None], progress: bool = False) -> None:
    """``score(b)`` of every block b of ``todo`` (the same list on every process), in rounds of
    one block per process; each round's results are gathered on every process and handed to
    ``keep(b, result)`` in block order before the next round starts, so a crash loses only the
    round in flight (a resumable evaluation saves each block in ``keep`` on rank 0). The work
    goes to whichever blocks remain, however many a restart found done.

    :param score: ``b -> result`` (picklable).
    :param progress: a progress bar over the blocks, on rank 0.
    """
    todo = list(todo)
    bar = tqdm(total=len(todo), disable=not (progress and world.is_main), leave=False,
               unit="block", desc="blocks")
    for start in range(0, len(todo), world.size):
        round_ = todo[start : start + world.size]
        mine = [(round_[world.rank], score(round_[world.rank]))] if world.rank < len(round_) \
            else []
        for b, result in sorted(gather(mine, world), key=lambda item: item[0]):
            keep(b, result)
        bar.update(len(round_))
    bar.close()


def score_blocks(score: Callable[[int, slice], Any], n: int, block: int, world: World,
                 progress: bool = False) -> list:
    """``score(b, points)`` of every block b of ``block`` consecutive points of ``n`` (the last
    one shorter), each process scoring its contiguous share of the blocks (:func:`share`);
    every block's result, in block order, on every process.

    :param score: ``(b, slice of the points) -> result`` (picklable).
    :param progress: a progress bar over this process's blocks.
    """
    blocks = [slice(start, min(start + block, n)) for start in range(0, n, block)]
    mine = range(len(blocks))[share(len(blocks), world)]
    bar = tqdm(mine, disable=not progress, leave=False, unit="block", desc="blocks")
    return gather([score(b, blocks[b]) for b in bar], world)
