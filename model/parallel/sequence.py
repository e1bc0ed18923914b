"""The DiT's per-token part on a share of the tokens: ``WanDiT.run_tokens`` taken over.

Every rank holds the whole model and runs the whole sampler loop; inside a DiT call each rank
embeds only its tokens (with their RoPE rotations and timesteps), runs the blocks with the
sequence-parallel self-attention (model/parallel/attention.py) and the output head, and one
all-gather per call hands every rank the whole output, so the solver step that follows is the
same on all ranks. With CFG parallel, the two halves of a guided batch (conditional rows
first, as ``guided_x0`` batches them) go to the two CFG groups.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from ..dit.attention import AttentionFn
from ..dit.model import WanDiT
from ..dit.patches import grid_of
from .attention import SequenceAttention
from .groups import Layout, ParallelError, ParallelGroups, choose_layout
from .shard import shard_groups, token_shards

log = logging.getLogger(__name__)


class SequenceParallel:
    """The ``sequence_parallel`` plan of a WanDiT over :class:`ParallelGroups`."""

    def __init__(self, groups: ParallelGroups) -> None:
        self.groups = groups

    def batch_rows(self, b: int) -> slice:
        """This CFG group's rows of a batch of ``b``; all of them when the batch does not split."""
        cfg = self.groups.layout.cfg
        if cfg == 1 or b % cfg:
            return slice(None)
        part = b // cfg
        return slice(self.groups.cfg_index * part, (self.groups.cfg_index + 1) * part)

    def __call__(self, dit: WanDiT, x: torch.Tensor, e: torch.Tensor, e0: torch.Tensor, ctx: torch.Tensor,
                 ctx_img: torch.Tensor | None, rope: torch.Tensor, attn: AttentionFn) -> torch.Tensor:
        g, lay = self.groups, self.groups.layout
        grid = grid_of(x.shape, dit.config.patch_size, dit.config.in_dim)
        shards = token_shards(grid, lay.seq)
        start, stop = shards[g.seq_rank]
        total = rope.shape[0]
        rows = self.batch_rows(x.shape[0])
        e, e0, ctx = e[rows], e0[rows], ctx[rows]
        ctx_img = None if ctx_img is None else ctx_img[rows]
        sizes = [b - a for a, b in shards]
        kernel = SequenceAttention(attn, g, sizes)
        tokens = dit.embed_patches(x[rows], slice(start, stop))            # (b, n, D) fp32
        tokens = dit.run_blocks(tokens, shard_groups(e0, total, start, stop), ctx, ctx_img, rope[start:stop], kernel)
        out = dit.head(tokens, shard_groups(e, total, start, stop), dit.compute_dtype)  # (b, n, P)
        return self.gather(out, sizes, x.shape[0], rows)

    def gather(self, out: torch.Tensor, sizes: list[int], batch: int, rows: slice) -> torch.Tensor:
        """Every rank's output (b, n_s, P) -> the whole (B, L, P) on every rank: one all-gather of
        the shards padded to the longest."""
        g, lay = self.groups, self.groups.layout
        if lay.world == 1:
            return out
        pad = torch.zeros(out.shape[0], max(sizes), out.shape[2], dtype=out.dtype, device=out.device)
        pad[:, :out.shape[1]] = out
        parts = [torch.empty_like(pad) for _ in range(lay.world)]
        g.wait(dist.all_gather(parts, pad, async_op=True), "gathering the DiT output")
        split = rows != slice(None)
        full = torch.empty(batch, sum(sizes), out.shape[2], dtype=out.dtype, device=out.device)
        for c in range(lay.cfg if split else 1):
            for s, n in enumerate(sizes):
                a = sum(sizes[:s])
                full[c * out.shape[0]:(c + 1) * out.shape[0], a:a + n] = parts[c * lay.seq + s][:, :n]
        return full


def weights_fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """Two float64 numbers that differ between unequal weights with near certainty: the sum and
    a position-weighted sum of every parameter and buffer."""
    tensors = list(module.state_dict().values())
    acc = torch.zeros(2, dtype=torch.float64, device=tensors[0].device if tensors else "cpu")
    for i, t in enumerate(tensors):   # on the weights' device: no copy of the model to the host
        f = t.detach().flatten().to(acc.device, torch.float64)
        acc[0] += f.sum()
        acc[1] += (f * torch.linspace(1, 2, f.numel(), dtype=torch.float64, device=acc.device)).sum() * (i + 1)
    return acc.cpu()


def check_same_weights(dit: WanDiT, groups: ParallelGroups) -> None:
    """Raise ParallelError naming the ranks whose weights differ from rank 0's."""
    mine = weights_fingerprint(dit).to(next(dit.parameters()).device)   # NCCL gathers device tensors
    every = [torch.empty_like(mine) for _ in range(groups.layout.world)]
    groups.wait(dist.all_gather(every, mine, async_op=True), "comparing the weights of the ranks")
    bad = [r for r, f in enumerate(every) if not torch.allclose(f, every[0], rtol=1e-9, atol=0)]
    if bad:
        raise ParallelError(f"the model weights of rank(s) {bad} differ from rank 0's: every rank must load the "
                            "same checkpoint (same file, same precision, same LoRAs)")


def parallelize(dit: WanDiT, cfg: int = 1, ulysses: int | None = None, timeout_s: float | None = None,
                check_weights: bool = True) -> ParallelGroups:
    """Make ``dit`` run sequence parallel over the initialised default process group (every rank
    calls this with its own copy of the same model). ``cfg=2`` splits guided batches between two
    rank groups. Returns the groups; ``dit.sequence_parallel = None`` undoes it."""
    if not dist.is_initialized():
        raise ParallelError("torch.distributed is not initialised: launch with torchrun and call "
                            "model.parallel.init_distributed() first")
    layout: Layout = choose_layout(dist.get_world_size(), dit.config.num_heads, cfg, ulysses)
    groups = ParallelGroups(layout, **({} if timeout_s is None else {"timeout_s": timeout_s}))
    if check_weights:
        check_same_weights(dit, groups)
    dit.sequence_parallel = SequenceParallel(groups)
    if groups.rank == 0:
        log.info("sequence parallel DiT: %d ranks = %d CFG x %d Ulysses x %d ring", layout.world, layout.cfg,
                 layout.ulysses, layout.ring)
    return groups
