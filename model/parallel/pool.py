"""Persistent workers for a host process (ComfyUI): the host is rank 0 of a process group whose
other ranks are worker processes that hold copies of the DiT and stay alive between calls.

The host's DiT runs its forward as usual; inside, the pool's plan posts ``forward`` to the
workers (through the process group's key-value store), broadcasts the embedded inputs of the
call, and every rank runs its share (model/parallel/sequence.py). The workers follow the host's
weights: when a parameter changes (a LoRA patched in), the new weights are broadcast before the
next call. A worker that dies or stalls makes the call raise a ParallelError naming its rank;
the pool then stops every worker and starts afresh on the next call.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ..dit.model import WanDiT
from .groups import DEFAULT_TIMEOUT_S, ParallelError, ParallelGroups, choose_layout
from .sequence import SequenceParallel, check_same_weights, weights_fingerprint

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parents[2]
# imports this package from its folder under its own name (ComfyUI may have it under any folder name)
BOOTSTRAP = ("import importlib.util, sys; root = sys.argv[1]; "
             "spec = importlib.util.spec_from_file_location('spacetime_video', root + '/__init__.py', "
             "submodule_search_locations=[root]); m = importlib.util.module_from_spec(spec); "
             "sys.modules['spacetime_video'] = m; spec.loader.exec_module(m); "
             "from spacetime_video.model.parallel.worker import serve; "
             "serve(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])")


def setup_message(message: dict | None) -> dict:
    """Rank 0 sends ``message`` (the model's config and options); the others receive it."""
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def send_weights(dit: WanDiT) -> None:
    for t in dit.state_dict().values():
        dist.broadcast(t.detach().contiguous(), src=0)


def receive_weights(dit: WanDiT) -> None:
    with torch.no_grad():
        for t in dit.state_dict().values():
            buf = torch.empty_like(t)
            dist.broadcast(buf, src=0)
            t.copy_(buf)


def send_tensors(tensors: list[torch.Tensor | None]) -> None:
    dist.broadcast_object_list([[None if t is None else (tuple(t.shape), t.dtype) for t in tensors]], src=0)
    for t in tensors:
        if t is not None:
            dist.broadcast(t.contiguous(), src=0)


def receive_tensors(device: torch.device) -> list[torch.Tensor | None]:
    box = [None]
    dist.broadcast_object_list(box, src=0)
    out = []
    for spec in box[0]:
        t = None if spec is None else torch.empty(spec[0], dtype=spec[1], device=device)
        if t is not None:
            dist.broadcast(t, src=0)
        out.append(t)
    return out


def weights_version(dit: WanDiT) -> int | None:
    """Changes when a parameter is replaced or modified in place (no pass over the data); None
    when a tensor was made under inference mode (ComfyUI's), which keeps no version count."""
    tensors = list(dit.state_dict().values())
    if any(t.is_inference() for t in tensors):
        return None
    return hash(tuple((id(t), t._version) for t in tensors))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PoolPlan(SequenceParallel):
    """Rank 0's plan: wake the workers and hand them the call's inputs, then take its share."""

    def __init__(self, groups: ParallelGroups, pool: "WorkerPool") -> None:
        super().__init__(groups)
        self.pool = pool

    def __call__(self, dit: WanDiT, x: torch.Tensor, e: torch.Tensor, e0: torch.Tensor, ctx: torch.Tensor,
                 ctx_img: torch.Tensor | None, rope: torch.Tensor, attn) -> torch.Tensor:
        try:
            self.pool.sync_weights(dit)
            self.pool.command("forward")
            send_tensors([x, e, e0, ctx, ctx_img])
            return super().__call__(dit, x, e, e0, ctx, ctx_img, rope, attn)
        except Exception as err:
            raise self.pool.failed(err) from err


class WorkerPool:
    """``world - 1`` worker processes around the host's ``dit`` (the host is rank 0), on
    ``devices`` (one per rank; default: the CPU for all). Use :meth:`running` around calls."""

    def __init__(self, dit: WanDiT, world: int, cfg: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S,
                 devices: list[str] | None = None) -> None:
        devices = devices or ["cpu"] * world
        if len(devices) != world:
            raise ValueError(f"{world} ranks need {world} devices, got {devices}")
        self.dit, self.world, self.cfg, self.timeout_s, self.devices = dit, world, cfg, timeout_s, devices
        self.layout = choose_layout(world, dit.config.num_heads, cfg)
        self.procs: list[subprocess.Popen] = []
        self.plan: PoolPlan | None = None
        self.n = 0

    @property
    def alive(self) -> bool:
        return self.plan is not None

    def start(self) -> None:
        """Start the workers, send them the model and build the groups (blocks until all joined)."""
        if dist.is_initialized():
            raise ParallelError("this process already belongs to a torch.distributed group; one worker pool "
                                "at a time (close the other first)")
        with torch.device("meta"):
            plain = set(WanDiT(self.dit.config).state_dict())
        extra = sorted(set(self.dit.state_dict()) - plain)
        if extra:
            raise ParallelError(f"the parallel DiT takes models stored as plain tensors (bf16, fp16, fp32, fp8 without "
                                f"scales); this one also has {extra[:3]}...: load a bf16 or fp16 file")
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // self.world))}
        self.procs = [subprocess.Popen([sys.executable, "-c", BOOTSTRAP, str(PACKAGE_DIR), str(r), str(self.world),
                                        str(port), str(self.timeout_s), self.devices[r]], env=env)
                      for r in range(1, self.world)]
        dev = torch.device(self.devices[0])
        try:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                    rank=0, world_size=self.world, timeout=timedelta(seconds=self.timeout_s))
            self.store = dist.distributed_c10d._get_default_store()
            self.n = 0
            c = self.dit
            # plain values only: a host may have imported this package under another module name
            setup_message({"config": dataclasses.asdict(c.config), "compute_dtype": c.compute_dtype,
                           "attention": c.attention, "cfg": self.cfg,
                           "dtypes": {k: t.dtype for k, t in c.state_dict().items()}})
            send_weights(c)
            groups = ParallelGroups(self.layout, self.timeout_s)
            check_same_weights(c, groups)
            self.version, self.fingerprint = weights_version(c), weights_fingerprint(c)
            self.plan = PoolPlan(groups, self)
        except Exception as err:
            raise self.failed(err) from err
        log.info("parallel DiT: %d worker process(es) started (%d ranks: %d CFG x %d Ulysses x %d ring)",
                 self.world - 1, self.world, self.layout.cfg, self.layout.ulysses, self.layout.ring)

    def command(self, cmd: str) -> None:
        dead = self.dead()
        if dead:
            raise ParallelError("; ".join(dead))
        self.store.set(f"cmd/{self.n}", cmd)
        self.n += 1

    def sync_weights(self, dit: WanDiT) -> None:
        """Send the host's weights again when they changed since the workers got them."""
        version = weights_version(dit)
        if version is not None and version == self.version:
            return
        fingerprint = weights_fingerprint(dit)
        if not torch.equal(fingerprint, self.fingerprint):
            log.info("parallel DiT: the model's weights changed; sending them to the workers")
            self.command("weights")
            send_weights(dit)
        self.version, self.fingerprint = version, fingerprint

    def dead(self) -> list[str]:
        return [f"worker rank {r} (pid {p.pid}) exited with code {p.returncode}"
                for r, p in enumerate(self.procs, 1) if p.poll() is not None]

    def failed(self, err: BaseException) -> ParallelError:
        """Stop everything after a failure; the error names the ranks that died, if any."""
        try:
            self.procs and self.procs[0].wait(timeout=0.5)   # give a dying worker time to be seen
        except subprocess.TimeoutExpired:
            pass
        dead = self.dead()
        self.close()
        what = "; ".join(dead) if dead else f"a worker stopped answering ({err})"
        return ParallelError(f"parallel DiT failed: {what}. The workers were stopped and start again on the next run.")

    def close(self) -> None:
        """Stop the workers (asking first, then killing) and leave the process group."""
        if self.plan is not None and not self.dead():
            try:
                self.command("stop")
            except Exception:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs, self.plan = [], None
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as e:  # a broken group: nothing more to release
                log.debug("destroying the process group: %s", e)

    def running(self) -> PoolPlan:
        """The plan to set as ``dit.sequence_parallel`` for a call; starts the workers if needed."""
        if self.plan is None:
            self.start()
        return self.plan
