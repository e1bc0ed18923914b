"""ComfyUI's model-level features act on our MODEL exactly as on ComfyUI's own Wan MODEL: the same
random weights are loaded both ways, the same native node is applied to each, and each sample
matches, with the same number of DiT evaluations. Covered: EasyCache and LazyCache (step
caches), block replacement patches, attention overrides, Wan context windows and the
torch.compile wrapper."""
from __future__ import annotations

import pytest
import torch

from dit_helpers import random_state_dict


@pytest.fixture(scope="module")
def pair(comfy):
    """(native MODEL, our MODEL) on identical random weights that ComfyUI's loader detects."""
    import comfy.sd
    from spacetime_video.model.dit import load_dit
    from spacetime_video.model.dit.config import tiny_config
    from spacetime_video.nodes import comfy_model

    # ComfyUI reads the head count as dim // 128
    cfg = tiny_config(dim=256, num_heads=2, text_dim=4096, text_len=512, freq_dim=256, ffn_dim=256)
    sd = random_state_dict(cfg, 11)
    native = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in sd.items()},
                                                      model_options={"dtype": torch.float32})
    ours = comfy_model.wrap_dit(load_dit(sd, config=cfg), shift=8.0)  # native WAN21's default shift
    return native, ours


def count_evaluations(model) -> list[int]:
    """A counter of the inner forward calls (the ones step caches skip) of ``model``'s DiT."""
    inner = model.model.diffusion_model
    calls, real = [0], inner._forward

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)
    inner._forward = counting
    return calls


def stop_counting(model) -> None:
    model.model.diffusion_model.__dict__.pop("_forward", None)


def sample(model, steps=12, frames=3, cfg=3.0, seed=0) -> tuple[torch.Tensor, int]:
    """A native sampler run (SamplerCustom's path) and the number of DiT evaluations it took."""
    import comfy.sample
    import comfy.samplers
    from spacetime_video import samplers

    g = torch.Generator().manual_seed(seed)
    pos = [[torch.nn.functional.pad(torch.randn(1, 9, 4096, generator=g), (0, 0, 0, 503)), {}]]
    neg = [[torch.nn.functional.pad(torch.randn(1, 5, 4096, generator=g), (0, 0, 0, 507)), {}]]
    noise = torch.randn(1, 16, frames, 4, 4, generator=g)
    calls = count_evaluations(model)
    try:
        out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.KSAMPLER(samplers.SOLVERS["euler"]),
                                         samplers.flow_sigmas(steps, 8.0), pos, neg, torch.zeros_like(noise),
                                         seed=seed)
    finally:
        stop_counting(model)
    return out, calls[0]


def both(pair, patch):
    """Sample the native and our MODEL, each with ``patch(model) -> model`` applied to a clone."""
    return [sample(patch(m.clone())) for m in pair]


def close(a, b, tol=1e-4) -> bool:
    return bool(torch.allclose(a, b, atol=tol, rtol=tol))


def test_without_patches_the_two_models_agree(pair):
    (a, na), (b, nb) = both(pair, lambda m: m)
    assert na == nb == 12                        # 12 steps, cond and uncond batched in one call
    assert close(a, b), (a - b).abs().max()


@pytest.mark.parametrize("node", ["EasyCacheNode", "LazyCacheNode"])
def test_native_step_caches_skip_the_same_evaluations(pair, node):
    from comfy_extras import nodes_easycache

    cls = getattr(nodes_easycache, node)

    def patch(m):
        return cls.execute(m, reuse_threshold=1.0, start_percent=0.15, end_percent=0.95, verbose=False).result[0]
    (a, na), (b, nb) = both(pair, patch)
    (plain, n_plain), _ = both(pair, lambda m: m)
    assert nb < n_plain, f"{node} skipped nothing on our MODEL ({nb} of {n_plain} evaluations)"
    assert na == nb, f"{node}: native made {na} evaluations, ours {nb}"
    assert close(a, b), (a - b).abs().max()
    assert not close(b, plain)                   # the cache changed the result: it acted


def test_block_replacement_patches_act_the_same(pair):
    seen = []

    def halve_block_update(args, extra):
        seen.append(args["img"].shape)
        out = extra["original_block"](args)
        return {"img": args["img"] + 0.5 * (out["img"] - args["img"])}

    def patch(m):
        m.set_model_patch_replace(halve_block_update, "dit", "double_block", 0)
        return m
    (a, _), (b, _) = both(pair, patch)
    (plain, _), _ = both(pair, lambda m: m)
    assert seen and len(seen) % 2 == 0           # called by both models
    assert close(a, b), (a - b).abs().max()
    assert not close(b, plain)


