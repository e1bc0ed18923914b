"""The stages that train the embedded tiny model, each resumable from its checkpoint in a run folder:
the VAE, the latents of training clips, the DiT + text encoder, its cool-down, the walls fine-tune,
the optional decoder stages, the 4-step distillation, and the export. `recipe.py` runs them from the
command line, and holds the settings of the shipped weights.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..model.dit import WanDiT
from ..model.embedded import config as C
from ..model.weights.files import json_metadata as read_metadata
from ..model.embedded.text_encoder import TinyTextEncoder
from ..model.vae import WanVAE
from . import world
from .train_dit import DiTTrainConfig, DiTTrainer, eval_loss, object_mask
from .train_vae import VAETrainConfig, VAETrainer, heldout_psnr, latent_stats, psnr

log = logging.getLogger("spacetime.embedded.train")

def vae_with_stats(vae: WanVAE, mean: list[float], std: list[float]) -> WanVAE:
    """A copy of `vae` whose config carries the latent mean/std (normalize() uses them)."""
    cfg = dataclasses.replace(vae.config, latents_mean=tuple(mean), latents_std=tuple(std))
    out = WanVAE(cfg)
    out.load_state_dict(vae.state_dict())
    return out.eval()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Tensors and JSON metadata to a safetensors file, atomically (a temporary file, then a rename)."""
    tmp = path.with_suffix(".tmp")
    try:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in meta.items()})
        tmp.replace(path)
    except BaseException as e:  # a full disk, a size limit, Ctrl-C: the previous checkpoint stays as it was
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and not isinstance(e, OSError):  # safetensors reports I/O as its own type
            raise OSError(f"could not write {path}: {e}. Nothing was written; a previous file of that name is "
                          "unchanged. Free disk space or raise the file-size limit, then resume.") from e
        raise


def _save(path: Path, module: torch.nn.Module, meta: dict) -> None:
    save_tensors(path, {k: v.float() for k, v in module.state_dict().items()}, meta)


