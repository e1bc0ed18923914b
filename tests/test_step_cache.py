"""The step cache and the speed presets (``samplers.step_cache``) and their use in ``generate``:
the forecast, the skip rule, guidance truncation, text key/value reuse and the settings' checks."""
from __future__ import annotations

import math

import pytest
import torch

from dit_helpers import random_state_dict
from spacetime_video.samplers.step_cache import SPEEDS, Speed, StepCache, speed_settings


def trajectory(kind: str, steps: int = 20):
    """sigmas and a model output that is constant / linear / curved in sigma."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    base, slope = torch.randn(2, 1, 4, 3, 3, generator=torch.Generator().manual_seed(0))

    def output(sigma: float) -> torch.Tensor:
        if kind == "linear":
            return base + 2.0 + slope * sigma
        return base + 2.0 + slope * math.sin(6 * sigma)
    return sigmas, output


def run(cache: StepCache, sigmas, output) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    got, truth = [], []
    for s in sigmas[:-1].tolist():
        x = torch.zeros(1, 4, 3, 3)
        got.append(cache(("cond",), s, x, lambda s=s: output(s)))
        truth.append(output(s))
    return got, truth


def test_a_linear_trajectory_is_forecast_exactly_and_skipped_as_allowed():
    sigmas, output = trajectory("linear")
    cache = StepCache(Speed(threshold=0.01, warmup=0.15, cooldown=0.1, max_skips=2), sigmas)
    got, truth = run(cache, sigmas, output)
    assert cache.skipped > 0 and cache.evaluated + cache.skipped == 20
    assert all(torch.allclose(g, t, atol=1e-5) for g, t in zip(got, truth))
    # never more than max_skips in a row, never inside the warm-up (3 steps) or the cool-down (2 steps)
    assert cache.evaluated >= 20 // 3 + 3


def test_a_bending_trajectory_is_evaluated_more_often_and_off_never_skips():
    sigmas, output = trajectory("curved")

    def worst(threshold: float) -> tuple[int, float]:
        cache = StepCache(Speed(threshold=threshold, max_skips=4), sigmas)
        got, truth = run(cache, sigmas, output)
        return cache.skipped, max(float((g - t).abs().mean() / t.abs().mean()) for g, t in zip(got, truth))
    (loose, loose_err), (strict, strict_err) = worst(0.2), worst(0.01)
    assert 0 < strict < loose and 0 < strict_err < loose_err
    off = StepCache("off", sigmas)
    got, truth = run(off, sigmas, output)
    assert off.skipped == 0 and all(torch.equal(g, t) for g, t in zip(got, truth))


def test_rows_keep_their_own_history_when_the_batch_changes():
    sigmas, output = trajectory("linear")
    cache = StepCache(Speed(threshold=0.05, warmup=0.1, cooldown=0.0, max_skips=3), sigmas)
    for i, s in enumerate(sigmas[:-1].tolist()):
        rows = ("cond", "uncond") if i < 8 else ("cond",)
        x = torch.zeros(len(rows), 4, 3, 3)
        out = cache(rows, s, x, lambda s=s, n=len(rows): torch.cat([output(s)] * n))
        assert torch.allclose(out, torch.cat([output(s)] * len(rows)), atol=1e-5)
    assert cache.skipped >= 2


def test_a_repeated_noise_level_keeps_the_history():
    """Heun, PAG and the like evaluate twice at one sigma: the cache keeps forecasting."""
    sigmas, output = trajectory("linear")
    cache = StepCache(Speed(threshold=0.05, warmup=0.1, cooldown=0.0, max_skips=2), sigmas)
    for s in sigmas[:-1].tolist():
        for _ in range(2):
            out = cache(("cond",), s, torch.zeros(1, 4, 3, 3), lambda s=s: output(s))
            assert torch.allclose(out, output(s), atol=1e-5)
    assert cache.skipped > 0
    assert StepCache(Speed(threshold=0.05), [1.0, 0.5, 0.0]).history == {}


@pytest.mark.parametrize("field,value", [("threshold", float("nan")), ("threshold", -0.1), ("cfg_until", 1.5),
                                         ("max_skips", 2.5), ("warmup", float("inf"))])
def test_bad_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        Speed(**{field: value})


def test_presets_and_unknown_names():
    assert speed_settings("balanced") is SPEEDS["balanced"]
    assert speed_settings("fast", cfg_until=1.0).cfg_until == 1.0
    with pytest.raises(ValueError, match="unknown speed 'turbo'.*off"):
        speed_settings("turbo")
    with pytest.raises(ValueError, match="warmup \\+ cooldown"):
        Speed(warmup=0.7, cooldown=0.5)


def test_text_memo_gives_identical_output_and_reuses_keys():
    from spacetime_video.model.dit import TextMemo, load_dit, tiny_config

    cfg = tiny_config()
    dit = load_dit(random_state_dict(cfg, 3), config=cfg)
    x, ctx = torch.randn(2, cfg.in_dim, 3, 8, 8), torch.randn(2, 7, cfg.text_dim)
    with torch.no_grad():
        plain = [dit(x, torch.tensor([t, t]), ctx) for t in (700.0, 400.0)]
        memo = TextMemo()
        dit.use_text_memo(memo)
        kept = [dit(x, torch.tensor([t, t]), ctx.clone()) for t in (700.0, 400.0)]
        other = dit(x, torch.tensor([400.0, 400.0]), ctx + 1)       # a new text is not served from the memo
        dit.use_text_memo(None)
        fresh = dit(x, torch.tensor([400.0, 400.0]), ctx + 1)
    assert all(torch.equal(a, b) for a, b in zip(plain, kept))
    assert torch.equal(other, fresh)
    assert memo.hits == 1 and len(memo.entries) == 2 and len(memo.entries[0].kv) == cfg.num_layers


@pytest.fixture(scope="module")
def embedded():
    from spacetime_video.model.embedded import load_embedded
    return load_embedded()


def test_generate_with_speed_runs_fewer_evaluations_close_to_uncached(embedded):
    from spacetime_video.pipeline import generate_embedded
    from spacetime_video.training.train_vae import psnr

    prompt = "a red ball rolls to the left across a black background"
    counted = StepCache("off")
    ref = generate_embedded(prompt, seed=0, model=embedded, speed=counted)
    assert torch.equal(ref, generate_embedded(prompt, seed=0, model=embedded))   # "off" is the plain sampler
    assert counted.evaluated == 40 and counted.skipped == 0                      # 20 steps x (cond + uncond)
    cache = StepCache("balanced")
    fast = generate_embedded(prompt, seed=0, model=embedded, speed=cache)
    assert cache.evaluated <= 24 and cache.skipped > 0
    # guidance stops after 60% of the steps: the 8 unconditional passes left out are counted too
    assert cache.unguided == 8 and cache.evaluated + cache.skipped + cache.unguided == 40
    assert f"{cache.evaluated} of 40 DiT evaluations run" in cache.report()
    assert psnr(fast, ref) >= 26.0
    exact_text = generate_embedded(prompt, seed=0, model=embedded, speed=Speed(reuse_text=True))
    assert torch.allclose(exact_text, ref, atol=1e-5)