def test_attention_overrides_act_the_same(pair):
    counts = []

    def override(func, *args, **kwargs):
        counts.append(kwargs.get("heads"))
        return func(*args, **kwargs) * 0.9       # visibly different from the plain kernel

    def patch(m):
        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
        return m
    (a, _), (b, _) = both(pair, patch)
    (plain, _), _ = both(pair, lambda m: m)
    assert counts and set(counts) == {2}
    assert close(a, b), (a - b).abs().max()
    assert not close(b, plain)


def test_wan_context_windows_act_the_same(pair):
    from comfy_extras.nodes_context_windows import WanContextWindowsManualNode

    def patch(m):
        return WanContextWindowsManualNode.execute(m, context_length=9, context_overlap=5,
                                                   context_schedule="standard_static", context_stride=1,
                                                   closed_loop=False, fuse_method="pyramid").result[0]
    out = [sample(patch(m.clone()), frames=5) for m in pair]
    (a, na), (b, nb) = out
    plain, n_plain = sample(pair[1].clone(), frames=5)
    assert na == nb > n_plain                    # several windows per step
    assert close(a, b), (a - b).abs().max()


def test_torch_compile_wrapper_runs_our_model(pair):
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    torch._dynamo.reset()

    def patch(m):
        set_torch_compile_wrapper(m, backend="eager")
        return m
    ours = pair[1]
    (compiled, n), (plain, n_plain) = sample(patch(ours.clone()), steps=3), sample(ours.clone(), steps=3)
    assert n == n_plain and close(compiled, plain, 1e-5)


# -- the pack's own Step Cache node acts on both MODELs alike ------------------------------------

def step_cache(speed="custom", **settings):
    from spacetime_video.nodes.step_cache import SpacetimeStepCache

    values = dict(threshold=0.5, warmup=0.1, cooldown=0.05, max_skips=3, cfg_until=0.5, reuse_text=True)
    values.update(settings)
    return lambda m: SpacetimeStepCache.execute(m, speed, **values).result[0]


def test_step_cache_node_skips_the_same_evaluations_on_both_models(pair):
    # a random model's output changes by about 40% a step: only the loosest threshold skips
    (a, na), (b, nb) = both(pair, step_cache(threshold=2.0))
    (plain, n_plain), _ = both(pair, lambda m: m)
    assert nb < n_plain, f"the Step Cache skipped nothing ({nb} of {n_plain} calls)"
    assert na == nb
    assert close(a, b), (a - b).abs().max()
    assert not close(b, plain)


def test_step_cache_keeps_one_history_per_context_window(pair):
    from comfy_extras.nodes_context_windows import WanContextWindowsManualNode
    from spacetime_video.nodes import step_cache as node

    runs = []
    real = node._Run

    class Seen(real):
        def __init__(self, *args):
            super().__init__(*args)
            runs.append(self)
    node._Run = Seen
    try:
        def patch(m):
            m = WanContextWindowsManualNode.execute(m, context_length=9, context_overlap=5,
                                                    context_schedule="standard_static", context_stride=1,
                                                    closed_loop=False, fuse_method="pyramid").result[0]
            return step_cache(threshold=2.0, cfg_until=1.0)(m)
        (a, na), (b, nb) = [sample(patch(m.clone()), frames=5) for m in pair]
    finally:
        node._Run = real
    windows = {key[0][1] for key in runs[-1].cache.history}
    assert len(windows) == 3 and runs[-1].cache.skipped > 0     # windows of 3 of the 5 latent frames, stride 1
    assert na == nb and close(a, b), (a - b).abs().max()


def test_step_cache_off_is_the_plain_sampler(pair):
    (plain, n_plain), _ = both(pair, lambda m: m)
    (off, n_off), _ = both(pair, step_cache("off"))
    assert n_off == n_plain and torch.equal(off, plain)


