"""Render one clip on several processes, GPUs or machines: the sequence-parallel DiT
(model/parallel) under the plain pipeline, launched by torchrun.

    torchrun --nproc_per_node 2 -m spacetime_video.headless.parallel --prompt "a red ball rolls to the left" \\
        --out ball.gif
    torchrun --nproc_per_node 8 -m spacetime_video.headless.parallel --dit wan2.1_t2v_14B_bf16.safetensors \\
        --vae wan_2.1_vae.safetensors --text prompt_states.safetensors --frames 81 --height 720 --width 1280 \\
        --cfg-parallel --out clip.safetensors

Without ``--dit`` the embedded tiny model renders ``--prompt`` (CPU is fine). With ``--dit`` and
``--vae`` a Wan T2V / TI2V checkpoint renders text-encoder states read from ``--text`` (a
safetensors file with ``context`` [1, L, 4096] and optionally ``negative``). Every rank runs the
same loop; rank 0 writes ``--out``: ``.safetensors`` (``video`` [3, T, H, W] in -1..1) or ``.gif``.
Across machines, start the same command on each with ``--nnodes M --node_rank i
--master_addr HOST --master_port PORT`` (README: "Several GPUs and machines").

Exit codes: 0 done, 1 bad input or a failed / lost rank (the message names it).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ..model.dit import load_dit
from ..model.embedded import load_embedded
from ..model.parallel import DEFAULT_TIMEOUT_S, ParallelError, init_distributed, parallelize, sharded_decode
from ..model.vae import load_vae
from ..model.weights.files import load_state_dict
from ..pipeline import generate, generate_embedded, generate_latent

log = logging.getLogger("spacetime.parallel")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="torchrun ... -m spacetime_video.headless.parallel",
                                description="Render one clip with the DiT split across the ranks torchrun started.")
    p.add_argument("--prompt", default="a red ball rolls to the left across a black background",
                   help="the embedded model's prompt")
    p.add_argument("--dit", type=Path, help="a Wan T2V / TI2V DiT checkpoint (.safetensors)")
    p.add_argument("--vae", type=Path, help="its VAE (.safetensors); with --dit")
    p.add_argument("--text", type=Path, help="text-encoder states: safetensors with 'context' (+ 'negative')")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--shift", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distilled", action="store_true", help="embedded model: its 4-step distilled LoRA")
    p.add_argument("--cfg-parallel", action="store_true", help="the two halves of CFG on two rank groups")
    p.add_argument("--vae-bands", action="store_true",
                   help="with --dit: decode in one horizontal band per rank (less memory per rank; blended seams)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds any collective may take")
    p.add_argument("--out", type=Path, required=True, help=".safetensors or .gif, written by rank 0")
    args = p.parse_args(argv)
    if args.out.suffix not in (".safetensors", ".gif"):
        p.error(f"--out {args.out}: write .safetensors or .gif")
    if (args.dit is None) != (args.vae is None) or (args.dit is not None and args.text is None):
        p.error("--dit, --vae and --text go together (a Wan checkpoint, its VAE, the text states)")
    if args.vae_bands and args.dit is None:
        p.error("--vae-bands goes with --dit (the embedded model's decode is small)")
    return args


def render(args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    """The clip [3, T, H, W] in -1..1, every rank taking its share of each DiT call."""
    cfg = 2 if args.cfg_parallel else 1
    if args.dit is None:
        m = load_embedded(device=str(device), distilled=args.distilled)
        parallelize(m.dit, cfg=cfg, timeout_s=args.timeout)
        opts = {k: v for k, v in (("frames", args.frames), ("steps", args.steps), ("guidance", args.guidance),
                                  ("shift", args.shift)) if v is not None}
        return generate_embedded(args.prompt, seed=args.seed, model=m, distilled=args.distilled, **opts)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dit = load_dit(args.dit, compute_dtype=dtype, device=device)
    vae = load_vae(args.vae, dtype=dtype, device=device)
    text = load_state_dict(args.text)
    if "context" not in text:
        raise ValueError(f"{args.text} has no 'context' tensor (text-encoder states [1, L, {dit.config.text_dim}]); "
                         f"it has {sorted(text)}")
    parallelize(dit, cfg=cfg, timeout_s=args.timeout)
    opts = {k: v for k, v in (("steps", args.steps), ("guidance", args.guidance), ("shift", args.shift))
            if v is not None}
    negative = text.get("negative")
    opts.update(frames=args.frames or 81, height=args.height, width=args.width, seed=args.seed)
    if not args.vae_bands:
        return generate(dit, vae, text["context"].to(device), negative, **opts)
    z = generate_latent(dit, vae, text["context"].to(device), negative, **opts)
    return sharded_decode(vae, z.to(vae.dtype), timeout_s=args.timeout)[0]


def write(video: torch.Tensor, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".gif":
        from PIL import Image
        frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()
        images = [Image.fromarray(f) for f in frames]
        images[0].save(out, save_all=True, append_images=images[1:], duration=62, loop=0)
    else:
        from safetensors.torch import save_file
        save_file({"video": video.float().contiguous().cpu()}, str(out))
    log.info("wrote %s", out)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        device = init_distributed(timeout_s=args.timeout)
    except (ParallelError, RuntimeError, ValueError) as e:
        log.error("cannot join the parallel run: %s", e)
        return 1
    rank = dist.get_rank()
    code = 0
    try:
        video = render(args, device)
        if rank == 0:
            write(video, args.out)
    except (ParallelError, ValueError, FileNotFoundError) as e:
        log.error("rank %d: %s", rank, e)
        code = 1
    finally:
        if code == 0:
            dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