def save_embedded(folder: Path, vae: WanVAE, dit: WanDiT, text: TinyTextEncoder, record: dict) -> None:
    """Write vae / dit / text_encoder .safetensors into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    _save(folder / C.VAE_FILE, vae, {"latents_mean": list(vae.config.latents_mean),
                                     "latents_std": list(vae.config.latents_std), "training": record})
    _save(folder / C.DIT_FILE, dit, {"training": record})
    _save(folder / C.TEXT_FILE, text, {"words": list(text.tokenizer.words), "training": record})


@contextlib.contextmanager
def _compiled(on: bool, *modules: torch.nn.Module):
    """Inside the block the modules' forward runs through torch.compile (fixed shapes), which
    fuses the many small elementwise ops of these tiny models; their state_dict keys do not
    change. Needs a C++ compiler; `on=False` runs eager."""
    if on:
        for m in modules:
            m.forward = torch.compile(m.forward, dynamic=False)
    try:
        yield
    finally:
        if on:
            for m in modules:
                del m.forward


def _spent(ckpt: Path) -> float:
    """Wall-clock seconds the stage that wrote `ckpt` has trained so far, over all its runs."""
    return float(read_metadata(ckpt).get("seconds", 0.0))


def _since(t0: float) -> float:
    return round(time.time() - t0, 1)


def stage_vae(run: Path, steps: int, minutes: float, every: int, seed: int, frames: int, batch: int,
              decoder_only: bool = False, compile: bool = False) -> None:
    torch.manual_seed(seed)
    vae = WanVAE(C.VAE_CONFIG)
    trainer = VAETrainer(vae, VAETrainConfig(steps=steps, seed=seed, frames=frames, batch=batch,
                                             decoder_only=decoder_only,
                                             lr=3e-4 if decoder_only else 1e-3))
    ckpt = run / "vae_ckpt.safetensors"
    clock = "decoder_seconds" if decoder_only else "seconds"   # `decoder` continues the VAE's file
    prior = read_metadata(ckpt) if ckpt.exists() else {}
    spent = float(prior.get(clock, 0.0))
    if ckpt.exists():
        vae.load_state_dict(load_file(str(ckpt)))
        trainer.step_no = prior["step"]
        trainer.rng.seed(f"{seed}:{trainer.step_no}")
        log.info("resumed VAE at step %d (%.1f minutes spent)", trainer.step_no, spent / 60)
    t0, ema = time.time() - spent, None
    with _compiled(compile, vae.encoder, vae.decoder):
        while trainer.step_no < steps and (time.time() - t0) < minutes * 60:
            loss, p = trainer.step()
            ema = p if ema is None else 0.95 * ema + 0.05 * p
            if trainer.step_no % 10 == 0:
                log.info("vae step %d loss %.4f crop psnr %.2f (avg %.2f) %.1fs", trainer.step_no, loss, p, ema,
                         time.time() - t0)
            if trainer.step_no % every == 0:
                save_tensors(ckpt, vae.state_dict(), {**prior, "step": trainer.step_no, clock: _since(t0)})
    save_tensors(ckpt, vae.state_dict(), {**prior, "step": trainer.step_no, clock: _since(t0)})
    log.info("VAE stopped at step %d; held-out PSNR %.2f dB", trainer.step_no, heldout_psnr(vae, n=8))


def stage_latents(run: Path, clips: int, seed: int) -> None:
    vae = WanVAE(C.VAE_CONFIG)
    vae.load_state_dict(load_file(str(run / "vae_ckpt.safetensors")))
    mean, std = latent_stats(vae, list(range(10**6, 10**6 + 32)))
    _encode(run / "latents.safetensors", vae_with_stats(vae, mean, std), clips, world.sample_clip,
            {"mean": mean, "std": std})


def _encode(out: Path, vae: WanVAE, clips: int, clip_of, meta: dict) -> None:
    """The normalized latents and object masks of clips `clip_of(0 .. clips - 1)` into `out`,
    every 64 clips (a rerun goes on from the clips `out` holds)."""
    done = load_file(str(out)) if out.exists() else {}
    zs = [done["latents"]] if done else []
    masks = [done["object_mask"]] if done else []
    n = done["latents"].shape[0] if done else 0
    t0 = time.time()
    while n < clips:
        video = torch.stack([clip_of(i).video for i in range(n, min(n + 8, clips))])
        with torch.no_grad():
            zs.append(vae.normalize(vae.encode(video)))
        masks.append(object_mask(video, vae.config.stride))
        n += video.shape[0]
        if n % 64 == 0 or n >= clips:
            save_tensors(out, {"latents": torch.cat(zs), "object_mask": torch.cat(masks)}, {**meta, "clips": n})
            log.info("encoded %d / %d clips (%.0fs)", n, clips, time.time() - t0)


def _describer(clip_of=world.sample_clip):
    """describe(i, rng): a fresh caption of training clip `clip_of(i)` (its objects are cached, not its pixels)."""
    cache: dict[int, tuple] = {}

    def describe(i: int, rng) -> str:
        if i not in cache:
            clip = clip_of(i)
            cache[i] = (clip.objects, clip.background)
        return world.describe(*cache[i], rng)
    return describe


def stage_dit(run: Path, steps: int, minutes: float, every: int, seed: int, batch: int,
              dtype: torch.dtype = torch.float32, compile: bool = False) -> None:
    """DiT + text encoder. Matmuls and attention run in `dtype` (weights, optimizer, residual
    stream and loss stay float32); bf16 is much faster on CPUs with bf16 matmul units, and
    the recipe of the shipped weights uses it."""
    trainer = _dit_trainer(run, DiTTrainConfig(steps=steps, seed=seed, batch=batch), dtype)
    ckpt = run / "dit_ckpt.safetensors"
    if ckpt.exists():
        trainer.load(load_file(str(ckpt)), read_metadata(ckpt)["step"])
        trainer.gen.manual_seed(seed + trainer.step_no)
        log.info("resumed DiT at step %d", trainer.step_no)
    _train_dit(trainer, ckpt, {}, steps, minutes, every, compile, "dit", probe=trainer.latents[:32])


def _dit_trainer(run: Path, cfg: DiTTrainConfig, dtype: torch.dtype) -> DiTTrainer:
    """A fresh DiT + text encoder (seeded by cfg.seed) and their trainer on RUN_DIR's latents."""
    torch.manual_seed(cfg.seed)
    data = load_file(str(run / "latents.safetensors"))
    lat = data["latents"]
    dit, text = WanDiT(C.DIT_CONFIG, compute_dtype=dtype), TinyTextEncoder(C.TEXT_CONFIG)
    return DiTTrainer(dit, text, lat, _describer(), cfg, object_mask=data.get("object_mask"))


