"""Who does what in a parallel run: the rank layout (CFG groups × sequence ranks, the sequence
ranks split into Ulysses × ring) and the torch.distributed process groups that carry it.

World rank ``r = c · S + s``: ``c`` the CFG group (conditional / unconditional half of a guided
batch), ``s`` the rank inside the sequence group of size ``S``. A sequence group is ``R`` ring
positions of ``U`` Ulysses ranks: ``s = ring · U + ulysses``. Ulysses (DeepSpeed-Ulysses,
Jacobs et al. 2023, arXiv:2309.14509) exchanges heads, so ``U`` must divide the head count;
ring attention (Liu et al. 2023, arXiv:2310.01889) takes the rest, as USP does (Fang & Zhao
2024, arXiv:2405.07719). Every group carries the run's timeout.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0


class ParallelError(RuntimeError):
    """A parallel run cannot go on: a peer died or timed out, or the ranks disagree."""


@dataclass(frozen=True)
class Layout:
    """The degrees of a run: ``world = cfg · ulysses · ring``."""

    world: int
    cfg: int = 1
    ulysses: int = 1
    ring: int = 1

    @property
    def seq(self) -> int:
        return self.ulysses * self.ring

    def coords(self, rank: int) -> tuple[int, int, int, int]:
        """(cfg group, sequence rank, ring position, Ulysses rank) of a world rank."""
        c, s = divmod(rank, self.seq)
        return c, s, s // self.ulysses, s % self.ulysses


def choose_layout(world: int, heads: int, cfg: int = 1, ulysses: int | None = None) -> Layout:
    """The layout of ``world`` ranks for a model with ``heads`` attention heads: ``cfg`` (1 or 2)
    CFG groups, and in each sequence group the largest Ulysses degree that divides both the group
    size and the head count (or ``ulysses`` when given); ring attention over the rest."""
    if world < 1:
        raise ValueError(f"a parallel run needs at least one rank, got {world}")
    if cfg not in (1, 2) or world % cfg:
        raise ValueError(f"cfg parallel degree must be 1 or 2 and divide the {world} ranks; got {cfg}")
    seq = world // cfg
    if ulysses is None:
        ulysses = max(u for u in range(1, seq + 1) if seq % u == 0 and heads % u == 0)
    elif ulysses < 1 or seq % ulysses or heads % ulysses:
        raise ValueError(f"Ulysses degree {ulysses} must divide both the sequence group ({seq} ranks) "
                         f"and the {heads} attention heads")
    return Layout(world, cfg, ulysses, seq // ulysses)


class ParallelGroups:
    """The process groups of a :class:`Layout` on an initialised default group. Every rank
    builds all of them, in the same order (torch.distributed requires it)."""

    def __init__(self, layout: Layout, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not dist.is_initialized():
            raise ParallelError("torch.distributed is not initialised: launch with torchrun, or call "
                                "init_distributed() first")
        if dist.get_world_size() != layout.world:
            raise ValueError(f"layout for {layout.world} ranks, but the process group has {dist.get_world_size()}")
        self.layout = layout
        self.rank = dist.get_rank()
        self.timeout = timedelta(seconds=timeout_s)
        self.cfg_index, self.seq_rank, self.ring_pos, self.ulysses_rank = layout.coords(self.rank)
        U, S = layout.ulysses, layout.seq
        self.seq_group = self.ulysses_group = self.ring_group = None
        for c in range(layout.cfg):
            base = c * S
            g = self._group([base + s for s in range(S)])
            if c == self.cfg_index:
                self.seq_group = g
            for ring in range(layout.ring):
                g = self._group([base + ring * U + u for u in range(U)])
                if (c, ring) == (self.cfg_index, self.ring_pos):
                    self.ulysses_group = g
            for u in range(U):
                g = self._group([base + ring * U + u for ring in range(layout.ring)])
                if (c, u) == (self.cfg_index, self.ulysses_rank):
                    self.ring_group = g
        # world ranks of the ring neighbours (send K/V on, receive from behind)
        ring_rank = lambda pos: self.cfg_index * S + (pos % layout.ring) * U + self.ulysses_rank  # noqa: E731
        self.ring_next, self.ring_prev = ring_rank(self.ring_pos + 1), ring_rank(self.ring_pos - 1)

    def _group(self, ranks: list[int]) -> dist.ProcessGroup | None:
        return dist.new_group(ranks, timeout=self.timeout) if len(ranks) > 1 else None

    def wait(self, work: dist.Work | None, what: str) -> None:
        """Wait for an asynchronous collective within the run's timeout, or raise ParallelError."""
        if work is None:
            return
        try:
            work.wait(self.timeout)
        except Exception as e:  # gloo / NCCL raise their own types; the user needs one message
            raise ParallelError(f"rank {self.rank}: {what} failed or timed out after "
                                f"{self.timeout.total_seconds():.0f} s; another rank has probably died "
                                f"or stopped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def init_distributed(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the run torchrun started (``env://``: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and
    return this rank's device: ``cuda:LOCAL_RANK`` with NCCL where CUDA is present, else the CPU
    with gloo. Every collective of the run times out after ``timeout_s``."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing and not dist.is_initialized():
        raise ParallelError(f"{', '.join(missing)} not set: start the parallel run with torchrun "
                            "(README: 'Several GPUs and machines')")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and backend != "gloo"
    if cuda:
        if local >= torch.cuda.device_count():
            raise ParallelError(f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                                f"use --nproc_per_node {torch.cuda.device_count()} or fewer")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), timeout=timedelta(seconds=timeout_s),
                                device_id=device if cuda else None)
    return device
