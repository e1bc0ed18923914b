"""Self-attention over a sequence split across ranks: the single-rank kernel plus two exchanges.

- Ulysses: an all-to-all turns (all heads, my tokens) into (my heads, the group's tokens), the
  single-rank kernel runs, and a second all-to-all turns it back (arXiv:2309.14509).
- Ring: keys and values travel round the ring group; each block's scores are merged into the
  running result by the online softmax (Milakov & Gimelshein 2018, arXiv:1805.02867), in
  float32, so the result equals full attention up to summation order (arXiv:2310.01889).
- Both (USP, arXiv:2405.07719): Ulysses inside a group, ring across groups.

Shards may differ in length (a split of token rows need not be even), so the exchanges use
per-rank split sizes. q arrives scaled (see model/dit/attention.py); all tensors are
(B, heads, L, head_dim), the result (B, L, heads · head_dim), as every kernel of the DiT.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..dit.attention import AttentionFn
from .groups import ParallelGroups

QUERY_CHUNK_BYTES = 16 * 2**20   # score block bound of the ring's per-block attention (as math_attention)


def heads_to_tokens(t: torch.Tensor, groups: ParallelGroups, sizes: list[int]) -> torch.Tensor:
    """Ulysses' first exchange: t (B, U, h, n, d), rank j's heads at [:, j], my n tokens ->
    (B, h, N, d) of my heads and all ``sizes`` (per Ulysses rank) tokens of the group."""
    b, u, h, n, d = t.shape
    send = t.permute(1, 3, 0, 2, 4).contiguous()              # (U, n, B, h, d): one block per rank
    recv = torch.empty(sum(sizes), b, h, d, dtype=t.dtype, device=t.device)
    unit = b * h * d
    groups.wait(dist.all_to_all_single(recv.view(-1), send.view(-1), [unit * s for s in sizes], [unit * n] * u,
                                       group=groups.ulysses_group, async_op=True),
                "Ulysses all-to-all (heads)")
    return recv.permute(1, 2, 0, 3)                            # (B, h, N, d) view


def tokens_to_heads(out: torch.Tensor, groups: ParallelGroups, sizes: list[int]) -> torch.Tensor:
    """Ulysses' second exchange: (B, N, w) of my heads -> (B, n, U, w) of my tokens, where
    [:, :, j] holds the heads of Ulysses rank j."""
    b, _, width = out.shape
    u, n = len(sizes), sizes[groups.ulysses_rank]
    send = out.transpose(0, 1).contiguous()                    # (N, B, w), cut by token shard
    recv = torch.empty(u, n, b, width, dtype=out.dtype, device=out.device)
    unit = b * width
    groups.wait(dist.all_to_all_single(recv.view(-1), send.view(-1), [unit * n] * u, [unit * s for s in sizes],
                                       group=groups.ulysses_group, async_op=True),
                "Ulysses all-to-all (tokens)")
    return recv.permute(2, 1, 0, 3)                            # (B, n, U, w) view


def _merge_block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, acc: torch.Tensor, top: torch.Tensor,
                 den: torch.Tensor) -> None:
    """Fold one key/value block into the running softmax (float32 ``acc`` (B, H, n, d), row max
    ``top`` and denominator ``den`` (B, H, n, 1)), in query chunks of bounded score size."""
    b, h, n, _ = q.shape
    kt = k.float().transpose(-1, -2)                           # (B, H, d, Lk)
    vf = v.float()
    chunk = max(1, min(n, QUERY_CHUNK_BYTES // max(1, b * h * k.shape[2] * 4)))
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        s = torch.matmul(q[:, :, sl].float(), kt)              # (B, H, c, Lk)
        new_top = torch.maximum(top[:, :, sl], s.amax(-1, keepdim=True))
        fade = torch.exp(top[:, :, sl] - new_top)             # rescales what came before
        p = torch.exp(s.sub_(new_top))
        den[:, :, sl] = den[:, :, sl] * fade + p.sum(-1, keepdim=True)
        acc[:, :, sl] = acc[:, :, sl] * fade + torch.matmul(p, vf)
        top[:, :, sl] = new_top


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: ParallelGroups,
                   sizes: list[int]) -> torch.Tensor:
    """Attention of my queries over the keys/values of the whole ring: the K/V block moves one
    position per step (sent on while the current one is used); ``sizes`` are the token counts
    held at each ring position. (B, H, n, d) -> (B, n, H·d) in q's dtype."""
    r, pos = len(sizes), groups.ring_pos
    b, h, n, d = q.shape
    acc = torch.zeros(b, h, n, d, dtype=torch.float32, device=q.device)
    top = torch.full((b, h, n, 1), float("-inf"), device=q.device)
    den = torch.zeros(b, h, n, 1, device=q.device)
    kv = torch.stack([k, v])                                    # (2, B, H, Lk, d) contiguous
    for step in range(r):
        works = []
        if step < r - 1:                                        # the block of position pos-step-1 arrives next
            incoming = torch.empty(2, b, h, sizes[(pos - step - 1) % r], d, dtype=kv.dtype, device=kv.device)
            works = dist.batch_isend_irecv([dist.P2POp(dist.isend, kv, groups.ring_next, groups.ring_group),
                                            dist.P2POp(dist.irecv, incoming, groups.ring_prev, groups.ring_group)])
        _merge_block(q, kv[0], kv[1], acc, top, den)
        for w in works:
            groups.wait(w, "ring attention K/V exchange")
        if works:
            kv = incoming
    return acc.div_(den).transpose(1, 2).flatten(2).to(q.dtype)