def _train_dit(trainer: DiTTrainer, ckpt: Path, meta: dict, steps: int, minutes: float, every: int,
               compile: bool, name: str, probe: torch.Tensor | None = None) -> None:
    """Step `trainer` until `steps` or until the stage has trained `minutes` (counting the seconds
    that `ckpt`, when the stage resumed from it, says earlier runs spent), logging, and
    checkpointing to `ckpt` (with `meta`) every `every` steps and at the end; `probe` latents of
    training clips 0.. get an EMA loss at each checkpoint."""
    caps = [world.sample_clip(i).caption for i in range(len(probe))] if probe is not None else []
    spent = _spent(ckpt) if ckpt.exists() else 0.0
    if spent:
        log.info("%s: %.1f of its %.1f minutes spent in earlier runs", name, spent / 60, minutes)
    t0, avg = time.time() - spent, None
    with _compiled(compile, trainer.dit):   # the live DiT only: the EMA copies were made before
        while trainer.step_no < steps and (time.time() - t0) < minutes * 60:
            loss = trainer.step()
            avg = loss if avg is None else 0.98 * avg + 0.02 * loss
            if trainer.step_no % 20 == 0:
                log.info("%s step %d loss %.4f (avg %.4f) %.1fs", name, trainer.step_no, loss, avg, time.time() - t0)
            if trainer.step_no % every == 0:
                save_tensors(ckpt, trainer.state(), {"step": trainer.step_no, **meta, "seconds": _since(t0)})
                if probe is not None:
                    log.info("probe loss (ema) %.4f", eval_loss(trainer.ema_dit, trainer.ema_text, probe, caps))
    save_tensors(ckpt, trainer.state(), {"step": trainer.step_no, **meta, "seconds": _since(t0)})


def stage_cooldown(run: Path, steps: int, minutes: float, every: int, seed: int, batch: int, lr: float,
                   sigma_shift: float, compile: bool = False) -> None:
    """A second cosine (warmup 100, lr -> 0.1 lr) from the DiT checkpoint's live and EMA weights,
    with a fresh optimizer, training sigmas shifted by `sigma_shift` (`sample_sigmas`), written
    to dit_cool.safetensors (dit_ckpt.safetensors stays as it was). bf16 matmuls, as `dit`.
    Resumes from dit_cool.safetensors when that exists."""
    cfg = DiTTrainConfig(steps=steps, seed=seed, batch=batch, lr=lr, warmup=100, sigma_shift=sigma_shift)
    trainer = _dit_trainer(run, cfg, torch.bfloat16)
    out = run / "dit_cool.safetensors"
    if out.exists():
        trainer.load(load_file(str(out)), read_metadata(out)["step"])
        log.info("resumed cool-down at step %d", trainer.step_no)
    else:
        trainer.load(load_file(str(run / "dit_ckpt.safetensors")), 0)
    trainer.gen.manual_seed(seed + trainer.step_no)
    meta = {"from_dit_step": read_metadata(run / "dit_ckpt.safetensors")["step"], "lr": lr, "sigma_shift": sigma_shift}
    _train_dit(trainer, out, meta, steps, minutes, every, compile, "cool-down")
    log.info("cool-down stopped at step %d", trainer.step_no)


def stage_walls(run: Path, weights: Path | None, steps: int, minutes: float, every: int, seed: int, batch: int,
                lr: float, sigma_shift: float, clips: int, wall_clips: int, compile: bool = False) -> Path:
    """Fine-tune a finished embedded model (`weights`, the shipped one by default) on training
    clips 0 .. `clips` - 1 and `wall_clips` clips of the world's "walls" split, the latter only as
    continuations (`train_dit.CONTINUATION_WEIGHTS`), so that a clip that goes on from frames at
    the frame's margin keeps its object there instead of doubling it or jumping back. Live and EMA
    weights start from the model's; a cosine from `lr` (warmup 100) with training sigmas shifted
    by `sigma_shift`, bf16 matmuls, checkpoints in RUN_DIR/dit_walls.safetensors (a rerun
    resumes). Writes the model (its VAE unchanged, the EMA DiT and text encoder) to
    RUN_DIR/walls/ and returns that folder."""
    from ..model.embedded.loading import load_parts

    folder = Path(weights) if weights else C.WEIGHTS_DIR
    vae, dit0, text0, record = load_parts(folder)
    lat_file = run / "latents_walls.safetensors"
    held = read_metadata(lat_file).get("clips_train") if lat_file.exists() else clips
    if held != clips:
        raise ValueError(f"{lat_file} holds the latents of {held} training clips, not {clips}: use --clips {held} "
                         "or a new RUN_DIR")

    def clip_of(i: int) -> world.Clip:
        return world.sample_clip(i) if i < clips else world.sample_clip(i - clips, "walls")

    _encode(lat_file, vae, clips + wall_clips, clip_of, {"clips_train": clips, "clips_walls": wall_clips})
    data = load_file(str(lat_file))
    cont = torch.arange(data["latents"].shape[0]) >= clips
    cfg = DiTTrainConfig(steps=steps, seed=seed, batch=batch, lr=lr, warmup=100, sigma_shift=sigma_shift)
    torch.manual_seed(seed)
    dit, text = WanDiT(C.DIT_CONFIG, compute_dtype=torch.bfloat16), TinyTextEncoder(C.TEXT_CONFIG)
    dit.load_state_dict(dit0.state_dict())
    text.load_state_dict(text0.state_dict())
    trainer = DiTTrainer(dit, text, data["latents"], _describer(clip_of), cfg, object_mask=data["object_mask"],
                         continuation=cont)
    ckpt = run / "dit_walls.safetensors"
    if ckpt.exists():
        trainer.load(load_file(str(ckpt)), read_metadata(ckpt)["step"])
        log.info("resumed walls fine-tune at step %d", trainer.step_no)
    trainer.gen.manual_seed(seed + trainer.step_no)
    meta = {"lr": lr, "sigma_shift": sigma_shift, "clips": clips, "wall_clips": wall_clips}
    _train_dit(trainer, ckpt, meta, steps, minutes, every, compile, "walls")
    out = run / "walls"
    save_embedded(out, vae, trainer.ema_dit, trainer.ema_text,
                  {**record, "walls": {"steps": trainer.step_no, **meta}})
    log.info("walls fine-tune stopped at step %d; the model is in %s", trainer.step_no, out)
    return out