def test_step_cache_stops_the_unconditional_pass_after_the_guided_steps(pair, caplog):
    import logging

    import comfy.samplers

    rows = []
    real = comfy.samplers._calc_cond_batch

    def counting(model, conds, *args, **kwargs):
        rows.append(sum(c is not None for c in conds))
        return real(model, conds, *args, **kwargs)
    comfy.samplers._calc_cond_batch = counting
    try:
        with caplog.at_level(logging.INFO, logger="spacetime.nodes"):
            sample(step_cache(threshold=0.0, cfg_until=0.5)(pair[1].clone()))
    finally:
        comfy.samplers._calc_cond_batch = real
    assert rows == [2] * 6 + [1] * 6                 # 12 steps: guided for the first half only
    # the log counts against the uncached run, the left-out unconditional passes included
    assert "18 of 24 DiT evaluations run, 0 forecast, 6 unconditional left out" in caplog.text


def test_step_cache_refuses_a_model_that_already_has_easycache(pair):
    from comfy_extras.nodes_easycache import EasyCacheNode
    from spacetime_video.nodes.errors import SpacetimeNodeError

    eased = EasyCacheNode.execute(pair[1], reuse_threshold=0.2, start_percent=0.15, end_percent=0.95,
                                  verbose=False).result[0]
    with pytest.raises(SpacetimeNodeError, match="SpacetimeStepCache: input 'model'.*EasyCache"):
        step_cache()(eased)
    cached_then_eased = EasyCacheNode.execute(step_cache()(pair[1]), reuse_threshold=0.2, start_percent=0.15,
                                              end_percent=0.95, verbose=False).result[0]
    with pytest.raises(Exception, match="SpacetimeStepCache: input 'model'.*two step caches"):
        sample(cached_then_eased)


def test_step_cache_node_refuses_settings_that_leave_nothing_to_skip(pair):
    from spacetime_video.nodes.errors import SpacetimeNodeError

    with pytest.raises(SpacetimeNodeError, match="SpacetimeStepCache: input 'cooldown'.*at most 1"):
        step_cache(warmup=0.8, cooldown=0.5)(pair[1])


def test_step_cache_reuses_the_text_keys_on_our_model_and_uninstalls_them(pair, monkeypatch):
    from spacetime_video.nodes import step_cache as node

    memos = []

    class Seen(node.TextMemo):
        def __init__(self):
            super().__init__()
            memos.append(self)
    monkeypatch.setattr(node, "TextMemo", Seen)
    sample(step_cache(threshold=0.0, cfg_until=1.0, reuse_text=True)(pair[1].clone()))
    inner = pair[1].model.diffusion_model
    assert memos and memos[-1].hits == 11                    # built at the first of 12 steps, then reused
    assert inner.text_memo is None and all(b.cross_attn.memo is None for b in inner.blocks)


def test_a_second_step_cache_replaces_the_first_and_off_removes_it(pair):
    once, n_once = sample(step_cache(threshold=2.0)(pair[1].clone()))
    twice, n_twice = sample(step_cache(threshold=2.0)(step_cache(threshold=0.3, cfg_until=1.0)(pair[1].clone())))
    assert n_twice == n_once and torch.equal(once, twice)
    plain, n_plain = sample(pair[1].clone())
    removed, n_removed = sample(step_cache("off")(step_cache(threshold=2.0)(pair[1].clone())))
    assert n_removed == n_plain and torch.equal(removed, plain)


def test_guidance_truncation_leaves_other_guiders_calls_alone(comfy):
    from spacetime_video.nodes import step_cache as node
    from spacetime_video.samplers.step_cache import Speed

    run = node._Run(Speed(cfg_until=0.5), torch.linspace(1, 0, 5))
    options = {"transformer_options": {node.KEY: run}}
    seen = []

    def executor(model, conds, x, t, opts):
        seen.append(list(conds))
        return [torch.full((1,), float(i + 1)) for i in range(len(conds))]
    late, x = torch.tensor([0.3]), torch.zeros(1, 4)
    out = node._calc_cond_batch(executor, None, ["c", "u"], x, late, options)
    assert seen[-1] == ["c"] and torch.equal(out[0], out[1])     # past the guided steps: one pass
    assert run.cache.unguided == 1                               # and the pass left out is counted
    node._calc_cond_batch(executor, None, [None, "u"], x, late, options)
    assert seen[-1] == [None, "u"]                               # skip-layer guidance's call, as it is
    node._calc_cond_batch(executor, None, ["c", "u", "x"], x, late, options)
    assert seen[-1] == ["c", "u", "x"]
    node._calc_cond_batch(executor, None, ["c", "u"], x, torch.tensor([0.9]), options)
    assert seen[-1] == ["c", "u"]                                # a guided step
    assert run.cache.unguided == 1