class SequenceAttention:
    """The self-attention kernel of a rank in a sequence-parallel run: ``local`` (the single-rank
    kernel; cross-attention to text uses it directly, see ``whole_keys``) around the exchanges.
    ``shards`` are the token counts of every sequence rank, in rank order.

    Ulysses runs in ``rounds`` over the heads (each round a slice of every rank's heads) and
    exchanges q, k and v one at a time, so only one round's received copies and send buffer sit
    on top of the block's activations. The default, one head per rank per round, keeps a rank's
    peak near 1/N of one process, and with batch 1 the received (1, 1, N, d) blocks are
    contiguous, as attention kernels want them; the traffic is the same, in more messages."""

    def __init__(self, local: AttentionFn, groups: ParallelGroups, shards: list[int], rounds: int | None = None) -> None:
        self.local = local
        self.groups = groups
        self.rounds = rounds
        lay = groups.layout
        first = groups.ring_pos * lay.ulysses
        self.ulysses_sizes = shards[first:first + lay.ulysses]
        self.ring_sizes = [sum(shards[p * lay.ulysses:(p + 1) * lay.ulysses]) for p in range(lay.ring)]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention over the ring's tokens (or the local kernel without a ring): (B, n, H·d)."""
        if self.groups.layout.ring > 1:
            return ring_attention(q, k, v, self.groups, self.ring_sizes)
        return self.local(q, k, v)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        u = self.groups.layout.ulysses
        if u == 1:
            return self.attend(q, k, v)
        b, h, n, d = q.shape
        hu = h // u
        rounds = self.rounds or hu
        if hu % rounds:
            raise ValueError(f"{rounds} Ulysses rounds do not divide the {hu} heads of each rank")
        hr = hu // rounds
        out = torch.empty(b, n, u, hu, d, dtype=q.dtype, device=q.device)   # (B, n, H·d) once filled
        for r in range(rounds):
            heads = slice(r * hr, (r + 1) * hr)
            part = [heads_to_tokens(t.unflatten(1, (u, hu))[:, :, heads], self.groups, self.ulysses_sizes)
                    for t in (q, k, v)]                                       # (B, hr, N, d) each
            o = self.attend(*part)                                            # (B, N, hr·d)
            del part
            out[:, :, :, heads] = tokens_to_heads(o, self.groups, self.ulysses_sizes).unflatten(-1, (hr, d))
            del o
        return out.view(b, n, h * d)
