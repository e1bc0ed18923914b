"""Sequence-parallel sampling on torch.distributed: every rank holds the model and a share of
the tokens (Ulysses / ring attention across ranks, CFG halves on two rank groups)."""
from .groups import DEFAULT_TIMEOUT_S, Layout, ParallelError, ParallelGroups, choose_layout, init_distributed
from .sequence import SequenceParallel, check_same_weights, parallelize
from .shard import shard_groups, token_shards
from .vae import sharded_decode

__all__ = ["DEFAULT_TIMEOUT_S", "Layout", "ParallelError", "ParallelGroups", "SequenceParallel", "check_same_weights",
           "choose_layout", "init_distributed", "parallelize", "shard_groups", "sharded_decode", "token_shards"]