def stage_adapt(run: Path, steps: int, minutes: float, every: int, seed: int, batch: int,
                dit_file: str = "dit_ckpt.safetensors") -> None:
    """Fine-tune the decoder on the DiT's own x0 predictions (sigma 0.05-0.6) of training
    latents, target = the clip's pixels, on 32x32-pixel crops: teaches the decoder
    to read the slightly-off latents a sampler ends in. Encoder and DiT (the EMA weights of
    `dit_file`) stay fixed."""
    g = torch.Generator().manual_seed(seed)
    lat_file = load_file(str(run / "latents.safetensors"))["latents"]
    m = read_metadata(run / "latents.safetensors")
    vae = WanVAE(C.VAE_CONFIG)
    out, step, spent = run / "vae_adapt.safetensors", 0, 0.0
    if out.exists() and read_metadata(out).get("dit_file") == dit_file:   # resume (a fresh optimizer)
        vae.load_state_dict(load_file(str(out)))
        step, spent = read_metadata(out)["step"], _spent(out)
        g.manual_seed(seed + step)
        log.info("resumed decoder adapt at step %d (%.1f minutes spent)", step, spent / 60)
    else:                                # adapted against another DiT, or none yet: start over
        vae.load_state_dict(load_file(str(run / "vae_ckpt.safetensors")))
    vae = vae_with_stats(vae, m["mean"], m["std"]).train()
    vae.encoder.requires_grad_(False)
    vae.conv1.requires_grad_(False)
    state = load_file(str(run / dit_file))
    dit, text = WanDiT(C.DIT_CONFIG), TinyTextEncoder(C.TEXT_CONFIG)
    dit.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("ema_dit.")})
    text.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("ema_text.")})
    dit.eval().requires_grad_(False)
    text.eval().requires_grad_(False)
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=2e-4)
    describe = _describer()
    import random as _r
    rng = _r.Random(seed if step == 0 else f"{seed}:{step}")
    _, sh, sw = vae.config.stride
    crop = 32 // sh                                                   # latent cells per crop side
    t0 = time.time() - spent
    while step < steps and time.time() - t0 < minutes * 60:
        idx = torch.randint(0, lat_file.shape[0], (batch,), generator=g)
        x0 = lat_file[idx]
        sigma = 0.05 + 0.55 * torch.rand(batch, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        xs = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * eps
        with torch.no_grad():
            ctx = text.encode([describe(int(i), rng) for i in idx])
            pred = xs - sigma.view(-1, 1, 1, 1, 1) * dit(xs, 1000 * sigma, ctx)  # no known frames
        oy, ox = rng.randrange(x0.shape[3] - crop + 1), rng.randrange(x0.shape[4] - crop + 1)
        z = vae.denormalize(pred[:, :, :, oy:oy + crop, ox:ox + crop])
        target = world.batch([int(i) for i in idx])[0][:, :, :, sh * oy:sh * oy + 32, sw * ox:sw * ox + 32]
        y = vae.decode(z, chunked=False, clamp=False)
        loss = ((y - target) ** 2 + 0.3 * (y - target).abs()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 10 == 0:
            log.info("adapt step %d loss %.4f psnr %.2f %.0fs", step, float(loss.detach()), psnr(y.detach(), target),
                     time.time() - t0)
        if step % every == 0:
            save_tensors(out, vae.state_dict(), {"step": step, "dit_file": dit_file, "seconds": _since(t0)})
    save_tensors(out, vae.state_dict(), {"step": step, "dit_file": dit_file, "seconds": _since(t0)})


def _teacher_data(path: Path, make, count: int, seed: int) -> tuple[dict[str, torch.Tensor], float]:
    """Teacher trajectories from `path` when it holds at least `count` made with `seed`, else made
    by `make()` and saved there; with the seconds they took to make."""
    meta = read_metadata(path) if path.exists() else {}
    if meta.get("trajectories", 0) >= count and meta.get("seed") == seed:
        log.info("reusing %d teacher trajectories of %s (%.0fs to make)", count, path.name, meta["seconds"])
        return {k: v[:count] for k, v in load_file(str(path)).items()}, float(meta["seconds"])
    t0 = time.time()
    data = make()
    seconds = time.time() - t0
    save_tensors(path, data, {"trajectories": count, "seed": seed, "seconds": round(seconds, 1)})
    log.info("teacher: %d trajectories in %.0fs", count, seconds)
    return data, seconds


def stage_distill(run: Path, weights: Path | None, trajectories: int, first_steps: int, steps: int, minutes: float,
                  seed: int, rank: int, dtype: torch.dtype = torch.float32) -> Path:
    """The 4-step distillation LoRA of the embedded model in `weights` (the shipped one by default):
    teacher trajectories, whole ones and `first_steps` stopped after the student's first step (kept
    in RUN_DIR/distill_teacher.safetensors and distill_first.safetensors, reused by a later run with
    the same seed), then the student's LoRA, written to RUN_DIR/distill_4step_lora.safetensors with
    its training record in the metadata."""
    from ..model.embedded import load_embedded
    from .distill import DistillConfig, distill_record, export_lora, teacher_trajectories, train_student, \
        training_captions

    cfg = DistillConfig(trajectories=trajectories, first_steps=first_steps, steps=steps, seed=seed, rank=rank,
                        alpha=float(rank))
    model = load_embedded(weights)
    data, seconds = _teacher_data(run / "distill_teacher.safetensors", lambda: teacher_trajectories(
        model, training_captions(trajectories, seed), cfg), trajectories, seed)
    if first_steps:
        first, more = _teacher_data(run / "distill_first.safetensors", lambda: teacher_trajectories(
            model, training_captions(first_steps, seed, first=trajectories), cfg, seed=seed + 1, upto=1),
            first_steps, seed)
        data.update(first_x=first["x"], first_context=first["context"])
        seconds += more
    student = WanDiT(C.DIT_CONFIG)
    student.load_state_dict(model.dit.state_dict())
    loras, train = train_student(student, data, cfg, minutes, dtype)
    out = run / C.DISTILL_FILE
    save_tensors(out, export_lora(loras), {"training": distill_record(cfg, train, seconds)})
    log.info("distilled LoRA: %d steps in %.0fs -> %s", train["steps"], train["seconds"], out)
    return out


def stage_export(run: Path, to: Path, live: bool = False, vae_file: str = "vae_ckpt.safetensors",
                 dit_file: str = "dit_ckpt.safetensors") -> None:
    vae = WanVAE(C.VAE_CONFIG)
    vae.load_state_dict(load_file(str(run / vae_file)))
    m = read_metadata(run / "latents.safetensors")
    state = load_file(str(run / dit_file))
    dit, text = WanDiT(C.DIT_CONFIG), TinyTextEncoder(C.TEXT_CONFIG)
    pd, pt = ("dit.", "text.") if live else ("ema_dit.", "ema_text.")
    dit.load_state_dict({k[len(pd):]: v for k, v in state.items() if k.startswith(pd)})
    text.load_state_dict({k[len(pt):]: v for k, v in state.items() if k.startswith(pt)})
    steps = {"vae": read_metadata(run / "vae_ckpt.safetensors")["step"],
             "dit": read_metadata(run / "dit_ckpt.safetensors")["step"], "latent_clips": m["clips"]}
    if vae_file != "vae_ckpt.safetensors":
        steps["decoder_adapt"] = read_metadata(run / vae_file)["step"]
    if dit_file != "dit_ckpt.safetensors":
        steps["dit_cooldown"] = read_metadata(run / dit_file)["step"]
    save_embedded(to, vae_with_stats(vae, m["mean"], m["std"]), dit, text, steps)
    log.info("exported to %s (%s)", to, steps)
