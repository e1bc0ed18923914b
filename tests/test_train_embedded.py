"""The embedded model's training script: the whole recipe runs stage after stage and exports
weights the pipeline loads; torch.compile leaves the trained modules' weights and names alone."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from spacetime_video.model.embedded import config as C
from spacetime_video.training import recipe as cli
from spacetime_video.training import stages as te
from spacetime_video.model.embedded import load_embedded
from spacetime_video.pipeline import generate_embedded as generate


def _step(path) -> int:
    return te.read_metadata(path)["step"]


def _meta(path) -> dict:
    """A checkpoint's metadata without its clock, which every checkpoint carries."""
    meta = te.read_metadata(path)
    assert meta.pop("seconds") >= 0
    return meta


def test_the_recipe_runs_every_stage_and_exports(tmp_path, monkeypatch) -> None:
    """`all` with the shipped configs but a few steps per stage: every stage leaves its checkpoint
    at the step count asked for, the walls fine-tune starts from the cool-down's export, a resumed
    `all` keeps to each stage's time limit, and the model it ends with (and `export` of the
    cool-down) generates."""
    def recipe(more: int = 0) -> dict:
        return {
            "vae": dict(steps=3 + more, minutes=5.0, frames=5, batch=1),
            "latents": dict(clips=8),
            "dit": dict(steps=4 + more, minutes=5.0, batch=2, every=2),
            "cooldown": dict(steps=3 + more, minutes=5.0, batch=2, every=2, lr=1e-4, sigma_shift=3.0),
            "walls": dict(steps=2 + more, minutes=5.0, batch=2, every=1, lr=1e-4, sigma_shift=3.0, clips=8,
                          wall_clips=4),
        }
    monkeypatch.setattr(cli, "RECIPE", recipe())
    run, out = tmp_path / "run", tmp_path / "weights"
    threads = ["--threads", str(torch.get_num_threads())]
    cli.main(["all", "--run", str(run), *threads])
    files = ["vae_ckpt", "dit_ckpt", "dit_cool", "dit_walls"]
    assert _meta(run / "vae_ckpt.safetensors") == {"step": 3}
    assert _meta(run / "dit_ckpt.safetensors") == {"step": 4}
    assert _meta(run / "dit_cool.safetensors") == {"step": 3, "from_dit_step": 4, "lr": 1e-4, "sigma_shift": 3.0}
    assert _meta(run / "dit_walls.safetensors") == {"step": 2, "lr": 1e-4, "sigma_shift": 3.0, "clips": 8,
                                                   "wall_clips": 4}
    cool, walls = load_embedded(run / "cool"), load_embedded(run / "walls")
    moved = max(float((a - b).abs().max()) for a, b in zip(cool.dit.state_dict().values(),
                                                           walls.dit.state_dict().values()))
    assert 0 < moved < 0.01                           # two small steps from the cool-down's weights
    assert not (run / "vae_adapt.safetensors").exists()     # `adapt` is not in the recipe
    with safe_open(str(run / "latents.safetensors"), "pt") as f:
        assert f.get_slice("latents").get_shape() == [8, C.Z_DIM, (C.FRAMES - 1) // 4 + 1, C.SIZE // 4, C.SIZE // 4]
    # a resumed `all` counts the minutes each stage already spent: with every stage's limit
    # used up it takes no step, though each stage is now asked for more
    for name in files:
        f = run / f"{name}.safetensors"
        te.save_tensors(f, load_file(str(f)), {**te.read_metadata(f), "seconds": 300.0})
    monkeypatch.setattr(cli, "RECIPE", recipe(more=5))
    cli.main(["all", "--run", str(run), *threads])
    assert [_step(run / f"{name}.safetensors") for name in files] == [3, 4, 3, 2]
    record = te.read_metadata(run / "walls" / C.DIT_FILE)["training"]
    assert record["dit_cooldown"] == 3 and record["walls"]["steps"] == 2
    cli.main(["export", "--run", str(run), "--to", str(out), "--dit-file", "dit_cool.safetensors", *threads])
    assert te.read_metadata(out / C.DIT_FILE)["training"]["dit_cooldown"] == 3
    for folder in (out, run / "walls"):
        clip = generate("a red ball rolls left across a black background", steps=2, seed=0,
                        model=load_embedded(folder))
        assert clip.shape == (3, C.FRAMES, C.SIZE, C.SIZE) and torch.isfinite(clip).all()


def test_cooldown_continues_the_dit_into_its_own_file(tmp_path) -> None:
    """`cooldown` starts from dit_ckpt's weights (not from scratch), leaves dit_ckpt alone,
    resumes its own checkpoint, and `export --dit-file` ships its EMA weights."""
    run, out = tmp_path / "run", tmp_path / "weights"
    threads = ["--threads", str(torch.get_num_threads())]
    cli.main(["vae", "--run", str(run), "--steps", "1", "--frames", "5", "--batch", "1", *threads])
    cli.main(["latents", "--run", str(run), "--clips", "8", *threads])
    # `decoder` continues the VAE's checkpoint on a clock of its own: the VAE's spent minutes
    # do not stop it, and it leaves them as they were
    vae_file = run / "vae_ckpt.safetensors"
    te.save_tensors(vae_file, load_file(str(vae_file)), {**te.read_metadata(vae_file), "seconds": 600.0})
    cli.main(["decoder", "--run", str(run), "--steps", "2", "--minutes", "1", "--frames", "5", "--batch", "1",
             *threads])
    vae_meta = te.read_metadata(vae_file)
    assert vae_meta["step"] == 2 and vae_meta["seconds"] == 600.0 and 0 <= vae_meta["decoder_seconds"] < 60
    cli.main(["dit", "--run", str(run), "--steps", "3", "--batch", "2", *threads])
    key = "dit.blocks.0.ffn.0.weight"
    before = load_file(str(run / "dit_ckpt.safetensors"))
    before[key] += 0.5     # a mark no fresh initialisation has: the cool-down must start from it
    te.save_tensors(run / "dit_ckpt.safetensors", before, te.read_metadata(run / "dit_ckpt.safetensors"))
    cool = ["cooldown", "--run", str(run), "--batch", "2", "--every", "1", "--lr", "1e-3", *threads]
    cli.main([*cool, "--steps", "2"])
    first = load_file(str(run / "dit_cool.safetensors"))
    assert _meta(run / "dit_cool.safetensors") == {"step": 2, "from_dit_step": 3, "lr": 1e-3, "sigma_shift": 3.0}
    moved = (first[key] - before[key]).abs().max()
    assert 0 < moved < 0.01                         # two small steps away from the DiT's weights
    torch.testing.assert_close(load_file(str(run / "dit_ckpt.safetensors"))[key], before[key])
    cli.main([*cool, "--steps", "3"])                # resumes at step 2 and takes one more
    assert te.read_metadata(run / "dit_cool.safetensors")["step"] == 3
    # --minutes caps the stage's time summed over its runs: a stage whose checkpoint says its
    # minutes are spent takes no more steps, however many it was asked for
    spent = te.read_metadata(run / "dit_cool.safetensors")
    te.save_tensors(run / "dit_cool.safetensors", load_file(str(run / "dit_cool.safetensors")), {**spent, "seconds": 60.0})
    cli.main([*cool, "--steps", "9", "--minutes", "1"])
    assert te.read_metadata(run / "dit_cool.safetensors")["step"] == 3
    cli.main([*cool, "--steps", "4", "--minutes", "1.5"])   # half a minute left: one more step
    assert te.read_metadata(run / "dit_cool.safetensors")["step"] == 4
    assert te.read_metadata(run / "dit_cool.safetensors")["seconds"] > 60
    cli.main(["export", "--run", str(run), "--to", str(out), "--dit-file", "dit_cool.safetensors", *threads])
    shipped = load_file(str(out / C.DIT_FILE))
    torch.testing.assert_close(shipped["blocks.0.ffn.0.weight"],
                               load_file(str(run / "dit_cool.safetensors"))["ema_" + key])
    assert te.read_metadata(out / C.DIT_FILE)["training"]["dit_cooldown"] == 4

    # `adapt --dit-file` must run the decoder against that file's EMA DiT: the same seed with
    # the same weights gives the same decoder, with the other file's weights a different one.
    def adapted(dit_file: str, steps: int = 1) -> dict[str, torch.Tensor]:
        cli.main(["adapt", "--run", str(run), "--steps", str(steps), "--batch", "1", "--every", "1",
                 "--dit-file", dit_file, *threads])
        assert te.read_metadata(run / "vae_adapt.safetensors")["dit_file"] == dit_file
        return load_file(str(run / "vae_adapt.safetensors"))

    def fresh() -> None:
        (run / "vae_adapt.safetensors").unlink()

    cool_a = adapted("dit_cool.safetensors")
    fresh()
    torch.testing.assert_close(adapted("dit_cool.safetensors"), cool_a)
    fresh()
    ckpt_a = adapted("dit_ckpt.safetensors")
    assert any(not torch.equal(cool_a[k], ckpt_a[k]) for k in cool_a)
    # adapt resumes its own checkpoint when that was made against the same DiT file (a fresh
    # start would repeat `two` exactly), and starts afresh when the DiT file differs
    fresh()
    two = adapted("dit_cool.safetensors", 2)
    fresh()
    adapted("dit_cool.safetensors", 1)
    resumed = adapted("dit_cool.safetensors", 2)
    assert te.read_metadata(run / "vae_adapt.safetensors")["step"] == 2
    assert any(not torch.equal(resumed[k], two[k]) for k in two)
    torch.testing.assert_close(adapted("dit_ckpt.safetensors"), ckpt_a)


def test_walls_fine_tunes_a_finished_model_and_writes_one_that_loads(tmp_path) -> None:
    """`walls` starts from a finished model's weights (not from scratch), encodes training and
    walls clips with that model's VAE, resumes its checkpoint, and writes a model folder whose
    VAE is the one it started from and whose record says what was done."""
    run = tmp_path / "run"
    args = ["walls", "--run", str(run), "--clips", "6", "--wall-clips", "2", "--batch", "2", "--every", "1",
            "--lr", "1e-3", "--threads", str(torch.get_num_threads())]
    cli.main([*args, "--steps", "2"])
    data = load_file(str(run / "latents_walls.safetensors"))
    base = load_embedded()
    vids = torch.stack([te.world.sample_clip(5).video, te.world.sample_clip(1, "walls").video])
    with torch.no_grad():
        torch.testing.assert_close(data["latents"][[5, 7]], base.vae.normalize(base.vae.encode(vids)))
    assert te.read_metadata(run / "dit_walls.safetensors")["step"] == 2
    cli.main([*args, "--steps", "3"])                         # resumes at step 2 and takes one more
    assert te.read_metadata(run / "dit_walls.safetensors")["step"] == 3
    out = run / "walls"
    tuned = load_embedded(out)
    for a, b in zip(base.vae.state_dict().values(), tuned.vae.state_dict().values()):
        assert torch.equal(a, b)
    assert tuned.vae.config.latents_mean == base.vae.config.latents_mean
    moved = max(float((a - b).abs().max()) for a, b in zip(base.dit.state_dict().values(),
                                                           tuned.dit.state_dict().values()))
    assert 0 < moved < 0.05                                  # three small steps from the shipped DiT
    record = te.read_metadata(out / C.DIT_FILE)["training"]
    assert record["walls"] == {"steps": 3, "lr": 1e-3, "sigma_shift": 3.0, "clips": 6, "wall_clips": 2}
    assert record["dit"] == te.read_metadata(C.WEIGHTS_DIR / C.DIT_FILE)["training"]["dit"]
    # latents of another split of training and walls clips are not mixed in: the error says what fits
    with pytest.raises(ValueError, match="holds the latents of 6 training clips, not 5: use --clips 6"):
        cli.main([*args, "--steps", "4", "--clips", "5"])


def test_compiled_runs_the_same_module_and_puts_it_back() -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    x = torch.randn(3, 8)
    eager, keys = m(x), list(m.state_dict())
    with te._compiled(True, m):
        assert "forward" in vars(m)          # the instance now runs a compiled forward
        torch.testing.assert_close(m(x), eager, rtol=1e-5, atol=1e-6)
        assert list(m.state_dict()) == keys  # checkpoints keep their names
    assert "forward" not in vars(m)
    with te._compiled(False, m):
        assert "forward" not in vars(m)


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one_whole(tmp_path) -> None:
    """In a child limited to 64 kB per file (RLIMIT_FSIZE): saving a bigger checkpoint fails,
    the earlier checkpoint under the same name is unchanged and no temporary file is left."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ckpt = tmp_path / "ckpt.safetensors"
    te.save_tensors(ckpt, {"w": torch.arange(4.0)}, {"step": 1})
    before = ckpt.read_bytes()
    code = textwrap.dedent(f"""
        import importlib.util, resource, sys
        from pathlib import Path
        spec = importlib.util.spec_from_file_location('spacetime_video', {str(root / '__init__.py')!r},
                                                      submodule_search_locations=[{str(root)!r}])
        m = importlib.util.module_from_spec(spec); sys.modules['spacetime_video'] = m; spec.loader.exec_module(m)
        import torch
        from spacetime_video.training import stages
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))
        try:
            stages.save_tensors(Path({str(ckpt)!r}), {{'w': torch.zeros(100_000)}}, {{'step': 2}})
            print('SAVED')
        except OSError as e:
            print('ERROR', e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERROR") and "Nothing was written" in r.stdout and "too large" in r.stdout, r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]
    assert ckpt.read_bytes() == before and _step(ckpt) == 1
